// The sim's core state: qualifiers, scalar types, the rule-violation error, the per-core
// on-chip memories and their capacities, the pipes and the hazard clock.
//
// Written from the public AscendC documentation (hiascend.com, CANN 8.0 / 8.5 Ascend C API
// reference and programming guide); no CANN header is used or copied. Everything lives in
// thread-local state: each launch runs its block indices one after another on the calling
// thread, as CANN's CPU debug mode does, so tests on several threads do not interfere.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

// Kernel qualifiers are address-space and entry markers for bisheng; on the CPU they vanish.
#define __aicore__
#define __global__
#define __gm__
#define GM_ADDR uint8_t *

namespace AscendC {

// bfloat16_t is a distinct type so that Cast's overloads see it; stored as the top 16 bits
// of an IEEE float.
struct bfloat16_t {
  uint16_t bits;
};

// Logical buffer positions ("TPosition" in the API reference).
enum class TPosition : uint8_t { GM, VECIN, VECOUT, VECCALC, A1, A2, B1, B2, CO1, CO2 };
using QuePosition = TPosition;

// Pipes of one core ("pipe_t"); S is the scalar unit.
enum pipe_t : uint8_t { PIPE_S = 0, PIPE_V, PIPE_MTE2, PIPE_MTE3, PIPE_ALL, PIPE_NONE };

// Events a SetFlag/WaitFlag pair can carry, named source_destination.
enum class HardEvent : uint8_t { MTE2_V, V_MTE3, MTE3_V, V_MTE2, V_S, S_V, MTE2_S, S_MTE2, MTE3_S, S_MTE3, MTE2_MTE3, MTE3_MTE2 };

enum TEventID : uint8_t { EVENT_ID0 = 0, EVENT_ID1, EVENT_ID2, EVENT_ID3, EVENT_ID4, EVENT_ID5, EVENT_ID6, EVENT_ID7 };

}  // namespace AscendC

namespace sim {

// A rule a 910B (or the AscendC runtime on it) enforces was broken; the launcher turns it
// into an error code and the message, naming the rule and its source.
struct Violation {
  std::string what;
};
[[noreturn]] void refuse(const std::string &what);

// One physical on-chip memory of a core.
enum class Mem : uint8_t { UB = 0, L1, L0A, L0B, L0C, COUNT };
const char *mem_name(Mem m);
// Capacities of an Atlas A2 (910B) AI Core: CANN's platform configuration
// (`platform_config/Ascend910B*.ini`, [AICoreSpec]): ub_size=196608, l1_size=524288,
// l0_a_size=65536, l0_b_size=65536, l0_c_size=131072. The programming guide ("Storage Units")
// says the sizes vary by chip and are read with GetCoreMemSize.
uint32_t mem_capacity(Mem m);
// Start-address alignment of each memory: Ascend C API reference, "General Restrictions",
// table 2 (CANN 8.0): UB 32 B, L1 32 B, L0A/L0B 512 B, L0C 64 B.
uint32_t mem_alignment(Mem m);
Mem mem_of(AscendC::TPosition p);
bool is_ub(AscendC::TPosition p);

// The state of one buffer a queue or TBuf owns. Tensors are views of a slot; a view carries
// the slot's generation, so using it after FreeTensor is caught.
enum class SlotState : uint8_t { Free, Allocated, Enqueued, Dequeued, Fixed };
struct Slot {
  uint8_t *base = nullptr;
  uint32_t bytes = 0;
  AscendC::TPosition pos = AscendC::TPosition::VECCALC;
  SlotState state = SlotState::Free;
  uint32_t gen = 0;
  const void *owner = nullptr;
  const char *owner_kind = "";
  // Hazard tracking (see `touch`): last write and last read, pipe and clock.
  AscendC::pipe_t wpipe = AscendC::PIPE_NONE;
  uint64_t wseq = 0;
  AscendC::pipe_t rpipe = AscendC::PIPE_NONE;
  uint64_t rseq = 0;
  uint64_t enq_seq = 0;
};

// Per-core (per block index) state.
struct Core {
  uint8_t *mem[static_cast<int>(Mem::COUNT)] = {};
  uint32_t used[static_cast<int>(Mem::COUNT)] = {};
  uint64_t clock = 0;
  // synced[a][b]: the clock of the latest synchronisation that orders pipe a's earlier work
  // before pipe b's later work.
  uint64_t synced[4][4] = {};
  // Pending SetFlag per event and id (clock of the SetFlag, 0 if none).
  uint64_t flags[12][8] = {};
  // Tensors allocated and not yet freed, per position (the AllocTensor limit).
  uint32_t live_allocs[10] = {};
  uint32_t block_idx = 0;
  uint32_t block_num = 0;
  bool pipe_alive = false;
};
Core &core();

// Records an access by `pipe` to `s` and refuses a read-after-write or write-after-read
// across pipes with no synchronisation in between. Within one pipe instructions run in
// order; across pipes they do not (programming guide, "Synchronisation control": queues or
// SetFlag/WaitFlag order MTE2, V, MTE3 and the scalar unit).
void touch(Slot &s, AscendC::pipe_t pipe, bool write, const char *op);

// Runs `body` for each block index in turn on fresh core state; turns a Violation into a
// non-zero status with the message in `err`.
using BlockFn = void (*)(void *ctx);
int run_blocks(uint32_t block_dim, BlockFn body, void *ctx, char *err, size_t err_len);

}  // namespace sim

namespace AscendC {
// GetBlockIdx / GetBlockNum: the index of this instance and the launch's block dim.
inline int64_t GetBlockIdx() { return sim::core().block_idx; }
inline int64_t GetBlockNum() { return sim::core().block_num; }

inline float ToFloat(bfloat16_t v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// Round to nearest, ties to even (CAST_RINT); NaN stays NaN.
inline bfloat16_t ToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bfloat16_t{static_cast<uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bfloat16_t{static_cast<uint16_t>(u >> 16)};
}
}  // namespace AscendC
