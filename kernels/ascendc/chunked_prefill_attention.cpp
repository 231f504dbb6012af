// Chunked-prefill attention over the paged cache: each sequence's chunk of new query tokens
// (already written to the cache with the prefix before them) attends to the cached prefix
// and causally within the chunk; F32 accumulation. Work is (sequence, KV head, tile of
// query tokens) tasks; decodes (chunks of one token) mix in the same launch.
#include "attention_core.h"
#include "tiling.h"

using namespace qwen3;

extern "C" __global__ __aicore__ void chunked_prefill_attention(GM_ADDR q, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR block_table,
                                                                GM_ADDR query_start, GM_ADDR context_lens, GM_ADDR out,
                                                                GM_ADDR tiling) {
  const ChunkedPrefillTiling t = *reinterpret_cast<__gm__ const ChunkedPrefillTiling *>(tiling);
  const uint32_t d = t.head_dim;
  const uint32_t group = t.num_q_heads / t.num_kv_heads;
  TPipe pipe;
  AttnCore core;
  const AttnGeometry g{t.num_q_heads, t.num_kv_heads, d, t.block_size, t.max_blocks_per_seq, t.num_cache_blocks, t.kv_tile, t.scale};
  core.Init(&pipe, g, t.q_tile * group, q, t.num_tokens, k_cache, v_cache, block_table, t.num_seqs);
  GlobalTensor<int32_t> starts, lens;
  starts.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(query_start), t.num_seqs + 1);
  lens.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(context_lens), t.num_seqs);
  GlobalTensor<bfloat16_t> o;
  o.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(out), static_cast<uint64_t>(t.num_tokens) * t.num_q_heads * d);
  // Tasks are numbered sequence by sequence; the walk below finds each one's sequence.
  uint32_t seq = 0;
  uint32_t seq_first_task = 0;
  for (uint32_t task = AscendC::GetBlockIdx(); task < t.num_tasks; task += AscendC::GetBlockNum()) {
    uint32_t qlen = 0;
    uint32_t tiles = 0;
    for (;;) {
      qlen = static_cast<uint32_t>(starts.GetValue(seq + 1) - starts.GetValue(seq));
      tiles = (qlen + t.q_tile - 1) / t.q_tile * t.num_kv_heads;
      if (task < seq_first_task + tiles) break;
      seq_first_task += tiles;
      seq++;
    }
    const uint32_t local = task - seq_first_task;
    const uint32_t kvh = local % t.num_kv_heads;
    const uint32_t first = local / t.num_kv_heads * t.q_tile;
    const uint32_t ntok = qlen - first < t.q_tile ? qlen - first : t.q_tile;
    const uint32_t ctx = static_cast<uint32_t>(lens.GetValue(seq));
    const uint32_t tok0 = static_cast<uint32_t>(starts.GetValue(seq)) + first;
    const uint32_t pos0 = ctx - qlen + first;
    core.Run(seq, kvh, tok0, ntok, pos0, 0, pos0 + ntok);
    for (uint32_t r = 0; r < ntok * group; r++) {
      const uint64_t head = static_cast<uint64_t>(tok0 + r / group) * t.num_q_heads + kvh * group + r % group;
      core.WriteBf16(r, o[head * d]);
    }
  }
}
