"""GPU checks of the FP8 backends (run on lent CUDA machines): the Triton kernels (compiled, not
interpreted) and cuBLAS's blockwise ``scaled_mm`` against the torch reference ``fp8_gemm_ref``."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")]

SHAPES = [(1, 256, 512), (37, 130, 520), (130, 256, 640), (256, 512, 384), (1000, 1024, 2048)]
GPU_TOL = 1e-2  # relative to the output's max: fp32 accumulation order + hardware division in act-quant


def _weight(n, k, seed):
    from megatron_ads.kernels.fp8 import block_quant

    q, s = block_quant(torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05)
    return q.cuda(), s.cuda()


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_triton_gemm_on_cuda(m, n, k):
    pytest.importorskip("triton")
    from megatron_ads.kernels.fp8 import act_quant, fp8_gemm_ref
    from megatron_ads.kernels.fp8_triton import act_quant_triton, fp8_gemm_triton

    q, s = _weight(n, k, seed=m + n)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    xq, xs = act_quant_triton(x)
    rq, rs = act_quant(x)
    assert torch.allclose(xs, rs, rtol=1e-6, atol=0)
    assert (xq.view(torch.uint8) != rq.view(torch.uint8)).float().mean().item() <= 1e-3
    ref = fp8_gemm_ref(x, q, s, out_dtype=torch.float32)
    assert _rel(fp8_gemm_triton(x, q, s, out_dtype=torch.float32), ref) <= GPU_TOL


@pytest.mark.parametrize("m,n,k", [(1, 256, 512), (37, 256, 384), (256, 512, 2048), (1000, 1024, 2048)])
def test_scaled_mm_backend_on_cuda(m, n, k):
    from megatron_ads.kernels.fp8 import expand_scale_rows, fp8_gemm_ref
    from megatron_ads.kernels.fp8_linear import FP8LinearScaledMM, _probe

    ok, pad_k, why = _probe(str(torch.device("cuda", torch.cuda.current_device())))
    if torch.cuda.get_device_capability() >= (9, 0):
        print(f"scaled_mm blockwise probe: ok={ok} pad_k={pad_k} ({why})")
    if not ok:
        pytest.skip(f"blockwise scaled_mm not available here: {why}")
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, params_dtype=torch.bfloat16,
                            use_cpu_initialization=False)
    q, s = _weight(n, k, seed=k)
    lin = FP8LinearScaledMM(k, n, config=cfg)
    lin.load_fp8(q, expand_scale_rows(s, n))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    y, _ = lin(x)
    assert lin._why is None, lin._why  # took the scaled_mm path
    assert _rel(y, fp8_gemm_ref(x, q, s, out_dtype=torch.float32)) <= GPU_TOL


def test_tiny_deepseek_fp8_backends_on_cuda(tiny_ckpts):
    pytest.importorskip("triton")
    from megatron_ads.infer.weights import load_for_inference
    from megatron_ads.runtime.dist import destroy

    path = tiny_ckpts("tiny_deepseek_v3", fp8=True)
    ids = torch.randint(0, 1024, (2, 8), generator=torch.Generator().manual_seed(0)).cuda()
    pos = torch.arange(8, device="cuda").expand(2, 8)
    out = {}
    try:
        for b in ("emulated", "triton", "scaled_mm"):
            model = load_for_inference(path, precision="fp8", device="cuda", fp8_backend=b).model
            with torch.no_grad():
                out[b] = model(ids, pos, None).float()
    finally:
        destroy()
    for b in ("triton", "scaled_mm"):
        cos = torch.nn.functional.cosine_similarity(out[b].flatten(), out["emulated"].flatten(), dim=0).item()
        assert cos >= 0.99, (b, cos)
