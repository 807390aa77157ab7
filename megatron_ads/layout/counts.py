"""Parameter and FLOP counts by arithmetic (nothing is allocated).

Counts follow the HF parameter inventory of each family, so they can be checked against a
checkpoint's tensors. ``ParamCount`` splits the total into the pieces the planner needs. They live
in ``layout`` (the lowest layer that needs them: the planner's memory and stage-cost model);
``model.flops`` builds MFU on top of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_ads.config.model import ModelConfig


@dataclass(frozen=True, slots=True)
class ParamCount:
    """Parameter inventory of one model (main model; MTP reported separately)."""

    embedding: int
    output: int
    """Output layer (0 when tied to the embedding)."""
    final_norm: int
    per_layer: tuple[int, ...]
    """Parameters of each main layer (attention + norms + MLP/MoE, all experts)."""
    per_layer_routed: tuple[int, ...]
    """Routed-expert parameters of each layer (0 for dense layers)."""
    expert_params: int
    """Parameters of one routed expert."""
    mtp: int
    """All MTP layers (their embedding/output are shared with the main model)."""

    @property
    def total(self) -> int:
        """Main model, without MTP."""
        return self.embedding + self.output + self.final_norm + sum(self.per_layer)

    @property
    def routed(self) -> int:
        """Routed-expert parameters of all main layers."""
        return sum(self.per_layer_routed)


def head_dims(cfg: ModelConfig) -> tuple[int, int]:
    """(query/key dim, value dim) of one attention head."""
    if cfg.family == "deepseek_v3":
        return cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    return cfg.kv_channels, cfg.kv_channels


def attention_params(cfg: ModelConfig) -> int:
    """Parameters of one attention block (MLA or GQA), biases included."""
    h = cfg.hidden_size
    if cfg.family == "deepseek_v3":
        heads = cfg.num_attention_heads
        qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
        if cfg.q_lora_rank:
            q = h * cfg.q_lora_rank + cfg.q_lora_rank + cfg.q_lora_rank * heads * qk
        else:
            q = h * heads * qk
        kv = h * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) + cfg.kv_lora_rank
        kv += cfg.kv_lora_rank * heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)
        return q + kv + heads * cfg.v_head_dim * h
    d = cfg.kv_channels
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    bias = (q_out + 2 * kv_out) if cfg.attention_bias else 0
    return h * (q_out + 2 * kv_out) + bias + q_out * h


def layer_params(cfg: ModelConfig, moe: bool) -> tuple[int, int]:
    """(all parameters, routed-expert parameters) of one transformer layer."""
    h = cfg.hidden_size
    total = 2 * h + attention_params(cfg)
    if not moe:
        return total + 3 * h * cfg.intermediate_size, 0
    routed = cfg.num_experts * 3 * h * cfg.moe_intermediate_size
    router = cfg.num_experts * h + (cfg.num_experts if cfg.use_expert_bias else 0)
    shared = 3 * h * cfg.moe_intermediate_size * cfg.n_shared_experts
    return total + router + routed + shared, routed


def count_params(cfg: ModelConfig) -> ParamCount:
    """Parameter inventory by arithmetic."""
    h, v = cfg.hidden_size, cfg.vocab_size
    layers = [layer_params(cfg, cfg.is_moe_layer(i)) for i in range(cfg.num_layers)]
    mtp_layer = 0
    if cfg.num_mtp_layers:
        # enorm + hnorm + eh_proj + transformer layer (MoE like the last layer) + shared_head norm
        mtp_layer = 3 * h + 2 * h * h + layer_params(cfg, cfg.is_moe)[0]
    return ParamCount(
        embedding=v * h,
        output=0 if cfg.tie_word_embeddings else v * h,
        final_norm=h,
        per_layer=tuple(p for p, _ in layers),
        per_layer_routed=tuple(r for _, r in layers),
        expert_params=3 * h * cfg.moe_intermediate_size if cfg.is_moe else 0,
        mtp=cfg.num_mtp_layers * mtp_layer,
    )


def active_params(cfg: ModelConfig) -> int:
    """Parameters a token passes through (all non-routed + top-k routed experts), without MTP."""
    pc = count_params(cfg)
    n_moe = sum(1 for r in pc.per_layer_routed if r)
    return pc.total - pc.routed + n_moe * cfg.num_experts_per_tok * pc.expert_params


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Model FLOPs per trained token (forward + backward = 3x forward), causal attention.

    Matmul FLOPs: 2 * active params without the embedding lookup. Attention scores and the
    weighted sum: 2 * heads * (qk_dim + v_dim) * mean causal context ((seq_len + 1) / 2) per layer.
    """
    pc = count_params(cfg)
    matmul = 2 * (active_params(cfg) - pc.embedding)
    qk, vd = head_dims(cfg)
    attn = 2 * cfg.num_attention_heads * (qk + vd) * (seq_len + 1) / 2 * cfg.num_layers
    return 3.0 * (matmul + attn)

