// The CUDA execution model on the CPU (declarations and the model in cuda_runtime.h).
//
// A launch validates its configuration like the CUDA runtime, then runs its blocks in order.
// A block is blockDim fibers, each on its own stack, run round-robin on the calling thread:
// a fiber runs until it reaches a synchronisation point (__syncthreads, a warp shuffle or
// __syncwarp) or returns; when every fiber is blocked or done, the scheduler completes the
// groups whose members have all arrived (a barrier of all live threads, a warp exchange of
// all lanes in its mask) and resumes them. If nothing can complete, the launch fails with a
// message saying who waits where. The order in which fibers are resumed is the schedule
// (forward, reverse or random), so an order-dependent kernel shows it as different results.
//
// Sanitizers: under AddressSanitizer every stack switch is announced, so fiber stacks are
// checked like any other; under ThreadSanitizer every fiber is a TSan fiber, switches carry
// no synchronisation, and barriers release/acquire one token per barrier generation, so
// shared-memory accesses not separated by a __syncthreads are reported as races. Data the
// scheduler exchanges with fibers is kept in relaxed atomics: visible to TSan as race-free,
// without implying any ordering of the kernel's own memory.
#include "cuda_runtime.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define FASTGAN_EMU_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FASTGAN_EMU_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FASTGAN_EMU_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define FASTGAN_EMU_ASAN 1
#endif
#endif

#ifdef FASTGAN_EMU_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_set_fiber_name(void* fiber, const char* name);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
}
#endif
#ifdef FASTGAN_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#define FASTGAN_EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace fastgan_emu {
namespace {

// Happens-before edges for ThreadSanitizer (no-ops otherwise).
inline void hb_release(void* token) {
#ifdef FASTGAN_EMU_TSAN
  __tsan_release(token);
#else
  (void)token;
#endif
}

inline void hb_acquire(void* token) {
#ifdef FASTGAN_EMU_TSAN
  __tsan_acquire(token);
#else
  (void)token;
#endif
}

template <class T>
struct Relaxed {
  std::atomic<T> value{};
  void set(T v) { value.store(v, std::memory_order_relaxed); }
  T get() const { return value.load(std::memory_order_relaxed); }
};

enum Status : int { kRunnable, kAtBarrier, kAtWarp, kExited };

#if defined(FASTGAN_EMU_ASAN) || defined(FASTGAN_EMU_TSAN)
constexpr size_t kStackBytes = 512 * 1024;  // instrumented frames are larger
#else
constexpr size_t kStackBytes = 128 * 1024;
#endif

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;  // kStackBytes, with a guard page below
  ThreadState builtins{};
  unsigned int linear = 0;
  Relaxed<int> status;
  // What the fiber waits for (written by the fiber, read by the scheduler).
  Relaxed<const char*> site_file;
  Relaxed<int> site_line;
  Relaxed<unsigned int> generation;  // barrier generation it arrived at
  Relaxed<int> warp_sync;            // 1: __syncwarp, 0: shuffle
  Relaxed<int> kind;
  Relaxed<unsigned int> mask;
  Relaxed<uint64_t> bits;
  Relaxed<int> operand;
  Relaxed<int> width;
  Relaxed<uint64_t> result;  // written by the scheduler, read by the fiber
#ifdef FASTGAN_EMU_TSAN
  void* tsan_fiber = nullptr;
#endif
#ifdef FASTGAN_EMU_ASAN
  void* fake_stack = nullptr;
#endif
};

enum class ScheduleKind : int { kForward = 0, kReverse = 1, kRandom = 2 };

struct Scheduler {
  std::vector<std::unique_ptr<Fiber>> fibers;  // grown on demand, reused across launches
  ucontext_t main_context;
  Relaxed<Fiber*> current;
  GridState grid{};
  unsigned int threads = 0;      // blockDim.x * y * z of the running launch
  Relaxed<unsigned int> barrier_generation;
  bool failed = false;
  std::string failure;
  std::vector<unsigned int> order;
  std::mt19937_64 rng{0};
  char launch_token = 0, done_token = 0, barrier_tokens[2] = {0, 0};
#ifdef FASTGAN_EMU_TSAN
  void* main_tsan_fiber = nullptr;
#endif
#ifdef FASTGAN_EMU_ASAN
  void* main_fake_stack = nullptr;
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
#endif
};

