"""Lean inference twins of megatron-core modules, swapped in for the duration of an engine call.

How it works
------------
On a tiny batch (a decode step feeds one token per row) megatron-core's forward is dominated by fixed
per-module costs that only training needs: each ``TransformerLayer`` call checks recompute / offload /
cuda-graph flags and runs cross-attention identities; every ``ColumnParallelLinear`` /
``RowParallelLinear`` runs through autograd ``Function``s (TP copy / reduce regions, gradient-accumulation bookkeeping) even under
``inference_mode`` and at TP 1; the MoE token dispatcher permutes, "all-to-alls" and un-permutes even on
one rank; ``SequentialMLP`` calls every local expert, also those that received no token. ``lean(model)``
is a context manager that, for its duration, replaces

* each ``TransformerLayer`` in eval mode (self-attention only; no recompute, offload, TP-fused
  inference kernels, chunked prefill or cuda graphs: ``_lean_layer_ok``) by ``_LeanLayer``: the layer's
  own norms, attention and MLP with the two residual adds as megatron's bias-dropout-add does them, minus
  the per-call bookkeeping (cross-attention identities, flags, nvtx ranges);
* each ``MoELayer`` on one rank (EP 1, TP 1; plain sequential experts, see ``_lean_moe_ok``) by
  ``_LeanMoE``: the model's own router and shared expert, then the experts' math without the dispatcher
  (see the class), summed in megatron's order: the same values;
* each other ``SequentialMLP`` (EP > 1: the dispatcher and its all-to-all stay) by ``_LeanExperts``: the
  same split of the permuted tokens by ``tokens_per_expert``, the same expert modules on their own
  tokens, experts without tokens skipped (their output is an empty slice of the concatenation);
* each ``ColumnParallelLinear`` / ``RowParallelLinear`` whose TP group has one rank (exactly those
  classes: TE and FP8 linears are kept) by ``_LeanLinear``: ``torch.matmul(x, weight.t())`` then
  ``+ bias`` - the ops megatron's linear runs at TP 1, so the output is bit-identical - returning
  megatron's ``(output, bias)`` pair.

Everything else (attention, router, norms, embedding, output layer) is the model's own. The swap is
undone on exit, also on error, so a model shared with a trainer is left as it was; weights are read at
swap time, so updates between engine calls are seen. Attributes not defined on a twin are read from the
module it stands in for; a twin does not register that module as a child (``unwrap`` returns it), so
code that walks or edits a layer's submodules inside ``lean`` (``infer.cache`` swapping attentions)
unwraps first.

Shapes (legend): S sequence, B batch, D hidden, T tokens (S*B), E experts, A (token, expert) pairs,
K 2 x expert ffn (gate; up), F expert ffn.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.moe.token_dispatcher import MoEAllGatherTokenDispatcher, MoEAlltoAllTokenDispatcher
from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
from megatron.core.transformer.transformer_layer import TransformerLayer

from megatron_ads.model.dispatch import OneRankMoELayer, OneRankTokenDispatcher
from megatron_ads.model.linear import LocalColumnParallelLinear, LocalRowParallelLinear


_COLUMN = {ColumnParallelLinear, LocalColumnParallelLinear}
_ROW = {RowParallelLinear, LocalRowParallelLinear}
"""Plain linear classes whose math ``_LeanMoE`` reproduces (megatron's and ``model.linear``'s TP-1 twins; a
set: hashed by identity, so the FP8 linears, equal to ``ColumnParallelLinear`` by their metaclass, are not in)."""


class _Twin(torch.nn.Module):
    """Stands in for ``inner`` (not registered as a child: the swap is temporary)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", inner)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "inner"), name)


