"""Per-rank communication volume of a plan, split into intra-node and inter-node bytes.

See layout/memory.py for the model. Groups are derived from the plan's rank coordinates (the same
order megatron-core uses), so "inside a node" is exact for the placement, not assumed.
"""

from __future__ import annotations

from typing import Any

from megatron_ads.config.model import ModelConfig
from megatron_ads.layout.memory import stage_params


def _peers(plan, rank: int, same: tuple[str, ...]) -> list[int]:
    """Ranks sharing every coordinate in ``same`` with ``rank`` (i.e. its group for the other dims)."""
    me = plan.rank_coords(rank)
    return [r for r in range(plan.world_size) if all(plan.rank_coords(r)[k] == me[k] for k in same)]


def _split(plan, rank: int, peers: list[int], total_bytes: float) -> tuple[float, float]:
    """Spread ``total_bytes`` evenly over the other peers; return (intra, inter) node bytes."""
    others = [p for p in peers if p != rank]
    if not others:
        return 0.0, 0.0
    inter = sum(1 for p in others if plan.node_of(p) != plan.node_of(rank)) / len(others)
    return total_bytes * (1 - inter), total_bytes * inter


def rank_traffic(cfg: ModelConfig, plan, rank: int) -> dict[str, float]:
    """Bytes one rank sends per training step, by kind and locality."""
    c = plan.rank_coords(rank)
    stage = plan.stages[c["pp"]]
    tokens = plan.seq_len * plan.micro_batch
    h = cfg.hidden_size
    m = plan.num_microbatches
    out: dict[str, float] = {}
    # EP all-to-all: each (token, expert) row is dispatched and combined, forward and backward
    moe_layers = len(stage.moe_layers)
    ep_peers = _peers(plan, rank, ("pp", "edp", "etp"))
    rows = tokens * cfg.num_experts_per_tok
    a2a = m * moe_layers * 4 * rows * h * 2.0 * (plan.ep - 1) / plan.ep if cfg.is_moe else 0.0
    out["ep_intra"], out["ep_inter"] = _split(plan, rank, ep_peers, a2a)
    # PP p2p: activations forward to the next stage, gradients backward to the previous one
    pp_intra = pp_inter = 0.0
    per_mb = tokens * h * 2.0
    for nxt in (c["pp"] + 1, c["pp"] - 1):
        if 0 <= nxt < plan.pp:
            peer = rank + (nxt - c["pp"]) * plan.tp * plan.dp
            if plan.node_of(peer) == plan.node_of(rank):
                pp_intra += m * per_mb
            else:
                pp_inter += m * per_mb
    out["pp_intra"], out["pp_inter"] = pp_intra, pp_inter
    # DP: dense grads over dp, expert grads over expert-dp, once per step (fp32 grads)
    p = stage_params(cfg, stage.layers, stage.has_embedding, stage.has_output, plan.tp, plan.ep, stage.has_mtp)

    def reduce_bytes(n_params: float, group: int) -> float:
        if group == 1:
            return 0.0
        ring = (group - 1) / group
        if plan.distributed_optimizer:  # reduce-scatter fp32 grads + all-gather bf16 params
            return ring * n_params * (4.0 + 2.0)
        return 2 * ring * n_params * 4.0  # all-reduce

    dp_peers = _peers(plan, rank, ("pp", "tp"))
    out["dp_intra"], out["dp_inter"] = _split(plan, rank, dp_peers, reduce_bytes(p.dense, plan.dp))
    edp_peers = _peers(plan, rank, ("pp", "ep", "etp"))
    e_intra, e_inter = _split(plan, rank, edp_peers, reduce_bytes(p.expert, plan.expert_dp))
    out["dp_intra"] += e_intra
    out["dp_inter"] += e_inter
    return out


def traffic(cfg: ModelConfig, plan) -> dict[str, Any]:
    """Per-step traffic summary: the busiest rank's bytes by kind, and inter-node totals."""
    ranks = _representative_ranks(plan)
    per_rank = {r: rank_traffic(cfg, plan, r) for r in ranks}
    worst = max(per_rank, key=lambda r: sum(v for k, v in per_rank[r].items() if k.endswith("_inter")))
    t = per_rank[worst]
    inter = sum(v for k, v in t.items() if k.endswith("_inter"))
    return {
        "num_microbatches": plan.num_microbatches,
        "busiest_rank": worst,
        "ep_all_to_all_bytes_per_step": {"intra_node": t["ep_intra"], "inter_node": t["ep_inter"]},
        "pp_p2p_bytes_per_step": {"intra_node": t["pp_intra"], "inter_node": t["pp_inter"]},
        "dp_grad_bytes_per_step": {"intra_node": t["dp_intra"], "inter_node": t["dp_inter"]},
        "inter_node_bytes_per_step": inter,
        "intra_node_bytes_per_step": sum(v for k, v in t.items() if k.endswith("_intra")),
    }


def _representative_ranks(plan) -> list[int]:
    """One rank per (pp stage, position in node) is enough: traffic depends on those only."""
    seen, out = set(), []
    for r in range(plan.world_size):
        c = plan.rank_coords(r)
        key = (c["pp"], r % plan.gpus_per_node)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
