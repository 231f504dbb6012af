//! Emulated device memory. Device addresses are tagged, non-canonical values (never host
//! addresses), so a host dereference faults at once; every access is checked against
//! the live allocations, and freed ranges are remembered to report use-after-free.

use crate::state::{bump, drop1, lock, Fail, Res, STATS};
use ascend_sys::types::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{LazyLock, Mutex};

const TAG: u64 = 0x4000_0000_0000_0000;
const TAG_MASK: u64 = 0xF000_0000_0000_0000;
const DEV_SHIFT: u32 = 40;
/// Gap between allocations so that an overrun never lands in a neighbour.
const GUARD: u64 = 1 << 16;

pub fn is_device_addr(a: u64) -> bool {
    a & TAG_MASK == TAG
}

/// The device a tagged address belongs to.
pub fn device_of_addr(a: u64) -> i32 {
    ((a & !TAG_MASK) >> DEV_SHIFT) as i32
}

struct Alloc {
    size: u64,
    dev: i32,
    data: Vec<u8>,
}

#[derive(Default)]
struct Memory {
    allocs: BTreeMap<u64, Alloc>,
    freed: BTreeMap<u64, u64>,
    next: HashMap<i32, u64>,
    used: HashMap<i32, u64>,
    host: BTreeMap<usize, std::alloc::Layout>,
}

static MEM: LazyLock<Mutex<Memory>> = LazyLock::new(|| Mutex::new(Memory::default()));

pub fn reset() {
    let mut m = lock(&MEM);
    for (p, layout) in std::mem::take(&mut m.host) {
        // SAFETY: allocated by `malloc_host` with this layout and not yet freed.
        unsafe { std::alloc::dealloc(p as *mut u8, layout) };
    }
    *m = Memory::default();
}

pub fn malloc(dev: i32, size: usize) -> Res<u64> {
    let mut m = lock(&MEM);
    let cap = crate::state::hbm_bytes();
    let used = m.used.get(&dev).copied().unwrap_or(0);
    let size = size as u64;
    if size == 0 {
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            "aclrtMalloc: size must be greater than 0",
        ));
    }
    if used + size > cap {
        return Err(Fail::new(
            ACL_ERROR_RT_MEMORY_ALLOCATION,
            format!(
                "aclrtMalloc: out of device memory on device {dev}: {size} bytes asked, {} free of {cap}",
                cap - used
            ),
        ));
    }
    let base = TAG | ((dev as u64) << DEV_SHIFT);
    let next = *m.next.entry(dev).or_insert(base + GUARD);
    let addr = next;
    m.next.insert(dev, next + size.div_ceil(512) * 512 + GUARD);
    m.used.insert(dev, used + size);
    m.allocs.insert(
        addr,
        Alloc {
            size,
            dev,
            data: vec![0u8; size as usize],
        },
    );
    bump(&STATS.live_allocs);
    bump(&STATS.total_allocs);
    let live = STATS.live_bytes.fetch_add(size, Ordering::Relaxed) + size;
    STATS.peak_bytes.fetch_max(live, Ordering::Relaxed);
    Ok(addr)
}

pub fn free(addr: u64) -> Res<()> {
    let mut m = lock(&MEM);
    if let Some(a) = m.allocs.remove(&addr) {
        *m.used.entry(a.dev).or_insert(0) -= a.size;
        m.freed.insert(addr, a.size);
        drop1(&STATS.live_allocs);
        STATS.live_bytes.fetch_sub(a.size, Ordering::Relaxed);
        return Ok(());
    }
    if m.freed.contains_key(&addr) {
        bump(&STATS.double_frees);
        return Err(Fail::new(
            ACL_ERROR_INVALID_PARAM,
            format!("aclrtFree: double free of device address {addr:#x}"),
        ));
    }
    bump(&STATS.invalid_frees);
    Err(Fail::new(
        ACL_ERROR_INVALID_PARAM,
        format!("aclrtFree: {addr:#x} is not the start of a live device allocation"),
    ))
}

/// Free and total device memory of `dev`.
pub fn mem_info(dev: i32) -> (u64, u64) {
    let m = lock(&MEM);
    let cap = crate::state::hbm_bytes();
    let used = m.used.get(&dev).copied().unwrap_or(0);
    (cap.saturating_sub(used), cap)
}

