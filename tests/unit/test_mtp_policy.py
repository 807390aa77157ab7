"""MTP policy (require | auto | drop) and checkpoints written by transformers' own save_pretrained:
they declare num_nextn_predict_layers=1 (the config default) and hold no MTP tensors."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_ads.checkpoint.convert import hf_to_mcore, mcore_to_hf, reshard
from megatron_ads.checkpoint.hf_init import quantize_checkpoint_fp8
from megatron_ads.checkpoint.hf_io import CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.load import load_hf_into_chunk
from megatron_ads.checkpoint.mapping import RankCoord
from megatron_ads.checkpoint.megatron_io import LATEST, MegatronAsHF, read_layout
from megatron_ads.checkpoint.mtp import expected_mtp_tensors, resolve_mtp
from megatron_ads.checkpoint.verify import compare
from megatron_ads.cli import main
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.config.train import JobConfig, ModelSpec

Q = dict(progress=False)


def _warnings(caplog):
    return [r for r in caplog.records if r.name == "megatron_ads" and r.levelno >= logging.WARNING]


def test_resolve_mtp_policies_on_a_transformers_checkpoint(hf_saved, caplog):
    hf = hf_saved("ds_qlora", "bf16")
    ck, cfg = HFCheckpoint(hf), ModelConfig.from_hf(hf)
    assert cfg.num_mtp_layers == 1 and not any(k.startswith("model.layers.3.") for k in ck.keys())
    with caplog.at_level(logging.INFO, logger="megatron_ads"):
        built, reason = resolve_mtp(cfg, ck, "auto")
    assert built.num_mtp_layers == 0 and built.hf_config["num_nextn_predict_layers"] == 0
    assert cfg.num_mtp_layers == 1  # the caller's config is not modified
    assert "num_nextn_predict_layers=1" in reason and str(hf) in reason
    (line,) = _warnings(caplog)
    assert line.getMessage() == reason and "\n" not in reason
    with pytest.raises(CheckpointError, match=r"num_nextn_predict_layers=1.*mtp=require"):
        resolve_mtp(cfg, ck, "require")
    assert resolve_mtp(cfg, ck, "drop")[0].num_mtp_layers == 0
    with pytest.raises(ValueError, match="mtp: expected one of require, auto, drop"):
        resolve_mtp(cfg, ck, "sometimes")
    # no checkpoint (random init): only drop changes the config
    assert resolve_mtp(cfg, None, "auto") == (cfg, None) and resolve_mtp(cfg, None, "require") == (cfg, None)
    assert resolve_mtp(cfg, None, "drop")[0].num_mtp_layers == 0
    # a family without MTP is never changed
    llama = hf_saved("llama_tied", "bf16")
    lcfg = ModelConfig.from_hf(llama)
    assert resolve_mtp(lcfg, HFCheckpoint(llama), "require") == (lcfg, None)


def test_expected_mtp_tensors_come_from_the_registry(hf_saved):
    q = expected_mtp_tensors(ModelConfig.from_hf(hf_saved("ds_qlora", "bf16")))  # 3 layers: MTP is layer 3
    assert {"model.layers.3.enorm.weight", "model.layers.3.eh_proj.weight", "model.layers.3.self_attn.q_a_proj.weight",
            "model.layers.3.mlp.experts.7.down_proj.weight",
            "model.layers.3.mlp.gate.e_score_correction_bias"} <= set(q)
    assert all(k.startswith("model.layers.3.") for k in q)
    nq = expected_mtp_tensors(ModelConfig.from_hf(hf_saved("ds_noqlora", "bf16")))  # 4 layers, no q_lora
    assert "model.layers.4.self_attn.q_proj.weight" in nq and not any("q_a_proj" in k for k in nq)


@pytest.mark.parametrize("name, par", [
    ("ds_qlora", ParallelConfig(pp=2, ep=2)),
    ("ds_noqlora", ParallelConfig(pp=2, ep=4, stage_layers=[1, 3])),
    ("ds_groups4", ParallelConfig(pp=2, ep=4)),
    ("llama_tied", ParallelConfig(tp=2, pp=2)),
    ("llama_hd", ParallelConfig(tp=2, pp=3)),
    ("qwen2", ParallelConfig(pp=2)),
])
def test_transformers_checkpoint_round_trip_is_bit_exact(name, par, hf_saved, tmp_path, caplog, capsys):
    hf = hf_saved(name, "bf16")
    cmd = ["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "m"), "--tp", str(par.tp),
           "--pp", str(par.pp), "--ep", str(par.ep), "--quiet"]
    if par.stage_layers:
        cmd += ["--stage-layers", ",".join(map(str, par.stage_layers))]
    with caplog.at_level(logging.INFO, logger="megatron_ads"):
        assert main(cmd) == 0
    layout = json.loads((tmp_path / "m" / "layout.json").read_text())
    assert layout["mtp_layers"] == 0
    warned = _warnings(caplog)
    if name.startswith("ds_"):
        assert len(warned) == 1 and "num_nextn_predict_layers=1" in warned[0].getMessage()
        assert layout["mtp_reason"] == warned[0].getMessage()
        assert read_layout(tmp_path / "m").info["mtp_reason"] == layout["mtp_reason"]
    else:
        assert not warned and "mtp_reason" not in layout
    assert main(["convert", "mcore-to-hf", "--mcore", str(tmp_path / "m"), "--out", str(tmp_path / "hf"),
                 "--quiet"]) == 0
    capsys.readouterr()
    assert main(["verify", "checkpoints", str(hf), str(tmp_path / "hf"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["equal"] and report["tensors_a"] == len(HFCheckpoint(hf).weight_map), report
    back_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert back_cfg.get("num_nextn_predict_layers", 0) == 0  # the export says what it holds


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora"])
def test_fp8_transformers_checkpoint_round_trip_is_code_exact(name, hf_saved, tmp_path):
    src = tmp_path / "fp8"
    shutil.copytree(hf_saved(name, "bf16"), src)
    assert quantize_checkpoint_fp8(src) > 10
    hf_to_mcore(src, tmp_path / "m", ParallelConfig(pp=2, ep=2), **Q)
    assert read_layout(tmp_path / "m").info["mtp_layers"] == 0
    mcore_to_hf(tmp_path / "m", tmp_path / "back", dtype="fp8", **Q)
    a, b = HFCheckpoint(src), HFCheckpoint(tmp_path / "back")
    assert set(a.weight_map) == set(b.weight_map)
    n = 0
    for k in a.keys():
        if a.is_fp8(k):
            assert torch.equal(a.raw(k).view(torch.uint8), b.raw(k).view(torch.uint8)), k
            assert torch.allclose(a.raw(k + "_scale_inv"), b.raw(k + "_scale_inv"), rtol=2 ** -8, atol=0), k
            n += 1
        else:
            assert torch.equal(a.raw(k), b.raw(k)), k
    assert n > 10


def test_require_refuses_a_checkpoint_without_mtp_tensors(hf_saved, tmp_path, capsys, monkeypatch):
    hf = str(hf_saved("ds_noqlora", "bf16"))
    assert main(["convert", "hf-to-mcore", "--hf", hf, "--out", str(tmp_path / "m"), "--mtp", "require",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert hf in err and "num_nextn_predict_layers=1" in err and "model.layers.4.eh_proj.weight" in err
    assert not (tmp_path / "m").exists()
    # verify parity refuses before starting any worker
    import megatron_ads.runtime.launch as launch

    def no_spawn(*a, **k):
        raise AssertionError("spawned")

    monkeypatch.setattr(launch, "spawn", no_spawn)
    assert main(["verify", "parity", "--hf", hf, "--mtp", "require"]) == 2
    assert "mtp=require" in capsys.readouterr().err
    # a chunk cannot be loaded with a config that still has the absent MTP layer
    with pytest.raises(CheckpointError, match="num_nextn_predict_layers=1"):
        load_hf_into_chunk(torch.nn.Module(), HFCheckpoint(hf), ModelConfig.from_hf(hf), ParallelConfig(), RankCoord())


def test_parity_cli_passes_the_policy_to_the_ranks(hf_saved, capsys, monkeypatch):
    import megatron_ads.runtime.launch as launch

    seen = {}

    def fake_spawn(fn, nproc, hf, kwargs):
        seen.update(kwargs, nproc=nproc)
        return [{"max_abs_diff": 0.0, "mtp_layers": 0}]

    monkeypatch.setattr(launch, "spawn", fake_spawn)
    assert main(["verify", "parity", "--hf", str(hf_saved("ds_qlora", "bf16")), "--mtp", "drop", "--pp", "2",
                 "--ep", "2", "--json"]) == 0
    assert seen["mtp"] == "drop" and seen["nproc"] == 4
    capsys.readouterr()


def _without(src, dst, drop: set[str]):
    dst.mkdir()
    shutil.copy2(src / "config.json", dst / "config.json")
    tensors = load_file(str(src / "model.safetensors"))
    assert drop <= set(tensors)
    save_file({k: v for k, v in tensors.items() if k not in drop}, str(dst / "model.safetensors"))
    return dst


def test_partly_present_mtp_tensors_are_listed(tiny_ckpts, tmp_path, capsys):
    removed = {"model.layers.4.eh_proj.weight", "model.layers.4.self_attn.kv_b_proj.weight",
               "model.layers.4.mlp.experts.3.up_proj.weight"}
    part = _without(tiny_ckpts("tiny_deepseek_v3_mtp", dtype="bf16"), tmp_path / "part", removed)
    ck, cfg = HFCheckpoint(part), ModelConfig.from_hf(part)
    n = len(expected_mtp_tensors(cfg))
    for policy in ("auto", "require"):
        with pytest.raises(CheckpointError) as exc:
            resolve_mtp(cfg, ck, policy)
        msg = str(exc.value)
        assert str(part) in msg and f"only {n - 3} of the {n} MTP tensors" in msg and "missing (3)" in msg
        assert all(name in msg for name in removed), msg
    assert main(["convert", "hf-to-mcore", "--hf", str(part), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in removed), err
    # drop converts whatever is there, skipping the MTP layer on purpose
    hf_to_mcore(part, tmp_path / "d", ParallelConfig(pp=2), mtp="drop", **Q)
    assert (tmp_path / "d" / LATEST).is_file()


def test_drop_on_our_mtp_flavor(tiny_ckpts, tmp_path, caplog):
    hf = tiny_ckpts("tiny_deepseek_v3_mtp", dtype="bf16")
    cfg, ck = ModelConfig.from_hf(hf), HFCheckpoint(hf)
    assert resolve_mtp(cfg, ck, "require") == (cfg, None) and resolve_mtp(cfg, ck, "auto") == (cfg, None)
    mtp_keys = sorted(k for k in ck.weight_map if k.startswith("model.layers.4."))
    assert len(mtp_keys) > len(expected_mtp_tensors(cfg))  # incl. the embed/head copies
    with caplog.at_level(logging.INFO, logger="megatron_ads"):
        r = hf_to_mcore(hf, tmp_path / "m", ParallelConfig(pp=2, ep=2), mtp="drop", **Q)
    assert not _warnings(caplog)  # an explicit choice: logged at info
    assert r["mtp_layers"] == 0
    lay = read_layout(tmp_path / "m")
    assert lay.info["mtp_layers"] == 0 and lay.info["mtp_reason"].startswith("mtp=drop") and lay.cfg.num_mtp_layers == 0
    view = MegatronAsHF(tmp_path / "m")
    assert not any(k.startswith("model.layers.4.") for k in view.keys())
    assert not any(k.startswith("mtp.") for s in view.shards.values() for k in s.keys())
    mcore_to_hf(tmp_path / "m", tmp_path / "hf", **Q)
    report = compare(hf, tmp_path / "hf")
    assert report["only_in_a"] == mtp_keys and not report["only_in_b"] and not report["mismatched"]
    # a reshard keeps the record of the drop
    reshard(tmp_path / "m", tmp_path / "r", ParallelConfig(pp=1, ep=4), **Q)
    assert read_layout(tmp_path / "r").info["mtp_reason"] == lay.info["mtp_reason"]


def test_group_limited_routing_megatron_cannot_reproduce_is_refused():
    import transformers

    from megatron_ads.model.build import check_supported

    hf = transformers.DeepseekV3Config(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=2).to_dict()
    with pytest.raises(ValueError, match="group-limited routing.*num_experts_per_tok=2, topk_group=2"):
        check_supported(ModelConfig.from_hf_dict(hf))


def test_model_spec_mtp_field(tmp_path):
    assert ModelSpec().mtp == "auto" and ModelSpec(mtp="drop").mtp == "drop"
    with pytest.raises(ValueError, match="model.mtp: expected one of require, auto, drop, got 'sometimes'"):
        ModelSpec(mtp="sometimes")
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    assert JobConfig.load(path, ["model.mtp=require"]).model.mtp == "require"
    with pytest.raises(ValueError, match="model.mtp"):
        JobConfig.load(path, ["model.mtp=never"])
