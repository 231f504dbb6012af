// The sim's per-core state, memory carving, hazard checks, synchronisation and the block
// loop that runs a launch one block index at a time.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "kernel_operator.h"

namespace sim {

namespace {
thread_local Core g_core;
thread_local bool g_in_launch = false;

const char *pipe_name(AscendC::pipe_t p) {
  switch (p) {
    case AscendC::PIPE_S: return "S (scalar)";
    case AscendC::PIPE_V: return "V (vector)";
    case AscendC::PIPE_MTE2: return "MTE2 (copy in)";
    case AscendC::PIPE_MTE3: return "MTE3 (copy out)";
    default: return "?";
  }
}
}  // namespace

void refuse(const std::string &what) { throw Violation{what}; }

Core &core() {
  if (!g_in_launch) refuse("AscendC API called outside a launch");
  return g_core;
}

const char *mem_name(Mem m) {
  static const char *names[] = {"UB", "L1", "L0A", "L0B", "L0C"};
  return names[static_cast<int>(m)];
}
uint32_t mem_capacity(Mem m) {
  static const uint32_t caps[] = {196608, 524288, 65536, 65536, 131072};
  return caps[static_cast<int>(m)];
}
uint32_t mem_alignment(Mem m) {
  static const uint32_t align[] = {32, 32, 512, 512, 64};
  return align[static_cast<int>(m)];
}
// TPosition -> physical memory: API reference, "General Restrictions", table 1 (Atlas A2).
Mem mem_of(AscendC::TPosition p) {
  using AscendC::TPosition;
  switch (p) {
    case TPosition::VECIN:
    case TPosition::VECOUT:
    case TPosition::VECCALC: return Mem::UB;
    case TPosition::A1:
    case TPosition::B1: return Mem::L1;
    case TPosition::A2: return Mem::L0A;
    case TPosition::B2: return Mem::L0B;
    case TPosition::CO1: return Mem::L0C;
    default: refuse("position has no local memory on Atlas A2 (CO2 and GM are global memory)");
  }
}
bool is_ub(AscendC::TPosition p) {
  using AscendC::TPosition;
  return p == TPosition::VECIN || p == TPosition::VECOUT || p == TPosition::VECCALC;
}

void touch(Slot &s, AscendC::pipe_t pipe, bool write, const char *op) {
  Core &c = core();
  const uint64_t now = ++c.clock;
  auto ordered = [&](AscendC::pipe_t from, uint64_t at) {
    return from == AscendC::PIPE_NONE || from == pipe || c.synced[from][pipe] > at;
  };
  if (!ordered(s.wpipe, s.wseq))
    refuse(std::string(op) + ": reads or overwrites data pipe " + pipe_name(s.wpipe) + " wrote, from pipe " +
           pipe_name(pipe) + ", with no EnQue/DeQue, SetFlag/WaitFlag or PipeBarrier<PIPE_ALL> between (a race on the NPU)");
  if (write && !ordered(s.rpipe, s.rseq))
    refuse(std::string(op) + ": pipe " + pipe_name(pipe) + " overwrites data pipe " + pipe_name(s.rpipe) +
           " is still reading, with no synchronisation between (a race on the NPU)");
  if (write) {
    s.wpipe = pipe;
    s.wseq = now;
  } else {
    s.rpipe = pipe;
    s.rseq = now;
  }
}

int run_blocks(uint32_t block_dim, BlockFn body, void *ctx, char *err, size_t err_len) {
  auto fail = [&](const std::string &m) {
    if (err && err_len) std::snprintf(err, err_len, "%s", m.c_str());
    return 1;
  };
  // blockDim is a count of logical cores in [1, 65535] (API reference, SetBlockDim; the
  // <<<>>> launch takes the same value).
  if (block_dim == 0 || block_dim > 65535) return fail("blockDim " + std::to_string(block_dim) + " outside [1, 65535] (SetBlockDim)");
  if (g_in_launch) return fail("nested launch");
  std::unique_ptr<uint8_t[]> mem[static_cast<int>(Mem::COUNT)];
  for (int m = 0; m < static_cast<int>(Mem::COUNT); m++) mem[m].reset(new uint8_t[mem_capacity(static_cast<Mem>(m))]);
  for (uint32_t b = 0; b < block_dim; b++) {
    g_core = Core{};
    for (int m = 0; m < static_cast<int>(Mem::COUNT); m++) {
      g_core.mem[m] = mem[m].get();
      // Local memory is not cleared between kernels: garbage, so a read of an unwritten
      // buffer shows in the numbers.
      std::fill_n(mem[m].get(), mem_capacity(static_cast<Mem>(m)), static_cast<uint8_t>(0xa5));
    }
    g_core.block_idx = b;
    g_core.block_num = block_dim;
    g_in_launch = true;
    try {
      body(ctx);
    } catch (const Violation &v) {
      g_in_launch = false;
      return fail("block " + std::to_string(b) + ": " + v.what);
    } catch (const std::exception &e) {
      g_in_launch = false;
      return fail("block " + std::to_string(b) + ": " + e.what());
    }
    g_in_launch = false;
  }
  return 0;
}

}  // namespace sim

