// Kernel-level cases of every fastgan CUDA kernel, through the host entry points the extension
// calls, with the plain CUDA runtime API. One source, two builds:
//   * nvcc, for compute-sanitizer (memcheck, racecheck) on a GPU (bench/gpu_acceptance.py);
//   * g++ against csrc/emulation, with AddressSanitizer + UBSan or ThreadSanitizer, on the CPU
//     (tests/test_emulation.py), under several thread schedules (FASTGAN_EMULATE_SCHEDULE).
// Buffers are allocated at their exact size (so an off-by-one read is out of bounds), outputs are
// poisoned with NaN bytes first (so an unwritten element shows), and every output is compared
// with a float64 reference computed here. Prints one line per case with a checksum of its
// outputs (the kernels are deterministic: every schedule must print the same checksums) and
// exits non-zero when any check fails.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "batch_norm.h"
#include "bce.h"
#include "common.h"
#include "renyi.h"

namespace {

using fastgan::kBFloat16;
using fastgan::kFloat16;
using fastgan::kFloat32;

int failures = 0;

size_t element_size(int dtype) { return dtype == kFloat32 ? 4 : 2; }

float to_dtype_and_back(float value, int dtype) {
  if (dtype == kFloat16) return __half2float(__float2half_rn(value));
  if (dtype == kBFloat16) return __bfloat162float(__float2bfloat16_rn(value));
  return value;
}

// A device buffer of `count` elements of `dtype`, allocated at exactly that size.
struct Buffer {
  void* ptr = nullptr;
  size_t count = 0;
  int dtype = kFloat32;

  Buffer(size_t n, int type) : count(n), dtype(type) {
    if (cudaMalloc(&ptr, bytes()) != cudaSuccess) throw std::runtime_error("cudaMalloc failed");
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { cudaFree(ptr); }
  size_t bytes() const { return count * element_size(dtype); }

  void upload(const std::vector<float>& values) {
    std::vector<unsigned char> raw(bytes());
    for (size_t i = 0; i < count; ++i) {
      if (dtype == kFloat32) {
        std::memcpy(&raw[i * 4], &values[i], 4);
      } else if (dtype == kFloat16) {
        const __half h = __float2half_rn(values[i]);
        std::memcpy(&raw[i * 2], &h, 2);
      } else {
        const __nv_bfloat16 h = __float2bfloat16_rn(values[i]);
        std::memcpy(&raw[i * 2], &h, 2);
      }
    }
    cudaMemcpy(ptr, raw.data(), bytes(), cudaMemcpyHostToDevice);
  }
  void poison() { cudaMemset(ptr, 0xff, bytes()); }  // NaN in every float format
  std::vector<float> download() const {
    std::vector<unsigned char> raw(bytes());
    cudaDeviceSynchronize();
    cudaMemcpy(raw.data(), ptr, bytes(), cudaMemcpyDeviceToHost);
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i) {
      if (dtype == kFloat32) {
        std::memcpy(&values[i], &raw[i * 4], 4);
      } else if (dtype == kFloat16) {
        __half h;
        std::memcpy(&h, &raw[i * 2], 2);
        values[i] = __half2float(h);
      } else {
        __nv_bfloat16 h;
        std::memcpy(&h, &raw[i * 2], 2);
        values[i] = __bfloat162float(h);
      }
    }
    return values;
  }
  float* f32() const { return static_cast<float*>(ptr); }
};

// Deterministic inputs: uniform in [offset - scale, offset + scale], rounded to `dtype`.
std::vector<float> inputs(size_t n, float offset, float scale, int dtype, uint64_t seed) {
  std::vector<float> values(n);
  uint64_t state = seed * 6364136223846793005ull + 1442695040888963407ull;
  for (size_t i = 0; i < n; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const double unit = static_cast<double>(state >> 11) / 9007199254740992.0;
    values[i] = to_dtype_and_back(static_cast<float>(offset + scale * (2.0 * unit - 1.0)), dtype);
  }
  return values;
}

uint64_t checksum_of(const std::vector<float>& values, uint64_t hash) {
  for (float v : values) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    hash = (hash ^ bits) * 1099511628211ull;
  }
  return hash;
}

