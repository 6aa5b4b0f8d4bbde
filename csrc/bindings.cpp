// Torch-facing entry points of clarep_fast._C: argument checks, allocation, dispatch to the raw-pointer
// kernels in cpu/ and cuda/. The only file that includes torch headers.
#include <torch/extension.h>

#include "cka.h"
#include "feature_align.h"
#include "feature_pool.h"
#include "project_out.h"

#ifdef WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace clarep_fast {
namespace {

void check_grams(const torch::Tensor& grams) {
  TORCH_CHECK(grams.dim() == 4 && grams.size(1) == 2 && grams.size(2) == grams.size(3),
              "grams must have shape (P, 2, n, n), got ", grams.sizes());
  TORCH_CHECK(grams.is_contiguous(), "grams must be contiguous");
  TORCH_CHECK(grams.scalar_type() == torch::kFloat32 || grams.scalar_type() == torch::kFloat64,
              "grams must be float32 or float64, got ", grams.scalar_type());
}

void check_like(const torch::Tensor& t, const torch::Tensor& grams, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == grams.scalar_type(), name, " must have dtype ", grams.scalar_type(), ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == grams.device(), name, " must be on ", grams.device(), ", got ", t.device());
}

#ifdef WITH_CUDA
void check_launch(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed to launch: ", cudaGetErrorString(static_cast<cudaError_t>(status)));
}
#endif

std::tuple<torch::Tensor, torch::Tensor> cka_stats(const torch::Tensor& grams, bool unbiased, double rtol) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  auto stats = torch::empty({pairs, kNumStats}, grams.options());
  auto rowsums = torch::empty({pairs, 2, n}, grams.options());
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_stats", [&] {
    if (grams.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(grams.device());
      auto partials = torch::empty({pairs, cka_stats_cuda_blocks(n), 5}, grams.options().dtype(torch::kFloat64));
      auto counters = torch::zeros({pairs}, grams.options().dtype(torch::kInt32));
      check_launch(cka_stats_cuda<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(),
                                            stats.data_ptr<scalar_t>(), partials.data_ptr<double>(),
                                            reinterpret_cast<unsigned int*>(counters.data_ptr<int32_t>()), pairs, n,
                                            unbiased, rtol, c10::cuda::getCurrentCUDAStream().stream()),
                   "cka_stats_cuda");
#else
      TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
    } else {
      cka_stats_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                              pairs, n, unbiased, rtol);
    }
  });
  return {stats, rowsums};
}

torch::Tensor cka_grads(const torch::Tensor& grams, const torch::Tensor& rowsums, const torch::Tensor& stats,
                        const torch::Tensor& grad, bool unbiased, double rtol) {
  check_grams(grams);
  const int64_t pairs = grams.size(0), n = grams.size(2);
  check_like(rowsums, grams, "rowsums", {pairs, 2, n});
  check_like(stats, grams, "stats", {pairs, kNumStats});
  check_like(grad, grams, "grad", {pairs});
  auto coeffs = torch::empty_like(grams);
  AT_DISPATCH_FLOATING_TYPES(grams.scalar_type(), "cka_grads", [&] {
    if (grams.is_cuda()) {
#ifdef WITH_CUDA
      const c10::cuda::CUDAGuard guard(grams.device());
      check_launch(cka_grads_cuda<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(),
                                            stats.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                            coeffs.data_ptr<scalar_t>(), pairs, n, unbiased, rtol,
                                            c10::cuda::getCurrentCUDAStream().stream()),
                   "cka_grads_cuda");
#else
      TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
    } else {
      cka_grads_cpu<scalar_t>(grams.data_ptr<scalar_t>(), rowsums.data_ptr<scalar_t>(), stats.data_ptr<scalar_t>(),
                              grad.data_ptr<scalar_t>(), coeffs.data_ptr<scalar_t>(), pairs, n, unbiased, rtol);
    }
  });
  return coeffs;
}

