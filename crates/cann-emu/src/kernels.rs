//! The `aclrtlaunch_<kernel>` stubs CANN's `ascendc_library` generates for qwen3's own AscendC
//! kernels (`kernels/ascendc`), backed by the same sources compiled against the AscendC sim
//! (`qwen3-kernels`). A launch is queued on the stream like any device work; at execution
//! the tiling is read from device memory, each argument's extent (from the tiling) must lie
//! in one live allocation on the stream's device, the kernel runs block by block on host
//! copies, and the arguments it writes are copied back. A rule the sim enforces, broken,
//! fails the stream with `ACL_ERROR_RT_AICORE_EXCEPTION`, as an AI Core fault would.
//!
//! Signature of each stub (CANN's generated `aclrtlaunch_<kernel>.h`):
//! `uint32_t aclrtlaunch_<kernel>(uint32_t blockDim, aclrtStream stream, void *args...)`,
//! 0 on success.

use std::ffi::c_void;
use std::sync::Arc;

use ascend_sys::types::*;
use qwen3_kernels::device::{Buffer, Kernel};

use crate::mem;
use crate::rt::stream_of;
use crate::state::{bump, code_of, Fail, Res, STATS};

fn launch(kernel: Kernel, block_dim: u32, stream: aclrtStream, args: &[*mut c_void]) -> u32 {
    let r = (|| -> Res<()> {
        let name = kernel.name();
        let s = stream_of(stream, name)?;
        let addrs: Vec<u64> = args.iter().map(|&p| p as u64).collect();
        let dev = s.dev;
        s.enqueue(Arc::new(move || run(kernel, block_dim, dev, &addrs)));
        Ok(())
    })();
    code_of(r) as u32
}

fn run(kernel: Kernel, block_dim: u32, dev: i32, addrs: &[u64]) -> Res<()> {
    let name = kernel.name();
    let fault = |m: String| Fail::new(ACL_ERROR_RT_AICORE_EXCEPTION, format!("{name}: {m}"));
    let (tiling_addr, arg_addrs) = addrs
        .split_last()
        .ok_or_else(|| fault("no arguments".into()))?;
    let on_device = |a: u64| -> Res<()> {
        if mem::device_of_addr(a) != dev {
            bump(&STATS.cross_device);
            return Err(fault(format!(
                "argument {a:#x} lives on device {} but the stream belongs to device {dev}",
                mem::device_of_addr(a)
            )));
        }
        Ok(())
    };
    on_device(*tiling_addr)?;
    let tiling = mem::read(*tiling_addr, kernel.tiling_bytes(), name)?;
    let extents = kernel.args(&tiling).map_err(|e| fault(e.to_string()))?;
    let mut bufs = Vec::with_capacity(extents.len());
    for (&a, e) in arg_addrs.iter().zip(&extents) {
        let mut b = Buffer::zeroed(e.bytes);
        if e.bytes > 0 {
            on_device(a)?;
            b.as_bytes_mut()
                .copy_from_slice(&mem::read(a, e.bytes, name)?);
        }
        bufs.push(b);
    }
    kernel
        .run(block_dim, &tiling, &mut bufs)
        .map_err(|e| fault(e.to_string()))?;
    for ((&a, e), b) in arg_addrs.iter().zip(&extents).zip(&bufs) {
        if e.written && e.bytes > 0 {
            mem::write(a, b.as_bytes(), name)?;
        }
    }
    Ok(())
}

type P = *mut c_void;

#[no_mangle]
pub extern "C" fn aclrtlaunch_qk_norm_rope_cache(
    block_dim: u32,
    stream: aclrtStream,
    q: P,
    k: P,
    v: P,
    q_weight: P,
    k_weight: P,
    cos: P,
    sin: P,
    positions: P,
    slot_mapping: P,
    q_out: P,
    k_cache: P,
    v_cache: P,
    tiling: P,
) -> u32 {
    let args = [
        q,
        k,
        v,
        q_weight,
        k_weight,
        cos,
        sin,
        positions,
        slot_mapping,
        q_out,
        k_cache,
        v_cache,
        tiling,
    ];
    launch(Kernel::QkNormRopeCache, block_dim, stream, &args)
}

#[no_mangle]
pub extern "C" fn aclrtlaunch_paged_decode_attention(
    block_dim: u32,
    stream: aclrtStream,
    q: P,
    k_cache: P,
    v_cache: P,
    block_table: P,
    context_lens: P,
    out: P,
    partial_out: P,
    partial_stats: P,
    tiling: P,
) -> u32 {
    let args = [
        q,
        k_cache,
        v_cache,
        block_table,
        context_lens,
        out,
        partial_out,
        partial_stats,
        tiling,
    ];
    launch(Kernel::PagedDecodeAttention, block_dim, stream, &args)
}

#[no_mangle]
pub extern "C" fn aclrtlaunch_paged_decode_merge(
    block_dim: u32,
    stream: aclrtStream,
    partial_out: P,
    partial_stats: P,
    out: P,
    tiling: P,
) -> u32 {
    launch(
        Kernel::PagedDecodeMerge,
        block_dim,
        stream,
        &[partial_out, partial_stats, out, tiling],
    )
}

#[no_mangle]
pub extern "C" fn aclrtlaunch_chunked_prefill_attention(
    block_dim: u32,
    stream: aclrtStream,
    q: P,
    k_cache: P,
    v_cache: P,
    block_table: P,
    query_start: P,
    context_lens: P,
    out: P,
    tiling: P,
) -> u32 {
    let args = [
        q,
        k_cache,
        v_cache,
        block_table,
        query_start,
        context_lens,
        out,
        tiling,
    ];
    launch(Kernel::ChunkedPrefillAttention, block_dim, stream, &args)
}
