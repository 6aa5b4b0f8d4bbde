// One whole feature_pool call (every tapped map, forward and backward) as one PyTorch operator with
// its autograd in C++: torch.ops.clarep_fast_C.feature_pool_call(maps, size, normalize, out_dtype)
// -> (packed (B, Σ C_l·size²) in out_dtype, norms (B, L)). csrc/common/call.h says why; the Python
// path (clarep_fast/ops/feature_pool.py) computes the same steps for the torch and triton backends,
// torch.compile and torch.func transforms.
//
// Forward: one kernel per map writes its size×size averages into its slice of one packed buffer in
// the accumulation dtype (clarep_fast_C::feature_pool_pack); with normalize, each slice is divided
// by max(‖slice‖, eps) per sample (norms keep ‖slice‖); then the cast to out_dtype.
// Backward: for y = p/‖p‖ (‖p‖ > eps) dp = (g - y (y·g)) / ‖p‖, below eps dp = g/eps; then one kernel
// per map that needs a gradient (clarep_fast_C::feature_pool_spread).
#include "../common/call.h"
#include "../common/op.h"

namespace clarep_fast {
namespace {

constexpr double kNormalizeEps = 1e-12;  // clarep_fast/reference/feature_pool.py NORMALIZE_EPS

const auto& pool_forward_op() {
  static const auto op =
      kernel_op<void(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>("clarep_fast_C::feature_pool_pack");
  return op;
}

const auto& pool_backward_op() {
  static const auto op = kernel_op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>(
      "clarep_fast_C::feature_pool_spread");
  return op;
}

std::vector<int64_t> offsets_of(at::TensorList maps, int64_t size) {
  std::vector<int64_t> offsets{0};
  for (const auto& map : maps) offsets.push_back(offsets.back() + map.size(1) * size * size);
  return offsets;
}

std::tuple<at::Tensor, at::Tensor> forward_call(at::TensorList maps, int64_t size, bool normalize,
                                                at::ScalarType out_dtype) {
  const auto offsets = offsets_of(maps, size);
  const auto accumulate = accumulation_type(maps[0].scalar_type());
  const int64_t batch = maps[0].size(0), layers = static_cast<int64_t>(maps.size());
  auto pooled = at::empty({batch, offsets.back()}, maps[0].options().dtype(accumulate));
  for (int64_t layer = 0; layer < layers; ++layer) pool_forward_op().call(maps[layer], pooled, offsets[layer], size);
  at::Tensor norms;
  if (normalize) {
    std::vector<at::Tensor> columns;
    for (int64_t layer = 0; layer < layers; ++layer) {
      auto piece = pooled.slice(1, offsets[layer], offsets[layer + 1]);
      auto norm = piece.norm(2, {1}, true);  // (B, 1)
      piece.div_(norm.clamp_min(kNormalizeEps));
      columns.push_back(norm);
    }
    norms = at::cat(columns, 1);
  } else {
    norms = at::ones({batch, layers}, pooled.options());
  }
  auto packed = out_dtype == accumulate ? pooled : pooled.to(out_dtype);
  return {packed, norms};
}

class FeaturePoolCall : public torch::autograd::Function<FeaturePoolCall> {
 public:
  static variable_list forward(AutogradContext* ctx, at::TensorList maps, int64_t size, bool normalize,
                               at::ScalarType out_dtype) {
    auto [packed, norms] = forward_call(maps, size, normalize, out_dtype);
    std::vector<at::Tensor> saved = {packed, norms};
    saved.insert(saved.end(), maps.begin(), maps.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["size"] = size;
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({norms});
    return {packed, norms};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // once differentiable: nothing below is recorded, so a second derivative (create_graph=True) raises
    // instead of silently missing the terms through the saved statistics
    const at::NoGradGuard once_differentiable;
    const auto saved = ctx->get_saved_variables();
    const auto &packed = saved[0], &norms = saved[1];
    const std::vector<at::Tensor> maps(saved.begin() + 2, saved.end());
    const int64_t size = ctx->saved_data["size"].toInt(), layers = static_cast<int64_t>(maps.size());
    const auto offsets = offsets_of(maps, size);
    variable_list grads(layers + 3);  // one per map, then size, normalize, out_dtype
    if (!grad_outputs[0].defined()) return grads;
    auto grad = grad_outputs[0].to(norms.scalar_type());
    if (ctx->saved_data["normalize"].toBool()) {
      std::vector<at::Tensor> pieces;
      for (int64_t layer = 0; layer < layers; ++layer) {
        const auto g = grad.slice(1, offsets[layer], offsets[layer + 1]);
        const auto y = packed.slice(1, offsets[layer], offsets[layer + 1]).to(norms.scalar_type());
        const auto norm = norms.slice(1, layer, layer + 1);
        const auto projected = (g - y * (y * g).sum(1, true)) / norm.clamp_min(kNormalizeEps);
        pieces.push_back(at::where(norm > kNormalizeEps, projected, g / kNormalizeEps));
      }
      grad = at::cat(pieces, 1);
    }
    grad = grad.contiguous();
    for (int64_t layer = 0; layer < layers; ++layer) {
      if (ctx->needs_input_grad(layer)) grads[layer] = pool_backward_op().call(grad, maps[layer], offsets[layer], size);
    }
    return grads;
  }
};

std::tuple<at::Tensor, at::Tensor> feature_pool_call_autograd(at::TensorList maps, int64_t size, bool normalize,
                                                              at::ScalarType out_dtype) {
  const auto outputs = FeaturePoolCall::apply(maps, size, normalize, out_dtype);
  return {outputs[0], outputs[1]};
}

}  // namespace
}  // namespace clarep_fast

TORCH_LIBRARY_FRAGMENT(clarep_fast_C, m) {
  m.def(
      "feature_pool_call(Tensor[] maps, int size, bool normalize, ScalarType out_dtype) -> (Tensor packed, Tensor "
      "norms)");
}

TORCH_LIBRARY_IMPL(clarep_fast_C, Autograd, m) {
  m.impl("feature_pool_call", &clarep_fast::feature_pool_call_autograd);
}

TORCH_LIBRARY_IMPL(clarep_fast_C, CPU, m) { m.impl("feature_pool_call", &clarep_fast::forward_call); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(clarep_fast_C, CUDA, m) { m.impl("feature_pool_call", &clarep_fast::forward_call); }
#endif
