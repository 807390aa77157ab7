"""train/timeouts.py: the private c10d timeout setter stays isolated and narrow, timeouts are recognised by
the backends' messages, and the error names phase, groups and rank."""

import datetime

import pytest
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

from megatron_ads.runtime.errors import Failure
from megatron_ads.train.loop import CollectiveTimeout, TrainingAborted
from megatron_ads.train.timeouts import PHASE_GROUPS, is_timeout, named_timeout, set_group_timeouts


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=600))
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_set_group_timeouts_reaches_every_group(one_rank):
    sub = dist.new_group([0])
    assert set_group_timeouts(12.5) == len(c10d._world.pg_map) >= 2
    for pg in (c10d._get_default_group(), sub):
        assert pg._get_backend(dist.distributed_c10d.torch.device("cpu")).options._timeout == \
            datetime.timedelta(seconds=12.5)


def test_set_group_timeouts_skips_groups_it_cannot_set(one_rank, monkeypatch):
    calls = []

    def refuse(td, pg):
        calls.append(pg)
        raise ValueError("Invalid process group specified")

    monkeypatch.setattr(c10d, "_set_pg_timeout", refuse)
    assert set_group_timeouts(5) == 0 and calls


def test_set_group_timeouts_does_not_swallow_other_errors(one_rank, monkeypatch):
    def broken(td, pg):
        raise AssertionError("Expected ProcessGroup")

    monkeypatch.setattr(c10d, "_set_pg_timeout", broken)
    with pytest.raises(AssertionError):
        set_group_timeouts(5)


@pytest.mark.parametrize("text, expected", [
    ("[../gloo/transport/tcp/pair.cc:534] Timed out waiting 30000ms for recv operation to complete", True),
    ("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, OpType=ALLREDUCE)", True),
    ("Connection reset by peer", False),
])
def test_is_timeout_reads_the_backends_messages(text, expected):
    assert is_timeout(RuntimeError(text)) is expected
    assert is_timeout(ValueError(text)) is False


def test_named_timeout_names_phase_groups_and_rank():
    err = named_timeout("optimizer", 3, 30, "stub covers nothing (OFF)")
    assert isinstance(err, Failure) and isinstance(err, RuntimeError)
    text = str(err)
    assert text.startswith("rank 3: collective timed out after 30s in phase 'optimizer'")
    assert PHASE_GROUPS["optimizer"] in text and text.endswith("stub covers nothing (OFF)")
    assert issubclass(CollectiveTimeout, Failure) and issubclass(TrainingAborted, Failure)
