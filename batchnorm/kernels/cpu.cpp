// Fast CPU kernels for the four batch-norm primitives (see batchnorm/kernels/__init__.py).
//
// Plain C ABI, no torch headers: the library compiles in about a second and is called
// through ctypes from batchnorm/kernels/_cpu.py, which wraps each primitive in a
// torch.library custom op. Threads come from the OpenMP runtime torch itself loaded
// (libgomp.so.1), with the count torch.get_num_threads() passed in on every call.
//
// Every supported input is seen as (outer, C, inner), dense:
//   inner > 1  "planar":      NCHW / NCL / NCDHW contiguous; runs of `inner` values of one
//                              channel lie next to each other.
//   inner == 1 "interleaved": channels-last, channels-last-3d, 2-D (N, C); a row of C
//                              channels is contiguous, `outer` rows.
//
// Numerics (the contract of kernels/__init__.py):
//   stats: per channel a shift K = the first sample; d = x - K in float64; sums of d and
//          d^2 in float64 per thread (16 independent lanes), added across threads (same K,
//          so partial sums simply add). mean = K + S1/m (float64),
//          var = (S2 - S1^2/m)/m. (K - mean)^2 <= m var because K is one of the samples,
//          so the cancellation costs at most log10(1 + m) of float64's 16 digits.
//          A constant channel gives d == 0: var == 0 and mean == K exactly.
//   normalize / backward_elemt: x - mean as (x - hi) - lo with hi = acc(mean),
//          lo = acc(mean - hi), in the accumulation type (float for float/bf16/half).
//   backward_reduce: sums of dy and dy * (x - mean) in float64.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

// Below this many elements one thread does the whole job: waking a team costs more.
constexpr int64_t kSerialBelow = 1 << 15;