thread_local Scheduler scheduler;
thread_local cudaError_t last_error = cudaSuccess;
thread_local std::string last_detail;
thread_local cudaError_t last_detail_code = cudaSuccess;
std::atomic<uint64_t> launch_count{0};
std::atomic<int> schedule_kind{-1};  // -1: not chosen yet (read FASTGAN_EMULATE_SCHEDULE)
std::atomic<uint64_t> schedule_seed{0};

void set_error(cudaError_t code, const std::string& detail) {
  if (last_error == cudaSuccess) last_error = code;
  last_detail_code = code;
  last_detail = detail;
}

std::string where(const char* file, int line) {
  std::string path = file ? file : "?";
  const size_t slash = path.rfind("/csrc/");
  if (slash != std::string::npos) path = path.substr(slash + 1);
  return path + ":" + std::to_string(line);
}

ScheduleKind current_schedule() {
  int kind = schedule_kind.load();
  if (kind < 0) {
    kind = 0;
    const char* env = std::getenv("FASTGAN_EMULATE_SCHEDULE");
    uint64_t seed = 0;
    if (env != nullptr) {
      const std::string text(env);
      const std::string name = text.substr(0, text.find(':'));
      if (text.find(':') != std::string::npos) seed = std::strtoull(text.c_str() + text.find(':') + 1, nullptr, 10);
      if (name == "reverse") kind = 1;
      if (name == "random") kind = 2;
    }
    schedule_seed.store(seed);
    scheduler.rng.seed(seed);
    schedule_kind.store(kind);
  }
  return static_cast<ScheduleKind>(kind);
}

Fiber& fiber_at(unsigned int index) {
  auto& fibers = scheduler.fibers;
  while (fibers.size() <= index) {
    auto fiber = std::make_unique<Fiber>();
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* memory = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                        -1, 0);
    if (memory == MAP_FAILED) {
      std::fprintf(stderr, "fastgan emulation: cannot allocate a fiber stack\n");
      std::abort();
    }
    mprotect(memory, page, PROT_NONE);  // a stack overflow faults instead of corrupting a neighbour
    fiber->stack = static_cast<char*>(memory) + page;
    fiber->linear = static_cast<unsigned int>(fibers.size());
#ifdef FASTGAN_EMU_TSAN
    fiber->tsan_fiber = __tsan_create_fiber(0);
    __tsan_set_fiber_name(fiber->tsan_fiber, "emulated CUDA thread");
#endif
    fibers.push_back(std::move(fiber));
  }
  return *fibers[index];
}

// Fiber -> scheduler. `exiting`: this fiber is never resumed (its fake stack can go).
void yield_to_scheduler(Fiber& self, bool exiting) {
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &self.fake_stack, scheduler.main_stack_bottom,
                                 scheduler.main_stack_size);
#endif
#ifdef FASTGAN_EMU_TSAN
  __tsan_switch_to_fiber(scheduler.main_tsan_fiber, 1 /* no synchronisation */);
#endif
  swapcontext(&self.context, &scheduler.main_context);
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_finish_switch_fiber(self.fake_stack, &scheduler.main_stack_bottom, &scheduler.main_stack_size);
#endif
  (void)exiting;
}

// Scheduler -> fiber; returns when the fiber blocks or exits.
void resume(Fiber& fiber) {
  scheduler.current.set(&fiber);
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_start_switch_fiber(&scheduler.main_fake_stack, fiber.stack, kStackBytes);
#endif
#ifdef FASTGAN_EMU_TSAN
  __tsan_switch_to_fiber(fiber.tsan_fiber, 1);
#endif
  swapcontext(&scheduler.main_context, &fiber.context);
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_finish_switch_fiber(scheduler.main_fake_stack, nullptr, nullptr);
#endif
}

thread_local void (*block_body)(void*) = nullptr;
thread_local void* block_context = nullptr;

void fiber_main() {
  Fiber& self = *scheduler.current.get();
#ifdef FASTGAN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &scheduler.main_stack_bottom, &scheduler.main_stack_size);
#endif
  hb_acquire(&scheduler.launch_token);
  block_body(block_context);
  self.status.set(kExited);
  hb_release(&scheduler.done_token);
  yield_to_scheduler(self, true);
  std::abort();  // an exited fiber is never resumed
}

Fiber& current_fiber() { return *scheduler.current.get(); }

void block_until_released(Fiber& self, Status status, Site site) {
  self.site_file.set(site.file);
  self.site_line.set(site.line);
  self.status.set(status);
  yield_to_scheduler(self, false);
}

unsigned int linear_index(const uint3& t, const dim3& block) { return t.x + block.x * (t.y + block.y * t.z); }

