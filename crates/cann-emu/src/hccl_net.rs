//! Emulated HCCL across processes, over TCP: the process that makes a root info runs a hub
//! (on `HCCL_IF_IP`, else loopback); a rank of another process joins the group through it,
//! and the hub takes that rank's part in the group's rendezvous for each collective.
//!
//! Wire format (little-endian): join = group id u64, nRanks u32, rank u32; then requests,
//! each a kind u8 and its fields: 0 collective = sequence u64, byte count u64, bytes;
//! 1 send = destination u32, k u64, data type u32, byte count u64, bytes; 2 receive =
//! source u32, k u64, data type u32, byte count u64. Every answer starts with an
//! `HcclResult` u32: on success the join and a send end there, a collective's answer carries
//! each rank's bytes in rank order and a receive's the one message (count u64, bytes); on
//! failure a message follows (count u32, UTF-8).

use crate::hccl::{join, local_group, rendezvous, timeout, Group};
use crate::hccl_p2p::{p2p_recv, p2p_send, P2pKey};
use crate::state::{lock, Fail, Res};
use ascend_sys::types::{HcclDataType, HcclResult};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A collective's bytes from one rank may not exceed this (the emulated HBM is small).
const MAX_BYTES: u64 = 1 << 34;

fn fail(code: HcclResult, msg: impl Into<String>) -> Fail {
    Fail::new(code.0 as i32, msg)
}

fn tcp(what: &str) -> impl Fn(std::io::Error) -> Fail + '_ {
    move |e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => fail(
            HcclResult::HCCL_E_TIMEOUT,
            format!("{what}: no answer in time"),
        ),
        _ => fail(HcclResult::HCCL_E_TCP_TRANSFER, format!("{what}: {e}")),
    }
}

fn read_n<const N: usize>(s: &mut TcpStream) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    read_n::<4>(s).map(u32::from_le_bytes)
}

fn read_u64(s: &mut TcpStream) -> std::io::Result<u64> {
    read_n::<8>(s).map(u64::from_le_bytes)
}

