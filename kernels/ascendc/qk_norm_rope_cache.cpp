// Fused q/k RMSNorm + neox RoPE + paged KV-cache write, one launch per layer for a mixed
// batch (prefill chunks and decodes alike are rows of tokens). Per token: each q head and k
// head is normalised over head_dim (Qwen3's q_norm / k_norm), scaled by its weight, rotated
// by the cos/sin table row at the token's position (tables as inputs, so YaRN-scaled tables
// work unchanged; rows `rope_stride` floats apart, so a backend's full-width [rows, head_dim]
// table serves as is); q goes to q_out, k and v to the cache slot `slot_mapping[token]`
// (negative: a padding token, nothing written). Tokens are split over blocks in contiguous runs.
#include "attention_core.h"
#include "tiling.h"

using namespace qwen3;

namespace {

class QkNormRopeCache {
 public:
  __aicore__ inline void Init(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR q_weight, GM_ADDR k_weight, GM_ADDR cos, GM_ADDR sin,
                              GM_ADDR positions, GM_ADDR slot_mapping, GM_ADDR q_out, GM_ADDR k_cache, GM_ADDR v_cache,
                              const QkNormRopeCacheTiling &t) {
    t_ = t;
    const uint32_t d = t.head_dim;
    const uint64_t tokens = t.num_tokens;
    q_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(q), tokens * t.num_q_heads * d);
    k_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(k), tokens * t.num_kv_heads * d);
    v_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(v), tokens * t.num_kv_heads * d);
    q_out_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(q_out), tokens * t.num_q_heads * d);
    k_cache_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(k_cache), static_cast<uint64_t>(t.num_slots) * t.num_kv_heads * d);
    v_cache_.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(v_cache), static_cast<uint64_t>(t.num_slots) * t.num_kv_heads * d);
    cos_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(cos), static_cast<uint64_t>(t.rope_rows) * t.rope_stride);
    sin_.SetGlobalBuffer(reinterpret_cast<__gm__ float *>(sin), static_cast<uint64_t>(t.rope_rows) * t.rope_stride);
    pos_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(positions), tokens);
    slot_.SetGlobalBuffer(reinterpret_cast<__gm__ int32_t *>(slot_mapping), tokens);
    GlobalTensor<bfloat16_t> qw, kw;
    qw.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(q_weight), d);
    kw.SetGlobalBuffer(reinterpret_cast<__gm__ bfloat16_t *>(k_weight), d);

    pipe_.InitBuffer(in_, 2, d * 2);
    pipe_.InitBuffer(tab_, 2, d / 2 * 4);
    pipe_.InitBuffer(vin_, 1, t.num_kv_heads * d * 2);
    pipe_.InitBuffer(out_, 2, d * 2);
    pipe_.InitBuffer(x_, d * 4);
    pipe_.InitBuffer(sq_, d * 4);
    pipe_.InitBuffer(y_, d * 4);
    pipe_.InitBuffer(wq_, d * 4);
    pipe_.InitBuffer(wk_, d * 4);
    pipe_.InitBuffer(ta_, d / 2 * 4);
    pipe_.InitBuffer(tb_, d / 2 * 4);
    pipe_.InitBuffer(red_, kRedStride * 4);
    pipe_.InitBuffer(work_, kWorkBytes);
    LoadWeight(qw, wq_.Get<float>());
    LoadWeight(kw, wk_.Get<float>());
  }

  __aicore__ inline void Process() {
    const uint32_t first = AscendC::GetBlockIdx() * t_.tokens_per_block;
    uint32_t last = first + t_.tokens_per_block;
    if (last > t_.num_tokens) last = t_.num_tokens;
    for (uint32_t tok = first; tok < last; tok++) Token(tok);
  }

 private:
  __aicore__ inline void LoadWeight(const GlobalTensor<bfloat16_t> &src, const LocalTensor<float> &dst) {
    LocalTensor<bfloat16_t> w = in_.AllocTensor<bfloat16_t>();
    AscendC::DataCopy(w, src, t_.head_dim);
    in_.EnQue(w);
    w = in_.DeQue<bfloat16_t>();
    AscendC::Cast(dst, w, RoundMode::CAST_NONE, t_.head_dim);
    in_.FreeTensor(w);
  }

  __aicore__ inline void Token(uint32_t tok) {
    const uint32_t d = t_.head_dim;
    const uint32_t half = d / 2;
    const int32_t pos = pos_.GetValue(tok);
    const int32_t slot = slot_.GetValue(tok);
    LocalTensor<float> c = tab_.AllocTensor<float>();
    AscendC::DataCopy(c, cos_[static_cast<uint64_t>(pos) * t_.rope_stride], half);
    tab_.EnQue(c);
    LocalTensor<float> s = tab_.AllocTensor<float>();
    AscendC::DataCopy(s, sin_[static_cast<uint64_t>(pos) * t_.rope_stride], half);
    tab_.EnQue(s);
    c = tab_.DeQue<float>();
    s = tab_.DeQue<float>();
    for (uint32_t h = 0; h < t_.num_q_heads; h++) {
      const uint64_t row = (static_cast<uint64_t>(tok) * t_.num_q_heads + h) * d;
      Head(q_[row], wq_.Get<float>(), c, s, q_out_[row]);
    }
    if (slot >= 0) {
      for (uint32_t h = 0; h < t_.num_kv_heads; h++) {
        const uint64_t row = (static_cast<uint64_t>(tok) * t_.num_kv_heads + h) * d;
        Head(k_[row], wk_.Get<float>(), c, s, k_cache_[(static_cast<uint64_t>(slot) * t_.num_kv_heads + h) * d]);
      }
      // V goes to the cache unchanged: the token's heads are contiguous on both sides.
      const uint32_t n = t_.num_kv_heads * d;
      LocalTensor<bfloat16_t> vb = vin_.AllocTensor<bfloat16_t>();
      AscendC::DataCopy(vb, v_[static_cast<uint64_t>(tok) * n], n);
      vin_.EnQue(vb);
      vb = vin_.DeQue<bfloat16_t>();
      AscendC::DataCopy(v_cache_[static_cast<uint64_t>(slot) * n], vb, n);
      vin_.FreeTensor(vb);
    }
    tab_.FreeTensor(c);
    tab_.FreeTensor(s);
  }

  // One head row: RMSNorm over head_dim in F32, times the weight, neox rotation
  // (x1 cos - x2 sin, x2 cos + x1 sin over the two halves), rounded to BF16 into `dst`.
  __aicore__ inline void Head(const GlobalTensor<bfloat16_t> &src, const LocalTensor<float> &w, const LocalTensor<float> &c,
                              const LocalTensor<float> &s, const GlobalTensor<bfloat16_t> &dst) {
    const uint32_t d = t_.head_dim;
    const uint32_t half = d / 2;
    LocalTensor<float> x = x_.Get<float>();
    LocalTensor<float> sq = sq_.Get<float>();
    LocalTensor<float> y = y_.Get<float>();
    LocalTensor<float> a = ta_.Get<float>();
    LocalTensor<float> b = tb_.Get<float>();
    LocalTensor<float> red = red_.Get<float>();
    LocalTensor<bfloat16_t> xb = in_.AllocTensor<bfloat16_t>();
    AscendC::DataCopy(xb, src, d);
    in_.EnQue(xb);
    xb = in_.DeQue<bfloat16_t>();
    AscendC::Cast(x, xb, RoundMode::CAST_NONE, d);
    in_.FreeTensor(xb);
    AscendC::Mul(sq, x, x, d);
    AscendC::ReduceSum(red, sq, work_.Get<float>(), d);
    AscendC::Muls(red, red, 1.0f / static_cast<float>(d), 1);
    AscendC::Adds(red, red, t_.eps, 1);
    AscendC::Sqrt(red, red, 1);
    AscendC::SetFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::V_S>(AscendC::EVENT_ID0);
    const float rstd = 1.0f / red.GetValue(0);
    // The next head's reduction overwrites what the scalar unit just read.
    AscendC::SetFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
    AscendC::WaitFlag<HardEvent::S_V>(AscendC::EVENT_ID0);
    AscendC::Muls(x, x, rstd, d);
    AscendC::Mul(x, x, w, d);
    AscendC::Mul(a, x, c, half);
    AscendC::Mul(b, x[half], s, half);
    AscendC::Sub(y, a, b, half);
    AscendC::Mul(a, x[half], c, half);
    AscendC::Mul(b, x, s, half);
    AscendC::Add(y[half], a, b, half);
    LocalTensor<bfloat16_t> yb = out_.AllocTensor<bfloat16_t>();
    AscendC::Cast(yb, y, RoundMode::CAST_RINT, d);
    out_.EnQue(yb);
    yb = out_.DeQue<bfloat16_t>();
    AscendC::DataCopy(dst, yb, d);
    out_.FreeTensor(yb);
  }

  QkNormRopeCacheTiling t_{};
  TPipe pipe_;
  GlobalTensor<bfloat16_t> q_, k_, v_, q_out_, k_cache_, v_cache_;
  GlobalTensor<float> cos_, sin_;
  GlobalTensor<int32_t> pos_, slot_;
  TQue<TPosition::VECIN, 2> in_, tab_;
  TQue<TPosition::VECIN, 1> vin_;
  TQue<TPosition::VECOUT, 2> out_;
  TBuf<TPosition::VECCALC> x_, sq_, y_, wq_, wk_, ta_, tb_, red_, work_;
};

}  // namespace

extern "C" __global__ __aicore__ void qk_norm_rope_cache(GM_ADDR q, GM_ADDR k, GM_ADDR v, GM_ADDR q_weight, GM_ADDR k_weight,
                                                         GM_ADDR cos, GM_ADDR sin, GM_ADDR positions, GM_ADDR slot_mapping,
                                                         GM_ADDR q_out, GM_ADDR k_cache, GM_ADDR v_cache, GM_ADDR tiling) {
  const QkNormRopeCacheTiling t = *reinterpret_cast<__gm__ const QkNormRopeCacheTiling *>(tiling);
  QkNormRopeCache op;
  op.Init(q, k, v, q_weight, k_weight, cos, sin, positions, slot_mapping, q_out, k_cache, v_cache, t);
  op.Process();
}
