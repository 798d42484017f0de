//! Every connection of a listener is counted, has a deadline, and can be closed to make
//! room: idle attackers cannot exhaust file descriptors or keep legitimate senders out.
//!
//! [`ConnectionTracker`] is an axum-server acceptor placed under TLS (it sees the TCP
//! stream), so it covers a connection from `accept` on. What it guarantees:
//!
//! - **A connection with no request in flight is closed after the idle timeout**
//!   (`server.idle_timeout_secs`): whether it is in its TLS handshake, in protocol
//!   detection (a partial HTTP/2 preface), waiting for its first request, or idle between
//!   requests (HTTP/1 keep-alive, an HTTP/2 session sending only pings or settings). A
//!   request is in flight from its dispatch to the handler until the handler answers; the
//!   request deadline (`server.request_timeout_secs`) bounds that part.
//! - **At most `max_connections` are open**: a new connection at the cap closes the oldest
//!   connection with no request in flight (idle connections are what an attacker holds
//!   cheaply); when every open connection is busy, the new one is refused instead.
//! - Closing is immediate and needs no cooperation from the peer: the tracked stream fails
//!   every read and write from then on, so the HTTP or TLS layer above it ends and the
//!   socket is dropped.
//! - The open connections are a gauge; closes for idleness, evictions, refusals at the
//!   cap, failed handshakes and `accept` errors (EMFILE) are counted; evictions, refusals
//!   and accept errors are logged, at most a few lines a minute each.
//!
//! [`connections_that_fit`] and [`fit_to_descriptor_limit`] decide the cap at start: the
//! soft file-descriptor limit is raised to the hard one, and the cap lowered to leave a
//! quarter of the descriptors (at least [`RESERVED_DESCRIPTORS`]) to the store, the engine
//! socket, the outbound API connections and the ops listener.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use futures_util::task::AtomicWaker;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ops::metrics::{ListenerLabels, ListenerReasonLabels, Metrics};

/// Descriptors always left to everything but the listener's connections, whatever the
/// limit (a quarter of the limit when that is more).
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// HTTP/2 streams one connection may have open at once.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// How often an HTTP/2 connection with a request in flight is pinged, so a vanished peer
/// is noticed; the ping must be answered within the same time.
pub const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once (after [`fit_to_descriptor_limit`]).
    pub max_connections: usize,
    /// A connection with no request in flight is closed after this.
    pub idle_timeout: Duration,
    /// The TLS handshake must complete within this.
    pub handshake_timeout: Duration,
}

/// Why the listener closed a connection or refused one; the `reason` label of
/// `o365_connector_connections_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// No request in flight for the idle timeout.
    IdleTimeout,
    /// Closed to make room for a new connection at the cap.
    Evicted,
    /// A new connection at the cap when every open one had a request in flight.
    RefusedAtCap,
    /// The TLS handshake failed or did not complete in time.
    HandshakeFailed,
}

impl CloseReason {
    /// Every reason, for the series created at zero.
    pub const ALL: [CloseReason; 4] = [
        CloseReason::IdleTimeout,
        CloseReason::Evicted,
        CloseReason::RefusedAtCap,
        CloseReason::HandshakeFailed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Evicted => "evicted",
            CloseReason::RefusedAtCap => "refused_at_cap",
            CloseReason::HandshakeFailed => "handshake_failed",
        }
    }
}

/// The error a connection refused at the cap ends with (seen by the accept error handler).
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: server.max_connections ({max_connections}) connections are open and all have a request in flight"
)]
pub struct RefusedAtCap {
    /// The cap in force.
    pub max_connections: usize,
}

/// The error every read and write of a connection fails with once the listener closed it.
#[derive(Debug, thiserror::Error)]
#[error("connection closed by the listener: idle for the idle timeout, or room made for a new one")]
pub struct ClosedByListener;

