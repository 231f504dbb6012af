//! DCMI (`libdcmi.so`), the device-management library `npu-smi` is built on: card and
//! chip enumeration, the chip's logical id (the numbering ACL and ASCEND_RT_VISIBLE_DEVICES
//! use), HBM usage, utilisation, temperature, power and health. Loaded at run time and
//! optional: a machine (or container) without `/usr/local/dcmi` simply has no readings.
//!
//! Declarations are written by hand from Huawei's "DCMI API参考" (Atlas 200I A2 / A2
//! series, releases 23.0.0 to 26.0.RC1, `hiascend.com/document/detail/zh/Atlas 200I A2/<ver>/re/api/api_NNN.html`,
//! the page of each function cited beside it), and for the calls the 910B servers document
//! in their own reference, the HDK 26.1.0 "A2 DCMI" pages (`hiascend.com/document/detail/zh/HDK/latest/A2/A2DCMI/dcmi_NNN.html`,
//! whose support tables list Atlas 800T A2 and 800I A2). No DCMI header ships with the PyPI
//! wheels the ACL/HCCL cross-check uses; the declarations were compared by hand (not copied)
//! with `component/ascend-common/devmanager/dcmi/dcmi_interface_api.h` of Huawei's
//! Ascend/mind-cluster (npu-exporter's DCMI binding; commit 22bb3d9, 2026-08-21): every
//! signature here, and `struct dcmi_hbm_info`, agree with it.

#![allow(non_camel_case_types)]

use std::ffi::c_int;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use libloading::Library;

/// `dcmi_init(void)`: must be called before any other DCMI call; 0 on success (Atlas 200I A2
/// reference api_004 in 23.0.0 and 25.2.0, topic_0000002481386652 in 25.5.0; HDK A2 DCMI
/// dcmi_007).
pub type dcmi_init = unsafe extern "C" fn() -> c_int;
/// `dcmi_get_card_list(int *card_num, int *card_list, int list_len)` (2550 release: topic_0000002481386632).
pub type dcmi_get_card_list =
    unsafe extern "C" fn(card_num: *mut c_int, card_list: *mut c_int, list_len: c_int) -> c_int;
/// `dcmi_get_card_num_list(...)`: the older name of `dcmi_get_card_list`, same signature
/// (api_009, "will be removed in a later release").
pub type dcmi_get_card_num_list = dcmi_get_card_list;
/// `dcmi_get_device_id_in_card(int card_id, int *device_id_max, int *mcu_id, int *cpu_id)`
/// (api_011): chips of a card are `0..device_id_max`.
pub type dcmi_get_device_id_in_card = unsafe extern "C" fn(
    card_id: c_int,
    device_id_max: *mut c_int,
    mcu_id: *mut c_int,
    cpu_id: *mut c_int,
) -> c_int;
/// `dcmi_get_device_logic_id(int *device_logic_id, int card_id, int device_id)` (api_075).
pub type dcmi_get_device_logic_id =
    unsafe extern "C" fn(device_logic_id: *mut c_int, card_id: c_int, device_id: c_int) -> c_int;
/// `dcmi_get_device_hbm_info(int card_id, int device_id, struct dcmi_hbm_info *)` (api_047).
pub type dcmi_get_device_hbm_info =
    unsafe extern "C" fn(card_id: c_int, device_id: c_int, hbm_info: *mut DcmiHbmInfo) -> c_int;
/// `dcmi_get_device_utilization_rate(int card_id, int device_id, int input_type,
/// unsigned int *utilization_rate)` (api_052), in percent.
pub type dcmi_get_device_utilization_rate = unsafe extern "C" fn(
    card_id: c_int,
    device_id: c_int,
    input_type: c_int,
    utilization_rate: *mut u32,
) -> c_int;
/// `dcmi_get_device_temperature(int card_id, int device_id, int *temperature)`: the chip's
/// temperature in °C (Atlas 200I A2 reference api_040 in 23.0.0 to 26.0.RC1; HDK A2 DCMI
/// dcmi_043, which adds that device_id 1 reads the MCU instead of the NPU).
pub type dcmi_get_device_temperature =
    unsafe extern "C" fn(card_id: c_int, device_id: c_int, temperature: *mut c_int) -> c_int;
