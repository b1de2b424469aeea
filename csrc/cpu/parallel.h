// run_parallel: the native CPU kernels' one way to use more than one thread.
//
// Built with -fopenmp (fastgan/_native.py), it runs on the OpenMP runtime's thread pool. The
// extension is loaded after torch, whose libgomp has the soname libgomp.so.1, so the dynamic
// linker binds this library to that same runtime: the kernels share PyTorch's pool, whose
// workers are already awake between PyTorch's own parallel regions (a new std::thread costs
// 40-60 us on a small VM, longer than a whole BatchNorm at 8x32x16x16). Without OpenMP (the
// ThreadSanitizer build, whose runtime cannot see libgomp's synchronisation), plain threads.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(_OPENMP)
#include <omp.h>
#else
#include <thread>
#include <vector>
#endif

namespace fastgan::cpu {

// Runs work(t) for every t in [0, parts), on up to `parts` threads. The split into parts is
// the caller's and does not depend on how many threads the runtime grants, so results are the
// same for any team size (a nested or capped team runs several parts per thread).
template <typename Work>
void run_parallel(int parts, const Work& work) {
  if (parts <= 1) {
    work(0);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(parts)
  {
    const int team = omp_get_num_threads();
    for (int t = omp_get_thread_num(); t < parts; t += team) work(t);
  }
#else
  std::vector<std::thread> pool;
  pool.reserve(parts - 1);
  for (int t = 1; t < parts; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& thread : pool) thread.join();
#endif
}

// Threads for `elements` elements: one per `grain` of them, at most `requested`, at least one.
inline int thread_count(int requested, int64_t elements, int64_t grain) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(requested, elements / grain)));
}

// Splits [0, count) into `parts` contiguous ranges of ceil(count / parts) items and runs
// work(first, last) on each non-empty one through run_parallel.
template <typename Work>
void run_parallel_ranges(int parts, int64_t count, const Work& work) {
  const int64_t per = (count + parts - 1) / parts;
  run_parallel(parts, [&](int t) {
    const int64_t first = std::min(count, t * per), last = std::min(count, first + per);
    if (first < last) work(first, last);
  });
}

}  // namespace fastgan::cpu
