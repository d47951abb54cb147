// A few small launches of every emulated CUDA kernel, for the ThreadSanitizer and AddressSanitizer + UBSan builds
// (tests/cuda_emu/test_cuda_emulated.py): every buffer is a separate heap block of exactly its size, so an out-of-bounds
// access is an ASan report; the kernels' threads are real threads, so a race on global or shared memory is a TSan
// report. Prints the results (the test compares them with the plain build's) and exits non-zero on a kernel
// error or a wrong-looking result.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

extern "C" {
int emu_tpc_select(const float* x, const float* noise, float* scratch, int scratch_batch, int64_t* out, int B, int F,
                   int C, int keep, int k, int center, int index_ties);
int emu_susa(int dtype, const void* x, void* out, const int32_t* out_index, const float* gw, const float* mw,
             const float* mb, const float* cw, const float* cb, const float* lw, const float* lb, float* scratch,
             long long N, long long C, long long C_out, long long H, long long W, const long long* xs,
             const long long* os, int h_wise, int channels_last);
const char* emu_message();
void emu_float_to_half(const float* in, uint16_t* out, long long n);
void emu_float_to_bf16(const float* in, uint16_t* out, long long n);
}

namespace {

uint32_t rng = 12345;
float uniform() {  // [-1, 1)
  rng = rng * 1664525u + 1013904223u;
  return static_cast<float>(rng >> 8) / 8388608.0f - 1.0f;
}

int failures = 0;

void check(int err, const char* what) {
  if (err != 0) {
    std::printf("FAIL %s: error %d: %s\n", what, err, emu_message());
    ++failures;
  }
}

void tpc_case(int B, int F, int C, int keep, int k, int center, bool noise, int scratch_batch, bool duplicates) {
  std::vector<float> x(static_cast<size_t>(B) * F * C);
  for (auto& v : x) v = uniform();
  if (duplicates)  // frames 1 and 2 repeat frame 0: exact ties
    for (int b = 0; b < B; ++b)
      for (int f = 1; f < 3 && f < F; ++f)
        std::memcpy(&x[(static_cast<size_t>(b) * F + f) * C], &x[static_cast<size_t>(b) * F * C], C * sizeof(float));
  std::vector<float> nz(static_cast<size_t>(B) * F);
  for (auto& v : nz) v = 1e-3f * uniform();
  std::vector<float> scratch(static_cast<size_t>(scratch_batch) * F * F);
  std::vector<int64_t> out(static_cast<size_t>(B) * keep, -1);
  check(emu_tpc_select(x.data(), noise ? nz.data() : nullptr, scratch.data(), scratch_batch, out.data(), B, F, C,
                       keep, k, center, 1),
        "tpc_select");
  std::printf("tpc B=%d F=%d C=%d keep=%d k=%d center=%d noise=%d:", B, F, C, keep, k, center, noise ? 1 : 0);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < keep; ++t) {
      const int64_t v = out[static_cast<size_t>(b) * keep + t];
      const int64_t prev = t ? out[static_cast<size_t>(b) * keep + t - 1] : -1;
      if (v < 0 || v >= F || v <= prev) {
        std::printf(" [bad index %lld]", static_cast<long long>(v));
        ++failures;
      }
      std::printf(" %lld", static_cast<long long>(v));
    }
    std::printf(" |");
  }
  std::printf("\n");
}

void susa_case(int dtype, bool h_wise, bool ln, int N, int C, int H, int W) {
  const int R = h_wise ? H : W, C_out = C + 2;
  std::vector<float> xf(static_cast<size_t>(N) * C * H * W), gw(R), mw(C), mb(C), cw(C * C), cb(C), lw(C), lb(C);
  for (auto& v : xf) v = uniform();
  for (auto* p : {&gw, &mw, &mb, &cw, &cb, &lw, &lb})
    for (auto& v : *p) v = uniform();
  // x and out in the kernel's dtype; out has two extra channels; channel 1's out_index is out of range (skipped).
  const size_t esize = dtype == 0 ? 4 : 2;
  std::vector<unsigned char> x(xf.size() * esize), out(static_cast<size_t>(N) * C_out * H * W * esize, 0);
  if (dtype == 0) std::memcpy(x.data(), xf.data(), x.size());
  if (dtype == 1) emu_float_to_half(xf.data(), reinterpret_cast<uint16_t*>(x.data()), xf.size());
  if (dtype == 2) emu_float_to_bf16(xf.data(), reinterpret_cast<uint16_t*>(x.data()), xf.size());
  std::vector<int32_t> out_index(C);
  for (int c = 0; c < C; ++c) out_index[c] = (c * 3 + 1) % C_out;
  out_index[1] = C_out + 5;
  std::vector<float> scratch(static_cast<size_t>(N) * C * R);
  const long long xs[4] = {static_cast<long long>(C) * H * W, static_cast<long long>(H) * W, W, 1};
  const long long os[4] = {static_cast<long long>(C_out) * H * W, static_cast<long long>(H) * W, W, 1};
  check(emu_susa(dtype, x.data(), out.data(), out_index.data(), gw.data(), mw.data(), mb.data(), cw.data(),
                 cb.data(), ln ? lw.data() : nullptr, ln ? lb.data() : nullptr, scratch.data(), N, C, C_out, H, W, xs,
                 os, h_wise ? 1 : 0, 0),
        "susa");
  uint64_t hash = 1469598103934665603ull;  // FNV-1a of the output bytes
  for (unsigned char b : out) hash = (hash ^ b) * 1099511628211ull;
  std::printf("susa dtype=%d h_wise=%d ln=%d N=%d C=%d H=%d W=%d: %016llx\n", dtype, h_wise ? 1 : 0, ln ? 1 : 0, N, C,
              H, W, static_cast<unsigned long long>(hash));
}

}  // namespace

int main() {
  tpc_case(2, 20, 20, 7, 2, -1, false, 2, true);
  tpc_case(3, 33, 7, 1, 3, 5, true, 2, false);  // C < 16: tail channels only; 2 chunks of the scratch
  tpc_case(1, 17, 37, 16, 2, 16, false, 1, true);
  tpc_case(1, 40, 150, 13, 2, -1, false, 1, false);  // three 64-channel chunks staged through shared memory
  // every dtype, both directions, LN on and off (not every combination: TSan runs are slow)
  susa_case(0, true, true, 2, 5, 7, 5);
  susa_case(0, false, false, 2, 5, 7, 5);
  susa_case(1, false, true, 2, 5, 7, 5);
  susa_case(1, true, false, 2, 5, 7, 5);
  susa_case(2, true, true, 2, 5, 7, 5);
  susa_case(2, false, false, 2, 5, 7, 5);
  susa_case(0, true, true, 1, 33, 9, 40);  // more than 32 channels, S > 32
  if (failures) std::printf("%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