std::string lane_list(const std::vector<unsigned int>& lanes) {
  std::string text;
  for (size_t i = 0; i < lanes.size() && i < 8; ++i) text += (i ? "," : "") + std::to_string(lanes[i]);
  if (lanes.size() > 8) text += ",...";
  return text;
}

// Complete every warp operation whose mask's lanes have all arrived. Returns whether any did;
// sets scheduler.failed for a mask naming exited or absent lanes.
bool complete_warp_operations() {
  bool progressed = false;
  const unsigned int threads = scheduler.threads;
  for (unsigned int warp_base = 0; warp_base < threads && !scheduler.failed; warp_base += 32) {
    for (unsigned int lane = 0; lane < 32 && warp_base + lane < threads; ++lane) {
      Fiber& fiber = *scheduler.fibers[warp_base + lane];
      if (fiber.status.get() != kAtWarp) continue;
      const unsigned int mask = fiber.mask.get();
      const int sync = fiber.warp_sync.get();
      const int kind = fiber.kind.get();
      const std::string site = where(fiber.site_file.get(), fiber.site_line.get());
      const char* what = sync ? "__syncwarp" : "__shfl_*_sync";
      if ((mask >> lane & 1u) == 0u) {
        scheduler.failed = true;
        scheduler.failure = std::string(what) + " at " + site + ": lane " + std::to_string(lane) +
                            " calls it with a mask that does not name itself";
        return progressed;
      }
      bool complete = true;
      std::vector<unsigned int> exited, absent;
      for (unsigned int other = 0; other < 32; ++other) {
        if ((mask >> other & 1u) == 0u) continue;
        if (warp_base + other >= threads) {
          absent.push_back(other);
          continue;
        }
        Fiber& peer = *scheduler.fibers[warp_base + other];
        const int status = peer.status.get();
        if (status == kExited) exited.push_back(other);
        if (status != kAtWarp || peer.mask.get() != mask || peer.warp_sync.get() != sync ||
            (!sync && peer.kind.get() != kind)) {
          complete = false;
        }
      }
      if (!absent.empty() || !exited.empty()) {
        scheduler.failed = true;
        scheduler.failure = std::string(what) + " at " + site + " in warp " + std::to_string(warp_base / 32) +
                            " with mask 0x" + [&] { char b[16]; std::snprintf(b, sizeof b, "%08x", mask); return std::string(b); }() +
                            ": lanes " + lane_list(absent.empty() ? exited : absent) +
                            (absent.empty() ? " have exited" : " do not exist in this block");
        return progressed;
      }
      if (!complete) continue;
      // Every lane of the mask is here: compute all results before any lane resumes.
      for (unsigned int member = 0; member < 32; ++member) {
        if ((mask >> member & 1u) == 0u) continue;
        Fiber& me = *scheduler.fibers[warp_base + member];
        if (!sync) {
          const int width = me.width.get();
          const int operand = me.operand.get();
          if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
            scheduler.failed = true;
            scheduler.failure = "__shfl_*_sync at " + site + ": width " + std::to_string(width) + " is not a power of two <= 32";
            return progressed;
          }
          const int base = static_cast<int>(member) & ~(width - 1);
          int source = static_cast<int>(member);
          switch (static_cast<ShuffleKind>(kind)) {
            case ShuffleKind::kIndex: source = base + (((operand % width) + width) % width); break;
            case ShuffleKind::kUp: source = static_cast<int>(member) - operand; break;
            case ShuffleKind::kDown: source = static_cast<int>(member) + operand; break;
            case ShuffleKind::kXor: source = static_cast<int>(member) ^ operand; break;
          }
          if (source < base || source >= base + width) source = static_cast<int>(member);
          if ((mask >> source & 1u) == 0u) {
            scheduler.failed = true;
            scheduler.failure = "__shfl_*_sync at " + site + ": lane " + std::to_string(member) + " reads lane " +
                                std::to_string(source) + ", which is not in the mask";
            return progressed;
          }
          me.result.set(scheduler.fibers[warp_base + source]->bits.get());
        }
        me.status.set(kRunnable);
      }
      progressed = true;
    }
  }
  return progressed;
}

