// CUDA's device built-ins on the host, enough to run python/lnrs/cuda/norm.cu on a CPU.
//
// A CTA runs as blockDim cooperative fibers on one OS thread (started by makecontext, switched
// by _setjmp/_longjmp); CTAs run one after another. __syncthreads and warp shuffles are
// barriers: a fiber that reaches one yields, and the barrier opens when every thread of the CTA
// (or lane of the warp) has arrived. Between barriers the fibers run one at a time, in an order
// a launch argument picks (launch.h's Schedule: thread by thread or warp by warp, ascending or
// descending), so a missing barrier shows up as results that depend on the order. The checks
// are stricter than the
// hardware: a barrier that not every thread reaches (a thread exits while others wait, or no
// fiber can run) and a shuffle outside a full warp are errors, reported by the launch.
//
// __shared__ becomes thread_local: the fibers of a CTA share one OS thread, so per OS thread is
// per CTA. Dynamic shared memory is the array `dyn_smem`, poisoned (0xff bytes: NaN) before each
// CTA and guarded after its requested size.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <ucontext.h>

#include <cstddef>
#include <functional>
#include <string>
#include <vector>

#define LNRS_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ thread_local

struct dim3 {
  unsigned x, y, z;
};

namespace emu {

constexpr size_t kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kDynSmemBytes = 228 * 1024;
constexpr size_t kGuardBytes = 256;

enum State { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

// A fiber starts through its ucontext (once); after that, switches are _setjmp/_longjmp between
// its buffer and the scheduler's, which save no signal mask (swapcontext makes a system call).
struct Fiber {
  ucontext_t ctx;
  jmp_buf jb;
  bool started;
  unsigned tid;
  State state;
  unsigned shuffles;  // shuffles done: their parity picks the exchange buffer
};

struct Block {
  dim3 idx, dim, grid;
  std::vector<Fiber> fibers;
  unsigned exited = 0;
  unsigned block_arrived = 0;
  unsigned warp_arrived[kMaxThreads / 32];
  uint64_t shfl[2][kMaxThreads];
  std::string error;
};

extern Block* blk;
extern Fiber* cur;
extern jmp_buf scheduler;

inline dim3 thread_idx() { return dim3{cur->tid, 0, 0}; }

// Stops the calling fiber for good and hands the error to the launch.
[[noreturn]] inline void fail(const std::string& what) {
  if (blk->error.empty()) blk->error = what;
  cur->state = DONE;
  _longjmp(scheduler, 1);
}

inline void yield() {
  if (!_setjmp(cur->jb)) _longjmp(scheduler, 1);
}

inline void block_barrier() {
  Block& b = *blk;
  if (b.exited) fail("__syncthreads after a thread of the CTA exited");
  cur->state = AT_BLOCK_BARRIER;
  if (++b.block_arrived == b.dim.x) {
    b.block_arrived = 0;
    for (Fiber& f : b.fibers)
      if (f.state == AT_BLOCK_BARRIER) f.state = RUNNABLE;
  }
  yield();
}

inline void warp_barrier() {
  Block& b = *blk;
  const unsigned w = cur->tid / 32;
  cur->state = AT_WARP_BARRIER;
  if (++b.warp_arrived[w] == 32) {
    b.warp_arrived[w] = 0;
    for (unsigned t = w * 32; t < w * 32 + 32; ++t)
      if (b.fibers[t].state == AT_WARP_BARRIER) b.fibers[t].state = RUNNABLE;
  }
  yield();
}

}  // namespace emu

// Defined before norm.cu's `extern __shared__` declaration of it, so that the compiler sees a
// constant-initialised thread_local (no initialisation call on each access).
alignas(16) thread_local unsigned char dyn_smem[emu::kDynSmemBytes + emu::kGuardBytes];

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::blk->idx)
#define blockDim (::emu::blk->dim)
#define gridDim (::emu::blk->grid)

inline void __syncthreads() { emu::block_barrier(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  emu::Block& b = *emu::blk;
  const unsigned t = emu::cur->tid;
  if (mask != 0xffffffffu) emu::fail("only full-warp shuffles are emulated");
  if ((t | 31) >= b.dim.x) emu::fail("a full-warp shuffle in a partial warp");
  // Alternate buffers: a lane writes this one again only two shuffles later, after the next
  // shuffle's barrier, which every lane reaches after reading here.
  uint64_t* slots = b.shfl[emu::cur->shuffles++ & 1];
  memcpy(&slots[t], &v, sizeof(T));
  emu::warp_barrier();
  T r;
  memcpy(&r, &slots[(t & ~31u) | ((t ^ (unsigned)lane_mask) & 31u)], sizeof(T));
  return r;
}

inline float __uint_as_float(unsigned u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline unsigned __float_as_uint(float f) {
  unsigned u;
  memcpy(&u, &f, 4);
  return u;
}
inline long long min(long long a, long long b) { return a < b ? a : b; }

// float16 conversions, round to nearest even as the PTX cvt.rn does (GCC's _Float16).
inline float lnrs_f16_to_f32(unsigned short h) {
  _Float16 v;
  memcpy(&v, &h, 2);
  return (float)v;
}
inline unsigned short lnrs_f32_to_f16(float f) {
  _Float16 v = (_Float16)f;
  unsigned short h;
  memcpy(&h, &v, 2);
  return h;
}
