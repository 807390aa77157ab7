"""FP8 (E4M3) block-scaled GEMM in Triton, DeepSeek-V3 format — the CUDA kernels (CPU-tested under
``TRITON_INTERPRET=1``).

How it works
------------
``y = x @ W^T`` with ``W`` stored as e4m3 codes ``Q [N, K]`` and fp32 inverse scales ``S`` (one per
128 input channels and per ``row_block`` output rows: 128 for the checkpoint's 128x128 blocks, 1 for
per-row scales, see ``kernels.fp8_linear``), in two kernels:

1. ``act_quant``: one program per (tile of tokens, 128-channel block). Per token and block:
   ``s = max(amax, 1e-4) / 448``, ``q = e4m3(x / s)`` (``x / s`` with IEEE division). The value is
   rounded to the e4m3 grid in fp32 (round to nearest even, as torch's cast) before the conversion,
   so the conversion itself is exact: Triton's fp32 -> fp8 conversion is not relied on for rounding
   (the 3.6 interpreter's drops the carry into the exponent, e.g. 125.3 -> 64).
2. ``gemm``: one program per (BLOCK_M x BLOCK_N) output tile; the K loop steps one 128-wide scale
   block at a time: ``acc += dot(qx_blk, qw_blk^T) * sx[:, None] * sw[None, :]`` with the dot in fp32
   (fp8 tensor cores on sm89+; e4m3 -> fp16 upcast, exact, on older GPUs), so every partial product
   is rescaled per K block as DeepSeek's kernel does. Edge tiles (M, N, K not multiples of the tile)
   are masked with zeros, which add nothing. The output is written in the requested dtype (in the
   interpreter: fp32, rounded by torch, since its bf16 store truncates).

Numerics: codes and scales of ``act_quant`` equal ``kernels.fp8.act_quant`` (bit-exact in the
interpreter; on GPU up to the hardware's division); the GEMM differs from ``kernels.fp8.fp8_gemm_ref``
only by fp32 summation order inside a dot. Tests compare against the torch reference with stated
tolerances; bit-exact claims stay with the torch path.

Legend: M tokens, N output features, K input features, C = ceil(K/128) scale columns.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from megatron_ads.kernels.fp8 import BLOCK, FP8_DTYPE

E4M3_MAX = 448.0


def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (``TRITON_INTERPRET=1``, set before triton was imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _round_e4m3(y):
    """Round fp32 ``y`` (|y| <= 448) to the nearest e4m3 value, ties to even, in fp32 arithmetic."""
    bits = y.to(tl.int32, bitcast=True)
    a = tl.abs(y)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.maximum(e, -6) - 3  # e4m3: 3 mantissa bits, smallest normal exponent -6 (subnormal step 2^-9)
    ulp = ((e + 127) << 23).to(tl.float32, bitcast=True)
    v = a / ulp  # exact: division by a power of two
    n = tl.floor(v + 0.5)
    odd = (n - 2.0 * tl.floor(n * 0.5)) != 0.0
    n = tl.where(((n - v) == 0.5) & odd, n - 1.0, n)
    r = n * ulp
    return tl.where(bits < 0, -r, r)


@triton.jit
def _act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, stride_sm,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_c * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rm[:, None] < M) & (rk[None, :] < K)
    x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(x), axis=1)
    s = tl.maximum(amax, 1e-4) / 448.0
    y = tl.div_rn(x, s[:, None])
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    q = _round_e4m3(y)
    tl.store(q_ptr + rm[:, None] * stride_qm + rk[None, :], q.to(tl.float8e4nv), mask=mask)
    tl.store(s_ptr + rm * stride_sm + pid_c, s, mask=rm < M)


@triton.jit
def _gemm_kernel(a_ptr, as_ptr, b_ptr, bs_ptr, c_ptr, M, N, K: tl.constexpr,
                 stride_am, stride_asm, stride_bn, stride_bsr, stride_cm,
                 ROW_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 GROUP_M: tl.constexpr, UPCAST: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # grouped ordering: GROUP_M row tiles share the weight tiles they stream (L2 reuse)
    per_group = GROUP_M * num_n
    group = pid // per_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for c in range(0, tl.cdiv(K, BLOCK_K)):  # K is constexpr: a Python int in the interpreter too
        k = c * BLOCK_K + rk
        k_ok = k < K
        a = tl.load(a_ptr + rm[:, None] * stride_am + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + rn[None, :] * stride_bn + k[:, None], mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if UPCAST:
            a = a.to(tl.float16)
            b = b.to(tl.float16)
        sa = tl.load(as_ptr + rm * stride_asm + c, mask=m_ok, other=0.0)
        sb = tl.load(bs_ptr + (rn // ROW_BLOCK) * stride_bsr + c, mask=n_ok, other=0.0)
        acc += tl.dot(a, b, out_dtype=tl.float32) * sa[:, None] * sb[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def act_quant_triton(x_TK: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-128-channel activation quantization (Triton): ``x [..., K]`` ->
    (e4m3 codes [..., K], fp32 scales [..., ceil(K/128)]), ``s = max(amax, 1e-4) / 448``."""
    if block != BLOCK:
        raise ValueError(f"act_quant_triton: block must be {BLOCK}, got {block}")
    *lead, k = x_TK.shape
    x = x_TK.reshape(-1, k)
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, c = x.shape[0], triton.cdiv(k, block)
    q = torch.empty(m, k, dtype=FP8_DTYPE, device=x.device)
    s = torch.empty(m, c, dtype=torch.float32, device=x.device)
    if m:
        block_m = 1 if m == 1 else 4 if m <= 64 else 16
        _act_quant_kernel[(triton.cdiv(m, block_m), c)](x, q, s, m, k, x.stride(0), q.stride(0), s.stride(0),
                                                       BLOCK_M=block_m, BLOCK_K=block)
    return q.reshape(*lead, k), s.reshape(*lead, c)


