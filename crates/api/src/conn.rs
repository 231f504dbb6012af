//! Serving TCP connections: HTTP/1.1 over hyper with a header-read timeout, a request-body
//! deadline, an idle keep-alive timeout, a bound on open connections (beyond it a 503 and
//! close), and graceful shutdown. `axum::serve` has none of these knobs, and without them a
//! client holding sockets open (slowloris, idle keep-alive) exhausts the file descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::error::ApiError;

/// Largest request head (request line and headers) read.
const MAX_HEAD_BYTES: usize = 128 << 10;

/// How long a connection may take, and how many may be open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// From the first byte of a request to the end of its headers.
    pub header_read_timeout: Duration,
    /// From the end of a request's headers to the end of its body; beyond it a 408.
    pub body_read_timeout: Duration,
    /// A connection with no request in flight and nothing received is closed after this
    /// (uvicorn, which vLLM runs on, uses 5 s). Also applies before the first request.
    pub keep_alive_timeout: Duration,
    /// Open connections at most; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(5),
            max_connections: 2048,
        }
    }
}

/// The error a request body gives when its deadline passes; [`crate::server`] answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body was not received within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

impl hyper::body::Body for DeadlineBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the idle watchdog of one connection looks at.
struct Activity {
    start: Instant,
    /// Requests whose response body has not yet been dropped by hyper.
    in_flight: AtomicUsize,
    /// Bytes received so far.
    read: AtomicU64,
    /// When (ms since `start`) the connection last became idle, and `read` then.
    idle_since_ms: AtomicU64,
    read_at_idle: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            read: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            read_at_idle: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn request_done(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.read_at_idle
                .store(self.read.load(Ordering::Acquire), Ordering::Release);
            self.idle_since_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// How much longer the connection may stay idle; `None` while it is not idle (a request
    /// in flight, or a new one arriving: the header timeout covers that).
    fn idle_left(&self, limit: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0
            || self.read.load(Ordering::Acquire) != self.read_at_idle.load(Ordering::Acquire)
        {
            return None;
        }
        let idle = self
            .now_ms()
            .saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
        Some(limit.saturating_sub(Duration::from_millis(idle)))
    }
}

/// Decrements the in-flight count when hyper drops the response body (sent or abandoned).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A TCP stream that counts the bytes it receives, and gives hyper's own error responses
/// (a request it could not parse: 400, 414, 431, written with an empty body) a body in
/// OpenAI's shape.
struct CountingStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// A replacement response being written: its bytes, how many are written, and the
    /// length of hyper's response it stands for.
    replacing: Option<(Vec<u8>, usize, usize)>,
}

/// The OpenAI-shaped replacement of `head` when it is one of hyper's own bodiless error
/// responses (no request was handed to the router, which always answers errors with a
/// body).
fn replace_parse_error(head: &[u8], in_flight: usize) -> Option<Vec<u8>> {
    if in_flight > 0 || !head.starts_with(b"HTTP/1.1 4") {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    if !text
        .to_ascii_lowercase()
        .contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    let status = axum::http::StatusCode::from_bytes(head.get(9..12)?).ok()?;
    let message = match status.as_u16() {
        414 => "the request URI is too long",
        431 => "the request headers are too large",
        _ => "the request is not valid HTTP/1.1",
    };
    let body = ApiError::with_status(status, message).to_json_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl CountingStream {
    fn poll_replacing(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        while let Some((bytes, written, stands_for)) = self.replacing.as_mut() {
            if *written == bytes.len() {
                let n = *stands_for;
                self.replacing = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        Poll::Ready(Ok(0))
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.read.fetch_add(n as u64, Ordering::AcqRel);
        }
        res
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.replacing.is_none() {
            let in_flight = self.activity.in_flight.load(Ordering::Acquire);
            match replace_parse_error(buf, in_flight) {
                Some(r) => self.replacing = Some((r, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_replacing(cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        // hyper writes its own error responses whole, in the first slice.
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.replacing.is_some()
            || first.is_some_and(|b| {
                replace_parse_error(b, self.activity.in_flight.load(Ordering::Acquire)).is_some()
            })
        {
            let Some(first) = first else {
                return self.poll_replacing(cx);
            };
            return self.poll_write(cx, first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves when the connection has been idle for `limit`.
async fn idle_expired(activity: &Activity, limit: Duration) {
    loop {
        let wait = match activity.idle_left(limit) {
            Some(left) if left.is_zero() => return,
            Some(left) => left,
            // Busy: look again later (a request's end resets the idle clock).
            None => limit,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
    }
}

/// The response to a connection beyond `max_connections`, written without waiting.
fn refusal(limit: usize) -> Vec<u8> {
    let body = ApiError::with_status(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        format!("the server has {limit} open connections, its limit; retry later"),
    )
    .to_json_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve_one(
    stream: TcpStream,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(CountingStream {
        inner: stream,
        activity: activity.clone(),
        replacing: None,
    });
    let act = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        act.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(act.clone());
        let limit = limits.body_read_timeout;
        let req = req.map(|inner| {
            Body::new(DeadlineBody {
                inner,
                deadline: Box::pin(tokio::time::sleep(limit)),
                limit,
            })
        });
        let app = app.clone();
        async move {
            let resp = match app.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            // The guard lives as long as the body: hyper drops it once sent or abandoned.
            Ok::<_, Infallible>(resp.map(|b| {
                Body::new(b.map_frame(move |f| {
                    let _ = &guard;
                    f
                }))
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Headers beyond this are a 431 (a connection's read buffer is bounded by it too).
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!("connection ended: {e}");
                }
                return;
            }
            _ = idle_expired(&activity, limits.keep_alive_timeout), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Serves `app` on `listener` with `limits` until `shutdown` resolves; then stops accepting,
/// closes idle connections and lets open responses (streams included) finish.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: the limit above should prevent them; don't spin.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // One non-blocking write, then close: a refused client costs no task.
            let _ = stream.try_write(&refusal(max));
            continue;
        };
        let app = app.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            serve_one(stream, app, limits, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until it ends.
    let _ = permits.acquire_many(max as u32).await;
    Ok(())
}
