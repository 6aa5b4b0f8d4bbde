// Projection off k directions on CUDA: one block per sample. Math: csrc/project_out/project_out.h.
//
// forward:  (1) c_j = Σ_n V[n, j] x[n]: warp w owns columns j = w, w + warps, ...; lanes stride n and
//               a warp shuffle reduces (deterministic, no atomics); ‖x‖² by a block reduction.
//           (2) y = x - V c into the fp32/fp64 scratch row, ‖y‖² by a block reduction.
//           (3) out = s y in the input dtype.
// backward: (1) y recomputed into scratch, ds = g·y;  (2) gy overwrites y in scratch;
//           (3) d = Vᵀ gy, warp per column;  (4) dx and dV, one thread per row n.
// A sample's V (N·K elements) is read 2–3 times; per CLARID image it is ~100 KB, so the re-reads
// come from L2. V may have any strides (column-major from a QR reads coalesced in columns_dot).
#include <cuda_runtime.h>

#include "../common/kernel.h"  // DtypeCode
#include "project_out.h"
#include "../common/element.cuh"  // load, store, warp_sum

namespace clarep_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// Sum over the block; every thread gets the result. `shared` holds kWarps values.
template <typename Acc>
__device__ Acc block_sum(Acc value, Acc* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = warp_sum(value);
  __syncthreads();  // shared may still be read from a previous call
  if (lane == 0) shared[warp] = value;
  __syncthreads();
  Acc total = 0;
  for (int w = 0; w < kWarps; ++w) total += shared[w];
  return total;
}

