"""Checkpoint conversion: exact round trips, FP8 formulas, reshard, accounting and named errors."""

import json

import pytest
import torch

from megatron_ads.checkpoint.convert import hf_to_mcore, mcore_to_hf, reshard
from megatron_ads.checkpoint.hf_io import CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.megatron_io import LATEST, MegatronAsHF
from megatron_ads.checkpoint.verify import compare
from megatron_ads.cli import main
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.kernels.fp8 import block_dequant, block_quant

Q = dict(progress=False)


@pytest.mark.parametrize("name, par", [
    ("tiny_deepseek_v3", ParallelConfig()),
    ("tiny_deepseek_v3", ParallelConfig(pp=2, ep=2)),
    ("tiny_deepseek_v3", ParallelConfig(pp=3, ep=2, stage_layers=[1, 1, 2])),
    ("tiny_deepseek_v2_lite", ParallelConfig(pp=2, ep=4)),
    ("tiny_deepseek_v3_mtp", ParallelConfig(pp=2, ep=2)),  # DeepSeek MTP layer, incl. its embed/head copies
    ("tiny_llama", ParallelConfig(tp=2, pp=2)),
    ("tiny_qwen2", ParallelConfig(tp=2, pp=2)),
])
def test_bf16_round_trip_is_bit_identical(name, par, tiny_ckpts, tmp_path):
    hf = tiny_ckpts(name, dtype="bf16")
    r = hf_to_mcore(hf, tmp_path / "m", par, **Q)
    assert (tmp_path / "m" / LATEST).is_file() and r["shards"] == par.tp * par.pp * par.ep
    mcore_to_hf(tmp_path / "m", tmp_path / "hf", **Q)
    report = compare(hf, tmp_path / "hf")
    assert report["equal"], report
    assert report["tensors_a"] == len(HFCheckpoint(hf).weight_map)


def test_fp8_source_dequantizes_by_the_formula(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3", fp8=True, dtype="bf16")
    hf_to_mcore(hf, tmp_path / "m", ParallelConfig(pp=2, ep=2), **Q)
    src, view = HFCheckpoint(hf), MegatronAsHF(tmp_path / "m")
    fp8 = [k for k in src.keys() if src.is_fp8(k)]
    assert len(fp8) > 50
    for k in fp8:
        expect = block_dequant(src.raw(k), src.raw(k + "_scale_inv"))
        assert torch.equal(view.get(k), expect), k
        assert view.get(k).dtype == torch.bfloat16


def test_fp8_round_trips(tiny_ckpts, tmp_path):
    # FP8 -> Megatron BF16 -> FP8 reproduces the E4M3 codes, scales to bf16 precision
    hf8 = tiny_ckpts("tiny_deepseek_v3", fp8=True, dtype="bf16")
    hf_to_mcore(hf8, tmp_path / "m8", ParallelConfig(pp=2, ep=2), **Q)
    mcore_to_hf(tmp_path / "m8", tmp_path / "back8", dtype="fp8", **Q)
    a, b = HFCheckpoint(hf8), HFCheckpoint(tmp_path / "back8")
    assert set(a.weight_map) == set(b.weight_map)
    for k in a.keys():
        if a.is_fp8(k):
            assert torch.equal(a.raw(k).view(torch.uint8), b.raw(k).view(torch.uint8)), k
            assert torch.allclose(a.raw(k + "_scale_inv"), b.raw(k + "_scale_inv"), rtol=2 ** -8, atol=0)
        else:
            assert torch.equal(a.raw(k), b.raw(k)), k
    assert json.loads((tmp_path / "back8" / "config.json").read_text())["quantization_config"]["fmt"] == "e4m3"
    # BF16 weights -> FP8 -> dequant: within one FP8 quantization step
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "m", ParallelConfig(), **Q)
    mcore_to_hf(tmp_path / "m", tmp_path / "q8", dtype="fp8", **Q)
    src, q8 = HFCheckpoint(hf), HFCheckpoint(tmp_path / "q8")
    n = 0
    for k in src.keys():
        if q8.is_fp8(k):
            w, back = src.get(k).float(), q8.get(k).float()
            scale = q8.raw(k + "_scale_inv").repeat_interleave(128, 0)[: w.shape[0]].repeat_interleave(128, 1)[:, : w.shape[1]]
            step = torch.maximum(w.abs() * 2 ** -3, scale * 2 ** -9)  # E4M3: 3 mantissa bits; subnormal floor
            assert ((back - w).abs() <= step + w.abs() * 2 ** -8).all(), k
            n += 1
    assert n > 50