// Relative error of `got` against `want` (scaled by the largest |want|); NaN where unwritten.
double compare(const char* what, const std::vector<float>& got, const std::vector<double>& want, double tolerance) {
  double scale = 1e-30, worst = 0.0;
  for (double w : want) scale = std::fmax(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const bool both_inf = std::isinf(want[i]) && got[i] == want[i];
    const double error = both_inf ? 0.0 : std::fabs(static_cast<double>(got[i]) - want[i]) / scale;
    if (!(error <= worst)) worst = error;  // NaN propagates
  }
  if (!(worst <= tolerance)) {
    std::printf("  FAIL %s: relative error %.3g > %.3g\n", what, worst, tolerance);
    ++failures;
  }
  return worst;
}

double tolerance_for(int dtype) { return dtype == kFloat32 ? 2e-5 : (dtype == kFloat16 ? 4e-3 : 3e-2); }

const char* dtype_name(int dtype) { return dtype == kFloat32 ? "fp32" : (dtype == kFloat16 ? "fp16" : "bf16"); }

void report(const std::string& name, uint64_t checksum) {
  std::printf("case %-48s checksum %016llx\n", name.c_str(), static_cast<unsigned long long>(checksum));
}

// ---- BCE ------------------------------------------------------------------------------------

double softplus(double x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }

void bce_case(int64_t n, int dtype, bool reduce, int64_t blocks) {
  const std::string name = "bce n=" + std::to_string(n) + " " + dtype_name(dtype) + (reduce ? " mean" : " none") +
                           " blocks=" + std::to_string(blocks);
  const std::vector<float> x = inputs(n, 1.5f, 6.0f, dtype, 11 + n);
  const std::vector<float> y = inputs(n, 0.5f, 0.5f, dtype, 12 + n);
  Buffer input(n, dtype), target(n, dtype), grad(n, dtype), loss(reduce ? 1 : n, dtype), partials(blocks, kFloat32);
  input.upload(x);
  target.upload(y);
  grad.poison();
  loss.poison();
  fastgan::BceForwardArgs args{};
  args.input = {input.ptr, dtype, {0, 0, 0, 1}};
  args.target = {target.ptr, dtype, {0, 0, 0, 1}};
  args.weight = {nullptr, kFloat32, {0, 0, 0, 0}};
  args.pos_weight = {nullptr, kFloat32, {0, 0, 0, 0}};
  args.loss = loss.ptr;
  args.loss_dtype = dtype;
  args.partials = partials.f32();
  args.grad = grad.ptr;
  args.grad_dtype = dtype;
  args.grad_scale = reduce ? 1.0f / n : 1.0f;
  args.loss_scale = reduce ? 1.0f / n : 1.0f;
  args.numel = n;
  args.sizes[0] = args.sizes[1] = args.sizes[2] = 1;
  args.sizes[3] = n;
  args.contiguous = true;
  fastgan::bce_with_logits_forward(args, blocks, reduce, nullptr);
  std::vector<double> want_loss(reduce ? 1 : n, 0.0), want_grad(n);
  for (int64_t i = 0; i < n; ++i) {
    const double l = (1.0 - y[i]) * x[i] + softplus(-static_cast<double>(x[i]));
    if (reduce) want_loss[0] += l / n; else want_loss[i] = l;
    want_grad[i] = (1.0 / (1.0 + std::exp(-static_cast<double>(x[i]))) - y[i]) * (reduce ? 1.0 / n : 1.0);
  }
  const auto got_loss = loss.download(), got_grad = grad.download();
  compare((name + " loss").c_str(), got_loss, want_loss, tolerance_for(dtype));
  compare((name + " grad").c_str(), got_grad, want_grad, tolerance_for(dtype));
  report(name, checksum_of(got_grad, checksum_of(got_loss, 14695981039346656037ull)));
}

