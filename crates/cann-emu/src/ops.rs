//! Dense-model aclnn operators, from the CANN operator documentation: matmul, norms,
//! activations, embedding / index ops, element-wise ops, casts, RoPE, reductions.

use crate::nnop::{int_array, invalid, nullptr, opt_tensor, phase1, scalar, tensor, TensorDesc};
use crate::state::Res;
use ascend_sys::fns;
use ascend_sys::types::aclDataType as D;
use ascend_sys::types::*;

type Work = Box<dyn Fn() -> Res<()> + Send + Sync>;

pub fn is_float16ish(d: D) -> bool {
    matches!(d, D::ACL_FLOAT | D::ACL_FLOAT16 | D::ACL_BF16)
}

pub fn need_float(t: &TensorDesc, what: &str) -> Res<()> {
    if !is_float16ish(t.dtype) {
        return Err(invalid(format!(
            "{what}: dtype {:?} not supported (FLOAT, FLOAT16, BFLOAT16)",
            t.dtype
        )));
    }
    Ok(())
}

pub fn need_int_index(t: &TensorDesc, what: &str) -> Res<()> {
    if !matches!(t.dtype, D::ACL_INT32 | D::ACL_INT64) {
        return Err(invalid(format!(
            "{what}: dtype {:?} not supported (INT32, INT64)",
            t.dtype
        )));
    }
    Ok(())
}

pub fn same_dtype(a: &TensorDesc, b: &TensorDesc, what: &str) -> Res<()> {
    if a.dtype != b.dtype {
        return Err(invalid(format!(
            "{what}: dtypes differ ({:?} vs {:?})",
            a.dtype, b.dtype
        )));
    }
    Ok(())
}

pub fn need_shape(t: &TensorDesc, dims: &[i64], what: &str) -> Res<()> {
    if t.dims != dims {
        return Err(invalid(format!(
            "{what}: shape {:?}, expected {:?}",
            t.dims, dims
        )));
    }
    Ok(())
}

/// Normalises a possibly negative axis.
pub fn axis(dim: i64, rank: usize, what: &str) -> Res<usize> {
    let r = rank as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r.max(1) {
        return Err(invalid(format!(
            "{what}: dim {dim} out of range for rank {rank}"
        )));
    }
    Ok(d as usize)
}

/// numpy broadcast of two shapes.
pub fn broadcast_shape(a: &[i64], b: &[i64], what: &str) -> Res<Vec<i64>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for i in 0..r {
        let x = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let y = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        out[i] = if x == y || y == 1 {
            x
        } else if x == 1 {
            y
        } else {
            return Err(invalid(format!(
                "{what}: shapes {a:?} and {b:?} do not broadcast"
            )));
        };
    }
    Ok(out)
}

/// For every element of `out` (row-major), the row-major index into `inp` broadcast to it.
pub fn broadcast_map(out: &[i64], inp: &[i64]) -> Vec<usize> {
    let n: usize = out.iter().map(|&d| d as usize).product();
    let r = out.len();
    let off = r - inp.len();
    let mut istr = vec![0usize; r];
    let mut acc = 1usize;
    for i in (0..inp.len()).rev() {
        istr[i + off] = if inp[i] == 1 { 0 } else { acc };
        acc *= inp[i] as usize;
    }
    let mut v = Vec::with_capacity(n);
    let mut idx = vec![0i64; r];
    let mut cur = 0usize;
    for _ in 0..n {
        v.push(cur);
        for ax in (0..r).rev() {
            idx[ax] += 1;
            cur += istr[ax];
            if idx[ax] < out[ax] {
                break;
            }
            cur -= istr[ax] * idx[ax] as usize;
            idx[ax] = 0;
        }
    }
    v
}

// ----------------------------------------------------------------------------- Matmul

/// Batched matmul with broadcast batch dimensions; f32 accumulation.
fn matmul_f32(a: &[f32], ad: &[i64], b: &[f32], bd: &[i64], od: &[i64]) -> Vec<f32> {
    let (m, k) = (ad[ad.len() - 2] as usize, ad[ad.len() - 1] as usize);
    let n = bd[bd.len() - 1] as usize;
    let ob = &od[..od.len() - 2];
    let amap = broadcast_map(ob, &ad[..ad.len() - 2]);
    let bmap = broadcast_map(ob, &bd[..bd.len() - 2]);
    let batches = amap.len().max(1);
    let mut out = vec![0f32; batches * m * n];
    for bi in 0..batches {
        let (ai, bj) = (
            amap.get(bi).copied().unwrap_or(0),
            bmap.get(bi).copied().unwrap_or(0),
        );
        let a = &a[ai * m * k..(ai + 1) * m * k];
        let b = &b[bj * k * n..(bj + 1) * k * n];
        let o = &mut out[bi * m * n..(bi + 1) * m * n];
        for i in 0..m {
            let orow = &mut o[i * n..(i + 1) * n];
            for p in 0..k {
                let av = a[i * k + p];
                if av == 0.0 {
                    continue;
                }
                let brow = &b[p * n..(p + 1) * n];
                for (ov, bv) in orow.iter_mut().zip(brow) {
                    *ov += av * bv;
                }
            }
        }
    }
    out
}

