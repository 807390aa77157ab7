"""HF -> mcore -> train 3 steps -> HF: the exported training checkpoint is what transformers runs,
logit for logit (fp32), and it generates; bf16 and FP8 exports load too."""

import json
from pathlib import Path

import pytest
import torch

from megatron_ads.checkpoint.convert import hf_to_mcore, mcore_to_hf
from megatron_ads.checkpoint.parity import run_parity_rank
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.train.loop import train_worker

pytestmark = pytest.mark.distributed
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny_cpu.yaml"


def _parity_worker(hf, kwargs):
    return run_parity_rank(hf, **kwargs)


def test_train_then_export_to_hf(tiny_ckpts, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = tiny_ckpts("tiny_deepseek_v3")
    hf_to_mcore(hf, tmp_path / "m", ParallelConfig(pp=2, ep=2, stage_layers=[1, 3]), progress=False)
    run = tmp_path / "run"
    job = JobConfig.load(TINY, [f"out_dir={run}", "train.steps=3", "model.init=mcore", f"model.path={tmp_path / 'm'}"])
    spawn(train_worker, 4, job.to_dict())
    step3 = run / "checkpoints" / "step_0000003"
    assert (step3 / "tokenizer" / "tokenizer.json").is_file()

    # `latest` resolves to the newest step; fp32 keeps the trained weights exactly
    r = mcore_to_hf(run / "checkpoints" / "latest", tmp_path / "hf32", dtype="fp32", progress=False)
    assert r["tensors"] > 0
    exported = tmp_path / "hf32"
    # the trained weights moved: the export differs from the initial checkpoint
    from megatron_ads.checkpoint.verify import compare

    assert not compare(hf, exported)["equal"]

    # our model at pp2 x ep2 from the training checkpoint vs transformers on the export (pp1 x ep2: next test)
    rep = spawn(_parity_worker, 4, str(exported), dict(pp=2, ep=2, stage_layer_counts=[1, 3], mcore_dir=str(step3)))[0]
    assert rep["max_abs_diff"] <= 1e-5 and rep["argmax_agreement"] == 1.0, rep["max_abs_diff"]

    tok = AutoTokenizer.from_pretrained(exported)
    model = AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32)
    ids = torch.tensor([[5, 17, 42, 9]])
    out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 10) and tok.decode(out[0]) is not None

    for dtype in ("bf16", "fp8"):
        mcore_to_hf(step3, tmp_path / f"hf_{dtype}", dtype=dtype, progress=False)
        cfg = json.loads((tmp_path / f"hf_{dtype}" / "config.json").read_text())
        assert ("quantization_config" in cfg) == (dtype == "fp8")
        m = AutoModelForCausalLM.from_pretrained(tmp_path / f"hf_{dtype}", dtype=torch.bfloat16)
        logits = m(ids).logits
        assert torch.isfinite(logits).all()


def test_train_from_a_transformers_saved_checkpoint(hf_saved, tmp_path):
    """transformers' save_pretrained declares one MTP layer and writes none: mtp=auto trains without it
    (one warning), the checkpoint records it, and the export is transformers-runnable at parity."""
    from megatron_ads.cli import main

    hf = hf_saved("ds_qlora")
    base = [f"model.path={hf}", "model.init=hf", "parallel.pp=1", "parallel.stage_layers=null", "train.steps=2"]
    assert main(["train", "lm", "--config", str(TINY), "--nproc", "2", f"out_dir={tmp_path / 'run'}", *base]) == 0
    step = tmp_path / "run" / "checkpoints" / "step_0000002"
    assert json.loads((step / "layout.json").read_text())["mtp_layers"] == 0
    assert json.loads((step / "hf_config.json").read_text())["num_nextn_predict_layers"] == 0
    assert main(["train", "lm", "--config", str(TINY), "--mtp", "require", f"out_dir={tmp_path / 'req'}", *base]) == 2
    mcore_to_hf(tmp_path / "run", tmp_path / "hf", dtype="fp32", progress=False)
    rep = spawn(_parity_worker, 2, str(tmp_path / "hf"), {"ep": 2, "mcore_dir": str(step)})[0]
    assert rep["max_abs_diff"] <= 1e-5 and rep["argmax_agreement"] == 1.0
