//! Emulated DCMI (`libdcmi.so`): card and chip enumeration, logical ids and the readings
//! `npu-smi` shows, with the signatures and units of Huawei's DCMI API reference (see
//! ascend-sys/src/dcmi.rs for the pages).
//!
//! Layout: one card per emulated device (`CANN_EMU_DEVICES`), one NPU chip per card, and
//! card `c` holds logical id `n-1-c` — deliberately not the identity, so that a caller
//! that confuses card ids with logical ids reads the wrong chip.
//!
//! Readings: HBM total and used follow the emulated runtime's memory by default (total
//! `CANN_EMU_HBM_BYTES`, used what `aclrtMalloc` holds on that device); any value can be
//! set in the file named by `CANN_EMU_DCMI_READINGS`, re-read on every call so a test can
//! change a reading (e.g. health) while a server runs. One line per logical id:
//! `<logic_id> hbm_total_mb=.. hbm_used_mb=.. aicore=.. aicpu=.. temp=.. power_dw=.. health=..
//! throttle_temp=.. reset_temp=..` (`power_dw` in units of 0.1 W, `health` the documented 0..3
//! or 0xFFFFFFFF, the two thresholds what `dcmi_get_device_sensor_info` reports for
//! `DCMI_THERMAL_THRESHOLD_ID`; `throttle_temp=none` makes that sensor fail, as on a driver
//! without it). The defaults (40 °C, 90 W, throttling at 95 °C, reset at 105 °C) are the
//! emulator's own, not a 910B's.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, Ordering};

use ascend_sys::dcmi::{
    DcmiHbmInfo, DcmiSensorInfo, DCMI_THERMAL_THRESHOLD_ID, DCMI_UTILIZATION_AICORE,
    DCMI_UTILIZATION_AICPU,
};

/// DCMI's "invalid parameter" return code (返回码 table of the DCMI reference).
const DCMI_ERR_INVALID_PARAMETER: c_int = -8001;

/// The reference requires `dcmi_init` before any other call.
static INITIALISED: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Clone, Copy)]
struct Readings {
    hbm_total_mb: u64,
    hbm_used_mb: u64,
    aicore: u32,
    aicpu: u32,
    temp: c_int,
    power_dw: c_int,
    health: u32,
    /// (throttling, reset) °C; None: the sensor answers with an error.
    thermal: Option<(i8, i8)>,
}

fn n_chips() -> c_int {
    crate::state::device_count() as c_int
}

/// The logical id of chip `device_id` on card `card_id`, when both exist.
fn logic_of(card_id: c_int, device_id: c_int) -> Option<c_int> {
    let n = n_chips();
    if (0..n).contains(&card_id) && device_id == 0 {
        Some(n - 1 - card_id)
    } else {
        None
    }
}

fn readings(logic: c_int) -> Readings {
    const MB: u64 = 1 << 20;
    let (free, total) = crate::mem::mem_info(logic);
    let mut r = Readings {
        hbm_total_mb: total / MB,
        hbm_used_mb: total.saturating_sub(free).div_ceil(MB),
        aicore: 0,
        aicpu: 0,
        temp: 40,
        power_dw: 900,
        health: 0,
        thermal: Some((95, 105)),
    };
    let Some(path) = std::env::var_os("CANN_EMU_DCMI_READINGS") else {
        return r;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next().and_then(|w| w.parse::<c_int>().ok()) != Some(logic) {
            continue;
        }
        for kv in words {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            if (k, v) == ("throttle_temp", "none") {
                r.thermal = None;
                continue;
            }
            let num = if let Some(h) = v.strip_prefix("0x") {
                i64::from_str_radix(h, 16).ok()
            } else {
                v.parse::<i64>().ok()
            };
            let Some(num) = num else { continue };
            match k {
                "hbm_total_mb" => r.hbm_total_mb = num as u64,
                "hbm_used_mb" => r.hbm_used_mb = num as u64,
                "aicore" => r.aicore = num as u32,
                "aicpu" => r.aicpu = num as u32,
                "temp" => r.temp = num as c_int,
                "power_dw" => r.power_dw = num as c_int,
                "health" => r.health = num as u32,
                "throttle_temp" => r.thermal = r.thermal.map(|(_, b)| (num as i8, b)),
                "reset_temp" => r.thermal = r.thermal.map(|(a, _)| (a, num as i8)),
                _ => {}
            }
        }
    }
    r
}

