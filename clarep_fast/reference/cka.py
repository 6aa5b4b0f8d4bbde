"""Linear CKA in plain PyTorch: the test oracle, the benchmark baseline and the fallback backend.

Linear CKA between feature matrices ``x: (n, d1)`` and ``y: (n, d2)`` (n samples):

    K = x xᵀ,  L = y yᵀ                                (n, n) Gram matrices
    HSIC_b(K, L) = tr(H K H L) / (n-1)²,  H = I - 11ᵀ/n    (biased)
    HSIC_u(K, L) = [tr(K̃ L̃) + 1ᵀK̃1·1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1] / (n(n-3))
                   K̃ = K with its diagonal zeroed          (unbiased, Song et al. 2012; n >= 4)
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))

Both HSICs are inner products of *centered* Grams, which is how everything here computes them:
  biased:    C(K) = H K H,  i.e.  C(K)_ij = K_ij - r_i/n - r_j/n + S/n²,  r = K 1, S = 1ᵀK1;
  unbiased:  C(K) = U-centered K (Székely & Rizzo 2014), zero diagonal and, for i != j,
             C(K)_ij = K̃_ij - (r̃_i + r̃_j)/(n-2) + S̃/((n-1)(n-2)),  r̃ = K̃ 1, S̃ = 1ᵀK̃1.
Both C are orthogonal projections, so HSIC(K, L) ∝ <C(K), C(L)> = <K, C(L)>, and the constant
factors cancel in CKA:  CKA = <C(K), C(L)> / sqrt(<C(K), C(K)> <C(L), C(L)>).

Degenerate input (documented behaviour, identical on every backend): an input without spread
across samples makes CKA 0/0. We return CKA = 0 with a zero gradient when an input's spread is
below what the accumulation precision resolves, relative to its size:

    ‖x - 1 meanᵀ‖²  <=  SPREAD_RTOL[dtype] · ‖x‖²,     SPREAD_RTOL = (16 eps)²  (eps of the accumulation dtype)

i.e. std/|mean| below about 16 eps (2e-6 in fp32, 4e-15 in fp64): a feature matrix whose samples
agree to the last few bits. Features with a large mean and a real spread (post-ReLU features;
|mean|/std = 1e4 is far from the line) are not degenerate and get their true CKA (the fused op
shifts every input by its first sample before forming Grams: clarep_fast/ops/gram.py says why).
A Gram whose centered norm is exactly 0 (DEGENERATE_RTOL, the kernels' own guard) gives 0 too.

Computation is in float32 (float64 for float64 inputs), whatever the input dtype.

The torch backend of the fused op runs ``cka_stats_reference`` and ``cka_grads_reference``: the
same two n×n kernels as the compiled and Triton backends, written in PyTorch.
"""

from __future__ import annotations

import torch

from clarep_fast.dtypes import accumulation_dtype

DEGENERATE_RTOL = 1e-10  # the n×n kernels' guard: <C(K), C(K)> <= this · tr(K)² only when C(K) is 0
SPREAD_RTOL = {
    torch.float32: (16 * torch.finfo(torch.float32).eps) ** 2,
    torch.float64: (16 * torch.finfo(torch.float64).eps) ** 2,
}