/// How many connections fit under a soft descriptor limit of `soft_limit` (`None`:
/// unlimited): `requested`, or fewer to leave a quarter of the limit (at least
/// [`RESERVED_DESCRIPTORS`]) to everything else; never below 1.
pub fn connections_that_fit(requested: usize, soft_limit: Option<u64>) -> usize {
    let Some(limit) = soft_limit else {
        return requested;
    };
    let reserved = (limit / 4).max(RESERVED_DESCRIPTORS);
    let available = usize::try_from(limit.saturating_sub(reserved)).unwrap_or(usize::MAX);
    requested.min(available).max(1)
}

/// Raises the soft file-descriptor limit (RLIMIT_NOFILE) to the hard one and returns the
/// number of connections that fits under it (see [`connections_that_fit`]), logging what
/// it raised and, when it lowers `requested`, why and how to avoid it.
pub fn fit_to_descriptor_limit(requested: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let mut soft = before.current;
    if before.current.is_some() && before.current != before.maximum {
        let raised = rustix::process::Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                soft = before.maximum;
                tracing::info!(
                    from = before.current,
                    to = before.maximum,
                    "file-descriptor limit raised to its hard limit"
                );
            }
            Err(error) => tracing::warn!(
                %error,
                soft = before.current,
                hard = before.maximum,
                "cannot raise the file-descriptor limit to its hard limit"
            ),
        }
    }
    let fits = connections_that_fit(requested, soft);
    if fits < requested {
        tracing::warn!(
            requested,
            lowered_to = fits,
            descriptor_limit = soft,
            "server.max_connections lowered to what the file-descriptor limit allows; raise \
             the hard limit (systemd LimitNOFILE=, docker --ulimit nofile=, ulimit -Hn) to \
             keep the configured value"
        );
    }
    fits
}

/// One open connection, as the tracker sees it.
struct Connection {
    /// Accept order: the lowest open id is the oldest connection.
    id: u64,
    /// Requests dispatched and not yet answered.
    in_flight: AtomicUsize,
    /// When the last request was answered (or the connection accepted), in milliseconds
    /// since the tracker's epoch.
    idle_since_ms: AtomicU64,
    /// Set once: every read and write fails from then on.
    closing: AtomicBool,
    /// The task driving the connection, woken to notice `closing`.
    waker: AtomicWaker,
}

impl Connection {
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.closing.load(Ordering::Acquire)
    }
}

/// What every clone of a tracker and every tracked connection shares.
struct Inner {
    listener: &'static str,
    limits: ConnectionLimits,
    epoch: Instant,
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Connection>>>,
    metrics: Arc<Metrics>,
    eviction_log: DefaultDirectRateLimiter,
    refusal_log: DefaultDirectRateLimiter,
    accept_error_log: DefaultDirectRateLimiter,
}

