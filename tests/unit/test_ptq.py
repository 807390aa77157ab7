"""`megatron-ads quantize`: nvidia-modelopt per-tensor FP8 PTQ calibrated on a task's rows, exported in
modelopt's HF format (infer/ptq.py). Tolerances are 4x what was measured on these tiny random-weight
checkpoints (4 synthetic query_ad rows, fp32): such models are far more sensitive to FP8 than trained ones,
so the logits check only guards against a broken quantization; the exported weights are checked tightly."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from megatron_ads._compat import HAVE_MODELOPT
from megatron_ads.cli import main
from megatron_ads.data.synthetic import SyntheticConfig, generate, write_jsonl

needs_modelopt = pytest.mark.skipif(not HAVE_MODELOPT, reason="nvidia-modelopt not installed (quant extra)")

# measured (4 rows, fp32): relative L2 error of the logits, fake-quant vs original: tiny_llama 0.133,
# tiny_deepseek_v3 0.412 (0.340 from its block-FP8 copy; MoE routing flips); mean |diff| 0.077 / 0.194 / 0.141;
# next-token argmax agreement 0.82 / 0.55 / 0.68. Bounds: errors x4 (DeepSeek's rel L2 capped at 1.0: x4 would
# allow an error larger than the logits), agreement / 4.
LOGIT_REL_L2 = {"tiny_llama": 0.53, "tiny_deepseek_v3": 1.0}
LOGIT_MEAN_ABS = {"tiny_llama": 0.31, "tiny_deepseek_v3": 0.78}
MIN_AGREEMENT = {"tiny_llama": 0.2, "tiny_deepseek_v3": 0.13}


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "rows.jsonl"
    write_jsonl(generate("query_ad", SyntheticConfig(size=4, seed=0)), path)
    return path


def _args(model, calib, out):
    return ["quantize", "--model", str(model), "--task", "query_ad", "--calib", str(calib), "--n", "4",
            "--out", str(out), "--dtype", "fp32", "--json"]


def _check_export(src, out):
    """The export holds modelopt's quantization config and per-tensor FP8 weights that dequantize to the
    source weights within E4M3 rounding (relative 2^-4, plus the subnormal step near zero)."""
    hq = json.loads((out / "hf_quant_config.json").read_text())
    assert hq["quantization"]["quant_algo"] == "FP8" and "lm_head" in hq["quantization"]["exclude_modules"]
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["quant_method"] == "modelopt" and qc["quant_algo"] == "FP8"
    assert (out / "tokenizer.json").is_file() and (out / "ptq_report.json").is_file()
    q = safe_open(str(out / "model.safetensors"), "pt")
    ref = safe_open(str(src / "model.safetensors"), "pt")
    fp8 = [k for k in q.keys() if q.get_slice(k).get_dtype() == "F8_E4M3"]
    assert fp8 and all(k.endswith(".weight") for k in fp8)
    assert "lm_head.weight" not in fp8 and "model.embed_tokens.weight" not in fp8
    for k in fp8:
        base = k.removesuffix(".weight")
        scale = q.get_tensor(base + ".weight_scale")
        assert scale.numel() == 1 and q.get_tensor(base + ".input_scale").numel() == 1  # per tensor
        w, deq = ref.get_tensor(k).float(), q.get_tensor(k).float() * scale
        assert (deq - w).abs().le(w.abs() * 2.0**-4 + scale * 2.0**-9).all(), k
    return fp8


@needs_modelopt
@pytest.mark.parametrize("name", ["tiny_llama", "tiny_deepseek_v3"])
def test_quantize_exports_fp8_close_to_original(tiny_ckpts, calib, tmp_path, capsys, name):
    src, out = tiny_ckpts(name), tmp_path / "fp8"
    assert main(_args(src, calib, out)) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["calibration_rows"] == 4 and r["source"] == "dense" and r["quantized_modules"] > 0
    assert r["amax"]["weight"]["quantizers"] > 0 and r["amax"]["input"]["amax_min"] > 0
    fp8 = _check_export(src, out)
    if name == "tiny_deepseek_v3":  # fused routed experts exported per expert; the router stays unquantized
        assert any(".mlp.experts.7.down_proj.weight" in k for k in fp8)
        assert not any(k.endswith("mlp.gate.weight") for k in fp8)
    lg = r["logits"]
    assert lg["prompts"] == 4 and 0 < lg["max_rel_l2"] <= LOGIT_REL_L2[name], lg
    assert lg["mean_abs_diff"] <= LOGIT_MEAN_ABS[name], lg
    assert lg["argmax_agreement"] >= MIN_AGREEMENT[name], lg
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".ptq-*"))


@needs_modelopt
def test_quantize_block_fp8_source_is_dequantized_first(tiny_ckpts, calib, tmp_path, capsys):
    out = tmp_path / "fp8"
    assert main(_args(tiny_ckpts("tiny_deepseek_v3", fp8=True), calib, out)) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["source"] == "fp8" and r["logits"]["max_rel_l2"] <= LOGIT_REL_L2["tiny_deepseek_v3"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "modelopt"
    assert not list(tmp_path.glob(".ptq-*"))  # the dequantized copy is removed


@needs_modelopt
def test_quantize_console_is_clean(tiny_ckpts, calib, tmp_path, console_noise):
    """No third-party warning, bar or modelopt print on the console (stdout holds only the JSON)."""
    out = tmp_path / "fp8"
    p = subprocess.run([sys.executable, "-m", "megatron_ads", *_args(tiny_ckpts("tiny_llama"), calib, out)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": ""})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["out"] == str(out)
    assert console_noise(p.stdout, p.stderr) == []


def test_quantize_bad_input(tiny_ckpts, calib, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert main(_args(tiny_ckpts("tiny_llama"), calib, existing)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "query": "x"}\n')
    assert main(_args(tiny_ckpts("tiny_llama"), bad, tmp_path / "o")) == 2
    assert not (tmp_path / "o").exists()


def test_quantize_without_modelopt_names_the_install_command(tiny_ckpts, calib, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "modelopt", None)  # import modelopt -> ImportError
    out = tmp_path / "fp8"
    assert main(_args(tiny_ckpts("tiny_llama"), calib, out)) == 2
    assert "pip install 'megatron-ads[quant]'" in caplog.text
    assert not out.exists()
