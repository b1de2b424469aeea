// CUDA kernels for the Rényi-α divergence reduction (Python side: fastgan/_cuda.py).
//
// Each row holds n logits r; with β = 1 − α, u = β·r (u = 0 when β = 0), m = max u,
// E = Σ exp(u − m), S = Σ expm1(u − m):
//   D_α = −(m + log A)/β,  log A = log1p(S/n) if E > n/2 else log(E) − log n,
// and −Σr/n when β = 0 (α = 1, reverse KL). E and S add one-signed terms and log1p keeps
// log A exact near uniform weights, so D_α is continuous through α = 1. Statistics are
// kept online per thread as (m, E, S, count, Σr) and merged with the rescaling
// E' = E·e^(m−m'), S' = S·e^(m−m') + count·expm1(m−m').
//
// Infinities. Every difference u − m (and m − m') is taken as 0 when the two are equal, also
// when both are the same infinity: values tied with the maximum weigh 1 (the limit of equal
// large logits). Then one u = −∞ (r = +∞ with α > 1, r = −∞ with α < 1) contributes 0 to E
// and −1 to S, so r = [0, 0, 0, +∞], α = 2 gives log 0.75; a row whose maximum m is ±∞ gives
// D_α = ∓∞/β with finite log A ∈ [−log n, 0], which is (logsumexp(β·r) − log n)/(α − 1) with
// torch.logsumexp's infinities; NaN anywhere gives NaN.
//
// Backward: dD/dr_i = −exp(u_i − m)/E = −softmax(β·r)_i, from the saved per-row (m, E); for
// an infinite m the weights are uniform over the entries tied with m (the same limit).
//
// Memory access. The element dtype T is a template parameter (one host dispatch; the
// backward's incoming per-row gradient has its own, a second one). A row is
// walked in 16-byte packs (4 x fp32, 8 x fp16/bf16) when its columns are contiguous and every
// pack is 16-byte aligned (checked once on the host: base pointer, row stride, split width),
// then its last columns one by one; other layouts take the strided walk. A pack updates the
// online statistics once: one rescale by its maximum, then one exp per element.
#include "renyi.h"

#include "device_utils.cuh"

