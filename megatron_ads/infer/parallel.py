"""This rank's place in a multi-rank inference layout (a ParallelPlan's tp x pp x ep x dp), for the engine.

How it works
------------
``ParallelContext`` is built once, after megatron's process groups exist for the plan
(``layout.groups.init_model_parallel``; ``infer.weights.load_for_inference(..., par=...)`` creates them),
and handed to the ``Engine``. It holds the sizes, this rank's pipeline stage, its pipeline neighbours
(global ranks) and the one rank whose results every rank adopts.

A forward runs the chunks forward-only through the stages: the first stage embeds; every other stage
receives the previous stage's hidden states [S, B, D] (``recv_prev``: blocking torch.distributed
point-to-point; every rank knows S and B because every rank holds the same batch) and hands them to its
chunk with ``set_input_tensor``; every stage but the last sends its output to the next (``send_next``);
the last stage produces the logits (TP-gathered).

Rows are replicated: every rank of the world processes every row of every batch. EP needs it (the
MoE all-to-all needs every EP rank of a stage in every forward, and EP ranks span the DP replicas), so DP
replicas replicate the rows too rather than split them (each replica computes the same thing; only one
replica's results are used). ``share`` broadcasts the results of the source rank — the highest global
rank on a last pipeline stage (megatron orders pp slowest: the last stage of the last replica) — over
the default group, so every rank picks the same next token, stops the same rows, makes the same number
of forward calls and returns the same results.

With tp = pp = ep = 1 the context is single-rank (``multi`` False): no point-to-point, no broadcast,
whatever the world size (independent workers may each run their own rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True, kw_only=True, slots=True)
class ParallelContext:
    """Sizes, stage and ranks of this process in the inference layout (see the module docstring)."""

    tp: int = 1
    pp: int = 1
    ep: int = 1
    dp: int = 1
    pp_rank: int = 0
    """This rank's pipeline stage."""
    rank: int = 0
    """This rank's global rank."""
    prev_rank: int | None = None
    """Global rank of the previous stage's peer (None on the first stage)."""
    next_rank: int | None = None
    """Global rank of the next stage's peer (None on the last stage)."""
    src_rank: int = 0
    """Global rank whose results (next tokens, log-likelihoods) every rank adopts (on a last stage)."""

    @property
    def multi(self) -> bool:
        """True when the model is split across ranks (tp, pp or ep > 1): forwards and results are shared."""
        return (self.tp, self.pp, self.ep) != (1, 1, 1)

    @property
    def first(self) -> bool:
        return self.pp_rank == 0

    @property
    def last(self) -> bool:
        return self.pp_rank == self.pp - 1

    @property
    def is_src(self) -> bool:
        """True on the rank whose results are shared (always on a single rank)."""
        return not self.multi or self.rank == self.src_rank

    @classmethod
    def from_megatron(cls) -> "ParallelContext":
        """The context of this rank from megatron's parallel state (built by ``init_model_parallel`` for
        the plan); a single-rank context when it is not initialized. With tp, pp or ep > 1 every rank must
        call it (one all-gather finds the source rank)."""
        from megatron.core import parallel_state as ps  # heavy: megatron-core loads only where a model runs

        if not ps.model_parallel_is_initialized():
            return cls()
        tp = ps.get_tensor_model_parallel_world_size()
        pp = ps.get_pipeline_model_parallel_world_size()
        ep = ps.get_expert_model_parallel_world_size()
        if (tp, pp, ep) == (1, 1, 1):
            return cls(dp=ps.get_data_parallel_world_size(), rank=dist.get_rank() if dist.is_initialized() else 0)
        pp_rank = ps.get_pipeline_model_parallel_rank()
        rank = dist.get_rank()
        last = pp_rank == pp - 1
        on_last = [None] * dist.get_world_size()
        dist.all_gather_object(on_last, last)
        src = max(r for r, flag in enumerate(on_last) if flag)
        return cls(tp=tp, pp=pp, ep=ep, dp=ps.get_data_parallel_world_size(), pp_rank=pp_rank, rank=rank,
                   prev_rank=None if pp_rank == 0 else ps.get_pipeline_model_parallel_prev_rank(),
                   next_rank=None if last else ps.get_pipeline_model_parallel_next_rank(), src_rank=src)

    def recv_prev(self, buf: torch.Tensor) -> torch.Tensor:
        """Receive the previous stage's hidden states into ``buf`` (its shape and dtype agreed by both)."""
        dist.recv(buf, src=self.prev_rank)
        return buf

    def send_next(self, t: torch.Tensor) -> None:
        """Send this stage's output to the next stage."""
        dist.send(t.contiguous(), dst=self.next_rank)

    def share(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as the source rank holds it, on every rank (in place; a no-op on a single rank). Every
        rank passes a tensor of the same shape and dtype."""
        if self.multi:
            dist.broadcast(t, src=self.src_rank)
        return t