fn log_quota() -> Quota {
    Quota::per_minute(NonZeroU32::new(6).expect("non-zero constant"))
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn count(&self, reason: CloseReason) -> u64 {
        let counter = self
            .metrics
            .connections_closed
            .get_or_create(&ListenerReasonLabels {
                listener: self.listener,
                reason: reason.as_str(),
            });
        counter.inc();
        counter.get()
    }

    fn open_gauge(&self) -> prometheus_client::metrics::gauge::Gauge {
        self.metrics
            .connections_open
            .get_or_create(&ListenerLabels {
                listener: self.listener,
            })
            .clone()
    }

    /// Registers a new connection, making room at the cap; `None`: refused.
    fn register(&self) -> Option<Arc<Connection>> {
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            closing: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        });
        let evicted = {
            let mut open = self.open.lock().expect("connection registry poisoned");
            let mut evicted = false;
            if open.len() >= self.limits.max_connections {
                let live = open
                    .values()
                    .filter(|c| !c.closing.load(Ordering::Acquire))
                    .count();
                if live >= self.limits.max_connections {
                    // Marked closing under the lock: two new connections never pick the
                    // same one, and the sweep cannot count it as idle as well.
                    match open.values().find(|c| c.is_idle()) {
                        Some(oldest_idle) if close(oldest_idle) => evicted = true,
                        Some(_) => {}
                        None => {
                            drop(open);
                            self.refuse();
                            return None;
                        }
                    }
                }
            }
            open.insert(connection.id, connection.clone());
            evicted
        };
        self.open_gauge().inc();
        if evicted {
            let total = self.count(CloseReason::Evicted);
            if self.eviction_log.check().is_ok() {
                tracing::warn!(
                    listener = self.listener,
                    max_connections = self.limits.max_connections,
                    evicted_total = total,
                    "at server.max_connections: the oldest connection without a request in \
                     flight was closed to make room (many idle connections: a scan or an attack)"
                );
            }
        }
        Some(connection)
    }

    fn refuse(&self) {
        let total = self.count(CloseReason::RefusedAtCap);
        if self.refusal_log.check().is_ok() {
            tracing::warn!(
                listener = self.listener,
                max_connections = self.limits.max_connections,
                refused_total = total,
                "at server.max_connections with every connection busy: a new connection was \
                 refused; raise server.max_connections if this is legitimate load"
            );
        }
    }

    fn unregister(&self, connection: &Connection) {
        let removed = self
            .open
            .lock()
            .expect("connection registry poisoned")
            .remove(&connection.id);
        if removed.is_some() {
            self.open_gauge().dec();
        }
    }

    /// Closes every connection idle for the idle timeout; nudges those closing.
    fn sweep(&self) {
        let now = self.now_ms();
        let timeout = u64::try_from(self.limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        let expired: Vec<Arc<Connection>> = {
            let open = self.open.lock().expect("connection registry poisoned");
            open.values()
                .filter(|c| {
                    c.closing.load(Ordering::Acquire)
                        || (c.in_flight.load(Ordering::Acquire) == 0
                            && now.saturating_sub(c.idle_since_ms.load(Ordering::Acquire))
                                >= timeout)
                })
                .cloned()
                .collect()
        };
        for connection in expired {
            if close(&connection) {
                self.count(CloseReason::IdleTimeout);
            }
        }
    }
}

/// Marks `connection` closing and wakes its task; true the first time.
fn close(connection: &Connection) -> bool {
    let first = !connection.closing.swap(true, Ordering::AcqRel);
    connection.waker.wake();
    first
}

/// The acceptor of one listener (see the module doc); clones share the same connections.
#[derive(Clone)]
pub struct ConnectionTracker(Arc<Inner>);

impl ConnectionTracker {
    /// A tracker for the listener named `listener` (`webhook` or `ops`: the metric
    /// label); starts its idle sweep on the current runtime, which ends once the tracker
    /// and its connections are gone.
    pub fn new(listener: &'static str, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        let inner = Arc::new(Inner {
            listener,
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
            metrics,
            eviction_log: RateLimiter::direct(log_quota()),
            refusal_log: RateLimiter::direct(log_quota()),
            accept_error_log: RateLimiter::direct(log_quota()),
        });
        inner.open_gauge().set(0);
        let tick =
            (limits.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(sweep_while_alive(Arc::downgrade(&inner), tick));
        Self(inner)
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnectionLimits {
        self.0.limits
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0
            .open
            .lock()
            .expect("connection registry poisoned")
            .len()
    }

    /// The handler for axum-server's accept errors: a failed `accept` (no remote address:
    /// EMFILE, ENFILE, ENOBUFS) is counted and logged at a bounded rate; a failed TLS
    /// handshake is counted and logged at debug level.
    pub fn accept_error_handler(
        &self,
    ) -> impl Fn(Option<&SocketAddr>, &io::Error) + Send + Sync + use<> {
        let inner = self.0.clone();
        move |remote, error| match remote {
            None => {
                let counter = inner.metrics.accept_errors.get_or_create(&ListenerLabels {
                    listener: inner.listener,
                });
                counter.inc();
                if inner.accept_error_log.check().is_ok() {
                    tracing::warn!(
                        listener = inner.listener,
                        %error,
                        accept_errors_total = counter.get(),
                        "cannot accept a connection (at the file-descriptor limit: lower \
                         server.max_connections or raise the limit)"
                    );
                }
            }
            Some(remote) => {
                // Refusals and closes by the tracker are counted under their own reason.
                if error.get_ref().is_some_and(|inner_error| {
                    inner_error.is::<RefusedAtCap>() || inner_error.is::<ClosedByListener>()
                }) {
                    return;
                }
                inner.count(CloseReason::HandshakeFailed);
                tracing::debug!(listener = inner.listener, %remote, %error, "TLS handshake failed");
            }
        }
    }
}

