// The batch-norm kernels (the primitives of batchnorm/core/kernels/__init__.py), in plain C++.
//
// No torch headers: this file is compiled several times, once per instruction set
// (setup.py: kernels.cpp itself for the baseline, isa_avx2.cpp and isa_avx512.cpp include it
// with BN_ISA set and their own -m flags), and everything here has internal linkage (the
// anonymous namespace, no std:: templates), so the copies cannot replace each other at link
// time (an AVX-512 copy of an inline std:: function chosen for a baseline caller would fault
// on a CPU without it). Each copy exports one table of entry points (kernel_table.h); ops.cpp
// picks the table the CPU supports at load time and registers the torch ops. Threads come from
// torch's own pool through the table's `bn_par` callback (at::parallel_for): one chunk per
// thread, and one thread for anything under kGrain elements, as ATen does.
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
//          var = max((S2 - S1^2/m)/m, 0), a NaN kept. (K - mean)^2 <= m var because K is
//          one of the samples, so the cancellation costs at most log10(1 + m) of float64's
//          16 digits.
//          A constant channel gives d == 0: var == 0 and mean == K exactly.
//          Single-precision input (planar, and interleaved with C >= 16) sums blocks of 16
//          values per lane in float32 registers first, about K = the float32 mean of the
//          channel's first 16 samples (run_sums_f32, interleaved_sums_f32); the planar runs
//          add their blocks to 8 float64 lanes per channel, summed once per thread.
//   normalize / backward_elemt: x - mean as (x - hi) - lo with hi = acc(mean),
//          lo = acc(mean - hi), in the accumulation type (float for float/bf16/half).
//   backward_reduce: sums of dy and dy * (x - mean) in float64 (single precision: the same
//          float32 blocks, with x - mean as (x - hi) - lo).
//   The partial sums are per chunk and the chunks depend only on the thread count, so a
//   result is the same from call to call.

#include <cstddef>
#include <cstdint>

#include "kernel_table.h"

#ifndef BN_ISA
#define BN_ISA baseline
#endif
#define BN_CAT2(a, b) a##b
#define BN_CAT(a, b) BN_CAT2(a, b)
#define BN_STR2(a) #a
#define BN_STR(a) BN_STR2(a)

namespace {

// Below this many elements per thread, fewer threads: waking one costs more than it saves
// (ATen's GRAIN_SIZE).
constexpr int64_t kGrain = 1 << 15;

// What the std:: helpers would be, with internal linkage (see the top of the file).
inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }
// max(v, 0) that keeps a NaN (a > b ? a : b gave 0 for a NaN variance, where torch gives NaN).
inline double clamp0(double v) { return v < 0.0 ? 0.0 : v; }
inline float bn_sqrt(float v) { return __builtin_sqrtf(v); }
inline double bn_sqrt(double v) { return __builtin_sqrt(v); }
template <int N> struct IC { static constexpr int value = N; };
template <typename A, typename B> struct Same { static constexpr bool value = false; };
template <typename A> struct Same<A, A> { static constexpr bool value = true; };

// A zero-filled array of n values (std::vector without its out-of-line template code).
template <typename T>
struct Buf {
  T* p;
  explicit Buf(int64_t n) : p(new T[n > 0 ? n : 1]()) {}
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { delete[] p; }
  T* data() { return p; }
  const T* data() const { return p; }
  T& operator[](int64_t i) { return p[i]; }
  const T& operator[](int64_t i) const { return p[i]; }
};

// Run f(0..n) on torch's threads (par->run), or here when n == 1.
template <typename F>
inline void run_chunks(const bn_par* par, int64_t n, F& f) {
  if (n <= 1 || par == nullptr || par->run == nullptr) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  par->run(par->ctx, n, &f, [](void* state, int64_t i) { (*static_cast<F*>(state))(i); });
}

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
  __builtin_memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  __builtin_memcpy(&u, &f, 4);
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
  __builtin_memcpy(&f, &u, 4);
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
  __builtin_memcpy(&u, &v, 4);
  uint32_t r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  out->bits = static_cast<uint16_t>(__builtin_isnan(v) ? 0x7FC0u : r);
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
  Buf<A> hi, lo;
  SplitMeans(const double* mean, int64_t C) : hi(C), lo(C) {
    for (int64_t c = 0; c < C; ++c) split(mean[c], &hi[c], &lo[c]);
  }
};

// How many chunks (threads) a job of `work` elements gets: at least kGrain elements each.
inline int team_size(const bn_par* par, int64_t work) {
  const int64_t nt = par ? par->nthreads : 1;
  return static_cast<int>(imax(1, imin(nt, work / kGrain)));
}

// Thread `tid` of `nth` gets [begin, end) of [0, total).
inline void my_range(int64_t total, int64_t tid, int64_t nth, int64_t* begin, int64_t* end) {
  *begin = total * tid / nth;
  *end = total * (tid + 1) / nth;
}

// SIMD through the GCC/Clang vector extensions (explicit, portable; the auto-vectoriser gives
// up on these float -> double reductions). The kernels work on 8 float64 lanes (vd8) and 16
// float32 lanes (vf16) whatever the instruction set; each copy of this file builds them from
// its own registers (Wide): one zmm on AVX-512, two ymm on AVX2, four xmm on the baseline. (A plain
// 64-byte vector type on AVX2 made GCC 12 move every value through the stack and general
// registers: on one thread the AVX2 statistics took 2.1 ms channels-last and 14 ms NCHW where
// AVX-512 took 1.1, at 32x64x56x56.) The lanes are the same in every copy, so each sum is
// added in the same order whatever the instruction set (the last bits can still differ where
// the compiler fuses a multiply and an add in one copy and not in another: the baseline has no
// FMA, and one float64 backward sum differed between AVX2 and AVX-512 in a check).
//
// kTileStats and kTileGrad: the widest tile of the interleaved float32 sums (tiled_rows), in
// vf16, for the statistics and the backward sums, as measured on the bench's channels-last
// shapes and 4096x1024 (AVX2: statistics 2, 4, 8, 16 within 15% of each other, 16 the best
// at C = 64-256; backward sums 2 against 1 and 4 slower by 10-40%). Wider tiles than the
// registers hold spill to L1, and that costs less than reading rows in narrow strided tiles.
#if defined(__AVX512F__)
constexpr int kBytes = 64, kTileStats = 16, kTileGrad = 8;
#elif defined(__AVX__)
constexpr int kBytes = 32, kTileStats = 16, kTileGrad = 2;
#else
constexpr int kBytes = 16, kTileStats = 2, kTileGrad = 1;
#endif

