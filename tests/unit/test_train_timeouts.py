"""train/timeouts.py: timeouts are recognised by the backends' messages, and the error names phase, groups
and rank (setting the timeouts: tests/unit/test_dist_env.py)."""

import pytest

from megatron_ads.runtime.errors import Failure
from megatron_ads.train.loop import CollectiveTimeout, TrainingAborted
from megatron_ads.train.timeouts import PHASE_GROUPS, is_timeout, named_timeout


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
