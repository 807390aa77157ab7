"""HF <-> torch_dist (megatron-core dist_checkpointing) conversion: exact round trips, FP8 codes, reshard to
legacy, resume after a failure, DCP's own reader, completion marker and named errors."""

import json

import pytest
import torch

import megatron_ads.checkpoint.convert as convert
from megatron_ads.checkpoint.convert import JOURNAL, hf_to_mcore, mcore_to_hf, reshard
from megatron_ads.checkpoint.dist_io import DIST_METADATA, DistShard, dist_key, mcore_name_of, resolve_dir
from megatron_ads.checkpoint.hf_io import CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.megatron_io import MegatronAsHF, read_layout
from megatron_ads.checkpoint.verify import compare
from megatron_ads.cli import main
from megatron_ads.config.parallel import ParallelConfig

Q = dict(progress=False)


@pytest.mark.parametrize("name, ep", [
    ("tiny_deepseek_v3", 2),
    ("tiny_deepseek_v3_mtp", 2),  # MTP layer, incl. its embed/head copies
    ("tiny_deepseek_v2_lite", 4),
    ("tiny_llama", 1),
    ("tiny_qwen2", 1),
])
def test_bf16_round_trip_through_torch_dist_is_bit_identical(name, ep, tiny_ckpts, tmp_path):
    hf = tiny_ckpts(name, dtype="bf16")
    r = hf_to_mcore(hf, tmp_path / "d", ParallelConfig(ep=ep), format="torch_dist", **Q)
    assert r["format"] == "torch_dist" and (tmp_path / "d" / DIST_METADATA).is_file()
    assert not (tmp_path / "d" / JOURNAL).exists() and not list((tmp_path / "d").glob("*.tmp"))
    lay = read_layout(tmp_path / "d")
    assert lay.info["format"] == "torch_dist" and (lay.par.tp, lay.par.pp, lay.par.ep) == (1, 1, 1)
    if lay.cfg.is_moe:  # the routed experts of a layer: one file per EP rank's range
        assert len(list((tmp_path / "d").glob("*_experts*.distcp"))) == ep * sum(
            lay.cfg.is_moe_layer(i) for i in range(lay.cfg.num_layers)) + ep * lay.cfg.num_mtp_layers
    mcore_to_hf(tmp_path / "d", tmp_path / "hf", **Q)
    report = compare(hf, tmp_path / "hf")
    assert report["equal"], report
    assert report["tensors_a"] == len(HFCheckpoint(hf).weight_map)
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_dcp_reader_and_stacked_experts(tiny_ckpts, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "d", ParallelConfig(ep=2), format="torch_dist", **Q)
    key = "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"
    md = FileSystemReader(str(tmp_path / "d")).read_metadata()
    assert tuple(md.state_dict_metadata[key].size)[0] == 8 and len(md.state_dict_metadata[key].chunks) == 8
    sd = {key: torch.empty(md.state_dict_metadata[key].size, dtype=torch.bfloat16)}
    dcp.load(sd, storage_reader=FileSystemReader(str(tmp_path / "d")), no_dist=True)  # torch's own reader
    shard, src = DistShard(tmp_path / "d"), HFCheckpoint(hf)
    assert torch.equal(sd[key], shard.read(key))
    for e in range(8):  # expert e = [gate_e; up_e] of the HF checkpoint, read alone
        want = torch.cat([src.get(f"model.layers.1.mlp.experts.{e}.gate_proj.weight"),
                          src.get(f"model.layers.1.mlp.experts.{e}.up_proj.weight")])
        assert torch.equal(shard.read(key, e), want)
    assert dist_key("decoder.layers.2.mlp.experts.local_experts.5.linear_fc2.weight") == (
        "decoder.layers.2.mlp.experts.experts.linear_fc2.weight", 5)
    assert mcore_name_of(*dist_key("decoder.layers.2.mlp.experts.local_experts.5.linear_fc2.weight")) == \
        "decoder.layers.2.mlp.experts.local_experts.5.linear_fc2.weight"


