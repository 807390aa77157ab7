"""GRPO end to end on the megatron-core trainer (``train grpo``): rollouts on the inference engine in-process,
rewards from the registry, old-policy log-probs, KL to the frozen reference, PPO loss through 1F1B, checkpoints
and exact resume. Tiny random-init DeepSeek-V3, G=4, short completions.

Rewards: ``label`` (registry, rules.py) and a test channel ``test_chars`` (distinct characters of the
completion / 10, registered here) so that a random-init model's groups have reward variance (label
correctness alone is the format penalty for every rollout of a random model: zero-std groups, no gradient).
"""

from pathlib import Path

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from rl_support import PROB_ERR_TOL, TIMING, records, register_test_rewards

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "grpo_tiny_cpu.yaml"
REWARDS = ("grpo.rewards={query_ad: {label: 1.0, test_chars: 1.0}, ad_user: {label: 1.0, test_chars: 1.0}}")
COMMON = ["train.steps=3", "train.seq_len=160", "grpo.max_new_tokens=12", "grpo.group_size=4", "sft.train_size=200",
          "optim.lr=0.001", "optim.min_lr=0.001", "grpo.kl_beta=0.05", REWARDS]
KEYS = ("loss", "grad_norm", "pg_loss", "kl", "clip_frac_low", "clip_frac_high", "entropy", "frac_reward_zero_std",
        "reward/query_ad/test_chars/mean", "reward/query_ad/test_chars/std", "reward/ad_user/label/mean",
        "reward/ad_user/label/std", "response_len_mean", "response_len_max", "token_mult_prob_error",
        "rollout_tokens_per_s", "train_tokens_per_s")


def _flat_params(model):
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


def _expert_bias(model):
    return [b.detach().clone() for n, b in model.named_buffers() if n.endswith("expert_bias")]


def _worker(job_dict, mode="run"):
    register_test_rewards()
    from megatron_ads.cli.workers import grpo_trainer

    tr = grpo_trainer(job_dict)
    before = _flat_params(tr.model.module)
    bias_before = _expert_bias(tr.model.module)
    if mode == "part":  # two steps then a checkpoint, as an interrupted run leaves it
        for _ in range(2):
            tr.train_step()
        tr.save()
        return {}
    summary = tr.run()
    after = _flat_params(tr.model.module)
    bias_same = all(torch.equal(a, b) for a, b in zip(bias_before, _expert_bias(tr.model.module)))
    return {"summary": summary, "changed": float((after - before).abs().max()), "training": tr.model.training,
            "final": after, "expert_bias_same": bias_same and bool(bias_before)}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_full")
    job = JobConfig.load(CFG, [f"out_dir={out}", *COMMON])
    r = spawn(_worker, 1, job.to_dict())[0]
    return out, r


def test_grpo_three_steps(full_run):
    out, r = full_run
    recs = records(out)
    assert [x["step"] for x in recs] == [1, 2, 3]
    for rec in recs:
        for k in KEYS:
            assert k in rec, k
            assert rec[k] is not None and torch.isfinite(torch.tensor(float(rec[k]))), (k, rec[k])
        # engine (KV-cache generation) vs trainer (one full forward) log-probs of the sampled tokens, same weights
        assert rec["token_mult_prob_error"] <= PROB_ERR_TOL, rec["token_mult_prob_error"]
        assert rec["kl"] >= 0.0
        assert rec["response_len_max"] <= 12
    assert recs[0]["kl"] <= 1e-7, recs[0]["kl"]  # policy == reference before the first update
    assert recs[-1]["kl"] > 0.0  # and they part after it
    assert min(x["frac_reward_zero_std"] for x in recs) < 1.0  # the test channel gives the groups a signal
    assert r["changed"] > 0.0 and r["training"]
    assert r["expert_bias_same"]  # grpo.expert_bias_update: false (the default)
    assert (out / "checkpoints").is_dir()
    assert {p.name for p in (out / "plots").glob("*.png")} >= {  # plots of the run (eval.plots.plot_grpo_run)
        "rewards.png", "frac_reward_zero_std.png", "kl.png", "clip_frac.png", "response_len.png",
        "token_mult_prob_error.png", "throughput.png"}, sorted(r["summary"]["plots"])
    print("token_mult_prob_error per step:", [x["token_mult_prob_error"] for x in recs],
          "max |dlogp|:", [x["logprob_max_abs_diff"] for x in recs])


def test_grpo_resume_is_exact(full_run, tmp_path):
    out_full, r_full = full_run
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON])
    spawn(_worker, 1, job.to_dict(), "part")  # steps 1-2, checkpoint at step 2
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", "resume=auto", *COMMON])
    r = spawn(_worker, 1, job.to_dict())[0]
    assert r["summary"]["steps"] == 3
    resumed = records(tmp_path)
    assert [x["step"] for x in resumed] == [3]
    want = records(out_full)[2]
    got = resumed[0]
    assert set(got) == set(want)
    for k in want:
        if k not in TIMING:
            assert got[k] == want[k], (k, got[k], want[k])
    assert torch.equal(r["final"], r_full["final"])


@pytest.mark.slow
def test_grpo_pp2_ep2(tmp_path):
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON, "train.steps=2", "parallel.pp=2", "parallel.ep=2",
                               "train.micro_batch=2", "train.num_microbatches=2", "checkpoint.save_at_end=false"])
    results = spawn(_worker, 4, job.to_dict())
    assert all(x["summary"]["steps"] == 2 for x in results)
    recs = records(tmp_path)
    assert len(recs) == 2
    for rec in recs:
        assert torch.isfinite(torch.tensor(rec["loss"])) and rec["token_mult_prob_error"] <= PROB_ERR_TOL
        assert rec["kl"] >= 0.0
    assert recs[0]["kl"] <= 1e-7
