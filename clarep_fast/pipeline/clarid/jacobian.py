"""Top-k right singular vectors of a feature Jacobian, without forming the Jacobian.

For a per-sample feature map f: R^N -> R^D (typically a FeatureTap that stops after layer l) and a
batch of points x_b, we want the top-k right singular pairs of J_b = df(x_b)/dx_b (D × N): the k
latent directions that move the features most (CLARID's "extraneous directions").

Randomized subspace iteration (Halko, Martinsson & Tropp 2011, Alg. 4.4) on J^T J, r = k + p probes:
  Q_0 = orth(Ω),  Ω ~ N(0, I_{N×r})
  repeat:  U = J Q_i              r Jacobian-vector products per image        (forward mode, or VJP of a VJP)
           U = P Σ R^T             Rayleigh–Ritz: Ritz vectors Q_i R, Ritz values Σ (best rank-r
                                    approximation of J inside span Q_i; its top k is the estimate)
           stop when the largest principal angle between successive top-k estimates < tol
           Q_{i+1} = orth(J^T U)  r vector-Jacobian products per image, through ONE stored pullback
Images and probes are batched into one network call each (torch.func.vmap over probes; the model
already batches images), the primal forward runs once per call of this function (the pullback is
reused by every iteration), and converged images leave the batch. Angles use sin θ = σ_max((I - A A^T) B),
accurate for small angles where arccos of a cosine near 1 is not.

Modes: "jvp" (forward-mode J v), "vjp" (J v = the VJP of the linear map u -> J^T u, for models whose
operators lack forward-mode derivatives), "exact" (all D rows of J by VJPs, then an SVD: the oracle
for small models), "auto" (exact when the feature width D is at most 6r, the products three
subspace iterations need — the fewest they take in practice — else jvp; on the default teacher's
mid_block features, D = 256, exact is the faster one: benchmarks/results/clarid/).
Attention runs on SDPA's math kernel, the one with forward-mode and double-backward derivatives on
every device.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

MODES = ("auto", "jvp", "vjp", "exact")


class TopK(NamedTuple):
    vectors: Tensor  # (B, N, k) orthonormal columns over the flattened latent, by descending singular value
    values: Tensor  # (B, k) singular values, descending
    iterations: Tensor  # (B,) iterations each image ran (0 in exact mode)
    calls: int  # batched network calls (one forward, then each batched J v or J^T u call)
    products: int  # per-sample Jacobian products (each J v or J^T u for one probe of one image)


def principal_angle(a: Tensor, b: Tensor) -> Tensor:
    """Largest principal angle (radians) between span(a) and span(b); a, b (..., N, k) orthonormal columns.

    sin θ_max = σ_max(b - a (a^T b)): sign- and rotation-invariant, and precise for small angles.
    """
    a, b = a.double(), b.double()
    residual = b - a @ (a.transpose(-1, -2) @ b)
    return torch.linalg.matrix_norm(residual, ord=2).clamp(max=1.0).asin()


def topk_right_singular(
    fn: Callable[..., Tensor],
    x: Tensor,
    k: int,
    *,
    conditions: Sequence[Tensor] = (),
    oversample: int = 10,
    max_iters: int = 30,
    tol: float = 1e-3,
    mode: str = "auto",
    generator: torch.Generator | None = None,
) -> TopK:
    """Top-``k`` right singular pairs of the Jacobian of ``fn`` at every sample of ``x`` (B, ...).

    ``fn(x, *conditions)`` maps a batch (B, ...) to features (B, D), each row depending only on
    its own sample (true of diffusion UNets/DiTs in eval mode: GroupNorm/LayerNorm are per sample);
    ``conditions`` are per-sample inputs held fixed (timesteps, class labels), sliced with x when
    converged images leave the batch.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch (B, ...) with B >= 1, got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    batch, shape = x.shape[0], x.shape[1:]
    latent = math.prod(shape)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < latent:
        raise ValueError(f"k must be an int in [1, {latent}) (the latent size is {latent}), got {k!r}")
    if oversample < 0 or max_iters < 1 or not tol > 0:
        raise ValueError(f"need oversample >= 0, max_iters >= 1, tol > 0; got {oversample}, {max_iters}, {tol}")
    for index, condition in enumerate(conditions):
        if not isinstance(condition, Tensor) or condition.dim() < 1 or condition.shape[0] != batch:
            raise ValueError(
                f"conditions[{index}] must be a tensor with leading batch dimension {batch}, got {getattr(condition, 'shape', condition)!r}"
            )
    x = x.detach()
    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        linear = _Linearization(fn, x, conditions, mode)
        features = linear.features
        if features.dim() != 2 or features.shape[0] != batch:
            raise ValueError(f"fn must return features of shape ({batch}, D), got {tuple(features.shape)}")
        width = features.shape[1]
        if k > width:
            raise ValueError(
                f"k = {k} exceeds the feature size D = {width}: J has at most {width} nonzero singular values"
            )
        probes = min(k + oversample, latent, width)
        if mode == "auto":
            mode = linear.mode = "exact" if width <= 6 * probes else "jvp"
        if mode == "exact":
            return _exact(linear.pullback, batch, latent, width, k, features)
        return _subspace_iteration(linear, fn, x, conditions, k, probes, max_iters, tol, mode, generator)


