"""``make tppo-tiny`` smoke run: ``benchmarks/tppo_tiny.py --fast`` (SFT tiny on user_query_gen -> token reward
model from its checkpoint -> sentence-level PPO and TPPO arms (lwp α 1 and 0.5) through ``megatron-ads train ppo`` with the frozen
token RM as the reward -> held-out ``label`` + ``eval`` of every model) ends with its JSON line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_tppo_tiny_fast(tmp_path):
    plot = tmp_path / "curves.png"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tppo_tiny.py"), "--fast", "--workdir",
                        str(tmp_path), "--arms", "ppo,tppo,tppo_a05", "--plot", str(plot)],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for tag in ("sft", "ppo", "tppo", "tppo_a05"):
        assert 0.0 <= out[f"relevance_{tag}"] <= 1.0, (tag, out)
        assert out[f"len_{tag}"] >= 0.0
    assert out["arms"] == ["ppo", "tppo", "tppo_a05"] and out["seeds"] == 1 and out["fast"]
    assert "rm_query_auc" in out  # the token RM's held-out report
    seed = tmp_path / "seed0"
    for arm in ("ppo", "tppo", "tppo_a05"):
        rec = [json.loads(x) for x in (seed / arm / "metrics.jsonl").read_text().splitlines()]
        assert rec and "value_loss" in rec[-1] and "reward/user_query_gen/token_rm/mean" in rec[-1]
        cfg = (seed / arm / "config.yaml").read_text()
        assert "algo: ppo" in cfg
    assert "token_credit: false" in (seed / "ppo" / "config.yaml").read_text()
    assert "lwp_alpha: 1.0" in (seed / "tppo" / "config.yaml").read_text()
    assert "lwp_alpha: 0.5" in (seed / "tppo_a05" / "config.yaml").read_text()  # Fig. 12's weaker penalty
    for arm in ("tppo", "tppo_a05"):
        assert "token_credit: true" in (seed / arm / "config.yaml").read_text()
    assert plot.is_file()