def center_gram(gram: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """C(K) for a batch of symmetric Grams ``(..., n, n)``: double centering or U-centering."""
    n = gram.shape[-1]
    if not unbiased:
        row = gram.sum(-1)  # (..., n)
        total = row.sum(-1)[..., None, None]  # (..., 1, 1)
        return gram - row[..., :, None] / n - row[..., None, :] / n + total / n**2
    off_diagonal = 1.0 - torch.eye(n, dtype=gram.dtype, device=gram.device)
    gram = gram * off_diagonal  # K̃
    row = gram.sum(-1)
    total = row.sum(-1)[..., None, None]
    centered = gram - (row[..., :, None] + row[..., None, :]) / (n - 2) + total / ((n - 1) * (n - 2))
    return centered * off_diagonal


STATS_FIELDS = ("cka", "hkl", "hkk", "hll", "trace_x", "trace_y", "sum_x", "sum_y")
# The fp64 partial sums each row block of the CUDA and Triton stats kernels writes, before the
# last block of a pair adds them up: <K°,L°>, <K°,K°>, <L°,L°>, tr K, tr L (K° = K, or K with a
# zeroed diagonal when unbiased). csrc/cka/cka.h's enum CkaPartial lists the same, in this order.
PARTIAL_FIELDS = ("kl", "kk", "ll", "trace_x", "trace_y")


def gram_stats(
    gram_x: torch.Tensor, gram_y: torch.Tensor, unbiased: bool = False, rtol: float = DEGENERATE_RTOL
) -> torch.Tensor:
    """Per-pair statistics from uncentered Grams ``(..., n, n)`` -> ``(..., 8)`` in STATS_FIELDS order.

    hkl = <C(K), C(L)>, hkk = <C(K), C(K)>, hll = <C(L), C(L)>, trace_x = tr K, trace_y = tr L,
    sum_x = 1ᵀK1 (1ᵀK̃1 when unbiased), sum_y likewise. Differentiable; the fused kernels return
    exactly these fields.
    """
    kc = center_gram(gram_x, unbiased)
    lc = center_gram(gram_y, unbiased)
    hkl = (kc * lc).sum((-2, -1))
    hkk = (kc * kc).sum((-2, -1))
    hll = (lc * lc).sum((-2, -1))
    trace_x = gram_x.diagonal(dim1=-2, dim2=-1).sum(-1)
    trace_y = gram_y.diagonal(dim1=-2, dim2=-1).sum(-1)
    cka = _ratio(hkl, hkk, hll, trace_x, trace_y, rtol)
    sum_x, sum_y = gram_x.sum((-2, -1)), gram_y.sum((-2, -1))
    if unbiased:
        sum_x, sum_y = sum_x - trace_x, sum_y - trace_y
    return torch.stack([cka, hkl, hkk, hll, trace_x, trace_y, sum_x, sum_y], dim=-1)


def cka_from_grams_reference(gram_x: torch.Tensor, gram_y: torch.Tensor, unbiased: bool = False) -> torch.Tensor:
    """CKA from uncentered Grams ``(..., n, n)`` -> ``(...)``."""
    return gram_stats(gram_x, gram_y, unbiased)[..., 0]


def cka_stats_reference(grams: torch.Tensor, unbiased: bool, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward n×n kernel: grams (P, 2, n, n) -> (stats (P, 8), rowsums (P, 2, n)).

    rowsums are the row sums of K and L (off the diagonal when unbiased), which the compiled
    kernels hand to their backward; this one recomputes what it needs.
    """
    rowsums = grams.sum(-1)
    if unbiased:
        rowsums = rowsums - grams.diagonal(dim1=-2, dim2=-1)
    return gram_stats(grams[:, 0], grams[:, 1], unbiased, rtol), rowsums


def cka_grads_reference(
    grams: torch.Tensor, rowsums: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, unbiased: bool, rtol: float
) -> torch.Tensor:
    """The backward n×n kernel -> coefficients (P, 2, n, n): [p, 0] = 2 g_p dCKA_p/dK_p, [p, 1] = 2 g_p dCKA_p/dL_p.

    C is self-adjoint, so d hkl/dK = C(L) and d hkk/dK = 2 C(K):
        dCKA/dK = C(L)/sqrt(hkk hll) - CKA · C(K)/hkk      (and K <-> L);
    the factor 2 symmetrizes (dx = (G + Gᵀ) x = 2 G x). A degenerate pair gets zero coefficients.
    """
    kc = center_gram(grams[:, 0], unbiased)  # (P, n, n)
    lc = center_gram(grams[:, 1], unbiased)
    value, hkl, hkk, hll, trace_x, trace_y, _, _ = stats.unbind(-1)  # each (P,)
    ok = (hkk > rtol * trace_x**2) & (hll > rtol * trace_y**2)  # else zero gradient
    one = torch.ones_like(hkk)
    hkk, hll = torch.where(ok, hkk, one), torch.where(ok, hll, one)
    scale = torch.where(ok, 2 * grad, torch.zeros_like(grad))[:, None, None]  # 2g, symmetrization
    inv_norm = (hkk.sqrt() * hll.sqrt()).reciprocal()[:, None, None]
    value = value[:, None, None]
    d_gram_x = scale * (lc * inv_norm - value * kc / hkk[:, None, None])
    d_gram_y = scale * (kc * inv_norm - value * lc / hll[:, None, None])
    return torch.stack([d_gram_x, d_gram_y], dim=1)


def cka_reference(x: torch.Tensor, y: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """Linear CKA the textbook way: center the features, form Grams, take the HSIC ratio.

    x: (n, ...), y: (n, ...) -> scalar. This is what "eager PyTorch" means in our benchmarks: it
    materializes centered (n, d) copies of x and y and autograd keeps them for backward.
    """
    dtype = accumulation_dtype(x, y)
    x = x.reshape(x.shape[0], -1).to(dtype)  # (n, d1)
    y = y.reshape(y.shape[0], -1).to(dtype)  # (n, d2)
    xc = _centered_or_zero(x)
    yc = _centered_or_zero(y)
    kc = xc @ xc.T  # = H K H exactly, since the columns of xc sum to zero
    lc = yc @ yc.T
    if unbiased:
        kc = center_gram(kc, unbiased=True)
        lc = center_gram(lc, unbiased=True)
    hkl = (kc * lc).sum()
    hkk = (kc * kc).sum()
    hll = (lc * lc).sum()
    return _ratio(hkl, hkk, hll, xc.pow(2).sum(), yc.pow(2).sum())


def _centered_or_zero(x: torch.Tensor) -> torch.Tensor:
    """x - 1 meanᵀ, or exactly 0 (so CKA is 0 with a zero gradient) for an input without spread."""
    centered = x - x.mean(0, keepdim=True)
    spread = centered.detach().pow(2).sum() > SPREAD_RTOL[x.dtype] * x.detach().pow(2).sum()
    return centered * spread


def _ratio(hkl, hkk, hll, trace_x, trace_y, rtol=DEGENERATE_RTOL):
    """hkl / sqrt(hkk hll), and 0 with zero gradient for a degenerate (zero-variance) input."""
    ok = (hkk > rtol * trace_x**2) & (hll > rtol * trace_y**2)
    # sqrt(hkk)·sqrt(hll), not sqrt(hkk·hll): the product can overflow fp32 for large features.
    # Substitute 1 before the sqrt so the unused branch has a finite gradient (no 0·inf = NaN).
    one = torch.ones_like(hkk)
    denominator = torch.where(ok, hkk, one).sqrt() * torch.where(ok, hll, one).sqrt()
    return torch.where(ok, hkl / denominator, torch.zeros_like(hkl))
