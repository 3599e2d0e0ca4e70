// kernels.cpp for AVX-512 (F, BW, VL, DQ; x86-64-v4); setup.py compiles this file with
// -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma.
#define BN_ISA avx512
#include "kernels.cpp"
