import pytest
import torch

from megatron_ads.config.flavors import flavor, flavor_dict
from megatron_ads.model.flops import active_params, count_params, mfu, train_flops_per_token


def test_deepseek_v3_671b_totals():
    cfg = flavor("deepseek_v3")
    pc = count_params(cfg)
    assert abs(pc.total / 1e9 - 671.03) < 0.01
    assert abs(pc.routed / 1e9 - 653.9) < 0.05
    assert abs(active_params(cfg) / 1e9 - 37.55) < 0.01
    assert pc.mtp > 0 and pc.total + pc.mtp > pc.total


@pytest.mark.parametrize("name", ["tiny_deepseek_v3", "tiny_deepseek_v2_lite", "tiny_llama", "tiny_qwen2"])
def test_counts_match_transformers_models(name):
    """Independent reference: numel of the real transformers model (all its parameters and buffers)."""
    import transformers

    from megatron_ads.checkpoint.hf_init import build_random_hf_model

    model = build_random_hf_model(flavor_dict(name), seed=0, dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for k, b in model.named_buffers() if k.endswith("e_score_correction_bias"))
    assert count_params(flavor(name)).total == n
    assert isinstance(model, transformers.PreTrainedModel)


def test_flops_and_mfu_arithmetic():
    cfg = flavor("tiny_llama")
    f = train_flops_per_token(cfg, 128)
    assert f > 6 * (active_params(cfg) - cfg.vocab_size * cfg.hidden_size)
    assert mfu(cfg, 128, tokens_per_s=1000.0, peak_flops=f * 1000.0) == pytest.approx(1.0)
