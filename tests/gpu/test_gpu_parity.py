"""GPU checks (run on lent CUDA machines): bf16 parity of the local spec on CUDA."""

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU machine)")]


def _worker(hf, kwargs):
    from megatron_ads.checkpoint.parity import run_parity_rank

    return run_parity_rank(hf, **kwargs)


@pytest.mark.parametrize("name", ["tiny_deepseek_v3", "tiny_llama"])
def test_cuda_parity_bf16_and_fp32(name, tiny_ckpts):
    from megatron_ads.runtime.launch import spawn

    hf = str(tiny_ckpts(name))
    fp32 = spawn(_worker, 1, hf, {"dtype": "fp32"})[0]
    bf16 = spawn(_worker, 1, hf, {"dtype": "bf16"})[0]
    assert fp32["platform"] == "cuda"
    assert fp32["max_abs_diff"] <= 1e-3  # TF32/cuBLAS reductions
    assert bf16["max_abs_diff"] <= 0.5 and bf16["argmax_agreement"] >= 0.9
