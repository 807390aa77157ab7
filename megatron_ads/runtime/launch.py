"""Start N local worker processes (gloo on CPU) the way torchrun does, and collect their results.

Used by CLI verbs with ``--nproc N`` and by the distributed tests. torch's own launcher API
(``torch.distributed.launcher.api.elastic_launch``, what torchrun runs) starts the workers, hosts the
rendezvous store (each worker gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), hands back
each rank's return value and reports a failed worker with its traceback. On top of it:

- workers come from a fork server that preloads torch, megatron-core and transformers (``PRELOAD``;
  ``MEGATRON_ADS_START_METHOD=spawn`` starts each one fresh), with the caller's environment and working
  directory, ``OMP_NUM_THREADS=1`` unless set, and the CLI's logging set-up (``log.setup_from_env``);
- every rank's error, not only the first: elastic ends the launch as soon as one worker exits with an
  error and terminates the rest, but a hang is diagnosed by what *each* rank was waiting in. So a failed
  rank first closes its process groups (peers blocked on it fail at once instead of waiting out their
  timeout), posts its error in the launcher's store, and waits up to ``grace_s`` for the other ranks to
  finish; the ``WorkerError`` raised in the parent then names every failed rank with its traceback.
Elastic's own log lines stay off the console (``log.QUIET_LOGGERS``); the failure is reported once, here.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import multiprocessing
import os
import signal
import socket
import tempfile
import time
import traceback
import uuid
from typing import Any, Callable, Iterator

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from megatron_ads.runtime.dist import destroy
from megatron_ads.runtime.errors import Failure
from megatron_ads.runtime.log import QUIET_LOGGERS, get_logger, setup_from_env

log = get_logger(__name__)

PRELOAD = ["megatron_ads.runtime._preload", "torch", "megatron.core", "transformers", "megatron_ads.cli.workers",
           "megatron_ads.checkpoint.parity"]
"""Modules the fork server imports once (the first sets up logging and the warning filters); workers
forked from it start without paying for them again."""

_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "TORCH_NCCL_ASYNC_ERROR_HANDLING")
"""What elastic sets for each worker (plus TORCHELASTIC_*): kept when the caller's environment is restored."""
_KEY = "megatron_ads/spawn"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerError(Failure):
    """Spawned worker(s) failed. ``str()``: each failed rank with its error and traceback; ``failures``:
    ``(rank, "Type: message", traceback)`` per rank; ``brief``: one ``rank R: Type: message`` line each."""

    def __init__(self, failures: list[tuple[int, str, str]]):
        self.failures = failures
        self.brief = "\n".join(f"rank {r}: {error}" for r, error, _ in failures)
        super().__init__("worker(s) failed:\n" + "\n".join(f"rank {r}: {error}\n{tb}" for r, error, tb in failures))


class _RanksFailed(Exception):
    """Raised in a failed worker once the others finished (or ``grace_s`` passed): every rank's error,
    as JSON (``[rank, error, traceback]`` each), for the parent to turn into a ``WorkerError``."""


def start_method() -> str:
    """``forkserver`` (default) or ``spawn`` (MEGATRON_ADS_START_METHOD).

    The fork server is a fresh process that only imports ``PRELOAD``, never computes or joins a process
    group, so forking it is safe; importing megatron-core costs ~8 s of CPU per process, which N workers x
    many launches would pay again. The preload list is global to ``multiprocessing`` and read when the fork
    server starts (the first launch of this process)."""
    method = os.environ.get("MEGATRON_ADS_START_METHOD", "forkserver")
    if method not in ("forkserver", "spawn"):
        raise ValueError(f"MEGATRON_ADS_START_METHOD: expected forkserver or spawn, got {method!r}")
    if method == "forkserver":
        multiprocessing.set_forkserver_preload(PRELOAD)
    return method


