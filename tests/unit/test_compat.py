"""One test per megatron-core CPU touchpoint (runtime/platform.py), plus canaries that fail loudly
when a megatron-core upgrade moves a touchpoint."""

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron_ads.runtime import platform

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU compatibility layer is CPU-only")


@pytest.fixture(scope="module", autouse=True)
def compat():
    platform.activate_cpu_compat()
    assert platform.cpu_compat_active()


def test_megatron_core_version_is_the_pinned_one():
    from importlib.metadata import version

    assert version("megatron-core") == "0.16.1", "touchpoints below were established for 0.16.1; re-check them"


def test_current_device_is_cpu_and_rotary_builds_there():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    assert torch.cuda.current_device() == torch.device("cpu")
    emb = RotaryEmbedding(kv_channels=8, rotary_percent=1.0)(16)
    assert emb.device.type == "cpu" and emb.shape[0] == 16


def test_streams_events_and_sync_are_noops():
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x = torch.ones(2) * 3
    torch.cuda.current_stream().wait_stream(s)
    ev = torch.cuda.Event()
    ev.record()
    ev.synchronize()
    torch.cuda.default_stream().synchronize()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    assert x.sum().item() == 6.0


def test_rng_tracker_forks_cpu_generator_deterministically():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    tracker = get_cuda_rng_tracker()
    tracker.reset()
    tracker.add("touchpoint-test", 1234)
    torch.manual_seed(99)
    outside_before = torch.get_rng_state()
    with tracker.fork("touchpoint-test"):
        a = torch.rand(4)
    assert torch.equal(torch.get_rng_state(), outside_before), "fork must restore the outer state"
    torch.manual_seed(1234)
    assert torch.equal(a, torch.rand(4))
    torch.cuda.manual_seed(5)
    s5 = torch.cuda.get_rng_state()
    torch.cuda.set_rng_state(s5)
    assert torch.equal(torch.get_rng_state(), s5)


def test_literal_cuda_device_factories_inside_megatron_only():
    from megatron.core.optimizer import clip_grads, grad_scaler

    t = clip_grads.torch.zeros(1, dtype=torch.int, device="cuda")
    assert t.device.type == "cpu"
    scaler = grad_scaler.ConstantGradScaler(2.0)
    assert scaler.scale.device.type == "cpu" and scaler.scale.item() == 2.0
    assert torch.zeros is torch.zeros  # torch itself is untouched
    with pytest.raises(Exception):
        torch.zeros(1, device="cuda")


def test_tensor_cuda_and_record_stream():
    x = torch.arange(3.0)
    assert x.cuda() is x
    x.record_stream(torch.cuda.current_stream())


def test_tensor_type_reports_cuda_names_only_to_megatron():
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 2.0)
    assert p.grad.type() == "torch.FloatTensor"  # ordinary callers see the truth
    clip_grad_by_total_norm_fp32([p], max_norm=1.0, total_norm=4.0)  # asserts 'torch.cuda.FloatTensor' inside
    assert torch.allclose(p.grad, torch.full((4,), 2.0 * 1.0 / (4.0 + 1e-6)))


def test_router_gemm_without_te():
    from megatron.core.transformer.moe import moe_utils

    assert moe_utils.te_general_gemm is None
    x, w = torch.randn(5, 8), torch.randn(4, 8)
    out = moe_utils.router_gating_linear(x, w, None, torch.float32)
    assert torch.allclose(out, x @ w.T, atol=1e-6)


def test_dispatcher_host_copy_returns_numpy():
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    arr = moe_utils.maybe_move_tensor_to_cpu(torch.tensor([1, 2]), as_numpy=True)
    assert isinstance(arr, np.ndarray) and arr.tolist() == [1, 2]
    assert token_dispatcher.maybe_move_tensor_to_cpu is moe_utils.maybe_move_tensor_to_cpu
    t = moe_utils.maybe_move_tensor_to_cpu(torch.tensor([1]), as_numpy=False)
    assert torch.is_tensor(t)


def test_mla_telinear_is_a_class():
    from megatron.core.transformer import multi_latent_attention as mla

    assert isinstance(mla.TELinear, type)


@pytest.mark.parametrize("module, needle", [
    ("megatron.core.optimizer.clip_grads", "torch.cuda.FloatTensor"),
    ("megatron.core.optimizer.optimizer", "device='cuda'"),
    ("megatron.core.transformer.moe.moe_utils", "te_general_gemm is not None"),
    ("megatron.core.transformer.moe.token_dispatcher", "as_numpy=True"),
    ("megatron.core.transformer.multi_latent_attention", "isinstance(self.linear_proj, TELinear)"),
    ("megatron.core.tensor_parallel.random", "def _set_cuda_rng_state"),
    ("megatron.core.transformer.moe.token_dispatcher", "torch.cuda.current_stream"),
])
def test_canary_touchpoint_still_present(module, needle):
    import importlib

    src = inspect.getsource(importlib.import_module(module))
    assert needle in src, f"{module} no longer contains {needle!r}: megatron-core changed; revisit runtime/platform.py"


def test_local_dot_product_attention_still_rejects_mla_channels():
    """Why the project ships its own core attention (model/attention.py)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    assert "k_channels" not in inspect.signature(DotProductAttention.__init__).parameters


def test_refuses_to_activate_when_cuda_is_available():
    code = ("import torch; torch.cuda.is_available = lambda: True\n"
            "from megatron_ads.runtime.platform import activate_cpu_compat\n"
            "try:\n    activate_cpu_compat()\nexcept RuntimeError as e:\n    print('refused:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "refused" in out.stdout, out.stderr[-2000:]


def test_transformers_meta_device_loading_unaffected(tiny_ckpts):
    """Regression: patching torch factories globally broke transformers' meta-device init."""
    import transformers

    from megatron_ads.config.model import ModelConfig

    path = tiny_ckpts("tiny_deepseek_v3")
    m = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    cfg = ModelConfig.from_hf(path)
    rot = m.model.rotary_emb
    assert torch.isfinite(rot.inv_freq).all() and rot.inv_freq.max() <= 1.0
    assert rot.inv_freq.numel() == cfg.qk_rope_head_dim // 2
