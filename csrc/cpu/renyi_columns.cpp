// The Rényi-α divergence's logsumexp over the columns of an (n, g) row-major input on the CPU:
// g estimates at once (renyi_divergence over dim 0 of an (N, G) input). The math is
// csrc/cpu/renyi.cpp's, per column: m_j = max_i beta * r_ij, E_j = sum_i exp(beta * r_ij - m_j),
// and the one-pass backward grad_ij = scale_j * exp(beta * r_ij - m_j), scale_j = -g_j / E_j.
//
// Loops run along the rows with the columns in vector lanes. With few columns (g < 16) each
// pass takes k = ceil(16 / g) rows at a time as one lane-row of width g * k, its per-column
// values repeated k times, and folds the lanes back into columns at the end; rows left over
// take width g. The rows are cut into fixed chunks whose per-column maxima and sums land in
// their own slots and are combined in chunk order, so the results do not depend on the thread
// count. Exponentials (terms in (0, 1], one sign: nothing cancels) are summed in float32 over
// eight lane-rows and in float64 across them.
#include "renyi.h"

#include "dtype.h"
#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <vector>

namespace fastgan::cpu {
namespace {

constexpr int64_t kThreadGrain = 1 << 15;      // elements per thread before another is worth waking
constexpr int64_t kChunkElements = 1 << 13;    // elements per chunk of rows with its own slots
constexpr int64_t kLaneWidth = 16;             // columns (times repeats) per lane-row, at least

// How the rows of one chunk are walked: `repeats` rows per lane-row of `width` = g * repeats.
struct LaneRows {
  int64_t repeats, width;
  explicit LaneRows(int64_t g) : repeats(std::max<int64_t>(1, (kLaneWidth + g - 1) / g)), width(g * repeats) {}
};

// Per-lane max of beta * r over `rows` rows into lane_max[width] (folded to columns by the
// caller); returns how many beta * r were NaN or infinite.
template <typename T>
FASTGAN_ISA_CLONES int64_t chunk_max(const T* __restrict r, int64_t rows, int64_t g, float beta,
                                     float* __restrict lane_max) {
  const LaneRows lanes(g);
  std::fill(lane_max, lane_max + lanes.width, -std::numeric_limits<float>::infinity());
  int64_t nonfinite = 0;
  const int64_t wide_rows = rows / lanes.repeats * lanes.repeats;
  for (int64_t i = 0; i < wide_rows * g; i += lanes.width) {
#pragma omp simd reduction(+ : nonfinite)
    for (int64_t j = 0; j < lanes.width; ++j) {
      const float x = beta * load(r[i + j]);
      lane_max[j] = x > lane_max[j] ? x : lane_max[j];
      nonfinite += !(std::fabs(x) <= std::numeric_limits<float>::max());  // r inf or NaN, or beta * r overflowed
    }
  }
  for (int64_t i = wide_rows * g; i < rows * g; i += g) {
#pragma omp simd reduction(+ : nonfinite)
    for (int64_t j = 0; j < g; ++j) {
      const float x = beta * load(r[i + j]);
      lane_max[j] = x > lane_max[j] ? x : lane_max[j];
      nonfinite += !(std::fabs(x) <= std::numeric_limits<float>::max());
    }
  }
  return nonfinite;
}

// Per-column sum of exp(beta * r - shift) over `rows` rows into sums[g] (float64).
template <typename T>
FASTGAN_ISA_CLONES void chunk_expsum(const T* __restrict r, int64_t rows, int64_t g, float beta,
                                     const float* __restrict lane_shift, double* __restrict sums) {
  const LaneRows lanes(g);
  std::vector<float> tile_storage(lanes.width);
  std::vector<double> lane_storage(lanes.width, 0.0);
  float* __restrict tile = tile_storage.data();
  double* __restrict lane_sums = lane_storage.data();
  const int64_t wide_rows = rows / lanes.repeats * lanes.repeats;
  for (int64_t start = 0; start < wide_rows * g; start += 8 * lanes.width) {
    const int64_t end = std::min(wide_rows * g, start + 8 * lanes.width);
    std::fill(tile, tile + lanes.width, 0.0f);
    for (int64_t i = start; i < end; i += lanes.width) {
#pragma omp simd
      for (int64_t j = 0; j < lanes.width; ++j) tile[j] += exp_nonpositive(beta * load(r[i + j]) - lane_shift[j]);
    }
#pragma omp simd
    for (int64_t j = 0; j < lanes.width; ++j) lane_sums[j] += static_cast<double>(tile[j]);
  }
  for (int64_t i = wide_rows * g; i < rows * g; i += g) {
#pragma omp simd
    for (int64_t j = 0; j < g; ++j) lane_sums[j] += static_cast<double>(exp_nonpositive(beta * load(r[i + j]) - lane_shift[j]));
  }
  for (int64_t j = 0; j < g; ++j) sums[j] = 0.0;
  for (int64_t j = 0; j < lanes.width; ++j) sums[j % g] += lane_sums[j];
}

template <typename T>
FASTGAN_ISA_CLONES void chunk_grad(const T* __restrict r, T* __restrict grad, int64_t rows, int64_t g, float beta,
                                   const float* __restrict lane_shift, const float* __restrict lane_scale) {
  const LaneRows lanes(g);
  const int64_t wide_rows = rows / lanes.repeats * lanes.repeats;
  for (int64_t i = 0; i < wide_rows * g; i += lanes.width) {
#pragma omp simd
    for (int64_t j = 0; j < lanes.width; ++j)
      grad[i + j] = store<T>(lane_scale[j] * exp_nonpositive(beta * load(r[i + j]) - lane_shift[j]));
  }
  for (int64_t i = wide_rows * g; i < rows * g; i += g) {
#pragma omp simd
    for (int64_t j = 0; j < g; ++j)
      grad[i + j] = store<T>(lane_scale[j] * exp_nonpositive(beta * load(r[i + j]) - lane_shift[j]));
  }
}

// Per-column values repeated across a lane-row.
std::vector<float> repeated(const float* values, int64_t g) {
  const LaneRows lanes(g);
  std::vector<float> out(lanes.width);
  for (int64_t j = 0; j < lanes.width; ++j) out[j] = values[j % g];
  return out;
}

void check(const RenyiColumnsArgs& args) {
  if (args.dtype != kFloat32 && args.dtype != kBFloat16) {
    throw std::invalid_argument("fastgan.renyi_divergence (CPU kernel): float32 and bfloat16 only");
  }
  if (args.beta == 0.0f || args.n < 1 || args.g < 1) {
    throw std::invalid_argument("fastgan.renyi_divergence (CPU kernel): needs beta != 0, n >= 1 and g >= 1");
  }
}

// Rows per chunk and chunks.
struct Chunks {
  int64_t rows, count;
  Chunks(int64_t n, int64_t g)
      : rows(std::max<int64_t>(8 * LaneRows(g).repeats, kChunkElements / g / LaneRows(g).repeats * LaneRows(g).repeats)),
        count((n + rows - 1) / rows) {}
};

template <typename T>
bool columns_forward(const RenyiColumnsArgs& args, float* shift, double* expsum) {
  const int64_t g = args.g, n = args.n;
  const T* r = static_cast<const T*>(args.log_ratio);
  const LaneRows lanes(g);
  const Chunks chunks(n, g);
  const int threads = thread_count(args.threads, n * g, kThreadGrain);
  std::vector<float> lane_max(chunks.count * lanes.width);
  std::vector<int64_t> nonfinite(chunks.count);
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t row = k * chunks.rows;
      nonfinite[k] = chunk_max(r + row * g, std::min(chunks.rows, n - row), g, args.beta,
                               lane_max.data() + k * lanes.width);
    }
  });
  for (int64_t k = 0; k < chunks.count; ++k)
    if (nonfinite[k] != 0) return false;
  std::fill(shift, shift + g, -std::numeric_limits<float>::infinity());
  for (int64_t k = 0; k < chunks.count; ++k)
    for (int64_t j = 0; j < lanes.width; ++j) shift[j % g] = std::max(shift[j % g], lane_max[k * lanes.width + j]);
  const std::vector<float> lane_shift = repeated(shift, g);
  std::vector<double> partial(chunks.count * g);
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t row = k * chunks.rows;
      chunk_expsum(r + row * g, std::min(chunks.rows, n - row), g, args.beta, lane_shift.data(),
                   partial.data() + k * g);
    }
  });
  std::fill(expsum, expsum + g, 0.0);
  for (int64_t k = 0; k < chunks.count; ++k)
    for (int64_t j = 0; j < g; ++j) expsum[j] += partial[k * g + j];
  return true;
}

