"""``benchmarks/sft_seeds.py --fast``: two seeds of the tiny SFT recipe (tiny step counts) in parallel processes,
their held-out reports read back into per-seed rows and mean ± std; a second call reuses the finished runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _bench(tmp_path, *extra):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sft_seeds.py"), "--fast", "--seeds", "2",
                        "--parallel", "2", "--workdir", str(tmp_path), *extra],
                       capture_output=True, text=True, cwd=REPO, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout, json.loads(p.stdout.strip().splitlines()[-1])


def test_sft_seeds_fast(tmp_path):
    text, out = _bench(tmp_path)
    assert out["seeds"] == [0, 1] and out["fast"]
    for name, m in out["metrics"].items():
        xs = m["per_seed"]
        assert len(xs) == 2 and all(0.0 <= x <= 1.0 or math.isnan(x) for x in xs), (name, m)
        if not any(math.isnan(x) for x in xs):
            mean = sum(xs) / 2
            assert m["mean"] == pytest.approx(mean) and m["std"] == pytest.approx(abs(xs[0] - xs[1]) / 2)
    assert out["min_lambda"] >= 0.05 - 1e-9  # the recipe's sft.lambda_min floor
    assert "| **mean ± std** |" in text
    for s in (0, 1):
        cfg = (tmp_path / f"seed{s}" / "config.yaml").read_text()
        assert f"seed: {s + 1}" in cfg
    # finished runs are reused: nothing retrained, same figures
    stamp = (tmp_path / "seed0" / "eval" / "report.json").stat().st_mtime_ns
    _, again = _bench(tmp_path)
    assert (tmp_path / "seed0" / "eval" / "report.json").stat().st_mtime_ns == stamp
    assert again["metrics"] == out["metrics"]
    # a finished smoke run is never reported as the full recipe: other overrides, other workdir
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "sft_seeds.py"), "--seeds", "1",
                        "--workdir", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode != 0 and "other overrides" in p.stderr, p.stderr[-2000:]
