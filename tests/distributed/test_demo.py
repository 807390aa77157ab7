"""``megatron-ads demo --fast``: the whole chain (init -> plan -> convert -> parity -> cook -> SFT -> GRPO -> export
-> FP8 label -> eval) at smoke sizes, with a clean console, the summary table and the run directory's README."""

import json

import pytest

from megatron_ads.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

STAGES = ("init-model (FP8)", "plan (DeepSeek-V3, 248 GPUs)", "convert hf-to-mcore (pp2 x ep2)",
          "convert mcore-to-hf (FP8)", "verify checkpoints", "verify parity (4 ranks)", "verify parity (1 process)",
          "cook query_ad", "cook ad_user", "cook query_gen", "train sft (4 ranks, cooked corpus)",
          "train grpo (1 process)", "export HF BF16", "export HF FP8", "label query_ad (FP8, label-only)",
          "label ad_user (FP8, label-only)", "label query_ad (FP8, reasoning)", "label query_gen (FP8, reasoning)",
          "eval query_ad", "eval ad_user", "eval query_gen", "eval tables + plots")


def test_demo_fast_runs_end_to_end(tmp_path, capfd, console_noise):
    run = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(run)]) == 0
    out, err = capfd.readouterr()  # file descriptors: the worker processes' output too
    assert console_noise(out, err) == []
    assert "all stages passed" in out and "pp=31 ep=8 dp=8" in out
    table = (run / "summary.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in table.splitlines()[2:]}
    for stage in STAGES:
        assert stage in rows, stage
        assert rows[stage][1].strip() == "0", rows[stage]
        assert float(rows[stage][2]) >= 0
    assert table in out  # the closing summary is printed
    assert "EQUAL" in rows["verify checkpoints"][3] and "max abs logit diff" in rows["verify parity (4 ranks)"][3]
    assert "Bad BACC" in rows["train sft (4 ranks, cooked corpus)"][3]
    assert "recall@K" in rows["train grpo (1 process)"][3]
    assert "samples/s" in rows["label query_ad (FP8, label-only)"][3]

    readme = (run / "README.md").read_text()
    for name in ("summary.md", "logs/", "mcore_pp2_ep2/", "cooked/", "sft/", "grpo/", "export_bf16/", "export_fp8/",
                 "label/", "eval/", "demo settings: a random teacher"):
        assert name in readme, name
    for name in ("cooked/cook_report.json", "cooked/query_gen.train.jsonl", "sft/eval/report.json",
                 "sft/plots/lambda.png", "grpo/metrics.jsonl", "export_bf16/config.json", "export_fp8/config.json",
                 "label/query_ad.pred.jsonl", "label/query_ad.reasoning.pred.jsonl", "label/query_gen.pred.jsonl",
                 "eval/query_ad.md", "eval/metrics.json", "eval/plots/headline.png"):
        assert (run / name).is_file(), name
    fp8 = json.loads((run / "export_fp8" / "config.json").read_text())
    assert fp8.get("quantization_config", {}).get("quant_method") == "fp8"
    assert set(json.loads((run / "eval" / "metrics.json").read_text())) == {"query_ad", "ad_user", "query_gen"}
    assert len(list((run / "logs").glob("*.txt"))) == len(rows) - 2  # every verb's output (not the eval summary row)
