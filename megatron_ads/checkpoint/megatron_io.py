"""Megatron checkpoint directories: per-rank shards, ``layout.json``, and an HF view of them.

Layout written by the converter (Megatron-LM's legacy naming, so Megatron-LM can load a shard)::

    OUT/
      latest_checkpointed_iteration.txt     "0"  (completion marker: written last)
      layout.json                           parallel sizes, stage layers, plan, source, format version
      hf_config.json                        the source model's config.json
      tokenizer/                            the source tokenizer files, if any
      iter_0000000/mp_rank_TT[_PPP][_EEE]/  one directory per (tp, pp, ep) model shard
          model.safetensors.index.json      mcore name -> file within the shard
          <group>.safetensors               one file per tensor group (a layer, the embedding, the head, ...)
          model_optim_rng.pt                {"model": state_dict, "iteration": 0, "checkpoint_version": 3.0}

Data-parallel replicas share their model shard. Layer indices inside a shard are local to its stage.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from megatron_ads.checkpoint.dist_io import HF_CONFIG, LEGACY_LATEST, DistShard, is_torch_dist, resolve_dir
from megatron_ads.checkpoint.hf_io import CheckpointError
from megatron_ads.checkpoint.mapping import (RankCoord, TensorTask, expected_hf_shape, invert_transform,
                                             rank_tasks)
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig

FORMAT_VERSION = 1
LATEST = LEGACY_LATEST
LAYOUT = "layout.json"
SHARD_INDEX = "model.safetensors.index.json"
MEGATRON_LM_PT = "model_optim_rng.pt"


def shard_dirname(coord: RankCoord, par: ParallelConfig) -> str:
    """Megatron-LM's legacy shard directory name for a (tp, pp, ep) coordinate."""
    name = f"mp_rank_{coord.tp_rank:02d}"
    if par.pp > 1:
        name += f"_{coord.pp_rank:03d}"
    if par.ep > 1:
        name += f"_{coord.ep_rank:03d}"
    return name


def iter_dirname(iteration: int) -> str:
    return f"iter_{iteration:07d}"


def all_coords(par: ParallelConfig) -> list[RankCoord]:
    """Every distinct model shard of a layout (data-parallel replicas share one)."""
    return [RankCoord(pp_rank=p, tp_rank=t, ep_rank=e)
            for p in range(par.pp) for e in range(par.ep) for t in range(par.tp)]


def group_of(mcore_name: str, layers_of_stage: list[int]) -> str:
    """The file group a megatron-core tensor belongs to (one layer, embedding, output, or an MTP layer)."""
    parts = mcore_name.split(".")
    if parts[0] == "decoder" and parts[1] == "layers":
        return f"layer_{layers_of_stage[int(parts[2])]:04d}"
    if parts[0] == "mtp":
        return f"mtp_{int(parts[2]):02d}"
    if parts[0] == "embedding":
        return "embedding"
    return "output"


@dataclass(frozen=True, slots=True)
class Layout:
    """What ``layout.json`` records."""

    par: ParallelConfig
    cfg: ModelConfig
    iteration: int
    info: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, "tp": self.par.tp, "pp": self.par.pp, "ep": self.par.ep,
                           "stage_layers": self.par.stage_layers, "iteration": self.iteration, **self.info},
                          indent=2, sort_keys=True)


