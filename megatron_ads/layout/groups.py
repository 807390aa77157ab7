"""ParallelConfig -> megatron-core process groups (built once, on every rank)."""

from __future__ import annotations

import torch.distributed as dist

from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.runtime.dist import megatron_timeout_minutes


def init_model_parallel(par: ParallelConfig, timeout_s: float | None = None) -> int:
    """Create megatron's TP/PP/EP/DP groups for ``par`` on the initialized default group.

    Returns:
        the data-parallel size (world / (tp * pp)).
    """
    from megatron.core import parallel_state  # heavy: keeps the planner (same layer) free of megatron-core

    world = dist.get_world_size()
    if world % (par.tp * par.pp):
        raise ValueError(f"world size {world} is not divisible by tp*pp = {par.tp}*{par.pp}")
    dp = world // (par.tp * par.pp)
    if (dp * par.tp) % par.ep:
        raise ValueError(f"ep: {par.ep} must divide tp*dp = {par.tp * dp} (expert tensor parallel = 1)")
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    kwargs = {}
    if timeout_s is not None:
        kwargs["distributed_timeout_minutes"] = megatron_timeout_minutes(timeout_s)  # fractional: exact seconds
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        expert_model_parallel_size=par.ep,
        expert_tensor_parallel_size=1,  # experts are never TP-split (mapping and plan assume etp=1)
        **kwargs,
    )
    return dp
