"""The metrics of ``benchmarks/relate_tiny.py`` (issue 15) on hand-written ``metrics.jsonl`` records: the rates
read back from the reward channel means, the trailing mean, steps to target, finals and the seed summary."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("relate_tiny", ROOT / "benchmarks" / "relate_tiny.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def _run(tmp_path: Path, name: str, blacklist: list[float], diversity: list[float], ctcvr: list[float]) -> Path:
    run = tmp_path / name
    run.mkdir()
    rows = [{"step": i + 1, "reward/ad_rewrite/blacklist/mean": b, "reward/ad_rewrite/diversity/mean": d,
             "reward/ad_rewrite/ctcvr/mean": c, "loss": 0.0}
            for i, (b, d, c) in enumerate(zip(blacklist, diversity, ctcvr))]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_curves_read_rates_from_channel_means(tmp_path):
    c = bench.curves(_run(tmp_path, "a", [-0.6, -0.2], [-5.0, 0.0], [0.2, 0.25]))
    assert c["step"] == [1, 2]
    assert c["blacklist"] == pytest.approx([0.6, 0.2]) and c["compliance"] == pytest.approx([0.4, 0.8])
    assert c["repeat"] == pytest.approx([50.0, 0.0]) and c["ctcvr"] == [0.2, 0.25]


def test_curves_name_a_missing_channel_and_allow_no_diversity(tmp_path):
    run = tmp_path / "b"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/ad_rewrite/blacklist/mean": 0.0}) + "\n")
    with pytest.raises(SystemExit, match="reward/ad_rewrite/ctcvr/mean"):
        bench.curves(run)
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "reward/ad_rewrite/blacklist/mean": -0.5,
                                                   "reward/ad_rewrite/ctcvr/mean": 0.1}) + "\n")
    c = bench.curves(run)  # --no-diversity: no repeat series
    assert math.isnan(c["repeat"][0]) and c["blacklist"] == [0.5]
    r = bench.summarize_arm([c], {"blacklist": 0.2, "repeat": None}, 1)
    assert r["steps_to_target_repeat"] is None and bench._json_safe(r)["final_repeat"] is None


def test_smoothing_and_steps_to_target():
    xs = [0.6, 0.4, 0.2, 0.0, 0.2]
    assert bench.smooth(xs, 2) == pytest.approx([0.6, 0.5, 0.3, 0.1, 0.1])
    steps = [1, 2, 3, 4, 5]
    assert bench.steps_to_target(steps, xs, 0.3, 2) == 3  # trailing mean 0.3 at step 3
    assert bench.steps_to_target(steps, xs, 0.3, 1) == 3
    assert bench.steps_to_target(steps, [0.1, 0.9, 0.9], 0.2, 2) is None  # step 1 alone is not a 2-step mean
    assert bench.steps_to_target(steps, xs, 0.05, 2) is None and bench.steps_to_target(steps, xs, None, 2) is None
    assert bench.final(xs, 2) == pytest.approx(0.1)


def test_summary_over_seeds(tmp_path):
    a = bench.curves(_run(tmp_path, "s0", [-0.5, -0.3, -0.1, -0.1], [-1.0] * 4, [0.2] * 4))
    b = bench.curves(_run(tmp_path, "s1", [-0.5, -0.5, -0.5, -0.1], [-2.0] * 4, [0.1] * 4))
    r = bench.summarize_arm([a, b], {"blacklist": 0.25, "repeat": 12.0}, 1)
    assert r["steps_to_target_per_seed"] == [3, 4] and r["steps_to_target"] == 4  # seed mean: .5 .4 .3 .1
    assert r["steps_to_target_repeat_per_seed"] == [1, None] and r["steps_to_target_repeat"] is None
    assert r["final_blacklist"] == pytest.approx(0.1) and r["final_blacklist_per_seed"] == pytest.approx([0.1, 0.1])
    assert r["final_repeat"] == pytest.approx(15.0) and r["final_ctcvr"] == pytest.approx(0.15)