/// `dcmi_get_device_sensor_info(int card_id, int device_id, enum dcmi_manager_sensor_id
/// sensor_id, union dcmi_sensor_info *sensor_info)` (Atlas 200I A2 reference api_053 in
/// 24.1.RC3, topic_0000002481386670 in 25.5.0; listed in the "Ascend 910B DCMI API" of
/// gitcode.com/cann/driver). Optional: older drivers may lack it.
pub type dcmi_get_device_sensor_info = unsafe extern "C" fn(
    card_id: c_int,
    device_id: c_int,
    sensor_id: c_int,
    sensor_info: *mut DcmiSensorInfo,
) -> c_int;
/// `DCMI_THERMAL_THRESHOLD_ID` (9) of `enum dcmi_manager_sensor_id`: answers in `temp[2]`,
/// `temp[0]` the thermal-protection throttling temperature (温保限频温度), `temp[1]` the
/// system reset temperature, °C (api_053).
pub const DCMI_THERMAL_THRESHOLD_ID: c_int = 9;

/// `union dcmi_sensor_info` (api_053): `uchar`, `ushort`, `uint`, `iint`, `signed char
/// temp[2]`, `int ntc_tmp[4]` and `unsigned int data[16]`, the largest (64 bytes).
#[repr(C)]
#[derive(Clone, Copy)]
pub union DcmiSensorInfo {
    pub temp: [i8; 2],
    pub data: [u32; 16],
}

/// `dcmi_get_device_power_info(int card_id, int device_id, int *power)` (api_020), in
/// units of 0.1 W.
pub type dcmi_get_device_power_info =
    unsafe extern "C" fn(card_id: c_int, device_id: c_int, power: *mut c_int) -> c_int;
/// `dcmi_get_device_health(int card_id, int device_id, unsigned int *health)` (api_024).
pub type dcmi_get_device_health =
    unsafe extern "C" fn(card_id: c_int, device_id: c_int, health: *mut u32) -> c_int;

/// `struct dcmi_hbm_info` (api_047): sizes in MB.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DcmiHbmInfo {
    /// Total HBM, MB.
    pub memory_size: u64,
    /// MHz.
    pub freq: u32,
    /// HBM in use, MB.
    pub memory_usage: u64,
    /// HBM temperature, °C.
    pub temp: c_int,
    /// Bandwidth utilisation, percent.
    pub bandwith_util_rate: u32,
}

/// `input_type` of `dcmi_get_device_utilization_rate` (api_052): 2 is AI Core.
pub const DCMI_UTILIZATION_AICORE: c_int = 2;
/// `input_type` 3: AI CPU.
pub const DCMI_UTILIZATION_AICPU: c_int = 3;
/// Most cards a system has (`card_num`: "最大支持64个", api_009).
pub const DCMI_MAX_CARDS: usize = 64;

/// `dcmi_get_device_health`'s states (api_024); several alarms report the worst one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DcmiHealth {
    /// 0: normal.
    Ok,
    /// 1: minor alarm (一般告警).
    Minor,
    /// 2: major alarm (重要告警).
    Major,
    /// 3: critical alarm (紧急告警).
    Critical,
    /// 0xFFFFFFFF: the device does not exist; or a value the documentation does not list.
    Absent(u32),
}

impl DcmiHealth {
    pub fn from_raw(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::Minor,
            2 => Self::Major,
            3 => Self::Critical,
            other => Self::Absent(other),
        }
    }

    /// The documented code (0 to 3, or what the library returned).
    pub fn code(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::Minor => 1,
            Self::Major => 2,
            Self::Critical => 3,
            Self::Absent(v) => v,
        }
    }

    /// A state in which the chip cannot be trusted to serve: a critical alarm, or the
    /// device gone.
    pub fn is_fatal(self) -> bool {
        matches!(self, Self::Critical | Self::Absent(_))
    }
}

