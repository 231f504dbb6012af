//! Attention and KV-cache operators: FusedInferAttentionScore V2/V3/V4 (layout TND, paged
//! KV), ScatterPaKvCache (cacheMode "Norm") and ScatterNdUpdate.
//!
//! Sources: ops-transformer `attention/fused_infer_attention_score` docs
//! (aclnnFusedInferAttentionScoreV2/V3/V4.md), `attention/scatter_pa_kv_cache` docs,
//! ops-nn `index/scatter_nd_update` docs.

// Parameter names follow the C declarations so they can be grepped against the docs.
#![allow(non_snake_case)]

use crate::nnop::{int_array, invalid, opt_tensor, phase1, tensor, tensor_list, TensorDesc};
use crate::ops::{need_float, need_int_index, need_shape, same_dtype};
use crate::state::{bump, Fail, Res, STATS};
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;
use std::collections::HashMap;
use std::ffi::{c_char, CStr};

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;
type T = *const aclTensor;
type TL = *const aclTensorList;
type IA = *const aclIntArray;

/// The side of the causal mask `sparseMode` 2/3/4 take.
const MASK_SIDE: i64 = 2048;

fn c_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated string per the C API.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// A value the op's tiling refuses: ACLNN_ERR_INNER_TILING_ERROR (561002) in the FIA docs'
/// return-code table, as the real op returns for TND shape rules (vllm-ascend PR 9632).
fn tiling(msg: String) -> Fail {
    Fail::new(ACLNN_ERR_INNER_TILING_ERROR, msg)
}

fn exec_err(msg: String) -> Fail {
    Fail::new(ACL_ERROR_RT_AICORE_EXCEPTION, msg)
}