typedef double vdr __attribute__((vector_size(kBytes)));  // one register
typedef float vfr __attribute__((vector_size(kBytes)));
typedef float vfh __attribute__((vector_size(kBytes / 2)));  // half a register

// P registers R of E as one vector (P = 1 on AVX-512), element-wise arithmetic register by
// register.
template <typename E, typename R, int P>
struct Wide {
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(E));
  static constexpr int kParts = P;
  typedef R Reg;
  R part[P];
  E operator[](int j) const { return part[j / kLanes][j % kLanes]; }
  Wide& operator+=(const Wide& o) {
    for (int i = 0; i < P; ++i) part[i] += o.part[i];
    return *this;
  }
};
template <typename E, typename R, int P>
inline Wide<E, R, P> operator+(Wide<E, R, P> a, const Wide<E, R, P>& b) {
  return a += b;
}
template <typename E, typename R, int P>
inline Wide<E, R, P> operator-(Wide<E, R, P> a, const Wide<E, R, P>& b) {
  for (int i = 0; i < P; ++i) a.part[i] -= b.part[i];
  return a;
}
template <typename E, typename R, int P>
inline Wide<E, R, P> operator*(Wide<E, R, P> a, const Wide<E, R, P>& b) {
  for (int i = 0; i < P; ++i) a.part[i] *= b.part[i];
  return a;
}
// k - Wide{}: k in every lane.
template <typename E, typename R, int P>
inline Wide<E, R, P> operator-(E k, Wide<E, R, P> a) {
  for (int i = 0; i < P; ++i) a.part[i] = k - a.part[i];
  return a;
}

typedef Wide<double, vdr, 64 / kBytes> vd8;
typedef Wide<float, vfr, 64 / kBytes> vf16;

// The 16-bit and 32-bit integer vectors with as many lanes as a float vector of B bytes
// (spelled out: GCC 12 made no vector of a vector_size that depends on a template parameter).
template <int B> struct Lanes;
template <> struct Lanes<8> {
  typedef uint16_t H __attribute__((vector_size(4)));
  typedef uint32_t U __attribute__((vector_size(8)));
};
template <> struct Lanes<16> {
  typedef uint16_t H __attribute__((vector_size(8)));
  typedef uint32_t U __attribute__((vector_size(16)));
};
template <> struct Lanes<32> {
  typedef uint16_t H __attribute__((vector_size(16)));
  typedef uint32_t U __attribute__((vector_size(32)));
};
template <> struct Lanes<64> {
  typedef uint16_t H __attribute__((vector_size(32)));
  typedef uint32_t U __attribute__((vector_size(64)));
};

// A plain vector type V loaded from as many values of T as it has lanes.
template <typename V, typename T>
inline V loadn(const T* p) {  // float, double
  V v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}
template <typename V>
inline V loadn(const bf16* p) {  // bf16 is the top half of a float
  typedef typename Lanes<sizeof(V)>::H H;
  typedef typename Lanes<sizeof(V)>::U U;
  H h;
  __builtin_memcpy(&h, p, sizeof h);
  const U u = __builtin_convertvector(h, U) << 16;
  V v;
  __builtin_memcpy(&v, &u, sizeof v);
  return v;
}
template <typename V>
inline V loadn(const f16* p) {
  V v = {};
  for (int j = 0; j < static_cast<int>(sizeof(V) / sizeof(float)); ++j) v[j] = to_acc(p[j]);
  return v;
}

// Loads and stores of vd8 / vf16, register by register (a memcpy of a whole Wide of two or
// four registers went through the stack).
template <typename V, typename T>
inline V loadv(const T* p) {
  V v;
  for (int i = 0; i < V::kParts; ++i) v.part[i] = loadn<typename V::Reg>(p + i * V::kLanes);
  return v;
}
template <typename E, typename V>
inline void storev(E* p, const V& v) {
  for (int i = 0; i < V::kParts; ++i)
    __builtin_memcpy(p + i * V::kLanes, &v.part[i], sizeof v.part[i]);
}

inline vd8 load8(const double* p) { return loadv<vd8>(p); }
// 8 values of T as float64: each register from half a register of floats.
template <typename T>
inline vd8 load8(const T* p) {
  vd8 v;
  for (int i = 0; i < vd8::kParts; ++i)
    v.part[i] = __builtin_convertvector(loadn<vfh>(p + i * vd8::kLanes), vdr);
  return v;
}
inline double hsum(const vd8& v) {
  double s = 0;
  for (int j = 0; j < 8; ++j) s += v[j];
  return s;
}

// Sums of d = x - k and d^2 over n contiguous float64 values, in float64: 16 lanes in two
// independent chains so the additions overlap. (Single-precision runs: run_sums_f32.)
inline void shifted_sums(const double* p, int64_t n, double k, double* s1, double* s2) {
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
    double d = p[i] - k;
    t1 += d;
    t2 += d * d;
  }
  *s1 += t1;
  *s2 += t2;
}

