// fp16 rows <-> fp32 rows, fast. c10::Half's scalar conversions are bit manipulation (about 10x slower than the
// kernels around them); _Float16 in an x86-64-v3 clone compiles to F16C's vcvtph2ps / vcvtps2ph, 8 values at a
// time, with the same round-to-nearest-even as c10::Half, so results are bit-identical. The baseline clone calls
// libgcc's conversions. Each translation unit gets its own (internal) copies.
#pragma once

#include <c10/util/Half.h>

#include <cstdint>

#define PYENGINE_F16_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))

namespace {

PYENGINE_F16_CLONES void half_row_to_float(const c10::Half* __restrict src, int64_t n, float* __restrict dst) {
  const _Float16* s = reinterpret_cast<const _Float16*>(src);
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
}

PYENGINE_F16_CLONES void float_row_to_half(const float* __restrict src, int64_t n, c10::Half* __restrict dst) {
  _Float16* d = reinterpret_cast<_Float16*>(dst);
  for (int64_t i = 0; i < n; ++i) d[i] = static_cast<_Float16>(src[i]);
}

}  // namespace
