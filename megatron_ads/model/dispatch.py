"""The MoE layer on one expert-parallel rank: megatron-core's all-to-all token dispatcher without the steps
that are the identity there, selected through the ModuleSpec (``model.specs.decoder_block_spec``, where
``one_rank_dispatch_supported``).

How it works: with EP x TP = 1, megatron's ``MoEAlltoAllTokenDispatcher`` still runs, per MoE layer and
step, two ``all_to_all`` calls on a one-rank group each way (identity ``autograd.Function``s) and, with more
than one local expert, ``sort_chunks_by_idxs`` before and after the experts: a split of every routed token
into E chunks and a ``cat`` in the order ``arange(E)`` (the identity permutation on one rank), i.e. two
copies of the routed activations forward and two backward. ``OneRankTokenDispatcher`` keeps megatron's
preprocessing, first permutation (tokens sorted by expert), routing-map bookkeeping and un-permutation,
and returns the tokens unchanged where megatron's would communicate or re-sort; the result, and its
gradient, are the same tensors. ``OneRankMoELayer`` is megatron's ``MoELayer`` whose dispatcher is that
one; on any other layout (EP or TP > 1, drop-and-pad, other dispatcher types) it builds megatron's.
"""

from __future__ import annotations

from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.moe_utils import get_default_pg_collection
from megatron.core.transformer.moe.token_dispatcher import MoEAlltoAllTokenDispatcher


def one_rank_dispatch_supported(tconfig) -> str | None:
    """Why megatron's dispatcher must stay for ``tconfig`` (None: ``OneRankTokenDispatcher`` can stand in)."""
    checks = (
        (tconfig.expert_model_parallel_size != 1, f"expert_model_parallel_size={tconfig.expert_model_parallel_size}"),
        ((tconfig.expert_tensor_parallel_size or tconfig.tensor_model_parallel_size) != 1, "expert tensor parallelism"),
        (tconfig.moe_token_dispatcher_type != "alltoall", f"moe_token_dispatcher_type={tconfig.moe_token_dispatcher_type}"),
        (tconfig.moe_pad_expert_input_to_capacity, "moe_pad_expert_input_to_capacity"),
    )
    return next((why for bad, why in checks if bad), None)


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


class _MoELayerDropIn(type(MoELayer)):
    """Metaclass: the class compares equal to megatron's ``MoELayer`` (identity hash kept), so that
    ``TransformerLayer`` recognises the spec's MLP module by its membership test and passes the process groups
    (otherwise: a warning and megatron's default groups)."""

    def __eq__(cls, other):
        return cls is other or other is MoELayer

    __hash__ = type(MoELayer).__hash__


class OneRankMoELayer(MoELayer, metaclass=_MoELayerDropIn):
    """megatron's ``MoELayer`` with ``OneRankTokenDispatcher`` where ``one_rank_dispatch_supported``."""

    def __init__(self, config, submodules=None, layer_number=None, pg_collection=None, **kwargs):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         pg_collection=pg_collection, **kwargs)
        if one_rank_dispatch_supported(self.config) is not None:
            return
        dispatcher = OneRankTokenDispatcher(self.num_local_experts, self.local_expert_indices, config=self.config,
                                            pg_collection=pg_collection or get_default_pg_collection())
        if self.token_dispatcher.shared_experts is not None:
            dispatcher.set_shared_experts(self.token_dispatcher.shared_experts)
        self.token_dispatcher = dispatcher
