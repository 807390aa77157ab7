"""MarketingFM AutoEval (marketingfm.txt §5.1, Table 3/8; spec ``papers_spec.md`` §B.4): the rule checks, the
acceptance decision, agreement with human labels, a threshold sweep, and the ``autoeval_rules`` and
``autoeval_accept`` rewards.

Rules (``RULES``; an ad is ``{"keyword", "headline", "description"}``; failures are named, in this order):
- ``mention_sale``: headline or description contains a ``sale_terms`` word (sale, sales, discount, discounts,
  clearance; case-insensitive, word boundary: "wholesale" and "salesman" pass).
- ``headline_length``: the headline (stripped) is longer than ``headline_max_chars`` (30) characters.
- ``cta_missing``: the headline (the description when the headline is empty) has no ``cta_verbs`` word.
- ``blacklist``: headline or description contains a safety ``blacklist`` term (case-insensitive, word boundary).
- ``diversity``: the ad is too close to another ad of the same keyword: the Jaccard similarity of their
  word ``diversity_ngram``-gram sets (lowercased; the keyword's own words left out with
  ``diversity_exclude_keyword``, since every ad of a keyword repeats them) is >= ``diversity_threshold``.
  With ``diversity_keep_first`` the first ad (input order) of a near-duplicate pair passes and the later one
  fails (a filter keeps one copy); otherwise both fail (a reward with no order bias).

Acceptance (Table 3): no rule failure and every judge score >= its threshold (``accept``; a missing score
rejects). Scores are numbers handed in (the 0–5 LLM judge is separate). ``DEFAULT_THRESHOLDS`` is Table 8's
best mode, Context(2) + General(3). Against human labels (``agreement``), FPR = LLM accept & human reject
("concerned") and FNR = LLM reject & human accept ("wasted") are fractions of *all* samples, so
FPR + FNR = 1 − agreement. ``threshold_sweep`` gives one row per threshold combination (Table 8 style).
``needs_regeneration`` is the generation-time filter (§6.1): judge relevance < 4, no CTA or a long headline.

AutoEval-Update (§5.2, Alg. 1) as offline procedures: ``select_for_review`` picks the ads that go to human
review (random, uncertainty or diversity sampling); ``refine`` re-chooses the thresholds on the reviewed sample
(``refine_thresholds``: best agreement, ties to the lower FPR) and reports the decisions before/after (Table 9
style). The judge's prompt-and-criteria rewriting by a critic LLM is not reproduced: thresholds are what it
refines here.

The ``autoeval_rules`` reward (GRPO ad rewriting): a completion's parsed ``title`` (the headline) and
``description`` are checked against the other completions of the call with the same keyword (meta
``keyword``; without one, the same prompt: meta ``group``). ``mode=binary``: 1.0 when every rule passes, else
0.0; ``mode=penalty``: −``failure_penalty`` per failed rule (0 when all pass). A malformed completion (parser
errors or no headline) gets ``format_penalty``.

The ``autoeval_accept`` reward: AutoEval's *accept* decision (Table 3) as the reward — the rules as above, then,
for the completions that pass every rule, the frozen judge (``RewardResources.judge_model``, built by the trainer
from ``grpo.resources.judge_model``: ``judge(ads)`` gives each ad's expected 0–5 relevance and generalization
scores) against ``thresholds`` (default Table 8's best, relevance 2 / generalization 3). ``mode=binary``: 1.0 when
accepted, else 0.0; ``mode=penalty``: −``failure_penalty`` per failed rule or criterion below its threshold. The
judge's scores are reported as details (``judge_<criterion>``; None for a completion the rules already
rejected: the judge never sees it) in ``details`` after each call.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from megatron_ads.rewards.registry import RewardOutput, RewardResources, register
from megatron_ads.rewards.relate import TermMatcher, words

RULES = ("mention_sale", "headline_length", "cta_missing", "blacklist", "diversity")
"""The rule-failure names, in the order they are reported."""
SALE_TERMS = ("sale", "sales", "discount", "discounts", "clearance")
CTA_VERBS = ("buy", "shop", "order", "get", "discover", "explore", "find", "browse", "try", "book", "grab",
             "choose", "compare", "upgrade", "start", "see", "view", "save", "join", "learn")
"""Action verbs a headline should carry ("Buy Now", "Shop at ...")."""
SAFETY_BLACKLIST = ("scam", "hate", "kill", "porn", "xxx", "weapon", "weapons", "drugs", "gambling", "casino",
                    "guaranteed", "miracle", "cure")
"""Harmful, offensive or misleading terms (illustrative; a deployment brings its own list)."""
DEFAULT_THRESHOLDS = {"relevance": 2.0, "generalization": 3.0}
"""Judge-score thresholds (0–5): Table 8's best mode, Context(2) + General(3)."""
REGENERATE_ON = ("cta_missing", "headline_length")
"""Rule failures that send a headline back for regeneration (§6.1)."""


