//! qwen3-serve's own AscendC kernels (`kernels/`) in the backend, launched through the
//! emulator's `aclrtlaunch_*` stubs (the sim-compiled kernels), on the head_dim 128 fixture:
//! the fused q/k norm + RoPE + KV-write kernel (on by default where the library loads)
//! against the four aclnn ops it replaces, `--attention-backend custom` (split-KV paged
//! decode, chunked prefill) against fused infer attention and the goldens, and the engine
//! with graph capture on against the goldens and against the same engine on FIA.

mod common;

use std::sync::Arc;

use common::*;
use qwen3_backend_ascend::{AscendBackend, AscendOptions, AttentionBackend, AttentionPath};
use qwen3_model::{SingleExecutor, WeightDType};

/// BF16 weights and activations, as the FIA parity test (`e2e_parity.rs`) allows.
const TOL_GOLDEN: f32 = 0.25;
/// Custom vs FIA on the same BF16 model: both round their BF16 output once from F32
/// softmax; what differs is the order of F32 sums, plus BF16 ties flipping downstream.
const TOL_FIA: f32 = 0.05;

fn executor(emu: &Emu, attention: AttentionBackend) -> SingleExecutor<AscendBackend> {
    let opts = AscendOptions {
        attention_backend: attention,
        ..AscendOptions::default()
    };
    single_executor(emu, DENSE, WeightDType::BF16, opts)
}

/// The largest |a - b| over every logit of every row.
fn rows_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    let all: Vec<usize> = (0..a[0].len()).collect();
    a.iter()
        .zip(b)
        .map(|(x, y)| max_diff(x, y, &all))
        .fold(0.0f32, f32::max)
}

/// Every prompt position's and teacher-forced decode step's logits of each golden case.
fn logits(ex: &mut SingleExecutor<AscendBackend>) -> Vec<Vec<f32>> {
    let golden = golden(DENSE);
    let vocab = ex.worker().model.config.vocab_size;
    let mut out = Vec::new();
    for case in golden.cases.iter().filter(|c| c.config_overrides.is_none()) {
        let n = case.prompt_ids.len();
        let rows: Vec<u32> = (0..n as u32).collect();
        let l = ex
            .logits(&single_seq_batch(&case.prompt_ids, 0, true), &rows)
            .expect("prefill");
        out.extend(l.chunks(vocab).map(<[f32]>::to_vec));
        for (i, &tok) in case.greedy_ids.iter().enumerate() {
            let b = single_seq_batch(&[tok], n + i, false);
            out.push(ex.logits(&b, &[0]).expect("decode"));
        }
    }
    out
}

#[test]
fn custom_attention_matches_fia_and_the_goldens() {
    let emu = Emu::new();
    let custom = logits(&mut executor(&emu, AttentionBackend::Custom));
    let fia = logits(&mut executor(&emu, AttentionBackend::Fia));
    let vs_fia = rows_diff(&custom, &fia);
    assert!(vs_fia < TOL_FIA, "custom vs FIA: {vs_fia}");

    let worst = vs_goldens(&custom);
    assert!(worst < TOL_GOLDEN, "custom vs goldens: {worst}");
    eprintln!("custom attention: max |diff| {vs_fia:.2e} vs FIA, {worst:.2e} vs transformers");
    emu.assert_clean();
}

/// The largest difference of `logits` (rows as [`logits`] makes them) from transformers'
/// goldens: decode golden i is the logits before feeding greedy token i, i.e. the last
/// prompt row, then the row after each fed token.
fn vs_goldens(logits: &[Vec<f32>]) -> f32 {
    let golden = golden(DENSE);
    let mut base = 0;
    let mut worst = 0.0f32;
    for case in golden.cases.iter().filter(|c| c.config_overrides.is_none()) {
        let rec = recorded(case);
        let n = case.prompt_ids.len();
        let rows = rec.prefill.iter().enumerate().map(|(p, w)| (base + p, w));
        let rows = rows.chain(
            rec.decode
                .iter()
                .enumerate()
                .map(|(i, w)| (base + n - 1 + i, w)),
        );
        for (r, want) in rows {
            worst = worst.max(max_diff(&logits[r], want, &rec.columns));
        }
        base += n + case.greedy_ids.len();
    }
    worst
}

