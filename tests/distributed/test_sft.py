"""`train sft`: reweighted multi-task loss, validation by label scoring (also through a pipeline), exact resume."""

import json
from pathlib import Path

import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.train.sft_loop import sft_worker

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml"
SMALL = ["train.seq_len=192", "train.micro_batch=4", "sft.train_size=200", "sft.val_rows=6", "sft.eval_every=3",
         "optim.warmup_steps=2"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


def test_sft_resume_restores_reweighting_exactly(tmp_path):
    common = [*SMALL, "train.steps=6", "checkpoint.every=3", "checkpoint.keep_last=5"]
    spawn(sft_worker, 1, JobConfig.load(CFG, [f"out_dir={tmp_path / 'a'}", *common]).to_dict())
    step3 = tmp_path / "a" / "checkpoints" / "step_0000003"
    spawn(sft_worker, 1, JobConfig.load(CFG, [f"out_dir={tmp_path / 'b'}", *common, f"resume={step3}"]).to_dict())
    a, b = _lines(tmp_path / "a" / "metrics.jsonl"), _lines(tmp_path / "b" / "metrics.jsonl")
    assert [r["loss"] for r in b] == [r["loss"] for r in a[3:]]
    va, vb = _lines(tmp_path / "a" / "val_metrics.jsonl"), _lines(tmp_path / "b" / "val_metrics.jsonl")
    assert va[-1] == vb[-1]  # the step-6 validation, λ_t included
    assert abs(sum(v for k, v in va[0].items() if k.startswith("lambda/")) - 1.0) < 1e-9
    for key in ("query_ad/bad_view_BACC", "ad_user/AUC", "lambda/query_ad", "lambda/ad_user"):
        assert key in va[0]


def test_sft_validation_through_a_pipeline(tmp_path):
    job = JobConfig.load(CFG, [f"out_dir={tmp_path / 'pp'}", *SMALL, "train.steps=3", "parallel.pp=2",
                               "checkpoint.save_at_end=false"])
    r = spawn(sft_worker, 2, job.to_dict())[0]
    assert r["steps"] == 3
    val = _lines(tmp_path / "pp" / "val_metrics.jsonl")
    assert 0.0 <= val[-1]["query_ad/bad_view_BACC"] <= 1.0
