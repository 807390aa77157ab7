"""megatron-core ModuleSpecs: TransformerEngine spec when TE is importable (and on CUDA), local spec
with the project's SDPA core attention otherwise. Backends are chosen here, never inside forward."""

from __future__ import annotations

import copy

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_ads._compat import HAVE_TE
from megatron_ads.model.attention import SDPACoreAttention


def use_te_default(device_type: str) -> bool:
    """TE spec only on CUDA with TransformerEngine importable."""
    return device_type == "cuda" and HAVE_TE


def decoder_block_spec(tconfig, use_te: bool, pp_rank: int | None = None) -> TransformerBlockSubmodules:
    """The decoder block spec of this pipeline stage (dense/MoE layers per ``tconfig.moe_layer_freq``)."""
    spec = get_gpt_decoder_block_spec(tconfig, use_transformer_engine=use_te, normalization="RMSNorm",
                                      pp_rank=pp_rank)
    if use_te:
        return spec
    spec = copy.deepcopy(spec)
    for layer in spec.layer_specs:
        layer.submodules.self_attention.submodules.core_attention = SDPACoreAttention
    return spec