void gan_bce_case(int64_t n_real, int64_t n_fake, int64_t real_stride, int dtype, int64_t blocks) {
  const std::string name = "gan_bce real=" + std::to_string(n_real) + "x" + std::to_string(real_stride) + " fake=" +
                           std::to_string(n_fake) + " " + dtype_name(dtype) + " blocks=" + std::to_string(blocks);
  const std::vector<float> real = inputs(n_real * real_stride, 2.0f, 5.0f, dtype, 21);
  const std::vector<float> fake = inputs(n_fake, -1.0f, 5.0f, dtype, 22);
  Buffer real_b(real.size(), dtype), fake_b(n_fake, dtype), d_loss(1, dtype), g_loss(1, dtype);
  Buffer grad_real(n_real, dtype), grad_fake_d(n_fake, dtype), grad_fake_g(n_fake, dtype), partials(3 * blocks, kFloat32);
  real_b.upload(real);
  fake_b.upload(fake);
  for (Buffer* b : {&d_loss, &g_loss, &grad_real, &grad_fake_d, &grad_fake_g}) b->poison();
  fastgan::GanBceForwardArgs args{};
  args.real = real_b.ptr;
  args.real_dtype = dtype;
  args.fake = fake_b.ptr;
  args.fake_dtype = dtype;
  args.d_loss = d_loss.ptr;
  args.d_loss_dtype = dtype;
  args.g_loss = g_loss.ptr;
  args.g_loss_dtype = dtype;
  args.partials = partials.f32();
  args.grad_real = grad_real.ptr;
  args.grad_fake_d = grad_fake_d.ptr;
  args.grad_fake_g = grad_fake_g.ptr;
  args.real_target = 1.0f;
  args.fake_target = 0.0f;
  args.inv_n_real = 1.0f / n_real;
  args.inv_n_fake = 1.0f / n_fake;
  args.n_real = n_real;
  args.n_fake = n_fake;
  args.real_stride = real_stride;
  args.fake_stride = 1;
  fastgan::gan_bce_forward(args, blocks, nullptr);
  std::vector<double> want_d(1, 0.0), want_g(1, 0.0), want_gr(n_real), want_gfd(n_fake), want_gfg(n_fake);
  for (int64_t i = 0; i < n_real; ++i) {
    const double r = real[i * real_stride];
    want_d[0] += softplus(-r) / n_real;
    want_gr[i] = (1.0 / (1.0 + std::exp(-r)) - 1.0) / n_real;
  }
  for (int64_t i = 0; i < n_fake; ++i) {
    const double f = fake[i];
    want_d[0] += softplus(f) / n_fake;
    want_g[0] += softplus(-f) / n_fake;
    want_gfd[i] = (1.0 / (1.0 + std::exp(-f))) / n_fake;
    want_gfg[i] = -(1.0 / (1.0 + std::exp(f))) / n_fake;
  }
  uint64_t hash = 14695981039346656037ull;
  const std::vector<double>* wants[] = {&want_d, &want_g, &want_gr, &want_gfd, &want_gfg};
  const Buffer* gots[] = {&d_loss, &g_loss, &grad_real, &grad_fake_d, &grad_fake_g};
  const char* names[] = {"d_loss", "g_loss", "grad_real", "grad_fake_d", "grad_fake_g"};
  for (int k = 0; k < 5; ++k) {
    const auto got = gots[k]->download();
    compare((name + " " + names[k]).c_str(), got, *wants[k], tolerance_for(dtype));
    hash = checksum_of(got, hash);
  }
  report(name, hash);
}

// ---- Rényi ------------------------------------------------------------------------------------

