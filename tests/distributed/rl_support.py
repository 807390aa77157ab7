"""Shared by the RL trainer tests (``test_grpo.py``, ``test_ppo.py``): test reward channels that give a
random-init model a signal, and the run's metrics rows."""

import json
from dataclasses import dataclass
from pathlib import Path

TIMING = ("rollout_time_s", "rollout_tokens_per_s", "train_time_s", "train_tokens_per_s", "tokens_per_s",
          "step_time_s")
"""Wall-clock metrics: excluded from exact-resume comparisons."""
PROB_ERR_TOL = 1e-4
"""Bound on token_mult_prob_error (engine vs trainer log-probs of the same weights)."""


@dataclass(kw_only=True, slots=True)
class _NoParams:
    """The test rewards have no parameters."""


def register_test_rewards() -> None:
    """``test_chars`` (sentence: distinct characters of the completion / 10) and ``test_tok`` (token-level:
    +0.1 per even completion token id, sentence value their sum), registered once per process."""
    from megatron_ads.rewards import registry

    if "test_chars" not in registry.REWARDS:
        @registry.register("test_chars", _NoParams, doc="test: distinct characters of the completion / 10")
        def _chars(params, resources):
            return lambda prompts, completions, task, meta: [len(set(c)) / 10.0 for c in completions]

    if "test_tok" not in registry.REWARDS:
        @registry.register("test_tok", _NoParams, doc="test: +0.1 per even completion token id")
        def _tok(params, resources):
            def fn(prompts, completions, task, meta):
                tv = [[0.1 if x % 2 == 0 else 0.0 for x in m[registry.COMPLETION_IDS]] for m in meta]
                return registry.RewardOutput([sum(v) for v in tv], token_values=tv)
            return fn


def records(out: Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