// Release the block barrier when every live thread waits at it.
bool complete_barrier(unsigned int live) {
  const char* file = nullptr;
  int line = 0;
  unsigned int waiting = 0;
  std::string other;
  for (unsigned int i = 0; i < scheduler.threads; ++i) {
    Fiber& fiber = *scheduler.fibers[i];
    if (fiber.status.get() != kAtBarrier) continue;
    ++waiting;
    if (file == nullptr) {
      file = fiber.site_file.get();
      line = fiber.site_line.get();
    } else if (fiber.site_line.get() != line || std::strcmp(fiber.site_file.get(), file) != 0) {
      other = where(fiber.site_file.get(), fiber.site_line.get());
    }
  }
  if (waiting == 0 || waiting != live) return false;
  if (!other.empty()) {
    scheduler.failed = true;
    scheduler.failure = "deadlock: threads wait at different __syncthreads (" + where(file, line) + " and " + other + ")";
    return false;
  }
  scheduler.barrier_generation.set(scheduler.barrier_generation.get() + 1);
  for (unsigned int i = 0; i < scheduler.threads; ++i) {
    Fiber& fiber = *scheduler.fibers[i];
    if (fiber.status.get() == kAtBarrier) fiber.status.set(kRunnable);
  }
  return true;
}

std::string describe_deadlock() {
  unsigned int at_barrier = 0, at_warp = 0, exited = 0;
  std::string barrier_site, warp_site;
  for (unsigned int i = 0; i < scheduler.threads; ++i) {
    Fiber& fiber = *scheduler.fibers[i];
    const int status = fiber.status.get();
    if (status == kAtBarrier) {
      ++at_barrier;
      barrier_site = where(fiber.site_file.get(), fiber.site_line.get());
    } else if (status == kAtWarp) {
      ++at_warp;
      warp_site = where(fiber.site_file.get(), fiber.site_line.get());
    } else if (status == kExited) {
      ++exited;
    }
  }
  std::string text = "deadlock:";
  if (at_barrier) text += " " + std::to_string(at_barrier) + " threads wait at __syncthreads (" + barrier_site + ")";
  if (at_warp) text += std::string(at_barrier ? "," : "") + " " + std::to_string(at_warp) +
                       " threads wait at a warp operation (" + warp_site + ")";
  if (exited) text += ", " + std::to_string(exited) + " have exited";
  return text;
}

// Runs one block; false (with scheduler.failure) when it cannot complete.
bool run_block() {
  const unsigned int threads = scheduler.threads;
  const dim3 block = scheduler.grid.block_dim;
  for (unsigned int z = 0, i = 0; z < block.z; ++z) {
    for (unsigned int y = 0; y < block.y; ++y) {
      for (unsigned int x = 0; x < block.x; ++x, ++i) {
        Fiber& fiber = fiber_at(i);
        fiber.builtins.thread_idx = uint3{x, y, z};
        fiber.status.set(kRunnable);
        getcontext(&fiber.context);
        fiber.context.uc_stack.ss_sp = fiber.stack;
        fiber.context.uc_stack.ss_size = kStackBytes;
        fiber.context.uc_link = nullptr;
        makecontext(&fiber.context, fiber_main, 0);
      }
    }
  }
  scheduler.barrier_generation.set(0);
  hb_release(&scheduler.launch_token);
  unsigned int live = threads;
  auto& order = scheduler.order;
  order.resize(threads);
  const ScheduleKind schedule = current_schedule();
  while (live > 0) {
    for (unsigned int i = 0; i < threads; ++i) order[i] = schedule == ScheduleKind::kReverse ? threads - 1 - i : i;
    if (schedule == ScheduleKind::kRandom) std::shuffle(order.begin(), order.end(), scheduler.rng);
    for (unsigned int index : order) {
      Fiber& fiber = *scheduler.fibers[index];
      if (fiber.status.get() != kRunnable) continue;
      resume(fiber);
      if (fiber.status.get() == kExited) --live;
    }
    if (live == 0) break;
    const bool warps = complete_warp_operations();
    if (scheduler.failed) return false;
    const bool barrier = !warps && complete_barrier(live);
    if (scheduler.failed) return false;
    if (!warps && !barrier) {
      scheduler.failed = true;
      scheduler.failure = describe_deadlock();
      return false;
    }
  }
  hb_acquire(&scheduler.done_token);
  return true;
}

}  // namespace

const ThreadState& this_thread() { return current_fiber().builtins; }
const GridState& this_grid() { return scheduler.grid; }

void syncthreads(Site site) {
  Fiber& self = current_fiber();
  const unsigned int generation = scheduler.barrier_generation.get();
  self.generation.set(generation);
  hb_release(&scheduler.barrier_tokens[generation & 1u]);
  block_until_released(self, kAtBarrier, site);
  hb_acquire(&scheduler.barrier_tokens[generation & 1u]);
}