pub fn malloc_host(size: usize) -> Res<usize> {
    let layout = std::alloc::Layout::from_size_align(size.max(1), 64)
        .map_err(|e| Fail::new(ACL_ERROR_INVALID_PARAM, format!("aclrtMallocHost: {e}")))?;
    // SAFETY: non-zero size layout.
    let p = unsafe { std::alloc::alloc_zeroed(layout) };
    if p.is_null() {
        return Err(Fail::new(
            ACL_ERROR_BAD_ALLOC,
            "aclrtMallocHost: out of memory",
        ));
    }
    lock(&MEM).host.insert(p as usize, layout);
    bump(&STATS.live_host_allocs);
    Ok(p as usize)
}

/// Whether host bytes `[addr, addr+len)` lie in one `aclrtMallocHost` allocation (page-locked
/// memory); anything else is pageable.
pub fn is_pinned(addr: usize, len: usize) -> bool {
    let m = lock(&MEM);
    m.host
        .range(..=addr)
        .next_back()
        .is_some_and(|(&base, l)| addr + len <= base + l.size())
}

pub fn free_host(p: usize) -> Res<()> {
    let layout = lock(&MEM).host.remove(&p);
    match layout {
        Some(l) => {
            // SAFETY: allocated by `malloc_host` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
            drop1(&STATS.live_host_allocs);
            Ok(())
        }
        None => {
            bump(&STATS.invalid_frees);
            Err(Fail::new(
                ACL_ERROR_INVALID_PARAM,
                format!(
                    "aclrtFreeHost: {p:#x} was not allocated by aclrtMallocHost (or freed twice)"
                ),
            ))
        }
    }
}

/// Finds the allocation holding `[addr, addr+len)`, counting the violation otherwise.
fn find<'m>(m: &'m mut Memory, addr: u64, len: u64, what: &str) -> Res<(&'m mut Alloc, usize)> {
    let hit = m.allocs.range_mut(..=addr).next_back();
    if let Some((&base, a)) = hit {
        if addr < base + a.size {
            if addr + len <= base + a.size {
                return Ok((a, (addr - base) as usize));
            }
            bump(&STATS.oob_accesses);
            return Err(Fail::new(
                ACL_ERROR_RT_DEVICE_MEM_ERROR,
                format!(
                    "{what}: out-of-bounds device access [{addr:#x}, +{len}) past the end of the {}-byte allocation at {base:#x}",
                    a.size
                ),
            ));
        }
    }
    if let Some((&base, &size)) = m.freed.range(..=addr).next_back() {
        if addr < base + size {
            bump(&STATS.use_after_free);
            return Err(Fail::new(
                ACL_ERROR_RT_DEVICE_MEM_ERROR,
                format!("{what}: use after free of device address {addr:#x} (allocation {base:#x} was freed)"),
            ));
        }
    }
    bump(&STATS.oob_accesses);
    Err(Fail::new(
        ACL_ERROR_RT_DEVICE_MEM_ERROR,
        format!("{what}: device address {addr:#x} (+{len}) is in no live allocation"),
    ))
}

/// Checks that `[addr, addr+len)` lies inside one live allocation.
pub fn check(addr: u64, len: u64, what: &str) -> Res<()> {
    if len == 0 {
        return Ok(());
    }
    let mut m = lock(&MEM);
    find(&mut m, addr, len, what).map(|_| ())
}

pub fn read(addr: u64, len: usize, what: &str) -> Res<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut m = lock(&MEM);
    let (a, off) = find(&mut m, addr, len as u64, what)?;
    Ok(a.data[off..off + len].to_vec())
}

pub fn write(addr: u64, bytes: &[u8], what: &str) -> Res<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut m = lock(&MEM);
    let (a, off) = find(&mut m, addr, bytes.len() as u64, what)?;
    a.data[off..off + bytes.len()].copy_from_slice(bytes);
    Ok(())
}

/// Runs `f` on the bytes `[addr, addr+len)` under the memory lock.
pub fn with_mut<R>(addr: u64, len: usize, what: &str, f: impl FnOnce(&mut [u8]) -> R) -> Res<R> {
    let mut m = lock(&MEM);
    if len == 0 {
        return Ok(f(&mut []));
    }
    let (a, off) = find(&mut m, addr, len as u64, what)?;
    Ok(f(&mut a.data[off..off + len]))
}

/// Copies device to device (overlap allowed).
pub fn copy_d2d(dst: u64, src: u64, len: usize, what: &str) -> Res<()> {
    let bytes = read(src, len, what)?;
    write(dst, &bytes, what)
}