struct bf16 {
  uint16_t bits;
};
// IEEE half as raw bits: converted with integer/float bit tricks below, which vectorise
// (GCC 12 emits a scalar libgcc call per _Float16 conversion).
struct f16 {
  uint16_t bits;
};

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(f16 v) {
  // Exact: normals re-biased, subnormals as em * 2^-24, inf/nan keep an all-ones exponent.
  const uint32_t h = v.bits, em = h & 0x7FFFu, sign = (h & 0x8000u) << 16;
  // Selected with masks, not branches, so loops over it vectorise.
  const uint32_t normal = (em << 13) + 0x38000000u;
  const uint32_t sub = float_to_bits(static_cast<float>(static_cast<int32_t>(em)) * 5.9604644775390625e-8f);
  const uint32_t special = (em << 13) | 0x7F800000u;
  const uint32_t is_sub = 0u - static_cast<uint32_t>(em < 0x0400u);
  const uint32_t is_special = 0u - static_cast<uint32_t>(em >= 0x7C00u);
  const uint32_t r = (sub & is_sub) | (special & is_special) | (normal & ~(is_sub | is_special));
  return bits_to_float(r | sign);
}
inline float to_acc(bf16 v) {
  uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline void from_acc(float v, float* out) { *out = v; }
inline void from_acc(double v, double* out) { *out = v; }
inline void from_acc(float v, f16* out) {
  // Round to nearest even (F. Giesen's float_to_half_fast3_rtne), every branch computed.
  uint32_t f = float_to_bits(v);
  const uint32_t sign = f & 0x80000000u;
  f ^= sign;
  const uint32_t inf_nan = f > 0x7F800000u ? 0x7E00u : 0x7C00u;
  const float denorm_magic = bits_to_float(((127u - 15u) + (23u - 10u) + 1u) << 23);
  const uint32_t sub = float_to_bits(bits_to_float(f) + denorm_magic) - float_to_bits(denorm_magic);
  const uint32_t norm = (f + (static_cast<uint32_t>(15 - 127) << 23) + 0xFFFu + ((f >> 13) & 1u)) >> 13;
  const uint32_t is_big = 0u - static_cast<uint32_t>(f >= (143u << 23));
  const uint32_t is_sub = 0u - static_cast<uint32_t>(f < (113u << 23));
  const uint32_t o = (inf_nan & is_big) | (sub & is_sub) | (norm & ~(is_big | is_sub));
  out->bits = static_cast<uint16_t>(o | (sign >> 16));
}
inline void from_acc(float v, bf16* out) {
  // Round to nearest even, as torch does; NaN stays a quiet NaN.
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  out->bits = static_cast<uint16_t>(std::isnan(v) ? 0x7FC0u : r);
}

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

// The per-channel hi/lo split of a float64 mean in the accumulation type.
template <typename A>
inline void split(double mean, A* hi, A* lo) {
  *hi = static_cast<A>(mean);
  *lo = static_cast<A>(mean - static_cast<double>(*hi));
}

// The per-channel float64 means split into hi + lo in the accumulation type (see split).
template <typename A>
struct SplitMeans {
  std::vector<A> hi, lo;
  SplitMeans(const double* mean, int64_t C) : hi(C), lo(C) {
    for (int64_t c = 0; c < C; ++c) split(mean[c], &hi[c], &lo[c]);
  }
};

inline int team_size(int nt, int64_t work) { return (nt > 1 && work >= kSerialBelow) ? nt : 1; }

// Thread `tid` of `nth` gets [begin, end) of [0, total).
inline void my_range(int64_t total, int tid, int nth, int64_t* begin, int64_t* end) {
  *begin = total * tid / nth;
  *end = total * (tid + 1) / nth;
}

#ifdef _OPENMP
#define BN_TID omp_get_thread_num()
#define BN_NTH omp_get_num_threads()
#else
#define BN_TID 0
#define BN_NTH 1
#endif

// 8 values as float64 lanes (GCC/Clang vector extensions: explicit, portable SIMD; the
// auto-vectoriser gives up on these float -> double reductions).
typedef double vd8 __attribute__((vector_size(64)));
typedef float vf8 __attribute__((vector_size(32)));
typedef uint16_t vu16x8 __attribute__((vector_size(16)));
typedef uint32_t vu32x8 __attribute__((vector_size(32)));

inline vd8 load8(const double* p) {
  vd8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline vd8 load8(const float* p) {
  vf8 v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, vd8);
}
inline vd8 load8(const bf16* p) {
  vu16x8 h;
  std::memcpy(&h, p, sizeof h);
  vu32x8 u = __builtin_convertvector(h, vu32x8) << 16;
  vf8 f;
  std::memcpy(&f, &u, sizeof f);
  return __builtin_convertvector(f, vd8);
}
inline vd8 load8(const f16* p) {
  vf8 f;
  for (int j = 0; j < 8; ++j) f[j] = to_acc(p[j]);
  return __builtin_convertvector(f, vd8);
}
inline double hsum(vd8 v) {
  double s = 0;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}

// Sums of d = x - k and d^2 over n contiguous values, in float64: 16 lanes in two
// independent chains so the additions overlap.
template <typename T>
inline void shifted_sums(const T* p, int64_t n, double k, double* s1, double* s2) {
  const vd8 kv = k - vd8{};
  vd8 a1 = {}, a2 = {}, b1 = {}, b2 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const vd8 d0 = load8(p + i) - kv, d1 = load8(p + i + 8) - kv;
    a1 += d0;
    a2 += d0 * d0;
    b1 += d1;
    b2 += d1 * d1;
  }
  double t1 = hsum(a1 + b1), t2 = hsum(a2 + b2);
  for (; i < n; ++i) {
    double d = static_cast<double>(to_acc(p[i])) - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 += t1;
  *s2 += t2;
}

// Sums of dy and dy * (x - mean) over n contiguous values, in float64.
template <typename T>
inline void grad_sums(const T* dy, const T* x, int64_t n, double mean, double* s1, double* s2) {
  const vd8 mv = mean - vd8{};
  vd8 a1 = {}, a2 = {}, b1 = {}, b2 = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const vd8 g0 = load8(dy + i), g1 = load8(dy + i + 8);
    a1 += g0;
    a2 += g0 * (load8(x + i) - mv);
    b1 += g1;
    b2 += g1 * (load8(x + i + 8) - mv);
  }
  double t1 = hsum(a1 + b1), t2 = hsum(a2 + b2);
  for (; i < n; ++i) {
    double g = static_cast<double>(to_acc(dy[i]));
    t1 += g;
    t2 += g * (static_cast<double>(to_acc(x[i])) - mean);
  }
  *s1 += t1;
  *s2 += t2;
}

