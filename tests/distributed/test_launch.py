"""runtime.launch on torch's elastic launcher: results by rank, the caller's environment and directory,
every failed rank named with its error, a bounded wait for the others, nothing of elastic's on the console."""

import os
import signal
import time

import pytest

from megatron_ads.runtime.errors import Failure
from megatron_ads.runtime.launch import WorkerError, spawn

pytestmark = pytest.mark.distributed


def _report(tag):
    return {"tag": tag, "rank": int(os.environ["RANK"]), "world": int(os.environ["WORLD_SIZE"]),
            "late": os.environ.get("LATE"), "extra": os.environ.get("EXTRA"), "cwd": os.getcwd(),
            "omp": os.environ.get("OMP_NUM_THREADS")}


def _fail(mode):
    import torch
    import torch.distributed as dist

    from megatron_ads.runtime.dist import init_distributed

    _, env = init_distributed(timeout_s=60)
    if mode == "collective":  # rank 1 leaves while rank 0 waits for it in an all-reduce
        if env.rank == 1:
            raise ValueError("rank 1 left")
        dist.all_reduce(torch.ones(1))
    elif mode == "stuck":  # rank 1 never finishes
        if env.rank == 0:
            raise ValueError("rank 0 gave up")
        time.sleep(120)
    return env.rank


def test_results_by_rank_with_the_callers_environment_and_directory(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATE", "set after the fork server started")  # the fork server may be older
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    got = spawn(_report, 3, "t", env={"EXTRA": "x"})
    assert [r["rank"] for r in got] == [0, 1, 2] and {r["world"] for r in got} == {3}
    assert {(r["tag"], r["late"], r["extra"], r["cwd"], r["omp"]) for r in got} == \
        {("t", "set after the fork server started", "x", str(tmp_path), "1")}
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert "TORCHELASTIC_SIGNALS_TO_HANDLE" not in os.environ
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing of elastic's


def test_every_failed_rank_is_named_with_its_error_and_traceback(capfd):
    t0 = time.time()
    with pytest.raises(WorkerError) as exc:
        spawn(_fail, 2, "collective")
    assert time.time() - t0 < 50  # rank 0 failed as soon as rank 1 closed its groups, not at its 60 s timeout
    e = exc.value
    assert isinstance(e, Failure) and [r for r, _, _ in e.failures] == [0, 1]
    assert "rank 1: ValueError: rank 1 left" in str(e) and 'in _fail\n    raise ValueError("rank 1 left")' in str(e)
    assert e.brief.splitlines()[0].startswith("rank 0: RuntimeError: ") and "Traceback" not in e.brief
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "elastic" not in out + err


def test_the_others_get_grace_s_then_are_terminated():
    t0 = time.time()
    with pytest.raises(WorkerError) as exc:
        spawn(_fail, 2, "stuck", grace_s=2)
    assert time.time() - t0 < 60
    assert exc.value.brief.splitlines() == ["rank 0: ValueError: rank 0 gave up",
                                            "rank 1: still running 2s after rank 0 failed (terminated)"]


def test_nproc_is_checked():
    with pytest.raises(ValueError, match="nproc: expected >= 1, got 0"):
        spawn(_report, 0, "t")
