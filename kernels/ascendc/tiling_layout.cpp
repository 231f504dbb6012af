// Sizes and field offsets of the tiling structs, for the Rust mirror's layout test
// (crates/kernels/src/tiling.rs). Host code only; never part of the device build.
#include <cstddef>

#include "tiling.h"

#define FIELD(S, f) static_cast<uint32_t>(offsetof(S, f))

// Writes [size, offset of each field in declaration order] into `out` (capacity `cap`) and
// returns how many it wrote, or 0 for an unknown struct.
extern "C" uint32_t qwen3_tiling_layout(uint32_t which, uint32_t *out, uint32_t cap) {
  uint32_t v[20];
  uint32_t n = 0;
  switch (which) {
    case 0: {
      using S = QkNormRopeCacheTiling;
      const uint32_t l[] = {sizeof(S), FIELD(S, num_tokens), FIELD(S, num_q_heads), FIELD(S, num_kv_heads), FIELD(S, head_dim),
                            FIELD(S, num_slots), FIELD(S, rope_rows), FIELD(S, tokens_per_block), FIELD(S, block_dim), FIELD(S, eps),
                            FIELD(S, rope_stride)};
      for (uint32_t x : l) v[n++] = x;
      break;
    }
    case 1: {
      using S = PagedDecodeTiling;
      const uint32_t l[] = {sizeof(S), FIELD(S, num_seqs), FIELD(S, num_q_heads), FIELD(S, num_kv_heads), FIELD(S, head_dim),
                            FIELD(S, block_size), FIELD(S, max_blocks_per_seq), FIELD(S, num_cache_blocks), FIELD(S, num_splits),
                            FIELD(S, split_blocks), FIELD(S, kv_tile), FIELD(S, num_tasks), FIELD(S, block_dim), FIELD(S, scale),
                            FIELD(S, merge_block_dim)};
      for (uint32_t x : l) v[n++] = x;
      break;
    }
    case 2: {
      using S = ChunkedPrefillTiling;
      const uint32_t l[] = {sizeof(S), FIELD(S, num_seqs), FIELD(S, num_tokens), FIELD(S, num_q_heads), FIELD(S, num_kv_heads),
                            FIELD(S, head_dim), FIELD(S, block_size), FIELD(S, max_blocks_per_seq), FIELD(S, num_cache_blocks),
                            FIELD(S, q_tile), FIELD(S, kv_tile), FIELD(S, num_tasks), FIELD(S, block_dim), FIELD(S, scale),
                            FIELD(S, reserved)};
      for (uint32_t x : l) v[n++] = x;
      break;
    }
    default: return 0;
  }
  if (n > cap) return 0;
  for (uint32_t i = 0; i < n; i++) out[i] = v[i];
  return n;
}
