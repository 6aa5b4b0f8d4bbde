// Feature pooling of one tapped map as PyTorch operators (torch.ops.clarep_fast_C.feature_pool_pack
// / feature_pool_spread): schema, argument checks, allocation, CPU and CUDA registrations.
// Math and geometry: feature_pool.h.
#include "../common/op.h"
#include "feature_pool.h"

namespace clarep_fast {
namespace {

PoolGeometry pool_geometry(const at::Tensor& map, const at::Tensor& packed, int64_t offset, int64_t size) {
  TORCH_CHECK(map.dim() == 4, "map must have shape (B, C, H, W), got ", map.sizes());
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == map.size(0) && packed.stride(1) == 1,
              "packed must be a row-major (B, total) buffer with B = ", map.size(0), ", got ", packed.sizes());
  TORCH_CHECK(size >= 1 && size <= map.size(2) && size <= map.size(3), "size must be in [1, min(H, W)], got ", size);
  TORCH_CHECK(offset >= 0 && offset + map.size(1) * size * size <= packed.size(1), "slice out of range");
  TORCH_CHECK(map.device() == packed.device(), "map and packed must share a device");
  TORCH_CHECK(packed.scalar_type() == accumulation_type(map.scalar_type()), "packed must be ",
              accumulation_type(map.scalar_type()), " for ", map.scalar_type(), " maps, got ", packed.scalar_type());
  return PoolGeometry{map.size(0),   map.size(1),   map.size(2), map.size(3),      map.stride(0), map.stride(1),
                      map.stride(2), map.stride(3), size,        packed.stride(0), offset};
}

// Gradient of a map: contiguous, in the map's dtype.
at::Tensor empty_grad(const at::Tensor& map) {
  return at::empty(map.sizes(), map.options().memory_format(at::MemoryFormat::Contiguous));
}

// Pool one map into its slice packed[:, offset : offset + C·size²] (packed in the accumulation dtype).
void feature_pool_pack_cpu_op(const at::Tensor& map, const at::Tensor& packed, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, packed, offset, size);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, map.scalar_type(), "feature_pool_pack", [&] {
    using acc_t = Accumulate<scalar_t>;
    feature_pool_pack_cpu<scalar_t, acc_t>(map.data_ptr<scalar_t>(), packed.data_ptr<acc_t>(), g);
  });
}

at::Tensor feature_pool_spread_cpu_op(const at::Tensor& grad, const at::Tensor& map, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, grad, offset, size);
  auto grad_map = empty_grad(map);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, map.scalar_type(), "feature_pool_spread", [&] {
    using acc_t = Accumulate<scalar_t>;
    feature_pool_spread_cpu<scalar_t, acc_t>(grad.data_ptr<acc_t>(), grad_map.data_ptr<scalar_t>(), g);
  });
  return grad_map;
}

#ifdef WITH_CUDA
void feature_pool_pack_cuda_op(const at::Tensor& map, const at::Tensor& packed, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, packed, offset, size);
  const c10::cuda::CUDAGuard guard(map.device());
  check_launch(
      feature_pool_pack_cuda(map.data_ptr(), dtype_code(map.scalar_type()), packed.data_ptr(), g, current_stream(map)),
      "feature_pool_pack_cuda");
}

at::Tensor feature_pool_spread_cuda_op(const at::Tensor& grad, const at::Tensor& map, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, grad, offset, size);
  const c10::cuda::CUDAGuard guard(map.device());
  auto grad_map = empty_grad(map);
  check_launch(feature_pool_spread_cuda(grad.data_ptr(), grad_map.data_ptr(), dtype_code(map.scalar_type()), g,
                                        current_stream(map)),
               "feature_pool_spread_cuda");
  return grad_map;
}
#endif

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def("feature_pool_pack(Tensor map, Tensor(a!) packed, int offset, int size) -> ()");
  m.def("feature_pool_spread(Tensor grad, Tensor map, int offset, int size) -> Tensor");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) {
  m.impl("feature_pool_pack", &clarep_fast::feature_pool_pack_cpu_op);
  m.impl("feature_pool_spread", &clarep_fast::feature_pool_spread_cpu_op);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) {
  m.impl("feature_pool_pack", &clarep_fast::feature_pool_pack_cuda_op);
  m.impl("feature_pool_spread", &clarep_fast::feature_pool_spread_cuda_op);
}
#endif
