// BatchNorm + LeakyReLU on channels_last (N, S, C) x: each position's C channels are
// contiguous (NHWC). The N*S rows are cut into fixed chunks; each chunk's per-channel (sum,
// centred squares), from two reads of the chunk while it is in cache, land in their own slot
// and are combined in chunk order, so results do not depend on the thread count. Loops run
// across channels, eight rows at a time so that memory is still walked in order. The math
// is csrc/cpu/batch_norm.cpp's.
#include "batch_norm_layouts.h"
#include "batch_norm_maps.h"
#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fastgan::cpu {
namespace {

// Channels_last: elements per chunk of rows whose channel sums are kept apart (see the top of this file).
constexpr int64_t kChunkElements = 1 << 13;

// Rows per chunk, and chunks, for R rows of C channels.
struct Chunks {
  int64_t rows, count;
  Chunks(int64_t total_rows, int64_t channels)
      : rows(std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, channels))),
        count((total_rows + rows - 1) / rows) {}
};

// sums[c] = sum over `rows` rows of (x[r * C + c] - centre[c]), and with kSquares its square,
// for all C channels, in float64 across tiles of eight rows. Within a tile a block of
// kWideLanes channels is summed in float32 registers: the terms are centred (on a value of
// the chunk, then on its mean), so eight of them lose nothing that matters against the
// float64 total, and the float32 -> float64 conversions fall eightfold. Memory is walked in
// order, eight rows at a time.
template <typename T, bool kSquares>
FASTGAN_INLINE void chunk_pass(const T* __restrict x, int64_t rows, int64_t C, const float* __restrict centre,
                               double* __restrict sums) {
  const int64_t wide_end = C - C % kWideLanes;
  std::fill(sums, sums + C, 0.0);
  for (int64_t tile = 0; tile < rows; tile += 8) {
    const int64_t tile_end = std::min(rows, tile + 8);
    for (int64_t first = 0; first < wide_end; first += kWideLanes) {
      WideFloats m, total = {};
      std::memcpy(&m, centre + first, sizeof m);
      for (int64_t r = tile; r < tile_end; ++r) {
        WideFloats v;
        load_wide(x + r * C + first, v);
        const WideFloats d = v - m;
        total += kSquares ? d * d : d;
      }
      WideDoubles running;
      std::memcpy(&running, sums + first, sizeof running);
      running += __builtin_convertvector(total, WideDoubles);
      std::memcpy(sums + first, &running, sizeof running);
    }
    for (int64_t r = tile; r < tile_end; ++r)
      for (int64_t c = wide_end; c < C; ++c) {
        const double d = static_cast<double>(load(x[r * C + c])) - static_cast<double>(centre[c]);
        sums[c] += kSquares ? d * d : d;
      }
  }
}

// Per-channel sum(x) over `rows` rows into sums[C], then sum((x - chunk mean)^2) into
// squares[C] while the chunk is in cache.
template <typename T>
FASTGAN_ISA_CLONES void chunk_statistics(const T* __restrict x, int64_t rows, int64_t C, double* __restrict sums,
                                        double* __restrict squares) {
  std::vector<float> centre(C);
  for (int64_t c = 0; c < C; ++c) centre[c] = load(x[c]);  // the first row's values
  chunk_pass<T, false>(x, rows, C, centre.data(), sums);
  std::vector<double> offset(C);  // the chunk mean - its float32 rounding
  for (int64_t c = 0; c < C; ++c) {
    sums[c] += static_cast<double>(centre[c]) * static_cast<double>(rows);
    const double mean = sums[c] / static_cast<double>(rows);
    centre[c] = static_cast<float>(mean);
    offset[c] = mean - static_cast<double>(centre[c]);
  }
  chunk_pass<T, true>(x, rows, C, centre.data(), squares);
  // sum((x - m)^2) = sum((x - m_f)^2) - rows * (m - m_f)^2 for the chunk mean m and its rounding m_f.
  for (int64_t c = 0; c < C; ++c) squares[c] = std::max(0.0, squares[c] - static_cast<double>(rows) * offset[c] * offset[c]);
}

