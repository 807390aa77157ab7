"""Core attention on torch's scaled_dot_product_attention, for megatron-core local specs.

How it works
------------
megatron-core's local ``DotProductAttention`` rejects the ``k_channels``/``v_channels`` that MLA
passes (its q/k head dim differs from its v head dim). This module accepts them and computes

    out = softmax(q k^T * softmax_scale + causal/padding mask) v

with ``torch.nn.functional.scaled_dot_product_attention`` (flash/memory-efficient kernels on CUDA;
on CPU the fused kernel for causal attention without a mask — MLA's narrower v zero-padded to the qk head
dim so that it qualifies — else the math kernel). ``softmax_scale`` comes from the attention module (MLA passes
mscale(factor, mscale_all_dim)**2 / sqrt(q_head_dim) for YaRN); when None it is 1/sqrt(head_dim).
GQA (fewer key/value heads than query heads): SDPA's ``enable_gqa`` where the kernel SDPA would pick takes it —
each key/value head serving its group of query heads inside the kernel, no repeated copies of k and v forward or
backward (~12% less attention time per layer on CPU for tiny Llama's 4 / 2 heads). On CUDA only the flash and math
kernels take GQA (torch's documentation), so with a mask or in fp32, where the memory-efficient kernel would run,
the key/value heads are repeated to the query heads instead (``gqa_in_kernel``).

``LeanSelfAttention`` (a one-rank twin, put in the local spec by ``model.specs``) is megatron-core's
``SelfAttention`` whose training / prefill forward (no inference context, no packed sequences, no cos/sin given)
runs the same steps without the per-call bookkeeping, and applies RoPE with cos / sin computed once per rotary
table: megatron's ``apply_rotary_pos_emb`` recomputes ``cos(freqs)`` and ``sin(freqs)`` for q and for k in every
layer's call, while the table itself (``RotaryEmbedding.forward``, an ``lru_cache``) is one tensor for every layer
and step. Same ops on q and k (``t cos + rotate_half(t) sin``), so the same numbers, forward and backward; any
other call goes to megatron's forward. ~4 % of a tiny Llama training step on CPU.

``LeanMLASelfAttention`` is the same for megatron-core's ``MLASelfAttention`` (DeepSeek's multi-latent
attention) on one tensor-parallel rank: its training / prefill query / key / value are megatron's unfused path
(down projections, q / kv layernorms, up projections, RoPE on the rotary part of q and on the shared rotary key,
which is then expanded to every head) with the RoPE cos / sin (YaRN mscale folded in) computed once per rotary
table, and the forward without its inference, offloading and recompute branches. Same ops, so the same numbers.

Shapes (legend): S/K query/key sequence, B batch, H query heads, G kv heads, D qk dim, V v dim, R rotary dim.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from megatron.core.models.common.embeddings.rope_utils import _rotate_half
from megatron.core.models.common.embeddings.yarn_rotary_pos_embedding import _yarn_get_concentration_factor_from_config
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.multi_latent_attention import MLASelfAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule


def gqa_in_kernel(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether SDPA's ``enable_gqa`` keeps the kernel SDPA would choose without it: always on CPU (its fused
    kernel takes GQA, masked or not); on CUDA only where flash attention runs (fp16 / bf16, no mask), since GQA
    there works only with the flash and math kernels and would push the memory-efficient one to math."""
    if device_type == "cpu":
        return True
    return device_type == "cuda" and not masked and dtype in (torch.float16, torch.bfloat16)


