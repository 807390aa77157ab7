"""FP8 block-scaled kernels and the FP8 linear module (CPU).

The Triton kernels run under ``TRITON_INTERPRET=1`` (set below, before ``kernels.fp8_triton`` is
imported: Triton reads it when a kernel is decorated) and are compared with the torch reference
``kernels.fp8.fp8_gemm_ref``; bit-exact claims stay with the torch path.

Tolerances (measured on this machine, bound ~4x or more above):
- Triton act_quant vs torch act_quant: scales equal, codes equal (0 of ~70k differ: the kernel rounds
  to the e4m3 grid in fp32 before converting).
- Triton GEMM vs fp8_gemm_ref, fp32 output: max |diff| / max |ref| <= 2.5e-8 measured -> GEMM_TOL 1e-6.
- fp8_gemm_ref vs fp32 matmul of dequantized activations and weights: <= 6.7e-7 measured -> 4e-6.
- Tiny DeepSeek-V3 FP8 (bf16 compute): Triton backend vs emulated backend (the same numerics in torch):
  logits 0.0 measured -> 1e-4, greedy tokens equal; vs the reference backend (no activation
  quantization): cosine of the logits 0.988 measured -> >= 0.9 (see the test for why not closer).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # tests/conftest.py sets it first; this covers a run of the file alone
    os.environ.setdefault("TRITON_INTERPRET", "1")

from megatron_ads.kernels.fp8 import (FP8_DTYPE, act_quant, block_dequant, block_quant, expand_scale_rows,  # noqa: E402
                                      fp8_gemm_ref)

GEMM_TOL = 1e-6
REF_TOL = 4e-6
MODEL_TOL = 1e-4

# (M, N, K): M = 1 (decode), M not a multiple of 128 or of the tile, N and K partial blocks, K blocks
# 1, 2, 3, 5 (not multiples of 4), a full 128-block case
SHAPES = [(1, 200, 300), (37, 130, 520), (130, 256, 640), (3, 64, 64), (20, 96, 160), (129, 128, 128)]

pytestmark = pytest.mark.usefixtures("single_rank_module")


def _triton():
    pytest.importorskip("triton", reason="triton not installed (pip install 'megatron-ads[dev]')")
    from megatron_ads.kernels import fp8_triton
    from triton.runtime.interpreter import InterpretedFunction

    if not torch.cuda.is_available() and not isinstance(fp8_triton._gemm_kernel, InterpretedFunction):
        pytest.skip("kernels.fp8_triton was imported before TRITON_INTERPRET=1 was set; run this module alone")
    return fp8_triton


def _weight(n, k, seed, row_block=128):
    g = torch.Generator().manual_seed(seed)
    q, s = block_quant(torch.randn(n, k, generator=g) * 0.05)
    if row_block == 1:  # per-row scales: perturb each row's scale so they differ inside a block
        s = expand_scale_rows(s, n) * (1 + 0.5 * torch.rand(n, 1, generator=g))
    return q, s


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("m,k", [(1, 200), (5, 128), (130, 520), (7, 64)])
def test_triton_act_quant_matches_torch(m, k):
    fp8_triton = _triton()
    g = torch.Generator().manual_seed(m * k)
    x = (torch.randn(m, k, generator=g) * 3).to(torch.bfloat16)
    x[0, :5] = 0.0  # an all-small head: the 1e-4 clamp, zeros
    q_ref, s_ref = act_quant(x)
    q, s = fp8_triton.act_quant_triton(x)
    assert q.dtype == FP8_DTYPE and s.shape == s_ref.shape == (m, (k + 127) // 128)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_triton_gemm_matches_reference(m, n, k):
    fp8_triton = _triton()
    q, s = _weight(n, k, seed=n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    ref = fp8_gemm_ref(x, q, s, out_dtype=torch.float32)
    y = fp8_triton.fp8_gemm_triton(x, q, s, out_dtype=torch.float32)
    assert y.shape == (m, n)
    assert _rel(y, ref) <= GEMM_TOL
    # bf16 output (the model's): the same up to one bf16 rounding
    yb = fp8_triton.fp8_gemm_triton(x, q, s)
    assert yb.dtype == torch.bfloat16 and _rel(yb, ref) <= 2 ** -8


def test_triton_gemm_per_row_scales_and_batched_input():
    fp8_triton = _triton()
    q, s = _weight(96, 160, seed=3, row_block=1)
    x = torch.randn(2, 5, 160, generator=torch.Generator().manual_seed(1))
    ref = fp8_gemm_ref(x, q, s, row_block=1)
    y = fp8_triton.fp8_gemm_triton(x, q, s, row_block=1)
    assert y.shape == (2, 5, 96) and _rel(y, ref) <= GEMM_TOL
    with pytest.raises(ValueError, match="scale"):
        fp8_triton.fp8_gemm_triton(x, q, s, row_block=128)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_gemm_ref_is_the_dequantized_matmul(m, n, k):
    q, s = _weight(n, k, seed=k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(n))
    xq, xs = act_quant(x)
    x_deq = xq.float() * xs.repeat_interleave(128, 1)[:, :k]
    dense = x_deq @ block_dequant(q, s, out_dtype=torch.float32).t()
    assert _rel(fp8_gemm_ref(x, q, s), dense) <= REF_TOL
    # and FP8 is an approximation of the unquantized product (activation + weight rounding, a few %)
    assert _rel(fp8_gemm_ref(x, q, s), x @ block_dequant(q, s, out_dtype=torch.float32).t()) <= 0.1


def _tconfig(dtype=torch.float32):
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, params_dtype=dtype,
                             use_cpu_initialization=True)


def test_fp8_linear_modules_agree():
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear

    from megatron_ads.kernels.fp8_linear import FP8LinearEmulated, FP8LinearReference, FP8LinearTriton, dense_weight

    _triton()
    cfg = _tconfig(torch.bfloat16)
    q, s = _weight(130, 200, seed=5)
    ref = FP8LinearReference(200, 130, config=cfg, bias=False)
    ref.weight.data.copy_(block_dequant(q, s))  # what the checkpoint reader hands the reference linear
    emu = FP8LinearEmulated(200, 130, config=cfg)
    tri = FP8LinearTriton(200, 130, config=cfg, stride=1)
    for mod in (emu, tri):
        mod.load_fp8(q, expand_scale_rows(s, 130))
        assert mod.row_block == 128 and mod.weight.dtype == FP8_DTYPE and tuple(mod.weight_scale_inv.shape) == (2, 2)
        assert torch.equal(dense_weight(mod), ref.weight)  # DeepSeek's dequant formula
    x = torch.randn(3, 2, 200, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    (y_ref, b_ref), (y_emu, _), (y_tri, _) = ref(x), emu(x), tri(x)
    assert b_ref is None and y_ref.shape == y_emu.shape == y_tri.shape == (3, 2, 130)
    assert torch.equal(y_ref, torch.matmul(x, ref.weight.t()))
    assert _rel(y_tri, y_emu) <= 2 ** -7  # one bf16 rounding apart at most
    assert _rel(y_emu, y_ref) <= 0.1  # activation quantization
    # MLA's class check accepts the FP8 linears as its ColumnParallelLinear drop-in
    assert FP8LinearTriton in [None, ColumnParallelLinear] and FP8LinearTriton != FP8LinearEmulated
    with pytest.raises(ValueError, match="codes"):
        tri.load_fp8(q[:, :100], expand_scale_rows(s, 130))


def test_fp8_linear_reference_equals_plain_linear_bit_exactly():
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    from megatron_ads.infer.weights import init_single_rank
    from megatron_ads.kernels.fp8_linear import FP8LinearReference

    init_single_rank()  # megatron's linears look up their (1-rank) TP group
    cfg = _tconfig(torch.bfloat16)
    q, s = _weight(96, 64, seed=9)
    w = block_dequant(q, s)
    x = torch.randn(5, 2, 64, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    ours = FP8LinearReference(64, 96, config=cfg)
    ours.weight.data.copy_(w)
    for cls, kw in ((ColumnParallelLinear, dict(gather_output=False)), (RowParallelLinear, dict(input_is_parallel=True))):
        plain = cls(64, 96, config=cfg, init_method=torch.nn.init.zeros_, bias=False, skip_bias_add=True, **kw)
        plain.weight.data.copy_(w)
        with torch.no_grad():
            assert torch.equal(ours(x)[0], plain(x)[0])


def _greedy(model, ids, steps):
    """Greedy tokens by full re-forward (independent of the engine), and the first step's logits."""
    first = None
    for _ in range(steps):
        pos = torch.arange(ids.shape[1]).expand_as(ids)
        with torch.no_grad():
            logits = model(ids, pos, None)
        first = logits if first is None else first
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids, first


