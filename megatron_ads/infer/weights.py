"""Weights for inference: an HF or Megatron checkpoint directory -> this rank's megatron-core model chunk
(eval mode), its ModelConfig and its tokenizer.

Sources (detected from the directory):

- an HF checkpoint (``config.json`` + safetensors), BF16/FP32 or DeepSeek FP8 (e4m3 weights with
  ``weight_scale_inv``); the tokenizer, if any, sits beside the weights;
- a Megatron checkpoint: a converted legacy directory (``latest_checkpointed_iteration.txt``), a
  torch_dist step directory (``metadata.json``), or a training run (``RUN``, ``RUN/checkpoints``,
  ``RUN/checkpoints/latest``: its newest complete step). Its config is ``hf_config.json``, its
  tokenizer ``tokenizer/``.

Precision: ``fp32`` and ``bf16`` build the model in that dtype. ``fp8`` on an FP8 checkpoint builds the
decoder with the FP8 linear of a backend (``kernels.fp8_linear``, selected through the ModuleSpec) and
computes the rest in bf16:

- ``reference`` (CPU default): the block-scaled weights are dequantized once at load with DeepSeek's
  formula (``W = bf16(fp32(W_e4m3) * S)``, ``checkpoint.hf_io``) and multiplied in bf16 — the same
  logits as a bf16 model of the dequantized weights (``torch._scaled_mm`` rejects block scales on CPU
  and is far slower than a dequantized matmul);
- ``triton`` / ``scaled_mm`` (CUDA default: ``scaled_mm`` where cuBLAS's blockwise call works, else
  ``triton``): the e4m3 codes and ``weight_scale_inv`` go straight into the linears, no bf16 weight is
  materialized; activations are quantized per token per 128 channels.

``fp8_backend=`` or ``$MEGATRON_ADS_FP8_BACKEND`` forces one (``triton`` runs on CPU under
``TRITON_INTERPRET=1``, for tests). With tp > 1 the weights are dequantized into the plain spec.

MTP layers are never built for inference (``mtp=drop``): generation uses the main model's head only.

Layouts: ``par`` (a ParallelConfig: tp, pp, ep, optional stage split) builds and loads this rank's chunk
of the plan: inside a process group of ``pp * lcm(tp, ep)`` ranks or more (torchrun, srun, or
``runtime.launch.spawn``), megatron's groups are created for ``par`` (``init_parallel``; reused when they
already exist with these sizes) and the rank reads only the tensors it owns (HF checkpoints through the
mapping registry; Megatron checkpoints as their own shards when written for this layout, else
reassembled). ``infer.parallel.ParallelContext.from_megatron()`` then gives the engine this rank's place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_ads.checkpoint.dist_io import resolve_dir
from megatron_ads.checkpoint.hf_io import HFCheckpoint
from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk, load_mcore_into_chunk
from megatron_ads.checkpoint.megatron_io import MegatronAsHF, read_layout
from megatron_ads.checkpoint.mtp import resolve_mtp
from megatron_ads.checkpoint.tokenizer_dir import find_tokenizer_dir
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.data.tokenizer import load_tokenizer
from megatron_ads.layout.groups import init_model_parallel
from megatron_ads.kernels.fp8_linear import default_backend
from megatron_ads.model.build import build_model_chunk
from megatron_ads.model.specs import use_te_default
from megatron_ads.runtime.dist import init_distributed, read_env
from megatron_ads.runtime.launch import free_port
from megatron_ads.runtime.log import get_logger
from megatron_ads.runtime.platform import Platform

log = get_logger("megatron_ads.infer")

PRECISIONS = ("fp32", "bf16", "fp8")
COMPUTE_DTYPE = {"fp32": "fp32", "bf16": "bf16", "fp8": "bf16"}
"""The dtype the model computes in for each ``--precision`` (fp8: dequantized at load, see the module doc)."""
HF_CONFIG_FILE = "config.json"


class Loaded(NamedTuple):
    """What ``load_for_inference`` returns (unpacks as ``model, cfg, tokenizer``)."""

    model: Any
    """This rank's megatron-core GPTModel chunk, in eval mode."""
    cfg: ModelConfig
    """The config it was built with (MTP dropped)."""
    tokenizer: Any
    """The checkpoint's tokenizer, or None when it has none (ids-only use)."""


def init_single_rank(timeout_s: float = 600.0) -> Platform:
    """The default process group and megatron's groups for one process (tp = pp = ep = 1), unless a
    launcher (torchrun, srun) or an earlier call set them up. A single process without ``MASTER_PORT``
    gets a free port, so concurrent jobs on one machine do not collide. Returns the platform."""
    if not dist.is_initialized() and read_env().launcher == "single" and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    platform, _ = init_distributed(timeout_s=timeout_s)
    if not parallel_state.model_parallel_is_initialized():
        init_model_parallel(ParallelConfig())
    return platform


def init_parallel(par: ParallelConfig, timeout_s: float = 600.0) -> Platform:
    """The process groups for ``par``: ``init_single_rank`` for tp = pp = ep = 1; otherwise the default
    group from the launcher's environment (torchrun, srun, ``launch.spawn``) and megatron's groups for
    ``par`` (kept when they exist with the same sizes). Returns the platform.

    Raises:
        ValueError: a multi-rank ``par`` in a single process, a world that does not fit ``par``, or
            megatron groups that already exist with other sizes.
    """
    if (par.tp, par.pp, par.ep) == (1, 1, 1):
        return init_single_rank(timeout_s)
    want = f"tp={par.tp} pp={par.pp} ep={par.ep}"
    if not dist.is_initialized() and read_env().launcher == "single":
        raise ValueError(f"par: {want} needs several processes (a multiple of pp * lcm(tp, ep)); this is a single "
                         f"process without a process group: start it under torchrun/srun or runtime.launch.spawn")
    platform, _ = init_distributed(timeout_s=timeout_s)
    if parallel_state.model_parallel_is_initialized():
        have = (parallel_state.get_tensor_model_parallel_world_size(),
                parallel_state.get_pipeline_model_parallel_world_size(),
                parallel_state.get_expert_model_parallel_world_size())
        if have == (par.tp, par.pp, par.ep):
            return platform
        raise ValueError(f"par: {want} requested, but megatron's process groups already exist with "
                         f"tp={have[0]} pp={have[1]} ep={have[2]} in this process")
    try:
        init_model_parallel(par)
    except ValueError as exc:
        raise ValueError(f"par: {want} on {dist.get_world_size()} ranks: {exc}") from None
    return platform


