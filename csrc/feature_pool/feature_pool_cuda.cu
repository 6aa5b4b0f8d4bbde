// Fused multi-layer feature pooling on CUDA. Math and geometry: csrc/feature_pool/feature_pool.h.
//
// forward: one block per (b, c) plane; threads stride the plane's elements (coalesced when the
//   width stride is 1), add each element to the shared-memory sum of every cell whose window
//   holds it, then write the s² averages straight into the packed output. One read per element.
// backward: one thread per input element; it sums grad/|window| over the (at most 2×2 when
//   windows overlap) cells that contain it. Output contiguous in the map's dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "feature_pool.h"

namespace clarep_fast {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Plane-local indices (h, w, cells, elements of one plane) in 32 bits: a tapped map's plane holds
// far fewer than 2^31 elements, and 64-bit division is a subroutine call whose stack frame the
// compile gate counts as local memory traffic (scripts/gpu_gate). Offsets between planes stay 64-bit.
__device__ __forceinline__ int start_of(int cell, int extent, int size) { return (cell * extent) / size; }
__device__ __forceinline__ int end_of(int cell, int extent, int size) {
  return ((cell + 1) * extent + size - 1) / size;
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    pool_forward_kernel(const T* __restrict__ map, Acc* __restrict__ out, PoolGeometry g) {
  extern __shared__ unsigned char shared_bytes[];
  Acc* sums = reinterpret_cast<Acc*>(shared_bytes);
  const unsigned channels = static_cast<unsigned>(g.channels);
  const unsigned b = blockIdx.x / channels, c = blockIdx.x % channels;
  const int s = static_cast<int>(g.size), H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  for (int cell = threadIdx.x; cell < s * s; cell += blockDim.x) sums[cell] = Acc(0);
  __syncthreads();
  const T* plane = map + b * g.stride_b + c * g.stride_c;
  for (int e = threadIdx.x; e < H * W; e += blockDim.x) {
    const int h = e / W, w = e % W;
    const Acc v = to_acc(plane[h * g.stride_h + w * g.stride_w]);
    const int i0 = (h * s) / H, i1 = min(s - 1, ((h + 1) * s + H - 1) / H - 1);
    const int j0 = (w * s) / W, j1 = min(s - 1, ((w + 1) * s + W - 1) / W - 1);
    for (int i = i0; i <= i1; ++i)
      for (int j = j0; j <= j1; ++j) atomicAdd(sums + i * s + j, v);
  }
  __syncthreads();
  Acc* cells = out + b * g.out_row + g.offset + c * s * s;
  for (int cell = threadIdx.x; cell < s * s; cell += blockDim.x) {
    const int i = cell / s, j = cell % s;
    const int count = (end_of(i, H, s) - start_of(i, H, s)) * (end_of(j, W, s) - start_of(j, W, s));
    cells[cell] = sums[cell] / static_cast<Acc>(count);
  }
}

// Grid (element blocks of one plane, planes): blockIdx.y strides over the B·C planes.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    pool_backward_kernel(const Acc* __restrict__ grad, T* __restrict__ grad_map, PoolGeometry g) {
  const int s = static_cast<int>(g.size), H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const int e = blockIdx.x * blockDim.x + threadIdx.x;
  if (e >= H * W) return;
  const int h = e / W, w = e % W;
  const int i0 = (h * s) / H, i1 = min(s - 1, ((h + 1) * s + H - 1) / H - 1);
  const int j0 = (w * s) / W, j1 = min(s - 1, ((w + 1) * s + W - 1) / W - 1);
  const unsigned channels = static_cast<unsigned>(g.channels), planes = static_cast<unsigned>(g.batch * g.channels);
  for (unsigned plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const unsigned b = plane / channels, c = plane % channels;
    const Acc* cells = grad + b * g.out_row + g.offset + c * s * s;
    Acc sum = 0;
    for (int i = i0; i <= i1; ++i) {
      const int rows = end_of(i, H, s) - start_of(i, H, s);
      for (int j = j0; j <= j1; ++j)
        sum += cells[i * s + j] / static_cast<Acc>(rows * (end_of(j, W, s) - start_of(j, W, s)));
    }
    T* target = grad_map + static_cast<int64_t>(plane) * H * W + e;
    if constexpr (sizeof(Acc) == 8) {
      *target = sum;
    } else {
      *target = from_acc<T>(sum);
    }
  }
}

template <typename T, typename Acc>
int launch_forward(const void* map, void* out, const PoolGeometry& g, cudaStream_t stream) {
  const size_t shared = static_cast<size_t>(g.size * g.size) * sizeof(Acc);
  const unsigned planes = static_cast<unsigned>(g.batch * g.channels);
  const int threads =
      g.height * g.width >= kThreads ? kThreads : static_cast<int>(((g.height * g.width + 31) / 32) * 32);
  pool_forward_kernel<T, Acc>
      <<<planes, threads, shared, stream>>>(static_cast<const T*>(map), static_cast<Acc*>(out), g);
  return static_cast<int>(cudaGetLastError());
}

template <typename T, typename Acc>
int launch_backward(const void* grad, void* grad_map, const PoolGeometry& g, cudaStream_t stream) {
  const int64_t planes = g.batch * g.channels;
  // gridDim.y is at most 65,535: the kernel strides over the planes beyond
  const dim3 grid(static_cast<unsigned>((g.height * g.width + kThreads - 1) / kThreads),
                  static_cast<unsigned>(planes < 65535 ? planes : 65535));
  pool_backward_kernel<T, Acc>
      <<<grid, kThreads, 0, stream>>>(static_cast<const Acc*>(grad), static_cast<T*>(grad_map), g);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int feature_pool_pack_cuda(const void* map, int dtype, void* out, const PoolGeometry& g, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_forward<float, float>(map, out, g, s);
    case kF64: return launch_forward<double, double>(map, out, g, s);
    case kF16: return launch_forward<__half, float>(map, out, g, s);
    case kBF16: return launch_forward<__nv_bfloat16, float>(map, out, g, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

int feature_pool_spread_cuda(const void* grad, void* grad_map, int dtype, const PoolGeometry& g, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case kF32: return launch_backward<float, float>(grad, grad_map, g, s);
    case kF64: return launch_backward<double, double>(grad, grad_map, g, s);
    case kF16: return launch_backward<__half, float>(grad, grad_map, g, s);
    case kBF16: return launch_backward<__nv_bfloat16, float>(grad, grad_map, g, s);
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
}

}  // namespace clarep_fast
