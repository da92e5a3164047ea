//! IP allow-lists and client-address resolution (SPEC §2 "ip_allowlist").

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One allow-list row as stored and shown: `{cidr, description}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpRule {
    pub cidr: String,
    #[serde(default)]
    pub description: String,
}

/// Parses an address or CIDR ("10.0.0.1", "10.0.0.0/8", "2001:db8::/32").
/// A bare address becomes a single-host network. Mapped IPv4 (`::ffff:a.b.c.d`)
/// is canonicalised to IPv4 so it matches IPv4 peers.
pub fn parse_network(text: &str) -> Option<IpNet> {
    let text = text.trim();
    if let Ok(net) = text.parse::<IpNet>() {
        return Some(canonical_network(net));
    }
    let addr: IpAddr = text.parse().ok()?;
    Some(IpNet::from(addr.to_canonical()))
}

/// Whether `text` is a CIDR whose address has bits set past its prefix
/// (`10.0.0.1/8`), which [`parse_network`] would widen to the network.
pub fn has_host_bits(text: &str) -> bool {
    text.trim()
        .parse::<IpNet>()
        .is_ok_and(|net| net.addr() != net.network())
}

fn canonical_network(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && v6.prefix_len() >= 96
        && let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(n.trunc());
    }
    net.trunc()
}

/// A compiled allow-list; empty means "anywhere".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpAllowList {
    networks: Vec<IpNet>,
}

impl IpAllowList {
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    /// Compiles stored rules; rows that no longer parse are skipped (they were
    /// validated on the way in, so this only guards against hand-edited rows).
    pub fn from_rules(rules: &[IpRule]) -> Self {
        Self::new(
            rules
                .iter()
                .filter_map(|r| parse_network(&r.cidr))
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// Whether `ip` may use the key. `None` (an address we could not determine)
    /// is allowed only by an empty list.
    pub fn allows(&self, ip: Option<IpAddr>) -> bool {
        if self.networks.is_empty() {
            return true;
        }
        match ip {
            Some(ip) => {
                let ip = ip.to_canonical();
                self.networks.iter().any(|n| n.contains(&ip))
            }
            None => false,
        }
    }
}

/// The client address of SPEC §2: the socket peer, unless the peer is a trusted
/// proxy, in which case the right-most `X-Forwarded-For` hop that is not itself
/// a trusted proxy. `None` when the header is present but unparsable at the hop
/// that matters (we never guess).
pub fn client_ip(
    peer: IpAddr,
    forwarded_for: &[&str],
    trusted_proxies: &[IpNet],
) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted_proxies.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let mut current = peer;
    // Header lines are joined in order; hops within a line are comma-separated.
    let hops = forwarded_for
        .iter()
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        let ip = parse_hop(hop)?.to_canonical();
        if !is_trusted(&ip) {
            return Some(ip);
        }
        current = ip;
    }
    Some(current)
}

/// A hop may carry a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sock) = hop.parse::<std::net::SocketAddr>() {
        return Some(sock.ip());
    }
    None
}

/// The unit an abuse limiter counts: an IPv4 address, or the /64 an IPv6
/// address is in (one host commonly holds a whole /64, so counting single
/// IPv6 addresses would let it rotate through 2^64 of them).
pub fn limiter_subject(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match ipnet::Ipv6Net::new(v6, 64) {
            Ok(net) => net.trunc().to_string(),
            Err(_) => v6.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(rules: &[&str]) -> IpAllowList {
        IpAllowList::new(rules.iter().map(|r| parse_network(r).unwrap()).collect())
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_v6_and_single_hosts() {
        let l = list(&["10.0.0.0/8", "192.168.1.7", "2001:db8::/32"]);
        assert!(l.allows(Some(ip("10.1.2.3"))));
        assert!(l.allows(Some(ip("192.168.1.7"))));
        assert!(!l.allows(Some(ip("192.168.1.8"))));
        assert!(l.allows(Some(ip("2001:db8::1"))));
        assert!(!l.allows(Some(ip("2001:db9::1"))));
        assert!(!l.allows(None));
        assert!(IpAllowList::default().allows(None));
    }

    #[test]
    fn mapped_ipv6_matches_ipv4_entries_both_ways() {
        let l = list(&["1.2.3.0/24"]);
        assert!(l.allows(Some(ip("::ffff:1.2.3.4"))));
        let mapped_rule = list(&["::ffff:1.2.3.0/120"]);
        assert!(mapped_rule.allows(Some(ip("1.2.3.4"))));
        // ::1 must stay IPv6 loopback, never become 0.0.0.1.
        assert!(!list(&["0.0.0.0/8"]).allows(Some(ip("::1"))));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10.0.0.0/33", "nope", "1.2.3", "::g"] {
            assert!(parse_network(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies() {
        let proxies = vec![parse_network("10.0.0.0/8").unwrap()];
        // Untrusted peer: header ignored (spoofing).
        assert_eq!(
            client_ip(ip("8.8.8.8"), &["1.1.1.1"], &proxies),
            Some(ip("8.8.8.8"))
        );
        // Trusted peer: right-most untrusted hop, skipping inner proxies.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["6.6.6.6, 7.7.7.7, 10.0.0.2"], &proxies),
            Some(ip("7.7.7.7"))
        );
        // Several header lines are one list.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &["6.6.6.6", "7.7.7.7"], &proxies),
            Some(ip("7.7.7.7"))
        );
        // No header: the peer itself.
        assert_eq!(
            client_ip(ip("10.0.0.1"), &[], &proxies),
            Some(ip("10.0.0.1"))
        );
        // Garbage at the deciding hop: unknown.
        assert_eq!(client_ip(ip("10.0.0.1"), &["junk"], &proxies), None);
        // Mapped addresses in the header are canonicalised.
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &["::ffff:5.5.5.5"], &proxies),
            Some(ip("5.5.5.5"))
        );
    }

    #[test]
    fn limiter_subject_groups_ipv6_by_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limiter_subject(a), "2001:db8:1:2::/64");
        assert_eq!(limiter_subject(a), limiter_subject(b));
        assert_ne!(limiter_subject(a), limiter_subject(c));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(limiter_subject(mapped), "10.1.2.3");
    }
}
