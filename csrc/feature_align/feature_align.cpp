// Feature alignment statistics of one layer pair as PyTorch operators
// (torch.ops.clarep_fast_C.feature_align_sums / feature_align_grads): schema, argument
// checks, allocation, CPU and CUDA registrations. Math: feature_align.h.
#include "../common/op.h"
#include "feature_align.h"

namespace clarep_fast {
namespace {

void check_pair(const at::Tensor& s, const at::Tensor& t) {
  TORCH_CHECK(s.dim() == 2 && s.is_contiguous() && t.sizes() == s.sizes() && t.is_contiguous(),
              "student and teacher must be contiguous (B, D) tensors of one shape, got ", s.sizes(), " and ",
              t.sizes());
  TORCH_CHECK(s.scalar_type() == t.scalar_type() && s.device() == t.device(),
              "student and teacher must share dtype and device");
}

void check_coeffs(const at::Tensor& s, const at::Tensor& coeffs) {
  TORCH_CHECK(coeffs.sizes() == at::IntArrayRef({s.size(0), 3}) && coeffs.is_contiguous() &&
                  coeffs.scalar_type() == accumulation_type(s.scalar_type()),
              "coeffs must be a contiguous (B, 3) tensor in the accumulation dtype");
}

at::Tensor empty_stats(const at::Tensor& s) {
  return at::empty({s.size(0), kAlignStats}, s.options().dtype(accumulation_type(s.scalar_type())));
}

at::Tensor empty_grad(const at::Tensor& like, bool needed) {
  return needed ? at::empty_like(like) : at::empty({0}, like.options());
}

// Row statistics (B, 4) of one layer pair: [s·t, s·s, t·t, |s - t|²] in the accumulation dtype.
at::Tensor feature_align_sums_cpu_op(const at::Tensor& s, const at::Tensor& t) {
  check_pair(s, t);
  auto stats = empty_stats(s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "feature_align_sums", [&] {
    using acc_t = Accumulate<scalar_t>;
    feature_align_sums_cpu<scalar_t, acc_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), stats.data_ptr<acc_t>(),
                                            s.size(0), s.size(1));
  });
  return stats;
}

// (grad_s, grad_t) = (A t + Bs s, A s + Ct t) with coeffs (B, 3) = [A, Bs, Ct]; an empty tensor where not needed.
std::tuple<at::Tensor, at::Tensor> feature_align_grads_cpu_op(const at::Tensor& s, const at::Tensor& t,
                                                              const at::Tensor& coeffs, bool need_s, bool need_t) {
  check_pair(s, t);
  check_coeffs(s, coeffs);
  auto grad_s = empty_grad(s, need_s);
  auto grad_t = empty_grad(t, need_t);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "feature_align_grads", [&] {
    using acc_t = Accumulate<scalar_t>;
    feature_align_grads_cpu<scalar_t, acc_t>(s.data_ptr<scalar_t>(), t.data_ptr<scalar_t>(), coeffs.data_ptr<acc_t>(),
                                             need_s ? grad_s.data_ptr<scalar_t>() : nullptr,
                                             need_t ? grad_t.data_ptr<scalar_t>() : nullptr, s.size(0), s.size(1));
  });
  return {grad_s, grad_t};
}

#ifdef WITH_CUDA
at::Tensor feature_align_sums_cuda_op(const at::Tensor& s, const at::Tensor& t) {
  check_pair(s, t);
  const c10::cuda::CUDAGuard guard(s.device());
  auto stats = empty_stats(s);
  check_launch(feature_align_sums_cuda(s.data_ptr(), t.data_ptr(), stats.data_ptr(), dtype_code(s.scalar_type()),
                                       s.size(0), s.size(1), current_stream(s)),
               "feature_align_sums_cuda");
  return stats;
}

std::tuple<at::Tensor, at::Tensor> feature_align_grads_cuda_op(const at::Tensor& s, const at::Tensor& t,
                                                               const at::Tensor& coeffs, bool need_s, bool need_t) {
  check_pair(s, t);
  check_coeffs(s, coeffs);
  const c10::cuda::CUDAGuard guard(s.device());
  auto grad_s = empty_grad(s, need_s);
  auto grad_t = empty_grad(t, need_t);
  check_launch(feature_align_grads_cuda(s.data_ptr(), t.data_ptr(), coeffs.data_ptr(),
                                        need_s ? grad_s.data_ptr() : nullptr, need_t ? grad_t.data_ptr() : nullptr,
                                        dtype_code(s.scalar_type()), s.size(0), s.size(1), current_stream(s)),
               "feature_align_grads_cuda");
  return {grad_s, grad_t};
}
#endif

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def("feature_align_sums(Tensor student, Tensor teacher) -> Tensor");
  m.def(
      "feature_align_grads(Tensor student, Tensor teacher, Tensor coeffs, bool need_student, bool need_teacher) "
      "-> (Tensor grad_student, Tensor grad_teacher)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) {
  m.impl("feature_align_sums", &clarep_fast::feature_align_sums_cpu_op);
  m.impl("feature_align_grads", &clarep_fast::feature_align_grads_cpu_op);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) {
  m.impl("feature_align_sums", &clarep_fast::feature_align_sums_cuda_op);
  m.impl("feature_align_grads", &clarep_fast::feature_align_grads_cuda_op);
}
#endif
