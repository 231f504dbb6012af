// The sim's instructions: DataCopy / DataCopyPad, the vector operations, Cast, the
// reductions and the synchronisation primitives, each with the rules it enforces.
#pragma once

#include <cmath>
#include <string>
#include <type_traits>

#include "sim_memory.h"

namespace AscendC {

// DataCopy's strided form. Lengths and strides count 32-byte data blocks (API reference,
// "Basic Data Movement", DataCopyParams).
struct DataCopyParams {
  uint16_t blockCount = 1;
  uint16_t blockLen = 0;
  uint16_t srcStride = 0;
  uint16_t dstStride = 0;
};
// DataCopyPad's form: blockLen in bytes; the global side's stride in bytes, the local
// side's in 32-byte blocks (API reference, DataCopyPad, DataCopyExtParams).
struct DataCopyExtParams {
  uint16_t blockCount = 1;
  uint32_t blockLen = 0;
  uint32_t srcStride = 0;
  uint32_t dstStride = 0;
  uint32_t rsv = 0;
};
template <typename T>
struct DataCopyPadExtParams {
  bool isPad = false;
  uint8_t leftPadding = 0;
  uint8_t rightPadding = 0;
  T paddingValue{};
};

enum class RoundMode : uint8_t { CAST_NONE, CAST_RINT, CAST_FLOOR, CAST_CEIL, CAST_ROUND, CAST_TRUNC, CAST_ODD };

namespace detail {
constexpr uint32_t kBlock = 32;

inline void check_copy_bytes(uint64_t bytes, const char *op) {
  // Basic DataCopy moves whole 32-byte blocks: the length in bytes is a multiple of 32
  // (API reference, "Basic Data Movement"; non-aligned lengths need DataCopyPad).
  if (bytes % kBlock != 0)
    sim::refuse(std::string(op) + ": " + std::to_string(bytes) +
                " bytes is not a multiple of 32 (basic DataCopy moves 32-byte blocks; use DataCopyPad)");
  if (bytes == 0) sim::refuse(std::string(op) + ": zero-length copy");
}
template <typename T>
void check_ub(const LocalTensor<T> &t, const char *op) {
  if (!sim::is_ub(t.position())) sim::refuse(std::string(op) + ": operand is not in the Unified Buffer (VECIN/VECOUT/VECCALC)");
}
}  // namespace detail

// GM -> local, contiguous.
template <typename T>
__aicore__ inline void DataCopy(const LocalTensor<T> &dst, const GlobalTensor<T> &src, uint32_t count) {
  detail::check_copy_bytes(static_cast<uint64_t>(count) * sizeof(T), "DataCopy(GM->local)");
  T *d = dst.operand(count, "DataCopy(GM->local)", PIPE_MTE2, true);
  std::memcpy(d, src.span(0, count, "DataCopy(GM->local)"), count * sizeof(T));
}
// local -> GM, contiguous.
template <typename T>
__aicore__ inline void DataCopy(const GlobalTensor<T> &dst, const LocalTensor<T> &src, uint32_t count) {
  detail::check_copy_bytes(static_cast<uint64_t>(count) * sizeof(T), "DataCopy(local->GM)");
  const T *s = src.operand(count, "DataCopy(local->GM)", PIPE_MTE3, false);
  std::memcpy(dst.span(0, count, "DataCopy(local->GM)"), s, count * sizeof(T));
}
// GM -> local, strided: blockCount bursts of blockLen blocks, gaps in blocks on both sides.
template <typename T>
__aicore__ inline void DataCopy(const LocalTensor<T> &dst, const GlobalTensor<T> &src, const DataCopyParams &p) {
  const char *op = "DataCopy(GM->local, DataCopyParams)";
  if (p.blockCount == 0 || p.blockLen == 0) sim::refuse(std::string(op) + ": blockCount and blockLen must be >= 1");
  static_assert(detail::kBlock % sizeof(T) == 0, "element size divides 32");
  const uint32_t per = detail::kBlock / sizeof(T);
  const uint64_t len = static_cast<uint64_t>(p.blockLen) * per;
  const uint64_t dst_elems = (p.blockCount - 1) * (len + p.dstStride * per) + len;
  T *d = dst.operand(static_cast<uint32_t>(dst_elems), op, PIPE_MTE2, true);
  for (uint32_t i = 0; i < p.blockCount; i++) {
    const T *s = src.span(i * (len + p.srcStride * per), len, op);
    std::memcpy(d + i * (len + p.dstStride * per), s, len * sizeof(T));
  }
}
// GM -> UB with any byte length: each burst lands 32-byte aligned in UB; the tail of its
// last block is padding (paddingValue if isPad, else undefined: the sim writes NaN-ish
// garbage so a kernel that reads it shows up in its numbers).
template <typename T>
__aicore__ inline void DataCopyPad(const LocalTensor<T> &dst, const GlobalTensor<T> &src, const DataCopyExtParams &p,
                                   const DataCopyPadExtParams<T> &pad) {
  const char *op = "DataCopyPad(GM->UB)";
  detail::check_ub(dst, op);
  if (p.blockCount == 0 || p.blockLen == 0) sim::refuse(std::string(op) + ": blockCount and blockLen must be >= 1");
  if (p.blockLen % sizeof(T) != 0) sim::refuse(std::string(op) + ": blockLen is not a whole number of elements");
  const uint32_t elems = p.blockLen / sizeof(T);
  const uint32_t row = ((p.blockLen + detail::kBlock - 1) / detail::kBlock + p.dstStride) * detail::kBlock / sizeof(T);
  const uint32_t padded = (p.blockLen + detail::kBlock - 1) / detail::kBlock * detail::kBlock / sizeof(T);
  T *d = dst.operand((p.blockCount - 1) * row + padded, op, PIPE_MTE2, true);
  const uint64_t src_row = elems + p.srcStride / sizeof(T);
  if (p.srcStride % sizeof(T) != 0) sim::refuse(std::string(op) + ": srcStride is not a whole number of elements");
  for (uint32_t i = 0; i < p.blockCount; i++) {
    std::memcpy(d + i * row, src.span(i * src_row, elems, op), elems * sizeof(T));
    for (uint32_t j = elems; j < padded; j++) {
      if (pad.isPad) {
        d[i * row + j] = pad.paddingValue;
      } else {
        std::memset(d + i * row + j, 0xff, sizeof(T));
      }
    }
  }
}
// UB -> GM with any byte length; the local side's stride in blocks, the global side's in bytes.
template <typename T>
__aicore__ inline void DataCopyPad(const GlobalTensor<T> &dst, const LocalTensor<T> &src, const DataCopyExtParams &p) {
  const char *op = "DataCopyPad(UB->GM)";
  detail::check_ub(src, op);
  if (p.blockCount == 0 || p.blockLen == 0) sim::refuse(std::string(op) + ": blockCount and blockLen must be >= 1");
  if (p.blockLen % sizeof(T) != 0 || p.dstStride % sizeof(T) != 0) sim::refuse(std::string(op) + ": lengths not whole elements");
  const uint32_t elems = p.blockLen / sizeof(T);
  const uint32_t row = ((p.blockLen + detail::kBlock - 1) / detail::kBlock + p.srcStride) * detail::kBlock / sizeof(T);
  const T *s = src.operand((p.blockCount - 1) * row + elems, op, PIPE_MTE3, false);
  const uint64_t dst_row = elems + p.dstStride / sizeof(T);
  for (uint32_t i = 0; i < p.blockCount; i++) std::memcpy(dst.span(i * dst_row, elems, op), s + i * row, elems * sizeof(T));
}

namespace detail {
// The vector forms in the sim's subset compute in F32 (and INT32 for Duplicate); the
// hardware supports more types, which these kernels do not use.
template <typename T>
constexpr bool vec_type = std::is_same<T, float>::value;

template <typename T, typename F>
void unary(const LocalTensor<T> &dst, const LocalTensor<T> &src, int32_t count, const char *op, F f) {
  static_assert(vec_type<T>, "the sim implements the F32 vector forms only");
  check_ub(dst, op);
  check_ub(src, op);
  if (count <= 0) sim::refuse(std::string(op) + ": count must be positive");
  const T *s = src.operand(count, op, PIPE_V, false);
  T *d = dst.operand(count, op, PIPE_V, true);
  for (int32_t i = 0; i < count; i++) d[i] = f(s[i]);
}
template <typename T, typename F>
void binary(const LocalTensor<T> &dst, const LocalTensor<T> &a, const LocalTensor<T> &b, int32_t count, const char *op, F f) {
  static_assert(vec_type<T>, "the sim implements the F32 vector forms only");
  check_ub(dst, op);
  check_ub(a, op);
  check_ub(b, op);
  if (count <= 0) sim::refuse(std::string(op) + ": count must be positive");
  const T *x = a.operand(count, op, PIPE_V, false);
  const T *y = b.operand(count, op, PIPE_V, false);
  T *d = dst.operand(count, op, PIPE_V, true);
  for (int32_t i = 0; i < count; i++) d[i] = f(x[i], y[i]);
}
}  // namespace detail

// Element-wise, first `count` elements ("tensor front n" forms of the API reference).
template <typename T>
__aicore__ inline void Add(const LocalTensor<T> &d, const LocalTensor<T> &a, const LocalTensor<T> &b, int32_t n) {
  detail::binary(d, a, b, n, "Add", [](T x, T y) { return x + y; });
}
template <typename T>
__aicore__ inline void Sub(const LocalTensor<T> &d, const LocalTensor<T> &a, const LocalTensor<T> &b, int32_t n) {
  detail::binary(d, a, b, n, "Sub", [](T x, T y) { return x - y; });
}
template <typename T>
__aicore__ inline void Mul(const LocalTensor<T> &d, const LocalTensor<T> &a, const LocalTensor<T> &b, int32_t n) {
  detail::binary(d, a, b, n, "Mul", [](T x, T y) { return x * y; });
}
template <typename T>
__aicore__ inline void Max(const LocalTensor<T> &d, const LocalTensor<T> &a, const LocalTensor<T> &b, int32_t n) {
  detail::binary(d, a, b, n, "Max", [](T x, T y) { return x > y ? x : y; });
}
template <typename T>
__aicore__ inline void Muls(const LocalTensor<T> &d, const LocalTensor<T> &s, T scalar, int32_t n) {
  detail::unary(d, s, n, "Muls", [scalar](T x) { return x * scalar; });
}
template <typename T>
__aicore__ inline void Adds(const LocalTensor<T> &d, const LocalTensor<T> &s, T scalar, int32_t n) {
  detail::unary(d, s, n, "Adds", [scalar](T x) { return x + scalar; });
}
template <typename T>
__aicore__ inline void Exp(const LocalTensor<T> &d, const LocalTensor<T> &s, int32_t n) {
  detail::unary(d, s, n, "Exp", [](T x) { return std::exp(x); });
}
template <typename T>
__aicore__ inline void Sqrt(const LocalTensor<T> &d, const LocalTensor<T> &s, int32_t n) {
  detail::unary(d, s, n, "Sqrt", [](T x) { return std::sqrt(x); });
}
// dst = src * scalar + dst.
template <typename T>
__aicore__ inline void Axpy(const LocalTensor<T> &d, const LocalTensor<T> &s, T scalar, int32_t n) {
  static_assert(detail::vec_type<T>, "the sim implements the F32 vector forms only");
  const char *op = "Axpy";
  detail::check_ub(d, op);
  detail::check_ub(s, op);
  if (n <= 0) sim::refuse("Axpy: count must be positive");
  const T *x = s.operand(n, op, PIPE_V, false);
  T *y = d.operand(n, op, PIPE_V, false);
  y = d.operand(n, op, PIPE_V, true);
  for (int32_t i = 0; i < n; i++) y[i] = x[i] * scalar + y[i];
}
template <typename T>
__aicore__ inline void Duplicate(const LocalTensor<T> &d, T scalar, int32_t n) {
  static_assert(detail::vec_type<T> || std::is_same<T, int32_t>::value, "the sim implements F32/INT32 Duplicate only");
  detail::check_ub(d, "Duplicate");
  if (n <= 0) sim::refuse("Duplicate: count must be positive");
  T *p = d.operand(n, "Duplicate", PIPE_V, true);
  for (int32_t i = 0; i < n; i++) p[i] = scalar;
}

// Cast: BF16 -> F32 exactly (CAST_NONE); F32 -> BF16 rounding to nearest even (CAST_RINT)
// or half away from zero (CAST_ROUND). Other pairs and modes are outside the sim's subset.
__aicore__ inline void Cast(const LocalTensor<float> &d, const LocalTensor<bfloat16_t> &s, RoundMode m, uint32_t n) {
  if (m != RoundMode::CAST_NONE) sim::refuse("Cast(bf16->f32): widening takes CAST_NONE");
  detail::check_ub(d, "Cast");
  detail::check_ub(s, "Cast");
  const bfloat16_t *x = s.operand(n, "Cast", PIPE_V, false);
  float *y = d.operand(n, "Cast", PIPE_V, true);
  for (uint32_t i = 0; i < n; i++) y[i] = ToFloat(x[i]);
}
__aicore__ inline void Cast(const LocalTensor<bfloat16_t> &d, const LocalTensor<float> &s, RoundMode m, uint32_t n) {
  if (m != RoundMode::CAST_RINT && m != RoundMode::CAST_ROUND)
    sim::refuse("Cast(f32->bf16): the sim implements CAST_RINT and CAST_ROUND only");
  detail::check_ub(d, "Cast");
  detail::check_ub(s, "Cast");
  const float *x = s.operand(n, "Cast", PIPE_V, false);
  bfloat16_t *y = d.operand(n, "Cast", PIPE_V, true);
  for (uint32_t i = 0; i < n; i++) {
    float v = x[i];
    if (m == RoundMode::CAST_ROUND) {
      uint32_t u;
      std::memcpy(&u, &v, 4);
      if ((u & 0x7fffffffu) <= 0x7f800000u) u += 0x8000u;
      y[i] = bfloat16_t{static_cast<uint16_t>(u >> 16)};
    } else {
      y[i] = ToBf16(v);
    }
  }
}

namespace detail {
// Reductions need a work tensor: at least one 32-byte block per 256-byte repeat of the
// source (a lower bound of the API reference's workLocal sizing for ReduceMax/ReduceSum).
template <typename T>
void reduce_checks(const LocalTensor<T> &dst, const LocalTensor<T> &src, const LocalTensor<T> &work, int32_t n, const char *op) {
  static_assert(vec_type<T>, "the sim implements the F32 reductions only");
  check_ub(dst, op);
  check_ub(src, op);
  check_ub(work, op);
  if (n <= 0) sim::refuse(std::string(op) + ": count must be positive");
  const uint32_t repeats = (static_cast<uint32_t>(n) * sizeof(T) + 255) / 256;
  const uint32_t need = repeats * kBlock / sizeof(T);
  work.operand(need, op, PIPE_V, true);
}
}  // namespace detail

// dst[0] = max of src[0..n) (calIndex false: the index is not written).
template <typename T>
__aicore__ inline void ReduceMax(const LocalTensor<T> &dst, const LocalTensor<T> &src, const LocalTensor<T> &work, int32_t n,
                                 bool calIndex = false) {
  if (calIndex) sim::refuse("ReduceMax: calIndex is outside the sim's subset");
  detail::reduce_checks(dst, src, work, n, "ReduceMax");
  const T *s = src.operand(n, "ReduceMax", PIPE_V, false);
  T m = s[0];
  for (int32_t i = 1; i < n; i++) m = s[i] > m ? s[i] : m;
  *dst.operand(1, "ReduceMax", PIPE_V, true) = m;
}
// dst[0] = sum of src[0..n), accumulated in F32.
template <typename T>
__aicore__ inline void ReduceSum(const LocalTensor<T> &dst, const LocalTensor<T> &src, const LocalTensor<T> &work, int32_t n) {
  detail::reduce_checks(dst, src, work, n, "ReduceSum");
  const T *s = src.operand(n, "ReduceSum", PIPE_V, false);
  T acc = 0;
  for (int32_t i = 0; i < n; i++) acc += s[i];
  *dst.operand(1, "ReduceSum", PIPE_V, true) = acc;
}

// SetFlag/WaitFlag: the source pipe signals, the destination pipe waits. A WaitFlag with
// no SetFlag before it never returns on the NPU; the sim refuses it.
namespace detail {
void set_flag(HardEvent e, int id);
void wait_flag(HardEvent e, int id);
void pipe_barrier(pipe_t p);
}  // namespace detail
template <HardEvent e>
__aicore__ inline void SetFlag(int id) {
  detail::set_flag(e, id);
}
template <HardEvent e>
__aicore__ inline void WaitFlag(int id) {
  detail::wait_flag(e, id);
}
template <pipe_t p>
__aicore__ inline void PipeBarrier() {
  detail::pipe_barrier(p);
}

}  // namespace AscendC
