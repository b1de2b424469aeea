// Every native CPU kernel (csrc/cpu: BCE, BatchNorm + LeakyReLU, Rényi over a row and over
// columns) through its entry point, for AddressSanitizer + UBSan and ThreadSanitizer
// (tests/test_bce.py builds and runs it). Buffers are exactly sized heap arrays, so a read or
// write past an operand is reported; outputs start as NaN, so an element left
// unwritten fails the comparison with a float64 reference. Exits 1 on the first mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "batch_norm.h"
#include "bce.h"
#include "renyi.h"

namespace {

using fastgan::cpu::BceArgs;

uint16_t to_bfloat16(float value) {  // round to nearest even (finite inputs here)
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

double from_storage(const void* data, int64_t i, int dtype) {
  if (dtype == fastgan::cpu::kBFloat16) {
    const uint32_t bits = static_cast<uint32_t>(static_cast<const uint16_t*>(data)[i]) << 16;
    float value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  return static_cast<const float*>(data)[i];
}

// Within `tolerance` relative to the size of the terms the value is made of (`magnitude`).
bool close(double ours, double want, double tolerance, double magnitude) {
  return std::fabs(ours - want) <= tolerance * (magnitude + std::fabs(want));
}

// constant: the kernel gets no target, every label `label` (the reference reads the same
// values from the target buffer, filled with it).
int check(int64_t n, int threads, int reduction, bool write_grad, int dtype, bool constant = false) {
  const float label = n % 2 ? 1.0f : 0.0f;
  const size_t element = dtype == fastgan::cpu::kBFloat16 ? 2 : 4;
  const int64_t loss_elements = reduction == fastgan::cpu::kReduceNone ? n : 1;
  auto input = std::make_unique<unsigned char[]>(n * element);
  auto target = std::make_unique<unsigned char[]>(n * element);
  auto loss = std::make_unique<unsigned char[]>(loss_elements * element);
  auto grad = std::make_unique<unsigned char[]>(n * element);
  std::mt19937 rng(static_cast<unsigned>(n * 131 + threads * 7 + reduction));
  std::normal_distribution<float> logit(0.7f, 4.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  const float extremes[] = {1e4f, -1e4f, 88.0f, -88.0f, 30.0f, -30.0f, 0.0f};
  for (int64_t i = 0; i < n; ++i) {
    const float x = i % 97 < 7 ? extremes[i % 97] : logit(rng);
    const float y = constant ? label : uniform(rng);
    if (element == 2) {
      reinterpret_cast<uint16_t*>(input.get())[i] = to_bfloat16(x);
      reinterpret_cast<uint16_t*>(target.get())[i] = to_bfloat16(y);
    } else {
      reinterpret_cast<float*>(input.get())[i] = x;
      reinterpret_cast<float*>(target.get())[i] = y;
    }
  }
  std::memset(loss.get(), 0xFF, loss_elements * element);  // NaN in both dtypes
  std::memset(grad.get(), 0xFF, n * element);
  const double scale = reduction == fastgan::cpu::kReduceMean && n ? 1.0 / static_cast<double>(n) : 1.0;
  BceArgs args{input.get(), constant ? nullptr : target.get(), loss.get(), write_grad ? grad.get() : nullptr,
               dtype, reduction, static_cast<float>(scale), n, threads, label};
  fastgan::cpu::bce_with_logits_forward(args);

  const double tolerance = element == 2 ? 8e-3 : 2e-5;
  double total = 0.0, magnitude = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = from_storage(input.get(), i, dtype), y = from_storage(target.get(), i, dtype);
    const double l = (1.0 - y) * x - (std::fmin(x, 0.0) - std::log1p(std::exp(-std::fabs(x))));
    const double g = (1.0 / (1.0 + std::exp(-x)) - y) * scale;
    total += l;
    magnitude += 1.0 + std::fabs(x);
    // (1 - y) * x - min(x, 0) cancels: its terms are of size |x|.
    if (reduction == fastgan::cpu::kReduceNone && !close(from_storage(loss.get(), i, dtype), l, tolerance, 1.0 + std::fabs(x))) {
      std::printf("loss[%lld] = %g, want %g (n=%lld threads=%d dtype=%d)\n", static_cast<long long>(i),
                  from_storage(loss.get(), i, dtype), l, static_cast<long long>(n), threads, dtype);
      return 1;
    }
    if (write_grad && !close(from_storage(grad.get(), i, dtype), g, tolerance, scale)) {
      std::printf("grad[%lld] = %g, want %g (n=%lld threads=%d reduction=%d dtype=%d)\n", static_cast<long long>(i),
                  from_storage(grad.get(), i, dtype), g, static_cast<long long>(n), threads, reduction, dtype);
      return 1;
    }
  }
  if (reduction != fastgan::cpu::kReduceNone && n > 0) {
    const double want = total * scale;
    if (!close(from_storage(loss.get(), 0, dtype), want, tolerance, magnitude * scale)) {
      std::printf("reduced loss = %g, want %g (n=%lld threads=%d reduction=%d dtype=%d)\n",
                  from_storage(loss.get(), 0, dtype), want, static_cast<long long>(n), threads, reduction, dtype);
      return 1;
    }
  }
  return 0;
}

// A block-kernel case: shape, layout, the dtype of x and that of the per-channel vectors.
struct BatchNormCase {
  int64_t batch, channels, spatial;
  bool channels_last;
  int dtype, param_dtype;
  int threads;
  // Offset of element (b, c, s) in the layout.
  int64_t at(int64_t b, int64_t c, int64_t s) const {
    return channels_last ? (b * spatial + s) * channels + c : (b * channels + c) * spatial + s;
  }
  double tolerance() const { return dtype == fastgan::cpu::kBFloat16 ? 8e-3 : 1e-4; }
};

// A buffer of n values of `dtype` (bfloat16 or float32), NaN-filled.
std::unique_ptr<unsigned char[]> values(int64_t n, int dtype) {
  const size_t element = dtype == fastgan::cpu::kBFloat16 ? 2 : 4;
  auto buffer = std::make_unique<unsigned char[]>(n * element);
  std::memset(buffer.get(), 0xFF, n * element);
  return buffer;
}

void set_value(void* data, int64_t i, int dtype, float value) {
  if (dtype == fastgan::cpu::kBFloat16) {
    static_cast<uint16_t*>(data)[i] = to_bfloat16(value);
  } else {
    static_cast<float*>(data)[i] = value;
  }
}

// The backward from the forward's outputs against float64: a random upstream gradient.
int check_batch_norm_backward(const BatchNormCase& k, const void* x, const void* y, const void* weight,
                              const void* bias, const void* mean, const void* stat, bool training) {
  const int64_t n = k.batch * k.channels * k.spatial, C = k.channels;
  auto grad_out = values(n, k.dtype), grad_x = values(n, k.dtype);
  auto grad_weight = values(C, k.param_dtype), grad_bias = values(C, k.param_dtype);
  std::mt19937 rng(static_cast<unsigned>(n * 3 + k.threads));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) set_value(grad_out.get(), i, k.dtype, normal(rng));
  fastgan::cpu::BatchNormBackwardArgs args{grad_out.get(), x, y, weight, bias, mean, stat, grad_x.get(),
                                           grad_weight.get(), grad_bias.get(), k.batch, C, k.spatial, k.dtype,
                                           k.param_dtype, k.channels_last, training, !training, 1e-5, 0.2f,
                                           k.threads};
  fastgan::cpu::batch_norm_leaky_relu_backward(args);

  const double count = static_cast<double>(k.batch * k.spatial), tolerance = k.tolerance();
  auto value = [&](const void* data, int64_t i) { return from_storage(data, i, k.dtype); };
  for (int64_t c = 0; c < C; ++c) {
    // Training: the float64 saved mean and float32 invstd; eval: the running statistics.
    // Training: the forward's saved (mean, residual, invstd); eval: the running statistics.
    const float* saved = static_cast<const float*>(mean);
    const double m = training ? static_cast<double>(saved[c]) + saved[C + c] : from_storage(mean, c, k.param_dtype);
    const double st = training ? saved[2 * C + c] : from_storage(stat, c, k.param_dtype);
    const double invstd = training ? st : 1.0 / std::sqrt(st + 1e-5), w = from_storage(weight, c, k.param_dtype);
    double sum = 0.0, dot = 0.0, magnitude = 0.0;
    auto dz = [&](int64_t i) { return value(y, i) > 0 ? value(grad_out.get(), i) : 0.2 * value(grad_out.get(), i); };
    for (int64_t b = 0; b < k.batch; ++b)
      for (int64_t s = 0; s < k.spatial; ++s) {
        const int64_t i = k.at(b, c, s);
        sum += dz(i);
        dot += dz(i) * (value(x, i) - m);
        magnitude += std::fabs(dz(i)) * (1.0 + std::fabs(value(x, i) - m));
      }
    const double grad_w = from_storage(grad_weight.get(), c, k.param_dtype), grad_b = from_storage(grad_bias.get(), c, k.param_dtype);
    if (!close(grad_b, sum, tolerance, magnitude) || !close(grad_w, dot * invstd, tolerance, magnitude * invstd)) {
      std::printf("batch_norm grad_weight/bias[%lld] = %g/%g, want %g/%g (training=%d threads=%d)\n",
                  static_cast<long long>(c), grad_w, grad_b, dot * invstd, sum, training, k.threads);
      return 1;
    }
    for (int64_t b = 0; b < k.batch; ++b)
      for (int64_t s = 0; s < k.spatial; ++s) {
        const int64_t i = k.at(b, c, s);
        const double centred = value(x, i) - m;
        const double want = training ? (dz(i) - sum / count - centred * invstd * invstd * dot / count) * invstd * w
                                     : dz(i) * invstd * w;
        if (!close(value(grad_x.get(), i), want, tolerance, (std::fabs(value(grad_out.get(), i)) + 1.0) * invstd * std::fabs(w))) {
          std::printf("batch_norm grad_x[%lld] = %g, want %g (training=%d threads=%d)\n", static_cast<long long>(i),
                      value(grad_x.get(), i), want, training, k.threads);
          return 1;
        }
      }
  }
  return 0;
}

// The BatchNorm + LeakyReLU forward (training with running statistics, then eval) against a
// float64 computation of the same formula, then the backward from its outputs.
int check_batch_norm(const BatchNormCase& k) {
  const int64_t n = k.batch * k.channels * k.spatial, C = k.channels;
  auto x = values(n, k.dtype), y = values(n, k.dtype);
  auto weight = values(C, k.param_dtype), bias = values(C, k.param_dtype);
  auto running_mean = values(C, k.param_dtype), running_var = values(C, k.param_dtype);
  auto saved = std::make_unique<float[]>(3 * C);
  std::mt19937 rng(static_cast<unsigned>(n + k.threads));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < n; ++i) set_value(x.get(), i, k.dtype, 3.0f * normal(rng) + 40.0f);
  for (int64_t c = 0; c < C; ++c) {
    set_value(weight.get(), c, k.param_dtype, 1.0f + 0.1f * normal(rng));
    set_value(bias.get(), c, k.param_dtype, normal(rng));
    set_value(running_mean.get(), c, k.param_dtype, 0.0f);
    set_value(running_var.get(), c, k.param_dtype, 1.0f);
  }
  auto value = [&](const void* data, int64_t i) { return from_storage(data, i, k.dtype); };
  auto parameter = [&](const void* data, int64_t c) { return from_storage(data, c, k.param_dtype); };
  for (bool training : {true, false}) {
    std::memset(y.get(), 0xFF, n * (k.dtype == fastgan::cpu::kBFloat16 ? 2 : 4));
    std::vector<double> old_mean(C), old_var(C);
    for (int64_t c = 0; c < C; ++c) {
      old_mean[c] = parameter(running_mean.get(), c);
      old_var[c] = parameter(running_var.get(), c);
    }
    fastgan::cpu::BatchNormArgs args{x.get(), y.get(), weight.get(), bias.get(), running_mean.get(),
                                     running_var.get(), training ? saved.get() : nullptr, k.batch, C, k.spatial, k.dtype,
                                     k.param_dtype, k.channels_last, training, 0.1, 1e-5, 0.2f, k.threads};
    fastgan::cpu::batch_norm_leaky_relu_forward(args);
    for (int64_t c = 0; c < C; ++c) {
      double mean = old_mean[c], var = old_var[c];
      if (training) {
        double sum = 0.0, squares = 0.0;
        for (int64_t b = 0; b < k.batch; ++b)
          for (int64_t s = 0; s < k.spatial; ++s) sum += value(x.get(), k.at(b, c, s));
        const double count = static_cast<double>(k.batch * k.spatial);
        mean = sum / count;
        for (int64_t b = 0; b < k.batch; ++b)
          for (int64_t s = 0; s < k.spatial; ++s) {
            const double d = value(x.get(), k.at(b, c, s)) - mean;
            squares += d * d;
          }
        var = squares / count;
        const double unbiased = count > 1 ? var * count / (count - 1) : var;
        const double want_mean = 0.1 * mean + 0.9 * old_mean[c], want_var = 0.1 * unbiased + 0.9 * old_var[c];
        if (!close(parameter(running_mean.get(), c), want_mean, k.tolerance(), 0.0) ||
            !close(parameter(running_var.get(), c), want_var, k.tolerance(), 0.0)) {
          std::printf("batch_norm running mean/var[%lld] = %g/%g, want %g/%g (threads=%d)\n", static_cast<long long>(c),
                      parameter(running_mean.get(), c), parameter(running_var.get(), c), want_mean, want_var, k.threads);
          return 1;
        }
      }
      const double invstd = 1.0 / std::sqrt(var + 1e-5);
      for (int64_t b = 0; b < k.batch; ++b) {
        for (int64_t s = 0; s < k.spatial; ++s) {
          const int64_t i = k.at(b, c, s);
          const double z = (value(x.get(), i) - mean) * invstd * parameter(weight.get(), c) + parameter(bias.get(), c);
          const double want = z > 0 ? z : 0.2 * z;
          if (!close(value(y.get(), i), want, k.tolerance(), 1.0)) {
            std::printf("batch_norm y[%lld] = %g, want %g (training=%d threads=%d channels_last=%d dtype=%d/%d)\n",
                        static_cast<long long>(i), value(y.get(), i), want, training, k.threads, k.channels_last,
                        k.dtype, k.param_dtype);
            return 1;
          }
        }
      }
    }
    if (check_batch_norm_backward(k, x.get(), y.get(), weight.get(), bias.get(),
                                  training ? static_cast<const void*>(saved.get()) : running_mean.get(),
                                  training ? nullptr : running_var.get(),
                                  training) != 0) {
      return 1;
    }
  }
  return 0;
}

}  // namespace