// Interleaved rows [r0, r1) of C channels: s1[c] += sum_r d(r, c), s2[c] += sum_r d(r, c)^2,
// four rows at a time so each accumulator is loaded and stored once per four rows.
template <typename Vec, typename Scalar>
inline void interleaved_sums(int64_t r0, int64_t r1, int64_t C, double* s1, double* s2, Vec dv,
                             Scalar ds) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const vd8 d0 = dv(r, c), d1 = dv(r + 1, c), d2 = dv(r + 2, c), d3 = dv(r + 3, c);
      vd8 a1 = load8(s1 + c), a2 = load8(s2 + c);
      a1 += (d0 + d1) + (d2 + d3);
      a2 += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
      std::memcpy(s1 + c, &a1, sizeof a1);
      std::memcpy(s2 + c, &a2, sizeof a2);
    }
    for (; c < C; ++c)
      for (int j = 0; j < 4; ++j) {
        const double d = ds(r + j, c);
        s1[c] += d;
        s2[c] += d * d;
      }
  }
  for (; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const double d = ds(r, c);
      s1[c] += d;
      s2[c] += d * d;
    }
}

// Interleaved rows [r0, r1): s1[c] += sum_r dy, s2[c] += sum_r dy * (x - mean[c]).
template <typename T>
inline void interleaved_grad_sums(int64_t r0, int64_t r1, int64_t C, const T* dy, const T* x,
                                  const double* mean, double* s1, double* s2) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const vd8 mv = load8(mean + c);
      vd8 a1 = load8(s1 + c), a2 = load8(s2 + c);
      for (int j = 0; j < 4; ++j) {
        const int64_t e = (r + j) * C + c;
        const vd8 g = load8(dy + e);
        a1 += g;
        a2 += g * (load8(x + e) - mv);
      }
      std::memcpy(s1 + c, &a1, sizeof a1);
      std::memcpy(s2 + c, &a2, sizeof a2);
    }
    for (; c < C; ++c)
      for (int j = 0; j < 4; ++j) {
        const int64_t e = (r + j) * C + c;
        const double g = static_cast<double>(to_acc(dy[e]));
        s1[c] += g;
        s2[c] += g * (static_cast<double>(to_acc(x[e])) - mean[c]);
      }
  }
  for (; r < r1; ++r)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t e = r * C + c;
      const double g = static_cast<double>(to_acc(dy[e]));
      s1[c] += g;
      s2[c] += g * (static_cast<double>(to_acc(x[e])) - mean[c]);
    }
}

// Single-precision inputs, interleaved rows, C >= kBlockRowsFrom: eight rows are summed in
// float32 per channel, then added to the float64 accumulators. With C in the hundreds the
// float64 version spends most of its time converting and storing (measured 2-3x slower than
// this on C = 256 and 1024); eight float32 additions of d (exact for x within a factor 2 of K,
// else rounded to 2^-24 relative) keep the variance within about 1e-7 of the float64 one.
constexpr int64_t kBlockRowsFrom = 128;

template <typename T>
inline void interleaved_sums_f32(const T* x, int64_t r0, int64_t r1, int64_t C, const float* kf,
                                 double* s1, double* s2) {
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) {
    const T* p = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      // Written out: a j-loop here gets vectorised across rows (gathers) instead of channels.
      const float k = kf[c];
      const float d0 = to_acc(p[c]) - k, d1 = to_acc(p[C + c]) - k;
      const float d2 = to_acc(p[2 * C + c]) - k, d3 = to_acc(p[3 * C + c]) - k;
      const float d4 = to_acc(p[4 * C + c]) - k, d5 = to_acc(p[5 * C + c]) - k;
      const float d6 = to_acc(p[6 * C + c]) - k, d7 = to_acc(p[7 * C + c]) - k;
      s1[c] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7));
      s2[c] += ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)) + ((d4 * d4 + d5 * d5) + (d6 * d6 + d7 * d7));
    }
  }
  for (; r < r1; ++r) {
    const T* p = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d = to_acc(p[c]) - kf[c];
      s1[c] += d;
      s2[c] += d * d;
    }
  }
}

