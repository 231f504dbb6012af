//! HCCL: ranks rendezvous at communicator creation and at every collective when their
//! streams execute it. Ranks are threads of the process that made the root info, or of
//! other processes joining it over TCP (`hccl_net.rs`).

use crate::dtype;
use crate::hccl_p2p::{p2p_recv, p2p_send, Mail, P2pKey};
use crate::mem;
use crate::rt::stream_of;
use crate::state::{bump, drop1, lock, set_error, Fail, Handles, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, LazyLock, Mutex};
use std::time::Duration;

const MAGIC: &[u8; 8] = b"CANNEMU\0";
/// Where the root's address ("ip:port" of its process's hub, NUL-terminated) sits in the
/// root info, after the magic, the group id, the device and the process id.
const ADDR_AT: usize = 24;

/// How long a rank waits for the others to join (`HCCL_CONNECT_TIMEOUT`) and for a
/// collective's peers (`HCCL_EXEC_TIMEOUT`), in seconds, as HCCL reads them (HCCL
/// environment variable reference); the emulator's default for both is 120 s, so that a
/// hang in a test becomes an error.
pub(crate) fn timeout(var: &str) -> Duration {
    let secs = std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

#[derive(Default)]
struct Slot {
    inputs: Vec<Option<Vec<u8>>>,
    arrived: u32,
    taken: u32,
}

pub(crate) struct Group {
    pub(crate) n: u32,
    pub(crate) st: Mutex<GroupState>,
    pub(crate) cv: Condvar,
}

#[derive(Default)]
pub(crate) struct GroupState {
    joined: Vec<u32>,
    slots: HashMap<u64, Slot>,
    /// Point-to-point messages (`hccl_p2p.rs`).
    pub(crate) mail: HashMap<P2pKey, Mail>,
}

/// How a communicator reaches its group: in this process, or through the root process's hub.
#[derive(Clone)]
pub(crate) enum Link {
    Local(Arc<Group>),
    Remote(Arc<crate::hccl_net::Remote>),
}

impl Link {
    pub(crate) fn n(&self) -> u32 {
        match self {
            Link::Local(g) => g.n,
            Link::Remote(r) => r.n,
        }
    }

    /// Every rank's bytes for collective `seq`, in rank order.
    fn exchange(&self, seq: u64, rank: u32, data: Vec<u8>) -> Res<Vec<Vec<u8>>> {
        match self {
            Link::Local(g) => rendezvous(g, seq, rank, data),
            Link::Remote(r) => r.exchange(seq, data),
        }
    }

    pub(crate) fn send(&self, key: P2pKey, dtype: HcclDataType, data: Vec<u8>) -> Res<()> {
        match self {
            Link::Local(g) => p2p_send(g, key, dtype, data),
            Link::Remote(r) => r.send(key, dtype, data),
        }
    }

    pub(crate) fn recv(&self, key: P2pKey, dtype: HcclDataType, len: u64) -> Res<Vec<u8>> {
        match self {
            Link::Local(g) => p2p_recv(g, key, dtype, len),
            Link::Remote(r) => r.recv(key, dtype, len),
        }
    }
}

struct Comm {
    link: Link,
    rank: u32,
    seq: Arc<AtomicU64>,
    /// Messages queued so far on each (source, destination) pair this rank is in.
    p2p: P2pCounters,
}

struct Hccl {
    groups: HashMap<u64, Arc<Group>>,
    comms: Handles<Comm>,
}

static H: LazyLock<Mutex<Hccl>> = LazyLock::new(|| {
    Mutex::new(Hccl {
        groups: HashMap::new(),
        comms: Handles::new(0x7100_0000_0000_0000),
    })
});
static NEXT_ROOT: AtomicU64 = AtomicU64::new(1);

pub fn reset() {
    let mut h = lock(&H);
    h.groups.clear();
    h.comms.clear();
}

pub(crate) fn code(r: Res<()>) -> HcclResult {
    match r {
        Ok(()) => HcclResult::HCCL_SUCCESS,
        Err(f) => {
            set_error(&f.msg);
            HcclResult(f.code as u32)
        }
    }
}

pub(crate) fn para(msg: impl Into<String>) -> Fail {
    Fail::new(HcclResult::HCCL_E_PARA.0 as i32, msg)
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRootInfo(root: *mut HcclRootInfo) -> HcclResult {
    code((|| {
        if root.is_null() {
            return Err(Fail::new(
                HcclResult::HCCL_E_PTR.0 as i32,
                "HcclGetRootInfo: null",
            ));
        }
        // The root info identifies the root rank by its device ("主要包含device ip、device id"),
        // and several are made in one thread by "指定不同的Device + 调用此接口": a device must be
        // current. CANN 8.5 HCCL API reference, HcclGetRootInfo (hcclcpp_07_0005); vllm-ascend's
        // pyhccl.py makes it under `torch.npu.device(device)` of rank 0.
        let dev = crate::rt::current_device().map_err(|_| {
            Fail::new(
                HcclResult::HCCL_E_RUNTIME.0 as i32,
                "HcclGetRootInfo: no device is current on this thread; the root info carries \
                 the root rank's device (HCCL API reference, HcclGetRootInfo): call \
                 aclrtSetDevice(rank 0's device) first",
            )
        })?;
        let hub = crate::hccl_net::hub_addr()?;
        let mut info = HcclRootInfo::default();
        let id = NEXT_ROOT.fetch_add(1, Ordering::Relaxed) ^ ((std::process::id() as u64) << 32);
        let mut bytes = MAGIC.to_vec();
        bytes.extend(id.to_le_bytes());
        bytes.extend(dev.to_le_bytes());
        bytes.extend(std::process::id().to_le_bytes());
        bytes.extend(hub.to_string().as_bytes());
        for (d, s) in info.internal.iter_mut().zip(&bytes) {
            *d = *s as c_char;
        }
        // SAFETY: non-null, writable per the C API.
        unsafe { root.write(info) };
        Ok(())
    })())
}

/// What a root info says: its group id, and the hub address when another process made it.
struct Root {
    id: u64,
    remote: Option<String>,
}

fn parse_root(root: &HcclRootInfo) -> Res<Root> {
    let b: Vec<u8> = root.internal.iter().map(|&c| c as u8).collect();
    if &b[..8] != MAGIC {
        return Err(para(
            "HcclCommInitRootInfo: root info was not made by HcclGetRootInfo",
        ));
    }
    let word = |at: usize| b[at..at + 4].try_into().unwrap_or([0; 4]);
    let id = u64::from_le_bytes(b[8..16].try_into().unwrap_or([0; 8]));
    let pid = u32::from_le_bytes(word(20));
    let addr = &b[ADDR_AT..];
    let addr = String::from_utf8_lossy(&addr[..addr.iter().position(|&c| c == 0).unwrap_or(0)]);
    Ok(Root {
        id,
        remote: (pid != std::process::id()).then(|| addr.into_owned()),
    })
}

/// The group `id` of this process, made by the first rank to join it.
pub(crate) fn local_group(id: u64, n: u32) -> Res<Arc<Group>> {
    let group = lock(&H)
        .groups
        .entry(id)
        .or_insert_with(|| {
            Arc::new(Group {
                n,
                st: Mutex::new(GroupState::default()),
                cv: Condvar::new(),
            })
        })
        .clone();
    if group.n != n {
        return Err(para(format!(
            "nRanks {n} differs from the other ranks' {}",
            group.n
        )));
    }
    Ok(group)
}

pub(crate) fn join(group: &Arc<Group>, rank: u32) -> Res<()> {
    let mut st = lock(&group.st);
    if st.joined.contains(&rank) {
        return Err(para(format!("rank {rank} joined twice")));
    }
    st.joined.push(rank);
    group.cv.notify_all();
    let (st, to) = group
        .cv
        .wait_timeout_while(st, timeout("HCCL_CONNECT_TIMEOUT"), |s| {
            (s.joined.len() as u32) < group.n
        })
        .unwrap_or_else(|p| p.into_inner());
    drop(st);
    if to.timed_out() {
        return Err(Fail::new(
            HcclResult::HCCL_E_TIMEOUT.0 as i32,
            format!(
                "HcclCommInitRootInfo: rank {rank} timed out waiting for {} ranks",
                group.n
            ),
        ));
    }
    Ok(())
}

fn new_comm(link: Link, rank: u32, seq: Arc<AtomicU64>) -> u64 {
    bump(&STATS.live_comms);
    lock(&H).comms.insert(Comm {
        link,
        rank,
        seq,
        p2p: Arc::default(),
    })
}

#[no_mangle]
pub unsafe extern "C" fn HcclCommInitRootInfo(
    n: u32,
    root: *const HcclRootInfo,
    rank: u32,
    comm: *mut HcclComm,
) -> HcclResult {
    code((|| {
        if root.is_null() || comm.is_null() {
            return Err(Fail::new(HcclResult::HCCL_E_PTR.0 as i32, "null pointer"));
        }
        if n == 0 || rank >= n {
            return Err(para(format!("rank {rank} out of range for {n} ranks")));
        }
        // SAFETY: non-null, readable per the C API.
        let root = parse_root(unsafe { &*root })?;
        let link = match root.remote {
            None => {
                let group = local_group(root.id, n)?;
                join(&group, rank)?;
                Link::Local(group)
            }
            Some(addr) => Link::Remote(Arc::new(crate::hccl_net::Remote::join(
                &addr, root.id, n, rank,
            )?)),
        };
        let h = new_comm(link, rank, Arc::new(AtomicU64::new(0)));
        // SAFETY: non-null, writable.
        unsafe { comm.write(h as HcclComm) };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn HcclCommInitAll(
    ndev: u32,
    devices: *mut i32,
    comms: *mut HcclComm,
) -> HcclResult {
    code((|| {
        if devices.is_null() || comms.is_null() || ndev == 0 {
            return Err(para("HcclCommInitAll: null pointer or zero devices"));
        }
        let group = Arc::new(Group {
            n: ndev,
            st: Mutex::new(GroupState {
                joined: (0..ndev).collect(),
                ..GroupState::default()
            }),
            cv: Condvar::new(),
        });
        for r in 0..ndev {
            let h = new_comm(Link::Local(group.clone()), r, Arc::new(AtomicU64::new(0)));
            // SAFETY: `comms` has room for `ndev` handles per the C API.
            unsafe { comms.add(r as usize).write(h as HcclComm) };
        }
        Ok(())
    })())
}

fn comm_of(c: HcclComm, what: &str) -> Res<(Link, u32, Arc<AtomicU64>)> {
    with_comm(c, what, |comm| {
        (comm.link.clone(), comm.rank, comm.seq.clone())
    })
}

/// The link, rank and point-to-point counters of live communicator `c`.
pub(crate) fn p2p_comm_of(c: HcclComm, what: &str) -> Res<(Link, u32, P2pCounters)> {
    with_comm(c, what, |comm| {
        (comm.link.clone(), comm.rank, comm.p2p.clone())
    })
}

pub(crate) type P2pCounters = Arc<Mutex<HashMap<(u32, u32), u64>>>;

fn with_comm<T>(c: HcclComm, what: &str, f: impl FnOnce(&Comm) -> T) -> Res<T> {
    let h = lock(&H);
    let comm = h.comms.get(c as u64).ok_or_else(|| {
        bump(&STATS.bad_handles);
        para(format!("{what}: {c:p} is not a live communicator"))
    })?;
    Ok(f(comm))
}

pub(crate) fn acl_type(dt: HcclDataType) -> Res<aclDataType> {
    Ok(match dt {
        HcclDataType::HCCL_DATA_TYPE_INT8 => aclDataType::ACL_INT8,
        HcclDataType::HCCL_DATA_TYPE_INT16 => aclDataType::ACL_INT16,
        HcclDataType::HCCL_DATA_TYPE_INT32 => aclDataType::ACL_INT32,
        HcclDataType::HCCL_DATA_TYPE_FP16 => aclDataType::ACL_FLOAT16,
        HcclDataType::HCCL_DATA_TYPE_FP32 => aclDataType::ACL_FLOAT,
        HcclDataType::HCCL_DATA_TYPE_INT64 => aclDataType::ACL_INT64,
        HcclDataType::HCCL_DATA_TYPE_UINT8 => aclDataType::ACL_UINT8,
        HcclDataType::HCCL_DATA_TYPE_BFP16 => aclDataType::ACL_BF16,
        HcclDataType::HCCL_DATA_TYPE_FP64 => aclDataType::ACL_DOUBLE,
        other => return Err(para(format!("data type {other:?} not supported"))),
    })
}

/// Deposits this rank's bytes for collective `seq`, waits for every rank and returns
/// all inputs in rank order.
pub(crate) fn rendezvous(g: &Group, seq: u64, rank: u32, data: Vec<u8>) -> Res<Vec<Vec<u8>>> {
    let mut st = lock(&g.st);
    let slot = st.slots.entry(seq).or_default();
    if slot.inputs.is_empty() {
        slot.inputs = vec![None; g.n as usize];
    }
    slot.inputs[rank as usize] = Some(data);
    slot.arrived += 1;
    g.cv.notify_all();
    let (mut st, to) =
        g.cv.wait_timeout_while(st, timeout("HCCL_EXEC_TIMEOUT"), |s| {
            s.slots.get(&seq).is_some_and(|sl| sl.arrived < g.n)
        })
        .unwrap_or_else(|p| p.into_inner());
    if to.timed_out() {
        return Err(Fail::new(
            HcclResult::HCCL_E_TIMEOUT.0 as i32,
            format!("collective #{seq}: rank {rank} timed out waiting for the other ranks"),
        ));
    }
    let slot = st
        .slots
        .get_mut(&seq)
        .ok_or_else(|| Fail::new(HcclResult::HCCL_E_INTERNAL.0 as i32, "slot vanished"))?;
    let all: Vec<Vec<u8>> = slot
        .inputs
        .iter()
        .map(|v| v.clone().unwrap_or_default())
        .collect();
    slot.taken += 1;
    if slot.taken == g.n {
        st.slots.remove(&seq);
    }
    if all.iter().any(|v| v.len() != all[0].len()) {
        let lens: Vec<usize> = all.iter().map(Vec::len).collect();
        return Err(para(format!(
            "collective #{seq}: ranks passed different sizes (bytes per rank {lens:?})"
        )));
    }
    Ok(all)
}

fn reduce(parts: &[Vec<u8>], dt: aclDataType, op: HcclReduceOp) -> Res<Vec<u8>> {
    let es = dtype::size_of(dt).unwrap_or(1);
    let n = parts[0].len() / es;
    let mut out = vec![0u8; parts[0].len()];
    for i in 0..n {
        let vals = parts
            .iter()
            .map(|p| dtype::get_f64(dt, &p[i * es..(i + 1) * es]));
        let v = match op {
            HcclReduceOp::HCCL_REDUCE_SUM => vals.sum(),
            HcclReduceOp::HCCL_REDUCE_PROD => vals.product(),
            HcclReduceOp::HCCL_REDUCE_MAX => vals.fold(f64::NEG_INFINITY, f64::max),
            HcclReduceOp::HCCL_REDUCE_MIN => vals.fold(f64::INFINITY, f64::min),
            other => return Err(para(format!("reduce op {other:?} not supported"))),
        };
        dtype::put_f64(dt, &mut out[i * es..(i + 1) * es], v);
    }
    Ok(out)
}

enum Coll {
    AllReduce(HcclReduceOp),
    AllGather,
    ReduceScatter(HcclReduceOp),
    Broadcast(u32),
    Barrier,
}

/// A collective's or a send's buffer: device memory, `len` bytes inside one allocation.
pub(crate) fn check_buf(what: &str, a: u64, len: u64) -> Res<()> {
    if len == 0 {
        return Ok(());
    }
    if !mem::is_device_addr(a) {
        bump(&STATS.bad_memcpy_kinds);
        return Err(Fail::new(
            HcclResult::HCCL_E_PTR.0 as i32,
            format!("{what}: buffer {a:#x} is not device memory"),
        ));
    }
    mem::check(a, len, what).map_err(|f| Fail::new(HcclResult::HCCL_E_PTR.0 as i32, f.msg))
}

/// Validates and queues one collective on `stream` (arguments mirror HCCL's C API).
#[allow(clippy::too_many_arguments)]
fn enqueue(
    what: &'static str,
    coll: Coll,
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: HcclDataType,
    comm: HcclComm,
    stream: aclrtStream,
) -> Res<()> {
    let (g, rank, seq) = comm_of(comm, what)?;
    let s = stream_of(stream, what)
        .map_err(|f| Fail::new(HcclResult::HCCL_E_RUNTIME.0 as i32, f.msg))?;
    let adt = match coll {
        Coll::Barrier => aclDataType::ACL_INT8,
        _ => acl_type(dt)?,
    };
    let es = dtype::size_of(adt).unwrap_or(1) as u64;
    let n = g.n() as u64;
    let (sbytes, rbytes) = match coll {
        Coll::AllReduce(_) | Coll::Broadcast(_) => (count * es, count * es),
        Coll::AllGather => (count * es, count * es * n),
        Coll::ReduceScatter(_) => (count * es * n, count * es),
        Coll::Barrier => (0, 0),
    };
    let (sa, ra) = (send as u64, recv as u64);
    check_buf(what, sa, sbytes)?;
    check_buf(what, ra, rbytes)?;
    if let Coll::Broadcast(root) = coll {
        if root >= g.n() {
            return Err(para(format!("{what}: root {root} out of range")));
        }
    }
    if !s.is_capturing() {
        bump(&STATS.hccl_launches);
    }
    s.enqueue(Arc::new(move || {
        bump(&STATS.collectives);
        // Numbered when it runs, not when it is issued: a collective captured in a graph
        // runs again at every replay, each time the communicator's next collective (HCCL
        // matches collectives across ranks by their order on the communicator; HCCL's
        // env reference, HCCL_OP_EXPANSION_MODE, documents communication operators inside
        // graph capture, "图捕获（aclgraph）场景").
        let id = seq.fetch_add(1, Ordering::SeqCst);
        let mine = mem::read(sa, sbytes as usize, what)?;
        let all = g.exchange(id, rank, mine)?;
        let out = match &coll {
            Coll::AllReduce(op) => reduce(&all, adt, *op)?,
            Coll::AllGather => all.concat(),
            Coll::ReduceScatter(op) => {
                let full = reduce(&all, adt, *op)?;
                let r = rbytes as usize;
                full[rank as usize * r..(rank as usize + 1) * r].to_vec()
            }
            Coll::Broadcast(root) => all[*root as usize].clone(),
            Coll::Barrier => Vec::new(),
        };
        mem::write(ra, &out, what)
    }));
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn HcclAllReduce(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: HcclDataType,
    op: HcclReduceOp,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(
        "HcclAllReduce",
        Coll::AllReduce(op),
        send,
        recv,
        count,
        dt,
        comm,
        stream,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn HcclAllGather(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: HcclDataType,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(
        "HcclAllGather",
        Coll::AllGather,
        send,
        recv,
        count,
        dt,
        comm,
        stream,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn HcclReduceScatter(
    send: *mut c_void,
    recv: *mut c_void,
    count: u64,
    dt: HcclDataType,
    op: HcclReduceOp,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(
        "HcclReduceScatter",
        Coll::ReduceScatter(op),
        send,
        recv,
        count,
        dt,
        comm,
        stream,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn HcclBroadcast(
    buf: *mut c_void,
    count: u64,
    dt: HcclDataType,
    root: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(
        "HcclBroadcast",
        Coll::Broadcast(root),
        buf,
        buf,
        count,
        dt,
        comm,
        stream,
    ))
}

#[no_mangle]
pub unsafe extern "C" fn HcclBarrier(comm: HcclComm, stream: aclrtStream) -> HcclResult {
    code(enqueue(
        "HcclBarrier",
        Coll::Barrier,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        0,
        HcclDataType::HCCL_DATA_TYPE_INT8,
        comm,
        stream,
    ))
}

#[no_mangle]
pub extern "C" fn HcclCommDestroy(comm: HcclComm) -> HcclResult {
    code(match lock(&H).comms.remove(comm as u64) {
        Some(_) => {
            drop1(&STATS.live_comms);
            Ok(())
        }
        None => {
            bump(&STATS.bad_handles);
            Err(para(format!(
                "HcclCommDestroy: {comm:p} is not a live communicator"
            )))
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRankSize(comm: HcclComm, size: *mut u32) -> HcclResult {
    code((|| {
        let (g, _, _) = comm_of(comm, "HcclGetRankSize")?;
        if size.is_null() {
            return Err(Fail::new(HcclResult::HCCL_E_PTR.0 as i32, "null rankSize"));
        }
        // SAFETY: non-null, writable.
        unsafe { size.write(g.n()) };
        Ok(())
    })())
}

#[no_mangle]
pub unsafe extern "C" fn HcclGetRankId(comm: HcclComm, rank: *mut u32) -> HcclResult {
    code((|| {
        let (_, r, _) = comm_of(comm, "HcclGetRankId")?;
        if rank.is_null() {
            return Err(Fail::new(HcclResult::HCCL_E_PTR.0 as i32, "null rank"));
        }
        // SAFETY: non-null, writable.
        unsafe { rank.write(r) };
        Ok(())
    })())
}

#[no_mangle]
pub extern "C" fn HcclGetErrorString(code: HcclResult) -> *const c_char {
    let s: &'static [u8] = match code {
        HcclResult::HCCL_SUCCESS => b"success\0",
        HcclResult::HCCL_E_PARA => b"parameter error\0",
        HcclResult::HCCL_E_PTR => b"empty or invalid pointer\0",
        HcclResult::HCCL_E_MEMORY => b"memory error\0",
        HcclResult::HCCL_E_INTERNAL => b"internal error\0",
        HcclResult::HCCL_E_NOT_SUPPORT => b"not supported\0",
        HcclResult::HCCL_E_TIMEOUT => b"timeout\0",
        HcclResult::HCCL_E_RUNTIME => b"runtime error\0",
        _ => b"unknown HCCL error\0",
    };
    s.as_ptr() as *const c_char
}

const _: fns::HcclGetRootInfo = HcclGetRootInfo;
const _: fns::HcclCommInitRootInfo = HcclCommInitRootInfo;
const _: fns::HcclCommInitAll = HcclCommInitAll;
const _: fns::HcclAllReduce = HcclAllReduce;
const _: fns::HcclAllGather = HcclAllGather;
const _: fns::HcclReduceScatter = HcclReduceScatter;
const _: fns::HcclBroadcast = HcclBroadcast;
const _: fns::HcclBarrier = HcclBarrier;
const _: fns::HcclCommDestroy = HcclCommDestroy;
const _: fns::HcclGetRankSize = HcclGetRankSize;
const _: fns::HcclGetRankId = HcclGetRankId;
const _: fns::HcclGetErrorString = HcclGetErrorString;
