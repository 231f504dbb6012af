//! The Ascend allocator's bytes by kind (what /metrics exports as the process's own device
//! memory) against what was allocated, on the emulated CANN: the weights as the checkpoint's
//! tensors in the serving dtype, the KV cache as its blocks, captured decode graphs present
//! while the engine holds them, and every kind together with the pool's cache equal to the
//! emulated driver's own count of live device bytes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use qwen3_backend_ascend::mem::open_pool_stats;
use qwen3_backend_ascend::{AscendOptions, MemKind, PoolStats};
use qwen3_model::WeightDType;

/// Bytes of every tensor in the fixture's checkpoint at `elem` bytes an element.
fn checkpoint_bytes(model: &str, elem: u64) -> u64 {
    let bytes = std::fs::read(fixtures().join(model).join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .iter()
        .map(|(_, t)| t.shape().iter().product::<usize>() as u64 * elem)
        .sum()
}

/// The one open device's counters, once the driver's live bytes agree with them (the
/// engine thread may still be dropping the last step's buffers when the stream ends).
fn settled(emu: &Emu) -> (PoolStats, u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let open = open_pool_stats();
        assert_eq!(open.len(), 1, "one device open: {open:?}");
        let s = open[0].1;
        let live = emu.stats().live_bytes;
        if s.by_kind.total() + s.bytes_cached == live || Instant::now() > deadline {
            return (s, live);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bytes_by_kind_equal_what_was_allocated() {
    let emu = Emu::new();
    let setup = Setup {
        dtype: WeightDType::BF16,
        ..Setup::default()
    };
    let opts = AscendOptions {
        graph_capture: true,
        ..AscendOptions::default()
    };
    let e = engine_with(&emu, DENSE, &setup, opts);
    let prompt = golden(DENSE).cases[0].prompt_ids.clone();
    let stream = e.submit(request("r", &prompt, 4)).expect("submit");
    rt().block_on(collect(stream));

    let (s, live) = settled(&emu);
    let k = s.by_kind;
    eprintln!("{k:?}, pool cached {}, driver live {live}", s.bytes_cached);
    // BF16 weights, one device: every checkpoint tensor once (tied embeddings included).
    assert_eq!(k.get(MemKind::Weights), checkpoint_bytes(DENSE, 2));
    // K and V, per layer, [blocks, block_size, kv_heads, head_dim] in BF16.
    let c = config(DENSE, None);
    let kv = 2 * c.num_hidden_layers * setup.num_blocks * BLOCK_SIZE * c.num_key_value_heads;
    assert_eq!(
        k.get(MemKind::KvCache),
        (kv * c.head_dim * 2) as u64,
        "KV cache"
    );
    assert!(k.get(MemKind::Graphs) > 0, "a decode step was captured");
    assert!(k.get(MemKind::Activations) > 0, "RoPE tables and the mask");
    assert_eq!(
        k.total() + s.bytes_cached,
        live,
        "kinds and pool cache vs the driver's live bytes"
    );
    // Graph-owned buffers are the only bytes `bytes_in_use` does not count.
    assert_eq!(s.bytes_in_use, k.total() - k.get(MemKind::Graphs));

    stop(e);
    assert!(
        open_pool_stats().is_empty(),
        "the device closed with the engine"
    );
    emu.assert_clean();
}
