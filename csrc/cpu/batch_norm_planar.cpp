// BatchNorm + LeakyReLU on planar (N, C, S) x: each (n, c) row of S values is contiguous
// (NCHW). Each thread takes whole channels and walks its rows in memory order (batch outer,
// channel inner), so rows of one channel, C * S values apart, are not fetched page by page.
// The math is csrc/cpu/batch_norm.cpp's.
#include "batch_norm_layouts.h"
#include "batch_norm_maps.h"
#include "parallel.h"
#include "vector_math.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace fastgan::cpu {
namespace {

// sum(x - centre) (kSquares: sum((x - centre)^2)) of n contiguous values: float32 lanes over
// blocks of 128 values (eight per lane; the terms are centred, so that loses nothing that
// matters), the blocks added in float64.
template <typename T, bool kSquares>
FASTGAN_ISA_CLONES double row_pass(const T* __restrict x, int64_t n, float centre) {
  double total = 0.0;
  for (int64_t start = 0; start < n; start += 128) {
    const int64_t end = std::min(n, start + 128);
    float block = 0.0f;
#pragma omp simd reduction(+ : block)
    for (int64_t i = start; i < end; ++i) {
      const float d = load(x[i]) - centre;
      block += kSquares ? d * d : d;
    }
    total += static_cast<double>(block);
  }
  return total;
}

// y = leaky_relu(((x - mean) - mean_low) * scale + shift) over n contiguous values. mean +
// mean_low is the float64 mean as a float32 pair: x - mean is exact when |mean| >> std, so the
// mean's float32 rounding does not reach y.
template <typename T>
FASTGAN_ISA_CLONES void row_normalise(const T* __restrict x, T* __restrict y, int64_t n, float mean, float mean_low,
                                     float scale, float shift, float slope) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = store<T>(leaky(((load(x[i]) - mean) - mean_low) * scale + shift, slope));
}

// Each thread takes whole channels, statistics then normalisation: no barrier, and each
// channel's sums run in the same order for any thread count.
template <typename T>
void forward_typed(const BatchNormArgs& args, int threads) {
  const int64_t C = args.channels, S = args.spatial, N = args.batch;
  const T* x = static_cast<const T*>(args.x);
  T* y = static_cast<T*>(args.y);
  const double count = static_cast<double>(N * S);
  run_parallel_ranges(threads, C, [&](int64_t first, int64_t last) {
    // Each pass walks memory in order (batch outer, channel inner), so rows of one channel,
    // C * S values apart, are not fetched page by page; each channel's sums still run in batch order.
    const int64_t width = last - first;
    ChannelMaps maps(width);
    if (args.training) {
      // Centred on each channel's first value, then on its float32 mean m_f:
      // sum((x - m)^2) = sum((x - m_f)^2) - P * (m - m_f)^2.
      std::vector<double> mean(width, 0.0), squares(width, 0.0);
      std::vector<float> centre(width);
      for (int64_t c = first; c < last; ++c) centre[c - first] = load(x[c * S]);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = first; c < last; ++c)
          mean[c - first] += row_pass<T, false>(x + (n * C + c) * S, S, centre[c - first]);
      for (int64_t k = 0; k < width; ++k) {
        mean[k] = static_cast<double>(centre[k]) + mean[k] / count;
        centre[k] = static_cast<float>(mean[k]);
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = first; c < last; ++c)
          squares[c - first] += row_pass<T, true>(x + (n * C + c) * S, S, centre[c - first]);
      for (int64_t c = first; c < last; ++c) {
        const int64_t k = c - first;
        const double offset = mean[k] - static_cast<double>(centre[k]);
        finish_channel(args, c, k, mean[k], std::max(0.0, squares[k] / count - offset * offset), maps);
      }
    } else {
      for (int64_t c = first; c < last; ++c) eval_channel(args, c, c - first, maps);
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = first; c < last; ++c) {
        const int64_t k = c - first;
        row_normalise(x + (n * C + c) * S, y + (n * C + c) * S, S, maps.mean[k], maps.mean_low[k], maps.scale[k],
                      maps.shift[k], args.slope);
      }
  });
}

