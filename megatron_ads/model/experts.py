"""Routed experts as one grouped GEMM per projection (``torch._grouped_mm``), a drop-in for megatron-core's
``SequentialMLP`` selected through the ModuleSpec (``model.specs.decoder_block_spec(experts="grouped")``).

How it works: the E_local experts of this EP rank keep their weights as one tensor per projection,
``linear_fc1.weight`` ``w1_END`` (N = 2F: per expert [gate; up], the layout of a megatron fc1) and
``linear_fc2.weight`` ``w2_EDF``, i.e. slice e is the weight of ``local_experts.e.linear_fc{1,2}``.
The token dispatcher hands over the tokens sorted by local expert with ``tokens_per_expert``; the row
offsets ``offs = cumsum(tokens_per_expert)`` (int32) let ``torch._grouped_mm(x_TD, w1_END^T, offs=offs)``
run every expert's fc1 in one call, then SwiGLU and the routing prob (multiplied after the activation,
in fp32 when the probs are fp32, cast back: what megatron's ``MLP`` does for an expert), then fc2 the same
way. In fp32 on CPU this equals the per-expert loop of ``SequentialMLP`` exactly.

Checkpoints: ``sharded_state_dict`` emits exactly the sharded tensors ``SequentialMLP`` emits (global key
``experts.linear_fc1.weight`` of shape [E, 2F, D] split per expert and into gate/up halves, fc2
[E, D, F]), plus the per-expert ``_extra_state`` objects, so a torch_dist checkpoint saved by either
module loads into the other, at any EP. The HF mapping (``checkpoint.mapping.expert_views``) addresses
slice e under the per-expert name, so conversion tables and on-disk names do not change.

Legend: T tokens routed to this rank, D hidden, F expert ffn size, N = 2F, E local experts.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Optional

import torch
from megatron.core.dist_checkpointing import ShardedTensor
from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker, get_expert_parallel_rng_tracker_name
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group, make_sharded_object_for_checkpoint

EXPERTS_IMPLS = ("grouped", "sequential")
"""Routed-experts implementations ``decoder_block_spec(experts=...)`` selects."""


def grouped_mm_available() -> bool:
    """Whether this torch has ``torch._grouped_mm`` (the default then is ``grouped``)."""
    return hasattr(torch, "_grouped_mm")


def default_experts() -> str:
    """``grouped`` where ``torch._grouped_mm`` exists, else ``sequential``."""
    return "grouped" if grouped_mm_available() else "sequential"


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (``_grouped_mm``'s backward on CPU
    rejects expanded gradients, e.g. the one of ``y.sum()``)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def grouped_linear(x_TK: torch.Tensor, w_ENK: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Rows ``offs[e-1]:offs[e]`` of ``x_TK`` times ``w_ENK[e]^T`` for every e, in one ``torch._grouped_mm``."""
    return _ContiguousGrad.apply(torch._grouped_mm(x_TK, w_ENK.transpose(-2, -1), offs=offs_E))


