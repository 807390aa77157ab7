"""`train sft`: reweighted multi-task loss, validation by label scoring (also through a pipeline), exact resume."""

import json
from pathlib import Path

import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.cli.workers import sft_worker

pytestmark = pytest.mark.distributed
CFG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml"
SMALL = ["train.seq_len=192", "train.micro_batch=4", "sft.train_size=200", "sft.val_rows=6", "sft.eval_every=3",
         "optim.warmup_steps=2"]


def _lines(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines()]


@pytest.mark.slow  # ~40 s on a busy 2-core machine
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
    # held-out test report: predictions in the eval format, scored by the `eval` command's code path
    ev = tmp_path / "pp" / "eval"
    report = json.loads((ev / "report.json").read_text())
    assert report["query_ad"]["n"] == 20 and report["ad_user"]["n"] == 20 and report["query_ad"]["malformed"] == 0
    from megatron_ads.data.tasks import task
    from megatron_ads.eval.metrics import evaluate

    again = evaluate(task("ad_user").metric, ev / "ad_user.pred.jsonl", ev / "ad_user.gold.jsonl")
    assert again["AUC"] == report["ad_user"]["AUC"] and "| view | DR |" in (ev / "report.md").read_text()
    pred = _lines(ev / "query_ad.pred.jsonl")[0]
    assert abs(sum(pred["probs"]["relevance"].values()) - 1) < 1e-6 and pred["labels"]["relevance"] in ("bad", "fair", "good")


def test_sft_general_task_sampling_mode_and_plots(tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"id": f"g{i}", "prompt": f"Spell the number {i}.", "response": str(i)}) + "\n"
                               for i in range(50)))
    from megatron_ads.data.synthetic import SyntheticConfig, generate, write_jsonl

    own = tmp_path / "own_query_ad.jsonl"  # a user's own labeled query-ad file replaces the synthetic corpus
    write_jsonl(generate("query_ad", SyntheticConfig(size=100, seed=9)), own)
    job = JobConfig.load(CFG, [f"out_dir={tmp_path / 'g'}", *SMALL, "train.steps=4", "sft.eval_every=2",
                               f"sft.files.query_ad.train={own}",
                               "train.micro_batch=8", f"sft.general_path={general}", "sft.general_weight=0.5",
                               "sft.task_weighting=sampling", "checkpoint.save_at_end=false"])
    spawn(sft_worker, 1, job.to_dict())
    val = _lines(tmp_path / "g" / "val_metrics.jsonl")
    assert len(val) == 2
    for v in val:
        assert v["lambda/general"] == 0.5
        assert abs(v["lambda/query_ad"] + v["lambda/ad_user"] - 0.5) < 1e-9
        mix = v["weights"]["samples_by_task"]
        assert sum(mix.values()) == 16 and 3 <= mix["general"] <= 13, mix
        assert sum(v["weights"]["counts"]) == 16
    assert json.loads((tmp_path / "g" / "eval" / "report.json").read_text())["query_ad"]["n"] == 10  # 10% of 100
    assert {r["id"] for r in _lines(tmp_path / "g" / "eval" / "query_ad.gold.jsonl")} <= {f"qa9-{i}" for i in range(100)}
    plots = {p.name for p in (tmp_path / "g" / "plots").iterdir()}
    assert {"loss.png", "lambda.png", "val_metrics.png", "weights_step2.png", "weights_step4.png"} <= plots


@pytest.mark.slow  # ~7 min on a busy 2-core machine
def test_harder_task_gets_rising_lambda(tmp_path):
    """query_ad's quality attribute (a local cue) is learned within a few hundred steps; ad_user's labels are pure
    noise (label_noise=1), so its AUC stays near 0.5 and Eq. 7 moves weight to it at every interval."""
    job = JobConfig.load(CFG, [f"out_dir={tmp_path / 'h'}", "train.seq_len=128", "train.micro_batch=16",
                               "sft.train_size=2000", "sft.val_rows=64", "sft.label_only_fraction=1.0",
                               "train.steps=450", "sft.eval_every=150", "optim.warmup_steps=5",
                               "sft.task_metric.query_ad=quality_BACC", "sft.synthetic.query_ad.defect_rate=0.5",
                               "sft.synthetic.ad_user.label_noise=1.0", "sft.prompt_loss_weight=0.0", "sft.test_rows=0",
                               "optim.lr=0.001", "optim.min_lr=0.0001", "checkpoint.save_at_end=false"])
    spawn(sft_worker, 1, job.to_dict())
    val = _lines(tmp_path / "h" / "val_metrics.jsonl")
    lam = [v["lambda/ad_user"] for v in val]
    assert len(lam) == 3
    # learned, not chance (0.5): at lr 1e-3 the attribute is learned by step 300 (BACC 0.87-0.88) and exactly at 450
    # (1.0) with either attention kernel; at lr 3e-3 it was learned late and erratically (0.5-0.72 at 450 depending
    # on the thread count and the attention kernel, 0.53 at 600 steps), a bound on the timing of a jump
    assert val[-1]["query_ad/quality_BACC"] > 0.8, [v["query_ad/quality_BACC"] for v in val]
    assert lam[-1] > lam[0] + 0.1 and lam[-1] > 0.75, lam


