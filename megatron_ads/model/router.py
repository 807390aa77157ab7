"""megatron-core's ``TopKRouter`` without the steps its configuration turns off, put in place by the one-rank
MoE layer (``model.dispatch.OneRankMoELayer``) where ``lean_router_supported``.

How it works: megatron's router forward runs, per MoE layer and step, the input-jitter, z-loss, token-drop,
aux-loss and router-replay branches (each a Python check and, for the aux losses, the scores recomputed),
a custom ``autograd.Function`` for the gate GEMM (its backward in Python), and the expert-bias token count
through ``torch.compile`` (a dynamo guard check per call: ~0.2 ms fwd + bwd per layer on CPU, more than the
two ops it runs). ``LeanTopKRouter`` runs the same top-k routing (megatron's own
``topk_routing_with_score_function``: score function, expert bias, group-limited top-k, scaling) on the
same logits and counts the routed tokens for the expert-bias update eagerly; the gate is ``F.linear`` when
input, weight and router dtype agree (the custom function exists to keep a low-precision input from being
saved in fp32: with one dtype there is no cast to save), megatron's gate otherwise. Probabilities, routing
map, gradients and ``local_tokens_per_expert`` are megatron's, bit for bit (``tests/unit/test_single_rank.py``).
A padding mask, or any config that turns one of those branches on, runs megatron's forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.moe.moe_utils import topk_routing_with_score_function
from megatron.core.transformer.moe.router import TopKRouter

_ROUTER_DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def lean_router_supported(tconfig) -> str | None:
    """Why megatron's ``TopKRouter`` forward must stay for ``tconfig`` (None: ``LeanTopKRouter`` can stand in)."""
    aux = tconfig.moe_router_load_balancing_type
    aux = aux if isinstance(aux, list) else [aux]
    coeff = tconfig.moe_aux_loss_coeff
    coeff = coeff if isinstance(coeff, list) else [coeff] * len(aux)
    checks = (
        (any(t != "none" and c for t, c in zip(aux, coeff, strict=False)),
         f"aux loss {tconfig.moe_router_load_balancing_type} (coeff {tconfig.moe_aux_loss_coeff})"),
        ("sinkhorn" in aux, "sinkhorn routing"),
        (tconfig.moe_z_loss_coeff is not None, "moe_z_loss_coeff"),
        (tconfig.moe_input_jitter_eps is not None, "moe_input_jitter_eps"),
        (tconfig.moe_expert_capacity_factor is not None, "moe_expert_capacity_factor"),
        (tconfig.moe_router_fusion, "moe_router_fusion"),
        (tconfig.moe_enable_routing_replay, "moe_enable_routing_replay"),
        (tconfig.moe_router_force_load_balancing, "moe_router_force_load_balancing"),
    )
    return next((why for bad, why in checks if bad), None)


class LeanTopKRouter(TopKRouter):
    """``TopKRouter`` whose forward, without a padding mask, is gate -> top-k routing -> expert-bias count."""

    def forward(self, input: torch.Tensor, padding_mask: torch.Tensor | None = None):
        if padding_mask is not None:
            return super().forward(input, padding_mask=padding_mask)
        self._maintain_float32_expert_bias()
        cfg = self.config
        router_dtype = _ROUTER_DTYPES.get(cfg.moe_router_dtype, input.dtype)
        if self.bias is None and input.dtype == self.weight.dtype == router_dtype:
            logits = F.linear(input, self.weight)
        else:
            logits = self.gating(input)
        probs, routing_map = topk_routing_with_score_function(
            logits.view(-1, cfg.num_moe_experts), self.topk, use_pre_softmax=cfg.moe_router_pre_softmax,
            num_groups=cfg.moe_router_num_groups, group_topk=cfg.moe_router_group_topk,
            scaling_factor=cfg.moe_router_topk_scaling_factor, score_function=self.score_function,
            expert_bias=self.expert_bias)
        if self.enable_expert_bias and torch.is_grad_enabled():
            with torch.no_grad():
                self.local_tokens_per_expert += routing_map.sum(dim=0)
        return probs, routing_map
