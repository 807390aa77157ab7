"""MarketingFM AutoEval's LLM judge (§5.1, Table 3) on any ``Scorer``: each ad is scored 0–5 per criterion by
label-candidate scoring of the ``ad_judge`` task (``data.tasks.AD_JUDGE``).

Per (ad, criterion) the task's label-only prompt (as ``Task.predict`` and ``label --task ad_judge`` build it) is
followed by the six candidates ``<Score>0</Score>`` .. ``<Score>5</Score>`` — one prefill scores all of them (the
engine shares the prompt's cache between candidates, and every prompt of a call shares the candidate list: one
``scorer.score`` call per batch) — and p(s) is the softmax (float64) of their summed log-probabilities. From p:

- the score is the expected score Σ s·p(s) (in [0, 5]; thresholds compare it with ``>=``);
- the confidence is ``max_prob`` (max p(s)) or ``entropy`` (1 − H(p) / log 6), in [0, 1] (1/6 resp. 0 for a
  uniform p, 1 for a point mass);
- an ad's confidence is the smallest over its criteria: the decision is as uncertain as its least certain score.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from megatron_ads.data.tasks import AD_JUDGE, JUDGE_CRITERIA, JUDGE_SCORES, THINK_EMPTY, Scorer

CONFIDENCE_KINDS = ("max_prob", "entropy")
"""How a score distribution's confidence is measured (module docstring)."""


def expected_score(probs: Mapping[str, float]) -> float:
    """Σ s·p(s) over the score candidates ``"0"`` .. ``"5"``."""
    return sum(int(s) * float(probs[s]) for s in JUDGE_SCORES)


def confidence(probs: Mapping[str, float], kind: str = "max_prob") -> float:
    """The confidence of a score distribution: ``max_prob`` = max p(s), ``entropy`` = 1 − H(p) / log 6."""
    if kind == "max_prob":
        return max(float(probs[s]) for s in JUDGE_SCORES)
    if kind == "entropy":
        h = -sum(p * math.log(p) for p in (float(probs[s]) for s in JUDGE_SCORES) if p > 0)
        return min(1.0, max(0.0, 1.0 - h / math.log(len(JUDGE_SCORES))))
    raise ValueError(f"confidence: expected one of {list(CONFIDENCE_KINDS)}, got {kind!r}")


def judge_rows(ads: Sequence[Mapping[str, Any]], criteria: Sequence[str]) -> list[dict]:
    """The ``ad_judge`` rows of ``ads`` ({keyword, headline, description}): one per (ad, criterion), ad-major,
    with id ``"<ad index>:<criterion>"``."""
    bad = [c for c in criteria if c not in JUDGE_CRITERIA]
    if bad or not criteria:
        raise ValueError(f"criteria: expected a non-empty subset of {list(JUDGE_CRITERIA)}, got {list(criteria)}")
    return [{"id": f"{i}:{c}", "keyword": str(ad["keyword"]), "headline": str(ad.get("headline") or ""),
             "description": str(ad.get("description") or ""), "criterion": c}
            for i, ad in enumerate(ads) for c in criteria]


def score_probs(rows: Sequence[Mapping[str, Any]], scorer: Scorer) -> list[dict[str, float]]:
    """p(s) over ``"0"`` .. ``"5"`` for each ``ad_judge`` row: the label-only prompt (as ``Task.predict``: the
    prompt, then the empty reasoning) and the six ``<Score>s</Score>`` candidates in one ``scorer.score`` call,
    softmax in float64."""
    field = AD_JUDGE.outputs[0]
    cands = [f"<{field.tag}>{s}</{field.tag}>" for s in JUDGE_SCORES]
    prompts = [AD_JUDGE.prompt(dict(r)) + THINK_EMPTY for r in rows]
    ll = scorer.score([p for p in prompts for _ in cands], cands * len(prompts)) if prompts else []
    out = []
    for i in range(len(prompts)):
        row = ll[i * len(cands):(i + 1) * len(cands)]
        top = max(row)
        w = [math.exp(x - top) for x in row]
        z = sum(w)
        out.append({s: x / z for s, x in zip(JUDGE_SCORES, w)})
    return out


def judge(ads: Sequence[Mapping[str, Any]], scorer: Scorer, criteria: Sequence[str] = tuple(JUDGE_CRITERIA),
          confidence_kind: str = "max_prob") -> list[dict[str, Any]]:
    """Judge ``ads``: per ad ``{"scores": {criterion: expected score}, "probs": {criterion: {"0".."5": p}},
    "confidences": {criterion: c}, "confidence": min over criteria}`` (module docstring)."""
    if confidence_kind not in CONFIDENCE_KINDS:
        raise ValueError(f"confidence: expected one of {list(CONFIDENCE_KINDS)}, got {confidence_kind!r}")
    probs_of = score_probs(judge_rows(ads, criteria), scorer)
    out: list[dict[str, Any]] = []
    for i in range(len(ads)):
        probs = {c: probs_of[i * len(criteria) + k] for k, c in enumerate(criteria)}
        confs = {c: confidence(p, confidence_kind) for c, p in probs.items()}
        out.append({"scores": {c: expected_score(p) for c, p in probs.items()}, "probs": probs,
                    "confidences": confs, "confidence": min(confs.values())})
    return out
