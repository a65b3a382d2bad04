// The one place where the CPU kernels choose instruction sets: which platform is x86-64, where per-function ISA
// clones (ifunc) are available, and the run-time CPU feature queries. Everything x86-only in csrc/cpu/ sits behind
// RNNEXT_X86, so that the same file list builds on every platform (aarch64, macOS, ...), where the portable
// paths run and the AVX-512 entry points are never called (their availability queries answer false).
#pragma once

#if defined(__x86_64__) || defined(_M_X64)
#define RNNEXT_X86 1
#else
#define RNNEXT_X86 0
#endif

// Per-function clones (GCC/clang target_clones, dispatched through ifunc at load time): x86-64 Linux only, and not
// when built with RNNEXT_NO_IFUNC (setup.py defines it where the platform has no ifunc, or when RNNEXT_NO_IFUNC=1
// asks for it), where the baseline code alone is compiled.
#if RNNEXT_X86 && defined(__linux__) && !defined(RNNEXT_NO_IFUNC)
#define RNNEXT_CLONES __attribute__((target_clones("avx2", "default")))
#define RNNEXT_CLONES_512 __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RNNEXT_CLONES
#define RNNEXT_CLONES_512
#endif

// A region of x86 code compiled for an ISA beyond the build's baseline (its functions are only entered where the
// CPU has it): GCC's target pragma, or clang's attribute push (clang ignores GCC's target pragma). Inside an
// AVX-512 region, an AVX512-BF16 one is RNNEXT_NEST_AVX512_BF16 ... RNNEXT_UNNEST_AVX512_BF16 (clang applies only
// the outer of two pushed targets, so there the outer one is popped and pushed again around it).
#if defined(__clang__)
#define RNNEXT_BEGIN_AVX512 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,fma\"))), apply_to = function)")
#define RNNEXT_BEGIN_AVX512_BF16 \
  _Pragma("clang attribute push(__attribute__((target(\"avx512f,fma,avx512bf16,avx512bw,avx512vl\"))), apply_to=function)")
#define RNNEXT_END_ISA _Pragma("clang attribute pop")
#define RNNEXT_NEST_AVX512_BF16 RNNEXT_END_ISA RNNEXT_BEGIN_AVX512_BF16
#define RNNEXT_UNNEST_AVX512_BF16 RNNEXT_END_ISA RNNEXT_BEGIN_AVX512
#else
#define RNNEXT_BEGIN_AVX512 _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,fma\")")
#define RNNEXT_BEGIN_AVX512_BF16 \
  _Pragma("GCC push_options") _Pragma("GCC target(\"avx512f,fma,avx512bf16,avx512bw,avx512vl\")")
#define RNNEXT_END_ISA _Pragma("GCC pop_options")
#define RNNEXT_NEST_AVX512_BF16 RNNEXT_BEGIN_AVX512_BF16
#define RNNEXT_UNNEST_AVX512_BF16 RNNEXT_END_ISA
#endif
// A lambda inside an AVX512-BF16 region (clang does not carry a nested region's target to lambdas).
#define RNNEXT_AVX512_BF16_LAMBDA __attribute__((target("avx512f,fma,avx512bf16,avx512bw,avx512vl")))

namespace rnnext::cpu {

// Whether this CPU has AVX-512F (false off x86-64).
inline bool cpu_has_avx512f() {
#if RNNEXT_X86
  __builtin_cpu_init();  // may not have run yet when called from a static initializer
  return __builtin_cpu_supports("avx512f") != 0;
#else
  return false;
#endif
}

// Whether this CPU has AVX512-BF16 with AVX512-BW (false off x86-64).
inline bool cpu_has_avx512bf16() {
#if RNNEXT_X86
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") != 0 && __builtin_cpu_supports("avx512bw") != 0;
#else
  return false;
#endif
}

}  // namespace rnnext::cpu
