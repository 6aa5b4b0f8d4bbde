// Projection off k directions as PyTorch operators (torch.ops.clarep_fast_C.project_out_apply /
// project_out_grads): schema, argument checks, allocation, CPU and CUDA registrations.
// Math and layout: project_out.h.
#include "../common/op.h"
#include "project_out.h"

namespace clarep_fast {
namespace {

ProjectShape project_shape(const at::Tensor& x, const at::Tensor& V, bool rescale, double rtol) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (B, N) tensor, got ", x.sizes());
  TORCH_CHECK(V.dim() == 3 && V.size(0) == x.size(0) && V.size(1) == x.size(1),
              "vectors must be a (B, N, k) tensor with (B, N) = ", x.sizes(), ", got ", V.sizes());
  TORCH_CHECK(V.scalar_type() == x.scalar_type() && V.device() == x.device(),
              "x and vectors must share dtype and device");
  return ProjectShape{x.size(0), x.size(1), V.size(2), V.stride(0), V.stride(1), V.stride(2), rescale, rtol};
}

void check_backward_inputs(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& coeffs,
                           const at::Tensor& stats, const ProjectShape& p) {
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.is_contiguous() && grad.scalar_type() == x.scalar_type(),
              "grad must be contiguous and match x");
  const auto acc = accumulation_type(x.scalar_type());
  TORCH_CHECK(
      coeffs.sizes() == at::IntArrayRef({p.batch, p.rank}) && coeffs.scalar_type() == acc && coeffs.is_contiguous(),
      "coeffs must be a contiguous (B, K) ", acc, " tensor");
  TORCH_CHECK(
      stats.sizes() == at::IntArrayRef({p.batch, kProjectStats}) && stats.scalar_type() == acc && stats.is_contiguous(),
      "stats must be a contiguous (B, 4) ", acc, " tensor");
}

// (out, coeffs, stats): out = (I - V Vᵀ) x, rescaled if asked; coeffs (B, K), stats (B, 4) in the accumulation dtype.
struct Forward {
  at::Tensor out, coeffs, stats;
};
Forward allocate_forward(const at::Tensor& x, const ProjectShape& p) {
  auto acc = x.options().dtype(accumulation_type(x.scalar_type()));
  return {at::empty_like(x), at::empty({p.batch, p.rank}, acc), at::empty({p.batch, kProjectStats}, acc)};
}

// grad_v is an empty tensor unless need_vectors_grad.
at::Tensor empty_grad_v(const at::Tensor& V, bool need_vectors_grad) {
  return at::empty(need_vectors_grad ? V.sizes() : at::IntArrayRef({0}), V.options());  // contiguous
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> project_out_apply_cpu_op(const at::Tensor& x, const at::Tensor& V,
                                                                        bool rescale, double rtol) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  Forward f = allocate_forward(x, p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "project_out_apply", [&] {
    using acc_t = Accumulate<scalar_t>;
    project_out_apply_cpu<scalar_t, acc_t>(x.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), f.out.data_ptr<scalar_t>(),
                                           f.coeffs.data_ptr<acc_t>(), f.stats.data_ptr<acc_t>(), p);
  });
  return {f.out, f.coeffs, f.stats};
}

std::tuple<at::Tensor, at::Tensor> project_out_grads_cpu_op(const at::Tensor& grad, const at::Tensor& x,
                                                            const at::Tensor& V, const at::Tensor& coeffs,
                                                            const at::Tensor& stats, bool rescale, double rtol,
                                                            bool need_vectors_grad) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  check_backward_inputs(grad, x, coeffs, stats, p);
  auto grad_x = at::empty_like(x);
  auto grad_v = empty_grad_v(V, need_vectors_grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "project_out_grads", [&] {
    using acc_t = Accumulate<scalar_t>;
    project_out_grads_cpu<scalar_t, acc_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(),
                                           coeffs.data_ptr<acc_t>(), stats.data_ptr<acc_t>(),
                                           grad_x.data_ptr<scalar_t>(),
                                           need_vectors_grad ? grad_v.data_ptr<scalar_t>() : nullptr, p);
  });
  return {grad_x, grad_v};
}

#ifdef WITH_CUDA
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_out_apply_cuda_op(const at::Tensor& x, const at::Tensor& V,
                                                                         bool rescale, double rtol) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  const c10::cuda::CUDAGuard guard(x.device());
  Forward f = allocate_forward(x, p);
  auto scratch = at::empty({p.batch, p.size}, f.coeffs.options());
  check_launch(
      project_out_apply_cuda(x.data_ptr(), V.data_ptr(), f.out.data_ptr(), f.coeffs.data_ptr(), f.stats.data_ptr(),
                             scratch.data_ptr(), dtype_code(x.scalar_type()), p, current_stream(x)),
      "project_out_apply_cuda");
  return {f.out, f.coeffs, f.stats};
}

std::tuple<at::Tensor, at::Tensor> project_out_grads_cuda_op(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& V, const at::Tensor& coeffs,
                                                             const at::Tensor& stats, bool rescale, double rtol,
                                                             bool need_vectors_grad) {
  const ProjectShape p = project_shape(x, V, rescale, rtol);
  check_backward_inputs(grad, x, coeffs, stats, p);
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty_like(x);
  auto grad_v = empty_grad_v(V, need_vectors_grad);
  auto scratch = at::empty({p.batch, p.size}, coeffs.options());
  check_launch(project_out_grads_cuda(grad.data_ptr(), x.data_ptr(), V.data_ptr(), coeffs.data_ptr(), stats.data_ptr(),
                                      grad_x.data_ptr(), need_vectors_grad ? grad_v.data_ptr() : nullptr,
                                      scratch.data_ptr(), dtype_code(x.scalar_type()), p, current_stream(x)),
               "project_out_grads_cuda");
  return {grad_x, grad_v};
}
#endif

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def(
      "project_out_apply(Tensor x, Tensor vectors, bool rescale, float rtol) -> (Tensor out, Tensor coeffs, Tensor "
      "stats)");
  m.def(
      "project_out_grads(Tensor grad, Tensor x, Tensor vectors, Tensor coeffs, Tensor stats, bool rescale, float rtol, "
      "bool need_vectors_grad) -> (Tensor grad_x, Tensor grad_vectors)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) {
  m.impl("project_out_apply", &clarep_fast::project_out_apply_cpu_op);
  m.impl("project_out_grads", &clarep_fast::project_out_grads_cpu_op);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) {
  m.impl("project_out_apply", &clarep_fast::project_out_apply_cuda_op);
  m.impl("project_out_grads", &clarep_fast::project_out_grads_cuda_op);
}
#endif