/// Why DCMI cannot be used, or a call that failed.
#[derive(Debug, thiserror::Error)]
pub enum DcmiError {
    #[error(
        "libdcmi.so not found (searched {searched}); NPU health and utilisation metrics are off"
    )]
    NotFound { searched: String },
    #[error("{path}: symbol `{symbol}` missing; NPU metrics are off")]
    MissingSymbol { path: PathBuf, symbol: &'static str },
    #[error("{call} returned {code}")]
    Call { call: &'static str, code: c_int },
    #[error("logical NPU {0} is not on any card DCMI lists")]
    UnknownDevice(i32),
}

/// The DCMI function table; function pointers stay valid while it (or a clone) lives.
#[derive(Clone)]
pub struct Dcmi {
    pub init: dcmi_init,
    pub get_card_list: dcmi_get_card_list,
    pub get_device_id_in_card: dcmi_get_device_id_in_card,
    pub get_device_logic_id: dcmi_get_device_logic_id,
    pub get_device_hbm_info: dcmi_get_device_hbm_info,
    pub get_device_utilization_rate: dcmi_get_device_utilization_rate,
    pub get_device_temperature: dcmi_get_device_temperature,
    pub get_device_power_info: dcmi_get_device_power_info,
    pub get_device_health: dcmi_get_device_health,
    pub get_device_sensor_info: Option<dcmi_get_device_sensor_info>,
    path: PathBuf,
    _lib: Arc<Library>,
}

impl fmt::Debug for Dcmi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dcmi").field("path", &self.path).finish()
    }
}

const DCMI_LIB: &str = "libdcmi.so";
/// Where the driver package installs DCMI, and what the deployment mounts into containers.
const DEFAULT_DIR: &str = "/usr/local/dcmi";

/// One chip: where DCMI addresses it and the logical id ACL knows it by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DcmiChip {
    pub card_id: c_int,
    pub device_id: c_int,
    pub logic_id: i32,
}

/// One sample of a chip's readings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DcmiReading {
    pub hbm_total_bytes: u64,
    pub hbm_used_bytes: u64,
    /// Percent.
    pub aicore_util: u32,
    /// Percent.
    pub aicpu_util: u32,
    pub temperature_c: i32,
    pub power_w: f64,
    pub health: DcmiHealth,
}

fn check(code: c_int, call: &'static str) -> Result<(), DcmiError> {
    if code == 0 {
        Ok(())
    } else {
        Err(DcmiError::Call { call, code })
    }
}

impl Dcmi {
    /// Loads `libdcmi.so` from `LD_LIBRARY_PATH`, then `/usr/local/dcmi`, then the dynamic
    /// loader's default path, and calls `dcmi_init`.
    pub fn load() -> Result<Self, DcmiError> {
        let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        dirs.push(PathBuf::from(DEFAULT_DIR));
        Self::load_with(&dirs, true)
    }

    /// Loads only from `dirs` (tests, or a particular installation).
    pub fn load_from<P: AsRef<Path>>(dirs: &[P]) -> Result<Self, DcmiError> {
        let dirs: Vec<PathBuf> = dirs.iter().map(|d| d.as_ref().to_path_buf()).collect();
        Self::load_with(&dirs, false)
    }