void syncwarp(Site site, unsigned int mask) {
  Fiber& self = current_fiber();
  self.warp_sync.set(1);
  self.mask.set(mask);
  block_until_released(self, kAtWarp, site);
}

uint64_t shuffle(Site site, ShuffleKind kind, unsigned int mask, uint64_t bits, int operand, int width) {
  Fiber& self = current_fiber();
  self.warp_sync.set(0);
  self.kind.set(static_cast<int>(kind));
  self.mask.set(mask);
  self.bits.set(bits);
  self.operand.set(operand);
  self.width.set(width);
  block_until_released(self, kAtWarp, site);
  return self.result.get();
}

void run_grid(const LaunchConfig& config, void (*body)(void*), void* context) {
  launch_count.fetch_add(1);
  const dim3 g = config.grid, b = config.block;
  const uint64_t threads = static_cast<uint64_t>(b.x) * b.y * b.z;
  std::string bad;
  if (b.x == 0 || b.y == 0 || b.z == 0 || b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) {
    bad = "block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) +
          ") is not a valid CUDA block (at most 1024 threads; x, y <= 1024, z <= 64)";
  } else if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 2147483647u || g.y > 65535u || g.z > 65535u) {
    bad = "grid (" + std::to_string(g.x) + ", " + std::to_string(g.y) + ", " + std::to_string(g.z) +
          ") is not a valid CUDA grid (x < 2^31, y and z <= 65535, none 0)";
  } else if (config.shared_bytes != 0) {
    bad = "dynamic shared memory is not emulated";
  }
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, "invalid configuration argument: " + bad);
    return;
  }
  if (scheduler.fibers.empty()) {
#ifdef FASTGAN_EMU_TSAN
    scheduler.main_tsan_fiber = __tsan_get_current_fiber();
#endif
  }
  block_body = body;
  block_context = context;
  scheduler.threads = static_cast<unsigned int>(threads);
  scheduler.grid.block_dim = b;
  scheduler.grid.grid_dim = g;
  scheduler.failed = false;
  for (unsigned int z = 0; z < g.z; ++z) {
    for (unsigned int y = 0; y < g.y; ++y) {
      for (unsigned int x = 0; x < g.x; ++x) {
        scheduler.grid.block_idx = uint3{x, y, z};
        if (!run_block()) {
          set_error(cudaErrorLaunchFailure, "unspecified launch failure: block (" + std::to_string(x) + ", " +
                                                std::to_string(y) + ", " + std::to_string(z) + "): " + scheduler.failure);
          return;
        }
      }
    }
  }
}

}  // namespace fastgan_emu

// ---- runtime API ------------------------------------------------------------------------------

cudaError_t cudaGetLastError() {
  const cudaError_t error = fastgan_emu::last_error;
  fastgan_emu::last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError() { return fastgan_emu::last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}

const char* cudaGetErrorString(cudaError_t error) {
  if (error != cudaSuccess && error == fastgan_emu::last_detail_code && !fastgan_emu::last_detail.empty()) {
    return fastgan_emu::last_detail.c_str();
  }
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** pointer, size_t bytes) {
  if (pointer == nullptr) return cudaErrorInvalidValue;
  // 256-byte aligned like a device allocation, but exactly `bytes` long: an access past the
  // requested size is then out of bounds for AddressSanitizer, as for compute-sanitizer.
  *pointer = nullptr;
  if (bytes == 0) return cudaSuccess;
  if (posix_memalign(pointer, 256, bytes) != 0) {
    *pointer = nullptr;
    return cudaErrorMemoryAllocation;
  }
  return cudaSuccess;
}

cudaError_t cudaFree(void* pointer) {
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  if (bytes) std::memset(dst, value, bytes);
  return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t) { return cudaMemset(dst, value, bytes); }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches complete before they return
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

// ---- controls for Python (ctypes) and the kernel driver ---------------------------------------

FASTGAN_EMU_EXPORT uint64_t fastgan_emu_launch_count() { return fastgan_emu::launch_count.load(); }

// kind: 0 forward, 1 reverse, 2 random (seeded); the order fibers are resumed in.
FASTGAN_EMU_EXPORT int fastgan_emu_set_schedule(int kind, uint64_t seed) {
  if (kind < 0 || kind > 2) return 1;
  fastgan_emu::schedule_seed.store(seed);
  fastgan_emu::scheduler.rng.seed(seed);
  fastgan_emu::schedule_kind.store(kind);
  return 0;
}
