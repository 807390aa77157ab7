"""Token-level PPO end to end (``train grpo grpo.algo=ppo``, ``train.ppo_loop``): engine rollouts, per-token
rewards, a value head on the policy trained with the clipped value loss, GAE, KL shaping against the frozen
reference, checkpoints and exact resume, pp2 x ep2. Tiny random-init DeepSeek-V3.

Rewards: ``test_chars`` (sentence: distinct characters / 10) and ``test_tok`` (token-level: +0.1 per even
token id, sentence value their sum), registered here, so that a random model gets a reward signal.
"""

from pathlib import Path

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from rl_support import PROB_ERR_TOL, TIMING, records, register_test_rewards

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "grpo_tiny_cpu.yaml"
REWARDS = ("grpo.rewards={query_ad: {test_chars: 1.0, test_tok: 1.0}, ad_user: {label: 1.0, test_tok: 1.0}}")
COMMON = ["grpo.algo=ppo", "train.steps=3", "train.seq_len=160", "grpo.max_new_tokens=12", "grpo.group_size=4",
          "sft.train_size=200", "optim.lr=0.001", "optim.min_lr=0.001", "grpo.kl_beta=0.05", "ppo.lwp_alpha=1.0",
          REWARDS]
KEYS = ("loss", "pg_loss", "kl", "value_loss", "value_mean", "return_mean", "adv_mean_raw", "adv_std_raw",
        "kl_reward", "token_reward_sum", "lwp_length", "token_mult_prob_error", "clip_frac_low", "entropy")


def _value_head(chunk):
    h = getattr(chunk, "value_head", None)
    return None if h is None else torch.cat([p.detach().reshape(-1).clone() for p in h.parameters()])


def _worker(job_dict, mode="run"):
    register_test_rewards()
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.train.ppo_loop import PPOTrainer

    tr = grpo_trainer(job_dict)
    assert isinstance(tr, PPOTrainer)
    v0 = _value_head(tr.model.module)
    if tr.ps.is_pipeline_last_stage():  # the critic lives on the last stage only
        assert tr.model.module.value_scale == tr.job.ppo.value_scale
    else:
        assert v0 is None
    if mode == "part":
        for _ in range(2):
            tr.train_step()
        tr.save()
        return {}
    summary = tr.run()
    v1 = _value_head(tr.model.module)
    final = torch.cat([p.detach().reshape(-1).clone() for p in tr.model.module.parameters()])
    return {"summary": summary, "v0": v0, "v1": v1, "final": final,
            "emitting": bool(getattr(tr.model.module, "emit_values", False))}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo_full")
    job = JobConfig.load(CFG, [f"out_dir={out}", *COMMON])
    return out, spawn(_worker, 1, job.to_dict())[0]


def test_ppo_three_steps(full_run):
    out, r = full_run
    recs = records(out)
    assert [x["step"] for x in recs] == [1, 2, 3]
    for rec in recs:
        for k in KEYS:
            assert rec.get(k) is not None and torch.isfinite(torch.tensor(float(rec[k]))), (k, rec.get(k))
        # the value column never reaches the engine nor the log-probs: engine and trainer agree
        assert rec["token_mult_prob_error"] <= PROB_ERR_TOL, rec["token_mult_prob_error"]
        assert rec["kl"] >= 0.0 and rec["value_loss"] > 0.0
    assert recs[0]["value_mean"] == 0.0  # ppo.value_head_std=0: the critic starts at 0
    assert recs[0]["kl"] <= 1e-7 and recs[-1]["kl"] > 0.0
    assert recs[-1]["value_mean"] != 0.0  # ... and learns
    assert not torch.equal(r["v0"], r["v1"])
    assert not r["emitting"]  # the value column is off outside the trainer's own passes
    assert recs[0]["lwp_length"] > 0


def test_ppo_resume_is_exact(full_run, tmp_path):
    out_full, r_full = full_run
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON])
    spawn(_worker, 1, job.to_dict(), "part")
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", "resume=auto", *COMMON])
    r = spawn(_worker, 1, job.to_dict())[0]
    got, want = records(tmp_path)[0], records(out_full)[2]
    assert got["step"] == 3 and set(got) == set(want)
    for k in want:
        if k not in TIMING:
            assert got[k] == want[k], (k, got[k], want[k])
    assert torch.equal(r["final"], r_full["final"])  # value head included


def test_ppo_refuses_tensor_parallel_and_lwp_without_token_credit():
    from megatron_ads.train.ppo_loop import PPOTrainer

    job = JobConfig.load(CFG, ["grpo.algo=ppo", "parallel.tp=2"])
    with pytest.raises(ValueError, match="parallel.tp must be 1"):
        PPOTrainer(job, rollout_factory=None)
    job = JobConfig.load(CFG, ["grpo.algo=ppo", "ppo.token_credit=false", "ppo.lwp_alpha=1.0"])
    with pytest.raises(ValueError, match="ppo.lwp_alpha: .*token_credit=false"):
        PPOTrainer(job, rollout_factory=None)