def read_layout(directory: str | Path) -> Layout:
    """Read a Megatron checkpoint's ``layout.json`` + ``hf_config.json``; refuse incomplete directories.

    ``directory`` may also name a training run or its ``latest`` pointer (``dist_io.resolve_dir``). A
    torch_dist checkpoint holds global tensors: its Layout is tp=pp=ep=1 and ``info`` keeps the layout
    that saved it."""
    d = resolve_dir(directory)
    if is_torch_dist(d):
        try:
            hf_cfg = json.loads((d / HF_CONFIG).read_text())
            saved = json.loads((d / LAYOUT).read_text()) if (d / LAYOUT).is_file() else {}
        except (FileNotFoundError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{d}: unreadable {HF_CONFIG} or {LAYOUT} of a torch_dist checkpoint ({exc})") from exc
        return Layout(par=ParallelConfig(), cfg=ModelConfig.from_hf_dict(hf_cfg, source=str(d / HF_CONFIG)),
                      iteration=0, info={**saved, "format": "torch_dist", "saved_layout": saved})
    if not (d / LATEST).is_file():
        raise CheckpointError(f"{d}: no {LATEST}; not a complete Megatron checkpoint (interrupted conversion?)")
    try:
        lay = json.loads((d / LAYOUT).read_text())
        hf_cfg = json.loads((d / "hf_config.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{d}: unreadable {LAYOUT} or hf_config.json ({exc})") from exc
    if lay.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{d / LAYOUT}: format_version {lay.get('format_version')}, expected {FORMAT_VERSION}")
    par = ParallelConfig(tp=lay["tp"], pp=lay["pp"], ep=lay["ep"], stage_layers=lay["stage_layers"])
    info = {k: v for k, v in lay.items() if k not in ("format_version", "tp", "pp", "ep", "stage_layers", "iteration")}
    return Layout(par=par, cfg=ModelConfig.from_hf_dict(hf_cfg, source=str(d / "hf_config.json")),
                  iteration=int(lay.get("iteration", 0)), info=info)


class MegatronShard:
    """Read access to one model shard directory (tensors by megatron-core name)."""

    def __init__(self, directory: Path):
        self.dir = directory
        index = directory / SHARD_INDEX
        if not index.is_file():
            raise CheckpointError(f"{directory}: missing {SHARD_INDEX}")
        self.weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        for fname in set(self.weight_map.values()):
            if not (directory / fname).is_file():
                raise CheckpointError(f"{directory / fname}: listed in {SHARD_INDEX} but missing")

    def keys(self) -> list[str]:
        return sorted(self.weight_map)

    def itemsize(self, name: str) -> int:
        """Bytes per element of a stored tensor (from the file header; no data read)."""
        with safe_open(str(self.dir / self.weight_map[name]), framework="pt") as f:
            return {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "F8_E4M3": 1}.get(f.get_slice(name).get_dtype(), 4)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.weight_map:
            raise CheckpointError(f"{self.dir}: tensor {name!r} not in this shard")
        path = self.dir / self.weight_map[name]
        try:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor(name)
        except Exception as exc:
            raise CheckpointError(f"{path}: cannot read {name!r} ({exc})") from exc


class MegatronAsHF:
    """An HF-checkpoint view of a Megatron checkpoint: ``keys()`` and ``get(hf_name)`` reassemble HF
    tensors from the shards by inverting the registry's transforms (TP concat, [gate; up] split,
    qkv de-interleave, expert renumbering). Used by mcore-to-hf and by reshard."""

    def __init__(self, directory: str | Path):
        self.dir = resolve_dir(directory)
        self.layout = read_layout(self.dir)
        self.cfg, self.par = self.layout.cfg, self.layout.par
        base = self.dir / iter_dirname(self.layout.iteration)
        self.shards: dict[RankCoord, MegatronShard | DistShard] = {}
        self.sources: dict[str, list[tuple[RankCoord, TensorTask]]] = {}
        torch_dist = is_torch_dist(self.dir)
        for coord in all_coords(self.par):
            sdir = base / shard_dirname(coord, self.par)
            if torch_dist:  # global tensors: one "shard" of the tp=pp=ep=1 layout
                self.shards[coord] = DistShard(self.dir)
            elif not sdir.is_dir():
                raise CheckpointError(f"{sdir}: shard directory missing for tp={coord.tp_rank} pp={coord.pp_rank} "
                                      f"ep={coord.ep_rank}")
            else:
                self.shards[coord] = MegatronShard(sdir)
            for task in rank_tasks(self.cfg, self.par, coord):
                if task.mcore.startswith("output_layer") and task.hf == ("model.embed_tokens.weight",):
                    continue  # a stage-local copy of the tied embedding: not a source of the HF tensor
                for h in task.hf:
                    self.sources.setdefault(h, []).append((coord, task))
        self._cache: tuple[tuple, dict[str, torch.Tensor]] | None = None
        self.dequant_dtype = None

    def keys(self) -> list[str]:
        return sorted(self.sources)

    def __contains__(self, name: str) -> bool:
        return name in self.sources

    def is_fp8(self, name: str) -> bool:
        return False

    def config(self) -> dict:
        return self.cfg.to_hf_dict()

    def nbytes(self, name: str) -> int:
        """Bytes of the reassembled HF tensor (shape from config.json, width from the shard header)."""
        coord, task = self.sources[name][0]
        shape = expected_hf_shape(self.cfg, name)
        if shape is None:
            return self.get(name).numel() * self.get(name).element_size()
        return math.prod(shape) * self.shards[coord].itemsize(task.mcore)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.sources:
            raise CheckpointError(f"{self.dir}: no shard holds a source of HF tensor {name!r}")
        entries = self.sources[name]
        task = entries[0][1]
        key = (task.mcore, task.hf, entries[0][0].pp_rank, entries[0][0].ep_rank)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._assemble(entries))
        return self._cache[1][name]

    def _assemble(self, entries) -> dict[str, torch.Tensor]:
        coord0, task = entries[0]
        if not task.mapping.splits_tp:
            return invert_transform(task, [self.shards[coord0].get(task.mcore)], self.cfg)
        # one piece per TP rank of the same (pp, ep) position
        pieces = {}
        for coord, t in entries:
            if (coord.pp_rank, coord.ep_rank) == (coord0.pp_rank, coord0.ep_rank) and t.mcore == task.mcore:
                pieces[coord.tp_rank] = self.shards[coord].get(t.mcore)
        if sorted(pieces) != list(range(self.par.tp)):
            raise CheckpointError(f"{self.dir}: {task.mcore}: TP pieces {sorted(pieces)} of {self.par.tp}")
        return invert_transform(task, [pieces[i] for i in range(self.par.tp)], self.cfg)
