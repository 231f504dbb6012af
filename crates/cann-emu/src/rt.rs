//! The ACL runtime: init, devices, contexts, streams (deferred, in order), events,
//! allocations and graph capture (copies and memsets: `copy.rs`).

use crate::mem;
use crate::state::{bump, code_of, drop1, lock, recent_error_ptr, Fail, Handles, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

/// A unit of stream work; `Fn` (not `FnOnce`) so that captured graphs can replay it.
pub type Task = Arc<dyn Fn() -> Res<()> + Send + Sync>;

pub struct Stream {
    pub dev: i32,
    queue: Mutex<VecDeque<Task>>,
    /// While capturing: the mode, the capturing thread and the recorded work.
    capture: Mutex<Option<(aclmdlRICaptureMode, std::thread::ThreadId, Vec<Task>)>>,
    /// Held while the queue runs, so that two threads never run one stream at once.
    run: Mutex<()>,
    /// Task groups (`task_group.rs`): recording or updating one, and the groups made
    /// during the current capture.
    tg: Mutex<(crate::task_group::TgState, Vec<u64>)>,
}

struct EventState {
    recorded_on: Option<Arc<Stream>>,
    done: Arc<AtomicBool>,
    at: Arc<Mutex<Option<Instant>>>,
}

struct Rt {
    init: bool,
    streams: Handles<Arc<Stream>>,
    default_streams: Vec<(i32, Arc<Stream>)>,
    events: Handles<EventState>,
    contexts: Handles<i32>,
    /// Captured graphs: their device and their recorded work.
    graphs: Handles<(i32, Arc<Vec<Task>>)>,
}

static RT: LazyLock<Mutex<Rt>> = LazyLock::new(|| {
    Mutex::new(Rt {
        init: false,
        streams: Handles::new(0x5100_0000_0000_0000),
        default_streams: Vec::new(),
        events: Handles::new(0x5200_0000_0000_0000),
        contexts: Handles::new(0x5300_0000_0000_0000),
        graphs: Handles::new(0x5400_0000_0000_0000),
    })
});

/// The device current on this thread, if any.
pub(crate) fn current_device_opt() -> Option<i32> {
    CUR_DEV.with(|d| d.get())
}

thread_local! {
    static CUR_DEV: Cell<Option<i32>> = const { Cell::new(None) };
}

pub fn reset() {
    let mut rt = lock(&RT);
    rt.init = false;
    rt.streams.clear();
    rt.default_streams.clear();
    rt.events.clear();
    rt.contexts.clear();
    rt.graphs.clear();
    crate::task_group::reset();
    CUR_DEV.with(|c| c.set(None));
}

pub fn current_device() -> Res<i32> {
    CUR_DEV.with(|c| c.get()).ok_or_else(|| {
        Fail::new(
            ACL_ERROR_RT_CONTEXT_NULL,
            "no device set on this thread: call aclrtSetDevice or aclrtSetCurrentContext first",
        )
    })
}

fn check_dev(id: i32) -> Res<()> {
    if id < 0 || id as u32 >= crate::state::device_count() {
        return Err(Fail::new(
            ACL_ERROR_RT_INVALID_DEVICEID,
            format!(
                "invalid device id {id}: {} emulated devices",
                crate::state::device_count()
            ),
        ));
    }
    Ok(())
}

fn bad_handle(what: &str, h: *mut c_void) -> Fail {
    bump(&STATS.bad_handles);
    Fail::new(
        ACL_ERROR_INVALID_PARAM,
        format!("{what}: {h:p} is not a live handle"),
    )
}

/// The stream behind a handle (null = the current device's default stream).
pub fn stream_of(h: aclrtStream, what: &str) -> Res<Arc<Stream>> {
    if h.is_null() {
        let dev = current_device()?;
        let mut rt = lock(&RT);
        if let Some((_, s)) = rt.default_streams.iter().find(|(d, _)| *d == dev) {
            return Ok(s.clone());
        }
        let s = Arc::new(new_stream(dev));
        rt.default_streams.push((dev, s.clone()));
        return Ok(s);
    }
    lock(&RT)
        .streams
        .get(h as u64)
        .cloned()
        .ok_or_else(|| bad_handle(what, h))
}

fn new_stream(dev: i32) -> Stream {
    Stream {
        dev,
        queue: Mutex::new(VecDeque::new()),
        capture: Mutex::new(None),
        run: Mutex::new(()),
        tg: Mutex::new(Default::default()),
    }
}

impl Stream {
    /// Queues work, or records it while the stream is being captured.
    pub fn enqueue(&self, t: Task) {
        self.enqueue_kind(None, t)
    }

    /// Queues (or records) one aclnn operator's work: the only kind of task a task group
    /// may hold.
    pub fn enqueue_op(&self, name: &'static str, t: Task) {
        self.enqueue_kind(Some(name), t)
    }

    fn enqueue_kind(&self, op: Option<&'static str>, t: Task) {
        let Some(t) = crate::task_group::route(&mut lock(&self.tg).0, op, t) else {
            return;
        };
        let mut cap = lock(&self.capture);
        if let Some((_, _, tasks)) = cap.as_mut() {
            tasks.push(t);
        } else {
            drop(cap);
            lock(&self.queue).push_back(t);
        }
    }

    pub fn is_capturing(&self) -> bool {
        lock(&self.capture).is_some()
    }

    pub(crate) fn task_group(
        &self,
    ) -> std::sync::MutexGuard<'_, (crate::task_group::TgState, Vec<u64>)> {
        lock(&self.tg)
    }

    /// Tasks recorded so far, while capturing.
    pub(crate) fn captured_len(&self) -> Option<usize> {
        lock(&self.capture).as_ref().map(|c| c.2.len())
    }

    /// The recorded tasks from `start` on, taken out of the capture.
    pub(crate) fn take_captured_from(&self, start: usize) -> Option<Vec<Task>> {
        let mut cap = lock(&self.capture);
        let tasks = &mut cap.as_mut()?.2;
        Some(tasks.split_off(start.min(tasks.len())))
    }

    pub(crate) fn push_captured(&self, t: Task) {
        if let Some(c) = lock(&self.capture).as_mut() {
            c.2.push(t);
        }
    }

    /// Runs queued work in order. After a failure the rest of the queue is dropped, as
    /// a device exception poisons the stream.
    pub fn flush(&self) -> Res<()> {
        let _run = lock(&self.run);
        loop {
            let t = lock(&self.queue).pop_front();
            let Some(t) = t else { return Ok(()) };
            if let Err(e) = crate::state::no_panic("stream task", || t()) {
                bump(&STATS.exec_errors);
                lock(&self.queue).clear();
                return Err(e);
            }
        }
    }
}

