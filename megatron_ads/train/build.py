"""What a Trainer is made of: the model config (from the init checkpoint or a flavor), the DDP-wrapped
megatron-core model chunk with its initial weights, and the (Chained)Optimizer and schedule."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from megatron_ads.checkpoint.hf_io import HFCheckpoint
from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk, load_mcore_into_chunk
from megatron_ads.checkpoint.megatron_io import LATEST as LEGACY_LATEST
from megatron_ads.checkpoint.megatron_io import read_layout
from megatron_ads.checkpoint.mtp import resolve_mtp, without_mtp
from megatron_ads.config.flavors import resolve_model_config
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.train import JobConfig, ModelSpec
from megatron_ads.model.build import build_model_chunk, transformer_config
from megatron_ads.model.specs import use_te_default
from megatron_ads.train import ckpt
from megatron_ads.train.finalize import finalize_func
from megatron_ads.train.optim import build_optimizer, build_scheduler, megatron_optimizer_config


def model_config(m: ModelSpec, warn: bool) -> ModelConfig:
    """The model to build: from the init checkpoint's config (MTP policy ``model.mtp`` applied) or a flavor."""
    if m.init == "mcore":  # converted (legacy or torch_dist) or a training run: MTP as recorded there
        return read_layout(m.path).cfg
    if m.init == "hf":
        cfg, _reason = resolve_mtp(resolve_model_config(m.path), HFCheckpoint(m.path), m.mtp, warn=warn)
        return cfg
    cfg = resolve_model_config(m.name)
    return without_mtp(cfg) if m.mtp == "drop" and cfg.num_mtp_layers else cfg


def stub_parts(job: JobConfig) -> set[str]:
    """Which collectives the stub keeps uniform: the expert optimizer ("optimizer") and megatron's MoE tracker
    reduction ("metrics"); ``optim.stub_moe_optimizer`` switches both, ``optim.stub_parts`` names them."""
    o = job.optim
    if o.stub_parts is not None:
        return set(o.stub_parts)
    return {"optimizer", "metrics"} if o.stub_moe_optimizer else set()


@dataclass(kw_only=True, slots=True)
class Built:
    model: Any
    """The DDP-wrapped model chunk of this rank."""
    tconfig: Any
    optimizer: Any
    optim_info: dict[str, Any]
    scheduler: Any


def build(job: JobConfig, cfg: ModelConfig, device_name: str, stub: set[str],
          extend: Callable[[Any], None] | None = None) -> Built:
    """Model chunk (initial weights loaded), DDP, optimizer and schedule for this rank. ``extend(chunk)``, when
    given, changes the chunk after its initial weights are in and before DDP and the optimizer see it (e.g.
    a reward head, ``train.reward_model.attach_reward_head``): what it adds is trained and checkpointed."""
    o, par = job.optim, job.parallel
    extra = {}
    if cfg.is_moe and job.train.moe_aux_loss_coeff > 0:
        extra.update(moe_router_load_balancing_type="seq_aux_loss", moe_aux_loss_coeff=job.train.moe_aux_loss_coeff)
    tconfig = transformer_config(cfg, par, dtype=o.dtype, device=device_name, calculate_per_token_loss=False, **extra)
    chunk = build_model_chunk(cfg, par, dtype=o.dtype, device=device_name, use_te=use_te_default(device_name),
                              tconfig=tconfig, experts=job.model.experts, single_rank=job.model.single_rank)
    load_initial_weights(chunk, job.model, cfg, job)
    if extend is not None:
        extend(chunk)
    model = wrap_ddp(chunk, tconfig, o.distributed_optimizer, job.model.single_rank)
    optimizer, info = build_optimizer(megatron_optimizer_config(o), [model], stub="optimizer" in stub,
                                      impl=o.stub_impl)
    scheduler = build_scheduler(optimizer, o.lr, o.min_lr, o.warmup_steps, job.train.steps, o.weight_decay)
    return Built(model=model, tconfig=tconfig, optimizer=optimizer, optim_info=info, scheduler=scheduler)


def wrap_ddp(chunk, tconfig, distributed_optimizer: bool, single_rank: str = "auto"):
    """``chunk`` in megatron-core's DistributedDataParallel (fp32 gradient buffers, reduction after the backward),
    with ``tconfig``'s no-sync and finalize functions set (``train.finalize.finalize_func``: the one-rank twin
    of ``finalize_model_grads`` in a one-process run where ``single_rank`` is ``auto``)."""
    from megatron.core.distributed import (  # heavy: megatron-core at use
        DistributedDataParallel, DistributedDataParallelConfig)

    ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                               use_distributed_optimizer=distributed_optimizer,
                                               check_for_nan_in_grad=False)
    model = DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=chunk)
    tconfig.no_sync_func = model.no_sync
    tconfig.finalize_model_grads_func = finalize_func([model], single_rank)
    return model


def load_initial_weights(chunk, m: ModelSpec, cfg: ModelConfig, job: JobConfig) -> None:
    """``model.init`` hf / mcore (legacy shards or torch_dist): this rank's part of the weights into ``chunk``."""
    if m.init == "hf":
        load_hf_into_chunk(chunk, HFCheckpoint(m.path), cfg, job.parallel, current_coord())
    elif m.init == "mcore":
        src = Path(m.path)
        if (src / LEGACY_LATEST).is_file():
            load_mcore_into_chunk(chunk, src, job.parallel, current_coord())
        else:
            ckpt.load_model_weights(chunk, ckpt.resolve(src))
