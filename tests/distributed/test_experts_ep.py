"""Grouped routed experts (model.experts) equal megatron's SequentialMLP at EP 2 on 2 gloo ranks (fp32
logits and gradients), and their torch_dist state saved at EP 2 loads at EP 1 into either module."""

import os
import sys
from pathlib import Path

import pytest

from megatron_ads.runtime.launch import spawn

UNIT = str(Path(__file__).resolve().parents[1] / "unit")
sys.path.insert(0, UNIT)
from experts_support import compare_rank  # noqa: E402

pytestmark = pytest.mark.distributed
TOL = 1e-6
ENV = {"PYTHONPATH": os.pathsep.join(p for p in (UNIT, os.environ.get("PYTHONPATH")) if p)}


def _worker(hf, ep, save_dir, load_dir):
    return compare_rank(hf, ep=ep, save_dir=save_dir, load_dir=load_dir)


def test_grouped_equals_sequential_at_ep2_and_reshards_to_ep1(tiny_ckpts, tmp_path):
    hf = str(tiny_ckpts("tiny_deepseek_v3"))
    reps = spawn(_worker, 2, hf, 2, str(tmp_path / "ep2"), None, env=ENV)
    for rep in reps:
        assert rep["logits_diff"] <= TOL and rep["grad_diff"] <= TOL, reps
        assert rep["dispatchers"] == ["MoEAlltoAllTokenDispatcher"], rep  # megatron's all-to-all at EP 2
    rep = spawn(_worker, 1, hf, 1, None, str(tmp_path / "ep2"), env=ENV)[0]
    assert rep["load_sequential_diff"] == 0.0 and rep["load_grouped_diff"] == 0.0, rep