// Sums of dy and dy * (x - mean) over n contiguous float64 values, in float64.
inline void grad_sums(const double* dy, const double* x, int64_t n, double mean, double* s1,
                      double* s2) {
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
    double g = dy[i];
    t1 += g;
    t2 += g * (x[i] - mean);
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
      storev(s1 + c, a1);
      storev(s2 + c, a2);
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
      storev(s1 + c, a1);
      storev(s2 + c, a2);
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

// Single-precision inputs (float32, bfloat16, float16), interleaved rows, C >= 16: the
// channels are cut into tiles of up to kTileStats vf16 (see tiled_rows), and each tile's sums
// stay in registers, in float32, over a block of kBlockRows rows before they are added to the
// float64 accumulators. Per element that is a load, a subtraction and two additions: the
// row-by-row float64 version stored and reloaded its accumulators every four rows and
// measured 1.3-2.4x a tensor copy at C = 64-1024. Summing at most kBlockRows values of
// d = x - K in float32 rounds by at most kBlockRows * 2^-24 of sum |d| (d itself is exact
// for x within a factor 2 of K); the tests hold the variance to 1e-6 relative of the float64
// reference.
constexpr int64_t kVec = 16;
constexpr int64_t kBlockRows = 16;

template <typename T>
inline vf16 loadf(const T* p) {
  return loadv<vf16>(p);
}
inline void storef(float* p, const vf16& v) { storev(p, v); }
template <typename H>  // bf16, f16: rounded one by one (from_acc)
inline void storef(H* p, const vf16& v) {
  for (int j = 0; j < 16; ++j) from_acc(v[j], p + j);
}

// acc[0..16) += v, in float64.
inline void add_to(double* acc, const vf16& v) {
  for (int j = 0; j < 16; ++j) acc[j] += static_cast<double>(v[j]);
}

// One tile of NV vectors (channels [c0, c0 + 16 NV)) over rows [rb, re), re - rb <= kBlockRows,
// one row after the other into accumulators that stay in registers (2 NV vf16: on AVX-512 2 NV
// of the 32 registers, so NV <= 16; the per-channel constants are read from L1). `term(offset, j, &t1,
// &t2)` gives the two summands of vector j at element offset `offset`. (Adding two rows first,
// or keeping two chains, measured slower at C >= 128: the extra registers spill.)
template <int NV, typename Term>
inline void tile_sums(int64_t rb, int64_t re, int64_t C, int64_t c0, double* s1, double* s2,
                      Term term) {
  vf16 a1[NV], a2[NV];
  for (int j = 0; j < NV; ++j) a1[j] = a2[j] = vf16{};
  for (int64_t r = rb; r < re; ++r) {
    const int64_t e = r * C + c0;
    for (int j = 0; j < NV; ++j) {
      vf16 t1, t2;
      term(e + kVec * j, j, &t1, &t2);
      a1[j] += t1;
      a2[j] += t2;
    }
  }
  for (int j = 0; j < NV; ++j) {
    add_to(s1 + c0 + kVec * j, a1[j]);
    add_to(s2 + c0 + kVec * j, a2[j]);
  }
}

// Rows [r0, r1) of C >= 16 channels in blocks of kBlockRows; within a block, the row is cut
// into tiles of 16, 8, 4, 2 and 1 vectors (greedily, widest first) and each tile runs over
// the block's rows. Up to 256 channels a row is one or a few wide tiles, read front to back;
// narrow strided tiles measured 2-4x slower than a sequential read here. The last C % 16
// channels go through `tail(rb, re, c_begin)`.
template <int Widest, typename Tile, typename Tail>
inline void tiled_rows(int64_t r0, int64_t r1, int64_t C, Tile tile, Tail tail) {
  const int64_t cv = C / kVec * kVec;
  for (int64_t rb = r0; rb < r1; rb += kBlockRows) {
    const int64_t re = imin(rb + kBlockRows, r1);
    int64_t c0 = 0;
    for (; c0 + Widest * kVec <= cv; c0 += Widest * kVec)
      tile(IC<Widest>(), rb, re, c0);
    if (Widest > 8 && c0 + 8 * kVec <= cv) tile(IC<8>(), rb, re, c0), c0 += 8 * kVec;
    if (c0 + 4 * kVec <= cv) tile(IC<4>(), rb, re, c0), c0 += 4 * kVec;
    if (c0 + 2 * kVec <= cv) tile(IC<2>(), rb, re, c0), c0 += 2 * kVec;
    if (c0 + kVec <= cv) tile(IC<1>(), rb, re, c0), c0 += kVec;
    if (cv < C) tail(rb, re, cv);
  }
}

template <typename T>
inline void interleaved_sums_f32(const T* x, int64_t r0, int64_t r1, int64_t C, const float* kf,
                                 const double* k, double* s1, double* s2) {
  tiled_rows<kTileStats>(
      r0, r1, C,
      [&](auto nv, int64_t rb, int64_t re, int64_t c0) {
        const float* kc = kf + c0;
        tile_sums<decltype(nv)::value>(rb, re, C, c0, s1, s2, [&](int64_t e, int j, vf16* t1, vf16* t2) {
          const vf16 d = loadf(x + e) - loadf(kc + kVec * j);
          *t1 = d;
          *t2 = d * d;
        });
      },
      [&](int64_t rb, int64_t re, int64_t cb) {
        for (int64_t r = rb; r < re; ++r)
          for (int64_t c = cb; c < C; ++c) {
            const double d = static_cast<double>(to_acc(x[r * C + c])) - k[c];
            s1[c] += d;
            s2[c] += d * d;
          }
      });
}

template <typename T>
inline void interleaved_grad_sums_f32(const T* dy, const T* x, int64_t r0, int64_t r1, int64_t C,
                                      const float* hi, const float* lo, const double* mean,
                                      double* s1, double* s2) {
  // Narrower tiles than the statistics: two streams and their temporaries need registers.
  tiled_rows<kTileGrad>(
      r0, r1, C,
      [&](auto nv, int64_t rb, int64_t re, int64_t c0) {
        const float* h = hi + c0;
        const float* l = lo + c0;
        tile_sums<decltype(nv)::value>(rb, re, C, c0, s1, s2, [&](int64_t e, int j, vf16* t1, vf16* t2) {
          const vf16 g = loadf(dy + e);
          *t1 = g;
          *t2 = g * ((loadf(x + e) - loadf(h + kVec * j)) - loadf(l + kVec * j));
        });
      },
      [&](int64_t rb, int64_t re, int64_t cb) {
        for (int64_t r = rb; r < re; ++r)
          for (int64_t c = cb; c < C; ++c) {
            const int64_t e = r * C + c;
            const double g = static_cast<double>(to_acc(dy[e]));
            s1[c] += g;
            s2[c] += g * (static_cast<double>(to_acc(x[e])) - mean[c]);
          }
      });
}

// v with its first kVec - r lanes zeroed (bitwise, so a NaN or inf there leaves no trace), 0 < r < kVec.
inline vf16 keep_last(vf16 v, int64_t r) {
  typedef uint32_t vur __attribute__((vector_size(kBytes)));
  alignas(64) static const uint32_t ones[2 * kVec] = {0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u,
                                                      0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u,
                                                      ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u,
                                                      ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u, ~0u};
  const uint32_t* m = ones + r;
  for (int i = 0; i < vf16::kParts; ++i) {
    vur u, k;
    __builtin_memcpy(&u, &v.part[i], sizeof u);
    __builtin_memcpy(&k, m + i * vf16::kLanes, sizeof k);
    u &= k;
    __builtin_memcpy(&v.part[i], &u, sizeof u);
  }
  return v;
}

// *d += v[0..8) + v[8..16), in float64.
inline void flush(const vf16& v, vd8* d) {
  alignas(64) float f[kVec];
  storef(f, v);
  *d += load8(f) + load8(f + 8);
}

// One channel's contiguous run of n values (planar layout), single precision: two accumulators
// over alternate vectors, each lane summing at most kBlockRows values in float32 before they are
// added to the channel's 8 float64 lanes l1[0..8), l2[0..8) (added up once per chunk, by reduce:
// a horizontal sum per run cost 0.14 ms of the 0.62 of the 128x256x14x14 statistics). The last
// n % 16 values are the vector ending at n with its other lanes zeroed (keep_last), added to the
// lanes directly. `term(i, &t1, &t2)` gives the two summands of the vector at i; a run shorter
// than a vector goes value by value, `scalar(i, &u1, &u2)` in float64 into *s1, *s2. (The
// float64 lanes of shifted_sums / grad_sums convert every value to float64, and on AVX2 that
// was the bound: 32x64x56x56 backward sums 1.22 ms on two threads against 1.00 for the
// channels-last float32 blocks of the same size.)
template <typename Term, typename Scalar>
inline void run_sums_f32(int64_t n, double* l1, double* l2, double* s1, double* s2, Term term,
                         Scalar scalar) {
  if (n < kVec) {
    double t1 = 0, t2 = 0;
    for (int64_t i = 0; i < n; ++i) {
      double u1, u2;
      scalar(i, &u1, &u2);
      t1 += u1;
      t2 += u2;
    }
    *s1 += t1;
    *s2 += t2;
    return;
  }
  constexpr int NA = 2;
  vd8 d1 = load8(l1), d2 = load8(l2);
  const int64_t nv = n / kVec * kVec;
  int64_t i = 0;
  while (i < nv) {
    const int64_t be = imin(nv, i + NA * kBlockRows * kVec);
    vf16 a1[NA], a2[NA];
    for (int j = 0; j < NA; ++j) a1[j] = a2[j] = vf16{};
    for (; i + NA * kVec <= be; i += NA * kVec)
      for (int j = 0; j < NA; ++j) {
        vf16 t1, t2;
        term(i + kVec * j, &t1, &t2);
        a1[j] += t1;
        a2[j] += t2;
      }
    for (int j = 0; i < be; i += kVec, ++j) {  // fewer than NA vectors left in the block
      vf16 t1, t2;
      term(i, &t1, &t2);
      a1[j] += t1;
      a2[j] += t2;
    }
    for (int j = 0; j < NA; ++j) {
      flush(a1[j], &d1);
      flush(a2[j], &d2);
    }
  }
  if (n > nv) {
    vf16 t1, t2;
    term(n - kVec, &t1, &t2);
    flush(keep_last(t1, n - nv), &d1);
    flush(keep_last(t2, n - nv), &d2);
  }
  storev(l1, d1);
  storev(l2, d2);
}

// ------------------------------------------------------------------ reductions (stats, backward_reduce)

// Reduce over (outer, C, inner) into per-thread partial sums part[tid][2][C], then add them.
// planar_run(c, offset, length, s1*, s2*, lanes*) accumulates one contiguous run of channel c
// (into s1, s2, or into the channel's 16 float64 lanes, 8 per sum, added to s1, s2 at the end);
// interleaved_rows(row_begin, row_end, s1[C], s2[C]) a block of rows of C channels.
// Each thread accumulates in an array it allocates itself and copies it into `part` once at
// the end. The interleaved rows add into all C sums every kBlockRows rows; with the threads'
// sums as slices of the one shared `part`, the channels-last 100352x64 statistics took
// 0.81-1.02 ms on two threads (one thread: 1.0-1.2 ms), the second thread's chunk the slower,
// and padding the slices to separate 64-byte lines did not change that; with an array per
// thread, 0.54-0.60 ms. Why is not known (a guess, not checked: one core's prefetcher
// fetching the lines of the other's slice in the same 4 KiB page).
template <typename PlanarRun, typename InterleavedRows>
void reduce(int64_t outer, int64_t C, int64_t inner, const bn_par* par, double* out1, double* out2,
            PlanarRun planar_run, InterleavedRows interleaved_rows) {
  const int64_t total = outer * C * inner;
  const int team = team_size(par, total);
  Buf<double> part(static_cast<int64_t>(team) * 2 * C);
  auto chunk = [&](int64_t tid) {
    const int nth = team;
    Buf<double> mine(2 * C);
    double* p1 = mine.data();
    double* p2 = p1 + C;
    int64_t begin, end;
    if (inner > 1) {
      // Per channel 8 float64 lanes of each sum, for the runs of a vector or more
      // (run_sums_f32).
      const bool wide = inner >= kVec;
      Buf<double> lanes(wide ? 16 * C : 0);
      my_range(total, tid, nth, &begin, &end);
      int64_t e = begin;
      while (e < end) {
        const int64_t row = e / inner, off = e - row * inner;
        const int64_t len = imin(inner - off, end - e);
        const int64_t c = row % C;
        planar_run(c, e, len, p1 + c, p2 + c, lanes.data() + (wide ? 16 * c : 0));
        e += len;
      }
      if (wide)
        for (int64_t c = 0; c < C; ++c) {
          p1[c] += hsum(load8(lanes.data() + 16 * c));
          p2[c] += hsum(load8(lanes.data() + 16 * c + 8));
        }
    } else {
      my_range(outer, tid, nth, &begin, &end);
      interleaved_rows(begin, end, p1, p2);
    }
    for (int64_t i = 0; i < 2 * C; ++i) part[tid * 2 * C + i] = mine[i];
  };
  run_chunks(par, team, chunk);
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0, s2 = 0;
    for (int t = 0; t < team; ++t) {
      s1 += part[static_cast<int64_t>(t) * 2 * C + c];
      s2 += part[static_cast<int64_t>(t) * 2 * C + C + c];
    }
    out1[c] = s1;
    out2[c] = s2;
  }
}

