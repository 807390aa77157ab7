"""Distributed initialization from torchrun or SLURM environments, with explicit timeouts."""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from megatron_ads.runtime.platform import Platform, setup


@dataclass(frozen=True, slots=True)
class DistEnv:
    """Rank facts of this process, as read from the launcher's environment."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str
    """'torchrun', 'slurm' or 'single'."""


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM node list ('gpu[001-003,007],login1') into host names."""
    hosts: list[str] = []
    for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", nodelist):
        m = re.fullmatch(r"([^\[]+)\[([^\]]*)\]", part)
        if not m:
            hosts.append(part)
            continue
        prefix, body = m.groups()
        for item in body.split(","):
            if "-" in item:
                lo, hi = item.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(prefix + item)
    return hosts


def read_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read rank/world/master from torchrun (RANK, WORLD_SIZE, ...) or SLURM (SLURM_PROCID, ...).

    torchrun variables win when both are present (torchrun inside srun). Without either, a
    single process on 127.0.0.1 is assumed.
    """
    env = os.environ if environ is None else environ
    port = int(env.get("MASTER_PORT", "29500"))
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")), master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port, launcher="torchrun",
        )
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        elif nodelist:
            addr = expand_slurm_nodelist(nodelist)[0]
        else:
            raise ValueError("SLURM environment without SLURM_JOB_NODELIST or MASTER_ADDR: cannot find the master node")
        return DistEnv(
            rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", "0")), master_addr=addr, master_port=port, launcher="slurm",
        )
    return DistEnv(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1", master_port=port, launcher="single")


def init_distributed(platform: Platform | None = None, timeout_s: float = 600.0,
                     environ: dict[str, str] | None = None) -> tuple[Platform, DistEnv]:
    """Set up the platform and the default process group (idempotent).

    Args:
        platform: cuda or cpu; detected when None.
        timeout_s: collective timeout; a collective that waits longer raises instead of hanging.
    Returns:
        (platform, env).
    """
    env = read_env(environ)
    if env.launcher != "torchrun":
        os.environ.setdefault("LOCAL_RANK", str(env.local_rank))
    platform = setup(platform)
    if not dist.is_initialized():
        if env.launcher == "single":
            # one process: an in-process store, no TCP port (two single-process runs on one machine would
            # otherwise both ask for MASTER_PORT 29500 and the second would fail with EADDRINUSE)
            rendezvous = {"store": dist.HashStore()}
        else:
            rendezvous = {"init_method": f"tcp://{env.master_addr}:{env.master_port}"}
        dist.init_process_group(
            backend=platform.backend,
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **rendezvous,
        )
    return platform, env


def megatron_timeout_minutes(timeout_s: float) -> float:
    """What to pass megatron-core's ``initialize_model_parallel(distributed_timeout_minutes=...)`` for a
    timeout of ``timeout_s`` seconds: fractional minutes (megatron builds ``timedelta(minutes=...)``, so
    0.5 is exactly 30 s; its ``int`` annotation is not enforced). Creating the groups with the timeout is
    the public way; ``set_group_timeouts`` is for groups that already exist."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s: expected > 0 seconds, got {timeout_s}")
    return timeout_s / 60.0


def this_ranks_groups() -> list[dist.ProcessGroup]:
    """Every process group this rank belongs to (the default group included).

    torch 2.13 keeps no public list of them: this reads c10d's private ``_world.pg_map`` (a group
    created with ``new_group`` on a rank outside it is ``GroupMember.NON_GROUP_MEMBER`` and not there).
    Isolated here, with a unit test that fails if a torch upgrade moves it."""
    return [pg for pg in c10d._world.pg_map if isinstance(pg, dist.ProcessGroup)]


def set_group_timeouts(timeout_s: float, groups: Iterable[dist.ProcessGroup] | None = None) -> int:
    """Give process groups a new collective timeout; returns how many were set.

    Uses the public ``ProcessGroup.set_timeout`` (torch 2.13: "sets the default timeout for all future
    operations", for each backend of the group). ``groups`` default: ``this_ranks_groups()``. A group
    this rank is not in raises ``ValueError`` naming it; nothing is swallowed.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s: expected > 0 seconds, got {timeout_s}")
    td = datetime.timedelta(seconds=timeout_s)
    n = 0
    for pg in this_ranks_groups() if groups is None else groups:
        if not isinstance(pg, dist.ProcessGroup):
            raise ValueError(f"set_group_timeouts: {pg!r} is not a process group this rank belongs to")
        pg.set_timeout(td)
        n += 1
    return n


def destroy() -> None:
    """Tear down megatron's parallel state and the default process group."""
    from megatron.core import parallel_state  # heavy: the launcher imports this module without megatron-core

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
