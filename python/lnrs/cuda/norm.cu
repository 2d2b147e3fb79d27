// lnrs GPU kernels: LayerNorm / RMSNorm forward (optionally with a fused residual add) and backward.
//
// Self-contained on purpose: no CUDA headers. float16 and bfloat16 are carried as 16-bit payloads
// (lnrs_half, lnrs_bf16) converted with PTX (f16) or bit arithmetic (bf16, round to nearest even),
// so the same source compiles under NVRTC 12 and 13 without any include path (cuda_fp16.h and
// cuda_bf16.h are not needed).
//
// Numerics: fp32 accumulation for float32/float16/bfloat16 storage (fp64 for float64); the row is held
// in registers and its statistics are two-pass (mean, then sum of (x - mean)^2). Across the warps of a
// CTA the per-warp (n, mean, M2) are merged in a fixed order (Chan et al.), so results are
// deterministic. Rows beyond the register classes use a "stream" kernel that makes several passes
// over the row, kept in shared memory when it fits (else re-read from L2).
//
// Work split: each CTA owns a contiguous range of rows (persistent grid). Backward writes one fp32
// (fp64 for float64) partial dweight/dbias per CTA; lnrs_reduce_partials adds the partials in a fixed
// order: deterministic, no atomics.

struct lnrs_half { unsigned short u; };
struct lnrs_bf16 { unsigned short u; };

