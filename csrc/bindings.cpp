// pybind11 module fastgan._C: the only file that knows about Python.
//
// Every function takes raw device addresses (Python ints from Tensor.data_ptr()), dtype
// codes, sizes/strides and the CUDA stream handle (torch.cuda.current_stream().cuda_stream);
// validation, allocation and autograd live in Python (fastgan/_cuda.py, fastgan/ops/).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "batch_norm.h"
#include "bce.h"
#include "common.h"
#include "renyi.h"

namespace py = pybind11;

#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS "unknown"
#endif

namespace {

using Strides = std::array<int64_t, 4>;
using Strides3 = std::array<int64_t, 3>;  // (stride_n, stride_c, stride_s) of an (N, C, S) view

fastgan::StridedOperand operand(uintptr_t ptr, int dtype, const Strides& strides) {
  fastgan::StridedOperand result{reinterpret_cast<const void*>(ptr), dtype, {}};
  for (int d = 0; d < 4; ++d) result.strides[d] = strides[d];
  return result;
}

cudaStream_t as_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

void bce_with_logits_forward(uintptr_t input, int input_dtype, const Strides& input_strides, uintptr_t target,
                             int target_dtype, const Strides& target_strides, uintptr_t weight, int weight_dtype,
                             const Strides& weight_strides, uintptr_t pos_weight, int pos_weight_dtype,
                             const Strides& pos_weight_strides, uintptr_t loss, int loss_dtype, uintptr_t partials,
                             uintptr_t grad, int grad_dtype, float target_value, float grad_scale, float loss_scale,
                             int64_t numel, const Strides& sizes, bool contiguous, bool reduce, int64_t num_blocks,
                             uintptr_t stream) {
  fastgan::BceForwardArgs args{};
  args.input = operand(input, input_dtype, input_strides);
  args.target = operand(target, target_dtype, target_strides);
  args.weight = operand(weight, weight_dtype, weight_strides);
  args.pos_weight = operand(pos_weight, pos_weight_dtype, pos_weight_strides);
  args.loss = reinterpret_cast<void*>(loss);
  args.loss_dtype = loss_dtype;
  args.partials = reinterpret_cast<float*>(partials);
  args.grad = reinterpret_cast<void*>(grad);
  args.grad_dtype = grad_dtype;
  args.target_value = target_value;
  args.grad_scale = grad_scale;
  args.loss_scale = loss_scale;
  args.numel = numel;
  for (int d = 0; d < 4; ++d) args.sizes[d] = sizes[d];
  args.contiguous = contiguous;
  fastgan::bce_with_logits_forward(args, num_blocks, reduce, as_stream(stream));
}

void gan_bce_forward(uintptr_t real, int real_dtype, int64_t n_real, int64_t real_stride, uintptr_t fake,
                     int fake_dtype, int64_t n_fake, int64_t fake_stride,
                     uintptr_t d_loss, int d_loss_dtype, uintptr_t g_loss, int g_loss_dtype, uintptr_t partials,
                     uintptr_t grad_real, uintptr_t grad_fake_d, uintptr_t grad_fake_g, float real_target,
                     float fake_target, float inv_n_real, float inv_n_fake, int64_t num_blocks, uintptr_t stream) {
  fastgan::GanBceForwardArgs args{};
  args.real = reinterpret_cast<const void*>(real);
  args.real_dtype = real_dtype;
  args.fake = reinterpret_cast<const void*>(fake);
  args.fake_dtype = fake_dtype;
  args.d_loss = reinterpret_cast<void*>(d_loss);
  args.d_loss_dtype = d_loss_dtype;
  args.g_loss = reinterpret_cast<void*>(g_loss);
  args.g_loss_dtype = g_loss_dtype;
  args.partials = reinterpret_cast<float*>(partials);
  args.grad_real = reinterpret_cast<void*>(grad_real);
  args.grad_fake_d = reinterpret_cast<void*>(grad_fake_d);
  args.grad_fake_g = reinterpret_cast<void*>(grad_fake_g);
  args.real_target = real_target;
  args.fake_target = fake_target;
  args.inv_n_real = inv_n_real;
  args.inv_n_fake = inv_n_fake;
  args.n_real = n_real;
  args.n_fake = n_fake;
  args.real_stride = real_stride;
  args.fake_stride = fake_stride;
  fastgan::gan_bce_forward(args, num_blocks, as_stream(stream));
}

fastgan::RenyiRows renyi_rows(uintptr_t ptr, int dtype, int64_t rows, int64_t n, int64_t row_stride,
                               int64_t col_stride) {
  return {reinterpret_cast<const void*>(ptr), dtype, rows, n, row_stride, col_stride};
}

void renyi_forward(uintptr_t input, int input_dtype, int64_t rows, int64_t n, int64_t row_stride, int64_t col_stride,
                   uintptr_t out, int out_dtype, uintptr_t shift, uintptr_t expsum, uintptr_t partials, float beta,
                   float inv_beta, float log_n, int64_t cols_per_split, int64_t splits, uintptr_t stream) {
  fastgan::RenyiForwardArgs args{};
  args.input = renyi_rows(input, input_dtype, rows, n, row_stride, col_stride);
  args.out = reinterpret_cast<void*>(out);
  args.out_dtype = out_dtype;
  args.shift = reinterpret_cast<float*>(shift);
  args.expsum = reinterpret_cast<float*>(expsum);
  args.partials = reinterpret_cast<float*>(partials);
  args.beta = beta;
  args.inv_beta = inv_beta;
  args.log_n = log_n;
  args.cols_per_split = cols_per_split;
  fastgan::renyi_forward(args, splits, as_stream(stream));
}

void renyi_backward(uintptr_t input, int input_dtype, int64_t rows, int64_t n, int64_t row_stride,
                    int64_t col_stride, uintptr_t grad_out, int grad_out_dtype, int64_t grad_out_stride,
                    uintptr_t shift, uintptr_t expsum, uintptr_t grad, int grad_dtype, float beta, uintptr_t stream) {
  fastgan::RenyiBackwardArgs args{};
  args.input = renyi_rows(input, input_dtype, rows, n, row_stride, col_stride);
  args.grad_out = reinterpret_cast<const void*>(grad_out);
  args.grad_out_dtype = grad_out_dtype;
  args.grad_out_stride = grad_out_stride;
  args.shift = reinterpret_cast<const float*>(shift);
  args.expsum = reinterpret_cast<const float*>(expsum);
  args.grad = reinterpret_cast<void*>(grad);
  args.grad_dtype = grad_dtype;
  args.beta = beta;
  fastgan::renyi_backward(args, as_stream(stream));
}

fastgan::BnTensor bn_tensor(uintptr_t ptr, int dtype, const Strides3& strides) {
  return {reinterpret_cast<void*>(ptr), dtype, strides[0], strides[1], strides[2]};
}

fastgan::BnVector bn_vector(uintptr_t ptr, int dtype) { return {reinterpret_cast<void*>(ptr), dtype}; }

fastgan::BnShape bn_shape(int64_t n, int64_t c, int64_t s, int64_t splits, int64_t positions_per_split) {
  return {c, s, n * s, splits, positions_per_split};
}

fastgan::BatchNormForwardTrainArgs forward_train_args(
    uintptr_t x, int x_dtype, const Strides3& x_strides, uintptr_t y, int y_dtype, const Strides3& y_strides, int64_t n,
    int64_t c, int64_t s, uintptr_t weight, int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t running_mean,
    int running_mean_dtype, uintptr_t running_var, int running_var_dtype, uintptr_t num_batches_tracked, uintptr_t mean,
    uintptr_t invstd, uintptr_t mean_residual, uintptr_t partials, int64_t splits, int64_t positions_per_split,
    float momentum, bool cumulative, float eps, float slope) {
  fastgan::BatchNormForwardTrainArgs args{};
  args.shape = bn_shape(n, c, s, splits, positions_per_split);
  args.x = bn_tensor(x, x_dtype, x_strides);
  args.y = bn_tensor(y, y_dtype, y_strides);
  args.weight = bn_vector(weight, weight_dtype);
  args.bias = bn_vector(bias, bias_dtype);
  args.running_mean = bn_vector(running_mean, running_mean_dtype);
  args.running_var = bn_vector(running_var, running_var_dtype);
  args.num_batches_tracked = reinterpret_cast<const int64_t*>(num_batches_tracked);
  args.mean = reinterpret_cast<float*>(mean);
  args.invstd = reinterpret_cast<float*>(invstd);
  args.mean_residual = reinterpret_cast<float*>(mean_residual);
  args.partials = reinterpret_cast<float*>(partials);
  args.momentum = momentum;
  args.cumulative = cumulative;
  args.eps = eps;
  args.slope = slope;
  return args;
}

void batch_norm_forward_train(uintptr_t x, int x_dtype, const Strides3& x_strides, uintptr_t y, int y_dtype,
                              const Strides3& y_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                              int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t running_mean,
                              int running_mean_dtype, uintptr_t running_var, int running_var_dtype,
                              uintptr_t num_batches_tracked, uintptr_t mean, uintptr_t invstd, uintptr_t mean_residual,
                              uintptr_t partials, int64_t splits, int64_t positions_per_split, float momentum,
                              bool cumulative, float eps, float slope, uintptr_t stream) {
  fastgan::batch_norm_forward_train(
      forward_train_args(x, x_dtype, x_strides, y, y_dtype, y_strides, n, c, s, weight, weight_dtype, bias, bias_dtype,
                         running_mean, running_mean_dtype, running_var, running_var_dtype, num_batches_tracked, mean,
                         invstd, mean_residual, partials, splits, positions_per_split, momentum, cumulative, eps,
                         slope),
      as_stream(stream));
}

void batch_norm_statistics(uintptr_t x, int x_dtype, const Strides3& x_strides, int64_t n, int64_t c, int64_t s,
                           uintptr_t partials, uintptr_t merged, int64_t splits, int64_t positions_per_split,
                           uintptr_t stream) {
  fastgan::BatchNormForwardTrainArgs args{};
  args.shape = bn_shape(n, c, s, splits, positions_per_split);
  args.x = bn_tensor(x, x_dtype, x_strides);
  args.partials = reinterpret_cast<float*>(partials);
  fastgan::batch_norm_statistics(args, reinterpret_cast<float*>(merged), as_stream(stream));
}

void batch_norm_forward_from_statistics(uintptr_t x, int x_dtype, const Strides3& x_strides, uintptr_t y, int y_dtype,
                                        const Strides3& y_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                                        int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t running_mean,
                                        int running_mean_dtype, uintptr_t running_var, int running_var_dtype,
                                        uintptr_t num_batches_tracked, uintptr_t mean, uintptr_t invstd,
                                        uintptr_t mean_residual, uintptr_t statistics, int64_t rows, float momentum,
                                        bool cumulative, float eps, float slope, uintptr_t stream) {
  // No reductions over x here: the split fields are unused (1, 1).
  fastgan::batch_norm_forward_from_statistics(
      forward_train_args(x, x_dtype, x_strides, y, y_dtype, y_strides, n, c, s, weight, weight_dtype, bias, bias_dtype,
                         running_mean, running_mean_dtype, running_var, running_var_dtype, num_batches_tracked, mean,
                         invstd, mean_residual, 0, 1, 1, momentum, cumulative, eps, slope),
      reinterpret_cast<const float*>(statistics), rows, as_stream(stream));
}

void batch_norm_forward_eval(uintptr_t x, int x_dtype, const Strides3& x_strides, uintptr_t y, int y_dtype,
                             const Strides3& y_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                             int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t running_mean,
                             int running_mean_dtype, uintptr_t running_var, int running_var_dtype, float eps,
                             float slope, uintptr_t stream) {
  fastgan::BatchNormForwardEvalArgs args{};
  args.shape = bn_shape(n, c, s, 1, 1);  // no reductions
  args.x = bn_tensor(x, x_dtype, x_strides);
  args.y = bn_tensor(y, y_dtype, y_strides);
  args.weight = bn_vector(weight, weight_dtype);
  args.bias = bn_vector(bias, bias_dtype);
  args.running_mean = bn_vector(running_mean, running_mean_dtype);
  args.running_var = bn_vector(running_var, running_var_dtype);
  args.eps = eps;
  args.slope = slope;
  fastgan::batch_norm_forward_eval(args, as_stream(stream));
}

fastgan::BatchNormBackwardArgs backward_args(
    uintptr_t grad_out, int grad_out_dtype, const Strides3& grad_out_strides, uintptr_t x, int x_dtype,
    const Strides3& x_strides, uintptr_t grad_x, int grad_x_dtype, const Strides3& grad_x_strides, int64_t n, int64_t c,
    int64_t s, uintptr_t weight, int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t mean, int mean_dtype,
    uintptr_t mean_residual, uintptr_t stat, int stat_dtype, bool stat_is_invstd, uintptr_t grad_weight,
    int grad_weight_dtype, uintptr_t grad_bias, int grad_bias_dtype, uintptr_t partials, uintptr_t coefficients,
    int64_t splits, int64_t positions_per_split, bool training, float eps, float slope) {
  fastgan::BatchNormBackwardArgs args{};
  args.shape = bn_shape(n, c, s, splits, positions_per_split);
  args.grad_out = bn_tensor(grad_out, grad_out_dtype, grad_out_strides);
  args.x = bn_tensor(x, x_dtype, x_strides);
  args.grad_x = bn_tensor(grad_x, grad_x_dtype, grad_x_strides);
  args.channel.mean = bn_vector(mean, mean_dtype);
  args.channel.mean_residual = reinterpret_cast<const float*>(mean_residual);
  args.channel.stat = bn_vector(stat, stat_dtype);
  args.channel.weight = bn_vector(weight, weight_dtype);
  args.channel.bias = bn_vector(bias, bias_dtype);
  args.channel.stat_is_invstd = stat_is_invstd;
  args.channel.eps = eps;
  args.grad_weight = bn_vector(grad_weight, grad_weight_dtype);
  args.grad_bias = bn_vector(grad_bias, grad_bias_dtype);
  args.partials = reinterpret_cast<float*>(partials);
  args.coefficients = reinterpret_cast<float*>(coefficients);
  args.training = training;
  args.slope = slope;
  return args;
}

void batch_norm_backward(uintptr_t grad_out, int grad_out_dtype, const Strides3& grad_out_strides, uintptr_t x,
                         int x_dtype, const Strides3& x_strides, uintptr_t grad_x, int grad_x_dtype,
                         const Strides3& grad_x_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                         int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t mean, int mean_dtype,
                         uintptr_t mean_residual, uintptr_t stat, int stat_dtype, bool stat_is_invstd,
                         uintptr_t grad_weight, int grad_weight_dtype, uintptr_t grad_bias, int grad_bias_dtype,
                         uintptr_t partials, uintptr_t coefficients, int64_t splits, int64_t positions_per_split,
                         bool training, float eps, float slope, uintptr_t stream) {
  fastgan::batch_norm_backward(
      backward_args(grad_out, grad_out_dtype, grad_out_strides, x, x_dtype, x_strides, grad_x, grad_x_dtype,
                    grad_x_strides, n, c, s, weight, weight_dtype, bias, bias_dtype, mean, mean_dtype, mean_residual,
                    stat, stat_dtype, stat_is_invstd, grad_weight, grad_weight_dtype, grad_bias, grad_bias_dtype,
                    partials, coefficients, splits, positions_per_split, training, eps, slope),
      as_stream(stream));
}

constexpr Strides3 kNoStrides3{0, 0, 0};

// The synchronised backward's stages: the saved batch statistics (fp32 mean, invstd), training.
void batch_norm_backward_sums(uintptr_t grad_out, int grad_out_dtype, const Strides3& grad_out_strides, uintptr_t x,
                              int x_dtype, const Strides3& x_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                              int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t mean, uintptr_t mean_residual,
                              uintptr_t invstd, uintptr_t grad_weight, int grad_weight_dtype, uintptr_t grad_bias,
                              int grad_bias_dtype, uintptr_t partials, uintptr_t sums, int64_t splits,
                              int64_t positions_per_split, float eps, float slope, uintptr_t stream) {
  fastgan::batch_norm_backward_sums(
      backward_args(grad_out, grad_out_dtype, grad_out_strides, x, x_dtype, x_strides, 0, fastgan::kFloat32,
                    kNoStrides3, n, c, s, weight, weight_dtype, bias, bias_dtype, mean, fastgan::kFloat32,
                    mean_residual, invstd, fastgan::kFloat32, true, grad_weight, grad_weight_dtype, grad_bias,
                    grad_bias_dtype, partials, sums, splits, positions_per_split, true, eps, slope),
      as_stream(stream));
}

void batch_norm_backward_input(uintptr_t grad_out, int grad_out_dtype, const Strides3& grad_out_strides, uintptr_t x,
                               int x_dtype, const Strides3& x_strides, uintptr_t grad_x, int grad_x_dtype,
                               const Strides3& grad_x_strides, int64_t n, int64_t c, int64_t s, uintptr_t weight,
                               int weight_dtype, uintptr_t bias, int bias_dtype, uintptr_t mean,
                               uintptr_t mean_residual, uintptr_t invstd, uintptr_t coefficients, float eps,
                               float slope, uintptr_t stream) {
  fastgan::batch_norm_backward_input(
      backward_args(grad_out, grad_out_dtype, grad_out_strides, x, x_dtype, x_strides, grad_x, grad_x_dtype,
                    grad_x_strides, n, c, s, weight, weight_dtype, bias, bias_dtype, mean, fastgan::kFloat32,
                    mean_residual, invstd, fastgan::kFloat32, true, 0, fastgan::kFloat32, 0, fastgan::kFloat32, 0,
                    coefficients, 1, 1, true, eps, slope),
      as_stream(stream));
}

py::dict build_info() {
  py::dict info;
  info["cuda_runtime_version"] = CUDART_VERSION;
  info["cuda_archs"] = FASTGAN_CUDA_ARCHS;
  return info;
}

}  // namespace