// The same for the backward sums: dy and dy * ((x - hi) - lo), as the float32 native kernel.
template <typename T>
inline void interleaved_grad_sums_f32(const T* dy, const T* x, int64_t r0, int64_t r1, int64_t C,
                                      const float* hi, const float* lo, double* s1, double* s2) {
  int64_t r = r0;
  for (; r + 8 <= r1; r += 8) {
    const T* g = dy + r * C;
    const T* p = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float h = hi[c], l = lo[c];
#define BN_G(j) const float g##j = to_acc(g[(j) * C + c]), e##j = g##j * ((to_acc(p[(j) * C + c]) - h) - l)
      BN_G(0); BN_G(1); BN_G(2); BN_G(3); BN_G(4); BN_G(5); BN_G(6); BN_G(7);
#undef BN_G
      s1[c] += ((g0 + g1) + (g2 + g3)) + ((g4 + g5) + (g6 + g7));
      s2[c] += ((e0 + e1) + (e2 + e3)) + ((e4 + e5) + (e6 + e7));
    }
  }
  for (; r < r1; ++r) {
    const T* g = dy + r * C;
    const T* p = x + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float gd = to_acc(g[c]);
      s1[c] += gd;
      s2[c] += gd * ((to_acc(p[c]) - hi[c]) - lo[c]);
    }
  }
}

// ------------------------------------------------------------------ reductions (stats, backward_reduce)

// Reduce over (outer, C, inner) into per-thread partial sums part[tid][2][C], then add them.
// planar_run(c, offset, length, s1*, s2*) accumulates one contiguous run of channel c;
// interleaved_rows(row_begin, row_end, s1[C], s2[C]) a block of rows of C channels.
template <typename PlanarRun, typename InterleavedRows>
void reduce(int64_t outer, int64_t C, int64_t inner, int nt, double* out1, double* out2,
            PlanarRun planar_run, InterleavedRows interleaved_rows) {
  const int64_t total = outer * C * inner;
  const int team = team_size(nt, total);
  std::vector<double> part(static_cast<size_t>(team) * 2 * C, 0.0);
#pragma omp parallel num_threads(team) if (team > 1)
  {
    const int tid = BN_TID, nth = BN_NTH;
    double* p1 = part.data() + static_cast<size_t>(tid) * 2 * C;
    double* p2 = p1 + C;
    int64_t begin, end;
    if (inner > 1) {
      my_range(total, tid, nth, &begin, &end);
      int64_t e = begin;
      while (e < end) {
        const int64_t row = e / inner, off = e - row * inner;
        const int64_t len = std::min(inner - off, end - e);
        const int64_t c = row % C;
        planar_run(c, e, len, p1 + c, p2 + c);
        e += len;
      }
    } else {
      my_range(outer, tid, nth, &begin, &end);
      interleaved_rows(begin, end, p1, p2);
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int t = 0; t < team; ++t) {
      s1 += part[static_cast<size_t>(t) * 2 * C + c];
      s2 += part[static_cast<size_t>(t) * 2 * C + C + c];
    }
    out1[c] = s1;
    out2[c] = s2;
  }
}

