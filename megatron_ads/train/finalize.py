"""``finalize_model_grads`` for a one-process run: megatron-core's function without what one rank does not need.

After every backward, megatron-core's ``finalize_model_grads`` (1) finishes the DDP gradient sync: per bucket group
the scaling by its ``gradient_scaling_factor`` and an all-reduce (or reduce-scatter) over the data-parallel group;
(2) reduces conditional-embedder, layer-norm / non-TP and word / position embedding gradients across TP and PP
(each skipped by megatron itself at size 1); (3) updates the routers' expert bias (DeepSeek-V3's
auxiliary-loss-free balancing: an all-reduce of each router's token counts over TP x CP x DP, then
``bias + rate * sign(mean - count)``), finding the routers by a walk over every module of the model; (4) zeroes the
token counts (a second walk); (5) scales the gradients by ``1 / num_tokens`` when it is given.

In one process every collective is the identity and every scaling factor 1, yet each step still pays two gloo
calls (~0.2 ms each on CPU; on CUDA, NCCL launches) and two module walks (~0.5 ms for a 4-layer model, growing with
depth). ``OneRankFinalize`` does (3)-(5) on the routers found once, with megatron's arithmetic (the same stacked
tensors, the same ops: bit-equal, ``tests/unit/test_one_rank_finalize.py``) and resets the bucket groups' state
as (1) does; ``one_rank_finalize_supported`` names what keeps megatron's function (another rank, a gradient check,
a scaling factor other than 1, overlapped reduction, FSDP). ``finalize_func`` picks one of the two at build time
(``model.single_rank``: ``auto`` the twin where it applies, ``megatron`` always megatron's).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist


def one_rank_finalize_supported(chunks: list[Any]) -> str | None:
    """Why megatron's ``finalize_model_grads`` must run for the DDP-wrapped ``chunks``; None when the one-rank
    twin does the same."""
    if not dist.is_initialized() or dist.get_world_size() != 1:
        return "more than one rank (its collectives exchange gradients)"
    for chunk in chunks:
        c = getattr(chunk, "ddp_config", None)
        if c is None:
            return f"{type(chunk).__name__} is not megatron's DistributedDataParallel"
        for field in ("overlap_grad_reduce", "check_for_nan_in_grad", "check_for_large_grads", "use_megatron_fsdp"):
            if getattr(c, field, False):
                return f"ddp_config.{field} is set"
        if getattr(c, "num_distributed_optimizer_instances", 1) != 1:
            return "ddp_config.num_distributed_optimizer_instances != 1"
        for group in _bucket_groups(chunk):
            if any(b.gradient_scaling_factor != 1.0 for b in group.buckets):
                return "a gradient bucket scales its gradients"
    return None


def _bucket_groups(chunk) -> list[Any]:
    return list(chunk.bucket_groups) + list(chunk.expert_parallel_bucket_groups)


class OneRankFinalize:
    """Megatron's ``finalize_model_grads`` for ``chunks`` in a one-process run (module docstring): called with
    megatron's signature; another list of chunks goes to megatron's function."""

    def __init__(self, chunks: list[Any]):
        from megatron.core.distributed import finalize_model_grads  # heavy: megatron-core at use

        self.megatron = finalize_model_grads
        self.chunks = list(chunks)
        modules = [m for chunk in self.chunks for m in chunk.module.modules()]
        self.routers = [m for m in modules if hasattr(m, "expert_bias")]
        """megatron's walk (``_update_router_expert_bias``, ``reset_model_temporary_tensors``), once, in its order."""
        self.global_aux = [m for m in modules if hasattr(m, "reset_global_aux_loss_tracker")]
        self.groups = [g for chunk in self.chunks for g in _bucket_groups(chunk)]

    def __call__(self, model: list[Any], num_tokens: torch.Tensor | None = None, pg_collection=None,
                 force_all_reduce: bool | None = False) -> None:
        if len(model) != len(self.chunks) or any(a is not b for a, b in zip(model, self.chunks)):
            return self.megatron(model, num_tokens, pg_collection, force_all_reduce)
        config = self.chunks[0].config
        for group in self.groups:  # (1): what finish_grad_sync leaves behind; the all-reduce is the identity
            group.param_gather_dispatched = False
        if config.moe_router_enable_expert_bias and self.routers:  # (3), get_updated_expert_bias' arithmetic
            with torch.no_grad():
                tokens = torch.stack([m.local_tokens_per_expert for m in self.routers], dim=0)
                bias = torch.stack([m.expert_bias for m in self.routers], dim=0)
                average = tokens.sum(dim=-1, keepdim=True) / tokens.shape[-1]
                updated = bias + torch.sign(average - tokens) * config.moe_router_bias_update_rate
                for m, new in zip(self.routers, updated):
                    m.expert_bias.copy_(new)
        if config.moe_router_enable_expert_bias:  # (4)
            for m in self.routers:
                m.local_tokens_per_expert.zero_()
        if "global_aux_loss" in config.moe_router_load_balancing_type:
            for m in self.global_aux:
                m.reset_global_aux_loss_tracker()
        if num_tokens is not None:  # (5)
            for chunk in self.chunks:
                if num_tokens > 0:
                    chunk.scale_gradients(1.0 / num_tokens)
        return None


def finalize_func(chunks: list[Any], single_rank: str = "auto") -> Callable:
    """The ``finalize_model_grads_func`` for the DDP-wrapped ``chunks``: the one-rank twin where
    ``single_rank`` is ``auto`` and ``one_rank_finalize_supported`` finds nothing against it, else megatron's."""
    from megatron.core.distributed import finalize_model_grads  # heavy: megatron-core at use

    if single_rank == "auto" and one_rank_finalize_supported(chunks) is None:
        return OneRankFinalize(chunks)
    return finalize_model_grads
