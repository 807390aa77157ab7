"""Optimizer and schedule on megatron-core, with the stub MoE optimizer for ranks without experts.

Why a stub (paper §4.1.3): megatron keeps separate optimizers for dense and expert parameters.
Their gradient statistics (grad-norm, zero counting, found-inf) are all-reduced over groups that
span pipeline stages (dense: tp x pp; expert: etp x pp). A rank on a dense-only stage that owns no
expert parameters must still join the expert-side collectives, or every MoE rank blocks in them.

megatron-core 0.16.1 already gathers parameter-group keys across all ranks, so a rank without
experts gets an expert optimizer with an empty parameter group (its "stub" mode) in both the
fp32 and the distributed-optimizer paths. ``build_optimizer`` verifies that every rank holds the
same chain of optimizers and, if a megatron version does not provide one, adds an expert-side stub
that reduces empty statistics over the expert groups. ``stub=False`` (debug switch
``--no-stub-moe-optimizer``) removes it, reproducing the hang the paper describes.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from megatron_ads.config.train import OptimSpec


def _has_expert_params(model_chunks) -> bool:
    return any(not getattr(p, "allreduce", True) for m in model_chunks for p in m.parameters())


class ExpertStubOptimizer:
    """Expert-side optimizer owning no parameters: joins the grad-norm and zero-count reductions of the
    expert optimizer with empty tensors (megatron's ``get_grad_norm_fp32`` / ``count_zeros_fp32``)."""

    is_stub_optimizer = True

    def __init__(self, config, grad_stats_group):
        self.config = config
        self._group = grad_stats_group
        self.param_groups = [{"params": [], "is_expert_parallel": True, "default_config": True, "lr": config.lr,
                              "max_lr": config.lr, "min_lr": config.min_lr, "wd_mult": 1.0, "lr_mult": 1.0,
                              "is_decoupled_lr": False, "weight_decay": config.weight_decay}]
        self.model_chunks = []
        self.optimizer = self  # ChainedOptimizer reads ``opt.optimizer.param_groups`` when syncing steps

    def get_grad_stats_parallel_group(self):
        return self._group

    def get_main_grads_for_grad_norm(self):
        return []

    def get_grad_norm(self):
        from megatron.core.optimizer.clip_grads import get_grad_norm_fp32  # heavy: megatron-core at use

        return get_grad_norm_fp32([], grad_stats_parallel_group=self._group)

    def count_zeros(self):
        from megatron.core.optimizer.clip_grads import count_zeros_fp32  # heavy: megatron-core at use

        return count_zeros_fp32([], grad_stats_parallel_group=self._group,
                                use_decoupled_grad=False) if self.config.log_num_zeros_in_grad else 0

    def prepare_grads(self) -> bool:
        return False

    def step_with_ready_grads(self) -> bool:
        return True

    def get_parameters(self):
        return []

    def zero_grad(self, set_to_none=True):
        pass

    def get_loss_scale(self):
        return torch.tensor([1.0])

    def reload_model_params(self, state_dict=None):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state_dict):
        pass

    def sharded_state_dict(self, *args, **kwargs):
        return {}


def megatron_optimizer_config(o: OptimSpec):
    """megatron-core's ``OptimizerConfig`` (Adam) for ``optim``: the fields both name alike pass by name, the
    precision follows ``optim.dtype``, and ``optim.megatron`` adds any other OptimizerConfig field."""
    from megatron.core.optimizer import OptimizerConfig  # heavy: megatron-core at use

    theirs = {f.name for f in dataclasses.fields(OptimizerConfig)}
    shared = {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name in theirs}
    bf16 = o.dtype == "bf16"
    derived = {"optimizer": "adam", "bf16": bf16, "params_dtype": torch.bfloat16 if bf16 else torch.float32,
               "use_distributed_optimizer": o.distributed_optimizer}
    bad = sorted(set(o.megatron) - theirs) + sorted(set(o.megatron) & (set(shared) | set(derived)))
    if bad:
        raise ValueError(f"optim.megatron: {bad} are not further OptimizerConfig fields (set them as optim.* or "
                         f"leave them to optim.dtype / optim.distributed_optimizer)")
    return OptimizerConfig(**shared, **derived, **o.megatron)