/// The stream budget of a device: streams the host created plus captured graphs, each of
/// which holds a stream of its own while it lives. vllm-ascend (`vllm_ascend/utils.py`,
/// `update_aclgraph_sizes`; `docs/source/developer_guide/feature_guide/ACL_Graph.md`,
/// "Stream resource constraint"): every piecewise sub-graph uses at least one stream and the
/// bound is "the number of streams, which is 2048". Past it CANN answers
/// `ACL_ERROR_RT_NO_STREAM_RESOURCE` (207008, "Stream资源不足", ACL error-code table of
/// `acl_base.h`, which points to aclrtCreateStream's stream limit).
fn stream_budget_check(rt: &Rt, dev: i32, what: &str) -> Res<()> {
    let streams = rt.streams.values().filter(|s| s.dev == dev).count() as u64;
    let graphs = rt.graphs.values().filter(|(d, _)| *d == dev).count() as u64;
    let budget = crate::state::stream_budget();
    if streams + graphs >= budget {
        return Err(Fail::new(
            ACL_ERROR_RT_NO_STREAM_RESOURCE,
            format!(
                "{what}: no stream resource on device {dev}: {streams} streams and {graphs} captured graphs use all {budget}"
            ),
        ));
    }
    Ok(())
}

fn all_streams(dev: Option<i32>) -> Vec<Arc<Stream>> {
    let rt = lock(&RT);
    rt.streams
        .values()
        .cloned()
        .chain(rt.default_streams.iter().map(|(_, s)| s.clone()))
        .filter(|s| dev.is_none_or(|d| s.dev == d))
        .collect()
}

