//! A model directory's safetensors weights through mmap: one file or shards listed by
//! `model.safetensors.index.json`. Headers are validated at open so a truncated or corrupt
//! download fails at start-up naming the file; tensor bytes are copied out only when loaded,
//! and a tensor-parallel rank copies only its slice.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde_json::Value;

pub use crate::error::WeightError;

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";
/// Elements per rayon task when converting one contiguous run; small enough to spread a
/// large tensor over all cores, large enough that scheduling costs nothing next to the copy.
const PAR_CHUNK: usize = 1 << 16;

/// Element type of a tensor as stored on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    BF16,
    F16,
    F32,
    I32,
    I64,
    U8,
    I8,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::BF16 | DType::F16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::I64 => 8,
        }
    }

    fn from_safetensors(d: Dtype) -> Option<Self> {
        Some(match d {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            Dtype::F32 => DType::F32,
            Dtype::I32 => DType::I32,
            Dtype::I64 => DType::I64,
            Dtype::U8 => DType::U8,
            Dtype::I8 => DType::I8,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Spelled as safetensors headers spell them.
        f.write_str(match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::I32 => "I32",
            DType::I64 => "I64",
            DType::U8 => "U8",
            DType::I8 => "I8",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

struct WeightFile {
    path: PathBuf,
    mmap: Mmap,
}

/// Where one tensor lives. The dtype stays safetensors' until asked for, so a model with a
/// tensor of a dtype we do not read (say FP8 scales) still opens and fails only if it is used.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range within the file's mmap.
    start: usize,
    end: usize,
}

/// The floating-point dtypes the float loaders convert from.
#[derive(Clone, Copy)]
enum Float {
    BF16,
    F16,
    F32,
}

impl Float {
    fn size(self) -> usize {
        match self {
            Float::BF16 | Float::F16 => 2,
            Float::F32 => 4,
        }
    }
}

/// Equally sized runs of elements in a tensor's data: `count` runs of `elems` elements, the
/// first at byte `first`, each `stride` bytes after the previous.
#[derive(Clone, Copy)]
struct Runs {
    first: usize,
    count: usize,
    elems: usize,
    stride: usize,
}

/// A model directory's tensors, mmapped. Shareable across rank threads.
pub struct WeightStore {
    dir: PathBuf,
    files: Vec<WeightFile>,
    tensors: BTreeMap<String, Entry>,
    bytes_read: AtomicU64,
}

impl fmt::Debug for WeightStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightStore")
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|w| &w.path).collect::<Vec<_>>(),
            )
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl WeightStore {
    /// Opens `dir`: `model.safetensors.index.json` when present, else `model.safetensors`,
    /// else every `*.safetensors` file. Each file is mmapped once and its header validated.
    pub fn open(dir: &Path) -> Result<Self, WeightError> {
        let index = dir.join(INDEX_FILE);
        let single = dir.join(SINGLE_FILE);
        let mut store = WeightStore {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
            bytes_read: AtomicU64::new(0),
        };
        if index.is_file() {
            store.open_index(&index)?;
        } else if single.is_file() {
            store.add_file(&single)?;
        } else {
            let rd = std::fs::read_dir(dir).map_err(|source| WeightError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
            let mut paths = Vec::new();
            for ent in rd {
                let ent = ent.map_err(|source| WeightError::Io {
                    path: dir.to_path_buf(),
                    source,
                })?;
                let path = ent.path();
                if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
                    paths.push(path);
                }
            }
            if paths.is_empty() {
                return Err(WeightError::NoWeights {
                    dir: dir.to_path_buf(),
                });
            }
            // Sorted so that which file wins a duplicated name does not depend on the OS.
            paths.sort();
            for p in &paths {
                store.add_file(p)?;
            }
        }
        tracing::debug!(
            dir = %dir.display(),
            files = store.files.len(),
            tensors = store.tensors.len(),
            "opened safetensors weights"
        );
        Ok(store)
    }

    fn open_index(&mut self, index: &Path) -> Result<(), WeightError> {
        let bad = |reason: String| WeightError::BadIndex {
            path: index.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(index).map_err(|source| WeightError::Io {
            path: index.to_path_buf(),
            source,
        })?;
        let json: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("it has no `weight_map` object".into()))?;

        // Shard files in order of first mention, each with the first tensor naming it.
        let mut order: Vec<(&str, &str)> = Vec::new();
        let mut wanted: Vec<(&str, &str)> = Vec::with_capacity(map.len());
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("the file for tensor `{tensor}` is not a string")))?;
            let plain = Path::new(file)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(bad(format!(
                    "shard file {file:?} (for tensor `{tensor}`) is not a path inside the model directory"
                )));
            }
            if !order.iter().any(|(f, _)| *f == file) {
                order.push((file, tensor));
            }
            wanted.push((tensor, file));
        }

        let dir = index.parent().unwrap_or(Path::new("."));
        let mut file_ids: HashMap<&str, usize> = HashMap::new();
        let mut headers: Vec<HashMap<String, Entry>> = Vec::new();
        for (file, tensor) in &order {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(WeightError::MissingShard {
                    index: index.to_path_buf(),
                    file: file.to_string(),
                    tensor: tensor.to_string(),
                });
            }
            file_ids.insert(file, headers.len());
            headers.push(self.map_file(&path)?);
        }

        // The index decides which shard a tensor is read from...
        for (tensor, file) in wanted {
            let entry = file_ids
                .get(file)
                .and_then(|&i| headers.get_mut(i))
                .and_then(|h| h.remove(tensor));
            let Some(entry) = entry else {
                return Err(WeightError::IndexMismatch {
                    index: index.to_path_buf(),
                    tensor: tensor.to_string(),
                    file: file.to_string(),
                });
            };
            self.tensors.insert(tensor.to_string(), entry);
        }
        // ...and tensors the index leaves out are still served from the shards, as vLLM
        // reads every tensor of the files the index names.
        for header in headers {
            for (name, entry) in header {
                self.tensors.entry(name).or_insert(entry);
            }
        }
        Ok(())
    }

    fn add_file(&mut self, path: &Path) -> Result<(), WeightError> {
        for (name, entry) in self.map_file(path)? {
            self.tensors.entry(name).or_insert(entry);
        }
        Ok(())
    }

    /// Maps `path`, validates its header and returns its tensors.
    fn map_file(&mut self, path: &Path) -> Result<HashMap<String, Entry>, WeightError> {
        let io = |source| WeightError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len < 8 {
            return Err(corrupt(
                path,
                format!("the file is {len} bytes, too short for a header; it is truncated"),
            ));
        }
        // SAFETY: the map is read-only and lives as long as the store that hands out copies
        // of it. A file changed on disk while mapped can change or fault the bytes we read;
        // every mmap-based loader (safetensors, vLLM) accepts that for model files.
        #[allow(unsafe_code)]
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (header_len, meta) =
            SafeTensors::read_metadata(&mmap).map_err(|e| corrupt(path, explain(&e, &mmap)))?;
        let data_start = 8 + header_len;
        let id = self.files.len();
        let entries = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    file: id,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                    end: data_start + info.data_offsets.1,
                };
                (name, entry)
            })
            .collect();
        self.files.push(WeightFile {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(entries)
    }

    /// The directory the weights were opened from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names in sorted order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Dtype and shape of `name`; an error if missing or of a dtype we do not read.
    pub fn info(&self, name: &str) -> Result<TensorInfo, WeightError> {
        let e = self.entry(name)?;
        Ok(TensorInfo {
            dtype: self.dtype(name, e)?,
            shape: e.shape.clone(),
        })
    }

    /// Bytes of tensor data copied out of the mmaps so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Whole tensor as bf16 (BF16 copied as is, F16/F32 rounded to nearest even), checked
    /// against `expected_shape`.
    pub fn load_bf16(
        &self,
        name: &str,
        expected_shape: &[usize],
    ) -> Result<Vec<bf16>, WeightError> {
        let (e, float) = self.float_entry(name, expected_shape)?;
        self.read(e, float, whole(e), decode_bf16)
    }

    /// Whole tensor as f32 (exact from BF16/F16), checked against `expected_shape`.
    pub fn load_f32(&self, name: &str, expected_shape: &[usize]) -> Result<Vec<f32>, WeightError> {
        let (e, float) = self.float_entry(name, expected_shape)?;
        self.read(e, float, whole(e), decode_f32)
    }

    /// Items `[start, start + len)` along `dim` of a tensor of `full_shape` (rows for dim 0,
    /// columns for dim 1 of a 2-D tensor), as bf16, reading only those bytes: what a
    /// tensor-parallel rank needs. The result is row-major with `dim` shortened to `len`.
    pub fn load_bf16_slice(
        &self,
        name: &str,
        full_shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Vec<bf16>, WeightError> {
        let mut out = Vec::new();
        self.append_bf16_slice(name, full_shape, dim, start, len, &mut out)?;
        Ok(out)
    }

    /// As [`Self::load_bf16_slice`], appended to `out` (weights stacked at load are read
    /// straight into their stack, not copied there).
    pub fn append_bf16_slice(
        &self,
        name: &str,
        full_shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
        out: &mut Vec<bf16>,
    ) -> Result<(), WeightError> {
        let (e, float) = self.float_entry(name, full_shape)?;
        let runs = slice_runs(name, e, float.size(), dim, start, len)?;
        self.read_into(e, float, runs, decode_bf16, out)
    }

    /// As [`Self::load_bf16_slice`], as f32.
    pub fn load_f32_slice(
        &self,
        name: &str,
        full_shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<Vec<f32>, WeightError> {
        let mut out = Vec::new();
        self.append_f32_slice(name, full_shape, dim, start, len, &mut out)?;
        Ok(out)
    }

    /// As [`Self::load_f32_slice`], appended to `out`.
    pub fn append_f32_slice(
        &self,
        name: &str,
        full_shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), WeightError> {
        let (e, float) = self.float_entry(name, full_shape)?;
        let runs = slice_runs(name, e, float.size(), dim, start, len)?;
        self.read_into(e, float, runs, decode_f32, out)
    }

    /// Raw little-endian bytes of a tensor of any supported dtype (for packed int32
    /// quantized weights), checked against `expected_shape`.
    pub fn load_raw(
        &self,
        name: &str,
        expected_shape: &[usize],
    ) -> Result<(DType, Vec<u8>), WeightError> {
        let e = self.entry(name)?;
        let dtype = self.dtype(name, e)?;
        self.check_shape(name, e, expected_shape)?;
        let bytes = self.data(e)?.to_vec();
        self.bytes_read
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok((dtype, bytes))
    }

    /// Raw bytes of items `[start, start + len)` along `dim` of a tensor of `full_shape`, any
    /// supported dtype (packed int32 quantized weights sliced for a tensor-parallel rank).
    pub fn load_raw_slice(
        &self,
        name: &str,
        full_shape: &[usize],
        dim: usize,
        start: usize,
        len: usize,
    ) -> Result<(DType, Vec<u8>), WeightError> {
        let e = self.entry(name)?;
        let dtype = self.dtype(name, e)?;
        self.check_shape(name, e, full_shape)?;
        let size = dtype.size_bytes();
        let runs = slice_runs(name, e, size, dim, start, len)?;
        let src = self.data(e)?;
        let run_bytes = runs.elems * size;
        let mut out = Vec::with_capacity(runs.count * run_bytes);
        for r in 0..runs.count {
            let off = runs.first + r * runs.stride;
            let run = src
                .get(off..off + run_bytes)
                .ok_or_else(|| corrupt(&self.path(e), "a slice lies outside its tensor".into()))?;
            out.extend_from_slice(run);
        }
        self.bytes_read
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok((dtype, out))
    }

    fn entry(&self, name: &str) -> Result<&Entry, WeightError> {
        self.tensors
            .get(name)
            .ok_or_else(|| WeightError::MissingTensor {
                tensor: name.to_string(),
                dir: self.dir.clone(),
            })
    }

    fn path(&self, e: &Entry) -> PathBuf {
        self.files
            .get(e.file)
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }

    fn dtype(&self, name: &str, e: &Entry) -> Result<DType, WeightError> {
        DType::from_safetensors(e.dtype).ok_or_else(|| WeightError::UnsupportedDType {
            tensor: name.to_string(),
            dtype: e.dtype.to_string(),
            file: self.path(e),
        })
    }

    fn check_shape(&self, name: &str, e: &Entry, expected: &[usize]) -> Result<(), WeightError> {
        if e.shape == expected {
            Ok(())
        } else {
            Err(WeightError::ShapeMismatch {
                tensor: name.to_string(),
                expected: expected.to_vec(),
                actual: e.shape.clone(),
                file: self.path(e),
            })
        }
    }

    fn float_entry(&self, name: &str, shape: &[usize]) -> Result<(&Entry, Float), WeightError> {
        let e = self.entry(name)?;
        let float = match self.dtype(name, e)? {
            DType::BF16 => Float::BF16,
            DType::F16 => Float::F16,
            DType::F32 => Float::F32,
            dtype => {
                return Err(WeightError::NotFloat {
                    tensor: name.to_string(),
                    dtype,
                })
            }
        };
        self.check_shape(name, e, shape)?;
        Ok((e, float))
    }

    /// The tensor's bytes in its file's mmap.
    fn data(&self, e: &Entry) -> Result<&[u8], WeightError> {
        // In range by the header validation at open; checked anyway rather than trusted.
        self.files
            .get(e.file)
            .and_then(|f| f.mmap.get(e.start..e.end))
            .ok_or_else(|| corrupt(&self.path(e), "a tensor lies outside the file".into()))
    }

    /// Converts `runs` of `e`'s data into a new vector.
    fn read<T: Copy + Default + Send>(
        &self,
        e: &Entry,
        float: Float,
        runs: Runs,
        decode: fn(Float, &[u8], &mut [T]),
    ) -> Result<Vec<T>, WeightError> {
        let mut out = Vec::new();
        self.read_into(e, float, runs, decode, &mut out)?;
        Ok(out)
    }

    /// Converts `runs` of `e`'s data onto the end of `out`, in parallel for big reads.
    fn read_into<T: Copy + Default + Send>(
        &self,
        e: &Entry,
        float: Float,
        runs: Runs,
        decode: fn(Float, &[u8], &mut [T]),
        out: &mut Vec<T>,
    ) -> Result<(), WeightError> {
        let src = self.data(e)?;
        let size = float.size();
        let total = runs.count * runs.elems;
        if total == 0 {
            return Ok(());
        }
        // The last run must end inside the tensor; then every indexing below is in range.
        let last_end = (runs.count - 1) * runs.stride + runs.first + runs.elems * size;
        if last_end > src.len() {
            return Err(corrupt(
                &self.path(e),
                "a slice lies outside its tensor".into(),
            ));
        }
        let at = out.len();
        out.resize(at + total, T::default());
        let dst = &mut out[at..];
        // One contiguous run is cut into PAR_CHUNK pieces so it still spreads over threads.
        let (chunk, step) = if runs.count == 1 {
            (PAR_CHUNK, PAR_CHUNK * size)
        } else {
            (runs.elems, runs.stride)
        };
        let convert = |(i, dst): (usize, &mut [T])| {
            let off = runs.first + i * step;
            decode(float, &src[off..off + dst.len() * size], dst);
        };
        if total >= PAR_CHUNK {
            dst.par_chunks_mut(chunk).enumerate().for_each(convert);
        } else {
            dst.chunks_mut(chunk).enumerate().for_each(convert);
        }
        self.bytes_read
            .fetch_add((total * size) as u64, Ordering::Relaxed);
        Ok(())
    }
}

fn whole(e: &Entry) -> Runs {
    Runs {
        first: 0,
        count: 1,
        elems: e.shape.iter().product(),
        stride: 0,
    }
}

/// The runs holding `[start, start + len)` along `dim`: one run per index of the dims before
/// `dim`, merged into one when they are adjacent.
fn slice_runs(
    name: &str,
    e: &Entry,
    size: usize,
    dim: usize,
    start: usize,
    len: usize,
) -> Result<Runs, WeightError> {
    let extent = e.shape.get(dim).copied();
    let in_range = extent.is_some_and(|n| start.checked_add(len).is_some_and(|end| end <= n));
    let Some(extent) = extent.filter(|_| in_range) else {
        return Err(WeightError::BadSlice {
            tensor: name.to_string(),
            shape: e.shape.clone(),
            dim,
            start,
            len,
        });
    };
    // Products of the validated shape cannot overflow: safetensors checked them at open.
    let outer: usize = e.shape[..dim].iter().product();
    let inner: usize = e.shape[dim + 1..].iter().product();
    let first = start * inner * size;
    if outer == 1 || len == extent {
        Ok(Runs {
            first,
            count: 1,
            elems: outer * len * inner,
            stride: 0,
        })
    } else {
        Ok(Runs {
            first,
            count: outer,
            elems: len * inner,
            stride: extent * inner * size,
        })
    }
}

fn decode_bf16(float: Float, src: &[u8], dst: &mut [bf16]) {
    match float {
        Float::BF16 => {
            // A plain copy: `dst` is aligned, `src` (in the mmap) may not be.
            bytemuck::cast_slice_mut::<bf16, u8>(dst).copy_from_slice(src);
            if cfg!(target_endian = "big") {
                for x in dst.iter_mut() {
                    *x = bf16::from_bits(u16::from_le(x.to_bits()));
                }
            }
        }
        Float::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                let h = f16::from_bits(u16::from_le_bytes([c[0], c[1]]));
                // f16 -> f32 is exact, so this is one rounding, to nearest even.
                *d = bf16::from_f32(h.to_f32());
            }
        }
        Float::F32 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *d = bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
            }
        }
    }
}

