// Portability macros for the header-only math that both the CPU (g++) and CUDA (nvcc) kernels include.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define RNNEXT_HD __host__ __device__ __forceinline__
#else
#define RNNEXT_HD inline __attribute__((always_inline))
#endif
