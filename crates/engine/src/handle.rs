//! The async face of the engine: [`EngineHandle`] (cheap to clone, shared by the API layer)
//! and [`RequestStream`] (one request's outputs).
//!
//! The engine core runs on its own std::thread, blocking in `Executor::execute` once per
//! step. Commands arrive over a channel; between steps the thread drains them without
//! waiting, and when it has no work it blocks on the channel (no polling). Outputs go back
//! over one unbounded tokio channel per request: sending never blocks the engine.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokenizers::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::batch::{Executor, SeqId};
use crate::engine::{lock, validate_request, EngineConfig, EngineCore, EngineRequest};
use crate::engine::{FinishReason, RequestOutput};
use crate::error::EngineError;
use crate::metrics::EngineStats;

enum Command {
    Submit {
        seq_id: SeqId,
        req: Box<EngineRequest>,
        sink: UnboundedSender<RequestOutput>,
        arrival: Instant,
    },
    Abort(String),
    AbortSeq(SeqId),
    Shutdown(Duration),
}

struct Shared {
    alive: AtomicBool,
    accepting: AtomicBool,
}

struct Inner {
    tx: Sender<Command>,
    config: EngineConfig,
    vocab_size: usize,
    shared: Arc<Shared>,
    queued: Arc<AtomicUsize>,
    stats: Arc<Mutex<EngineStats>>,
    next_seq_id: AtomicU64,
    /// Signalled (or disconnected) when the engine thread ends.
    done: Mutex<Receiver<()>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Handle to a running engine. Clone + Send + Sync.
#[derive(Clone)]
pub struct EngineHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle")
            .field("alive", &self.is_alive())
            .finish_non_exhaustive()
    }
}

/// Marks the engine dead when its thread ends, however it ends (a panic included).
struct ExitGuard {
    shared: Arc<Shared>,
    done: Sender<()>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
        self.shared.alive.store(false, Ordering::Release);
        let _ = self.done.send(());
    }
}

impl EngineHandle {
    /// Starts the engine thread.
    pub fn start(
        config: EngineConfig,
        executor: Box<dyn Executor>,
        tokenizer: Arc<Tokenizer>,
    ) -> Result<Self, EngineError> {
        Self::start_core(EngineCore::new(config, executor, tokenizer)?)
    }

    /// Starts the engine thread over a prepared core (e.g. one with structured outputs).
    pub fn start_core(core: EngineCore) -> Result<Self, EngineError> {
        let config = core.config().clone();
        let capacity = config.num_blocks - 1;
        let full_len = config.max_model_len.div_ceil(config.block_size);
        tracing::info!(
            num_blocks = capacity,
            block_size = config.block_size,
            kv_tokens = capacity * config.block_size,
            "KV cache: {capacity} blocks x {} tokens; {:.2} sequences of max_model_len {} fit",
            config.block_size,
            capacity as f64 / full_len.max(1) as f64,
            config.max_model_len
        );
        if capacity < full_len {
            tracing::warn!(
                "the KV cache cannot hold one sequence of max_model_len ({}); longer \
                 requests will be rejected",
                config.max_model_len
            );
        }
        let shared = Arc::new(Shared {
            alive: AtomicBool::new(true),
            accepting: AtomicBool::new(true),
        });
        let (tx, rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let vocab_size = core.vocab_size();
        let queued = core.queued_counter();
        let stats = core.shared_stats();
        let guard = ExitGuard {
            shared: Arc::clone(&shared),
            done: done_tx,
        };
        let thread = std::thread::Builder::new()
            .name("qwen3-engine".into())
            .spawn(move || {
                let _guard = guard;
                engine_loop(core, rx);
            })
            .map_err(EngineError::Spawn)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tx,
                config,
                vocab_size,
                shared,
                queued,
                stats,
                next_seq_id: AtomicU64::new(1),
                done: Mutex::new(done_rx),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Queues a request. Errors: the request can never fit (InvalidRequest kind), the
    /// waiting queue is full (QueueFull), the engine is shutting down or dead.
    pub fn submit(&self, req: EngineRequest) -> Result<RequestStream, EngineError> {
        self.check(&req)?;
        self.reserve(1)?.submit(req)
    }

    /// Whether the engine would take `req` (running, accepting, and the request able to
    /// fit), without queueing it.
    pub fn check(&self, req: &EngineRequest) -> Result<(), EngineError> {
        let inner = &self.inner;
        if !inner.shared.alive.load(Ordering::Acquire) {
            return Err(EngineError::EngineDead);
        }
        if !inner.shared.accepting.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        validate_request(&inner.config, inner.vocab_size, req).map(drop)
    }

    /// Holds `count` places in the waiting queue, all or none, so that the sequences of one
    /// API request are queued together or not at all. More than the queue's limit is an
    /// invalid request (retrying cannot help); more than its free places, QueueFull.
    pub fn reserve(&self, count: usize) -> Result<Reservation, EngineError> {
        let inner = &self.inner;
        let limit = inner.config.max_waiting_requests;
        if count > limit {
            return Err(EngineError::TooManySequences { count, limit });
        }
        inner
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + count <= limit).then_some(q + count)
            })
            .map_err(|_| EngineError::QueueFull { limit })?;
        Ok(Reservation {
            handle: self.clone(),
            left: count,
        })
    }

    /// Aborts a request by id; its stream ends with FinishReason::Abort.
    pub fn abort(&self, request_id: &str) {
        let _ = self.inner.tx.send(Command::Abort(request_id.to_string()));
    }

    pub fn stats(&self) -> EngineStats {
        lock(&self.inner.stats).clone()
    }

    pub fn is_alive(&self) -> bool {
        self.inner.shared.alive.load(Ordering::Acquire)
    }

    /// Whether new requests are taken (false once shutdown has begun).
    pub fn is_accepting(&self) -> bool {
        self.is_alive() && self.inner.shared.accepting.load(Ordering::Acquire)
    }

    /// Stops accepting requests, lets those in flight finish within `grace`, aborts the rest
    /// and waits for the engine thread to end (at most a step beyond `grace`, or 30 s more
    /// if a step hangs).
    pub fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shared.accepting.store(false, Ordering::Release);
        let _ = inner.tx.send(Command::Shutdown(grace));
        {
            let done = lock(&inner.done);
            match done.recv_timeout(grace + Duration::from_secs(30)) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => {}
                Err(RecvTimeoutError::Timeout) => {
                    tracing::error!("engine thread did not stop in time");
                    return;
                }
            }
        }
        if let Some(t) = lock(&inner.thread).take() {
            if t.join().is_err() {
                tracing::error!("engine thread panicked");
            }
        }
    }
}