def _check_terms(name: str, terms: Any) -> None:
    if not isinstance(terms, (list, tuple)):
        raise ValueError(f"{name}: expected a list of terms, got {terms!r}")
    TermMatcher(terms, name)


@dataclass(kw_only=True, slots=True)
class RuleConfig:
    """The rule checks' settings (module docstring)."""

    rules: list[str] = field(default_factory=lambda: list(RULES))
    """Rules to run (a subset of RULES)."""
    headline_max_chars: int = 30
    """Longest headline allowed (characters)."""
    sale_terms: list[str] = field(default_factory=lambda: list(SALE_TERMS))
    """Mention-Sale stoplist."""
    cta_verbs: list[str] = field(default_factory=lambda: list(CTA_VERBS))
    """Call-to-action verbs; a headline needs one."""
    blacklist: list[str] = field(default_factory=lambda: list(SAFETY_BLACKLIST))
    """Safety blacklist."""
    diversity_threshold: float = 0.5
    """Jaccard similarity at or above which two ads of a keyword are near duplicates (in (0, 1])."""
    diversity_ngram: int = 1
    """n of the word n-grams compared (>= 1)."""
    diversity_exclude_keyword: bool = True
    """Leave the keyword's words out of the compared sets."""
    diversity_keep_first: bool = True
    """The first ad of a near-duplicate pair passes (True) or both fail (False)."""

    def __post_init__(self):
        unknown = [r for r in self.rules if r not in RULES]
        if unknown or len(set(self.rules)) != len(self.rules):
            raise ValueError(f"rules: expected distinct names from {list(RULES)}, got {self.rules!r}")
        if not (isinstance(self.headline_max_chars, int) and self.headline_max_chars >= 1):
            raise ValueError(f"headline_max_chars: expected an int >= 1, got {self.headline_max_chars!r}")
        for name in ("sale_terms", "cta_verbs", "blacklist"):
            _check_terms(name, getattr(self, name))
        t = self.diversity_threshold
        if not (isinstance(t, (int, float)) and 0 < t <= 1):
            raise ValueError(f"diversity_threshold: expected a number in (0, 1], got {t!r}")
        if not (isinstance(self.diversity_ngram, int) and self.diversity_ngram >= 1):
            raise ValueError(f"diversity_ngram: expected an int >= 1, got {self.diversity_ngram!r}")


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets: nothing tells them apart)."""
    return len(a & b) / len(a | b) if a or b else 1.0


class RuleChecker:
    """The rule checks of one ``RuleConfig``."""

    def __init__(self, cfg: RuleConfig | None = None):
        self.cfg = cfg = cfg or RuleConfig()
        self.sale = TermMatcher(cfg.sale_terms, "sale_terms")
        self.cta = TermMatcher(cfg.cta_verbs, "cta_verbs")
        self.black = TermMatcher(cfg.blacklist, "blacklist")

    def ad_failures(self, headline: str, description: str = "") -> set[str]:
        """The per-ad rules (all but diversity) that ``headline``/``description`` fail."""
        both = f"{headline}\n{description}"
        cta_text = headline if headline.strip() else description
        failed = {"mention_sale": bool(self.sale.find(both, "")),
                  "headline_length": len(headline.strip()) > self.cfg.headline_max_chars,
                  "cta_missing": not self.cta.find(cta_text, ""),
                  "blacklist": bool(self.black.find(both, ""))}
        return {r for r, bad in failed.items() if bad and r in self.cfg.rules}

    def gram_set(self, ad: Mapping[str, Any]) -> set[tuple[str, ...]]:
        """The word n-gram set the diversity rule compares."""
        n = self.cfg.diversity_ngram
        drop = {w for seg in words(str(ad.get("keyword") or ""), "") for w, _, _ in seg} \
            if self.cfg.diversity_exclude_keyword else set()
        text = f"{ad.get('headline') or ''}\n{ad.get('description') or ''}"
        out = set()
        for seg in words(text, ""):
            ws = [w for w, _, _ in seg if w not in drop]
            out |= {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}
        return out

    def near_duplicates(self, ads: Sequence[Mapping[str, Any]]) -> set[int]:
        """Indices failing the diversity rule: ads are compared within the same ``keyword`` (or the same
        ``diversity_group`` when an ad has that key: the reward groups keyword-less rollouts by prompt)."""
        by_kw: dict[Any, list[int]] = {}
        for i, ad in enumerate(ads):
            by_kw.setdefault(ad.get("diversity_group", ad.get("keyword")), []).append(i)
        bad: set[int] = set()
        for idx in by_kw.values():
            sets = {i: self.gram_set(ads[i]) for i in idx}
            for i, j in itertools.combinations(idx, 2):  # i before j in input order
                if jaccard(sets[i], sets[j]) >= self.cfg.diversity_threshold:
                    bad.add(j)
                    if not self.cfg.diversity_keep_first:
                        bad.add(i)
        return bad

    def check(self, ads: Sequence[Mapping[str, Any]]) -> list[list[str]]:
        """Rule failures of each ad (names from ``RULES``, in that order; [] when it passes)."""
        dup = self.near_duplicates(ads) if "diversity" in self.cfg.rules else set()
        out = []
        for i, ad in enumerate(ads):
            f = self.ad_failures(str(ad.get("headline") or ""), str(ad.get("description") or ""))
            if i in dup:
                f.add("diversity")
            out.append([r for r in RULES if r in f])
        return out


# ------------------------------------------------------------------------------------ acceptance and agreement
def accept(failures: Sequence[str], scores: Mapping[str, float],
           thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS) -> bool:
    """Rules pass and every thresholded judge score is present and >= its threshold."""
    return not failures and all(scores.get(k) is not None and scores[k] >= t for k, t in thresholds.items())


def needs_regeneration(failures: Sequence[str], relevance: float | None, min_relevance: float = 4.0) -> bool:
    """§6.1's generation-time filter: judge relevance < ``min_relevance`` (or missing), or a failure in
    ``REGENERATE_ON`` (no CTA, headline too long)."""
    return relevance is None or relevance < min_relevance or any(f in REGENERATE_ON for f in failures)


@dataclass(frozen=True, slots=True)
class Agreement:
    """LLM accept/reject decisions against human labels; rates are fractions of all ``n`` samples."""

    n: int
    accept_rate: float
    """Share the LLM accepts."""
    agreement: float
    """Share where LLM and human agree."""
    fpr: float
    """LLM accept & human reject ("concerned")."""
    fnr: float
    """LLM reject & human accept ("wasted")."""

    @property
    def disagreement(self) -> float:
        """FPR + FNR = 1 − agreement."""
        return self.fpr + self.fnr


def agreement(llm_accept: Sequence[bool], human_accept: Sequence[bool]) -> Agreement:
    """Agreement, FPR and FNR of the LLM decisions against human labels (Table 8 definitions)."""
    n = len(llm_accept)
    if n == 0 or len(human_accept) != n:
        raise ValueError(f"human_accept: expected one label per decision ({n} >= 1), got {len(human_accept)}")
    fp = sum(bool(a) and not bool(h) for a, h in zip(llm_accept, human_accept))
    fn = sum(not bool(a) and bool(h) for a, h in zip(llm_accept, human_accept))
    return Agreement(n=n, accept_rate=sum(map(bool, llm_accept)) / n, agreement=(n - fp - fn) / n,
                     fpr=fp / n, fnr=fn / n)


def threshold_sweep(failures: Sequence[Sequence[str]], scores: Sequence[Mapping[str, float]],
                    human_accept: Sequence[bool], grid: Mapping[str, Sequence[float]]) -> list[dict[str, float]]:
    """One row per combination of thresholds in ``grid`` ({criterion: values}), in grid order:
    ``{criterion: threshold, ..., "accept_rate", "agreement", "fpr", "fnr", "disagreement"}``."""
    if not grid or any(not list(v) for v in grid.values()):
        raise ValueError(f"grid: expected {{criterion: [thresholds]}} with non-empty lists, got {grid!r}")
    if not (len(failures) == len(scores) == len(human_accept)):
        raise ValueError(f"failures/scores/human_accept: expected equal lengths, got "
                         f"{len(failures)}/{len(scores)}/{len(human_accept)}")
    names = list(grid)
    rows = []
    for combo in itertools.product(*(list(grid[k]) for k in names)):
        th = dict(zip(names, (float(x) for x in combo)))
        a = agreement([accept(f, s, th) for f, s in zip(failures, scores)], human_accept)
        rows.append({**th, "accept_rate": a.accept_rate, "agreement": a.agreement, "fpr": a.fpr, "fnr": a.fnr,
                     "disagreement": a.disagreement})
    return rows


SWEEP_GRID = {"relevance": (0, 1, 2, 3, 4, 5), "generalization": (0, 1, 2, 3, 4, 5)}
"""The threshold grid of the sweep and of ``refine_thresholds``: every integer pair in {0..5}² (Table 8's modes
are points of it)."""


def agreement_summary(a: Agreement) -> dict[str, float]:
    """An ``Agreement`` as a flat dict: n, accept_rate, agreement, fpr, fnr, disagreement and the counts fp, fn."""
    return {"n": a.n, "accept_rate": a.accept_rate, "agreement": a.agreement, "fpr": a.fpr, "fnr": a.fnr,
            "disagreement": a.disagreement, "fp": round(a.fpr * a.n), "fn": round(a.fnr * a.n)}


def refine_thresholds(failures: Sequence[Sequence[str]], scores: Sequence[Mapping[str, float]],
                      human_accept: Sequence[bool], current: Mapping[str, float] = DEFAULT_THRESHOLDS,
                      grid: Mapping[str, Sequence[float]] = SWEEP_GRID) -> dict[str, float]:
    """The thresholds of ``grid`` that agree best with the human labels (AutoEval-Update, Alg. 1, as threshold
    refinement): highest agreement, then lowest FPR (an accepted bad ad costs more than a wasted good one), then
    the smallest L1 move from ``current``, then the first in grid order."""
    rows = threshold_sweep(failures, scores, human_accept, grid)
    names = list(grid)

    def key(ir):
        i, r = ir
        return (-r["agreement"], r["fpr"], sum(abs(r[k] - float(current.get(k, 0.0))) for k in names), i)

    best = min(enumerate(rows), key=key)[1]
    return {k: best[k] for k in names}


def refine(failures: Sequence[Sequence[str]], scores: Sequence[Mapping[str, float]], human_accept: Sequence[bool],
           current: Mapping[str, float] = DEFAULT_THRESHOLDS,
           grid: Mapping[str, Sequence[float]] = SWEEP_GRID) -> dict[str, Any]:
    """The criteria-refinement step on a human-reviewed sample: the ``refine_thresholds`` choice and the
    decisions before/after on that sample (Table 9 style: FP = ``fpr``, FN = ``fnr``, Acc = ``agreement``, all
    fractions of the sample). Returns ``{"thresholds_before", "thresholds_after", "before", "after"}``
    (before/after: ``agreement_summary``)."""
    after = refine_thresholds(failures, scores, human_accept, current, grid)

    def at(th):
        return agreement_summary(agreement([accept(f, s, th) for f, s in zip(failures, scores)], human_accept))

    return {"thresholds_before": {k: float(v) for k, v in current.items()}, "thresholds_after": after,
            "before": at(current), "after": at(after)}


# ------------------------------------------------------------------------------------ active sampling
STRATEGIES = ("random", "uncertainty", "diversity")
"""Active-sampling strategies (AutoEval-Update §5.2) choosing which ads go to human review."""
UNCERTAINTY_BY = ("confidence", "margin")


def _margin(scores: Mapping[str, float] | None, thresholds: Mapping[str, float]) -> float:
    """How far the nearest thresholded score is from its threshold (inf without scores)."""
    if not scores:
        return math.inf
    return min((abs(float(scores[k]) - float(t)) for k, t in thresholds.items() if scores.get(k) is not None),
               default=math.inf)


def cluster_key(ad: Mapping[str, Any]) -> str:
    """The diversity cluster of an ad: its ``category`` when it has one, else its keyword (lower-cased,
    whitespace collapsed)."""
    cat = ad.get("category")
    if isinstance(cat, str) and cat.strip():
        return "category:" + " ".join(cat.lower().split())
    return "keyword:" + " ".join(str(ad.get("keyword") or "").lower().split())


def select_for_review(ads: Sequence[Mapping[str, Any]], n: int, strategy: str, seed: int = 0,
                      thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
                      uncertainty_by: str = "confidence") -> list[int]:
    """Indices of the ``n`` ads (at most all of them) to send to human review, in selection order,
    deterministic in ``seed``. ``ads``: ``{keyword[, category], scores, confidence}`` (the judge's outputs).

    - ``random``: a uniform sample without replacement.
    - ``uncertainty``: the least certain decisions first: ``uncertainty_by=confidence`` — the lowest judge
      confidence, ties by the margin; ``margin`` — the expected score nearest its threshold (the smallest
      |score − threshold| over the thresholded criteria), ties by confidence; remaining ties in a seeded random
      order. Needs the judge (a ``confidence`` on every ad).
    - ``diversity``: spread over clusters (``cluster_key``: category, else keyword): round-robin over the
      clusters in a seeded random order, each cluster's ads in a seeded random order, so every cluster gets an
      ad before any gets a second one.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {list(STRATEGIES)}, got {strategy!r}")
    if uncertainty_by not in UNCERTAINTY_BY:
        raise ValueError(f"uncertainty_by: expected one of {list(UNCERTAINTY_BY)}, got {uncertainty_by!r}")
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: expected an int >= 1, got {n!r}")
    rng = random.Random(f"autoeval-sample:{strategy}:{seed}")
    k = min(n, len(ads))
    if strategy == "random":
        return rng.sample(range(len(ads)), k)
    if strategy == "uncertainty":
        missing = [i for i, a in enumerate(ads) if a.get("confidence") is None]
        if missing:
            raise ValueError(f"strategy uncertainty: needs the judge's confidence on every ad (ad {missing[0]} has "
                             f"none: run the judge, or use random / diversity)")
        order = list(range(len(ads)))
        rng.shuffle(order)
        tie = {i: r for r, i in enumerate(order)}

        def key(i):
            conf, margin = float(ads[i]["confidence"]), _margin(ads[i].get("scores"), thresholds)
            return (conf, margin, tie[i]) if uncertainty_by == "confidence" else (margin, conf, tie[i])

        return sorted(range(len(ads)), key=key)[:k]
    clusters: dict[str, list[int]] = {}
    for i, a in enumerate(ads):
        clusters.setdefault(cluster_key(a), []).append(i)
    names = sorted(clusters)
    rng.shuffle(names)
    queues = []
    for name in names:
        members = list(clusters[name])
        rng.shuffle(members)
        queues.append(members)
    out: list[int] = []
    depth = 0
    while len(out) < k:
        out += [q[depth] for q in queues if depth < len(q)][:k - len(out)]
        depth += 1
    return out


def evaluate_rows(rows: Sequence[Mapping[str, Any]], cfg: RuleConfig | None = None,
                  thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS) -> list[dict[str, Any]]:
    """AutoEval output rows ``{id, rule_failures, scores, accept}`` of input rows ``{id, keyword, headline,
    description[, scores]}`` (``scores``: {criterion: 0–5}, absent: {} and the ad is rejected)."""
    for i, r in enumerate(rows):
        for key in ("id", "keyword", "headline"):
            if key not in r:
                raise ValueError(f"rows[{i}].{key}: missing (expected id, keyword, headline, description)")
    fails = RuleChecker(cfg).check(rows)
    return [{"id": r["id"], "rule_failures": f, "scores": dict(r.get("scores") or {}),
             "accept": accept(f, r.get("scores") or {}, thresholds)} for r, f in zip(rows, fails)]


# ------------------------------------------------------------------------------------ reward
REWARD_MODES = ("binary", "penalty")


@dataclass(kw_only=True, slots=True)
class AutoevalRulesParams(RuleConfig):
    """Parameters of the ``autoeval_rules`` reward: the rules' settings plus the fields below."""

    diversity_keep_first: bool = False
    """As a reward both members of a near-duplicate pair fail (no rollout-order bias)."""
    mode: str = "binary"
    """binary: 1.0 if every rule passes, else 0.0; penalty: −failure_penalty per failed rule."""
    failure_penalty: float = 0.25
    """Penalty per failed rule in penalty mode (> 0)."""
    format_penalty: float = -1.0
    """Reward of a malformed completion (<= 0)."""
    headline_field: str = "title"
    """Parsed field holding the headline."""
    description_field: str = "description"
    """Parsed field holding the description ('' allowed: none)."""
    keyword_key: str = "keyword"
    """Meta key of the keyword the diversity rule groups by (absent: the prompt, meta group)."""

    def __post_init__(self):
        RuleConfig.__post_init__(self)
        if self.mode not in REWARD_MODES:
            raise ValueError(f"mode: expected one of {list(REWARD_MODES)}, got {self.mode!r}")
        if not (math.isfinite(self.failure_penalty) and self.failure_penalty > 0):
            raise ValueError(f"failure_penalty: expected a finite number > 0, got {self.failure_penalty!r}")
        if not (math.isfinite(self.format_penalty) and self.format_penalty <= 0):
            raise ValueError(f"format_penalty: expected a finite value <= 0, got {self.format_penalty!r}")
        if not self.headline_field:
            raise ValueError("headline_field: expected a parsed field name")


class AutoevalRulesReward:
    """The ``autoeval_rules`` reward (module docstring)."""

    def __init__(self, params: AutoevalRulesParams, parse):
        self.p, self.parse = params, parse
        self.checker = RuleChecker(params)

    def check(self, completions, task, meta) -> tuple[list[dict], list[bool], dict[int, list[str]]]:
        """The completions as ads ``{keyword, diversity_group, headline, description}``, whether each is well
        formed, and the rule failures of the well-formed ones ``{index: [rule, ...]}``."""
        ads, ok = [], []
        for i, (text, row) in enumerate(zip(completions, meta)):
            parsed = self.parse(task, text)
            head = parsed.fields.get(self.p.headline_field)
            ok.append(not parsed.errors and isinstance(head, str) and bool(head.strip()))
            kw = row.get(self.p.keyword_key)
            ads.append({"keyword": str(kw or ""), "diversity_group": ("keyword", kw) if kw else
                        ("group", row.get("group", ("sample", i))),
                        "headline": head if isinstance(head, str) else "",
                        "description": str(parsed.fields.get(self.p.description_field) or "")})
        idx = [i for i in range(len(ads)) if ok[i]]
        return ads, ok, dict(zip(idx, self.checker.check([ads[i] for i in idx])))

    def values(self, ok: list[bool], fails: dict[int, list[str]]) -> list[float]:
        """Each completion's reward from ``check``'s verdicts (module docstring)."""
        return [float(self.p.format_penalty) if not good
                else (0.0 if fails[i] else 1.0) if self.p.mode == "binary"
                else -self.p.failure_penalty * len(fails[i]) for i, good in enumerate(ok)]

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        _, ok, fails = self.check(completions, task, meta)
        return RewardOutput(self.values(ok, fails))


@register("autoeval_rules", AutoevalRulesParams,
          doc="MarketingFM AutoEval rules on a rewrite: 1 if all pass else 0 (or −penalty per failure)")
def build_autoeval_rules(params: AutoevalRulesParams, resources: RewardResources) -> AutoevalRulesReward:
    """AutoEval rule reward for ad rewriting."""
    return AutoevalRulesReward(params, resources.need("parse", "autoeval_rules"))


@dataclass(kw_only=True, slots=True)
class AutoevalAcceptParams(AutoevalRulesParams):
    """Parameters of the ``autoeval_accept`` reward: those of ``autoeval_rules`` plus the judge thresholds."""

    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    """Per judge criterion (relevance, generalization), the smallest accepted expected score (0–5)."""

    def __post_init__(self):
        AutoevalRulesParams.__post_init__(self)
        th = self.thresholds
        if (not isinstance(th, dict) or not th or set(th) - set(DEFAULT_THRESHOLDS)
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5
                           for v in th.values())):
            raise ValueError(f"thresholds: expected {{criterion: score in [0, 5]}} over "
                             f"{sorted(DEFAULT_THRESHOLDS)}, got {th!r}")


