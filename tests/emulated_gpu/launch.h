// Kernel launches for the emulator: the grid's CTAs one after another, each CTA's threads as fibers
// (cuda_host.h), arguments unpacked from 8-byte slots after a check of their kinds against the
// kernel's parameter types. Included once, after norm.cu, by the generated registry
// (tests/emulated_gpu/build.py), which lists every kernel variant by its name expression.
#pragma once

#include <stdio.h>
#include <stdlib.h>

#include <tuple>
#include <utility>

namespace emu {

Block* blk = nullptr;
Fiber* cur = nullptr;
jmp_buf scheduler;

static std::function<void()>* body = nullptr;
static std::vector<char> stacks;

static void entry() {
  (*body)();
  cur->state = DONE;
  blk->exited++;
  _longjmp(scheduler, 1);
}

static std::string states(const Block& b) {
  unsigned n[4] = {0, 0, 0, 0};
  for (const Fiber& f : b.fibers) n[f.state]++;
  return std::to_string(n[AT_BLOCK_BARRIER]) + " threads at __syncthreads, " +
         std::to_string(n[AT_WARP_BARRIER]) + " in a shuffle, " + std::to_string(n[DONE]) +
         " exited";
}

// Runs one CTA; returns an error message, empty when it completed.
// How a CTA's fibers take turns between barriers (bit 0: descending order, threads and CTAs).
// Round robin: each runnable thread runs to its next barrier, then the next thread. By warps:
// one warp runs as far as it can (to a __syncthreads or its end) before the next starts, so a
// warp that reuses shared memory for the next row gets there before slower warps have read it.
enum Schedule { ROUND_ROBIN_UP, ROUND_ROBIN_DOWN, BY_WARPS_UP, BY_WARPS_DOWN };

// Runs fiber f if it can run; whether it did.
static bool step(Fiber& f) {
  if (f.state != RUNNABLE) return false;
  cur = &f;
  if (!_setjmp(scheduler)) {
    if (f.started) _longjmp(f.jb, 1);
    f.started = true;
    setcontext(&f.ctx);
  }
  cur = nullptr;
  return true;
}

static std::string run_block(unsigned threads, Schedule schedule) {
  Block& b = *blk;
  b.fibers.assign(threads, Fiber{});
  b.exited = b.block_arrived = 0;
  memset(b.warp_arrived, 0, sizeof b.warp_arrived);
  b.error.clear();
  stacks.resize(threads * kStackBytes);
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = b.fibers[t];
    f.tid = t;
    f.state = RUNNABLE;
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = stacks.data() + t * kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;  // entry() never returns: it jumps to the scheduler
    makecontext(&f.ctx, entry, 0);
  }
  const bool down = schedule & 1, by_warps = schedule >= BY_WARPS_UP;
  const unsigned group = by_warps ? 32 : threads, groups = (threads + group - 1) / group;
  for (;;) {
    bool ran = false;
    for (unsigned kg = 0; kg < groups; ++kg) {
      const unsigned g0 = (down ? groups - 1 - kg : kg) * group;
      const unsigned size = threads - g0 < group ? threads - g0 : group;
      for (bool again = true; again;) {  // round robin within the group until it is stuck
        again = false;
        for (unsigned k = 0; k < size; ++k) {
          if (step(b.fibers[g0 + (down ? size - 1 - k : k)])) {
            ran = again = true;
            if (!b.error.empty()) return b.error;
          }
        }
        again = again && by_warps;  // round robin: one turn each, then the next pass
      }
    }
    if (b.exited == threads) return "";
    if (!ran) return "deadlock: a barrier that not every thread reaches (" + states(b) + ")";
  }
}

// Kinds of 8-byte argument slots: 'p' pointer, 'Q' uint64 (a null pointer), 'i' int32,
// 'q' int64, 'd' double.
template <typename P>
struct Kind;
template <typename P>
struct Kind<P*> {
  static bool ok(char k) { return k == 'p' || k == 'Q'; }
  static P* get(uint64_t s) { return reinterpret_cast<P*>(static_cast<uintptr_t>(s)); }
  static constexpr const char* name = "a pointer";
};
template <>
struct Kind<int> {
  static bool ok(char k) { return k == 'i'; }
  static int get(uint64_t s) { return static_cast<int>(static_cast<int64_t>(s)); }
  static constexpr const char* name = "int32";
};
template <>
struct Kind<long long> {
  static bool ok(char k) { return k == 'q'; }
  static long long get(uint64_t s) { return static_cast<long long>(s); }
  static constexpr const char* name = "int64";
};
template <>
struct Kind<double> {
  static bool ok(char k) { return k == 'd'; }
  static double get(uint64_t s) {
    double d;
    memcpy(&d, &s, 8);
    return d;
  }
  static constexpr const char* name = "float64";
};

