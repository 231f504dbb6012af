//! The multi-node rendezvous over loopback: nodes of one model join and get node 0's root
//! info; a node with another model or layout is refused while node 0 keeps waiting; a node
//! that never comes, or a node 0 that never answers, is an error within the timeout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use qwen3_model::rendezvous::{join, Fingerprint, Layout, Leader, RendezvousError};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

const LAYOUT: Layout = Layout {
    nnodes: 3,
    tensor_parallel_size: 2,
    pipeline_parallel_size: 3,
};

fn leader(fp: Fingerprint, layout: Layout) -> (Leader, SocketAddr) {
    let l = Leader::bind("127.0.0.1:0".parse().unwrap(), layout, fp).unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[test]
fn fingerprints_tell_models_apart_and_are_stable() {
    let a = Fingerprint::of_model(&fixture("tiny-qwen3")).unwrap();
    assert_eq!(a, Fingerprint::of_model(&fixture("tiny-qwen3")).unwrap());
    let b = Fingerprint::of_model(&fixture("tiny-qwen3-gptq")).unwrap();
    assert_ne!(a, b);
    // Same config and header, one weight byte changed in the sampled data: another model.
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-qwen3").join(f), dir.path().join(f)).unwrap();
    }
    assert_eq!(a, Fingerprint::of_model(dir.path()).unwrap());
    let w = dir.path().join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&w, bytes).unwrap();
    assert_ne!(a, Fingerprint::of_model(dir.path()).unwrap());
}

#[test]
fn matching_nodes_join_and_a_node_with_another_model_is_refused() {
    let fp = Fingerprint::of_model(&fixture("tiny-qwen3")).unwrap();
    let other = Fingerprint::of_model(&fixture("tiny-qwen3-gptq")).unwrap();
    let (l, addr) = leader(fp, LAYOUT);
    let t = Duration::from_secs(20);
    let root = vec![7u8; 4108];
    let expect_root = root.clone();
    let node0 = std::thread::spawn(move || l.gather(t, || Ok::<_, String>(root)));
    // The intruder comes first; node 0 refuses it and goes on waiting for nodes 1 and 2.
    let refused = join(addr, 1, LAYOUT, other, t).unwrap_err();
    match &refused {
        RendezvousError::Refused(why) => assert!(why.contains("another model"), "{why}"),
        e => panic!("{e}"),
    }
    let wrong_layout = Layout {
        tensor_parallel_size: 4,
        ..LAYOUT
    };
    assert!(matches!(
        join(addr, 2, wrong_layout, fp, t),
        Err(RendezvousError::Refused(_))
    ));
    let n2 = std::thread::spawn(move || join(addr, 2, LAYOUT, fp, t));
    let n1 = join(addr, 1, LAYOUT, fp, t).unwrap();
    let n2 = n2.join().unwrap().unwrap();
    let links = node0.join().unwrap().unwrap();
    assert_eq!(
        links.iter().map(|l| l.node_rank).collect::<Vec<_>>(),
        [1, 2]
    );
    for j in [&n1, &n2] {
        assert_eq!((j.world, &j.root_info), (6, &expect_root));
    }
    assert_eq!((n1.link.node_rank, n2.link.node_rank), (1, 2));
}

#[test]
fn a_node_that_never_comes_and_a_silent_node_0_are_bounded_errors() {
    let fp = Fingerprint::of_model(&fixture("tiny-qwen3")).unwrap();
    let two = Layout {
        nnodes: 2,
        tensor_parallel_size: 2,
        pipeline_parallel_size: 2,
    };
    let (l, addr) = leader(fp, two);
    let start = Instant::now();
    let e = l
        .gather(Duration::from_millis(500), || Ok::<_, String>(vec![1]))
        .unwrap_err();
    assert!(matches!(e, RendezvousError::Timeout(_)), "{e}");
    assert!(e.to_string().contains("0 of 1 other nodes joined"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    // Node 0 listens (the connection is accepted by the kernel) but never answers.
    let start = Instant::now();
    let e = join(addr, 1, two, fp, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(e, RendezvousError::Timeout(_)), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5));
    drop(l);
    // Nothing listens at all.
    let e = join(addr, 1, two, fp, Duration::from_millis(300)).unwrap_err();
    assert!(e.to_string().contains("could not reach node 0"), "{e}");
}