/// Everything FIA V2/V3/V4 take that the emulator uses, plus the optional inputs it
/// must see absent.
struct FiaArgs {
    query: T,
    key: TL,
    value: TL,
    mask: T,
    seq_q: IA,
    seq_kv: IA,
    block_table: T,
    /// Optional inputs the emulator does not implement (quantisation, pse, prefixes,
    /// rope split, sinks), by name.
    unsupported: Vec<(&'static str, *const std::ffi::c_void)>,
    num_heads: i64,
    scale: f64,
    layout: *mut c_char,
    num_kv_heads: i64,
    sparse_mode: i64,
    inner_precise: i64,
    block_size: i64,
    lse_flag: bool,
    out: T,
    lse: T,
}

struct Fia {
    q: TensorDesc,
    k: TensorDesc,
    v: TensorDesc,
    table: Option<TensorDesc>,
    mask: Option<TensorDesc>,
    cu_q: Vec<i64>,
    kv_lens: Vec<i64>,
    n: usize,
    nkv: usize,
    d: usize,
    scale: f32,
    causal: bool,
    block_size: usize,
    out: TensorDesc,
    lse: Option<TensorDesc>,
}

fn fia_phase1(
    name: &'static str,
    a: FiaArgs,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1(name, ws, ex, || {
        for (what, p) in &a.unsupported {
            if !p.is_null() {
                return Err(invalid(format!(
                    "{what} is not supported by the emulator (must be null)"
                )));
            }
        }
        let q = tensor(a.query, "query")?;
        let ks = tensor_list(a.key, "key")?;
        let vs = tensor_list(a.value, "value")?;
        let out = tensor(a.out, "attentionOut")?;
        let layout = c_str(a.layout).ok_or_else(|| invalid("inputLayout is null"))?;
        if layout != "TND" {
            return Err(invalid(format!(
                "inputLayout \"{layout}\": the emulator implements TND only"
            )));
        }
        need_float(&q, "query")?;
        // Rule TND-dtype (README rule table): op-plugin docs
        // torch_npu-npu_fused_infer_attention_score.md, "TND、TND_NTD、NTD_TND场景下…数据类型
        // 仅支持BFLOAT16"; a dtype the op does not take is ACLNN_ERR_PARAM_INVALID (161002)
        // in the FIA docs' return-code table.
        if q.dtype != D::ACL_BF16 {
            return Err(invalid(format!(
                "When layout is TND, query dtype {:?} is not supported (BFLOAT16 only)",
                q.dtype
            )));
        }
        if q.rank() != 3 {
            return Err(invalid(format!(
                "query must be [T, N, D] for TND, got {:?}",
                q.dims
            )));
        }
        let (t, n, d) = (q.dims[0], q.dims[1], q.dims[2]);
        // Workspace (workspace.rs): the system part plus per-token, per-head FLOAT softmax
        // statistics (max, sum) and an output accumulator row, as the flash kernel keeps
        // for the tokens in flight (capped at 8 MiB: the kernel works in tiles).
        crate::workspace::user(((t.max(1) * n.max(1) * (d + 16) * 4) as u64).min(8 << 20));
        // Rule TND-head-dim (README rule table): CANN 8.3's tiling check
        // (CheckInputShapeWhenLayoutIsTND, prompt_flash_attention_tiling.cpp) as quoted in
        // vllm-ascend PR 9632 and issue 4020, returned as error code 561002
        // (ACLNN_ERR_INNER_TILING_ERROR). The 192/128 split (MLA) is not emulated: the
        // emulator takes one D for query, key and value.
        if !matches!(d, 64 | 128 | 192) {
            return Err(tiling(format!(
                "When layout is TND, queryD({d}), keyD({d}) and valueD({d}) must be same equal 192/128/64, or queryD and keyD equal 192 and valueD equal 128."
            )));
        }
        if a.num_heads != n {
            return Err(invalid(format!(
                "numHeads {} differs from query's N {n}",
                a.num_heads
            )));
        }
        let nkv = if a.num_kv_heads == 0 {
            n
        } else {
            a.num_kv_heads
        };
        if nkv <= 0 || n % nkv != 0 {
            return Err(invalid(format!(
                "numHeads {n} is not a multiple of numKeyValueHeads {nkv}"
            )));
        }
        if ks.len() != 1 || vs.len() != 1 {
            return Err(invalid(format!(
                "TND with paged or packed KV takes one key and one value tensor, got {} and {}",
                ks.len(),
                vs.len()
            )));
        }
        let (k, v) = (ks[0].clone(), vs[0].clone());
        same_dtype(&q, &k, "query/key")?;
        same_dtype(&q, &v, "query/value")?;
        same_dtype(&q, &out, "query/attentionOut")?;
        need_shape(&out, &q.dims, "attentionOut")?;
        if !(0..=3).contains(&a.inner_precise) {
            return Err(invalid(format!(
                "innerPrecise {} not in 0..=3",
                a.inner_precise
            )));
        }
        let cu_q = int_array(a.seq_q, "actualSeqLengths")?
            .ok_or_else(|| invalid("actualSeqLengths is required for TND"))?;
        let kv_lens = int_array(a.seq_kv, "actualSeqLengthsKv")?
            .ok_or_else(|| invalid("actualSeqLengthsKv is required for TND"))?;
        if cu_q.is_empty() || cu_q.len() != kv_lens.len() {
            return Err(invalid(format!(
                "actualSeqLengths ({}) and actualSeqLengthsKv ({}) must have one entry per sequence",
                cu_q.len(),
                kv_lens.len()
            )));
        }
        let mut prev = 0;
        for &c in &cu_q {
            if c < prev {
                return Err(invalid(
                    "actualSeqLengths must be cumulative (non-decreasing) for TND",
                ));
            }
            prev = c;
        }
        if prev != t {
            return Err(invalid(format!(
                "the last actualSeqLengths entry ({prev}) must equal query's T ({t})"
            )));
        }
        let max_q = cu_q
            .iter()
            .scan(0, |p, &c| {
                let l = c - *p;
                *p = c;
                Some(l)
            })
            .max()
            .unwrap_or(0);
        let table = opt_tensor(a.block_table, "blockTable")?;
        if table.is_some() {
            // Rule TND-paged-version (README rule table): TND with a paged KV cache failed on
            // releases before the ones vllm-ascend requires (vllm-ascend issue 4373, "When
            // layout is TND, not support Page Attention"; vllm-ascend needs CANN 8.3.RC1+).
            if !crate::rt::cann_at_least(8, 3) {
                return Err(tiling(format!(
                    "When layout is TND, not support Page Attention (emulated CANN {})",
                    crate::rt::cann_version()
                )));
            }
            // Rule TND-block-size (README rule table): TND with paged KV takes blockSize 128,
            // 512 or 1024 (/work/shared/ASCEND.md from the ops-transformer FIA docs; the
            // op-plugin doc's general page-attention rule is "最小为128…要求是128的倍数").
            // A value the tiling refuses is 561002.
            if !matches!(a.block_size, 128 | 512 | 1024) {
                return Err(tiling(format!(
                    "When layout is TND with page attention, blockSize {} must be 128, 512 or 1024",
                    a.block_size
                )));
            }
        }
        let row = nkv * d;
        if table.is_some() && row > 65535 {
            return Err(invalid(format!(
                "paged KV as [blocks, blockSize, H] needs KV_N * D <= 65535, got {row}"
            )));
        }
        if let Some(bt) = &table {
            if bt.dtype != D::ACL_INT32 || bt.rank() != 2 {
                return Err(invalid("blockTable must be INT32 [B, maxBlocks]"));
            }
            if bt.dims[0] != cu_q.len() as i64 {
                return Err(invalid(format!(
                    "blockTable has {} rows for {} sequences",
                    bt.dims[0],
                    cu_q.len()
                )));
            }
            // Non-quantised GQA (FIA docs, Paged Attention group): head dim 64 or 128 →
            // 16-aligned up to 1024; otherwise 128-aligned up to 1024 when a query is
            // longer than 1, 16-aligned up to 512 for single-token queries.
            let bs = a.block_size;
            let (align, max) = if d == 64 || d == 128 {
                (16, 1024)
            } else if max_q > 1 {
                (128, 1024)
            } else {
                (16, 512)
            };
            if bs <= 0 || bs > max || bs % align != 0 {
                return Err(invalid(format!(
                    "blockSize {bs} must be a multiple of {align} in {align}..={max} (head dim {d}, longest query {max_q})"
                )));
            }
            if bt.dims[1] == 0 {
                return Err(invalid("blockTable dimensions must not be 0"));
            }
            for (kv, nm) in [(&k, "key"), (&v, "value")] {
                let ok = (kv.rank() == 3 && kv.dims[1] == bs && kv.dims[2] == row)
                    || (kv.rank() == 4 && kv.dims[1] == nkv && kv.dims[2] == bs && kv.dims[3] == d);
                if !ok {
                    return Err(invalid(format!(
                        "paged {nm} must be [blocks, {bs}, {row}] or [blocks, {nkv}, {bs}, {d}], got {:?}",
                        kv.dims
                    )));
                }
            }
            for &l in &kv_lens {
                if l < 0 || l > bt.dims[1] * bs {
                    return Err(invalid(format!(
                        "actualSeqLengthsKv entry {l} exceeds the block table's {} blocks of {bs}",
                        bt.dims[1]
                    )));
                }
            }
        } else {
            if k.rank() != 3 || k.dims[1] != nkv || k.dims[2] != d || v.dims != k.dims {
                return Err(invalid(format!(
                    "packed TND key/value must be [Tkv, {nkv}, {d}], got {:?} / {:?}",
                    k.dims, v.dims
                )));
            }
        }
        let causal = match a.sparse_mode {
            0 => {
                if !a.mask.is_null() {
                    return Err(invalid(
                        "sparseMode 0 with an attention mask is not emulated",
                    ));
                }
                false
            }
            3 => true,
            m => return Err(invalid(format!("sparseMode {m} not emulated (0 or 3)"))),
        };
        let mask = opt_tensor(a.mask, "attenMask")?;
        if causal {
            let m = mask
                .as_ref()
                .ok_or_else(|| invalid("sparseMode 3 needs attenMask"))?;
            if !matches!(m.dtype, D::ACL_BOOL | D::ACL_INT8 | D::ACL_UINT8) {
                return Err(invalid(format!(
                    "attenMask dtype {:?} (BOOL, INT8, UINT8)",
                    m.dtype
                )));
            }
            if m.dims != [MASK_SIDE, MASK_SIDE] {
                return Err(invalid(format!(
                    "sparseMode 3 takes a [2048, 2048] attenMask, got {:?}",
                    m.dims
                )));
            }
        }
        let lse = if a.lse_flag {
            let l = tensor(a.lse, "softmaxLse")?;
            if l.dtype != D::ACL_FLOAT || l.dims != [t, n, 1] {
                return Err(invalid(format!(
                    "softmaxLse must be FLOAT [T, N, 1] = [{t}, {n}, 1] for TND, got {:?}",
                    l.dims
                )));
            }
            Some(l)
        } else {
            None
        };
        let f = Fia {
            q,
            k,
            v,
            table,
            mask,
            cu_q,
            kv_lens,
            n: n as usize,
            nkv: nkv as usize,
            d: d as usize,
            scale: a.scale as f32,
            causal,
            block_size: a.block_size.max(0) as usize,
            out,
            lse,
        };
        Ok(Box::new(move || f.run()) as Work)
    })
}

impl Fia {
    /// Keys or values of sequence `b` as `[kv_len, nkv*d]` rows.
    fn gather(
        &self,
        cache: &TensorDesc,
        b: usize,
        kv: usize,
        kv_start: usize,
        what: &str,
    ) -> Res<Vec<f32>> {
        let row = self.nkv * self.d;
        let Some(bt) = &self.table else {
            let mut out = Vec::with_capacity(kv * row);
            for j in 0..kv {
                out.extend(cache.index0((kv_start + j) as i64).read_f32(what)?);
            }
            return Ok(out);
        };
        let blocks = bt.index0(b as i64).read_i64("blockTable")?;
        let bs = self.block_size;
        let mut out = Vec::with_capacity(kv * row);
        let mut cache_rows: HashMap<i64, Vec<f32>> = HashMap::new();
        for j in 0..kv {
            let blk = blocks[j / bs];
            if blk < 0 || blk >= cache.dims[0] {
                bump(&STATS.oob_accesses);
                return Err(exec_err(format!(
                    "blockTable[{b}][{}] = {blk} out of range [0, {})",
                    j / bs,
                    cache.dims[0]
                )));
            }
            let data = match cache_rows.get(&blk) {
                Some(d) => d,
                None => {
                    let v = cache.index0(blk);
                    let v = if cache.rank() == 4 {
                        // [kvH, bs, D] → rows [bs, kvH*D].
                        let raw = v.read_f32(what)?;
                        let mut t = vec![0f32; raw.len()];
                        for h in 0..self.nkv {
                            for s in 0..bs {
                                for e in 0..self.d {
                                    t[s * row + h * self.d + e] = raw[(h * bs + s) * self.d + e];
                                }
                            }
                        }
                        t
                    } else {
                        v.read_f32(what)?
                    };
                    cache_rows.entry(blk).or_insert(v)
                }
            };
            let s = j % bs;
            out.extend_from_slice(&data[s * row..(s + 1) * row]);
        }
        Ok(out)
    }