namespace AscendC {

TPipe::TPipe() {
  sim::Core &c = sim::core();
  // One TPipe per kernel instance owns the local memory (programming guide, TPipe).
  if (c.pipe_alive) sim::refuse("a second TPipe while one is alive");
  c.pipe_alive = true;
}
TPipe::~TPipe() {
  // Destructors must not throw; a TPipe outlives nothing that can fail here.
  sim::Core &c = sim::core();
  c.pipe_alive = false;
  std::fill(std::begin(c.used), std::end(c.used), 0u);
}

void TPipe::carve(sim::Slot &s, TPosition pos, uint32_t len, const void *owner, const char *kind) {
  sim::Core &c = sim::core();
  const sim::Mem m = sim::mem_of(pos);
  const int mi = static_cast<int>(m);
  const uint32_t align = sim::mem_alignment(m);
  const uint64_t start = (static_cast<uint64_t>(c.used[mi]) + align - 1) / align * align;
  const uint64_t end = start + len;
  if (end > sim::mem_capacity(m))
    sim::refuse(std::string("InitBuffer: ") + kind + " of " + std::to_string(len) + " bytes needs " + sim::mem_name(m) +
                " up to byte " + std::to_string(end) + ", past its " + std::to_string(sim::mem_capacity(m)) +
                " bytes (Atlas A2 AI Core: platform_config Ascend910B*.ini [AICoreSpec])");
  c.used[mi] = static_cast<uint32_t>(end);
  s.base = c.mem[mi] + start;
  s.bytes = len;
  s.pos = pos;
  s.owner = owner;
  s.owner_kind = kind;
}

namespace detail {
namespace {
struct EventPipes {
  pipe_t from, to;
};
EventPipes pipes_of(HardEvent e) {
  switch (e) {
    case HardEvent::MTE2_V: return {PIPE_MTE2, PIPE_V};
    case HardEvent::V_MTE3: return {PIPE_V, PIPE_MTE3};
    case HardEvent::MTE3_V: return {PIPE_MTE3, PIPE_V};
    case HardEvent::V_MTE2: return {PIPE_V, PIPE_MTE2};
    case HardEvent::V_S: return {PIPE_V, PIPE_S};
    case HardEvent::S_V: return {PIPE_S, PIPE_V};
    case HardEvent::MTE2_S: return {PIPE_MTE2, PIPE_S};
    case HardEvent::S_MTE2: return {PIPE_S, PIPE_MTE2};
    case HardEvent::MTE3_S: return {PIPE_MTE3, PIPE_S};
    case HardEvent::S_MTE3: return {PIPE_S, PIPE_MTE3};
    case HardEvent::MTE2_MTE3: return {PIPE_MTE2, PIPE_MTE3};
    case HardEvent::MTE3_MTE2: return {PIPE_MTE3, PIPE_MTE2};
  }
  sim::refuse("unknown HardEvent");
}
void check_id(int id) {
  if (id < 0 || id > 7) sim::refuse("event id outside EVENT_ID0..EVENT_ID7");
}
}  // namespace

void set_flag(HardEvent e, int id) {
  check_id(id);
  sim::Core &c = sim::core();
  uint64_t &f = c.flags[static_cast<int>(e)][id];
  if (f != 0) sim::refuse("SetFlag on an event id already set and not yet waited for");
  f = ++c.clock;
}
void wait_flag(HardEvent e, int id) {
  check_id(id);
  sim::Core &c = sim::core();
  uint64_t &f = c.flags[static_cast<int>(e)][id];
  if (f == 0) sim::refuse("WaitFlag with no SetFlag before it (waits forever on the NPU)");
  const EventPipes p = pipes_of(e);
  // Work the source pipe issued before SetFlag is ordered before the destination's later work.
  c.synced[p.from][p.to] = std::max(c.synced[p.from][p.to], f);
  f = 0;
}
void pipe_barrier(pipe_t p) {
  sim::Core &c = sim::core();
  const uint64_t now = ++c.clock;
  if (p == PIPE_ALL) {
    for (auto &row : c.synced)
      for (auto &v : row) v = now;
  }
  // PipeBarrier<PIPE_V> and the like order one pipe with itself, which the sim already does.
}
}  // namespace detail

}  // namespace AscendC
