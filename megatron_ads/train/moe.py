"""MoE step metrics: tokens routed to each expert (forward hooks on megatron's routers), their imbalance,
and megatron's aux-loss tracker reduction, called so dense-only stages join it.

Shapes: L layers, E experts.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.config.model import ModelConfig

MOE_TRACK_NAMES = ["seq_load_balancing_loss"]


class ExpertLoad:
    """Counts the tokens routed to each expert of this stage's MoE layers (the counts stay on device)."""

    def __init__(self, module, cfg: ModelConfig, stage_layers: list[int]):
        from megatron.core.transformer.moe.router import TopKRouter  # heavy: megatron-core at use

        self.cfg = cfg
        self.counts: dict[int, torch.Tensor] = {}
        for name, sub in module.named_modules():
            if isinstance(sub, TopKRouter) and name.startswith("decoder.layers."):
                sub.register_forward_hook(partial_hook(self, stage_layers[int(name.split(".")[2])]))

    def reset(self) -> None:
        self.counts = {}

    def reduce(self, count_here: bool, stop: bool = False) -> dict[str, Any]:
        """Per-expert load of every MoE layer (summed over all ranks' tokens; ``count_here``: this rank's counts
        are included, i.e. it is the first of its tensor-parallel group) and its imbalance; a [L, E] world
        all-reduce every rank joins (zeros on dense-only stages). One more element carries the ranks' ``stop``
        flags: ``out["stop"]`` is True when any rank passed ``stop=True``."""
        L, E = self.cfg.num_layers, self.cfg.num_experts
        buf = torch.zeros(L * E + 1)
        counts = buf[:-1].view(L, E)
        for g, c in self.counts.items():
            if count_here:
                counts[g] += c.cpu()
        buf[-1] = float(stop)
        if dist.get_world_size() > 1:
            dist.all_reduce(buf)
        out: dict[str, Any] = {"stop": bool(buf[-1] > 0)}
        moe_layers = [i for i in range(self.cfg.num_layers) if self.cfg.is_moe_layer(i)]
        if moe_layers:
            loads = counts[moe_layers]
            imbalance = (loads.max(dim=1).values / loads.mean(dim=1).clamp_min(1e-9))
            out["moe_max_imbalance"] = float(imbalance.max())
            out["moe_expert_load"] = {str(i): counts[i].tolist() for i in moe_layers}
        return out


def partial_hook(load: ExpertLoad, layer: int):
    """The forward hook adding a router's routing map (tokens per expert) to ``load`` for global ``layer``."""

    def hook(_m, _inp, out):
        routing_map = out[1]
        counts = routing_map.sum(dim=0).float().detach()  # stays on device: no sync per layer
        load.counts[layer] = load.counts.get(layer, 0) + counts

    return hook


def track_moe_metrics(cfg: ModelConfig, step: int, uniform: bool) -> None:
    """megatron's MoE tracker reduction. ``uniform`` (the stub on): every rank names the same tracked losses
    (force-initialized), so dense-only stages join the pipeline-group all-reduce. Otherwise it is called the
    way Megatron-LM's loop does (names from each rank's own tracker), which diverges on dense-only stages:
    the hang of Megatron-LM issue 1444."""
    from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker  # heavy: megatron-core at use
    from megatron.core.transformer.moe.moe_utils import track_moe_metrics as megatron_track

    names = MOE_TRACK_NAMES if uniform else None
    megatron_track(1.0, step, track_names=names, force_initialize=names is not None,
                   num_layers=cfg.num_layers, moe_layer_freq=cfg.moe_layer_pattern)
    clear_aux_losses_tracker()
