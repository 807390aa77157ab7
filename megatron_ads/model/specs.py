"""megatron-core ModuleSpecs: TransformerEngine spec when TE is importable (and on CUDA), local spec
with the project's SDPA core attention otherwise; with ``fp8_backend``, the local spec with the FP8
linear of that backend (``kernels.fp8_linear``) in every attention and MLP linear (routed and shared
experts included). Routed experts: ``experts="grouped"`` puts the project's ``model.experts.GroupedExperts``
(one ``torch._grouped_mm`` per projection) in place of megatron's ``SequentialMLP`` in the local spec;
the TE spec keeps its own choice (megatron's ``TEGroupedMLP`` when ``moe_grouped_gemm``) and an FP8
backend keeps ``SequentialMLP`` (its experts are FP8 linears). One-rank twins (``single_rank="auto"``, the
default; ``"megatron"``: megatron-core's modules throughout): where the TP group has one rank
(``model.linear.local_linears_supported``), ``model.linear``'s plain linears in place of megatron's
``ColumnParallelLinear`` / ``RowParallelLinear`` in every attention and MLP of the local spec (shared and
sequential routed experts included; not with an FP8 backend); standard self-attention is
``model.attention.LeanSelfAttention`` (where ``lean_attention_supported``), multi-latent attention
``model.attention.LeanMLASelfAttention`` (where ``lean_mla_supported``); MoE layers on one
expert-parallel rank (EP = TP = 1, megatron's all-to-all dispatcher) are ``model.dispatch.OneRankMoELayer``:
megatron's dispatcher minus its identity steps, and megatron's router minus the branches its config turns off
(``model.router``). Backends are chosen here, never inside forward."""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.multi_latent_attention import MLASelfAttention
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_ads._compat import HAVE_TE
from megatron_ads.kernels.fp8_linear import fp8_linear_class
from megatron_ads.model.attention import (LeanMLASelfAttention, LeanSelfAttention, SDPACoreAttention,
                                         lean_attention_supported, lean_mla_supported)
from megatron_ads.model.dispatch import OneRankMoELayer, one_rank_dispatch_supported
from megatron_ads.model.experts import EXPERTS_IMPLS, GroupedExperts
from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear, local_linears_supported

ATTENTION_LINEARS = ("linear_qkv", "linear_q_proj", "linear_q_down_proj", "linear_q_up_proj", "linear_kv_down_proj",
                     "linear_kv_up_proj", "linear_proj")
"""The attention submodule fields that hold linears (GQA and MLA)."""
SINGLE_RANK = ("auto", "megatron")
"""``decoder_block_spec(single_rank=...)``: the project's one-rank twins where they apply, or megatron's."""


def use_te_default(device_type: str) -> bool:
    """TE spec only on CUDA with TransformerEngine importable."""
    return device_type == "cuda" and HAVE_TE


