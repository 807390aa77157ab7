"""Task mixing for multi-task SFT: which task (and row) each example of a global batch comes from.

The mixer draws tasks by probability (λ_t in "sampling" mode, else uniform over the adaptive tasks;
a general task keeps its fixed share), then a row of that task's training split and whether the
example is in label-only form. Draws are deterministic in the data seed and the step, so every
data-parallel rank computes the same global batch and takes its own slice (resume is exact).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from megatron_ads.data.packing import Example, encode
from megatron_ads.data.tasks import GENERAL, task


def uniform_lambdas(tasks: list[str], general_weight: float | None) -> dict[str, float]:
    """Equal λ over ``tasks``; with a general task (``general_weight`` not None) it keeps that share."""
    share = 1.0 - (general_weight or 0.0)
    lam = {t: share / len(tasks) for t in tasks}
    if general_weight is not None:
        lam[GENERAL.name] = general_weight
    return lam


@dataclass(kw_only=True, slots=True)
class TaskMixer:
    """Deterministic task-weighted sampler over the tasks' training rows."""

    data: dict[str, list[dict]]
    """Training rows per task, in mixing order."""
    seed: int
    """Data seed (draws depend on it and the step only)."""
    label_only_fraction: float
    """Share of examples in label-only form (empty <think>); never for the general task."""

    @property
    def tasks(self) -> list[str]:
        return list(self.data)

    def draw(self, step: int, n: int, probs: dict[str, float]) -> list[tuple[str, dict, bool]]:
        """The ``n`` (task, row, label_only) picks of ``step``'s global batch."""
        rng = random.Random(f"{self.seed}:{step}")
        names = self.tasks
        picks = []
        for _ in range(n):
            name = rng.choices(names, weights=[probs[t] for t in names])[0]
            row = rng.choice(self.data[name])
            picks.append((name, row, rng.random() < self.label_only_fraction))
        return picks

    def examples(self, tokenizer, seq_len: int, step: int, n: int, probs: dict[str, float],
                 start: int, count: int) -> list[Example]:
        """Examples ``start .. start + count`` of ``step``'s global batch of ``n`` (one data-parallel rank's
        slice), encoded at ``seq_len``; sample ids end in ``:L`` (label-only) or ``:R`` (with reasoning)."""
        out = []
        for name, row, label_only in self.draw(step, n, probs)[start:start + count]:
            label_only = label_only and name != GENERAL.name
            ex = encode(tokenizer, task(name), row, seq_len, label_only=label_only)
            out.append(dataclasses.replace(ex, sample_id=f"{ex.sample_id}:{'L' if label_only else 'R'}"))
        return out