class _LeanLinear(_Twin):
    """A TP-1 ``ColumnParallelLinear`` / ``RowParallelLinear``: same math, same ``(output, bias)`` return."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__(inner)
        object.__setattr__(self, "w", inner.weight)
        bias = inner.bias
        object.__setattr__(self, "add_bias", None if inner.skip_bias_add else bias)
        object.__setattr__(self, "ret_bias", bias if inner.skip_bias_add else None)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, runtime_gather_output=None):
        out = torch.matmul(x, (self.w if weight is None else weight).t())
        if self.add_bias is not None:
            out = out + self.add_bias
        return out, self.ret_bias


class _LeanExperts(_Twin):
    """A ``SequentialMLP`` that skips experts without tokens."""

    def forward(self, hidden_TD: torch.Tensor, tokens_per_expert: torch.Tensor, probs_T: torch.Tensor):
        counts = tokens_per_expert.tolist()
        outs = []
        start = 0
        for expert, n in zip(self.inner.local_experts, counts):
            if n:
                outs.append(expert(hidden_TD[start:start + n], probs_T[start:start + n])[0])
                start += n
        if not outs:
            return hidden_TD[:0], None
        return torch.cat(outs, dim=0), None


STACK_EXPERTS_MAX_BYTES = 256 * 2**20
"""On CPU, ``_LeanMoE`` copies a layer's expert weights into stacked [E, ...] tensors (one grouped GEMM per
projection) when they take at most this many bytes; larger layers, and other devices, loop over the
experts that received tokens."""


class _LeanMoE(_Twin):
    """A ``MoELayer`` on one rank (EP 1, TP 1) without its token dispatcher. The (token, expert) pairs are
    ordered as megatron's permute orders them (by expert, then token); each pair runs the expert's math as
    megatron's ``MLP`` runs it (fc1, gated activation, times the routing prob, fc2: the same ops), either
    as one ``torch._grouped_mm`` per projection over weights stacked at swap time (equal to the
    per-expert matmuls in fp32) or, for large layers, per expert that received tokens; the outputs are
    summed per token with ``index_add_`` in that order - the order in which megatron's unpermute
    ``scatter_add_`` sums them - then the shared expert's output is added."""

    def __init__(self, inner: MoELayer):
        super().__init__(inner)
        c = inner.config
        experts = inner.experts.local_experts
        w1 = [e.linear_fc1.weight for e in experts]
        w2 = [e.linear_fc2.weight for e in experts]
        nbytes = sum(w.numel() * w.element_size() for w in (*w1, *w2))
        stacked = nbytes <= STACK_EXPERTS_MAX_BYTES and w1[0].device.type == "cpu" and hasattr(torch, "_grouped_mm")
        object.__setattr__(self, "act", c.activation_func)
        object.__setattr__(self, "offset", c.glu_linear_offset)
        object.__setattr__(self, "w", list(zip(w1, w2)))
        # stacked [E, D, 2F] and [E, F, D]: transposed views, as the matmuls use ``weight.t()``
        object.__setattr__(self, "w1_EDK", torch.stack(w1).transpose(1, 2) if stacked else None)
        object.__setattr__(self, "w2_EFD", torch.stack(w2).transpose(1, 2) if stacked else None)

    def _expert_math(self, x_AD, p_A, fc1, fc2):
        h = fc1(x_AD)
        gate, up = torch.chunk(h, 2, dim=-1)
        h = self.act(gate) * (up + self.offset)
        return fc2((h * p_A.unsqueeze(-1)).to(x_AD.dtype))

    def forward(self, hidden_SBD: torch.Tensor, intermediate_tensors=None, padding_mask=None):
        moe = self.inner
        if padding_mask is not None:
            padding_mask = padding_mask.transpose(0, 1).bool()
        shared = moe.shared_experts(hidden_SBD) if moe.use_shared_expert else None
        probs_TE, map_TE = moe.router(hidden_SBD, padding_mask)
        x_TD = hidden_SBD.reshape(-1, hidden_SBD.shape[-1])
        out_TD = torch.zeros_like(x_TD)
        if self.w1_EDK is not None:
            e_A, t_A = map_TE.t().nonzero(as_tuple=True)  # by expert, then token: megatron's permute order
            offs = torch.bincount(e_A, minlength=map_TE.shape[1]).cumsum(0).to(torch.int32)
            o_AD = self._expert_math(x_TD.index_select(0, t_A), probs_TE[t_A, e_A],
                                     lambda a: torch._grouped_mm(a, self.w1_EDK, offs=offs),
                                     lambda a: torch._grouped_mm(a, self.w2_EFD, offs=offs))
            out_TD.index_add_(0, t_A, o_AD)
        else:
            for e in map_TE.any(0).nonzero().squeeze(1).tolist():
                idx = map_TE[:, e].nonzero().squeeze(1)
                w1, w2 = self.w[e]
                out_TD.index_add_(0, idx, self._expert_math(x_TD.index_select(0, idx), probs_TE[idx, e],
                                                            lambda a: torch.matmul(a, w1.t()),
                                                            lambda a: torch.matmul(a, w2.t())))
        out = out_TD.view(hidden_SBD.shape)
        if shared is not None:
            out = out + shared
        return out, None


