// Fused multi-layer feature pooling on CPU (OpenMP over (b, c) planes). Math: csrc/feature_pool/feature_pool.h.
#include "feature_pool.h"

#include "../common/cpu_types.h"

#include <algorithm>

namespace clarep_fast {

template <typename T, typename Acc>
void feature_pool_forward_cpu(const T* map, Acc* out, const PoolGeometry& g) {
  const int64_t s = g.size;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const T* plane = map + b * g.stride_b + c * g.stride_c;
      Acc* cells = out + b * g.out_row + g.offset + c * s * s;
      for (int64_t i = 0; i < s; ++i) {
        const int64_t h0 = window_start(i, g.height, s), h1 = window_end(i, g.height, s);
        for (int64_t j = 0; j < s; ++j) {
          const int64_t w0 = window_start(j, g.width, s), w1 = window_end(j, g.width, s);
          Acc sum = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) sum += static_cast<Acc>(plane[h * g.stride_h + w * g.stride_w]);
          cells[i * s + j] = sum / static_cast<Acc>((h1 - h0) * (w1 - w0));
        }
      }
    }
  }
}

template <typename T, typename Acc>
void feature_pool_backward_cpu(const Acc* grad, T* grad_map, const PoolGeometry& g) {
  const int64_t s = g.size, H = g.height, W = g.width;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < g.batch; ++b) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const Acc* cells = grad + b * g.out_row + g.offset + c * s * s;
      T* plane = grad_map + (b * g.channels + c) * H * W;
      for (int64_t h = 0; h < H; ++h) {
        const int64_t i0 = (h * s) / H, i1 = std::min(s - 1, ((h + 1) * s + H - 1) / H - 1);
        for (int64_t w = 0; w < W; ++w) {
          const int64_t j0 = (w * s) / W, j1 = std::min(s - 1, ((w + 1) * s + W - 1) / W - 1);
          Acc sum = 0;
          for (int64_t i = i0; i <= i1; ++i) {
            const int64_t rows = window_end(i, H, s) - window_start(i, H, s);
            for (int64_t j = j0; j <= j1; ++j) {
              const int64_t cols = window_end(j, W, s) - window_start(j, W, s);
              sum += cells[i * s + j] / static_cast<Acc>(rows * cols);
            }
          }
          plane[h * W + w] = static_cast<T>(sum);
        }
      }
    }
  }
}

#define CLAREP_INSTANTIATE(T, Acc)                                                         \
  template void feature_pool_forward_cpu<T, Acc>(const T*, Acc*, const PoolGeometry&);    \
  template void feature_pool_backward_cpu<T, Acc>(const Acc*, T*, const PoolGeometry&);
CLAREP_FOR_EACH_CPU_TYPE(CLAREP_INSTANTIATE)
#undef CLAREP_INSTANTIATE

}  // namespace clarep_fast