template <typename T>
void columns_backward(const RenyiColumnsArgs& args, void* grad, const float* shift, const float* scale) {
  const int64_t g = args.g, n = args.n;
  const T* r = static_cast<const T*>(args.log_ratio);
  const Chunks chunks(n, g);
  const std::vector<float> lane_shift = repeated(shift, g), lane_scale = repeated(scale, g);
  run_parallel_ranges(thread_count(args.threads, n * g, kThreadGrain), chunks.count, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t row = k * chunks.rows;
      chunk_grad(r + row * g, static_cast<T*>(grad) + row * g, std::min(chunks.rows, n - row), g, args.beta,
                 lane_shift.data(), lane_scale.data());
    }
  });
}

}  // namespace

bool renyi_columns_forward(const RenyiColumnsArgs& args, float* shift, double* expsum) {
  check(args);
  return args.dtype == kBFloat16 ? columns_forward<BFloat16>(args, shift, expsum)
                                 : columns_forward<float>(args, shift, expsum);
}

void renyi_columns_backward(const RenyiColumnsArgs& args, void* grad, const float* shift, const float* scale) {
  check(args);
  if (args.dtype == kBFloat16) {
    columns_backward<BFloat16>(args, grad, shift, scale);
  } else {
    columns_backward<float>(args, grad, shift, scale);
  }
}

}  // namespace fastgan::cpu
