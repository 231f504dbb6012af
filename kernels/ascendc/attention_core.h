// The attention inner loop both attention kernels share: a task's query rows (query tokens x
// the query heads of one KV head) against a range of keys read through the block table from
// the paged BF16 cache, with an F32 online softmax. Vector unit only (see kernels/README.md).
#pragma once

#include "kernel_operator.h"

namespace qwen3 {

using AscendC::bfloat16_t;
using AscendC::DataCopyParams;
using AscendC::GlobalTensor;
using AscendC::HardEvent;
using AscendC::LocalTensor;
using AscendC::RoundMode;
using AscendC::TBuf;
using AscendC::TPipe;
using AscendC::TPosition;
using AscendC::TQue;

// Most query rows one task holds (tokens x group heads); the tiling keeps within it.
constexpr uint32_t kMaxRows = 64;
// One reduction result per 32-byte block, so each lands on an aligned address.
constexpr uint32_t kRedStride = 8;
constexpr uint32_t kWorkBytes = 1024;
// "No key seen yet": exp of it minus any real score is 0.
constexpr float kNoMax = -1.0e30f;

// Rounds up to a whole 32-byte block.
__aicore__ inline uint32_t Align32(uint32_t bytes) { return (bytes + 31) / 32 * 32; }

// UB bytes AttnCore::Init asks for; `tiling.rs` (attn_ub_bytes) computes the same sum to pick
// kv_tile, and the sim refuses a tiling that does not fit.
__aicore__ inline uint32_t AttnUbBytes(uint32_t rows, uint32_t group, uint32_t d, uint32_t kv_tile) {
  return 2 * 2 * Align32(kv_tile * d * 2)      // K and V in-queues, double-buffered (BF16)
         + Align32(group * d * 2)              // q in-queue (one token's group, BF16)
         + 2 * Align32(d * 4)                  // out-queue, double-buffered
         + 3 * Align32(kv_tile * d * 4)        // K, V in F32 and the q*K products
         + 2 * Align32(rows * d * 4)           // q and the accumulator, F32
         + Align32(kv_tile * kRedStride * 4)   // per-key dot products
         + Align32((kv_tile + kRedStride) * 4) // scores + the rescale factor
         + Align32(4 * kRedStride * 4)         // max / sum results
         + kWorkBytes;                         // reduction work space
}

struct AttnGeometry {
  uint32_t q_heads, kv_heads, head_dim, block_size, max_blocks, cache_blocks, kv_tile;
  float scale;
};

class AttnCore {
 public:
  __aicore__ inline void Init(TPipe *pipe, const AttnGeometry &g, uint32_t max_rows, GM_ADDR q, uint64_t q_tokens, GM_ADDR k_cache,
                              GM_ADDR v_cache, GM_ADDR block_table, uint64_t table_rows) {
    g_ = g;
    group_ = g.q_heads / g.kv_heads;
    const uint32_t d = g.head_dim;
    const uint64_t cache_elems = static_cast<uint64_t>(g.cache_blocks) * g.block_size * g.kv_heads * d;
    q_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(q), q_tokens * g.q_heads * d);
    k_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(k_cache), cache_elems);
    v_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(v_cache), cache_elems);
    table_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(block_table), table_rows * g.max_blocks);
    pipe->InitBuffer(k_in_, 2, g.kv_tile * d * 2);
    pipe->InitBuffer(v_in_, 2, g.kv_tile * d * 2);
    pipe->InitBuffer(q_in_, 1, group_ * d * 2);
    pipe->InitBuffer(out_, 2, d * 4);
    pipe->InitBuffer(kf_, g.kv_tile * d * 4);
    pipe->InitBuffer(vf_, g.kv_tile * d * 4);
    pipe->InitBuffer(prod_, g.kv_tile * d * 4);
    pipe->InitBuffer(qf_, max_rows * d * 4);
    pipe->InitBuffer(acc_, max_rows * d * 4);
    pipe->InitBuffer(red_, g.kv_tile * kRedStride * 4);
    pipe->InitBuffer(sc_, (g.kv_tile + kRedStride) * 4);
    pipe->InitBuffer(stat_, 4 * kRedStride * 4);
    pipe->InitBuffer(work_, kWorkBytes);
  }

  // One task: `ntok` query tokens from global token `tok0` (their first at position `pos0`),
  // KV head `kvh` of sequence `seq`, over keys [key_begin, key_end). Token t sees keys up to
  // its position pos0 + t (causal); keys past it in the range are skipped.
  __aicore__ inline void Run(uint32_t seq, uint32_t kvh, uint32_t tok0, uint32_t ntok, uint32_t pos0, uint32_t key_begin,
                             uint32_t key_end) {
    const uint32_t d = g_.head_dim;
    rows_ = ntok * group_;
    LocalTensor<float> qf = qf_.Get<float>();
    LocalTensor<float> acc = acc_.Get<float>();
    for (uint32_t t = 0; t < ntok; t++) {
      LocalTensor<bfloat16_t> qb = q_in_.AllocTensor<bfloat16_t>();
      AscendC::DataCopy(qb, q_[(static_cast<uint64_t>(tok0 + t) * g_.q_heads + kvh * group_) * d], group_ * d);
      q_in_.EnQue(qb);
      qb = q_in_.DeQue<bfloat16_t>();
      AscendC::Cast(qf[t * group_ * d], qb, RoundMode::CAST_NONE, group_ * d);
      q_in_.FreeTensor(qb);
    }
    // The softmax scale folds into q once.
    AscendC::Muls(qf, qf, g_.scale, rows_ * d);
    AscendC::Duplicate(acc, 0.0f, rows_ * d);
    for (uint32_t r = 0; r < rows_; r++) {
      m_[r] = kNoMax;
      l_[r] = 0.0f;
    }
    const uint32_t bs = g_.block_size;
    for (uint32_t s = key_begin; s < key_end;) {
      uint32_t n = key_end - s;
      if (n > g_.kv_tile) n = g_.kv_tile;
      if (n > bs - s % bs) n = bs - s % bs;
      const int32_t block = table_.GetValue(static_cast<uint64_t>(seq) * g_.max_blocks + s / bs);
      const uint64_t slot = static_cast<uint64_t>(block) * bs + s % bs;
      LoadTile(slot, kvh, n);
      for (uint32_t r = 0; r < rows_; r++) {
        const int64_t visible = static_cast<int64_t>(pos0 + r / group_) + 1 - s;
        if (visible <= 0) continue;
        Row(r, visible < n ? static_cast<uint32_t>(visible) : n);
      }
      s += n;
    }
  }

  // Row r's output, normalised, as BF16 into `dst` (head_dim elements).
  __aicore__ inline void WriteBf16(uint32_t r, const GlobalTensor<bfloat16_t> &dst) {
    const uint32_t d = g_.head_dim;
    LocalTensor<float> row = acc_.Get<float>()[r * d];
    AscendC::Muls(row, row, l_[r] > 0.0f ? 1.0f / l_[r] : 0.0f, d);
    LocalTensor<bfloat16_t> y = out_.AllocTensor<bfloat16_t>();
    AscendC::Cast(y, row, RoundMode::CAST_RINT, d);
    out_.EnQue(y);
    y = out_.DeQue<bfloat16_t>();
    AscendC::DataCopy(dst, y, d);
    out_.FreeTensor(y);
  }
  // Row r's output, normalised, in F32 (a split's partial result).
  __aicore__ inline void WriteF32(uint32_t r, const GlobalTensor<float> &dst) {
    const uint32_t d = g_.head_dim;
    LocalTensor<float> y = out_.AllocTensor<float>();
    AscendC::Muls(y, acc_.Get<float>()[r * d], l_[r] > 0.0f ? 1.0f / l_[r] : 0.0f, d);
    out_.EnQue(y);
    y = out_.DeQue<float>();
    AscendC::DataCopy(dst, y, d);
    out_.FreeTensor(y);
  }
  // Rows [0, rows) running max and sum as (m, l) pairs into `dst` (2 * rows floats), the
  // log-sum-exp of each row being m + ln(l).
  __aicore__ inline void WriteStats(uint32_t rows, const GlobalTensor<float> &dst) {
    LocalTensor<float> y = out_.AllocTensor<float>();
    for (uint32_t r = 0; r < rows; r++) {
      y.SetValue(2 * r, m_[r]);
      y.SetValue(2 * r + 1, l_[r]);
    }
    out_.EnQue(y);
    y = out_.DeQue<float>();
    AscendC::DataCopyExtParams p;
    p.blockCount = 1;
    p.blockLen = rows * 2 * 4;
    AscendC::DataCopyPad(dst, y, p);
    out_.FreeTensor(y);
  }
  __aicore__ inline uint32_t Group() const { return group_; }

 private:
  // K and V rows of `n` consecutive slots of one block for KV head `kvh`: n bursts of one
  // head row each, skipping the other KV heads' rows between them.
  __aicore__ inline void LoadTile(uint64_t slot, uint32_t kvh, uint32_t n) {
    const uint32_t d = g_.head_dim;
    DataCopyParams p;
    p.blockCount = static_cast<uint16_t>(n);
    p.blockLen = static_cast<uint16_t>(d * 2 / 32);
    p.srcStride = static_cast<uint16_t>((g_.kv_heads - 1) * d * 2 / 32);
    p.dstStride = 0;
    const uint64_t off = (slot * g_.kv_heads + kvh) * d;
    LocalTensor<bfloat16_t> kb = k_in_.AllocTensor<bfloat16_t>();
    AscendC::DataCopy(kb, k_[off], p);
    k_in_.EnQue(kb);
    LocalTensor<bfloat16_t> vb = v_in_.AllocTensor<bfloat16_t>();
    AscendC::DataCopy(vb, v_[off], p);
    v_in_.EnQue(vb);
    kb = k_in_.DeQue<bfloat16_t>();
    AscendC::Cast(kf_.Get<float>(), kb, RoundMode::CAST_NONE, n * d);
    k_in_.FreeTensor(kb);
    vb = v_in_.DeQue<bfloat16_t>();
    AscendC::Cast(vf_.Get<float>(), vb, RoundMode::CAST_NONE, n * d);
    v_in_.FreeTensor(vb);
  }

  // Folds keys [0, lim) of the loaded tile into row r's running max, sum and accumulator.
  __aicore__ inline void Row(uint32_t r, uint32_t lim) {
    const uint32_t d = g_.head_dim;
    LocalTensor<float> q = qf_.Get<float>()[r * d];
    LocalTensor<float> kf = kf_.Get<float>();
    LocalTensor<float> vf = vf_.Get<float>();
    LocalTensor<float> prod = prod_.Get<float>();
    LocalTensor<float> red = red_.Get<float>();
    LocalTensor<float> sc = sc_.Get<float>();
    LocalTensor<float> stat = stat_.Get<float>();
    LocalTensor<float> work = work_.Get<float>();
    LocalTensor<float> acc = acc_.Get<float>()[r * d];
    for (uint32_t j = 0; j < lim; j++) AscendC::Mul(prod[j * d], kf[j * d], q, d);
    for (uint32_t j = 0; j < lim; j++) AscendC::ReduceSum(red[j * kRedStride], prod[j * d], work, d);
    VectorToScalar();
    for (uint32_t j = 0; j < lim; j++) sc.SetValue(j, red.GetValue(j * kRedStride));
    ScalarToVector();
    AscendC::ReduceMax(stat, sc, work, lim);
    VectorToScalar();
    const float tile_max = stat.GetValue(0);
    const float m_new = tile_max > m_[r] ? tile_max : m_[r];
    // The rescale factor exp(m_old - m_new) rides in the block after the scores.
    const uint32_t alpha_at = (lim + kRedStride - 1) / kRedStride * kRedStride;
    sc.SetValue(alpha_at, m_[r] - m_new);
    ScalarToVector();
    AscendC::Adds(sc, sc, -m_new, lim);
    AscendC::Exp(sc, sc, lim);
    AscendC::Exp(sc[alpha_at], sc[alpha_at], 1);
    AscendC::ReduceSum(stat[kRedStride], sc, work, lim);
    VectorToScalar();
    const float alpha = sc.GetValue(alpha_at);
    l_[r] = l_[r] * alpha + stat.GetValue(kRedStride);
    m_[r] = m_new;
    AscendC::Muls(acc, acc, alpha, d);
    for (uint32_t j = 0; j < lim; j++) AscendC::Axpy(acc, vf[j * d], sc.GetValue(j), d);
    // The next row's reductions overwrite what the scalar unit just read.
    ScalarToVector();
  }

  __aicore__ inline void VectorToScalar() {
    AscendC::SetFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
  }
  __aicore__ inline void ScalarToVector() {
    AscendC::SetFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
  }

  AttnGeometry g_{};
  uint32_t group_ = 1;
  uint32_t rows_ = 0;
  float m_[kMaxRows];
  float l_[kMaxRows];
  GlobalTensor<bfloat16_t> q_, k_, v_;
  GlobalTensor<int32_t> table_;
  TQue<TPosition::VECIN, 2> k_in_, v_in_;
  TQue<TPosition::VECIN, 1> q_in_;
  TQue<TPosition::VECOUT, 2> out_;
  TBuf<TPosition::VECCALC> kf_, vf_, prod_, qf_, acc_, red_, sc_, stat_, work_;
};

}  // namespace qwen3
