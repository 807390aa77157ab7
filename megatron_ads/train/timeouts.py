"""Collective timeouts: recognised when they fire, and named by phase.

The timeout itself is applied where groups are made (``runtime.dist.init_distributed``,
``layout.groups.init_model_parallel`` with fractional minutes) and to any other group of this rank by
``runtime.dist.set_group_timeouts``. A timed-out gloo/NCCL collective raises a plain ``RuntimeError`` (torch has no
timeout exception type for them), so ``is_timeout`` reads its message.
"""

from __future__ import annotations

from megatron_ads.runtime.errors import Failure

TIMEOUT_WORDS = ("timed out", "timeout")
"""What gloo ("Timed out waiting ...ms") and NCCL ("Watchdog caught collective operation timeout") say."""

PHASE_GROUPS = {
    "forward-backward": "pipeline p2p (pp group), MoE all-to-all (ep group), DP grad reduce (dp / expert-dp groups)",
    "optimizer": "grad-norm and zero counting over the dense model-parallel group (tp x pp) and the expert "
                 "group (etp x pp); distributed-optimizer gathers over dp / expert-dp",
    "moe-metrics": "megatron's MoE aux-loss tracker all-reduce over the pipeline-parallel group",
    "moe-load": "expert-load all-reduce over the world group",
    "loss-report": "loss broadcast over the world group",
    "checkpoint": "checkpoint barriers over the world group",
}
"""The process groups each phase of a training step waits in (for the timeout's message)."""


class CollectiveTimeout(Failure):
    """A collective did not complete within the configured timeout (names the phase and its groups)."""


def is_timeout(exc: BaseException) -> bool:
    """Whether a collective's exception is its timeout firing (by the backends' messages)."""
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in TIMEOUT_WORDS)


def named_timeout(phase: str, rank: int, timeout_s: float, context: str) -> CollectiveTimeout:
    """The error of a timeout in ``phase`` on ``rank``: what timed out, where it waited, and ``context``."""
    return CollectiveTimeout(f"rank {rank}: collective timed out after {timeout_s:g}s in phase '{phase}' "
                             f"(process groups: {PHASE_GROUPS[phase]}); {context}")