namespace fastgan {
namespace {

constexpr int kThreads = 256;

struct OnlineStats {
  float m;      // running max of u (−inf before the first value)
  float e;      // Σ exp(u − m)
  float s;      // Σ expm1(u − m)
  float count;  // values seen
  float total;  // Σ r
};

__device__ __forceinline__ OnlineStats empty_stats() { return {-INFINITY, 0.0f, 0.0f, 0.0f, 0.0f}; }

// u = β·r, and 0 at β = 0 (α = 1: uniform weights, whatever r is, even ±inf).
__device__ __forceinline__ float scaled(float beta, float r) { return beta == 0.0f ? 0.0f : beta * r; }

// x − m, with equal values (also the same infinity) at distance 0.
__device__ __forceinline__ float offset_from(float x, float m) { return x == m ? 0.0f : x - m; }

// expm1(d) given e = exp(d): a Taylor series below |d| = 1/2, where e − 1 would cancel
// (truncation < 3e-10 relative), else e − 1 (−1 at d = −inf).
__device__ __forceinline__ float expm1_given_exp(float d, float e) {
  if (fabsf(d) >= 0.5f) return e - 1.0f;
  float series = 1.0f / 362880.0f;
  series = fmaf(series, d, 1.0f / 40320.0f);
  series = fmaf(series, d, 1.0f / 5040.0f);
  series = fmaf(series, d, 1.0f / 720.0f);
  series = fmaf(series, d, 1.0f / 120.0f);
  series = fmaf(series, d, 1.0f / 24.0f);
  series = fmaf(series, d, 1.0f / 6.0f);
  series = fmaf(series, d, 0.5f);
  series = fmaf(series, d, 1.0f);
  return series * d;
}

// Adds W values u[k] = β·r[k]: one rescale to the new maximum, then one exp per value.
template <int W>
__device__ __forceinline__ void push(OnlineStats& st, const float (&u)[W], const float (&r)[W]) {
  float pack_max = u[0];
#pragma unroll
  for (int k = 1; k < W; ++k) pack_max = fmaxf(pack_max, u[k]);
  const float m_new = fmaxf(st.m, pack_max);
  const float delta = offset_from(st.m, m_new);  // <= 0; −inf when the first finite value arrives
  const float rescale = expf(delta);
  float e = st.e * rescale;
  float s = st.s * rescale + st.count * expm1_given_exp(delta, rescale);
#pragma unroll
  for (int k = 0; k < W; ++k) {
    const float d = offset_from(u[k], m_new);
    const float t = expf(d);
    e += t;
    s += expm1_given_exp(d, t);
    st.total += r[k];
  }
  st.m = m_new;
  st.e = e;
  st.s = s;
  st.count += static_cast<float>(W);
}

__device__ __forceinline__ OnlineStats merge(const OnlineStats& a, const OnlineStats& b) {
  if (b.count == 0.0f) return a;
  if (a.count == 0.0f) return b;
  const float m = fmaxf(a.m, b.m);
  const float da = offset_from(a.m, m), db = offset_from(b.m, m);
  const float ea = expf(da), eb = expf(db);
  return {m, a.e * ea + b.e * eb,
          a.s * ea + a.count * expm1_given_exp(da, ea) + b.s * eb + b.count * expm1_given_exp(db, eb),
          a.count + b.count, a.total + b.total};
}

__device__ __forceinline__ OnlineStats shfl_down(const OnlineStats& st, int shift) {
  return {__shfl_down_sync(0xffffffffu, st.m, shift), __shfl_down_sync(0xffffffffu, st.e, shift),
          __shfl_down_sync(0xffffffffu, st.s, shift), __shfl_down_sync(0xffffffffu, st.count, shift),
          __shfl_down_sync(0xffffffffu, st.total, shift)};
}

// Merge one OnlineStats per thread across the block; valid in thread 0.
__device__ OnlineStats block_merge(OnlineStats st) {
  __shared__ OnlineStats warp_stats[kThreads / 32];
  for (int shift = 16; shift > 0; shift >>= 1) st = merge(st, shfl_down(st, shift));
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kThreads / 32 ? warp_stats[lane] : empty_stats();
    for (int shift = 16; shift > 0; shift >>= 1) st = merge(st, shfl_down(st, shift));
  }
  return st;
}

__device__ __forceinline__ float finalize(const OnlineStats& st, float n, float beta, float inv_beta, float log_n) {
  if (beta == 0.0f) return -st.total / n;
  const float log_mean = st.e > 0.5f * n ? log1pf(st.s / n) : logf(st.e) - log_n;
  return -(st.m + log_mean) * inv_beta;
}

template <class T>
__device__ __forceinline__ void push_one(OnlineStats& st, float beta, const void* ptr, int64_t offset) {
  const float r[1] = {load_element<T>(ptr, offset)};
  const float u[1] = {scaled(beta, r[0])};
  push<1>(st, u, r);
}

template <class T, bool PACKED>
__global__ void __launch_bounds__(kThreads) renyi_forward_kernel(RenyiForwardArgs args) {
  const int64_t row = blockIdx.x;
  const int64_t split = blockIdx.y;
  const RenyiRows& in = args.input;
  const int64_t begin = split * args.cols_per_split;
  const int64_t end = begin + args.cols_per_split < in.n ? begin + args.cols_per_split : in.n;
  const int64_t row_offset = row * in.row_stride;
  OnlineStats st = empty_stats();
  if (PACKED) {  // col_stride 1; row_offset and begin are multiples of W
    constexpr int W = Pack<T>::kWidth;
    const int64_t packs = (end - begin) / W;
    for (int64_t i = threadIdx.x; i < packs; i += kThreads) {
      float r[W], u[W];
      load_pack<T>(in.ptr, row_offset + begin + i * W, r);
#pragma unroll
      for (int k = 0; k < W; ++k) u[k] = scaled(args.beta, r[k]);
      push<W>(st, u, r);
    }
    const int64_t col = begin + packs * W + threadIdx.x;  // the last (end − begin) mod W columns
    if (col < end) push_one<T>(st, args.beta, in.ptr, row_offset + col);
  } else {
    for (int64_t col = begin + threadIdx.x; col < end; col += kThreads) {
      push_one<T>(st, args.beta, in.ptr, row_offset + col * in.col_stride);
    }
  }
  st = block_merge(st);
  if (threadIdx.x != 0) return;
  if (gridDim.y == 1) {
    store_scalar(args.out, args.out_dtype, row, finalize(st, in.n, args.beta, args.inv_beta, args.log_n));
    args.shift[row] = st.m;
    args.expsum[row] = st.e;
  } else {
    float* base = args.partials + (row * gridDim.y + split) * 5;
    base[0] = st.m;
    base[1] = st.e;
    base[2] = st.s;
    base[3] = st.count;
    base[4] = st.total;
  }
}

__global__ void __launch_bounds__(kThreads) renyi_finish_kernel(RenyiForwardArgs args, int64_t splits) {
  const int64_t row = blockIdx.x;
  OnlineStats st = empty_stats();
  for (int64_t split = threadIdx.x; split < splits; split += kThreads) {
    const float* base = args.partials + (row * splits + split) * 5;
    st = merge(st, OnlineStats{base[0], base[1], base[2], base[3], base[4]});
  }
  st = block_merge(st);
  if (threadIdx.x != 0) return;
  store_scalar(args.out, args.out_dtype, row,
               finalize(st, static_cast<float>(args.input.n), args.beta, args.inv_beta, args.log_n));
  args.shift[row] = st.m;
  args.expsum[row] = st.e;
}

// −g·exp(u − m)/E for one value r of `row`.
__device__ __forceinline__ float renyi_grad(float r, float beta, float g, float shift, float expsum) {
  return -g * expf(offset_from(scaled(beta, r), shift)) / expsum;
}

// T: the logits and their gradient; TG: the incoming per-row gradient.
template <class T, class TG, bool PACKED>
__global__ void __launch_bounds__(kThreads) renyi_backward_kernel(RenyiBackwardArgs args) {
  const RenyiRows& in = args.input;
  const int64_t step = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (PACKED) {  // col_stride 1; one row, or n and row_stride multiples of W
    constexpr int W = Pack<T>::kWidth;
    const int64_t row_packs = in.n / W;
    const int64_t packs = in.rows * row_packs;
    for (int64_t i = first; i < packs; i += step) {
      const int64_t row = i / row_packs;
      const int64_t col = (i - row * row_packs) * W;
      const float g = load_element<TG>(args.grad_out, row * args.grad_out_stride);
      const float shift = args.shift[row], expsum = args.expsum[row];
      float r[W], grad[W];
      load_pack<T>(in.ptr, row * in.row_stride + col, r);
#pragma unroll
      for (int k = 0; k < W; ++k) grad[k] = renyi_grad(r[k], args.beta, g, shift, expsum);
      store_pack<T>(args.grad, row * in.n + col, grad);
    }
    const int64_t col = row_packs * W + first;  // one row: its last n mod W columns
    if (in.rows == 1 && col < in.n) {
      const float r = load_element<T>(in.ptr, col);
      store_element<T>(args.grad, col,
                       renyi_grad(r, args.beta, load_element<TG>(args.grad_out, 0), args.shift[0], args.expsum[0]));
    }
  } else {
    const int64_t total = in.rows * in.n;
    for (int64_t i = first; i < total; i += step) {
      const int64_t row = i / in.n;
      const int64_t col = i - row * in.n;
      const float r = load_element<T>(in.ptr, row * in.row_stride + col * in.col_stride);
      const float g = load_element<TG>(args.grad_out, row * args.grad_out_stride);
      store_element<T>(args.grad, i, renyi_grad(r, args.beta, g, args.shift[row], args.expsum[row]));
    }
  }
}

void require_dtype(int dtype, int expected, const char* op, const char* what) {
  if (dtype != expected) {
    throw std::runtime_error(std::string("fastgan.") + op + ": " + what + " must have the logits' dtype");
  }
}

// Rows walked in 16-byte packs: contiguous columns, an aligned base and row stride, and
// `boundary` (where a walk restarts: the split width, or the gradient's row length) a
// multiple of the pack width.
bool rows_packed(const RenyiRows& in, int64_t boundary) {
  const int width = pack_width(in.dtype);
  return in.col_stride == 1 && aligned16(in.ptr) && (in.rows == 1 || in.row_stride % width == 0) &&
         boundary % width == 0;
}

}  // namespace