/// Places held in the waiting queue by [`EngineHandle::reserve`]; each [`Reservation::submit`]
/// uses one, and those left unused are given back when it is dropped.
pub struct Reservation {
    handle: EngineHandle,
    left: usize,
}

impl Reservation {
    /// Queues a request in one of the held places.
    pub fn submit(&mut self, req: EngineRequest) -> Result<RequestStream, EngineError> {
        if self.left == 0 {
            return Err(EngineError::InvalidRequest(
                "more requests submitted than places reserved".into(),
            ));
        }
        let inner = &self.handle.inner;
        self.handle.check(&req)?;
        // From here the engine owns the place: it frees it when the request is admitted.
        self.left -= 1;
        let seq_id = inner.next_seq_id.fetch_add(1, Ordering::Relaxed);
        let (sink, rx) = unbounded_channel();
        let request_id = req.request_id.clone();
        let cmd = Command::Submit {
            seq_id,
            req: Box::new(req),
            sink,
            arrival: Instant::now(),
        };
        if inner.tx.send(cmd).is_err() {
            inner.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(EngineError::EngineDead);
        }
        Ok(RequestStream {
            rx,
            seq_id,
            request_id,
            tx: inner.tx.clone(),
            done: false,
        })
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.left > 0 {
            self.handle
                .inner
                .queued
                .fetch_sub(self.left, Ordering::AcqRel);
        }
    }
}

fn engine_loop(mut core: EngineCore, rx: Receiver<Command>) {
    let mut deadline: Option<Instant> = None;
    let mut disconnected = false;
    loop {
        if !core.has_work() {
            if deadline.is_some() || disconnected {
                break;
            }
            // Idle: sleep until a command arrives.
            match rx.recv() {
                Ok(cmd) => apply(&mut core, cmd, &mut deadline),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(cmd) => apply(&mut core, cmd, &mut deadline),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // Every handle and stream is gone: nobody can read outputs any more.
                    disconnected = true;
                    break;
                }
            }
        }
        if disconnected || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if core.has_work() {
            core.step();
            if core.executor_broken() {
                tracing::error!(
                    "the executor cannot run again (a tensor-parallel rank faulted and the \
                     group is aborted); stopping the engine: /health answers 503, restart \
                     the process"
                );
                break;
            }
        }
    }
    core.abort_all();
    tracing::info!("engine stopped");
}

fn apply(core: &mut EngineCore, cmd: Command, deadline: &mut Option<Instant>) {
    match cmd {
        Command::Submit {
            seq_id,
            req,
            sink,
            arrival,
        } => {
            if let Err(e) = core.add_request_with_id(seq_id, *req, sink.clone(), arrival, true) {
                core.queued_counter().fetch_sub(1, Ordering::AcqRel);
                let _ = sink.send(RequestOutput::finished(FinishReason::Error(e.to_string())));
            }
        }
        Command::Abort(id) => {
            core.abort_request(&id);
        }
        Command::AbortSeq(seq_id) => {
            core.abort_seq(seq_id);
        }
        Command::Shutdown(grace) => {
            let d = Instant::now() + grace;
            *deadline = Some(deadline.map_or(d, |old| old.min(d)));
        }
    }
}

/// One request's outputs, in order; the last one carries a finish reason. Dropping the
/// stream before that aborts the request and frees its KV blocks.
pub struct RequestStream {
    rx: UnboundedReceiver<RequestOutput>,
    seq_id: SeqId,
    request_id: String,
    tx: Sender<Command>,
    done: bool,
}

impl std::fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestStream")
            .field("request_id", &self.request_id)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl RequestStream {
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The next output; None after the final one.
    pub async fn next(&mut self) -> Option<RequestOutput> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Poll form of [`RequestStream::next`], for wrapping into a `futures::Stream`
    /// (`futures::stream::poll_fn(move |cx| s.poll_next(cx))`).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<RequestOutput>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(out)) => {
                if out.finish_reason.is_some() {
                    self.done = true;
                }
                Poll::Ready(Some(out))
            }
            Poll::Ready(None) => {
                // The engine dropped the request without a final output: it died.
                self.done = true;
                Poll::Ready(Some(RequestOutput::finished(FinishReason::Error(
                    "the engine stopped before the request finished".into(),
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.send(Command::AbortSeq(self.seq_id));
        }
    }
}