template <typename T>
void stats(const T* x, int64_t outer, int64_t C, int64_t inner, double* mean,
           typename Acc<T>::type* var, const bn_par* par) {
  Buf<double> K(C);
  for (int64_t c = 0; c < C; ++c) K[c] = static_cast<double>(to_acc(x[c * inner]));
  const bool blocks = !Same<T, double>::value && (inner > 1 || C >= kVec);
  if (blocks) {
    // The float32 blocks: K = the mean of the channel's first samples, rounded to float32, so
    // that sum(d) is small and var = (S2 - S1^2/m)/m does not amplify the blocks' rounding.
    // Still within the samples' range, and exact (K = x) on a constant channel.
    const int64_t first = imin(outer * inner, kBlockRows);
    for (int64_t c = 0; c < C; ++c) {
      double s = 0;
      for (int64_t j = 0; j < first; ++j)
        s += static_cast<double>(to_acc(x[(j / inner) * C * inner + c * inner + j % inner]));
      K[c] = static_cast<double>(static_cast<float>(s / static_cast<double>(first)));
    }
  }
  const double* k = K.data();
  Buf<float> KF(C);  // exact: K is a float32 value
  for (int64_t c = 0; c < C; ++c) KF[c] = static_cast<float>(K[c]);
  const float* kf = KF.data();
  Buf<double> s1(C), s2(C);
  reduce(
      outer, C, inner, par, s1.data(), s2.data(),
      [&](int64_t c, int64_t e, int64_t len, double* a1, double* a2, double* lanes) {
        if constexpr (!Same<T, double>::value) {
          const T* p = x + e;
          const vf16 kv = kf[c] - vf16{};
          const double kc = k[c];
          return run_sums_f32(len, lanes, lanes + 8, a1, a2, [&](int64_t i, vf16* t1, vf16* t2) {
            const vf16 d = loadf(p + i) - kv;
            *t1 = d;
            *t2 = d * d;
          }, [&](int64_t i, double* u1, double* u2) {
            const double d = static_cast<double>(to_acc(p[i])) - kc;
            *u1 = d;
            *u2 = d * d;
          });
        } else {
          (void)lanes;
          shifted_sums(x + e, len, k[c], a1, a2);
        }
      },
      [&](int64_t r0, int64_t r1, double* a1, double* a2) {
        if constexpr (!Same<T, double>::value)
          if (C >= kVec) return interleaved_sums_f32(x, r0, r1, C, kf, k, a1, a2);
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
    var[c] = static_cast<typename Acc<T>::type>(clamp0((s2[c] - s1[c] * d_mean) / m));
  }
}

template <typename T>
void backward_reduce(const T* dy, const T* x, int64_t outer, int64_t C, int64_t inner,
                     const double* mean, typename Acc<T>::type* sum_dy,
                     typename Acc<T>::type* sum_dy_xmu, const bn_par* par) {
  Buf<double> o1(C), o2(C);
  Buf<float> HI(C), LO(C);
  for (int64_t c = 0; c < C; ++c) split(mean[c], &HI[c], &LO[c]);
  const float* hi = HI.data();
  const float* lo = LO.data();
  reduce(
      outer, C, inner, par, o1.data(), o2.data(),
      [&](int64_t c, int64_t e, int64_t len, double* a1, double* a2, double* lanes) {
        if constexpr (!Same<T, double>::value) {
          const T* g = dy + e;
          const T* p = x + e;
          const vf16 hv = hi[c] - vf16{}, lv = lo[c] - vf16{};
          const double mc = mean[c];
          return run_sums_f32(len, lanes, lanes + 8, a1, a2, [&](int64_t i, vf16* t1, vf16* t2) {
            const vf16 gv = loadf(g + i);
            *t1 = gv;
            *t2 = gv * ((loadf(p + i) - hv) - lv);
          }, [&](int64_t i, double* u1, double* u2) {
            const double gi = static_cast<double>(to_acc(g[i]));
            *u1 = gi;
            *u2 = gi * (static_cast<double>(to_acc(p[i])) - mc);
          });
        } else {
          (void)lanes;
          grad_sums(dy + e, x + e, len, mean[c], a1, a2);
        }
      },
      [&](int64_t r0, int64_t r1, double* a1, double* a2) {
        if constexpr (!Same<T, double>::value)
          if (C >= kVec) return interleaved_grad_sums_f32(dy, x, r0, r1, C, hi, lo, mean, a1, a2);
        interleaved_grad_sums(r0, r1, C, dy, x, mean, a1, a2);
      });
  for (int64_t c = 0; c < C; ++c) {
    sum_dy[c] = static_cast<typename Acc<T>::type>(o1[c]);
    sum_dy_xmu[c] = static_cast<typename Acc<T>::type>(o2[c]);
  }
}

// ------------------------------------------------------------------ element-wise (normalize, backward_elemt)

// Apply `planar_run(c, e, len)` over contiguous runs of one channel (planar) or
// `interleaved_rows(r0, r1)` over blocks of up to kRowBlock rows of C channels (interleaved),
// split evenly between threads. (The callers write interleaved rows of single-precision input with
// explicit 16-float vectors, row_block; `omp simd` over a row of 64-256 values spent much of
// its time in alignment peeling and remainder code, measured 1.1-1.3 copy times against 0.9
// for the planar runs. Row by row, the per-channel constants were loaded again for every row:
// at C = 32 that is four loads per vector of data, and the channels-last 8x32x112x112
// normalize took 1.11-1.19 copy times, 1.12-1.39 on AVX2; in blocks of 8 rows, 1.06-1.09 on
// both.)
constexpr int64_t kRowBlock = 8;
// Blocks of rows only where rows are short (up to 256 bytes): with long rows a block's vectors
// of one channel group sit a row apart (at C = 1024 float32, 4 KiB, where a load of x can alias
// the store of y just before it), and at C = 256 and 1024 the blocked loop measured 10-25%
// slower than row by row on AVX-512.
inline bool short_rows(int64_t C, int64_t elem_bytes) { return C * elem_bytes <= 256; }
template <typename PlanarRun, typename InterleavedRows>
void elementwise(int64_t outer, int64_t C, int64_t inner, int64_t elem_bytes, const bn_par* par,
                 PlanarRun planar_run, InterleavedRows interleaved_rows) {
  const int64_t total = outer * C * inner;
  const int team = team_size(par, total);
  auto chunk = [&](int64_t tid) {
    const int nth = team;
    int64_t begin, end;
    if (inner > 1) {
      my_range(total, tid, nth, &begin, &end);
      int64_t e = begin;
      while (e < end) {
        const int64_t row = e / inner, off = e - row * inner;
        const int64_t len = imin(inner - off, end - e);
        planar_run(row % C, e, len);
        e += len;
      }
    } else {
      my_range(outer, tid, nth, &begin, &end);
      const int64_t block = short_rows(C, elem_bytes) ? kRowBlock : 1;
      for (int64_t r = begin; r < end; r += block) interleaved_rows(r, imin(r + block, end));
    }
  };
  run_chunks(par, team, chunk);
}

// Rows [r0, r1) of C channels, r1 - r0 <= kRowBlock, single precision: for each vector of 16
// channels, its per-channel constants loaded once (`consts(c)`), then `op(e, consts)` at offset
// e = r * C + c of every row; the last C % 16 channels value by value, `tail(e, c)`.
template <typename Consts, typename Op, typename Tail>
inline void row_block(int64_t r0, int64_t r1, int64_t C, Consts consts, Op op, Tail tail) {
  int64_t c = 0;
  for (; c + kVec <= C; c += kVec) {
    const auto k = consts(c);
    for (int64_t r = r0; r < r1; ++r) op(r * C + c, k);
  }
  if (c < C)
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = c; j < C; ++j) tail(r * C + j, j);
}

