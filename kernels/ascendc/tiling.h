// Tiling structs the host fills and each kernel reads from global memory. Mirrored field for
// field by `crates/kernels/src/tiling.rs` (`#[repr(C)]`); `tiling_layout.cpp` exports their
// sizes and offsets so a Rust test checks the two agree.
#pragma once

#include <stdint.h>

// Fused q/k RMSNorm + neox RoPE + paged KV write, tokens split over blocks.
struct QkNormRopeCacheTiling {
  uint32_t num_tokens;
  uint32_t num_q_heads;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t num_slots;        // cache blocks * block size: slots must lie below it
  uint32_t rope_rows;        // rows of the cos/sin tables (positions must lie below it)
  uint32_t tokens_per_block; // contiguous tokens each block index handles
  uint32_t block_dim;
  float eps;
  uint32_t rope_stride;      // floats per cos/sin table row (>= head_dim/2): a row's first head_dim/2 are read
};

// Paged decode attention: one task per (sequence, KV head, KV split).
struct PagedDecodeTiling {
  uint32_t num_seqs;
  uint32_t num_q_heads;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t block_size;
  uint32_t max_blocks_per_seq;
  uint32_t num_cache_blocks;
  uint32_t num_splits;   // 1: write the output directly; >1: partials + LSE for the merge
  uint32_t split_blocks; // cache blocks per split
  uint32_t kv_tile;      // keys per inner tile; divides block_size
  uint32_t num_tasks;
  uint32_t block_dim;
  float scale;
  uint32_t merge_block_dim; // blocks for paged_decode_merge (rows = seqs x query heads)
};

// Chunked-prefill attention: one task per (sequence, KV head, tile of query tokens).
struct ChunkedPrefillTiling {
  uint32_t num_seqs;
  uint32_t num_tokens;
  uint32_t num_q_heads;
  uint32_t num_kv_heads;
  uint32_t head_dim;
  uint32_t block_size;
  uint32_t max_blocks_per_seq;
  uint32_t num_cache_blocks;
  uint32_t q_tile;  // query tokens per task
  uint32_t kv_tile; // keys per inner tile; divides block_size
  uint32_t num_tasks;
  uint32_t block_dim;
  float scale;
  uint32_t reserved;
};
