// The sim's memory model: GlobalTensor, LocalTensor, TPipe, TQue and TBuf, with the
// capacity, alignment and queue-discipline rules each one enforces (sources beside each).
#pragma once

#include <deque>
#include <string>
#include <vector>

#include "sim_core.h"

namespace AscendC {

// A view of global memory. SetGlobalBuffer's size (elements) bounds every access, so an
// indexing bug shows as a refusal rather than a silent write elsewhere.
template <typename T>
class GlobalTensor {
 public:
  __aicore__ inline void SetGlobalBuffer(__gm__ T *buffer, uint64_t size) {
    base_ = buffer;
    size_ = size;
  }
  __aicore__ inline GlobalTensor operator[](uint64_t offset) const {
    check(offset, 0, "GlobalTensor[]");
    GlobalTensor t;
    t.base_ = base_ + offset;
    t.size_ = size_ - offset;
    return t;
  }
  // Scalar access to global memory goes through the scalar unit's data cache.
  __aicore__ inline T GetValue(uint64_t i) const {
    check(i, 1, "GlobalTensor::GetValue");
    return base_[i];
  }
  __aicore__ inline void SetValue(uint64_t i, T v) {
    check(i, 1, "GlobalTensor::SetValue");
    base_[i] = v;
  }
  __aicore__ inline uint64_t GetSize() const { return size_; }

  // Sim internals: the address `count` elements from `offset` cover, checked.
  T *span(uint64_t offset, uint64_t count, const char *op) const {
    check(offset, count, op);
    return base_ + offset;
  }

 private:
  void check(uint64_t offset, uint64_t count, const char *op) const {
    if (base_ == nullptr) sim::refuse(std::string(op) + ": GlobalTensor used before SetGlobalBuffer");
    // Written so that a huge offset (a negative index cast to unsigned) cannot wrap past it.
    if (offset > size_ || count > size_ - offset)
      sim::refuse(std::string(op) + ": global access [" + std::to_string(offset) + ", " +
                  std::to_string(offset + count) + ") outside the buffer of " + std::to_string(size_) +
                  " elements given to SetGlobalBuffer (out-of-bounds global access)");
  }
  T *base_ = nullptr;
  uint64_t size_ = 0;
};

// A view of one queue or TBuf buffer (or part of it).
template <typename T>
class LocalTensor {
 public:
  LocalTensor() = default;
  __aicore__ inline LocalTensor operator[](uint32_t offset) const {
    if (offset > elems_) sim::refuse("LocalTensor[]: offset " + std::to_string(offset) + " past the tensor's " + std::to_string(elems_) + " elements");
    LocalTensor t = *this;
    t.byte_off_ += offset * sizeof(T);
    t.elems_ -= offset;
    return t;
  }
  __aicore__ inline uint32_t GetSize() const { return elems_; }
  // Scalar reads and writes of local memory run on the scalar unit (pipe S).
  __aicore__ inline T GetValue(uint32_t i) const {
    T *p = data(i, 1, "LocalTensor::GetValue", PIPE_S, false);
    return *p;
  }
  __aicore__ inline void SetValue(uint32_t i, T v) const {
    T *p = data(i, 1, "LocalTensor::SetValue", PIPE_S, true);
    *p = v;
  }
  template <typename U>
  __aicore__ inline LocalTensor<U> ReinterpretCast() const {
    LocalTensor<U> t;
    t.slot_ = slot_;
    t.gen_ = gen_;
    t.byte_off_ = byte_off_;
    t.elems_ = static_cast<uint32_t>(elems_ * sizeof(T) / sizeof(U));
    return t;
  }

