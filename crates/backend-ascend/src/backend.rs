//! The backend on one device: its state, construction, accessors, allocation, and copies
//! between host and device.

use std::sync::{Arc, Mutex};

use ascend_sys::types::aclrtMemcpyKind;
use ascend_sys::{AttentionApi, Cann};
use half::bf16;
use qwen3_backend::{Backend, BackendError, HostData, Result};

use crate::attn_rules::{self, AttentionPath};
use crate::desc::Dt;
use crate::mem::{self, dev_err, Device, PoolStats};
use crate::rope::RopeTable;
use crate::{shape_err, unsupported, AscendOptions, AscendTensor, AttentionBackend};

/// The Ascend backend on one device (one rank).
pub struct AscendBackend {
    pub(crate) dev: Arc<Device>,
    pub(crate) opts: AscendOptions,
    pub(crate) attention_api: Option<AttentionApi>,
    /// How attention runs and why (the KV cache's dtype follows it).
    pub(crate) attention_path: AttentionPath,
    pub(crate) rope: Mutex<Option<RopeTable>>,
    pub(crate) mask: Mutex<Option<AscendTensor>>,
    /// Captured decode steps by padded token count (the LM head runs on every padded row;
    /// sampling reads the real ones).
    pub(crate) graphs: Mutex<std::collections::HashMap<usize, Arc<mem::CapturedStep>>>,
    /// Token count of the step being captured.
    pub(crate) capturing: Mutex<Option<usize>>,
    /// This step's (real, padded) token counts when it was padded to a captured size.
    pub(crate) padding: Mutex<Option<(usize, usize)>>,
    /// Set by the HCCL communicator: collectives are not captured.
    pub(crate) graphs_disabled: std::sync::atomic::AtomicBool,
    /// Decode steps run by replaying a captured graph.
    pub(crate) replays: std::sync::atomic::AtomicU64,
    /// The decode graph mode was logged (`graph_full.rs`).
    pub(crate) graph_kind_logged: std::sync::atomic::AtomicBool,
    /// The start-up self-check of FIA V4 (`fia_check.rs`).
    pub(crate) fia_v4_check: Option<crate::fia_check::FiaV4Check>,
    /// When the step being run started.
    pub(crate) step_started: Mutex<Option<std::time::Instant>>,
}

impl AscendBackend {
    /// Opens `device` and binds its context to the calling thread.
    pub fn open(cann: Arc<Cann>, device: i32) -> Result<Self> {
        Self::with_options(cann, device, AscendOptions::default())
    }

    pub fn with_options(cann: Arc<Cann>, device: i32, mut opts: AscendOptions) -> Result<Self> {
        // FIA V4 gained `learnableSink` after the 8.3.RC1 alpha builds: there, the V4
        // symbol has another signature, so V3 is used.
        let pre_release_v4 = cann
            .cann_version()
            .is_some_and(|v| v.to_ascii_lowercase().contains("alpha"));
        let exported = cann.ops.attention_apis();
        let attention_api = match opts.attention_api {
            Some(forced) if forced != AttentionApi::IfaV4PfaV3 => {
                exported.into_iter().find(|a| *a == forced)
            }
            _ => exported.into_iter().find(|a| {
                *a != AttentionApi::IfaV4PfaV3 && !(pre_release_v4 && *a == AttentionApi::FiaV4)
            }),
        };
        let version = cann.cann_version();
        let attention_path = if opts.kv_cache_f32 {
            AttentionPath::EagerF32 {
                why: "F32 KV cache asked for; fused attention takes no F32".into(),
            }
        } else if !attn_rules::release_has_tnd_paged(version.as_deref()) {
            // Older releases refuse TND with a paged cache: attend as matmul + softmax.
            opts.kv_cache_f32 = true;
            let why = format!(
                "CANN {} predates fused attention in layout TND with a paged KV cache (8.3.RC1+, vllm-ascend issue 4373)",
                version.as_deref().unwrap_or("of unknown version")
            );
            tracing::warn!(
                "attention: {why}; the KV cache is F32 and attention is matmul + softmax"
            );
            AttentionPath::EagerF32 { why }
        } else {
            match attention_api {
                Some(api) => AttentionPath::Fused {
                    api,
                    cann: version.unwrap_or_default(),
                },
                None => AttentionPath::Unavailable,
            }
        };
        if opts.attention_backend == AttentionBackend::Custom {
            if opts.kv_cache_f32 {
                return Err(unsupported(
                    "--attention-backend custom attends over the BF16 KV cache only (this model runs an F32 cache)",
                ));
            }
            crate::custom_kernels::kernels_api(&cann)?;
        }
        let attention_path = match (opts.attention_backend, attention_path) {
            (
                AttentionBackend::Custom,
                AttentionPath::Fused { .. } | AttentionPath::Unavailable,
            ) => AttentionPath::Custom,
            (_, path) => path,
        };
        let dev = Device::open(cann, device)?;
        let forced = opts.attention_api.is_some();
        let mut b = Self {
            dev,
            opts,
            attention_api,
            attention_path,
            rope: Mutex::new(None),
            mask: Mutex::new(None),
            graphs: Mutex::new(std::collections::HashMap::new()),
            capturing: Mutex::new(None),
            padding: Mutex::new(None),
            graphs_disabled: std::sync::atomic::AtomicBool::new(false),
            replays: std::sync::atomic::AtomicU64::new(0),
            graph_kind_logged: std::sync::atomic::AtomicBool::new(false),
            fia_v4_check: None,
            step_started: Mutex::new(None),
        };
        b.settle_fia_v4(forced);
        Ok(b)
    }

