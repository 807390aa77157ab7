"""``benchmarks/autoeval_tiny.py`` (issue 15, MarketingFM AutoEval): the synthetic ads' hidden truth and human
labels (fast), and the ``--fast`` smoke run (a 3-step judge -> ``megatron-ads autoeval`` on the review pool with
uncertainty sampling -> on all ads with ``--sweep`` and ``--refine``), which ends with the JSON line of all figures
and the plot; a rerun reuses every stage, other judge settings are refused. Three CLI subprocesses: about a minute
on 2 lightly loaded cores."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CMD = [sys.executable, str(REPO / "benchmarks" / "autoeval_tiny.py"), "--fast", "--workdir"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import autoeval_tiny

    return autoeval_tiny


def test_ads_truth_matches_the_rules_and_human_labels_follow_the_policy(bench):
    from megatron_ads.rewards.autoeval import RuleChecker, RuleConfig

    ads, truth = bench.make_ads(300, 7, match_rate=0.7, defect_rate=0.3)
    assert (ads, truth) == bench.make_ads(300, 7, match_rate=0.7, defect_rate=0.3)
    assert [a["id"] for a in ads] == [t["id"] for t in truth] == [f"ad{i}" for i in range(300)]
    fails = RuleChecker(RuleConfig()).check(ads)
    for a, t, f in zip(ads, truth, fails):
        assert set(a) == {"id", "keyword", "headline", "description", "category"}
        # every truth defect is exactly what a rule checks (near_copy is the diversity rule's verdict)
        assert sorted(t["defects"]) == sorted({"diversity": "near_copy"}.get(x, x) for x in f), (a, t, f)
        assert t["injected"] is None or t["injected"] in t["defects"]
        assert 0 <= t["relevance"] <= 5 and 0 <= t["generalization"] <= 5
        assert (t["relevance"] >= 2) == (t["ad_category"] == a["category"])
    injected = [t["injected"] for t in truth]
    assert 60 <= sum(x is not None for x in injected) <= 120  # ~30 %
    assert {x for x in injected if x} == {"mention_sale", "headline_length", "cta_missing"}
    policy = {"relevance": 2, "generalization": 3}
    clean = bench.human_labels(truth, policy, 0.0, 0)
    for t, h in zip(truth, clean):
        want = not t["defects"] and t["relevance"] >= 2 and t["generalization"] >= 3
        assert h["clean"] == h["accept"] == want and not h["flipped"]
    assert 0.2 < sum(h["accept"] for h in clean) / 300 < 0.6
    noisy = bench.human_labels(truth, policy, 0.2, 0)
    assert all(h["accept"] == (h["clean"] != h["flipped"]) for h in noisy)
    assert 30 <= sum(h["flipped"] for h in noisy) <= 90
    assert bench.parse_pair("relevance=4,generalization=2", "--start") == {"relevance": 4.0, "generalization": 2.0}
    with pytest.raises(SystemExit, match="--start"):
        bench.parse_pair("relevance=4", "--start")


def test_recipes_load_and_the_grpo_reward_scores_rewrites_by_the_rules():
    """The judge recipe trains ad_judge label-only; the GRPO recipe's ``autoeval_rules`` channel builds from the
    config (weights and ``grpo.reward_params``, as ``train.grpo_loop.build_rewards`` builds it) and gives 1 to a
    rewrite passing every rule, 0 to one without a CTA in its headline, -1 when malformed; with
    ``mode: penalty`` -0.25 per failed rule."""
    from megatron_ads.config.train import JobConfig
    from megatron_ads.data.synthetic import SyntheticConfig, generate
    from megatron_ads.data.tasks import parse_output, task
    from megatron_ads.rewards import autoeval  # noqa: F401  (registers autoeval_rules)
    from megatron_ads.rewards import relate  # noqa: F401  (registers length)
    from megatron_ads.rewards.registry import RewardResources, build, call, make_params

    judge = JobConfig.load(REPO / "launch" / "configs" / "autoeval_judge_tiny_cpu.yaml")
    assert judge.sft.tasks == ["ad_judge"] and judge.sft.label_only_fraction == 1.0
    job = JobConfig.load(REPO / "launch" / "configs" / "grpo_autoeval_tiny_cpu.yaml")
    assert job.sft.tasks == ["ad_rewrite"] and job.grpo.rewards == {"ad_rewrite": {"autoeval_rules": 1.0,
                                                                                   "length": 0.5}}
    res = RewardResources(parse=lambda t, text: parse_output(task(t), text))

    def reward(job):
        return build("autoeval_rules", res, make_params("autoeval_rules", job.grpo.reward_params.get("autoeval_rules"),
                                                        "grpo.reward_params"))

    t = task("ad_rewrite")
    row = generate("ad_rewrite", SyntheticConfig(size=1, seed=0))[0]
    good = dict(row, rewrite=dict(row["rewrite"], title="Shop " + row["keyword"]))
    no_cta = dict(row, rewrite=dict(row["rewrite"], title=row["keyword"].title()))
    texts = [t.target(good), t.target(no_cta), "<think></think>\nno tags"]
    meta = [{"keyword": f"k{i}"} for i in range(3)]  # one keyword each: no diversity comparison
    assert call(reward(job), [""] * 3, texts, "ad_rewrite", meta).values == [1.0, 0.0, -1.0]
    penalty = JobConfig.load(REPO / "launch" / "configs" / "grpo_autoeval_tiny_cpu.yaml",
                             ["grpo.reward_params={autoeval_rules: {mode: penalty}}"])
    assert call(reward(penalty), [""] * 3, texts, "ad_rewrite", meta).values == [0.0, -0.25, -1.0]


@pytest.mark.distributed
@pytest.mark.slow
def test_autoeval_tiny_fast(tmp_path):
    p = subprocess.run(CMD + [str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["fast"] and out["budget"] == 4 and out["ads"]["n"] == 24 and out["ads"]["pool"] == 16
    assert out["judge"]["steps"] == 3 and out["judge"]["test"]["n"] == 8
    # Table 8 form: rates are fractions of all ads, FPR + FNR = 1 - agreement; the paper's modes are there
    modes = {r["mode"]: r for r in out["table8"]}
    assert {"rules only", "relevance only", "generalization only", "combined (2, 3)", "combined (4, 2)",
            "best combined", "best relevance-only", "best generalization-only"} <= set(modes)
    for r in out["table8"]:
        assert r["fpr"] + r["fnr"] == pytest.approx(1 - r["agreement"]) and 0 <= r["accept_rate"] <= 1
    assert (modes["rules only"]["relevance"], modes["rules only"]["generalization"]) == (0, 0)
    assert modes["best combined"]["disagreement"] <= min(r["disagreement"] for r in out["table8"]) + 1e-12
    assert out["direction"]["sweep_monotone"] is True  # §C 30 holds for any judge
    # the CLI's own figures equal the library's on the same rows
    cli = out["cli"]
    assert cli["sweep_equal"] and cli["uncertainty_pick_equal"] and cli["refine_equal"]
    assert len(cli["review_ids"]) == 4 and cli["pool_human_at_start"]["n"] == 16
    s = out["sampling"]
    for k in ("random", "diversity", "uncertainty (confidence)", "uncertainty (margin)"):
        assert 0 <= s[k]["found"] <= 4 and s[k]["n"] == 4
    assert len(s["random"]["per_seed"]) == 3 and len(s["uncertainty (confidence)"]["per_seed"]) == 1
    t9 = out["table9"]
    assert t9["baseline"]["thresholds"] == {"relevance": 4.0, "generalization": 2.0}
    assert out["also"]["table9"]["baseline"]["thresholds"] == {"relevance": 2.0, "generalization": 3.0}
    assert set(out["also"]["sampling"]) == set(s)
    assert t9["baseline"]["validation"]["n"] == 8
    for k in ("random", "diversity", "uncertainty (confidence)", "uncertainty (margin)"):
        # refinement never agrees less with the sample it was fit on
        assert t9[k]["reviewed_after"]["agreement"] >= t9[k]["reviewed_before"]["agreement"] - 1e-12
    assert Path(out["plot"]).is_file() and Path(out["plot"]).parent == tmp_path
    assert (tmp_path / "judge" / "checkpoints").is_dir()
    rows = [json.loads(x) for x in (tmp_path / "all" / "out.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(set(r["scores"]) == {"relevance", "generalization"} for r in rows)
    assert "Table 8 form" in p.stdout and "Table 9 form" in p.stdout
    # a rerun reuses every stage; other judge settings are refused
    p2 = subprocess.run(CMD + [str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    again = json.loads(p2.stdout.strip().splitlines()[-1])
    assert again["table8"] == out["table8"] and again["stage_s"] == out["stage_s"]
    p3 = subprocess.run(CMD + [str(tmp_path), "--judge-steps", "4"], capture_output=True, text=True, cwd=REPO,
                        timeout=300)
    assert p3.returncode != 0 and "judge: finished with other settings" in p3.stderr, p3.stderr[-2000:]
