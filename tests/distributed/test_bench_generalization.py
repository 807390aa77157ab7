"""``make generalization`` smoke run: ``benchmarks/generalization.py --fast`` (general corpus -> general-only base
-> ads-only and ads + general SFT from the base checkpoint -> held-out general and ads metrics) ends with the
JSON line of issue 18 (Table 8 in shape)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_generalization_fast(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generalization.py"), "--fast", "--workdir",
                        str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for run in ("base", "ads_only", "mix"):
        r = out[run]
        assert r["nll"] > 0 and math.isclose(r["ppl"], math.exp(r["nll"]), rel_tol=1e-9), (run, r)
        assert 0.0 <= r["exact_match"] <= 1.0 and r["general_test_rows"] == 8, (run, r)
        for k in ("bad_view_bacc", "location_bacc", "auc"):
            assert 0.0 <= r[k] <= 1.0 or (k == "auc" and math.isnan(r[k])), (run, k, r[k])
    assert out["fast"] and out["general_rows"] == 200 and out["general_weight"] == 0.1
    assert "| ads + general mix SFT |" in p.stdout
    # the SFT runs started from the base checkpoint with the base's tokenizer (trained on general + ads rows)
    base_tok = (tmp_path / "base" / "tokenizer" / "tokenizer.json").read_text()
    for run in ("ads_only", "mix"):
        assert not (tmp_path / run / "tokenizer").exists()  # no tokenizer of its own was trained
        ckpt_tok = next((tmp_path / run / "checkpoints").glob("step_*/tokenizer/tokenizer.json"))
        assert ckpt_tok.read_text() == base_tok
    assert json.loads((tmp_path / "ads_only" / "val_metrics.jsonl").read_text().splitlines()[-1])["lambda/general"] == 0
    assert (tmp_path / "mix" / "eval" / "general.pred.jsonl").is_file()
    # finished runs are reused only with the same settings: the same command again reuses all three (same
    # figures); other SFT steps are refused, naming the run, instead of reporting the old runs as the new ones
    again = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generalization.py"), "--fast", "--workdir",
                            str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    reused = json.loads(again.stdout.strip().splitlines()[-1])
    assert {k: reused[k]["exact_match"] for k in ("base", "ads_only", "mix")} == \
        {k: out[k]["exact_match"] for k in ("base", "ads_only", "mix")}
    other = subprocess.run([sys.executable, str(REPO / "benchmarks" / "generalization.py"), "--fast", "--workdir",
                            str(tmp_path), "--sft-steps", "5"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert other.returncode != 0 and "other settings" in other.stderr and "train.steps 4 vs 5" in other.stderr, \
        other.stderr[-3000:]