struct Launch {
  unsigned grid, threads;
  size_t smem;
  Schedule schedule;
  std::string kinds;
  std::vector<uint64_t> slots;
};

template <typename... P, size_t... I>
std::string run(void (*kernel)(P...), const Launch& L, std::index_sequence<I...>) {
  if (L.kinds.size() != sizeof...(P))
    return "the kernel takes " + std::to_string(sizeof...(P)) + " arguments, got " +
           std::to_string(L.kinds.size());
  const bool ok[] = {true, Kind<P>::ok(L.kinds[I])...};
  const char* names[] = {"", Kind<P>::name...};
  for (size_t i = 0; i < sizeof...(P); ++i)
    if (!ok[i + 1])
      return "argument " + std::to_string(i) + " must be " + names[i + 1] + ", got kind '" +
             L.kinds[i] + "'";
  if (L.threads == 0 || L.threads > kMaxThreads || L.grid == 0)
    return "bad launch: " + std::to_string(L.grid) + " CTAs of " + std::to_string(L.threads) +
           " threads";
  if (L.smem > kDynSmemBytes) return "dynamic shared memory over the device's limit";
  std::tuple<P...> args{Kind<P>::get(L.slots[I])...};
  std::function<void()> call = [&] { kernel(std::get<I>(args)...); };
  Block b;
  blk = &b;
  body = &call;
  for (unsigned k = 0; k < L.grid; ++k) {
    const unsigned c = (L.schedule & 1) ? L.grid - 1 - k : k;
    b.idx = dim3{c, 0, 0};
    b.dim = dim3{L.threads, 1, 1};
    b.grid = dim3{L.grid, 1, 1};
    memset(dyn_smem, 0xff, L.smem + kGuardBytes);
    std::string err = run_block(L.threads, L.schedule);
    for (size_t i = L.smem; i < L.smem + kGuardBytes && err.empty(); ++i)
      if (dyn_smem[i] != 0xff) err = "a write past the dynamic shared memory's end";
    if (!err.empty()) {
      blk = nullptr;
      return "CTA " + std::to_string(c) + ": " + err;
    }
  }
  blk = nullptr;
  return "";
}

typedef std::string (*Runner)(const Launch&);

template <typename... P>
struct Bind {
  template <void (*K)(P...)>
  static std::string go(const Launch& L) {
    return run(K, L, std::index_sequence_for<P...>{});
  }
};

struct Entry {
  const char* name;
  Runner runner;
};

}  // namespace emu

// ENTRY(expr): a registry row for the kernel variant named by the name expression `expr`.
template <typename... P>
constexpr emu::Bind<P...> bind_of(void (*)(P...)) {
  return {};
}
#define LNRS_ENTRY(name, ...) \
  { name, &decltype(bind_of(&__VA_ARGS__))::template go<&__VA_ARGS__> }

// The generated registry defines these two.
extern const emu::Entry lnrs_entries[];
extern const size_t lnrs_entry_count;

// Launches kernel `name` (a name expression); 0 when it ran, else an error message in err.
extern "C" int lnrs_emu_launch(const char* name, unsigned grid, unsigned threads,
                               unsigned long long smem, int schedule, const char* kinds,
                               const unsigned long long* slots, char* err, int err_size) {
  std::string e = std::string("no kernel variant named ") + name;
  for (size_t i = 0; i < lnrs_entry_count; ++i)
    if (strcmp(lnrs_entries[i].name, name) == 0) {
      emu::Launch L{grid, threads, smem, static_cast<emu::Schedule>(schedule & 3), kinds, {}};
      L.slots.assign(slots, slots + L.kinds.size());
      e = lnrs_entries[i].runner(L);
      break;
    }
  snprintf(err, err_size, "%s", e.c_str());
  return e.empty() ? 0 : 1;
}
