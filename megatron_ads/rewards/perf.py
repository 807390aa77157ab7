"""RLPF / AdLlama (rlpf_adllama.txt; spec ``papers_spec.md`` §B.3, §C 29): the length penalty and the
``perf_rm`` reward — a frozen performance reward model's score minus a length penalty.

How it works:

- ``length_penalty(len, L0, lam, form)``: the penalty subtracted from the RM score (the paper gives no form;
  spec default r = RM − λ·max(0, len − L0)): 0 for len <= L0, then ``linear`` λ·(len − L0) (default) or
  ``quadratic`` λ·(len − L0)²; strictly increasing after L0 when λ > 0.
- ``perf_rm`` (registered): r_i = RM(x_i, y_i) − length_penalty(len(y_i)), with x_i the sample's keyword
  (``meta[keyword_key]``) and y_i the completion's parsed ``fields`` joined with ". " (no fields: the raw
  completion). len is counted in characters (default) or words. A malformed completion scores
  ``malformed_reward``. The RM is ``resources.perf_model``: any object with
  ``score(keywords, texts) -> sequence of floats``, or ``score(keywords, texts, ads=...)`` when its ``score``
  takes ``ads`` (then each sample's ``meta["ad"]``, the ad's fields, or None, is handed over too: the GRPO
  trainer's frozen backbone RM, ``train.frozen_rm.FrozenPerfRM``, builds the prompt it was trained with from
  them). Given as a loader (``resources.loaders["perf_model"]``) it is built on the first call
  (``resources.need``); this module never loads one itself.
- After each call ``details`` holds, per sample, ``score`` (the RM's score), ``penalty`` and ``length`` (None for a
  malformed completion): what the trainer logs beside the reward (the reward alone mixes the two terms).
- KL to the reference is the trainer's (β in the GRPO/PPO config), not part of this reward.
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence, get_args

import torch

from megatron_ads.rewards.registry import RewardOutput, RewardResources, register

PenaltyForm = Literal["linear", "quadratic"]
LengthUnit = Literal["chars", "words"]
_WORD = re.compile(r"[\w']+")


def length_penalty(length, L0: float, lam: float, form: PenaltyForm = "linear"):
    """0 for length <= L0, then lam·(length − L0) (linear) or lam·(length − L0)² (quadratic).

    Args: length (float or tensor), L0 (>= 0), lam (>= 0), form. Returns: float or tensor (>= 0)."""
    if not (L0 >= 0 and lam >= 0):
        raise ValueError(f"L0/lam: expected >= 0, got {L0}/{lam}")
    if form not in get_args(PenaltyForm):
        raise ValueError(f"form: expected one of {', '.join(get_args(PenaltyForm))}, got {form!r}")
    power = 1 if form == "linear" else 2
    if isinstance(length, torch.Tensor):
        over = torch.clamp((length if length.is_floating_point() else length.float()) - L0, min=0.0)
    else:
        over = max(float(length) - L0, 0.0)
    return lam * over**power


@dataclass(kw_only=True, slots=True)
class PerfRMParams:
    """Parameters of the ``perf_rm`` reward (project defaults; the paper gives none)."""

    L0: float = 90.0
    """Free length: no penalty up to it (in ``unit``s; 90 chars: just past the ~80 where the synthetic true CTR
    peaks)."""
    lam: float = 0.02
    """λ: penalty per unit beyond L0 (linear) or per unit² (quadratic), on the RM's score scale."""
    form: str = "linear"
    """linear or quadratic."""
    unit: str = "chars"
    """Length unit: chars or words."""
    fields: list[str] = field(default_factory=lambda: ["title", "description"])
    """Parsed fields whose values, joined with ". ", are the scored text (empty: the raw completion)."""
    keyword_key: str = "keyword"
    """Meta key of the context x handed to the RM (missing: "")."""
    malformed_reward: float = -1.0
    """Reward of a completion that does not parse (on the RM's score scale)."""

    def __post_init__(self):
        for name in ("L0", "lam"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {v!r}")
        if self.form not in get_args(PenaltyForm):
            raise ValueError(f"form: expected one of {', '.join(get_args(PenaltyForm))}, got {self.form!r}")
        if self.unit not in get_args(LengthUnit):
            raise ValueError(f"unit: expected one of {', '.join(get_args(LengthUnit))}, got {self.unit!r}")
        if not math.isfinite(self.malformed_reward):
            raise ValueError(f"malformed_reward: expected a finite number, got {self.malformed_reward!r}")


def text_length(text: str, unit: LengthUnit = "chars") -> int:
    """Length of ``text`` in characters or words (runs of ``[\\w']``)."""
    return len(text) if unit == "chars" else len(_WORD.findall(text))


class PerfRMReward:
    """The ``perf_rm`` reward bound to a scorer (or to ``resources``, whose ``perf_model`` is built on the first
    call) and (when fields are named) a parser."""

    def __init__(self, params: PerfRMParams, model: Any, parse, resources: RewardResources | None = None):
        self.p, self._model, self.parse, self._resources = params, model, parse, resources
        self.details: dict[str, list[float | None]] = {}
        """Per sample of the last call: ``score``, ``penalty``, ``length`` (None: malformed)."""

    @property
    def model(self) -> Any:
        """The RM (built through ``resources.need`` on first use when it was given as a loader)."""
        if self._model is None and self._resources is not None:
            self._model = _check_scorer(self._resources.need("perf_model", "perf_rm"))
        return self._model

    def text(self, task: str, completion: str) -> str | None:
        """The scored text of a completion (None: malformed)."""
        if not self.p.fields:
            return completion.strip()
        parsed = self.parse(task, completion)
        if parsed.errors:
            return None
        parts = [parsed.fields.get(f) for f in self.p.fields]
        return ". ".join(str(x).strip().rstrip(".") for x in parts if x is not None and str(x).strip()) or None

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], task: str,
                 meta: Sequence[dict]) -> RewardOutput:
        texts = [self.text(task, c) for c in completions]
        ok = [i for i, t in enumerate(texts) if t]
        n = len(completions)
        values: list[float | None] = [float(self.p.malformed_reward)] * n
        det: dict[str, list[float | None]] = {"score": [None] * n, "penalty": [None] * n, "length": [None] * n}
        if ok:
            model = self.model
            keywords = [str(meta[i].get(self.p.keyword_key, "")) for i in ok]
            if _takes_ads(model):
                ads = [meta[i].get("ad") if isinstance(meta[i].get("ad"), dict) else None for i in ok]
                scores = list(model.score(keywords, [texts[i] for i in ok], ads=ads))
            else:
                scores = list(model.score(keywords, [texts[i] for i in ok]))
            if len(scores) != len(ok):
                raise ValueError(f"perf_model.score: expected {len(ok)} scores, got {len(scores)}")
            for i, s in zip(ok, scores):
                length = text_length(texts[i], self.p.unit)
                pen = float(length_penalty(length, self.p.L0, self.p.lam, self.p.form))
                values[i] = float(s) - pen
                det["score"][i], det["penalty"][i], det["length"][i] = float(s), pen, float(length)
        self.details = det
        return RewardOutput(values)


def _takes_ads(model: Any) -> bool:
    """Whether ``model.score`` accepts ``ads`` (the samples' ad fields) besides keywords and texts."""
    try:
        return "ads" in inspect.signature(model.score).parameters
    except (TypeError, ValueError):
        return False


def _check_scorer(model: Any) -> Any:
    if model is None or not callable(getattr(model, "score", None)):
        raise ValueError("resources.perf_model: reward 'perf_rm' needs a model with score(keywords, texts), "
                         f"got {model!r}")
    return model


@register("perf_rm", PerfRMParams, doc="RLPF: frozen performance reward model score minus a length penalty")
def build_perf_rm(params: PerfRMParams, resources: RewardResources) -> PerfRMReward:
    """``perf_rm`` over ``resources.perf_model`` (built on the first call when only its loader is there) and
    ``resources.parse`` when ``params.fields`` is set."""
    model = getattr(resources, "perf_model", None)
    lazy = model is None and "perf_model" in resources.loaders
    if not lazy:
        _check_scorer(model)
    parse = resources.need("parse", "perf_rm") if params.fields else None
    return PerfRMReward(params, model, parse, resources if lazy else None)