def _upcast(device: torch.device) -> bool:
    """fp8 dots need sm89+; older GPUs multiply the (exactly) upcast fp16 codes."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) < (8, 9)


def _tiles(m: int) -> dict:
    """Tile sizes by token count: small M (decode) uses thin row tiles."""
    if interpreting():
        return dict(BLOCK_M=16 if m <= 16 else 32, BLOCK_N=64, num_warps=4, num_stages=1)
    if m <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, num_warps=4, num_stages=4)
    if m <= 64:
        return dict(BLOCK_M=64, BLOCK_N=128, num_warps=4, num_stages=4)
    return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)


def fp8_gemm_triton(x_TK: torch.Tensor, q_NK: torch.Tensor, scale_RC: torch.Tensor, row_block: int = BLOCK,
                    out_dtype: torch.dtype | None = None, xq: tuple[torch.Tensor, torch.Tensor] | None = None
                    ) -> torch.Tensor:
    """``y = x @ W^T`` with ``W`` = e4m3 codes ``q_NK`` x block scales ``scale_RC`` (Triton).

    Args:
        x_TK: activations [..., K] (bf16/fp16/fp32), quantized per token per 128 channels here.
        q_NK: e4m3 weight codes [N, K] (row-major).
        scale_RC: fp32 inverse scales [ceil(N/row_block), ceil(K/128)].
        row_block: output rows per scale row (128: the checkpoint's blocks; 1: per-row scales).
        out_dtype: result dtype (default: ``x``'s).
        xq: already-quantized (codes [M, K], scales [M, C]) of ``x``, to skip ``act_quant_triton``.
    Returns:
        y [..., N].
    """
    *lead, k = x_TK.shape
    n = q_NK.shape[0]
    c = triton.cdiv(k, BLOCK)
    if q_NK.shape[1] != k or q_NK.dtype != FP8_DTYPE:
        raise ValueError(f"fp8_gemm_triton: weight {tuple(q_NK.shape)} {q_NK.dtype}; expected [N, {k}] {FP8_DTYPE}")
    if tuple(scale_RC.shape) != (triton.cdiv(n, row_block), c) or scale_RC.dtype != torch.float32:
        raise ValueError(f"fp8_gemm_triton: scale {tuple(scale_RC.shape)} {scale_RC.dtype}; expected "
                         f"{(triton.cdiv(n, row_block), c)} float32 (row_block={row_block})")
    a, sa = xq if xq is not None else act_quant_triton(x_TK)
    a, sa = a.reshape(-1, k), sa.reshape(-1, c)
    m = a.shape[0]
    q = q_NK if q_NK.stride(-1) == 1 else q_NK.contiguous()
    s = scale_RC if scale_RC.stride(-1) == 1 else scale_RC.contiguous()
    want = out_dtype or x_TK.dtype
    # the interpreter's fp32 -> bf16/fp16 store truncates: keep fp32 there and round with torch
    out = torch.empty(m, n, dtype=torch.float32 if interpreting() else want, device=x_TK.device)
    if m and n:
        t = _tiles(m)
        grid = (triton.cdiv(m, t["BLOCK_M"]) * triton.cdiv(n, t["BLOCK_N"]),)
        _gemm_kernel[grid](a, sa, q, s, out, m, n, k, a.stride(0), sa.stride(0), q.stride(0), s.stride(0),
                           out.stride(0), ROW_BLOCK=row_block, BLOCK_K=BLOCK, GROUP_M=8,
                           UPCAST=_upcast(out.device), **t)
    return out.to(want).reshape(*lead, n)