    fn load_with(dirs: &[PathBuf], default_loader: bool) -> Result<Self, DcmiError> {
        let mut found = None;
        for d in dirs {
            let p = d.join(DCMI_LIB);
            if !p.is_file() {
                continue;
            }
            // SAFETY: loading runs the library's initialisers; this is the driver's own
            // DCMI (or the test emulator) found where the installation puts it.
            if let Ok(lib) = unsafe { Library::new(&p) } {
                found = Some((p, lib));
                break;
            }
        }
        if found.is_none() && default_loader {
            // SAFETY: as above.
            if let Ok(lib) = unsafe { Library::new(DCMI_LIB) } {
                found = Some((PathBuf::from(DCMI_LIB), lib));
            }
        }
        let Some((path, lib)) = found else {
            let mut s: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            if default_loader {
                s.push("<dynamic loader default path>".into());
            }
            return Err(DcmiError::NotFound {
                searched: s.join(", "),
            });
        };
        /// Resolves `name` as `F`.
        ///
        /// # Safety
        /// `F` must be the symbol's exact function pointer type.
        unsafe fn sym<F: Copy>(
            lib: &Library,
            path: &Path,
            name: &'static str,
        ) -> Result<F, DcmiError> {
            // SAFETY: forwarded from the caller.
            unsafe { lib.get::<F>(name.as_bytes()) }
                .map(|s| *s)
                .map_err(|_| DcmiError::MissingSymbol {
                    path: path.to_path_buf(),
                    symbol: name,
                })
        }
        // SAFETY: every type below is the documented signature of the symbol named.
        let dcmi = unsafe {
            let get_card_list = sym::<dcmi_get_card_list>(&lib, &path, "dcmi_get_card_list")
                .or_else(|_| {
                    sym::<dcmi_get_card_num_list>(&lib, &path, "dcmi_get_card_num_list")
                })?;
            Dcmi {
                init: sym(&lib, &path, "dcmi_init")?,
                get_card_list,
                get_device_id_in_card: sym(&lib, &path, "dcmi_get_device_id_in_card")?,
                get_device_logic_id: sym(&lib, &path, "dcmi_get_device_logic_id")?,
                get_device_hbm_info: sym(&lib, &path, "dcmi_get_device_hbm_info")?,
                get_device_utilization_rate: sym(&lib, &path, "dcmi_get_device_utilization_rate")?,
                get_device_temperature: sym(&lib, &path, "dcmi_get_device_temperature")?,
                get_device_power_info: sym(&lib, &path, "dcmi_get_device_power_info")?,
                get_device_health: sym(&lib, &path, "dcmi_get_device_health")?,
                get_device_sensor_info: sym(&lib, &path, "dcmi_get_device_sensor_info").ok(),
                path,
                _lib: Arc::new(lib),
            }
        };
        // SAFETY: no preconditions; repeated calls are allowed.
        check(unsafe { (dcmi.init)() }, "dcmi_init")?;
        Ok(dcmi)
    }

    /// The library loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every NPU chip of every card, with its logical id.
    pub fn chips(&self) -> Result<Vec<DcmiChip>, DcmiError> {
        let mut cards: [c_int; DCMI_MAX_CARDS] = [0; DCMI_MAX_CARDS];
        let mut n: c_int = 0;
        // SAFETY: `cards` holds `list_len` ints; `n` is writable.
        check(
            unsafe { (self.get_card_list)(&mut n, cards.as_mut_ptr(), cards.len() as c_int) },
            "dcmi_get_card_list",
        )?;
        let mut chips = Vec::new();
        for &card_id in cards.iter().take((n.max(0) as usize).min(DCMI_MAX_CARDS)) {
            let (mut max, mut mcu, mut cpu) = (0, -1, -1);
            // SAFETY: three writable ints.
            check(
                unsafe { (self.get_device_id_in_card)(card_id, &mut max, &mut mcu, &mut cpu) },
                "dcmi_get_device_id_in_card",
            )?;
            for device_id in 0..max.max(0) {
                let mut logic: c_int = -1;
                // SAFETY: one writable int.
                check(
                    unsafe { (self.get_device_logic_id)(&mut logic, card_id, device_id) },
                    "dcmi_get_device_logic_id",
                )?;
                chips.push(DcmiChip {
                    card_id,
                    device_id,
                    logic_id: logic,
                });
            }
        }
        Ok(chips)
    }

    /// The chip with logical id `logic_id`.
    pub fn chip(&self, logic_id: i32) -> Result<DcmiChip, DcmiError> {
        self.chips()?
            .into_iter()
            .find(|c| c.logic_id == logic_id)
            .ok_or(DcmiError::UnknownDevice(logic_id))
    }