PoolGeometry pool_geometry(const torch::Tensor& map, const torch::Tensor& packed, int64_t offset, int64_t size) {
  TORCH_CHECK(map.dim() == 4, "map must have shape (B, C, H, W), got ", map.sizes());
  TORCH_CHECK(packed.dim() == 2 && packed.size(0) == map.size(0) && packed.stride(1) == 1,
              "packed must be a row-major (B, total) buffer with B = ", map.size(0), ", got ", packed.sizes());
  TORCH_CHECK(size >= 1 && size <= map.size(2) && size <= map.size(3), "size must be in [1, min(H, W)], got ", size);
  TORCH_CHECK(offset >= 0 && offset + map.size(1) * size * size <= packed.size(1), "slice out of range");
  TORCH_CHECK(map.device() == packed.device(), "map and packed must share a device");
  return PoolGeometry{map.size(0),   map.size(1),   map.size(2),     map.size(3), map.stride(0), map.stride(1),
                      map.stride(2), map.stride(3), size,            packed.stride(0), offset};
}

torch::ScalarType accumulation_type(torch::ScalarType t) {
  return t == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

#ifdef WITH_CUDA
int dtype_code(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return kF32;
    case torch::kFloat64: return kF64;
    case torch::kFloat16: return kF16;
    case torch::kBFloat16: return kBF16;
    default: TORCH_CHECK(false, "unsupported dtype ", t);
  }
}
#endif

// Pool one map into its slice packed[:, offset : offset + C·size²] (packed in the accumulation dtype).
void feature_pool_forward(const torch::Tensor& map, torch::Tensor& packed, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, packed, offset, size);
  TORCH_CHECK(packed.scalar_type() == accumulation_type(map.scalar_type()), "packed must be ",
              accumulation_type(map.scalar_type()), " for ", map.scalar_type(), " maps");
  if (map.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(map.device());
    check_launch(feature_pool_forward_cuda(map.data_ptr(), dtype_code(map.scalar_type()), packed.data_ptr(), g,
                                           c10::cuda::getCurrentCUDAStream().stream()),
                 "feature_pool_forward_cuda");
    return;
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, map.scalar_type(), "feature_pool_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    feature_pool_forward_cpu<scalar_t, acc_t>(map.data_ptr<scalar_t>(), packed.data_ptr<acc_t>(), g);
  });
}

// Gradient of one map from the packed gradient's slice; contiguous, in the map's dtype.
torch::Tensor feature_pool_backward(const torch::Tensor& grad, const torch::Tensor& map, int64_t offset, int64_t size) {
  const PoolGeometry g = pool_geometry(map, grad, offset, size);
  TORCH_CHECK(grad.scalar_type() == accumulation_type(map.scalar_type()), "grad must be ",
              accumulation_type(map.scalar_type()));
  auto grad_map = torch::empty(map.sizes(), map.options().memory_format(at::MemoryFormat::Contiguous));
  if (map.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(map.device());
    check_launch(feature_pool_backward_cuda(grad.data_ptr(), grad_map.data_ptr(), dtype_code(map.scalar_type()), g,
                                            c10::cuda::getCurrentCUDAStream().stream()),
                 "feature_pool_backward_cuda");
    return grad_map;
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, map.scalar_type(), "feature_pool_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    feature_pool_backward_cpu<scalar_t, acc_t>(grad.data_ptr<acc_t>(), grad_map.data_ptr<scalar_t>(), g);
  });
  return grad_map;
}

ProjectShape project_shape(const torch::Tensor& x, const torch::Tensor& V, bool rescale, double rtol) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (B, N) tensor, got ", x.sizes());
  TORCH_CHECK(V.dim() == 3 && V.size(0) == x.size(0) && V.size(1) == x.size(1),
              "vectors must be a (B, N, k) tensor with (B, N) = ", x.sizes(), ", got ", V.sizes());
  TORCH_CHECK(V.scalar_type() == x.scalar_type() && V.device() == x.device(), "x and vectors must share dtype and device");
  return ProjectShape{x.size(0), x.size(1), V.size(2), V.stride(0), V.stride(1), V.stride(2), rescale, rtol};
}

// (out, coeffs, stats): out = (I - V Vᵀ) x, rescaled if asked; coeffs (B, K), stats (B, 4) in the accumulation dtype.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> project_out_forward(const torch::Tensor& x, const torch::Tensor& V,
                                                                            bool rescale, double rtol) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  auto acc = x.options().dtype(accumulation_type(x.scalar_type()));
  auto out = torch::empty_like(x);
  auto coeffs = torch::empty({p.batch, p.rank}, acc);
  auto stats = torch::empty({p.batch, kProjectStats}, acc);
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    auto scratch = torch::empty({p.batch, p.size}, acc);
    check_launch(project_out_forward_cuda(x.data_ptr(), V.data_ptr(), out.data_ptr(), coeffs.data_ptr(), stats.data_ptr(),
                                          scratch.data_ptr(), dtype_code(x.scalar_type()), p,
                                          c10::cuda::getCurrentCUDAStream().stream()),
                 "project_out_forward_cuda");
    return {out, coeffs, stats};
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, x.scalar_type(), "project_out_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    project_out_forward_cpu<scalar_t, acc_t>(x.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                             coeffs.data_ptr<acc_t>(), stats.data_ptr<acc_t>(), p);
  });
  return {out, coeffs, stats};
}

