// pybind11 module fastgan._C_cpu: the native CPU kernels' only file that knows about Python.
//
// Functions take raw addresses (Python ints from Tensor.data_ptr()), dtype codes and sizes;
// validation, allocation and autograd live in Python (fastgan/_native.py, fastgan/ops/).
#include <pybind11/pybind11.h>

#include <dlfcn.h>

#include <cstdint>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "batch_norm.h"
#include "bce.h"
#include "renyi.h"

namespace py = pybind11;

namespace {

double bce_with_logits_forward(uintptr_t input, uintptr_t target, uintptr_t loss, uintptr_t grad, int dtype,
                             int reduction, float grad_scale, int64_t numel, int threads, float label) {
  fastgan::cpu::BceArgs args{reinterpret_cast<const void*>(input), reinterpret_cast<const void*>(target),
                             reinterpret_cast<void*>(loss), reinterpret_cast<void*>(grad), dtype, reduction,
                             grad_scale, numel, threads, label};
  if (numel >= fastgan::cpu::thread_grain()) {
    py::gil_scoped_release no_gil;  // long enough for other Python threads to run meanwhile
    return fastgan::cpu::bce_with_logits_forward(args);
  }
  return fastgan::cpu::bce_with_logits_forward(args);
}

void batch_norm_leaky_relu_forward(uintptr_t x, uintptr_t y, uintptr_t weight, uintptr_t bias,
                                   uintptr_t running_mean, uintptr_t running_var, uintptr_t saved, int64_t batch, int64_t channels, int64_t spatial, int dtype,
                                   int param_dtype, bool channels_last, bool training, double momentum, double eps,
                                   float slope, int threads) {
  auto in = [](uintptr_t address) { return reinterpret_cast<const void*>(address); };
  auto out = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  fastgan::cpu::BatchNormArgs args{in(x), out(y), in(weight), in(bias), out(running_mean), out(running_var),
                                   reinterpret_cast<float*>(saved),
                                   batch, channels, spatial, dtype, param_dtype, channels_last, training, momentum,
                                   eps, slope, threads};
  if (batch * channels * spatial >= fastgan::cpu::batch_norm_thread_grain()) {
    py::gil_scoped_release no_gil;
    fastgan::cpu::batch_norm_leaky_relu_forward(args);
  } else {
    fastgan::cpu::batch_norm_leaky_relu_forward(args);
  }
}

void batch_norm_leaky_relu_backward(uintptr_t grad_out, uintptr_t x, uintptr_t y, uintptr_t weight, uintptr_t bias,
                                    uintptr_t mean, uintptr_t stat, uintptr_t grad_x, uintptr_t grad_weight,
                                    uintptr_t grad_bias, int64_t batch, int64_t channels, int64_t spatial, int dtype,
                                    int param_dtype, bool channels_last, bool training, bool stat_is_var, double eps,
                                    float slope, int threads) {
  auto in = [](uintptr_t address) { return reinterpret_cast<const void*>(address); };
  auto out = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
  fastgan::cpu::BatchNormBackwardArgs args{in(grad_out), in(x), in(y), in(weight), in(bias), in(mean), in(stat),
                                           out(grad_x), out(grad_weight), out(grad_bias), batch, channels, spatial,
                                           dtype, param_dtype, channels_last, training, stat_is_var, eps, slope,
                                           threads};
  if (batch * channels * spatial >= fastgan::cpu::batch_norm_thread_grain()) {
    py::gil_scoped_release no_gil;
    fastgan::cpu::batch_norm_leaky_relu_backward(args);
  } else {
    fastgan::cpu::batch_norm_leaky_relu_backward(args);
  }
}

py::tuple renyi_forward(uintptr_t log_ratio, int dtype, int64_t n, float beta, int threads) {
  const fastgan::cpu::RenyiArgs args{reinterpret_cast<const void*>(log_ratio), dtype, n, beta, threads};
  fastgan::cpu::RenyiSums sums;
  if (n >= fastgan::cpu::renyi_thread_grain()) {
    py::gil_scoped_release no_gil;
    sums = fastgan::cpu::renyi_forward(args);
  } else {
    sums = fastgan::cpu::renyi_forward(args);
  }
  return py::make_tuple(sums.shift, sums.expsum, sums.finite);
}

void renyi_backward(uintptr_t log_ratio, uintptr_t grad, int dtype, int64_t n, float beta, float shift, float scale,
                    int threads) {
  const fastgan::cpu::RenyiArgs args{reinterpret_cast<const void*>(log_ratio), dtype, n, beta, threads};
  if (n >= fastgan::cpu::renyi_thread_grain()) {
    py::gil_scoped_release no_gil;
    fastgan::cpu::renyi_backward(args, reinterpret_cast<void*>(grad), shift, scale);
  } else {
    fastgan::cpu::renyi_backward(args, reinterpret_cast<void*>(grad), shift, scale);
  }
}

bool renyi_columns_forward(uintptr_t log_ratio, int dtype, int64_t n, int64_t g, float beta, uintptr_t shift,
                           uintptr_t expsum, int threads) {
  const fastgan::cpu::RenyiColumnsArgs args{reinterpret_cast<const void*>(log_ratio), dtype, n, g, beta, threads};
  auto* shift_out = reinterpret_cast<float*>(shift);
  auto* expsum_out = reinterpret_cast<double*>(expsum);
  if (n * g >= fastgan::cpu::renyi_thread_grain()) {
    py::gil_scoped_release no_gil;
    return fastgan::cpu::renyi_columns_forward(args, shift_out, expsum_out);
  }
  return fastgan::cpu::renyi_columns_forward(args, shift_out, expsum_out);
}

void renyi_columns_backward(uintptr_t log_ratio, uintptr_t grad, int dtype, int64_t n, int64_t g, float beta,
                            uintptr_t shift, uintptr_t scale, int threads) {
  const fastgan::cpu::RenyiColumnsArgs args{reinterpret_cast<const void*>(log_ratio), dtype, n, g, beta, threads};
  auto* shift_in = reinterpret_cast<const float*>(shift);
  auto* scale_in = reinterpret_cast<const float*>(scale);
  if (n * g >= fastgan::cpu::renyi_thread_grain()) {
    py::gil_scoped_release no_gil;
    fastgan::cpu::renyi_columns_backward(args, reinterpret_cast<void*>(grad), shift_in, scale_in);
  } else {
    fastgan::cpu::renyi_columns_backward(args, reinterpret_cast<void*>(grad), shift_in, scale_in);
  }
}

// The file of the shared library that holds `address` ("" if none).
std::string library_of(uintptr_t address) {
  Dl_info info;
  if (address == 0 || dladdr(reinterpret_cast<void*>(address), &info) == 0 || info.dli_fname == nullptr) return "";
  return info.dli_fname;
}

// The OpenMP runtime this extension's parallel regions run on ("" without OpenMP): the
// library its omp_get_num_threads resolved to.
std::string openmp_runtime() {
#if defined(_OPENMP)
  return library_of(reinterpret_cast<uintptr_t>(&omp_get_num_threads));
#else
  return "";
#endif
}

// The instruction set the kernels' target_clones resolve to on this machine.
std::string instruction_set() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2, FMA)";
  return "x86-64 baseline (SSE2)";
