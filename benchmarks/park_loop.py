"""A re-implementation of the Park et al. (2023) Jacobian power loop: the baseline CLARID is measured against.

"Unsupervised Discovery of Semantic Latent Directions in Diffusion Models" finds the top-k right
singular vectors of J = df(x)/dx one image at a time with a power method on JᵀJ, written with
per-direction autodiff calls. Per image:
  forward once, keeping the graph (for the VJPs);  V_0 = k random directions, orthonormalized
  each iteration:
    1. u_i = J v_i for i = 1..k: one torch.func.jvp call per direction (batch 1, forward mode)
    2. w_i = Jᵀ u_i for i = 1..k: one torch.autograd.grad call per direction through the kept
       graph (serial backward passes)
    3. a full SVD of the stacked (k, N) matrix W: V_{t+1} = its right singular vectors, σ = its
       singular values' square roots (W = (JᵀJ) V: σ_i(W) ≈ σ_i(J)²)
    4. results come back to the host each iteration (the published loop converts to numpy)
No oversampling, no batching over directions or images, no early exit inside the network beyond
what the feature function itself does (we give it the same early-exit tap as CLARID, so the
comparison isolates the algorithm and its batching). Kept in benchmarks/: not library code.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


def park_power_loop(
    fn: Callable[[Tensor], Tensor], x: Tensor, k: int, iterations: int, *, generator: torch.Generator,
    callback: Callable[[int, Tensor], bool] | None = None,
) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    """One image x (1, ...): (V (N, k), σ (k,), counts). ``callback(iteration, V)`` may stop the loop
    early by returning True (the benchmark's accuracy oracle; its cost is the caller's to exclude)."""
    latent = x[0].numel()
    counts = {"iterations": 0, "calls": 1, "products": 0}
    with sdpa_kernel(SDPBackend.MATH):
        point = x.detach().clone().requires_grad_(True)
        features = fn(point)  # (1, D), graph kept for the serial VJPs
        directions = torch.randn(k, latent, generator=generator, dtype=x.dtype).to(x.device)
        directions = torch.linalg.svd(directions, full_matrices=False).Vh  # (k, N) orthonormal rows
        values = torch.zeros(k)
        for iteration in range(1, iterations + 1):
            images = []
            for direction in directions:  # step 1
                _, tangent = torch.func.jvp(fn, (x.detach(),), (direction.reshape(x.shape),))
                images.append(tangent.reshape(-1))
            pulled = []
            for image in images:  # step 2
                (grad,) = torch.autograd.grad(features, point, image.reshape(features.shape), retain_graph=True)
                pulled.append(grad.reshape(-1))
            counts["calls"] += 2 * k
            counts["products"] += 2 * k
            _, singular, vh = torch.linalg.svd(torch.stack(pulled).double(), full_matrices=False)  # step 3
            directions = vh.to(x.dtype)
            values = singular.sqrt().float().cpu()  # step 4
            directions = torch.from_numpy(directions.cpu().numpy()).to(x.device)
            counts["iterations"] = iteration
            if callback is not None and callback(iteration, directions.T):
                break
    return directions.T, values, counts

