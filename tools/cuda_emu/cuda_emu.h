// cuda_emu.h: a small CUDA-on-CPU runtime, so the csrc/*.cu kernels execute (and are tested) on a machine without
// a GPU. See tools/cuda_emu/README.md for how a .cu file is built against it and what it cannot catch.
//
// Execution model:
//   * one OS thread per CUDA thread of a block (a pool of workers reused across blocks and launches); the blocks of
//     a grid run one after another; one launch at a time (launches are synchronous: a stream orders nothing more);
//   * __syncthreads: a block barrier (a mutex guards the arrivals; each waiting thread sleeps on its own semaphore,
//     released by the thread completing the barrier; ThreadSanitizer understands both); every thread of the block
//     must reach the same __syncthreads (same file:line), else the launch fails;
//   * __shfl_*_sync / __syncwarp: a per-warp (32 lanes) barrier with a double-buffered exchange slot per lane; all
//     lanes named in the mask must call the same intrinsic at the same place with the same mask;
//   * deadlock detection: when every thread of the block is either blocked in a barrier or has exited, and no
//     barrier can complete, the launch fails at once with a message saying who waits where (no hang); a watchdog
//     (CUDA_EMU_WATCHDOG_S, default 60 s) fails a barrier that waits longer than that;
//   * __shared__ variables live in per-block storage (rewritten by rewrite.py into emu::block_shared), dynamic
//     shared memory is one buffer of exactly the launch's size; both are filled with 0xff bytes (NaN floats, -1
//     ints) at the start of every block, so a read of unwritten shared memory shows up in the results;
//   * launch-limit checks as on sm_90: block <= 1024 threads (x, y <= 1024, z <= 64), grid x < 2^31, y, z <= 65535,
//     no zero dimension; dynamic shared memory <= 48 KiB unless cudaFuncSetAttribute(...MaxDynamicShared...)
//     raised it, and static + dynamic <= 227 KiB; static shared memory <= 48 KiB;
//   * a failed kernel (barrier misuse, a C++ exception) makes the error sticky, as a device fault does on a GPU:
//     cudaGetLastError() returns cudaErrorLaunchFailure and later launches are skipped until emu::reset().
// Arithmetic: the __f*_rn / __d*_rn intrinsics are the plain IEEE operations (build with -ffp-contract=off);
// __half / __nv_bfloat16 convert with round-to-nearest-even like CUDA's __float2half_rn / __float2bfloat16_rn.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <semaphore>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

// ---- qualifiers -----------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// __shared__ is deliberately not defined: rewrite.py turns every __shared__ declaration into per-block storage,
// so a declaration it missed is a compile error, not a silently per-thread (or global) variable.

// ---- runtime API types ----------------------------------------------------------------------------------------
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
typedef struct CUstream_st* cudaStream_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
};

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

