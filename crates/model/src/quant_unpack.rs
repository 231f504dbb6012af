//! AWQ and GPTQ packed tensors, as the published Qwen3-AWQ and Qwen3-GPTQ-Int4/Int8
//! checkpoints store them, unpacked into the backend's device-neutral [`QuantizedHost`] form,
//! and sliced for tensor parallelism. Every format quirk lives here:
//!
//! - AWQ (GEMM): `qweight` int32 `[in, out/8]`, eight 4-bit codes per word along the outputs in
//!   the interleaved order 0 2 4 6 1 3 5 7; `qzeros` int32 `[groups, out/8]` packed the same;
//!   `scales` `[groups, out]`. `w = (q - z) · s`.
//! - GPTQ: `qweight` int32 `[in·bits/32, out]`, codes packed along the inputs in order;
//!   `qzeros` int32 `[groups, out·bits/32]` packed along the outputs; `scales` `[groups, out]`;
//!   `g_idx` int32 `[in]` (each input's group, a permutation under act-order). Version-1
//!   checkpoints store zero points minus one: `w = (q - (z + 1)) · s`.

use qwen3_backend::QuantizedHost;

use crate::error::ModelError;
use crate::quant_config::{QuantConfig, QuantMethod};
use crate::weights::{DType, WeightStore};

/// AWQ's GEMM packing: nibble `p` of a word holds output column `8c + AWQ_ORDER[p]`.
const AWQ_ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Owned data behind a [`QuantizedHost`]: one matrix or a stack of `count`.
#[derive(Clone, Debug, PartialEq)]
pub struct Unpacked {
    pub count: usize,
    pub out: usize,
    pub inp: usize,
    pub bits: u32,
    /// Inputs per group when `g_idx` is None.
    pub group_size: usize,
    pub groups: usize,
    /// `[count, out, in]`
    pub codes: Vec<u8>,
    /// `[count, groups, out]`
    pub scales: Vec<f32>,
    /// `[count, groups, out]`, real zero points.
    pub zeros: Vec<f32>,
    /// `[count, in]`
    pub g_idx: Option<Vec<u32>>,
}

fn invalid(msg: String) -> ModelError {
    ModelError::Invalid(msg)
}

/// The part of a `[out, in]` linear one tensor-parallel rank holds: `(start, len)` of its
/// outputs (column parallel) and of its inputs (row parallel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub out: (usize, usize),
    pub inp: (usize, usize),
}

impl Window {
    pub fn whole(out: usize, inp: usize) -> Self {
        Self {
            out: (0, out),
            inp: (0, inp),
        }
    }
}

/// Little-endian int32 words of rows `rows` and columns `cols` of a packed `[r, c]` tensor,
/// reading only the rows (or columns) asked for.
fn words(
    store: &WeightStore,
    name: &str,
    shape: [usize; 2],
    rows: (usize, usize),
    cols: (usize, usize),
) -> Result<Vec<u32>, ModelError> {
    let (dtype, bytes) = if cols == (0, shape[1]) {
        store.load_raw_slice(name, &shape, 0, rows.0, rows.1)?
    } else {
        store.load_raw_slice(name, &shape, 1, cols.0, cols.1)?
    };
    if dtype != DType::I32 {
        return Err(invalid(format!(
            "packed tensor `{name}` has dtype {dtype}; AWQ/GPTQ checkpoints store it as I32"
        )));
    }
    let all: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if cols == (0, shape[1]) {
        return Ok(all);
    }
    // Read by columns: keep the rows asked for.
    Ok(all[rows.0 * cols.1..(rows.0 + rows.1) * cols.1].to_vec())
}

/// Rows `rows`, columns `cols` of a float `[r, c]` tensor (scales), as f32.
fn floats(
    store: &WeightStore,
    name: &str,
    shape: [usize; 2],
    rows: (usize, usize),
    cols: (usize, usize),
) -> Result<Vec<f32>, ModelError> {
    let v = store.load_f32_slice(name, &shape, 0, rows.0, rows.1)?;
    Ok(v.chunks_exact(shape[1].max(1))
        .flat_map(|r| r[cols.0..cols.0 + cols.1].iter().copied())
        .collect())
}

/// `g_idx` as I32 or I64.
fn group_indices(store: &WeightStore, name: &str, inp: usize) -> Result<Vec<u32>, ModelError> {
    let (dtype, bytes) = store.load_raw(name, &[inp])?;
    let v: Vec<i64> = match dtype {
        DType::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
            .collect(),
        DType::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect(),
        _ => {
            return Err(invalid(format!(
                "`{name}` has dtype {dtype}; expected I32 group indices"
            )))
        }
    };
    v.into_iter()
        .map(|g| u32::try_from(g).map_err(|_| invalid(format!("`{name}` holds group {g}"))))
        .collect()
}