fn read_bytes(s: &mut TcpStream, n: u64) -> std::io::Result<Vec<u8>> {
    if n > MAX_BYTES {
        return Err(std::io::Error::new(ErrorKind::InvalidData, "oversized"));
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn answer(s: &mut TcpStream, r: Res<Vec<Vec<u8>>>) -> std::io::Result<()> {
    let mut out = Vec::new();
    match r {
        Ok(parts) => {
            out.extend(0u32.to_le_bytes());
            for p in parts {
                out.extend((p.len() as u64).to_le_bytes());
                out.extend(p);
            }
        }
        Err(f) => {
            out.extend((f.code as u32).to_le_bytes());
            out.extend((f.msg.len() as u32).to_le_bytes());
            out.extend(f.msg.as_bytes());
        }
    }
    s.write_all(&out)
}

/// Reads an answer's status; a failure becomes the `Fail` it carries.
fn status(s: &mut TcpStream, what: &str) -> Res<()> {
    let code = read_u32(s).map_err(tcp(what))?;
    if code == 0 {
        return Ok(());
    }
    let n = read_u32(s).map_err(tcp(what))?;
    let msg = read_bytes(s, n as u64).map_err(tcp(what))?;
    Err(Fail::new(
        code as i32,
        format!("{what}: {}", String::from_utf8_lossy(&msg)),
    ))
}

/// This process's hub address, started on first use.
pub(crate) fn hub_addr() -> Res<SocketAddr> {
    static HUB: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    HUB.get_or_init(start_hub)
        .clone()
        .map_err(|m| fail(HcclResult::HCCL_E_TCP_CONNECT, m))
}

fn start_hub() -> Result<SocketAddr, String> {
    // HCCL_IF_IP names the host NIC the root's socket uses (HCCL environment variable
    // reference, "HCCL_IF_IP"); real HCCL otherwise picks a NIC by name order, the emulator
    // loopback.
    let ip = std::env::var("HCCL_IF_IP")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "127.0.0.1".into());
    let l = TcpListener::bind((ip.trim(), 0))
        .map_err(|e| format!("HcclGetRootInfo: cannot listen on {ip} (HCCL_IF_IP): {e}"))?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    std::thread::Builder::new()
        .name("cann-emu-hccl-hub".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = std::thread::Builder::new()
                    .name("cann-emu-hccl-peer".into())
                    .spawn(move || proxy(s));
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}

/// The hub's side of one remote rank: joins the group for it, then takes its part in each
/// collective until the connection closes.
fn proxy(mut s: TcpStream) {
    let joined = (|| {
        let id = read_u64(&mut s).map_err(tcp("join"))?;
        let n = read_u32(&mut s).map_err(tcp("join"))?;
        let rank = read_u32(&mut s).map_err(tcp("join"))?;
        if rank >= n {
            return Err(fail(
                HcclResult::HCCL_E_PARA,
                format!("rank {rank} out of range for {n} ranks"),
            ));
        }
        let group = local_group(id, n)?;
        join(&group, rank)?;
        Ok((group, rank))
    })();
    let ok = joined.as_ref().map(|_| Vec::new()).map_err(|f| f.clone());
    if answer(&mut s, ok).is_err() {
        return;
    }
    let Ok((group, rank)) = joined else { return };
    // Until the remote rank's process closes the connection (or dies).
    while let Ok(Some(r)) = serve_one(&mut s, &group, rank) {
        if answer(&mut s, r).is_err() {
            return;
        }
    }
}

const COLLECTIVE: u8 = 0;
const SEND: u8 = 1;
const RECV: u8 = 2;

/// Reads one request of remote rank `rank` and does it; `None` for an unknown kind.
fn serve_one(
    s: &mut TcpStream,
    group: &Group,
    rank: u32,
) -> std::io::Result<Option<Res<Vec<Vec<u8>>>>> {
    let [kind] = read_n::<1>(s)?;
    Ok(Some(match kind {
        COLLECTIVE => {
            let seq = read_u64(s)?;
            let data = read_u64(s).and_then(|n| read_bytes(s, n))?;
            rendezvous(group, seq, rank, data)
        }
        SEND | RECV => {
            let (peer, k, dt, n) = (read_u32(s)?, read_u64(s)?, read_u32(s)?, read_u64(s)?);
            let dt = HcclDataType(dt);
            if kind == SEND {
                let data = read_bytes(s, n)?;
                p2p_send(group, (rank, peer, k), dt, data).map(|()| Vec::new())
            } else {
                p2p_recv(group, (peer, rank, k), dt, n).map(|d| vec![d])
            }
        }
        _ => return Ok(None),
    }))
}

/// A rank of this process in a group whose root info another process made.
pub(crate) struct Remote {
    pub(crate) n: u32,
    stream: Mutex<TcpStream>,
}

impl Remote {
    /// Joins through the hub at `addr`, retrying until `HCCL_CONNECT_TIMEOUT`.
    pub(crate) fn join(addr: &str, id: u64, n: u32, rank: u32) -> Res<Self> {
        let limit = timeout("HCCL_CONNECT_TIMEOUT");
        let deadline = Instant::now() + limit;
        let what = format!("HcclCommInitRootInfo: rank {rank} joining the root at {addr}");
        let late = || {
            fail(
                HcclResult::HCCL_E_TIMEOUT,
                format!("{what}: not done within HCCL_CONNECT_TIMEOUT ({limit:?})"),
            )
        };
        let mut s = loop {
            match TcpStream::connect(addr) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => return Err(fail(HcclResult::HCCL_E_TCP_CONNECT, format!("{what}: {e}"))),
            }
        };
        let mut msg = id.to_le_bytes().to_vec();
        msg.extend(n.to_le_bytes());
        msg.extend(rank.to_le_bytes());
        s.write_all(&msg).map_err(tcp(&what))?;
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(late)?;
        s.set_read_timeout(Some(left)).map_err(tcp(&what))?;
        status(&mut s, &what).map_err(|f| {
            if f.code == HcclResult::HCCL_E_TIMEOUT.0 as i32 {
                late()
            } else {
                f
            }
        })?;
        s.set_read_timeout(Some(timeout("HCCL_EXEC_TIMEOUT")))
            .map_err(tcp(&what))?;
        Ok(Self {
            n,
            stream: Mutex::new(s),
        })
    }

    /// Sends this rank's bytes for collective `seq`; every rank's come back in rank order,
    /// or an error within `HCCL_EXEC_TIMEOUT` when the root's process stops answering.
    pub(crate) fn exchange(&self, seq: u64, data: Vec<u8>) -> Res<Vec<Vec<u8>>> {
        let mut msg = vec![COLLECTIVE];
        msg.extend(seq.to_le_bytes());
        msg.extend((data.len() as u64).to_le_bytes());
        msg.extend(data);
        self.call(
            &format!("collective #{seq} through the root's process"),
            msg,
            self.n,
        )
    }

    /// This rank's HcclSend `key` (this rank → `key.1`), done by the root's process.
    pub(crate) fn send(&self, key: P2pKey, dt: HcclDataType, data: Vec<u8>) -> Res<()> {
        let mut msg = p2p_request(SEND, key.1, key.2, dt, data.len() as u64);
        msg.extend(data);
        self.call(
            &format!(
                "HcclSend #{} to rank {} through the root's process",
                key.2, key.1
            ),
            msg,
            0,
        )
        .map(|_| ())
    }

    /// This rank's HcclRecv `key` (`key.0` → this rank) of `len` bytes.
    pub(crate) fn recv(&self, key: P2pKey, dt: HcclDataType, len: u64) -> Res<Vec<u8>> {
        let msg = p2p_request(RECV, key.0, key.2, dt, len);
        let what = format!(
            "HcclRecv #{} from rank {} through the root's process",
            key.2, key.0
        );
        Ok(self.call(&what, msg, 1)?.pop().unwrap_or_default())
    }

    /// Sends one request and reads its answer of `parts` byte strings.
    fn call(&self, what: &str, msg: Vec<u8>, parts: u32) -> Res<Vec<Vec<u8>>> {
        let mut s = lock(&self.stream);
        s.write_all(&msg).map_err(tcp(what))?;
        status(&mut s, what)?;
        (0..parts)
            .map(|_| read_u64(&mut s).and_then(|n| read_bytes(&mut s, n)))
            .collect::<std::io::Result<_>>()
            .map_err(tcp(what))
    }
}

fn p2p_request(kind: u8, peer: u32, k: u64, dt: HcclDataType, len: u64) -> Vec<u8> {
    let mut msg = vec![kind];
    msg.extend(peer.to_le_bytes());
    msg.extend(k.to_le_bytes());
    msg.extend(dt.0.to_le_bytes());
    msg.extend(len.to_le_bytes());
    msg
}
