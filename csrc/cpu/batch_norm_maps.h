// What the BatchNorm + LeakyReLU kernels' two layouts share (batch_norm_planar.cpp,
// batch_norm_channels_last.cpp): per-channel vectors of either dtype, each channel's affine
// map and statistics, the activation's gradient. Internal linkage, as in vector_math.h: each
// file compiles its own copies.
#pragma once

#include "batch_norm.h"
#include "vector_math.h"

#include <cmath>
#include <cstdint>
#include <vector>

namespace fastgan::cpu {
namespace {

// A per-channel vector of `dtype` (float32 or bfloat16): read as float32, written rounded.
float load_vector(const void* data, int dtype, int64_t c, float missing) {
  if (data == nullptr) return missing;
  return dtype == kBFloat16 ? load(static_cast<const BFloat16*>(data)[c]) : static_cast<const float*>(data)[c];
}

void store_vector(void* data, int dtype, int64_t c, double value) {
  if (dtype == kBFloat16) {
    static_cast<BFloat16*>(data)[c] = store<BFloat16>(static_cast<float>(value));
  } else {
    static_cast<float*>(data)[c] = static_cast<float>(value);
  }
}

// Each channel's affine map y = ((x - mean) - mean_low) * scale + shift, before the activation.
struct ChannelMaps {
  std::vector<float> mean, mean_low, scale, shift;
  explicit ChannelMaps(int64_t channels) : mean(channels), mean_low(channels, 0.0f), scale(channels), shift(channels) {}
};

// Channel c's map from its float64 (mean, biased var); in training, updates the running
// statistics and the saved ones.
void finish_channel(const BatchNormArgs& args, int64_t c, int64_t k, double mean, double var, ChannelMaps& maps) {
  const double count = static_cast<double>(args.batch * args.spatial);
  const float invstd = static_cast<float>(1.0 / std::sqrt(var + args.eps));
  maps.mean[k] = static_cast<float>(mean);
  maps.mean_low[k] = static_cast<float>(mean - static_cast<double>(maps.mean[k]));
  if (args.running_mean != nullptr) {
    const double m = args.momentum;
    const double unbiased = count > 1 ? var * count / (count - 1) : var;
    const int pd = args.param_dtype;
    store_vector(args.running_mean, pd, c, m * mean + (1.0 - m) * load_vector(args.running_mean, pd, c, 0.0f));
    store_vector(args.running_var, pd, c, m * unbiased + (1.0 - m) * load_vector(args.running_var, pd, c, 0.0f));
  }
  if (args.saved != nullptr) {
    args.saved[c] = maps.mean[k];
    args.saved[args.channels + c] = maps.mean_low[k];
    args.saved[2 * args.channels + c] = invstd;
  }
  maps.scale[k] = load_vector(args.weight, args.param_dtype, c, 1.0f) * invstd;
  maps.shift[k] = load_vector(args.bias, args.param_dtype, c, 0.0f);
}

// Channel c's map from the running statistics (eval).
void eval_channel(const BatchNormArgs& args, int64_t c, int64_t k, ChannelMaps& maps) {
  const double var = load_vector(args.running_var, args.param_dtype, c, 1.0f);
  const float invstd = static_cast<float>(1.0 / std::sqrt(var + args.eps));
  maps.mean[k] = load_vector(args.running_mean, args.param_dtype, c, 0.0f);
  maps.scale[k] = load_vector(args.weight, args.param_dtype, c, 1.0f) * invstd;
  maps.shift[k] = load_vector(args.bias, args.param_dtype, c, 0.0f);
}

// A channel's statistics and map for the backward: the saved batch mean (the forward's float32
// pair, and as a float64) and invstd in training, the running ones in eval.
struct BackwardChannel {
  double mean64;
  float mean, mean_low, invstd, scale, shift;
};

BackwardChannel backward_channel(const BatchNormBackwardArgs& args, int64_t c) {
  BackwardChannel k;
  if (args.stat_is_var) {
    k.mean = load_vector(args.mean, args.param_dtype, c, 0.0f);
    k.mean_low = 0.0f;
    k.invstd = static_cast<float>(1.0 / std::sqrt(load_vector(args.stat, args.param_dtype, c, 1.0f) + args.eps));
  } else {
    const float* saved = static_cast<const float*>(args.mean);
    k.mean = saved[c];
    k.mean_low = saved[args.channels + c];
    k.invstd = saved[2 * args.channels + c];
  }
  k.mean64 = static_cast<double>(k.mean) + static_cast<double>(k.mean_low);
  k.scale = load_vector(args.weight, args.param_dtype, c, 1.0f) * k.invstd;
  k.shift = load_vector(args.bias, args.param_dtype, c, 0.0f);
  return k;
}

FASTGAN_INLINE float leaky(float z, float slope) { return z > 0.0f ? z : z * slope; }

// The activation's gradient at one element: g where z > 0, g * slope elsewhere. The sign of z
// is read from y (kFromY: slope >= 0, where y > 0 exactly where z > 0), else z is rebuilt from x.
template <bool kFromY>
FASTGAN_INLINE float activation_grad(float g, float y, float x, float mean, float mean_low, float scale, float shift,
                                     float slope) {
  const bool positive = kFromY ? y > 0.0f : ((x - mean) - mean_low) * scale + shift > 0.0f;
  return positive ? g : g * slope;
}

// grad_weight/bias of channel c from its float64 sums.
void store_parameter_grads(const BatchNormBackwardArgs& args, int64_t c, double sum_dz, double dot, float invstd) {
  if (args.grad_weight != nullptr) store_vector(args.grad_weight, args.param_dtype, c, dot * invstd);
  if (args.grad_bias != nullptr) store_vector(args.grad_bias, args.param_dtype, c, sum_dz);
}

}  // namespace
}  // namespace fastgan::cpu
