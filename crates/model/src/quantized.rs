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

use crate::quant::{QuantConfig, QuantMethod};
use crate::qwen3::ModelError;
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

/// Little-endian int32 words of a packed tensor, shape-checked.
fn words(store: &WeightStore, name: &str, shape: &[usize]) -> Result<Vec<u32>, ModelError> {
    let (dtype, bytes) = store.load_raw(name, shape)?;
    if dtype != DType::I32 {
        return Err(invalid(format!(
            "packed tensor `{name}` has dtype {dtype}; AWQ/GPTQ checkpoints store it as I32"
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
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

/// Reads and unpacks the quantized linear `prefix` (`prefix.qweight`, ...) of logical shape
/// `[out, inp]`.
pub fn load_packed(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    q: &QuantConfig,
) -> Result<Unpacked, ModelError> {
    match q.method {
        QuantMethod::Awq => load_awq(store, prefix, out, inp, q),
        QuantMethod::Gptq => load_gptq(store, prefix, out, inp, q),
    }
}

fn load_awq(
    store: &WeightStore,
    prefix: &str,
    out: usize,
    inp: usize,
    q: &QuantConfig,
) -> Result<Unpacked, ModelError> {
    let gs = q.group_size.unwrap_or(inp);
    if !out.is_multiple_of(8) || !inp.is_multiple_of(gs) {
        return Err(invalid(format!(
            "AWQ layer `{prefix}` of shape [{out}, {inp}]: outputs must be a multiple of 8 and \
             inputs a multiple of group_size {gs}"
        )));
    }
    let groups = inp / gs;
    let qweight = words(store, &format!("{prefix}.qweight"), &[inp, out / 8])?;
    let mut codes = vec![0u8; out * inp];
    for (idx, w) in qweight.iter().enumerate() {
        let (i, c) = (idx / (out / 8), idx % (out / 8));
        for (p, &col) in AWQ_ORDER.iter().enumerate() {
            codes[(c * 8 + col) * inp + i] = ((w >> (4 * p)) & 0xf) as u8;
        }
    }
    let zname = format!("{prefix}.qzeros");
    let zeros = if store.contains(&zname) {
        let qz = words(store, &zname, &[groups, out / 8])?;
        let mut z = vec![0.0f32; groups * out];
        for (idx, w) in qz.iter().enumerate() {
            let (g, c) = (idx / (out / 8), idx % (out / 8));
            for (p, &col) in AWQ_ORDER.iter().enumerate() {
                z[g * out + c * 8 + col] = ((w >> (4 * p)) & 0xf) as f32;
            }
        }
        z
    } else {
        vec![8.0; groups * out]
    };
    let scales = store.load_f32(&format!("{prefix}.scales"), &[groups, out])?;
    Ok(Unpacked {
        count: 1,
        out,
        inp,
        bits: 4,
        group_size: gs,
        groups,
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
    let qweight = words(store, &format!("{prefix}.qweight"), &[inp / pack, out])?;
    let mut codes = vec![0u8; out * inp];
    for (idx, w) in qweight.iter().enumerate() {
        let (r, o) = (idx / out, idx % out);
        for p in 0..pack {
            codes[o * inp + r * pack + p] = ((w >> (bits as usize * p)) & mask) as u8;
        }
    }
    let off = if q.zero_point_off_by_one { 1.0 } else { 0.0 };
    let zname = format!("{prefix}.qzeros");
    let zeros = if store.contains(&zname) {
        let qz = words(store, &zname, &[groups, out / pack])?;
        let mut z = vec![0.0f32; groups * out];
        for (idx, w) in qz.iter().enumerate() {
            let (g, c) = (idx / (out / pack), idx % (out / pack));
            for p in 0..pack {
                z[g * out + c * pack + p] = ((w >> (bits as usize * p)) & mask) as f32 + off;
            }
        }
        z
    } else {
        vec![(1u32 << (bits - 1)) as f32; groups * out]
    };
    let scales = store.load_f32(&format!("{prefix}.scales"), &[groups, out])?;
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
    Ok(Unpacked {
        count: 1,
        out,
        inp,
        bits,
        group_size: gs,
        groups,
        codes,
        scales,
        zeros,
        g_idx,
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

    /// Outputs `[start, start + len)` (column parallel) of a single matrix.
    pub fn slice_out(&self, start: usize, len: usize) -> Unpacked {
        let (out, inp) = (self.out, self.inp);
        let codes = self.codes[start * inp..(start + len) * inp].to_vec();
        let cols = |v: &[f32]| -> Vec<f32> {
            v.chunks_exact(out)
                .flat_map(|r| r[start..start + len].iter().copied())
                .collect()
        };
        Unpacked {
            out: len,
            codes,
            scales: cols(&self.scales),
            zeros: cols(&self.zeros),
            g_idx: self.g_idx.clone(),
            ..self.clone_meta()
        }
    }

    /// Inputs `[start, start + len)` (row parallel) of a single matrix `name`. Contiguous
    /// groups must stay whole on each rank; act-order inputs keep their group indices and
    /// every rank keeps the whole scale table, as vLLM does.
    pub fn slice_in(&self, name: &str, start: usize, len: usize) -> Result<Unpacked, ModelError> {
        let inp = self.inp;
        let codes: Vec<u8> = self
            .codes
            .chunks_exact(inp)
            .flat_map(|r| r[start..start + len].iter().copied())
            .collect();
        if let Some(g) = &self.g_idx {
            return Ok(Unpacked {
                inp: len,
                codes,
                scales: self.scales.clone(),
                zeros: self.zeros.clone(),
                g_idx: Some(g[start..start + len].to_vec()),
                ..self.clone_meta()
            });
        }
        if self.groups == 1 {
            return Ok(Unpacked {
                inp: len,
                group_size: len,
                codes,
                scales: self.scales.clone(),
                zeros: self.zeros.clone(),
                ..self.clone_meta()
            });
        }
        let gs = self.group_size;
        if !start.is_multiple_of(gs) || !(len.is_multiple_of(gs) || start + len == inp) {
            return Err(invalid(format!(
                "tensor parallelism would split the quantization groups of `{name}`: a rank \
                 takes inputs {start}..{} of {inp}, but group_size is {gs}; use a tensor \
                 parallel size that leaves each rank whole groups",
                start + len
            )));
        }
        let (g0, g1) = (start / gs, (start + len).div_ceil(gs));
        let rows = |v: &[f32]| v[g0 * self.out..g1 * self.out].to_vec();
        Ok(Unpacked {
            inp: len,
            groups: g1 - g0,
            codes,
            scales: rows(&self.scales),
            zeros: rows(&self.zeros),
            ..self.clone_meta()
        })
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
