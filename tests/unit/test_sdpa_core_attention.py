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


G = 2  # GQA: 4 query heads share 2 key/value heads (query head h reads kv head h // 2, megatron's grouping)


def _gqa_inputs(heads=4, d=8):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(S, B, n, d, generator=g, dtype=torch.float64, requires_grad=True) for n in (heads, G, G)]


def _gqa_reference(q, k, v, keep_BK=None):
    heads, d = q.shape[2], q.shape[3]
    k, v = (x.repeat_interleave(heads // G, dim=2) for x in (k, v))
    s = torch.einsum("sbhd,kbhd->bhsk", q, k) / d ** 0.5
    masked = torch.ones(S, S, dtype=torch.bool).triu(1)[None, None]
    if keep_BK is not None:
        masked = masked | ~keep_BK[:, None, None, :]
    s = s.masked_fill(masked, float("-inf"))
    return torch.einsum("bhsk,kbhv->sbhv", s.softmax(-1), v).reshape(S, B, heads * d)


def _check_gqa(mask_type, attention_mask=None, keep_BK=None):
    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, num_query_groups=G,
                            attention_dropout=0.0)
    attn = SDPACoreAttention(cfg, 1, mask_type)
    q, k, v = _gqa_inputs()
    with torch.profiler.profile() as prof:
        out = attn(q, k, v, attention_mask=attention_mask)
        out.square().sum().backward()
    ops = {e.key for e in prof.key_averages()}
    q2, k2, v2 = _gqa_inputs()
    ref = _gqa_reference(q2, k2, v2, keep_BK)
    ref.square().sum().backward()
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)
    for got, want in zip((q.grad, k.grad, v.grad), (q2.grad, k2.grad, v2.grad)):
        assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)
    return ops


def test_gqa_heads_share_key_value_heads_without_repeating_them():
    ops = _check_gqa(AttnMaskType.causal)
    assert any("flash" in op for op in ops), "CPU fused kernel not used"
    assert not {"aten::repeat_interleave", "aten::repeat"} & ops, "key/value heads were copied per query head"


def test_gqa_with_a_padding_mask():
    keep_BK = torch.ones(B, S, dtype=torch.bool)
    keep_BK[1, 4:7] = False  # three masked keys in the second row (every query still sees key 0)
    attention_mask = ~(keep_BK[:, None, None, :] & torch.ones(S, S, dtype=torch.bool).tril()[None, None])
    _check_gqa(AttnMaskType.padding_causal, attention_mask=attention_mask, keep_BK=keep_BK)


def test_query_heads_not_a_multiple_of_the_kv_heads_is_an_error():
    cfg = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, attention_dropout=0.0)
    attn = SDPACoreAttention(cfg, 1, AttnMaskType.causal)
    q = torch.randn(S, B, 3, 8)
    kv = torch.randn(S, B, 2, 8)
    try:
        attn(q, kv, kv)
    except ValueError as exc:
        assert "3 query heads are not a multiple of 2" in str(exc)
    else:
        raise AssertionError("no error")


def test_gqa_in_the_kernel_only_where_the_kernel_takes_it():
    from megatron_ads.model.attention import gqa_in_kernel

    assert gqa_in_kernel("cpu", torch.float32, masked=False) and gqa_in_kernel("cpu", torch.bfloat16, masked=True)
    assert gqa_in_kernel("cuda", torch.bfloat16, masked=False) and gqa_in_kernel("cuda", torch.float16, masked=False)
    # CUDA: a mask or fp32 selects the memory-efficient kernel, which has no GQA: repeat the kv heads instead
    assert not gqa_in_kernel("cuda", torch.bfloat16, masked=True)
    assert not gqa_in_kernel("cuda", torch.float32, masked=False)


def test_gqa_by_repeated_heads_where_the_kernel_has_no_gqa(monkeypatch):
    import megatron_ads.model.attention as attention

    monkeypatch.setattr(attention, "gqa_in_kernel", lambda *a: False)  # the CUDA memory-efficient case
    ops = _check_gqa(AttnMaskType.causal)
    assert "aten::repeat_interleave" in ops