FUSED_ADAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def fuse_torch_adam(opt) -> bool:
    """Switch a torch Adam / AdamW that megatron built (no TransformerEngine or apex: its fallback) to torch's
    fused kernel, before its first step: one kernel per parameter group instead of torch's CPU default, a Python
    loop over the parameters (CPU: ~4x faster optimizer step; CUDA: fused rather than foreach). Same update up to
    float rounding (1 ulp on a few elements). Returns whether it did; anything else (a stub, TE's FusedAdam, a
    group on a device or dtype the kernel does not take) is left as it is."""
    if type(opt) not in (torch.optim.Adam, torch.optim.AdamW) or opt.state:
        return False
    groups = opt.param_groups
    params = [p for g in groups for p in g["params"]]
    if any(g.get("differentiable") or g.get("capturable") for g in groups) or not all(
            p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAM_DTYPES for p in params):
        return False
    for g in [*groups, opt.defaults]:
        g["fused"], g["foreach"] = True, False
    return True


def foreach_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """megatron's ``multi_tensor_l2norm`` contract (``clip_grads.get_grad_norm_fp32``) on torch's foreach norm:
    ((1,) fp32 norm of every tensor of ``tensor_lists[0]`` together, per-tensor norms or None), on the tensors'
    device. megatron's own fallback turns each per-tensor norm into a Python float (a host sync per tensor on
    CUDA) and then the total too; this one never leaves the device. fp32 tensors: bit-equal to it."""
    norms = torch.stack(torch._foreach_norm(tensor_lists[0], 2, dtype=torch.float32))
    return torch.linalg.vector_norm(norms).reshape(1), (norms if per_tensor else None)


def foreach_scale(chunk_size, noop_flag, tensor_lists, scale):
    """megatron's ``multi_tensor_scale`` contract (gradient clipping, main-to-model parameter copies):
    ``dst = src * scale`` for every pair of ``tensor_lists[0]`` / ``[1]``, as foreach ops instead of a Python
    loop of ``dst.copy_(src * scale)``; bit-equal to that loop."""
    src, dst = tensor_lists[0], tensor_lists[1]
    if not dst:
        return
    if all(s is d for s, d in zip(src, dst)):
        torch._foreach_mul_(dst, scale)
    else:
        torch._foreach_copy_(dst, src if scale == 1.0 else torch._foreach_mul(src, scale))


def use_foreach_multi_tensor_ops() -> list[str]:
    """Where megatron-core fell back to its local multi-tensor ops (neither TransformerEngine nor apex found:
    this project's GPU image and the CPU), put ``foreach_l2_norm`` / ``foreach_scale`` in their place in
    megatron's optimizer modules; TE's or apex's kernels are left alone. Idempotent; returns the names swapped
    (``module.attribute``)."""
    import importlib

    from megatron.core import utils as mcore_utils  # heavy: megatron-core at use

    swaps = (("megatron.core.optimizer.clip_grads", "l2_norm_impl", mcore_utils.local_multi_tensor_l2_norm,
              foreach_l2_norm),
             ("megatron.core.optimizer.clip_grads", "multi_tensor_scale_impl", mcore_utils.local_multi_tensor_scale,
              foreach_scale),
             ("megatron.core.optimizer.optimizer", "multi_tensor_scale_impl", mcore_utils.local_multi_tensor_scale,
              foreach_scale))
    done = []
    for module_name, attr, local, ours in swaps:
        module = importlib.import_module(module_name)
        if getattr(module, attr, None) is local:
            setattr(module, attr, ours)
            done.append(f"{module_name}.{attr}")
    return done


def one_rank_grad_norm_fp32(grads_for_norm, norm_type=2, grad_stats_parallel_group=None) -> float:
    """megatron's ``clip_grads.get_grad_norm_fp32`` without its all-reduce where the reduction group has one rank
    (a one-process run; TP = PP = 1 for a non-distributed optimizer): the same multi-tensor L2 norm
    (``clip_grads.l2_norm_impl``), squared, then ``.item() ** 0.5`` — bit-equal, since a sum over one rank is the
    identity; each sub-optimizer of a chained optimizer saves a collective per step (gloo ~0.2 ms on CPU; an
    NCCL launch on CUDA). Any other norm type, group or DTensor gradients go to megatron's function."""
    from megatron.core.optimizer import clip_grads  # heavy: megatron-core at use
    from torch.distributed.tensor import DTensor

    grads = [grads_for_norm] if isinstance(grads_for_norm, torch.Tensor) else list(grads_for_norm)
    if (float(norm_type) != 2.0 or not torch.distributed.is_initialized()
            or torch.distributed.get_world_size(grad_stats_parallel_group) != 1
            or any(isinstance(g, DTensor) for g in grads)):
        return clip_grads.get_grad_norm_fp32(grads_for_norm, norm_type, grad_stats_parallel_group)
    if not grads:
        return 0.0
    noop = torch.zeros(1, dtype=torch.int, device=grads[0].device)
    grad_norm, _ = clip_grads.multi_tensor_applier(clip_grads.l2_norm_impl, noop, [grads], False)
    return (grad_norm ** 2.0).item() ** (1.0 / 2.0)


