//! The multi-node rendezvous over TCP: node 0 waits for every other node, refuses one that
//! brings another model, another build or another parallel layout, and hands the others the
//! group's HCCL root info and world size. Bounded in time at both ends: a node that never
//! comes, or a node 0 that never answers, is an error after the timeout, not a hang.
//!
//! Wire format (little-endian): a node sends `Q3RV`, version, node rank, nnodes, tensor- and
//! pipeline-parallel sizes and its 32-byte fingerprint; node 0 answers `0`, the world size and
//! the root info (length-prefixed), or `1` and the reason it refuses (length-prefixed UTF-8).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"Q3RV";
const VERSION: u32 = 1;
/// Bytes of weights sampled at each end of every safetensors file for the fingerprint.
const SAMPLE: u64 = 64 * 1024;
/// Longest refusal or root info a peer may send (HCCL's root info is 4108 bytes).
const MAX_PAYLOAD: u32 = 64 * 1024;
/// Between polls of a non-blocking accept, and between connection attempts.
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    #[error("rendezvous: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("rendezvous: {0}")]
    Timeout(String),
    #[error("rendezvous: node 0 refused this node: {0}")]
    Refused(String),
    #[error("rendezvous: {0}")]
    Protocol(String),
}

type Result<T> = std::result::Result<T, RendezvousError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RendezvousError {
    let what = what.into();
    move |source| RendezvousError::Io { what, source }
}

/// What every node of one group must agree on: the build, the model's config and its
/// weights (each safetensors file's header and a sample of its data at both ends).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0[..6].iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

impl Fingerprint {
    /// Of the model directory `dir` as this build would serve it. Reads the config, each
    /// weights file's header and 2 × 64 KiB of its data: fast on a 470 GB checkpoint.
    pub fn of_model(dir: &Path) -> Result<Self> {
        let mut h = Sha256::new();
        h.update(concat!("qwen3-serve ", env!("CARGO_PKG_VERSION")).as_bytes());
        let config = dir.join("config.json");
        h.update(std::fs::read(&config).map_err(io(format!("reading {}", config.display())))?);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io(format!("listing {}", dir.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(RendezvousError::Protocol(format!(
                "{}: no .safetensors files to fingerprint",
                dir.display()
            )));
        }
        for f in files {
            hash_weights_file(&mut h, &f)?;
        }
        Ok(Self(h.finalize().into()))
    }
}

fn hash_weights_file(h: &mut Sha256, path: &Path) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let what = || format!("reading {}", path.display());
    let mut f = std::fs::File::open(path).map_err(io(what()))?;
    let len = f.metadata().map_err(io(what()))?.len();
    let mut n = [0u8; 8];
    f.read_exact(&mut n).map_err(io(what()))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > len.saturating_sub(8) {
        return Err(RendezvousError::Protocol(format!(
            "{}: safetensors header of {header_len} bytes in a file of {len}",
            path.display()
        )));
    }
    if let Some(name) = path.file_name() {
        h.update(name.as_encoded_bytes());
    }
    h.update(len.to_le_bytes());
    let data_start = 8 + header_len;
    for (from, to) in [
        (8, data_start),
        (data_start, (data_start + SAMPLE).min(len)),
        (len.saturating_sub(SAMPLE).max(data_start), len),
    ] {
        let mut buf = vec![0u8; (to - from) as usize];
        f.seek(SeekFrom::Start(from)).map_err(io(what()))?;
        f.read_exact(&mut buf).map_err(io(what()))?;
        h.update(&buf);
    }
    Ok(())
}

/// How a node runs the model: every node of a group must say the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub nnodes: u32,
    pub tensor_parallel_size: u32,
    pub pipeline_parallel_size: u32,
}

impl Layout {
    /// HCCL ranks in the whole group.
    pub fn world(&self) -> u32 {
        self.tensor_parallel_size * self.pipeline_parallel_size
    }
}

/// An open connection between node 0 and one other node, kept for what follows the
/// rendezvous (each step's metadata, liveness).
#[derive(Debug)]
pub struct NodeLink {
    pub node_rank: u32,
    pub stream: TcpStream,
}

