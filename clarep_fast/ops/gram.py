"""The dense products around the fused n×n kernels, on the vendor GEMM (MKL/oneDNN, cuBLAS).

Forward:  K = x xᵀ, accumulated and stored in fp32 (fp64 for fp64 input), read x once.
Backward: dx = G x for a symmetric coefficient matrix G (n, n): one product per input.

The Gram is a symmetric rank-k update done by hand: split the rows into blocks, compute only the
blocks on and above the diagonal, mirror the rest. With b blocks that is b(b+1)/2 of the b² block
products: 3/4 of the FLOPs at b = 2 (measured on 2 cores at n=512, d=65536: 0.100 s against 0.122 s
for one full product; b = 4 and 8 were no faster, the smaller GEMMs run slower; on an H200 in fp32:
0.590 ms against 0.694 ms). Only from n = 128 on CPU (measured: 64 × 4096 full 210 µs, split
240 µs; 128 × 16384 2.28 ms vs 2.13 ms) and n = 512 on CUDA: below that the products are
overhead-bound and three of them plus a mirror copy cost more than the FLOPs they save.
Low-precision input is upcast one column chunk at a time, so no fp32 copy of the whole (n, d) input
ever exists.
"""

from __future__ import annotations

import functools

import torch

_ROW_BLOCKS = 2  # syrk blocking: 3 of 4 block products
_SPLIT_MIN_ROWS = {"cpu": 128, "cuda": 512}  # below these one product beats three
_UPCAST_CHUNK_ELEMENTS = 1 << 21  # at most 8 MiB of fp32 per upcast chunk


def _syrk_into(x: torch.Tensor, out: torch.Tensor, accumulate: bool) -> None:
    """out (+)= x xᵀ on the upper block triangle, mirrored (one product for small n); x and out share a dtype."""
    n = x.shape[0]
    if n < _SPLIT_MIN_ROWS.get(x.device.type, 128):
        if accumulate:
            out.addmm_(x, x.T)
        else:
            torch.mm(x, x.T, out=out)
        return
    block = max(1, -(-n // _ROW_BLOCKS))
    starts = range(0, n, block)
    for i in starts:
        xi = x[i : i + block]
        for j in starts:
            if j < i:
                continue
            product = xi @ x[j : j + block].T  # (bi, bj)
            target = out[i : i + block, j : j + block]
            if accumulate:
                target += product
            else:
                target.copy_(product)
            if j > i:
                mirror = out[j : j + block, i : i + block]
                if accumulate:
                    mirror += product.T
                else:
                    mirror.copy_(product.T)


def gram_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """out (n, n) <- x xᵀ for x (n, d), accumulated in out.dtype (fp32 or fp64)."""
    if x.dtype == out.dtype:
        _syrk_into(x, out, accumulate=False)
    elif x.device.type == "cuda" and x.dtype in (torch.float16, torch.bfloat16) and out.dtype == torch.float32 and _mm_has_out_dtype(str(x.device)):
        out.copy_(torch.mm(x, x.T, out_dtype=out.dtype))  # cuBLAS: low-precision operands, fp32 accumulation
    else:
        for start, part in _upcast_chunks(x, out.dtype):
            _syrk_into(part, out, accumulate=start > 0)


def _upcast_chunks(x: torch.Tensor, dtype: torch.dtype):
    """(start, x[:, start:start+chunk] in dtype) over column chunks of at most 8 MiB of fp32."""
    chunk = max(1, _UPCAST_CHUNK_ELEMENTS // max(x.shape[0], 1))
    for start in range(0, x.shape[1], chunk):
        yield start, x[:, start : start + chunk].to(dtype)


@functools.cache
def _mm_has_out_dtype(device: str) -> bool:
    """Whether this torch's torch.mm takes out_dtype on ``device`` (asked once, on a 1×1 product)."""
    probe = torch.ones(1, 1, device=device, dtype=torch.bfloat16)
    try:
        torch.mm(probe, probe, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


def gram_backward(coefficients: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dx = G x for G (n, n) in the accumulation dtype and x (n, d); returned in x.dtype.

    Low-precision x multiplies a low-precision copy of G (the GEMM accumulates in fp32). G's entries
    scale like 1/‖C(K)‖ and underflow fp16 (smallest subnormal 6e-8), so for fp16 G is first scaled
    by a power of two that brings its largest entry to 1 (exact), and the product scaled back by a
    Python float, which elementwise kernels apply in fp32 (a 0-dim tensor would be cast to fp16 first
    and flush to zero). That costs fp16 one host sync. bf16 has fp32's exponent range: no scaling.
    """
    if x.dtype == coefficients.dtype:
        return coefficients @ x
    if x.dtype != torch.float16:
        return coefficients.to(x.dtype) @ x
    peak = coefficients.abs().amax().clamp_min(torch.finfo(coefficients.dtype).tiny)
    scale = torch.exp2(-torch.floor(torch.log2(peak)))  # 0-dim, power of two
    product = (coefficients * scale).to(x.dtype) @ x
    return product.mul_(1.0 / scale.item())  # exact power of two, applied in fp32, rounded once
