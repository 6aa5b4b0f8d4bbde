// Projection off k directions per sample: declarations shared by the CPU (.cpp) and CUDA (.cu) sources.
//
// Layout: x (B, N) contiguous and V (B, N, K) with any strides (a QR's column-major Q needs no copy), in T;
// out (B, N) and dV (B, N, K) contiguous in T;
// coeffs (B, K) and stats (B, 4) in Acc (float, or double for double inputs); scratch (B, N) in Acc.
//   forward:  c = Vᵀx,  y = x - V c,  s = ‖x‖/‖y‖ if rescale and ‖y‖ > rtol·‖x‖ else 1,  out = s y
//             stats = [s, ‖x‖, ‖y‖, 1 if rescaled else 0]
//   backward: given g = dL/dout, with y recomputed from x, V, c:
//             rescaled: ds = g·y,  gy = s g - ds s y/‖y‖²,  direct = ds s/‖x‖²   (from s = ‖x‖/‖y‖)
//             else:     gy = g,  direct = 0
//             d = Vᵀ gy,  dx = gy - V d + direct·x,  dV[n, j] = -gy[n] c[j] - x[n] d[j]
// No torch headers: the .cu file includes only this and CUDA headers.
#pragma once
#include <cstdint>

#include "../common/kernel.h"

namespace clarep_fast {

constexpr int kProjectStats = 4;

struct ProjectShape {
  int64_t batch, size, rank;             // B, N, K
  int64_t stride_b, stride_n, stride_k;  // of V, in elements
  bool rescale;
  double rtol;
};

// CPU: T = float, double, c10::Half or c10::BFloat16; Acc = float (double for double inputs).
template <typename T, typename Acc>
void project_out_apply_cpu(const T* x, const T* V, T* out, Acc* coeffs, Acc* stats, const ProjectShape& p);
template <typename T, typename Acc>
void project_out_grads_cpu(const T* grad, const T* x, const T* V, const Acc* coeffs, const Acc* stats, T* grad_x,
                           T* grad_v, const ProjectShape& p);  // grad_v may be null (not needed)

#ifdef WITH_CUDA
// dtype: DtypeCode (csrc/common/kernel.h); returns the launch's cudaError_t (0 = success).
int project_out_apply_cuda(const void* x, const void* V, void* out, void* coeffs, void* stats, void* scratch, int dtype,
                           const ProjectShape& p, void* stream);
int project_out_grads_cuda(const void* grad, const void* x, const void* V, const void* coeffs, const void* stats,
                           void* grad_x, void* grad_v, void* scratch, int dtype, const ProjectShape& p, void* stream);
#endif

}  // namespace clarep_fast
