//! What each device allocation holds (weights, KV cache, captured graphs, pooled activations)
//! and the bytes of each kind a device's allocator has handed out: the process-memory
//! breakdown that telemetry exports next to npu-smi's HBM figures.

/// What a device allocation holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemKind {
    /// Model weights (exact-size driver allocations, for the model's lifetime).
    Weights,
    /// The paged KV cache (exact-size driver allocations).
    KvCache,
    /// Buffers and workspaces owned by captured decode graphs, freed with the graph.
    Graphs,
    /// Pool buffers handed out and not yet returned: activations, operator workspaces, step
    /// inputs, and the small long-lived tables (RoPE, attention mask).
    Activations,
}

impl MemKind {
    pub const ALL: [MemKind; 4] = [
        MemKind::Weights,
        MemKind::KvCache,
        MemKind::Graphs,
        MemKind::Activations,
    ];

    /// The `kind` label value telemetry exports.
    pub fn label(self) -> &'static str {
        match self {
            MemKind::Weights => "weights",
            MemKind::KvCache => "kv_cache",
            MemKind::Graphs => "graphs",
            MemKind::Activations => "activations",
        }
    }
}

/// Bytes held per [`MemKind`] on one device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemByKind {
    bytes: [u64; 4],
}

impl MemByKind {
    pub fn get(&self, kind: MemKind) -> u64 {
        self.bytes[kind as usize]
    }

    /// Every kind with its bytes, in [`MemKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (MemKind, u64)> + '_ {
        MemKind::ALL.into_iter().map(|k| (k, self.get(k)))
    }

    pub fn total(&self) -> u64 {
        self.bytes.iter().sum()
    }

    pub(crate) fn add(&mut self, kind: MemKind, bytes: usize) {
        self.bytes[kind as usize] += bytes as u64;
    }

    pub(crate) fn sub(&mut self, kind: MemKind, bytes: usize) {
        let b = &mut self.bytes[kind as usize];
        *b = b.saturating_sub(bytes as u64);
    }
}
