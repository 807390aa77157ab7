"""FP8 (E4M3) 128x128 block quantization, DeepSeek-V3 checkpoint format — torch reference.

How it works
------------
A weight W [M, N] is stored as E4M3 codes Q [M, N] and fp32 inverse scales S [ceil(M/128), ceil(N/128)]:

    dequant:  W = bf16( fp32(Q) * S[i // 128, j // 128] )        (edge blocks are partial)
    quant:    per block s = amax(|W_block|) / 448,  Q = e4m3(W / s)  (s = 1 for an all-zero block)

This module is the bit-exact reference everywhere (CPU and CUDA). Triton kernels, when added,
are checked against it with stated tolerances.
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