def test_fp8_codes_survive_torch_dist(tiny_ckpts, tmp_path):
    hf8 = tiny_ckpts("tiny_deepseek_v3", fp8=True, dtype="bf16")
    hf_to_mcore(hf8, tmp_path / "d8", ParallelConfig(ep=2), format="torch_dist", **Q)
    mcore_to_hf(tmp_path / "d8", tmp_path / "back8", dtype="fp8", **Q)
    a, b = HFCheckpoint(hf8), HFCheckpoint(tmp_path / "back8")
    assert set(a.weight_map) == set(b.weight_map)
    n = 0
    for k in a.keys():
        if a.is_fp8(k):
            assert torch.equal(a.raw(k).view(torch.uint8), b.raw(k).view(torch.uint8)), k
            n += 1
    assert n > 50


def test_reshard_torch_dist_to_legacy_equals_direct(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    par = ParallelConfig(pp=2, ep=2, stage_layers=[1, 3])
    hf_to_mcore(hf, tmp_path / "d", ParallelConfig(), format="torch_dist", **Q)
    reshard(tmp_path / "d", tmp_path / "via_dist", par, **Q)
    hf_to_mcore(hf, tmp_path / "direct", par, **Q)
    assert compare(tmp_path / "direct", tmp_path / "via_dist")["equal"]
    # the CLI writes the same torch_dist checkpoint as the function
    assert main(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "d2"), "--format", "torch_dist",
                 "--quiet"]) == 0
    assert compare(tmp_path / "d", tmp_path / "d2")["equal"]


def test_resume_after_a_failed_file_matches_uninterrupted(tiny_ckpts, tmp_path, monkeypatch):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "ref", ParallelConfig(ep=2), format="torch_dist", **Q)
    real, calls = convert._run_dist_job, {"n": 0}

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return real(*args)

    monkeypatch.setattr(convert, "_run_dist_job", failing)
    with pytest.raises(OSError, match="simulated"):
        hf_to_mcore(hf, tmp_path / "out", ParallelConfig(ep=2), format="torch_dist", **Q)
    out = tmp_path / "out"
    assert not (out / DIST_METADATA).exists() and len((out / JOURNAL).read_text().splitlines()) == 3
    with pytest.raises(CheckpointError, match="not a complete Megatron checkpoint"):
        MegatronAsHF(out)
    monkeypatch.setattr(convert, "_run_dist_job", real)
    before = calls["n"]
    hf_to_mcore(hf, out, ParallelConfig(ep=2), format="torch_dist", resume=True, **Q)
    assert calls["n"] == before  # the journaled files were not written again (the real job ran the rest)
    assert compare(tmp_path / "ref", out)["equal"]
    with pytest.raises(FileExistsError, match="nothing to resume"):
        hf_to_mcore(hf, out, ParallelConfig(ep=2), format="torch_dist", resume=True, **Q)


def test_named_errors_and_run_directories(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_llama", dtype="bf16")
    with pytest.raises(ValueError, match="format: expected one of legacy, torch_dist"):
        hf_to_mcore(hf, tmp_path / "x", ParallelConfig(), format="zarr", **Q)
    hf_to_mcore(hf, tmp_path / "d", ParallelConfig(), format="torch_dist", **Q)
    # a training run's layout: RUN/checkpoints/{step_N, latest}
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (tmp_path / "d").rename(ckpts / "step_0000007")
    (ckpts / "latest").write_text("step_0000007\n")
    for p in (tmp_path / "run", ckpts, ckpts / "latest", ckpts / "step_0000007"):
        assert resolve_dir(p) == ckpts / "step_0000007"
    (ckpts / "step_0000007" / DIST_METADATA).unlink()  # as if the save had been interrupted
    with pytest.raises(CheckpointError, match="not a complete Megatron checkpoint"):
        resolve_dir(tmp_path / "run")
    assert main(["convert", "mcore-to-hf", "--mcore", str(ckpts / "step_0000007"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert json.loads((ckpts / "step_0000007" / "layout.json").read_text())["format"] == "torch_dist"