template <typename T> struct Tr;
template <> struct Tr<float> {
  typedef float A;
  static __device__ __forceinline__ float load(float v) { return v; }
  static __device__ __forceinline__ float store(float v) { return v; }
};
template <> struct Tr<double> {
  typedef double A;
  static __device__ __forceinline__ double load(double v) { return v; }
  static __device__ __forceinline__ double store(double v) { return v; }
};
// float16 <-> float32 by the hardware's conversions (round to nearest even). The CPU emulator in
// tests/emulated_gpu defines LNRS_HOST_EMULATION and supplies host versions of these two.
#ifndef LNRS_HOST_EMULATION
__device__ __forceinline__ float lnrs_f16_to_f32(unsigned short h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
__device__ __forceinline__ unsigned short lnrs_f32_to_f16(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}
#endif
template <> struct Tr<lnrs_half> {
  typedef float A;
  static __device__ __forceinline__ float load(lnrs_half v) { return lnrs_f16_to_f32(v.u); }
  static __device__ __forceinline__ lnrs_half store(float f) {
    lnrs_half h;
    h.u = lnrs_f32_to_f16(f);
    return h;
  }
};
template <> struct Tr<lnrs_bf16> {
  typedef float A;
  static __device__ __forceinline__ float load(lnrs_bf16 v) {
    return __uint_as_float(((unsigned int)v.u) << 16);
  }
  static __device__ __forceinline__ lnrs_bf16 store(float f) {
    unsigned int b = __float_as_uint(f);
    lnrs_bf16 h;
    if ((b & 0x7fffffffu) > 0x7f800000u) {
      h.u = (unsigned short)((b >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    } else {
      b += 0x7fffu + ((b >> 16) & 1u);  // round to nearest even; overflow goes to inf
      h.u = (unsigned short)(b >> 16);
    }
    return h;
  }
};

// A thread's elements come in groups of VEC consecutive ones (16 bytes). ALIGNED: the row length
// is a multiple of VEC and the arrays are 16-byte aligned, so a group is one vector load or store.
// Otherwise element by element, the first `count` of the group (the rest of a row's last group
// reads as zero). Both variants give each thread the same elements, hence the same bits.
template <typename T> struct Vec { enum { N = 16 / sizeof(T) }; };
template <typename T> struct __align__(16) Pack { T v[Vec<T>::N]; };

template <typename T, bool ALIGNED, typename A>
__device__ __forceinline__ void load_group(const T* p, int count, A* out) {
  constexpr int VEC = Vec<T>::N;
  if (ALIGNED) {
    Pack<T> k = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = Tr<T>::load(k.v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) out[e] = e < count ? Tr<T>::load(p[e]) : A(0);
  }
}

template <typename T, bool ALIGNED>
__device__ __forceinline__ void store_pack(T* p, int count, const Pack<T>& k) {
  if (ALIGNED) {
    *reinterpret_cast<Pack<T>*>(p) = k;
  } else {
#pragma unroll
    for (int e = 0; e < Vec<T>::N; ++e)
      if (e < count) p[e] = k.v[e];
  }
}

template <typename T, bool ALIGNED, typename A>
__device__ __forceinline__ void store_group(T* p, int count, const A* in) {
  Pack<T> k;
#pragma unroll
  for (int e = 0; e < Vec<T>::N; ++e) k.v[e] = Tr<T>::store(in[e]);
  store_pack<T, ALIGNED>(p, count, k);
}

// Parameters are in the accumulation type A; scalar reads (they stay in L1/L2).
template <typename A>
__device__ __forceinline__ A param(const A* __restrict__ p, int c, A dflt) {
  return p ? p[c] : dflt;
}

// Butterfly sums: every lane adds the same two operands at each step, so all lanes agree bitwise.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int m = 16; m; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  return v;
}

// Chan merge of the per-warp (n, mean, M2) in smem, in warp order; every thread gets the same result.
template <typename A>
__device__ __forceinline__ void chan_merge(const A* sn, const A* smean, const A* sm2, int nw, A& mean,
                                           A& m2) {
  A n = 0;
  mean = 0;
  m2 = 0;
  for (int w = 0; w < nw; ++w) {
    A nb = sn[w];
    if (nb == A(0)) continue;
    A d = smean[w] - mean;
    A nn = n + nb;
    mean += d * (nb / nn);
    m2 += sm2[w] + d * d * (n * nb / nn);
    n = nn;
  }
}

// Row statistics from registers. GROUP threads hold the row (32 = a warp, else the CTA).
// valid(j) says whether register slot j (of E) holds an element. Returns mean (0 for RMS) and rstd.
template <bool BLOCK, int E, typename A>
__device__ __forceinline__ void row_stats(const A* v, const bool* valid, int n, A eps, int rms, A* sh,
                                          int parity, A& mean, A& rstd) {
  A s = 0, cnt = 0;
#pragma unroll
  for (int j = 0; j < E; ++j)
    if (valid[j]) {
      s += rms ? v[j] * v[j] : v[j];
      cnt += A(1);
    }
  if (!BLOCK) {
    s = warp_sum(s);
    if (rms) {
      mean = 0;
      rstd = A(1) / sqrt(s / A(n) + eps);
      return;
    }
    mean = s / A(n);
    A q = 0;
#pragma unroll
    for (int j = 0; j < E; ++j)
      if (valid[j]) q += (v[j] - mean) * (v[j] - mean);
    q = warp_sum(q);
    rstd = A(1) / sqrt(q / A(n) + eps);
    return;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  A* sn = sh + parity * 96;
  A* smean = sn + 32;
  A* sm2 = sn + 64;
  s = warp_sum(s);
  A q = 0;
  A wmean = 0;
  if (!rms) {
    A wn = warp_sum(cnt);
    wmean = wn > A(0) ? s / wn : A(0);
#pragma unroll
    for (int j = 0; j < E; ++j)
      if (valid[j]) q += (v[j] - wmean) * (v[j] - wmean);
    q = warp_sum(q);
    if (lane == 0) {
      sn[warp] = wn;
      smean[warp] = wmean;
      sm2[warp] = q;
    }
  } else if (lane == 0) {
    sm2[warp] = s;
  }
  // Double-buffered by row parity: the next write to this buffer comes after another barrier.
  __syncthreads();
  if (rms) {
    A t = 0;
    for (int w = 0; w < nw; ++w) t += sm2[w];
    mean = 0;
    rstd = A(1) / sqrt(t / A(n) + eps);
  } else {
    A m2;
    chan_merge(sn, smean, sm2, nw, mean, m2);
    rstd = A(1) / sqrt(m2 / A(n) + eps);
  }
}

// Sum of two values over the group (warp or CTA), fixed order.
template <bool BLOCK, typename A>
__device__ __forceinline__ void group_sum2(A& a, A& b, A* sh, int parity) {
  a = warp_sum(a);
  b = warp_sum(b);
  if (!BLOCK) return;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  A* sa = sh + parity * 96;
  A* sb = sa + 32;
  if (lane == 0) {
    sa[warp] = a;
    sb[warp] = b;
  }
  __syncthreads();
  a = 0;
  b = 0;
  for (int w = 0; w < nw; ++w) {
    a += sa[w];
    b += sb[w];
  }
}

// The rows one thread works on, and its place in the group that holds a row: the CTA owns rows
// [first CTA row, end) of the grid; BLOCK: the CTA is the group, one row after another; else
// each warp is a group, the CTA's warps taking the rows in turn.
template <bool BLOCK>
struct Rows {
  int g_id, g_size;  // thread index within the group, threads per row
  long long first, end, step;
  __device__ __forceinline__ Rows(long long rows, long long rows_per_cta) {
    const long long r0 = (long long)blockIdx.x * rows_per_cta;
    g_id = BLOCK ? threadIdx.x : threadIdx.x & 31;
    g_size = BLOCK ? blockDim.x : 32;
    first = r0 + (BLOCK ? 0 : threadIdx.x >> 5);
    end = min(rows, r0 + rows_per_cta);
    step = BLOCK ? 1 : blockDim.x >> 5;
  }
};

// ---------------------------------------------------------------------------------------------
// Launch bounds: a CTA kernel may run 1024 threads (64 registers each); the warp kernels run 256,
// which leaves them the registers that a row of up to 64 elements per thread needs.
// Forward, row in registers. BLOCK=false: a warp per row (rows <= 32*E); BLOCK=true: a CTA per row
// (rows <= blockDim*E). ALIGNED: 16-byte vector loads and stores (see load_group).
// res/sum_out non-null: s = x + res (rounded to T) is written to sum_out and normalised.
// y may be x and sum_out may be res (in place: each element is read before it is written, by the
// thread that writes it), so these four pointers are not __restrict__.
template <typename T, int E, bool ALIGNED, bool BLOCK>
__global__ void __launch_bounds__(BLOCK ? 1024 : 256) lnrs_fwd(
    const T* x, const T* res, T* sum_out, T* y,
    const typename Tr<T>::A* __restrict__ w, const typename Tr<T>::A* __restrict__ b,
    typename Tr<T>::A* __restrict__ mean_out, typename Tr<T>::A* __restrict__ rstd_out,
    long long rows, int n, double eps_d, int rms, long long rows_per_cta) {
  typedef typename Tr<T>::A A;
  constexpr int VEC = Vec<T>::N, K = E / VEC;
  __shared__ A sh[2 * 96];
  const A eps = A(eps_d);
  const Rows<BLOCK> my(rows, rows_per_cta);
  const int g_id = my.g_id, g_size = my.g_size;
  int parity = 0;
  for (long long row = my.first; row < my.end; row += my.step) {
    A v[E];
    bool valid[E];
    const long long base = row * (long long)n;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) valid[j * VEC + e] = c + e < n;
      if (c < n) {
        load_group<T, ALIGNED>(x + base + c, n - c, v + j * VEC);
        if (res) {
          A r[VEC];
          load_group<T, ALIGNED>(res + base + c, n - c, r);
          Pack<T> k;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            k.v[e] = Tr<T>::store(v[j * VEC + e] + r[e]);
            v[j * VEC + e] = valid[j * VEC + e] ? Tr<T>::load(k.v[e]) : A(0);
          }
          store_pack<T, ALIGNED>(sum_out + base + c, n - c, k);
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j * VEC + e] = 0;
      }
    }
    A mean, rstd;
    row_stats<BLOCK, E>(v, valid, n, eps, rms, sh, parity, mean, rstd);
    parity ^= 1;
    if (g_id == 0) {
      if (mean_out) mean_out[row] = mean;
      if (rstd_out) rstd_out[row] = rstd;
    }
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
      if (c < n) {
        A o[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          o[e] = valid[j * VEC + e]
                     ? (v[j * VEC + e] - mean) * rstd * param(w, c + e, A(1)) + param(b, c + e, A(0))
                     : A(0);
        store_group<T, ALIGNED>(y + base + c, n - c, o);
      }
    }
  }
}

