"""Fused linear CKA: ``torch.library`` custom ops, fake implementations, autograd and dispatch.

Math (see clarep_fast/reference/cka.py for the definitions): with Grams K = x xᵀ, L = y yᵀ and
their centered forms C(K), C(L) (double centering, or U-centering when unbiased),

    CKA = hkl / sqrt(hkk · hll),   hkl = <C(K), C(L)>,  hkk = <C(K), C(K)>,  hll = <C(L), C(L)>.

Gradient: C is a self-adjoint projection, so d hkl/dK = C(L) and d hkk/dK = 2 C(K), hence

    dCKA/dK = C(L)/sqrt(hkk hll) - CKA · C(K)/hkk        (symmetric)
    dx = (dCKA/dK + dCKA/dKᵀ) x = 2 (dCKA/dK) x           (and the same for y with K <-> L)

Pipeline of one call over P layer pairs sharing the batch size n:
  forward:  Grams on the vendor GEMM into one (P, 2, n, n) buffer (reads each input once);
            ONE n×n kernel per call: row sums, centering, hkl/hkk/hll, traces, the ratio.
  backward: ONE n×n kernel per call: the combined coefficient matrices 2g·dCKA/dK, 2g·dCKA/dL;
            then one GEMM per input that needs a gradient (reads each input once more).
Only the (P, 2, n, n) Grams, row sums and stats are saved: never a centered (n, d) copy.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from clarep_fast.backends import Kernels, compiled_ops, resolve_backend, takes_whole_call
from clarep_fast.ops.autograd import per_tensor, wire
from clarep_fast.ops.batching import register_loop_vmap
from clarep_fast.dtypes import accumulation_dtype, require_bool, require_float
from clarep_fast.finite import refuse_non_finite
from clarep_fast.ops.gram import shifted_gram_backward, shifted_gram_into
from clarep_fast.ops.spec import OpSpec, random_tensor
from clarep_fast.reference.cka import (
    DEGENERATE_RTOL,
    SPREAD_RTOL,
    STATS_FIELDS,
    cka_grads_reference,
    cka_reference,
    cka_stats_reference,
)

NUM_STATS = len(STATS_FIELDS)
CKA_STAT = STATS_FIELDS.index("cka")
X_ONLY_STATS = [STATS_FIELDS.index("hkk"), STATS_FIELDS.index("trace_x")]  # the fields that depend on x alone
Y_ONLY_STATS = [STATS_FIELDS.index("hll"), STATS_FIELDS.index("trace_y")]


# ----------------------------------------------------------------------------- backend kernels
# Every backend provides the two n×n kernels with one contract:
#   cka_stats(grams (P,2,n,n), unbiased, rtol) -> (stats (P,8) in STATS_FIELDS order, rowsums (P,2,n))
#   cka_grads(grams, rowsums, stats, grad (P,), unbiased, rtol) -> coefficients (P,2,n,n),
#       coefficients[p,0] = 2 g_p dCKA_p/dK_p and coefficients[p,1] = 2 g_p dCKA_p/dL_p.
# rowsums are the (off-diagonal, when unbiased) row sums of K and L, reused by the backward;
# rtol is DEGENERATE_RTOL, passed in so that every backend draws the same line.


class CkaKernels(NamedTuple):
    """The two n×n stages of one backend, by name (contract above)."""

    stats: Callable
    grads: Callable


def _triton_kernels():
    from clarep_fast.kernels import cka as triton_cka

    return CkaKernels(triton_cka.cka_stats, triton_cka.cka_grads)


def _compiled_kernels():
    return CkaKernels(compiled_ops().cka_stats.default, compiled_ops().cka_grads.default)


KERNELS = Kernels(
    torch=CkaKernels(cka_stats_reference, cka_grads_reference), triton=_triton_kernels, compiled=_compiled_kernels
)


# ----------------------------------------------------------------------------- custom ops


@torch.library.custom_op("clarep_fast::cka_forward", mutates_args=())
def cka_forward(
    xs: list[Tensor], ys: list[Tensor], unbiased: bool, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """CKA of P pairs (xs[p]: (n, d_p), ys[p]: (n, e_p)) -> (cka (P,), stats (P,8), rowsums (P,2,n), grams (P,2,n,n),
    scales (P,2), shifted (P,2): whether each input was shifted chunk by chunk, ops/gram.py)."""
    n, dtype = xs[0].shape[0], accumulation_dtype(*xs, *ys)
    grams = torch.empty(len(xs), 2, n, n, dtype=dtype, device=xs[0].device)  # (P, 2, n, n) shifted Grams K'
    shifted = torch.tensor(
        [
            [shifted_gram_into(x, grams[pair, 0]), shifted_gram_into(y, grams[pair, 1])]
            for pair, (x, y) in enumerate(zip(xs, ys))
        ]
    )
    scales = _condition_grams(grams, xs, ys)
    stats, rowsums = KERNELS.on(backend).stats(grams, unbiased, DEGENERATE_RTOL)
    _raise_if_not_finite(stats)
    return stats[:, CKA_STAT].clone(), stats, rowsums, grams, scales, shifted


@cka_forward.register_fake
def _(xs, ys, unbiased, backend):
    pairs, n, dtype = len(xs), xs[0].shape[0], accumulation_dtype(*xs, *ys)
    new = xs[0].new_empty
    return (new(pairs, dtype=dtype), new(pairs, NUM_STATS, dtype=dtype), new(pairs, 2, n, dtype=dtype), new(pairs, 2, n, n, dtype=dtype),
            new(pairs, 2, dtype=dtype), torch.empty(pairs, 2, dtype=torch.bool))  # fmt: skip


@torch.library.custom_op("clarep_fast::cka_backward", mutates_args=())
def cka_backward(
    grad: Tensor,
    stats: Tensor,
    rowsums: Tensor,
    grams: Tensor,
    scales: Tensor,
    shifted: Tensor,
    xs: list[Tensor],
    ys: list[Tensor],
    unbiased: bool,
    need_x: bool,
    need_y: bool,
    backend: str,
) -> tuple[list[Tensor], list[Tensor]]:
    """Input gradients of cka_forward; an input list that needs no gradient gets an empty list."""
    coefficients = KERNELS.on(backend).grads(
        grams, rowsums, stats, grad.to(grams.dtype).contiguous(), unbiased, DEGENERATE_RTOL
    )
    coefficients = coefficients * scales[:, :, None, None]  # the Grams were scaled by s: dCKA/dK = s · dCKA/d(sK)
    flags = shifted.tolist()  # a CPU tensor: no sync
    dxs = [shifted_gram_backward(coefficients[p, 0], x, flags[p][0]) for p, x in enumerate(xs)] if need_x else []
    dys = [shifted_gram_backward(coefficients[p, 1], y, flags[p][1]) for p, y in enumerate(ys)] if need_y else []
    return dxs, dys


@cka_backward.register_fake
def _(grad, stats, rowsums, grams, scales, shifted, xs, ys, unbiased, need_x, need_y, backend):
    return ([torch.empty_like(x) for x in xs] if need_x else []), ([torch.empty_like(y) for y in ys] if need_y else [])


register_loop_vmap(cka_backward)  # jacrev: vmap over the backward (ops/batching.py)


def _setup_context(ctx, inputs, output):
    xs, ys, unbiased, backend = inputs
    _, stats, rowsums, grams, scales, shifted = output
    ctx.mark_non_differentiable(stats, rowsums, grams, scales, shifted)
    ctx.save_for_backward(stats, rowsums, grams, scales, shifted, *xs, *ys)
    ctx.pairs, ctx.unbiased, ctx.backend = len(xs), unbiased, backend


def _backward(ctx, needs, grad_cka, *unused_grads):
    stats, rowsums, grams, scales, shifted, *inputs = ctx.saved_tensors
    xs, ys = inputs[: ctx.pairs], inputs[ctx.pairs :]
    need_xs, need_ys = per_tensor(needs[0], ctx.pairs), per_tensor(needs[1], ctx.pairs)
    dxs, dys = cka_backward(
        grad_cka, stats, rowsums, grams, scales, shifted, xs, ys, ctx.unbiased, any(need_xs), any(need_ys), ctx.backend
    )
    nothing = [None] * ctx.pairs  # a tensor-list input takes a list of per-tensor gradients
    return (
        [dx if need else None for dx, need in zip(dxs, need_xs)] if dxs else nothing,
        [dy if need else None for dy, need in zip(dys, need_ys)] if dys else nothing,
        None,
        None,
    )


cka_function = wire(
    cka_forward,
    _setup_context,
    _backward,
    "clarep_fast.cka has no vmap rule: pass the layer pairs to one cka_pairs(xs, ys) call instead of mapping over them",
)


# ----------------------------------------------------------------------------- public API


def cka(x: Tensor, y: Tensor, *, unbiased: bool = False) -> Tensor:
    """Linear CKA between x: (n, ...) and y: (n, ...), flattened per sample -> 0-dim fp32 tensor.

    unbiased=False: biased HSIC (Kornblith et al. 2019), in [0, 1].
    unbiased=True: unbiased HSIC (Song et al. 2012), needs n >= 4, can leave [0, 1] slightly.
    An input without spread (std/|mean| below ~16 eps of the accumulation dtype) gives 0 with a zero
    gradient; a large mean next to a real spread is exact. Differentiable in both arguments.
    """
    return cka_pairs([x], [y], unbiased=unbiased, _names=("x", "y"))[0]


def cka_pairs(xs: Sequence[Tensor], ys: Sequence[Tensor], *, unbiased: bool = False, _names=("xs", "ys")) -> Tensor:
    """CKA of every layer pair (xs[p], ys[p]) in one call -> (P,) tensor; all inputs share n.

    On the cpu and cuda backends an eager call is one compiled operator with its autograd in C++
    (csrc/cka/cka_call.cpp); under torch.compile, torch.func transforms, the triton and torch
    backends and for fp16/bf16 CUDA inputs it runs the same steps as the custom ops above.
    """
    require_bool("unbiased", unbiased)
    xs, ys = _validated(xs, ys, unbiased, _names)
    backend = resolve_backend(xs[0].device)
    if _one_compiled_call(backend, xs, ys):
        value, stats = compiled_ops().cka_call(xs, ys, unbiased, DEGENERATE_RTOL)
        _raise_if_not_finite(stats)
        return value
    if torch.compiler.is_compiling():  # dynamo traces the custom op and its registered autograd
        return cka_forward(xs, ys, unbiased, backend)[0]
    return cka_function(xs, ys, unbiased, backend)[0]


def _one_compiled_call(backend: str, xs: list[Tensor], ys: list[Tensor]) -> bool:
    """Whether this call takes clarep_fast_C::cka_call (backends.takes_whole_call), except fp16/bf16
    inputs on CUDA: those use cuBLAS's low-precision GEMM with fp32 accumulation (ops/gram.py)."""
    if not takes_whole_call(backend):
        return False
    return backend == "cpu" or all(t.dtype in (torch.float32, torch.float64) for t in (*xs, *ys))