// y = ((x - hi) - lo) * scale + shift
template <typename T>
void normalize(const T* x, T* y, int64_t outer, int64_t C, int64_t inner, const double* mean,
               const typename Acc<T>::type* scale, const typename Acc<T>::type* shift, const bn_par* par) {
  typedef typename Acc<T>::type A;
  const SplitMeans<A> m(mean, C);
  const A* hi = m.hi.data();
  const A* lo = m.lo.data();
  elementwise(
      outer, C, inner, sizeof(T), par,
      [&](int64_t c, int64_t e, int64_t len) {
        const A h = hi[c], l = lo[c], s = scale[c], b = shift[c];
        const T* p = x + e;
        T* q = y + e;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i) from_acc(((to_acc(p[i]) - h) - l) * s + b, q + i);
      },
      [&](int64_t r0, int64_t r1) {
        if constexpr (!Same<T, double>::value) {  // explicit vectors: see elementwise
          if (!short_rows(C, sizeof(T))) {
            for (int64_t r = r0; r < r1; ++r) {
              const T* p = x + r * C;
              T* q = y + r * C;
              int64_t c = 0;
              for (; c + kVec <= C; c += kVec)
                storef(q + c, ((loadf(p + c) - loadf(hi + c)) - loadf(lo + c)) * loadf(scale + c) +
                                  loadf(shift + c));
              for (; c < C; ++c) from_acc(((to_acc(p[c]) - hi[c]) - lo[c]) * scale[c] + shift[c], q + c);
            }
            return;
          }
          struct K { vf16 h, l, s, b; };
          row_block(r0, r1, C, [&](int64_t c) {
            return K{loadf(hi + c), loadf(lo + c), loadf(scale + c), loadf(shift + c)};
          }, [&](int64_t e, const K& k) {
            storef(y + e, ((loadf(x + e) - k.h) - k.l) * k.s + k.b);
          }, [&](int64_t e, int64_t j) {
            from_acc(((to_acc(x[e]) - hi[j]) - lo[j]) * scale[j] + shift[j], y + e);
          });
        } else {
          for (int64_t r = r0; r < r1; ++r) {
            const T* p = x + r * C;
            T* q = y + r * C;
#pragma omp simd
            for (int64_t j = 0; j < C; ++j)
              from_acc(((to_acc(p[j]) - hi[j]) - lo[j]) * scale[j] + shift[j], q + j);
          }
        }
      });
}