// Forward for any width: a CTA per row in three passes over it. cached: the first pass keeps the
// row (x, or the rounded x + res) in dynamic shared memory (n elements of T) and the other two
// read it there; else they re-read global memory (L2). Each element is handled by one thread in
// every pass, so the row buffer needs no barrier.
template <typename T>
__global__ void __launch_bounds__(1024) lnrs_fwd_stream(
    const T* x, const T* res, T* sum_out, T* y,
    const typename Tr<T>::A* __restrict__ w, const typename Tr<T>::A* __restrict__ b,
    typename Tr<T>::A* __restrict__ mean_out, typename Tr<T>::A* __restrict__ rstd_out,
    long long rows, int n, double eps_d, int rms, long long rows_per_cta, int cached) {
  typedef typename Tr<T>::A A;
  extern __shared__ unsigned char dyn_smem[];
  T* keep = cached ? reinterpret_cast<T*>(dyn_smem) : nullptr;
  __shared__ A sh[2 * 96];
  const A eps = A(eps_d);
  const Rows<true> my(rows, rows_per_cta);
  int parity = 0;
  for (long long row = my.first; row < my.end; ++row) {
    const long long base = row * (long long)n;
    // With a residual, the rounded sum is written once and read back by the same thread.
    const T* src = keep ? keep : (res ? (const T*)sum_out : x) + base;
    A s = 0, unused = 0;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      T t = x[base + c];
      if (res) {
        t = Tr<T>::store(Tr<T>::load(t) + Tr<T>::load(res[base + c]));
        sum_out[base + c] = t;
      }
      if (keep) keep[c] = t;
      const A a = Tr<T>::load(t);
      s += rms ? a * a : a;
    }
    group_sum2<true>(s, unused, sh, parity);
    parity ^= 1;
    A mean = 0, rstd;
    if (rms) {
      rstd = A(1) / sqrt(s / A(n) + eps);
    } else {
      mean = s / A(n);
      A q = 0;
      for (int c = threadIdx.x; c < n; c += blockDim.x) {
        A d = Tr<T>::load(src[c]) - mean;
        q += d * d;
      }
      group_sum2<true>(q, unused, sh, parity);
      parity ^= 1;
      rstd = A(1) / sqrt(q / A(n) + eps);
    }
    if (threadIdx.x == 0) {
      if (mean_out) mean_out[row] = mean;
      if (rstd_out) rstd_out[row] = rstd;
    }
    for (int c = threadIdx.x; c < n; c += blockDim.x)
      y[base + c] = Tr<T>::store((Tr<T>::load(src[c]) - mean) * rstd * param(w, c, A(1)) +
                                 param(b, c, A(0)));
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, row in registers. Reads x and dy once per row, writes dx, and accumulates this CTA's
// partial dweight (partial[cta*2n + c]) and dbias (partial[cta*2n + n + c]) over its row range.
// mean == nullptr or rms: RMSNorm. recompute: mean/rstd are recomputed from x with eps (the
// forward pass's eps was given), else the given mean/rstd are used as they are.
// Warp kernel: accumulators in registers, warps combined in smem in warp order at the end
// (dynamic smem 2n*sizeof(A)). CTA kernel: accumulators in dynamic smem, one owner per column.
template <typename T, int E, bool ALIGNED, bool BLOCK>
__global__ void __launch_bounds__(BLOCK ? 1024 : 256) lnrs_bwd(
    const T* __restrict__ dy, const T* __restrict__ x, const typename Tr<T>::A* __restrict__ mean_in,
    const typename Tr<T>::A* __restrict__ rstd_in, const typename Tr<T>::A* __restrict__ w,
    T* __restrict__ dx, typename Tr<T>::A* __restrict__ partial, long long rows, int n, double eps_d,
    int rms, int recompute, long long rows_per_cta) {
  typedef typename Tr<T>::A A;
  constexpr int VEC = Vec<T>::N, K = E / VEC;
  extern __shared__ unsigned char dyn_smem[];
  A* acc = reinterpret_cast<A*>(dyn_smem);  // [2n]: dweight then dbias
  __shared__ A sh[2 * 96];
  const A eps = A(eps_d);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const Rows<BLOCK> my(rows, rows_per_cta);
  const int g_id = my.g_id, g_size = my.g_size;
  A dw[BLOCK ? 1 : E], db[BLOCK ? 1 : E];
  if (BLOCK) {
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
      for (int e = 0; e < VEC; ++e)
        if (c + e < n) acc[c + e] = acc[n + c + e] = 0;
    }
  } else {
#pragma unroll
    for (int j = 0; j < E; ++j) dw[j] = db[j] = 0;
  }
  int parity = 0;
  for (long long row = my.first; row < my.end; row += my.step) {
    A v[E], g[E];
    bool valid[E];
    const long long base = row * (long long)n;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) valid[j * VEC + e] = c + e < n;
      if (c < n) {
        load_group<T, ALIGNED>(x + base + c, n - c, v + j * VEC);
        load_group<T, ALIGNED>(dy + base + c, n - c, g + j * VEC);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j * VEC + e] = g[j * VEC + e] = 0;
      }
    }
    A mean, rstd;
    if (recompute) {
      row_stats<BLOCK, E>(v, valid, n, eps, rms, sh, parity, mean, rstd);
      parity ^= 1;
    } else {
      mean = rms ? A(0) : mean_in[row];
      rstd = rstd_in[row];
    }
    A a = 0, s = 0;  // sum of g*xhat, sum of g
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int i = j * VEC + e;
        if (valid[i]) {
          const A xh = (v[i] - mean) * rstd;
          const A d = g[i];
          if (BLOCK) {
            acc[c + e] += d * xh;
            acc[n + c + e] += d;
          } else {
            dw[i] += d * xh;
            db[i] += d;
          }
          v[i] = xh;
          g[i] = d * param(w, c + e, A(1));
          a += g[i] * xh;
          s += g[i];
        }
      }
    }
    group_sum2<BLOCK>(a, s, sh, parity);
    parity ^= 1;
    const A c1 = a / A(n);
    const A c2 = rms ? A(0) : s / A(n);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
      if (c < n) {
        A o[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[e] = rstd * (g[j * VEC + e] - c2 - v[j * VEC + e] * c1);
        store_group<T, ALIGNED>(dx + base + c, n - c, o);
      }
    }
  }
  A* out = partial + (long long)blockIdx.x * 2 * n;
  if (BLOCK) {
    for (int j = 0; j < K; ++j) {
      const int c = (j * g_size + g_id) * VEC;
      for (int e = 0; e < VEC; ++e)
        if (c + e < n) {
          out[c + e] = acc[c + e];
          out[n + c + e] = acc[n + c + e];
        }
    }
  } else {
    const int nw = blockDim.x >> 5;
    for (int ww = 0; ww < nw; ++ww) {
      if (warp == ww) {
#pragma unroll
        for (int j = 0; j < K; ++j) {
          const int c = (j * 32 + lane) * VEC;
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const int i = j * VEC + e;
            if (c + e < n) {
              acc[c + e] = ww ? acc[c + e] + dw[i] : dw[i];
              acc[n + c + e] = ww ? acc[n + c + e] + db[i] : db[i];
            }
          }
        }
      }
      __syncthreads();
    }
    for (int c = threadIdx.x; c < 2 * n; c += blockDim.x) out[c] = acc[c];
  }
}