/// What a node that joined learns from node 0.
#[derive(Debug)]
pub struct Joined {
    pub world: u32,
    pub root_info: Vec<u8>,
    pub link: NodeLink,
}

struct Hello {
    node_rank: u32,
    layout: Layout,
    fingerprint: Fingerprint,
}

fn remaining(deadline: Instant, what: &str) -> Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| RendezvousError::Timeout(what.to_string()))
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_payload(s: &mut TcpStream) -> Result<Vec<u8>> {
    let n = read_u32(s).map_err(io("reading a reply"))?;
    if n > MAX_PAYLOAD {
        return Err(RendezvousError::Protocol(format!(
            "a reply of {n} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    let mut v = vec![0u8; n as usize];
    s.read_exact(&mut v).map_err(io("reading a reply"))?;
    Ok(v)
}

fn hello_bytes(h: &Hello) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    for x in [
        VERSION,
        h.node_rank,
        h.layout.nnodes,
        h.layout.tensor_parallel_size,
        h.layout.pipeline_parallel_size,
    ] {
        v.extend(x.to_le_bytes());
    }
    v.extend(h.fingerprint.0);
    v
}

fn read_hello(s: &mut TcpStream) -> Result<Hello> {
    let mut magic = [0u8; 4];
    s.read_exact(&mut magic).map_err(io("reading a hello"))?;
    if &magic != MAGIC {
        return Err(RendezvousError::Protocol(
            "a connection that is not a qwen3-serve node".into(),
        ));
    }
    let mut w = [0u32; 5];
    for x in &mut w {
        *x = read_u32(s).map_err(io("reading a hello"))?;
    }
    if w[0] != VERSION {
        return Err(RendezvousError::Protocol(format!(
            "rendezvous version {} (this build speaks {VERSION})",
            w[0]
        )));
    }
    let mut fp = [0u8; 32];
    s.read_exact(&mut fp).map_err(io("reading a hello"))?;
    Ok(Hello {
        node_rank: w[1],
        layout: Layout {
            nnodes: w[2],
            tensor_parallel_size: w[3],
            pipeline_parallel_size: w[4],
        },
        fingerprint: Fingerprint(fp),
    })
}

/// Node 0's side: listens on `--master-addr:--master-port`.
pub struct Leader {
    listener: TcpListener,
    layout: Layout,
    fingerprint: Fingerprint,
}

impl Leader {
    pub fn bind(addr: SocketAddr, layout: Layout, fingerprint: Fingerprint) -> Result<Self> {
        let listener = TcpListener::bind(addr).map_err(io(format!("listening on {addr}")))?;
        listener
            .set_nonblocking(true)
            .map_err(io("making the listener non-blocking"))?;
        Ok(Self {
            listener,
            layout,
            fingerprint,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(io("the listener's address"))
    }

    /// Why node 0 refuses `h`, if it does; `joined` are the ranks already in.
    fn refusal(&self, h: &Hello, joined: &[NodeLink]) -> Option<String> {
        if h.fingerprint != self.fingerprint {
            return Some(format!(
                "it serves another model or build (fingerprint {}, node 0 has {}): give every node the same weights and the same qwen3-serve",
                h.fingerprint, self.fingerprint
            ));
        }
        if h.layout != self.layout {
            return Some(format!(
                "its layout {:?} differs from node 0's {:?}",
                h.layout, self.layout
            ));
        }
        if h.node_rank == 0 || h.node_rank >= self.layout.nnodes {
            return Some(format!(
                "--node-rank {} is not one of 1..{}",
                h.node_rank, self.layout.nnodes
            ));
        }
        if joined.iter().any(|l| l.node_rank == h.node_rank) {
            return Some(format!("node {} has already joined", h.node_rank));
        }
        None
    }

    /// Waits until every other node has joined (refusing any that does not match, which
    /// does not end the wait), then calls `root_info` (made on node 0's rank 0 with its
    /// device current) and hands it to each. Fails once `timeout` has passed.
    pub fn gather<E: std::fmt::Display>(
        &self,
        timeout: Duration,
        root_info: impl FnOnce() -> std::result::Result<Vec<u8>, E>,
    ) -> Result<Vec<NodeLink>> {
        let deadline = Instant::now() + timeout;
        let mut joined: Vec<NodeLink> = Vec::new();
        while (joined.len() as u32) + 1 < self.layout.nnodes {
            let waiting = format!(
                "node 0 waited {timeout:?} and {} of {} other nodes joined",
                joined.len(),
                self.layout.nnodes - 1
            );
            let (mut s, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    remaining(deadline, &waiting)?;
                    std::thread::sleep(POLL);
                    continue;
                }
                Err(e) => return Err(io("accepting a node")(e)),
            };
            // A slow peer may hold node 0 only until the deadline.
            let left = remaining(deadline, &waiting)?;
            s.set_nonblocking(false)
                .and_then(|()| s.set_read_timeout(Some(left)))
                .map_err(io(format!("configuring the connection from {peer}")))?;
            let hello = match read_hello(&mut s) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!("rendezvous: ignoring {peer}: {e}");
                    continue;
                }
            };
            if let Some(why) = self.refusal(&hello, &joined) {
                tracing::warn!(
                    "rendezvous: refused node {} at {peer}: {why}",
                    hello.node_rank
                );
                let mut msg = vec![1u8];
                msg.extend((why.len() as u32).to_le_bytes());
                msg.extend(why.as_bytes());
                let _ = s.write_all(&msg);
                continue;
            }
            tracing::info!("rendezvous: node {} joined from {peer}", hello.node_rank);
            joined.push(NodeLink {
                node_rank: hello.node_rank,
                stream: s,
            });
        }
        let root = root_info().map_err(|e| {
            RendezvousError::Protocol(format!("node 0 could not make the HCCL root info: {e}"))
        })?;
        let mut msg = vec![0u8];
        msg.extend(self.layout.world().to_le_bytes());
        msg.extend((root.len() as u32).to_le_bytes());
        msg.extend(&root);
        for l in &mut joined {
            l.stream
                .write_all(&msg)
                .map_err(io(format!("welcoming node {}", l.node_rank)))?;
        }
        joined.sort_by_key(|l| l.node_rank);
        Ok(joined)
    }
}

/// A node other than 0: joins node 0 at `master`, retrying until it answers, within
/// `timeout` in all.
pub fn join(
    master: SocketAddr,
    node_rank: u32,
    layout: Layout,
    fingerprint: Fingerprint,
    timeout: Duration,
) -> Result<Joined> {
    let deadline = Instant::now() + timeout;
    let waiting = format!("node {node_rank} could not reach node 0 at {master} within {timeout:?}");
    let mut s = loop {
        match TcpStream::connect_timeout(&master, remaining(deadline, &waiting)?.min(POLL * 20)) {
            Ok(s) => break s,
            Err(_) => std::thread::sleep(POLL),
        }
    };
    let hello = Hello {
        node_rank,
        layout,
        fingerprint,
    };
    s.write_all(&hello_bytes(&hello))
        .map_err(io(format!("greeting node 0 at {master}")))?;
    let answer = format!("node 0 at {master} did not answer within {timeout:?}");
    s.set_read_timeout(Some(remaining(deadline, &answer)?))
        .map_err(io("setting the read timeout"))?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            RendezvousError::Timeout(answer.clone())
        }
        _ => io("reading node 0's answer")(e),
    })?;
    match status[0] {
        0 => {
            let world = read_u32(&mut s).map_err(io("reading the world size"))?;
            let root_info = read_payload(&mut s)?;
            s.set_read_timeout(None)
                .map_err(io("clearing the read timeout"))?;
            Ok(Joined {
                world,
                root_info,
                link: NodeLink {
                    node_rank,
                    stream: s,
                },
            })
        }
        1 => Err(RendezvousError::Refused(
            String::from_utf8_lossy(&read_payload(&mut s)?).into_owned(),
        )),
        other => Err(RendezvousError::Protocol(format!(
            "node 0 answered with status {other}"
        ))),
    }
}