    fn run(&self) -> Res<()> {
        if let Some(m) = &self.mask {
            // The documented mask is 1 above the diagonal (masked) and 0 elsewhere; an
            // inverted mask is a caller bug the real kernel would silently honour.
            let r0 = m.index0(0).read_i64("attenMask")?;
            let r1 = m.index0(1).read_i64("attenMask")?;
            if r0[0] != 0 || r0[1] == 0 || r1[0] != 0 || r1[1] != 0 {
                return Err(exec_err(
                    "attenMask for sparseMode 3 must be 1 strictly above the diagonal, 0 elsewhere"
                        .into(),
                ));
            }
        }
        let q = self.q.read_f32("query")?;
        let (n, d, nkv) = (self.n, self.d, self.nkv);
        let group = n / nkv;
        let row = nkv * d;
        let t_total = self.q.dims[0] as usize;
        let mut out = vec![0f32; t_total * n * d];
        let mut lse = vec![f32::INFINITY; t_total * n];
        let mut qs = 0usize;
        let mut kv_start = 0usize;
        for (b, (&qe, &kvl)) in self.cu_q.iter().zip(&self.kv_lens).enumerate() {
            let (qe, kv) = (qe as usize, kvl as usize);
            let ql = qe - qs;
            if self.table.is_none() && kv_start + kv > self.k.dims[0] as usize {
                return Err(exec_err(format!(
                    "packed key has {} rows, sequences need {}",
                    self.k.dims[0],
                    kv_start + kv
                )));
            }
            if ql > 0 {
                let keys = self.gather(&self.k, b, kv, kv_start, "key")?;
                let vals = self.gather(&self.v, b, kv, kv_start, "value")?;
                for i in 0..ql {
                    // Causal, aligned bottom-right: query i sees keys <= kv - ql + i.
                    let visible = if self.causal {
                        (kv as i64 - ql as i64 + i as i64 + 1).clamp(0, kv as i64) as usize
                    } else {
                        kv
                    };
                    for h in 0..n {
                        let kh = h / group;
                        let qv = &q[((qs + i) * n + h) * d..((qs + i) * n + h + 1) * d];
                        let mut scores = Vec::with_capacity(visible);
                        for j in 0..visible {
                            let kr = &keys[j * row + kh * d..j * row + (kh + 1) * d];
                            let s: f32 = qv.iter().zip(kr).map(|(a, b)| a * b).sum();
                            scores.push(s * self.scale);
                        }
                        if visible == 0 {
                            continue;
                        }
                        let m = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for s in &mut scores {
                            *s = (*s - m).exp();
                            sum += *s;
                        }
                        let o = &mut out[((qs + i) * n + h) * d..((qs + i) * n + h + 1) * d];
                        for (j, p) in scores.iter().enumerate() {
                            let vr = &vals[j * row + kh * d..j * row + (kh + 1) * d];
                            for (ov, vv) in o.iter_mut().zip(vr) {
                                *ov += p / sum * vv;
                            }
                        }
                        lse[(qs + i) * n + h] = m + sum.ln();
                    }
                }
            }
            qs = qe;
            kv_start += kv;
        }
        self.out.write_f32(&out, "attentionOut")?;
        if let Some(l) = &self.lse {
            l.write_f32(&lse, "softmaxLse")?;
        }
        Ok(())
    }
}

macro_rules! unsupported {
    ($($n:ident),* $(,)?) => {
        vec![$((stringify!($n), $n as *const std::ffi::c_void)),*]
    };
}

#[no_mangle]
pub unsafe extern "C" fn aclnnFusedInferAttentionScoreV2GetWorkspaceSize(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    numHeads: i64,
    scaleValue: f64,
    _preTokens: i64,
    _nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    _antiquantMode: i64,
    softmaxLseFlag: bool,
    _keyAntiquantMode: i64,
    _valueAntiquantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    let unsupported = unsupported!(
        pseShiftOptional,
        deqScale1Optional,
        quantScale1Optional,
        deqScale2Optional,
        quantScale2Optional,
        quantOffset2Optional,
        antiquantScaleOptional,
        antiquantOffsetOptional,
        queryPaddingSizeOptional,
        kvPaddingSizeOptional,
        keyAntiquantScaleOptional,
        keyAntiquantOffsetOptional,
        valueAntiquantScaleOptional,
        valueAntiquantOffsetOptional,
        keySharedPrefixOptional,
        valueSharedPrefixOptional,
        actualSharedPrefixLenOptional,
    );
    fia_phase1(
        "aclnnFusedInferAttentionScoreV2",
        FiaArgs {
            query,
            key,
            value,
            mask: attenMaskOptional,
            seq_q: actualSeqLengthsOptional,
            seq_kv: actualSeqLengthsKvOptional,
            block_table: blockTableOptional,
            unsupported,
            num_heads: numHeads,
            scale: scaleValue,
            layout: inputLayout,
            num_kv_heads: numKeyValueHeads,
            sparse_mode: sparseMode,
            inner_precise: innerPrecise,
            block_size: blockSize,
            lse_flag: softmaxLseFlag,
            out: attentionOut,
            lse: softmaxLse,
        },
        ws,
        ex,
    )
}

#[no_mangle]
pub unsafe extern "C" fn aclnnFusedInferAttentionScoreV3GetWorkspaceSize(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    queryRopeOptional: T,
    keyRopeOptional: T,
    keyRopeAntiquantScaleOptional: T,
    numHeads: i64,
    scaleValue: f64,
    _preTokens: i64,
    _nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    _antiquantMode: i64,
    softmaxLseFlag: bool,
    _keyAntiquantMode: i64,
    _valueAntiquantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    let unsupported = unsupported!(
        pseShiftOptional,
        deqScale1Optional,
        quantScale1Optional,
        deqScale2Optional,
        quantScale2Optional,
        quantOffset2Optional,
        antiquantScaleOptional,
        antiquantOffsetOptional,
        queryPaddingSizeOptional,
        kvPaddingSizeOptional,
        keyAntiquantScaleOptional,
        keyAntiquantOffsetOptional,
        valueAntiquantScaleOptional,
        valueAntiquantOffsetOptional,
        keySharedPrefixOptional,
        valueSharedPrefixOptional,
        actualSharedPrefixLenOptional,
        queryRopeOptional,
        keyRopeOptional,
        keyRopeAntiquantScaleOptional,
    );
    fia_phase1(
        "aclnnFusedInferAttentionScoreV3",
        FiaArgs {
            query,
            key,
            value,
            mask: attenMaskOptional,
            seq_q: actualSeqLengthsOptional,
            seq_kv: actualSeqLengthsKvOptional,
            block_table: blockTableOptional,
            unsupported,
            num_heads: numHeads,
            scale: scaleValue,
            layout: inputLayout,
            num_kv_heads: numKeyValueHeads,
            sparse_mode: sparseMode,
            inner_precise: innerPrecise,
            block_size: blockSize,
            lse_flag: softmaxLseFlag,
            out: attentionOut,
            lse: softmaxLse,
        },
        ws,
        ex,
    )
}

#[no_mangle]
pub unsafe extern "C" fn aclnnFusedInferAttentionScoreV4GetWorkspaceSize(
    query: T,
    key: TL,
    value: TL,
    pseShiftOptional: T,
    attenMaskOptional: T,
    actualSeqLengthsOptional: IA,
    actualSeqLengthsKvOptional: IA,
    deqScale1Optional: T,
    quantScale1Optional: T,
    deqScale2Optional: T,
    quantScale2Optional: T,
    quantOffset2Optional: T,
    antiquantScaleOptional: T,
    antiquantOffsetOptional: T,
    blockTableOptional: T,
    queryPaddingSizeOptional: T,
    kvPaddingSizeOptional: T,
    keyAntiquantScaleOptional: T,
    keyAntiquantOffsetOptional: T,
    valueAntiquantScaleOptional: T,
    valueAntiquantOffsetOptional: T,
    keySharedPrefixOptional: T,
    valueSharedPrefixOptional: T,
    actualSharedPrefixLenOptional: IA,
    queryRopeOptional: T,
    keyRopeOptional: T,
    keyRopeAntiquantScaleOptional: T,
    dequantScaleQueryOptional: T,
    learnableSinkOptional: T,
    numHeads: i64,
    scaleValue: f64,
    _preTokens: i64,
    _nextTokens: i64,
    inputLayout: *mut c_char,
    numKeyValueHeads: i64,
    sparseMode: i64,
    innerPrecise: i64,
    blockSize: i64,
    _antiquantMode: i64,
    softmaxLseFlag: bool,
    _keyAntiquantMode: i64,
    _valueAntiquantMode: i64,
    _queryQuantMode: i64,
    attentionOut: T,
    softmaxLse: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    let unsupported = unsupported!(
        pseShiftOptional,
        deqScale1Optional,
        quantScale1Optional,
        deqScale2Optional,
        quantScale2Optional,
        quantOffset2Optional,
        antiquantScaleOptional,
        antiquantOffsetOptional,
        queryPaddingSizeOptional,
        kvPaddingSizeOptional,
        keyAntiquantScaleOptional,
        keyAntiquantOffsetOptional,
        valueAntiquantScaleOptional,
        valueAntiquantOffsetOptional,
        keySharedPrefixOptional,
        valueSharedPrefixOptional,
        actualSharedPrefixLenOptional,
        queryRopeOptional,
        keyRopeOptional,
        keyRopeAntiquantScaleOptional,
        dequantScaleQueryOptional,
        learnableSinkOptional,
    );
    // Test knob, not a rule: CANN_EMU_FIA_V4_DRIFT=1 emulates a V4 build whose calling
    // convention differs from the caller's (ops-transformer's V4 header has
    // learnableSinkOptional where the V4 doc of the same commit has none): an argument lands
    // in another slot and the call computes silently wrong numbers (here: the softmax scale
    // is lost, 1.0 is used). The backend's start-up self-check must catch it.
    let scaleValue = if std::env::var_os("CANN_EMU_FIA_V4_DRIFT").is_some_and(|v| v == "1") {
        1.0
    } else {
        scaleValue
    };
    fia_phase1(
        "aclnnFusedInferAttentionScoreV4",
        FiaArgs {
            query,
            key,
            value,
            mask: attenMaskOptional,
            seq_q: actualSeqLengthsOptional,
            seq_kv: actualSeqLengthsKvOptional,
            block_table: blockTableOptional,
            unsupported,
            num_heads: numHeads,
            scale: scaleValue,
            layout: inputLayout,
            num_kv_heads: numKeyValueHeads,
            sparse_mode: sparseMode,
            inner_precise: innerPrecise,
            block_size: blockSize,
            lse_flag: softmaxLseFlag,
            out: attentionOut,
            lse: softmaxLse,
        },
        ws,
        ex,
    )
}

// ----------------------------------------------------------------------------- KV writes

#[no_mangle]
pub unsafe extern "C" fn aclnnScatterPaKvCacheGetWorkspaceSize(
    key: T,
    key_cache: *mut aclTensor,
    slot_mapping: T,
    value: T,
    value_cache: *mut aclTensor,
    compress_lens: T,
    compress_seq_offset: T,
    seq_lens: T,
    cache_mode: *mut c_char,
    scatter_mode: *mut c_char,
    strides: IA,
    offsets: IA,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnScatterPaKvCache", ws, ex, || {
        for (what, p) in [
            (
                "compressLensOptional",
                compress_lens as *const std::ffi::c_void,
            ),
            ("compressSeqOffsetOptional", compress_seq_offset as _),
            ("seqLensOptional", seq_lens as _),
            ("stridesOptional", strides as _),
            ("offsetsOptional", offsets as _),
        ] {
            if !p.is_null() {
                return Err(invalid(format!(
                    "{what}: only the plain \"Norm\" scatter is emulated"
                )));
            }
        }
        let mode = c_str(cache_mode).unwrap_or_else(|| "Norm".into());
        if mode != "Norm" {
            return Err(invalid(format!(
                "cacheMode \"{mode}\": only \"Norm\" is emulated"
            )));
        }
        let smode = c_str(scatter_mode).unwrap_or_else(|| "None".into());
        if smode != "None" {
            return Err(invalid(format!(
                "scatterMode \"{smode}\": only \"None\" is emulated"
            )));
        }
        let k = tensor(key, "key")?;
        let kc = tensor(key_cache, "keyCacheRef")?;
        let sm = tensor(slot_mapping, "slotMapping")?;
        let v = tensor(value, "value")?;
        let vc = tensor(value_cache, "valueCacheRef")?;
        need_int_index(&sm, "slotMapping")?;
        if !matches!(k.dtype, D::ACL_FLOAT16 | D::ACL_BF16 | D::ACL_INT8) {
            return Err(invalid(format!(
                "key dtype {:?} not supported (FLOAT16, BFLOAT16, INT8)",
                k.dtype
            )));
        }
        // Only key and value may be non-contiguous (docs, constraints).
        for (t, nm) in [
            (&kc, "keyCacheRef"),
            (&vc, "valueCacheRef"),
            (&sm, "slotMapping"),
        ] {
            if !t.is_contiguous() {
                return Err(invalid(format!("{nm} must be contiguous")));
            }
        }
        for (x, c, nm) in [(&k, &kc, "key"), (&v, &vc, "value")] {
            if x.rank() != 3 || c.rank() != 4 {
                return Err(invalid(format!(
                    "{nm} must be [T, heads, dim] and its cache [blocks, block_size, heads, dim], got {:?} / {:?}",
                    x.dims, c.dims
                )));
            }
            if c.dims[2..] != x.dims[1..] {
                return Err(invalid(format!(
                    "{nm} {:?} does not match its cache {:?}",
                    x.dims, c.dims
                )));
            }
            same_dtype(x, c, nm)?;
        }
        if k.dims[0] != v.dims[0] || sm.dims != [k.dims[0]] {
            return Err(invalid(format!(
                "slotMapping {:?} must be [T] with T = key's {}",
                sm.dims, k.dims[0]
            )));
        }
        if kc.dims[..2] != vc.dims[..2] {
            return Err(invalid(
                "keyCache and valueCache differ in blocks or block size",
            ));
        }
        Ok(Box::new(move || {
            let slots = sm.read_i64("slotMapping")?;
            let bs = kc.dims[1];
            let cap = kc.dims[0] * bs;
            // The docs: slots lie in [0, num_blocks * block_size - 1] and are unique
            // (duplicates give no correctness guarantee).
            let mut seen = std::collections::HashSet::new();
            for (t, &s) in slots.iter().enumerate() {
                if s < 0 || s >= cap {
                    bump(&STATS.oob_accesses);
                    return Err(exec_err(format!(
                        "slotMapping[{t}] = {s} outside [0, {cap})"
                    )));
                }
                if !seen.insert(s) {
                    return Err(exec_err(format!("slotMapping[{t}] = {s} is a duplicate")));
                }
            }
            for (x, c, nm) in [(&k, &kc, "keyCacheRef"), (&v, &vc, "valueCacheRef")] {
                let data = x.read_f32(nm)?;
                let per = data.len() / slots.len().max(1);
                for (t, &s) in slots.iter().enumerate() {
                    c.index0(s / bs)
                        .index0(s % bs)
                        .write_f32(&data[t * per..(t + 1) * per], nm)?;
                }
            }
            Ok(())
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnScatterNdUpdateGetWorkspaceSize(
    var: *mut aclTensor,
    indices: T,
    updates: T,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnScatterNdUpdate", ws, ex, || {
        let var = tensor(var, "varRef")?;
        let idx = tensor(indices, "indices")?;
        let upd = tensor(updates, "updates")?;
        need_int_index(&idx, "indices")?;
        same_dtype(&var, &upd, "varRef/updates")?;
        let r = idx.dim(-1);
        if idx.rank() < 1 || r < 1 || r as usize > var.rank() {
            return Err(invalid(format!(
                "indices {:?}: last dimension must be in 1..={}",
                idx.dims,
                var.rank()
            )));
        }
        let mut ud = idx.dims[..idx.rank() - 1].to_vec();
        ud.extend_from_slice(&var.dims[r as usize..]);
        need_shape(&upd, &ud, "updates")?;
        Ok(Box::new(move || {
            let ix = idx.read_i64("indices")?;
            let data = upd.read_f64("updates")?;
            let r = r as usize;
            let n = ix.len() / r;
            let per = data.len() / n.max(1);
            for i in 0..n {
                let mut view = var.clone();
                for (a, &x) in ix[i * r..(i + 1) * r].iter().enumerate() {
                    if x < 0 || x >= var.dims[a] {
                        bump(&STATS.oob_accesses);
                        return Err(exec_err(format!(
                            "indices[{i}] component {a} = {x} out of range [0, {})",
                            var.dims[a]
                        )));
                    }
                    view = view.index0(x);
                }
                view.write_f64(&data[i * per..(i + 1) * per], "varRef")?;
            }
            Ok(())
        }) as Work)
    })
}

phase2_exports!(
    aclnnFusedInferAttentionScoreV2,
    aclnnFusedInferAttentionScoreV3,
    aclnnFusedInferAttentionScoreV4,
    aclnnScatterPaKvCache,
    aclnnScatterNdUpdate,
);

const _: fns::aclnnFusedInferAttentionScoreV2GetWorkspaceSize =
    aclnnFusedInferAttentionScoreV2GetWorkspaceSize;
const _: fns::aclnnFusedInferAttentionScoreV3GetWorkspaceSize =
    aclnnFusedInferAttentionScoreV3GetWorkspaceSize;
const _: fns::aclnnFusedInferAttentionScoreV4GetWorkspaceSize =
    aclnnFusedInferAttentionScoreV4GetWorkspaceSize;
const _: fns::aclnnScatterPaKvCacheGetWorkspaceSize = aclnnScatterPaKvCacheGetWorkspaceSize;
const _: fns::aclnnScatterNdUpdateGetWorkspaceSize = aclnnScatterNdUpdateGetWorkspaceSize;