// The emulated CPU build (fastgan/_emulation.py) compiles this file as fastgan._C_emulated.
#ifndef FASTGAN_MODULE_NAME
#define FASTGAN_MODULE_NAME _C
#endif

PYBIND11_MODULE(FASTGAN_MODULE_NAME, m) {
  m.doc() = "fastgan CUDA kernels (raw pointers, dtype codes and streams; no PyTorch headers)";
  m.def("build_info", &build_info, "How this extension was compiled: CUDA runtime version, target architectures.");
  m.def("bce_with_logits_forward", &bce_with_logits_forward, "Fused BCE-with-logits forward (+ input gradient).");
  m.def("gan_bce_forward", &gan_bce_forward, "Both GAN BCE losses and their gradients in one launch.");
  m.def("renyi_forward", &renyi_forward, "Rényi-α divergence per row, with the per-row (m, E) for the backward.");
  m.def("renyi_backward", &renyi_backward, "Gradient −g·softmax(β·r) of the Rényi-α divergence.");
  m.def("batch_norm_forward_train", &batch_norm_forward_train,
        "BatchNorm + LeakyReLU training forward: split statistics, finalize (running statistics in place), "
        "elementwise pass.",
        py::arg("x"), py::arg("x_dtype"), py::arg("x_strides"), py::arg("y"), py::arg("y_dtype"),
        py::arg("y_strides"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"),
        py::arg("bias"), py::arg("bias_dtype"), py::arg("running_mean"), py::arg("running_mean_dtype"),
        py::arg("running_var"), py::arg("running_var_dtype"), py::arg("num_batches_tracked"), py::arg("mean"),
        py::arg("invstd"), py::arg("mean_residual"), py::arg("partials"), py::arg("splits"),
        py::arg("positions_per_split"), py::arg("momentum"), py::arg("cumulative"), py::arg("eps"), py::arg("slope"),
        py::arg("stream"));
  m.def("batch_norm_forward_eval", &batch_norm_forward_eval,
        "BatchNorm + LeakyReLU eval forward: one elementwise pass with the running statistics.",
        py::arg("x"), py::arg("x_dtype"), py::arg("x_strides"), py::arg("y"), py::arg("y_dtype"),
        py::arg("y_strides"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"),
        py::arg("bias"), py::arg("bias_dtype"), py::arg("running_mean"), py::arg("running_mean_dtype"),
        py::arg("running_var"), py::arg("running_var_dtype"), py::arg("eps"), py::arg("slope"), py::arg("stream"));
  m.def("batch_norm_backward", &batch_norm_backward,
        "BatchNorm + LeakyReLU backward: split sums, finalize (grad_weight, grad_bias), input gradient.",
        py::arg("grad_out"), py::arg("grad_out_dtype"), py::arg("grad_out_strides"), py::arg("x"), py::arg("x_dtype"),
        py::arg("x_strides"), py::arg("grad_x"), py::arg("grad_x_dtype"), py::arg("grad_x_strides"), py::arg("n"),
        py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"), py::arg("bias"), py::arg("bias_dtype"),
        py::arg("mean"), py::arg("mean_dtype"), py::arg("mean_residual"), py::arg("stat"), py::arg("stat_dtype"),
        py::arg("stat_is_invstd"), py::arg("grad_weight"), py::arg("grad_weight_dtype"), py::arg("grad_bias"),
        py::arg("grad_bias_dtype"), py::arg("partials"), py::arg("coefficients"), py::arg("splits"),
        py::arg("positions_per_split"), py::arg("training"), py::arg("eps"), py::arg("slope"), py::arg("stream"));
  m.def("batch_norm_statistics", &batch_norm_statistics,
        "Synchronised BatchNorm, forward stage 1: split statistics merged into this device's (count, mean, M2).",
        py::arg("x"), py::arg("x_dtype"), py::arg("x_strides"), py::arg("n"), py::arg("c"), py::arg("s"),
        py::arg("partials"), py::arg("merged"), py::arg("splits"), py::arg("positions_per_split"), py::arg("stream"));
  m.def("batch_norm_forward_from_statistics", &batch_norm_forward_from_statistics,
        "Synchronised BatchNorm, forward stage 2: merge every device's statistics, finalize (running statistics "
        "in place), elementwise pass.",
        py::arg("x"), py::arg("x_dtype"), py::arg("x_strides"), py::arg("y"), py::arg("y_dtype"), py::arg("y_strides"),
        py::arg("n"), py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"), py::arg("bias"),
        py::arg("bias_dtype"), py::arg("running_mean"), py::arg("running_mean_dtype"), py::arg("running_var"),
        py::arg("running_var_dtype"), py::arg("num_batches_tracked"), py::arg("mean"), py::arg("invstd"),
        py::arg("mean_residual"), py::arg("statistics"), py::arg("rows"), py::arg("momentum"), py::arg("cumulative"),
        py::arg("eps"), py::arg("slope"), py::arg("stream"));
  m.def("batch_norm_backward_sums", &batch_norm_backward_sums,
        "Synchronised BatchNorm, backward stage 1: this device's grad_weight, grad_bias and raw sums.",
        py::arg("grad_out"), py::arg("grad_out_dtype"), py::arg("grad_out_strides"), py::arg("x"), py::arg("x_dtype"),
        py::arg("x_strides"), py::arg("n"), py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"),
        py::arg("bias"), py::arg("bias_dtype"), py::arg("mean"), py::arg("mean_residual"), py::arg("invstd"),
        py::arg("grad_weight"), py::arg("grad_weight_dtype"), py::arg("grad_bias"), py::arg("grad_bias_dtype"),
        py::arg("partials"), py::arg("sums"), py::arg("splits"), py::arg("positions_per_split"), py::arg("eps"),
        py::arg("slope"), py::arg("stream"));
  m.def("batch_norm_backward_input", &batch_norm_backward_input,
        "Synchronised BatchNorm, backward stage 2: the input gradient from the global coefficients.",
        py::arg("grad_out"), py::arg("grad_out_dtype"), py::arg("grad_out_strides"), py::arg("x"), py::arg("x_dtype"),
        py::arg("x_strides"), py::arg("grad_x"), py::arg("grad_x_dtype"), py::arg("grad_x_strides"), py::arg("n"),
        py::arg("c"), py::arg("s"), py::arg("weight"), py::arg("weight_dtype"), py::arg("bias"), py::arg("bias_dtype"),
        py::arg("mean"), py::arg("mean_residual"), py::arg("invstd"), py::arg("coefficients"), py::arg("eps"),
        py::arg("slope"), py::arg("stream"));
}
