//! Element types: conversion between device bytes and f32 / i64, rounding to the output
//! type (round-to-nearest-even for BF16 and FP16, as the hardware's casts).

use ascend_sys::types::aclDataType as D;
use half::{bf16, f16};

pub fn is_int(d: D) -> bool {
    matches!(
        d,
        D::ACL_INT8
            | D::ACL_INT16
            | D::ACL_INT32
            | D::ACL_INT64
            | D::ACL_UINT8
            | D::ACL_UINT16
            | D::ACL_UINT32
            | D::ACL_UINT64
            | D::ACL_BOOL
    )
}

/// Bytes per element of the types the emulator computes on (INT4 is handled apart).
pub fn size_of(d: D) -> Option<usize> {
    d.element_size()
}

pub fn get_f64(d: D, b: &[u8]) -> f64 {
    match d {
        D::ACL_FLOAT => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        D::ACL_FLOAT16 => f16::from_le_bytes([b[0], b[1]]).to_f64(),
        D::ACL_BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f64(),
        D::ACL_DOUBLE => f64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
        _ => get_i64(d, b) as f64,
    }
}

pub fn get_f32(d: D, b: &[u8]) -> f32 {
    match d {
        D::ACL_FLOAT => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        D::ACL_BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        D::ACL_FLOAT16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
        _ => get_f64(d, b) as f32,
    }
}

pub fn get_i64(d: D, b: &[u8]) -> i64 {
    match d {
        D::ACL_INT8 => b[0] as i8 as i64,
        D::ACL_UINT8 | D::ACL_BOOL => b[0] as i64,
        D::ACL_INT16 => i16::from_le_bytes([b[0], b[1]]) as i64,
        D::ACL_UINT16 => u16::from_le_bytes([b[0], b[1]]) as i64,
        D::ACL_INT32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        D::ACL_UINT32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
        D::ACL_INT64 | D::ACL_UINT64 => i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8])),
        _ => get_f64(d, b) as i64,
    }
}

/// Writes `v` as type `d`: floats rounded to nearest even, integers truncated toward
/// zero and saturated (as a float-to-int cast does).
pub fn put_f64(d: D, b: &mut [u8], v: f64) {
    match d {
        D::ACL_FLOAT => b[..4].copy_from_slice(&(v as f32).to_le_bytes()),
        // Through f32 first: the device computes in f32 and then rounds once.
        D::ACL_FLOAT16 => b[..2].copy_from_slice(&f16::from_f32(v as f32).to_le_bytes()),
        D::ACL_BF16 => b[..2].copy_from_slice(&bf16::from_f32(v as f32).to_le_bytes()),
        D::ACL_DOUBLE => b[..8].copy_from_slice(&v.to_le_bytes()),
        D::ACL_BOOL => b[0] = (v != 0.0) as u8,
        _ => put_i64(d, b, v as i64),
    }
}

pub fn put_i64(d: D, b: &mut [u8], v: i64) {
    match d {
        D::ACL_INT8 => b[0] = v as i8 as u8,
        D::ACL_UINT8 => b[0] = v as u8,
        D::ACL_BOOL => b[0] = (v != 0) as u8,
        D::ACL_INT16 => b[..2].copy_from_slice(&(v as i16).to_le_bytes()),
        D::ACL_UINT16 => b[..2].copy_from_slice(&(v as u16).to_le_bytes()),
        D::ACL_INT32 => b[..4].copy_from_slice(&(v as i32).to_le_bytes()),
        D::ACL_UINT32 => b[..4].copy_from_slice(&(v as u32).to_le_bytes()),
        D::ACL_INT64 | D::ACL_UINT64 => b[..8].copy_from_slice(&v.to_le_bytes()),
        _ => put_f64(d, b, v as f64),
    }
}
