// CPU launch stubs for the kernels in kernels/ascendc, the sim's counterpart of the
// `aclrtlaunch_<kernel>(blockDim, stream, args...)` stubs CANN generates: each runs the
// kernel once per block index (sim::run_blocks) and returns 0, or 1 with the broken rule.
#include "kernel_operator.h"

extern "C" {
void qk_norm_rope_cache(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR q_weight, GM_ADDR k_weight, GM_ADDR cos, GM_ADDR sin,
                        GM_ADDR positions, GM_ADDR slot_mapping, GM_ADDR q_out, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR tiling);
void paged_decode_attention(GM_ADDR q, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR block_table, GM_ADDR context_lens, GM_ADDR out,
                            GM_ADDR partial_out, GM_ADDR partial_stats, GM_ADDR tiling);
void paged_decode_merge(GM_ADDR partial_out, GM_ADDR partial_stats, GM_ADDR out, GM_ADDR tiling);
void chunked_prefill_attention(GM_ADDR q, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR block_table, GM_ADDR query_start,
                               GM_ADDR context_lens, GM_ADDR out, GM_ADDR tiling);
}

namespace {
struct Args {
  uint8_t *const *a;
};
void qk_body(void *p) {
  uint8_t *const *a = static_cast<Args *>(p)->a;
  qk_norm_rope_cache(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12]);
}
void decode_body(void *p) {
  uint8_t *const *a = static_cast<Args *>(p)->a;
  paged_decode_attention(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8]);
}
void merge_body(void *p) {
  uint8_t *const *a = static_cast<Args *>(p)->a;
  paged_decode_merge(a[0], a[1], a[2], a[3]);
}
void prefill_body(void *p) {
  uint8_t *const *a = static_cast<Args *>(p)->a;
  chunked_prefill_attention(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]);
}
}  // namespace

// `args`: the kernel's GM_ADDR arguments in order (13, 9, 4 and 8 of them).
extern "C" int sim_launch_qk_norm_rope_cache(uint32_t block_dim, uint8_t *const *args, char *err, size_t err_len) {
  Args a{args};
  return sim::run_blocks(block_dim, qk_body, &a, err, err_len);
}
extern "C" int sim_launch_paged_decode_attention(uint32_t block_dim, uint8_t *const *args, char *err, size_t err_len) {
  Args a{args};
  return sim::run_blocks(block_dim, decode_body, &a, err, err_len);
}
extern "C" int sim_launch_paged_decode_merge(uint32_t block_dim, uint8_t *const *args, char *err, size_t err_len) {
  Args a{args};
  return sim::run_blocks(block_dim, merge_body, &a, err, err_len);
}
extern "C" int sim_launch_chunked_prefill_attention(uint32_t block_dim, uint8_t *const *args, char *err, size_t err_len) {
  Args a{args};
  return sim::run_blocks(block_dim, prefill_body, &a, err, err_len);
}
