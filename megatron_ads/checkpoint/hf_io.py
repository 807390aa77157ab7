"""Hugging Face safetensors checkpoints: lazy, index-resolved reads with FP8 block dequantization.

A weight and its ``<name>_scale_inv`` may sit in different shard files, so every lookup goes
through ``model.safetensors.index.json`` (or the single ``model.safetensors``). The DeepSeek FP8
format facts (which tensors are FP8, the scale's name, ``quantization_config``) live here too:
``FP8BlockScale`` reads and writes them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_ads.kernels.fp8 import FP8_DTYPE, block_dequant, block_quant
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path

SCALE_SUFFIX = "_scale_inv"
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"

# Linear weights of decoder/MTP layers are FP8 in DeepSeek's checkpoints; embeddings, lm_head, norms,
# the router (mlp.gate), expert bias and eh_proj are not.
FP8_WEIGHT = re.compile(r"^model\.layers\.\d+\.(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
                        r"|mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$")
QUANT_CONFIG = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
"""The ``quantization_config`` of a DeepSeek FP8 config.json."""


class CheckpointError(BadInput):
    """A checkpoint on disk is not what it claims to be (names the file and the problem)."""


def is_fp8_weight(name: str) -> bool:
    """Whether DeepSeek stores this tensor as FP8 with a block scale."""
    return bool(FP8_WEIGHT.match(name))


class FP8BlockScale:
    """DeepSeek FP8 storage of one HF weight: E4M3 codes under ``name`` and the 128x128 block scale
    (its inverse) under ``name + SCALE_SUFFIX``; the mapping class for the FP8 case."""

    @staticmethod
    def applies(name: str) -> bool:
        """Whether ``name`` is stored as FP8 in DeepSeek's format."""
        return is_fp8_weight(name)

    @staticmethod
    def scale_name(name: str) -> str:
        return name + SCALE_SUFFIX

    @classmethod
    def quantize(cls, name: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
        """The stored tensors of weight ``name``: codes and scale."""
        q, s = block_quant(value)
        return {name: q, cls.scale_name(name): s}

    @staticmethod
    def dequantize(name: str, codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The weight from its codes and scale (DeepSeek's formula)."""
        return block_dequant(codes, scale, out_dtype=dtype, name=name)


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
        return FP8BlockScale.scale_name(name) in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        """The tensor; FP8 weights are dequantized with their block scales."""
        t = self.raw(name)
        if t.dtype == FP8_DTYPE:
            scale_name = FP8BlockScale.scale_name(name)
            if scale_name not in self.weight_map:
                raise CheckpointError(f"{self.dir}: FP8 weight {name!r} has no {scale_name!r}; refusing to guess a scale")
            return FP8BlockScale.dequantize(name, t, self.raw(scale_name), self.dequant_dtype)
        return t

    def config(self) -> dict:
        path = self.dir / "config.json"
        if not path.is_file():
            raise CheckpointError(f"{path}: missing")
        return json.loads(path.read_text())


def write_dequantized_copy(src: HFCheckpoint, out: str | Path) -> Path:
    """Write ``src`` with every FP8 weight dequantized (DeepSeek's formula, ``src.dequant_dtype``) and
    ``quantization_config`` removed, keeping shard layout. Written to ``out.tmp`` then renamed."""
    out = Path(out)
    by_file: dict[str, list[str]] = {}
    for key in src.keys():
        by_file.setdefault(src.weight_map[key], []).append(key)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
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
        if out.exists():  # replaced only once the copy is complete
            shutil.rmtree(out)
    return out