  // Sim internals. `data` checks that the view is live (its buffer not freed since, not
  // sitting in a queue), that [i, i+count) lies inside it, and records the access by `pipe`.
  T *data(uint32_t i, uint32_t count, const char *op, pipe_t pipe, bool write) const {
    live(op);
    if (static_cast<uint64_t>(i) + count > elems_)
      sim::refuse(std::string(op) + ": " + std::to_string(count) + " elements from " + std::to_string(i) +
                  " exceed the local tensor's " + std::to_string(elems_) + " elements");
    sim::touch(*slot_, pipe, write, op);
    return reinterpret_cast<T *>(slot_->base + byte_off_) + i;
  }
  // The address as an operand of a vector or copy instruction: Ascend C API reference,
  // "General Restrictions" table 2 — operand start addresses in local memory are aligned
  // (UB 32 B, L1 32 B, L0A/L0B 512 B, L0C 64 B).
  T *operand(uint32_t count, const char *op, pipe_t pipe, bool write) const {
    T *p = data(0, count, op, pipe, write);
    uint32_t align = sim::mem_alignment(sim::mem_of(slot_->pos));
    uint64_t addr = static_cast<uint64_t>(slot_->base - sim::core().mem[static_cast<int>(sim::mem_of(slot_->pos))]) + byte_off_;
    if (addr % align != 0)
      sim::refuse(std::string(op) + ": local operand at byte offset " + std::to_string(addr) + " of " +
                  sim::mem_name(sim::mem_of(slot_->pos)) + " is not " + std::to_string(align) +
                  "-byte aligned (Ascend C API reference, General Restrictions, table 2)");
    return p;
  }
  TPosition position() const { return slot_ ? slot_->pos : TPosition::GM; }
  void live(const char *op) const {
    if (slot_ == nullptr) sim::refuse(std::string(op) + ": LocalTensor that no queue or TBuf gave out");
    if (slot_->gen != gen_ || slot_->state == sim::SlotState::Free)
      sim::refuse(std::string(op) + ": LocalTensor used after FreeTensor (its buffer may already hold other data)");
    if (slot_->state == sim::SlotState::Enqueued)
      sim::refuse(std::string(op) + ": LocalTensor used while enqueued (DeQue it first)");
  }

  sim::Slot *slot_ = nullptr;
  uint32_t gen_ = 0;
  uint32_t byte_off_ = 0;
  uint32_t elems_ = 0;
};

class TPipe;

// Shared queue machinery; TQue<pos, depth> fixes the position and the depth.
class TQueBase {
 public:
  template <typename T>
  __aicore__ inline LocalTensor<T> AllocTensor() {
    inited("AllocTensor");
    // AllocTensor's constraint (API reference, AllocTensor, CANN 8.1+): tensors allocated and
    // not freed, over all queues of one TPosition, at most 8 on Atlas A2; beyond it the
    // NPU hangs and the CPU debug mode reports an error.
    uint32_t &live = sim::core().live_allocs[static_cast<int>(pos_)];
    if (live >= 8) sim::refuse("AllocTensor: a 9th tensor allocated and not freed on one TPosition (Atlas A2 allows 8; API reference, AllocTensor constraints)");
    for (auto &s : slots_) {
      if (s.state == sim::SlotState::Free) {
        s.state = sim::SlotState::Allocated;
        // AllocTensor waits until the buffer's previous user is done with it.
        s.wpipe = s.rpipe = PIPE_NONE;
        live++;
        LocalTensor<T> t;
        t.slot_ = &s;
        t.gen_ = s.gen;
        t.elems_ = s.bytes / sizeof(T);
        return t;
      }
    }
    sim::refuse("AllocTensor: all " + std::to_string(slots_.size()) +
                " buffers given to InitBuffer are in use (on the NPU this waits forever)");
  }
  template <typename T>
  __aicore__ inline bool EnQue(const LocalTensor<T> &t) {
    sim::Slot &s = mine(t, "EnQue");
    if (s.state != sim::SlotState::Allocated) sim::refuse("EnQue: tensor is not freshly allocated (enqueued twice, or already dequeued)");
    if (fifo_.size() >= depth_)
      sim::refuse("EnQue: queue of depth " + std::to_string(depth_) + " is full (EnQue returns false and the tensor is lost; API reference, EnQue)");
    s.state = sim::SlotState::Enqueued;
    s.enq_seq = ++sim::core().clock;
    fifo_.push_back(&s);
    return true;
  }
  template <typename T>
  __aicore__ inline LocalTensor<T> DeQue() {
    inited("DeQue");
    if (fifo_.empty()) sim::refuse("DeQue: queue is empty (on the NPU this waits forever)");
    sim::Slot *s = fifo_.front();
    fifo_.pop_front();
    s->state = sim::SlotState::Dequeued;
    // EnQue/DeQue is the queue's synchronisation: writes before EnQue are visible after DeQue.
    if (s->wseq <= s->enq_seq) s->wpipe = PIPE_NONE;
    LocalTensor<T> t;
    t.slot_ = s;
    t.gen_ = s->gen;
    t.elems_ = s->bytes / sizeof(T);
    return t;
  }
  template <typename T>
  __aicore__ inline void FreeTensor(const LocalTensor<T> &t) {
    if (t.slot_ == nullptr) sim::refuse("FreeTensor: tensor was never allocated from a queue");
    sim::Slot &s = mine(t, "FreeTensor");
    if (s.gen != t.gen_ || s.state == sim::SlotState::Free) sim::refuse("FreeTensor: tensor freed twice");
    if (s.state == sim::SlotState::Enqueued) sim::refuse("FreeTensor: tensor still enqueued (DeQue it first)");
    s.state = sim::SlotState::Free;
    s.gen++;
    sim::core().live_allocs[static_cast<int>(pos_)]--;
  }
  __aicore__ inline int32_t GetTensorCountInQue() const { return static_cast<int32_t>(fifo_.size()); }

