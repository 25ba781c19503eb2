//! The accept loop, plain or TLS, with connection caps and timeouts.
//!
//! A connection over the total cap or over its client address's cap is closed at once, before
//! any byte is read. Every accepted connection is in one of three phases, advanced by its socket
//! and its service:
//!
//! - idle: waiting for a request (after the accept, the TLS handshake or the last response);
//!   closed after `idle_timeout`;
//! - head: a first byte of a request arrived; the head must be complete within
//!   `header_timeout`, however slowly the bytes come;
//! - busy: a handler runs; its request body must arrive within `body_timeout` of the head,
//!   else the request is answered `408 body_timeout` and the connection closed.
//!
//! A watchdog beside each connection closes it when its phase's deadline passes, so that a
//! client that sends nothing, or one byte at a time, holds a socket only for a bounded time.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, header};
use axum::response::IntoResponse as _;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::error::ApiError;
use crate::state::AppState;
use vmattest_api::ErrorCode;

/// Connection caps and timeouts (`vmattest serve --max-connections ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// From the first byte of a request until its head (request line and headers) is complete.
    pub header_timeout: Duration,
    /// From a complete head until the whole request body has arrived.
    pub body_timeout: Duration,
    /// How long a connection may wait for a request: after the accept, the TLS handshake or
    /// the previous response.
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// Open connections, in total.
    pub max_connections: usize,
    /// Open connections from one client address (IPv4-mapped IPv6 counts as IPv4).
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 64,
        }
    }
}

/// How long a shutdown waits for in-flight requests before it drops their connections.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Open connections: the total and per client address.
#[derive(Debug, Default)]
struct Slots {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One open connection's place in [`Slots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
}

fn take_slot(slots: &Arc<Mutex<Slots>>, ip: IpAddr, limits: &Limits) -> Result<Slot, &'static str> {
    let ip = ip.to_canonical();
    let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
    if s.total >= limits.max_connections {
        return Err("total_cap");
    }
    let n = s.per_ip.entry(ip).or_insert(0);
    if *n >= limits.max_connections_per_ip {
        return Err("per_ip_cap");
    }
    *n += 1;
    s.total += 1;
    Ok(Slot {
        slots: slots.clone(),
        ip,
    })
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.per_ip.remove(&self.ip);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Head,
    Busy,
}

/// A connection's phase and when it began, packed into one word so that the watchdog always
/// reads a consistent pair: the phase in the top two bits, milliseconds since `base` below.
#[derive(Debug)]
struct Activity {
    base: Instant,
    state: AtomicU64,
    changed: Notify,
}

const PHASE_SHIFT: u32 = 62;
const MS_MASK: u64 = (1 << PHASE_SHIFT) - 1;

impl Activity {
    fn new() -> Activity {
        Activity {
            base: Instant::now(),
            state: AtomicU64::new(0),
            changed: Notify::new(),
        }
    }

    fn pack(&self, phase: Phase) -> u64 {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(MS_MASK) & MS_MASK;
        let p = match phase {
            Phase::Idle => 0,
            Phase::Head => 1,
            Phase::Busy => 2,
        };
        (p << PHASE_SHIFT) | ms
    }

    fn unpack(state: u64) -> (Phase, Duration) {
        let phase = match state >> PHASE_SHIFT {
            0 => Phase::Idle,
            1 => Phase::Head,
            _ => Phase::Busy,
        };
        (phase, Duration::from_millis(state & MS_MASK))
    }

