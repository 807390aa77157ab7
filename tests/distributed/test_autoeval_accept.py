"""MarketingFM AutoEval's *accept* as a GRPO reward (issue 15; ``papers_spec.md`` §B.4): the ``autoeval_accept``
reward reads a frozen judge (``grpo.resources.judge_model``: an ``ad_judge`` SFT run) that the GRPO trainer builds
on its own layout (``train.frozen_rm.FrozenJudge``).

- The judge on the trainer's layout gives the expected relevance / generalization scores ``megatron-ads autoeval
  --model`` computes for the same ads with the inference engine (1e-4), on one rank and on a 2-stage pipeline.
- The reward on well-formed rewrites: a rule failure gives 0 without the judge seeing the ad; a rule-passing ad is
  accepted (1) exactly when the judge's scores reach the thresholds (checked against the CLI's scores); a
  malformed completion gets the format penalty; the judge's scores are the reward's details.
- Two GRPO steps run with it (a random policy: its completions are malformed, the reward −1), and a directory
  that is not a judge run is refused naming ``grpo.resources.judge_model``.

The judge is a random-init tiny DeepSeek-V3 trained 2 steps on ``ad_judge`` (its scores are near uniform, which
is all the comparisons need)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]
JUDGE_CFG = ROOT / "launch" / "configs" / "autoeval_judge_tiny_cpu.yaml"
GRPO_CFG = ROOT / "launch" / "configs" / "grpo_autoeval_tiny_cpu.yaml"
ADS = [{"id": "a0", "keyword": "camping tents", "headline": "Shop MSR camping tents", "description": "Light."},
       {"id": "a1", "keyword": "coffee beans", "headline": "Buy Illy coffee beans", "description": "Dark roast."},
       {"id": "a2", "keyword": "running shoes", "headline": "Get Nike running shoes today", "description": "Fast."}]
GRPO_SMALL = ["train.steps=2", "train.seq_len=192", "grpo.max_new_tokens=16", "sft.train_size=100",
              "grpo.kl_beta=0.0", "grpo.rewards={ad_rewrite: {autoeval_accept: 1.0}}"]


@pytest.fixture(scope="module")
def judge_run(tmp_path_factory):
    """An ad_judge SFT run (2 steps) and the CLI judge's scores of ``ADS`` on it (the inference engine)."""
    from megatron_ads.cli.workers import sft_worker

    out = tmp_path_factory.mktemp("judge")
    job = JobConfig.load(JUDGE_CFG, [f"out_dir={out / 'run'}", "train.steps=2", "train.micro_batch=4",
                                     "optim.warmup_steps=1", "sft.train_size=64", "sft.val_rows=4",
                                     "sft.eval_every=2", "sft.test_rows=4", "checkpoint.save_at_end=true"])
    spawn(sft_worker, 1, job.to_dict())
    ads = out / "ads.jsonl"
    ads.write_text("".join(json.dumps(a) + "\n" for a in ADS))
    p = subprocess.run([sys.executable, "-m", "megatron_ads", "autoeval", "--input", str(ads), "--output",
                        str(out / "judged.jsonl"), "--model", str(out / "run")], capture_output=True, text=True,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    judged = [json.loads(x) for x in (out / "judged.jsonl").read_text().splitlines()]
    return out / "run", [r["scores"] for r in judged]


def _worker(job_dict: dict, empty_dir: str, run: bool) -> dict:
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.train import frozen_rm

    tr = grpo_trainer(job_dict)  # builds the judge now (collective)
    judge = tr.resources.judge_model
    out = {"scores": [j["scores"] for j in judge.judge([{k: a[k] for k in ("keyword", "headline", "description")}
                                                         for a in ADS])],
           "last_stage": tr.ps.is_pipeline_last_stage()}
    if run:
        fn = tr.reward_fns["autoeval_accept"]
        ok = "<Title>{}</Title>\n<Description>{}</Description>"
        completions = [ok.format(a["headline"], a["description"]) for a in ADS]
        completions += [ok.format("Shop tents on sale", "Light."), "no tags at all"]
        meta = [{"keyword": a["keyword"]} for a in ADS] + [{"keyword": "tents"}, {"keyword": "tents"}]
        out["values"] = fn(["p"] * len(completions), completions, "ad_rewrite", meta).values
        out["details"] = fn.details
        tr.run()
        try:
            frozen_rm.FrozenJudge(tr, empty_dir)
        except ValueError as exc:
            out["error"] = str(exc)
    return out


def test_autoeval_accept_reward_with_the_frozen_judge(judge_run, tmp_path):
    judge_dir, cli_scores = judge_run
    # the relevance bar between the best ad and the next: one accepted, the others rejected (the gap is far above
    # the 1e-4 between the two judges)
    best, second = sorted((s["relevance"] for s in cli_scores), reverse=True)[:2]
    assert best - second > 2e-3, cli_scores
    th = {"relevance": round((best + second) / 2, 6), "generalization": 0.0}
    empty = tmp_path / "empty"
    empty.mkdir()
    params = (f"grpo.reward_params={{autoeval_accept: {{thresholds: {{relevance: {th['relevance']}, "
              f"generalization: 0.0}}}}}}")
    job = JobConfig.load(GRPO_CFG, [f"out_dir={tmp_path / 'grpo'}", f"grpo.resources.judge_model={judge_dir}",
                                    *GRPO_SMALL, params])
    r = spawn(_worker, 1, job.to_dict(), str(empty), True)[0]
    for got, want in zip(r["scores"], cli_scores, strict=True):  # the trainer's judge = the CLI's judge
        for c in ("relevance", "generalization"):
            assert got[c] == pytest.approx(want[c], abs=1e-4)
    # accepted exactly when every judge score reaches its threshold (rules pass for ADS); the sale ad fails a
    # rule without the judge; the malformed one gets the format penalty
    want = [1.0 if s["relevance"] == best else 0.0 for s in cli_scores]
    assert r["values"] == [*want, 0.0, -1.0] and sum(want) == 1
    assert r["details"]["judge_relevance"][:3] == pytest.approx([s["relevance"] for s in r["scores"]])
    assert r["details"]["judge_relevance"][3:] == [None, None]
    recs = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2]
    assert all(-1.0 <= x["reward/ad_rewrite/autoeval_accept/mean"] <= 1.0 for x in recs)
    assert "grpo.resources.judge_model" in r["error"] and "no training checkpoint" in r["error"]