def test_reshard_equals_direct_conversion(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "a", ParallelConfig(pp=2, ep=2), **Q)
    target = ParallelConfig(pp=3, ep=4, stage_layers=[1, 2, 1])
    reshard(tmp_path / "a", tmp_path / "b", target, **Q)
    hf_to_mcore(hf, tmp_path / "direct", target, **Q)
    report = compare(tmp_path / "b", tmp_path / "direct")
    assert report["equal"] and report["tensors_a"] > 100, report


def test_dense_reshard_across_tp(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_qwen2", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "a", ParallelConfig(tp=2, pp=2), **Q)
    reshard(tmp_path / "a", tmp_path / "b", ParallelConfig(tp=1, pp=1), **Q)
    hf_to_mcore(hf, tmp_path / "direct", ParallelConfig(), **Q)
    assert compare(tmp_path / "b", tmp_path / "direct")["equal"]


def test_missing_scale_is_a_named_error_and_nothing_is_complete(tiny_ckpts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "broken"
    shutil.copytree(tiny_ckpts("tiny_deepseek_v3", fp8=True, dtype="bf16"), src)
    f = src / "model.safetensors"
    tensors = load_file(str(f))
    victim = "model.layers.2.mlp.experts.3.down_proj.weight_scale_inv"
    del tensors[victim]
    save_file(tensors, str(f))
    out = tmp_path / "out"
    assert main(["convert", "hf-to-mcore", "--hf", str(src), "--out", str(out), "--quiet"]) == 2
    assert not (out / LATEST).exists()


def test_shape_disagreeing_with_config_is_named(tiny_ckpts, tmp_path, capsys):
    import shutil

    src = tmp_path / "bad"
    shutil.copytree(tiny_ckpts("tiny_llama", dtype="bf16"), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", "hf-to-mcore", "--hf", str(src), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "config.json implies" in capsys.readouterr().err


def test_truncated_shard_is_named(tiny_ckpts, tmp_path, capsys):
    import shutil

    src = tmp_path / "trunc"
    shutil.copytree(tiny_ckpts("tiny_llama", dtype="bf16"), src)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert main(["convert", "hf-to-mcore", "--hf", str(src), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "model.safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("args, needle", [(["--ep", "3"], "ep"), (["--pp", "5"], "pp"), (["--tp", "2"], "tp")])
def test_plan_not_matching_model(args, needle, tiny_ckpts, tmp_path, capsys):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    assert main(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "o"), "--quiet"] + args) == 2
    assert needle in capsys.readouterr().err.split("error:")[1]


def test_refuses_nonempty_out_and_incomplete_mcore(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_llama", dtype="bf16")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("1")
    with pytest.raises(FileExistsError):
        hf_to_mcore(hf, tmp_path / "o", ParallelConfig(), **Q)
    hf_to_mcore(hf, tmp_path / "m", ParallelConfig(), **Q)
    (tmp_path / "m" / LATEST).unlink()
    with pytest.raises(CheckpointError, match="not a complete Megatron checkpoint"):
        mcore_to_hf(tmp_path / "m", tmp_path / "h", **Q)


def test_plan_json_drives_conversion_and_megatron_lm_pt(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    assert main(["plan", "--hf-config", str(hf), "--nodes", "1", "--gpus-per-node", "4", "--pp", "2", "--ep", "2",
                 "--tp", "1", "--seq-len", "64", "--out", str(tmp_path / "plan.json"), "--json"]) == 0
    out = tmp_path / "m"
    assert main(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(out), "--plan", str(tmp_path / "plan.json"),
                 "--megatron-lm-pt", "--quiet"]) == 0
    layout = json.loads((out / "layout.json").read_text())
    assert layout["plan"]["pp"] == 2 and layout["ep"] == 2
    pt = torch.load(out / "iter_0000000" / "mp_rank_00_001_001" / "model_optim_rng.pt", weights_only=True)
    assert "decoder.layers.0.mlp.experts.local_experts.3.linear_fc1.weight" in pt["model"]


def test_verify_checkpoints_reports_both_ways(tiny_ckpts, tmp_path, capsys):
    hf = tiny_ckpts("tiny_llama", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "a", ParallelConfig(pp=2), **Q)
    hf_to_mcore(hf, tmp_path / "b", ParallelConfig(pp=2), **Q)
    assert main(["verify", "checkpoints", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert main(["verify", "checkpoints", str(hf), str(tmp_path / "a")]) == 2
    hf_to_mcore(hf, tmp_path / "c", ParallelConfig(pp=1), **Q)
    capsys.readouterr()
    assert main(["verify", "checkpoints", str(tmp_path / "a"), str(tmp_path / "c"), "--json"]) == 1
    r = json.loads(capsys.readouterr().out)
    assert r["only_in_a"] and r["only_in_b"] and not r["equal"]