/// Group rows `(start, len)` of the scale table a rank needs for inputs `inp` of a layer with
/// contiguous groups; an error if a group would be split between ranks.
fn group_rows(
    prefix: &str,
    total_in: usize,
    gs: usize,
    groups: usize,
    (start, len): (usize, usize),
) -> Result<(usize, usize), ModelError> {
    if groups == 1 {
        return Ok((0, 1));
    }
    let end = start + len;
    if !start.is_multiple_of(gs) || !(len.is_multiple_of(gs) || end == total_in) {
        return Err(invalid(format!(
            "tensor parallelism would split the quantization groups of `{prefix}`: a rank \
             takes inputs {start}..{end} of {total_in}, but group_size is {gs}; use a tensor \
             parallel size that leaves each rank whole groups"
        )));
    }
    Ok((start / gs, end.div_ceil(gs) - start / gs))
}

fn check_aligned(
    prefix: &str,
    what: &str,
    (start, len): (usize, usize),
    unit: usize,
) -> Result<(), ModelError> {
    if start.is_multiple_of(unit) && len.is_multiple_of(unit) {
        Ok(())
    } else {
        Err(invalid(format!(
            "tensor parallelism would split the packed {what} of `{prefix}`: a rank takes \
             {start}..{} but they are packed {unit} to an int32",
            start + len
        )))
    }
}

/// Reads and unpacks this rank's `window` of the quantized linear `prefix` (`prefix.qweight`,
/// ...) of logical shape `[out, inp]`.
pub fn load_packed(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    q: &QuantConfig,
    window: Window,
) -> Result<Unpacked, ModelError> {
    match q.method {
        QuantMethod::Awq => load_awq(store, prefix, out, inp, q, window),
        QuantMethod::Gptq => load_gptq(store, prefix, out, inp, q, window),
    }
}

fn load_awq(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    q: &QuantConfig,
    w: Window,
) -> Result<Unpacked, ModelError> {
    let gs = q.group_size.unwrap_or(inp);
    if !out.is_multiple_of(8) || !inp.is_multiple_of(gs) {
        return Err(invalid(format!(
            "AWQ layer `{prefix}` of shape [{out}, {inp}]: outputs must be a multiple of 8 and \
             inputs a multiple of group_size {gs}"
        )));
    }
    let groups = inp / gs;
    check_aligned(prefix, "outputs", w.out, 8)?;
    let g = group_rows(prefix, inp, gs, groups, w.inp)?;
    let ((o0, ol), (i0, il)) = (w.out, w.inp);
    let words8 = (o0 / 8, ol / 8);
    let qweight = words(
        store,
        &format!("{prefix}.qweight"),
        [inp, out / 8],
        (i0, il),
        words8,
    )?;
    let mut codes = vec![0u8; ol * il];
    for (idx, word) in qweight.iter().enumerate() {
        let (i, c) = (idx / words8.1, idx % words8.1);
        for (p, &col) in AWQ_ORDER.iter().enumerate() {
            codes[(c * 8 + col) * il + i] = ((word >> (4 * p)) & 0xf) as u8;
        }
    }
    let zname = format!("{prefix}.qzeros");
    let zeros = if store.contains(&zname) {
        let qz = words(store, &zname, [groups, out / 8], g, words8)?;
        let mut z = vec![0.0f32; g.1 * ol];
        for (idx, word) in qz.iter().enumerate() {
            let (gi, c) = (idx / words8.1, idx % words8.1);
            for (p, &col) in AWQ_ORDER.iter().enumerate() {
                z[gi * ol + c * 8 + col] = ((word >> (4 * p)) & 0xf) as f32;
            }
        }
        z
    } else {
        vec![8.0; g.1 * ol]
    };
    let scales = floats(store, &format!("{prefix}.scales"), [groups, out], g, w.out)?;
    Ok(Unpacked {
        count: 1,
        out: ol,
        inp: il,
        bits: 4,
        group_size: if groups == 1 { il } else { gs },
        groups: g.1,
        codes,
        scales,
        zeros,
        g_idx: None,
    })
}