// Backward for any width: a CTA per row, two passes over x and dy (three over x when
// recomputing), the CTA's partial accumulated in place in `partial` (each column owned by one
// thread). cached: the first pass keeps the row's x and dy in dynamic shared memory (2n elements
// of T) for the later ones; else they re-read global memory (L2). One thread per element in every
// pass, so the row buffers need no barrier.
template <typename T>
__global__ void __launch_bounds__(1024) lnrs_bwd_stream(
    const T* __restrict__ dy, const T* __restrict__ x, const typename Tr<T>::A* __restrict__ mean_in,
    const typename Tr<T>::A* __restrict__ rstd_in, const typename Tr<T>::A* __restrict__ w,
    T* __restrict__ dx, typename Tr<T>::A* __restrict__ partial, long long rows, int n, double eps_d,
    int rms, int recompute, long long rows_per_cta, int cached) {
  typedef typename Tr<T>::A A;
  extern __shared__ unsigned char dyn_smem[];
  T* keep_x = cached ? reinterpret_cast<T*>(dyn_smem) : nullptr;
  T* keep_dy = cached ? keep_x + n : nullptr;
  __shared__ A sh[2 * 96];
  const A eps = A(eps_d);
  const Rows<true> my(rows, rows_per_cta);
  A* out = partial + (long long)blockIdx.x * 2 * n;
  for (int c = threadIdx.x; c < n; c += blockDim.x) out[c] = out[n + c] = 0;
  int parity = 0;
  for (long long row = my.first; row < my.end; ++row) {
    const T* gx = x + row * (long long)n;
    const T* gdy = dy + row * (long long)n;
    const T* sx = keep_x ? keep_x : gx;  // where x is read once the first pass kept it
    A mean, rstd, unused = 0;
    if (recompute) {
      A s = 0;
      for (int c = threadIdx.x; c < n; c += blockDim.x) {
        const T t = gx[c];
        if (keep_x) keep_x[c] = t;
        const A a = Tr<T>::load(t);
        s += rms ? a * a : a;
      }
      group_sum2<true>(s, unused, sh, parity);
      parity ^= 1;
      if (rms) {
        mean = 0;
        rstd = A(1) / sqrt(s / A(n) + eps);
      } else {
        mean = s / A(n);
        A q = 0;
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
          const A d = Tr<T>::load(sx[c]) - mean;
          q += d * d;
        }
        group_sum2<true>(q, unused, sh, parity);
        parity ^= 1;
        rstd = A(1) / sqrt(q / A(n) + eps);
      }
    } else {
      mean = rms ? A(0) : mean_in[row];
      rstd = rstd_in[row];
    }
    A a = 0, s = 0;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      const T tx = recompute ? sx[c] : gx[c], tdy = gdy[c];
      if (keep_x) {
        keep_x[c] = tx;
        keep_dy[c] = tdy;
      }
      const A xh = (Tr<T>::load(tx) - mean) * rstd;
      const A d = Tr<T>::load(tdy);
      const A gg = d * param(w, c, A(1));
      out[c] += d * xh;
      out[n + c] += d;
      a += gg * xh;
      s += gg;
    }
    group_sum2<true>(a, s, sh, parity);
    parity ^= 1;
    const A c1 = a / A(n);
    const A c2 = rms ? A(0) : s / A(n);
    const T* sdy = keep_dy ? keep_dy : gdy;
    for (int c = threadIdx.x; c < n; c += blockDim.x) {
      const A xh = (Tr<T>::load(sx[c]) - mean) * rstd;
      const A gg = Tr<T>::load(sdy[c]) * param(w, c, A(1));
      dx[row * (long long)n + c] = Tr<T>::store(rstd * (gg - c2 - xh * c1));
    }
  }
}

// out[c] = sum over p of partial[p*m + c], p in increasing order, accumulated in double.
template <typename A>
__global__ void lnrs_reduce_partials(const A* __restrict__ partial, int p_count, int m,
                                     A* __restrict__ out) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= m) return;
  double t = 0;
  for (int p = 0; p < p_count; ++p) t += (double)partial[(long long)p * m + c];
  out[c] = A(t);
}
