// Feature alignment loss (cosine / MSE over layer pairs): declarations shared by the CPU and CUDA sources.
//
// One layer pair: student s and teacher t, both (B, D) row-major contiguous in T.
// forward:  stats (B, 4) in Acc: [Σ s·t, Σ s·s, Σ t·t, Σ (s - t)²] per row: one read of s and t.
//           (The loss, cosine or MSE, is a few scalar ops on these in Python, so autograd handles
//           the eps clamps; Σ (s - t)² is accumulated directly so that a small MSE does not come
//           from cancellation in ss - 2st + tt.)
// backward: with per-row coefficients A, Bs, Ct (Acc; the chain rule through the stats:
//           A = g_st - 2 g_dd, Bs = 2 (g_ss + g_dd), Ct = 2 (g_tt + g_dd)):
//           ds = A t + Bs s,   dt = A s + Ct t      (either may be skipped: null pointer)
// No torch headers: the .cu file includes only this and CUDA headers.
#pragma once
#include <cstdint>

#include "../common/kernel.h"

namespace clarep_fast {

constexpr int kAlignStats = 4;

// CPU: T = float, double, c10::Half or c10::BFloat16; Acc = float (double for double inputs).
template <typename T, typename Acc>
void feature_align_sums_cpu(const T* s, const T* t, Acc* stats, int64_t rows, int64_t width);
template <typename T, typename Acc>
void feature_align_grads_cpu(const T* s, const T* t, const Acc* coeffs, T* grad_s, T* grad_t, int64_t rows,
                             int64_t width);  // coeffs (B, 3): A, Bs, Ct

#ifdef WITH_CUDA
// dtype: DtypeCode (csrc/common/kernel.h); returns the launch's cudaError_t (0 = success).
int feature_align_sums_cuda(const void* s, const void* t, void* stats, int dtype, int64_t rows, int64_t width,
                            void* stream);
int feature_align_grads_cuda(const void* s, const void* t, const void* coeffs, void* grad_s, void* grad_t, int dtype,
                             int64_t rows, int64_t width, void* stream);
#endif

}  // namespace clarep_fast
