import pytest
import torch

from megatron_ads.kernels.fp8 import FP8_DTYPE, act_quant, block_dequant, block_quant, scale_shape


def test_dequant_matches_the_formula_elementwise_with_partial_edge_blocks():
    g = torch.Generator().manual_seed(0)
    q = (torch.randn(200, 130, generator=g) * 50).clamp(-448, 448).to(FP8_DTYPE)
    s = torch.rand(2, 2, generator=g) + 0.01
    w = block_dequant(q, s)
    assert w.dtype == torch.bfloat16 and scale_shape((200, 130)) == (2, 2)
    for i, j in [(0, 0), (127, 127), (128, 0), (199, 129), (5, 128)]:
        expect = (q[i, j].to(torch.float32) * s[i // 128, j // 128]).to(torch.bfloat16)
        assert w[i, j].item() == expect.item()


def test_dequant_rejects_wrong_scale_shape():
    with pytest.raises(ValueError, match="scale_inv"):
        block_dequant(torch.zeros(256, 256).to(FP8_DTYPE), torch.ones(1, 1), name="w")


def test_quant_dequant_within_one_fp8_step():
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(300, 260, generator=g) * 0.05).to(torch.bfloat16)
    q, s = block_quant(w)
    back = block_dequant(q, s).float()
    # one E4M3 step at magnitude m is <= m * 2^-3 (3 mantissa bits); plus bf16 rounding
    step = (w.float().abs() * 2 ** -3).clamp_min(s.min().item() * 2 ** -9)
    assert ((back - w.float()).abs() <= step + w.float().abs() * 2 ** -8).all()


def test_fp8_bf16_fp8_reproduces_codes():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(256, 384, generator=g).to(torch.bfloat16)
    q, s = block_quant(w)
    q2, s2 = block_quant(block_dequant(q, s))
    assert torch.equal(q.view(torch.uint8), q2.view(torch.uint8))
    assert torch.allclose(s, s2, rtol=2 ** -8)


def test_zero_block_and_activation_quant():
    q, s = block_quant(torch.zeros(128, 128))
    assert s.item() == 1.0 and q.float().abs().sum() == 0
    x = torch.randn(3, 200)
    xq, xs = act_quant(x)
    assert xs.shape == (3, 2) and xq.dtype == FP8_DTYPE
    assert torch.allclose(xq.float() * xs.repeat_interleave(128, 1)[:, :200], x, rtol=0.07, atol=1e-3)