// ---- device math ----------------------------------------------------------------------------------------------
// Exact IEEE round-to-nearest operations: a plain operation, provided the build uses -ffp-contract=off.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __drcp_rn(double a) { return 1.0 / a; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
// Fast-math intrinsics: glibc's correctly-rounded-ish versions (the GPU's are less accurate: not emulated).
inline float __expf(float a) { return std::exp(a); }
inline float __logf(float a) { return std::log(a); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float a) { return 1.0f / std::sqrt(a); }
inline double rsqrt(double a) { return 1.0 / std::sqrt(a); }
// CUDA's integer / float min and max overloads (std::min needs identical argument types).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- __half / __nv_bfloat16 -----------------------------------------------------------------------------------
namespace emu {
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// float -> IEEE binary16, round to nearest even (NaN -> 0x7fff, CUDA's canonical NaN).
inline uint16_t float_to_half_bits(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return 0x7fffu;
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 (or inf): inf
  if (x >= 0x38800000u) {                                                // normal half (>= 2^-14)
    x += 0x0fffu + ((x >> 13) & 1u);                                     // round to nearest even on bit 13
    return static_cast<uint16_t>(sign | ((x - 0x38000000u) >> 13));
  }
  if (x <= 0x33000000u) return static_cast<uint16_t>(sign);  // <= 2^-25: rounds to zero (the tie goes to even 0)
  const uint32_t e = x >> 23, m = (x & 0x7fffffu) | 0x800000u, shift = 126u - e;  // subnormal: m * 2^(e-150)
  uint32_t r = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1fu) return bits_float(sign | 0x7f800000u | (m << 13));
  if (e != 0) return bits_float(sign | ((e + 112u) << 23) | (m << 13));
  const float v = static_cast<float>(m) * 5.9604644775390625e-8f;  // m * 2^-24, exact
  return sign ? -v : v;
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }
}  // namespace emu

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};
inline float __half2float(__half h) { return emu::half_bits_to_float(h.bits); }
inline __half __float2half_rn(float f) { return __half{emu::float_to_half_bits(f)}; }
inline __half __float2half(float f) { return __float2half_rn(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return emu::bf16_bits_to_float(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{emu::float_to_bf16_bits(f)}; }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

// ---- the runtime ----------------------------------------------------------------------------------------------
namespace emu {

struct Abort {};  // unwinds a CUDA thread of a failed launch

struct Site {
  const char* file = "";
  int line = 0;
  const char* what = "";  // the barrier kind, for messages
};

inline std::string where(const Site& s) { return std::string(s.file) + ":" + std::to_string(s.line); }
inline std::string what_where(const Site& s) { return std::string(s.what) + " at " + where(s); }

inline double watchdog_seconds() {
  const char* v = std::getenv("CUDA_EMU_WATCHDOG_S");
  return v ? std::atof(v) : 60.0;
}

struct WarpState {
  std::mutex mu;
  std::vector<int> waiters;  // threads blocked in this warp's current barrier
  uint64_t gen = 0;
  int arrived = 0;
  unsigned mask = 0;
  const char* kind = "";
  Site site;
  unsigned arrived_lanes = 0;
  uint64_t slot[2][32] = {};
};

struct Job;
inline Job* current_job = nullptr;  // the launch in progress (one at a time)

struct Job {
  dim3 grid, block;
  int nthreads = 0;
  uint64_t nblocks = 0;
  std::function<void()> body;
  const void* kernel = nullptr;
  size_t dyn_smem = 0;
  // Each thread sleeps on its own semaphore (the thread completing a barrier releases each waiter: no wake-up
  // storm on one mutex); `sem` for __syncthreads / warp barriers, `end_sem` for the end of a block.
  std::vector<std::unique_ptr<std::counting_semaphore<>>> sem, end_sem;
  // block state, guarded by bmu
  std::mutex bmu;
  std::vector<int> bwaiters;  // threads blocked in the current __syncthreads
  uint64_t bgen = 0;
  int barrier_arrived = 0;
  Site barrier_site;
  std::vector<Site> waiting_at;   // per thread: where it waits (file "" = running or exited)
  std::vector<char> exited;       // per thread: returned from the kernel in this block
  std::map<std::string, void*> static_shared;
  size_t static_bytes = 0;
  unsigned char* dyn = nullptr;
  std::vector<std::unique_ptr<WarpState>> warps;
  // (exited << 32) | blocked: deadlock when exited + blocked == nthreads with someone blocked
  std::atomic<uint64_t> stuck{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string error;
  // end of block / end of job, guarded by jmu
  std::mutex jmu;
  std::condition_variable jcv;
  int finished = 0;
  uint64_t cur_block = 0;
  int workers_done = 0;

  void fail(const std::string& msg) {
    {
      std::lock_guard<std::mutex> lk(err_mu);
      if (error.empty()) {
        error = "block (" + std::to_string(blockIdx.x) + ", " + std::to_string(blockIdx.y) + ", " +
                std::to_string(blockIdx.z) + "): " + msg;
      }
    }
    if (!failed.exchange(true))  // wake every blocked thread (they check `failed` and unwind)
      for (auto& s : sem) s->release();
  }
  std::string who_waits() {  // a summary of where the threads of the block are
    std::map<std::string, int> count;
    int gone = 0, running = 0;
    for (int t = 0; t < nthreads; ++t) {
      if (exited[t]) ++gone;
      else if (waiting_at[t].line) ++count[what_where(waiting_at[t])];
      else ++running;
    }
    std::string s;
    for (auto& kv : count) s += std::to_string(kv.second) + " thread(s) wait in " + kv.first + "; ";
    if (gone) s += std::to_string(gone) + " thread(s) have exited the kernel; ";
    if (running) s += std::to_string(running) + " thread(s) running; ";
    return s;
  }
  // Called with the barrier's mutex held, before this thread sleeps.
  void note_blocked(int tid, const Site& site, const char* what) {
    waiting_at[tid] = site;
    const uint64_t st = stuck.fetch_add(1) + 1;
    if ((st >> 32) + (st & 0xffffffffu) == static_cast<uint64_t>(nthreads)) {
      fail(std::string("deadlock: ") + what + " at " + where(site) + " can never complete: " + who_waits());
    }
  }
  void note_released(int n) { stuck.fetch_sub(static_cast<uint64_t>(n)); }
  void note_exited(int tid) {
    exited[tid] = 1;
    const uint64_t st = stuck.fetch_add(uint64_t(1) << 32) + (uint64_t(1) << 32);
    const uint64_t blocked = st & 0xffffffffu;
    if (blocked > 0 && (st >> 32) + blocked == static_cast<uint64_t>(nthreads) && !failed.load())
      fail("deadlock: thread " + std::to_string(tid) + " exited the kernel while others wait: " + who_waits());
  }
};

inline thread_local int tls_tid = 0;  // linear thread index within the block

// Sleep until the barrier this thread blocked in completes (its semaphore is released), or the launch failed; the
// watchdog fails a wait longer than its limit. Called without any lock held.
inline void wait_or_abort(Job* job, int tid, const char* what, const Site& site) {
  const auto limit = std::chrono::duration<double>(watchdog_seconds());
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    if (job->sem[tid]->try_acquire_for(std::chrono::milliseconds(200))) {
      if (job->failed.load()) throw Abort{};
      job->waiting_at[tid] = Site{};
      return;
    }
    if (job->failed.load()) throw Abort{};
    if (std::chrono::steady_clock::now() - start > limit) {
      job->fail(std::string("watchdog: ") + what + " at " + where(site) + " not completed after " +
                std::to_string(watchdog_seconds()) + " s: " + job->who_waits());
      throw Abort{};
    }
  }
}

// Wake the threads of a completed barrier (after its mutex was released).
inline void release_all(Job* job, const std::vector<int>& waiters) {
  for (int t : waiters) job->sem[t]->release();
}

inline void syncthreads(const char* file, int line) {
  Job* job = current_job;
  const Site site{file, line, "__syncthreads"};
  std::unique_lock<std::mutex> lk(job->bmu);
  if (job->failed.load()) throw Abort{};
  if (job->barrier_arrived == 0) {
    job->barrier_site = site;
  } else if (job->barrier_site.line != line || std::strcmp(job->barrier_site.file, file) != 0) {
    lk.unlock();
    job->fail("__syncthreads at " + where(site) + " while other threads of the block wait at the __syncthreads at " +
              where(job->barrier_site) + " (a barrier in divergent code)");
    throw Abort{};
  }
  if (++job->barrier_arrived == job->nthreads) {
    job->barrier_arrived = 0;
    job->note_released(job->nthreads - 1);
    ++job->bgen;
    std::vector<int> waiters;
    waiters.swap(job->bwaiters);
    lk.unlock();
    release_all(job, waiters);
    return;
  }
  job->bwaiters.push_back(tls_tid);
  job->note_blocked(tls_tid, site, "__syncthreads");
  lk.unlock();
  wait_or_abort(job, tls_tid, "__syncthreads", site);
}

inline int popcount(unsigned m) { return __builtin_popcount(m); }

// One warp-level exchange: every lane in `mask` deposits `value`, then reads the value of lane src_of(lane).
// check_site: shuffles must be the same call; __syncwarp may be reached from different places.
template <typename T, typename SrcFn>
T warp_exchange(const char* kind, const char* file, int line, bool check_site, unsigned mask, T value,
                SrcFn src_of) {
  static_assert(sizeof(T) <= 8, "warp exchange of a type wider than 8 bytes");
  Job* job = current_job;
  const Site site{file, line, kind};
  const int tid = tls_tid, warp = tid / 32, lane = tid % 32;
  const int lanes_here = std::min(32, job->nthreads - warp * 32);
  const unsigned existing = lanes_here == 32 ? 0xffffffffu : ((1u << lanes_here) - 1u);
  auto fail = [&](const std::string& m) {
    job->fail(std::string(kind) + " at " + where(site) + " (warp " + std::to_string(warp) + ", lane " +
              std::to_string(lane) + "): " + m);
    throw Abort{};
  };
  char maskbuf[16];
  std::snprintf(maskbuf, sizeof maskbuf, "0x%08x", mask);
  if (!(mask >> lane & 1u)) fail(std::string("the calling lane is not in the mask ") + maskbuf);
  if (mask & ~existing) fail(std::string("the mask ") + maskbuf + " names lanes that do not exist in this block");
  WarpState& w = *job->warps[warp];
  std::unique_lock<std::mutex> lk(w.mu);
  if (job->failed.load()) throw Abort{};
  if (w.arrived == 0) {
    w.mask = mask;
    w.kind = kind;
    w.site = site;
    w.arrived_lanes = 0;
  } else if (w.mask != mask || std::strcmp(w.kind, kind) != 0 ||
             (check_site && (w.site.line != line || std::strcmp(w.site.file, file) != 0))) {
    char other[16];
    std::snprintf(other, sizeof other, "0x%08x", w.mask);
    lk.unlock();
    fail(std::string("called with mask ") + maskbuf + " while lanes " + other + " of the warp wait in " + w.kind +
         " at " + where(w.site) + " (divergent warp-synchronous call)");
  }
  const uint64_t my = w.gen;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.slot[my & 1][lane] = bits;
  w.arrived_lanes |= 1u << lane;
  if (++w.arrived == popcount(mask)) {
    w.arrived = 0;
    job->note_released(popcount(mask) - 1);
    ++w.gen;
    std::vector<int> waiters;
    waiters.swap(w.waiters);
    lk.unlock();
    release_all(job, waiters);
  } else {
    w.waiters.push_back(tid);
    job->note_blocked(tid, site, kind);
    lk.unlock();
    wait_or_abort(job, tid, kind, site);
  }
  // The slots of generation `my` are not written again before every lane of the mask has arrived at the next
  // exchange (double buffering), so they are read without the lock.
  const int src = src_of(lane);
  if (src < 0 || src >= 32 || !(mask >> src & 1u))
    fail("reads lane " + std::to_string(src) + ", which is not in the mask " + maskbuf);
  T out;
  std::memcpy(&out, &w.slot[my & 1][src], sizeof(T));
  return out;
}

template <typename T>
T shfl_xor(const char* file, int line, unsigned mask, T var, int lane_mask, int width = 32) {
  return warp_exchange<T>("__shfl_xor_sync", file, line, true, mask, var, [&](int lane) {
    const int src = lane ^ lane_mask;
    return (src / width) > (lane / width) ? lane : src;  // a later group: the caller's own value (as CUDA)
  });
}
template <typename T>
T shfl(const char* file, int line, unsigned mask, T var, int src_lane, int width = 32) {
  return warp_exchange<T>("__shfl_sync", file, line, true, mask, var,
                          [&](int lane) { return (lane / width) * width + ((src_lane % width) + width) % width; });
}
template <typename T>
T shfl_down(const char* file, int line, unsigned mask, T var, unsigned delta, int width = 32) {
  return warp_exchange<T>("__shfl_down_sync", file, line, true, mask, var, [&](int lane) {
    return (lane % width) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  });
}
template <typename T>
T shfl_up(const char* file, int line, unsigned mask, T var, unsigned delta, int width = 32) {
  return warp_exchange<T>("__shfl_up_sync", file, line, true, mask, var, [&](int lane) {
    return (lane % width) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  });
}
inline void syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) {
  warp_exchange<int>("__syncwarp", file, line, false, mask, 0, [](int lane) { return lane; });
}

// ---- shared memory --------------------------------------------------------------------------------------------
constexpr size_t kStaticSharedLimit = 48 * 1024;
constexpr size_t kDefaultDynamicSharedLimit = 48 * 1024;
constexpr size_t kOptInSharedLimit = 227 * 1024;

// A __shared__ variable: one object per block, shared by its threads (key: the declaration).
template <typename T>
T& block_shared(const char* key) {
  Job* job = current_job;
  std::unique_lock<std::mutex> lk(job->bmu);
  auto it = job->static_shared.find(key);
  if (it != job->static_shared.end()) return *static_cast<T*>(it->second);
  if (job->static_bytes + sizeof(T) > kStaticSharedLimit) {
    lk.unlock();
    job->fail(std::string("static shared memory over 48 KiB (") + key + ")");
    throw Abort{};
  }
  if (job->static_bytes + sizeof(T) + job->dyn_smem > kOptInSharedLimit) {
    lk.unlock();
    job->fail(std::string("static + dynamic shared memory over 227 KiB (") + key + ")");
    throw Abort{};
  }
  void* p = std::malloc(sizeof(T));
  std::memset(p, 0xff, sizeof(T));
  job->static_bytes += sizeof(T);
  job->static_shared.emplace(key, p);
  return *static_cast<T*>(p);
}

// extern __shared__ T name[]: the launch's dynamic shared memory (exactly its size, so ASan sees an overrun).
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(current_job->dyn);
}

// ---- errors ---------------------------------------------------------------------------------------------------
struct ErrorState {
  std::mutex mu;
  cudaError_t last = cudaSuccess;   // cleared by cudaGetLastError (unless sticky)
  cudaError_t sticky = cudaSuccess;  // a kernel fault: every later call fails until reset()
  std::string message;
  std::map<const void*, size_t> max_dyn_smem;  // cudaFuncSetAttribute
};
inline ErrorState& errors() {
  static ErrorState e;
  return e;
}
inline void set_error(cudaError_t err, const std::string& msg, bool sticky) {
  ErrorState& e = errors();
  std::lock_guard<std::mutex> lk(e.mu);
  if (e.last == cudaSuccess) e.last = err;
  if (sticky && e.sticky == cudaSuccess) e.sticky = err;
  if (e.message.empty()) e.message = msg;
}
// The first error message since the last reset ("" if none), and clear all error state.
inline std::string take_message() {
  ErrorState& e = errors();
  std::lock_guard<std::mutex> lk(e.mu);
  return e.message;
}
inline void reset() {
  ErrorState& e = errors();
  std::lock_guard<std::mutex> lk(e.mu);
  e.last = e.sticky = cudaSuccess;
  e.message.clear();
}

// ---- the worker pool ------------------------------------------------------------------------------------------
class Pool {
 public:
  static Pool& get() {
    static Pool p;
    return p;
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++gen_;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  // Runs job on its nthreads workers and returns when every block ran (or the launch failed).
  void run(Job* job) {
    std::unique_lock<std::mutex> lk(mu_);
    while (static_cast<int>(threads_.size()) < job->nthreads) {
      const int id = static_cast<int>(threads_.size());
      threads_.emplace_back([this, id] { worker(id); });
    }
    job_ = job;
    ++gen_;
    cv_.notify_all();
    lk.unlock();
    std::unique_lock<std::mutex> jl(job->jmu);
    job->jcv.wait(jl, [&] { return job->workers_done == job->nthreads; });
    lk.lock();
    job_ = nullptr;
  }

 private:
  void worker(int id) {
    uint64_t seen = 0;
    for (;;) {
      Job* job;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen_;
        if (stop_) return;
        job = job_;
      }
      if (job == nullptr || id >= job->nthreads) continue;
      run_blocks(job, id);
    }
  }

  static void set_ids(Job* job, int id, uint64_t b) {
    threadIdx = uint3{static_cast<unsigned>(id % job->block.x), static_cast<unsigned>(id / job->block.x % job->block.y),
                      static_cast<unsigned>(id / (job->block.x * job->block.y))};
    blockIdx = uint3{static_cast<unsigned>(b % job->grid.x), static_cast<unsigned>(b / job->grid.x % job->grid.y),
                     static_cast<unsigned>(b / (static_cast<uint64_t>(job->grid.x) * job->grid.y))};
    blockDim = job->block;
    gridDim = job->grid;
    tls_tid = id;
  }

  // The block state a new block starts with (called by the last thread of the previous block, or the launcher).
  static void reset_block(Job* job) {
    for (auto& kv : job->static_shared) std::free(kv.second);
    job->static_shared.clear();
    job->static_bytes = 0;
    if (job->dyn_smem) std::memset(job->dyn, 0xff, job->dyn_smem);
    job->barrier_arrived = 0;
    job->bwaiters.clear();
    std::fill(job->waiting_at.begin(), job->waiting_at.end(), Site{});
    std::fill(job->exited.begin(), job->exited.end(), 0);
    job->stuck.store(0);
    for (auto& w : job->warps) {
      w->arrived = 0;
      w->waiters.clear();
    }
  }

  static void run_blocks(Job* job, int id) {
    for (;;) {
      uint64_t b;
      {
        std::lock_guard<std::mutex> jl(job->jmu);
        b = job->cur_block;
      }
      // Every worker takes part in every block, even one that failed before the worker got to it: the decision to
      // stop is the last thread's, at the end of the block (below).
      if (b >= job->nblocks) break;
      set_ids(job, id, b);
      try {
        if (!job->failed.load()) job->body();
      } catch (const Abort&) {
      } catch (const std::exception& e) {
        job->fail(std::string("C++ exception in the kernel: ") + e.what());
      }
      {
        std::lock_guard<std::mutex> bl(job->bmu);
        job->note_exited(id);
      }
      bool last;
      {
        std::lock_guard<std::mutex> jl(job->jmu);
        last = ++job->finished == job->nthreads;
        if (last) {  // the last thread of the block sets up the next one
          job->finished = 0;
          reset_block(job);
          job->cur_block = job->failed.load() ? job->nblocks : job->cur_block + 1;
        }
      }
      if (last) {
        for (int t = 0; t < job->nthreads; ++t)
          if (t != id) job->end_sem[t]->release();
      } else {
        job->end_sem[id]->acquire();  // never released by fail(): the end of a block is always a full barrier
      }
    }
    std::lock_guard<std::mutex> jl(job->jmu);
    if (++job->workers_done == job->nthreads) job->jcv.notify_all();
  }

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t gen_ = 0;
  bool stop_ = false;
  Job* job_ = nullptr;
  std::vector<std::thread> threads_;
};

struct LaunchConfig {
  dim3 grid, block;
  size_t smem;
  cudaStream_t stream;
};
inline LaunchConfig config(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t stream = nullptr) {
  return LaunchConfig{grid, block, smem, stream};
}

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

inline std::string dims(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// The launch-time checks of sm_90; "" when the configuration is valid.
inline cudaError_t check_config(const LaunchConfig& c, const void* kernel, std::string& why) {
  const uint64_t threads = static_cast<uint64_t>(c.block.x) * c.block.y * c.block.z;
  if (c.block.x == 0 || c.block.y == 0 || c.block.z == 0 || c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) {
    why = "a zero grid or block dimension: grid " + dims(c.grid) + ", block " + dims(c.block);
    return cudaErrorInvalidConfiguration;
  }
  if (threads > 1024 || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64) {
    why = "block " + dims(c.block) + " exceeds 1024 threads (x, y <= 1024, z <= 64)";
    return cudaErrorInvalidConfiguration;
  }
  if (c.grid.x > 2147483647u || c.grid.y > 65535u || c.grid.z > 65535u) {
    why = "grid " + dims(c.grid) + " exceeds (2^31 - 1, 65535, 65535)";
    return cudaErrorInvalidConfiguration;
  }
  size_t allowed = kDefaultDynamicSharedLimit;
  {
    ErrorState& e = errors();
    std::lock_guard<std::mutex> lk(e.mu);
    auto it = e.max_dyn_smem.find(kernel);
    if (it != e.max_dyn_smem.end()) allowed = std::max(allowed, it->second);
  }
  if (c.smem > allowed) {
    why = "dynamic shared memory " + std::to_string(c.smem) + " B > " + std::to_string(allowed) +
          " B (48 KiB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) raised it)";
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

template <typename... P, typename... A>
void launch(const LaunchConfig& cfg, void (*kernel)(P...), A&&... args) {
  static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
  std::lock_guard<std::mutex> launch_lock(launch_mutex());
  const void* kid = reinterpret_cast<const void*>(kernel);
  {
    ErrorState& e = errors();
    std::lock_guard<std::mutex> lk(e.mu);
    if (e.sticky != cudaSuccess) return;  // after a fault every launch fails (as on a GPU context)
  }
  std::string why;
  const cudaError_t err = check_config(cfg, kid, why);
  if (err != cudaSuccess) {
    set_error(err, "launch refused: " + why, false);
    return;
  }
  std::tuple<std::decay_t<P>...> params(static_cast<P>(std::forward<A>(args))...);
  Job job;
  job.grid = cfg.grid;
  job.block = cfg.block;
  job.nthreads = static_cast<int>(cfg.block.x * cfg.block.y * cfg.block.z);
  job.nblocks = static_cast<uint64_t>(cfg.grid.x) * cfg.grid.y * cfg.grid.z;
  job.kernel = kid;
  job.body = [&params, kernel] {
    std::tuple<std::decay_t<P>...> local(params);  // kernel arguments are per-thread copies
    std::apply(kernel, local);
  };
  job.dyn_smem = cfg.smem;
  job.dyn = static_cast<unsigned char*>(std::malloc(cfg.smem ? cfg.smem : 1));
  job.waiting_at.assign(job.nthreads, Site{});
  for (int t = 0; t < job.nthreads; ++t) {
    job.sem.emplace_back(new std::counting_semaphore<>(0));
    job.end_sem.emplace_back(new std::counting_semaphore<>(0));
  }
  job.exited.assign(job.nthreads, 0);
  for (int w = 0; w < (job.nthreads + 31) / 32; ++w) job.warps.emplace_back(new WarpState);
  if (cfg.smem) std::memset(job.dyn, 0xff, cfg.smem);
  current_job = &job;
  Pool::get().run(&job);
  current_job = nullptr;
  for (auto& kv : job.static_shared) std::free(kv.second);
  std::free(job.dyn);
  if (job.failed.load()) set_error(cudaErrorLaunchFailure, "kernel failed: " + job.error, true);
}

}  // namespace emu

// ---- CUDA API -------------------------------------------------------------------------------------------------
inline cudaError_t cudaGetLastError() {
  emu::ErrorState& e = emu::errors();
  std::lock_guard<std::mutex> lk(e.mu);
  const cudaError_t r = e.sticky != cudaSuccess ? e.sticky : e.last;
  e.last = cudaSuccess;
  return r;
}
inline cudaError_t cudaPeekAtLastError() {
  emu::ErrorState& e = emu::errors();
  std::lock_guard<std::mutex> lk(e.mu);
  return e.sticky != cudaSuccess ? e.sticky : e.last;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaPeekAtLastError(); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaPeekAtLastError(); }
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}
template <typename F>
cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > emu::kOptInSharedLimit) {
    emu::set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: value " + std::to_string(value) +
                                              " B over the 227 KiB opt-in limit", false);
    return cudaErrorInvalidValue;
  }
  emu::ErrorState& e = emu::errors();
  std::lock_guard<std::mutex> lk(e.mu);
  e.max_dyn_smem[reinterpret_cast<const void*>(kernel)] = static_cast<size_t>(value);
  return cudaSuccess;
}

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__ __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl_xor(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl_down(__FILE__, __LINE__, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl_up(__FILE__, __LINE__, __VA_ARGS__)
