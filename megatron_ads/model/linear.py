"""Plain linears for tensor-parallel size 1: megatron-core's ``ColumnParallelLinear`` / ``RowParallelLinear``
with a forward that is one ``torch.nn.functional.linear``, selected through the ModuleSpec
(``model.specs.decoder_block_spec(single_rank="auto")``, where ``local_linears_supported``).

How it works: at TP 1 every TP region megatron's linears enter (copy / reduce / gather) is the identity, yet
each call still runs the Python ``autograd.Function`` ``LinearWithGradAccumulationAndAsyncCommunication``
(forward and backward in Python: input bookkeeping for deferred or fused weight gradients, the TP
all-reduce hooks) and one more ``Function`` per identity region; on a small model that Python is a visible
share of a step (issue 17). These subclasses keep everything else of megatron's classes (constructor,
parameter attributes, initialisation, ``sharded_state_dict``: checkpoints are the same files) and compute
``y = x @ W^T`` (+ bias unless ``skip_bias_add``) with torch's own autograd. The ops are those megatron's
linear runs at TP 1 (``matmul`` against ``W^T``, then ``+ bias``), so outputs and gradients are
bit-identical; megatron's DDP sees the gradients through the same per-parameter hooks.

Where they cannot stand in (``local_linears_supported``): TP > 1, sequence parallelism, fused weight-
gradient accumulation into ``main_grad`` (``gradient_accumulation_fusion``), deferred / delayed weight
gradients, TP communication overlap, CPU activation offloading: megatron's classes stay.

MLA accepts its down projections by a list-membership test against megatron's class, so the column class
compares equal to ``ColumnParallelLinear`` (the metaclass of ``kernels.fp8_linear``; identity and hash
unchanged).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from megatron_ads.kernels.fp8_linear import ColumnParallelDropIn

def _check_weight(module, weight: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    if weight is None:
        if module.weight is None:
            raise RuntimeError(f"{type(module).__name__}: no weight given and skip_weight_param_allocation is set")
        return module.weight
    if tuple(weight.shape) != shape:
        raise RuntimeError(f"{type(module).__name__}: supplied weight's shape is {tuple(weight.shape)}, "
                           f"not {shape} as expected")
    return weight


class LocalColumnParallelLinear(ColumnParallelLinear, metaclass=ColumnParallelDropIn):
    """``ColumnParallelLinear`` at TP 1: ``(x @ W^T [+ b], b if skip_bias_add else None)``."""

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None,
                runtime_gather_output: Optional[bool] = None):
        w = _check_weight(self, weight, (self.output_size_per_partition, self.input_size))
        out = F.linear(input_, w)
        if self.bias is None:
            return out, None
        if self.skip_bias_add:
            return out, self.bias
        return out + self.bias, None


class LocalRowParallelLinear(RowParallelLinear):
    """``RowParallelLinear`` at TP 1: ``(x @ W^T [+ b], b if skip_bias_add else None)``."""

    def forward(self, input_: torch.Tensor):
        out = F.linear(input_, self.weight)
        if self.bias is None:
            return out, None
        if self.skip_bias_add:
            return out, self.bias
        return out + self.bias, None


LOCAL_LINEARS = (LocalColumnParallelLinear, LocalRowParallelLinear)
"""The classes this module puts in a spec."""


def local_linears_supported(tconfig) -> str | None:
    """Why megatron's linears must stay for ``tconfig`` (None: the local ones can stand in)."""
    checks = (
        (tconfig.tensor_model_parallel_size != 1, f"tensor_model_parallel_size={tconfig.tensor_model_parallel_size}"),
        (tconfig.sequence_parallel, "sequence_parallel"),
        (tconfig.gradient_accumulation_fusion, "gradient_accumulation_fusion"),
        (getattr(tconfig, "defer_embedding_wgrad_compute", False), "defer_embedding_wgrad_compute"),
        (getattr(tconfig, "delay_wgrad_compute", False), "delay_wgrad_compute"),
        (getattr(tconfig, "tp_comm_overlap", False), "tp_comm_overlap"),
        (getattr(tconfig, "cpu_offloading", False), "cpu_offloading"),
    )
    return next((why for bad, why in checks if bad), None)