// (grad_x, grad_v): grad_v is an empty tensor unless need_vectors_grad.
std::tuple<torch::Tensor, torch::Tensor> project_out_backward(const torch::Tensor& grad, const torch::Tensor& x,
                                                              const torch::Tensor& V, const torch::Tensor& coeffs,
                                                              const torch::Tensor& stats, bool rescale, double rtol,
                                                              bool need_vectors_grad) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == x.scalar_type(),
              "grad must be contiguous and match x");
  const auto acc = accumulation_type(x.scalar_type());
  TORCH_CHECK(coeffs.sizes() == at::IntArrayRef({p.batch, p.rank}) && coeffs.scalar_type() == acc && coeffs.is_contiguous(),
              "coeffs must be a contiguous (B, K) ", acc, " tensor");
  TORCH_CHECK(stats.sizes() == at::IntArrayRef({p.batch, kProjectStats}) && stats.scalar_type() == acc && stats.is_contiguous(),
              "stats must be a contiguous (B, 4) ", acc, " tensor");
  auto grad_x = torch::empty_like(x);
  auto grad_v = torch::empty(need_vectors_grad ? V.sizes() : at::IntArrayRef({0}), V.options());  // contiguous
  if (x.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    auto scratch = torch::empty({p.batch, p.size}, x.options().dtype(acc));
    check_launch(project_out_backward_cuda(grad.data_ptr(), x.data_ptr(), V.data_ptr(), coeffs.data_ptr(),
                                           stats.data_ptr(), grad_x.data_ptr(),
                                           need_vectors_grad ? grad_v.data_ptr() : nullptr, scratch.data_ptr(),
                                           dtype_code(x.scalar_type()), p, c10::cuda::getCurrentCUDAStream().stream()),
                 "project_out_backward_cuda");
    return {grad_x, grad_v};
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, x.scalar_type(), "project_out_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    project_out_backward_cpu<scalar_t, acc_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(),
                                              coeffs.data_ptr<acc_t>(), stats.data_ptr<acc_t>(),
                                              grad_x.data_ptr<scalar_t>(),
                                              need_vectors_grad ? grad_v.data_ptr<scalar_t>() : nullptr, p);
  });
  return {grad_x, grad_v};
}

void check_pair(const torch::Tensor& s, const torch::Tensor& t) {
  TORCH_CHECK(s.dim() == 2 && s.is_contiguous() && t.sizes() == s.sizes() && t.is_contiguous(),
              "student and teacher must be contiguous (B, D) tensors of one shape, got ", s.sizes(), " and ", t.sizes());
  TORCH_CHECK(s.scalar_type() == t.scalar_type() && s.device() == t.device(), "student and teacher must share dtype and device");
}

// Row statistics (B, 4) of one layer pair: [s·t, s·s, t·t, |s - t|²] in the accumulation dtype.
torch::Tensor feature_align_forward(const torch::Tensor& s, const torch::Tensor& t) {
  check_pair(s, t);
  const int64_t rows = s.size(0), width = s.size(1);
  auto stats = torch::empty({rows, kAlignStats}, s.options().dtype(accumulation_type(s.scalar_type())));
  if (s.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(s.device());
    check_launch(feature_align_forward_cuda(s.data_ptr(), t.data_ptr(), stats.data_ptr(), dtype_code(s.scalar_type()), rows,
                                            width, c10::cuda::getCurrentCUDAStream().stream()),
                 "feature_align_forward_cuda");
    return stats;
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, s.scalar_type(), "feature_align_forward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    feature_align_forward_cpu<scalar_t, acc_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(), rows, width);
  });
  return stats;
}