def use_one_rank_grad_norm() -> bool:
    """Put ``one_rank_grad_norm_fp32`` where megatron's optimizer module calls ``get_grad_norm_fp32``
    (``optimizer.py``: every (sub-)optimizer's gradient norm and clipping; ``clip_grads.get_grad_norm_fp32``, what
    the twin falls back to, stays megatron's). Idempotent; whether it swapped now."""
    from megatron.core.optimizer import clip_grads, optimizer  # heavy: megatron-core at use

    if optimizer.get_grad_norm_fp32 is not clip_grads.get_grad_norm_fp32:
        return False
    optimizer.get_grad_norm_fp32 = one_rank_grad_norm_fp32
    return True


def build_optimizer(opt_config, model_chunks, stub: bool = True, impl: str = "megatron"):
    """megatron's (Chained)Optimizer for ``model_chunks``; see the module docstring for ``stub``. ``impl="project"``
    (debug): where megatron built its own expert-side stub, use ``ExpertStubOptimizer`` in its place.

    Returns (optimizer, info) where info says whether this rank owns experts and which expert-side
    optimizer it holds ('real', 'megatron-stub', 'project-stub', or 'none').
    """
    from megatron.core import parallel_state as ps  # heavy: megatron-core at use
    from megatron.core.optimizer import ChainedOptimizer, get_megatron_optimizer  # heavy: megatron-core at use

    use_foreach_multi_tensor_ops()
    use_one_rank_grad_norm()
    optimizer = get_megatron_optimizer(opt_config, model_chunks)
    chain = list(optimizer.chained_optimizers) if isinstance(optimizer, ChainedOptimizer) else [optimizer]
    for opt in chain:
        fuse_torch_adam(getattr(opt, "optimizer", None))
    is_moe = getattr(model_chunks[0].config, "num_moe_experts", None) is not None
    has_experts = _has_expert_params(model_chunks)
    info = {"has_expert_params": has_experts, "expert_optimizer": "none"}
    if not is_moe:
        return optimizer, info
    # megatron chains the dense optimizer first and the expert one second
    expert_side = chain[1:]
    if has_experts:
        info["expert_optimizer"] = "real"
    elif expert_side:
        info["expert_optimizer"] = "megatron-stub"
    if not has_experts:
        if not stub:
            chain = chain[:1]
            info["expert_optimizer"] = "none (stub disabled)"
        elif not expert_side:
            chain.append(ExpertStubOptimizer(opt_config, ps.get_expert_tensor_model_pipeline_parallel_group()))
            info["expert_optimizer"] = "project-stub"
    optimizer = ChainedOptimizer(chain) if len(chain) > 1 else chain[0]
    # every rank must hold the same number of optimizers, or the chained reductions diverge
    n = torch.tensor([len(chain)], dtype=torch.int64)
    lo, hi = n.clone(), n.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    info["uniform_chain"] = bool(lo.item() == hi.item())
    if impl == "project" and stub and info["expert_optimizer"] == "megatron-stub":
        chain = chain[:1] + [ExpertStubOptimizer(opt_config, ps.get_expert_tensor_model_pipeline_parallel_group())]
        optimizer = ChainedOptimizer(chain)
        info["expert_optimizer"] = "project-stub"
    return optimizer, info


def build_scheduler(optimizer, lr: float, min_lr: float, warmup_steps: int, total_steps: int, weight_decay: float):
    """Linear warmup then cosine decay to ``min_lr`` over ``total_steps`` (megatron's scheduler)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler  # heavy: megatron-core at use

    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=min_lr, lr_warmup_steps=warmup_steps,
        lr_decay_steps=max(total_steps, warmup_steps + 1), lr_decay_style="cosine", start_wd=weight_decay,
        end_wd=weight_decay, wd_incr_steps=max(total_steps, 1), wd_incr_style="constant")
