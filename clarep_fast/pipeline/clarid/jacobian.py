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
           (TOLERANCES: the default per method)
           Q_{i+1} = orth(J^T U)  r vector-Jacobian products per image, through ONE stored pullback
Block Krylov (Musco & Musco 2015, "Randomized block Krylov methods for stronger and faster
approximate singular value decomposition"), mode "krylov": the same products, but the Rayleigh–Ritz
step runs over the whole Krylov space K_q = [Q_0, (J^T J) Q_0, ..., (J^T J)^q Q_0] (each block
orthogonalized against the earlier ones, twice) instead of its last block, using the J Q_i every
step computes anyway. Its convergence depends on sqrt of the gap, not the gap σ_k/σ_{k+1} itself:
on a trained network, where σ_k and σ_{k+1} are close, it needs a fraction of subspace iteration's
steps (benchmarks/results/clarid/). Step i costs r J v and, but for the last, r J^T u per image.
Images and probes are batched into one network call each (torch.func.vmap over probes; the model
already batches images), the primal forward runs once per call of this function (the pullback is
reused by every iteration), and converged images leave the batch. Angles use sin θ = σ_max((I - A A^T) B),
accurate for small angles where arccos of a cosine near 1 is not.

Starts and stopping rules (the iterative modes). ``start`` (B, N, m): directions to begin with
(another image's top-k, a class's running subspace): the first block is orth([start, Ω]) with r - m
random columns, instead of r random ones. ``stop = "change"`` (the default) ends when successive
estimates differ by less than tol, so it runs at least two steps; ``stop = "residual"`` ends when
the top-k Ritz pairs (σ_i², v_i) of JᵀJ satisfy ‖JᵀJ V_k - V_k Σ_k²‖_F / σ_1² < tol, which can end
after one step when the start was good, but alone it can be fooled: a small residual certifies
Ritz pairs near some singular pairs, not the top k (on the trained DiT a sibling's start stopped
after 2 steps 1.1 rad from exact: docs/clarid.md), so it is not a default. The residual needs JᵀJ V_k = [JᵀJ K] W_k, and JᵀJ K is the
pullback of the images the step has (r VJPs: the products the next step would begin with anyway).

Two sources of J v (``jv``): "forward" (forward-mode AD, torch.func.jvp: the tangent carried through
a fresh forward of the network) and "backward" (u -> J^T u is linear, so J v is its VJP with cotangent
v: a double backward through the one stored pullback, built once per linearization). The same
products to rounding; "backward" is the default: block Krylov with it ran 0–11% faster than with
forward mode through both trained teachers' taps, never slower beyond noise
(benchmarks/results/clarid/jv/); exact's columns too but for the UNet's mid_block (+16%), where
exact takes the rows anyway.

Modes: "jvp" (subspace iteration, forward-mode J v), "vjp" (the same, double-backward J v, for
models whose operators lack forward-mode derivatives), "krylov" (block Krylov, J v from ``jv``),
"exact" (the whole J, D × N, as D VJPs or N J v from ``jv``, whichever costs less, then an SVD),
"auto": the cheaper by predicted cost per image, in VJPs (a J v costs JV_COST of them: it redoes
the forward or runs a double backward, while the VJPs share one stored pullback): exact's
min(D, JV_COST · N) against krylov's r · (JV_COST · s + s - 1) for the s steps it is expected to need
(``expected_steps``; KRYLOV_STEPS by default, measured on the trained default teacher). On the
default teacher's mid_block features (D = 256) and in the wide regime (D ≥ N) at N = 768 exact is
the cheaper; krylov wins when N and D are both large against r (DiT-XL/2-256: N = 4,096).
Attention runs on SDPA's math kernel, the one with forward-mode and double-backward derivatives on
every device.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

MODES = ("auto", "jvp", "vjp", "krylov", "exact")
JV_SOURCES = ("forward", "backward")
# the J v source each subspace-iteration mode names; krylov, exact and auto take ``jv``
MODE_JV = {"jvp": "forward", "vjp": "backward"}
STOPS = ("change", "residual")
# Stopping tolerances (radians between successive top-k estimates), each the loosest whose canonical
# samples match exact's within half an 8-bit level (1/510) with a wide margin, on the trained default
# teacher's slowly converging down_blocks.1 layer (benchmarks/results/clarid/topk-down_blocks.1-p4-k96.md):
# block Krylov's estimate is far closer to exact than its last step's change (1.8e-5 at 1e-2), subspace
# iteration's is not (2.9e-3 at 1e-2, 1.1e-3 at 3e-3: over and under the threshold).
TOLERANCES = {"krylov": 1e-2, "jvp": 3e-3, "vjp": 3e-3}
# The residual rule's default, ‖JᵀJ V_k - V_k Σ_k²‖_F / σ_1² (not yet chosen by the samples' agreement:
# benchmarks/clarid_topk.py measures it).
RESIDUAL_TOLERANCE = 1e-3
# Block Krylov steps at its default tolerance, k = 96, r = 116, measured on that layer (5 for every
# image): the prior of auto's cost model.
KRYLOV_STEPS = 5
# Seconds of one J v over one VJP (the VJPs reuse one stored pullback): exact by N J v against exact
# by D VJPs, 16 probes per call, through both trained teachers' taps (benchmarks/results/clarid/calls/,
# CPU): double backward 1.2–1.3 on the DiT, 1.45–1.5 on the UNet; forward mode 1.3–1.5 in calls of 256
# (1.17 through a random DiT-XL/2-config tap, docs/scale.md). 1.5 keeps auto's choice the faster
# one at every layer measured. Not yet measured on a GPU.
JV_COST = 1.5
JV_DEFAULT = "backward"
# Probes per batched network call (torch.func.vmap's chunk_size), by device type, unless the caller
# names one. On a CPU a call of a few probes keeps its activations in cache: in calls of 16, block
# Krylov took 10–26% less time per CLARep than with a step's 116 probes in one call, and exact
# 1.6–2.3× less than in calls of all its D or N, through both trained teachers' taps, the same
# answers (benchmarks/results/clarid/calls/). On a GPU a call of every probe fills the device; exact
# forms J in calls of EXACT_CALL there (not measured here: no GPU).
PROBES_PER_CALL = {"cpu": 16}
EXACT_CALL = 256


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
    tol: float | None = None,
    mode: str = "auto",
    generator: torch.Generator | None = None,
    expected_steps: int = KRYLOV_STEPS,
    start: Tensor | None = None,
    stop: str = "change",
    jv: str | None = None,
    probes_per_call: int | None = None,
) -> TopK:
    """Top-``k`` right singular pairs of the Jacobian of ``fn`` at every sample of ``x`` (B, ...).

    ``fn(x, *conditions)`` maps a batch (B, ...) to features (B, D), each row depending only on
    its own sample (true of diffusion UNets/DiTs in eval mode: GroupNorm/LayerNorm are per sample);
    ``conditions`` are per-sample inputs held fixed (timesteps, class labels), sliced with x when
    converged images leave the batch. ``start``, ``stop`` and ``jv`` (the source of J v; None: the
    mode's own, else JV_DEFAULT): the module docstring (exact ignores start and stop).
    ``probes_per_call``: probes (per image) in one batched network call; None: PROBES_PER_CALL for
    x's device type, else all of a step's at once (exact: EXACT_CALL). The results do not depend on it
    beyond rounding.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if jv is not None and jv not in JV_SOURCES:
        raise ValueError(f"jv must be one of {JV_SOURCES} or None, got {jv!r}")
    if mode in MODE_JV and jv not in (None, MODE_JV[mode]):
        raise ValueError(
            f"mode {mode!r} computes J v by {MODE_JV[mode]!r}; got jv={jv!r} (krylov and exact take either)"
        )
    jv = MODE_JV.get(mode, jv or JV_DEFAULT)
    if probes_per_call is not None and (
        not isinstance(probes_per_call, int) or isinstance(probes_per_call, bool) or probes_per_call < 1
    ):
        raise ValueError(f"probes_per_call must be an int >= 1 or None, got {probes_per_call!r}")
    if stop not in STOPS:
        raise ValueError(f"stop must be one of {STOPS}, got {stop!r}")
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a batch (B, ...) with B >= 1, got {getattr(x, 'shape', type(x).__name__)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be floating point, got {x.dtype}")
    batch, shape = x.shape[0], x.shape[1:]
    latent = math.prod(shape)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < latent:
        raise ValueError(f"k must be an int in [1, {latent}) (the latent size is {latent}), got {k!r}")
    if oversample < 0 or max_iters < 1 or (tol is not None and not tol > 0):
        raise ValueError(f"need oversample >= 0, max_iters >= 1, tol > 0; got {oversample}, {max_iters}, {tol}")
    for index, condition in enumerate(conditions):
        if not isinstance(condition, Tensor) or condition.dim() < 1 or condition.shape[0] != batch:
            raise ValueError(
                f"conditions[{index}] must be a tensor with leading batch dimension {batch}, got {getattr(condition, 'shape', condition)!r}"
            )
    if start is not None and (
        not isinstance(start, Tensor) or start.dim() != 3 or start.shape[:2] != (batch, latent) or start.shape[2] < 1
    ):
        raise ValueError(
            f"start must be directions (B, N, m) = ({batch}, {latent}, m >= 1), got {getattr(start, 'shape', type(start).__name__)}"
        )
    x = x.detach()
    with sdpa_kernel(SDPBackend.MATH), torch.enable_grad():
        chunk = probes_per_call or PROBES_PER_CALL.get(x.device.type)
        linear = _Linearization(fn, x, conditions, jv, chunk)
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
            mode = auto_mode(latent, width, probes, expected_steps)
        if mode == "exact":
            return _exact(linear, batch, latent, width, k, features)
        tol = (RESIDUAL_TOLERANCE if stop == "residual" else TOLERANCES[mode]) if tol is None else tol
        block = _first_block(batch, latent, probes, generator, x.device, start)
        if mode == "krylov":
            return _block_krylov(linear, fn, x, conditions, k, block, max_iters, tol, stop)
        return _subspace_iteration(linear, fn, x, conditions, k, block, max_iters, tol, stop)


def exact_side(latent: int, width: int) -> str:
    """'rows' (D VJPs) or 'columns' (N J v), whichever costs less."""
    return "columns" if JV_COST * latent < width else "rows"


def predicted_cost(mode: str, latent: int, width: int, probes: int, steps: int) -> float:
    """Cost per image in VJPs: exact forms J from its cheaper side; krylov's (and subspace
    iteration's) s steps cost r J v each and r J^T u each but the last."""
    if mode == "exact":
        return min(float(width), JV_COST * latent)
    return probes * (JV_COST * steps + steps - 1)


