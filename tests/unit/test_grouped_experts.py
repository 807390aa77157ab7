"""Grouped routed experts (model.experts, torch._grouped_mm) equal megatron's SequentialMLP at EP 1:
logits and gradients in fp32, torch_dist state in both directions, selection and validation."""

import pytest
import torch

from experts_support import compare_rank
from megatron_ads.checkpoint.mapping import expert_views
from megatron_ads.config.train import ModelSpec
from megatron_ads.model.experts import default_experts, grouped_linear

TOL = 1e-6


def test_grouped_linear_equals_the_per_expert_loop():
    torch.manual_seed(0)
    x = torch.randn(10, 16, requires_grad=True)
    w = torch.randn(4, 12, 16, requires_grad=True)
    tpe = [3, 0, 5, 2]
    y = grouped_linear(x, w, torch.tensor(tpe).cumsum(0).to(torch.int32))
    ref = torch.cat([xs @ w[e].T for e, xs in enumerate(torch.split(x, tpe))])
    assert torch.equal(y, ref)
    y.sum().backward()  # an expanded gradient (rejected by _grouped_mm's own backward)
    assert w.grad[1].abs().max() == 0 and x.grad.shape == x.shape


def test_expert_views_slice_grouped_weights():
    w = torch.zeros(2, 6, 4)
    views = expert_views("decoder.layers.1.mlp.experts.linear_fc1.weight", w)
    assert list(views) == [f"decoder.layers.1.mlp.experts.local_experts.{e}.linear_fc1.weight" for e in (0, 1)]
    views["decoder.layers.1.mlp.experts.local_experts.1.linear_fc1.weight"].fill_(1)
    assert w[1].eq(1).all() and w[0].eq(0).all()
    assert list(expert_views("decoder.layers.1.mlp.shared_experts.linear_fc1.weight", w)) == [
        "decoder.layers.1.mlp.shared_experts.linear_fc1.weight"]


def test_experts_option_default_and_validation():
    assert ModelSpec().experts == default_experts() == "grouped"
    assert ModelSpec(experts="sequential").experts == "sequential"
    with pytest.raises(ValueError, match=r"model\.experts: expected one of grouped, sequential, got 'loop'"):
        ModelSpec(experts="loop")


def test_grouped_equals_sequential_at_ep1(tiny_ckpts, single_rank_module, tmp_path):
    hf = tiny_ckpts("tiny_deepseek_v3")
    rep = compare_rank(str(hf), ep=1, save_dir=str(tmp_path / "sd"))
    assert rep["logits_diff"] <= TOL and rep["grad_diff"] <= TOL, rep
    assert rep["dispatchers"] == ["OneRankTokenDispatcher"], rep  # model.dispatch at EP 1
    rep = compare_rank(str(hf), ep=1, load_dir=str(tmp_path / "sd"))
    assert rep["load_sequential_diff"] == 0.0 and rep["load_grouped_diff"] == 0.0, rep
