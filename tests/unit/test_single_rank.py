"""One-rank twins of megatron-core's modules (model.linear: plain TP-1 linears; model.dispatch: the MoE
dispatcher at EP = TP = 1 without identity all-to-alls and chunk sorts) give megatron's numbers: fp32 losses
and gradients of a training forward + backward on checkpoints written by transformers, the same state
dict, and where they do not apply megatron's modules stay."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch

TOL = 1e-6


def _build(hf_dir, single_rank: str, experts: str = "grouped"):
    from megatron_ads.checkpoint.hf_io import HFCheckpoint
    from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk
    from megatron_ads.config.model import ModelConfig
    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.weights import init_parallel
    from megatron_ads.model.build import build_model_chunk

    par = ParallelConfig()
    init_parallel(par)
    cfg = dataclasses.replace(ModelConfig.from_hf(hf_dir), num_mtp_layers=0)  # transformers saves no MTP tensors
    torch.manual_seed(0)
    model = build_model_chunk(cfg, par, dtype="fp32", device="cpu", experts=experts, single_rank=single_rank)
    load_hf_into_chunk(model, HFCheckpoint(hf_dir), cfg, par, current_coord())
    return model.train(), cfg


def _loss_and_grads(model, vocab: int):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    labels = torch.randint(0, vocab, (2, 24), generator=g)
    pos = torch.arange(24).unsqueeze(0).expand(2, -1)
    loss = model(ids, pos, None, labels=labels)
    (loss * torch.rand(loss.shape, generator=g)).sum().backward()
    grads = {n: (p.main_grad if getattr(p, "main_grad", None) is not None else p.grad)
             for n, p in model.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora", "qwen2", "llama_tied"])
def test_one_rank_twins_equal_megatron_modules(name, hf_saved, single_rank_module, caplog):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    from megatron_ads.model.dispatch import OneRankTokenDispatcher
    from megatron_ads.model.gpt import OneRankGPTModel
    from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear

    hf = str(hf_saved(name))
    with caplog.at_level("WARNING"):
        ours, cfg = _build(hf, "auto")
    assert not [r for r in caplog.records if "Unknown MLP type" in r.getMessage()]  # groups passed as to MoELayer
    ref, _ = _build(hf, "megatron")
    kinds = {type(m) for m in ours.modules()}
    assert {LocalColumnParallelLinear, LocalRowParallelLinear} <= kinds
    ref_kinds = {type(m) for m in ref.modules()}
    assert ColumnParallelLinear in ref_kinds and RowParallelLinear in ref_kinds
    assert not ref_kinds & {LocalColumnParallelLinear, LocalRowParallelLinear}
    if cfg.is_moe:
        assert {type(m.token_dispatcher) for m in ours.modules() if hasattr(m, "token_dispatcher")} == \
            {OneRankTokenDispatcher}
        assert {type(m.token_dispatcher) for m in ref.modules() if hasattr(m, "token_dispatcher")} == \
            {MoEAlltoAllTokenDispatcher}
    # the output layer (built by GPTModel, not the spec) is the twin too; the loss is the one-rank cross entropy
    assert type(ours) is OneRankGPTModel and type(ref) is GPTModel
    assert type(ours.output_layer) is LocalColumnParallelLinear and type(ref.output_layer) is ColumnParallelLinear
    # same parameters, same checkpoint keys
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    assert sorted(ours.sharded_state_dict()) == sorted(ref.sharded_state_dict())
    loss, grads = _loss_and_grads(ours, cfg.vocab_size)
    loss_ref, grads_ref = _loss_and_grads(ref, cfg.vocab_size)
    assert (loss - loss_ref).abs().max().item() <= TOL
    assert set(grads) == set(grads_ref)
    diffs = {n: (grads[n] - grads_ref[n]).abs().max().item() for n in grads if grads_ref[n] is not None}
    assert len(diffs) == len(grads) and max(diffs.values()) <= TOL, sorted(diffs.items(), key=lambda x: -x[1])[:3]


def test_sequential_experts_get_plain_linears_and_the_one_rank_dispatcher(hf_saved, single_rank_module):
    from megatron.core.transformer.moe.experts import SequentialMLP

    from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear

    hf = str(hf_saved("ds_groups4"))
    ours, cfg = _build(hf, "auto", experts="sequential")
    ref, _ = _build(hf, "megatron", experts="sequential")
    seq = [m for m in ours.modules() if isinstance(m, SequentialMLP)]
    assert seq and all(type(e.linear_fc1) is LocalColumnParallelLinear and type(e.linear_fc2) is LocalRowParallelLinear
                       for m in seq for e in m.local_experts)
    loss, grads = _loss_and_grads(ours, cfg.vocab_size)
    loss_ref, grads_ref = _loss_and_grads(ref, cfg.vocab_size)
    assert (loss - loss_ref).abs().max().item() <= TOL
    assert max((grads[n] - grads_ref[n]).abs().max().item() for n in grads) <= TOL


def test_where_the_twins_do_not_apply_megatron_modules_stay():
    from megatron_ads.model.dispatch import one_rank_dispatch_supported
    from megatron_ads.model.linear import local_linears_supported

    base = dict(tensor_model_parallel_size=1, sequence_parallel=False, gradient_accumulation_fusion=False,
                expert_model_parallel_size=1, expert_tensor_parallel_size=None, moe_token_dispatcher_type="alltoall",
                moe_pad_expert_input_to_capacity=False)
    assert local_linears_supported(SimpleNamespace(**base)) is None
    assert one_rank_dispatch_supported(SimpleNamespace(**base)) is None
    assert local_linears_supported(SimpleNamespace(**{**base, "tensor_model_parallel_size": 2})) == \
        "tensor_model_parallel_size=2"
    assert local_linears_supported(SimpleNamespace(**{**base, "gradient_accumulation_fusion": True})) == \
        "gradient_accumulation_fusion"
    assert local_linears_supported(SimpleNamespace(**{**base, "delay_wgrad_compute": True})) == "delay_wgrad_compute"
    assert one_rank_dispatch_supported(SimpleNamespace(**{**base, "expert_model_parallel_size": 2})) == \
        "expert_model_parallel_size=2"
    assert one_rank_dispatch_supported(SimpleNamespace(**{**base, "expert_tensor_parallel_size": 2})) == \
        "expert tensor parallelism"
    assert one_rank_dispatch_supported(SimpleNamespace(**{**base, "moe_token_dispatcher_type": "allgather"})) == \
        "moe_token_dispatcher_type=allgather"
    assert one_rank_dispatch_supported(SimpleNamespace(**{**base, "moe_pad_expert_input_to_capacity": True})) == \
        "moe_pad_expert_input_to_capacity"


def test_mla_accepts_the_plain_column_linear_and_the_option_validates():
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear

    from megatron_ads.config.train import ModelSpec
    from megatron_ads.model.linear import LocalColumnParallelLinear
    from megatron_ads.model.specs import decoder_block_spec

    from megatron.core.transformer.moe.moe_layer import MoELayer

    from megatron_ads.model.dispatch import OneRankMoELayer

    assert LocalColumnParallelLinear in [None, ColumnParallelLinear]  # MLA's list-membership check
    assert hash(LocalColumnParallelLinear) != hash(ColumnParallelLinear)
    # TransformerLayer passes the process groups to an MLP module `in (MoELayer, ...)`, else warns
    assert OneRankMoELayer in (MoELayer,) and hash(OneRankMoELayer) != hash(MoELayer)
    assert ModelSpec().single_rank == "auto" and ModelSpec(single_rank="megatron").single_rank == "megatron"
    with pytest.raises(ValueError, match=r"model\.single_rank: expected one of auto, megatron, got 'local'"):
        ModelSpec(single_rank="local")
    with pytest.raises(ValueError, match=r"single_rank: expected one of auto, megatron, got 'on'"):
        decoder_block_spec(SimpleNamespace(), use_te=False, single_rank="on")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_rank_cross_entropy_is_megatrons_bit_for_bit(dtype, single_rank_module):
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.weights import init_parallel
    from megatron_ads.model.gpt import one_rank_cross_entropy

    init_parallel(ParallelConfig())
    g = torch.Generator().manual_seed(5)
    S, B, V = 7, 3, 50
    logits = (torch.randn(S, B, V, generator=g) * 4).to(dtype)
    target = torch.randint(0, V, (S, B), generator=g)
    target[0, 0], target[1, 2] = -1, V  # outside the vocabulary: megatron counts their target logit as 0
    grad = torch.rand(S, B, generator=g)
    results = []
    for fn in (one_rank_cross_entropy, vocab_parallel_cross_entropy):
        x = logits.clone().requires_grad_()
        loss = fn(x.clone(), target)  # both overwrite an fp32 input in place: give them a copy
        loss.backward(grad)
        results.append((loss.detach(), x.grad))
    (loss, dx), (loss_ref, dx_ref) = results
    assert loss.dtype == loss_ref.dtype == torch.float32 and dx.dtype == dtype
    assert torch.equal(loss, loss_ref) and torch.equal(dx, dx_ref)
    ref = torch.nn.functional.cross_entropy(logits.float().reshape(-1, V), target.clamp(0, V - 1).reshape(-1),
                                            reduction="none").reshape(S, B)
    inside = (target >= 0) & (target < V)
    assert torch.allclose(loss[inside], ref[inside], rtol=0, atol=1e-5)