template <typename T>
FASTGAN_ISA_CLONES void chunk_normalise(const T* __restrict x, T* __restrict y, int64_t rows, int64_t C,
                                       const float* __restrict mean, const float* __restrict mean_low,
                                       const float* __restrict scale, const float* __restrict shift, float slope) {
  const int64_t wide_end = C - C % kWideLanes;
  // Eight rows at a time, so memory is still walked in order (a block's whole column would
  // be a strided walk the prefetchers do not follow).
  for (int64_t tile = 0; tile < rows; tile += 8) {
    const int64_t tile_end = std::min(rows, tile + 8);
    for (int64_t first = 0; first < wide_end; first += kWideLanes) {
      WideFloats m, low, s, b;
      std::memcpy(&m, mean + first, sizeof m);
      std::memcpy(&low, mean_low + first, sizeof low);
      std::memcpy(&s, scale + first, sizeof s);
      std::memcpy(&b, shift + first, sizeof b);
      for (int64_t r = tile; r < tile_end; ++r) {
        WideFloats v;
        load_wide(x + r * C + first, v);
        const WideFloats z = ((v - m) - low) * s + b;
        store_wide(y + r * C + first, z > 0.0f ? z : z * slope);
      }
    }
    if (wide_end == C) continue;
    for (int64_t r = tile; r < tile_end; ++r) {
#pragma omp simd
      for (int64_t c = wide_end; c < C; ++c)
        y[r * C + c] = store<T>(leaky(((load(x[r * C + c]) - mean[c]) - mean_low[c]) * scale[c] + shift[c], slope));
    }
  }
}

// Per-channel float64 (mean, biased var) over all rows: each chunk's (sum, centred squares)
// from chunk_statistics, combined in chunk order as sum(squares_k) + sum(n_k (mean_k - mean)^2)
// (Chan et al.'s pairwise update, in closed form): one read of x, and no cancellation when
// |mean| >> std.
template <typename T>
void channel_statistics(const T* x, int64_t C, const Chunks& chunks, int64_t total_rows, int threads,
                        std::vector<double>& mean, std::vector<double>& var) {
  std::vector<double> partial(2 * chunks.count * C);
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t row = k * chunks.rows;
      chunk_statistics(x + row * C, std::min(chunks.rows, total_rows - row), C, partial.data() + 2 * k * C,
                       partial.data() + (2 * k + 1) * C);
    }
  });
  mean.assign(C, 0.0);
  var.assign(C, 0.0);
  for (int64_t k = 0; k < chunks.count; ++k)
    for (int64_t c = 0; c < C; ++c) mean[c] += partial[2 * k * C + c];
  for (double& m : mean) m /= static_cast<double>(total_rows);
  for (int64_t k = 0; k < chunks.count; ++k) {
    const double rows = static_cast<double>(std::min(chunks.rows, total_rows - k * chunks.rows));
    for (int64_t c = 0; c < C; ++c) {
      const double d = partial[2 * k * C + c] / rows - mean[c];
      var[c] += partial[(2 * k + 1) * C + c] + rows * d * d;
    }
  }
  for (double& v : var) v /= static_cast<double>(total_rows);
}

template <typename T>
void forward_typed(const BatchNormArgs& args, int threads) {
  const int64_t C = args.channels, R = args.batch * args.spatial;
  const T* x = static_cast<const T*>(args.x);
  T* y = static_cast<T*>(args.y);
  const Chunks chunks(R, C);
  ChannelMaps maps(C);
  if (args.training) {
    std::vector<double> mean, var;
    channel_statistics(x, C, chunks, R, threads, mean, var);
    for (int64_t c = 0; c < C; ++c) finish_channel(args, c, c, mean[c], var[c], maps);
  } else {
    for (int64_t c = 0; c < C; ++c) eval_channel(args, c, c, maps);
  }
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    const int64_t row = first * chunks.rows, rows = std::min(R, last * chunks.rows) - row;
    chunk_normalise(x + row * C, y + row * C, rows, C, maps.mean.data(), maps.mean_low.data(), maps.scale.data(),
                    maps.shift.data(), args.slope);
  });
}

// A channel-indexed copy of the BackwardChannel fields, for loops vectorized across channels.
struct BackwardMaps {
  std::vector<double> mean64;
  std::vector<float> mean, mean_low, invstd, scale, shift;
  BackwardMaps(const BatchNormBackwardArgs& args)
      : mean64(args.channels), mean(args.channels), mean_low(args.channels), invstd(args.channels),
        scale(args.channels), shift(args.channels) {
    for (int64_t c = 0; c < args.channels; ++c) {
      const BackwardChannel k = backward_channel(args, c);
      mean64[c] = k.mean64, mean[c] = k.mean, mean_low[c] = k.mean_low;
      invstd[c] = k.invstd, scale[c] = k.scale, shift[c] = k.shift;
    }
  }
};

