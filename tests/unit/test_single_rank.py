"""One-rank twins of megatron-core's modules (model.linear: plain TP-1 linears; model.dispatch: the MoE
dispatcher at EP = TP = 1 without identity all-to-alls and chunk sorts) give megatron's numbers: fp32 losses
and gradients of a training forward + backward on checkpoints written by transformers, the same state
dict, and where they do not apply megatron's modules stay."""

from types import SimpleNamespace

import pytest
import torch

TOL = 1e-6


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
def test_one_rank_twins_equal_megatron_modules(name, hf_saved, hf_chunk, single_rank_module, caplog):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.moe.router import TopKRouter
    from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

    from megatron_ads.model.dispatch import OneRankTokenDispatcher
    from megatron_ads.model.router import LeanTopKRouter
    from megatron_ads.model.gpt import OneRankGPTModel
    from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear

    hf = str(hf_saved(name))
    with caplog.at_level("WARNING"):
        ours, cfg = hf_chunk(hf, "auto")
    assert not [r for r in caplog.records if "Unknown MLP type" in r.getMessage()]  # groups passed as to MoELayer
    ref, _ = hf_chunk(hf, "megatron")
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
        assert {type(m.router) for m in ours.modules() if hasattr(m, "router")} == {LeanTopKRouter}
        assert {type(m.router) for m in ref.modules() if hasattr(m, "router")} == {TopKRouter}
    # standard self-attention and multi-latent attention are the lean twins
    from megatron.core.transformer.attention import SelfAttention
    from megatron.core.transformer.multi_latent_attention import MLASelfAttention

    from megatron_ads.model.attention import LeanMLASelfAttention, LeanSelfAttention

    attn = {type(m) for m in ours.modules() if isinstance(m, (SelfAttention, MLASelfAttention))}
    assert attn == ({LeanMLASelfAttention} if cfg.family == "deepseek_v3" else {LeanSelfAttention})
    assert {type(m) for m in ref.modules() if isinstance(m, (SelfAttention, MLASelfAttention))} == \
        ({MLASelfAttention} if cfg.family == "deepseek_v3" else {SelfAttention})
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
    # the expert-bias update counts the same routed tokens
    counts = {n: b for n, b in ours.named_buffers() if n.endswith("local_tokens_per_expert")}
    counts_ref = {n: b for n, b in ref.named_buffers() if n.endswith("local_tokens_per_expert")}
    assert counts.keys() == counts_ref.keys() and all(torch.equal(counts[n], counts_ref[n]) for n in counts)
    assert not cfg.is_moe or counts and all(c.sum() > 0 for c in counts.values())