// dx = k * (dy - mean_dy - ((x - hi) - lo) * proj)
template <typename T>
void backward_elemt(const T* dy, const T* x, T* dx, int64_t outer, int64_t C, int64_t inner,
                    const double* mean, const typename Acc<T>::type* k,
                    const typename Acc<T>::type* mean_dy, const typename Acc<T>::type* proj, const bn_par* par) {
  typedef typename Acc<T>::type A;
  const SplitMeans<A> m(mean, C);
  const A* hi = m.hi.data();
  const A* lo = m.lo.data();
  elementwise(
      outer, C, inner, sizeof(T), par,
      [&](int64_t c, int64_t e, int64_t len) {
        const A h = hi[c], l = lo[c], kk = k[c], md = mean_dy[c], pr = proj[c];
        const T* g = dy + e;
        const T* p = x + e;
        T* q = dx + e;
#pragma omp simd
        for (int64_t i = 0; i < len; ++i)
          from_acc(kk * (to_acc(g[i]) - md - ((to_acc(p[i]) - h) - l) * pr), q + i);
      },
      [&](int64_t r0, int64_t r1) {
        if constexpr (!Same<T, double>::value) {  // explicit vectors: see elementwise
          if (!short_rows(C, sizeof(T))) {
            for (int64_t r = r0; r < r1; ++r) {
              const T* g = dy + r * C;
              const T* p = x + r * C;
              T* q = dx + r * C;
              int64_t c = 0;
              for (; c + kVec <= C; c += kVec)
                storef(q + c, loadf(k + c) * (loadf(g + c) - loadf(mean_dy + c) -
                                              ((loadf(p + c) - loadf(hi + c)) - loadf(lo + c)) *
                                                  loadf(proj + c)));
              for (; c < C; ++c)
                from_acc(k[c] * (to_acc(g[c]) - mean_dy[c] - ((to_acc(p[c]) - hi[c]) - lo[c]) * proj[c]),
                         q + c);
            }
            return;
          }
          struct K { vf16 k, md, h, l, pr; };
          row_block(r0, r1, C, [&](int64_t c) {
            return K{loadf(k + c), loadf(mean_dy + c), loadf(hi + c), loadf(lo + c), loadf(proj + c)};
          }, [&](int64_t e, const K& v) {
            storef(dx + e, v.k * (loadf(dy + e) - v.md - ((loadf(x + e) - v.h) - v.l) * v.pr));
          }, [&](int64_t e, int64_t j) {
            from_acc(k[j] * (to_acc(dy[e]) - mean_dy[j] - ((to_acc(x[e]) - hi[j]) - lo[j]) * proj[j]),
                     dx + e);
          });
        } else {
          for (int64_t r = r0; r < r1; ++r) {
            const T* g = dy + r * C;
            const T* p = x + r * C;
            T* q = dx + r * C;
#pragma omp simd
            for (int64_t j = 0; j < C; ++j)
              from_acc(k[j] * (to_acc(g[j]) - mean_dy[j] - ((to_acc(p[j]) - hi[j]) - lo[j]) * proj[j]),
                       q + j);
          }
        }
      });
}

