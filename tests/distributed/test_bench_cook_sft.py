"""``benchmarks/cook_sft.py --fast`` (issue 16, smoke run): raw rows -> a teacher trained on the cook prompts ->
``cook`` of both tasks -> hand-built, cooked and control (cooked rows in the hand arm's split) SFT arms on the
shared test file; ends with the JSON line of all figures. Not the 2-point target: tiny counts and the demo's relaxed cook settings."""

import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BACC = ("bad_view_bacc", "fair_view_bacc", "quality_bacc", "location_bacc", "ad_user_bacc")


@pytest.mark.parametrize("name", ["query_ad", "ad_user"])
def test_teacher_rows_are_what_cook_prompts_and_parses(name, monkeypatch):
    """The teacher's instruction rows: its prompt is the cook's prompt as ``train sft`` renders a general row, its
    response what the cook's schema and contradiction checks accept; the verifier row is ``verifier_scores``' prompt."""
    from megatron_ads.config.train import JobConfig
    from megatron_ads.data.cook import filters as F
    from megatron_ads.data.cook.prompts import prompt_for, render
    from megatron_ads.data.tasks import GENERAL, task

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cook_sft

    t, prompt = task(name), prompt_for(name)
    rows = cook_sft.raw_rows(JobConfig.load(cook_sft.CFG, []), name, 3, 5)
    out = cook_sft.teacher_rows(name, rows, "teacher", verifier=True)
    assert len(out) == 3 * (len(prompt.variations) + 1)
    for i, r in enumerate(rows):
        mine = out[i * 4:(i + 1) * 4]
        for v, g in zip(prompt.variations, mine):
            assert GENERAL.prompt(g) == render(prompt, v, t, r, "teacher")
            parsed, bad = F.schema_check(t, GENERAL.target(g), "teacher")
            assert bad is None and parsed.reasoning == r["reasoning"]
            assert F.contradiction(t, r, parsed, "teacher") is None
        v = mine[-1]
        assert GENERAL.prompt(v) == t.prompt(r) + f"<think>{r['reasoning']}</think>\n"
        assert GENERAL.target(v) == t.target(r).partition("</think>\n")[2] and GENERAL.target(v).startswith("<")
    for g in cook_sft.teacher_rows(name, rows, "gold", verifier=False):
        parsed, bad = F.schema_check(t, GENERAL.target(g), "gold")
        assert bad is None and parsed.reasoning in {r["reasoning"] for r in rows}


