"""``megatron-ads label --tp/--pp/--ep`` (a model split across gloo ranks, for checkpoints that do not fit one
device): the output of pp2 x ep2 on 4 ranks (label mode, a tiny DeepSeek-V3 FP8 checkpoint at --precision
fp8) and of pp2 (reasoning mode) is what one process writes; a pp2 run SIGKILLed after its first batch
resumes at pp2 with every id exactly once; a bad combination of flags exits 2 naming the flag."""

import json
import os
import signal
import subprocess
import sys

import pytest

from megatron_ads.cli import main
from megatron_ads.infer.job import KILL_ENV, part_files

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("single_rank_module")]

N = 5
PROB_TOL = 1e-6  # same batches: the split model's probabilities equal one process's to float rounding
RESUME_TOL = 1e-5  # a resumed run batches rows with other companions (other padding)


@pytest.fixture(scope="module")
def setup(tiny_ckpts, tmp_path_factory):
    d = tmp_path_factory.mktemp("label_parallel")
    ckpt, rows, ref = tiny_ckpts("tiny_deepseek_v3", fp8=True), d / "rows.jsonl", d / "ref.jsonl"
    assert main(["data", "synth", "--task", "query_ad", "--n", str(N), "--out", str(rows)]) == 0
    assert main(_args(ckpt, rows, ref)) == 0  # the reference: one process, this one
    return ckpt, rows, _read(ref)


def _args(ckpt, rows, out, *extra):
    return ["label", "--model", str(ckpt), "--input", str(rows), "--output", str(out), "--task", "query_ad",
            "--precision", "fp8", "--batch-size", "2", *extra]


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same_rows(got, ref, tol):
    assert [r["id"] for r in got] == [r["id"] for r in ref]  # every id once, in input order
    worst = 0.0
    for g, r in zip(got, ref):
        assert {k: v for k, v in g.items() if k != "probs"} == {k: v for k, v in r.items() if k != "probs"}
        for name, probs in r.get("probs", {}).items():
            assert g["probs"][name].keys() == probs.keys()
            worst = max([worst] + [abs(g["probs"][name][c] - p) for c, p in probs.items()])
    assert worst <= tol, worst
    return worst


def test_pp2_ep2_fp8_label_mode_writes_the_rows_of_one_process(setup, tmp_path, capsys):
    ckpt, rows, ref = setup
    out = tmp_path / "out.jsonl"
    capsys.readouterr()
    assert main(_args(ckpt, rows, out, "--pp", "2", "--ep", "2", "--nproc", "4", "--json")) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["tp"], summary["pp"], summary["ep"], summary["ranks"], summary["workers"]) == (1, 2, 2, 4, 1)
    assert summary["labeled"] == N and summary["precision"] == "fp8"
    worst = _same_rows(_read(out), ref, PROB_TOL)
    assert json.loads((tmp_path / "out.jsonl.errors.jsonl").read_text() or "[]") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.jsonl.errors.jsonl"]  # rank 0 only
    print(f"pp2 x ep2 label vs one process: max |prob diff| {worst:.1e}")


def test_pp2_reasoning_mode_gives_the_text_of_one_process(setup, tmp_path, capsys):
    ckpt, rows, _ = setup
    four = tmp_path / "rows4.jsonl"
    four.write_text("".join(rows.read_text().splitlines(keepends=True)[:4]))
    reasoning = ("--mode", "reasoning", "--max-new-tokens", "6")
    assert main(_args(ckpt, four, tmp_path / "one.jsonl", *reasoning)) == 0
    capsys.readouterr()
    assert main(_args(ckpt, four, tmp_path / "pp2.jsonl", *reasoning, "--pp", "2", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["ranks"] == 2
    one, pp2 = _read(tmp_path / "one.jsonl"), _read(tmp_path / "pp2.jsonl")
    assert len(one) == 4 and all(r["raw"] and r["mode"] == "reasoning" for r in one)
    assert pp2 == one  # generated text, parse, finish reasons, token counts: identical


def test_sigkill_at_pp2_then_resume_at_pp2_labels_each_row_once(setup, tmp_path, console_noise):
    ckpt, rows, ref = setup
    out = tmp_path / "out.jsonl"
    # the CLI in its own session (the hook kills its process group: the CLI, the fork server, both ranks);
    # not the MASTER_PORT this process's 1-rank group took
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    cmd = [sys.executable, "-m", "megatron_ads", *_args(ckpt, rows, out, "--pp", "2")]
    r = subprocess.run(cmd, env={**env, KILL_ENV: "batch:1"}, start_new_session=True, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    assert out.read_bytes().count(b"\n") == 2 and out.read_bytes().endswith(b"\n")  # batch 1, synced
    assert main(_args(ckpt, rows, out, "--pp", "2")) == 2  # without --resume: refused
    r = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"labeled {N - 2} rows (2 already done" in r.stdout and "on 2 ranks (tp 1, pp 2, ep 1)" in r.stdout
    assert console_noise(r.stdout, r.stderr) == []
    _same_rows(_read(out), ref, RESUME_TOL)
    assert not part_files(out)


@pytest.mark.parametrize("extra,flag", [
    (("--pp", "2", "--workers", "2"), "--workers"),
    (("--pp", "2", "--ep", "2", "--nproc", "6"), "--nproc"),
    (("--nproc", "2"), "--nproc"),
    (("--pp", "0"), "--pp"),
])
def test_bad_combination_exits_2_naming_the_flag(setup, tmp_path, capsys, extra, flag):
    ckpt, rows, _ = setup
    capsys.readouterr()
    assert main(_args(ckpt, rows, tmp_path / "out.jsonl", *extra)) == 2
    err = capsys.readouterr().err
    assert f"label: {flag}:" in err, err
    assert not (tmp_path / "out.jsonl").exists()


GLOO_ABORT = "terminate called without an active exception"
"""A rank dying in C++ with this line (SIGABRT), not a Python traceback: an intermittent abort inside torch's
gloo process group that torch's own tests meet too (pytorch/pytorch#65231); seen once here on a loaded
machine (fresh-clone CI, 2026-12-02) and not reproduced in 6 reruns. The torchrun run is retried once on it
(and only on it); any error of ours fails at once."""


def test_torchrun_ranks_form_the_model_and_calibrate_like_one_process(setup, tmp_path, console_noise):
    ckpt, rows, _ = setup
    val = tmp_path / "val.jsonl"
    assert main(["data", "synth", "--task", "query_ad", "--n", "4", "--seed", "3", "--out", str(val)]) == 0
    assert main(_args(ckpt, rows, tmp_path / "one.jsonl", "--calibrate", str(val))) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = torchrun + ["-m", "megatron_ads",
                      *_args(ckpt, rows, tmp_path / "pp2.jsonl", "--pp", "2", "--calibrate", str(val))]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and GLOO_ABORT in r.stderr:  # once, from scratch: gloo's own intermittent abort
        for f in tmp_path.glob("pp2.jsonl*"):
            f.unlink()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("labeled ") == 1 and "on 2 ranks (tp 1, pp 2, ep 1)" in r.stdout  # rank 0 reports
    assert console_noise(r.stdout, "\n".join(x for x in r.stderr.splitlines() if "torch/distributed/run.py" not in x)
                         ) == []  # torchrun's own OMP_NUM_THREADS banner aside
    cal = [json.loads((tmp_path / f"{n}.jsonl.calibration.json").read_text()) for n in ("one", "pp2")]
    assert cal[0] == cal[1]
    _same_rows(_read(tmp_path / "pp2.jsonl"), _read(tmp_path / "one.jsonl"), PROB_TOL)