async fn sweep_while_alive(inner: Weak<Inner>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.sweep();
    }
}

impl<I, S> Accept<I, S> for ConnectionTracker
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = TrackedStream<I>;
    type Service = TrackedService<S>;
    type Future = std::future::Ready<io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Some(connection) = self.0.register() else {
            return std::future::ready(Err(io::Error::other(RefusedAtCap {
                max_connections: self.0.limits.max_connections,
            })));
        };
        let service = TrackedService {
            inner: service,
            connection: connection.clone(),
            tracker: self.0.clone(),
        };
        let stream = TrackedStream {
            inner: stream,
            connection,
            tracker: self.0.clone(),
        };
        std::future::ready(Ok((stream, service)))
    }
}

/// A connection's byte stream: fails every read and write once the tracker closes it;
/// leaves the tracker's count when dropped.
pub struct TrackedStream<I> {
    inner: I,
    connection: Arc<Connection>,
    tracker: Arc<Inner>,
}

impl<I> TrackedStream<I> {
    /// Registers the task to wake on close; an error once closing.
    fn check_open(&self, cx: &Context<'_>) -> io::Result<()> {
        self.connection.waker.register(cx.waker());
        if self.connection.closing.load(Ordering::Acquire) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, ClosedByListener));
        }
        Ok(())
    }
}

impl<I> Drop for TrackedStream<I> {
    fn drop(&mut self) {
        self.tracker.unregister(&self.connection);
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedStream<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedStream<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_open(cx)?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.check_open(cx).is_err() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection's service: counts the requests in flight, which keep the connection from
/// being idle.
#[derive(Clone)]
pub struct TrackedService<S> {
    inner: S,
    connection: Arc<Connection>,
    tracker: Arc<Inner>,
}

impl<S, Request> tower::Service<Request> for TrackedService<S>
where
    S: tower::Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.connection.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            future: Box::pin(self.inner.call(request)),
            _guard: InFlightGuard {
                connection: self.connection.clone(),
                tracker: self.tracker.clone(),
            },
        }
    }
}

/// A request's handler future; the request stops being in flight when it is dropped
/// (answered or abandoned).
pub struct InFlight<F> {
    future: Pin<Box<F>>,
    _guard: InFlightGuard,
}

impl<F: std::future::Future> std::future::Future for InFlight<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.future.as_mut().poll(cx)
    }
}

struct InFlightGuard {
    connection: Arc<Connection>,
    tracker: Arc<Inner>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        // The idle clock restarts before the count drops, so the sweep never sees a
        // connection idle since before this request.
        self.connection
            .idle_since_ms
            .store(self.tracker.now_ms(), Ordering::Release);
        self.connection.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_a_quarter_of_the_descriptors_and_never_exceeds_the_request() {
        assert_eq!(connections_that_fit(4096, None), 4096);
        assert_eq!(connections_that_fit(4096, Some(1_048_576)), 4096);
        assert_eq!(connections_that_fit(4096, Some(1024)), 768);
        assert_eq!(connections_that_fit(4096, Some(200)), 136);
        assert_eq!(connections_that_fit(4096, Some(10)), 1);
    }
}
