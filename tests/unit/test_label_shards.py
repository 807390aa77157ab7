"""``infer.job`` sharding, part files, merge and resume, with a model-free scorer (fast): workers run as threads
that meet at a barrier, as the spawned processes do; kills are simulated by the on_batch hook and by the
files a SIGKILL leaves (torn lines, a merged file without the rename, part files left after the rename).
The SIGKILL itself is exercised on the real CLI in tests/distributed/test_label_kill.py."""

import json
import threading
import types
import zlib

import pytest

from megatron_ads.data.synthetic import SyntheticConfig, generate
from megatron_ads.data.tasks import task
from megatron_ads.infer.job import (JobResult, LabelJob, merge_outputs, output_files, part_files, part_path,
                                    run_job)
from megatron_ads.runtime.errors import BadInput

N = 11


class FakeScorer:
    """Deterministic log-likelihoods from a hash of (prompt, target): rows do not depend on their batch."""

    engine = types.SimpleNamespace(cfg=types.SimpleNamespace(max_position_embeddings=100_000))

    def encode(self, text):
        return list(range(len(text.split())))

    def score(self, prompts, targets):
        return [-(zlib.crc32((p + "|" + t).encode()) % 1000) / 100 for p, t in zip(prompts, targets)]


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generate("query_ad", SyntheticConfig(size=N, seed=3))))
    return path


def _job(rows, out, **kw):
    return LabelJob(input=rows, output=out, task=task("query_ad"), batch_size=2, **kw)


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


class _Stop(Exception):
    pass


def _workers(rows, out, world, resume=False, stop_after=None):
    """Run ``world`` workers as threads (a barrier between planning and writing), then merge unless one was
    stopped. ``stop_after``: {rank: batches} after which that worker raises (its part file stays)."""
    barrier = threading.Barrier(world)
    results, errors = [None] * world, []

    def work(rank):
        n = {"batches": 0}

        def on_batch(_):
            n["batches"] += 1
            if stop_after and stop_after.get(rank) == n["batches"]:
                raise _Stop

        try:
            results[rank] = run_job(_job(rows, out, resume=resume), FakeScorer(), on_batch, rank=rank, world=world,
                                    sync=barrier.wait)
        except _Stop:
            errors.append(rank)

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        return None
    merge_outputs(_job(rows, out, resume=True))
    return JobResult.combine(results)


def test_part_file_names(tmp_path):
    out = tmp_path / "o.jsonl"
    assert part_path(out, 1, 12).name == "o.jsonl.part-001-of-012.jsonl"
    for name in ("o.jsonl.part-001-of-012.jsonl", "o.jsonl.part-000-of-002.jsonl", "o.jsonl.part-x-of-2.jsonl",
                 "o.jsonl.part-000-of-002.jsonl.tmp", "oo.jsonl.part-000-of-002.jsonl"):
        (tmp_path / name).write_text("")
    assert [p.name for p in part_files(out)] == ["o.jsonl.part-000-of-002.jsonl", "o.jsonl.part-001-of-012.jsonl"]
    assert output_files(out) == part_files(out)


def test_workers_equal_one_worker_each_id_once(rows, tmp_path):
    ref = tmp_path / "ref.jsonl"
    one = run_job(_job(rows, ref), FakeScorer())
    out = tmp_path / "out.jsonl"
    res = _workers(rows, out, 3)
    assert _read(out) == _read(ref) and not part_files(out)
    assert res.labeled == one.labeled == N and res.skipped == 0 and res.tokens_in == one.tokens_in
    assert res.seconds >= 0 and res.started <= res.ended


@pytest.mark.parametrize("first, stop, second", [(2, {1: 1}, 2), (2, {0: 2}, 1), (3, {2: 1}, 2), (1, {0: 2}, 3)])
def test_resume_after_a_stopped_worker_with_the_same_or_another_count(rows, tmp_path, first, stop, second):
    ref = tmp_path / "ref.jsonl"
    run_job(_job(rows, ref), FakeScorer())
    out = tmp_path / "out.jsonl"
    if first == 1:  # one worker writes OUT itself
        n = {"b": 0}

        def on_batch(_):
            n["b"] += 1
            if n["b"] == stop[0]:
                raise _Stop

        with pytest.raises(_Stop):
            run_job(_job(rows, out), FakeScorer(), on_batch)
    else:
        assert _workers(rows, out, first, stop_after=stop) is None
        assert part_files(out) and not out.exists()
    with (output_files(out)[-1]).open("a") as f:
        f.write('{"id": "qa0-')  # what a kill mid-write leaves
    with pytest.raises(FileExistsError, match="out.jsonl"):
        run_job(_job(rows, out), FakeScorer())
    res = _workers(rows, out, second, resume=True) if second > 1 else \
        run_job(_job(rows, out, resume=True), FakeScorer())
    assert _read(out) == _read(ref) and not part_files(out)
    assert 0 < res.labeled < N and res.skipped == N - res.labeled


def test_kill_during_merge_before_and_after_the_rename(rows, tmp_path):
    ref = tmp_path / "ref.jsonl"
    run_job(_job(rows, ref), FakeScorer())
    out = tmp_path / "out.jsonl"
    # before the rename: the temporary file is written, OUT does not exist yet, the part files are whole
    assert _workers(rows, out, 2) is not None
    merged = out.read_text()
    out.rename(out.with_name(out.name + ".tmp"))
    for r, rows_r in enumerate((merged.splitlines(True)[0::2], merged.splitlines(True)[1::2])):
        part_path(out, r, 2).write_text("".join(rows_r))
    res = run_job(_job(rows, out, resume=True), FakeScorer())
    assert res.labeled == 0 and _read(out) == _read(ref) and not part_files(out)
    assert not out.with_name(out.name + ".tmp").exists()
    # after the rename: OUT complete, part files still there (copies)
    part_path(out, 0, 2).write_text("".join(merged.splitlines(True)[:5]))
    part_path(out, 1, 3).write_text(merged.splitlines(True)[7])
    assert _workers(rows, out, 2, resume=True).labeled == 0
    assert _read(out) == _read(ref) and not part_files(out)


def test_resume_checks_settings_in_part_files(rows, tmp_path):
    out = tmp_path / "out.jsonl"
    assert _workers(rows, out, 2, stop_after={1: 1}) is None
    with pytest.raises(BadInput, match=r"part-00[01]-of-002.jsonl:1: field 'temperature'"):
        run_job(_job(rows, out, resume=True, temperatures={"relevance": 2.0, "location": 1.0, "quality": 1.0}),
                FakeScorer())


def test_calibrated_rows_keep_labels(rows, tmp_path):
    plain, cal = tmp_path / "plain.jsonl", tmp_path / "cal.jsonl"
    run_job(_job(rows, plain), FakeScorer())
    temps = {"relevance": 3.0, "location": 0.5, "quality": 1.0}
    run_job(_job(rows, cal, temperatures=temps), FakeScorer())
    for p, c in zip(_read(plain), _read(cal)):
        assert p["labels"] == c["labels"] and c["temperature"] == temps
        assert c["probs"]["quality"] == pytest.approx(p["probs"]["quality"], abs=1e-7)
        assert max(c["probs"]["relevance"].values()) <= max(p["probs"]["relevance"].values()) + 1e-9
        assert max(c["probs"]["location"].values()) >= max(p["probs"]["location"].values()) - 1e-9
    with pytest.raises(ValueError, match="temperatures: calibration applies to label mode"):
        _job(rows, cal, mode="reasoning", temperatures=temps)