class SDPACoreAttention(MegatronModule):
    """Drop-in core attention (``submodules.core_attention``) for local specs."""

    def __init__(self, config, layer_number: int, attn_mask_type: AttnMaskType, attention_type: str = "self",
                 attention_dropout: float | None = None, softmax_scale: float | None = None,
                 k_channels: int | None = None, v_channels: int | None = None, cp_comm_type: str | None = None,
                 pg_collection=None, **unused):
        super().__init__(config=config)
        if config.context_parallel_size > 1:
            raise ValueError("SDPACoreAttention: context parallelism is not supported (context_parallel_size > 1)")
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale
        self.current_max_attn_logits = None

    def forward(self, query_SBHD, key_KBGD, value_KBGV, attention_mask=None, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None, **unused):
        if packed_seq_params is not None:
            raise ValueError("SDPACoreAttention: packed sequences (THD) are not supported; pad instead")
        mask_type = attn_mask_type or self.attn_mask_type
        sq, b, heads, d = query_SBHD.shape
        sk, groups = key_KBGD.shape[0], key_KBGD.shape[2]
        q = query_SBHD.permute(1, 2, 0, 3)  # B H S D
        k = key_KBGD.permute(1, 2, 0, 3)
        v = value_KBGV.permute(1, 2, 0, 3)
        if heads % groups:
            raise ValueError(f"SDPACoreAttention: {heads} query heads are not a multiple of {groups} key/value heads")
        scale = self.softmax_scale if self.softmax_scale is not None else 1.0 / math.sqrt(d)
        causal = mask_type in (AttnMaskType.causal, AttnMaskType.padding_causal)
        mask = None
        if attention_mask is not None and mask_type != AttnMaskType.causal:
            # megatron convention: True = masked out
            mask = ~attention_mask.to(torch.bool)
            if causal:
                tri = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
                mask = mask & tri
            causal = False
        elif causal and sq != sk:
            mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
            causal = False
        dropout = self.dropout_p if self.training else 0.0
        dv = v.shape[-1]
        if q.device.type == "cpu" and mask is None and dv < d:
            # torch's fused CPU kernel (flash) takes one head dim for q, k and v; MLA's v is narrower (DeepSeek-V3:
            # 128 vs 192), which falls back to the unfused math path (S^2 scores, safe softmax). Zero columns
            # appended to v leave the first dv output columns unchanged: ~1.7x faster forward + backward.
            v = F.pad(v, (0, d - dv))
        gqa = groups != heads and gqa_in_kernel(q.device.type, q.dtype, mask is not None)
        if groups != heads and not gqa:
            k = k.repeat_interleave(heads // groups, dim=1)
            v = v.repeat_interleave(heads // groups, dim=1)
        out_BHSV = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                                  is_causal=causal, scale=scale, enable_gqa=gqa)[..., :dv]
        return out_BHSV.permute(2, 0, 1, 3).reshape(sq, b, heads * dv)


def rope_with_cos_sin(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """megatron's unfused standard RoPE (``apply_rotary_pos_emb``, bshd, not MLA) with ``cos`` / ``sin`` given
    (megatron's ``cos_`` / ``sin_``: times mscale, in ``t``'s dtype): ``t cos + rotate_half(t) sin`` on the first
    R = ``cos.shape[-1]`` dims, the rest passed through - the same ops, so the same numbers."""
    rot = cos.shape[-1]
    if rot == t.shape[-1]:
        return t * cos + _rotate_half(t, interleaved) * sin
    t, t_pass = t[..., :rot], t[..., rot:]
    return torch.cat((t * cos + _rotate_half(t, interleaved) * sin, t_pass), dim=-1)


def lean_attention_supported(config) -> str | None:
    """None where ``LeanSelfAttention``'s forward is megatron's ``SelfAttention`` forward for every training /
    prefill call, else the setting that rules it out (megatron's module stays)."""
    reasons = (("context_parallel_size", config.context_parallel_size > 1),
               ("apply_rope_fusion", config.apply_rope_fusion),
               ("fused_single_qkv_rope", getattr(config, "fused_single_qkv_rope", False)),
               ("attention_output_gate", getattr(config, "attention_output_gate", False)),
               ("multi_latent_attention", config.multi_latent_attention),
               ("no_rope_freq", bool(getattr(config, "no_rope_freq", None))),
               ("fine_grained_activation_offloading", getattr(config, "fine_grained_activation_offloading", False)),
               ("recompute core_attn", config.recompute_granularity == "selective"
                and "core_attn" in (config.recompute_modules or ())))
    return next((name for name, on in reasons if on), None)


def _cached_cos_sin(module, freqs_S11R: torch.Tensor, mscale: float,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """megatron's ``cos_`` / ``sin_`` of one rotary table (``(cos(freqs) * mscale).to(dtype)``), kept on
    ``module._rope_table`` while the table lives (megatron's rotary ``forward`` is an ``lru_cache``: one table
    for every layer and step). Made again for another table, mscale or dtype, and when the kept pair was made
    under ``torch.inference_mode`` (a validation pass) and a training step, which autograd may not save
    inference tensors for, wants it."""
    cached = module._rope_table
    if (cached is None or cached[0]() is not freqs_S11R or cached[1] != mscale or cached[2] != dtype
            or (cached[3].is_inference() and not torch.is_inference_mode_enabled())):
        cos = (torch.cos(freqs_S11R) * mscale).to(dtype)
        sin = (torch.sin(freqs_S11R) * mscale).to(dtype)
        cached = module._rope_table = (weakref.ref(freqs_S11R), mscale, dtype, cos, sin)
    return cached[3], cached[4]


class LeanSelfAttention(SelfAttention):
    """megatron-core's ``SelfAttention`` (same parameters, state dict and submodules) with a lean training /
    prefill forward (module docstring); built only where ``lean_attention_supported`` is None."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.rope_mscale = _yarn_get_concentration_factor_from_config(config)
        self._rope_table = None  # (weakref to the rotary table, mscale, dtype, cos, sin): _cached_cos_sin

    def _rope(self, t_SBHD: torch.Tensor, freqs_S11R: torch.Tensor) -> torch.Tensor:
        cos, sin = _cached_cos_sin(self, freqs_S11R, self.rope_mscale, t_SBHD.dtype)
        return rope_with_cos_sin(t_SBHD, cos, sin, self.config.rotary_interleaved)

    def forward(self, hidden_states, attention_mask, key_value_states=None, inference_context=None,
                rotary_pos_emb=None, rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                attention_bias=None, packed_seq_params=None, sequence_len_offset=None, *, inference_params=None):
        if (inference_context is not None or inference_params is not None or key_value_states is not None
                or packed_seq_params is not None or rotary_pos_cos is not None or rotary_pos_sin is not None
                or rotary_pos_cos_sin is not None):
            return super().forward(hidden_states, attention_mask, key_value_states=key_value_states,
                                   inference_context=inference_context, rotary_pos_emb=rotary_pos_emb,
                                   rotary_pos_cos=rotary_pos_cos, rotary_pos_sin=rotary_pos_sin,
                                   rotary_pos_cos_sin=rotary_pos_cos_sin, attention_bias=attention_bias,
                                   packed_seq_params=packed_seq_params, sequence_len_offset=sequence_len_offset,
                                   inference_params=inference_params)
        query, key, value = self.get_query_key_value_tensors(hidden_states, None)
        if rotary_pos_emb is not None:
            q_freqs, k_freqs = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb,) * 2
            if q_freqs is not None:
                query = self._rope(query, q_freqs)
            if k_freqs is not None:
                key = self._rope(key, k_freqs)
        out = self.core_attention(query, key, value, attention_mask, attn_mask_type=self.attn_mask_type,
                                  attention_bias=attention_bias, packed_seq_params=None)
        return self.linear_proj(out)


def _mla_rope(t_SBHR: torch.Tensor, cos_S11R: torch.Tensor, sin_S11R: torch.Tensor) -> torch.Tensor:
    """megatron's unfused MLA RoPE (``_apply_rotary_pos_emb_bshd`` with ``multi_latent_attention``, the rotary dim
    the whole of ``t``) with its ``cos_`` / ``sin_`` given: de-interleave (even dims, then odd), then
    ``t cos + rotate_half(t) sin``."""
    t_SBHR = torch.cat((t_SBHR[..., 0::2], t_SBHR[..., 1::2]), dim=-1)
    return t_SBHR * cos_S11R + _rotate_half(t_SBHR, False) * sin_S11R


def lean_mla_supported(config) -> str | None:
    """None where ``LeanMLASelfAttention``'s training / prefill path is megatron's ``MLASelfAttention`` for every
    such call, else the setting that rules it out (megatron's module stays)."""
    recompute = config.recompute_modules or () if config.recompute_granularity == "selective" else ()
    reasons = (("tensor_model_parallel_size", config.tensor_model_parallel_size > 1),
               ("context_parallel_size", config.context_parallel_size > 1),
               ("apply_rope_fusion", config.apply_rope_fusion),
               ("rotary_interleaved", config.rotary_interleaved),
               ("cache_mla_latents", getattr(config, "cache_mla_latents", False)),
               ("experimental_attention_variant", getattr(config, "experimental_attention_variant", None) is not None),
               ("fine_grained_activation_offloading", getattr(config, "fine_grained_activation_offloading", False)),
               ("recompute core_attn / mla_up_proj", "core_attn" in recompute or "mla_up_proj" in recompute))
    return next((name for name, on in reasons if on), None)


class LeanMLASelfAttention(MLASelfAttention):
    """megatron-core's ``MLASelfAttention`` (same parameters, state dict and submodules) with a lean training /
    prefill path (module docstring); built only where ``lean_mla_supported`` is None. Calls with an inference
    context, packed sequences or key/value states go to megatron's code."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self._rope_table = None  # (weakref to the rotary table, mscale, dtype, cos, sin): _cached_cos_sin

    def get_query_key_value_tensors(self, hidden_states, key_value_states=None, position_ids=None,
                                    packed_seq_params=None, inference_context=None, *, inference_params=None):
        if (inference_context is not None or inference_params is not None or packed_seq_params is not None
                or key_value_states is not None):
            return super().get_query_key_value_tensors(hidden_states, key_value_states, position_ids,
                                                       packed_seq_params, inference_context=inference_context,
                                                       inference_params=inference_params)
        cfg = self.config
        seq_len = self.rotary_pos_emb.get_rotary_seq_len(None, None, hidden_states, cfg, None)
        if cfg.rope_type == "rope":
            freqs_S11R, mscale = self.rotary_pos_emb(seq_len, packed_seq=False), 1.0
        else:
            freqs_S11R, mscale = self.rotary_pos_emb(seq_len, packed_seq=False)
        if cfg.q_lora_rank is not None:
            q_compressed, _ = self.linear_q_down_proj(hidden_states)
            q, _ = self.linear_q_up_proj(self.q_layernorm(q_compressed))
        else:
            q_compressed = hidden_states
            q, _ = self.linear_q_proj(hidden_states)
        kv_combined, _ = self.linear_kv_down_proj(hidden_states)
        kv_compressed, k_pos_SBR = torch.split(kv_combined, [cfg.kv_lora_rank, cfg.qk_pos_emb_head_dim], dim=-1)
        kv_compressed = self.kv_layernorm(kv_compressed)
        kv, _ = self.linear_kv_up_proj(kv_compressed)
        heads = self.num_attention_heads_per_partition
        q_SBHD = q.view(*q.shape[:-1], heads, self.q_head_dim)
        kv_SBHX = kv.view(*kv.shape[:-1], heads, cfg.qk_head_dim + cfg.v_head_dim)
        q_no_pe, q_pos = torch.split(q_SBHD, [cfg.qk_head_dim, cfg.qk_pos_emb_head_dim], dim=-1)
        k_no_pe, value = torch.split(kv_SBHX, [cfg.qk_head_dim, cfg.v_head_dim], dim=-1)
        cos, sin = _cached_cos_sin(self, freqs_S11R, mscale, q.dtype)
        s = q_SBHD.shape[0]
        cos, sin = cos[:s], sin[:s]
        query = torch.cat([q_no_pe, _mla_rope(q_pos, cos, sin)], dim=-1)
        k_pos_SB1R = _mla_rope(k_pos_SBR.unsqueeze(-2), cos, sin)
        key = torch.cat([k_no_pe, k_pos_SB1R.expand(-1, -1, heads, -1)], dim=-1)
        return query.contiguous(), key.contiguous(), value.contiguous(), q_compressed, kv_compressed

    def forward(self, hidden_states, attention_mask, key_value_states=None, inference_context=None,
                rotary_pos_emb=None, rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None,
                attention_bias=None, packed_seq_params=None, position_ids=None, sequence_len_offset=None, *,
                inference_params=None):
        if (inference_context is not None or inference_params is not None or key_value_states is not None
                or packed_seq_params is not None or rotary_pos_emb is not None or rotary_pos_cos is not None
                or rotary_pos_sin is not None or rotary_pos_cos_sin is not None or attention_bias is not None):
            return super().forward(hidden_states, attention_mask, key_value_states=key_value_states,
                                   inference_context=inference_context, rotary_pos_emb=rotary_pos_emb,
                                   rotary_pos_cos=rotary_pos_cos, rotary_pos_sin=rotary_pos_sin,
                                   rotary_pos_cos_sin=rotary_pos_cos_sin, attention_bias=attention_bias,
                                   packed_seq_params=packed_seq_params, position_ids=position_ids,
                                   sequence_len_offset=sequence_len_offset, inference_params=inference_params)
        query, key, value, _, _ = self.get_query_key_value_tensors(hidden_states, None, position_ids)
        out = self.core_attention(query, key, value, attention_mask, attn_mask_type=self.attn_mask_type,
                                  packed_seq_params=None)
        return self.linear_proj(out)
