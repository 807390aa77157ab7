"""The MoE layer on one expert-parallel rank: megatron-core's all-to-all token dispatcher without the steps
that are the identity there, selected through the ModuleSpec (``model.specs.decoder_block_spec``, where
``one_rank_dispatch_supported``).

How it works: with EP x TP = 1, megatron's ``MoEAlltoAllTokenDispatcher`` still runs, per MoE layer and
step, two ``all_to_all`` calls on a one-rank group each way (identity ``autograd.Function``s) and, with more
than one local expert, ``sort_chunks_by_idxs`` before and after the experts: a split of every routed token
into E chunks and a ``cat`` in the order ``arange(E)`` (the identity permutation on one rank), i.e. two
copies of the routed activations forward and two backward. ``OneRankTokenDispatcher`` keeps megatron's
preprocessing, first permutation (tokens sorted by expert) and routing-map bookkeeping, and returns the
tokens unchanged where megatron's would communicate or re-sort. The un-permutation adds the expert outputs
back with ``index_add_`` on the token index (what megatron does under deterministic algorithms) instead of
``scatter_add_`` on that index expanded to every hidden element, whose backward is a ``gather`` over the
expanded index (0.57 ms vs 0.1 ms for the ``index_select`` backward of ``index_add_``, 1 024 routed rows x
64, CPU); each output row sums its top-k expert rows in the routed order either way. The result, and its
gradient, are the same tensors. ``OneRankMoELayer`` is megatron's ``MoELayer`` whose dispatcher is that one,
and whose router is ``model.router.LeanTopKRouter`` where the config allows; on any other layout (EP or
TP > 1, drop-and-pad, other dispatcher types) it builds megatron's.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection
from megatron.core.transformer.moe.router import TopKRouter
from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher

from megatron_ads.model.router import LeanTopKRouter, lean_router_supported


def one_rank_dispatch_supported(tconfig) -> str | None:
    """Why megatron's dispatcher must stay for ``tconfig`` (None: ``OneRankTokenDispatcher`` can stand in)."""
    checks = (
        (tconfig.expert_model_parallel_size != 1, f"expert_model_parallel_size={tconfig.expert_model_parallel_size}"),
        ((tconfig.expert_tensor_parallel_size or tconfig.tensor_model_parallel_size) != 1, "expert tensor parallelism"),
        (tconfig.moe_token_dispatcher_type != "alltoall", f"moe_token_dispatcher_type={tconfig.moe_token_dispatcher_type}"),
        (tconfig.moe_pad_expert_input_to_capacity, "moe_pad_expert_input_to_capacity"),
    )
    return next((why for bad, why in checks if bad), None)


def unpermute_rows(permuted_tokens: torch.Tensor, sorted_indices: torch.Tensor, restore_shape) -> torch.Tensor:
    """megatron's ``unpermute`` (no probs, no drop-and-pad, not fused): row i of ``permuted_tokens`` added to
    row ``sorted_indices[i]`` of a zero ``restore_shape`` tensor, with ``index_add_`` on the row index."""
    out = torch.zeros(restore_shape, dtype=permuted_tokens.dtype, device=permuted_tokens.device)
    return out.index_add_(0, sorted_indices, permuted_tokens)


class OneRankTokenDispatcher(MoEAlltoAllTokenDispatcher):
    """``MoEAlltoAllTokenDispatcher`` on one rank (EP = TP = 1, no drop-and-pad): no all-to-all, no chunk sort."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.ep_size != 1 or self.tp_size != 1 or self.drop_and_pad:
            raise ValueError(f"OneRankTokenDispatcher: needs ep=tp=1 and no drop-and-pad, got ep={self.ep_size}, "
                             f"tp={self.tp_size}, drop_and_pad={self.drop_and_pad}")

    def token_dispatch(self, permutated_local_input_tokens, permuted_probs):
        self.tokens_per_expert = self._maybe_dtoh_and_synchronize("before_ep_alltoall", self.tokens_per_expert)
        return permutated_local_input_tokens, permuted_probs

    def dispatch_postprocess(self, global_input_tokens, global_probs):
        if self.shared_experts is not None:
            self.shared_experts.linear_fc1_forward_and_act(global_input_tokens)
        self.tokens_per_expert = self._maybe_dtoh_and_synchronize("before_permutation_2", self.tokens_per_expert)
        tokens_per_expert = self._maybe_dtoh_and_synchronize("before_finish", self.tokens_per_expert)
        self.tokens_per_expert = None
        return global_input_tokens, tokens_per_expert, global_probs

    def combine_preprocess(self, hidden_states):
        return hidden_states

    def token_combine(self, hidden_states, async_finish: bool = True, allocate_on_comm_stream: bool = True):
        return hidden_states

    def combine_postprocess(self, permutated_local_input_tokens):
        if self.config.moe_permute_fusion:  # TE's fused unpermute
            return super().combine_postprocess(permutated_local_input_tokens)
        if self.shared_experts is not None:
            self.shared_experts.linear_fc2_forward(permutated_local_input_tokens)
            self.shared_experts.post_forward_comm()
        output = unpermute_rows(permutated_local_input_tokens, self.reversed_local_input_permutation_mapping,
                                self.hidden_shape_before_permute).view(self.hidden_shape)
        if self.shared_experts is not None:
            output += self.shared_experts.get_output()
        return output


class _MoELayerDropIn(type(MoELayer)):
    """Metaclass: the class compares equal to megatron's ``MoELayer`` (identity hash kept), so that
    ``TransformerLayer`` recognises the spec's MLP module by its membership test and passes the process groups
    (otherwise: a warning and megatron's default groups)."""

    def __eq__(cls, other):
        return cls is other or other is MoELayer

    __hash__ = type(MoELayer).__hash__


class OneRankMoELayer(MoELayer, metaclass=_MoELayerDropIn):
    """megatron's ``MoELayer`` with ``OneRankTokenDispatcher`` where ``one_rank_dispatch_supported`` and
    ``model.router.LeanTopKRouter`` (same parameters and buffers, a leaner forward) where
    ``lean_router_supported``."""

    def __init__(self, config, submodules=None, layer_number=None, pg_collection=None, **kwargs):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         pg_collection=pg_collection, **kwargs)
        if type(self.router) is TopKRouter and lean_router_supported(self.config) is None:
            self.router.__class__ = LeanTopKRouter
        if one_rank_dispatch_supported(self.config) is not None:
            return
        dispatcher = OneRankTokenDispatcher(self.num_local_experts, self.local_expert_indices, config=self.config,
                                            pg_collection=pg_collection or get_default_pg_collection())
        if self.token_dispatcher.shared_experts is not None:
            dispatcher.set_shared_experts(self.token_dispatcher.shared_experts)
        self.token_dispatcher = dispatcher
