"""``megatron-ads label`` killed with SIGKILL at deterministic points (the job's test hook
``MEGATRON_ADS_LABEL_KILL`` kills its whole process group: the CLI, the fork server and every worker), then
``--resume``d with the same or another number of workers: every id exactly once, rows equal to an
uninterrupted run (probabilities to 1e-5: a row's batch companions change its padding), part files gone."""

import json
import os
import signal
import subprocess
import sys

import pytest

from megatron_ads.cli import main
from megatron_ads.infer.job import KILL_ENV, part_files, part_path

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("single_rank_module")]

N = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("label_kill")
    ckpt, rows, ref = d / "ckpt", d / "rows.jsonl", d / "ref.jsonl"
    assert main(["init-model", "--flavor", "tiny_deepseek_v3", "--out", str(ckpt)]) == 0
    assert main(["data", "synth", "--task", "query_ad", "--n", str(N), "--out", str(rows)]) == 0
    assert main(_args(ckpt, rows, ref)) == 0  # the uninterrupted run: one worker, in this process
    return ckpt, rows, _read(ref)


def _args(ckpt, rows, out, *extra):
    return ["label", "--model", str(ckpt), "--input", str(rows), "--output", str(out), "--task", "query_ad",
            "--batch-size", "2", *extra]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _lines(path):
    return path.read_bytes().count(b"\n")


def _same_rows(got, ref):
    assert [r["id"] for r in got] == [r["id"] for r in ref]  # every id once, in input order
    for g, r in zip(got, ref):
        assert {k: v for k, v in g.items() if k != "probs"} == {k: v for k, v in r.items() if k != "probs"}
        for name, probs in r["probs"].items():
            assert max(abs(g["probs"][name][c] - p) for c, p in probs.items()) <= 1e-5


def _killed(args, kill):
    """Run the CLI in its own session with the kill hook; it must die by SIGKILL."""
    # not the MASTER_PORT this process's own 1-rank group took (the child picks a free one)
    env = {**{k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}, KILL_ENV: kill}
    r = subprocess.run([sys.executable, "-m", "megatron_ads", *args], env=env, start_new_session=True,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])


@pytest.mark.slow
def test_workers_equal_one_worker(setup, tmp_path, capsys):
    ckpt, rows, ref = setup
    out = tmp_path / "out.jsonl"
    assert main(_args(ckpt, rows, out, "--workers", "2", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["workers"] == 2 and summary["labeled"] == N and summary["cost"]["samples_per_s"] > 0
    _same_rows(_read(out), ref)
    assert not part_files(out) and json.loads((tmp_path / "out.jsonl.errors.jsonl").read_text() or "[]") == []


# (workers of the killed run, kill point, what the kill leaves, workers of the resume)
CASES = {
    "one-torn": (1, "torn:2", "torn-out", 1),
    "one-then-two": (1, "batch:2", "out-4", 2),
    "two-batch-then-one": (2, "batch:1@1", "part1-2", 1),
    "two-torn": (2, "torn:2@0", "torn-part0", 2),
    "two-merge": (2, "merge", "before-rename", 2),
    "two-merged": (2, "merged", "after-rename", 1),
}


@pytest.mark.parametrize("case", [pytest.param(k, marks=pytest.mark.slow) if v[0] == 2 else k
                                  for k, v in CASES.items()])
def test_sigkill_then_resume_exactly_once(setup, tmp_path, case):
    ckpt, rows, ref = setup
    first, kill, left, second = CASES[case]
    out = tmp_path / "out.jsonl"
    _killed(_args(ckpt, rows, out, "--workers", str(first)), kill)
    p0, p1 = part_path(out, 0, 2), part_path(out, 1, 2)
    if left == "torn-out":
        # batch 1 whole, batch 2 cut in half of its bytes: its first row may be whole, never both rows
        assert _lines(out) in (2, 3) and not out.read_bytes().endswith(b"\n")
    elif left == "out-4":
        assert _lines(out) == 4 and out.read_bytes().endswith(b"\n")
    elif left == "part1-2":
        assert not out.exists() and _lines(p1) == 2 and p1.read_bytes().endswith(b"\n")
    elif left == "torn-part0":
        assert not out.exists() and _lines(p0) in (2, 3) and not p0.read_bytes().endswith(b"\n")
    elif left == "before-rename":
        assert not out.exists() and out.with_name(out.name + ".tmp").exists()
        assert _lines(p0) + _lines(p1) == N
    else:  # after the rename, before the part files were removed
        assert _lines(p0) + _lines(p1) == N
        _same_rows(_read(out), ref)
    assert main(_args(ckpt, rows, out, "--workers", str(second))) == 2  # without --resume: refused
    assert main(_args(ckpt, rows, out, "--workers", str(second), "--resume")) == 0
    _same_rows(_read(out), ref)
    assert not part_files(out) and not out.with_name(out.name + ".tmp").exists()
