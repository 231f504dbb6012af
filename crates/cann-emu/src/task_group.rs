//! Task groups inside a graph capture and their updates: `aclmdlRICaptureTaskGrpBegin/End`
//! mark single-operator tasks of a capture as a group; `aclmdlRICaptureTaskUpdateBegin/End`
//! re-record the group's tasks (new host arguments, e.g. fused attention's sequence lengths)
//! on a stream that is not capturing, and the graph's later replays run the new ones.
//!
//! Sources (CANN runtime API reference, 8.1.RC1 to 9.0, "本接口为试验特性"):
//! - `aclmdlRICaptureTaskGrpBegin` (aclcppdevg_03_1823): the stream "必须是在捕获状态的Stream";
//!   only single-operator call tasks may be issued in a group ("当前仅支持在这两个接口之间下发单算子
//!   调用的任务"), others fail with `ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT`.
//! - `aclmdlRICaptureTaskGrpEnd` (1824): the same stream as the Begin; returns the handle.
//! - `aclmdlRICaptureTaskUpdateBegin` (1825): the stream "必须是不在捕获状态的Stream"; the tasks
//!   between Update Begin and End must match the group's in number and type ("任务数量、任务
//!   类型必须与...保持一致").
//! - `aclmdlRICaptureTaskUpdateEnd` (1826): the same stream as the Update Begin; the update is
//!   asynchronous ("待更新的任务是异步接口,本接口返回成功,并不代表任务更新完成"): it happens when
//!   that stream reaches it, so a replay on another stream must be ordered after it.