void renyi_forward(const RenyiForwardArgs& args, int64_t splits, cudaStream_t stream) {
  const char* op = "ops.renyi_divergence";
  const RenyiRows& in = args.input;
  if (splits < 1 || splits > 65535) {
    throw std::runtime_error("fastgan.ops.renyi_divergence: invalid split count " + std::to_string(splits));
  }
  if (in.rows < 0 || in.n < 1) {
    throw std::runtime_error("fastgan.ops.renyi_divergence: needs n >= 1 columns and rows >= 0, got n = " +
                             std::to_string(in.n) + ", rows = " + std::to_string(in.rows));
  }
  if (args.cols_per_split < 1 || splits * args.cols_per_split < in.n) {
    throw std::runtime_error("fastgan.ops.renyi_divergence: " + std::to_string(splits) + " splits of " +
                             std::to_string(args.cols_per_split) + " columns do not cover the " +
                             std::to_string(in.n) + " columns of a row");
  }
  if (in.rows == 0) return;
  require_dtype(args.out_dtype, in.dtype, op, "the output");
  const bool packed = rows_packed(in, args.cols_per_split);
  const dim3 grid(grid_size(in.rows, op), static_cast<unsigned int>(splits));
  dispatch_dtype(in.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (packed) {
      renyi_forward_kernel<T, true><<<grid, kThreads, 0, stream>>>(args);
    } else {
      renyi_forward_kernel<T, false><<<grid, kThreads, 0, stream>>>(args);
    }
  });
  check_launch(op);
  if (splits > 1) {
    renyi_finish_kernel<<<grid_size(in.rows, op), kThreads, 0, stream>>>(args, splits);
    check_launch(op);
  }
}