def _exact(pullback, batch: int, latent: int, width: int, k: int, features: Tensor) -> TopK:
    """All D rows of J (as J^T e_d, D VJPs per image batched in one call), then a full SVD."""
    basis = torch.eye(width, dtype=features.dtype, device=features.device)[:, None].expand(width, batch, width)
    rows = torch.func.vmap(pullback, chunk_size=256)(basis)[0]  # (D, B, ...)
    jacobian = rows.reshape(width, batch, latent).transpose(0, 1).double()  # (B, D, N)
    _, values, vh = torch.linalg.svd(jacobian, full_matrices=False)
    vectors = vh[:, :k].transpose(1, 2).to(features.dtype)
    iterations = torch.zeros(batch, dtype=torch.long)
    return TopK(vectors, values[:, :k].to(features.dtype), iterations, 2, batch * width)


class _Linearization:
    """J v and J^T u at a fixed batch of points: one primal forward, reused by every product."""

    def __init__(self, fn, points: Tensor, conditions: Sequence[Tensor], mode: str):
        self.fn = lambda z: fn(z, *conditions)
        self.points, self.mode = points, mode
        self.features, self.pullback = torch.func.vjp(self.fn, points)
        self.linearized = None

    def forward_products(self, tangents: Tensor) -> Tensor:
        """(r, b, ...) -> (r, b, D): J v for r probes of every point."""
        if self.mode == "jvp":
            return torch.func.vmap(lambda v: torch.func.jvp(self.fn, (self.points,), (v,))[1])(tangents)
        if self.linearized is None:  # u -> J^T u is linear; its VJP with cotangent v is J v (one double-backward graph)
            _, self.linearized = torch.func.vjp(lambda u: self.pullback(u)[0], torch.zeros_like(self.features))
        return torch.func.vmap(self.linearized)(tangents)[0]

    def backward_products(self, cotangents: Tensor) -> Tensor:
        """(r, b, D) -> (r, b, ...): J^T u."""
        return torch.func.vmap(self.pullback)(cotangents)[0]


def _subspace_iteration(linear: _Linearization, fn, x, conditions, k, probes, max_iters, tol, mode, generator) -> TopK:
    batch, shape = x.shape[0], x.shape[1:]
    latent = math.prod(shape)
    omega = torch.randn(batch, latent, probes, generator=generator, dtype=torch.float64, device="cpu").to(x.device)
    basis = torch.linalg.qr(omega).Q  # (B, N, r) float64, orthonormal probes
    vectors = torch.zeros(batch, latent, k, dtype=torch.float64, device=x.device)
    values = torch.zeros(batch, k, dtype=torch.float64, device=x.device)
    iterations = torch.zeros(batch, dtype=torch.long)
    active = torch.arange(batch)  # images still iterating (indices into the batch, on the CPU)
    calls, products = 1, batch  # the primal forward
    for iteration in range(1, max_iters + 1):
        tangents = basis.permute(2, 0, 1).reshape(probes, len(active), *shape).to(x.dtype)
        images = linear.forward_products(tangents).permute(1, 2, 0).double()  # (b, D, r) = J Q
        calls, products = calls + 1, products + probes * len(active)
        _, ritz_values, ritz_rotation = torch.linalg.svd(images, full_matrices=False)  # Rayleigh–Ritz
        estimate = basis @ ritz_rotation[:, :k].transpose(1, 2)  # (b, N, k)
        if iteration > 1:
            converged = (principal_angle(vectors[active], estimate) < tol).cpu()
        else:
            converged = torch.zeros(len(active), dtype=torch.bool)
        vectors[active], values[active] = estimate, ritz_values[:, :k]
        iterations[active] = iteration
        if iteration == max_iters or bool(converged.all()):
            break
        if converged.any():  # converged images leave: re-linearize on the rest (one forward, saves r products each)
            keep = ~converged
            active, images, basis = active[keep], images[keep], basis[keep]
            linear = _Linearization(fn, x[active], [condition[active] for condition in conditions], mode)
            calls, products = calls + 1, products + len(active)
        pulled = linear.backward_products(images.permute(2, 0, 1).to(x.dtype))  # (r, b, ...) = J^T J Q
        calls, products = calls + 1, products + probes * len(active)
        basis = torch.linalg.qr(pulled.reshape(probes, len(active), latent).permute(1, 2, 0).double()).Q
    return TopK(vectors.to(x.dtype), values.to(x.dtype), iterations, calls, products)