fn load_gptq(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    q: &QuantConfig,
    w: Window,
) -> Result<Unpacked, ModelError> {
    let bits = q.bits;
    let pack = (32 / bits) as usize;
    let mask = (1u32 << bits) - 1;
    let gs = q.group_size.unwrap_or(inp);
    if !out.is_multiple_of(pack) || !inp.is_multiple_of(pack) {
        return Err(invalid(format!(
            "GPTQ layer `{prefix}` of shape [{out}, {inp}]: both must be multiples of {pack} \
             for {bits}-bit packing"
        )));
    }
    let groups = inp.div_ceil(gs);
    let gname = format!("{prefix}.g_idx");
    let g_idx = if store.contains(&gname) {
        let g = group_indices(store, &gname, inp)?;
        if let Some(bad) = g.iter().find(|&&x| x as usize >= groups) {
            return Err(invalid(format!(
                "`{gname}` names group {bad}, but the layer has {groups} groups"
            )));
        }
        // Without act-order g_idx is i / group_size: drop it so groups stay contiguous.
        let trivial = g.iter().enumerate().all(|(i, &x)| x as usize == i / gs);
        (!trivial).then_some(g)
    } else if q.act_order {
        return Err(invalid(format!(
            "`{prefix}` is act-order (desc_act) but the checkpoint has no `{gname}`"
        )));
    } else {
        None
    };
    check_aligned(prefix, "outputs", w.out, pack)?;
    check_aligned(prefix, "inputs", w.inp, pack)?;
    // Act-order scatters every group over the inputs: each rank keeps the whole scale table
    // and its inputs' group indices, as vLLM does.
    let g = match g_idx {
        Some(_) => (0, groups),
        None => group_rows(prefix, inp, gs, groups, w.inp)?,
    };
    let ((o0, ol), (i0, il)) = (w.out, w.inp);
    let rows = (i0 / pack, il / pack);
    let qweight = words(
        store,
        &format!("{prefix}.qweight"),
        [inp / pack, out],
        rows,
        w.out,
    )?;
    let mut codes = vec![0u8; ol * il];
    for (idx, word) in qweight.iter().enumerate() {
        let (r, o) = (idx / ol, idx % ol);
        for p in 0..pack {
            codes[o * il + r * pack + p] = ((word >> (bits as usize * p)) & mask) as u8;
        }
    }
    let off = if q.zero_point_off_by_one { 1.0 } else { 0.0 };
    let zname = format!("{prefix}.qzeros");
    let zwords = (o0 / pack, ol / pack);
    let zeros = if store.contains(&zname) {
        let qz = words(store, &zname, [groups, out / pack], g, zwords)?;
        let mut z = vec![0.0f32; g.1 * ol];
        for (idx, word) in qz.iter().enumerate() {
            let (gi, c) = (idx / zwords.1, idx % zwords.1);
            for p in 0..pack {
                z[gi * ol + c * pack + p] = ((word >> (bits as usize * p)) & mask) as f32 + off;
            }
        }
        z
    } else {
        vec![(1u32 << (bits - 1)) as f32; g.1 * ol]
    };
    let scales = floats(store, &format!("{prefix}.scales"), [groups, out], g, w.out)?;
    Ok(Unpacked {
        count: 1,
        out: ol,
        inp: il,
        bits,
        group_size: if groups == 1 { il } else { gs },
        groups: g.1,
        codes,
        scales,
        zeros,
        g_idx: g_idx.map(|v| v[i0..i0 + il].to_vec()),
    })
}

impl Unpacked {
    pub fn host(&self) -> QuantizedHost<'_> {
        QuantizedHost {
            count: self.count,
            out_features: self.out,
            in_features: self.inp,
            bits: self.bits,
            group_size: self.group_size,
            groups: self.groups,
            codes: &self.codes,
            scales: &self.scales,
            zeros: &self.zeros,
            g_idx: self.g_idx.as_deref(),
        }
    }

    fn clone_meta(&self) -> Unpacked {
        Unpacked {
            codes: Vec::new(),
            scales: Vec::new(),
            zeros: Vec::new(),
            g_idx: None,
            ..*self
        }
    }

    /// Stacks equally shaped matrices (the experts of a layer) into one.
    pub fn stack(parts: Vec<Unpacked>) -> Result<Unpacked, ModelError> {
        let Some(first) = parts.first() else {
            return Err(invalid("no experts to stack".into()));
        };
        let (out, inp, bits, gs, groups) = (
            first.out,
            first.inp,
            first.bits,
            first.group_size,
            first.groups,
        );
        if parts
            .iter()
            .any(|p| (p.out, p.inp, p.bits, p.group_size, p.groups) != (out, inp, bits, gs, groups))
        {
            return Err(invalid(
                "experts are quantized with different shapes".into(),
            ));
        }
        let any_gidx = parts.iter().any(|p| p.g_idx.is_some());
        let mut all = Unpacked {
            count: parts.len(),
            codes: Vec::with_capacity(parts.len() * out * inp),
            scales: Vec::with_capacity(parts.len() * groups * out),
            zeros: Vec::with_capacity(parts.len() * groups * out),
            g_idx: any_gidx.then(|| Vec::with_capacity(parts.len() * inp)),
            ..first.clone_meta()
        };
        for p in parts {
            all.codes.extend(p.codes);
            all.scales.extend(p.scales);
            all.zeros.extend(p.zeros);
            if let Some(g) = &mut all.g_idx {
                match p.g_idx {
                    Some(pg) => g.extend(pg),
                    None => g.extend((0..inp).map(|i| (i / gs) as u32)),
                }
            }
        }
        Ok(all)
    }
}
