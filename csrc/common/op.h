// What every torch-facing op source (csrc/<op>/<op>.cpp) shares: the dispatcher and ATen headers,
// the accumulation dtype, a tensor's DtypeCode for the CUDA launchers, and the launch check.
// Each op registers itself: its schema with TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) and its CPU
// and CUDA functions with TORCH_LIBRARY_IMPL(clarep_fast_C, CPU|CUDA, m), all in its own file.
// Python reaches them as torch.ops.clarep_fast_C.<name> once clarep_fast._C is imported.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

#include "kernel.h"

namespace clarep_fast {

// float64 for float64 inputs, float32 for float32, float16 and bfloat16 (the Accumulate rule of kernel.h).
inline at::ScalarType accumulation_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

#ifdef WITH_CUDA
inline int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return kF32;
    case at::kDouble: return kF64;
    case at::kHalf: return kF16;
    case at::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}

// The current stream of the tensor's device, as the void* the launchers take.
inline void* current_stream(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// A non-zero launcher status becomes an error naming the launcher.
inline void check_launch(int status, const char* launcher) {
  TORCH_CHECK(status == 0, launcher, " failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}
#endif

}  // namespace clarep_fast