// (grad_s, grad_t) = (A t + Bs s, A s + Ct t) with coeffs (B, 3) = [A, Bs, Ct]; an empty tensor where not needed.
std::tuple<torch::Tensor, torch::Tensor> feature_align_backward(const torch::Tensor& s, const torch::Tensor& t,
                                                                const torch::Tensor& coeffs, bool need_s, bool need_t) {
  check_pair(s, t);
  const int64_t rows = s.size(0), width = s.size(1);
  TORCH_CHECK(coeffs.sizes() == at::IntArrayRef({rows, 3}) && coeffs.is_contiguous() &&
                  coeffs.scalar_type() == accumulation_type(s.scalar_type()),
              "coeffs must be a contiguous (B, 3) tensor in the accumulation dtype");
  auto grad_s = need_s ? torch::empty_like(s) : torch::empty({0}, s.options());
  auto grad_t = need_t ? torch::empty_like(t) : torch::empty({0}, t.options());
  if (s.is_cuda()) {
#ifdef WITH_CUDA
    const c10::cuda::CUDAGuard guard(s.device());
    check_launch(feature_align_backward_cuda(s.data_ptr(), t.data_ptr(), coeffs.data_ptr(), need_s ? grad_s.data_ptr() : nullptr,
                                             need_t ? grad_t.data_ptr() : nullptr, dtype_code(s.scalar_type()), rows, width,
                                             c10::cuda::getCurrentCUDAStream().stream()),
                 "feature_align_backward_cuda");
    return {grad_s, grad_t};
#else
    TORCH_CHECK(false, "clarep_fast._C was built without CUDA");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(torch::kHalf, torch::kBFloat16, s.scalar_type(), "feature_align_backward", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    feature_align_backward_cpu<scalar_t, acc_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), coeffs.data_ptr<acc_t>(),
                                                need_s ? grad_s.data_ptr<scalar_t>() : nullptr,
                                                need_t ? grad_t.data_ptr<scalar_t>() : nullptr, rows, width);
  });
  return {grad_s, grad_t};
}

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace clarep_fast

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "clarep_fast compiled kernels (C++/OpenMP CPU, CUDA when built with it)";
  m.def("cka_stats", &clarep_fast::cka_stats, "CKA n×n forward kernel: (grams, unbiased, rtol) -> (stats, rowsums)",
        py::arg("grams"), py::arg("unbiased"), py::arg("rtol"));
  m.def("cka_grads", &clarep_fast::cka_grads,
        "CKA n×n backward kernel: (grams, rowsums, stats, grad, unbiased, rtol) -> coefficients", py::arg("grams"),
        py::arg("rowsums"), py::arg("stats"), py::arg("grad"), py::arg("unbiased"), py::arg("rtol"));
  m.def("feature_pool_forward", &clarep_fast::feature_pool_forward,
        "pool one (B, C, H, W) map into packed[:, offset:offset + C*size*size]", py::arg("map"), py::arg("packed"),
        py::arg("offset"), py::arg("size"));
  m.def("feature_pool_backward", &clarep_fast::feature_pool_backward,
        "gradient of one map from the packed gradient", py::arg("grad"), py::arg("map"), py::arg("offset"),
        py::arg("size"));
  m.def("project_out_forward", &clarep_fast::project_out_forward,
        "(I - V V^T) x per sample, optionally rescaled: (x, vectors, rescale, rtol) -> (out, coeffs, stats)",
        py::arg("x"), py::arg("vectors"), py::arg("rescale"), py::arg("rtol"));
  m.def("project_out_backward", &clarep_fast::project_out_backward,
        "(grad, x, vectors, coeffs, stats, rescale, rtol, need_vectors_grad) -> (grad_x, grad_vectors)",
        py::arg("grad"), py::arg("x"), py::arg("vectors"), py::arg("coeffs"), py::arg("stats"), py::arg("rescale"),
        py::arg("rtol"), py::arg("need_vectors_grad"));
  m.def("feature_align_forward", &clarep_fast::feature_align_forward,
        "row statistics (B, 4) = [s.t, s.s, t.t, |s-t|^2] of one (B, D) layer pair", py::arg("student"), py::arg("teacher"));
  m.def("feature_align_backward", &clarep_fast::feature_align_backward,
        "(grad_s, grad_t) = (A t + Bs s, A s + Ct t) from coeffs (B, 3)", py::arg("student"), py::arg("teacher"),
        py::arg("coeffs"), py::arg("need_student"), py::arg("need_teacher"));
  m.def("built_with_cuda", &clarep_fast::built_with_cuda, "True when the CUDA kernels were compiled in");
}
