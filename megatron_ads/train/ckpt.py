"""Training checkpoints: per-rank model + optimizer + scheduler + RNG + data position + trainer state.

Layout::

    OUT/checkpoints/
        latest                       "step_0000020"  (pointer, written last)
        step_0000020/
            config.yaml              resolved job config
            rank_00000.pt            this rank's states (torch.save; loaded with weights_only=True)
            COMPLETE                 written by rank 0 after every rank's file is in place

A save writes ``step_N.tmp/`` on every rank, barriers, then rank 0 renames it to ``step_N/``, writes
``COMPLETE``, moves ``latest`` and prunes old checkpoints (keep-last-N). A directory without
``COMPLETE`` is never loaded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

LATEST = "latest"
COMPLETE = "COMPLETE"


def step_dirname(step: int) -> str:
    return f"step_{step:07d}"


def rng_state() -> dict[str, Any]:
    import random

    import numpy as np

    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save(root: Path, step: int, rank: int, payload: dict[str, Any], config_yaml: str, keep_last: int) -> Path:
    """Collective: every rank writes its payload; rank 0 publishes the checkpoint atomically."""
    final = root / step_dirname(step)
    tmp = root / (step_dirname(step) + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    part = tmp / f"rank_{rank:05d}.pt"
    torch.save(payload, str(part) + ".part")
    os.replace(str(part) + ".part", part)
    dist.barrier()
    if rank == 0:
        (tmp / "config.yaml").write_text(config_yaml)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        (final / COMPLETE).write_text(f"{dist.get_world_size()}\n")
        pointer = root / (LATEST + ".tmp")
        pointer.write_text(step_dirname(step) + "\n")
        os.replace(pointer, root / LATEST)
        complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).exists())
        for old in complete[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def find_latest(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (via ``latest``, else by scanning)."""
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / COMPLETE).is_file():
            return cand
    complete = sorted(p for p in root.glob("step_*") if (p / COMPLETE).is_file())
    return complete[-1] if complete else None


def load(ckpt: Path, rank: int) -> dict[str, Any]:
    """This rank's payload of a complete checkpoint (``weights_only=True``: loading runs no pickled code)."""
    if not (ckpt / COMPLETE).is_file():
        raise FileNotFoundError(f"{ckpt}: not a complete checkpoint (no {COMPLETE})")
    world = int((ckpt / COMPLETE).read_text().strip())
    if world != dist.get_world_size():
        raise ValueError(f"{ckpt}: saved by {world} ranks, this run has {dist.get_world_size()}; "
                         f"resume needs the same layout (convert/reshard the weights to change it)")
    return torch.load(ckpt / f"rank_{rank:05d}.pt", weights_only=True)