def auto_mode(latent: int, width: int, probes: int, expected_steps: int = KRYLOV_STEPS) -> str:
    """The cheaper by predicted cost: exact, or block Krylov for ``expected_steps`` steps."""
    exact = predicted_cost("exact", latent, width, probes, 0)
    return "exact" if exact <= predicted_cost("krylov", latent, width, probes, expected_steps) else "krylov"


def _exact(
    linear: "_Linearization", batch: int, latent: int, width: int, k: int, features: Tensor, side: str | None = None
) -> TopK:
    """The whole J, (B, D, N): D rows J^T e_d by VJPs, or, when that costs less (JV_COST · N < D),
    N columns J e_n from the linearization's J v source (``side`` forces "rows" or "columns"); each
    side batched in calls of the linearization's probes per call (EXACT_CALL if it has none); then an SVD."""
    side = side or exact_side(latent, width)
    if side == "columns":
        basis = torch.eye(latent, dtype=features.dtype, device=features.device)[:, None].expand(latent, batch, latent)
        tangents = basis.reshape(latent, batch, *linear.points.shape[1:])
        columns = linear.forward_products(tangents, linear.chunk or EXACT_CALL)  # (N, B, D)
        jacobian = columns.permute(1, 2, 0).double()
    else:
        basis = torch.eye(width, dtype=features.dtype, device=features.device)[:, None].expand(width, batch, width)
        rows = linear.backward_products(basis, linear.chunk or EXACT_CALL)  # (D, B, ...)
        jacobian = rows.reshape(width, batch, latent).transpose(0, 1).double()  # (B, D, N)
    _, values, vh = torch.linalg.svd(jacobian, full_matrices=False)
    vectors = vh[:, :k].transpose(1, 2).to(features.dtype)
    iterations = torch.zeros(batch, dtype=torch.long)
    return TopK(
        vectors, values[:, :k].to(features.dtype), iterations, 2, batch * (1 + (latent if side == "columns" else width))
    )


