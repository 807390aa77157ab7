"""SDPACoreAttention (model/attention.py) against the formula, MLA head dims (v narrower than q/k): outputs and
gradients equal softmax(q k^T * scale + causal mask) v, and on CPU the fused kernel runs (v zero-padded)."""

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_ads.model.attention import SDPACoreAttention

S, B, H, DQK, DV = 12, 2, 3, 24, 16


def _inputs():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(S, B, H, d, generator=g, dtype=torch.float64, requires_grad=True) for d in (DQK, DQK, DV)]


def _reference(q, k, v, scale):
    s = torch.einsum("sbhd,kbhd->bhsk", q, k) * scale
    s = s.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhsk,kbhv->sbhv", s.softmax(-1), v).reshape(S, B, H * DV)


def test_mla_dims_match_the_formula_with_the_fused_cpu_kernel():
    cfg = TransformerConfig(num_layers=1, hidden_size=H * DQK, num_attention_heads=H, attention_dropout=0.0)
    attn = SDPACoreAttention(cfg, 1, AttnMaskType.causal, softmax_scale=0.3, k_channels=DQK, v_channels=DV)
    q, k, v = _inputs()
    with torch.profiler.profile() as prof:
        out = attn(q, k, v)
        out.square().sum().backward()
    assert any("flash" in e.key for e in prof.key_averages()), "CPU fused kernel not used"
    grads = [x.grad.clone() for x in (q, k, v)]
    q2, k2, v2 = _inputs()
    ref = _reference(q2, k2, v2, 0.3)
    ref.square().sum().backward()
    assert out.shape == (S, B, H * DV)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    for got, want in zip(grads, (q2.grad, k2.grad, v2.grad)):
        assert torch.allclose(got, want, rtol=0, atol=1e-12)
