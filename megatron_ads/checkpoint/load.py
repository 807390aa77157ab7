"""Load an HF checkpoint straight into this rank's megatron-core model chunk (no file conversion).

Uses the mapping registry; every tensor of the chunk must be written exactly once, and every task
must find its target, otherwise a ``CheckpointError`` lists what is missing or extra.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_ads.checkpoint.hf_io import CheckpointError, FP8BlockScale, HFCheckpoint
from megatron_ads.checkpoint.mapping import RankCoord, apply_transform, expert_views, rank_tasks
from megatron_ads.checkpoint.megatron_io import MegatronAsHF, MegatronShard, iter_dirname, read_layout, shard_dirname
from megatron_ads.checkpoint.mtp import resolve_mtp
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.kernels.fp8 import FP8_DTYPE, block_quant, expand_scale_rows, scale_shape
from megatron_ads.layout.pipeline import stage_layers


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters plus persistent weight-like buffers (router expert_bias) of a chunk, by the names of the
    mapping tables (grouped experts weights as per-expert views: ``mapping.expert_views``)."""
    out = {}
    for name, param in model.named_parameters():
        out.update(expert_views(name, param))
    for name, buf in model.named_buffers():
        if name.endswith("expert_bias"):
            out[name] = buf
    return out


def current_coord() -> RankCoord:
    """This process's (pp, tp, ep) coordinates from megatron's parallel state."""
    from megatron.core import parallel_state as ps  # heavy: megatron-core loads only where a model runs

    return RankCoord(pp_rank=ps.get_pipeline_model_parallel_rank(), tp_rank=ps.get_tensor_model_parallel_rank(),
                     ep_rank=ps.get_expert_model_parallel_rank())


def fp8_source(hf, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 codes [N, K], per-row inverse scales [N, ceil(K/128)]) of HF weight ``name``: as stored when
    the checkpoint holds it in FP8, else block-quantized here (``kernels.fp8.block_quant``)."""
    if getattr(hf, "is_fp8", None) is not None and hf.is_fp8(name):
        q, s = hf.raw(name), hf.raw(FP8BlockScale.scale_name(name))
        if q.dtype != FP8_DTYPE or q.dim() != 2 or tuple(s.shape) != scale_shape(tuple(q.shape)):
            raise CheckpointError(f"{hf.dir}: {name} {q.dtype} {tuple(q.shape)} with scale {tuple(s.shape)}; expected "
                                  f"{FP8_DTYPE} codes and a {FP8BlockScale.scale_name(name)} of 128x128 blocks")
    else:
        q, s = block_quant(hf.get(name))
    return q, expand_scale_rows(s.to(torch.float32), q.shape[0])


@torch.no_grad()
def load_hf_into_chunk(model: torch.nn.Module, hf: HFCheckpoint, cfg: ModelConfig, par: ParallelConfig,
                       coord: RankCoord) -> int:
    """Copy every tensor this rank owns from ``hf`` into ``model``. Returns the number of tensors.

    ``cfg`` is the config ``model`` was built with, after ``resolve_mtp``: when its MTP layers were
    dropped, the checkpoint's MTP tensors (if any) are not read. A cfg that still has MTP layers the
    checkpoint lacks is refused up front, naming the missing tensors and the ``mtp`` policy.
    """
    if cfg.family == "deepseek_v3" and par.tp > 1:
        raise ValueError("tp: MLA models are supported with tp=1 only (the paper's layout uses PP x EP x DP)")
    if cfg.num_mtp_layers:
        resolve_mtp(cfg, hf, "require", warn=False)
    targets = model_tensors(model)
    modules = dict(model.named_modules())
    written: set[str] = set()
    for task in rank_tasks(cfg, par, coord):
        if task.mcore not in targets:
            raise CheckpointError(f"{hf.dir}: mapping produced {task.mcore!r} (from {task.hf}) which this rank's "
                                  f"model does not have")
        owner, _, leaf = task.mcore.rpartition(".")
        if leaf == "weight" and callable(getattr(modules.get(owner), "load_fp8", None)):
            # an FP8 linear holding codes + scales (kernels.fp8_linear): no dense copy of the weight
            parts = [fp8_source(hf, name) for name in task.hf]
            codes = apply_transform(task, [q for q, _ in parts], cfg, par.tp, coord.tp_rank)
            scales = apply_transform(task, [s for _, s in parts], cfg, par.tp, coord.tp_rank)
            modules[owner].load_fp8(codes, scales, name=f"{hf.dir}: {task.hf} -> {task.mcore}")
            written.add(task.mcore)
            continue
        sources = [hf.get(name) for name in task.hf]
        value = apply_transform(task, sources, cfg, par.tp, coord.tp_rank)
        target = targets[task.mcore]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{hf.dir}: {task.hf} -> {task.mcore}: shape {tuple(value.shape)} does not match "
                                  f"the model's {tuple(target.shape)} (config.json disagrees with the weights?)")
        target.copy_(value.to(target.dtype))
        written.add(task.mcore)
    missing = sorted(set(targets) - written)
    if missing:
        raise CheckpointError(f"{hf.dir}: {len(missing)} model tensors have no source in the mapping: {missing[:8]}")
    return len(written)


@torch.no_grad()
def load_mcore_into_chunk(model: torch.nn.Module, mcore_dir, par: ParallelConfig, coord: RankCoord) -> int:
    """Load this rank's part of a Megatron checkpoint: a legacy shard written for this layout 1:1; a legacy
    checkpoint of another layout or a torch_dist one (global tensors) through the ``MegatronAsHF`` view.
    No collectives: every rank reads what it owns."""
    layout = read_layout(mcore_dir)
    wanted = [len(s) for s in stage_layers(layout.cfg.num_layers, par)]
    same = (layout.par.tp, layout.par.pp, layout.par.ep) == (par.tp, par.pp, par.ep) and \
        layout.par.stage_layers == wanted and layout.info.get("format") != "torch_dist"
    if not same:
        return load_hf_into_chunk(model, MegatronAsHF(mcore_dir), layout.cfg, par, coord)
    shard = MegatronShard(Path(mcore_dir) / iter_dirname(layout.iteration) / shard_dirname(coord, par))
    targets = model_tensors(model)
    keys = set(shard.keys())
    if keys != set(targets):
        raise CheckpointError(f"{shard.dir}: shard tensors do not match the model: missing "
                              f"{sorted(set(targets) - keys)[:5]}, extra {sorted(keys - set(targets))[:5]}")
    for name in keys:
        value, target = shard.get(name), targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointError(f"{shard.dir}: {name}: shape {tuple(value.shape)} vs model {tuple(target.shape)}")
        target.copy_(value.to(target.dtype))
    return len(keys)
