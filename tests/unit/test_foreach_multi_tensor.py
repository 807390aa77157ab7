"""foreach_l2_norm / foreach_scale: megatron-core's local multi-tensor fallbacks (used when neither
TransformerEngine nor apex is installed) as torch foreach ops — bit-equal to megatron's functions on fp32, the
norm never leaving the device (megatron's turns every per-tensor norm into a Python float), swapped into
megatron's optimizer modules by ``use_foreach_multi_tensor_ops`` only where the fallbacks are in place."""

import importlib

import torch

from megatron_ads.runtime.platform import setup
from megatron_ads.train.optim import foreach_l2_norm, foreach_scale, use_foreach_multi_tensor_ops

CHUNK = 2048 * 32


def _tensors(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g) * 3).to(dtype) for s in [(64, 33), (7,), (1,), (4, 5, 6), (300,)]]


def test_l2_norm_is_megatrons_fallback_bit_for_bit():
    setup()  # megatron's fallback writes its result to device='cuda': the CPU layer maps it
    from megatron.core.utils import local_multi_tensor_l2_norm

    ts = _tensors(0)
    ref, _ = local_multi_tensor_l2_norm(CHUNK, None, [ts], False)
    ours, per = foreach_l2_norm(CHUNK, None, [ts], False)
    assert ours.shape == (1,) and ours.dtype == torch.float32 and per is None
    assert torch.equal(ours, ref)
    _, per = foreach_l2_norm(CHUNK, None, [ts], True)
    assert torch.equal(per, torch.stack([torch.norm(t) for t in ts]))
    # bf16 gradients: per-tensor norms accumulated in fp32 (megatron's fallback rounds each to bf16 first)
    bf = _tensors(1, torch.bfloat16)
    exact = torch.linalg.vector_norm(torch.cat([t.float().flatten() for t in bf]))
    assert torch.allclose(foreach_l2_norm(CHUNK, None, [bf], False)[0], exact.reshape(1), rtol=1e-6, atol=0)


def test_scale_is_megatrons_fallback_bit_for_bit():
    from megatron.core.utils import local_multi_tensor_scale

    for scale in (0.37, 1.0):
        a, b = _tensors(2), _tensors(2)
        local_multi_tensor_scale(CHUNK, None, [a, a], scale)  # in place: gradient clipping
        foreach_scale(CHUNK, None, [b, b], scale)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        src = _tensors(3)  # src -> dst of another dtype: fp32 main params into bf16 model params
        a = [torch.empty_like(t, dtype=torch.bfloat16) for t in src]
        b = [torch.empty_like(t, dtype=torch.bfloat16) for t in src]
        local_multi_tensor_scale(CHUNK, None, [src, a], scale)
        foreach_scale(CHUNK, None, [src, b], scale)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    foreach_scale(CHUNK, None, [[], []], 0.5)  # nothing to do


def test_swapped_in_only_for_megatrons_fallbacks():
    from megatron.core import utils as mcore_utils

    clip = importlib.import_module("megatron.core.optimizer.clip_grads")
    opt = importlib.import_module("megatron.core.optimizer.optimizer")
    saved = clip.l2_norm_impl, clip.multi_tensor_scale_impl, opt.multi_tensor_scale_impl
    try:
        clip.l2_norm_impl = mcore_utils.local_multi_tensor_l2_norm
        clip.multi_tensor_scale_impl = opt.multi_tensor_scale_impl = mcore_utils.local_multi_tensor_scale
        assert sorted(use_foreach_multi_tensor_ops()) == [
            "megatron.core.optimizer.clip_grads.l2_norm_impl",
            "megatron.core.optimizer.clip_grads.multi_tensor_scale_impl",
            "megatron.core.optimizer.optimizer.multi_tensor_scale_impl"]
        assert clip.l2_norm_impl is foreach_l2_norm and clip.multi_tensor_scale_impl is foreach_scale
        assert opt.multi_tensor_scale_impl is foreach_scale
        assert use_foreach_multi_tensor_ops() == []  # idempotent
        kernel = object()  # TE's / apex's kernel: left alone
        clip.l2_norm_impl = kernel
        assert use_foreach_multi_tensor_ops() == [] and clip.l2_norm_impl is kernel
    finally:
        clip.l2_norm_impl, clip.multi_tensor_scale_impl, opt.multi_tensor_scale_impl = saved
