"""``train rm`` with ``rm.kind=token``: TPPO's token-level reward model on the megatron-core trainer — a 3-class
token head on the tiny DeepSeek-V3 backbone's last stage, trained a few steps on word-labeled user_query_gen
responses; metrics, validation and the test report are written; the checkpoint records the head's kind and size;
and a frozen copy built from the checkpoint the way a policy trainer builds one (build the chunk, attach a
3-output head, load the run's weights) gives the trained model's per-token logits exactly; a resumed run repeats
the uninterrupted one; the run's weights (head included, through ``model.init=mcore``) score the same on a 2-stage
pipeline and on 2 data-parallel ranks."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "token_rm_tiny_cpu.yaml"
SMALL = ["train.steps=8", "train.seq_len=128", "train.micro_batch=8", "train.log_every=4", "optim.lr=0.003",
         "optim.warmup_steps=2", "rm.rows=80", "rm.eval_every=4", "rm.val_examples=8", "rm.test_examples=8",
         "checkpoint.every=4", "checkpoint.keep_last=3"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _train_and_freeze(job_dict: dict) -> dict:
    """Train (``TokenRMTrainer.run``), then compare the trained chunk's logits on test responses with those of a
    frozen copy built from the run's checkpoint as a policy trainer builds it."""
    from megatron.core import dist_checkpointing

    from megatron_ads.checkpoint.megatron_io import read_layout
    from megatron_ads.model.build import build_model_chunk, transformer_config
    from megatron_ads.model.specs import use_te_default
    from megatron_ads.train import ckpt
    from megatron_ads.train.reward_model import attach_reward_head, frozen_reward_chunk, saved_head_outputs
    from megatron_ads.train.token_rm_loop import TokenRMTrainer

    tr = TokenRMTrainer(JobConfig.from_dict(job_dict))
    summary = tr.run()
    b = tr.collate(tr.data["test"][: tr.job.train.micro_batch])
    pos = torch.arange(b["tokens"].shape[1]).unsqueeze(0).expand_as(b["tokens"])
    trained = tr.model.module.eval()
    with torch.no_grad():
        want = trained(b["tokens"], pos, None)
    src = ckpt.resolve(Path(tr.job.out_dir) / "checkpoints")  # the run's latest checkpoint
    n = saved_head_outputs(src)
    # what a policy trainer does: the chunk of the checkpoint's backbone, a head of the saved size, every weight
    o = tr.job.optim
    tconfig = transformer_config(tr.cfg, tr.par, dtype=o.dtype, device=tr.platform.name, calculate_per_token_loss=False)
    chunk = build_model_chunk(tr.cfg, tr.par, dtype=o.dtype, device=tr.platform.name,
                              use_te=use_te_default(tr.platform.name), tconfig=tconfig, experts=tr.job.model.experts)
    attach_reward_head(chunk, tr.cfg.hidden_size, last_stage=True, num_outputs=n)
    ckpt.load_model_weights(chunk, ckpt.resolve(tr.job.out_dir))  # the run directory resolves to the same step
    for p in chunk.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        got = chunk.eval()(b["tokens"], pos, None)
    # the same in one call, from the run directory and the checkpoint's own config
    helper, n2 = frozen_reward_chunk(tr.job.out_dir, read_layout(src).cfg, tr.par, experts=tr.job.model.experts)
    with torch.no_grad():
        got2 = helper(b["tokens"], pos, None)
    assert not any(p.requires_grad for p in helper.parameters()) and not helper.training
    common = dist_checkpointing.load_common_state_dict(str(src))
    probs = tr.token_probs(tr.data["test"][:8])
    return {"probs": probs.tolist(), "summary": summary, "head_outputs": n, "shape": list(got.shape),
            "equal": bool(torch.equal(got, want)),
            "helper_equal": bool(torch.equal(got2, want)) and n2 == n,
            "max_diff": float((got - want).abs().max()), "common_head": common.get("reward_head"),
            "common_rm": common.get("rm"), "ckpt": str(src)}


@pytest.fixture(scope="module")
def token_rm_run(tmp_path_factory):
    """Eight steps of a random-init tiny DeepSeek-V3 token reward model, one process (checkpoints at 4 and 8)."""
    out = tmp_path_factory.mktemp("token_rm_run")
    return out, spawn(_train_and_freeze, 1, JobConfig.load(CFG, [f"out_dir={out}", *SMALL]).to_dict())[0]


