"""``train.finalize.OneRankFinalize`` is megatron-core's ``finalize_model_grads`` in a one-process run: the same
gradients, expert biases and token counts after each of several steps, on a DeepSeek-V3 checkpoint transformers
wrote (expert bias on); ``finalize_func`` picks it only where it applies."""

import pytest
import torch


def _step(model, vocab: int, step: int):
    g = torch.Generator().manual_seed(10 + step)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    labels = torch.randint(0, vocab, (2, 24), generator=g)
    pos = torch.arange(24).unsqueeze(0).expand(2, -1)
    model.zero_grad_buffer()
    loss = model(ids, pos, None, labels=labels)
    (loss * torch.rand(loss.shape, generator=g)).sum().backward()


def _state(model):
    grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    return grads, bufs


@pytest.mark.parametrize("num_tokens", [None, 7])
def test_one_rank_finalize_is_megatrons(num_tokens, hf_saved, hf_chunk, single_rank_module):
    from megatron.core.distributed import finalize_model_grads

    from megatron_ads.train.build import wrap_ddp
    from megatron_ads.train.finalize import OneRankFinalize

    chunk, cfg = hf_chunk(str(hf_saved("ds_qlora")), "auto")
    twin, _ = hf_chunk(str(hf_saved("ds_qlora")), "auto")  # the same weights (loaded from the checkpoint)
    assert twin.config is not chunk.config
    ref = wrap_ddp(chunk, chunk.config, distributed_optimizer=False, single_rank="megatron")
    ours = wrap_ddp(twin, twin.config, distributed_optimizer=False, single_rank="auto")
    assert chunk.config.finalize_model_grads_func is finalize_model_grads
    fin = twin.config.finalize_model_grads_func
    assert isinstance(fin, OneRankFinalize) and twin.config.moe_router_enable_expert_bias
    assert len(fin.routers) == 2  # the two MoE layers of ds_qlora (the first is dense)
    bias0 = [r.expert_bias.clone() for r in fin.routers]
    nt = None if num_tokens is None else torch.tensor(num_tokens)
    for step in range(3):  # the bias moves the routing of the next step: the states must stay equal throughout
        for model, f in ((ref, finalize_model_grads), (ours, fin)):
            _step(model, cfg.vocab_size, step)
            assert any(r.local_tokens_per_expert.sum() > 0 for r in fin.routers) or model is ref
            f([model], None if nt is None else nt.clone())
        (g_ref, b_ref), (g_ours, b_ours) = _state(ref), _state(ours)
        assert g_ref.keys() == g_ours.keys() and b_ref.keys() == b_ours.keys()
        assert [n for n in g_ref if not torch.equal(g_ref[n], g_ours[n])] == []
        assert [n for n in b_ref if not torch.equal(b_ref[n], b_ours[n])] == []
        assert all(float(r.local_tokens_per_expert.abs().sum()) == 0 for r in fin.routers)
    assert any(not torch.equal(b, r.expert_bias) for b, r in zip(bias0, fin.routers))  # the update ran
    assert fin.groups and all(g.param_gather_dispatched is False for g in fin.groups)


def test_finalize_func_keeps_megatrons_where_the_twin_does_not_apply(hf_saved, hf_chunk, single_rank_module):
    from megatron.core.distributed import finalize_model_grads

    from megatron_ads.train.build import wrap_ddp
    from megatron_ads.train.finalize import OneRankFinalize, finalize_func, one_rank_finalize_supported

    chunk, _cfg = hf_chunk(str(hf_saved("ds_qlora")), "auto")
    model = wrap_ddp(chunk, chunk.config, distributed_optimizer=False)
    assert one_rank_finalize_supported([model]) is None and isinstance(finalize_func([model]), OneRankFinalize)
    assert finalize_func([model], "megatron") is finalize_model_grads
    assert "DistributedDataParallel" in one_rank_finalize_supported([chunk])
    model.ddp_config.check_for_nan_in_grad = True
    assert "check_for_nan_in_grad" in one_rank_finalize_supported([model])
    model.ddp_config.check_for_nan_in_grad = False
    bucket = model.bucket_groups[0].buckets[0]
    bucket.gradient_scaling_factor = 0.5
    assert "scales" in one_rank_finalize_supported([model]) and finalize_func([model]) is finalize_model_grads
    bucket.gradient_scaling_factor = 1.0
    # another list of chunks than the one it was built for goes to megatron's function
    fin = OneRankFinalize([model])
    called = []
    fin.megatron = lambda *a: called.append(a)
    fin([chunk])
    assert called and called[0][0] == [chunk]