// sum(dz) and sum(dz * (x - mean)) over one row of n contiguous values, in float64 lanes.
template <typename T, bool kFromY>
FASTGAN_INLINE void row_grad_sums(const T* __restrict g, const T* __restrict x, const T* __restrict y, int64_t n,
                                  const BackwardChannel& k, float slope, double& sum_dz, double& dot) {
  if constexpr (std::is_same_v<T, BFloat16>) {
    // bfloat16: float32 lanes over blocks of 128 values, the blocks added in float64 (eager's
    // bfloat16 backward sums in float32 throughout, from a dz it has rounded to bfloat16).
    for (int64_t start = 0; start < n; start += 128) {
      const int64_t end = std::min(n, start + 128);
      float sum = 0.0f, product = 0.0f;
#pragma omp simd reduction(+ : sum, product)
      for (int64_t i = start; i < end; ++i) {
        const float xi = load(x[i]);
        const float dz = activation_grad<kFromY>(load(g[i]), kFromY ? load(y[i]) : 0.0f, xi, k.mean, k.mean_low,
                                                 k.scale, k.shift, slope);
        sum += dz;
        product += dz * ((xi - k.mean) - k.mean_low);
      }
      sum_dz += static_cast<double>(sum);
      dot += static_cast<double>(product);
    }
  } else {
    // float32: float64 lanes, as eager's float32 backward accumulates.
    double sum = 0.0, product = 0.0;
#pragma omp simd reduction(+ : sum, product)
    for (int64_t i = 0; i < n; ++i) {
      const float xi = load(x[i]);
      const float dz =
          activation_grad<kFromY>(load(g[i]), kFromY ? load(y[i]) : 0.0f, xi, k.mean, k.mean_low, k.scale, k.shift, slope);
      sum += static_cast<double>(dz);
      product += static_cast<double>(dz) * (static_cast<double>(xi) - k.mean64);
    }
    sum_dz += sum;
    dot += product;
  }
}

// grad_x over one row: ((dz - grad_mean) - (x - mean) * projection) * w_invstd.
template <typename T, bool kFromY>
FASTGAN_INLINE void row_grad_input(const T* __restrict g, const T* __restrict x, const T* __restrict y,
                                   T* __restrict grad_x, int64_t n, const BackwardChannel& k, float slope,
                                   float grad_mean, float projection) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float xi = load(x[i]);
    const float dz =
        activation_grad<kFromY>(load(g[i]), kFromY ? load(y[i]) : 0.0f, xi, k.mean, k.mean_low, k.scale, k.shift, slope);
    grad_x[i] = store<T>(((dz - grad_mean) - ((xi - k.mean) - k.mean_low) * projection) * k.scale);
  }
}

// The backward of channels [first, last), walking memory in order as the forward does.
template <typename T, bool kFromY>
FASTGAN_ISA_CLONES void backward_channels(const BatchNormBackwardArgs& args, int64_t first, int64_t last) {
  const int64_t C = args.channels, S = args.spatial, N = args.batch;
  const T* g = static_cast<const T*>(args.grad_out);
  const T* x = static_cast<const T*>(args.x);
  const T* y = static_cast<const T*>(args.y);
  T* grad_x = static_cast<T*>(args.grad_x);
  const double count = static_cast<double>(N * S);
  const int64_t width = last - first;
  std::vector<BackwardChannel> channel(width);
  std::vector<double> sum_dz(width, 0.0), dot(width, 0.0);
  for (int64_t c = first; c < last; ++c) channel[c - first] = backward_channel(args, c);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = first; c < last; ++c) {
      const int64_t row = (n * C + c) * S, k = c - first;
      row_grad_sums<T, kFromY>(g + row, x + row, kFromY ? y + row : nullptr, S, channel[k], args.slope, sum_dz[k],
                               dot[k]);
    }
  for (int64_t c = first; c < last; ++c)
    store_parameter_grads(args, c, sum_dz[c - first], dot[c - first], channel[c - first].invstd);
  if (grad_x == nullptr) return;
  std::vector<float> grad_mean(width, 0.0f), projection(width, 0.0f);
  if (args.training) {
    for (int64_t k = 0; k < width; ++k) {
      const double invstd = channel[k].invstd;
      grad_mean[k] = static_cast<float>(sum_dz[k] / count);
      projection[k] = static_cast<float>(dot[k] / count * invstd * invstd);
    }
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = first; c < last; ++c) {
      const int64_t row = (n * C + c) * S, k = c - first;
      row_grad_input<T, kFromY>(g + row, x + row, kFromY ? y + row : nullptr, grad_x + row, S, channel[k], args.slope,
                                grad_mean[k], projection[k]);
    }
}

}  // namespace

void planar_forward(const BatchNormArgs& args, int threads) {
  if (args.dtype == kBFloat16) {
    forward_typed<BFloat16>(args, threads);
  } else {
    forward_typed<float>(args, threads);
  }
}

void planar_backward(const BatchNormBackwardArgs& args, int threads) {
  const bool from_y = args.y != nullptr, bf16 = args.dtype == kBFloat16;
  run_parallel_ranges(threads, args.channels, [&](int64_t first, int64_t last) {
    if (bf16) {
      from_y ? backward_channels<BFloat16, true>(args, first, last) : backward_channels<BFloat16, false>(args, first, last);
    } else {
      from_y ? backward_channels<float, true>(args, first, last) : backward_channels<float, false>(args, first, last);
    }
  });
}

}  // namespace fastgan::cpu
