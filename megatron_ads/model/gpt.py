"""megatron-core's ``GPTModel`` at tensor-parallel size 1: the output layer as the plain TP-1 linear and the
language-model loss as a one-rank cross entropy, chosen by ``model.build.build_model_chunk`` where the one-rank
twins apply (``single_rank="auto"`` and ``model.linear.local_linears_supported``).

How it works: ``GPTModel`` builds its output layer itself (not through the spec), so the twin linears of
``model.linear`` do not reach it; ``OneRankGPTModel`` gives the built layer the class ``LocalColumnParallelLinear``
(a subclass that only overrides ``forward``: same parameters, attributes and checkpoint keys). megatron's
unfused loss, ``vocab_parallel_cross_entropy``, is a Python ``autograd.Function`` that on one rank still runs
three all-reduces on the one-rank TP group, ``max`` with indices, and two boolean-mask index writes (each a
host sync) for targets outside the rank's vocabulary slice. ``one_rank_cross_entropy`` is the same algorithm
without them — shift by the row max in place, exp in place, log-sum-exp minus the target logit, keep the
softmax for backward (softmax − one-hot, times the incoming gradient) — so loss and gradient are
bit-identical to megatron's (``tests/unit/test_single_rank.py``). Out-of-vocabulary targets are megatron's
case too: their target logit counts as 0 and their gradient has no one-hot term. With
``cross_entropy_loss_fusion`` set, megatron's fused loss stays.

Shapes: S sequence, B batch, V vocabulary.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.layers import ColumnParallelLinear

from megatron_ads.model.linear import LocalColumnParallelLinear


class _OneRankCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits_SBV: torch.Tensor, target_SB: torch.Tensor) -> torch.Tensor:
        logits_SBV = logits_SBV.float()  # in place below, as megatron's (a copy unless fp32)
        vocab = logits_SBV.shape[-1]
        logits_SBV -= logits_SBV.amax(dim=-1, keepdim=True)
        outside_SB = (target_SB < 0) | (target_SB >= vocab)
        index_SB1 = target_SB.masked_fill(outside_SB, 0).unsqueeze(-1)
        predicted_SB = logits_SBV.gather(-1, index_SB1).squeeze(-1).masked_fill(outside_SB, 0.0)
        exp_SBV = torch.exp(logits_SBV, out=logits_SBV)
        sum_exp_SB = exp_SBV.sum(dim=-1)
        loss_SB = torch.log(sum_exp_SB) - predicted_SB
        softmax_SBV = exp_SBV.div_(sum_exp_SB.unsqueeze(-1))
        ctx.save_for_backward(softmax_SBV, index_SB1, outside_SB)
        return loss_SB

    @staticmethod
    def backward(ctx, grad_SB: torch.Tensor):
        softmax_SBV, index_SB1, outside_SB = ctx.saved_tensors
        grad_SBV = softmax_SBV  # in place, as megatron's (the saved softmax is not used again)
        one_hot_SB1 = (outside_SB.to(grad_SBV.dtype) - 1.0).unsqueeze(-1)  # -1 at valid targets, 0 outside
        grad_SBV.scatter_add_(-1, index_SB1, one_hot_SB1)
        grad_SBV.mul_(grad_SB.unsqueeze(-1))
        return grad_SBV, None


def one_rank_cross_entropy(logits_SBV: torch.Tensor, target_SB: torch.Tensor) -> torch.Tensor:
    """Per-token cross entropy [S, B] of logits [S, B, V] (the whole vocabulary on this rank), in fp32.
    Overwrites ``logits_SBV`` where it is fp32 (as megatron's ``vocab_parallel_cross_entropy`` does)."""
    return _OneRankCrossEntropy.apply(logits_SBV, target_SB)


class OneRankGPTModel(GPTModel):
    """``GPTModel`` whose output layer is the TP-1 plain linear and whose loss is ``one_rank_cross_entropy``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.config.tensor_model_parallel_size != 1:
            raise ValueError(f"OneRankGPTModel: needs tensor_model_parallel_size=1, got "
                             f"{self.config.tensor_model_parallel_size}")
        if self.post_process and type(self.output_layer) is ColumnParallelLinear:
            self.output_layer.__class__ = LocalColumnParallelLinear  # forward only: no other state to convert

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.config.cross_entropy_loss_fusion:
            return super().compute_language_model_loss(labels, logits)
        loss_SB = one_rank_cross_entropy(logits, labels.transpose(0, 1).contiguous())
        return loss_SB.transpose(0, 1).contiguous()
