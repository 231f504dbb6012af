// Paged decode attention (flash-decoding): one query token per sequence, GQA, BF16 cache,
// F32 online softmax. Work is (sequence, KV head, KV split) tasks spread over the blocks;
// with more than one split each task writes its normalised partial output and its (max, sum)
// pair, and `paged_decode_merge` combines the splits by their log-sum-exp weights.
#include "attention_core.h"
#include "tiling.h"

using namespace qwen3;

extern "C" __global__ __aicore__ void paged_decode_attention(GM_ADDR q, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR block_table,
                                                             GM_ADDR context_lens, GM_ADDR out, GM_ADDR partial_out,
                                                             GM_ADDR partial_stats, GM_ADDR tiling) {
  const PagedDecodeTiling t = *reinterpret_cast<__gm__ const PagedDecodeTiling *>(tiling);
  const uint32_t d = t.head_dim;
  const uint32_t group = t.num_q_heads / t.num_kv_heads;
  TPipe pipe;
  AttnCore core;
  const AttnGeometry g{t.num_q_heads, t.num_kv_heads, d, t.block_size, t.max_blocks_per_seq, t.num_cache_blocks, t.kv_tile, t.scale};
  core.Init(&pipe, g, group, q, t.num_seqs, k_cache, v_cache, block_table, t.num_seqs);
  GlobalTensor<int32_t> lens;
  lens.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(context_lens), t.num_seqs);
  GlobalTensor<bfloat16_t> o;
  o.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(out), static_cast<uint64_t>(t.num_seqs) * t.num_q_heads * d);
  GlobalTensor<float> po, ps;
  if (t.num_splits > 1) {
    po.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(partial_out), static_cast<uint64_t>(t.num_seqs) * t.num_splits * t.num_q_heads * d);
    ps.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(partial_stats), static_cast<uint64_t>(t.num_seqs) * t.num_splits * t.num_q_heads * 2);
  }
  const uint32_t span = t.split_blocks * t.block_size;
  for (uint32_t task = AscendC::GetBlockIdx(); task < t.num_tasks; task += AscendC::GetBlockNum()) {
    const uint32_t split = task % t.num_splits;
    const uint32_t kvh = (task / t.num_splits) % t.num_kv_heads;
    const uint32_t seq = task / (t.num_splits * t.num_kv_heads);
    const uint32_t ctx = static_cast<uint32_t>(lens.GetValue(seq));
    const uint32_t begin = split * span;
    const uint32_t end = begin + span < ctx ? begin + span : ctx;
    // The decode token sits at position ctx - 1 and sees every key; an empty split (context
    // shorter than its start) leaves sum 0, which the merge skips.
    core.Run(seq, kvh, seq, 1, ctx - 1, begin, begin < end ? end : begin);
    const uint64_t head0 = static_cast<uint64_t>(seq) * t.num_q_heads + kvh * group;
    if (t.num_splits == 1) {
      for (uint32_t r = 0; r < group; r++) core.WriteBf16(r, o[(head0 + r) * d]);
    } else {
      const uint64_t row0 = (static_cast<uint64_t>(seq) * t.num_splits + split) * t.num_q_heads + kvh * group;
      for (uint32_t r = 0; r < group; r++) core.WriteF32(r, po[(row0 + r) * d]);
      core.WriteStats(group, ps[row0 * 2]);
    }
  }
}

// Combines the splits of each (sequence, query head): weights l_s * exp(m_s - M) with M the
// largest m_s over splits that saw keys, i.e. each split's exp(LSE_s - LSE).
extern "C" __global__ __aicore__ void paged_decode_merge(GM_ADDR partial_out, GM_ADDR partial_stats, GM_ADDR out, GM_ADDR tiling) {
  const PagedDecodeTiling t = *reinterpret_cast<__gm__ const PagedDecodeTiling *>(tiling);
  const uint32_t d = t.head_dim;
  const uint32_t splits = t.num_splits;
  TPipe pipe;
  TQue<TPosition::VECIN, 2> in;
  TQue<TPosition::VECOUT, 1> outq;
  TBuf<TPosition::VECCALC> accb, wb;
  pipe.InitBuffer(in, 2, d * 4);
  pipe.InitBuffer(outq, 1, d * 2);
  pipe.InitBuffer(accb, d * 4);
  pipe.InitBuffer(wb, Align32(splits * 4));
  GlobalTensor<float> po, ps;
  po.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(partial_out), static_cast<uint64_t>(t.num_seqs) * splits * t.num_q_heads * d);
  ps.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(partial_stats), static_cast<uint64_t>(t.num_seqs) * splits * t.num_q_heads * 2);
  GlobalTensor<bfloat16_t> o;
  o.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(out), static_cast<uint64_t>(t.num_seqs) * t.num_q_heads * d);
  LocalTensor<float> acc = accb.Get<float>();
  LocalTensor<float> w = wb.Get<float>();
  const uint32_t rows = t.num_seqs * t.num_q_heads;
  for (uint32_t row = AscendC::GetBlockIdx(); row < rows; row += AscendC::GetBlockNum()) {
    const uint32_t seq = row / t.num_q_heads;
    const uint32_t h = row % t.num_q_heads;
    auto at = [&](uint32_t s) { return (static_cast<uint64_t>(seq) * splits + s) * t.num_q_heads + h; };
    float big = kNoMax;
    for (uint32_t s = 0; s < splits; s++) {
      const float m = ps.GetValue(at(s) * 2);
      if (ps.GetValue(at(s) * 2 + 1) > 0.0f && m > big) big = m;
    }
    for (uint32_t s = 0; s < splits; s++) w.SetValue(s, ps.GetValue(at(s) * 2) - big);
    AscendC::SetFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
    AscendC::Exp(w, w, splits);
    AscendC::Duplicate(acc, 0.0f, d);
    AscendC::SetFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    float total = 0.0f;
    for (uint32_t s = 0; s < splits; s++) total += ps.GetValue(at(s) * 2 + 1) * w.GetValue(s);
    for (uint32_t s = 0; s < splits; s++) {
      const float l = ps.GetValue(at(s) * 2 + 1);
      if (l <= 0.0f) continue;
      LocalTensor<float> x = in.AllocTensor<float>();
      AscendC::DataCopy(x, po[at(s) * d], d);
      in.EnQue(x);
      x = in.DeQue<float>();
      AscendC::Axpy(acc, x, l * w.GetValue(s) / total, d);
      in.FreeTensor(x);
    }
    LocalTensor<bfloat16_t> y = outq.AllocTensor<bfloat16_t>();
    AscendC::Cast(y, acc, RoundMode::CAST_RINT, d);
    outq.EnQue(y);
    y = outq.DeQue<bfloat16_t>();
    AscendC::DataCopy(o[static_cast<uint64_t>(row) * d], y, d);
    outq.FreeTensor(y);
    // The next row's scalar writes of w follow this row's vector reads of it.
    AscendC::SetFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
  }
}