    /// Counts a step and starts timing the host's part of it.
    pub(crate) fn start_step_timer(&self, decode: bool) {
        use crate::host_calls::{bump, set_decode, Counter};
        set_decode(decode);
        bump(Counter::Step);
        if let Ok(mut s) = self.step_started.lock() {
            *s = Some(std::time::Instant::now());
        }
    }

    /// Adds the time since the step started (when its tokens are back).
    pub(crate) fn end_step_timer(&self) {
        use crate::host_calls::{add, Counter};
        if let Some(t0) = self.step_started.lock().ok().and_then(|mut s| s.take()) {
            add(Counter::StepNs, t0.elapsed().as_nanos() as u64);
        }
    }

    pub fn cann(&self) -> &Arc<Cann> {
        &self.dev.cann
    }

    pub fn device_id(&self) -> i32 {
        self.dev.id
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.dev.stats()
    }

    /// Returns the pool's cached buffers to the driver.
    pub fn empty_cache(&self) -> Result<()> {
        self.dev.empty_cache()
    }

    /// Waits for all queued work.
    pub fn synchronize(&self) -> Result<()> {
        self.dev.synchronize()
    }

    /// The attention operator in use (the newest fused-infer-attention version exported).
    pub fn attention_api(&self) -> Option<AttentionApi> {
        self.attention_api
    }

    /// How attention runs (fused, or matmul + softmax over an F32 cache) and why.
    pub fn attention_path(&self) -> &AttentionPath {
        &self.attention_path
    }

    pub(crate) fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    pub(crate) fn cann_ref(&self) -> &Cann {
        &self.dev.cann
    }

    pub(crate) fn empty(&self, dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        Ok(AscendTensor {
            buf: self.dev.alloc(n * dt.size())?,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    /// A tensor an eager region writes for the next graph segment (see
    /// [`Device::alloc_region_output`]).
    pub(crate) fn empty_region_output(&self, dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        Ok(AscendTensor {
            buf: self.dev.alloc_region_output(n * dt.size())?,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    pub(crate) fn upload_bytes(
        &self,
        bytes: Vec<u8>,
        dt: Dt,
        shape: &[usize],
    ) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        let t = AscendTensor {
            buf: self.dev.alloc_input(n * dt.size())?,
            shape: shape.to_vec(),
            dt,
            quant: None,
        };
        self.dev.upload_async(&t.buf, &bytes)?;
        Ok(t)
    }

    pub(crate) fn upload_i64(&self, v: &[i64], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::I64,
            shape,
        )
    }

    pub(crate) fn upload_i32(&self, v: &[i32], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::I32,
            shape,
        )
    }

    pub(crate) fn upload_f32(&self, v: &[f32], shape: &[usize]) -> Result<AscendTensor> {
        self.upload_bytes(
            v.iter().flat_map(|x| x.to_ne_bytes()).collect(),
            Dt::F32,
            shape,
        )
    }

    /// Values of `v` (as `dt`, BF16 or F32) in a new tensor.
    pub(crate) fn upload_float(&self, v: &[f32], dt: Dt, shape: &[usize]) -> Result<AscendTensor> {
        match dt {
            Dt::BF16 => self.upload_bytes(
                v.iter()
                    .flat_map(|&x| bf16::from_f32(x).to_bits().to_ne_bytes())
                    .collect(),
                Dt::BF16,
                shape,
            ),
            _ => self.upload_f32(v, shape),
        }
    }

    pub(crate) fn upload_impl(&self, data: HostData<'_>, shape: &[usize]) -> Result<AscendTensor> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(shape_err(
                "upload",
                format!("{} elements for shape {shape:?}", data.len()),
            ));
        }
        let (dt, bytes): (Dt, &[u8]) = match data {
            HostData::F32(v) => (Dt::F32, bytemuck::cast_slice(v)),
            HostData::BF16(v) => (Dt::BF16, bytemuck::cast_slice(v)),
        };
        // Weights live for the model's lifetime: exact-size driver allocations.
        let buf = self.dev.alloc_direct(bytes.len(), mem::MemKind::Weights)?;
        self.dev.upload_blocking(&buf, bytes)?;
        Ok(AscendTensor {
            buf,
            shape: shape.to_vec(),
            dt,
            quant: None,
        })
    }

    pub(crate) fn to_host_f32_impl(&self, t: &AscendTensor) -> Result<Vec<f32>> {
        self.finish_graph_step()?;
        match t.dt {
            Dt::F32 => {
                let mut bytes = vec![0u8; t.numel() * 4];
                self.dev.download(t.buf.ptr, t.buf.bytes, &mut bytes)?;
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
            Dt::BF16 => {
                let f = self
                    .cast(t, Dt::F32)?
                    .ok_or_else(|| BackendError::Device("cast".into()))?;
                self.to_host_f32(&f)
            }
            other => Err(unsupported(&format!("to_host_f32 of {other:?}"))),
        }
    }

    /// Queues a device-to-device copy of a whole tensor into a new one.
    pub fn clone_tensor(&self, t: &AscendTensor) -> Result<AscendTensor> {
        let out = self.empty(t.dt, &t.shape)?;
        let bytes = t.numel() * t.dt.size();
        if bytes > 0 {
            self.dev.bind()?;
            // SAFETY: both buffers hold at least `bytes` bytes on this device.
            let rc = unsafe {
                (self.dev.cann.acl.aclrtMemcpyAsync)(
                    out.buf.ptr.0,
                    out.buf.bytes,
                    t.buf.ptr.0,
                    bytes,
                    aclrtMemcpyKind::ACL_MEMCPY_DEVICE_TO_DEVICE,
                    self.dev.stream.0,
                )
            };
            self.dev
                .cann
                .check(rc, "aclrtMemcpyAsync")
                .map_err(dev_err)?;
        }
        Ok(out)
    }
}