// ------------------------------------------------------------------ per-channel vectors in the call

// normalize with scale and shift made here from the statistics, as the core's torch ops make
// them (same dtype, same order, so the same bits): inv_std = 1 / sqrt(A(var) + A(eps)),
// scale = weight * inv_std, shift = bias; inv_std is written out for the backward. Saves the
// five or six tiny tensor ops per call that cost 5-20 us each after a large kernel has flushed
// the caches.
template <typename T, typename M, typename V>
void normalize_stats(const T* x, T* y, int64_t outer, int64_t C, int64_t inner, const M* mean,
                     const V* var, const typename Acc<T>::type* weight,
                     const typename Acc<T>::type* bias, double eps, typename Acc<T>::type* inv_std,
                     const bn_par* par) {
  typedef typename Acc<T>::type A;
  Buf<double> md(C);
  Buf<A> scale(C), shift(C);
  const A e = static_cast<A>(eps);
  for (int64_t c = 0; c < C; ++c) {
    md[c] = static_cast<double>(mean[c]);
    const A inv = A(1) / bn_sqrt(static_cast<A>(var[c]) + e);
    inv_std[c] = inv;
    scale[c] = weight ? weight[c] * inv : inv;
    shift[c] = bias ? bias[c] : A(0);
  }
  normalize(x, y, outer, C, inner, md.data(), scale.data(), shift.data(), par);
}

// backward_elemt with k, mean_dy and proj made here as the core makes them (eq. 12):
// k = weight * inv_std, mean_dy = sum_dy / m, proj = sum_dy_xmu / m * inv_std * inv_std.
template <typename T>
void backward_elemt_stats(const T* dy, const T* x, T* dx, int64_t outer, int64_t C, int64_t inner,
                          const double* mean, const typename Acc<T>::type* inv_std,
                          const typename Acc<T>::type* weight, const typename Acc<T>::type* sum_dy,
                          const typename Acc<T>::type* sum_dy_xmu, int64_t m, const bn_par* par) {
  typedef typename Acc<T>::type A;
  Buf<A> k(C), mean_dy(C), proj(C);
  const A ma = static_cast<A>(m);
  for (int64_t c = 0; c < C; ++c) {
    const A inv = inv_std[c];
    k[c] = weight ? weight[c] * inv : inv;
    mean_dy[c] = sum_dy[c] / ma;
    proj[c] = sum_dy_xmu[c] / ma * inv * inv;
  }
  backward_elemt(dy, x, dx, outer, C, inner, mean, k.data(), mean_dy.data(), proj.data(), par);
}

// The running-statistics update of functional.update_running_stats (docs/math.md eq. 13-16),
// in one call instead of about twenty tiny tensor ops: the batch is used only if every mean
// and variance is finite; counters move; then running = (1 - f) * running + f * batch, the
// variance made unbiased first if asked. Each step is the torch op of the reference version
// in the same precision (the Bessel factor in the variance's dtype, the rest in the buffers'),
// products rounded before the sum (volatile: no fused multiply-add), so both paths give the
// same bits.
template <typename R, typename V>
int running_update(R* rm, R* rv, const double* mean, const V* var, int64_t C, int64_t count,
                   double momentum, int cumulative, int store_unbiased, int64_t* nbt,
                   int64_t* skipped) {
  bool ok = true;
  for (int64_t c = 0; c < C; ++c)
    ok = ok && __builtin_isfinite(mean[c]) && __builtin_isfinite(static_cast<double>(var[c]));
  if (nbt) *nbt += ok ? 1 : 0;
  if (skipped) *skipped += ok ? 0 : 1;
  if (!ok) return 0;
  R f, g;
  if (cumulative) {
    f = R(1) / static_cast<R>(imax(*nbt, 1));
    g = R(1) - f;
  } else {
    f = static_cast<R>(momentum);
    g = static_cast<R>(1.0 - momentum);
  }
  const bool unbiased = store_unbiased && count > 1;
  const V bessel = static_cast<V>(static_cast<double>(count) / static_cast<double>(count - 1));
  for (int64_t c = 0; c < C; ++c) {
    const V v = unbiased ? static_cast<V>(var[c] * bessel) : var[c];
    volatile R p1 = f * static_cast<R>(mean[c]), p2 = g * rm[c];
    volatile R q1 = f * static_cast<R>(v), q2 = g * rv[c];
    rm[c] = p1 + p2;
    rv[c] = q1 + q2;
  }
  return 0;
}

// ------------------------------------------------------------------ the table (kernel_table.h)
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

int t_stats(int dtype, const void* x, int64_t outer, int64_t C, int64_t inner, double* mean,
             void* var, const bn_par* par) {
  BN_DISPATCH(stats(static_cast<const T*>(x), outer, C, inner, mean,
                    static_cast<Acc<T>::type*>(var), par))
}

int t_normalize(int dtype, const void* x, void* y, int64_t outer, int64_t C, int64_t inner,
                 const double* mean, const void* scale, const void* shift, const bn_par* par) {
  BN_DISPATCH(normalize(static_cast<const T*>(x), static_cast<T*>(y), outer, C, inner, mean,
                        static_cast<const Acc<T>::type*>(scale),
                        static_cast<const Acc<T>::type*>(shift), par))
}

int t_backward_reduce(int dtype, const void* dy, const void* x, int64_t outer, int64_t C,
                       int64_t inner, const double* mean, void* sum_dy, void* sum_dy_xmu, const bn_par* par) {
  BN_DISPATCH(backward_reduce(static_cast<const T*>(dy), static_cast<const T*>(x), outer, C,
                              inner, mean, static_cast<Acc<T>::type*>(sum_dy),
                              static_cast<Acc<T>::type*>(sum_dy_xmu), par))
}