pub(crate) fn sync_device(dev: Option<i32>) -> Res<()> {
    let mut first = Ok(());
    for s in all_streams(dev) {
        if s.is_capturing() {
            continue;
        }
        if let Err(e) = s.flush() {
            if first.is_ok() {
                first = Err(e);
            }
        }
    }
    first
}

pub(crate) fn capture_blocks_sync(dev: Option<i32>, what: &str) -> Res<()> {
    let blocking = all_streams(dev).iter().any(|s| {
        lock(&s.capture)
            .as_ref()
            .is_some_and(|(m, th, _)| match *m {
                // Global mode forbids unsafe calls from any thread, thread-local mode only
                // from the capturing thread, relaxed mode never (CUDA's capture modes).
                aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_GLOBAL => true,
                aclmdlRICaptureMode::ACL_MODEL_RI_CAPTURE_MODE_THREAD_LOCAL => {
                    *th == std::thread::current().id()
                }
                _ => false,
            })
    });
    if blocking {
        bump(&STATS.capture_violations);
        return Err(Fail::new(
            ACL_ERROR_RT_STREAM_CAPTURED,
            format!("{what}: not allowed while a stream of this device is being captured"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Exports
// ---------------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn aclInit(_config: *const c_char) -> aclError {
    let mut rt = lock(&RT);
    if rt.init {
        crate::state::set_error("aclInit: already initialised");
        return ACL_ERROR_REPEAT_INITIALIZE;
    }
    rt.init = true;
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclFinalize() -> aclError {
    let mut rt = lock(&RT);
    if !rt.init {
        crate::state::set_error("aclFinalize: not initialised");
        return ACL_ERROR_REPEAT_FINALIZE;
    }
    rt.init = false;
    ACL_SUCCESS
}

#[no_mangle]
pub extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    recent_error_ptr()
}

#[no_mangle]
pub extern "C" fn aclrtSetDevice(id: i32) -> aclError {
    code_of((|| {
        if !lock(&RT).init {
            return Err(Fail::new(
                ACL_ERROR_UNINITIALIZE,
                "aclrtSetDevice: aclInit has not been called",
            ));
        }
        check_dev(id)?;
        CUR_DEV.with(|c| c.set(Some(id)));
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclrtResetDevice(id: i32) -> aclError {
    code_of((|| {
        check_dev(id)?;
        sync_device(Some(id))?;
        CUR_DEV.with(|c| {
            if c.get() == Some(id) {
                c.set(None)
            }
        });
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetDevice(id: *mut i32) -> aclError {
    code_of((|| {
        let d = current_device()?;
        out(id, d)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> aclError {
    code_of(out(count, crate::state::device_count()))
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeDevice() -> aclError {
    code_of((|| {
        let dev = current_device()?;
        bump(&STATS.host_syncs);
        capture_blocks_sync(Some(dev), "aclrtSynchronizeDevice")?;
        sync_device(Some(dev))
    })())
}

fn out<T>(p: *mut T, v: T) -> Res<()> {
    if p.is_null() {
        return Err(Fail::new(ACL_ERROR_INVALID_PARAM, "null output pointer"));
    }
    // SAFETY: non-null; the caller passes a writable out-pointer per the C API.
    unsafe { p.write(v) };
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateContext(ctx: *mut aclrtContext, id: i32) -> aclError {
    code_of((|| {
        if !lock(&RT).init {
            return Err(Fail::new(
                ACL_ERROR_UNINITIALIZE,
                "aclInit has not been called",
            ));
        }
        check_dev(id)?;
        let h = lock(&RT).contexts.insert(id);
        CUR_DEV.with(|c| c.set(Some(id)));
        out(ctx, h as aclrtContext)
    })())
}

#[no_mangle]
pub extern "C" fn aclrtDestroyContext(ctx: aclrtContext) -> aclError {
    code_of(match lock(&RT).contexts.remove(ctx as u64) {
        Some(_) => Ok(()),
        None => Err(bad_handle("aclrtDestroyContext", ctx)),
    })
}

#[no_mangle]
pub extern "C" fn aclrtSetCurrentContext(ctx: aclrtContext) -> aclError {
    code_of((|| {
        let dev = lock(&RT).contexts.get(ctx as u64).copied();
        let dev = dev.ok_or_else(|| bad_handle("aclrtSetCurrentContext", ctx))?;
        CUR_DEV.with(|c| c.set(Some(dev)));
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetCurrentContext(ctx: *mut aclrtContext) -> aclError {
    code_of((|| {
        let dev = current_device()?;
        let h = {
            let mut rt = lock(&RT);
            let found = rt
                .contexts
                .map_iter()
                .find(|(_, d)| **d == dev)
                .map(|(h, _)| *h);
            match found {
                Some(h) => h,
                None => rt.contexts.insert(dev),
            }
        };
        out(ctx, h as aclrtContext)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStream(stream: *mut aclrtStream) -> aclError {
    code_of((|| {
        let dev = current_device()?;
        let mut rt = lock(&RT);
        stream_budget_check(&rt, dev, "aclrtCreateStream")?;
        let h = rt.streams.insert(Arc::new(new_stream(dev)));
        bump(&STATS.live_streams);
        out(stream, h as aclrtStream)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateStreamWithConfig(
    stream: *mut aclrtStream,
    _priority: u32,
    _flag: u32,
) -> aclError {
    // SAFETY: same contract as aclrtCreateStream.
    unsafe { aclrtCreateStream(stream) }
}

#[no_mangle]
pub extern "C" fn aclrtDestroyStream(stream: aclrtStream) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclrtDestroyStream")?;
        if stream.is_null() {
            return Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                "aclrtDestroyStream: the default stream cannot be destroyed",
            ));
        }
        // Pending work still runs, as the runtime drains a stream it destroys.
        let r = if s.is_capturing() { Ok(()) } else { s.flush() };
        lock(&RT).streams.remove(stream as u64);
        drop1(&STATS.live_streams);
        r
    })())
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeStream(stream: aclrtStream) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclrtSynchronizeStream")?;
        bump(&STATS.host_syncs);
        if s.is_capturing() {
            bump(&STATS.capture_violations);
            return Err(Fail::new(
                ACL_ERROR_RT_STREAM_CAPTURED,
                "aclrtSynchronizeStream: the stream is being captured",
            ));
        }
        s.flush()
    })())
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeStreamWithTimeout(stream: aclrtStream, _t: i32) -> aclError {
    aclrtSynchronizeStream(stream)
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMalloc(
    p: *mut *mut c_void,
    size: usize,
    _policy: aclrtMemMallocPolicy,
) -> aclError {
    code_of((|| {
        let dev = current_device()?;
        let a = mem::malloc(dev, size)?;
        out(p, a as *mut c_void)
    })())
}

#[no_mangle]
pub extern "C" fn aclrtFree(p: *mut c_void) -> aclError {
    code_of(mem::free(p as u64))
}

#[no_mangle]
pub unsafe extern "C" fn aclrtMallocHost(p: *mut *mut c_void, size: usize) -> aclError {
    code_of((|| {
        let a = mem::malloc_host(size)?;
        out(p, a as *mut c_void)
    })())
}

#[no_mangle]
pub extern "C" fn aclrtFreeHost(p: *mut c_void) -> aclError {
    code_of(mem::free_host(p as usize))
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetMemInfo(
    _attr: aclrtMemAttr,
    free: *mut usize,
    total: *mut usize,
) -> aclError {
    code_of((|| {
        let dev = current_device()?;
        let (f, t) = mem::mem_info(dev);
        out(free, f as usize)?;
        out(total, t as usize)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEvent(event: *mut aclrtEvent) -> aclError {
    let h = lock(&RT).events.insert(EventState {
        recorded_on: None,
        done: Arc::new(AtomicBool::new(false)),
        at: Arc::new(Mutex::new(None)),
    });
    bump(&STATS.live_events);
    code_of(out(event, h as aclrtEvent))
}

#[no_mangle]
pub unsafe extern "C" fn aclrtCreateEventWithFlag(event: *mut aclrtEvent, _flag: u32) -> aclError {
    // SAFETY: same contract as aclrtCreateEvent.
    unsafe { aclrtCreateEvent(event) }
}

#[no_mangle]
pub extern "C" fn aclrtDestroyEvent(event: aclrtEvent) -> aclError {
    code_of(match lock(&RT).events.remove(event as u64) {
        Some(_) => {
            drop1(&STATS.live_events);
            Ok(())
        }
        None => Err(bad_handle("aclrtDestroyEvent", event)),
    })
}

#[no_mangle]
pub extern "C" fn aclrtRecordEvent(event: aclrtEvent, stream: aclrtStream) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclrtRecordEvent")?;
        let (done, at) = {
            let mut rt = lock(&RT);
            let e = rt
                .events
                .get_mut(event as u64)
                .ok_or_else(|| bad_handle("aclrtRecordEvent", event))?;
            // A new record replaces the previous one, as on the device.
            e.done = Arc::new(AtomicBool::new(false));
            e.at = Arc::new(Mutex::new(None));
            e.recorded_on = Some(s.clone());
            (e.done.clone(), e.at.clone())
        };
        s.enqueue(Arc::new(move || {
            *lock(&at) = Some(Instant::now());
            done.store(true, Ordering::SeqCst);
            Ok(())
        }));
        Ok(())
    })())
}

fn event_wait_target(event: aclrtEvent, what: &str) -> Res<Option<(Arc<Stream>, Arc<AtomicBool>)>> {
    let rt = lock(&RT);
    let e = rt
        .events
        .get(event as u64)
        .ok_or_else(|| bad_handle(what, event))?;
    Ok(e.recorded_on.clone().map(|s| (s, e.done.clone())))
}

#[no_mangle]
pub extern "C" fn aclrtStreamWaitEvent(stream: aclrtStream, event: aclrtEvent) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclrtStreamWaitEvent")?;
        let target = event_wait_target(event, "aclrtStreamWaitEvent")?;
        if let Some((other, done)) = target {
            if !Arc::ptr_eq(&other, &s) {
                s.enqueue(Arc::new(move || {
                    if !done.load(Ordering::SeqCst) {
                        other.flush()?;
                    }
                    Ok(())
                }));
            }
        }
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclrtSynchronizeEvent(event: aclrtEvent) -> aclError {
    code_of((|| {
        bump(&STATS.host_syncs);
        if let Some((s, done)) = event_wait_target(event, "aclrtSynchronizeEvent")? {
            if !done.load(Ordering::SeqCst) {
                if s.is_capturing() {
                    bump(&STATS.capture_violations);
                    return Err(Fail::new(
                        ACL_ERROR_RT_STREAM_CAPTURED,
                        "aclrtSynchronizeEvent: the event's stream is being captured",
                    ));
                }
                s.flush()?;
            }
        }
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclrtEventElapsedTime(
    ms: *mut f32,
    start: aclrtEvent,
    end: aclrtEvent,
) -> aclError {
    code_of((|| {
        let t = |e: aclrtEvent| -> Res<Instant> {
            let rt = lock(&RT);
            let ev = rt
                .events
                .get(e as u64)
                .ok_or_else(|| bad_handle("aclrtEventElapsedTime", e))?;
            let at = *lock(&ev.at);
            at.ok_or_else(|| {
                Fail::new(
                    ACL_ERROR_INVALID_PARAM,
                    "aclrtEventElapsedTime: event not recorded or not yet complete",
                )
            })
        };
        let (a, b) = (t(start)?, t(end)?);
        out(ms, b.saturating_duration_since(a).as_secs_f32() * 1000.0)
    })())
}

#[no_mangle]
pub extern "C" fn aclmdlRICaptureBegin(stream: aclrtStream, mode: aclmdlRICaptureMode) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclmdlRICaptureBegin")?;
        if stream.is_null() {
            return Err(Fail::new(
                ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
                "aclmdlRICaptureBegin: the default stream cannot be captured",
            ));
        }
        if mode.0 > 2 {
            return Err(Fail::new(
                ACL_ERROR_RT_CAPTURE_MODE_NOT_SUPPORT,
                format!("aclmdlRICaptureBegin: invalid mode {mode:?}"),
            ));
        }
        let mut cap = lock(&s.capture);
        if cap.is_some() {
            return Err(Fail::new(
                ACL_ERROR_RT_STREAM_CAPTURED,
                "aclmdlRICaptureBegin: the stream is already being captured",
            ));
        }
        *cap = Some((mode, std::thread::current().id(), Vec::new()));
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclmdlRICaptureEnd(stream: aclrtStream, ri: *mut aclmdlRI) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclmdlRICaptureEnd")?;
        let tasks = lock(&s.capture).take().ok_or_else(|| {
            Fail::new(
                ACL_ERROR_RT_STREAM_NOT_CAPTURED,
                "aclmdlRICaptureEnd: the stream is not being captured",
            )
        })?;
        let (open, made) = {
            let mut tg = s.task_group();
            let open = !matches!(tg.0, crate::task_group::TgState::None);
            tg.0 = Default::default();
            (open, std::mem::take(&mut tg.1))
        };
        if open {
            // The group's tasks die with the capture (aclmdlRICaptureTaskGrpBegin/End are
            // used in pairs: "成对使用", aclcppdevg_03_1823).
            crate::task_group::capture_ended(made, None);
            return Err(Fail::new(
                ACL_ERROR_RT_PARAM_INVALID,
                "aclmdlRICaptureEnd: a task group is still open (aclmdlRICaptureTaskGrpEnd first)",
            ));
        }
        let mut rt = lock(&RT);
        if let Err(e) = stream_budget_check(&rt, s.dev, "aclmdlRICaptureEnd") {
            crate::task_group::capture_ended(made, None);
            return Err(e);
        }
        let h = rt.graphs.insert((s.dev, Arc::new(tasks.2)));
        crate::task_group::capture_ended(made, Some(h));
        bump(&STATS.live_graphs);
        out(ri, h as aclmdlRI)
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclmdlRICaptureGetInfo(
    stream: aclrtStream,
    status: *mut aclmdlRICaptureStatus,
    ri: *mut aclmdlRI,
) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclmdlRICaptureGetInfo")?;
        let st = if s.is_capturing() {
            aclmdlRICaptureStatus::ACL_MODEL_RI_CAPTURE_STATUS_ACTIVE
        } else {
            aclmdlRICaptureStatus::ACL_MODEL_RI_CAPTURE_STATUS_NONE
        };
        out(status, st)?;
        if !ri.is_null() {
            out(ri, std::ptr::null_mut())?;
        }
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclmdlRIExecuteAsync(ri: aclmdlRI, stream: aclrtStream) -> aclError {
    code_of((|| {
        let g = lock(&RT).graphs.get(ri as u64).map(|(_, g)| g.clone());
        let g = g.ok_or_else(|| bad_handle("aclmdlRIExecuteAsync", ri))?;
        let s = stream_of(stream, "aclmdlRIExecuteAsync")?;
        bump(&STATS.graph_launches);
        for t in g.iter() {
            s.enqueue(t.clone());
        }
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclmdlRIDestroy(ri: aclmdlRI) -> aclError {
    code_of(match lock(&RT).graphs.remove(ri as u64) {
        Some(_) => {
            crate::task_group::graph_destroyed(ri as u64);
            drop1(&STATS.live_graphs);
            Ok(())
        }
        None => Err(bad_handle("aclmdlRIDestroy", ri)),
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclrtGetVersion(a: *mut i32, b: *mut i32, c: *mut i32) -> aclError {
    code_of(out(a, 1).and_then(|_| out(b, 17)).and_then(|_| out(c, 0)))
}

fn fill(buf: &mut [c_char], s: &str) {
    for (d, b) in buf.iter_mut().zip(s.bytes().chain(std::iter::once(0))) {
        *d = b as c_char;
    }
}

/// The CANN release the emulator claims to be: `CANN_EMU_VERSION` (e.g. `8.2.RC1`, to test
/// how the backend meets older releases) or 8.3.RC1, the oldest release vllm-ascend
/// supports. Operators whose behaviour depends on the release ask [`cann_at_least`].
pub fn cann_version() -> String {
    std::env::var("CANN_EMU_VERSION").unwrap_or_else(|_| "8.3.RC1".to_owned())
}

/// Whether the emulated release is `major.minor` or newer (pre-release builds of a
/// release, e.g. `8.3.RC1.alpha001`, count as that release).
pub fn cann_at_least(major: u32, minor: u32) -> bool {
    let v = cann_version();
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

#[no_mangle]
pub unsafe extern "C" fn aclsysGetCANNVersion(
    _name: aclCANNPackageName,
    v: *mut aclCANNPackageVersion,
) -> aclError {
    let full = cann_version();
    let mut parts = full.splitn(4, '.');
    let mut ver = aclCANNPackageVersion::default();
    fill(&mut ver.version, &full);
    fill(&mut ver.majorVersion, parts.next().unwrap_or(""));
    fill(&mut ver.minorVersion, parts.next().unwrap_or(""));
    fill(&mut ver.releaseVersion, parts.next().unwrap_or(""));
    fill(&mut ver.patchVersion, parts.next().unwrap_or("0"));
    code_of(out(v, ver))
}

static SOC: &[u8] = b"Ascend910B-emu\0";

#[no_mangle]
pub extern "C" fn aclrtGetSocName() -> *const c_char {
    SOC.as_ptr() as *const c_char
}

// Signatures checked against ascend-sys at compile time.
const _: fns::aclInit = aclInit;
const _: fns::aclFinalize = aclFinalize;
const _: fns::aclGetRecentErrMsg = aclGetRecentErrMsg;
const _: fns::aclrtSetDevice = aclrtSetDevice;
const _: fns::aclrtResetDevice = aclrtResetDevice;
const _: fns::aclrtGetDevice = aclrtGetDevice;
const _: fns::aclrtGetDeviceCount = aclrtGetDeviceCount;
const _: fns::aclrtSynchronizeDevice = aclrtSynchronizeDevice;
const _: fns::aclrtCreateContext = aclrtCreateContext;
const _: fns::aclrtDestroyContext = aclrtDestroyContext;
const _: fns::aclrtSetCurrentContext = aclrtSetCurrentContext;
const _: fns::aclrtGetCurrentContext = aclrtGetCurrentContext;
const _: fns::aclrtCreateStream = aclrtCreateStream;
const _: fns::aclrtCreateStreamWithConfig = aclrtCreateStreamWithConfig;
const _: fns::aclrtDestroyStream = aclrtDestroyStream;
const _: fns::aclrtSynchronizeStream = aclrtSynchronizeStream;
const _: fns::aclrtSynchronizeStreamWithTimeout = aclrtSynchronizeStreamWithTimeout;
const _: fns::aclrtMalloc = aclrtMalloc;
const _: fns::aclrtFree = aclrtFree;
const _: fns::aclrtMallocHost = aclrtMallocHost;
const _: fns::aclrtFreeHost = aclrtFreeHost;
const _: fns::aclrtGetMemInfo = aclrtGetMemInfo;
const _: fns::aclrtCreateEvent = aclrtCreateEvent;
const _: fns::aclrtCreateEventWithFlag = aclrtCreateEventWithFlag;
const _: fns::aclrtDestroyEvent = aclrtDestroyEvent;
const _: fns::aclrtRecordEvent = aclrtRecordEvent;
const _: fns::aclrtStreamWaitEvent = aclrtStreamWaitEvent;
const _: fns::aclrtSynchronizeEvent = aclrtSynchronizeEvent;
const _: fns::aclrtEventElapsedTime = aclrtEventElapsedTime;
const _: fns::aclmdlRICaptureBegin = aclmdlRICaptureBegin;
const _: fns::aclmdlRICaptureEnd = aclmdlRICaptureEnd;
const _: fns::aclmdlRICaptureGetInfo = aclmdlRICaptureGetInfo;
const _: fns::aclmdlRIExecuteAsync = aclmdlRIExecuteAsync;
const _: fns::aclmdlRIDestroy = aclmdlRIDestroy;
const _: fns::aclrtGetVersion = aclrtGetVersion;
const _: fns::aclsysGetCANNVersion = aclsysGetCANNVersion;
const _: fns::aclrtGetSocName = aclrtGetSocName;