// The Rényi forward's (m, E) and the backward's every gradient element against float64 (E is a sum of
// float32 lanes: 1e-5 relative; a lost block or lane is far more).
int check_renyi(int64_t n, int threads, int dtype, float beta) {
  const size_t element = dtype == fastgan::cpu::kBFloat16 ? 2 : 4;
  auto logits = std::make_unique<unsigned char[]>(n * element);
  auto grad = std::make_unique<unsigned char[]>(n * element);
  std::mt19937 rng(static_cast<unsigned>(n * 17 + threads));
  std::normal_distribution<float> logit(0.8f, 2.0f);
  for (int64_t i = 0; i < n; ++i) {
    const float x = i % 89 == 3 ? 40.0f : logit(rng);
    if (element == 2) {
      reinterpret_cast<uint16_t*>(logits.get())[i] = to_bfloat16(x);
      reinterpret_cast<uint16_t*>(grad.get())[i] = 0x7FC0u;  // NaN
    } else {
      reinterpret_cast<float*>(logits.get())[i] = x;
      reinterpret_cast<float*>(grad.get())[i] = NAN;
    }
  }
  const fastgan::cpu::RenyiArgs args{logits.get(), dtype, n, beta, threads};
  const fastgan::cpu::RenyiSums sums = fastgan::cpu::renyi_forward(args);
  double shift = -INFINITY, expsum = 0.0;
  for (int64_t i = 0; i < n; ++i) shift = std::fmax(shift, static_cast<double>(beta * static_cast<float>(from_storage(logits.get(), i, dtype))));
  for (int64_t i = 0; i < n; ++i) expsum += std::exp(beta * from_storage(logits.get(), i, dtype) - shift);
  if (!sums.finite || sums.shift != static_cast<float>(shift) || !close(sums.expsum, expsum, 1e-5, 0.0)) {
    std::printf("renyi forward mismatch: n=%lld threads=%d dtype=%d: (%g, %.9g) against (%g, %.9g)\n",
                static_cast<long long>(n), threads, dtype, sums.shift, sums.expsum, shift, expsum);
    return 1;
  }
  const float scale = static_cast<float>(-1.0 / sums.expsum);
  fastgan::cpu::renyi_backward(args, grad.get(), sums.shift, scale);
  const double tolerance = dtype == fastgan::cpu::kBFloat16 ? 1e-2 : 1e-5;
  for (int64_t i = 0; i < n; ++i) {
    const double want = -std::exp(beta * from_storage(logits.get(), i, dtype) - shift) / expsum;
    if (!close(from_storage(grad.get(), i, dtype), want, tolerance, 1e-30)) {
      std::printf("renyi grad mismatch at %lld of %lld (threads %d, dtype %d): %.9g against %.9g\n",
                  static_cast<long long>(i), static_cast<long long>(n), threads, dtype,
                  from_storage(grad.get(), i, dtype), want);
      return 1;
    }
  }
  return 0;
}