class _Linearization:
    """J v and J^T u at a fixed batch of points: one primal forward, reused by every product; J v
    from ``jv`` (JV_SOURCES); ``chunk`` probes per vmapped call (None: all at once)."""

    def __init__(self, fn, points: Tensor, conditions: Sequence[Tensor], jv: str, chunk: int | None = None):
        self.fn = lambda z: fn(z, *conditions)
        self.points, self.jv, self.chunk = points, jv, chunk
        self.features, self.pullback = torch.func.vjp(self.fn, points)
        self.linearized = None

    def forward_products(self, tangents: Tensor, chunk_size: int | None = None) -> Tensor:
        """(r, b, ...) -> (r, b, D): J v for r probes of every point, ``chunk_size`` (default: the
        linearization's) probes per call."""
        chunk_size = chunk_size or self.chunk
        if self.jv == "forward":
            return torch.func.vmap(lambda v: torch.func.jvp(self.fn, (self.points,), (v,))[1], chunk_size=chunk_size)(
                tangents
            )
        if self.linearized is None:  # u -> J^T u is linear; its VJP with cotangent v is J v (one double-backward graph)
            _, self.linearized = torch.func.vjp(lambda u: self.pullback(u)[0], torch.zeros_like(self.features))
        return torch.func.vmap(self.linearized, chunk_size=chunk_size)(tangents)[0]

    def backward_products(self, cotangents: Tensor, chunk_size: int | None = None) -> Tensor:
        """(r, b, D) -> (r, b, ...): J^T u, as forward_products."""
        return torch.func.vmap(self.pullback, chunk_size=chunk_size or self.chunk)(cotangents)[0]