def _generate_worker(job_dict):
    import torch

    from megatron_ads.cli.workers import sft_trainer
    from megatron_ads.data.tasks import task

    tr = sft_trainer(job_dict)
    tr.run()
    spec = task("query_gen")
    prompts = [spec.prompt(r) + "<think></think>\n" for r in tr.data["query_gen"]["val"][:3]]
    with tr.predicting() as scorer:
        generated = [g.output_ids for g in scorer.generate_full(prompts, 10)]
        texts = scorer.generate(prompts, 10)
    consistent = None
    if tr.ps.get_pipeline_model_parallel_world_size() == 1:  # greedy = argmax of one full forward, token by token
        consistent = True
        tr.model.eval()
        for p, gen in zip(prompts, generated):
            ids = tr.tokenizer(p, add_special_tokens=False)["input_ids"][-(tr.job.train.seq_len - 10):]
            seq = torch.tensor([ids + gen + [tr.tokenizer.pad_token_id] * (tr.job.train.seq_len - len(ids) - len(gen))])
            with torch.no_grad():
                logits = tr.model(seq, torch.arange(seq.shape[1]).unsqueeze(0), None)
            arg = logits[0, len(ids) - 1:len(ids) + len(gen) - 1].argmax(-1).tolist()
            consistent &= arg == gen
            if arg != gen:
                print("MISMATCH", len(ids), arg, gen, flush=True)
    return {"texts": texts, "ids": generated, "consistent": consistent}


# ~25 s on a busy 2-core machine (~4 min when validation re-ran the full sequence per generated token)
def test_greedy_generation_and_query_gen_validation(tiny_ckpts, tmp_path):
    # same HF weights for both layouts (random init differs per pipeline rank), so their greedy texts must agree
    # sft.synthetic={}: the config's query_ad corpus settings do not apply to a query_gen-only run
    common = [*SMALL, "sft.tasks=[query_gen]", "sft.synthetic={}", "train.steps=2", "sft.eval_every=2",
              "checkpoint.save_at_end=false",
              "model.init=hf", f"model.path={tiny_ckpts('tiny_deepseek_v3')}"]
    one = spawn(_generate_worker, 1, JobConfig.load(CFG, [f"out_dir={tmp_path / 'a'}", *common]).to_dict())[0]
    two = spawn(_generate_worker, 2, JobConfig.load(CFG, [f"out_dir={tmp_path / 'b'}", *common,
                                                          "parallel.pp=2"]).to_dict())
    assert one["consistent"] is True
    assert two[0]["ids"] == two[1]["ids"] == one["ids"]  # every rank, and the pipeline, agree
    assert two[0]["texts"] == one["texts"] and all(len(g) >= 1 for g in one["ids"])
    val = _lines(tmp_path / "a" / "val_metrics.jsonl")[-1]
    for key in ("query_gen/Relevance", "query_gen/Diversity", "query_gen/Difficulty", "query_gen/malformed"):
        assert 0.0 <= val[key] <= 1.0
    assert val["lambda/query_gen"] == 1.0
    report = json.loads((tmp_path / "a" / "eval" / "report.json").read_text())["query_gen"]
    assert report["n"] == 20 and 0.0 <= report["Relevance"] <= 1.0  # held-out test split, greedy predictions


def test_prompt_loss_weight_reaches_the_trained_loss(tmp_path):
    common = [*SMALL, "train.steps=1", "sft.eval_every=1", "sft.test_rows=0", "checkpoint.save_at_end=false"]
    losses = []
    for rho in (0.0, 0.5):
        spawn(sft_worker, 1, JobConfig.load(CFG, [f"out_dir={tmp_path / str(rho)}", *common,
                                                  f"sft.prompt_loss_weight={rho}"]).to_dict())
        losses.append(_lines(tmp_path / str(rho) / "metrics.jsonl")[0]["loss"])
    # same init and batch: the difference is ρ × the prompt tokens' mean NLL (≈ ln(vocab) ≈ 6.9 at init)
    assert 2.0 < losses[1] - losses[0] < 5.0, losses
