"""``layout.memory.stage_memory`` precision and overhead options (issue 17): ``dtype="fp32"`` models a pure-fp32 run
(fp32 weights 4 B, fp32 grads 4 B, Adam m + v 8 B with no main-param copy, activations at 4 B per value);
``runtime_overhead_gb`` replaces the fixed overhead; the defaults are the mixed-precision model unchanged."""

from __future__ import annotations

import pytest

from megatron_ads.config.flavors import flavor
from megatron_ads.layout.memory import (GB, PRECISIONS, RUNTIME_OVERHEAD_GB, layer_activation_bytes, precision,
                                        stage_memory, stage_params)

TERMS = ("weights_gb", "grads_gb", "optimizer_gb", "activations_gb")


def _mem(cfg, **kw):
    args = dict(layers=[0, 1, 2, 3], stage=0, pp=1, tp=1, ep=1, dp=1, edp=1, seq_len=16, micro_batch=2,
                recompute="none", distributed_optimizer=False, mtp=False)
    args.update(kw)
    return stage_memory(cfg, **args)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_deepseek_v3"])
def test_fp32_bytes_per_param_by_hand(name):
    cfg = flavor(name)
    p = stage_params(cfg, [0, 1, 2, 3], True, True, 1, 1, False)
    n = p.dense + p.expert
    m = _mem(cfg, dtype="fp32", runtime_overhead_gb=0)
    assert m["weights_gb"] == pytest.approx(4 * n / GB)
    assert m["grads_gb"] == pytest.approx(4 * n / GB)
    assert m["optimizer_gb"] == pytest.approx(8 * n / GB)  # Adam m, v; FP32Optimizer steps the weights themselves
    tokens = 16 * 2
    layers = sum(layer_activation_bytes(cfg, cfg.is_moe_layer(i), tokens, 1, 4) for i in range(4))
    logits = 2 * 4.0 * tokens * cfg.vocab_size  # fp32 logits and their gradient, in either precision
    assert m["activations_gb"] == pytest.approx((layers + logits) / GB)
    assert m["total_gb"] == pytest.approx(sum(m[k] for k in TERMS))


def test_fp32_layer_activations_are_twice_bf16():
    cfg = flavor("tiny_llama")
    assert layer_activation_bytes(cfg, False, 8, 1, 4) == pytest.approx(2 * layer_activation_bytes(cfg, False, 8, 1))
    assert layer_activation_bytes(cfg, False, 8, 1) == layer_activation_bytes(cfg, False, 8, 1, 2)


def test_fp32_distributed_optimizer_shards_m_and_v():
    cfg = flavor("tiny_deepseek_v3")
    m = stage_memory(cfg, [1], 0, 1, 1, ep=2, dp=4, edp=2, seq_len=8, micro_batch=1, recompute="none",
                     distributed_optimizer=True, mtp=False, dtype="fp32")
    p = stage_params(cfg, [1], True, True, 1, 2, False)
    assert m["optimizer_gb"] == pytest.approx(8 * (p.dense / 4 + p.expert / 2) / GB)


def test_fp32_full_recompute_keeps_fp32_layer_inputs():
    cfg = flavor("tiny_llama")
    m = stage_memory(cfg, [0, 1], 0, 2, 1, 1, 1, 1, seq_len=8, micro_batch=1, recompute="full",
                     distributed_optimizer=False, mtp=False, dtype="fp32")
    act = 2 * 2 * 4.0 * 8 * cfg.hidden_size + layer_activation_bytes(cfg, False, 8, 1, 4)  # 2 in flight x 2 layers
    assert m["activations_gb"] == pytest.approx(act / GB)


def test_defaults_are_the_mixed_precision_model_with_its_overhead():
    cfg = flavor("tiny_deepseek_v3")
    default = _mem(cfg)
    assert default == _mem(cfg, dtype="bf16", runtime_overhead_gb=RUNTIME_OVERHEAD_GB)
    assert PRECISIONS["bf16"] == precision("bf16")
    p = stage_params(cfg, [0, 1, 2, 3], True, True, 1, 1, False)
    n = p.dense + p.expert
    assert (default["weights_gb"], default["grads_gb"], default["optimizer_gb"]) == pytest.approx(
        (2 * n / GB, 4 * n / GB, 12 * n / GB))
    assert default["total_gb"] - sum(default[k] for k in TERMS) == pytest.approx(RUNTIME_OVERHEAD_GB)
    no_overhead = _mem(cfg, runtime_overhead_gb=0)
    assert no_overhead["total_gb"] == pytest.approx(default["total_gb"] - RUNTIME_OVERHEAD_GB)
    assert set(default) == set(_mem(cfg, dtype="fp32"))  # same keys: `megatron-ads plan` shows the same fields


def test_bad_dtype_and_overhead_are_named():
    cfg = flavor("tiny_llama")
    with pytest.raises(ValueError, match=r"dtype: expected one of bf16, fp32, got 'fp16'"):
        _mem(cfg, dtype="fp16")
    with pytest.raises(ValueError, match="runtime_overhead_gb"):
        _mem(cfg, runtime_overhead_gb=-1)
