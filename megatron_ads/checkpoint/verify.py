"""Tensor-by-tensor comparison of two checkpoints (two HF, two legacy Megatron or two torch_dist), with key
accounting both ways. torch_dist keys are the stored global keys, optimizer state included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from megatron_ads.checkpoint.dist_io import DistShard, is_torch_dist
from megatron_ads.checkpoint.hf_io import INDEX, SINGLE, CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.megatron_io import LATEST, MegatronShard, read_layout


def _kind(path: Path) -> str:
    if is_torch_dist(path):
        return "torch_dist"
    if (path / LATEST).is_file():
        return "mcore"
    if (path / INDEX).is_file() or (path / SINGLE).is_file():
        return "hf"
    raise CheckpointError(f"{path}: neither an HF checkpoint ({INDEX}) nor a complete Megatron checkpoint ({LATEST}, "
                          f"or metadata.json for torch_dist)")


def _tensors(path: Path):
    """{key: loader} over every stored tensor (HF: raw stored tensors incl. scales; Megatron: shard/name)."""
    kind = _kind(path)
    if kind == "hf":
        ck = HFCheckpoint(path, keep_open=False)
        return "hf", {k: (lambda k=k: ck.raw(k)) for k in ck.weight_map}
    if kind == "torch_dist":
        shard = DistShard(path)
        return "torch_dist", {k: (lambda k=k: shard.read(k)) for k in shard.global_keys()}
    layout = read_layout(path)
    base = path / f"iter_{layout.iteration:07d}"
    out = {}
    for sdir in sorted(p for p in base.iterdir() if p.is_dir()):
        shard = MegatronShard(sdir)
        for k in shard.keys():
            out[f"{sdir.name}/{k}"] = (lambda s=shard, k=k: s.get(k))
    return "mcore", out


def compare(a: str | Path, b: str | Path, atol: float = 0.0) -> dict[str, Any]:
    """Compare every tensor of ``a`` and ``b``; returns a report (``equal`` is the verdict)."""
    ka, ta = _tensors(Path(a))
    kb, tb = _tensors(Path(b))
    if ka != kb:
        raise CheckpointError(f"cannot compare a {ka} checkpoint ({a}) with a {kb} checkpoint ({b})")
    only_a, only_b = sorted(set(ta) - set(tb)), sorted(set(tb) - set(ta))
    mismatched, max_diff = [], 0.0
    for key in sorted(set(ta) & set(tb)):
        x, y = ta[key](), tb[key]()
        if x.shape != y.shape or x.dtype != y.dtype:
            mismatched.append({"key": key, "reason": f"shape/dtype {tuple(x.shape)}/{x.dtype} vs {tuple(y.shape)}/{y.dtype}"})
            continue
        if x.dtype == torch.float8_e4m3fn:
            same = torch.equal(x.view(torch.uint8), y.view(torch.uint8))
            diff = 0.0 if same else float((x.float() - y.float()).abs().max())
        else:
            diff = float((x.double() - y.double()).abs().max()) if x.numel() else 0.0
        max_diff = max(max_diff, diff)
        if diff > atol:
            mismatched.append({"key": key, "reason": f"max|diff| {diff:.3e} > atol {atol:g}"})
    return {"a": str(a), "b": str(b), "kind": ka, "tensors_a": len(ta), "tensors_b": len(tb),
            "only_in_a": only_a, "only_in_b": only_b, "mismatched": mismatched, "max_abs_diff": max_diff,
            "atol": atol, "equal": not (only_a or only_b or mismatched)}