class AutoevalAcceptReward(AutoevalRulesReward):
    """The ``autoeval_accept`` reward (module docstring): the rule reward's checks, then the judge."""

    def __init__(self, params: AutoevalAcceptParams, parse, resources: RewardResources):
        AutoevalRulesReward.__init__(self, params, parse)
        self.resources = resources
        self.details: dict[str, list[float | None]] = {}
        """Per sample of the last call: ``judge_<criterion>`` (None where the rules rejected the completion)."""

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        ads, ok, fails = self.check(completions, task, meta)
        vals = self.values(ok, fails)
        passed = [i for i, f in fails.items() if not f]  # well formed, every rule passed
        judge = self.resources.need("judge_model", "autoeval_accept")
        asked = [{k: ads[i][k] for k in ("keyword", "headline", "description")} for i in passed]
        judged = dict(zip(passed, judge.judge(asked))) if asked else {}  # collective: every rank, same rows
        details: dict[str, list[float | None]] = {f"judge_{c}": [None] * len(vals) for c in self.p.thresholds}
        for i, j in judged.items():
            low = [c for c, t in self.p.thresholds.items() if not j["scores"][c] >= t]
            for c in self.p.thresholds:
                details[f"judge_{c}"][i] = float(j["scores"][c])
            vals[i] = (0.0 if low else 1.0) if self.p.mode == "binary" else -self.p.failure_penalty * len(low)
        self.details = details
        return RewardOutput(vals)


@register("autoeval_accept", AutoevalAcceptParams,
          doc="MarketingFM AutoEval accept on a rewrite (rules pass and the frozen judge's scores >= thresholds): "
              "1 else 0 (or −penalty per failure)")
def build_autoeval_accept(params: AutoevalAcceptParams, resources: RewardResources) -> AutoevalAcceptReward:
    """AutoEval accept reward for ad rewriting (the judge: ``resources.judge_model``, built on first use)."""
    return AutoevalAcceptReward(params, resources.need("parse", "autoeval_accept"), resources)