    fn set(&self, phase: Phase) {
        self.state.store(self.pack(phase), Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Bytes arrived: an idle connection starts a request head.
    fn read_some(&self) {
        let s = self.state.load(Ordering::Acquire);
        if Activity::unpack(s).0 == Phase::Idle
            && self
                .state
                .compare_exchange(
                    s,
                    self.pack(Phase::Head),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        {
            self.changed.notify_waiters();
        }
    }

    /// Returns, naming the timeout, once the current phase has lasted longer than its limit.
    async fn watchdog(&self, limits: &Limits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let state = self.state.load(Ordering::Acquire);
            let (phase, since) = Activity::unpack(state);
            let (limit, name) = match phase {
                Phase::Idle => (limits.idle_timeout, "idle_timeout"),
                Phase::Head => (limits.header_timeout, "header_timeout"),
                // The handler's body reads carry their own deadline.
                Phase::Busy => {
                    changed.await;
                    continue;
                }
            };
            let deadline = self.base + since + limit;
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => {
                    if self.state.load(Ordering::Acquire) == state {
                        return name;
                    }
                }
                () = &mut changed => {}
            }
        }
    }
}

/// The socket under hyper (and under TLS): reports arriving bytes to the connection's phase.
#[derive(Debug)]
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A request body that fails once its deadline passes, and says so in `timed_out`.
struct TimeoutBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl HttpBody for TimeoutBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|r| r.map_err(Into::into))),
            Poll::Pending => {
                if this.deadline.as_mut().poll(cx).is_ready() {
                    this.timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err("request body timeout".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body whose end (hyper drops it once written) makes the connection idle again.
struct DoneBody {
    inner: Body,
    activity: Arc<Activity>,
}

impl HttpBody for DoneBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for DoneBody {
    fn drop(&mut self) {
        self.activity.set(Phase::Idle);
    }
}

/// Runs one request through the router with a deadline on its body.
async fn handle(
    router: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    state: AppState,
    req: Request<Incoming>,
) -> Result<Response<DoneBody>, Infallible> {
    activity.set(Phase::Busy);
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        Body::new(TimeoutBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(body_timeout)),
            timed_out: timed_out.clone(),
        })
    });
    let mut resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if timed_out.load(Ordering::Acquire) {
        state.metrics.connection_closed("body_timeout");
        resp = ApiError::new(
            ErrorCode::BodyTimeout,
            format!(
                "request body: not received within {}s of the request head",
                body_timeout.as_secs_f64()
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(resp.map(|inner| DoneBody { inner, activity }))
}

/// What every connection task shares.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: Arc<Limits>,
    state: AppState,
    stop: watch::Receiver<bool>,
    /// Held by every connection task; the shutdown waits until all are dropped.
    _alive: mpsc::Sender<()>,
}

async fn serve_conn<I>(io: I, activity: Arc<Activity>, mut sh: Shared, peer: std::net::SocketAddr)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = {
        let (router, activity, state) = (sh.router.clone(), activity.clone(), sh.state.clone());
        let body_timeout = sh.limits.body_timeout;
        hyper::service::service_fn(move |req| {
            handle(
                router.clone(),
                activity.clone(),
                body_timeout,
                state.clone(),
                req,
            )
        })
    };
    // hyper's own header timer would also run while the connection is idle; the watchdog
    // times idle and head separately instead.
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .header_read_timeout(None)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection");
                }
                return;
            }
            why = activity.watchdog(&sh.limits) => {
                tracing::debug!(%peer, why, "connection closed");
                sh.state.metrics.connection_closed(why);
                return;
            }
            _ = sh.stop.changed(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Accepts until `shutdown`, then lets in-flight requests finish (for at most [`DRAIN_LIMIT`]).
pub async fn run(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let shared = Shared {
        router,
        limits: Arc::new(limits),
        state,
        stop: stop_rx,
        _alive: alive_tx,
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, say: back off rather than spin while timeouts
                    // close connections.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match take_slot(&slots, peer.ip(), &shared.limits) {
            Ok(s) => s,
            Err(why) => {
                tracing::debug!(%peer, why, "connection refused");
                shared.state.metrics.connection_closed(why);
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = Watched {
            inner: tcp,
            activity: activity.clone(),
        };
        let sh = shared.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let Some(acceptor) = tls else {
                return serve_conn(io, activity, sh, peer).await;
            };
            match tokio::time::timeout(sh.limits.tls_handshake_timeout, acceptor.accept(io)).await {
                Ok(Ok(stream)) => {
                    activity.set(Phase::Idle);
                    serve_conn(stream, activity, sh, peer).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake"),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timeout");
                    sh.state.metrics.connection_closed("tls_handshake_timeout");
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    drop(shared);
    // Every task holds a sender; recv() ends when the last is dropped.
    if tokio::time::timeout(DRAIN_LIMIT, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {DRAIN_LIMIT:?}; closing them");
    }
}

/// Raises the soft limit on open files to the hard limit, so that the connection cap, not the
/// descriptor table, is what refuses connections. Returns the soft limit now in force.
/// `u64::MAX` stands for no limit.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return lim.maximum.unwrap_or(u64::MAX),
            Err(e) => tracing::warn!(error = %e, "raising the open-file limit"),
        }
    }
    lim.current.unwrap_or(u64::MAX)
}
