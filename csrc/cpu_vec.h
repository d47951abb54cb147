// What the C++ CPU kernels share: function multiversioning, 8- and 4-float vectors, and fast fp16 rows.
//
// target_clones builds AVX-512 / AVX2 / baseline variants of a function and picks one at load time; with
// -ffp-contract=off (setup.py) all variants round alike. The vectors are the GCC/Clang vector extension: a v8f is
// one AVX2 register (two SSE registers in the baseline clone).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>

// The vector helpers return 32-byte vectors; they are always inlined into the target_clones functions, so the ABI
// note GCC gives for such returns without AVX does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

#define PYENGINE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
// fp16 rows: x86-64-v3 brings F16C (see half_row_to_float).
#define PYENGINE_F16_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#define PYENGINE_INLINE inline __attribute__((always_inline))
// One ISA per function, for the kernels instantiated per vector width (KernelChoice, below).
#define PYENGINE_AVX512 __attribute__((target("avx512f")))
#define PYENGINE_AVX2 __attribute__((target("avx2")))

namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

template <typename V>
PYENGINE_INLINE V loadv(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);  // unaligned load
  return v;
}

// fp16 rows <-> fp32 rows. c10::Half's scalar conversions are bit manipulation (about 10x slower than the kernels
// around them); _Float16 in an x86-64-v3 clone compiles to F16C's vcvtph2ps / vcvtps2ph, 8 values at a time, with
// the same round-to-nearest-even as c10::Half, so results are bit-identical. The baseline clone calls libgcc's
// conversions. Each translation unit gets its own (internal) copies.
// Compilers without _Float16 on x86 (GCC < 12; the compiler then does not define __FLT16_MAX__) get
// c10::Half's own scalar conversions instead: slower, bit-identical (tests/kernels/test_cpu_vec.py builds both).
#if defined(__FLT16_MAX__)
[[maybe_unused]] PYENGINE_F16_CLONES void half_row_to_float(const c10::Half* __restrict src, int64_t n,
                                                            float* __restrict dst) {
  const _Float16* s = reinterpret_cast<const _Float16*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}

[[maybe_unused]] PYENGINE_F16_CLONES void float_row_to_half(const float* __restrict src, int64_t n,
                                                            c10::Half* __restrict dst) {
  _Float16* d = reinterpret_cast<_Float16*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<_Float16>(src[i]);
}
#else
[[maybe_unused]] inline void half_row_to_float(const c10::Half* __restrict src, int64_t n, float* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

[[maybe_unused]] inline void float_row_to_half(const float* __restrict src, int64_t n, c10::Half* __restrict dst) {
  for (int64_t i = 0; i < n; ++i) dst[i] = c10::Half(src[i]);
}
#endif

// Kernels written per vector width. One source on 16-float vectors compiled for AVX2 by target_clones lowers its
// vectors through the stack (GCC: hundreds of spills per kernel, 2-5x slower), so the attention and LayerNorm
// kernels are templates over the vector type, instantiated once per ISA into a Set of function pointers (a struct
// with a `const char* name`: "avx512", "avx2" or "baseline"). KernelChoice holds the sets, widest first, and runs
// the widest this CPU has; use() switches to another (tests: every width must give the same bits).
inline bool cpu_runs_isa(const std::string& name) {
  if (name == "avx512") return __builtin_cpu_supports("avx512f");
  if (name == "avx2") return __builtin_cpu_supports("avx2");
  return name == "baseline";
}

template <typename Set>
class KernelChoice {
 public:
  KernelChoice(const char* what, const Set* avx512, const Set* avx2, const Set* baseline)
      : what_(what), sets_{avx512, avx2, baseline} {
    for (const Set* s : sets_) {
      if (cpu_runs_isa(s->name)) {
        current_.store(s);
        break;
      }
    }
  }
  const Set& get() const { return *current_.load(std::memory_order_relaxed); }
  // The name of the set in use, after switching to `name` if that is not empty (it must run on this CPU).
  std::string use(const std::string& name) {
    if (!name.empty()) {
      const Set* found = nullptr;
      for (const Set* s : sets_) {
        if (name == s->name) found = s;
      }
      TORCH_CHECK(found != nullptr, what_, ": use must be \"avx512\", \"avx2\" or \"baseline\", got \"", name, "\"");
      TORCH_CHECK(cpu_runs_isa(name), what_, ": this CPU does not run the ", name, " kernels");
      current_.store(found);
    }
    return get().name;
  }

 private:
  const char* what_;
  const Set* sets_[3];
  std::atomic<const Set*> current_{nullptr};
};

}  // namespace
