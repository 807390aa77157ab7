"""RLPF / AdLlama end to end on the tiny CPU setup (issue 15; ``papers_spec.md`` §B.3, §C 29): the performance
reward model trained by ``train rm`` (both objectives), then used by GRPO as the ``perf_rm`` reward through
``grpo.resources.perf_model`` (recipe ``launch/configs/grpo_rlpf_tiny_cpu.yaml``).

- ``rm.objective=pointwise`` (the paper's CTR-regression baseline) trains and reports pairwise accuracy on
  held-out pairs, like BT.
- A BT reward model trained a few steps, then GRPO against it with the length penalty: every rollout's reward is
  the RM's score of its text minus λ·max(0, len − L0), where the score is recomputed here directly (the frozen
  chunk called on each text alone, no pipeline schedule, no batching) from the run directory; an over-long
  completion gets less than its RM score; the RM is built once per rank; the GRPO side scores log texts exactly
  as ``train rm`` scored them (same prompt side: keyword and ad fields); directories that are not a performance
  RM and bad penalty settings are refused naming the field.
- The RM built on a PP=2 policy layout (two processes) gives every rank the scores of the one-rank RM run.

The policy is a random-init tiny model, whose completions never parse: the GRPO run scores the raw completion
(``grpo.reward_params.perf_rm.fields=[]``). 25–35 s per test on 2 loaded cores, most of it process start-up and
imports (the module's BT reward model, trained once, adds about 10 s to the first test that uses it)."""

import json
from pathlib import Path

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.train.rm_loop import rm_worker

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]
RM_CFG = ROOT / "launch" / "configs" / "rm_tiny_cpu.yaml"
GRPO_CFG = ROOT / "launch" / "configs" / "grpo_rlpf_tiny_cpu.yaml"
RM_SMALL = ["train.steps=3", "train.micro_batch=8", "train.log_every=1", "optim.warmup_steps=1", "rm.n_ads=200",
            "rm.eval_every=3", "rm.val_pairs=8", "rm.test_pairs=8"]