def test_token_rm_trains_and_writes_metrics_validation_and_report(token_rm_run):
    out, r = token_rm_run
    recs = _lines(out / "metrics.jsonl")
    assert [x["step"] for x in recs] == list(range(1, 9))
    losses = [x["loss"] for x in recs]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-2:]) < sum(losses[:2])  # the loss falls
    for rec in recs:
        for k in ("train/token_acc", "train/recall_0", "train/recall_1", "train/recall_2"):
            assert 0.0 <= rec[k] <= 1.0
        assert rec["train/local_loss"] > 0 and 1 / 3 - 1e-9 <= rec["train/kept_ratio_2_1"] <= 3 + 1e-9
    val = _lines(out / "val_metrics.jsonl")
    assert [v["step"] for v in val] == [4, 8] and recs[3]["val/query_auc"] == val[0]["query_auc"]
    for v in val:
        assert v["n_examples"] == 8 and v["n_queries"] == 24 and 0.0 <= v["query_auc"] <= 1.0
        assert 0.0 <= v["token_acc"] <= 1.0 and v["loss"] > 0
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["kind"] == "token" and report["num_outputs"] == 3 and report["step"] == 8
    assert report["n_examples"] == 8 and report["query_auc"] == r["summary"]["test"]["query_auc"]
    queries = _lines(out / "eval" / "test_queries.jsonl")
    assert len(queries) == 24 and {q["relevant"] for q in queries} == {True, False}


def test_checkpoint_records_the_head_and_a_frozen_copy_reproduces_the_logits(token_rm_run):
    out, r = token_rm_run
    assert r["head_outputs"] == 3 and r["common_head"] == {"kind": "token", "num_outputs": 3}
    assert r["common_rm"]["examples_seen"] == 8 * 8 and r["ckpt"].endswith("step_0000008")
    assert yaml.safe_load((Path(r["ckpt"]) / "config.yaml").read_text())["rm"]["kind"] == "token"
    assert (Path(r["ckpt"]) / "tokenizer" / "tokenizer.json").is_file()  # what a loader tokenizes with
    assert r["shape"] == [8, 128, 3]  # per-position class logits
    assert r["equal"], f"frozen copy differs from the trained model by {r['max_diff']}"
    assert r["helper_equal"]  # reward_model.frozen_reward_chunk: the same copy in one call


TIMING = ("tokens_per_s", "step_time_s", "model_tflops_per_s", "val/time_s", "time_s", "wall_s", "val")


def _no_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING}


def test_token_rm_resume_is_exact(token_rm_run, tmp_path):
    from megatron_ads.train.token_rm_loop import token_rm_worker

    out, r = token_rm_run
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *SMALL, f"resume={out / 'checkpoints' / 'step_0000004'}"])
    r2 = spawn(token_rm_worker, 1, job.to_dict())[0]
    assert r2["steps"] == 8
    a, b = _lines(out / "metrics.jsonl"), _lines(tmp_path / "metrics.jsonl")
    assert [x["step"] for x in b] == [5, 6, 7, 8]
    assert [_no_timing(x) for x in b] == [_no_timing(x) for x in a[4:]]
    assert _no_timing(r2["test"]) == _no_timing(r["summary"]["test"])


def _probs_worker(job_dict: dict, n: int) -> list:
    """Class probabilities of the first ``n`` test responses through ``TokenRMTrainer.token_probs``."""
    from megatron_ads.train.token_rm_loop import TokenRMTrainer

    tr = TokenRMTrainer(JobConfig.from_dict(job_dict))
    return tr.token_probs(tr.data["test"][:n]).tolist()


@pytest.mark.parametrize("layout", ["parallel.pp=2", "parallel.pp=1"], ids=["pp2", "dp2"])
def test_token_rm_probs_on_pp2_and_dp2_match_one_rank(token_rm_run, tmp_path, layout):
    out, r = token_rm_run
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *SMALL, "model.init=mcore",
                               f"model.path={out / 'checkpoints'}", layout])
    got = spawn(_probs_worker, 2, job.to_dict(), 8)
    assert got[0] == got[1]  # every rank holds the probabilities
    torch.testing.assert_close(torch.tensor(got[0], dtype=torch.float64), torch.tensor(r["probs"], dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_cli_train_rm_token_bad_field_exits_2_naming_it(capsys):
    from megatron_ads.cli import main

    assert main(["train", "rm", "--config", str(CFG), "rm.local_weight=1.5"]) == 2
    err = capsys.readouterr().err
    assert "rm.local_weight" in err and "Traceback" not in err
