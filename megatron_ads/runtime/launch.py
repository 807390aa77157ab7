"""Start N local worker processes (gloo on CPU) the way torchrun would, and collect their results.

Used by CLI verbs with ``--nproc N`` and by the distributed tests. Each worker gets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, runs ``fn(*args)`` and returns a
JSON-serializable result; a worker failure is re-raised in the parent with the worker's traceback.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import traceback
from pathlib import Path
from typing import Any, Callable

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerError(RuntimeError):
    """A spawned worker raised; carries its rank and traceback text."""


def _entry(local_rank: int, fn: Callable, args: tuple, world: int, port: int, outdir: str, env: dict,
           cwd: str) -> None:
    # a fork-server child starts with the fork server's environment and directory: take the caller's
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(outdir) / f"rank{local_rank}.json"
    try:
        result = fn(*args)
        out.write_text(json.dumps({"ok": True, "result": result}))
    except BaseException as exc:  # report every failure to the parent, then exit non-zero
        out.write_text(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                   "traceback": traceback.format_exc()}))
        raise SystemExit(1)
    finally:
        try:
            from megatron_ads.runtime.dist import destroy

            destroy()
        except Exception:
            pass


PRELOAD = ["torch", "megatron.core", "transformers", "megatron_ads.train.sft_loop", "megatron_ads.checkpoint.parity"]
"""Modules the fork server imports once; workers forked from it start without paying for them again."""


def _context():
    """Workers come from a fork server (a fresh process that only imports ``PRELOAD``, never computes
    or joins a process group, so forking it is safe) unless MEGATRON_ADS_START_METHOD=spawn: importing
    megatron-core costs ~8 s of CPU per process, which N workers x many launches would pay again."""
    method = os.environ.get("MEGATRON_ADS_START_METHOD", "forkserver")
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"MEGATRON_ADS_START_METHOD: expected forkserver or spawn, got {method!r}")
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def spawn(fn: Callable, nproc: int, *args: Any, env: dict[str, str] | None = None, grace_s: float = 120.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` fresh processes as ranks 0..nproc-1; return their results by rank.

    When a worker fails, the others get ``grace_s`` seconds to finish (and report their own errors,
    e.g. the collective timeout each rank hit) before they are terminated.
    """
    import time

    if nproc < 1:
        raise ValueError(f"nproc: expected >= 1, got {nproc}")
    port = free_port()
    ctx = _context()
    with tempfile.TemporaryDirectory(prefix="megatron_ads_spawn_") as outdir:
        child_env = {**os.environ, **(env or {})}
        procs = [ctx.Process(target=_entry, args=(r, fn, args, nproc, port, outdir, child_env, os.getcwd()))
                 for r in range(nproc)]
        for p in procs:
            p.start()
        failed_at = None
        try:
            while any(p.is_alive() for p in procs):
                for p in procs:
                    p.join(timeout=0.05)
                if failed_at is None and any(p.exitcode not in (None, 0) for p in procs):
                    failed_at = time.time()
                if failed_at is not None and time.time() - failed_at > grace_s:
                    break
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        results, errors = [], []
        for rank in range(nproc):
            path = Path(outdir) / f"rank{rank}.json"
            if not path.exists():
                errors.append(f"rank {rank}: exited (code {procs[rank].exitcode}) without a result")
                results.append(None)
                continue
            data = json.loads(path.read_text())
            if data["ok"]:
                results.append(data["result"])
            else:
                errors.append(f"rank {rank}: {data['error']}\n{data['traceback']}")
                results.append(None)
        if errors:
            raise WorkerError("worker(s) failed:\n" + "\n".join(errors))
        return results
