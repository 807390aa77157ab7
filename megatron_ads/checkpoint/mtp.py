"""MTP policy: build with or without the multi-token-prediction layers a config.json declares.

DeepSeek checkpoints declare MTP layers in ``num_nextn_predict_layers`` and store them as HF layers
``num_hidden_layers + m``. transformers neither loads nor writes them, yet its config default is 1:
a checkpoint written by ``save_pretrained`` declares one MTP layer and holds none of its tensors.

Policies (``require | auto | drop``, the converter's and parity's ``--mtp``, the trainer's ``model.mtp``):

- ``require``: every declared MTP tensor must be in the checkpoint (``CheckpointError`` otherwise);
- ``auto`` (default): declared but wholly absent -> build without MTP and say so once (a warning on the
  ``megatron_ads`` logger); partly present -> ``CheckpointError`` listing what is missing;
- ``drop``: build without MTP whatever the checkpoint holds; its MTP tensors are skipped on purpose.

A config without MTP has ``num_mtp_layers = 0`` and its ``hf_config`` says ``num_nextn_predict_layers: 0``,
so files written from it (a converted checkpoint's ``hf_config.json``, an exported ``config.json``) agree
with the tensors they hold. The expected tensor names come from the mapping registry (scope ``mtp*``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging

from megatron_ads.checkpoint.hf_io import CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.mapping import RankCoord, rank_tasks
from megatron_ads.config.model import MTP_POLICIES, ModelConfig, MtpPolicy
from megatron_ads.config.parallel import ParallelConfig

log = logging.getLogger("megatron_ads")
MTP_FIELDS = ("num_nextn_predict_layers", "num_mtp_layers")
LIST_LIMIT = 40
"""At most this many missing tensor names are spelled out in an error."""


def mtp_field(cfg: ModelConfig) -> str:
    """The config.json field that declares ``cfg``'s MTP layers."""
    return next((k for k in MTP_FIELDS if k in cfg.hf_config), MTP_FIELDS[0])


def expected_mtp_tensors(cfg: ModelConfig) -> list[str]:
    """HF tensor names the mapping registry reads for ``cfg``'s MTP layers (every expert), sorted."""
    names: set[str] = set()
    for task in rank_tasks(cfg, ParallelConfig(), RankCoord()):
        if task.mcore.startswith("mtp."):
            names.update(task.hf)
    return sorted(names)


def mtp_tensors_in(cfg: ModelConfig, ckpt) -> list[str]:
    """Tensors of ``ckpt`` that belong to ``cfg``'s declared MTP layers (incl. embed/head copies), sorted."""
    prefixes = tuple(f"model.layers.{cfg.num_layers + m}." for m in range(cfg.num_mtp_layers))
    return sorted(k for k in ckpt.keys() if prefixes and k.startswith(prefixes))


def without_mtp(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with no MTP layers (``hf_config`` updated to match)."""
    hf = copy.deepcopy(cfg.hf_config)
    present = [k for k in MTP_FIELDS if k in hf] or [MTP_FIELDS[0]]
    for key in present:
        hf[key] = 0
    return dataclasses.replace(cfg, num_mtp_layers=0, hf_config=hf)


def _listing(names: list[str]) -> str:
    more = len(names) - LIST_LIMIT
    return ", ".join(names[:LIST_LIMIT]) + (f", ... ({more} more)" if more > 0 else "")


def resolve_mtp(cfg: ModelConfig, ckpt: HFCheckpoint | None, policy: MtpPolicy = "auto",
                warn: bool = True) -> tuple[ModelConfig, str | None]:
    """Apply the MTP ``policy`` to ``cfg`` given the checkpoint its weights come from.

    Args:
        cfg: the config as config.json reads (``num_mtp_layers`` as declared).
        ckpt: the checkpoint to load (``HFCheckpoint`` or anything with ``dir``, ``keys()`` and ``in``,
            e.g. ``MegatronAsHF``); None when no weights are loaded (random init): only ``drop`` changes cfg.
        policy: ``require``, ``auto`` or ``drop``.
        warn: log the ``auto`` decision (a warning line on the ``megatron_ads`` logger); pass False on all
            ranks but one.
    Returns:
        (the config to build and convert with, the reason MTP was dropped or None when cfg is unchanged).
    Raises:
        ValueError: unknown policy. CheckpointError: MTP tensors partly present (require, auto), or
        wholly absent under ``require``.
    """
    if policy not in MTP_POLICIES:
        raise ValueError(f"mtp: expected one of {', '.join(MTP_POLICIES)}, got {policy!r}")
    n = cfg.num_mtp_layers
    if n == 0:
        return cfg, None
    field = mtp_field(cfg)
    where = getattr(ckpt, "dir", "?")
    if policy == "drop":
        skipped = mtp_tensors_in(cfg, ckpt) if ckpt is not None else []
        reason = (f"mtp=drop: config.json declares {field}={n}; built without MTP"
                  + (f", {len(skipped)} MTP tensors of {where} skipped" if skipped else ""))
        log.info(reason)
        return without_mtp(cfg), reason
    if ckpt is None:
        return cfg, None
    expected = expected_mtp_tensors(cfg)
    missing = [k for k in expected if k not in ckpt]
    if not missing:
        return cfg, None
    held = mtp_tensors_in(cfg, ckpt)
    if held:
        raise CheckpointError(
            f"{where}: config.json declares {field}={n}, but the checkpoint holds only "
            f"{len(expected) - len(missing)} of the {len(expected)} MTP tensors the mapping reads "
            f"({len(held)} MTP-layer tensors in all); missing ({len(missing)}): {_listing(missing)}")
    if policy == "require":
        raise CheckpointError(
            f"{where}: config.json declares {field}={n}, but the checkpoint holds none of its "
            f"{len(expected)} MTP tensors (e.g. {missing[0]!r}; transformers' save_pretrained writes none); "
            f"expected all of them under mtp=require; use mtp=auto or mtp=drop to build without MTP")
    reason = (f"{where}/config.json declares {field}={n}, but the checkpoint holds none of its MTP tensors "
              f"(transformers' save_pretrained writes none): building without MTP (mtp=auto)")
    if warn:
        log.warning(reason)
    return without_mtp(cfg), reason