L0, LAM = 40.0, 0.05
GRPO_SMALL = ["train.steps=2", "train.seq_len=192", "grpo.max_new_tokens=16", "sft.train_size=100",
              "grpo.kl_beta=0.0", "grpo.save_rollouts=true",
              f"grpo.reward_params={{perf_rm: {{fields: [], L0: {L0}, lam: {LAM}}}}}"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_rm_pointwise_objective_trains_and_reports_pairwise_accuracy(tmp_path):
    """The CTR-regression baseline: the same pairs and batches, the pointwise loss, the pairwise metrics."""
    job = JobConfig.load(RM_CFG, [f"out_dir={tmp_path}", *RM_SMALL, "rm.objective=pointwise"])
    r = spawn(rm_worker, 1, job.to_dict())[0]
    recs = _lines(tmp_path / "metrics.jsonl")
    assert [x["step"] for x in recs] == [1, 2, 3]
    for rec in recs:
        assert torch.isfinite(torch.tensor(rec["loss"])) and 0.0 <= rec["train/pairwise_acc"] <= 1.0
    # the loss is the impression-weighted BCE of σ(score) against the observed CTR (small CTRs: far from ln 2),
    # not the pairs' BT loss (logged beside it)
    assert all(abs(x["loss"] - x["train/bt_loss"]) > 1e-3 for x in recs)
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["objective"] == "pointwise" and report["pointwise_loss"] == "bce" and report["n_pairs"] == 8
    assert 0.0 <= report["pairwise_acc"] <= 1.0 and 0.0 <= report["true_pairwise_acc"] <= 1.0
    assert r["test"]["pairwise_acc"] == report["pairwise_acc"]
    scores = _lines(tmp_path / "eval" / "test_scores.jsonl")
    acc = sum((s["r_chosen"] > s["r_rejected"]) + 0.5 * (s["r_chosen"] == s["r_rejected"]) for s in scores) / 8
    assert acc == report["pairwise_acc"]
    assert _lines(tmp_path / "val_metrics.jsonl")[-1]["pairwise_acc"] == recs[-1]["val/pairwise_acc"]


@pytest.fixture(scope="module")
def bt_rm(tmp_path_factory):
    """A Bradley–Terry reward model: three steps of a random-init tiny DeepSeek-V3 with a scalar head."""
    out = tmp_path_factory.mktemp("bt_rm")
    spawn(rm_worker, 1, JobConfig.load(RM_CFG, [f"out_dir={out}", *RM_SMALL]).to_dict())
    assert json.loads((out / "eval" / "report.json").read_text())["objective"] == "bt"
    return out


def _grpo_worker(job_dict: dict, rm_dir: str, empty_dir: str) -> dict:
    """GRPO against the RM of ``rm_dir``; then, in the same process, the direct scores of the rollouts and of the
    RM's own test texts, and the refusals of directories that are not a performance RM."""
    from megatron_ads.checkpoint.megatron_io import read_layout
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.data.tokenizer import load_tokenizer
    from megatron_ads.train import ckpt, frozen_rm
    from megatron_ads.train.reward_model import frozen_reward_chunk
    from megatron_ads.train.rm_loop import rm_data, rm_prompt

    built = []
    orig_init = frozen_rm.FrozenPerfRM.__init__

    def counting_init(self, *a, **kw):
        built.append(str(a[-1]))
        orig_init(self, *a, **kw)

    frozen_rm.FrozenPerfRM.__init__ = counting_init
    tr = grpo_trainer(job_dict)
    tr.run()
    trainer_built = list(built)  # the trainer's own builds (the refusals below construct more)
    rm = tr.resources.perf_model

    # the RM scored directly: its checkpoint's chunk on each text alone, ids as `train rm` encodes a log text
    src = ckpt.resolve(rm_dir)
    chunk, _ = frozen_reward_chunk(rm_dir, read_layout(src).cfg, tr.par, experts=tr.job.model.experts)
    tok = load_tokenizer(src / "tokenizer")
    rm_job = JobConfig.load(Path(rm_dir) / "config.yaml")
    S = rm_job.train.seq_len

    def direct(keyword, ad, text):
        p = tok(rm_prompt({"keyword": keyword, "ad": ad}), add_special_tokens=False)["input_ids"]
        t = tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([(p[-(S - len(t)):] if S > len(t) else []) + t])
        with torch.no_grad():
            out = chunk(ids, torch.arange(ids.shape[1]).unsqueeze(0), None)
        return float(out[0, -1])

    rows = {r["id"]: r for r in tr.data["ad_rewrite"]["train"]}
    rollouts = _lines(Path(tr.job.out_dir) / "rollouts.jsonl")
    for r in rollouts:
        r["direct"] = direct(r["keyword"], rows[r["id"]]["ad"], r["completion"].strip())

    # the prompt side: the GRPO scorer on the RM's held-out log texts gives the scores `train rm` wrote for them
    data = rm_data(rm_job)
    test = _lines(Path(rm_dir) / "eval" / "test_scores.jsonl")
    logs = [data["rows"][s["chosen_id"]] for s in test]
    got = rm.score([x["keyword"] for x in logs], [x["text"] for x in logs], ads=[x["ad"] for x in logs])

    errors = {}
    for name, path in (("empty", empty_dir), ("policy", tr.job.out_dir)):
        try:
            frozen_rm.FrozenPerfRM(tr, path)
        except ValueError as exc:
            errors[name] = str(exc)
    return {"built": trainer_built, "rollouts": rollouts, "log_scores": got, "log_want": [s["r_chosen"] for s in test],
            "errors": errors}


def test_grpo_perf_rm_reward_is_rm_score_minus_length_penalty(bt_rm, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    job = JobConfig.load(GRPO_CFG, [f"out_dir={tmp_path / 'grpo'}", f"grpo.resources.perf_model={bt_rm}", *GRPO_SMALL])
    assert job.grpo.rewards == {"ad_rewrite": {"perf_rm": 1.0}} and job.grpo.group_size == 5
    r = spawn(_grpo_worker, 1, job.to_dict(), str(bt_rm), str(empty))[0]
    assert r["built"] == [str(bt_rm)]  # loaded once on this rank (then two steps of rollouts scored with it)
    rollouts = r["rollouts"]
    assert len(rollouts) == 2 * 10 and {x["step"] for x in rollouts} == {1, 2}
    over = 0
    for x in rollouts:
        d = x["details"]["perf_rm"]
        length = len(x["completion"].strip())
        assert d["length"] == length and d["penalty"] == pytest.approx(LAM * max(0.0, length - L0))
        # the reward: the RM's own score of the text (recomputed directly) minus the length penalty
        assert d["score"] == pytest.approx(x["direct"], abs=1e-4)
        assert x["rewards"]["perf_rm"] == pytest.approx(x["direct"] - LAM * max(0.0, length - L0), abs=1e-4)
        if length > L0:  # over-long: less than the same RM score without the penalty
            over += 1
            assert x["rewards"]["perf_rm"] < d["score"] - 1e-6
        else:
            assert x["rewards"]["perf_rm"] == d["score"]
    assert over >= 1 and len({round(x["direct"], 6) for x in rollouts}) > 2  # penalized ones; not a constant RM
    recs = _lines(tmp_path / "grpo" / "metrics.jsonl")
    for rec in recs:
        mine = [x for x in rollouts if x["step"] == rec["step"]]
        for k in ("score", "penalty", "length"):
            want = sum(x["details"]["perf_rm"][k] for x in mine) / len(mine)
            assert rec[f"reward/ad_rewrite/perf_rm/{k}/mean"] == pytest.approx(want)
        assert rec["reward/ad_rewrite/perf_rm/mean"] == pytest.approx(
            sum(x["rewards"]["perf_rm"] for x in mine) / len(mine))
    # same prompt side as training: the held-out log texts score as `train rm` scored them
    torch.testing.assert_close(torch.tensor(r["log_scores"], dtype=torch.float64),
                               torch.tensor(r["log_want"], dtype=torch.float64), atol=1e-5, rtol=0)
    assert "grpo.resources.perf_model" in r["errors"]["empty"] and "no training checkpoint" in r["errors"]["empty"]
    assert "grpo.resources.perf_model" in r["errors"]["policy"] and "holds no reward head" in r["errors"]["policy"]


def _pp2_worker(job_dict: dict, rm_dir: str) -> dict:
    """The GRPO trainer's RM on a 2-stage pipeline (built at construction) scoring the RM's held-out log texts."""
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.train.rm_loop import rm_data

    tr = grpo_trainer(job_dict)
    rm_job = JobConfig.load(Path(rm_dir) / "config.yaml")
    rows = rm_data(rm_job)["rows"]
    test = _lines(Path(rm_dir) / "eval" / "test_scores.jsonl")
    logs = [rows[s[k]] for s in test for k in ("chosen_id", "rejected_id")]
    got = tr.resources.perf_model.score([x["keyword"] for x in logs], [x["text"] for x in logs],
                                        ads=[x["ad"] for x in logs])
    return {"got": got, "want": [s[k] for s in test for k in ("r_chosen", "r_rejected")],
            "last_stage": tr.ps.is_pipeline_last_stage()}


def test_perf_model_on_a_two_stage_pipeline_scores_as_train_rm(bt_rm, tmp_path):
    """The RM built on the policy's PP=2 layout (resharded from its one-rank checkpoint): every rank gets the scores
    the RM's own run wrote for its held-out pairs (16 texts: two micro-batches of 10, the last padded)."""
    job = JobConfig.load(GRPO_CFG, [f"out_dir={tmp_path}", f"grpo.resources.perf_model={bt_rm}", *GRPO_SMALL,
                                    "parallel.pp=2"])
    res = spawn(_pp2_worker, 2, job.to_dict(), str(bt_rm))
    assert [r["last_stage"] for r in res] == [False, True]
    for r in res:
        torch.testing.assert_close(torch.tensor(r["got"], dtype=torch.float64),
                                   torch.tensor(r["want"], dtype=torch.float64), atol=1e-5, rtol=0)


def test_perf_rm_config_errors_name_the_field(tmp_path):
    from megatron_ads.train.grpo_loop import build_rewards

    base = [f"out_dir={tmp_path}", *GRPO_SMALL]
    with pytest.raises(ValueError, match=r"grpo\.resources\.perf_model: .*no such directory"):
        JobConfig.load(GRPO_CFG, base)  # the recipe's runs/rm_tiny_cpu does not exist here
    with pytest.raises(ValueError, match=r"grpo\.resources\.perf_model: reward perf_rm .*needs"):
        JobConfig.load(GRPO_CFG, [*base, "grpo.resources={}"])
    with pytest.raises(ValueError, match=r"grpo\.reward_params\.perf_rm: expected a mapping"):
        JobConfig.load(GRPO_CFG, [*base, f"grpo.resources.perf_model={tmp_path}", "grpo.reward_params={perf_rm: 3}"])
    w = {"ad_rewrite": {"perf_rm": 1.0}}
    with pytest.raises(ValueError, match=r"grpo\.reward_params\.perf_rm\.lam: expected a finite number >= 0"):
        build_rewards(w, 0, models={"perf_model": str(tmp_path)}, params={"perf_rm": {"lam": -1.0}})
    with pytest.raises(ValueError, match=r"grpo\.reward_params\.perf_rm\.form: expected one of linear, quadratic"):
        build_rewards(w, 0, models={"perf_model": str(tmp_path)}, params={"perf_rm": {"form": "exp"}})
    with pytest.raises(ValueError, match=r"grpo\.reward_params\.perf_rm\.bogus: unknown parameter"):
        build_rewards(w, 0, models={"perf_model": str(tmp_path)}, params={"perf_rm": {"bogus": 1}})
    with pytest.raises(ValueError, match=r"grpo\.reward_params\.nope: unknown reward"):
        build_rewards(w, 0, params={"nope": {}})
    with pytest.raises(ValueError, match=r"resources\.perf_model: reward 'perf_rm' needs"):
        build_rewards(w, 0)  # no directory: nothing to score with
    # outside a trainer the backbone RM has no loader of its own; the first call says so, naming the key
    fns, _ = build_rewards(w, 0, models={"perf_model": str(tmp_path)}, params={"perf_rm": {"fields": []}})
    with pytest.raises(ValueError, match=r"grpo\.resources\.perf_model: a backbone reward model"):
        fns["perf_rm"](["p"], ["some ad text"], "ad_rewrite", [{"keyword": "shoes"}])