# ----------------------------------------------------------------------------- input checks


def _validated(xs, ys, unbiased: bool, names: tuple[str, str]) -> tuple[list[Tensor], list[Tensor]]:
    """Flatten each input to (n, d) and raise a clear error on anything we cannot compute."""
    if isinstance(xs, Tensor) or isinstance(ys, Tensor):
        raise TypeError(f"{names[0]} and {names[1]} must be sequences of tensors; use cka(x, y) for one pair")
    xs, ys = list(xs), list(ys)
    if not xs or len(xs) != len(ys):
        raise ValueError(
            f"{names[0]} and {names[1]} must be non-empty and of equal length, got {len(xs)} and {len(ys)}"
        )
    single = len(xs) == 1 and names == ("x", "y")
    flat = {names[0]: [], names[1]: []}
    device, n = None, None
    for side, tensors in zip(names, (xs, ys)):
        for pair, tensor in enumerate(tensors):
            name = side if single else f"{side}[{pair}]"
            require_float(name, tensor)
            if tensor.dim() < 2:
                raise ValueError(
                    f"{name} must have shape (n, ...) with at least 2 dimensions, got shape {tuple(tensor.shape)}"
                )
            if tensor.numel() == 0:
                raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); CKA needs samples and features")
            if device is None:
                device, n = tensor.device, tensor.shape[0]
            if tensor.device != device:
                raise ValueError(
                    f"{name} is on {tensor.device} but the first input is on {device}; put all inputs on one device"
                )
            if tensor.shape[0] != n:
                raise ValueError(
                    f"{name} has {tensor.shape[0]} samples but the first input has {n}; all inputs must share n"
                )
            flat[side].append(tensor.reshape(n, -1))
    minimum = 4 if unbiased else 2
    if n < minimum:
        kind = "unbiased" if unbiased else "biased"
        raise ValueError(f"{names[0]} has n={n} samples; {kind} CKA needs n >= {minimum}")
    return flat[names[0]], flat[names[1]]