void renyi_case(int64_t rows, int64_t n, float alpha, int dtype, int64_t splits, const std::vector<float>* given) {
  const std::string name = "renyi " + std::to_string(rows) + "x" + std::to_string(n) + " alpha=" +
                           std::to_string(alpha).substr(0, 4) + " " + dtype_name(dtype) + " splits=" +
                           std::to_string(splits) + (given ? " special" : "");
  const std::vector<float> r = given ? *given : inputs(rows * n, 1.0f, 4.0f, dtype, 31 + n);
  const float beta = 1.0f - alpha;
  const int64_t cols_per_split = (n + splits - 1) / splits;
  Buffer input(rows * n, dtype), out(rows, dtype), shift(rows, kFloat32), expsum(rows, kFloat32);
  Buffer partials(rows * splits * 5, kFloat32), grad_out(rows, kFloat32), grad(rows * n, dtype);
  input.upload(r);
  out.poison();
  grad.poison();
  fastgan::RenyiForwardArgs fwd{};
  fwd.input = {input.ptr, dtype, rows, n, n, 1};
  fwd.out = out.ptr;
  fwd.out_dtype = dtype;
  fwd.shift = shift.f32();
  fwd.expsum = expsum.f32();
  fwd.partials = partials.f32();
  fwd.beta = beta;
  fwd.inv_beta = beta != 0.0f ? 1.0f / beta : 0.0f;
  fwd.log_n = std::log(static_cast<float>(n));
  fwd.cols_per_split = cols_per_split;
  fastgan::renyi_forward(fwd, splits, nullptr);
  std::vector<float> upstream(rows);
  for (int64_t i = 0; i < rows; ++i) upstream[i] = 0.5f + static_cast<float>(i);
  grad_out.upload(upstream);
  fastgan::RenyiBackwardArgs bwd{};
  bwd.input = fwd.input;
  bwd.grad_out = grad_out.ptr;
  bwd.grad_out_dtype = kFloat32;
  bwd.grad_out_stride = 1;
  bwd.shift = shift.f32();
  bwd.expsum = expsum.f32();
  bwd.grad = grad.ptr;
  bwd.grad_dtype = dtype;
  bwd.beta = beta;
  fastgan::renyi_backward(bwd, nullptr);
  std::vector<double> want_out(rows), want_grad(rows * n);
  for (int64_t i = 0; i < rows; ++i) {
    double m = -INFINITY, total = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      m = std::fmax(m, static_cast<double>(beta) * r[i * n + j]);
      total += r[i * n + j];
    }
    double e = 0.0;
    for (int64_t j = 0; j < n; ++j) e += std::exp(static_cast<double>(beta) * r[i * n + j] - m);
    want_out[i] = beta == 0.0f ? -total / n : -(m + std::log(e / n)) / beta;
    for (int64_t j = 0; j < n; ++j) {
      want_grad[i * n + j] = -upstream[i] * std::exp(static_cast<double>(beta) * r[i * n + j] - m) / e;
    }
  }
  const auto got_out = out.download(), got_grad = grad.download();
  compare((name + " value").c_str(), got_out, want_out, tolerance_for(dtype) * 4);
  compare((name + " grad").c_str(), got_grad, want_grad, tolerance_for(dtype) * 4);
  report(name, checksum_of(got_grad, checksum_of(got_out, 14695981039346656037ull)));
}

// ---- BatchNorm + LeakyReLU ------------------------------------------------------------------

struct BnLayout {
  int64_t n, c, s;
  bool channels_last;
  int64_t stride_n() const { return c * s; }
  int64_t stride_c() const { return channels_last ? 1 : s; }
  int64_t stride_s() const { return channels_last ? c : 1; }
  int64_t at(int64_t i, int64_t ch, int64_t p) const { return i * stride_n() + ch * stride_c() + p * stride_s(); }
};

