"""tools/inspect_checkpoint.py and megatron_ads.checkpoint.inspect: HF (BF16 / FP8), legacy Megatron and
torch_dist checkpoints described from headers and metadata only, with totals that add up."""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_ads.checkpoint.convert import hf_to_mcore
from megatron_ads.checkpoint.dist_io import MEGATRON_DIST_METADATA, DistShard
from megatron_ads.checkpoint.hf_io import INDEX, SCALE_SUFFIX, CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.inspect import inspect_checkpoint, render_table
from megatron_ads.checkpoint.megatron_io import MegatronShard
from megatron_ads.config.parallel import ParallelConfig

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "inspect_checkpoint.py"
Q = dict(progress=False)
EXPERT = ".mlp.experts."


@pytest.fixture(scope="module")
def ckpts(tiny_ckpts, tmp_path_factory):
    """The tiny DeepSeek-V3 as HF bf16, HF FP8, legacy (pp=2 x ep=2), converted torch_dist (ep=2) and a
    training run whose torch_dist step carries optimizer moments and a pp=2 x ep=2 layout.json."""
    root = tmp_path_factory.mktemp("inspect")
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    out = {"hf": hf, "hf8": tiny_ckpts("tiny_deepseek_v3", fp8=True, dtype="bf16"),
           "legacy": root / "legacy", "dist": root / "dist", "run": root / "run"}
    hf_to_mcore(hf, out["legacy"], ParallelConfig(pp=2, ep=2), **Q)
    hf_to_mcore(hf, out["dist"], ParallelConfig(ep=2), format="torch_dist", **Q)
    _training_like_run(out["dist"], out["run"])
    return out


def _training_like_run(dist: Path, run: Path) -> None:
    """RUN/checkpoints/step_0000003 as a training save lays it out at the DCP level (model keys, Adam moments
    under optimizer.state.<moment>.<key>, a non-tensor object, common.pt, our layout.json of Trainer.layout_info)
    and the ``latest`` pointer."""
    import torch.distributed.checkpoint as dcp

    step = run / "checkpoints" / "step_0000003"
    shard = DistShard(dist)
    sd = {}
    for key in shard.global_keys():
        t = shard.read(key).float()
        sd[key] = t
        for moment in ("exp_avg", "exp_avg_sq"):
            sd[f"optimizer.state.{moment}.{key}"] = torch.full_like(t, 0.5)
    sd["optimizer.param_groups"] = [{"lr": 1e-3}]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
        dcp.save(sd, checkpoint_id=str(step), no_dist=True)
    torch.save({"trainer": {"step": 3, "nan_steps": 0, "data_position": 24}}, step / "common.pt")
    shutil.copy(dist / "hf_config.json", step / "hf_config.json")
    (step / "layout.json").write_text(json.dumps({
        "format": "torch_dist", "tp": 1, "pp": 2, "ep": 2, "stage_layers": [2, 2], "world_size": 4,
        "mtp_layers": 0, "model_type": "deepseek_v3", "step": 3}))
    (step / "metadata.json").write_text(json.dumps(MEGATRON_DIST_METADATA))
    (run / "checkpoints" / "latest").write_text("step_0000003\n")


def _data_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (its size less the 8-byte length and the JSON header)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
    return path.stat().st_size - 8 - header_len


def _sums(groups):
    return sum(g["tensors"] for g in groups), sum(g["params"] for g in groups), sum(g["bytes"] for g in groups)


def test_hf_bf16(ckpts):
    r = inspect_checkpoint(ckpts["hf"])
    ck = HFCheckpoint(ckpts["hf"])
    assert r["format"] == "hf" and r["problems"] == []
    assert [row["name"] for row in r["tensors"]] == ck.keys()
    assert r["totals"]["tensors"] == r["totals"]["keys"] == len(ck.weight_map) == 129
    assert r["totals"]["scales"] == r["totals"]["fp8_tensors"] == 0 and r["layout"]["fp8"] is None
    assert r["totals"]["params"] == sum(math.prod(ck.shape(k)) for k in ck.keys())
    assert r["totals"]["bytes"] == sum(_data_bytes(ckpts["hf"] / f) for f in set(ck.weight_map.values()))
    assert {row["dtype"] for row in r["tensors"]} == {"BF16"}
    assert _sums(r["groups"]["file"]) == (r["totals"]["tensors"], r["totals"]["params"], r["totals"]["bytes"])
    assert r["config"]["n_routed_experts"] == 8 and r["config"]["num_hidden_layers"] == 4


