//! HCCL point to point: HcclSend / HcclRecv. A send waits on its stream until the matching
//! receive has taken its data, as the HCCL API reference says ("HcclSend与HcclRecv接口采用同步
//! 调用方式,且必须配对使用": a send completes only once its paired receive has the data;
//! CANN 8.0.0 HCCL API reference, hcclcpp_07_0030 HcclSend / hcclcpp_07_0032 HcclRecv).
//! The k-th send from rank a to rank b pairs with the k-th receive on b from a. Ranks of
//! other processes send and receive through the root process's hub (`hccl_net.rs`).

use crate::hccl::{acl_type, check_buf, code, p2p_comm_of, para, timeout, Group, P2pCounters};
use crate::rt::stream_of;
use crate::state::{bump, lock, Fail, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::*;
use std::ffi::c_void;
use std::sync::Arc;

/// (source rank, destination rank, k): the k-th HcclSend from source to destination.
pub(crate) type P2pKey = (u32, u32, u64);

/// One HcclSend's data until its HcclRecv takes it (or refuses it).
pub(crate) struct Mail {
    dtype: HcclDataType,
    data: Vec<u8>,
    state: MailState,
}

#[derive(Clone, PartialEq)]
enum MailState {
    Sent,
    Received,
    Refused(String),
}

fn late(what: String) -> Fail {
    Fail::new(
        HcclResult::HCCL_E_TIMEOUT.0 as i32,
        format!("{what}: no peer within HCCL_EXEC_TIMEOUT"),
    )
}

/// Rank `key.0`'s part: leaves the data for rank `key.1` and waits until it is received,
/// refused, or `HCCL_EXEC_TIMEOUT` has passed (a dead or absent receiver).
pub(crate) fn p2p_send(g: &Group, key: P2pKey, dtype: HcclDataType, data: Vec<u8>) -> Res<()> {
    let what = format!("HcclSend #{} from rank {} to rank {}", key.2, key.0, key.1);
    let mut st = lock(&g.st);
    st.mail.insert(
        key,
        Mail {
            dtype,
            data,
            state: MailState::Sent,
        },
    );
    g.cv.notify_all();
    let (mut st, _) =
        g.cv.wait_timeout_while(st, timeout("HCCL_EXEC_TIMEOUT"), |s| {
            s.mail.get(&key).is_some_and(|m| m.state == MailState::Sent)
        })
        .unwrap_or_else(|p| p.into_inner());
    match st.mail.remove(&key).map(|m| m.state) {
        Some(MailState::Received) => Ok(()),
        Some(MailState::Refused(why)) => Err(para(format!("{what}: {why}"))),
        _ => Err(late(what)),
    }
}

/// Rank `key.1`'s part: waits for the matching send, checks that it carries `len` bytes of
/// `dtype` (a pair is one count of one type on both sides), and takes its data.
pub(crate) fn p2p_recv(g: &Group, key: P2pKey, dtype: HcclDataType, len: u64) -> Res<Vec<u8>> {
    let what = format!("HcclRecv #{} on rank {} from rank {}", key.2, key.1, key.0);
    let st = lock(&g.st);
    let (mut st, _) =
        g.cv.wait_timeout_while(st, timeout("HCCL_EXEC_TIMEOUT"), |s| {
            !s.mail.contains_key(&key)
        })
        .unwrap_or_else(|p| p.into_inner());
    let Some(mail) = st.mail.get_mut(&key) else {
        return Err(late(what));
    };
    // The paired send and receive describe one message: HCCL's reference gives no
    // conversion or truncation between them, so a mismatch is refused on both sides.
    if mail.dtype != dtype || mail.data.len() as u64 != len {
        let why = format!(
            "the send has {} bytes of {:?}, the receive expects {len} bytes of {dtype:?}",
            mail.data.len(),
            mail.dtype
        );
        mail.state = MailState::Refused(why.clone());
        g.cv.notify_all();
        return Err(para(format!("{what}: {why}")));
    }
    mail.state = MailState::Received;
    let data = std::mem::take(&mut mail.data);
    g.cv.notify_all();
    Ok(data)
}

#[derive(Clone, Copy)]
enum Dir {
    Send,
    Recv,
}

/// Validates and queues one send or receive on `stream` (arguments as HCCL's C API).
fn enqueue(
    dir: Dir,
    buf: *mut c_void,
    count: u64,
    dt: HcclDataType,
    peer: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> Res<()> {
    let what = match dir {
        Dir::Send => "HcclSend",
        Dir::Recv => "HcclRecv",
    };
    let (link, rank, counters) = p2p_comm_of(comm, what)?;
    let s = stream_of(stream, what)
        .map_err(|f| Fail::new(HcclResult::HCCL_E_RUNTIME.0 as i32, f.msg))?;
    let es = crate::dtype::size_of(acl_type(dt)?).unwrap_or(1) as u64;
    let n = link.n();
    // Not in the reference: a synchronous send to this rank itself, on one stream, could
    // never meet its receive.
    if peer >= n || peer == rank {
        return Err(para(format!(
            "{what}: peer rank {peer} is not another rank of this {n}-rank communicator (this is rank {rank})"
        )));
    }
    let (a, len) = (buf as u64, count * es);
    check_buf(what, a, len)?;
    let pair = match dir {
        Dir::Send => (rank, peer),
        Dir::Recv => (peer, rank),
    };
    let k = next(&counters, pair);
    let key = (pair.0, pair.1, k);
    s.enqueue(Arc::new(move || {
        bump(&STATS.collectives);
        match dir {
            Dir::Send => link.send(key, dt, crate::mem::read(a, len as usize, what)?),
            Dir::Recv => crate::mem::write(a, &link.recv(key, dt, len)?, what),
        }
    }));
    Ok(())
}

/// The index of the next message on (source, destination), counted per communicator.
fn next(counters: &P2pCounters, pair: (u32, u32)) -> u64 {
    let mut c = lock(counters);
    let k = c.entry(pair).or_insert(0);
    *k += 1;
    *k - 1
}

#[no_mangle]
pub unsafe extern "C" fn HcclSend(
    send: *mut c_void,
    count: u64,
    dt: HcclDataType,
    dest: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(Dir::Send, send, count, dt, dest, comm, stream))
}

#[no_mangle]
pub unsafe extern "C" fn HcclRecv(
    recv: *mut c_void,
    count: u64,
    dt: HcclDataType,
    src: u32,
    comm: HcclComm,
    stream: aclrtStream,
) -> HcclResult {
    code(enqueue(Dir::Recv, recv, count, dt, src, comm, stream))
}

const _: fns::HcclSend = HcclSend;
const _: fns::HcclRecv = HcclRecv;
