"""MLA latent cache (absorbed attention) for DeepSeek-V2/V3 models: an alternative to megatron-core's
static KV cache, selected with ``Engine(..., cache="latent")``.

How it works
------------
megatron-core's ``StaticInferenceContext`` caches, per token per layer, the full per-head key
(``qk_nope + qk_rope`` dims) and value (``v_head_dim``) of every head: for DeepSeek-V3
128 * (192 + 128) = 40,960 values. MLA's key and value are both functions of a small per-token
latent: ``c = kv_layernorm(x W_DKV)[:kv_lora_rank]`` and the shared rope key ``k_pe`` (rotated), so
caching ``c`` and ``k_pe`` (512 + 64 = 576 values for DeepSeek-V3, 71x less) is enough. As in
DeepSeek's own inference code (``MLA`` with ``attn_impl="absorb"``), the up projection
``linear_kv_up_proj`` (weight [H, dn + dv, C]: W_UK = [:, :dn], W_UV = [:, dn:]) is folded in:

    score[b,h,s,t] = ((q_nope[s,b,h] @ W_UK[h]) . c[b,t] + q_pe[s,b,h] . k_pe[b,t]) * softmax_scale
    out[s,b,h]     = (softmax_t(score + causal mask) @ c[b]) @ W_UV[h]^T   -> linear_proj

which equals ``softmax(q k^T) v`` with ``k = [c W_UK^T, k_pe]``, ``v = c W_UV^T`` (matrix products
re-associated: equal up to fp rounding). The query path (``linear_q_down_proj`` / ``q_layernorm`` /
``linear_q_up_proj`` or ``linear_q_proj``), ``linear_kv_down_proj``, ``kv_layernorm`` and
``linear_proj`` are the model's own modules; rope uses the model's own ``rotary_pos_emb`` (rope or
YaRN, with the YaRN mscale it returns) and megatron's ``apply_rotary_pos_emb``; the softmax scale is
the attention module's ``softmax_scale`` (YaRN mscale**2 / sqrt(q_head_dim)). Everything else in the
forward (embedding, norms, MoE/MLP, residuals, final norm, output layer) is the model's own: for one
step each layer's ``self_attention`` is swapped for an ``_AbsorbedAttention`` that reads/writes the
``LatentCache`` at positions ``sequence_len_offset ..``, and ``model(ids, pos, None)`` is called
(no megatron inference context). Prefill and decode both run this path. Single rank (TP 1) only.

Shapes (legend): B batch, S new tokens, T cached tokens (offset + S), H heads, D hidden,
C kv_lora_rank, R qk_rope_head_dim, N qk_nope_head_dim, V v_head_dim.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Literal

import torch
from megatron.core.models.common.embeddings import apply_rotary_pos_emb
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from megatron_ads.config.model import ModelConfig
from megatron_ads.kernels.fp8_linear import dense_weight

CacheKind = Literal["static", "latent"]
CACHE_KINDS: tuple[str, ...] = ("static", "latent")


def cache_values_per_token(cfg: ModelConfig, kind: CacheKind) -> int:
    """Values cached per token per layer: ``static`` (megatron-core's K and V for every head) or
    ``latent`` (MLA only: kv_lora_rank latent + qk_rope_head_dim rope key)."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"cache kind: expected one of {CACHE_KINDS}, got {kind!r}")
    if cfg.family == "deepseek_v3":
        if kind == "static":
            return cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if kind == "latent":
        raise ValueError(f"cache kind 'latent': only for MLA models (deepseek_v3 family), got {cfg.model_type}")
    return 2 * cfg.num_key_value_heads * cfg.kv_channels


def cache_bytes_per_token(cfg: ModelConfig, kind: CacheKind, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes cached per token per layer (``cache_values_per_token`` times the element size of ``dtype``)."""
    return cache_values_per_token(cfg, kind) * torch.empty((), dtype=dtype).element_size()


@dataclass(kw_only=True, slots=True)
class LatentCache:
    """Per-layer latent cache of one batch: ``latent[i]`` [B, T_max, C] (kv_layernorm'ed latent) and
    ``k_pe[i]`` [B, T_max, R] (rotated rope key). ``sequence_len_offset``: tokens already cached (the
    position of the next token fed), advanced by the caller as with ``StaticInferenceContext``."""

    latent: list[torch.Tensor]
    k_pe: list[torch.Tensor]
    max_sequence_length: int
    sequence_len_offset: int = 0

    @classmethod
    def allocate(cls, model: torch.nn.Module, batch: int, max_sequence_length: int) -> "LatentCache":
        layers = _mla_layers(model)
        p = next(model.parameters())
        c = layers[0].self_attention.config
        shape = (batch, max_sequence_length)
        return cls(latent=[torch.zeros(*shape, c.kv_lora_rank, dtype=p.dtype, device=p.device) for _ in layers],
                   k_pe=[torch.zeros(*shape, c.qk_pos_emb_head_dim, dtype=p.dtype, device=p.device) for _ in layers],
                   max_sequence_length=max_sequence_length)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.latent, *self.k_pe))


def _mla_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = list(model.decoder.layers)
    for i, layer in enumerate(layers):
        attn = layer.self_attention
        if not isinstance(attn, MLASelfAttention):
            raise ValueError(f"cache 'latent': layer {i} has {type(attn).__name__}, expected MLASelfAttention "
                             "(the latent cache is for MLA models: the deepseek_v3 family)")
        if attn.num_attention_heads_per_partition != attn.config.num_attention_heads:
            raise ValueError("cache 'latent': tensor parallelism is not supported (TP must be 1)")
    return layers


class _AbsorbedAttention(torch.nn.Module):
    """Stands in for one layer's MLASelfAttention during a latent-cache step (same call and return:
    ``(output_SBD, bias)``)."""

    def __init__(self, attn: MLASelfAttention, cache: LatentCache, index: int):
        super().__init__()
        object.__setattr__(self, "attn", attn)  # not registered: the swap is temporary
        self.cache = cache
        self.index = index

    def forward(self, hidden_SBD: torch.Tensor, attention_mask=None, **unused):
        a, c, cache = self.attn, self.attn.config, self.cache
        s, b, _ = hidden_SBD.shape
        h, n, r, v = c.num_attention_heads, c.qk_head_dim, c.qk_pos_emb_head_dim, c.v_head_dim
        off = cache.sequence_len_offset
        t = off + s
        if t > cache.max_sequence_length:
            raise ValueError(f"latent cache: {t} tokens exceed its max_sequence_length {cache.max_sequence_length}")
        # query
        if c.q_lora_rank is not None:
            q_SBX = a.linear_q_up_proj(a.q_layernorm(a.linear_q_down_proj(hidden_SBD)[0]))[0]
        else:
            q_SBX = a.linear_q_proj(hidden_SBD)[0]
        q_nope_SBHN, q_pe_SBHR = q_SBX.view(s, b, h, n + r).split([n, r], dim=-1)
        # latent and rope key
        kv_SBX = a.linear_kv_down_proj(hidden_SBD)[0]
        lat_SBC, k_pe_SBR = kv_SBX.split([c.kv_lora_rank, r], dim=-1)
        lat_SBC = a.kv_layernorm(lat_SBC)
        # rope: the model's own table (rope, or YaRN returning its mscale), positions off .. t-1
        if c.rope_type == "rope":
            emb, mscale = a.rotary_pos_emb(t), 1.0
        else:
            emb, mscale = a.rotary_pos_emb(t)
        emb = emb[off:t]
        cp = a.pg_collection.cp
        q_pe_SBHR = apply_rotary_pos_emb(q_pe_SBHR, emb, config=c, mscale=mscale, cp_group=cp)
        k_pe_SB1R = apply_rotary_pos_emb(k_pe_SBR.unsqueeze(-2), emb, config=c, mscale=mscale, cp_group=cp)
        cache.latent[self.index][:, off:t] = lat_SBC.transpose(0, 1)
        cache.k_pe[self.index][:, off:t] = k_pe_SB1R.squeeze(-2).transpose(0, 1)
        lat_BTC = cache.latent[self.index][:, :t]
        k_pe_BTR = cache.k_pe[self.index][:, :t]
        # absorbed attention
        w_HXC = dense_weight(a.linear_kv_up_proj, lat_BTC.dtype).view(h, n + v, c.kv_lora_rank)  # FP8: dequantized
        w_uk_HNC, w_uv_HVC = w_HXC[:, :n], w_HXC[:, n:]
        q_lat_BHSC = torch.einsum("sbhn,hnc->bhsc", q_nope_SBHN, w_uk_HNC)
        scores_BHST = (torch.einsum("bhsc,btc->bhst", q_lat_BHSC, lat_BTC)
                       + torch.einsum("sbhr,btr->bhst", q_pe_SBHR, k_pe_BTR)).float() * a.softmax_scale
        seen_ST = torch.arange(t, device=hidden_SBD.device)[None, :] <= (
            off + torch.arange(s, device=hidden_SBD.device))[:, None]
        probs_BHST = scores_BHST.masked_fill(~seen_ST, float("-inf")).softmax(-1).to(lat_BTC.dtype)
        o_lat_SBHC = torch.einsum("bhst,btc->sbhc", probs_BHST, lat_BTC)
        out_SBX = torch.einsum("sbhc,hvc->sbhv", o_lat_SBHC, w_uv_HVC).reshape(s, b, h * v)
        return a.linear_proj(out_SBX)


@contextmanager
def _absorbed(model: torch.nn.Module, cache: LatentCache) -> Iterator[None]:
    layers = _mla_layers(model)
    originals = [layer.self_attention for layer in layers]
    try:
        for i, (layer, attn) in enumerate(zip(layers, originals)):
            layer.self_attention = _AbsorbedAttention(attn, cache, i)
        yield
    finally:
        for layer, attn in zip(layers, originals):
            layer.self_attention = attn


def latent_forward(model: torch.nn.Module, cache: LatentCache, ids_BS: torch.Tensor) -> torch.Tensor:
    """Feed ``ids_BS`` at positions ``cache.sequence_len_offset ..`` through the model with absorbed
    attention over ``cache`` (filled here; the caller advances the offset). Logits [B, S, V]."""
    s = ids_BS.shape[1]
    pos_BS = (torch.arange(s, device=ids_BS.device) + cache.sequence_len_offset).unsqueeze(0).expand_as(ids_BS)
    with _absorbed(model, cache):
        return model(ids_BS, pos_BS, None)
