"""``make grpo-tiny`` smoke run: ``benchmarks/grpo_tiny.py --fast`` (SFT tiny -> GRPO tiny from its checkpoint ->
held-out ``megatron-ads label`` + ``megatron-ads eval`` of both models) ends with the JSON line of issue 14."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
KEYS = ("recall_at_k_sft", "recall_at_k_grpo", "bacc_sft", "bacc_grpo", "auc_sft", "auc_grpo")


def test_grpo_tiny_fast(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "grpo_tiny.py"), "--fast", "--workdir", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for k in KEYS:
        assert isinstance(out[k], float), (k, out)
        assert 0.0 <= out[k] <= 1.0 or (k.startswith("auc") and math.isnan(out[k])), (k, out[k])
    assert out["seeds"] == 1 and out["fast"] and out["k"] == 10
    assert (tmp_path / "seed0" / "grpo" / "plots" / "rewards.png").is_file()
    assert (tmp_path / "seed0" / "sft" / "checkpoints").is_dir()
