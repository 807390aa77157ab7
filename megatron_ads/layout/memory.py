"""Per-rank memory and per-step traffic model of a layout (arithmetic; nothing is allocated).

Memory per rank (bytes):
- weights: bf16, 2 B/param;
- gradients: fp32 main-grad buffers (BF16 compute, FP32 accumulation), 4 B/param;
- optimizer: fp32 main params + Adam m + v = 12 B/param; with the distributed optimizer these are
  sharded over the data-parallel group (dense params) and the expert-data-parallel group (experts);
- activations: per layer per micro-batch (bf16, flash/SDPA attention: no S^2 term), times the
  micro-batches in flight under 1F1B on that stage (pp - stage); with full recompute only each
  layer's input is kept, plus one layer's working set; the last stage adds fp32 logits;
- a fixed runtime overhead (CUDA context, NCCL buffers, allocator slack).

That is ``dtype="bf16"`` (the default: mixed precision, what a GPU run trains in). ``dtype="fp32"`` models a
pure-fp32 run (``optim.dtype=fp32``, the CPU default): fp32 weights 4 B/param, fp32 grad buffer 4 B/param,
Adam m + v 8 B/param (megatron's FP32Optimizer keeps no separate main params: it steps the weights
themselves, with ``param.grad`` aliasing the grad buffer), activations at 4 B per value.
``runtime_overhead_gb`` replaces the fixed overhead (0: model state and activations only, e.g. to compare
with memory measured above a process's baseline).

Traffic per rank: EP all-to-all (dispatch + combine, forward + backward: every (token, expert)
row crosses once each way), PP point-to-point activations/gradients, DP gradient reduction once
per step (all-reduce, or reduce-scatter + param all-gather with the distributed optimizer);
split into intra-node and inter-node bytes from the rank placement.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_ads.config.model import ModelConfig
from megatron_ads.layout.counts import attention_params, head_dims, layer_params

GB = 1e9
"""Memory sizes of the planner are decimal gigabytes (10^9 bytes), as GPU data sheets quote them."""
RUNTIME_OVERHEAD_GB = 3.0
BYTES_WEIGHT, BYTES_GRAD, BYTES_OPTIM = 2, 4, 12
BYTES_ACTIVATION = 2


@dataclass(frozen=True, slots=True)
class Precision:
    """Bytes per parameter (weights, gradients, optimizer state) and per activation value of a training dtype."""

    weight: int
    grad: int
    optim: int
    activation: int


PRECISIONS: dict[str, Precision] = {
    "bf16": Precision(weight=BYTES_WEIGHT, grad=BYTES_GRAD, optim=BYTES_OPTIM, activation=BYTES_ACTIVATION),
    "fp32": Precision(weight=4, grad=4, optim=8, activation=4),
}
"""``bf16``: bf16 weights, fp32 main grads, fp32 main params + Adam m, v, bf16 activations (mixed precision).
``fp32``: fp32 weights, fp32 grads, Adam m, v (no main-param copy), fp32 activations."""


def precision(dtype: str) -> Precision:
    """The byte sizes of training dtype ``dtype``; ValueError naming the allowed values otherwise."""
    if dtype not in PRECISIONS:
        raise ValueError(f"dtype: expected one of {', '.join(PRECISIONS)}, got {dtype!r}")
    return PRECISIONS[dtype]


@dataclass(frozen=True, slots=True)
class StageParams:
    """Parameters one rank of a stage holds, split by how they are data-parallel-reduced."""

    dense: float
    """Non-expert parameters per rank (TP-split where megatron splits them)."""
    expert: float
    """Routed-expert parameters per rank."""


def stage_params(cfg: ModelConfig, layers: list[int], first: bool, last: bool, tp: int, ep: int,
                 mtp: bool) -> StageParams:
    """Per-rank parameters of a stage holding ``layers`` (global indices)."""
    h = cfg.hidden_size
    dense = expert = 0.0
    for layer in layers:
        total, routed = layer_params(cfg, cfg.is_moe_layer(layer))
        dense += (total - routed) / tp
        expert += routed / ep
    if first:
        dense += cfg.vocab_size * h / tp
    if last:
        dense += h + (0 if cfg.tie_word_embeddings and first else cfg.vocab_size * h / tp)
        if mtp and cfg.num_mtp_layers:
            total, routed = layer_params(cfg, cfg.is_moe)
            dense += cfg.num_mtp_layers * ((total - routed + 2 * h * h + 3 * h) / tp)
            expert += cfg.num_mtp_layers * routed / ep
    return StageParams(dense=dense, expert=expert)


def layer_activation_bytes(cfg: ModelConfig, moe: bool, tokens: int, tp: int,
                           bytes_per_value: float = BYTES_ACTIVATION) -> float:
    """Activation bytes one layer keeps for backward, for ``tokens`` tokens (``bytes_per_value``: 2 for bf16,
    4 for fp32; no recompute)."""
    h = cfg.hidden_size
    norms_and_residuals = 4 * h + 2 * h
    if cfg.family == "deepseek_v3":
        heads = cfg.num_attention_heads
        q = (cfg.q_lora_rank or 0) + heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) / tp
        kv = cfg.kv_lora_rank + cfg.qk_rope_head_dim + heads * (cfg.qk_nope_head_dim + cfg.v_head_dim) / tp
        attn = q + kv + heads * cfg.v_head_dim / tp + heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) / tp
    else:
        d = cfg.kv_channels
        attn = (cfg.num_attention_heads * d * 2 + cfg.num_key_value_heads * d * 2) / tp
    if moe:
        k = cfg.num_experts_per_tok
        ffn = cfg.moe_intermediate_size
        mlp = h + k * (2 * h + 3 * ffn) + (h + 3 * ffn * cfg.n_shared_experts) / tp
    else:
        mlp = h + 3 * cfg.intermediate_size / tp
    return float(bytes_per_value) * tokens * (norms_and_residuals + attn + mlp)


def stage_memory(cfg: ModelConfig, layers: list[int], stage: int, pp: int, tp: int, ep: int, dp: int, edp: int,
                 seq_len: int, micro_batch: int, recompute: str, distributed_optimizer: bool,
                 mtp: bool, *, dtype: str = "bf16",
                 runtime_overhead_gb: float = RUNTIME_OVERHEAD_GB) -> dict[str, float]:
    """Memory breakdown (GB) of one rank of ``stage``; ``dtype`` (bf16 | fp32) and ``runtime_overhead_gb``:
    see the module docstring."""
    b = precision(dtype)
    if runtime_overhead_gb < 0:
        raise ValueError(f"runtime_overhead_gb: expected >= 0, got {runtime_overhead_gb}")
    first, last = stage == 0, stage == pp - 1
    p = stage_params(cfg, layers, first, last, tp, ep, mtp)
    n = p.dense + p.expert
    weights = b.weight * n
    grads = b.grad * n
    if distributed_optimizer:
        optim = b.optim * (p.dense / dp + p.expert / edp)
    else:
        optim = b.optim * n
    tokens = seq_len * micro_batch
    in_flight = pp - stage
    per_layer = [layer_activation_bytes(cfg, cfg.is_moe_layer(layer), tokens, tp, b.activation) for layer in layers]
    if last and mtp and cfg.num_mtp_layers:
        per_layer += [layer_activation_bytes(cfg, cfg.is_moe, tokens, tp, b.activation)] * cfg.num_mtp_layers
    if recompute == "full":
        act = in_flight * len(per_layer) * float(b.activation) * tokens * cfg.hidden_size + max(per_layer, default=0.0)
    else:
        act = in_flight * sum(per_layer)
    if last:
        heads = 1 + (cfg.num_mtp_layers if mtp else 0)
        act += heads * 2 * 4.0 * tokens * cfg.vocab_size / tp  # fp32 logits and their gradient
    total = weights + grads + optim + act + runtime_overhead_gb * GB
    return {"params": n, "dense_params": p.dense, "expert_params": p.expert, "weights_gb": weights / GB,
            "grads_gb": grads / GB, "optimizer_gb": optim / GB, "activations_gb": act / GB, "total_gb": total / GB}


def stage_cost(cfg: ModelConfig, layers: list[int], first: bool, last: bool, tp: int, mtp: bool,
               seq_len: int) -> float:
    """Compute per token of one rank of a stage (FLOP units: 2 x active params + attention scores)."""
    h = cfg.hidden_size
    qk, vd = head_dims(cfg)
    scores = cfg.num_attention_heads * (qk + vd) * (seq_len + 1) / 2

    def layer_cost(moe: bool) -> float:
        mlp = (cfg.moe_intermediate_size * 3 * h * (cfg.num_experts_per_tok + cfg.n_shared_experts)
               + cfg.num_experts * h) if moe else 3 * h * cfg.intermediate_size
        return 2 * (attention_params(cfg) + mlp) + 2 * scores

    cost = sum(layer_cost(cfg.is_moe_layer(layer)) for layer in layers)
    if last:
        cost += 2 * cfg.vocab_size * h
        if mtp and cfg.num_mtp_layers:
            cost += cfg.num_mtp_layers * (layer_cost(cfg.is_moe) + 2 * 2 * h * h + 2 * cfg.vocab_size * h)
    return cost / tp