def test_tiny_deepseek_fp8_triton_backend(tiny_ckpts, tmp_path):
    """The Triton backend in the whole model through ``load_for_inference(precision="fp8")``: e4m3 codes +
    scales loaded straight into every decoder linear (routed and shared experts included, nothing else),
    logits and greedy tokens equal to the emulated backend's (the same numerics in torch), close to the
    reference backend's; the reference backend (the CPU default) equal bit for bit to a bf16 model of the
    dequantized weights."""
    from megatron_ads.checkpoint.hf_io import HFCheckpoint, write_dequantized_copy
    from megatron_ads.infer.weights import load_for_inference
    from megatron_ads.kernels.fp8_linear import FP8Linear, FP8LinearReference, FP8LinearTriton

    _triton()
    path = tiny_ckpts("tiny_deepseek_v3", fp8=True)
    ids = torch.randint(0, 1024, (2, 4), generator=torch.Generator().manual_seed(0))
    models = {b: load_for_inference(path, precision="fp8", fp8_backend=b).model
              for b in ("reference", "emulated", "triton")}
    named = {n: m for n, m in models["triton"].named_modules() if isinstance(m, FP8Linear)}
    assert named and all(isinstance(m, FP8LinearTriton) and m.weight.dtype == FP8_DTYPE for m in named.values())
    assert any(".experts.local_experts." in n for n in named) and any(".shared_experts." in n for n in named)
    assert not any(("router" in n or "output_layer" in n or "embedding" in n) for n in named)
    assert all(p.dtype != torch.float32 for p in models["triton"].parameters())

    out = {b: _greedy(m, ids, steps=2) for b, m in models.items()}
    tokens_tri, logits_tri = out["triton"]
    tokens_emu, logits_emu = out["emulated"]
    assert (logits_tri.float() - logits_emu.float()).abs().max().item() <= MODEL_TOL  # measured 0.0
    assert torch.equal(tokens_tri, tokens_emu)
    # vs no activation quantization: a random tiny MoE is chaotic (expert choices flip; max |diff| 1.07
    # of logits up to 3), so the agreement is bounded overall: cosine measured 0.988; a wrong kernel ~0
    cos = torch.nn.functional.cosine_similarity(logits_tri.float().flatten(), out["reference"][1].float().flatten(), dim=0)
    assert cos.item() >= 0.9

    default, _, _ = load_for_inference(path, precision="fp8")  # CPU default backend: reference
    assert all(isinstance(m, FP8LinearReference) for m in default.modules() if isinstance(m, FP8Linear))
    plain, _, _ = load_for_inference(write_dequantized_copy(HFCheckpoint(path), tmp_path / "bf16"), precision="bf16")
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        assert torch.equal(default(ids, pos, None), plain(ids, pos, None))


def test_lean_twins_keep_the_fp8_linears(tiny_ckpts):
    """Engine calls run the model under ``infer.lean``, whose TP-1 linear twin does a plain matmul with the
    weight: it must leave the FP8 linears alone (their metaclass compares *equal* to ColumnParallelLinear,
    for MLA's class check). W8A8 (emulated) logits under ``lean`` = outside it, bit for bit; before the
    fix the twin multiplied bf16 activations by the e4m3 codes and raised."""
    from megatron_ads.infer.lean import lean
    from megatron_ads.infer.weights import load_for_inference

    model = load_for_inference(tiny_ckpts("tiny_deepseek_v3", fp8=True), precision="fp8",
                               fp8_backend="emulated").model
    model.eval()
    ids = torch.randint(0, 1024, (2, 5), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        ref = model(ids, pos, None)
        with lean(model):
            got = model(ids, pos, None)
    assert torch.equal(ref, got)
