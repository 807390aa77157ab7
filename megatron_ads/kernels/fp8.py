"""FP8 (E4M3) 128x128 block quantization, DeepSeek-V3 checkpoint format — torch reference.

How it works
------------
A weight W [M, N] is stored as E4M3 codes Q [M, N] and fp32 inverse scales S [ceil(M/128), ceil(N/128)]:

    dequant:  W = bf16( fp32(Q) * S[i // 128, j // 128] )        (edge blocks are partial)
    quant:    per block s = amax(|W_block|) / 448,  Q = e4m3(W / s)  (s = 1 for an all-zero block)

    GEMM (fp8_gemm_ref): y = sum over 128-wide K blocks c of (Qx[:, c] @ Qw[:, c]^T) * sx[:, c] * sw[n, c]
                         (activations per token per 128 channels, act_quant; fp32 accumulation)

This module is the bit-exact reference everywhere (CPU and CUDA). The Triton kernels
(``kernels.fp8_triton``) and cuBLAS's blockwise ``scaled_mm`` are checked against it with stated
tolerances.
"""

from __future__ import annotations

import torch

BLOCK = 128
E4M3_MAX = 448.0
FP8_DTYPE = torch.float8_e4m3fn


def scale_shape(shape: tuple[int, int], block: int = BLOCK) -> tuple[int, int]:
    m, n = shape
    return (m + block - 1) // block, (n + block - 1) // block


def _expand(scale_RC: torch.Tensor, shape: tuple[int, int], block: int) -> torch.Tensor:
    m, n = shape
    return scale_RC.repeat_interleave(block, 0)[:m].repeat_interleave(block, 1)[:, :n]


def block_dequant(q_MN: torch.Tensor, scale_inv_RC: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16,
                  block: int = BLOCK, name: str = "weight") -> torch.Tensor:
    """Dequantize E4M3 codes with their block inverse scales (DeepSeek's formula)."""
    if q_MN.dim() != 2:
        raise ValueError(f"{name}: FP8 block dequant expects a 2-D weight, got shape {tuple(q_MN.shape)}")
    expected = scale_shape(tuple(q_MN.shape), block)
    if tuple(scale_inv_RC.shape) != expected:
        raise ValueError(f"{name}_scale_inv: shape {tuple(scale_inv_RC.shape)} does not match weight "
                         f"{tuple(q_MN.shape)}; expected {expected} for {block}x{block} blocks")
    w = q_MN.to(torch.float32) * _expand(scale_inv_RC.to(torch.float32), tuple(q_MN.shape), block)
    return w.to(out_dtype)


def block_quant(w_MN: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight to (E4M3 codes, fp32 inverse scales) per 128x128 block."""
    if w_MN.dim() != 2:
        raise ValueError(f"FP8 block quant expects a 2-D weight, got shape {tuple(w_MN.shape)}")
    m, n = w_MN.shape
    r, c = scale_shape((m, n), block)
    w = w_MN.to(torch.float32)
    padded = torch.zeros(r * block, c * block, dtype=torch.float32, device=w.device)
    padded[:m, :n] = w.abs()
    amax_RC = padded.view(r, block, c, block).amax(dim=(1, 3))
    scale_RC = torch.where(amax_RC > 0, amax_RC / E4M3_MAX, torch.ones_like(amax_RC))
    q = (w / _expand(scale_RC, (m, n), block)).clamp(-E4M3_MAX, E4M3_MAX).to(FP8_DTYPE)
    return q, scale_RC


def act_quant(x_TK: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token, per-128-channel activation quantization: s = max(amax, 1e-4) / 448."""
    *lead, k = x_TK.shape
    c = (k + block - 1) // block
    x = x_TK.to(torch.float32)
    pad = torch.zeros(*lead, c * block, dtype=torch.float32, device=x.device)
    pad[..., :k] = x
    amax = pad.view(*lead, c, block).abs().amax(dim=-1).clamp_min(1e-4)
    scale = amax / E4M3_MAX
    q = (pad.view(*lead, c, block) / scale.unsqueeze(-1)).view(*lead, c * block)[..., :k].to(FP8_DTYPE)
    return q, scale


def expand_scale_rows(scale_RC: torch.Tensor, rows: int, row_block: int = BLOCK) -> torch.Tensor:
    """Block scales [ceil(rows/row_block), C] -> one scale row per weight row [rows, C]."""
    return scale_RC.repeat_interleave(row_block, 0)[:rows]


def compress_scale_rows(scale_NC: torch.Tensor, block: int = BLOCK) -> torch.Tensor | None:
    """Per-row scales [N, C] -> [ceil(N/block), C] when every 128-row block shares its scales, else None."""
    n = scale_NC.shape[0]
    out = scale_NC[::block]
    return out if torch.equal(expand_scale_rows(out, n, block), scale_NC) else None


def fp8_gemm_ref(x_TK: torch.Tensor, q_NK: torch.Tensor, scale_RC: torch.Tensor, row_block: int = BLOCK,
                 out_dtype: torch.dtype | None = None, block: int = BLOCK) -> torch.Tensor:
    """The numerical spec of the FP8 GEMM ``y = x @ W^T`` in pure torch.

    ``x`` is quantized per token per 128 channels (``act_quant``); for each 128-wide K block the e4m3
    codes are multiplied in fp32 and the partial product is rescaled by the activation scale (per
    token) times the weight scale (per ``row_block`` output rows: 128 for the checkpoint's 128x128
    blocks, 1 for per-row scales), accumulated in fp32.

    Args:
        x_TK: activations [..., K] (any float dtype).
        q_NK: e4m3 weight codes [N, K].
        scale_RC: fp32 inverse scales [ceil(N/row_block), ceil(K/128)].
        row_block: output rows per scale row (128 or 1).
        out_dtype: result dtype (default: ``x``'s).
    Returns:
        y [..., N] in ``out_dtype``.
    """
    *lead, k = x_TK.shape
    n = q_NK.shape[0]
    if q_NK.shape[1] != k:
        raise ValueError(f"fp8_gemm_ref: weight K={q_NK.shape[1]} does not match activations K={k}")
    kb = (k + block - 1) // block
    if tuple(scale_RC.shape) != ((n + row_block - 1) // row_block, kb):
        raise ValueError(f"fp8_gemm_ref: scale shape {tuple(scale_RC.shape)}; expected "
                         f"{((n + row_block - 1) // row_block, kb)} for weight {tuple(q_NK.shape)}, row_block={row_block}")
    xq, xs_TC = act_quant(x_TK.reshape(-1, k), block)
    ws_NC = expand_scale_rows(scale_RC.to(torch.float32), n, row_block)
    acc = torch.zeros(xq.shape[0], n, dtype=torch.float32, device=x_TK.device)
    for c in range(kb):
        sl = slice(c * block, min(k, (c + 1) * block))
        part = xq[:, sl].to(torch.float32) @ q_NK[:, sl].to(torch.float32).t()
        acc += part * xs_TC[:, c:c + 1] * ws_NC[:, c][None, :]
    return acc.to(out_dtype or x_TK.dtype).reshape(*lead, n)
