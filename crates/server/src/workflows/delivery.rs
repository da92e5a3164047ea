//! Webhook delivery (SPEC §10): Standard Webhooks signatures, a guard
//! against requests into private networks, one attempt at a time.
//!
//! The guard resolves the host itself, refuses the call if *any* address is
//! loopback, private, link-local, unique-local, multicast, unspecified or
//! otherwise not globally routable (unless the instance allows it), and
//! then connects to exactly the addresses it checked (the client is pinned
//! to them), so a name that resolves differently a moment later (DNS
//! rebinding) cannot redirect the call. Redirects are not followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use ipnet::IpNet;
use sha2::Sha256;

/// How long one attempt may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// How much of an answer is kept with the attempt.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;
/// How long the excerpt is waited for once the status has arrived.
const EXCERPT_WAIT: Duration = Duration::from_secs(2);

/// Which private destinations an instance allows (`webhook_allow_private_networks`).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum PrivateNetworks {
    /// None: only globally routable addresses (the default).
    #[default]
    Refused,
    /// Every address.
    Allowed,
    /// These ranges only.
    Ranges(Vec<IpNet>),
}

impl PrivateNetworks {
    /// `true`, `false` or a comma-separated CIDR list.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "" | "false" => Ok(Self::Refused),
            "true" => Ok(Self::Allowed),
            list => list
                .split(',')
                .map(|part| {
                    let part = part.trim();
                    part.parse::<IpNet>()
                        .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("{part:?} is not an IP address or CIDR range"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Ranges),
        }
    }

    fn allows(&self, ip: IpAddr) -> bool {
        match self {
            Self::Refused => false,
            Self::Allowed => true,
            Self::Ranges(ranges) => ranges.iter().any(|r| r.contains(&ip)),
        }
    }
}

/// Whether `ip` is a public, routable unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                // 100.64.0.0/10 shared address space (carrier NAT).
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                // 192.0.0.0/24 protocol assignments, 198.18.0.0/15 benchmarking.
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                // 240.0.0.0/4 reserved.
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            // IPv4 embedded in IPv6 by translation schemes: judged by the
            // IPv4 address (::/96 compatible, ::ffff:0:0/96 SIIT,
            // 2002::/16 6to4).
            let embedded = |hi: u16, lo: u16| {
                IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                ))
            };
            if s[..6] == [0; 6] || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) {
                return is_public(embedded(s[6], s[7]));
            }
            if s[0] == 0x2002 && !is_public(embedded(s[1], s[2])) {
                return false;
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // fc00::/7 unique local, fe80::/10 link local, fec0::/10
                // site local (deprecated, still routed by some stacks).
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                // 64:ff9b::/96 NAT64 and ::ffff:0:0/96-style embeddings of v4
                // are judged by the embedded address where it is private.
                || (s[0] == 0x64 && s[1] == 0xff9b && {
                    let v4 = std::net::Ipv4Addr::new(
                        (s[6] >> 8) as u8,
                        s[6] as u8,
                        (s[7] >> 8) as u8,
                        s[7] as u8,
                    );
                    !is_public(IpAddr::V4(v4))
                })
                // 2001:db8::/32 documentation.
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// The addresses a URL's host resolves to, all checked; `Err` says why the
/// call is refused.
pub async fn resolve_checked(
    url: &url::Url,
    allowed: &PrivateNetworks,
) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let addresses: Vec<SocketAddr> = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("{host} could not be resolved: {e}"))?
            .collect(),
    };
    if addresses.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    // Which address is not said: it would show the tenant the instance's
    // internal names.
    if addresses
        .iter()
        .any(|a| !is_public(a.ip()) && !allowed.allows(a.ip()))
    {
        return Err(format!(
            "{host} resolves to a private or reserved address; webhooks may call only public \
             addresses (see webhook_allow_private_networks)"
        ));
    }
    Ok(addresses)
}

/// Standard Webhooks `webhook-signature`: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` for each secret, space-separated.
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|secret| {
            let key = base64::engine::general_purpose::STANDARD
                .decode(secret.strip_prefix("whsec_").unwrap_or(secret))
                .ok()?;
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            Some(format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// What one attempt came to.
#[derive(Debug)]
pub struct Attempt {
    pub status: Option<u16>,
    pub duration_ms: i64,
    pub excerpt: Option<String>,
    pub error: Option<String>,
    /// Seconds the receiver asked to wait (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl Attempt {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }

    fn failed(started: Instant, error: String) -> Self {
        Self {
            status: None,
            duration_ms: elapsed_ms(started),
            excerpt: None,
            error: Some(error),
            retry_after_secs: None,
        }
    }
}

fn elapsed_ms(started: Instant) -> i64 {
    i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX)
}

/// A request to send.
pub struct Request<'a> {
    pub url: &'a str,
    pub method: hyper::Method,
    pub headers: &'a [(String, String)],
    pub body: Vec<u8>,
}

/// Sends one attempt: checks the destination, connects to exactly the
/// addresses checked, no redirects, [`TIMEOUT`] in all.
pub async fn send(
    request: Request<'_>,
    allowed: &PrivateNetworks,
    tls: &Arc<rustls::ClientConfig>,
) -> Attempt {
    send_within(request, allowed, tls, TIMEOUT).await
}