/// For a 2-D `[K, N]` view with strides `[1, K]`, the contiguous `[N, K]` view of the
/// same memory.
fn transposed_2d(b: &TensorDesc) -> Option<TensorDesc> {
    if b.rank() != 2 || b.strides != [1, b.dims[0]] || b.dims[0] <= 1 || b.dims[1] <= 1 {
        return None;
    }
    let mut t = b.clone();
    t.dims = vec![b.dims[1], b.dims[0]];
    t.strides = vec![b.dims[0], 1];
    Some(t)
}

#[no_mangle]
pub unsafe extern "C" fn aclnnMatmulGetWorkspaceSize(
    self_: *const aclTensor,
    mat2: *const aclTensor,
    out: *mut aclTensor,
    cube: i8,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnMatmul", ws, ex, || {
        let a = tensor(self_, "self")?;
        let b = tensor(mat2, "mat2")?;
        let o = tensor(out, "out")?;
        need_float(&a, "self")?;
        same_dtype(&a, &b, "self/mat2")?;
        if !(0..=3).contains(&cube) {
            return Err(invalid(format!("cubeMathType {cube} not in 0..=3")));
        }
        if a.rank() < 2 || b.rank() < 2 || a.rank() > 6 || b.rank() > 6 {
            return Err(invalid(format!(
                "self {:?} and mat2 {:?} must be 2-6 dimensional",
                a.dims, b.dims
            )));
        }
        if a.dim(-1) != b.dim(-2) {
            return Err(invalid(format!(
                "inner dimensions differ: self {:?}, mat2 {:?}",
                a.dims, b.dims
            )));
        }
        let mut od = broadcast_shape(&a.dims[..a.rank() - 2], &b.dims[..b.rank() - 2], "batch")?;
        od.extend([a.dim(-2), b.dim(-1)]);
        need_shape(&o, &od, "out")?;
        if !is_float16ish(o.dtype) {
            return Err(invalid(format!("out dtype {:?}", o.dtype)));
        }
        // Workspace (workspace.rs): the system part plus, per core, one FLOAT accumulator
        // tile of the output's last two dims (split-K partial sums), capped at 8 MiB.
        let tile = (a.dim(-2).max(1) * b.dim(-1).max(1) * 4) as u64;
        crate::workspace::user((tile / crate::workspace::CORES + 512).min(8 << 20));
        Ok(Box::new(move || {
            let av = a.read_f32("self")?;
            if let Some(bt) = transposed_2d(&b) {
                // mat2 is the transpose of a contiguous [N, K] matrix (a linear layer's
                // weight): read it in storage order and take row dot products.
                let (m, k, n) = (a.dim(-2) as usize, a.dim(-1) as usize, b.dim(-1) as usize);
                let wv = bt.read_f32("mat2")?;
                let rows = av.len() / (m * k).max(1) * m;
                let mut out = vec![0f32; rows * n];
                for i in 0..rows {
                    let ar = &av[i * k..(i + 1) * k];
                    for (j, o) in out[i * n..(i + 1) * n].iter_mut().enumerate() {
                        *o = ar
                            .iter()
                            .zip(&wv[j * k..(j + 1) * k])
                            .map(|(x, y)| x * y)
                            .sum();
                    }
                }
                return o.write_f32(&out, "out");
            }
            let bv = b.read_f32("mat2")?;
            o.write_f32(&matmul_f32(&av, &a.dims, &bv, &b.dims, &od), "out")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Norms

fn rms_rows(x: &[f32], gamma: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let d = gamma.len().max(1);
    let rows = x.len() / d;
    let mut y = vec![0f32; x.len()];
    let mut rstd = vec![0f32; rows];
    for r in 0..rows {
        let row = &x[r * d..(r + 1) * d];
        let ms = row.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let rs = 1.0 / (ms + eps as f32).sqrt();
        rstd[r] = rs;
        for i in 0..d {
            y[r * d + i] = row[i] * rs * gamma[i];
        }
    }
    (y, rstd)
}

fn check_norm(x: &TensorDesc, gamma: &TensorDesc, rstd: Option<&TensorDesc>) -> Res<()> {
    need_float(x, "x")?;
    need_float(gamma, "gamma")?;
    let g = gamma.rank();
    if g == 0 || g > x.rank() || x.dims[x.rank() - g..] != gamma.dims[..] {
        return Err(invalid(format!(
            "gamma shape {:?} must equal the trailing dimensions of x {:?}",
            gamma.dims, x.dims
        )));
    }
    if let Some(r) = rstd {
        let mut rd = x.dims.clone();
        let n = rd.len();
        for v in &mut rd[n - g..] {
            *v = 1;
        }
        need_shape(r, &rd, "rstdOut")?;
        if r.dtype != D::ACL_FLOAT {
            return Err(invalid("rstdOut must be FLOAT"));
        }
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn aclnnRmsNormGetWorkspaceSize(
    x: *const aclTensor,
    gamma: *const aclTensor,
    eps: f64,
    y: *const aclTensor,
    rstd: *const aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnRmsNorm", ws, ex, || {
        let x = tensor(x, "x")?;
        let g = tensor(gamma, "gamma")?;
        let y = tensor(y, "yOut")?;
        let r = opt_tensor(rstd, "rstdOut")?;
        check_norm(&x, &g, r.as_ref())?;
        need_shape(&y, &x.dims, "yOut")?;
        same_dtype(&x, &y, "x/yOut")?;
        Ok(Box::new(move || {
            let (yv, rv) = rms_rows(&x.read_f32("x")?, &g.read_f32("gamma")?, eps);
            y.write_f32(&yv, "yOut")?;
            if let Some(r) = &r {
                r.write_f32(&rv, "rstdOut")?;
            }
            Ok(())
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnAddRmsNormGetWorkspaceSize(
    x1: *const aclTensor,
    x2: *const aclTensor,
    gamma: *const aclTensor,
    eps: f64,
    y: *mut aclTensor,
    rstd: *mut aclTensor,
    xout: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnAddRmsNorm", ws, ex, || {
        let x1 = tensor(x1, "x1")?;
        let x2 = tensor(x2, "x2")?;
        let g = tensor(gamma, "gamma")?;
        let y = tensor(y, "yOut")?;
        let r = opt_tensor(rstd, "rstdOut")?;
        let xo = tensor(xout, "xOut")?;
        check_norm(&x1, &g, r.as_ref())?;
        need_shape(&x2, &x1.dims, "x2")?;
        need_shape(&y, &x1.dims, "yOut")?;
        need_shape(&xo, &x1.dims, "xOut")?;
        same_dtype(&x1, &x2, "x1/x2")?;
        same_dtype(&x1, &y, "x1/yOut")?;
        same_dtype(&x1, &xo, "x1/xOut")?;
        Ok(Box::new(move || {
            let a = x1.read_f32("x1")?;
            let b = x2.read_f32("x2")?;
            // The sum stays in f32 for the norm; xOut is its rounding to the dtype.
            let s: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p + q).collect();
            let (yv, rv) = rms_rows(&s, &g.read_f32("gamma")?, eps);
            xo.write_f32(&s, "xOut")?;
            y.write_f32(&yv, "yOut")?;
            if let Some(r) = &r {
                r.write_f32(&rv, "rstdOut")?;
            }
            Ok(())
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- SwiGlu

#[no_mangle]
pub unsafe extern "C" fn aclnnSwiGluGetWorkspaceSize(
    x: *const aclTensor,
    dim: i64,
    out: *const aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnSwiGlu", ws, ex, || {
        let x = tensor(x, "x")?;
        let o = tensor(out, "out")?;
        need_float(&x, "x")?;
        same_dtype(&x, &o, "x/out")?;
        let ax = axis(dim, x.rank(), "dim")?;
        if x.dims[ax] % 2 != 0 {
            return Err(invalid(format!("x dim {ax} ({}) must be even", x.dims[ax])));
        }
        let mut od = x.dims.clone();
        od[ax] /= 2;
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let v = x.read_f32("x")?;
            let outer: usize = x.dims[..ax].iter().map(|&d| d as usize).product();
            let inner: usize = x.dims[ax + 1..].iter().map(|&d| d as usize).product();
            let h = (x.dims[ax] / 2) as usize;
            let mut r = Vec::with_capacity(v.len() / 2);
            for o in 0..outer {
                let base = o * 2 * h * inner;
                for i in 0..h * inner {
                    let a = v[base + i];
                    let b = v[base + h * inner + i];
                    r.push(a / (1.0 + (-a).exp()) * b);
                }
            }
            o.write_f32(&r, "out")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Indexing

fn gather_rows(w: &TensorDesc, idx: &[i64], what: &str) -> Res<Vec<f32>> {
    let v = w.dims[0];
    let mut out = Vec::new();
    for &i in idx {
        if i < 0 || i >= v {
            return Err(crate::state::Fail::new(
                ACLNN_ERR_RUNTIME_ERROR,
                format!("{what}: index {i} out of range [0, {v})"),
            ));
        }
        out.extend(w.index0(i).read_f32(what)?);
    }
    Ok(out)
}

#[no_mangle]
pub unsafe extern "C" fn aclnnEmbeddingGetWorkspaceSize(
    weight: *const aclTensor,
    indices: *const aclTensor,
    out: *const aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnEmbedding", ws, ex, || {
        let w = tensor(weight, "weight")?;
        let i = tensor(indices, "indices")?;
        let o = tensor(out, "out")?;
        if w.rank() != 2 {
            return Err(invalid(format!("weight must be 2-D, got {:?}", w.dims)));
        }
        need_int_index(&i, "indices")?;
        same_dtype(&w, &o, "weight/out")?;
        let mut od = i.dims.clone();
        od.push(w.dims[1]);
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let idx = i.read_i64("indices")?;
            o.write_f32(&gather_rows(&w, &idx, "weight")?, "out")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnIndexSelectGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    index: *const aclTensor,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnIndexSelect", ws, ex, || {
        let s = tensor(self_, "self")?;
        let i = tensor(index, "index")?;
        let o = tensor(out, "out")?;
        need_int_index(&i, "index")?;
        if i.rank() > 1 {
            return Err(invalid("index must be 0-D or 1-D"));
        }
        same_dtype(&s, &o, "self/out")?;
        let ax = axis(dim, s.rank(), "dim")?;
        let mut od = s.dims.clone();
        od[ax] = i.numel() as i64;
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let idx = i.read_i64("index")?;
            // Reads only the selected slices (a gather from a whole KV cache must cost the
            // rows it touches, not the cache), after checking all of `self` is still live.
            s.check_live_at_run("self")?;
            let outer: usize = s.dims[..ax].iter().map(|&d| d as usize).product();
            let inner: usize = s.dims[ax + 1..].iter().map(|&d| d as usize).product();
            let n = s.dims[ax];
            let mut r = vec![0f64; o.numel()];
            for (k, &j) in idx.iter().enumerate() {
                if j < 0 || j >= n {
                    return Err(crate::state::Fail::new(
                        ACLNN_ERR_RUNTIME_ERROR,
                        format!("index {j} out of range [0, {n})"),
                    ));
                }
                // `[outer, 1, inner]` values of slice `j`, placed at `[ou, k, ..]` of out.
                let v = s.narrow1(ax, j).read_f64("self")?;
                for ou in 0..outer {
                    let dst = (ou * idx.len() + k) * inner;
                    r[dst..dst + inner].copy_from_slice(&v[ou * inner..(ou + 1) * inner]);
                }
            }
            o.write_f64(&r, "out")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnGatherGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    index: *const aclTensor,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnGather", ws, ex, || {
        let s = tensor(self_, "self")?;
        let i = tensor(index, "index")?;
        let o = tensor(out, "out")?;
        need_int_index(&i, "index")?;
        same_dtype(&s, &o, "self/out")?;
        if i.rank() != s.rank() {
            return Err(invalid("index must have the rank of self"));
        }
        let ax = axis(dim, s.rank(), "dim")?;
        for d in 0..s.rank() {
            if d != ax && i.dims[d] > s.dims[d] {
                return Err(invalid(format!(
                    "index {:?} larger than self {:?} outside dim",
                    i.dims, s.dims
                )));
            }
        }
        need_shape(&o, &i.dims, "out")?;
        Ok(Box::new(move || {
            let idx = i.read_i64("index")?;
            let v = s.read_f64("self")?;
            let sstr = crate::nnop::contiguous_strides(&s.dims);
            let istr = crate::nnop::contiguous_strides(&i.dims);
            let mut r = Vec::with_capacity(idx.len());
            for (lin, &j) in idx.iter().enumerate() {
                if j < 0 || j >= s.dims[ax] {
                    return Err(crate::state::Fail::new(
                        ACLNN_ERR_RUNTIME_ERROR,
                        format!("index {j} out of range [0, {})", s.dims[ax]),
                    ));
                }
                let mut rem = lin as i64;
                let mut src = 0i64;
                for d in 0..i.rank() {
                    let c = rem / istr[d];
                    rem %= istr[d];
                    src += if d == ax { j } else { c } * sstr[d];
                }
                r.push(v[src as usize]);
            }
            o.write_f64(&r, "out")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Element-wise

fn binary(a: &TensorDesc, b: &TensorDesc, o: &TensorDesc, f: impl Fn(f64, f64) -> f64) -> Res<()> {
    let av = a.read_f64("self")?;
    let bv = b.read_f64("other")?;
    let am = broadcast_map(&o.dims, &a.dims);
    let bm = broadcast_map(&o.dims, &b.dims);
    let r: Vec<f64> = am.iter().zip(&bm).map(|(&i, &j)| f(av[i], bv[j])).collect();
    o.write_f64(&r, "out")
}

fn check_binary(a: &TensorDesc, b: &TensorDesc, o: &TensorDesc) -> Res<()> {
    let od = broadcast_shape(&a.dims, &b.dims, "self/other")?;
    need_shape(o, &od, "out")?;
    for t in [a, b, o] {
        if crate::dtype::size_of(t.dtype).is_none() {
            return Err(invalid(format!("dtype {:?} not supported", t.dtype)));
        }
    }
    Ok(())
}

/// Rounds `v` as the type `d` would store it, so that `alpha * other` is computed in the
/// promoted type rather than exactly.
fn alpha_of(p: *const aclScalar) -> Res<f64> {
    Ok(scalar(p, "alpha")?.f)
}

#[no_mangle]
pub unsafe extern "C" fn aclnnAddGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    alpha: *const aclScalar,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnAdd", ws, ex, || {
        let a = tensor(self_, "self")?;
        let b = tensor(other, "other")?;
        let o = tensor(out, "out")?;
        let al = alpha_of(alpha)?;
        check_binary(&a, &b, &o)?;
        Ok(Box::new(move || binary(&a, &b, &o, |x, y| x + al * y)) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnInplaceAddGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    alpha: *const aclScalar,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnInplaceAdd", ws, ex, || {
        let a = tensor(self_, "selfRef")?;
        let b = tensor(other, "other")?;
        let al = alpha_of(alpha)?;
        check_binary(&a, &b, &a)?;
        Ok(Box::new(move || binary(&a, &b, &a, |x, y| x + al * y)) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnMulGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnMul", ws, ex, || {
        let a = tensor(self_, "self")?;
        let b = tensor(other, "other")?;
        let o = tensor(out, "out")?;
        check_binary(&a, &b, &o)?;
        Ok(Box::new(move || binary(&a, &b, &o, |x, y| x * y)) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnCastGetWorkspaceSize(
    self_: *const aclTensor,
    dtype: aclDataType,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnCast", ws, ex, || {
        let s = tensor(self_, "self")?;
        let o = tensor(out, "out")?;
        need_shape(&o, &s.dims, "out")?;
        if o.dtype != dtype {
            return Err(invalid(format!(
                "out dtype {:?} differs from the requested {dtype:?}",
                o.dtype
            )));
        }
        if crate::dtype::size_of(s.dtype).is_none() || crate::dtype::size_of(dtype).is_none() {
            return Err(invalid(format!(
                "cast {:?} -> {dtype:?} not supported",
                s.dtype
            )));
        }
        Ok(Box::new(move || {
            if crate::dtype::is_int(s.dtype) && crate::dtype::is_int(o.dtype) {
                o.write_i64(&s.read_i64("self")?, "out")
            } else {
                o.write_f64(&s.read_f64("self")?, "out")
            }
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnInplaceCopyGetWorkspaceSize(
    self_: *mut aclTensor,
    src: *const aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnInplaceCopy", ws, ex, || {
        let d = tensor(self_, "selfRef")?;
        let s = tensor(src, "src")?;
        let bd = broadcast_shape(&d.dims, &s.dims, "selfRef/src")?;
        if bd != d.dims {
            return Err(invalid(format!(
                "src {:?} does not broadcast to selfRef {:?}",
                s.dims, d.dims
            )));
        }
        Ok(Box::new(move || {
            let m = broadcast_map(&d.dims, &s.dims);
            if crate::dtype::is_int(s.dtype) && crate::dtype::is_int(d.dtype) {
                let v = s.read_i64("src")?;
                d.write_i64(&m.iter().map(|&i| v[i]).collect::<Vec<_>>(), "selfRef")
            } else {
                let v = s.read_f64("src")?;
                d.write_f64(&m.iter().map(|&i| v[i]).collect::<Vec<_>>(), "selfRef")
            }
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- RoPE

/// `x * cos + rotate(x) * sin` with cos/sin broadcast to x; mode 0 rotates halves
/// (`[-x2, x1]`), mode 1 adjacent pairs (`[-x1, x0]`).
fn rope(x: &[f32], xd: &[i64], cos: &[f32], sin: &[f32], cd: &[i64], mode: i64) -> Vec<f32> {
    let d = xd[xd.len() - 1] as usize;
    let cm = broadcast_map(xd, cd);
    let mut out = vec![0f32; x.len()];
    let h = d / 2;
    for row in 0..x.len() / d.max(1) {
        let b = row * d;
        for i in 0..d {
            let rot = if mode == 0 {
                if i < h {
                    -x[b + i + h]
                } else {
                    x[b + i - h]
                }
            } else if i % 2 == 0 {
                -x[b + i + 1]
            } else {
                x[b + i - 1]
            };
            let c = cm[b + i];
            out[b + i] = x[b + i] * cos[c] + rot * sin[c];
        }
    }
    out
}

fn check_rope(x: &TensorDesc, cos: &TensorDesc, sin: &TensorDesc, what: &str) -> Res<()> {
    need_float(x, what)?;
    same_dtype(x, cos, "x/cos")?;
    same_dtype(x, sin, "x/sin")?;
    need_shape(sin, &cos.dims, "sin")?;
    if x.dim(-1) % 2 != 0 {
        return Err(invalid(format!("{what}: last dimension must be even")));
    }
    if cos.dim(-1) != x.dim(-1) {
        return Err(invalid(format!(
            "cos last dimension {} differs from {what}'s {}",
            cos.dim(-1),
            x.dim(-1)
        )));
    }
    let b = broadcast_shape(&x.dims, &cos.dims, "x/cos")?;
    if b != x.dims {
        return Err(invalid(format!(
            "cos {:?} does not broadcast to {what} {:?}",
            cos.dims, x.dims
        )));
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn aclnnRotaryPositionEmbeddingGetWorkspaceSize(
    x: *const aclTensor,
    cos: *const aclTensor,
    sin: *const aclTensor,
    mode: i64,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnRotaryPositionEmbedding", ws, ex, || {
        let x = tensor(x, "x")?;
        let c = tensor(cos, "cos")?;
        let s = tensor(sin, "sin")?;
        let o = tensor(out, "out")?;
        if x.rank() != 4 {
            return Err(invalid(format!("x must be 4-D, got {:?}", x.dims)));
        }
        if !(0..=1).contains(&mode) {
            return Err(invalid(format!(
                "mode {mode} not supported (0 half, 1 interleave)"
            )));
        }
        check_rope(&x, &c, &s, "x")?;
        need_shape(&o, &x.dims, "out")?;
        same_dtype(&x, &o, "x/out")?;
        Ok(Box::new(move || {
            let r = rope(
                &x.read_f32("x")?,
                &x.dims,
                &c.read_f32("cos")?,
                &s.read_f32("sin")?,
                &c.dims,
                mode,
            );
            o.write_f32(&r, "out")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnApplyRotaryPosEmbGetWorkspaceSize(
    q: *mut aclTensor,
    k: *mut aclTensor,
    cos: *const aclTensor,
    sin: *const aclTensor,
    layout: i64,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnApplyRotaryPosEmb", ws, ex, || {
        let q = tensor(q, "queryRef")?;
        let k = tensor(k, "keyRef")?;
        let c = tensor(cos, "cos")?;
        let s = tensor(sin, "sin")?;
        if layout != 1 {
            return Err(invalid(format!("layout {layout} not supported (1 = BSND)")));
        }
        if q.rank() != 4 || k.rank() != 4 {
            return Err(invalid(format!(
                "queryRef {:?} and keyRef {:?} must be 4-D (BSND)",
                q.dims, k.dims
            )));
        }
        if q.dims[..2] != k.dims[..2] || q.dim(-1) != k.dim(-1) {
            return Err(invalid("queryRef and keyRef differ in B, S or D"));
        }
        check_rope(&q, &c, &s, "queryRef")?;
        check_rope(&k, &c, &s, "keyRef")?;
        same_dtype(&q, &k, "queryRef/keyRef")?;
        Ok(Box::new(move || {
            let (cv, sv) = (c.read_f32("cos")?, s.read_f32("sin")?);
            let rq = rope(&q.read_f32("queryRef")?, &q.dims, &cv, &sv, &c.dims, 0);
            let rk = rope(&k.read_f32("keyRef")?, &k.dims, &cv, &sv, &c.dims, 0);
            q.write_f32(&rq, "queryRef")?;
            k.write_f32(&rk, "keyRef")
        }) as Work)
    })
}

// ----------------------------------------------------------------------------- Reductions

/// Splits `dims` around `ax`: (outer, n, inner).
pub fn around(dims: &[i64], ax: usize) -> (usize, usize, usize) {
    let outer = dims[..ax].iter().map(|&d| d as usize).product();
    let inner = dims[ax + 1..].iter().map(|&d| d as usize).product();
    (outer, dims[ax] as usize, inner)
}

/// aclnnReduceSum (ops-math math/reduce_sum_op/docs/aclnnReduceSum.md): `self` summed over
/// `dims` (each in [-rank, rank), no repeats), `keepDims` keeping them as size 1, written
/// in `dtype`, which must be out's dtype. Floating types only here (the docs also list
/// integers, DOUBLE and complex: not emulated); sums in f64, rounded once to out's dtype.
#[no_mangle]
pub unsafe extern "C" fn aclnnReduceSumGetWorkspaceSize(
    self_: *const aclTensor,
    dims: *const aclIntArray,
    keep_dims: bool,
    dtype: aclDataType,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnReduceSum", ws, ex, || {
        let s = tensor(self_, "self")?;
        let o = tensor(out, "out")?;
        let dims = int_array(dims, "dims")?.ok_or_else(|| nullptr("dims"))?;
        need_float(
            &s,
            "aclnnReduceSum self (integer, DOUBLE and complex not emulated)",
        )?;
        need_float(
            &o,
            "aclnnReduceSum out (integer, DOUBLE and complex not emulated)",
        )?;
        if o.dtype != dtype {
            return Err(invalid(format!(
                "aclnnReduceSum: dtype {dtype:?} differs from out's {:?}",
                o.dtype
            )));
        }
        if dims.is_empty() {
            return Err(invalid("aclnnReduceSum: empty dims (not emulated)"));
        }
        let mut reduced = vec![false; s.rank()];
        for &d in &dims {
            let a = axis(d, s.rank(), "dims")?;
            if std::mem::replace(&mut reduced[a], true) {
                return Err(invalid(format!("aclnnReduceSum: dim {d} repeated")));
            }
        }
        let od: Vec<i64> = s
            .dims
            .iter()
            .zip(&reduced)
            .filter_map(|(&n, &r)| match (r, keep_dims) {
                (false, _) => Some(n),
                (true, true) => Some(1),
                (true, false) => None,
            })
            .collect();
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let v = s.read_f64("self")?;
            let mut r = vec![0f64; o.numel()];
            // Walk self in logical order; the output index drops (or pins) the reduced axes.
            let mut coord = vec![0i64; s.rank()];
            for &x in &v {
                let mut at = 0usize;
                for (d, &c) in coord.iter().enumerate() {
                    if !reduced[d] {
                        at = at * s.dims[d] as usize + c as usize;
                    }
                }
                r[at] += x;
                for d in (0..coord.len()).rev() {
                    coord[d] += 1;
                    if coord[d] < s.dims[d] {
                        break;
                    }
                    coord[d] = 0;
                }
            }
            o.write_f64(&r, "out")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnArgMaxGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    keepdim: bool,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnArgMax", ws, ex, || {
        let s = tensor(self_, "self")?;
        let o = tensor(out, "out")?;
        let ax = axis(dim, s.rank(), "dim")?;
        if !matches!(o.dtype, D::ACL_INT64 | D::ACL_INT32) {
            return Err(invalid(format!("out dtype {:?} (INT64 or INT32)", o.dtype)));
        }
        let mut od = s.dims.clone();
        if keepdim {
            od[ax] = 1;
        } else {
            od.remove(ax);
        }
        need_shape(&o, &od, "out")?;
        Ok(Box::new(move || {
            let v = s.read_f32("self")?;
            let (outer, n, inner) = around(&s.dims, ax);
            let mut r = Vec::with_capacity(outer * inner);
            for ou in 0..outer {
                for i in 0..inner {
                    let mut best = 0usize;
                    for j in 1..n {
                        let (a, b) = (v[(ou * n + j) * inner + i], v[(ou * n + best) * inner + i]);
                        // First maximum wins; NaN counts as the maximum, as torch does.
                        if a > b || (a.is_nan() && !b.is_nan()) {
                            best = j;
                        }
                    }
                    r.push(best as i64);
                }
            }
            o.write_i64(&r, "out")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnTopkGetWorkspaceSize(
    self_: *const aclTensor,
    k: i64,
    dim: i64,
    largest: bool,
    sorted: bool,
    values: *mut aclTensor,
    indices: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    let _ = sorted; // results are always sorted, which satisfies sorted=false too
    phase1("aclnnTopk", ws, ex, || {
        let s = tensor(self_, "self")?;
        let v = tensor(values, "valuesOut")?;
        let i = tensor(indices, "indicesOut")?;
        let ax = axis(dim, s.rank(), "dim")?;
        if k < 0 || k > s.dims[ax] {
            return Err(invalid(format!("k {k} out of range [0, {}]", s.dims[ax])));
        }
        let mut od = s.dims.clone();
        od[ax] = k;
        need_shape(&v, &od, "valuesOut")?;
        need_shape(&i, &od, "indicesOut")?;
        same_dtype(&s, &v, "self/valuesOut")?;
        if i.dtype != D::ACL_INT64 {
            return Err(invalid("indicesOut must be INT64"));
        }
        Ok(Box::new(move || {
            let x = s.read_f64("self")?;
            let (outer, n, inner) = around(&s.dims, ax);
            let k = k as usize;
            let (mut rv, mut ri) = (vec![0f64; outer * k * inner], vec![0i64; outer * k * inner]);
            for ou in 0..outer {
                for inn in 0..inner {
                    let mut idx: Vec<usize> = (0..n).collect();
                    let key = |j: usize| x[(ou * n + j) * inner + inn];
                    idx.sort_by(|&a, &b| {
                        let o = key(a).total_cmp(&key(b));
                        let o = if largest { o.reverse() } else { o };
                        o.then(a.cmp(&b))
                    });
                    for (t, &j) in idx.iter().take(k).enumerate() {
                        rv[(ou * k + t) * inner + inn] = key(j);
                        ri[(ou * k + t) * inner + inn] = j as i64;
                    }
                }
            }
            v.write_f64(&rv, "valuesOut")?;
            i.write_i64(&ri, "indicesOut")
        }) as Work)
    })
}

#[no_mangle]
pub unsafe extern "C" fn aclnnSoftmaxGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    out: *mut aclTensor,
    ws: *mut u64,
    ex: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    phase1("aclnnSoftmax", ws, ex, || {
        let s = tensor(self_, "self")?;
        let o = tensor(out, "out")?;
        need_float(&s, "self")?;
        need_float(&o, "out")?;
        need_shape(&o, &s.dims, "out")?;
        let ax = axis(dim, s.rank(), "dim")?;
        Ok(Box::new(move || {
            let x = s.read_f32("self")?;
            let (outer, n, inner) = around(&s.dims, ax);
            let mut r = vec![0f32; x.len()];
            for ou in 0..outer {
                for i in 0..inner {
                    let at = |j: usize| (ou * n + j) * inner + i;
                    let m = (0..n).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = (0..n).map(|j| (x[at(j)] - m).exp()).sum();
                    for j in 0..n {
                        r[at(j)] = (x[at(j)] - m).exp() / sum;
                    }
                }
            }
            o.write_f32(&r, "out")
        }) as Work)
    })
}

phase2_exports!(
    aclnnMatmul,
    aclnnRmsNorm,
    aclnnAddRmsNorm,
    aclnnSwiGlu,
    aclnnEmbedding,
    aclnnIndexSelect,
    aclnnGather,
    aclnnAdd,
    aclnnInplaceAdd,
    aclnnMul,
    aclnnCast,
    aclnnInplaceCopy,
    aclnnRotaryPositionEmbedding,
    aclnnApplyRotaryPosEmb,
    aclnnReduceSum,
    aclnnArgMax,
    aclnnTopk,
    aclnnSoftmax,
);

const _: fns::aclnnMatmulGetWorkspaceSize = aclnnMatmulGetWorkspaceSize;
const _: fns::aclnnRmsNormGetWorkspaceSize = aclnnRmsNormGetWorkspaceSize;
const _: fns::aclnnAddRmsNormGetWorkspaceSize = aclnnAddRmsNormGetWorkspaceSize;
const _: fns::aclnnSwiGluGetWorkspaceSize = aclnnSwiGluGetWorkspaceSize;
const _: fns::aclnnEmbeddingGetWorkspaceSize = aclnnEmbeddingGetWorkspaceSize;
const _: fns::aclnnIndexSelectGetWorkspaceSize = aclnnIndexSelectGetWorkspaceSize;
const _: fns::aclnnGatherGetWorkspaceSize = aclnnGatherGetWorkspaceSize;
const _: fns::aclnnAddGetWorkspaceSize = aclnnAddGetWorkspaceSize;
const _: fns::aclnnInplaceAddGetWorkspaceSize = aclnnInplaceAddGetWorkspaceSize;
const _: fns::aclnnMulGetWorkspaceSize = aclnnMulGetWorkspaceSize;
const _: fns::aclnnCastGetWorkspaceSize = aclnnCastGetWorkspaceSize;
const _: fns::aclnnInplaceCopyGetWorkspaceSize = aclnnInplaceCopyGetWorkspaceSize;
const _: fns::aclnnRotaryPositionEmbeddingGetWorkspaceSize =
    aclnnRotaryPositionEmbeddingGetWorkspaceSize;
const _: fns::aclnnApplyRotaryPosEmbGetWorkspaceSize = aclnnApplyRotaryPosEmbGetWorkspaceSize;
const _: fns::aclnnReduceSumGetWorkspaceSize = aclnnReduceSumGetWorkspaceSize;
const _: fns::aclnnArgMaxGetWorkspaceSize = aclnnArgMaxGetWorkspaceSize;
const _: fns::aclnnTopkGetWorkspaceSize = aclnnTopkGetWorkspaceSize;
const _: fns::aclnnSoftmaxGetWorkspaceSize = aclnnSoftmaxGetWorkspaceSize;