def _condition_grams(grams: Tensor, xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """One pass over the (P, 2, n, n) shifted Grams before the n×n kernels; returns the scales s (P, 2).

    1. Scale each Gram by a power of two s that brings its trace into [1, 2): CKA does not change,
       and the kernels' sums of squared entries neither underflow (features of size 1e-12 give Gram
       entries near 1e-23 and squares below fp32's smallest number) nor overflow. (Features below
       ~1e-19 in fp32 make the Gram itself subnormal: approximate, not zero.) The backward needs s.
    2. Zero the Gram of every input whose spread the accumulation cannot resolve (the degenerate
       rule of clarep_fast/reference/cka.py), so that every backend returns CKA = 0 with a zero
       gradient for it. With K' = x'x'ᵀ (x' = x - 1 x[0]ᵀ): ‖x - 1 meanᵀ‖² = tr K' - 1ᵀK'1/n, and
       ‖x‖² is of the order of tr K' + n‖x[0]‖²; these sums are taken in fp64 (no overflow).
    Both are one multiply by s·mask; no host sync. A NaN (an overflowed Gram) stays, to be reported.
    """
    n = grams.shape[-1]
    first = torch.stack(  # (P, 2)
        [torch.stack([x[0].double().square().sum(), y[0].double().square().sum()]) for x, y in zip(xs, ys)]
    )
    trace = grams.diagonal(dim1=-2, dim2=-1).sum(-1, dtype=torch.float64)  # (P, 2)
    spread = trace - grams.sum((-2, -1), dtype=torch.float64) / n
    resolved = ~(spread <= SPREAD_RTOL[grams.dtype] * (trace + n * first))
    usable = torch.isfinite(trace) & (trace > 0)
    # s stays a finite fp32 number
    exponent = -torch.floor(torch.log2(torch.where(usable, trace, torch.ones_like(trace)))).clamp(-126, 126)
    scales = torch.where(usable, torch.exp2(exponent), torch.ones_like(trace)).to(grams.dtype)
    grams.mul_((scales * resolved)[..., None, None])
    return scales


def _raise_if_not_finite(stats: Tensor) -> None:
    """NaN/Inf in an input (or an fp32 overflow of its Gram) shows up in its HSIC and trace."""

    def explain(bad: Tensor) -> str:
        pair = int(bad.any(1).nonzero()[0])
        x_bad = bool(bad[pair, X_ONLY_STATS].any())
        y_bad = bool(bad[pair, Y_ONLY_STATS].any())
        culprit = " and ".join(name for name, is_bad in (("x", x_bad), ("y", y_bad)) if is_bad) or "x or y"
        return f"cka: {culprit} of pair {pair} holds NaN or Inf (or its Gram overflowed {stats.dtype})"

    refuse_non_finite(stats, "cka", explain)


# ----------------------------------------------------------------------------- op table row


def _example(device, dtype, generator):
    """Two pairs at odd widths; y correlated with x so that CKA is far from 0."""
    x = random_tensor(generator, device, dtype, 41, 401, requires_grad=True)
    y = (random_tensor(generator, device, dtype, 41, 33) + x[:, :33].detach()).requires_grad_(True)
    return (x, y), {"unbiased": False}


def _launch_cases(device, dtype):
    """The Triton kernels' tiles are fixed per Gram dtype (kernels/cka.py): both flags, n odd and a
    multiple of 16 (Triton specializes ints divisible by 16), every input trainable."""
    generator = torch.Generator().manual_seed(0)
    for unbiased in (False, True):
        for n in (41, 48):
            x = random_tensor(generator, device, dtype, n, 33, requires_grad=True)
            y = (random_tensor(generator, device, dtype, n, 20) + x[:, :20].detach()).requires_grad_(True)
            yield (x, y), {"unbiased": unbiased}


SPEC = OpSpec("cka", cka, cka_reference, KERNELS, _example, _launch_cases)
