//! Two processes, one HCCL group, through the product's own pieces: node 0 waits at the
//! rendezvous (`qwen3_model::rendezvous`), refuses a process that brings another model,
//! makes the root info on its rank 0 with the device current once node 1 has joined, and
//! hands it over; each node's `HcclCommunicator::init` (with its warm-up all-reduce) then
//! forms the group across the two processes on the emulated HCCL, an all-reduce sums
//! both nodes' tensors, and HcclSend / HcclRecv pass a tensor there and back
//! (`HcclCommunicator::send` / `recv_into`). (`harness = false`: this test runs itself as
//! the other processes.)

mod common;

use std::net::SocketAddr;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use ascend_sys::types::HcclRootInfo;
use common::{fixtures, Emu, DENSE};
use qwen3_backend::comm::Communicator;
use qwen3_backend::{Backend, HostData};
use qwen3_backend_ascend::comm::{
    root_info, root_info_bytes, root_info_from_bytes, HcclCommunicator,
};
use qwen3_backend_ascend::{AscendBackend, AscendOptions};
use qwen3_model::rendezvous::{join, Fingerprint, Layout, Leader, RendezvousError};

const ROLE: &str = "QWEN3_TEST_NODE_ROLE";
const MASTER: &str = "QWEN3_TEST_MASTER";
const LAYOUT: Layout = Layout {
    nnodes: 2,
    tensor_parallel_size: 1,
    pipeline_parallel_size: 2,
};
const WAIT: Duration = Duration::from_secs(60);

fn fingerprint(model: &str) -> Fingerprint {
    Fingerprint::of_model(&fixtures().join(model)).expect("fingerprint")
}

/// One node's rank: joins the group, all-reduces `mine`, then, as a pipeline stage would
/// hand on its hidden states, rank 0 sends the sum to rank 1, which returns it doubled.
fn rank(backend: &AscendBackend, root: &HcclRootInfo, rank: usize, mine: &[f32]) -> Vec<f32> {
    let comm = HcclCommunicator::init(backend, root, rank, 2).expect("HCCL group");
    let mut t = backend.upload(HostData::F32(mine), &[mine.len()]).unwrap();
    comm.all_reduce_sum(backend, &mut t).unwrap();
    let sum = backend.to_host_f32(&t).unwrap();
    let mut back = backend
        .upload(HostData::F32(&vec![0.0; mine.len()]), &[mine.len()])
        .unwrap();
    if rank == 0 {
        comm.send(backend, &t, 1).unwrap();
        comm.recv_into(backend, &mut back, 1).unwrap();
        assert_eq!(
            backend.to_host_f32(&back).unwrap(),
            sum.iter().map(|x| 2.0 * x).collect::<Vec<_>>()
        );
    } else {
        comm.recv_into(backend, &mut back, 0).unwrap();
        let twice: Vec<f32> = backend
            .to_host_f32(&back)
            .unwrap()
            .iter()
            .map(|x| 2.0 * x)
            .collect();
        let twice = backend
            .upload(HostData::F32(&twice), &[mine.len()])
            .unwrap();
        comm.send(backend, &twice, 0).unwrap();
        backend.to_host_f32(&twice).unwrap();
    }
    sum
}

fn spawn(role: &str, master: SocketAddr) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .env(MASTER, master.to_string())
        .spawn()
        .unwrap()
}

fn child(role: &str) -> ExitCode {
    let emu = Emu::new();
    let master: SocketAddr = std::env::var(MASTER).unwrap().parse().unwrap();
    if role == "intruder" {
        return match join(master, 1, LAYOUT, fingerprint("tiny-qwen3"), WAIT) {
            Err(RendezvousError::Refused(why)) if why.contains("another model") => {
                ExitCode::SUCCESS
            }
            other => {
                eprintln!("intruder: {other:?}");
                ExitCode::FAILURE
            }
        };
    }
    let joined = join(master, 1, LAYOUT, fingerprint(DENSE), WAIT).expect("node 1 joins");
    assert_eq!(joined.world, 2);
    let backend = AscendBackend::with_options(Arc::clone(&emu.cann), 1, AscendOptions::default())
        .expect("node 1's device");
    let sum = rank(
        &backend,
        &root_info_from_bytes(&joined.root_info).expect("a root info"),
        1,
        &[10.0, 20.0, 30.0],
    );
    if sum != [11.0, 22.0, 33.0] {
        eprintln!("node 1 got {sum:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    if let Ok(role) = std::env::var(ROLE) {
        return child(&role);
    }
    let emu = Emu::new();
    let leader = Leader::bind("127.0.0.1:0".parse().unwrap(), LAYOUT, fingerprint(DENSE)).unwrap();
    let master = leader.local_addr().unwrap();
    let cann = Arc::clone(&emu.cann);
    let node0 = std::thread::spawn(move || {
        let backend = AscendBackend::with_options(cann, 0, AscendOptions::default()).unwrap();
        let mut root = HcclRootInfo::default();
        let links = leader
            .gather(WAIT, || {
                root = root_info(&backend)?;
                Ok::<_, qwen3_backend::BackendError>(root_info_bytes(&root))
            })
            .expect("rendezvous");
        assert_eq!(links.len(), 1);
        rank(&backend, &root, 0, &[1.0, 2.0, 3.0])
    });
    // Another model's process is refused while node 0 goes on waiting for node 1.
    assert!(
        spawn("intruder", master).wait().unwrap().success(),
        "intruder not refused"
    );
    println!("test a_node_with_another_model_is_refused_at_rendezvous ... ok");
    let mut node1 = spawn("node1", master);
    let sum = node0.join().unwrap();
    assert!(node1.wait().unwrap().success(), "node 1 failed");
    assert_eq!(sum, [11.0, 22.0, 33.0]);
    let st = emu.stats();
    assert_eq!(
        (st.leaks(), st.violations(), st.exec_errors),
        (0, 0, 0),
        "{st:?}"
    );
    println!("test two_processes_form_one_hccl_group_through_the_rendezvous ... ok");
    ExitCode::SUCCESS
}
