"""``train.optim.one_rank_grad_norm_fp32``: megatron-core's ``get_grad_norm_fp32`` without the all-reduce over a
one-rank group — bit-equal to megatron's, no collective; other norms and groups go to megatron's function;
``use_one_rank_grad_norm`` puts it where megatron's optimizer module calls the norm."""

import pytest
import torch


def _grads(seed: int):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g) * 2 for s in [(40, 17), (5,), (3, 4, 7)]]


def test_one_rank_grad_norm_is_megatrons_without_the_collective(single_rank_module, monkeypatch):
    from megatron.core.optimizer import clip_grads

    from megatron_ads.infer.weights import init_single_rank
    from megatron_ads.train.optim import one_rank_grad_norm_fp32, use_foreach_multi_tensor_ops, use_one_rank_grad_norm

    init_single_rank()
    use_foreach_multi_tensor_ops()
    use_one_rank_grad_norm()
    grads = _grads(0)
    ref, ref0 = clip_grads.get_grad_norm_fp32(grads), clip_grads.get_grad_norm_fp32(grads[0])
    calls = []
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: calls.append(a))
    ours = one_rank_grad_norm_fp32(grads)
    assert isinstance(ours, float) and ours == ref and calls == []
    assert one_rank_grad_norm_fp32(grads[0]) == ref0
    assert one_rank_grad_norm_fp32([]) == 0.0 and calls == []
    # another norm type goes to megatron's function (with its collective)
    seen = []
    monkeypatch.setattr(clip_grads, "get_grad_norm_fp32", lambda *a: seen.append(a) or 1.5)
    assert one_rank_grad_norm_fp32(grads, norm_type=float("inf")) == 1.5 and seen


def test_use_one_rank_grad_norm_swaps_megatrons_call_site(single_rank_module):
    from megatron.core.optimizer import clip_grads, optimizer

    from megatron_ads.train import optim

    saved = optimizer.get_grad_norm_fp32
    try:
        optimizer.get_grad_norm_fp32 = clip_grads.get_grad_norm_fp32
        assert optim.use_one_rank_grad_norm() is True
        assert optimizer.get_grad_norm_fp32 is optim.one_rank_grad_norm_fp32
        assert optim.use_one_rank_grad_norm() is False  # idempotent
        optimizer.get_grad_norm_fp32 = lambda *a: 0.0  # someone else's function: left alone
        assert optim.use_one_rank_grad_norm() is False
    finally:
        optimizer.get_grad_norm_fp32 = saved


@pytest.mark.parametrize("world", [2])
def test_a_group_of_more_ranks_goes_to_megatron(world, monkeypatch, single_rank_module):
    from megatron.core.optimizer import clip_grads

    from megatron_ads.infer.weights import init_single_rank
    from megatron_ads.train import optim

    init_single_rank()
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda group=None: world)
    seen = []
    monkeypatch.setattr(clip_grads, "get_grad_norm_fp32", lambda *a: seen.append(a) or 2.5)
    assert optim.one_rank_grad_norm_fp32(_grads(1)) == 2.5 and len(seen) == 1