@pytest.mark.distributed
@pytest.mark.slow
def test_cook_sft_fast(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "cook_sft.py"), "--fast", "--workdir", str(tmp_path),
                        "--seeds", "2", "--draws", "2"],
                       capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert {"arms", "diff_points", "max_bacc_diff_points", "max_bacc_diff_metric", "target_points", "within_target",
            "cook", "teacher", "rows", "test_rows", "teacher_rows", "teacher_steps", "sft_steps", "cook_settings",
            "fast", "wall_s"} <= set(out)
    assert out["fast"] and out["target_points"] == 2.0 and out["rows"] == 12 and out["test_rows"] == 8
    # the cooked corpus exists and has rows; the report's counts are read back
    for name in ("query_ad", "ad_user"):
        c = out["cook"][name]
        assert c["read"] == 12 and 0 < c["kept"] <= 12 and c["keep_rate"] == pytest.approx(c["kept"] / 12)
        assert c["candidates"] == 24 and c["rows"]["train"] > 0 and c["rows"]["test"] == 0  # test_fraction=0
        rows = (tmp_path / "cook" / name / f"{name}.train.jsonl").read_text().splitlines()
        assert len(rows) == c["rows"]["train"] and "reasoning" in json.loads(rows[0])
    # both arms trained and were tested on the shared test file (same rows: same defect rates)
    reports = {}
    for arm in ("hand", "cooked"):
        r = out["arms"][arm]
        for k in BACC:
            assert 0.0 <= r[k] <= 1.0, (arm, k, r[k])
        assert 0.0 <= r["ad_user_auc"] <= 1.0 or math.isnan(r["ad_user_auc"])
        assert r["steps"] == 2 and r["rows_trained"]["query_ad"] > 0 and r["rows_trained"]["ad_user"] > 0
        reports[arm] = json.loads((tmp_path / arm / "seed0" / "eval" / "report.json").read_text())
        assert reports[arm]["query_ad"]["n"] == 8 and reports[arm]["ad_user"]["n"] == 8
    for view in ("bad_view", "location"):
        assert reports["hand"]["query_ad"][view]["DR"] == reports["cooked"]["query_ad"][view]["DR"]
    assert reports["hand"]["ad_user"]["RR"] == reports["cooked"]["ad_user"]["RR"]
    assert out["arms"]["hand"]["rows_trained"] == {"query_ad": 11, "ad_user": 11}  # 10% of 12 held out as val
    assert out["max_bacc_diff_points"] == pytest.approx(max(abs(out["diff_points"][k]) for k in BACC))
    lowest = min(BACC, key=lambda k: out["diff_points"][k])
    assert out["lowest_bacc_diff_metric"] == lowest
    assert out["lowest_bacc_diff_points"] == pytest.approx(out["diff_points"][lowest])
    assert out["not_below_target"] is (out["diff_points"][lowest] >= -out["target_points"])
    # two draws x two paired training seeds per arm: the arm's figures are the means, the diffs those of the means
    assert out["seeds"] == 2 and out["draws"] == 2 and len(out["diff_points_per_seed"]) == 4
    assert out["runs"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    for arm in ("hand", "cooked", "cooked_hand_split"):
        r = out["arms"][arm]
        assert len(r["per_seed"]) == 4
        for d, s in out["runs"]:
            run = tmp_path / arm / (f"draw{d}" if d else "") / f"seed{s}"
            assert (run / "eval" / "report.json").is_file()
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["sft"]["data_seed"] == d and cfg["train"]["seed"] == s + 1
        for k in BACC:
            assert r[k] == pytest.approx(statistics.fmean(s[k] for s in r["per_seed"]))
            assert r["std"][k] == pytest.approx(statistics.pstdev(s[k] for s in r["per_seed"]))
    for k in BACC:
        assert out["diff_points"][k] == pytest.approx(statistics.fmean(d[k] for d in out["diff_points_per_seed"]))
        for s, d in enumerate(out["diff_points_per_seed"]):
            assert d[k] == pytest.approx(100 * (out["arms"]["cooked"]["per_seed"][s][k]
                                                - out["arms"]["hand"]["per_seed"][s][k]))
        # the paired standard error, recomputed: sample std of the 4 paired differences / sqrt(4)
        assert out["diff_points_se"][k] == pytest.approx(
            statistics.stdev(d[k] for d in out["diff_points_per_seed"]) / 2, nan_ok=True)
        ctrl_paired = [100 * (c[k] - h[k]) for c, h in zip(out["arms"]["cooked_hand_split"]["per_seed"],
                                                           out["arms"]["hand"]["per_seed"], strict=True)]
        assert out["control_diff_points_se"][k] == pytest.approx(statistics.stdev(ctrl_paired) / 2, nan_ok=True)
    # the control arm: every cooked row of the hand arm's inputs, in the hand arm's split and order
    from megatron_ads.config.cook import CookConfig
    from megatron_ads.data.sft_data import user_data

    assert set(out["arms"]) == {"hand", "cooked", "cooked_hand_split"}
    for name in ("query_ad", "ad_user"):
        cooked = {}
        for split in ("train", "val", "test"):
            for line in (tmp_path / "cook" / name / f"{name}.{split}.jsonl").read_text().splitlines():
                row = json.loads(line)
                cooked[str(row["id"]).split("#")[0]] = row
        for draw, tag in ((0, ""), (1, ".draw1")):  # each draw: its own hand split, at sft.data_seed = draw
            hand = user_data(name, {"train": str(tmp_path / "data" / f"{name}.raw_12.jsonl"),
                                    "test": str(tmp_path / "data" / f"{name}.test_8.jsonl")}, draw)
            for split in ("train", "val"):
                ctrl = [json.loads(x) for x in
                        (tmp_path / "data" / f"{name}.cooked_hand_split{tag}.{split}.jsonl").read_text().splitlines()]
                assert [str(r["id"]) for r in ctrl] == [str(h["id"]) for h in hand[split] if str(h["id"]) in cooked]
                assert all(r == cooked[str(r["id"])] for r in ctrl)
    # the cooked arm's draw 1: the cook's own split re-drawn at split_seed 1 (the same cooked rows), its files trained
    import random

    from megatron_ads.data.cook.pipeline import split_counts

    for name in ("query_ad", "ad_user"):
        def rows(d, split):
            base = tmp_path / "cook" / name / (f"draw{d}" if d else "")
            return [json.loads(x) for x in (base / f"{name}.{split}.jsonl").read_text().splitlines()]

        drawn = {split: rows(1, split) for split in ("train", "val", "test")}
        by_id = lambda r: str(r["id"])  # noqa: E731
        pooled = sorted((r for split in ("train", "val", "test") for r in rows(0, split)), key=by_id)
        assert sorted((r for v in drawn.values() for r in v), key=by_id) == pooled
        raw_ids = [json.loads(x)["id"] for x in (tmp_path / "data" / f"{name}.raw_12.jsonl").read_text().splitlines()]
        kept = [i for i in raw_ids if any(str(r["id"]) == str(i) for r in pooled)]
        order = list(range(len(kept)))
        random.Random(1).shuffle(order)
        n_val = split_counts(len(kept), CookConfig.load(None, ["test_fraction=0"]))[0]
        assert [str(r["id"]) for r in drawn["val"]] == [str(kept[i]) for i in order[:n_val]]
        cfg = yaml.safe_load((tmp_path / "cooked" / "draw1" / "seed0" / "config.yaml").read_text())
        assert cfg["sft"]["files"][name]["train"] == str(tmp_path / "cook" / name / "draw1" / f"{name}.train.jsonl")
    ctrl = out["arms"]["cooked_hand_split"]
    for k in BACC:
        assert out["control_diff_points"][k] == pytest.approx(100 * (ctrl[k] - out["arms"]["hand"][k]))
    t = out["teacher"]
    assert t["steps"] == 2 and t["rows"] == 2 * 6 * 4 and 0.0 <= t["exact_match"] <= 1.0  # 3 variations + verifier
    assert (tmp_path / "teacher" / "seed0" / "checkpoints").is_dir()
    assert "| cooked (teacher reasoning), mean of 4 |" in p.stdout and "draw 1, train.seed 2" in p.stdout and "| cook |" in p.stdout