def test_judge_on_a_two_stage_pipeline_scores_as_the_cli(judge_run, tmp_path):
    """The judge built on the policy's PP=2 layout (resharded from its one-rank checkpoint): every rank gets the
    CLI's scores."""
    judge_dir, cli_scores = judge_run
    job = JobConfig.load(GRPO_CFG, [f"out_dir={tmp_path}", f"grpo.resources.judge_model={judge_dir}", *GRPO_SMALL,
                                    "parallel.pp=2"])
    res = spawn(_worker, 2, job.to_dict(), "", False)
    assert [r["last_stage"] for r in res] == [False, True]
    for r in res:
        for got, want in zip(r["scores"], cli_scores, strict=True):
            for c in ("relevance", "generalization"):
                assert got[c] == pytest.approx(want[c], abs=1e-4)


def test_autoeval_accept_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="grpo.resources.judge_model: reward autoeval_accept"):
        JobConfig.load(GRPO_CFG, [f"out_dir={tmp_path}", *GRPO_SMALL])
    from megatron_ads.rewards.autoeval import AutoevalAcceptParams

    with pytest.raises(ValueError, match="thresholds"):
        AutoevalAcceptParams(thresholds={"tone": 1.0})
    with pytest.raises(ValueError, match="thresholds"):
        AutoevalAcceptParams(thresholds={"relevance": 6.0})
