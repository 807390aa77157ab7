"""Hugging Face safetensors checkpoints: lazy, index-resolved reads with FP8 block dequantization.

A weight and its ``<name>_scale_inv`` may sit in different shard files, so every lookup goes
through ``model.safetensors.index.json`` (or the single ``model.safetensors``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from megatron_ads.kernels.fp8 import FP8_DTYPE, block_dequant

SCALE_SUFFIX = "_scale_inv"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class CheckpointError(ValueError):
    """A checkpoint on disk is not what it claims to be (names the file and the problem)."""


class HFCheckpoint:
    """Read-only view of an HF safetensors checkpoint directory.

    ``get(name)`` returns the tensor, FP8 weights dequantized to ``dequant_dtype`` with their scales.
    ``keys()`` lists logical tensor names (scales are folded into their weights).
    """

    def __init__(self, directory: str | Path, dequant_dtype: torch.dtype = torch.bfloat16, keep_open: bool = True):
        self.dir = Path(directory)
        self.dequant_dtype = dequant_dtype
        self.keep_open = keep_open
        """keep_open=False re-opens (re-maps) a shard per read, so touched pages leave RSS (bounded-memory jobs)."""
        if not self.dir.is_dir():
            raise CheckpointError(f"{self.dir}: not a directory")
        index = self.dir / INDEX
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: expected JSON with a 'weight_map' object ({exc})") from exc
        elif (self.dir / SINGLE).is_file():
            weight_map = {k: SINGLE for k in self._open(SINGLE).keys()}
        else:
            raise CheckpointError(f"{self.dir}: neither {INDEX} nor {SINGLE} found")
        for fname in sorted(set(weight_map.values())):
            if not (self.dir / fname).is_file():
                raise CheckpointError(f"{self.dir / fname}: shard listed in {INDEX} is missing")
        self.weight_map: dict[str, str] = weight_map
        self._handles: dict[str, object] = {}

    def _open(self, fname: str):
        handles = getattr(self, "_handles", None)
        if handles is not None and fname in handles:
            return handles[fname]
        path = self.dir / fname
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from exc
        if handles is not None and self.keep_open:
            handles[fname] = handle
        return handle

    def shape(self, name: str) -> tuple[int, ...]:
        """Stored shape of a tensor, without reading its data."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.dir}: tensor {name!r} not in the checkpoint")
        return tuple(self._open(self.weight_map[name]).get_slice(name).get_shape())

    def nbytes(self, name: str) -> int:
        """Bytes of the tensor as ``get`` returns it (FP8 counted at the dequantized width)."""
        import math

        sl = self._open(self.weight_map[name]).get_slice(name)
        width = {"F8_E4M3": self.dequant_dtype.itemsize, "BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8,
                 "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}.get(sl.get_dtype(), 4)
        return math.prod(sl.get_shape()) * width

    def keys(self) -> list[str]:
        """Logical tensor names (``*_scale_inv`` excluded)."""
        return sorted(k for k in self.weight_map if not k.endswith(SCALE_SUFFIX))

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def raw(self, name: str) -> torch.Tensor:
        """The stored tensor, as is."""
        if name not in self.weight_map:
            raise CheckpointError(f"{self.dir}: tensor {name!r} not in the checkpoint")
        fname = self.weight_map[name]
        try:
            return self._open(fname).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"{self.dir / fname}: cannot read tensor {name!r} ({exc})") from exc

    def is_fp8(self, name: str) -> bool:
        return name + SCALE_SUFFIX in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        """The tensor; FP8 weights are dequantized with their block scales."""
        t = self.raw(name)
        if t.dtype == FP8_DTYPE:
            scale_name = name + SCALE_SUFFIX
            if scale_name not in self.weight_map:
                raise CheckpointError(f"{self.dir}: FP8 weight {name!r} has no {scale_name!r}; refusing to guess a scale")
            return block_dequant(t, self.raw(scale_name), out_dtype=self.dequant_dtype, name=name)
        return t

    def config(self) -> dict:
        path = self.dir / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        return json.loads(path.read_text())


def write_dequantized_copy(src: HFCheckpoint, out: str | Path) -> Path:
    """Write ``src`` with every FP8 weight dequantized (DeepSeek's formula, ``src.dequant_dtype``) and
    ``quantization_config`` removed, keeping shard layout. Written to ``out.tmp`` then renamed."""
    import os
    import shutil

    from safetensors.torch import save_file

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    by_file: dict[str, list[str]] = {}
    for key in src.keys():
        by_file.setdefault(src.weight_map[key], []).append(key)
    weight_map = {}
    for fname, keys in sorted(by_file.items()):
        save_file({k: src.get(k).contiguous() for k in keys}, str(tmp / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    (tmp / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2, sort_keys=True))
    cfg = src.config()
    cfg.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    for extra in src.dir.iterdir():
        if extra.name.startswith("tokenizer") or extra.name in ("special_tokens_map.json", "generation_config.json"):
            shutil.copy2(extra, tmp / extra.name)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