// out[j] = Σ_n V[n, j] v[n] for j < K, with v read from a per-sample Acc row.
template <typename T, typename Acc>
__device__ void columns_dot(const T* Vb, const Acc* v, Acc* out, const ProjectShape& p) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t j = warp; j < p.rank; j += kWarps) {
    Acc sum = 0;
    for (int64_t n = lane; n < p.size; n += 32) sum += load(Vb, n * p.stride_n + j * p.stride_k) * v[n];
    sum = warp_sum(sum);
    if (lane == 0) out[j] = sum;
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    project_forward_kernel(const T* __restrict__ x, const T* __restrict__ V, T* __restrict__ out,
                           Acc* __restrict__ coeffs, Acc* __restrict__ stats, Acc* __restrict__ scratch,
                           ProjectShape p) {
  __shared__ Acc reduce[kWarps];
  const int64_t b = blockIdx.x, N = p.size, K = p.rank;
  const T* xb = x + b * N;
  const T* Vb = V + b * p.stride_b;
  Acc* c = coeffs + b * K;
  Acc* y = scratch + b * N;
  Acc xx = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {  // x as Acc, for the column dots
    const Acc v = load(xb, n);
    y[n] = v;
    xx += v * v;
  }
  const Acc x_norm = sqrt(block_sum(xx, reduce));  // its barriers also publish y
  columns_dot(Vb, y, c, p);                        // (1)
  __syncthreads();
  Acc yy = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {  // (2): each thread rewrites only its own rows
    Acc v = y[n];
    for (int64_t j = 0; j < K; ++j) v -= load(Vb, n * p.stride_n + j * p.stride_k) * c[j];
    y[n] = v;
    yy += v * v;
  }
  const Acc y_norm = sqrt(block_sum(yy, reduce));
  const bool scaled = p.rescale && y_norm > static_cast<Acc>(p.rtol) * x_norm;
  const Acc s = scaled ? x_norm / y_norm : Acc(1);
  for (int64_t n = threadIdx.x; n < N; n += kThreads) store(out + b * N, n, y[n] * s);  // (3)
  if (threadIdx.x == 0) {
    Acc* st = stats + b * kProjectStats;
    st[0] = s, st[1] = x_norm, st[2] = y_norm, st[3] = scaled ? Acc(1) : Acc(0);
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    project_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x, const T* __restrict__ V,
                            const Acc* __restrict__ coeffs, const Acc* __restrict__ stats, T* __restrict__ grad_x,
                            T* __restrict__ grad_v, Acc* __restrict__ scratch, ProjectShape p) {
  __shared__ Acc reduce[kWarps];
  extern __shared__ unsigned char shared_bytes[];
  Acc* d = reinterpret_cast<Acc*>(shared_bytes);  // K entries
  const int64_t b = blockIdx.x, N = p.size, K = p.rank;
  const T* xb = x + b * N;
  const T* gb = grad + b * N;
  const T* Vb = V + b * p.stride_b;
  const Acc* c = coeffs + b * K;
  const Acc* st = stats + b * kProjectStats;
  const Acc s = st[0], x_norm = st[1], y_norm = st[2];
  const bool scaled = st[3] != Acc(0);
  Acc* gy = scratch + b * N;
  Acc ds = 0;
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {  // (1) y, and g·y
    Acc v = load(xb, n);
    for (int64_t j = 0; j < K; ++j) v -= load(Vb, n * p.stride_n + j * p.stride_k) * c[j];
    gy[n] = v;
    ds += load(gb, n) * v;
  }
  ds = block_sum(ds, reduce);
  const Acc y_coeff = scaled ? ds * s / (y_norm * y_norm) : Acc(0);
  const Acc direct = scaled ? ds * s / (x_norm * x_norm) : Acc(0);
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {  // (2) same rows as (1): no barrier needed
    const Acc g = load(gb, n);
    gy[n] = scaled ? s * g - y_coeff * gy[n] : g;
  }
  __syncthreads();
  columns_dot(Vb, gy, d, p);  // (3)
  __syncthreads();
  for (int64_t n = threadIdx.x; n < N; n += kThreads) {  // (4)
    const Acc xv = load(xb, n);
    Acc v = gy[n] + direct * xv;
    for (int64_t j = 0; j < K; ++j) v -= load(Vb, n * p.stride_n + j * p.stride_k) * d[j];
    store(grad_x + b * N, n, v);
    if (grad_v != nullptr)
      for (int64_t j = 0; j < K; ++j) store(grad_v + (b * N + n) * K, j, -gy[n] * c[j] - xv * d[j]);
  }
}

template <typename T, typename Acc>
int launch_forward(const void* x, const void* V, void* out, void* coeffs, void* stats, void* scratch,
                   const ProjectShape& p, cudaStream_t stream) {
  project_forward_kernel<T, Acc><<<static_cast<unsigned>(p.batch), kThreads, 0, stream>>>(
      static_cast<const T*>(x), static_cast<const T*>(V), static_cast<T*>(out), static_cast<Acc*>(coeffs),
      static_cast<Acc*>(stats), static_cast<Acc*>(scratch), p);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, typename Acc>
int launch_backward(const void* grad, const void* x, const void* V, const void* coeffs, const void* stats, void* grad_x,
                    void* grad_v, void* scratch, const ProjectShape& p, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(p.rank) * sizeof(Acc);
  project_backward_kernel<T, Acc><<<static_cast<unsigned>(p.batch), kThreads, shared, stream>>>(
      static_cast<const T*>(grad), static_cast<const T*>(x), static_cast<const T*>(V), static_cast<const Acc*>(coeffs),
      static_cast<const Acc*>(stats), static_cast<T*>(grad_x), static_cast<T*>(grad_v), static_cast<Acc*>(scratch), p);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int project_out_apply_cuda(const void* x, const void* V, void* out, void* coeffs, void* stats, void* scratch, int dtype,
                           const ProjectShape& p, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_forward<float, float>(x, V, out, coeffs, stats, scratch, p, s);
    case kF64: return launch_forward<double, double>(x, V, out, coeffs, stats, scratch, p, s);
    case kF16: return launch_forward<__half, float>(x, V, out, coeffs, stats, scratch, p, s);
    case kBF16: return launch_forward<__nv_bfloat16, float>(x, V, out, coeffs, stats, scratch, p, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int project_out_grads_cuda(const void* grad, const void* x, const void* V, const void* coeffs, const void* stats,
                           void* grad_x, void* grad_v, void* scratch, int dtype, const ProjectShape& p, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_backward<float, float>(grad, x, V, coeffs, stats, grad_x, grad_v, scratch, p, s);
    case kF64: return launch_backward<double, double>(grad, x, V, coeffs, stats, grad_x, grad_v, scratch, p, s);
    case kF16: return launch_backward<__half, float>(grad, x, V, coeffs, stats, grad_x, grad_v, scratch, p, s);
    case kBF16: return launch_backward<__nv_bfloat16, float>(grad, x, V, coeffs, stats, grad_x, grad_v, scratch, p, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace clarep_fast