// The columns form (csrc/cpu/renyi_columns.cpp): every column's (m, E) and every gradient
// element against float64, for g below and above one vector row and a remainder of rows.
int check_renyi_columns(int64_t n, int64_t g, int threads, int dtype, float beta) {
  const size_t element = dtype == fastgan::cpu::kBFloat16 ? 2 : 4;
  auto logits = std::make_unique<unsigned char[]>(n * g * element);
  auto grad = std::make_unique<unsigned char[]>(n * g * element);
  std::mt19937 rng(static_cast<unsigned>(n * 13 + g * 7 + threads));
  std::normal_distribution<float> logit(0.8f, 2.0f);
  for (int64_t i = 0; i < n * g; ++i) {
    const float x = i % 89 == 3 ? 40.0f : logit(rng);
    if (element == 2) {
      reinterpret_cast<uint16_t*>(logits.get())[i] = to_bfloat16(x);
    } else {
      reinterpret_cast<float*>(logits.get())[i] = x;
    }
  }
  std::memset(grad.get(), 0xFF, n * g * element);  // NaN
  std::vector<float> shift(g), scale(g);
  std::vector<double> expsum(g);
  const fastgan::cpu::RenyiColumnsArgs args{logits.get(), dtype, n, g, beta, threads};
  if (!fastgan::cpu::renyi_columns_forward(args, shift.data(), expsum.data())) {
    std::printf("renyi columns: finite logits reported as not finite (n=%lld g=%lld)\n", static_cast<long long>(n),
                static_cast<long long>(g));
    return 1;
  }
  for (int64_t j = 0; j < g; ++j) {
    double m = -INFINITY, e = 0.0;
    for (int64_t i = 0; i < n; ++i) m = std::fmax(m, static_cast<double>(beta * static_cast<float>(from_storage(logits.get(), i * g + j, dtype))));
    for (int64_t i = 0; i < n; ++i) e += std::exp(beta * from_storage(logits.get(), i * g + j, dtype) - m);
    if (shift[j] != static_cast<float>(m) || !close(expsum[j], e, 1e-5, 0.0)) {
      std::printf("renyi columns forward mismatch: n=%lld g=%lld column %lld threads=%d dtype=%d: (%g, %.9g) against (%g, %.9g)\n",
                  static_cast<long long>(n), static_cast<long long>(g), static_cast<long long>(j), threads, dtype,
                  shift[j], expsum[j], m, e);
      return 1;
    }
    scale[j] = static_cast<float>(-(1.0 + 0.1 * static_cast<double>(j)) / expsum[j]);
  }
  fastgan::cpu::renyi_columns_backward(args, grad.get(), shift.data(), scale.data());
  const double tolerance = dtype == fastgan::cpu::kBFloat16 ? 1e-2 : 1e-5;
  for (int64_t i = 0; i < n * g; ++i) {
    const int64_t j = i % g;
    const double want = scale[j] * std::exp(beta * from_storage(logits.get(), i, dtype) - shift[j]);
    if (!close(from_storage(grad.get(), i, dtype), want, tolerance, 1e-30)) {
      std::printf("renyi columns grad mismatch at %lld (n=%lld g=%lld threads %d dtype %d): %.9g against %.9g\n",
                  static_cast<long long>(i), static_cast<long long>(n), static_cast<long long>(g), threads, dtype,
                  from_storage(grad.get(), i, dtype), want);
      return 1;
    }
  }
  return 0;
}

