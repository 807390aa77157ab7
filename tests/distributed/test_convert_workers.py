"""Converter with parallel writer processes (spawned) and multi-file HF output."""

import json

import pytest

from megatron_ads.checkpoint.convert import hf_to_mcore, mcore_to_hf
from megatron_ads.checkpoint.verify import compare
from megatron_ads.config.parallel import ParallelConfig

pytestmark = pytest.mark.distributed
Q = dict(progress=False)


def test_parallel_workers_and_multi_file_hf_output(tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3", dtype="bf16")
    hf_to_mcore(hf, tmp_path / "one", ParallelConfig(pp=2, ep=2), **Q)
    hf_to_mcore(hf, tmp_path / "two", ParallelConfig(pp=2, ep=2), workers=2, **Q)
    assert compare(tmp_path / "one", tmp_path / "two")["equal"]
    r = mcore_to_hf(tmp_path / "two", tmp_path / "hf", workers=2, shard_size_gb=0.0002, **Q)
    assert r["files"] > 1 and compare(hf, tmp_path / "hf")["equal"]
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == r["files"]
