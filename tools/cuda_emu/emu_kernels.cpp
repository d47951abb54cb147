// The emulated "glue": C entry points (for ctypes) to the raw-pointer launchers of csrc/tpc_select_cuda.cu and
// csrc/susa_cuda.cu built against cuda_emu.h, plus the emulator's own self-test kernels and its fp16 / bf16
// conversions. Pointers are host memory (CPU tensors). Each entry point clears the emulator's sticky error first;
// emu_message() returns the first error message of the last call ("" if none).
#include "cuda_emu.h"

#include <string>

// The launchers' declarations, as in csrc/*_cuda_glue.cpp (a mismatch is a link error: C++ mangled names).
cudaError_t tpc_select_cuda_launch(const float* x, const float* noise, float* dist_scratch, int scratch_batch,
                                   int64_t* out, int B, int F, int C, int keep, int k, int center, bool index_ties,
                                   cudaStream_t stream);
int susa_cuda_launch(int dtype, const void* x, void* out, const int32_t* out_index, const float* gw,
                     const float* mw, const float* mb, const float* cw, const float* cb, const float* lw,
                     const float* lb, float* scratch, long long N, long long C, long long C_out, long long H,
                     long long W, const long long* xs, const long long* os, bool h_wise, bool channels_last,
                     void* stream);
int emu_selftest_launch(int which, float* out);

extern "C" {

int emu_tpc_select(const float* x, const float* noise, float* scratch, int scratch_batch, int64_t* out, int B, int F,
                   int C, int keep, int k, int center, int index_ties) {
  emu::reset();
  return static_cast<int>(tpc_select_cuda_launch(x, noise, scratch, scratch_batch, out, B, F, C, keep, k, center,
                                                 index_ties != 0, nullptr));
}

int emu_susa(int dtype, const void* x, void* out, const int32_t* out_index, const float* gw, const float* mw,
             const float* mb, const float* cw, const float* cb, const float* lw, const float* lb, float* scratch,
             long long N, long long C, long long C_out, long long H, long long W, const long long* xs,
             const long long* os, int h_wise, int channels_last) {
  emu::reset();
  return susa_cuda_launch(dtype, x, out, out_index, gw, mw, mb, cw, cb, lw, lb, scratch, N, C, C_out, H, W, xs, os,
                          h_wise != 0, channels_last != 0, nullptr);
}

int emu_selftest(int which, float* out) {
  emu::reset();
  return emu_selftest_launch(which, out);
}

const char* emu_message() {
  static thread_local std::string m;
  m = emu::take_message();
  return m.c_str();
}

void emu_float_to_half(const float* in, uint16_t* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __float2half_rn(in[i]).bits;
}
void emu_half_to_float(const uint16_t* in, float* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __half2float(__half{in[i]});
}
void emu_float_to_bf16(const float* in, uint16_t* out, long long n) {
  for (long long i = 0; i < n; ++i) out[i] = __float2bfloat16_rn(in[i]).bits;
}

}  // extern "C"