int main() {
  const int64_t grain = fastgan::cpu::thread_grain();
  const int64_t sizes[] = {0, 1, 15, 1024, 1025, 2 * grain + 1029, 3 * grain + 5};
  int checks = 0;
  for (int dtype : {static_cast<int>(fastgan::cpu::kFloat32), static_cast<int>(fastgan::cpu::kBFloat16)}) {
    for (int64_t n : sizes) {
      for (int threads : {1, 2, 4}) {
        for (int reduction = fastgan::cpu::kReduceNone; reduction <= fastgan::cpu::kReduceSum; ++reduction) {
          for (bool write_grad : {false, true}) {
            for (bool constant : {false, true}) {
              if (check(n, threads, reduction, write_grad, dtype, constant) != 0) return 1;
              ++checks;
            }
          }
        }
      }
    }
  }
  const int64_t bn_grain = fastgan::cpu::batch_norm_thread_grain();
  // C = 5, 7: channel remainders only; 17, 35: blocks of 16 channels and a remainder (channels_last).
  const std::tuple<int64_t, int64_t, int64_t> shapes[] = {
      {3, 5, 63}, {2, 7, 1}, {3, 5, 2 * bn_grain / 15 + 7}, {3, 17, 67}, {2, 35, bn_grain / 35 + 9}};
  const std::pair<int, int> dtypes[] = {{fastgan::cpu::kFloat32, fastgan::cpu::kFloat32},
                                        {fastgan::cpu::kBFloat16, fastgan::cpu::kFloat32},
                                        {fastgan::cpu::kBFloat16, fastgan::cpu::kBFloat16}};
  for (int threads : {1, 2, 4}) {
    for (const auto& [batch, channels, spatial] : shapes) {
      for (bool channels_last : {false, true}) {
        for (const auto& [dtype, param_dtype] : dtypes) {
          if (check_batch_norm({batch, channels, spatial, channels_last, dtype, param_dtype, threads}) != 0) return 1;
          ++checks;
        }
      }
    }
  }
  const int64_t renyi_grain = fastgan::cpu::renyi_thread_grain();
  for (int dtype : {static_cast<int>(fastgan::cpu::kFloat32), static_cast<int>(fastgan::cpu::kBFloat16)}) {
    for (int64_t n : {int64_t{1}, int64_t{15}, int64_t{1025}, 2 * renyi_grain + 1029}) {
      for (int threads : {1, 2, 4}) {
        for (float beta : {0.5f, -1.0f}) {
          if (check_renyi(n, threads, dtype, beta) != 0) return 1;
          ++checks;
        }
      }
    }
  }
  const std::pair<int64_t, int64_t> column_shapes[] = {{1, 1}, {7, 3}, {1025, 17}, {2 * renyi_grain / 5 + 9, 5}};
  for (int dtype : {static_cast<int>(fastgan::cpu::kFloat32), static_cast<int>(fastgan::cpu::kBFloat16)}) {
    for (const auto& [n, g] : column_shapes) {
      for (int threads : {1, 2, 4}) {
        for (float beta : {0.5f, -1.0f}) {
          if (check_renyi_columns(n, g, threads, dtype, beta) != 0) return 1;
          ++checks;
        }
      }
    }
  }
  std::printf("cpu_driver: %d checks passed\n", checks);
  return 0;
}