def _lean_moe_ok(moe: MoELayer) -> bool:
    """The MoE layers ``_LeanMoE`` reproduces: one rank, sequential experts of plain bias-free linears with
    megatron's unfused gated activation, no latent projection / overlap / recompute / padding / FP8."""
    c, d = moe.config, moe.token_dispatcher
    dispatchers = (MoEAlltoAllTokenDispatcher, MoEAllGatherTokenDispatcher, OneRankTokenDispatcher)
    if not (type(d) in dispatchers and d.ep_size == 1 and d.tp_size == 1 and type(moe.experts) is SequentialMLP):
        return False
    plain = all(type(e.linear_fc1) in _COLUMN and type(e.linear_fc2) in _ROW
                and e.linear_fc1.bias is None and e.linear_fc2.bias is None for e in moe.experts.local_experts)
    return plain and c.gated_linear_unit and not (
        c.use_te_activation_func or c.bias_activation_fusion or c.activation_func_clamp_value is not None
        or c.moe_latent_size or moe.shared_expert_overlap or moe.shared_experts_recompute
        or c.moe_router_padding_for_quantization or c.moe_pad_expert_input_to_capacity
        or c.moe_apply_probs_on_input or c.fp8 or getattr(c, "fp4", None))


class _LeanLayer(_Twin):
    """A ``TransformerLayer`` in eval mode: ``x + attn(norm(x))`` then ``+ mlp(norm(.))`` with the layer's own
    norms, attention and MLP / MoE, the residual adds as megatron's unfused bias-dropout-add does them
    (``residual + (out + bias)``; dropout is the identity in eval), without the per-call bookkeeping
    (cross-attention identities, recompute / offload / cuda-graph checks, nvtx)."""

    def forward(self, hidden_states, attention_mask=None, context=None, context_mask=None, rotary_pos_emb=None,
                rotary_pos_cos=None, rotary_pos_sin=None, rotary_pos_cos_sin=None, attention_bias=None,
                inference_context=None, packed_seq_params=None, sequence_len_offset=None, padding_mask=None,
                **unused):
        layer = self.inner
        out, bias = layer.self_attention(
            layer.input_layernorm(hidden_states), attention_mask=attention_mask,
            inference_context=inference_context, rotary_pos_emb=rotary_pos_emb, rotary_pos_cos=rotary_pos_cos,
            rotary_pos_sin=rotary_pos_sin, rotary_pos_cos_sin=rotary_pos_cos_sin, attention_bias=attention_bias,
            packed_seq_params=packed_seq_params, sequence_len_offset=sequence_len_offset)
        hidden = hidden_states + (out if bias is None else out + bias)
        out, bias = layer.mlp(layer.pre_mlp_layernorm(hidden), padding_mask=padding_mask)
        return hidden + (out if bias is None else out + bias), context


def _lean_layer_ok(layer: TransformerLayer) -> bool:
    """The layers ``_LeanLayer`` reproduces: eval mode, self-attention only, nothing recomputed, offloaded,
    fused across TP, chunked or graph-captured."""
    c = layer.config
    return (not layer.training and type(layer.pre_cross_attn_layernorm) is IdentityOp
            and type(layer.cross_attention) is IdentityOp and type(layer.cross_attn_bda) is IdentityFuncOp
            and not (layer.recompute_input_layernorm or layer.recompute_pre_mlp_layernorm or layer.recompute_mlp
                     or getattr(layer, "offload_attn_norm", False) or getattr(layer, "offload_mlp_norm", False)
                     or getattr(c, "inference_fuse_tp_communication", False) or c.fp32_residual_connection
                     or getattr(c, "mlp_chunks_for_prefill", 1) > 1
                     or getattr(c, "cuda_graph_impl", "none") not in (None, "none")
                     or getattr(c, "enable_cuda_graph", False)))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module a twin stands in for (``module`` itself when it is not a twin)."""
    return module.inner if isinstance(module, _Twin) else module


def _twin_for(module: torch.nn.Module) -> torch.nn.Module | None:
    if module.training:  # the twins are for inference (eval mode) only
        return None
    kind = type(module)
    if kind is TransformerLayer and _lean_layer_ok(module):
        return _LeanLayer(module)
    if (kind is MoELayer or kind is OneRankMoELayer) and _lean_moe_ok(module):
        return _LeanMoE(module)
    # identity, not ``in``: the FP8 linears' metaclass compares equal to ColumnParallelLinear (MLA's check)
    if kind is ColumnParallelLinear or kind is RowParallelLinear:
        group = getattr(module, "tp_group", None)
        if group is None or group.size() == 1:
            return _LeanLinear(module)
    elif kind is SequentialMLP:
        c = module.config
        if not (c.moe_apply_probs_on_input or c.fp8 or getattr(c, "fp4", None)):
            return _LeanExperts(module)
    return None


@contextmanager
def lean(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``model``'s eval-mode transformer layers, one-rank MoE layers, sequential experts
    and TP-1 linears are their lean twins (see the module docstring); restored on exit. Modules in
    training mode are left alone. Nested use is harmless (twins are not twinned again)."""
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent._modules.items()):
                twin = None if child is None else _twin_for(child)
                if twin is not None:
                    parent._modules[name] = twin
                    swapped.append((parent, name, child))
        yield
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child
