// The table of kernel entry points that each instruction-set build of kernels.cpp exports
// (bn_kernels_baseline / bn_kernels_avx2 / bn_kernels_avx512), and the thread-pool callback
// ops.cpp passes in. Plain C types only: kernels.cpp includes no torch header.
//
// dtype codes: 0 float32, 1 float64, 2 bfloat16, 3 float16. Per-channel vectors of the
// accumulation type are float64 for float64 input, float32 otherwise; means are float64.
// Every entry returns 0 on success and a negative number for a dtype combination it lacks.
#pragma once

#include <stdint.h>

#define BN_KERNEL_ABI 6

#ifdef __cplusplus
extern "C" {
#endif

// run(ctx, n, state, fn): call fn(state, i) for every i in [0, n), on up to n threads.
typedef struct bn_par {
  void (*run)(void* ctx, int64_t n, void* state, void (*fn)(void* state, int64_t i));
  void* ctx;
  int nthreads;
} bn_par;

typedef struct bn_kernel_table {
  int abi;  // BN_KERNEL_ABI of the build
  int (*stats)(int dtype, const void* x, int64_t outer, int64_t C, int64_t inner, double* mean,
               void* var, const bn_par* par);
  int (*normalize)(int dtype, const void* x, void* y, int64_t outer, int64_t C, int64_t inner,
                   const double* mean, const void* scale, const void* shift, const bn_par* par);
  int (*backward_reduce)(int dtype, const void* dy, const void* x, int64_t outer, int64_t C,
                         int64_t inner, const double* mean, void* sum_dy, void* sum_dy_xmu,
                         const bn_par* par);
  int (*backward_elemt)(int dtype, const void* dy, const void* x, void* dx, int64_t outer,
                        int64_t C, int64_t inner, const double* mean, const void* k,
                        const void* mean_dy, const void* proj, const bn_par* par);
  // mdtype / vdtype: 0 float32, 1 float64 (mean and variance vectors); weight, bias may be null.
  int (*normalize_stats)(int dtype, const void* x, void* y, int64_t outer, int64_t C,
                         int64_t inner, int mdtype, const void* mean, int vdtype, const void* var,
                         const void* weight, const void* bias, double eps, void* inv_std,
                         const bn_par* par);
  int (*backward_elemt_stats)(int dtype, const void* dy, const void* x, void* dx, int64_t outer,
                              int64_t C, int64_t inner, const double* mean, const void* inv_std,
                              const void* weight, const void* sum_dy, const void* sum_dy_xmu,
                              int64_t m, const bn_par* par);
  // rdtype / vdtype: 0 float32, 1 float64 (running buffers / batch variance).
  int (*running_update)(int rdtype, void* rm, void* rv, int vdtype, const double* mean,
                        const void* var, int64_t C, int64_t count, double momentum,
                        int cumulative, int store_unbiased, int64_t* nbt, int64_t* skipped);
  // 2x2, stride-2 max pooling of `planes` contiguous HxW planes (dtype 0 or 1): the values and
  // the in-plane indices (h * W + w) of at::max_pool2d_with_indices (csrc/ops.cpp, max_pool2x2).
  int (*max_pool2x2)(int dtype, const void* x, void* y, int64_t* idx, int64_t planes, int64_t H,
                     int64_t W);
  const char* isa;  // "baseline", "avx2", "avx512"
} bn_kernel_table;

const bn_kernel_table* bn_kernels_baseline(void);
const bn_kernel_table* bn_kernels_avx2(void);
const bn_kernel_table* bn_kernels_avx512(void);

#ifdef __cplusplus
}
#endif
