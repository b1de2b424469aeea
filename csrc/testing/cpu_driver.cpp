// Every native CPU kernel (csrc/cpu) through its entry point, for AddressSanitizer + UBSan and
// ThreadSanitizer (tests/test_bce.py builds and runs it). Buffers are exactly sized heap arrays,
// so a read or write past an operand is reported; outputs start as NaN, so an element left
// unwritten fails the comparison with a float64 reference. Exits 1 on the first mismatch.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>

#include "bce.h"

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

int check(int64_t n, int threads, int reduction, bool write_grad, int dtype) {
  const size_t element = dtype == fastgan::cpu::kBFloat16 ? 2 : 4;
  const int64_t loss_elements = reduction == fastgan::cpu::kReduceNone ? n : 1;
  auto input = std::make_unique<unsigned char[]>(n * element);
  auto target = std::make_unique<unsigned char[]>(n * element);
  auto loss = std::make_unique<unsigned char[]>(loss_elements * element);
  auto grad = std::make_unique<unsigned char[]>(n * element);
  std::mt19937 rng(static_cast<unsigned>(n * 131 + threads * 7 + reduction));
  std::normal_distribution<float> logit(0.7f, 4.0f);
  std::uniform_real_distribution<float> label(0.0f, 1.0f);
  const float extremes[] = {1e4f, -1e4f, 88.0f, -88.0f, 30.0f, -30.0f, 0.0f};
  for (int64_t i = 0; i < n; ++i) {
    const float x = i % 97 < 7 ? extremes[i % 97] : logit(rng);
    const float y = label(rng);
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
  BceArgs args{input.get(), target.get(), loss.get(), write_grad ? grad.get() : nullptr, dtype, reduction,
               static_cast<float>(scale), n, threads};
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

}  // namespace

int main() {
  const int64_t grain = fastgan::cpu::thread_grain();
  const int64_t sizes[] = {0, 1, 15, 1024, 1025, 2 * grain + 1029, 3 * grain + 5};
  int checks = 0;
  for (int dtype : {static_cast<int>(fastgan::cpu::kFloat32), static_cast<int>(fastgan::cpu::kBFloat16)}) {
    for (int64_t n : sizes) {
      for (int threads : {1, 2, 4}) {
        for (int reduction = fastgan::cpu::kReduceNone; reduction <= fastgan::cpu::kReduceSum; ++reduction) {
          for (bool write_grad : {false, true}) {
            if (check(n, threads, reduction, write_grad, dtype) != 0) return 1;
            ++checks;
          }
        }
      }
    }
  }
  std::printf("cpu_driver: %d checks passed\n", checks);
  return 0;
}
