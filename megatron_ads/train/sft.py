"""Multi-task SFT reweighting (AdNanny §4.2, Eq. 2–7).

Instance level (Eq. 3–5): per-sample perplexity ppl = exp(mean token NLL over the target tokens);
progress Δ = ppl(previous checkpoint) − ppl(current); weight w = clip(exp(−β·Δ), w_min, w_max).
The current perplexity comes from the training forward pass itself (mini-batch estimate); the
previous one is stored per sample id and rolled over at each checkpoint interval.

Task level (Eq. 6–7): difficulty d_t = 1 − M_t from each task's normalized validation metric;
λ_t = d_t^α / Σ_t' d_t'^α. An optional fixed-weight "general" task keeps λ_general and the adaptive
tasks share the rest (public instruction data mixed in, paper Table 8).

Loss (Eq. 2): L = Σ_t λ_t · mean_{i ∈ batch, task t} (w_{t,i} · ℓ_{t,i}).

Label balance (not in the paper, ``sft.label_balance`` = γ, off at 0): a classification row's w_{t,i} is also
multiplied by a fixed class-balance weight (``label_balance_weights``). It moves a rare label's decision
threshold; it does not teach the comparison the label rests on (measured on query_ad location, default corpus,
γ = 1: validation BACC 0.825, exactly that of the shortcut "bad iff the query names a city", then back to 0.53).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass(kw_only=True, slots=True)
class InstanceReweighter:
    """Eq. 5 weights from perplexity progress between checkpoints, keyed by sample id."""

    beta: float = 1.0
    """Sensitivity to progress (β > 0)."""
    w_min: float = 0.2
    """Lower clip of the weight."""
    w_max: float = 5.0
    """Upper clip of the weight."""
    previous: dict[str, float] = field(default_factory=dict)
    """ppl of each sample under the previous checkpoint."""
    current: dict[str, float] = field(default_factory=dict)
    """Latest mini-batch ppl of each sample under the current parameters."""

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta: expected > 0, got {self.beta}")
        if not 0 < self.w_min <= 1 <= self.w_max:
            raise ValueError(f"w_min/w_max: expected 0 < w_min <= 1 <= w_max, got {self.w_min}/{self.w_max}")

    @staticmethod
    def perplexity(token_nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 3 per sample: exp(mean NLL over target tokens); token_nll/mask are [B, S]."""
        n = mask.sum(dim=1).clamp_min(1)
        return torch.exp((token_nll * mask).sum(dim=1) / n)

    def weight(self, sample_id: str, ppl_now: float) -> float:
        """Eq. 4–5 for one sample (Δ = 0, w = 1 when it has no previous perplexity yet). The exponent is capped
        at log(w_max) before exp (the clip would cap the weight there anyway): a sample whose perplexity
        regressed by more than ~709/β would otherwise overflow ``math.exp``; an undefined Δ (inf − inf) counts
        as no progress (w = 1)."""
        prev = self.previous.get(sample_id)
        delta = 0.0 if prev is None else prev - ppl_now
        expo = -self.beta * delta
        if math.isnan(expo):
            expo = 0.0
        if expo >= math.log(self.w_max):
            return self.w_max
        return max(math.exp(expo), self.w_min)

    def weights(self, sample_ids: list[str], token_nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Weights for a batch; records the batch's current perplexities."""
        ppl = self.perplexity(token_nll.detach().float(), mask.float())
        out = []
        for sid, p in zip(sample_ids, ppl.tolist()):
            out.append(self.weight(sid, p))
            self.current[sid] = p
        return torch.tensor(out, dtype=torch.float32)

    def roll_checkpoint(self) -> None:
        """At a checkpoint boundary the current perplexities become the previous ones."""
        self.previous.update(self.current)
        self.current = {}

    def state_dict(self) -> dict:
        return {"beta": self.beta, "w_min": self.w_min, "w_max": self.w_max, "previous": dict(self.previous),
                "current": dict(self.current)}

    def load_state_dict(self, state: dict) -> None:
        self.beta, self.w_min, self.w_max = state["beta"], state["w_min"], state["w_max"]
        self.previous, self.current = dict(state["previous"]), dict(state["current"])


@dataclass(kw_only=True, slots=True)
class TaskReweighter:
    """Eq. 6–7 task weights from normalized validation metrics (higher metric = easier task)."""

    tasks: list[str]
    """Adaptive tasks."""
    alpha: float = 1.0
    """Emphasis on under-performing tasks (α >= 1)."""
    general_task: str | None = None
    """Optional fixed-weight task (public instruction data)."""
    general_weight: float = 0.0
    """λ of the general task; the adaptive tasks share 1 − general_weight."""
    lambda_min: float = 0.0
    """Floor on each adaptive task's λ as a fraction of the adaptive share: λ_t = share · (λ_min + (1 − n·λ_min)
    · p_t), p_t the (smoothed) Eq. 7 proportions; 0 = the literal Eq. 7 (a solved task gets λ = 0)."""
    lambda_ema: float = 0.0
    """Smoothing of the proportions over validations: p ← ema · p_prev + (1 − ema) · p_new; 0 = none."""
    lambdas: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    """λ_t after every update (for logs and plots)."""

    def __post_init__(self):
        if self.alpha < 1:
            raise ValueError(f"alpha: expected >= 1, got {self.alpha}")
        if not self.tasks:
            raise ValueError("tasks: expected at least one adaptive task")
        if self.general_task is not None and not 0 <= self.general_weight < 1:
            raise ValueError(f"general_weight: expected 0 <= w < 1, got {self.general_weight}")
        if not 0.0 <= self.lambda_min * len(self.tasks) < 1.0:
            raise ValueError(f"lambda_min: expected 0 <= lambda_min < 1 / {len(self.tasks)} (the adaptive tasks), "
                             f"got {self.lambda_min}")
        if not 0.0 <= self.lambda_ema < 1.0:
            raise ValueError(f"lambda_ema: expected 0 <= ema < 1, got {self.lambda_ema}")
        if not self.lambdas:
            share = 1.0 - (self.general_weight if self.general_task else 0.0)
            self.lambdas = {t: share / len(self.tasks) for t in self.tasks}
            if self.general_task:
                self.lambdas[self.general_task] = self.general_weight

    def update(self, metrics: dict[str, float]) -> dict[str, float]:
        """New λ from each adaptive task's validation metric M_t in [0, 1]."""
        missing = [t for t in self.tasks if t not in metrics]
        if missing:
            raise ValueError(f"metrics: missing validation metric for task(s) {missing}")
        for t in self.tasks:
            if not 0.0 <= metrics[t] <= 1.0:
                raise ValueError(f"metrics[{t!r}]: expected a normalized value in [0, 1], got {metrics[t]}")
        d = {t: (1.0 - metrics[t]) ** self.alpha for t in self.tasks}
        total = sum(d.values())
        n = len(self.tasks)
        share = 1.0 - (self.general_weight if self.general_task else 0.0)
        p = {t: d[t] / total for t in self.tasks} if total > 0 else {t: 1.0 / n for t in self.tasks}
        if self.lambda_ema > 0:  # the previous proportions, recovered from the previous λ
            spread = 1.0 - n * self.lambda_min
            prev = {t: (self.lambdas[t] / share - self.lambda_min) / spread for t in self.tasks}
            p = {t: self.lambda_ema * prev[t] + (1.0 - self.lambda_ema) * p[t] for t in self.tasks}
        lam = {t: share * (self.lambda_min + (1.0 - n * self.lambda_min) * p[t]) for t in self.tasks}
        if self.general_task:
            lam[self.general_task] = self.general_weight
        self.lambdas = lam
        self.history.append(dict(lam))
        return lam

    def state_dict(self) -> dict:
        return {"lambdas": dict(self.lambdas), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.lambdas = dict(state["lambdas"])
        self.history = [dict(h) for h in state["history"]]


def label_balance_weights(labels: list[tuple[str, ...]], gamma: float) -> list[float]:
    """Class-balance weight of each row from its labels (one value per output field, same fields every row).

    Per field f with K_f classes seen and class frequency p_f(c) over the rows, a label weighs
    (1 / (K_f · p_f(c)))^γ (1 for every class when the field is balanced); a row takes the weight of its
    rarest label (the largest), and the weights are normalized to mean 1 over the rows, so the loss keeps
    its scale. γ = 0: all 1; γ = 1: inverse class frequency."""
    if gamma < 0:
        raise ValueError(f"gamma: expected >= 0, got {gamma}")
    if not labels:
        return []
    n, n_fields = len(labels), len(labels[0])
    per_field = []
    for f in range(n_fields):
        counts: dict[str, int] = {}
        for row in labels:
            counts[row[f]] = counts.get(row[f], 0) + 1
        per_field.append({c: (n / (len(counts) * k)) ** gamma for c, k in counts.items()})
    raw = [max(per_field[f][row[f]] for f in range(n_fields)) for row in labels]
    mean = sum(raw) / n
    return [r / mean for r in raw]


def weighted_loss(sample_loss: torch.Tensor, task_of_sample: list[str], sample_weight: torch.Tensor,
                  task_weight: dict[str, float]) -> torch.Tensor:
    """Eq. 2 on a batch: Σ_t λ_t · mean over the batch's samples of task t of (w · ℓ)."""
    total = sample_loss.new_zeros(())
    for t in sorted(set(task_of_sample)):
        idx = [i for i, s in enumerate(task_of_sample) if s == t]
        if t not in task_weight:
            raise ValueError(f"task {t!r} has no weight (known: {sorted(task_weight)})")
        sel = torch.tensor(idx)
        total = total + task_weight[t] * (sample_weight[sel].to(sample_loss) * sample_loss[sel]).mean()
    return total