void batch_norm_case(BnLayout shape, int dtype, int64_t splits, bool synchronised) {
  const std::string name = "batch_norm " + std::to_string(shape.n) + "x" + std::to_string(shape.c) + "x" +
                           std::to_string(shape.s) + (shape.channels_last ? " channels_last " : " planar ") +
                           dtype_name(dtype) + " splits=" + std::to_string(splits) + (synchronised ? " staged" : "");
  const int64_t total = shape.n * shape.c * shape.s, C = shape.c, P = shape.n * shape.s;
  const int64_t per_split = (P + splits - 1) / splits;
  const float eps = 1e-5f, slope = 0.2f, momentum = 0.1f;
  const std::vector<float> x = inputs(total, 30.0f, 3.0f, dtype, 41 + total);  // |mean| >> std
  const std::vector<float> dy = inputs(total, 0.1f, 1.0f, dtype, 42 + total);
  const std::vector<float> w = inputs(C, 1.0f, 0.5f, kFloat32, 43), b = inputs(C, 0.0f, 0.5f, kFloat32, 44);
  std::vector<float> running_mean0(C, 0.0f), running_var0(C, 1.0f);
  Buffer xb(total, dtype), yb(total, dtype), dyb(total, dtype), dxb(total, dtype), weight(C, kFloat32), bias(C, kFloat32);
  Buffer running_mean(C, kFloat32), running_var(C, kFloat32), mean(C, kFloat32), invstd(C, kFloat32);
  Buffer partials(splits * 3 * C, kFloat32), merged(4 * C, kFloat32), grad_w(C, kFloat32), grad_b(C, kFloat32);
  Buffer bwd_partials(splits * 4 * C, kFloat32), coefficients(2 * C, kFloat32), mean_residual(C, kFloat32);
  xb.upload(x);
  dyb.upload(dy);
  weight.upload(w);
  bias.upload(b);
  running_mean.upload(running_mean0);
  running_var.upload(running_var0);
  for (Buffer* buffer : {&yb, &dxb, &mean, &invstd, &grad_w, &grad_b, &mean_residual}) buffer->poison();
  const fastgan::BnTensor x_t{xb.ptr, dtype, shape.stride_n(), shape.stride_c(), shape.stride_s()};
  fastgan::BatchNormForwardTrainArgs fwd{};
  fwd.shape = {C, shape.s, P, splits, per_split};
  fwd.x = x_t;
  fwd.y = {yb.ptr, dtype, shape.stride_n(), shape.stride_c(), shape.stride_s()};
  fwd.weight = {weight.ptr, kFloat32};
  fwd.bias = {bias.ptr, kFloat32};
  fwd.running_mean = {running_mean.ptr, kFloat32};
  fwd.running_var = {running_var.ptr, kFloat32};
  fwd.mean = mean.f32();
  fwd.invstd = invstd.f32();
  fwd.mean_residual = mean_residual.f32();  // saved for the backward, as the Python layer does
  fwd.partials = partials.f32();
  fwd.momentum = momentum;
  fwd.eps = eps;
  fwd.slope = slope;
  fastgan::BatchNormBackwardArgs bwd{};
  bwd.shape = fwd.shape;
  bwd.grad_out = {dyb.ptr, dtype, shape.stride_n(), shape.stride_c(), shape.stride_s()};
  bwd.x = x_t;
  bwd.grad_x = {dxb.ptr, dtype, shape.stride_n(), shape.stride_c(), shape.stride_s()};
  bwd.channel.mean = {mean.ptr, kFloat32};
  bwd.channel.mean_residual = mean_residual.f32();
  bwd.channel.stat = {invstd.ptr, kFloat32};
  bwd.channel.weight = {weight.ptr, kFloat32};
  bwd.channel.bias = {bias.ptr, kFloat32};
  bwd.channel.stat_is_invstd = true;
  bwd.channel.eps = eps;
  bwd.grad_weight = {grad_w.ptr, kFloat32};
  bwd.grad_bias = {grad_b.ptr, kFloat32};
  bwd.partials = bwd_partials.f32();
  bwd.coefficients = coefficients.f32();
  bwd.training = true;
  bwd.slope = slope;
  if (synchronised) {  // one device's stages, as the synchronised op runs them
    fastgan::batch_norm_statistics(fwd, merged.f32(), nullptr);
    fastgan::batch_norm_forward_from_statistics(fwd, merged.f32(), 1, nullptr);
    fastgan::batch_norm_backward_sums(bwd, nullptr);
    std::vector<float> sums = coefficients.download();
    for (float& v : sums) v /= static_cast<float>(P);  // the caller's all-reduce and division
    coefficients.upload(sums);
    fastgan::batch_norm_backward_input(bwd, nullptr);
  } else {
    fastgan::batch_norm_forward_train(fwd, nullptr);
    fastgan::batch_norm_backward(bwd, nullptr);
  }
  // float64 reference from the same (rounded) inputs.
  std::vector<double> want_y(total), want_dx(total), want_gw(C), want_gb(C), want_mean(C), want_rv(C);
  for (int64_t ch = 0; ch < C; ++ch) {
    double sum = 0.0;
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t p = 0; p < shape.s; ++p) sum += x[shape.at(i, ch, p)];
    const double mu = sum / P;
    double m2 = 0.0;
    for (int64_t i = 0; i < shape.n; ++i)
      for (int64_t p = 0; p < shape.s; ++p) m2 += (x[shape.at(i, ch, p)] - mu) * (x[shape.at(i, ch, p)] - mu);
    const double inv = 1.0 / std::sqrt(m2 / P + eps);
    want_mean[ch] = mu;
    want_rv[ch] = (1.0 - momentum) * 1.0 + momentum * m2 / (P - 1);
    double sum_dz = 0.0, sum_dz_xhat = 0.0;
    for (int64_t i = 0; i < shape.n; ++i) {
      for (int64_t p = 0; p < shape.s; ++p) {
        const int64_t k = shape.at(i, ch, p);
        const double xhat = (x[k] - mu) * inv, z = w[ch] * xhat + b[ch];
        want_y[k] = z > 0 ? z : slope * z;
        const double dz = z > 0 ? dy[k] : slope * dy[k];
        sum_dz += dz;
        sum_dz_xhat += dz * xhat;
      }
    }
    want_gw[ch] = sum_dz_xhat;
    want_gb[ch] = sum_dz;
    for (int64_t i = 0; i < shape.n; ++i) {
      for (int64_t p = 0; p < shape.s; ++p) {
        const int64_t k = shape.at(i, ch, p);
        const double xhat = (x[k] - mu) * inv, z = w[ch] * xhat + b[ch];
        const double dz = z > 0 ? dy[k] : slope * dy[k];
        want_dx[k] = w[ch] * inv * (dz - sum_dz / P - xhat * sum_dz_xhat / P);
      }
    }
  }
  uint64_t hash = 14695981039346656037ull;
  const double tol = tolerance_for(dtype) * 8;  // x is rounded once more inside (x - mean)
  const Buffer* gots[] = {&yb, &dxb, &grad_w, &grad_b, &mean, &running_var};
  const std::vector<double>* wants[] = {&want_y, &want_dx, &want_gw, &want_gb, &want_mean, &want_rv};
  const char* names[] = {"y", "grad_x", "grad_weight", "grad_bias", "mean", "running_var"};
  for (int k = 0; k < 6; ++k) {
    const auto got = gots[k]->download();
    compare((name + " " + names[k]).c_str(), got, *wants[k], tol);
    hash = checksum_of(got, hash);
  }
  // The residual is what rounding the mean to float32 dropped: mean + residual is the mean
  // beyond float32 (every channel written, none left poisoned).
  const std::vector<float> got_mean = mean.download(), got_residual = mean_residual.download();
  double worst = 0.0;
  for (int64_t ch = 0; ch < C; ++ch) {
    const double error =
        std::fabs((static_cast<double>(got_mean[ch]) - want_mean[ch]) + got_residual[ch]) / std::fabs(want_mean[ch]);
    if (!(error <= worst)) worst = error;  // NaN propagates
  }
  // float32 alone leaves up to 3.2e-8 at |mean| 30; the splits' float32 shifted means a few 1e-9.
  if (!(worst <= 1e-8)) {
    std::printf("  FAIL %s mean + residual: relative error %.3g > 1e-8\n", name.c_str(), worst);
    ++failures;
  }
  hash = checksum_of(got_residual, hash);
  report(name, hash);
}

}  // namespace

