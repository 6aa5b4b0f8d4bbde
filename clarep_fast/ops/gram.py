"""The dense products around the fused n×n kernels, on the vendor GEMM (MKL/oneDNN, cuBLAS).

Forward:  K' = x' x'ᵀ with x' = x - 1 x[0]ᵀ (every sample minus the first one), accumulated and
          stored in fp32 (fp64 for fp64 input).
Backward: dx = G x' for a centered coefficient matrix G (n, n): one product per input.

Why the shift: CKA only sees the centered Gram C(K) = HKH, and C(K') = C(K) exactly for any
per-feature shift. Features with a large mean relative to their spread (post-ReLU features are
the common case) make the uncentered Gram K huge next to C(K): forming C(K) from K then cancels
(|mean|/std)² of the digits, and at |mean|/std ~ 1e2 in fp32 nothing is left. Subtracting the
first sample brings every feature to the scale of its spread before anything is summed, exactly
(a constant feature becomes exactly 0), with no pass over x to find a mean. The gradient needs the
same shift: G is centered (G 1 = 0), so G x = G x' in exact arithmetic, but in rounding G x carries
an error of order eps·|mean|/std relative to the result; G x' does not.
The shifted copy is made one column chunk at a time (at most 8 MiB of fp32 on CPU, 64 MiB on
CUDA), so no copy of the whole (n, d) input ever exists.

The Gram is a symmetric rank-k update done by hand: split the rows into blocks, compute only the
blocks on and above the diagonal, mirror the rest. With b blocks that is b(b+1)/2 of the b² block
products: 3/4 of the FLOPs at b = 2 (measured on 2 cores at n=512, d=65536: 0.100 s against 0.122 s
for one full product; b = 4 and 8 were no faster, the smaller GEMMs run slower; on an H200 in fp32:
0.590 ms against 0.694 ms). Only from n = 128 on CPU (measured: 64 × 4096 full 210 µs, split
240 µs; 128 × 16384 2.28 ms vs 2.13 ms) and n = 512 on CUDA: below that the products are
overhead-bound and three of them plus a mirror copy cost more than the FLOPs they save.
"""

from __future__ import annotations

import contextlib
import functools

import torch

_ROW_BLOCKS = 2  # syrk blocking: 3 of 4 block products
_SPLIT_MIN_ROWS = {"cpu": 128, "cuda": 512}  # below these one product beats three
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "cuda": 1 << 24}  # at most 8 MiB (CPU) / 64 MiB (CUDA) of fp32 per shifted chunk
# where fp16/bf16 GEMMs accumulate in fp32 at full speed (on CPU they are slow: upcast instead)
LOW_PRECISION_GEMM_DEVICES = ("cuda",)


@contextlib.contextmanager
def full_fp32_products():
    """fp32 products in full fp32 inside the block, whatever the user set: TF32
    (``torch.backends.cuda.matmul.allow_tf32`` or ``set_float32_matmul_precision("high")``) rounds
    the operands to 10 mantissa bits, and CKA's centered Grams cancel most of an uncentered Gram's
    digits, so a TF32 Gram leaves CKA right to about 1e-3 only. The setting is restored after."""
    precision = torch.get_float32_matmul_precision()
    if precision == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


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


@full_fp32_products()
def shifted_gram_into(x: torch.Tensor, out: torch.Tensor) -> bool:
    """out (n, n) <- x' x'ᵀ, x' = x - 1 x[0]ᵀ, for x (n, d), accumulated in out.dtype (fp32 or fp64).

    Returns whether x was shifted chunk by chunk (True) or K' was taken from the plain Gram (False:
    the backward may then multiply x itself). On CPU, for fp32/fp64 input, the plain Gram K = x xᵀ
    comes first (no copy of x) and, when the spread is at least half the size
    (tr C(K) / tr K >= ALGEBRAIC_SHIFT_MIN_SHARE, i.e. |mean| <= std: zero-mean features and
    post-ReLU ones, |mean|/std ≈ 0.7), K' = K - k1ᵀ - 1kᵀ + k_0 11ᵀ with k = K[:, 0] = x x[0];
    otherwise the shifted chunks are formed (and the plain Gram was one wasted product). Why half:
    the cancellation multiplies the plain Gram's rounding error by tr K / tr K' ≈ 1/(2·share), and
    that error is not a few ulps in general: for wide inputs with repeated columns it grows with d
    (tests/ops/test_cka_numerics.py, one feature repeated 2,049 times: at share 1/16 CKA was off by
    1.1e-4). A stride-0 (expanded) x always takes the shifted chunks, which are dense: the GEMM of a
    stride-0 operand rounds about 4× worse (2.7e-5 against 6.4e-6 relative at d = 2,049).
    Deciding needs the share on the host: free on CPU, a sync on CUDA, which always shifts.
    """
    if x.device.type == "cpu" and x.dtype == out.dtype and min(x.stride()) > 0:
        _syrk_into(x, out, accumulate=False)
        trace = out.diagonal().sum()
        share = float((trace - out.sum() / x.shape[0]) / trace)  # NaN (NaN input, all zeros) takes the shifted path
        if share >= ALGEBRAIC_SHIFT_MIN_SHARE:
            k = out[:, 0].clone()
            out.sub_(k[:, None]).sub_(k[None, :]).add_(k[0])
            return False
    low_precision_gemm = (
        x.device.type in LOW_PRECISION_GEMM_DEVICES
        and x.dtype in (torch.float16, torch.bfloat16)
        and out.dtype == torch.float32
        and _mm_has_out_dtype(str(x.device))
    )
    for start, chunk in _shifted_chunks(x, out.dtype):
        if low_precision_gemm:  # cuBLAS: low-precision operands (the shifted chunk cast back), fp32 accumulation
            operand = (chunk * _FP16_RANGE_SCALE).to(x.dtype) if x.dtype == torch.float16 else chunk.to(x.dtype)
            product = torch.mm(operand, operand.T, out_dtype=out.dtype)
            if x.dtype == torch.float16:
                product.mul_(1.0 / _FP16_RANGE_SCALE**2)
            if start == 0:
                out.copy_(product)
            else:
                out.add_(product)
        else:
            _syrk_into(chunk, out, accumulate=start > 0)
    return True


