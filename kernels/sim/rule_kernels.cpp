// Small AscendC kernels that each break one rule the sim enforces (or, with `comply`, keep
// it), so a test can show the sim refuses the first and runs the second.
#include "kernel_operator.h"

using namespace AscendC;

namespace {

// Rule numbers; crates/kernels/src/sim.rs (`Rule`) mirrors them.
enum Rule : uint32_t {
  kUbCapacity = 0,
  kL1Capacity,
  kL0aCapacity,
  kL0bCapacity,
  kL0cCapacity,
  kCopyLength,
  kOperandAlign,
  kFreeNeverAllocated,
  kDoubleFree,
  kEnqueOverDepth,
  kDequeEmpty,
  kAllocAllInUse,
  kUseAfterFree,
  kLiveAllocLimit,
  kUnsyncedRead,
  kWaitWithoutSet,
  kGlobalBounds,
  kEnqueuedUse,
};

struct Case {
  uint32_t rule;
  bool comply;
  float *gm;  // 64 floats of global memory
};

void run_case(const Case &c) {
  TPipe pipe;
  GlobalTensor<float> gm;
  gm.SetGlobalBuffer(c.gm, 64);
  const uint32_t extra = c.comply ? 0 : 32;
  switch (c.rule) {
    case kUbCapacity: {
      TBuf<TPosition::VECCALC> a;
      TQue<TPosition::VECIN, 1> b;
      pipe.InitBuffer(a, 128 * 1024);
      pipe.InitBuffer(b, 2, 32 * 1024 + extra / 2);
      break;
    }
    case kL1Capacity: {
      TBuf<TPosition::A1> a;
      pipe.InitBuffer(a, 512 * 1024 + extra);
      break;
    }
    case kL0aCapacity: {
      TBuf<TPosition::A2> a;
      pipe.InitBuffer(a, 64 * 1024 + extra);
      break;
    }
    case kL0bCapacity: {
      TBuf<TPosition::B2> a;
      pipe.InitBuffer(a, 64 * 1024 + extra);
      break;
    }
    case kL0cCapacity: {
      TBuf<TPosition::CO1> a;
      pipe.InitBuffer(a, 128 * 1024 + extra);
      break;
    }
    case kCopyLength: {
      TQue<TPosition::VECIN, 1> q;
      pipe.InitBuffer(q, 1, 256);
      LocalTensor<float> t = q.AllocTensor<float>();
      DataCopy(t, gm, c.comply ? 16 : 15);
      q.EnQue(t);
      q.FreeTensor(q.DeQue<float>());
      break;
    }
    case kOperandAlign: {
      TBuf<TPosition::VECCALC> b;
      pipe.InitBuffer(b, 256);
      LocalTensor<float> t = b.Get<float>();
      Duplicate(t, 1.0f, 64);
      Adds(t[c.comply ? 8 : 3], t[c.comply ? 8 : 3], 1.0f, 16);
      break;
    }
    case kFreeNeverAllocated: {
      TQue<TPosition::VECIN, 1> q, other;
      pipe.InitBuffer(q, 1, 256);
      pipe.InitBuffer(other, 1, 256);
      LocalTensor<float> t = (c.comply ? q : other).AllocTensor<float>();
      q.FreeTensor(t);
      break;
    }
    case kDoubleFree: {
      TQue<TPosition::VECIN, 1> q;
      pipe.InitBuffer(q, 1, 256);
      LocalTensor<float> t = q.AllocTensor<float>();
      q.FreeTensor(t);
      if (!c.comply) q.FreeTensor(t);
      break;
    }
    case kEnqueOverDepth: {
      TQue<TPosition::VECIN, 1> q;
      pipe.InitBuffer(q, 2, 256);
      LocalTensor<float> a = q.AllocTensor<float>();
      LocalTensor<float> b = q.AllocTensor<float>();
      q.EnQue(a);
      if (c.comply) q.FreeTensor(q.DeQue<float>());
      q.EnQue(b);
      break;
    }
    case kDequeEmpty: {
      TQue<TPosition::VECIN, 1> q;
      pipe.InitBuffer(q, 1, 256);
      if (c.comply) q.EnQue(q.AllocTensor<float>());
      q.DeQue<float>();
      break;
    }
    case kAllocAllInUse: {
      TQue<TPosition::VECIN, 2> q;
      pipe.InitBuffer(q, 2, 256);
      LocalTensor<float> a = q.AllocTensor<float>();
      q.AllocTensor<float>();
      if (c.comply) q.FreeTensor(a);
      q.AllocTensor<float>();
      break;
    }
    case kUseAfterFree: {
      TQue<TPosition::VECCALC, 1> q;
      pipe.InitBuffer(q, 1, 256);
      LocalTensor<float> a = q.AllocTensor<float>();
      if (!c.comply) q.FreeTensor(a);
      Duplicate(a, 0.0f, 8);
      break;
    }
    case kLiveAllocLimit: {
      TQue<TPosition::VECIN, 1> q[9];
      for (auto &x : q) pipe.InitBuffer(x, 1, 64);
      for (uint32_t i = 0; i < (c.comply ? 8u : 9u); i++) q[i].AllocTensor<float>();
      break;
    }
    case kUnsyncedRead: {
      TBuf<TPosition::VECCALC> b;
      pipe.InitBuffer(b, 256);
      LocalTensor<float> t = b.Get<float>();
      DataCopy(t, gm, 64);
      if (c.comply) {
        SetFlag<HardEvent::MTE2_V>(EVENT_ID0);
        WaitFlag<HardEvent::MTE2_V>(EVENT_ID0);
      }
      Adds(t, t, 1.0f, 64);
      break;
    }
    case kWaitWithoutSet: {
      if (c.comply) SetFlag<HardEvent::V_S>(EVENT_ID1);
      WaitFlag<HardEvent::V_S>(EVENT_ID1);
      break;
    }
    case kGlobalBounds: {
      TQue<TPosition::VECIN, 1> q;
      pipe.InitBuffer(q, 1, 256);
      LocalTensor<float> t = q.AllocTensor<float>();
      DataCopy(t, gm[c.comply ? 0 : 8], 64);
      q.FreeTensor(t);
      break;
    }
    case kEnqueuedUse: {
      TQue<TPosition::VECOUT, 1> q;
      pipe.InitBuffer(q, 1, 256);
      LocalTensor<float> t = q.AllocTensor<float>();
      q.EnQue(t);
      if (c.comply) t = q.DeQue<float>();
      Duplicate(t, 0.0f, 8);
      break;
    }
    default: sim::refuse("unknown rule case");
  }
}

void body(void *p) { run_case(*static_cast<Case *>(p)); }

}  // namespace

// Runs rule case `rule` on `block_dim` blocks, breaking the rule unless `comply`.
extern "C" int sim_rule_case(uint32_t rule, bool comply, uint32_t block_dim, char *err, size_t err_len) {
  float gm[64] = {};
  Case c{rule, comply, gm};
  return sim::run_blocks(block_dim, body, &c, err, err_len);
}