int main() {
  try {
    for (int dtype : {kFloat32, kFloat16, kBFloat16}) {
      bce_case(1000, dtype, true, 1);
      bce_case(5003, dtype, true, 3);  // several blocks, then the finishing kernel
      bce_case(777, dtype, false, 2);
      gan_bce_case(300, 257, 2, dtype, 1);
      gan_bce_case(1500, 2049, 1, dtype, 3);
      renyi_case(3, 1000, 0.5f, dtype, 1, nullptr);
      renyi_case(2, 1001, 2.0f, dtype, 4, nullptr);
      renyi_case(2, 999, 0.9f, dtype, 3, nullptr);  // near-uniform weights: the log1p(S/n) branch
      batch_norm_case({3, 5, 37, false}, dtype, 2, false);
      batch_norm_case({4, 40, 9, true}, dtype, 3, false);
      batch_norm_case({2, 8, 16, false}, dtype, 1, true);
    }
    renyi_case(1, 700, 1.0f, kFloat32, 2, nullptr);  // alpha = 1: reverse KL
    const std::vector<float> one_infinite = {0.0f, 0.0f, 0.0f, INFINITY};  // alpha = 2: log 0.75
    renyi_case(1, 4, 2.0f, kFloat32, 1, &one_infinite);
  } catch (const std::exception& error) {
    std::printf("FAIL exception: %s\n", error.what());
    return 2;
  }
  std::printf("%s: %d failed checks\n", failures ? "FAILED" : "OK", failures);
  return failures ? 1 : 0;
}