void renyi_backward(const RenyiBackwardArgs& args, cudaStream_t stream) {
  const char* op = "ops.renyi_divergence (backward)";
  const RenyiRows& in = args.input;
  const int64_t elements = in.rows * in.n;
  if (elements == 0) return;
  require_dtype(args.grad_dtype, in.dtype, op, "the gradient");
  const bool packed = rows_packed(in, in.rows == 1 ? 0 : in.n) && aligned16(args.grad);
  const int64_t per_block = static_cast<int64_t>(kThreads) * (packed ? pack_width(in.dtype) : 4);
  const int64_t blocks = (elements + per_block - 1) / per_block;
  const unsigned int grid = grid_size(blocks < 65536 * 16 ? blocks : 65536 * 16, op);
  dispatch_dtype(in.dtype, op, [&](auto tag) {
    dispatch_dtype(args.grad_out_dtype, op, [&](auto grad_out_tag) {
      using T = typename decltype(tag)::type;
      using TG = typename decltype(grad_out_tag)::type;
      if (packed) {
        renyi_backward_kernel<T, TG, true><<<grid, kThreads, 0, stream>>>(args);
      } else {
        renyi_backward_kernel<T, TG, false><<<grid, kThreads, 0, stream>>>(args);
      }
    });
  });
  check_launch(op);
}

}  // namespace fastgan