@pytest.mark.slow
def test_ppo_pp2_ep2(tmp_path):
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON, "train.steps=2", "parallel.pp=2", "parallel.ep=2",
                               "train.micro_batch=2", "train.num_microbatches=2", "checkpoint.save_at_end=false"])
    results = spawn(_worker, 4, job.to_dict())
    assert all(x["summary"]["steps"] == 2 for x in results)
    recs = records(tmp_path)
    assert len(recs) == 2
    for rec in recs:
        assert torch.isfinite(torch.tensor(rec["loss"])) and rec["token_mult_prob_error"] <= PROB_ERR_TOL
        assert torch.isfinite(torch.tensor(rec["value_loss"]))
    assert recs[0]["value_mean"] == 0.0


RM_CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "token_rm_tiny_cpu.yaml"
RM_SMALL = ["train.steps=2", "train.seq_len=128", "train.micro_batch=4", "rm.rows=40", "rm.eval_every=2",
            "rm.val_examples=4", "rm.test_examples=4"]


def _rm_worker(job_dict):
    from megatron_ads.train.token_rm_loop import TokenRMTrainer

    return TokenRMTrainer(JobConfig.from_dict(job_dict)).run()


def _token_rm_worker(job_dict):
    """PPO with the frozen token reward model as a reward channel; also checks the frozen model's per-token
    rewards against the RM chunk's own softmax on one rollout."""
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.data.packing import model_forward

    tr = grpo_trainer(job_dict)
    model = tr.resources.token_model  # built at init (a reward reads it)
    p_ids, c_ids = [[5, 6, 7, 8]], [[9, 10, 11]]
    got = model.token_rewards(p_ids, c_ids)[0]
    with torch.no_grad():
        logits = model_forward(model.chunk, {"tokens": torch.tensor([p_ids[0] + c_ids[0]])}, tr.device,
                               with_labels=False)[0]
    probs = torch.softmax(logits.float(), dim=-1)[4:7]
    want = [float(p[2] - p[1]) if int(p.argmax()) != 0 else 0.0 for p in probs]
    S = tr.job.train.seq_len
    long_p = [5 + (i % 50) for i in range(S + 20)]  # prompt + completion longer than seq_len
    long = model.token_rewards([long_p], [[9, 10, 11]])[0]
    with torch.no_grad():
        lg = model_forward(model.chunk, {"tokens": torch.tensor([(long_p + [9, 10, 11])[-S:]])}, tr.device,
                           with_labels=False)[0]
    pl = torch.softmax(lg.float(), dim=-1)[S - 3:]
    want_long = [float(p[2] - p[1]) if int(p.argmax()) != 0 else 0.0 for p in pl]
    summary = tr.run()
    return {"got": got, "want": want, "summary": summary, "long": long, "want_long": want_long}


def test_ppo_with_the_frozen_token_reward_model(tmp_path):
    rm_out = tmp_path / "token_rm"
    spawn(_rm_worker, 1, JobConfig.load(RM_CFG, [f"out_dir={rm_out}", *RM_SMALL]).to_dict())
    out = tmp_path / "ppo"
    rewards = "grpo.rewards={query_ad: {token_rm: 1.0, label: 1.0}, ad_user: {token_rm: 1.0, label: 1.0}}"
    job = JobConfig.load(CFG, [f"out_dir={out}", *COMMON[:-1], "train.steps=2", rewards,
                               f"grpo.resources.token_model={rm_out}"])
    r = spawn(_token_rm_worker, 1, job.to_dict())[0]
    assert r["got"] == pytest.approx(r["want"], abs=1e-6)
    # prompt + completion longer than seq_len: the prompt loses its first tokens, every completion token is scored
    assert r["long"] == pytest.approx(r["want_long"], abs=1e-6)
    recs = records(out)
    assert len(recs) == 2
    for rec in recs:
        v = rec["reward/query_ad/token_rm/mean"]
        assert v is not None and torch.isfinite(torch.tensor(v)) and v != 0.0


def test_token_model_refuses_a_pair_reward_model(tmp_path):
    from megatron_ads.train.frozen_rm import FrozenTokenRM

    (tmp_path / "config.yaml").write_text("rm: {kind: pair}\n")
    m = FrozenTokenRM.__new__(FrozenTokenRM)
    m.ckpt = tmp_path
    with pytest.raises(ValueError, match="rm.kind='pair'.*train rm rm.kind=token"):
        m._saved_rm(str(tmp_path))
    (tmp_path / "config.yaml").write_text("rm: {kind: token, token_reward: class_map}\n")
    assert m._saved_rm(str(tmp_path))["token_reward"] == "class_map"


def test_token_rm_reward_without_its_model_is_refused_at_start(tmp_path):
    rewards = "grpo.rewards={query_ad: {token_rm: 1.0}, ad_user: {label: 1.0}}"
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON[:-1], "train.steps=1", rewards])
    with pytest.raises(Exception, match="grpo.resources.token_model: reward token_rm"):
        spawn(_token_rm_worker, 1, job.to_dict())