template <typename T>
void stats(const T* x, int64_t outer, int64_t C, int64_t inner, double* mean, double* var, int nt) {
  std::vector<double> K(C);
  for (int64_t c = 0; c < C; ++c) K[c] = static_cast<double>(to_acc(x[c * inner]));
  const double* k = K.data();
  std::vector<float> KF(K.begin(), K.end());  // exact: K is one of the samples
  const float* kf = KF.data();
  const bool f32_blocks = !std::is_same<T, double>::value && C >= kBlockRowsFrom;
  std::vector<double> s1(C), s2(C);
  reduce(
      outer, C, inner, nt, s1.data(), s2.data(),
      [&](int64_t c, int64_t e, int64_t len, double* a1, double* a2) {
        shifted_sums(x + e, len, k[c], a1, a2);
      },
      [&](int64_t r0, int64_t r1, double* a1, double* a2) {
        if (f32_blocks) return interleaved_sums_f32(x, r0, r1, C, kf, a1, a2);
        interleaved_sums(r0, r1, C, a1, a2, [&](int64_t r, int64_t c) {
          return load8(x + r * C + c) - load8(k + c);
        }, [&](int64_t r, int64_t c) {
          return static_cast<double>(to_acc(x[r * C + c])) - k[c];
        });
      });
  const double m = static_cast<double>(outer * inner);
  for (int64_t c = 0; c < C; ++c) {
    const double d_mean = s1[c] / m;
    mean[c] = k[c] + d_mean;
    var[c] = std::max((s2[c] - s1[c] * d_mean) / m, 0.0);
  }
}

template <typename T>
void backward_reduce(const T* dy, const T* x, int64_t outer, int64_t C, int64_t inner,
                     const double* mean, double* sum_dy, double* sum_dy_xmu, int nt) {
  std::vector<float> HI(C), LO(C);
  for (int64_t c = 0; c < C; ++c) split(mean[c], &HI[c], &LO[c]);
  const float* hi = HI.data();
  const float* lo = LO.data();
  const bool f32_blocks = !std::is_same<T, double>::value && C >= kBlockRowsFrom;
  reduce(
      outer, C, inner, nt, sum_dy, sum_dy_xmu,
      [&](int64_t c, int64_t e, int64_t len, double* a1, double* a2) {
        grad_sums(dy + e, x + e, len, mean[c], a1, a2);
      },
      [&](int64_t r0, int64_t r1, double* a1, double* a2) {
        if (f32_blocks) return interleaved_grad_sums_f32(dy, x, r0, r1, C, hi, lo, a1, a2);
        interleaved_grad_sums(r0, r1, C, dy, x, mean, a1, a2);
      });
}

// ------------------------------------------------------------------ element-wise (normalize, backward_elemt)

// Apply `op(c, e, len)` over contiguous runs of one channel (planar) or `rowop(e)` over rows of C
// channels (interleaved), split evenly between threads.
template <typename PlanarRun, typename InterleavedRow>
void elementwise(int64_t outer, int64_t C, int64_t inner, int nt, PlanarRun planar_run,
                 InterleavedRow interleaved_row) {
  const int64_t total = outer * C * inner;
  const int team = team_size(nt, total);
#pragma omp parallel num_threads(team) if (team > 1)
  {
    const int tid = BN_TID, nth = BN_NTH;
    int64_t begin, end;
    if (inner > 1) {
      my_range(total, tid, nth, &begin, &end);
      int64_t e = begin;
      while (e < end) {
        const int64_t row = e / inner, off = e - row * inner;
        const int64_t len = std::min(inner - off, end - e);
        planar_run(row % C, e, len);
        e += len;
      }
    } else {
      my_range(outer, tid, nth, &begin, &end);
      for (int64_t r = begin; r < end; ++r) interleaved_row(r * C);
    }
  }
}

// y = ((x - hi) - lo) * scale + shift
template <typename T>
void normalize(const T* x, T* y, int64_t outer, int64_t C, int64_t inner, const double* mean,
               const typename Acc<T>::type* scale, const typename Acc<T>::type* shift, int nt) {
  typedef typename Acc<T>::type A;
  const SplitMeans<A> m(mean, C);
  const A* hi = m.hi.data();
  const A* lo = m.lo.data();
  elementwise(
      outer, C, inner, nt,
      [&](int64_t c, int64_t e, int64_t len) {
        const A h = hi[c], l = lo[c], s = scale[c], b = shift[c];
        const T* p = x + e;
        T* q = y + e;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) from_acc(((to_acc(p[i]) - h) - l) * s + b, q + i);
      },
      [&](int64_t e) {
        const T* p = x + e;
        T* q = y + e;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          from_acc(((to_acc(p[c]) - hi[c]) - lo[c]) * scale[c] + shift[c], q + c);
      });
}

