// pybind11 module fastgan._C: the only file that knows about Python.
//
// Every function takes raw device addresses (Python ints from Tensor.data_ptr()), dtype
// codes, sizes/strides and the CUDA stream handle (torch.cuda.current_stream().cuda_stream);
// validation, allocation and autograd live in Python (fastgan/_cuda.py, fastgan/ops/).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "bce.h"
#include "common.h"
#include "renyi.h"

namespace py = pybind11;

#ifndef FASTGAN_CUDA_ARCHS
#define FASTGAN_CUDA_ARCHS "unknown"
#endif

namespace {

using Strides = std::array<int64_t, 4>;

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

py::dict build_info() {
  py::dict info;
  info["cuda_runtime_version"] = CUDART_VERSION;
  info["cuda_archs"] = FASTGAN_CUDA_ARCHS;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastgan CUDA kernels (raw pointers, dtype codes and streams; no PyTorch headers)";
  m.def("build_info", &build_info, "How this extension was compiled: CUDA runtime version, target architectures.");
  m.def("bce_with_logits_forward", &bce_with_logits_forward, "Fused BCE-with-logits forward (+ input gradient).");
  m.def("gan_bce_forward", &gan_bce_forward, "Both GAN BCE losses and their gradients in one launch.");
  m.def("renyi_forward", &renyi_forward, "Rényi-α divergence per row, with the per-row (m, E) for the backward.");
  m.def("renyi_backward", &renyi_backward, "Gradient −g·softmax(β·r) of the Rényi-α divergence.");
}
