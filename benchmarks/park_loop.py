"""A re-implementation of the Park et al. (2023) Jacobian power loop: the baseline CLARID is measured against.

"Unsupervised Discovery of Semantic Latent Directions in Diffusion Models" finds the top-k right
singular vectors of J = df(x)/dx one image at a time with a power method on JᵀJ. As the published
code runs it, the k Jacobian-vector products of an iteration are batched in chunks (functorch's
jacfwd/vmap over the directions), and so are the k vector-Jacobian products. Per image:
  forward once (its pullback serves the VJPs);  V_0 = k random directions, orthonormalized
  each iteration:
    1. u_i = J v_i for i = 1..k: torch.func.jvp vmapped over the directions, ``chunk`` at a time
    2. w_i = Jᵀ u_i for i = 1..k: the pullback vmapped over the u_i, ``chunk`` at a time
    3. a full SVD of the stacked (k, N) matrix W: V_{t+1} = its right singular vectors, σ = its
       singular values' square roots (W = (JᵀJ) V: σ_i(W) ≈ σ_i(J)²)
    4. results come back to the host each iteration (the published loop converts to numpy)
No oversampling, no batching over images, no early exit inside the network beyond
what the feature function itself does (we give it the same early-exit tap as CLARID, so the
comparison isolates the algorithm and its batching). Kept in benchmarks/: not library code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


def park_power_loop(
    fn: Callable[[Tensor], Tensor],
    x: Tensor,
    k: int,
    iterations: int,
    *,
    generator: torch.Generator,
    callback: Callable[[int, Tensor], bool] | None = None,
    chunk: int | None = 32,
) -> tuple[Tensor, Tensor, dict]:
    """One image x (1, ...): (V (N, k), σ (k,), counts). ``callback(iteration, V)`` may stop the loop
    early by returning True (the benchmark's accuracy oracle; its cost is the caller's to exclude)."""
    latent = x[0].numel()
    counts = {"iterations": 0, "calls": 1, "products": 0}
    with sdpa_kernel(SDPBackend.MATH):
        point = x.detach()
        features, pullback = torch.func.vjp(fn, point)  # (1, D); the pullback is reused by every VJP
        directions = torch.randn(k, latent, generator=generator, dtype=x.dtype).to(x.device)
        directions = torch.linalg.svd(directions, full_matrices=False).Vh  # (k, N) orthonormal rows
        values = torch.zeros(k)
        for iteration in range(1, iterations + 1):
            tangents = directions.reshape(k, *x.shape)
            # step 1: (k, 1, D)
            images = torch.func.vmap(lambda v: torch.func.jvp(fn, (point,), (v,))[1], chunk_size=chunk)(tangents)
            # step 2: (k, N)
            pulled = torch.func.vmap(lambda u: pullback(u)[0], chunk_size=chunk)(images).reshape(k, -1)
            chunks = -(-k // chunk) if chunk else 1
            counts["calls"] += 2 * chunks
            counts["products"] += 2 * k
            _, singular, vh = torch.linalg.svd(pulled.double(), full_matrices=False)  # step 3
            directions = vh.to(x.dtype)
            values = singular.sqrt().float().cpu()  # step 4
            directions = torch.from_numpy(directions.cpu().numpy()).to(x.device)
            counts["iterations"] = iteration
            if callback is not None and callback(iteration, directions.T):
                break
    return directions.T, values, counts