 protected:
  TQueBase(TPosition pos, uint32_t depth) : pos_(pos), depth_(depth) {}
  friend class TPipe;
  void inited(const char *op) const {
    if (slots_.empty()) sim::refuse(std::string(op) + ": queue used before TPipe::InitBuffer");
  }
  template <typename T>
  sim::Slot &mine(const LocalTensor<T> &t, const char *op) {
    inited(op);
    if (t.slot_ == nullptr || t.slot_->owner != this)
      sim::refuse(std::string(op) + ": tensor does not belong to this queue (never allocated from it)");
    if (t.byte_off_ != 0) sim::refuse(std::string(op) + ": pass the tensor AllocTensor/DeQue returned, not a slice of it");
    return *t.slot_;
  }
  TPosition pos_;
  uint32_t depth_;
  std::vector<sim::Slot> slots_;
  std::deque<sim::Slot *> fifo_;
};

template <TPosition pos, int32_t depth>
class TQue : public TQueBase {
  // TQue's depth: the number of tensors that may sit enqueued at once; the inplace form
  // (depth 0) is not part of the sim's subset.
  static_assert(depth >= 1, "the sim implements TQue with depth >= 1 only");

 public:
  TQue() : TQueBase(pos, depth) {}
};

// A fixed buffer for temporaries (VECCALC and the like): no queue, Get() views it.
template <TPosition pos>
class TBuf {
 public:
  template <typename T>
  __aicore__ inline LocalTensor<T> Get() {
    return Get<T>(slot_.bytes / sizeof(T));
  }
  template <typename T>
  __aicore__ inline LocalTensor<T> Get(uint32_t len) {
    if (slot_.base == nullptr) sim::refuse("TBuf::Get: buffer used before TPipe::InitBuffer");
    if (static_cast<uint64_t>(len) * sizeof(T) > slot_.bytes) sim::refuse("TBuf::Get: " + std::to_string(len) + " elements exceed the buffer");
    LocalTensor<T> t;
    t.slot_ = &slot_;
    t.gen_ = slot_.gen;
    t.elems_ = len;
    return t;
  }

 private:
  friend class TPipe;
  sim::Slot slot_;
};

// Owns the core's local memory: InitBuffer carves queues' and TBufs' buffers out of the
// physical memory their position maps to.
class TPipe {
 public:
  TPipe();
  ~TPipe();
  TPipe(const TPipe &) = delete;
  TPipe &operator=(const TPipe &) = delete;

  template <TPosition pos, int32_t depth>
  __aicore__ inline bool InitBuffer(TQue<pos, depth> &que, uint8_t num, uint32_t len) {
    if (!que.slots_.empty()) sim::refuse("InitBuffer: queue initialised twice");
    if (num == 0 || len == 0) sim::refuse("InitBuffer: zero buffers or zero length");
    que.slots_.resize(num);
    for (auto &s : que.slots_) carve(s, pos, len, &que, "TQue");
    return true;
  }
  template <TPosition pos>
  __aicore__ inline bool InitBuffer(TBuf<pos> &buf, uint32_t len) {
    if (buf.slot_.base != nullptr) sim::refuse("InitBuffer: TBuf initialised twice");
    if (len == 0) sim::refuse("InitBuffer: zero length");
    carve(buf.slot_, pos, len, &buf, "TBuf");
    buf.slot_.state = sim::SlotState::Fixed;
    return true;
  }
  void Destroy() {}

 private:
  void carve(sim::Slot &s, TPosition pos, uint32_t len, const void *owner, const char *kind);
};

}  // namespace AscendC