// Per-channel sum(dz) and sum(dz * (x - mean)) over `rows` rows, into sums[C] and dots[C].
template <typename T, bool kFromY>
FASTGAN_ISA_CLONES void chunk_grad_sums(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                                       int64_t rows, int64_t C, const BackwardMaps& maps, float slope,
                                       double* __restrict sums, double* __restrict dots) {
  const double* __restrict mean64 = maps.mean64.data();
  const float* __restrict mean = maps.mean.data();
  const float* __restrict mean_low = maps.mean_low.data();
  const float* __restrict scale = maps.scale.data();
  const float* __restrict shift = maps.shift.data();
  std::fill(sums, sums + C, 0.0);
  std::fill(dots, dots + C, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      const float xi = load(x[i]);
      const float dz = activation_grad<kFromY>(load(g[i]), kFromY ? load(y[i]) : 0.0f, xi, mean[c], mean_low[c],
                                               scale[c], shift[c], slope);
      sums[c] += static_cast<double>(dz);
      dots[c] += static_cast<double>(dz) * (static_cast<double>(xi) - mean64[c]);
    }
  }
}

template <typename T, bool kFromY>
FASTGAN_ISA_CLONES void chunk_grad_input(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                                        T* __restrict grad_x, int64_t rows, int64_t C, const BackwardMaps& maps,
                                        float slope, const float* __restrict grad_mean,
                                        const float* __restrict projection) {
  const float* __restrict mean = maps.mean.data();
  const float* __restrict mean_low = maps.mean_low.data();
  const float* __restrict scale = maps.scale.data();
  const float* __restrict shift = maps.shift.data();
  for (int64_t r = 0; r < rows; ++r) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = r * C + c;
      const float xi = load(x[i]);
      const float dz = activation_grad<kFromY>(load(g[i]), kFromY ? load(y[i]) : 0.0f, xi, mean[c], mean_low[c],
                                               scale[c], shift[c], slope);
      grad_x[i] = store<T>(((dz - grad_mean[c]) - ((xi - mean[c]) - mean_low[c]) * projection[c]) * scale[c]);
    }
  }
}

template <typename T, bool kFromY>
void backward_typed(const BatchNormBackwardArgs& args, int threads) {
  const int64_t C = args.channels, R = args.batch * args.spatial;
  const T* g = static_cast<const T*>(args.grad_out);
  const T* x = static_cast<const T*>(args.x);
  const T* y = static_cast<const T*>(args.y);
  const Chunks chunks(R, C);
  const BackwardMaps maps(args);
  std::vector<double> partial(2 * chunks.count * C);
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    for (int64_t k = first; k < last; ++k) {
      const int64_t row = k * chunks.rows, rows = std::min(chunks.rows, R - row);
      chunk_grad_sums<T, kFromY>(g + row * C, x + row * C, kFromY ? y + row * C : nullptr, rows, C, maps, args.slope,
                                 partial.data() + 2 * k * C, partial.data() + (2 * k + 1) * C);
    }
  });
  std::vector<double> sum_dz(C, 0.0), dot(C, 0.0);
  for (int64_t k = 0; k < chunks.count; ++k)
    for (int64_t c = 0; c < C; ++c) {
      sum_dz[c] += partial[2 * k * C + c];
      dot[c] += partial[(2 * k + 1) * C + c];
    }
  for (int64_t c = 0; c < C; ++c) store_parameter_grads(args, c, sum_dz[c], dot[c], maps.invstd[c]);
  if (args.grad_x == nullptr) return;
  std::vector<float> grad_mean(C, 0.0f), projection(C, 0.0f);
  if (args.training) {
    for (int64_t c = 0; c < C; ++c) {
      const double invstd = maps.invstd[c];
      grad_mean[c] = static_cast<float>(sum_dz[c] / static_cast<double>(R));
      projection[c] = static_cast<float>(dot[c] / static_cast<double>(R) * invstd * invstd);
    }
  }
  T* grad_x = static_cast<T*>(args.grad_x);
  run_parallel_ranges(threads, chunks.count, [&](int64_t first, int64_t last) {
    const int64_t row = first * chunks.rows, rows = std::min(R, last * chunks.rows) - row;
    chunk_grad_input<T, kFromY>(g + row * C, x + row * C, kFromY ? y + row * C : nullptr, grad_x + row * C, rows, C,
                                maps, args.slope, grad_mean.data(), projection.data());
  });
}

}  // namespace

void channels_last_forward(const BatchNormArgs& args, int threads) {
  if (args.dtype == kBFloat16) {
    forward_typed<BFloat16>(args, threads);
  } else {
    forward_typed<float>(args, threads);
  }
}

void channels_last_backward(const BatchNormBackwardArgs& args, int threads) {
  const bool from_y = args.y != nullptr;
  if (args.dtype == kBFloat16) {
    from_y ? backward_typed<BFloat16, true>(args, threads) : backward_typed<BFloat16, false>(args, threads);
  } else {
    from_y ? backward_typed<float, true>(args, threads) : backward_typed<float, false>(args, threads);
  }
}

}  // namespace fastgan::cpu