def _first_block(batch, latent, probes, generator, device, start) -> Tensor:
    """(B, N, r) orthonormal float64: r Gaussian probes (drawn on the CPU from ``generator``, the same
    draw with or without a start), the first m of them replaced by ``start``'s directions."""
    omega = torch.randn(batch, latent, probes, generator=generator, dtype=torch.float64, device="cpu").to(device)
    if start is not None:
        kept = min(start.shape[2], probes)
        omega = torch.cat([start[:, :, :kept].to(device, torch.float64), omega[:, :, kept:]], 2)
    return torch.linalg.qr(omega).Q


def _rayleigh_ritz(space, images, k, tol, step, active, vectors, values, iterations, pulled=None) -> Tensor:
    """The top-k Ritz pairs inside span(space) (orthonormal, (b, N, m)) from images = J space, written
    into the active rows of vectors, values, iterations; which active images converged. Without
    ``pulled``: their estimate moved less than tol since the last step (none on the first). With
    ``pulled`` = JᵀJ space: the relative residual ‖JᵀJ V_k - V_k Σ_k²‖_F / σ_1² is below tol."""
    _, ritz_values, ritz_rotation = torch.linalg.svd(images, full_matrices=False)
    rotation = ritz_rotation[:, :k].transpose(1, 2)  # (b, m, k)
    estimate = space @ rotation  # (b, N, k)
    if pulled is not None:
        squares = ritz_values[:, :k] ** 2
        residual = pulled @ rotation - estimate * squares[:, None, :]
        scale = squares[:, 0].clamp(min=torch.finfo(squares.dtype).tiny)  # σ_1²; J = 0 converges at once
        converged = (torch.linalg.matrix_norm(residual) / scale < tol).cpu()
    elif step > 1:
        converged = (principal_angle(vectors[active], estimate) < tol).cpu()
    else:
        converged = torch.zeros(len(active), dtype=torch.bool)
    vectors[active], values[active] = estimate, ritz_values[:, :k]
    iterations[active] = step
    return converged


def _subspace_iteration(linear: _Linearization, fn, x, conditions, k, basis, max_iters, tol, stop) -> TopK:
    """``basis``: the first block (B, N, r) float64, orthonormal probes."""
    batch, shape = x.shape[0], x.shape[1:]
    latent, probes = math.prod(shape), basis.shape[2]
    vectors = torch.zeros(batch, latent, k, dtype=torch.float64, device=x.device)
    values = torch.zeros(batch, k, dtype=torch.float64, device=x.device)
    iterations = torch.zeros(batch, dtype=torch.long)
    active = torch.arange(batch)  # images still iterating (indices into the batch, on the CPU)
    calls, products = 1, batch  # the primal forward
    for iteration in range(1, max_iters + 1):
        tangents = basis.permute(2, 0, 1).reshape(probes, len(active), *shape).to(x.dtype)
        images = linear.forward_products(tangents).permute(1, 2, 0).double()  # (b, D, r) = J Q
        calls, products = calls + 1, products + probes * len(active)
        pulled = None
        if stop == "residual":  # J^T J Q first: the residual test reads it, the next step starts from it
            pulled = _pull(linear, images, x.dtype, latent)
            calls, products = calls + 1, products + probes * len(active)
        converged = _rayleigh_ritz(basis, images, k, tol, iteration, active, vectors, values, iterations, pulled)
        if iteration == max_iters or bool(converged.all()):
            break
        if converged.any():  # converged images leave: re-linearize on the rest (one forward, saves r products each)
            keep = ~converged
            active, images, basis = active[keep], images[keep], basis[keep]
            pulled = None if pulled is None else pulled[keep]
            linear = _Linearization(
                fn, x[active], [condition[active] for condition in conditions], linear.jv, linear.chunk
            )
            calls, products = calls + 1, products + len(active)
        if pulled is None:
            pulled = _pull(linear, images, x.dtype, latent)  # (b, N, r) = J^T J Q
            calls, products = calls + 1, products + probes * len(active)
        basis = torch.linalg.qr(pulled).Q
    return TopK(vectors.to(x.dtype), values.to(x.dtype), iterations, calls, products)