/// Greedy tokens of every golden prompt through the engine (BF16, graph capture on).
fn engine_tokens(emu: &Emu, attention: AttentionBackend) -> Vec<Vec<u32>> {
    let golden = golden(DENSE);
    let e = engine_with(
        emu,
        DENSE,
        &Setup {
            dtype: WeightDType::BF16,
            ..Setup::default()
        },
        AscendOptions {
            graph_capture: true,
            capture_batch_sizes: vec![1, 2, 4],
            attention_backend: attention,
            ..AscendOptions::default()
        },
    );
    let out = rt().block_on(async {
        let mut tasks = Vec::new();
        for (i, c) in golden
            .cases
            .iter()
            .filter(|c| c.config_overrides.is_none())
            .enumerate()
        {
            let s = e
                .submit(request(&format!("r{i}"), &c.prompt_ids, c.greedy_ids.len()))
                .expect("submit");
            tasks.push(tokio::spawn(async move { collect(s).await.0 }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    stop(e);
    out
}

/// BF16 greedy decoding leaves transformers' F32 greedy path within a few tokens on this
/// random-weight model (as with FIA), so the engine is held to FIA's tokens: the same
/// batches, chunking and captured decode graphs, only the attention kernels differ.
#[test]
fn engine_with_custom_attention_and_graph_capture_decodes_as_fia() {
    let emu = Emu::new();
    let custom = engine_tokens(&emu, AttentionBackend::Custom);
    let fia = engine_tokens(&emu, AttentionBackend::Fia);
    assert_eq!(custom, fia);
    emu.assert_clean();
}

#[test]
fn custom_attention_refuses_an_f32_cache() {
    let emu = Emu::new();
    let opts = AscendOptions {
        attention_backend: AttentionBackend::Custom,
        kv_cache_f32: true,
        ..AscendOptions::default()
    };
    let err = AscendBackend::with_options(Arc::clone(&emu.cann), 0, opts)
        .err()
        .expect("refused");
    assert!(err.to_string().contains("BF16 KV cache only"), "{err}");
}

#[test]
fn attention_path_names_the_custom_kernels() {
    let emu = Emu::new();
    let custom = executor(&emu, AttentionBackend::Custom);
    let path = custom.worker().backend.attention_path();
    assert!(matches!(path, AttentionPath::Custom), "{path:?}");
    assert!(
        path.to_string().starts_with("custom AscendC kernels"),
        "{path}"
    );
    let fia = executor(&emu, AttentionBackend::Fia);
    let path = fia.worker().backend.attention_path();
    assert!(matches!(path, AttentionPath::Fused { .. }), "{path:?}");
}

/// The fused kernel rounds normed and rotated q and k to BF16 once and rotates with the F32
/// cos/sin tables; the four ops round after the norm and again after the rotation, which
/// uses the tables cast to BF16. On this random-weight model each BF16 path lies ~0.085 from
/// transformers' F32 logits, in different directions, so the two are held to the goldens'
/// BF16 bound each, and the fused one to no more than 10% further from them than the ops it
/// replaces.
const FUSED_VS_OPS: f32 = 1.1;

/// The fused norm/rope/cache kernel runs by default (under both attention backends) in
/// place of the aclnn head norms, rotation and cache scatter, and keeps the logits.
#[test]
fn fused_norm_rope_cache_replaces_four_ops_and_keeps_the_logits() {
    let emu = Emu::new();
    let mut launches = Vec::new();
    let mut outs = Vec::new();
    for fused in [true, false] {
        let opts = AscendOptions {
            fused_qk_norm_rope_cache: fused,
            ..AscendOptions::default()
        };
        let mut ex = single_executor(&emu, DENSE, WeightDType::BF16, opts);
        assert_eq!(ex.worker().backend.fuses_qk_norm_rope_cache(), fused);
        let layers = ex.worker().model.config.num_hidden_layers as u64;
        // One prefill step's aclnn launches.
        let before = emu.stats().op_launches;
        let prompt = &golden(DENSE).cases[0].prompt_ids;
        ex.logits(&single_seq_batch(prompt, 0, true), &[0])
            .expect("prefill");
        launches.push((emu.stats().op_launches - before, layers));
        outs.push(logits(&mut ex));
    }
    let ((on, layers), (off, _)) = (launches[0], launches[1]);
    // Per layer: two head RMSNorms, the q/k rotation, the cache scatter.
    assert!(
        off >= on + 4 * layers,
        "{on} aclnn launches fused, {off} unfused"
    );
    let d = rows_diff(&outs[0], &outs[1]);
    let (g_on, g_off) = (vs_goldens(&outs[0]), vs_goldens(&outs[1]));
    eprintln!("fused norm/rope/cache: {on} vs {off} launches a prefill, max |diff| {d:.2e}; vs goldens {g_on:.2e} fused, {g_off:.2e} four ops");
    assert!(
        g_on < TOL_GOLDEN && g_off < TOL_GOLDEN,
        "vs goldens: {g_on} fused, {g_off} four ops"
    );
    assert!(
        g_on <= FUSED_VS_OPS * g_off,
        "vs goldens: {g_on} fused, {g_off} four ops"
    );
    assert!(d < TOL_GOLDEN, "fused vs four ops: {d}");
    emu.assert_clean();
}

/// The engine's greedy tokens (BF16, custom attention, graph capture on) are the goldens'
/// wherever they can be held to them: along each case's path, every token whose F32
/// reference margin is decisive under BF16 (`bf16_decisive`) must match, up to the first
/// token that differs where the margin is not decisive (after it, the paths part lawfully).
#[test]
fn engine_with_custom_attention_and_graph_capture_gives_the_goldens() {
    let emu = Emu::new();
    let got = engine_tokens(&emu, AttentionBackend::Custom);
    let golden = golden(DENSE);
    let cases = golden.cases.iter().filter(|c| c.config_overrides.is_none());
    let (mut decisive, mut matched) = (0, 0);
    for (case, ours) in cases.zip(&got) {
        let (f32_ref, bf16_ref) = (recorded(case), recorded_bf16(case));
        for (i, &want) in case.greedy_ids.iter().enumerate() {
            if bf16_decisive(&f32_ref, &bf16_ref, i) {
                decisive += 1;
                assert_eq!(ours[i], want, "{}: greedy token {i}", case.name);
            } else if ours[i] != want {
                break;
            }
            matched += 1;
        }
    }
    assert!(decisive > 0, "no decisive greedy token was checked");
    eprintln!(
        "engine, custom attention, graphs: {matched} golden tokens in a row, {decisive} decisive"
    );
    emu.assert_clean();
}

/// `doctor`'s kernel checks at Qwen3-8B's layer shape (GQA 4:1) and at 8:1: each kernel
/// within its bound of the CPU backend (bounds in `doctor_kernels.rs`: 3e-2 for the fused
/// kernel's BF16 q, 2e-2 for attention, doctor's FIA bound), FIA as well, both timed with
/// device events; the long decode contexts split over KV, the short ones do not.
#[test]
fn doctor_checks_each_kernel_against_fia_and_the_cpu_at_real_shapes() {
    use qwen3_backend_ascend::doctor_kernels::{kernel_checks_at, Heads, QWEN3_8B};
    let emu = Emu::new();
    let b = AscendBackend::open(Arc::clone(&emu.cann), 0).expect("device 0");
    for h in [QWEN3_8B, Heads { q: 32, kv: 4 }] {
        let checks = kernel_checks_at(&b, h);
        assert_eq!(checks.len(), 4, "{checks:?}");
        for c in &checks {
            assert!(c.passed && c.error.is_none(), "{h:?}: {c:?}");
            assert!(c.baseline_error <= c.tolerance, "{h:?}: {c:?}");
            assert!(c.kernel_us.is_some_and(|t| t > 0.0), "{c:?}");
            assert!(c.baseline_us.is_some_and(|t| t > 0.0), "{c:?}");
        }
        let splits = |i: usize| checks[i].detail.clone().unwrap_or_default();
        assert!(!splits(1).starts_with("KV splits: 1 "), "{}", splits(1));
        assert!(splits(2).starts_with("KV splits: 1 "), "{}", splits(2));
        eprintln!(
            "{h:?}:\n{}",
            qwen3_backend_ascend::doctor_kernels::KernelLines(&checks)
        );
    }
    drop(b);
    emu.assert_clean();
}
