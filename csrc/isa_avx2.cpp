// kernels.cpp for AVX2 + FMA (x86-64-v3); setup.py compiles this file with -mavx2 -mfma.
#define BN_ISA avx2
#include "kernels.cpp"