#else
  return "the compiler's default target";
#endif
}

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "fastgan's native CPU kernels (csrc/cpu)";
  m.def("bce_with_logits_forward", &bce_with_logits_forward, "One-pass BCE-with-logits loss and gradient; returns the reduced loss in float64 (target 0: every label is "
        "`label`; loss 0 with a reduction: not stored)",
        py::arg("input"), py::arg("target"), py::arg("loss"), py::arg("grad"), py::arg("dtype"), py::arg("reduction"),
        py::arg("grad_scale"), py::arg("numel"), py::arg("threads"), py::arg("label") = 0.0f);
  m.def("batch_norm_leaky_relu_forward", &batch_norm_leaky_relu_forward,
        "BatchNorm + LeakyReLU forward of float32/bfloat16 (N, C, S) or channels_last (N, S, C)", py::arg("x"),
        py::arg("y"), py::arg("weight"), py::arg("bias"), py::arg("running_mean"), py::arg("running_var"),
        py::arg("saved"), py::arg("batch"), py::arg("channels"), py::arg("spatial"),
        py::arg("dtype"), py::arg("param_dtype"), py::arg("channels_last"), py::arg("training"), py::arg("momentum"), py::arg("eps"), py::arg("slope"), py::arg("threads"));
  m.def("batch_norm_leaky_relu_backward", &batch_norm_leaky_relu_backward,
        "BatchNorm + LeakyReLU backward of float32/bfloat16 (N, C, S) or channels_last (N, S, C)",
        py::arg("grad_out"), py::arg("x"), py::arg("y"), py::arg("weight"), py::arg("bias"), py::arg("mean"),
        py::arg("stat"), py::arg("grad_x"), py::arg("grad_weight"), py::arg("grad_bias"), py::arg("batch"),
        py::arg("channels"), py::arg("spatial"), py::arg("dtype"), py::arg("param_dtype"), py::arg("channels_last"),
        py::arg("training"), py::arg("stat_is_var"), py::arg("eps"), py::arg("slope"), py::arg("threads"));
  m.def("renyi_forward", &renyi_forward,
        "(m, E, finite) of one row of logits r: m = max(beta * r), E = sum(exp(beta * r - m))", py::arg("log_ratio"),
        py::arg("dtype"), py::arg("n"), py::arg("beta"), py::arg("threads"));
  m.def("renyi_backward", &renyi_backward, "grad = scale * exp(beta * r - shift) over one row of logits",
        py::arg("log_ratio"), py::arg("grad"), py::arg("dtype"), py::arg("n"), py::arg("beta"), py::arg("shift"),
        py::arg("scale"), py::arg("threads"));
  m.def("renyi_columns_forward", &renyi_columns_forward,
        "Per column of an (n, g) row-major r: shift = max(beta * r), expsum = sum(exp(beta * r - shift)); "
        "false where some beta * r is not finite",
        py::arg("log_ratio"), py::arg("dtype"), py::arg("n"), py::arg("g"), py::arg("beta"), py::arg("shift"),
        py::arg("expsum"), py::arg("threads"));
  m.def("renyi_columns_backward", &renyi_columns_backward,
        "grad = scale * exp(beta * r - shift) per column of an (n, g) row-major r", py::arg("log_ratio"),
        py::arg("grad"), py::arg("dtype"), py::arg("n"), py::arg("g"), py::arg("beta"), py::arg("shift"),
        py::arg("scale"), py::arg("threads"));
  m.def("renyi_thread_grain", &fastgan::cpu::renyi_thread_grain,
        "Elements per thread before the Renyi kernels use another thread");
  m.def("thread_grain", &fastgan::cpu::thread_grain, "Elements per thread before the BCE kernel uses another thread");
  m.def("batch_norm_thread_grain", &fastgan::cpu::batch_norm_thread_grain,
        "Elements per thread before the block kernel uses another thread");
  m.def("openmp_runtime", &openmp_runtime, "The OpenMP runtime library the kernels' threads come from");
  m.def("library_of", &library_of, "The shared library file holding an address", py::arg("address"));
  m.def("build_info", [] {
    py::dict info;
    info["instruction_set"] = instruction_set();
    info["compiler"] = std::string(__VERSION__);
#if defined(_OPENMP)
    info["openmp"] = true;  // run_parallel on the OpenMP runtime's pool (csrc/cpu/parallel.h)
#else
    info["openmp"] = false;
#endif
    return info;
  });
}