def is_hf_dir(path: str | Path) -> bool:
    """True when ``path`` is an HF checkpoint directory (``config.json`` and safetensors)."""
    p = Path(path)
    return (p / HF_CONFIG_FILE).is_file() and any(p.glob("*.safetensors"))


def read_model_config(model_dir: str | Path) -> ModelConfig:
    """The ModelConfig of the checkpoint in ``model_dir`` (HF ``config.json``, or a Megatron checkpoint's
    layout), without reading any weights: for checks made before the model is loaded (e.g. by the parent
    of spawned workers)."""
    p = Path(model_dir)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint directory")
    if is_hf_dir(p):
        return ModelConfig.from_hf(p)
    return read_layout(resolve_dir(p)).cfg


def eos_ids(cfg: ModelConfig, tokenizer: Any = None) -> set[int]:
    """The ids generation stops at: the tokenizer's ``eos_token_id``, else config.json's ``eos_token_id``
    (an int or a list); empty when neither names one."""
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        return {int(tokenizer.eos_token_id)}
    eos = cfg.hf_config.get("eos_token_id")
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, list) else [eos])}


def load_for_inference(model_dir: str | Path, precision: str = "fp32", device: str | None = None,
                       par: ParallelConfig | None = None, fp8_backend: str | None = None) -> Loaded:
    """Build this rank's model chunk from the checkpoint in ``model_dir`` and load its weights.

    Args:
        model_dir: an HF checkpoint directory (BF16/FP32 or DeepSeek FP8) or a Megatron checkpoint
            (legacy converted directory, torch_dist step directory, training run or its ``latest``).
        precision: ``fp32`` | ``bf16`` | ``fp8`` (fp8: FP8 linears of ``fp8_backend`` on an FP8
            checkpoint, bf16 elsewhere — see the module docstring).
        device: ``cpu`` | ``cuda``; None: the detected platform.
        par: the parallel layout (default tp = pp = ep = 1). Otherwise every rank of the process group
            calls this and gets its own chunk (``init_parallel``); MLA models need tp = 1.
        fp8_backend: ``reference`` | ``triton`` | ``scaled_mm`` for ``precision="fp8"``; None:
            ``kernels.fp8_linear.default_backend(device)``.
    Returns:
        ``Loaded(model, cfg, tokenizer)``: the GPTModel chunk in eval mode, its config (MTP dropped),
        the tokenizer or None.
    Raises:
        ValueError: unknown precision, a layout the process group does not fit (``init_parallel``).
        CheckpointError: not a checkpoint, or tensors that do not match the config.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    par = par or ParallelConfig()
    path = Path(model_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory")
    platform = init_parallel(par)
    device = device or platform.name
    if is_hf_dir(path):
        source: Any = HFCheckpoint(path)
        cfg = ModelConfig.from_hf(path)
        mcore_dir = None
        fp8 = any(source.is_fp8(k) for k in source.keys())
    else:
        mcore_dir = resolve_dir(path)  # CheckpointError naming what a checkpoint needs
        source = MegatronAsHF(mcore_dir)
        cfg = read_layout(mcore_dir).cfg
        fp8 = False
    if precision == "fp8" and not fp8:
        log.info("%s: precision fp8 requested for a checkpoint without FP8 weights: computing in bf16", path)
    backend = None
    if precision == "fp8" and fp8 and par.tp == 1:
        backend = fp8_backend or default_backend(device)
    built_cfg, _ = resolve_mtp(cfg, source, "drop", warn=False)
    dtype = COMPUTE_DTYPE[precision]
    model = build_model_chunk(built_cfg, par, dtype=dtype, device=device, use_te=use_te_default(device),
                              fp8_backend=backend, experts="sequential")  # infer.lean twins SequentialMLP
    coord = current_coord()
    if mcore_dir is None or built_cfg.num_mtp_layers != cfg.num_mtp_layers:
        n = load_hf_into_chunk(model, source, built_cfg, par, coord)  # FP8 codes: to the linears' load_fp8
    else:
        n = load_mcore_into_chunk(model, mcore_dir, par, coord)
    if dtype == "bf16":
        # megatron-core's local norms are created in fp32 whatever params_dtype says (training casts the
        # whole model through Float16Module); one compute dtype here, as transformers holds a bf16 model
        for param in model.parameters():
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
    model.eval()
    tok_dir = find_tokenizer_dir(path)
    tokenizer = load_tokenizer(tok_dir) if tok_dir is not None else None
    log.info("loaded %s (%s, %d tensors, %s%s)", path, built_cfg.model_type, n, dtype,
             "" if not fp8 else f", FP8 linears: {backend}" if backend and backend != "reference"
             else ", FP8 weights dequantized at load")
    return Loaded(model, built_cfg, tokenizer)


def to_device(t: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """``t`` on the device of ``model``'s parameters."""
    return t.to(next(model.parameters()).device)
