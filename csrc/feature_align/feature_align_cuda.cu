// Feature alignment statistics and gradients on CUDA. Math: csrc/feature_align/feature_align.h.
//
// forward:  one warp per row (8 rows per 256-thread block); lanes stride the row (coalesced) and
//           keep four running sums, reduced with warp shuffles; lane 0 writes the row's stats.
// backward: one thread per element, grid-stride: ds = A t + Bs s and dt = A s + Ct t in one pass.
#include <cuda_runtime.h>

#include "feature_align.h"
#include "../common/kernel.h"     // DtypeCode
#include "../common/element.cuh"  // load, store, warp_sum

namespace clarep_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = kThreads / 32;

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) align_forward_kernel(const T* __restrict s, const T* __restrict t,
                                                                 Acc* __restrict stats, int64_t rows, int64_t width) {
  const int lane = threadIdx.x & 31;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5);
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* sb = s + row * width;
  const T* tb = t + row * width;
  Acc st = 0, ss = 0, tt = 0, dd = 0;
  for (int64_t d = lane; d < width; d += 32) {
    const Acc a = load(sb, d), c = load(tb, d), diff = a - c;
    st += a * c, ss += a * a, tt += c * c, dd += diff * diff;
  }
  st = warp_sum(st), ss = warp_sum(ss), tt = warp_sum(tt), dd = warp_sum(dd);
  if (lane == 0) {
    Acc* out = stats + row * kAlignStats;
    out[0] = st, out[1] = ss, out[2] = tt, out[3] = dd;
  }
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    align_backward_kernel(const T* __restrict s, const T* __restrict t, const Acc* __restrict coeffs,
                          T* __restrict grad_s, T* __restrict grad_t, int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / width;
    const Acc a = load(s, e), c = load(t, e);
    const Acc cross = coeffs[row * 3], self_s = coeffs[row * 3 + 1], self_t = coeffs[row * 3 + 2];
    if (grad_s != nullptr) store(grad_s, e, cross * c + self_s * a);
    if (grad_t != nullptr) store(grad_t, e, cross * a + self_t * c);
  }
}

template <typename T, typename Acc>
int launch_forward(const void* s, const void* t, void* stats, int64_t rows, int64_t width, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  align_forward_kernel<T, Acc><<<blocks, kThreads, 0, stream>>>(static_cast<const T*>(s), static_cast<const T*>(t),
                                                                static_cast<Acc*>(stats), rows, width);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, typename Acc>
int launch_backward(const void* s, const void* t, const void* coeffs, void* grad_s, void* grad_t, int64_t rows,
                    int64_t width, cudaStream_t stream) {
  const int64_t wanted = (rows * width + kThreads - 1) / kThreads, cap = int64_t(1) << 20;
  const unsigned blocks = static_cast<unsigned>(wanted < cap ? wanted : cap);
  align_backward_kernel<T, Acc><<<blocks, kThreads, 0, stream>>>(
      static_cast<const T*>(s), static_cast<const T*>(t), static_cast<const Acc*>(coeffs), static_cast<T*>(grad_s),
      static_cast<T*>(grad_t), rows, width);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int feature_align_sums_cuda(const void* s, const void* t, void* stats, int dtype, int64_t rows, int64_t width,
                            void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_forward<float, float>(s, t, stats, rows, width, st);
    case kF64: return launch_forward<double, double>(s, t, stats, rows, width, st);
    case kF16: return launch_forward<__half, float>(s, t, stats, rows, width, st);
    case kBF16: return launch_forward<__nv_bfloat16, float>(s, t, stats, rows, width, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int feature_align_grads_cuda(const void* s, const void* t, const void* coeffs, void* grad_s, void* grad_t, int dtype,
                             int64_t rows, int64_t width, void* stream) {
  const auto st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_backward<float, float>(s, t, coeffs, grad_s, grad_t, rows, width, st);
    case kF64: return launch_backward<double, double>(s, t, coeffs, grad_s, grad_t, rows, width, st);
    case kF16: return launch_backward<__half, float>(s, t, coeffs, grad_s, grad_t, rows, width, st);
    case kBF16: return launch_backward<__nv_bfloat16, float>(s, t, coeffs, grad_s, grad_t, rows, width, st);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace clarep_fast