use crate::rt::{stream_of, Task};
use crate::state::{bump, code_of, lock, Fail, Handles, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// A recorded group: its tasks (operator name, work), replaced by updates.
pub struct TaskGroup {
    dev: i32,
    tasks: Mutex<Vec<(&'static str, Task)>>,
    /// Updates issued and not yet run by their stream.
    pending: AtomicUsize,
}

/// What a stream is doing with task groups.
#[derive(Default)]
pub enum TgState {
    #[default]
    None,
    /// Between TaskGrpBegin and End: the group's first task in the capture, its operators.
    Recording {
        start: usize,
        names: Vec<&'static str>,
        bad: Option<&'static str>,
    },
    /// Between TaskUpdateBegin and End: the group and the tasks that will replace its own.
    Updating {
        group: u64,
        tasks: Vec<(&'static str, Task)>,
        bad: Option<&'static str>,
    },
}

/// A live group and the graph holding it once its capture ended.
type GroupEntry = (Arc<TaskGroup>, Option<u64>);

/// Live groups by handle.
static GROUPS: LazyLock<Mutex<Handles<GroupEntry>>> =
    LazyLock::new(|| Mutex::new(Handles::new(0x5500_0000_0000_0000)));

pub fn reset() {
    lock(&GROUPS).clear();
}

/// Groups of a graph die with it.
pub fn graph_destroyed(graph: u64) {
    let mut g = lock(&GROUPS);
    let dead: Vec<u64> = g
        .map_iter()
        .filter(|(_, (_, owner))| *owner == Some(graph))
        .map(|(h, _)| *h)
        .collect();
    for h in dead {
        g.remove(h);
    }
}

/// A capture ended: its groups (handles made on that stream) belong to the graph, or die
/// with a failed capture.
pub fn capture_ended(made: Vec<u64>, graph: Option<u64>) {
    let mut g = lock(&GROUPS);
    for h in made {
        match graph {
            Some(ri) => {
                if let Some(e) = g.get_mut(h) {
                    e.1 = Some(ri);
                }
            }
            None => {
                g.remove(h);
            }
        }
    }
}

/// Routes a task issued on a stream in a task-group state. Returns the task when it still
/// goes to the capture or the queue (recording), `None` when an update took it.
pub fn route(st: &mut TgState, op: Option<&'static str>, t: Task) -> Option<Task> {
    match st {
        TgState::None => Some(t),
        TgState::Recording { names, bad, .. } => {
            match op {
                Some(n) => names.push(n),
                None => *bad = Some("a task that is not a single-operator call"),
            }
            Some(t)
        }
        TgState::Updating { tasks, bad, .. } => {
            match op {
                Some(n) => tasks.push((n, t)),
                None => *bad = Some("a task that is not a single-operator call"),
            }
            None
        }
    }
}

fn not_supported(what: &str, why: &str) -> Fail {
    Fail::new(
        ACL_ERROR_RT_TASK_TYPE_NOT_SUPPORT,
        format!("{what}: {why} was issued in a task group (only single-operator calls may be)"),
    )
}

fn invalid(msg: String) -> Fail {
    Fail::new(ACL_ERROR_RT_PARAM_INVALID, msg)
}

#[no_mangle]
pub extern "C" fn aclmdlRICaptureTaskGrpBegin(stream: aclrtStream) -> aclError {
    code_of((|| {
        let s = stream_of(stream, "aclmdlRICaptureTaskGrpBegin")?;
        let start = s.captured_len().ok_or_else(|| {
            Fail::new(
                ACL_ERROR_RT_STREAM_NOT_CAPTURED,
                "aclmdlRICaptureTaskGrpBegin: the stream is not being captured",
            )
        })?;
        let mut tg = s.task_group();
        if !matches!(tg.0, TgState::None) {
            return Err(invalid(
                "aclmdlRICaptureTaskGrpBegin: a task group is already open on this stream".into(),
            ));
        }
        tg.0 = TgState::Recording {
            start,
            names: Vec::new(),
            bad: None,
        };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn aclmdlRICaptureTaskGrpEnd(
    stream: aclrtStream,
    handle: *mut aclrtTaskGrp,
) -> aclError {
    code_of((|| {
        let what = "aclmdlRICaptureTaskGrpEnd";
        if handle.is_null() {
            return Err(Fail::new(ACL_ERROR_INVALID_PARAM, "null output pointer"));
        }
        let s = stream_of(stream, what)?;
        let mut tg = s.task_group();
        let TgState::Recording { start, names, bad } = std::mem::take(&mut tg.0) else {
            return Err(invalid(format!(
                "{what}: no task group was begun on this stream"
            )));
        };
        if let Some(why) = bad {
            return Err(not_supported(what, why));
        }
        let tasks = s.take_captured_from(start).ok_or_else(|| {
            Fail::new(
                ACL_ERROR_RT_STREAM_NOT_CAPTURED,
                format!("{what}: the stream is no longer being captured"),
            )
        })?;
        let group = Arc::new(TaskGroup {
            dev: s.dev,
            tasks: Mutex::new(names.into_iter().zip(tasks).collect()),
            pending: AtomicUsize::new(0),
        });
        let g = Arc::clone(&group);
        // The graph holds the group, not its tasks: replays run whatever it holds then.
        let run: Task = Arc::new(move || {
            if g.pending.load(Ordering::SeqCst) > 0 {
                return Err(Fail::new(
                    ACL_ERROR_RT_PARAM_INVALID,
                    "a captured task group ran while an update of it (aclmdlRICaptureTaskUpdateEnd, \
                     asynchronous) had not yet run on its stream: order the replay after the update",
                ));
            }
            let tasks: Vec<Task> = lock(&g.tasks).iter().map(|(_, t)| t.clone()).collect();
            tasks.iter().try_for_each(|t| t())
        });
        s.push_captured(run);
        let h = lock(&GROUPS).insert((group, None));
        tg.1.push(h);
        // SAFETY: checked non-null; an out-pointer per the C API.
        unsafe { handle.write(h as aclrtTaskGrp) };
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclmdlRICaptureTaskUpdateBegin(
    stream: aclrtStream,
    handle: aclrtTaskGrp,
) -> aclError {
    code_of((|| {
        let what = "aclmdlRICaptureTaskUpdateBegin";
        let s = stream_of(stream, what)?;
        if s.is_capturing() {
            return Err(Fail::new(
                ACL_ERROR_RT_STREAM_CAPTURED,
                format!("{what}: the stream is being captured (an update needs one that is not)"),
            ));
        }
        let dev = lock(&GROUPS).get(handle as u64).map(|(g, _)| g.dev);
        let Some(dev) = dev else {
            bump(&STATS.bad_handles);
            return Err(invalid(format!(
                "{what}: {handle:p} is not a live task group"
            )));
        };
        if dev != s.dev {
            bump(&STATS.cross_device);
            return Err(invalid(format!(
                "{what}: the group was captured on device {dev}, the stream is on {}",
                s.dev
            )));
        }
        let mut tg = s.task_group();
        if !matches!(tg.0, TgState::None) {
            return Err(invalid(format!(
                "{what}: an update or a group is already open on this stream"
            )));
        }
        tg.0 = TgState::Updating {
            group: handle as u64,
            tasks: Vec::new(),
            bad: None,
        };
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn aclmdlRICaptureTaskUpdateEnd(stream: aclrtStream) -> aclError {
    code_of((|| {
        let what = "aclmdlRICaptureTaskUpdateEnd";
        let s = stream_of(stream, what)?;
        let TgState::Updating { group, tasks, bad } = std::mem::take(&mut s.task_group().0) else {
            return Err(invalid(format!(
                "{what}: no update was begun on this stream"
            )));
        };
        if let Some(why) = bad {
            return Err(not_supported(what, why));
        }
        let g = lock(&GROUPS).get(group).map(|(g, _)| Arc::clone(g));
        let g = g.ok_or_else(|| invalid(format!("{what}: the task group was destroyed")))?;
        check_same_tasks(what, &lock(&g.tasks), &tasks)?;
        bump(&STATS.task_updates);
        g.pending.fetch_add(1, Ordering::SeqCst);
        s.enqueue(Arc::new(move || {
            *lock(&g.tasks) = tasks.clone();
            g.pending.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }));
        Ok(())
    })())
}

/// An update issues as many tasks as the group holds, of the same operators, in order.
fn check_same_tasks(
    what: &str,
    had: &[(&'static str, Task)],
    new: &[(&'static str, Task)],
) -> Res<()> {
    let names = |v: &[(&'static str, Task)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    let (a, b) = (names(had), names(new));
    if a != b {
        return Err(invalid(format!(
            "{what}: the update issued {b:?} but the group holds {a:?} (number and types must match)"
        )));
    }
    Ok(())
}

// Signatures checked against ascend-sys at compile time.
const _: fns::aclmdlRICaptureTaskGrpBegin = aclmdlRICaptureTaskGrpBegin;
const _: fns::aclmdlRICaptureTaskGrpEnd = aclmdlRICaptureTaskGrpEnd;
const _: fns::aclmdlRICaptureTaskUpdateBegin = aclmdlRICaptureTaskUpdateBegin;
const _: fns::aclmdlRICaptureTaskUpdateEnd = aclmdlRICaptureTaskUpdateEnd;