class _Weight(torch.nn.Module):
    """Holds one grouped weight so that its name reads ``linear_fc1.weight`` / ``linear_fc2.weight``."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)


class GroupedExperts(MegatronModule):
    """All local routed experts of a MoE layer as two ``[E_local, ...]`` weights and grouped GEMMs.

    Built by ``MoELayer`` as ``experts(num_local_experts, config, pg_collection=...)``; same forward
    contract as megatron's ``SequentialMLP``. Supports the project's expert config: gated silu (SwiGLU),
    no bias, expert tensor parallel 1, no FP8 (FP8 backends select ``SequentialMLP``)."""

    def __init__(self, num_local_experts: int, config, submodules=None, pg_collection=None):
        cfg = copy.deepcopy(config) if config.moe_ffn_hidden_size != config.ffn_hidden_size else config
        if cfg is not config:
            cfg.ffn_hidden_size = config.moe_ffn_hidden_size
        super().__init__(config=cfg)
        problems = []
        if not config.gated_linear_unit or config.activation_func is not torch.nn.functional.silu:
            problems.append("gated_linear_unit=True with activation_func=silu")
        if config.add_bias_linear:
            problems.append("add_bias_linear=False")
        if config.activation_func_clamp_value is not None or config.glu_linear_offset:
            problems.append("no activation clamp / glu_linear_offset")
        if config.fp8 or getattr(config, "fp4", None):
            problems.append("no fp8/fp4 (use experts=sequential)")
        if getattr(config, "moe_latent_size", None):
            problems.append("moe_latent_size=None")
        if pg_collection.expt_tp.size() != 1:
            problems.append(f"expert tensor parallel 1 (got {pg_collection.expt_tp.size()})")
        if problems:
            raise ValueError("experts=grouped: requires " + ", ".join(problems))
        if not grouped_mm_available():
            raise RuntimeError(f"experts=grouped: torch {torch.__version__} has no torch._grouped_mm; "
                               "use experts=sequential or torch >= 2.8")
        self.num_local_experts = num_local_experts
        self.ep_group = pg_collection.ep
        self.tp_group = pg_collection.expt_tp
        self.dp_group = pg_collection.expt_dp
        E, D, F = num_local_experts, config.hidden_size, config.moe_ffn_hidden_size
        device = "cpu" if config.use_cpu_initialization else torch.cuda.current_device()
        self.linear_fc1 = _Weight(torch.empty(E, 2 * F, D, dtype=config.params_dtype, device=device))
        self.linear_fc2 = _Weight(torch.empty(E, D, F, dtype=config.params_dtype, device=device))
        if config.perform_initialization:
            rng = nullcontext() if config.use_cpu_initialization else \
                get_cuda_rng_tracker().fork(get_expert_parallel_rng_tracker_name())
            with rng, torch.no_grad():
                for e in range(E):
                    config.init_method(self.linear_fc1.weight[e])
                    config.output_layer_init_method(self.linear_fc2.weight[e])
        expert_parallel = config.expert_model_parallel_size > 1
        for w, dim in ((self.linear_fc1.weight, 1), (self.linear_fc2.weight, 2)):
            set_tensor_model_parallel_attributes(w, True, dim, 1)  # as the expert linears (expert tp = 1)
            w.allreduce = not expert_parallel  # DDP: expert parameters reduce over the expert-DP group

        def drop_fake_extra_state(module, incompatible_keys):
            for key in list(incompatible_keys.unexpected_keys):
                if "_extra_state" in key:
                    incompatible_keys.unexpected_keys.remove(key)

        self.register_load_state_dict_post_hook(drop_fake_extra_state)

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        """fc1 -> SwiGLU x prob -> fc2 for the tokens of every local expert (sorted by expert)."""
        x_TD = permuted_local_hidden_states
        if self.config.moe_apply_probs_on_input:
            x_TD = (permuted_probs.unsqueeze(-1) * x_TD).to(permuted_local_hidden_states.dtype)
            permuted_probs = torch.ones_like(permuted_probs)
        offs_E = torch.cumsum(torch.as_tensor(tokens_per_expert), 0).to(device=x_TD.device, dtype=torch.int32)
        h_TN = grouped_linear(x_TD, self.linear_fc1.weight, offs_E)
        gate_TF, up_TF = torch.chunk(h_TN, 2, dim=-1)
        a_TF = self.config.activation_func(gate_TF) * up_TF
        a_TF = (a_TF * permuted_probs.unsqueeze(-1)).to(h_TN.dtype)
        return grouped_linear(a_TF, self.linear_fc2.weight, offs_E), None

    def backward_dw(self):
        """Nothing deferred (compatibility with ``SequentialMLP.backward_dw``)."""

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """The sharded tensors ``SequentialMLP`` emits for these experts (see the module docstring)."""
        metadata = ensure_metadata_has_dp_cp_group(metadata)
        singleton = (metadata or {}).get("singleton_local_shards", False)
        E = self.num_local_experts
        num_global = self.ep_group.size() * E
        first = self.ep_group.rank() * E
        replica_id = (0, self.tp_group.rank(), self.dp_group.rank())

        def expert_offsets(g: int) -> tuple:
            return tuple(sharded_offsets) if singleton else (*sharded_offsets, (len(sharded_offsets), g, num_global))

        def expert_key(key: str, g: int) -> str:
            return key.replace(f"{prefix}experts.", f"{prefix}experts.{g}.") if singleton else key

        def build(key, t, replica_id, flattened_range, glu: bool, tp_axis: int):
            if flattened_range is not None:
                raise ValueError(f"{key}: experts=grouped supports only unflattened (fully reshardable) state")
            out = []
            for e in range(E):
                g = first + e
                offs = expert_offsets(g)
                pre, k = len(offs), expert_key(key, g)
                if glu:
                    gate, up = t[e].chunk(2, dim=0)
                    halves = ((f"{k}_w", gate, (pre, 0, 1)), (f"{k}_v", up, (pre, 0, 1))) if singleton else \
                        ((k, gate, (pre, 0, 2)), (k, up, (pre, 1, 2)))
                    out += [ShardedTensor.from_rank_offsets(hk, h, *offs, off, replica_id=replica_id,
                                                            prepend_axis_num=pre) for hk, h, off in halves]
                else:
                    out.append(ShardedTensor.from_rank_offsets(k, t[e], *offs, (pre + tp_axis, 0, 1),
                                                               replica_id=replica_id, prepend_axis_num=pre))
            return out

        def merge(parts, glu: bool):
            if glu:
                return torch.stack([torch.cat(parts[2 * e:2 * e + 2], dim=0) for e in range(E)])
            return torch.stack(list(parts))

        sd = {}
        for name, glu, tp_axis in (("linear_fc1", True, 0), ("linear_fc2", False, 1)):
            weight = getattr(self, name).weight
            sd[f"{prefix}{name}.weight"] = ShardedTensorFactory(
                f"{prefix}experts.{name}.weight", weight,
                lambda key, t, rid, fr, glu=glu, tp_axis=tp_axis: build(key, t, rid, fr, glu, tp_axis),
                lambda parts, glu=glu: merge(parts, glu), replica_id)
            for e in range(E):  # SequentialMLP's linears carry (empty) extra state per expert
                g = first + e
                sd[f"{prefix}expert{g}.{name}._extra_state"] = make_sharded_object_for_checkpoint(
                    None, expert_key(f"{prefix}experts.{name}._extra_state", g), expert_offsets(g), replica_id)
        return sd