def test_sequential_experts_get_plain_linears_and_the_one_rank_dispatcher(hf_saved, hf_chunk, single_rank_module):
    from megatron.core.transformer.moe.experts import SequentialMLP

    from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear

    hf = str(hf_saved("ds_groups4"))
    ours, cfg = hf_chunk(hf, "auto", experts="sequential")
    ref, _ = hf_chunk(hf, "megatron", experts="sequential")
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unpermute_rows_is_megatrons_unpermute_bit_for_bit(dtype):
    """The one-rank dispatcher's un-permutation (``index_add_`` on the row index) equals megatron's
    ``unpermute`` (``scatter_add_`` on the expanded index), forward and gradient, at top-6 of 16 experts
    (each output row sums six expert rows: the order of the adds matters)."""
    from megatron.core.transformer.moe.moe_utils import permute, unpermute

    from megatron_ads.model.dispatch import unpermute_rows

    g = torch.Generator().manual_seed(11)
    T, D, E, K = 40, 24, 16, 6
    tokens = torch.randn(T, D, generator=g).to(dtype)
    top = torch.rand(T, E, generator=g).topk(K, dim=1).indices
    routing_map = torch.zeros(T, E, dtype=torch.bool).scatter_(1, top, True)
    permuted, _, sorted_indices = permute(tokens, routing_map)
    assert permuted.shape == (T * K, D)
    expert_out = (permuted.float() * torch.rand(T * K, 1, generator=g) * 7).to(dtype)  # rows that differ
    upstream = torch.randn(T, D, generator=g).to(dtype)
    results = []
    for fn in (unpermute_rows, lambda x, idx, shape: unpermute(x, idx, restore_shape=shape)):
        x = expert_out.clone().requires_grad_()
        out = fn(x, sorted_indices, tokens.shape)
        out.backward(upstream)
        results.append((out.detach(), x.grad))
    (out, dx), (out_ref, dx_ref) = results
    assert out.dtype == dtype and torch.equal(out, out_ref) and torch.equal(dx, dx_ref)
    ref = torch.zeros(T, D, dtype=torch.float64)
    for i, row in enumerate(sorted_indices.tolist()):
        ref[row] += expert_out[i].double()
    assert torch.allclose(out.double(), ref, rtol=1e-2 if dtype == torch.bfloat16 else 1e-6, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_router_is_megatrons_router_bit_for_bit(dtype, hf_saved, hf_chunk, single_rank_module):
    """``LeanTopKRouter`` (the one-rank MoE layer's router) against megatron's ``TopKRouter.forward`` on the
    same module: probs, routing map, input and weight gradients and the expert-bias token counts; fp32 input
    takes the plain gate, bf16 input megatron's gate (dtypes differ). (With a padding mask the lean router
    runs megatron's forward, whose expert-bias count fails to broadcast the mask in megatron-core 0.16.1.)"""
    from megatron.core.transformer.moe.router import TopKRouter

    from megatron_ads.model.router import LeanTopKRouter

    model, _ = hf_chunk(str(hf_saved("ds_groups4")), "auto")
    router = next(m.router for m in model.modules() if hasattr(m, "router"))
    assert type(router) is LeanTopKRouter and router.enable_expert_bias
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(9, 2, router.weight.shape[1], generator=g).to(dtype)
    upstream = torch.rand(18, router.config.num_moe_experts, generator=g)
    results = []
    for forward in (LeanTopKRouter.forward, TopKRouter.forward):
        router.weight.grad = None
        router.local_tokens_per_expert.zero_()
        x = x0.clone().requires_grad_()
        probs, routing_map = forward(router, x)
        (probs * upstream).sum().backward()
        results.append((probs.detach(), routing_map, x.grad, router.weight.grad.clone(),
                        router.local_tokens_per_expert.clone()))
    ours, ref = results
    assert ours[1].dtype == torch.bool and ours[1].sum() == 18 * router.topk
    assert all(torch.equal(a, b) for a, b in zip(ours, ref, strict=True))
    assert ours[4].sum() == 18 * router.topk


def test_lean_router_refuses_what_it_does_not_run():
    from megatron_ads.model.router import lean_router_supported

    base = dict(moe_router_load_balancing_type="none", moe_aux_loss_coeff=0.0, moe_z_loss_coeff=None,
                moe_input_jitter_eps=None, moe_expert_capacity_factor=None, moe_router_fusion=False,
                moe_enable_routing_replay=False, moe_router_force_load_balancing=False)
    assert lean_router_supported(SimpleNamespace(**base)) is None
    assert lean_router_supported(SimpleNamespace(**{**base, "moe_router_load_balancing_type": "seq_aux_loss"})) is None
    for change, why in ((dict(moe_router_load_balancing_type="seq_aux_loss", moe_aux_loss_coeff=1e-4), "aux loss"),
                        (dict(moe_router_load_balancing_type=["aux_loss", "seq_aux_loss"],
                              moe_aux_loss_coeff=[0.0, 1e-3]), "aux loss"),
                        (dict(moe_router_load_balancing_type="sinkhorn"), "sinkhorn routing"),
                        (dict(moe_z_loss_coeff=1e-3), "moe_z_loss_coeff"),
                        (dict(moe_input_jitter_eps=0.01), "moe_input_jitter_eps"),
                        (dict(moe_expert_capacity_factor=1.0), "moe_expert_capacity_factor"),
                        (dict(moe_router_fusion=True), "moe_router_fusion"),
                        (dict(moe_enable_routing_replay=True), "moe_enable_routing_replay")):
        assert lean_router_supported(SimpleNamespace(**{**base, **change})).startswith(why)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rot", [16, 8])  # the whole head dim, and partial rotary (the rest passed through)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_rope_is_megatrons_bit_for_bit(interleaved, rot, dtype):
    from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb

    from megatron_ads.model.attention import LeanSelfAttention

    cfg = SimpleNamespace(rotary_interleaved=interleaved, apply_rope_fusion=False, multi_latent_attention=False)
    attn = object.__new__(LeanSelfAttention)  # the RoPE methods only: no process groups needed
    torch.nn.Module.__init__(attn)
    attn.config, attn.rope_mscale, attn._rope_table = cfg, 1.3, None
    g = torch.Generator().manual_seed(0)
    freqs = torch.rand(12, 1, 1, rot, generator=g) * 10
    t = torch.randn(12, 2, 4, 16, generator=g, dtype=torch.float32).to(dtype).requires_grad_()
    t_ref = t.detach().clone().requires_grad_()
    w = torch.randn(12, 2, 4, 16, generator=g).to(dtype)
    for _ in range(2):  # the second call reads cos / sin from the cache
        out = attn._rope(t, freqs)
        ref = apply_rotary_pos_emb(t_ref, freqs, config=cfg, mscale=1.3, cp_group=SimpleNamespace())
        assert torch.equal(out, ref)
        (out * w).sum().backward()
        (ref * w).sum().backward()
        assert torch.equal(t.grad, t_ref.grad)
    assert attn._rope_table[0]() is freqs
    other = freqs.clone()  # another table: recomputed, not the cached one
    assert torch.equal(attn._rope(t, other), ref)
    assert attn._rope_table[0]() is other


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora"])
def test_lean_mla_is_megatrons_bit_for_bit(name, hf_saved, hf_chunk, single_rank_module):
    """``LeanMLASelfAttention`` against megatron's ``MLASelfAttention`` on the same modules (the class swapped on
    one model built from a checkpoint transformers wrote): fp32 loss and every gradient bit-equal, twice (the
    second pass reads cos / sin from the cache)."""
    from megatron.core.transformer.multi_latent_attention import MLASelfAttention

    from megatron_ads.model.attention import LeanMLASelfAttention

    model, cfg = hf_chunk(str(hf_saved(name)), "auto")
    attns = [m for m in model.modules() if isinstance(m, MLASelfAttention)]
    assert attns and all(type(a) is LeanMLASelfAttention for a in attns)
    results = {}
    for kind, cls in (("lean", LeanMLASelfAttention), ("megatron", MLASelfAttention), ("lean again", LeanMLASelfAttention)):
        for a in attns:
            a.__class__ = cls
        model.zero_grad()
        for p in model.parameters():
            if getattr(p, "main_grad", None) is not None:
                p.main_grad.zero_()
        loss, grads = _loss_and_grads(model, cfg.vocab_size)
        results[kind] = loss, {n: g.clone() for n, g in grads.items() if g is not None}
    for kind in ("lean", "lean again"):
        assert torch.equal(results[kind][0], results["megatron"][0])
        assert results[kind][1].keys() == results["megatron"][1].keys()
        unequal = [n for n, g in results[kind][1].items() if not torch.equal(g, results["megatron"][1][n])]
        assert not unequal, unequal[:3]
    assert attns[0]._rope_table is not None and attns[0]._rope_table[0]() is not None


def test_lean_mla_refuses_what_it_does_not_run():
    from megatron_ads.model.attention import lean_mla_supported

    base = dict(tensor_model_parallel_size=1, context_parallel_size=1, apply_rope_fusion=False,
                rotary_interleaved=False, cache_mla_latents=False, experimental_attention_variant=None,
                fine_grained_activation_offloading=False, recompute_granularity=None, recompute_modules=None)
    assert lean_mla_supported(SimpleNamespace(**base)) is None
    for key, value, reason in (("tensor_model_parallel_size", 2, "tensor_model_parallel_size"),
                               ("context_parallel_size", 2, "context_parallel_size"),
                               ("apply_rope_fusion", True, "apply_rope_fusion"),
                               ("rotary_interleaved", True, "rotary_interleaved"),
                               ("cache_mla_latents", True, "cache_mla_latents"),
                               ("experimental_attention_variant", "dsa", "experimental_attention_variant"),
                               ("fine_grained_activation_offloading", True, "fine_grained_activation_offloading")):
        assert lean_mla_supported(SimpleNamespace(**{**base, key: value})) == reason
    for modules in (["core_attn"], ["mla_up_proj"]):
        assert lean_mla_supported(SimpleNamespace(**{**base, "recompute_granularity": "selective",
                                                     "recompute_modules": modules})) == \
            "recompute core_attn / mla_up_proj"
    assert lean_mla_supported(SimpleNamespace(**{**base, "recompute_granularity": "selective",
                                                 "recompute_modules": ["mlp"]})) is None


def test_lean_attention_refuses_what_it_does_not_run():
    from megatron_ads.model.attention import lean_attention_supported

    base = dict(context_parallel_size=1, apply_rope_fusion=False, fused_single_qkv_rope=False,
                attention_output_gate=False, multi_latent_attention=False, no_rope_freq=None,
                fine_grained_activation_offloading=False, recompute_granularity=None, recompute_modules=None)
    assert lean_attention_supported(SimpleNamespace(**base)) is None
    for key, value, reason in (("context_parallel_size", 2, "context_parallel_size"),
                               ("apply_rope_fusion", True, "apply_rope_fusion"),
                               ("fused_single_qkv_rope", True, "fused_single_qkv_rope"),
                               ("attention_output_gate", True, "attention_output_gate"),
                               ("multi_latent_attention", True, "multi_latent_attention"),
                               ("no_rope_freq", [1, 0], "no_rope_freq"),
                               ("fine_grained_activation_offloading", True, "fine_grained_activation_offloading")):
        assert lean_attention_supported(SimpleNamespace(**{**base, key: value})) == reason
    assert lean_attention_supported(SimpleNamespace(**{**base, "recompute_granularity": "selective",
                                                       "recompute_modules": ["core_attn"]})) == "recompute core_attn"
    assert lean_attention_supported(SimpleNamespace(**{**base, "recompute_granularity": "selective",
                                                       "recompute_modules": ["mlp"]})) is None


@pytest.mark.parametrize("name", ["ds_qlora", "llama_tied"])
def test_lean_attention_trains_after_an_inference_mode_pass(name, hf_saved, hf_chunk, single_rank_module):
    """A validation pass under ``torch.inference_mode`` fills the twins' cos / sin cache with inference tensors;
    the next training step must not save them for backward (it makes them again) and gives the numbers of a
    model that never ran in inference mode."""
    from megatron_ads.model.attention import LeanMLASelfAttention, LeanSelfAttention

    fresh, cfg = hf_chunk(str(hf_saved(name)), "auto")
    ref_loss, ref_grads = _loss_and_grads(fresh, cfg.vocab_size)
    model, _ = hf_chunk(str(hf_saved(name)), "auto")
    attns = [m for m in model.modules() if isinstance(m, (LeanSelfAttention, LeanMLASelfAttention))]
    assert attns
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    with torch.inference_mode():
        model(ids, torch.arange(24).unsqueeze(0).expand(2, -1), None)
    assert all(a._rope_table is not None and a._rope_table[-1].is_inference() for a in attns)
    loss, grads = _loss_and_grads(model, cfg.vocab_size)
    assert torch.equal(loss, ref_loss)
    assert [n for n, gr in grads.items() if gr is not None and not torch.equal(gr, ref_grads[n])] == []
    assert not any(a._rope_table[-1].is_inference() for a in attns)