/// Runs `f` on the readings of (card, chip), or returns DCMI's error code.
fn with_chip(card_id: c_int, device_id: c_int, f: impl FnOnce(Readings)) -> c_int {
    if !INITIALISED.load(Ordering::Relaxed) {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    match logic_of(card_id, device_id) {
        Some(l) => {
            f(readings(l));
            0
        }
        None => DCMI_ERR_INVALID_PARAMETER,
    }
}

#[no_mangle]
pub extern "C" fn dcmi_init() -> c_int {
    INITIALISED.store(true, Ordering::Relaxed);
    0
}
const _: ascend_sys::dcmi::dcmi_init = dcmi_init;

/// # Safety
/// `card_num` writable; `card_list` holds `list_len` ints.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_card_list(
    card_num: *mut c_int,
    card_list: *mut c_int,
    list_len: c_int,
) -> c_int {
    let n = n_chips();
    if !INITIALISED.load(Ordering::Relaxed)
        || card_num.is_null()
        || card_list.is_null()
        || list_len < n
    {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null; `card_list` has room for `n <= list_len` ints.
    unsafe {
        card_num.write(n);
        for c in 0..n {
            card_list.add(c as usize).write(c);
        }
    }
    0
}
const _: ascend_sys::dcmi::dcmi_get_card_list = dcmi_get_card_list;

/// # Safety
/// Three writable ints.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_id_in_card(
    card_id: c_int,
    device_id_max: *mut c_int,
    mcu_id: *mut c_int,
    cpu_id: *mut c_int,
) -> c_int {
    if !INITIALISED.load(Ordering::Relaxed)
        || !(0..n_chips()).contains(&card_id)
        || device_id_max.is_null()
        || mcu_id.is_null()
        || cpu_id.is_null()
    {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    // SAFETY: checked non-null. -1: no MCU, no control CPU (as the reference documents).
    unsafe {
        device_id_max.write(1);
        mcu_id.write(-1);
        cpu_id.write(-1);
    }
    0
}
const _: ascend_sys::dcmi::dcmi_get_device_id_in_card = dcmi_get_device_id_in_card;

/// # Safety
/// `device_logic_id` writable.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_logic_id(
    device_logic_id: *mut c_int,
    card_id: c_int,
    device_id: c_int,
) -> c_int {
    if device_logic_id.is_null() || !INITIALISED.load(Ordering::Relaxed) {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    match logic_of(card_id, device_id) {
        // SAFETY: checked non-null.
        Some(l) => unsafe {
            device_logic_id.write(l);
            0
        },
        None => DCMI_ERR_INVALID_PARAMETER,
    }
}
const _: ascend_sys::dcmi::dcmi_get_device_logic_id = dcmi_get_device_logic_id;

/// # Safety
/// `hbm_info` writable.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_hbm_info(
    card_id: c_int,
    device_id: c_int,
    hbm_info: *mut DcmiHbmInfo,
) -> c_int {
    if hbm_info.is_null() {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    with_chip(card_id, device_id, |r| {
        // SAFETY: checked non-null.
        unsafe {
            hbm_info.write(DcmiHbmInfo {
                memory_size: r.hbm_total_mb,
                freq: 1600,
                memory_usage: r.hbm_used_mb,
                temp: r.temp,
                bandwith_util_rate: 0,
            })
        }
    })
}
const _: ascend_sys::dcmi::dcmi_get_device_hbm_info = dcmi_get_device_hbm_info;

/// # Safety
/// `utilization_rate` writable.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_utilization_rate(
    card_id: c_int,
    device_id: c_int,
    input_type: c_int,
    utilization_rate: *mut u32,
) -> c_int {
    // The reference lists types 1-5 and 12 as supported; only AI Core and AI CPU are
    // emulated, the others are refused rather than invented.
    if utilization_rate.is_null()
        || !matches!(input_type, DCMI_UTILIZATION_AICORE | DCMI_UTILIZATION_AICPU)
    {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    with_chip(card_id, device_id, |r| {
        let v = if input_type == DCMI_UTILIZATION_AICORE {
            r.aicore
        } else {
            r.aicpu
        };
        // SAFETY: checked non-null.
        unsafe { utilization_rate.write(v) }
    })
}
const _: ascend_sys::dcmi::dcmi_get_device_utilization_rate = dcmi_get_device_utilization_rate;

/// Exports `name(card_id, device_id, T *out)` writing one field of the chip's readings,
/// checked against ascend-sys's declaration.
macro_rules! scalar_reading {
    ($($name:ident: $ty:ty = $field:ident;)*) => {$(
        /// # Safety
        /// `out` writable.
        #[no_mangle]
        pub unsafe extern "C" fn $name(card_id: c_int, device_id: c_int, out: *mut $ty) -> c_int {
            if out.is_null() {
                return DCMI_ERR_INVALID_PARAMETER;
            }
            // SAFETY: checked non-null.
            with_chip(card_id, device_id, |r| unsafe { out.write(r.$field) })
        }
        const _: ascend_sys::dcmi::$name = $name;
    )*};
}

scalar_reading! {
    dcmi_get_device_temperature: c_int = temp;
    dcmi_get_device_power_info: c_int = power_dw;
    dcmi_get_device_health: u32 = health;
}

/// Only `DCMI_THERMAL_THRESHOLD_ID` is emulated; other sensors are refused, not invented.
///
/// # Safety
/// `sensor_info` writable.
#[no_mangle]
pub unsafe extern "C" fn dcmi_get_device_sensor_info(
    card_id: c_int,
    device_id: c_int,
    sensor_id: c_int,
    sensor_info: *mut DcmiSensorInfo,
) -> c_int {
    if sensor_info.is_null() || sensor_id != DCMI_THERMAL_THRESHOLD_ID {
        return DCMI_ERR_INVALID_PARAMETER;
    }
    let mut thermal = None;
    let rc = with_chip(card_id, device_id, |r| thermal = r.thermal);
    match (rc, thermal) {
        (0, Some((throttle, reset))) => {
            let mut info = DcmiSensorInfo { data: [0; 16] };
            info.temp = [throttle, reset];
            // SAFETY: checked non-null.
            unsafe { sensor_info.write(info) };
            0
        }
        (0, None) => DCMI_ERR_INVALID_PARAMETER,
        (rc, _) => rc,
    }
}
const _: ascend_sys::dcmi::dcmi_get_device_sensor_info = dcmi_get_device_sensor_info;
