"""Grouped vs sequential routed experts on one rank of any EP layout (shared by the unit test at EP 1
and tests/distributed/test_grouped_experts.py at EP 2)."""

from __future__ import annotations

from pathlib import Path

import torch


def compare_rank(hf_dir: str, ep: int = 1, save_dir: str | None = None, load_dir: str | None = None) -> dict:
    """Build the HF checkpoint's model with sequential and with grouped experts (same weights, EP ``ep``),
    run one fp32 forward + backward on a fixed batch, and return the max |diff| of logits and gradients.
    ``save_dir``: also save the grouped model's sharded state dict (torch_dist) there; ``load_dir``: load
    a torch_dist checkpoint (saved at any EP) into fresh grouped and sequential models and report the max
    |diff| against the HF weights."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron_ads.checkpoint.hf_io import HFCheckpoint
    from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk, model_tensors
    from megatron_ads.checkpoint.parity import _pipeline_forward, parity_batch
    from megatron_ads.config.model import ModelConfig
    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.weights import init_parallel
    from megatron_ads.model.build import build_model_chunk
    from megatron_ads.model.experts import GroupedExperts

    par = ParallelConfig(ep=ep)
    platform = init_parallel(par)
    cfg = ModelConfig.from_hf(hf_dir)
    hf = HFCheckpoint(hf_dir)
    models = {}
    for kind in ("sequential", "grouped"):
        torch.manual_seed(0)
        m = build_model_chunk(cfg, par, dtype="fp32", device=platform.name, experts=kind)
        load_hf_into_chunk(m, hf, cfg, par, current_coord())
        models[kind] = m
    assert any(isinstance(x, GroupedExperts) for x in models["grouped"].modules())
    ids = parity_batch(cfg.vocab_size, 2, 16, 1234)
    g = torch.Generator().manual_seed(5)
    logits = {}
    for kind, m in models.items():
        out = _pipeline_forward(m, ids, cfg, torch.float32, platform.device)
        weight = torch.randn(out.shape, generator=g.manual_seed(5))
        (out.float() * weight).sum().backward()
        logits[kind] = out.detach()
    grads = {k: {n: (p.grad if p.grad is not None else getattr(p, "main_grad", None)) for n, p in m.named_parameters()}
             for k, m in models.items()}
    from megatron_ads.checkpoint.mapping import expert_views
    gg = {}
    for n, gr in grads["grouped"].items():
        gg.update(expert_views(n, gr))
    assert set(gg) == set(grads["sequential"]), sorted(set(gg) ^ set(grads["sequential"]))[:5]
    grad_diff = max((gg[n] - gr).abs().max().item() for n, gr in grads["sequential"].items())
    report = {"logits_diff": (logits["grouped"] - logits["sequential"]).abs().max().item(),
              "grad_diff": grad_diff, "n_grads": len(gg),
              "dispatchers": sorted({type(x.token_dispatcher).__name__ for m in models.values() for x in m.modules()
                                     if hasattr(x, "token_dispatcher")})}
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        dist_checkpointing.save(models["grouped"].sharded_state_dict(), save_dir)
    if load_dir is not None:
        ref = model_tensors(models["sequential"])
        for kind in ("sequential", "grouped"):
            fresh = build_model_chunk(cfg, par, dtype="fp32", device=platform.name, experts=kind)
            template = {k: v for k, v in fresh.sharded_state_dict().items() if not isinstance(v, ShardedObject)}
            fresh.load_state_dict(dist_checkpointing.load(template, load_dir), strict=True)
            got = model_tensors(fresh)
            assert set(got) == set(ref)
            report[f"load_{kind}_diff"] = max((got[n] - ref[n]).abs().max().item() for n in ref)
    return report