/// [`send`] with another time limit (the tests' receivers that never answer).
async fn send_within(
    request: Request<'_>,
    allowed: &PrivateNetworks,
    tls: &Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Attempt {
    let started = Instant::now();
    match tokio::time::timeout(limit, attempt(request, allowed, tls)).await {
        Ok(Ok(answer)) => Attempt {
            status: Some(answer.status),
            duration_ms: elapsed_ms(started),
            excerpt: answer.excerpt,
            error: None,
            retry_after_secs: answer.retry_after_secs,
        },
        Ok(Err(error)) => Attempt::failed(started, error),
        Err(_) => Attempt::failed(
            started,
            format!("no answer within {} s", limit.as_secs_f64()),
        ),
    }
}

/// What came back.
struct Answer {
    status: u16,
    excerpt: Option<String>,
    retry_after_secs: Option<u64>,
}

async fn attempt(
    request: Request<'_>,
    allowed: &PrivateNetworks,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Answer, String> {
    let url = url::Url::parse(request.url).map_err(|e| format!("bad URL: {e}"))?;
    let addresses = resolve_checked(&url, allowed).await?;
    let mut tcp = None;
    let mut refused = String::new();
    for address in &addresses {
        match tokio::net::TcpStream::connect(address).await {
            Ok(stream) => {
                tcp = Some(stream);
                break;
            }
            Err(e) => refused = format!("could not connect to {address}: {e}"),
        }
    }
    let tcp = tcp.ok_or(refused)?;
    let host = url.host_str().unwrap_or_default();
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let mut builder = hyper::Request::builder()
        .method(request.method)
        .uri(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("Keyflow-Webhooks/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let http_request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from(request.body)))
        .map_err(|e| format!("the request could not be built: {e}"))?;
    if url.scheme() == "https" {
        let name = match url.host() {
            Some(url::Host::Domain(domain)) => {
                rustls::pki_types::ServerName::try_from(domain.to_string())
                    .map_err(|e| format!("{domain} is not a TLS server name: {e}"))?
            }
            Some(url::Host::Ipv4(ip)) => rustls::pki_types::ServerName::from(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => rustls::pki_types::ServerName::from(IpAddr::V6(ip)),
            None => return Err("the URL has no host".into()),
        };
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS failed: {e}"))?;
        exchange(hyper_util::rt::TokioIo::new(stream), http_request).await
    } else {
        exchange(hyper_util::rt::TokioIo::new(tcp), http_request).await
    }
}

/// One request and its answer over `io`: the status, `Retry-After`, and at
/// most [`RESPONSE_EXCERPT_BYTES`] of the body (the rest is not read).
async fn exchange<T>(
    io: T,
    request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP failed: {e}"))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("the request could not be sent: {e}"))?;
        let status = response.status().as_u16();
        let retry_after_secs = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = response.into_body();
        let mut kept = Vec::new();
        // The status decides the attempt; the excerpt is what arrives
        // within a moment (a 2xx whose body stalls is still a success).
        let excerpt_until = tokio::time::Instant::now() + EXCERPT_WAIT;
        while kept.len() < RESPONSE_EXCERPT_BYTES {
            match tokio::time::timeout_at(excerpt_until, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        kept.extend_from_slice(&data);
                    }
                }
                _ => break,
            }
        }
        kept.truncate(RESPONSE_EXCERPT_BYTES);
        Ok(Answer {
            status,
            excerpt: (!kept.is_empty()).then(|| String::from_utf8_lossy(&kept).into_owned()),
            retry_after_secs,
        })
    }
    .await;
    driver.abort();
    result
}

/// TLS for webhooks: rustls with ring and the Mozilla roots (webpki-roots).
pub fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    Ok(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "::127.0.0.1",
            "::ffff:0:7f00:1",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let ranges = PrivateNetworks::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        assert!(ranges.allows("127.0.0.1".parse().unwrap()));
        assert!(ranges.allows("10.9.9.9".parse().unwrap()));
        assert!(!ranges.allows("192.168.0.1".parse().unwrap()));
        assert_eq!(
            PrivateNetworks::parse("true").unwrap(),
            PrivateNetworks::Allowed
        );
        assert_eq!(
            PrivateNetworks::parse("false").unwrap(),
            PrivateNetworks::Refused
        );
        assert!(PrivateNetworks::parse("10.0.0.0/33").is_err());
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let refused = PrivateNetworks::Refused;
        for url in [
            "http://localhost:9/x",
            "http://127.0.0.1/x",
            "http://[::1]:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            let url = url::Url::parse(url).unwrap();
            assert!(resolve_checked(&url, &refused).await.is_err(), "{url}");
        }
        let allowed = PrivateNetworks::parse("127.0.0.0/8").unwrap();
        let url = url::Url::parse("http://127.0.0.1:9/x").unwrap();
        assert_eq!(
            resolve_checked(&url, &allowed).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn a_silent_receiver_times_out_and_a_redirect_is_not_followed() {
        let tls = Arc::new(tls_config().unwrap());
        let allowed = PrivateNetworks::parse("127.0.0.0/8").unwrap();
        // Accepts and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", silent.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let (_conn, _) = silent.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let request = Request {
            url: &url,
            method: hyper::Method::POST,
            headers: &[],
            body: b"{}".to_vec(),
        };
        let attempt = send_within(request, &allowed, &tls, Duration::from_millis(300)).await;
        assert!(!attempt.succeeded());
        assert!(
            attempt
                .error
                .as_deref()
                .unwrap()
                .contains("no answer within 0.3 s"),
            "{attempt:?}"
        );
        hold.abort();
        // A 302 is a failure: the Location is never fetched.
        let redirecting = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", redirecting.local_addr().unwrap());
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut conn, _) = redirecting.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let _ = conn
                .write_all(
                    b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
                )
                .await;
        });
        let request = Request {
            url: &url,
            method: hyper::Method::POST,
            headers: &[],
            body: b"{}".to_vec(),
        };
        let attempt = send(request, &allowed, &tls).await;
        assert_eq!(attempt.status, Some(302));
        assert!(!attempt.succeeded());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example of the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        let two = signature(&[secret, secret], "id", 1, b"{}");
        assert_eq!(two.split(' ').count(), 2);
    }
}
