"""Rule rewards of the labeling tasks: label correctness and output format.

Both read a completion through the task parser the caller hands in (``RewardResources.parse``, e.g.
``data.tasks.parse_output``): a completion is *well formed* when the parser reports no error (every
output tag present once, values in the allowed set, ``<think>`` closed).

- ``label``: well formed -> the weighted share of output fields equal to the gold labels
  (``RewardResources.gold(task, row)``; case-insensitive), in [0, 1]; malformed -> ``format_penalty``.
  None when the row has no gold labels (the reward does not apply to that sample).
- ``format``: 0 when well formed, ``format_penalty`` otherwise (any task with a parser).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from megatron_ads.rewards.registry import RewardOutput, RewardResources, register


def _check_penalty(value: float) -> None:
    if not math.isfinite(value) or value > 0:
        raise ValueError(f"format_penalty: expected a finite value <= 0, got {value!r}")


@dataclass(kw_only=True, slots=True)
class LabelParams:
    """Parameters of the ``label`` reward."""

    format_penalty: float = -1.0
    """Reward of a malformed completion (<= 0; below every well-formed one)."""
    field_weights: dict[str, float] = field(default_factory=dict)
    """Weight of each output field in the correctness share (field name -> weight >= 0; absent: 1)."""

    def __post_init__(self):
        _check_penalty(self.format_penalty)
        for name, w in self.field_weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"field_weights.{name}: expected a finite weight >= 0, got {w!r}")


@dataclass(kw_only=True, slots=True)
class FormatParams:
    """Parameters of the ``format`` reward."""

    format_penalty: float = -1.0
    """Reward of a malformed completion (<= 0); a well-formed one gets 0."""

    def __post_init__(self):
        _check_penalty(self.format_penalty)


def _norm(v) -> str:
    return str(v).strip().lower()


def label_reward(params: LabelParams, parse, gold):
    """``fn(prompts, completions, task, meta)`` of the ``label`` reward."""

    def fn(prompts, completions, task, meta) -> RewardOutput:
        values: list[float | None] = []
        for text, row in zip(completions, meta):
            want = gold(task, row)
            if not want:
                values.append(None)
                continue
            parsed = parse(task, text)
            if parsed.errors:
                values.append(float(params.format_penalty))
                continue
            weights = {k: float(params.field_weights.get(k, 1.0)) for k in want}
            total = sum(weights.values())
            if total == 0:
                raise ValueError(f"field_weights: every field of task {task!r} has weight 0 ({sorted(want)})")
            hit = sum(w for k, w in weights.items() if k in parsed.fields and _norm(parsed.fields[k]) == _norm(want[k]))
            values.append(hit / total)
        return RewardOutput(values)

    return fn


def format_reward(params: FormatParams, parse):
    """``fn(prompts, completions, task, meta)`` of the ``format`` reward."""

    def fn(prompts, completions, task, meta) -> RewardOutput:
        return RewardOutput([float(params.format_penalty) if parse(task, t).errors else 0.0 for t in completions])

    return fn


@register("label", LabelParams, doc="share of output fields equal to the gold labels; malformed: format_penalty")
def build_label(params: LabelParams, resources: RewardResources):
    """Label correctness (well formed) or the format penalty (malformed)."""
    return label_reward(params, resources.need("parse", "label"), resources.need("gold", "label"))


@register("format", FormatParams, doc="0 for a well-formed completion, format_penalty otherwise")
def build_format(params: FormatParams, resources: RewardResources):
    """The format reward."""
    return format_reward(params, resources.need("parse", "format"))