fn decode_f32(float: Float, src: &[u8], dst: &mut [f32]) {
    match float {
        Float::BF16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Float::F16 => {
            for (d, c) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *d = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
            }
        }
        Float::F32 => {
            bytemuck::cast_slice_mut::<f32, u8>(dst).copy_from_slice(src);
            if cfg!(target_endian = "big") {
                for x in dst.iter_mut() {
                    *x = f32::from_bits(u32::from_le(x.to_bits()));
                }
            }
        }
    }
}

fn corrupt(path: &Path, reason: String) -> WeightError {
    WeightError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// What a header validation error means for the user, with sizes where they help.
fn explain(e: &SafeTensorError, buf: &[u8]) -> String {
    let header_len = buf
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    let after_len = buf.len().saturating_sub(8);
    match e {
        SafeTensorError::HeaderTooSmall => {
            "the file is too short for a header; it is truncated".into()
        }
        SafeTensorError::HeaderTooLarge => format!(
            "the header length field says {header_len} bytes, over the 100 MB limit; \
             this is not a safetensors file"
        ),
        SafeTensorError::InvalidHeaderLength => format!(
            "the header length field says {header_len} bytes but only {after_len} follow; \
             the file is truncated (or not a safetensors file)"
        ),
        SafeTensorError::InvalidHeader(err) => format!("the header is not UTF-8: {err}"),
        SafeTensorError::InvalidHeaderStart => "the header is not a JSON object".into(),
        SafeTensorError::InvalidHeaderDeserialization(err) => {
            format!("the header is not valid safetensors JSON: {err}")
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let have = after_len.saturating_sub(usize::try_from(header_len).unwrap_or(usize::MAX));
            match declared_data_len(buf, header_len) {
                Some(want) if have < want => format!(
                    "the header describes {want} bytes of tensor data but the file holds only \
                     {have}; it is truncated"
                ),
                Some(want) => format!(
                    "the header describes {want} bytes of tensor data but the file holds \
                     {have}; it has trailing bytes"
                ),
                None => "the tensor data does not match the header's size".into(),
            }
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}` has data offsets that overlap or leave gaps")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte size does not match its shape and dtype".into()
        }
        other => other.to_string(),
    }
}

/// End of the last tensor according to the header, when the header parses as JSON.
fn declared_data_len(buf: &[u8], header_len: u64) -> Option<usize> {
    let end = 8usize.checked_add(usize::try_from(header_len).ok()?)?;
    let header: Value = serde_json::from_slice(buf.get(8..end)?).ok()?;
    header
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .and_then(|n| usize::try_from(n).ok())
}