// dx = k * (dy - mean_dy - ((x - hi) - lo) * proj)
template <typename T>
void backward_elemt(const T* dy, const T* x, T* dx, int64_t outer, int64_t C, int64_t inner,
                    const double* mean, const typename Acc<T>::type* k,
                    const typename Acc<T>::type* mean_dy, const typename Acc<T>::type* proj, int nt) {
  typedef typename Acc<T>::type A;
  const SplitMeans<A> m(mean, C);
  const A* hi = m.hi.data();
  const A* lo = m.lo.data();
  elementwise(
      outer, C, inner, nt,
      [&](int64_t c, int64_t e, int64_t len) {
        const A h = hi[c], l = lo[c], kk = k[c], md = mean_dy[c], pr = proj[c];
        const T* g = dy + e;
        const T* p = x + e;
        T* q = dx + e;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i)
          from_acc(kk * (to_acc(g[i]) - md - ((to_acc(p[i]) - h) - l) * pr), q + i);
      },
      [&](int64_t e) {
        const T* g = dy + e;
        const T* p = x + e;
        T* q = dx + e;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          from_acc(k[c] * (to_acc(g[c]) - mean_dy[c] - ((to_acc(p[c]) - hi[c]) - lo[c]) * proj[c]),
                   q + c);
      });
}

}  // namespace

// ------------------------------------------------------------------ C ABI
// dtype codes: 0 float32, 1 float64, 2 bfloat16, 3 float16. Return 0 on success, -1 on an
// unknown dtype. Per-channel vectors of the accumulation type are float64 for float64 input,
// float32 otherwise.

#define BN_DISPATCH(CALL)                        \
  switch (dtype) {                               \
    case 0: { typedef float T; CALL; return 0; }  \
    case 1: { typedef double T; CALL; return 0; } \
    case 2: { typedef bf16 T; CALL; return 0; }   \
    case 3: { typedef f16 T; CALL; return 0; }    \
    default: return -1;                          \
  }

extern "C" {

int bn_abi_version() { return 1; }

int bn_stats(int dtype, const void* x, int64_t outer, int64_t C, int64_t inner, double* mean,
             double* var, int nt) {
  BN_DISPATCH(stats(static_cast<const T*>(x), outer, C, inner, mean, var, nt))
}

int bn_normalize(int dtype, const void* x, void* y, int64_t outer, int64_t C, int64_t inner,
                 const double* mean, const void* scale, const void* shift, int nt) {
  BN_DISPATCH(normalize(static_cast<const T*>(x), static_cast<T*>(y), outer, C, inner, mean,
                        static_cast<const Acc<T>::type*>(scale),
                        static_cast<const Acc<T>::type*>(shift), nt))
}

int bn_backward_reduce(int dtype, const void* dy, const void* x, int64_t outer, int64_t C,
                       int64_t inner, const double* mean, double* sum_dy, double* sum_dy_xmu,
                       int nt) {
  BN_DISPATCH(backward_reduce(static_cast<const T*>(dy), static_cast<const T*>(x), outer, C,
                              inner, mean, sum_dy, sum_dy_xmu, nt))
}

int bn_backward_elemt(int dtype, const void* dy, const void* x, void* dx, int64_t outer,
                      int64_t C, int64_t inner, const double* mean, const void* k,
                      const void* mean_dy, const void* proj, int nt) {
  BN_DISPATCH(backward_elemt(static_cast<const T*>(dy), static_cast<const T*>(x),
                             static_cast<T*>(dx), outer, C, inner, mean,
                             static_cast<const Acc<T>::type*>(k),
                             static_cast<const Acc<T>::type*>(mean_dy),
                             static_cast<const Acc<T>::type*>(proj), nt))
}

}  // extern "C"