def _entry(fn: Callable, args: tuple, env: dict[str, str], cwd: str, grace_s: float) -> Any:
    """One worker: the caller's environment and directory, logging, ``fn(*args)``, every rank's error."""
    # a fork-server child starts with the fork server's environment and directory: take the caller's
    launch_vars = {k: v for k, v in os.environ.items() if k in _LAUNCH_VARS or k.startswith("TORCHELASTIC_")}
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(launch_vars)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.chdir(cwd)
    setup_from_env()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(seconds=120))  # the launcher's (agent's) store
    error = None
    try:
        result = fn(*args)
    except BaseException as exc:  # noqa: BLE001 - reported with every other rank's error below
        error = [rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()]
    try:
        destroy()  # close the process groups: peers waiting on this rank fail now, not at their timeout
    except Exception as exc:  # noqa: BLE001 - a group broken by the failure may not shut down cleanly
        log.debug("rank %d: process group teardown: %s", rank, exc)
    if error is not None:
        store.set(f"{_KEY}/error/{rank}", json.dumps(error))
    store.set(f"{_KEY}/done/{rank}", "1")
    if store.add(f"{_KEY}/done", 1) == world:
        store.set(f"{_KEY}/all_done", "1")
    if error is None:
        return result
    deadline = time.monotonic() + grace_s  # polled: a timed-out store.wait logs C++ warnings to stderr
    while not store.check([f"{_KEY}/all_done"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    failures = []
    for r in range(world):
        if store.check([f"{_KEY}/error/{r}"]):
            failures.append(json.loads(store.get(f"{_KEY}/error/{r}")))
        elif not store.check([f"{_KEY}/done/{r}"]):
            failures.append([r, f"still running {grace_s:g}s after rank {rank} failed (terminated)", ""])
    raise _RanksFailed(json.dumps(failures))


def _failures(exc: ChildFailedError) -> list[tuple[int, str, str]]:
    """What elastic reports: our ``_RanksFailed`` list, or its own record (a signal, an early error)."""
    prefix = f"{_RanksFailed.__name__}: "
    out = []
    for rank, failure in sorted(exc.failures.items()):
        message = failure.message
        if isinstance(message, dict):  # the error file elastic's @record wrote in the worker
            text = message.get("message", "")
            if text.startswith(prefix):
                return [tuple(f) for f in json.loads(text[len(prefix):])]
            out.append((rank, text, message.get("extraInfo", {}).get("py_callstack", "")))
        else:
            out.append((rank, f"exited with code {failure.exitcode} ({message})", ""))
    return out


@contextlib.contextmanager
def _launcher_quiet() -> Iterator[None]:
    """Elastic's loggers off the console; its signal handlers and environment variable undone afterwards."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)}
    had_env = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for s, h in handlers.items():
            if h is not None:
                with contextlib.suppress(ValueError):  # not the main thread: elastic did not install any
                    signal.signal(s, h)
        if had_env is None:
            os.environ.pop("TORCHELASTIC_SIGNALS_TO_HANDLE", None)
        else:
            os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = had_env


def spawn(fn: Callable, nproc: int, *args: Any, env: dict[str, str] | None = None, grace_s: float = 120.0) -> list[Any]:
    """Run ``fn(*args)`` in ``nproc`` processes as ranks 0..nproc-1; return their results by rank.

    ``fn`` and ``args`` must pickle (a module-level function). ``env`` is added to this process's
    environment for the workers. When a worker fails, the others get ``grace_s`` seconds to finish (and
    report their own errors, e.g. the collective timeout each rank hit) before they are terminated; then
    ``WorkerError`` names every failed rank with its error and traceback.
    """
    if nproc < 1:
        raise ValueError(f"nproc: expected >= 1, got {nproc}")
    method = start_method()
    child_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory(prefix="megatron_ads_launch_") as logs, _launcher_quiet():
        config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"megatron_ads_{uuid.uuid4().hex}",
                              rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
                              max_restarts=0, monitor_interval=0.05, start_method=method,
                              logs_specs=DefaultLogsSpecs(log_dir=logs))
        try:
            results = elastic_launch(config, _entry)(fn, args, child_env, os.getcwd(), grace_s)
        except ChildFailedError as exc:
            raise WorkerError(_failures(exc)) from None
        except SignalException as exc:  # the workers are already stopped
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise
    return [results[r] for r in range(nproc)]
