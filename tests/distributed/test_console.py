"""The console a person reads: CLI verbs print their results (stdout) and tagged log lines (stderr), never
a Python warning, a traceback fragment, a third-party progress bar or an untagged third-party line — in
the CLI's own process and in the worker processes it starts, on success and on failure."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.distributed

# the verbs one after another in one fresh interpreter (as the console script would run each), exit codes
# to a file so stdout holds only what the verbs print
DRIVER = """
import json, sys
from megatron_ads.cli import main
rcs = [main(argv) for argv in json.loads(sys.argv[1])]
open(sys.argv[2], "w").write(json.dumps(rcs))
"""


def _query_ad_files(tmp_path):
    gold = [{"id": i, "labels": {"relevance": ["bad", "fair", "good"][i % 3], "location": "good",
                                 "quality": ["good", "bad"][i % 2]}} for i in range(12)]
    pred = [dict(g, labels=dict(g["labels"], location="bad" if i % 4 == 0 else "good")) for i, g in enumerate(gold)]
    for name, rows in (("gold", gold), ("pred", pred)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "pred.jsonl"), str(tmp_path / "gold.jsonl")


def test_verbs_keep_the_console_clean(tmp_path, console_noise):
    hf, mcore = str(tmp_path / "hf"), str(tmp_path / "mcore")
    pred, gold = _query_ad_files(tmp_path)
    prompts = str(tmp_path / "prompts.jsonl")
    (tmp_path / "prompts.jsonl").write_text('{"id": 1, "prompt": "cheap tents"}\n{"id": 2, "input_ids": [5, 6]}\n')
    verbs = [
        ["init-model", "--flavor", "tiny_deepseek_v3", "--out", hf, "--seed", "0", "--fp8"],
        ["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8", "--gpu-mem-gb", "80"],
        ["convert", "hf-to-mcore", "--hf", hf, "--out", mcore, "--ep", "2"],
        ["verify", "parity", "--hf", hf],  # one process: transformers and megatron-core in this one
        ["verify", "parity", "--hf", hf, "--mcore", mcore, "--ep", "2"],  # 2 workers from the fork server
        ["eval", "--task", "query_ad", "--pred", pred, "--gold", gold],
        ["data", "synth", "--task", "ad_user", "--n", "5", "--out", str(tmp_path / "rows.jsonl")],
        ["generate", "--model", hf, "--input", prompts, "--output", str(tmp_path / "out.jsonl"),
         "--max-new-tokens", "4", "--precision", "fp8"],
        ["label", "--model", hf, "--input", str(tmp_path / "rows.jsonl"), "--output", str(tmp_path / "lab.jsonl"),
         "--task", "ad_user", "--workers", "2"],  # 2 label workers from the fork server, then the merge
        # bad input (exit 2), and a failure in the workers (exit 1): one tagged line each, no traceback
        ["verify", "parity", "--hf", str(tmp_path)],
        ["verify", "parity", "--hf", hf, "--tp", "2"],
    ]
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(verbs), str(tmp_path / "rcs.json")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "rcs.json").read_text()) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1], r.stderr[-3000:]
    assert r.stdout.count("PASS") == 2 and "pp=31 ep=8 dp=8" in r.stdout
    assert "wrote 5 ad_user rows" in r.stdout and "generated 2 rows" in r.stdout
    assert "labeled 5 rows (0 already done, 0 malformed input lines, 0 unparsed outputs)" in r.stdout
    assert "config.json" in r.stderr and "FAILED: rank 0:" in r.stderr and "tp=1 only" in r.stderr
    assert console_noise(r.stdout, r.stderr) == []


def test_train_save_and_resume_keep_the_console_clean(tmp_path, console_noise):
    """A training run that saves a checkpoint, then one that resumes from it (megatron-core's torch_dist save
    and load, torch DCP underneath): tagged lines only, none of their deprecation or overwrite warnings."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny_cpu.yaml"
    common = [sys.executable, "-m", "megatron_ads", "train", "lm", "--config", str(config), f"out_dir={tmp_path / 'run'}",
              "parallel.ep=1", "parallel.pp=1", "parallel.stage_layers=null", "checkpoint.every=2"]
    first = subprocess.run([*common, "train.steps=2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run([*common, "train.steps=3", "resume=auto"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr
    for r in (first, again):
        assert "warning" not in r.stderr.lower(), r.stderr[-3000:]
        assert console_noise(r.stdout, r.stderr) == []
