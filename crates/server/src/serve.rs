//! The accept loop (SPEC §7): Keyflow faces the internet without a proxy, so
//! every connection is bounded. Headers must arrive within
//! `header_read_timeout_secs` (hyper's timer also runs while a keep-alive
//! connection waits for its next request, so idle connections close after
//! the same time, like Go's `IdleTimeout` defaulting to its read timeout);
//! at most `max_connections` are open (beyond, the loop stops accepting and
//! the kernel's backlog holds the rest), and at most `max_connections_per_ip`
//! per client address (IPv6 /64; trusted proxies exempt); a client that reads nothing of its
//! answer for `request_timeout_secs` loses the connection; and shutdown
//! waits at most `shutdown_timeout_secs` for in-flight requests.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The bounds of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub header_read_timeout: Duration,
    /// A client that reads nothing of its answer for this long loses the
    /// connection (and its slot): it cannot hold a slot by never reading.
    pub write_stall_timeout: Duration,
    pub max_connections: usize,
    /// Per client address (IPv6: per /64); 0 = none.
    pub max_connections_per_ip: usize,
    pub shutdown_timeout: Duration,
}

/// Open connections per client address, for the per-address cap.
#[derive(Default)]
struct PerAddress {
    open: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One open connection of an address; counted down when dropped.
struct AddressSlot {
    table: Arc<PerAddress>,
    subject: String,
}

impl PerAddress {
    /// A slot for `subject`, or `None` when it already holds `cap`.
    fn take(self: &Arc<Self>, subject: String, cap: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(subject.clone()).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            table: self.clone(),
            subject,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// File descriptors kept for the database, logs and the listener.
const RESERVED_FDS: u64 = 128;

/// Raises the open-file soft limit to the hard limit (SPEC §7) and returns
/// the connection cap it allows: `configured`, or when 0, what the limit
/// leaves after [`RESERVED_FDS`].
pub fn raise_fd_limit_and_cap(configured: usize) -> usize {
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    };
    let allowed = usize::try_from(soft.saturating_sub(RESERVED_FDS).max(16)).unwrap_or(usize::MAX);
    if configured == 0 {
        allowed.min(100_000)
    } else {
        if configured > allowed {
            tracing::warn!(
                configured,
                open_file_limit = soft,
                "max_connections is above what the open-file limit allows"
            );
        }
        configured
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting and drains open connections for at most the shutdown timeout.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    trusted_proxies: Vec<ipnet::IpNet>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let per_address = Arc::new(PerAddress::default());
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own bound stays at its default of 100 fields, which it
        // parses into an inline array: a larger bound costs two heap
        // allocations per request. Our limit (crate::app::MAX_HEADER_COUNT)
        // is below it, so too many fields get our 431 with a request id.
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        // Wait for a free slot before accepting: past the cap, new clients
        // wait in the kernel's backlog instead of costing a descriptor.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // A few addresses must not take every slot: past its cap, an
        // address's new connection is closed at once (proxies exempt).
        let ip = peer.ip().to_canonical();
        let address_slot = if limits.max_connections_per_ip == 0
            || trusted_proxies.iter().any(|net| net.contains(&ip))
        {
            None
        } else {
            let subject = keyflow_core::ip::limiter_subject(ip);
            match per_address.take(subject, limits.max_connections_per_ip) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(peer = %ip, "per-address connection cap reached");
                    drop(stream);
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = connection_service(app.clone(), peer);
        let stream = StallGuard::new(stream, limits.write_stall_timeout);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
            drop(address_slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = limits.shutdown_timeout.as_secs(),
            "shutdown timeout reached; closing the connections still open"
        );
    }
    connections.abort_all();
    Ok(())
}

/// The router for one connection, with its peer address for `ConnectInfo`.
fn connection_service(
    app: Router,
    peer: SocketAddr,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = Infallible,
        Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
    > + Clone,
> {
    let service = app.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(axum::body::Body::new)
    });
    hyper_util::service::TowerToHyperService::new(service)
}

/// A stream whose writes fail with `TimedOut` once the peer has accepted no
/// bytes for `limit`: hyper has no write timeout of its own, and a client
/// that never reads would otherwise hold its connection forever.
struct StallGuard<S> {
    inner: S,
    limit: Duration,
    /// Armed while a write waits for the peer; cleared on progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StallGuard<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: `Ready(Err)` once the stall has lasted too long.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client read nothing of its answer for too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.check_stall(cx).map(Err),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