def test_hf_fp8_scale_shapes(ckpts):
    r = inspect_checkpoint(ckpts["hf8"])
    ck = HFCheckpoint(ckpts["hf8"])
    scales = [k for k in ck.weight_map if k.endswith(SCALE_SUFFIX)]
    assert r["problems"] == [] and len(r["tensors"]) == len(ck.keys())
    assert r["totals"]["keys"] == len(ck.weight_map) == r["totals"]["tensors"] + len(scales)
    fp8 = [row for row in r["tensors"] if row["scale_shape"] is not None]
    assert len(fp8) == len(scales) == r["totals"]["fp8_tensors"] == 104
    for row in fp8:
        m, n = row["shape"]
        assert row["dtype"] == "F8_E4M3" and row["scale_dtype"] == "F32"
        assert row["scale_shape"] == [math.ceil(m / 128), math.ceil(n / 128)]
    assert r["totals"]["bytes"] == _data_bytes(ckpts["hf8"] / "model.safetensors")
    assert r["layout"]["fp8"]["weight_block_size"] == [128, 128]
    assert "scale_inv" in render_table(r)


def test_hf_fp8_ragged_blocks_scales_in_another_file(tiny_ckpts, tmp_path):
    """Edge blocks (300 = 2*128 + 44) and scales in a second shard file, resolved through the index;
    a scale of the wrong shape is reported, naming it."""
    from megatron_ads.checkpoint.hf_init import write_random_checkpoint
    from megatron_ads.config.flavors import flavor_dict

    cfg = dict(flavor_dict("tiny_deepseek_v3"), hidden_size=160, intermediate_size=300, moe_intermediate_size=136,
               num_hidden_layers=2)
    single = tmp_path / "single"
    write_random_checkpoint(cfg, single, seed=7, dtype="bf16", fp8=True)
    split = tmp_path / "split"
    split.mkdir()
    shutil.copy(single / "config.json", split / "config.json")
    with safe_open(str(single / "model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    weights = {k: v for k, v in tensors.items() if not k.endswith(SCALE_SUFFIX)}
    scales = {k: v for k, v in tensors.items() if k.endswith(SCALE_SUFFIX)}
    save_file(weights, str(split / "model-00001-of-00002.safetensors"))
    save_file(scales, str(split / "model-00002-of-00002.safetensors"))
    wmap = {**{k: "model-00001-of-00002.safetensors" for k in weights},
            **{k: "model-00002-of-00002.safetensors" for k in scales}}
    (split / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": wmap}))

    r = inspect_checkpoint(split)
    assert r["problems"] == [] and r["totals"]["keys"] == len(tensors) and r["totals"]["files"] == 2
    rows = {row["name"]: row for row in r["tensors"]}
    gate = rows["model.layers.0.mlp.gate_proj.weight"]
    assert gate["shape"] == [300, 160] and gate["scale_shape"] == [3, 2]
    assert rows["model.layers.0.mlp.down_proj.weight"]["scale_shape"] == [2, 3]
    assert rows["model.layers.1.mlp.experts.0.up_proj.weight"]["scale_shape"] == [2, 2]  # 136 x 160
    f1, f2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    assert gate["file"] == f1 and gate["scale_file"] == f2
    for row in r["tensors"]:
        if row["scale_shape"] is not None:
            assert row["scale_shape"] == [math.ceil(x / 128) for x in row["shape"]]
    by_file = {g["file"]: g for g in r["groups"]["file"]}
    assert by_file[f2]["bytes"] == _data_bytes(split / f2)
    assert sum(g["bytes"] for g in by_file.values()) == r["totals"]["bytes"]

    scales["model.layers.0.mlp.gate_proj.weight_scale_inv"] = torch.ones(2, 2)
    save_file(scales, str(split / "model-00002-of-00002.safetensors"))
    bad = inspect_checkpoint(split)["problems"]
    assert len(bad) == 1 and "model.layers.0.mlp.gate_proj.weight_scale_inv" in bad[0] and "[3, 2]" in bad[0]


def test_legacy_per_stage_and_ep_rank(ckpts):
    d = ckpts["legacy"]
    r = inspect_checkpoint(d)
    assert r["format"] == "legacy" and r["problems"] == []
    base = d / "iter_0000000"
    shards = {p.name: MegatronShard(p) for p in sorted(base.iterdir())}
    n_keys = sum(len(s.keys()) for s in shards.values())
    recorded = json.loads((d / "layout.json").read_text())["tensors"]
    assert len(r["tensors"]) == r["totals"]["tensors"] == n_keys == recorded == 154
    whole = (r["totals"]["tensors"], r["totals"]["params"], r["totals"]["bytes"])
    g = r["groups"]
    assert len(g["stage"]) == 2 and len(g["ep_rank"]) == 2 and len(g["shard"]) == 4
    for name in ("stage", "ep_rank", "shard"):
        assert _sums(g[name]) == whole, name
    assert [s["layers"] for s in g["stage"]] == [[0, 1], [2, 3]]
    assert [e["experts"] for e in g["ep_rank"]] == [[0, 3], [4, 7]]
    for s in g["shard"]:  # each shard's row count is what its own index lists
        assert s["tensors"] == len(shards[s["shard"]].keys())
    bytes_on_disk = sum(_data_bytes(f) for f in base.glob("*/*.safetensors"))
    assert r["totals"]["bytes"] == bytes_on_disk
    # routed experts are stored once; dense tensors once per EP rank of their stage
    hf = inspect_checkpoint(ckpts["hf"])
    expert_hf = sum(row["params"] for row in hf["tensors"] if EXPERT in row["name"])
    expert_mc = sum(row["params"] for row in r["tensors"] if EXPERT in row["name"])
    assert expert_mc == expert_hf
    assert r["totals"]["params"] == expert_hf + 2 * (hf["totals"]["params"] - expert_hf)
    rows = {(row["shard"], row["name"]): row for row in r["tensors"]}
    assert rows[("mp_rank_00_001_001", "decoder.layers.0.input_layernorm.weight")]["layer"] == 2  # local 0 of stage 1
    assert r["layout"]["recorded"]["pp"] == 2 and r["layout"]["stage_layers"] == [2, 2]


def test_torch_dist_converted_is_global(ckpts):
    d = ckpts["dist"]
    r = inspect_checkpoint(d)
    shard = DistShard(d)
    assert r["format"] == "torch_dist" and r["problems"] == []
    assert [row["name"] for row in r["tensors"]] == shard.global_keys()
    recorded = json.loads((d / "layout.json").read_text())["keys"]
    assert r["totals"]["tensors"] == r["totals"]["model"]["tensors"] == recorded == 59
    assert r["totals"]["optimizer"]["tensors"] == 0
    assert r["totals"]["params"] == inspect_checkpoint(ckpts["hf"])["totals"]["params"]  # same model, global
    fc1 = next(row for row in r["tensors"] if row["name"] == "decoder.layers.1.mlp.experts.experts.linear_fc1.weight")
    assert fc1["shape"] == [8, 64, 64] and fc1["experts"] == 8 and fc1["chunks"] == 8
    assert "stage" not in r["groups"] and "ep_rank" not in r["groups"]
    assert any("global tensors" in n for n in r["notes"])
    files = r["groups"]["file"]
    assert sum(f["params"] for f in files) == r["totals"]["params"]
    on_disk = sum(p.stat().st_size for p in d.glob("*.distcp"))
    assert sum(f["bytes"] for f in files) == r["totals"]["file_bytes"] == on_disk
    assert "global tensors" in render_table(r)


def test_training_run_per_stage_and_ep_rank(ckpts):
    run = ckpts["run"]
    step = run / "checkpoints" / "step_0000003"
    r = inspect_checkpoint(run)
    assert r["dir"] == str(step) and r["problems"] == []
    for p in (run / "checkpoints", run / "checkpoints" / "latest", step):  # every way of naming it
        assert inspect_checkpoint(p)["dir"] == str(step)
    t = r["totals"]
    assert t["tensors"] == len(DistShard(step).global_keys()) == 59 * 3
    assert (t["model"]["tensors"], t["optimizer"]["tensors"], t["objects"]) == (59, 118, len(r["objects"]))
    assert t["optimizer"]["params"] == 2 * t["model"]["params"]
    whole = (t["tensors"], t["params"], t["bytes"])
    g = r["groups"]
    assert _sums(g["stage"]) == whole
    assert _sums(g["ep_rank"])[1:] == whole[1:]
    assert [s["layers"] for s in g["stage"]] == [[0, 1], [2, 3]]
    assert [e["experts"] for e in g["ep_rank"]] == [[0, 3], [4, 7], None]  # the last: dense (every EP rank)
    # the same numbers the legacy pp=2 x ep=2 conversion stores, counted globally (x3: param + 2 moments)
    leg = inspect_checkpoint(ckpts["legacy"])["tensors"]
    for stage in (0, 1):
        experts = sum(row["params"] for row in leg if row["pp_rank"] == stage and EXPERT in row["name"])
        dense = sum(row["params"] for row in leg if row["pp_rank"] == stage and row["ep_rank"] == 0
                    and EXPERT not in row["name"])
        assert g["stage"][stage]["params"] == 3 * (experts + dense)
    for e in (0, 1):
        experts = sum(row["params"] for row in leg if row["ep_rank"] == e and ".local_experts." in row["name"])
        assert g["ep_rank"][e]["params"] == 3 * experts and g["ep_rank"][e]["bytes"] == 3 * 4 * experts  # fp32
    rows = {row["name"]: row for row in r["tensors"]}
    assert rows["optimizer.state.exp_avg.embedding.word_embeddings.weight"]["pp_rank"] == 0
    assert rows["optimizer.state.exp_avg_sq.output_layer.weight"]["pp_rank"] == 1
    assert rows["decoder.layers.2.mlp.router.weight"]["pp_rank"] == 1
    assert r["layout"]["common"]["trainer"]["step"] == 3 and r["layout"]["recorded"]["world_size"] == 4
    table = render_table(r)
    assert "per pipeline stage:" in table and "dense (every EP rank)" in table and "optimizer" in table


def test_render_table_and_json_round_trip(ckpts):
    for name in ("hf", "hf8", "legacy", "dist", "run"):
        r = inspect_checkpoint(ckpts[name])
        assert json.loads(json.dumps(r)) == r, name
        table = render_table(r)
        assert r["tensors"][0]["name"] in table and r["dir"] in table
        assert r["tensors"][0]["name"] not in render_table(r, tensors=False)
    leg = render_table(inspect_checkpoint(ckpts["legacy"]))
    for text in ("legacy Megatron checkpoint", "tp=1 pp=2 ep=2", "per EP rank:", "mp_rank_00_001_001", "stage_layers"):
        assert text in leg


def test_tool_subprocess_json(ckpts):
    latest = ckpts["run"] / "checkpoints" / "latest"
    p = subprocess.run([sys.executable, str(TOOL), str(latest), "--json"], capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == json.loads(json.dumps(inspect_checkpoint(latest)))


def _run_tool(*args):
    """The script as ``python tools/inspect_checkpoint.py ARGS`` runs it (its ``__main__`` block), in this
    process (a second interpreter start costs more than the whole check)."""
    import runpy

    argv = sys.argv
    sys.argv = [str(TOOL), *map(str, args)]
    try:
        runpy.run_path(str(TOOL), run_name="__main__")
    except SystemExit as exc:
        return exc.code
    finally:
        sys.argv = argv
    return None


def test_tool_bad_input_exits_2(ckpts, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert _run_tool(tmp_path) == 2
    out, err = capsys.readouterr()
    assert out == "" and str(tmp_path) in err and "expected an HF checkpoint" in err
    assert _run_tool(tmp_path / "notes.txt", "--json") == 2 and str(tmp_path / "notes.txt") in capsys.readouterr().err
    assert _run_tool(ckpts["hf8"], "--summary") == 0
    out = capsys.readouterr().out
    assert "totals: 129 tensors + 104 scales = 233 keys" in out and "model.layers.0.mlp.up_proj.weight" not in out
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "missing")
    broken = tmp_path / "legacy"
    shutil.copytree(ckpts["legacy"], broken)
    shutil.rmtree(broken / "iter_0000000" / "mp_rank_00_001_000")
    assert _run_tool(broken) == 2 and "mp_rank_00_001_000" in capsys.readouterr().err
