"""torch_dist checkpoints (megatron-core ``dist_checkpointing``), read without building a model.

How it works
------------
megatron-core saves a checkpoint as *global* tensors: every key names a tensor of the whole model
(layer indices global, the local experts of a layer stacked as ``[E, ...]`` under
``...mlp.experts.experts.<proj>.weight``, TP pieces placed at their offsets, gated fc1 as
``[gate; up]`` of the full width). On disk that is a torch.distributed.checkpoint (DCP) directory —
``.metadata`` (keys, global shapes, the chunks each rank wrote and where their bytes sit),
``__<rank>_<n>.distcp`` data files, ``common.pt`` (rank 0's non-tensor state) — plus megatron's
``metadata.json``, which ``dist_checkpointing.save`` writes last and which marks the checkpoint as
complete. Because the tensors are global, any layout can load it (megatron reshards at load).

:class:`DistShard` reads one megatron-core tensor of the tp=pp=ep=1 layout by name: it finds the
chunks of its global key that overlap the wanted region (one expert of a stacked key, or the
whole tensor) and reads only those bytes, so the working set is one tensor, never a stacked
layer's experts at once. ``MegatronAsHF`` uses it to give an HF view of a torch_dist checkpoint.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path

import torch

from megatron_ads.checkpoint.hf_io import CheckpointError
from megatron_ads.runtime.io import atomic_path

LATEST = "latest"
"""A training run's pointer file (``RUN/checkpoints/latest`` -> ``step_N``)."""
LEGACY_LATEST = "latest_checkpointed_iteration.txt"
DIST_METADATA = "metadata.json"
"""megatron's completion marker and backend record ({"sharded_backend": "torch_dist", ...})."""
MEGATRON_DIST_METADATA = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
                          "common_backend_version": 1}
"""What megatron-core 0.16's ``dist_checkpointing.save`` writes to ``metadata.json``."""
DCP_METADATA = ".metadata"
COMMON = "common.pt"
HF_CONFIG = "hf_config.json"
_EXPERT = re.compile(r"^(?P<head>.*\.mlp\.experts\.)local_experts\.(?P<e>\d+)\.(?P<tail>.+)$")
_ITEMSIZE = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2, torch.float64: 8, torch.float8_e4m3fn: 1}


def is_torch_dist(directory: str | Path) -> bool:
    """True when ``directory`` is a complete megatron-core torch_dist checkpoint."""
    marker = Path(directory) / DIST_METADATA
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sharded_backend") == "torch_dist"
    except json.JSONDecodeError:
        return False


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete training checkpoints (``step_N`` directories) under ``root``, oldest first."""
    return sorted(p for p in Path(root).glob("step_*") if not p.name.endswith(".tmp") and is_torch_dist(p))


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (via its ``latest`` pointer, else by scanning)."""
    pointer = Path(root) / LATEST
    if pointer.is_file():
        cand = Path(root) / pointer.read_text().strip()
        if is_torch_dist(cand):
            return cand
    complete = complete_checkpoints(root)
    return complete[-1] if complete else None


