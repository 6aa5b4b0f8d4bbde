// Fused multi-layer feature pooling: declarations shared by the CPU (.cpp) and CUDA (.cu) sources.
//
// One tapped map m: (B, C, H, W) with arbitrary strides (sb, sc, sh, sw), pool size s.
// Forward writes, for every (b, c, i, j), the adaptive average
//     out[b * out_row + offset + (c * s + i) * s + j] = mean of m[b, c, h, w]
//     over h in [floor(i H / s), ceil((i + 1) H / s)), w in [floor(j W / s), ceil((j + 1) W / s))
// straight into the layer's slice of the packed (B, Σ C_l s²) buffer (Acc = float, or double
// for double maps). Backward gives every input element the sum of grad/|window| over the
// windows that contain it: cells i in [floor(h s / H), ceil((h + 1) s / H) - 1], same for j.
#pragma once
#include <cstdint>

#include "../common/kernel.h"

namespace clarep_fast {

struct PoolGeometry {
  int64_t batch, channels, height, width;
  int64_t stride_b, stride_c, stride_h, stride_w;  // of the input map, in elements
  int64_t size;                                    // s
  int64_t out_row, offset;                         // packed row stride and this layer's column offset
};

inline int64_t window_start(int64_t cell, int64_t extent, int64_t size) { return (cell * extent) / size; }
inline int64_t window_end(int64_t cell, int64_t extent, int64_t size) {
  return ((cell + 1) * extent + size - 1) / size;
}

// CPU: T = float, double, c10::Half or c10::BFloat16; Acc = float (double for double maps).
template <typename T, typename Acc>
void feature_pool_pack_cpu(const T* map, Acc* out, const PoolGeometry& g);
template <typename T, typename Acc>
void feature_pool_spread_cpu(const Acc* grad, T* grad_map, const PoolGeometry& g);  // grad_map contiguous

#ifdef WITH_CUDA
// dtype: the map's DtypeCode (csrc/common/kernel.h); returns the launch's cudaError_t (0 = success).
int feature_pool_pack_cuda(const void* map, int dtype, void* out, const PoolGeometry& g, void* stream);
int feature_pool_spread_cuda(const void* grad, void* grad_map, int dtype, const PoolGeometry& g, void* stream);
#endif

}  // namespace clarep_fast