int t_backward_elemt(int dtype, const void* dy, const void* x, void* dx, int64_t outer,
                      int64_t C, int64_t inner, const double* mean, const void* k,
                      const void* mean_dy, const void* proj, const bn_par* par) {
  BN_DISPATCH(backward_elemt(static_cast<const T*>(dy), static_cast<const T*>(x),
                             static_cast<T*>(dx), outer, C, inner, mean,
                             static_cast<const Acc<T>::type*>(k),
                             static_cast<const Acc<T>::type*>(mean_dy),
                             static_cast<const Acc<T>::type*>(proj), par))
}

// normalize_stats: mdtype / vdtype 0 float32, 1 float64 (the mean and variance vectors);
// weight, bias may be null. Returns -1 on an unknown dtype combination.
int t_normalize_stats(int dtype, const void* x, void* y, int64_t outer, int64_t C, int64_t inner,
                       int mdtype, const void* mean, int vdtype, const void* var,
                       const void* weight, const void* bias, double eps, void* inv_std, const bn_par* par) {
#define BN_NS(M, V)                                                                        \
  BN_DISPATCH(normalize_stats(static_cast<const T*>(x), static_cast<T*>(y), outer, C, inner, \
                              static_cast<const M*>(mean), static_cast<const V*>(var),     \
                              static_cast<const Acc<T>::type*>(weight),                  \
                              static_cast<const Acc<T>::type*>(bias), eps,               \
                              static_cast<Acc<T>::type*>(inv_std), par))
  if (mdtype == 1 && vdtype == 0) { BN_NS(double, float) }
  if (mdtype == 1 && vdtype == 1) { BN_NS(double, double) }
  if (mdtype == 0 && vdtype == 0) { BN_NS(float, float) }
  if (mdtype == 0 && vdtype == 1) { BN_NS(float, double) }
#undef BN_NS
  return -1;
}

int t_backward_elemt_stats(int dtype, const void* dy, const void* x, void* dx, int64_t outer,
                            int64_t C, int64_t inner, const double* mean, const void* inv_std,
                            const void* weight, const void* sum_dy, const void* sum_dy_xmu,
                            int64_t m, const bn_par* par) {
  BN_DISPATCH(backward_elemt_stats(static_cast<const T*>(dy), static_cast<const T*>(x),
                                   static_cast<T*>(dx), outer, C, inner, mean,
                                   static_cast<const Acc<T>::type*>(inv_std),
                                   static_cast<const Acc<T>::type*>(weight),
                                   static_cast<const Acc<T>::type*>(sum_dy),
                                   static_cast<const Acc<T>::type*>(sum_dy_xmu), m, par))
}

// Running update: rdtype / vdtype 0 float32, 1 float64 (running buffers / batch variance);
// momentum is ignored when cumulative (factor 1 / num_batches_tracked, nbt required).
int t_running_update(int rdtype, void* rm, void* rv, int vdtype, const double* mean,
                      const void* var, int64_t C, int64_t count, double momentum, int cumulative,
                      int store_unbiased, int64_t* nbt, int64_t* skipped) {
  if (cumulative && !nbt) return -2;
#define BN_RU(R, V)                                                                        \
  return running_update(static_cast<R*>(rm), static_cast<R*>(rv), mean,                   \
                        static_cast<const V*>(var), C, count, momentum, cumulative,       \
                        store_unbiased, nbt, skipped)
  if (rdtype == 0 && vdtype == 0) BN_RU(float, float);
  if (rdtype == 0 && vdtype == 1) BN_RU(float, double);
  if (rdtype == 1 && vdtype == 0) BN_RU(double, float);
  if (rdtype == 1 && vdtype == 1) BN_RU(double, double);
#undef BN_RU
  return -1;
}

// ------------------------------------------------------------------ 2x2 max pooling

// Not batch norm: the experiments' LeNet pools after each convolution, and torch's generic CPU
// loop takes a quarter of its training step on one thread. The scan is torch's
// (cpu_max_pool): from -inf, each of the window's four values in row-major order replaces the
// maximum where it is greater or NaN, so the first maximum wins, and the last NaN. Branch-free
// selects, so that the compiler vectorises along the row (the data decide, not the predictor).
template <typename T>
inline void pool_take(T v, int64_t at, T& m, int64_t& mi) {
  const bool t = (v > m) | (v != v);
  m = t ? v : m;
  mi = t ? at : mi;
}

template <typename T>
void max_pool2x2(const T* x, T* y, int64_t* idx, int64_t planes, int64_t H, int64_t W) {
  const int64_t Ho = H / 2, Wo = W / 2;
  for (int64_t p = 0; p < planes; ++p) {
    const T* in = x + p * H * W;
    for (int64_t oh = 0; oh < Ho; ++oh) {
      const int64_t top = 2 * oh * W;
      const T* r0 = in + top;
      const T* r1 = r0 + W;
      T* o = y + (p * Ho + oh) * Wo;
      int64_t* oi = idx + (p * Ho + oh) * Wo;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t at = top + 2 * ow;
        T m = -static_cast<T>(__builtin_inf());  // no std:: template (see the top)
        int64_t mi = at;
        pool_take(r0[2 * ow], at, m, mi);
        pool_take(r0[2 * ow + 1], at + 1, m, mi);
        pool_take(r1[2 * ow], at + W, m, mi);
        pool_take(r1[2 * ow + 1], at + W + 1, m, mi);
        o[ow] = m;
        oi[ow] = mi;
      }
    }
  }
}

int t_max_pool2x2(int dtype, const void* x, void* y, int64_t* idx, int64_t planes, int64_t H,
                  int64_t W) {
  if (dtype == 0) {
    max_pool2x2(static_cast<const float*>(x), static_cast<float*>(y), idx, planes, H, W);
    return 0;
  }
  if (dtype == 1) {
    max_pool2x2(static_cast<const double*>(x), static_cast<double*>(y), idx, planes, H, W);
    return 0;
  }
  return -1;
}

const bn_kernel_table kTable = {
    BN_KERNEL_ABI,        t_stats,          t_normalize,
    t_backward_reduce,    t_backward_elemt, t_normalize_stats,
    t_backward_elemt_stats, t_running_update, t_max_pool2x2, BN_STR(BN_ISA),
};

}  // namespace

extern "C" const bn_kernel_table* BN_CAT(bn_kernels_, BN_ISA)(void) { return &kTable; }
