"""megatron-core ModuleSpecs: TransformerEngine spec when TE is importable (and on CUDA), local spec
with the project's SDPA core attention otherwise; with ``fp8_backend``, the local spec with the FP8
linear of that backend (``kernels.fp8_linear``) in every attention and MLP linear (routed and shared
experts included). Routed experts: ``experts="grouped"`` puts the project's ``model.experts.GroupedExperts``
(one ``torch._grouped_mm`` per projection) in place of megatron's ``SequentialMLP`` in the local spec;
the TE spec keeps its own choice (megatron's ``TEGroupedMLP`` when ``moe_grouped_gemm``) and an FP8
backend keeps ``SequentialMLP`` (its experts are FP8 linears). Backends are chosen here, never inside
forward."""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_ads._compat import HAVE_TE
from megatron_ads.kernels.fp8_linear import fp8_linear_class
from megatron_ads.model.attention import SDPACoreAttention
from megatron_ads.model.experts import EXPERTS_IMPLS, GroupedExperts

ATTENTION_LINEARS = ("linear_qkv", "linear_q_proj", "linear_q_down_proj", "linear_q_up_proj", "linear_kv_down_proj",
                     "linear_kv_up_proj", "linear_proj")
"""The attention submodule fields that hold linears (GQA and MLA)."""


def use_te_default(device_type: str) -> bool:
    """TE spec only on CUDA with TransformerEngine importable."""
    return device_type == "cuda" and HAVE_TE


def decoder_block_spec(tconfig, use_te: bool, pp_rank: int | None = None,
                       fp8_backend: str | None = None, experts: str = "sequential") -> TransformerBlockSubmodules:
    """The decoder block spec of this pipeline stage (dense/MoE layers per ``tconfig.moe_layer_freq``).

    ``fp8_backend`` (``reference`` | ``triton`` | ``scaled_mm``): the local spec with that FP8 linear in
    place of every attention/MLP linear (``use_te`` is ignored: TE's fused norm+linear has no FP8 twin
    here); None: the plain spec. ``experts`` (``grouped`` | ``sequential``): the routed experts module of
    the local spec (ignored with ``fp8_backend``: the FP8 linears need ``SequentialMLP``).
    """
    if experts not in EXPERTS_IMPLS:
        raise ValueError(f"experts: expected one of {', '.join(EXPERTS_IMPLS)}, got {experts!r}")
    if fp8_backend is not None:
        use_te = False
    spec = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=use_te, normalization="RMSNorm",
                                      pp_rank=pp_rank)
    if use_te:
        return spec
    spec = copy.deepcopy(spec)
    for layer in spec.layer_specs:
        layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
        if fp8_backend is not None:
            _use_fp8_linears(layer, fp8_backend)
        elif experts == "grouped" and layer.submodules.mlp.module is MoELayer:
            layer.submodules.mlp.submodules.experts = ModuleSpec(module=GroupedExperts)
    return spec


def _use_fp8_linears(layer: ModuleSpec, backend: str) -> None:
    """Swap the linears of one (deep-copied) layer spec for the FP8 linear of ``backend``."""
    cls = fp8_linear_class(backend)
    attn = layer.submodules.self_attention.submodules
    for field in ATTENTION_LINEARS:
        if getattr(attn, field, None) is not None:
            setattr(attn, field, cls)
    mlp = layer.submodules.mlp
    if mlp.module is MoELayer:
        experts = mlp.submodules.experts
        if experts.module is not SequentialMLP or experts.submodules is None:
            raise ValueError(f"fp8_backend={backend!r}: routed experts must be megatron's SequentialMLP "
                             f"(moe_grouped_gemm=False), got {getattr(experts.module, '__name__', experts.module)}")
        mlps = [experts.submodules]
        if mlp.submodules.shared_experts is not None:
            mlps.append(mlp.submodules.shared_experts.submodules)
    else:
        mlps = [mlp.submodules]
    for sub in mlps:
        sub.linear_fc1 = cls
        sub.linear_fc2 = cls
