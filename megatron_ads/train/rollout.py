"""The rollout protocol: what the GRPO trainer (``train.grpo_loop``) calls to sample completions.

``train`` does not import ``infer`` (layer order in DESIGN.md): the CLI's worker (``cli.workers``) builds an
object with this protocol over the inference engine and hands a factory for it to the trainer. The trainer
sees token ids in, token ids + per-token log-probabilities + finish reasons out.

Contract of ``Rollout.generate(prompt_ids, settings, group_size)``:
- every rank calls it with the same arguments and gets the same result (the engine runs through the
  pipeline stages and broadcasts the picks from the last stage);
- each prompt is sampled ``group_size`` times: the result holds ``len(prompt_ids)`` groups of
  ``group_size`` completions, in prompt order;
- sampling is deterministic in ``settings.seed`` (row r of the call draws with ``seed + r``), so a resumed
  run that passes the same seed for the same step reproduces the same rollouts;
- log-probabilities are those of the chosen tokens under the policy at temperature 1 (before temperature and
  top-p), i.e. what the trainer recomputes as old-policy log-probs (``token_mult_prob_error`` compares them);
- the model is in eval mode during the call; the caller puts it back in train mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(kw_only=True, slots=True)
class RolloutSettings:
    """How one rollout call samples (the engine's SamplingParams, restricted to what GRPO sets)."""

    max_new_tokens: int
    """Most tokens generated per completion (the stop token included)."""
    temperature: float = 1.0
    """Sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus mass, in (0, 1]."""
    seed: int = 0
    """Row r of the call (prompt index × group_size + rollout index) samples with ``seed + r``."""
    stop_ids: set[int] = field(default_factory=set)
    """A completion stops after one of these ids (kept in its output), e.g. EOS."""
    stop_text: str | None = None
    """A completion also stops once its decoded answer contains this text (the task's closing tag)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise ValueError(f"temperature: expected > 0 (GRPO samples), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected (0, 1], got {self.top_p}")


@dataclass(kw_only=True, slots=True)
class Completion:
    """One sampled completion."""

    output_ids: list[int]
    """Generated ids only (a stop token included)."""
    logprobs: list[float]
    """Engine log-probability of each generated id (temperature 1)."""
    finish_reason: FinishReason
    """``stop`` (stop id or text) or ``length`` (max_new_tokens reached)."""


class Rollout(Protocol):
    """Samples completions from the current policy."""

    def generate(self, prompt_ids: list[list[int]], settings: RolloutSettings,
                 group_size: int) -> list[list[Completion]]:
        """``group_size`` completions per prompt (module docstring: the contract)."""
        ...


RolloutFactory = Callable[..., Rollout]
"""Called on every rank as ``factory(model=, cfg=, tokenizer=, batch_size=)`` once the trainer's model (this
rank's DDP-wrapped chunk) exists; ``cfg`` is its ModelConfig. The factory may leave the model in either mode."""


def check_groups(result: Any, n_prompts: int, group_size: int) -> list[list[Completion]]:
    """``result`` of ``Rollout.generate`` checked for shape: ValueError naming what is off."""
    if len(result) != n_prompts:
        raise ValueError(f"rollout: expected {n_prompts} groups (one per prompt), got {len(result)}")
    for i, g in enumerate(result):
        if len(g) != group_size:
            raise ValueError(f"rollout: group {i} holds {len(g)} completions, expected group_size={group_size}")
        for c in g:
            if len(c.output_ids) != len(c.logprobs) or not c.output_ids:
                raise ValueError(f"rollout: group {i}: a completion with {len(c.output_ids)} ids and "
                                 f"{len(c.logprobs)} log-probs (expected the same number, >= 1)")
    return result
