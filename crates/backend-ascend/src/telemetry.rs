//! Device telemetry, what `npu-smi info` shows (HBM, utilisation, temperature, power,
//! health), read through DCMI: the safe face of `ascend_sys::dcmi`, so the binary reaches it
//! without depending on the FFI crate.

pub use ascend_sys::dcmi::{Dcmi, DcmiChip, DcmiError, DcmiHealth, DcmiReading};