def decoder_block_spec(tconfig, use_te: bool, pp_rank: int | None = None,
                       fp8_backend: str | None = None, experts: str = "sequential",
                       single_rank: str = "auto") -> TransformerBlockSubmodules:
    """The decoder block spec of this pipeline stage (dense/MoE layers per ``tconfig.moe_layer_freq``).

    ``fp8_backend`` (``reference`` | ``triton`` | ``scaled_mm``): the local spec with that FP8 linear in
    place of every attention/MLP linear (``use_te`` is ignored: TE's fused norm+linear has no FP8 twin
    here); None: the plain spec. ``experts`` (``grouped`` | ``sequential``): the routed experts module of
    the local spec (ignored with ``fp8_backend``: the FP8 linears need ``SequentialMLP``). ``single_rank``
    (``auto`` | ``megatron``): ``auto`` puts the one-rank twins (``model.linear``, ``model.dispatch``) in
    the local spec where ``tconfig`` allows them (the linears not with ``fp8_backend``: those are FP8).
    """
    if experts not in EXPERTS_IMPLS:
        raise ValueError(f"experts: expected one of {', '.join(EXPERTS_IMPLS)}, got {experts!r}")
    if single_rank not in SINGLE_RANK:
        raise ValueError(f"single_rank: expected one of {', '.join(SINGLE_RANK)}, got {single_rank!r}")
    twins = single_rank == "auto"
    local = twins and local_linears_supported(tconfig) is None
    if fp8_backend is not None:
        use_te = False
    spec = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=use_te, normalization="RMSNorm",
                                      pp_rank=pp_rank)
    if use_te:
        return spec
    spec = copy.deepcopy(spec)
    one_rank = twins and tconfig.num_moe_experts and one_rank_dispatch_supported(tconfig) is None
    lean_attn = twins and lean_attention_supported(tconfig) is None
    lean_mla = twins and tconfig.multi_latent_attention and lean_mla_supported(tconfig) is None
    for layer in spec.layer_specs:
        layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
        if lean_attn and layer.submodules.self_attention.module is SelfAttention:
            layer.submodules.self_attention.module = LeanSelfAttention
        if lean_mla and layer.submodules.self_attention.module is MLASelfAttention:
            layer.submodules.self_attention.module = LeanMLASelfAttention
        if one_rank and layer.submodules.mlp.module is MoELayer:
            layer.submodules.mlp.module = OneRankMoELayer
        if fp8_backend is not None:
            _use_fp8_linears(layer, fp8_backend)
            continue
        if experts == "grouped" and issubclass(layer.submodules.mlp.module, MoELayer):
            layer.submodules.mlp.submodules.experts = ModuleSpec(module=GroupedExperts)
        if local:
            _swap_linears(layer, _local_linear)
    return spec


def _mlp_submodules(layer: ModuleSpec) -> list:
    """The MLP submodule specs of one layer spec holding ``linear_fc1`` / ``linear_fc2``: the dense MLP, or
    the shared experts and (``SequentialMLP``) the routed experts' MLP."""
    mlp = layer.submodules.mlp
    if not issubclass(mlp.module, MoELayer):
        return [mlp.submodules]
    subs = []
    experts = mlp.submodules.experts
    if getattr(experts, "module", None) is SequentialMLP and experts.submodules is not None:
        subs.append(experts.submodules)
    if mlp.submodules.shared_experts is not None:
        subs.append(mlp.submodules.shared_experts.submodules)
    return subs


def _local_linear(cls):
    """The plain TP-1 twin of megatron's linear class ``cls`` (``cls`` itself for any other)."""
    return (LocalColumnParallelLinear if cls is ColumnParallelLinear
            else LocalRowParallelLinear if cls is RowParallelLinear else cls)


def _swap_linears(layer: ModuleSpec, swap) -> None:
    """Replace each linear class ``cls`` of one (deep-copied) layer spec's attention and MLPs (dense MLP,
    shared experts, ``SequentialMLP``'s routed experts) by ``swap(cls)``."""
    attn = layer.submodules.self_attention.submodules
    for field in ATTENTION_LINEARS:
        if getattr(attn, field, None) is not None:
            setattr(attn, field, swap(getattr(attn, field)))
    for sub in _mlp_submodules(layer):
        sub.linear_fc1 = swap(sub.linear_fc1)
        sub.linear_fc2 = swap(sub.linear_fc2)


def _use_fp8_linears(layer: ModuleSpec, backend: str) -> None:
    """Swap the linears of one (deep-copied) layer spec for the FP8 linear of ``backend``."""
    mlp = layer.submodules.mlp
    if issubclass(mlp.module, MoELayer):
        experts = mlp.submodules.experts
        if experts.module is not SequentialMLP or experts.submodules is None:
            raise ValueError(f"fp8_backend={backend!r}: routed experts must be megatron's SequentialMLP "
                             f"(moe_grouped_gemm=False), got {getattr(experts.module, '__name__', experts.module)}")
    cls = fp8_linear_class(backend)
    _swap_linears(layer, lambda _: cls)
