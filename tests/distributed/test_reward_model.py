"""``train rm``: the performance reward model (RLPF / AdLlama) on the megatron-core trainer — a scalar head on the
tiny DeepSeek-V3 backbone's last stage, Bradley–Terry / pointwise losses on pairs mined from synthetic multitext
logs, validation and test pairwise accuracy on held-out ads, checkpoints with the head, exact resume, the same
scores through a 2-stage pipeline, and config errors that name the field."""

import json
from pathlib import Path

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.train.rm_loop import rm_worker

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "rm_tiny_cpu.yaml"
SMALL = ["train.steps=6", "train.micro_batch=8", "train.log_every=3", "optim.warmup_steps=2", "rm.n_ads=300",
         "rm.eval_every=3", "rm.val_pairs=12", "rm.test_pairs=10", "checkpoint.every=3", "checkpoint.keep_last=5"]
TIMING = ("tokens_per_s", "step_time_s", "model_tflops_per_s", "val/time_s", "time_s", "wall_s", "val")


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def _no_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMING}


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory):
    """Six BT steps of a random-init tiny DeepSeek-V3 reward model, one process (checkpoints at 3 and 6)."""
    out = tmp_path_factory.mktemp("rm_run")
    r = spawn(rm_worker, 1, JobConfig.load(CFG, [f"out_dir={out}", *SMALL]).to_dict())[0]
    return out, r


def test_rm_run_writes_metrics_validation_report_and_checkpoints(rm_run):
    out, r = rm_run
    recs = _lines(out / "metrics.jsonl")
    assert [x["step"] for x in recs] == [1, 2, 3, 4, 5, 6]
    for rec in recs:
        assert torch.isfinite(torch.tensor(rec["loss"])) and 0.0 <= rec["train/pairwise_acc"] <= 1.0
        assert abs(rec["loss"] - rec["train/bt_loss"]) < 1e-6  # objective bt: the loss is the pairs' BT loss
    val = _lines(out / "val_metrics.jsonl")
    assert [v["step"] for v in val] == [3, 6]
    for v in val:
        assert v["n_pairs"] == 12 and 0.0 <= v["pairwise_acc"] <= 1.0 and 0.0 <= v["true_pairwise_acc"] <= 1.0
        assert 0.5 < v["true_order_rate"] <= 1.0
    assert recs[2]["val/pairwise_acc"] == val[0]["pairwise_acc"]
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["objective"] == "bt" and report["step"] == 6 and report["n_pairs"] == 10
    assert 0.0 <= report["pairwise_acc"] <= 1.0 and report["data"]["train_pairs"] > 100
    assert r["test"]["pairwise_acc"] == report["pairwise_acc"]
    scores = _lines(out / "eval" / "test_scores.jsonl")
    assert len(scores) == 10 and all(s["chosen_ctr"] > s["rejected_ctr"] for s in scores)
    acc = sum((s["r_chosen"] > s["r_rejected"]) + 0.5 * (s["r_chosen"] == s["r_rejected"]) for s in scores) / 10
    assert acc == report["pairwise_acc"]
    # the held-out ads are not training ads (split by ad)
    from megatron_ads.train.rm_loop import rm_data

    d = rm_data(JobConfig.load(CFG, SMALL))
    train_ads = {p["ad_id"] for p in d["pairs"]["train"]}
    assert not train_ads & {s["ad_id"] for s in scores}
    # checkpoints hold the head (on the last stage, in the model's sharded state) and the run's tokenizer
    from megatron_ads.train import ckpt

    for step in (3, 6):
        c = out / "checkpoints" / f"step_{step:07d}"
        assert ckpt.holds_tensors(c, "reward_head.") and (c / "tokenizer" / "tokenizer.json").is_file()


def test_rm_resume_is_exact(rm_run, tmp_path):
    out, r = rm_run
    step3 = out / "checkpoints" / "step_0000003"
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *SMALL, f"resume={step3}"])
    r2 = spawn(rm_worker, 1, job.to_dict())[0]
    assert r2["steps"] == 6
    a, b = _lines(out / "metrics.jsonl"), _lines(tmp_path / "metrics.jsonl")
    assert [x["step"] for x in b] == [4, 5, 6]
    assert [_no_timing(x) for x in b] == [_no_timing(x) for x in a[3:]]
    assert _no_timing(_lines(tmp_path / "val_metrics.jsonl")[-1]) == _no_timing(_lines(out / "val_metrics.jsonl")[-1])
    assert _no_timing(r2["test"]) == _no_timing(r["test"])


def _score_worker(job_dict: dict, n: int) -> list[float] | None:
    """Scores of the first ``n`` test pairs (chosen, rejected interleaved) through ``RMTrainer.score_pairs``."""
    from megatron_ads.train.rm_loop import RMTrainer

    tr = RMTrainer(JobConfig.from_dict(job_dict))
    r_w, r_l = tr.score_pairs(tr.pairs["test"][:n])
    return torch.stack([r_w, r_l], 1).reshape(-1).tolist()


@pytest.mark.parametrize("layout", ["parallel.pp=2", "parallel.pp=1"], ids=["pp2", "dp2"])
def test_rm_scores_on_pp2_and_dp2_match_one_rank(rm_run, tmp_path, layout):
    """The trained run's final weights (head included, loaded through ``model.init=mcore``) on a 2-stage pipeline
    (and on 2 data-parallel ranks, which split the pairs and pad the last shard) give the scores the one-rank
    run wrote for its test pairs."""
    out, _ = rm_run
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *SMALL, "model.init=mcore",
                               f"model.path={out / 'checkpoints'}", layout])
    got = spawn(_score_worker, 2, job.to_dict(), 10)
    assert got[0] == got[1]  # every rank holds the scores
    want = [v for s in _lines(out / "eval" / "test_scores.jsonl") for v in (s["r_chosen"], s["r_rejected"])]
    torch.testing.assert_close(torch.tensor(got[0], dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert len(set(want)) > 2  # not a constant scorer


@pytest.mark.parametrize("override, needle", [
    ("rm.objective=listwise", "rm.objective"),
    ("rm.gap=log", "rm.gap"),
    ("rm.pointwise_loss=huber", "rm.pointwise_loss"),
    ("rm.min_impressions=0", "rm.min_impressions"),
    ("rm.min_ctr_gap=-0.1", "rm.min_ctr_gap"),
    ("rm.variants=[1, 3]", "rm.variants"),
    ("rm.val_fraction=0.7", "rm.val_fraction"),
    ("rm.head_init_std=-1", "rm.head_init_std"),
    ("rm.eval_every=0", "rm.eval_every"),
    ("rm.ad_effect=-1", "rm.ad_effect"),
    ("rm.bogus=1", "bogus"),
])
def test_rm_bad_config_names_the_field(override, needle):
    with pytest.raises(ValueError, match=needle):
        JobConfig.load(CFG, [override])


def test_rm_odd_micro_batch_and_empty_pairs_name_the_field():
    from megatron_ads.train.rm_loop import RMTrainer, rm_data

    with pytest.raises(ValueError, match="train.micro_batch"):  # refused before any process group exists
        RMTrainer(JobConfig.load(CFG, ["train.micro_batch=7"]))
    with pytest.raises(ValueError, match="rm.min_impressions"):
        rm_data(JobConfig.load(CFG, ["rm.min_impressions=5000"]))


def test_cli_train_rm_bad_field_exits_2_naming_it(capsys):
    from megatron_ads.cli import main

    assert main(["train", "rm", "--config", str(CFG), "rm.gap=log"]) == 2
    err = capsys.readouterr().err
    assert "rm.gap" in err and "Traceback" not in err