def resolve_dir(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: a converted legacy or torch_dist directory as is; for a
    training run ``RUN/checkpoints/step_N``, ``RUN/checkpoints/latest`` (the pointer file),
    ``RUN/checkpoints`` or ``RUN``: its newest complete checkpoint. Raises CheckpointError otherwise."""
    p = Path(path)
    if p.is_file() and p.name == LATEST:
        p = p.parent / p.read_text().strip()
    if (p / LEGACY_LATEST).is_file() or is_torch_dist(p):
        return p
    if p.is_dir():
        latest = find_latest(p) or find_latest(p / "checkpoints")
        if latest is not None:
            return latest
    raise CheckpointError(f"{path}: not a complete Megatron checkpoint: expected {LEGACY_LATEST} (legacy), "
                            f"{DIST_METADATA} (torch_dist, written last by dist_checkpointing) or a run's "
                            f"checkpoints/ with a complete step_N (interrupted save or conversion?)")


def dist_key(mcore_name: str) -> tuple[str, int | None]:
    """The global key of a tp=pp=ep=1 megatron-core tensor name, and its index along the stacked
    expert axis (None for tensors that are not routed-expert weights)."""
    m = _EXPERT.match(mcore_name)
    if m is None:
        return mcore_name, None
    return f"{m['head']}experts.{m['tail']}", int(m["e"])


def mcore_name_of(key: str, index: int | None) -> str:
    """Inverse of :func:`dist_key`."""
    if index is None:
        return key
    head, tail = key.split(".mlp.experts.experts.", 1)
    return f"{head}.mlp.experts.local_experts.{index}.{tail}"


class DistShard:
    """Read access to the model tensors of a torch_dist checkpoint by tp=pp=ep=1 megatron-core name
    (the same interface as a legacy ``MegatronShard``)."""

    def __init__(self, directory: str | Path, prefix: str = ""):
        from torch.distributed.checkpoint import FileSystemReader  # heavy (~1 s): only torch_dist reads need it

        self.dir = Path(directory)
        if not is_torch_dist(self.dir):
            raise CheckpointError(f"{self.dir}: no {DIST_METADATA} with sharded_backend 'torch_dist'; not a complete "
                                  f"torch_dist checkpoint (interrupted save?)")
        try:
            self.meta = FileSystemReader(str(self.dir)).read_metadata()
        except Exception as exc:
            raise CheckpointError(f"{self.dir / DCP_METADATA}: unreadable DCP metadata ({exc})") from exc
        self.prefix = prefix
        self._storage = {(idx.fqn, tuple(idx.offset or ())): info for idx, info in self.meta.storage_data.items()}
        self._names: dict[str, tuple[str, int | None]] = {}
        for key, md in self.meta.state_dict_metadata.items():
            if not key.startswith(prefix) or not hasattr(md, "chunks") or "._extra_state" in key:
                continue
            bare = key[len(prefix):]
            if bare.startswith("optimizer."):
                continue
            if ".mlp.experts.experts." in bare:
                for e in range(md.size[0]):
                    self._names[mcore_name_of(bare, e)] = (key, e)
            else:
                self._names[bare] = (key, None)

    def keys(self) -> list[str]:
        return sorted(self._names)

    def global_keys(self) -> list[str]:
        """Every tensor key of the checkpoint (model and optimizer state), as stored."""
        return sorted(k for k, md in self.meta.state_dict_metadata.items() if hasattr(md, "chunks"))

    def shape(self, name: str) -> tuple[int, ...]:
        key, index = self._lookup(name)
        size = tuple(self.meta.state_dict_metadata[key].size)
        return size if index is None else size[1:]

    def itemsize(self, name: str) -> int:
        key, _ = self._lookup(name)
        return _ITEMSIZE.get(self.meta.state_dict_metadata[key].properties.dtype, 4)

    def _lookup(self, name: str) -> tuple[str, int | None]:
        if name not in self._names:
            raise CheckpointError(f"{self.dir}: tensor {name!r} not in this torch_dist checkpoint")
        return self._names[name]

    def get(self, name: str) -> torch.Tensor:
        key, index = self._lookup(name)
        return self.read(key, index)

    def read(self, key: str, index: int | None = None) -> torch.Tensor:
        """The global tensor ``key`` (or its slice ``[index]`` along dim 0), from the chunks that overlap it."""
        md = self.meta.state_dict_metadata.get(key)
        if md is None or not hasattr(md, "chunks"):
            raise CheckpointError(f"{self.dir}: no tensor {key!r} in the checkpoint")
        size = list(md.size)
        lo, hi = (0, size[0]) if index is None else (index, index + 1)
        out = torch.empty([hi - lo, *size[1:]], dtype=md.properties.dtype)
        covered = 0
        for chunk in md.chunks:
            c_lo, c_hi = chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0]
            a, b = max(lo, c_lo), min(hi, c_hi)
            if a >= b:
                continue
            data = self._read_chunk(key, tuple(chunk.offsets))
            src = data[a - c_lo:b - c_lo]
            dst = out[a - lo:b - lo]
            for dim in range(1, len(size)):
                dst = dst.narrow(dim, chunk.offsets[dim], chunk.sizes[dim])
            dst.copy_(src)
            covered += src.numel()
        if covered != out.numel():
            raise CheckpointError(f"{self.dir}: chunks of {key!r} cover {covered} of {out.numel()} elements")
        return out if index is None else out[0]

    def _read_chunk(self, key: str, offsets: tuple[int, ...]) -> torch.Tensor:
        info = self._storage.get((key, offsets))
        if info is None:
            raise CheckpointError(f"{self.dir}: no storage entry for {key!r} at offset {offsets}")
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{self.dir / info.relative_path}: {key!r} is stored with transforms "
                                  f"{info.transform_descriptors}; only plain torch_dist data is supported")
        with open(self.dir / info.relative_path, "rb") as f:
            f.seek(info.offset)
            blob = f.read(info.length)
        return torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")


def write_dist_metadata(directory: str | Path, records: list) -> int:
    """Write DCP's ``.metadata`` for data files written by the converter (atomically) and return the
    number of keys. ``records``: (file, key, expert index or None, byte offset, byte length, dtype name,
    shape of the piece) per stored piece; a piece with an expert index is chunk ``[index]`` of a key
    stacked over ``n_routed_experts``."""
    # heavy (~1 s): only torch_dist writes need DCP's metadata classes
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import (ChunkStorageMetadata, Metadata, MetadataIndex,
                                                       TensorProperties, TensorStorageMetadata)

    by_key: dict[str, list] = {}
    for rec in records:
        by_key.setdefault(rec[1], []).append(rec)
    state, storage = {}, {}
    for key, recs in by_key.items():
        dtype = getattr(torch, recs[0][5])
        shape = list(recs[0][6])
        stacked = recs[0][2] is not None
        if stacked:
            indices = sorted(r[2] for r in recs)
            if indices != list(range(len(indices))):
                raise CheckpointError(f"{directory}: {key}: expert pieces {indices[:8]}... are not 0..{len(indices) - 1}")
        size = torch.Size([len(recs), *shape] if stacked else shape)
        chunks = []
        for fname, _key, index, offset, length, _dt, piece in recs:
            if list(piece) != shape:
                raise CheckpointError(f"{directory}: {key}: pieces of shapes {shape} and {list(piece)}")
            offsets = torch.Size([index] + [0] * len(shape) if stacked else [0] * len(shape))
            sizes = torch.Size([1, *shape] if stacked else shape)
            chunks.append(ChunkStorageMetadata(offsets=offsets, sizes=sizes))
            storage[MetadataIndex(fqn=key, offset=offsets)] = _StorageInfo(relative_path=fname, offset=offset,
                                                                             length=length)
        state[key] = TensorStorageMetadata(properties=TensorProperties(dtype=dtype), size=size, chunks=chunks)
    with atomic_path(Path(directory) / DCP_METADATA) as tmp, open(tmp, "wb") as f:
        pickle.dump(Metadata(state_dict_metadata=state, storage_data=storage), f)
    return len(state)


def read_common(directory: str | Path) -> dict:
    """rank 0's non-tensor state of a torch_dist checkpoint (``common.pt``; ``weights_only=True``)."""
    path = Path(directory) / COMMON
    if not path.is_file():
        return {}
    return torch.load(path, weights_only=True, map_location="cpu")