    /// The chip's own thermal thresholds, °C: (throttling, system reset).
    pub fn thermal_thresholds(&self, chip: DcmiChip) -> Result<(i32, i32), DcmiError> {
        let f = self
            .get_device_sensor_info
            .ok_or_else(|| DcmiError::MissingSymbol {
                path: self.path.clone(),
                symbol: "dcmi_get_device_sensor_info",
            })?;
        let mut info = DcmiSensorInfo { data: [0; 16] };
        // SAFETY: `info` is a writable union of the documented size.
        check(
            unsafe {
                f(
                    chip.card_id,
                    chip.device_id,
                    DCMI_THERMAL_THRESHOLD_ID,
                    &mut info,
                )
            },
            "dcmi_get_device_sensor_info(DCMI_THERMAL_THRESHOLD_ID)",
        )?;
        // SAFETY: this sensor answers in `temp` (api_053); any bytes are valid i8s.
        let t = unsafe { info.temp };
        Ok((i32::from(t[0]), i32::from(t[1])))
    }

    /// One reading of every value of `chip`.
    pub fn read(&self, chip: DcmiChip) -> Result<DcmiReading, DcmiError> {
        let (c, d) = (chip.card_id, chip.device_id);
        let mut hbm = DcmiHbmInfo::default();
        let (mut aicore, mut aicpu, mut health) = (0u32, 0u32, 0u32);
        let (mut temp, mut power): (c_int, c_int) = (0, 0);
        // SAFETY: each out-pointer is a valid, writable value of the documented type.
        unsafe {
            check(
                (self.get_device_hbm_info)(c, d, &mut hbm),
                "dcmi_get_device_hbm_info",
            )?;
            check(
                (self.get_device_utilization_rate)(c, d, DCMI_UTILIZATION_AICORE, &mut aicore),
                "dcmi_get_device_utilization_rate(AI Core)",
            )?;
            check(
                (self.get_device_utilization_rate)(c, d, DCMI_UTILIZATION_AICPU, &mut aicpu),
                "dcmi_get_device_utilization_rate(AI CPU)",
            )?;
            check(
                (self.get_device_temperature)(c, d, &mut temp),
                "dcmi_get_device_temperature",
            )?;
            check(
                (self.get_device_power_info)(c, d, &mut power),
                "dcmi_get_device_power_info",
            )?;
            check(
                (self.get_device_health)(c, d, &mut health),
                "dcmi_get_device_health",
            )?;
        }
        const MB: u64 = 1 << 20;
        Ok(DcmiReading {
            hbm_total_bytes: hbm.memory_size.saturating_mul(MB),
            hbm_used_bytes: hbm.memory_usage.saturating_mul(MB),
            aicore_util: aicore,
            aicpu_util: aicpu,
            temperature_c: temp,
            power_w: f64::from(power) / 10.0,
            health: DcmiHealth::from_raw(health),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hbm_info_layout_is_c() {
        // u64, u32 (+4 padding), u64, int, unsigned int.
        assert_eq!(std::mem::size_of::<DcmiHbmInfo>(), 32);
        assert_eq!(std::mem::offset_of!(DcmiHbmInfo, memory_usage), 16);
    }

    #[test]
    fn sensor_info_is_the_size_of_its_largest_member() {
        assert_eq!(std::mem::size_of::<DcmiSensorInfo>(), 64);
        assert_eq!(std::mem::align_of::<DcmiSensorInfo>(), 4);
    }

    #[test]
    fn health_codes() {
        assert!(!DcmiHealth::from_raw(2).is_fatal());
        assert!(DcmiHealth::from_raw(3).is_fatal());
        assert!(DcmiHealth::from_raw(0xFFFF_FFFF).is_fatal());
        assert_eq!(DcmiHealth::from_raw(1).code(), 1);
    }

    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Dcmi::load_from(&[dir.path()]).expect_err("no libdcmi.so there");
        assert!(e.to_string().contains("libdcmi.so not found"), "{e}");
    }
}
