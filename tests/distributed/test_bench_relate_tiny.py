"""``benchmarks/relate_tiny.py --fast`` smoke run (issue 15): frozen reward models -> SFT tiny on noisy ad_rewrite
data -> the SFT reference (GRPO at lr 1e-12) -> the token-level and summed GRPO arms from one checkpoint; ends
with the JSON line and the plot; a rerun reuses every stage, another --lr is refused. Five CLI subprocesses, so
slow: 87 s on 2 lightly loaded cores, about 2.5–3 min under heavy load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, str(REPO / "benchmarks" / "relate_tiny.py"), "--fast", "--workdir"]


def test_relate_tiny_fast(tmp_path):
    p = subprocess.run(CMD + [str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["fast"] and out["seeds"] == 1 and out["grpo_steps"] == 2 and out["token_alpha"] == 0.5
    for m in ("blacklist", "compliance", "ctcvr"):
        assert 0.0 <= out["sft"][m] <= 1.0, (m, out["sft"])
    assert out["sft"]["repeat"] >= 0.0
    for arm in ("token", "summed"):
        r = out["arms"][arm]
        assert 0.0 <= r["final_blacklist"] <= 1.0 and 0.0 <= r["final_ctcvr"] <= 1.0 and r["final_repeat"] >= 0.0
        assert abs(r["final_compliance"] + r["final_blacklist"] - 1.0) < 1e-9
        assert r["steps_to_target"] is None or 1 <= r["steps_to_target"] <= 2
        assert len(r["steps_to_target_per_seed"]) == 1
        recs = [json.loads(x) for x in (tmp_path / "seed0" / arm / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in recs] == [1, 2]
    assert Path(out["plot"]).is_file() and Path(out["plot"]).parent == tmp_path
    assert (tmp_path / "sft" / "checkpoints").is_dir() and (tmp_path / "reward_models" / "esmm").is_dir()
    # both arms start from the same SFT model with the same seed: step 1 draws the same rollouts
    first = {arm: json.loads((tmp_path / "seed0" / arm / "metrics.jsonl").read_text().splitlines()[0])
             for arm in ("token", "summed")}
    for ch in ("blacklist", "diversity", "ctcvr", "length"):
        k = f"reward/ad_rewrite/{ch}/mean"
        assert first["token"][k] == pytest.approx(first["summed"][k]), k
    # a rerun on the same workdir reuses every finished stage
    p2 = subprocess.run(CMD + [str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert json.loads(p2.stdout.strip().splitlines()[-1])["arms"] == out["arms"]
    # ... and refuses a finished stage run with other settings (the SFT reference's lr is always 1e-12)
    p3 = subprocess.run(CMD + [str(tmp_path), "--lr", "2e-4"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p3.returncode != 0 and "seed0/token: finished with other settings" in p3.stderr, p3.stderr[-2000:]
    assert "optim.lr=0.0002" in p3.stderr
