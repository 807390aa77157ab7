"""``benchmarks/rlpf_tiny.py --fast`` smoke run (issue 15): SFT tiny on ad_rewrite -> Bradley–Terry performance RM
from the SFT checkpoint -> the SFT reference (GRPO at lr 1e-12) -> GRPO against the RM with and without the length
penalty from one checkpoint and seed; ends with the final table, the JSON line and the plot. ``--L0 20`` so that the
fast run's short completions are over it (the penalty arm's penalty is not 0). Five CLI subprocesses, so slow:
about 1 min of CPU, 2 min wall on 2 loaded cores."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, str(REPO / "benchmarks" / "rlpf_tiny.py"), "--fast", "--L0", "20", "--workdir"]


def test_rlpf_tiny_fast(tmp_path):
    p = subprocess.run(CMD + [str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["fast"] and out["seeds"] == 1 and out["grpo_steps"] == 2 and out["L0"] == 20 and out["lam"] == 0.02
    assert "| penalty |" in p.stdout and "| no_penalty |" in p.stdout and "| SFT reference |" in p.stdout
    assert 0.0 <= out["rm"]["pairwise_acc"] <= 1.0 and out["rm"]["n_pairs"] == 8
    for arm in ("penalty", "no_penalty"):
        r = out["arms"][arm]
        assert 0.0 <= r["final_true_ctr"] <= 1.0 and 0.0 <= r["final_parse_rate"] <= 1.0
        assert r["final_length"] > 0 and 0 < r["final_tokens"] <= 16
        assert r["final_reward"] == pytest.approx(r["final_rm_score"] - r["final_penalty"])
        recs = [json.loads(x) for x in (tmp_path / "seed0" / arm / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in recs] == [1, 2]
        rolls = (tmp_path / "seed0" / arm / "rollouts.jsonl").read_text().splitlines()
        assert len(rolls) == 2 * 10
    assert out["arms"]["penalty"]["final_penalty"] > 0.0 and out["arms"]["no_penalty"]["final_penalty"] == 0.0
    # same SFT model, same seed: step 1 draws the same rollouts, so the same RM scores and lengths in both arms
    first = {arm: json.loads((tmp_path / "seed0" / arm / "metrics.jsonl").read_text().splitlines()[0])
             for arm in ("penalty", "no_penalty")}
    for k in ("score", "length"):
        key = f"reward/ad_rewrite/perf_rm/{k}/mean"
        assert first["penalty"][key] == pytest.approx(first["no_penalty"][key]), key
    pen = first["penalty"]
    assert pen["reward/ad_rewrite/perf_rm/mean"] == pytest.approx(
        pen["reward/ad_rewrite/perf_rm/score/mean"] - pen["reward/ad_rewrite/perf_rm/penalty/mean"])
    assert Path(out["plot"]).is_file() and Path(out["plot"]).parent == tmp_path
    assert (tmp_path / "sft" / "checkpoints").is_dir() and (tmp_path / "rm" / "eval" / "report.json").is_file()
