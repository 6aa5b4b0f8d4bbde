// One whole project_out call (forward and backward) as one PyTorch operator with its autograd in
// C++: torch.ops.clarep_fast_C.project_out_call(x, vectors, rescale, rtol) -> (out (B, ...) like x,
// stats (B, 4)). csrc/common/call.h says why; the Python path (clarep_fast/ops/project_out.py)
// computes the same for the torch and triton backends, torch.compile and torch.func transforms.
// Forward: clarep_fast_C::project_out_apply on x flattened to (B, N) (out, c = Vᵀx, stats).
// Backward: clarep_fast_C::project_out_grads (it recomputes y from c; project_out.h has the math).
#include "../common/call.h"
#include "../common/op.h"

namespace clarep_fast {
namespace {

const auto& forward_op() {
  static const auto op =
      kernel_op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, bool, double)>(
          "clarep_fast_C::project_out_apply");
  return op;
}

const auto& backward_op() {
  static const auto op =
      kernel_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                   const at::Tensor&, const at::Tensor&, bool, double, bool)>(
          "clarep_fast_C::project_out_grads");
  return op;
}

class ProjectOutCall : public torch::autograd::Function<ProjectOutCall> {
 public:
  // x: (B, N), flattened by the caller (a differentiable view)
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& vectors, bool rescale,
                               double rtol) {
    const auto flat = x.contiguous();
    auto [out, coeffs, stats] = forward_op().call(flat, vectors, rescale, rtol);
    ctx->save_for_backward({flat, vectors, coeffs, stats});
    ctx->saved_data["rescale"] = rescale;
    ctx->saved_data["rtol"] = rtol;
    ctx->mark_non_differentiable({stats});
    return {out, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // once differentiable: nothing below is recorded, so a second derivative (create_graph=True) raises
    // instead of silently missing the terms through the saved statistics
    const at::NoGradGuard once_differentiable;
    const auto saved = ctx->get_saved_variables();
    const auto &flat = saved[0], &vectors = saved[1];
    variable_list grads(4);  // x, vectors, rescale, rtol
    if (!grad_outputs[0].defined()) return grads;
    const auto grad = grad_outputs[0].contiguous();
    const bool need_vectors = ctx->needs_input_grad(1);
    auto [grad_x, grad_v] =
        backward_op().call(grad, flat, vectors, saved[2], saved[3], ctx->saved_data["rescale"].toBool(),
                           ctx->saved_data["rtol"].toDouble(), need_vectors);
    if (ctx->needs_input_grad(0)) grads[0] = grad_x;
    if (need_vectors) grads[1] = grad_v;
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> project_out_call_autograd(const at::Tensor& x, const at::Tensor& vectors,
                                                             bool rescale, double rtol) {
  const auto outputs = ProjectOutCall::apply(x.reshape({x.size(0), -1}), vectors, rescale, rtol);
  return {outputs[0].view(x.sizes()), outputs[1]};
}

std::tuple<at::Tensor, at::Tensor> project_out_call_plain(const at::Tensor& x, const at::Tensor& vectors, bool rescale,
                                                          double rtol) {
  auto [out, coeffs, stats] = forward_op().call(x.reshape({x.size(0), -1}).contiguous(), vectors, rescale, rtol);
  return {out.view(x.sizes()), stats};
}

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def("project_out_call(Tensor x, Tensor vectors, bool rescale, float rtol) -> (Tensor out, Tensor stats)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, Autograd, m) { m.impl("project_out_call", &clarep_fast::project_out_call_autograd); }

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) { m.impl("project_out_call", &clarep_fast::project_out_call_plain); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) { m.impl("project_out_call", &clarep_fast::project_out_call_plain); }
#endif