ALGEBRAIC_SHIFT_MIN_SHARE = 1 / 2  # tr C(K) / tr K = std² / (std² + mean²): |mean|/std <= 1
_FP16_RANGE_SCALE = 0.5  # |x - x[0]| can reach twice fp16's largest value; halved (exactly) it fits


def _shifted_chunks(x: torch.Tensor, dtype: torch.dtype):
    """(start, (x[:, start:stop] - x[0, start:stop]) in dtype) over column chunks."""
    limit = _CHUNK_ELEMENTS.get(x.device.type, _CHUNK_ELEMENTS["cpu"])
    chunk = max(1, limit // max(x.shape[0], 1))
    for start in range(0, x.shape[1], chunk):
        part = x[:, start : start + chunk].to(dtype)
        yield start, part - part[0]


@functools.cache
def _mm_has_out_dtype(device: str) -> bool:
    """Whether this torch's torch.mm takes out_dtype on ``device`` (asked once, on a 1×1 product)."""
    probe = torch.ones(1, 1, device=device, dtype=torch.bfloat16)
    try:
        torch.mm(probe, probe, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        return False
    return True


@full_fp32_products()
def shifted_gram_backward(coefficients: torch.Tensor, x: torch.Tensor, shifted: bool = True) -> torch.Tensor:
    """dx = G x' for G (n, n) in the accumulation dtype, x (n, d) and x' = x - 1 x[0]ᵀ; in x.dtype.
    With ``shifted`` False (the forward took K' from the plain Gram: the spread is a fair share of
    the size) dx = G x, no copy of x: G is centered (G 1 = 0), so G x = G x' up to a few ulps.

    On CUDA, low-precision x multiplies a low-precision copy of G (the GEMM accumulates in fp32).
    G's entries scale like 1/‖C(K)‖ and underflow fp16 (smallest subnormal 6e-8), so for fp16 G is
    first scaled by a power of two that brings its largest entry to 1 (exact); x' is halved as in
    the forward (|x - x[0]| reaches twice fp16's largest value); the product comes out in fp32
    (torch.mm's out_dtype: G x' of features around 1e3 summed over n rows passes 65,504) and is
    scaled back there by the inverse, a 0-dim fp32 tensor on the device (no host sync). Where
    torch.mm has no out_dtype the product runs in fp32 on the fp16-rounded operands. bf16 has
    fp32's exponent range: no scaling. Everywhere else the product runs in the accumulation dtype.
    """
    if not shifted and x.dtype == coefficients.dtype:
        return coefficients @ x
    grad = torch.empty_like(x)
    low_precision_gemm = x.device.type in LOW_PRECISION_GEMM_DEVICES and x.dtype in (torch.float16, torch.bfloat16)
    range_scale, unscale = 1.0, None
    if low_precision_gemm and x.dtype == torch.float16:
        peak = coefficients.abs().amax().clamp_min(torch.finfo(coefficients.dtype).tiny)
        scale = torch.exp2(-torch.floor(torch.log2(peak)))  # 0-dim, power of two
        range_scale = _FP16_RANGE_SCALE
        # exact powers of two, applied in fp32
        operator, unscale = (
            (coefficients * scale).to(x.dtype),
            (1.0 / (scale * range_scale)).float(),
        )
    elif low_precision_gemm:
        operator = coefficients.to(x.dtype)
    else:
        operator = coefficients
    fp32_out = low_precision_gemm and _mm_has_out_dtype(str(x.device))
    for start, chunk in _shifted_chunks(x, coefficients.dtype):
        operand = (chunk * range_scale).to(operator.dtype) if range_scale != 1.0 else chunk.to(operator.dtype)
        if fp32_out:
            product = torch.mm(operator, operand, out_dtype=torch.float32)
        elif low_precision_gemm:
            product = operator.float() @ operand.float()
        else:
            product = operator @ operand
        if unscale is not None:
            product = product.mul_(unscale)
        grad[:, start : start + chunk.shape[1]] = product
    return grad
