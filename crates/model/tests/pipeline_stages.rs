//! Pipeline parallelism on the CPU, in one process: two stages (TP 1 and TP 2 within each),
//! node 0's executor driving the second stage's headless loop over a real loopback TCP
//! connection and hidden states passed over channels, give transformers' greedy tokens
//! through the engine (F32, the 1e-3 parity path, so tokens must be equal); and a stage
//! that dies fails the step and marks the executor broken instead of hanging.

mod common;

use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use qwen3_backend::comm::Communicator;
use qwen3_backend::cpu::comm::InProcessGroup;
use qwen3_backend::cpu::CpuBackend;
use qwen3_backend::{Backend, BackendError, HostData};
use qwen3_engine::{EngineRequest, Executor};
use qwen3_model::load_stage::stage_worker;
use qwen3_model::pipeline::stage_layers;
use qwen3_model::pipeline_exec::{StageLink, StageLinks};
use qwen3_model::pipeline_node::{serve_stage, PipelineLeader};
use qwen3_model::rendezvous::NodeLink;
use qwen3_model::tp::{StageRankInit, TpExecutor};
use qwen3_model::{ResizableExecutor, Shard, WeightDType};

/// Hidden states as host F32 over a channel: the CPU's stand-in for HCCL send/receive.
struct ChannelLink {
    tx: Mutex<Sender<Vec<f32>>>,
    rx: Mutex<Receiver<Vec<f32>>>,
}

impl StageLink<CpuBackend> for ChannelLink {
    fn send(
        &self,
        backend: &CpuBackend,
        t: &<CpuBackend as Backend>::Tensor,
    ) -> Result<(), BackendError> {
        let v = backend.to_host_f32(t)?;
        self.tx
            .lock()
            .unwrap()
            .send(v)
            .map_err(|_| BackendError::Collective("the next stage is gone".into()))
    }

    fn recv(
        &self,
        backend: &CpuBackend,
        shape: &[usize],
    ) -> Result<<CpuBackend as Backend>::Tensor, BackendError> {
        let v = self
            .rx
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| BackendError::Collective("the previous stage is gone".into()))?;
        backend.upload(HostData::F32(&v), shape)
    }

    fn wait_sent(&self, _backend: &CpuBackend) -> Result<(), BackendError> {
        // Sent when `send` returned: the data is in the channel.
        Ok(())
    }
}

/// A pair of links, one end for each of two neighbouring stages' rank.
fn link_pair() -> (ChannelLink, ChannelLink) {
    let (a_tx, a_rx) = channel();
    let (b_tx, b_rx) = channel();
    let end = |tx, rx| ChannelLink {
        tx: Mutex::new(tx),
        rx: Mutex::new(rx),
    };
    (end(a_tx, b_rx), end(b_tx, a_rx))
}

/// Both stages of `model` at TP `tp` each: (first, last) executors.
fn stages(model: &str, s: &Setup) -> (Box<dyn ResizableExecutor>, Box<dyn ResizableExecutor>) {
    let opts = load_options(model, s);
    let n = opts.config.num_hidden_layers;
    let tp = s.tp;
    let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
    let (g0, g1) = (InProcessGroup::new(tp), InProcessGroup::new(tp));
    for (rank, (c0, c1)) in g0.into_iter().zip(g1).enumerate() {
        let (down, up) = link_pair();
        for (stage, comm, links) in [
            (
                0,
                c0,
                StageLinks {
                    prev: None,
                    next: Some(Box::new(down) as Box<dyn StageLink<_>>),
                },
            ),
            (
                1,
                c1,
                StageLinks {
                    prev: Some(Box::new(up) as Box<dyn StageLink<_>>),
                    next: None,
                },
            ),
        ] {
            let opts = opts.clone();
            let layers = stage_layers(n, 2, stage).expect("split");
            let init: StageRankInit<CpuBackend> = Box::new(move || {
                let w = stage_worker(CpuBackend::new(), &opts, Shard { rank, world: tp }, layers)?;
                let comm: Box<dyn Communicator<CpuBackend>> = Box::new(comm);
                Ok((w, comm, links))
            });
            if stage == 0 {
                firsts.push(init)
            } else {
                lasts.push(init)
            }
        }
    }
    let start = |inits| -> Box<dyn ResizableExecutor> {
        Box::new(TpExecutor::start_stage(inits, Arc::new(|| {})).expect("stage loads"))
    };
    (start(firsts), start(lasts))
}

/// A connected loopback pair: node 0's end and node 1's.
fn tcp_pair() -> (NodeLink, NodeLink) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
    let (a, _) = l.accept().expect("accept");
    (
        NodeLink {
            node_rank: 1,
            stream: a,
        },
        NodeLink {
            node_rank: 1,
            stream: c,
        },
    )
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn goldens_through_two_stages(model: &str, tp: usize) {
    let s = Setup {
        tp,
        dtype: WeightDType::F32,
        ..Setup::default()
    };
    let (first, last) = stages(model, &s);
    let (to_node1, node1) = tcp_pair();
    let headless = std::thread::spawn(move || serve_stage(node1, last));
    let leader =
        PipelineLeader::new(first, vec![to_node1], Duration::from_secs(60)).expect("leader");
    let e = engine_over(model, &s, Box::new(leader));
    let golden = golden(model);
    let cases: Vec<&Case> = golden
        .cases
        .iter()
        .filter(|c| c.config_overrides.is_none())
        .collect();
    rt().block_on(async {
        let streams: Vec<_> = cases
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut r = EngineRequest::new(format!("r{i}"), c.prompt_ids.clone());
                r.max_tokens = Some(c.greedy_ids.len() as u32);
                r.ignore_eos = true;
                e.submit(r).expect("submit")
            })
            .collect();
        for (mut st, c) in streams.into_iter().zip(&cases) {
            let mut toks = Vec::new();
            while let Some(o) = st.next().await {
                toks.extend(o.token_ids);
                assert!(!matches!(
                    o.finish_reason,
                    Some(qwen3_engine::FinishReason::Error(_))
                ));
            }
            assert_eq!(toks, c.greedy_ids, "{model} tp{tp}×pp2 {}", c.name);
        }
    });
    e.shutdown(Duration::from_secs(5));
    drop(e);
    // Node 0's executor says stop when dropped: the headless loop ends cleanly.
    headless
        .join()
        .expect("headless thread")
        .expect("headless loop ends cleanly");
}

#[test]
fn two_stages_give_the_goldens_dense_and_moe_at_tp1_and_tp2() {
    goldens_through_two_stages("tiny-qwen3", 1);
    goldens_through_two_stages("tiny-qwen3", 2);
    goldens_through_two_stages("tiny-qwen3-moe", 2);
}

#[test]
fn a_dead_node_fails_the_step_and_breaks_the_executor() {
    let s = Setup {
        dtype: WeightDType::F32,
        ..Setup::default()
    };
    let (first, last) = stages("tiny-qwen3", &s);
    let (to_node1, node1) = tcp_pair();
    // Node 1 goes away before the first step: its connection closes and its stage with it.
    drop(node1);
    drop(last);
    let mut leader =
        PipelineLeader::new(first, vec![to_node1], Duration::from_secs(10)).expect("leader");
    let batch = single_seq_batch(&[1, 2, 3], 0, true);
    let e = leader.execute(&batch).expect_err("node 1 is gone");
    assert!(e.0.contains("pipeline node"), "{}", e.0);
    assert!(leader.is_broken());
    assert!(leader.execute(&batch).is_err());
}