def _pull(linear: _Linearization, images: Tensor, dtype: torch.dtype, latent: int) -> Tensor:
    """J^T of images (b, D, r) as (b, N, r) float64: r VJPs per image through the stored pullback."""
    pulled = linear.backward_products(images.permute(2, 0, 1).to(dtype))  # (r, b, ...)
    return pulled.reshape(images.shape[2], images.shape[0], latent).permute(1, 2, 0).double()


def _orthogonal_block(block: Tensor, basis: Tensor) -> Tensor:
    """An orthonormal basis of block's part outside span(basis); (b, N, r) float64. Project, then
    normalize, twice: once the space nearly holds the block (its rank reached), what is left is
    rounding error, and normalizing it brings back components along the space that a second
    projection removes (the Rayleigh–Ritz step needs the whole space orthonormal)."""
    for _ in range(2):
        block = block - basis @ (basis.transpose(1, 2) @ block)
        block = torch.linalg.qr(block).Q
    return block


def _block_krylov(linear: _Linearization, fn, x, conditions, k, block, max_iters, tol, stop) -> TopK:
    """Block Krylov over J^T J (module docstring): after step i an image's space holds i blocks of r
    orthonormal probes, their images J K, and the Ritz estimate of the top k from an SVD of J K.
    Converged images leave the batch (one new forward for the rest, as in subspace iteration).
    ``block``: the first block (B, N, r) float64 orthonormal; under the residual rule the space's
    pullbacks J^T J K are kept beside it."""
    batch, shape = x.shape[0], x.shape[1:]
    latent, probes = math.prod(shape), block.shape[2]
    space = images = pulled_space = None  # K (b, N, m), J K (b, D, m), J^T J K (b, N, m)
    vectors = torch.zeros(batch, latent, k, dtype=torch.float64, device=x.device)
    values = torch.zeros(batch, k, dtype=torch.float64, device=x.device)
    iterations = torch.zeros(batch, dtype=torch.long)
    active = torch.arange(batch)
    calls, products = 1, batch  # the primal forward
    for step in range(1, max_iters + 1):
        tangents = block.permute(2, 0, 1).reshape(probes, len(active), *shape).to(x.dtype)
        image = linear.forward_products(tangents).permute(1, 2, 0).double()  # (b, D, r) = J Q_i
        calls, products = calls + 1, products + probes * len(active)
        space = block if space is None else torch.cat([space, block], 2)
        images = image if images is None else torch.cat([images, image], 2)
        pulled = None
        if stop == "residual":  # J^T J Q_i first: the residual test reads it, the next block is made of it
            pulled = _pull(linear, image, x.dtype, latent)
            calls, products = calls + 1, products + probes * len(active)
            pulled_space = pulled if pulled_space is None else torch.cat([pulled_space, pulled], 2)
        converged = _rayleigh_ritz(  # over all of K
            space, images, k, tol, step, active, vectors, values, iterations, pulled_space
        )
        if bool(converged.all()) or step == max_iters or space.shape[2] + probes > latent:
            break
        if converged.any():
            keep = ~converged
            active, space, images, image = active[keep], space[keep], images[keep], image[keep]
            if pulled is not None:
                pulled, pulled_space = pulled[keep], pulled_space[keep]
            linear = _Linearization(
                fn, x[active], [condition[active] for condition in conditions], linear.jv, linear.chunk
            )
            calls, products = calls + 1, products + len(active)
        if pulled is None:
            pulled = _pull(linear, image, x.dtype, latent)  # (b, N, r) = J^T J Q_i
            calls, products = calls + 1, products + probes * len(active)
        block = _orthogonal_block(pulled, space)
    return TopK(vectors.to(x.dtype), values.to(x.dtype), iterations, calls, products)
