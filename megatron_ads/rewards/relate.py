"""RELATE rewards (relate.txt §3.3–3.4; spec ``papers_spec.md`` §B.2): length, risk control (blacklist) and
diversity (Eq. 4) as registered rewards, their token-level credit (Eq. 5), and the paper's metrics (Eq. 10–12).

What the rules read
- The *ad text* of a completion: the completion minus what ``skip`` matches (default: the ``<think>`` block
  and markup tags such as ``<Title>``). Skipped parts also split the text into segments n-grams do not cross.
- Words: ``\\w+`` runs joined by ' or - ("risk-free", "don't" are one word), lowercased. English-style
  word n-grams: a language without spaces (RELATE's Chinese ads) would need character n-grams instead.

Rewards (each ``fn(prompts, completions, task, meta) -> RewardOutput``)
- ``length``: L = the ad text's length in ``unit`` (``tokens``: completion tokens overlapping a non-space
  character of the ad text, so the stop token never counts; ``chars``: its non-space characters; ``words``).
  r = ``inside`` when ``min_len <= L <= max_len``; outside, a *linear* penalty in the distance d to the
  interval: r = max(``floor``, ``inside`` − ``slope``·d). With ``min_len=0, inside=0`` it is RLPF's
  "0 up to L0, linear after" penalty.
- ``blacklist`` (risk control): hits = occurrences of the ``terms`` in the ad text (case-insensitive, at word
  boundaries: no word character just before or after; a multi-word term matches across any whitespace).
  Sentence value −λ1·[hits > 0] (``count=False``) or −λ1·hits. Token values (Eq. 5, first term): −λ1 on
  every token overlapping a hit (every sub-token of a blacklisted word), 0 elsewhere.
- ``diversity`` (Eq. 4): within the batch of completions passed in (or each ``batch_by`` batch), the n-grams
  of each ad text, n ∈ [n_min, n_max] = [2, 10]. An n-gram is *high-frequency* (𝒢_high) when it occurs in
  at least max(``min_count``, ⌈``min_share``·N⌉) of the batch's N completions. With ``exclude_prompt`` an
  n-gram that also occurs in the sample's prompt (the keyword, the ad being rewritten) is neither counted
  nor penalized for that sample. reward_div = −Δd · (number of occurrences, over all n and positions, of
  high-frequency n-grams) ≤ 0 (a repeated k-word phrase counts each of its sub-n-grams: Eq. 4 as written).
  Token values (Eq. 5, second term): −λ2 on every token covered by a high-frequency n-gram occurrence.
  The trainer sums channels' token values (weighted by the channel weights), so a token both blacklisted and
  covered gets −λ1 − λ2 with weights 1 (Eq. 5), and A_{i,t} = A_i + α·r_token (Eq. 9, ``train.grpo``).

Token values need ``meta[i]["completion_ids"]`` and ``RewardResources.decode`` (``registry.token_spans``);
without them a sample's token values are None.

Metrics: ``compliance_rate`` (Eq. 11: share of texts with no blacklist hit and, when given, a passing format
check), ``diversity_score`` (Eq. 12 normalized so higher is better: the share of texts with no
high-frequency n-gram occurrence within the set, in [0, 1]; Eq. 12 as written is the mean of values ≤ 0,
while the paper reports 0.72–0.97), ``delta_ctcvr`` (Eq. 10). ``GROUP_SIZE`` is the paper's G = 5
(set ``grpo.group_size`` to it in a RELATE run).
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from megatron_ads.rewards.registry import COMPLETION_IDS, RewardOutput, RewardResources, register, token_spans

GROUP_SIZE = 5
"""RELATE's G (§4.1): rollouts per prompt."""
DEFAULT_SKIP = r"(?s)<think>.*?</think>|<[^<>\n]*>"
"""What no rule reads: the reasoning block and markup tags."""
DEFAULT_BLACKLIST = ("guaranteed", "guarantee", "miracle", "cure", "cures", "risk-free", "100%", "#1",
                     "number one", "best ever", "no side effects", "instant results", "get rich")
"""Exaggerated or misleading claims (illustrative; a deployment brings its own list)."""
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
Span = tuple[int, int]


# ------------------------------------------------------------------------------------ text helpers
@functools.lru_cache(maxsize=32)
def _compile(pattern: str) -> re.Pattern | None:
    return re.compile(pattern) if pattern else None


def check_skip(skip: str) -> None:
    """ValueError naming ``skip`` when it is not a valid regular expression."""
    try:
        _compile(skip)
    except re.error as exc:
        raise ValueError(f"skip: expected a regular expression (or ''), got {skip!r}: {exc}") from exc


def segments(text: str, skip: str = DEFAULT_SKIP) -> list[Span]:
    """Character ranges of the ad text: ``text`` minus the matches of ``skip`` ('' skips nothing)."""
    pat, out, pos = _compile(skip), [], 0
    for m in (pat.finditer(text) if pat else ()):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = max(pos, m.end())
    if pos < len(text):
        out.append((pos, len(text)))
    return out


def words(text: str, skip: str = DEFAULT_SKIP) -> list[list[tuple[str, int, int]]]:
    """Per ad-text segment: its words ``(lowercased word, start, end)``."""
    return [[(m.group().lower(), s + m.start(), s + m.end()) for m in _WORD.finditer(text[s:e])]
            for s, e in segments(text, skip)]


class TermMatcher:
    """Case-insensitive, word-boundary matcher of a list of terms (words or phrases)."""

    def __init__(self, terms: Sequence[str], name: str = "terms"):
        terms = [str(t).strip() for t in terms]
        if not terms or any(not t for t in terms):
            raise ValueError(f"{name}: expected a non-empty list of non-empty terms, got {terms!r}")
        alts = [r"\s+".join(map(re.escape, t.split())) for t in sorted(set(terms), key=len, reverse=True)]
        self.terms = terms
        self.pattern = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)

    def find(self, text: str, skip: str = DEFAULT_SKIP) -> list[Span]:
        """Spans of the hits in the ad text (non-overlapping, left to right)."""
        return [(s + m.start(), s + m.end()) for s, e in segments(text, skip) for m in self.pattern.finditer(text[s:e])]


def overlap_values(spans: Sequence[Span], hits: Sequence[Span], value: float) -> list[float]:
    """``value`` for each token span overlapping a hit, 0.0 for the others (empty spans never overlap)."""
    return [value if any(a < e and s < b for s, e in hits) else 0.0 for a, b in spans]


@functools.lru_cache(maxsize=1024)
def _cached_spans(ids: tuple[int, ...], decode: Callable, text: str) -> tuple[Span, ...]:
    return tuple(token_spans(ids, decode, text))


def completion_spans(row: Mapping[str, Any], text: str, decode: Callable | None) -> list[Span] | None:
    """Token spans of a completion (``registry.token_spans``), or None without ids or ``decode``."""
    ids = row.get(COMPLETION_IDS)
    if ids is None or decode is None:
        return None
    ids = tuple(int(x) for x in ids)
    try:  # cached: the rewards of one step share a completion's spans
        return list(_cached_spans(ids, decode, text))
    except TypeError:  # an unhashable decode
        return token_spans(ids, decode, text)


# ------------------------------------------------------------------------------------ length
LENGTH_UNITS = ("tokens", "chars", "words")


@dataclass(kw_only=True, slots=True)
class LengthParams:
    """Parameters of the ``length`` reward (module docstring)."""

    unit: str = "tokens"
    """tokens (needs meta completion_ids and resources.decode), chars (non-space) or words."""
    min_len: int = 8
    """Shortest length inside the target interval."""
    max_len: int = 64
    """Longest length inside the target interval."""
    inside: float = 1.0
    """Reward inside the interval."""
    slope: float = 0.05
    """Penalty per unit of distance outside the interval (>= 0)."""
    floor: float = -1.0
    """Lowest reward (<= inside)."""
    skip: str = DEFAULT_SKIP
    """Regex of the parts that are not ad text ('' : the whole completion)."""

    def __post_init__(self):
        if self.unit not in LENGTH_UNITS:
            raise ValueError(f"unit: expected one of {list(LENGTH_UNITS)}, got {self.unit!r}")
        if not (isinstance(self.min_len, int) and self.min_len >= 0):
            raise ValueError(f"min_len: expected an int >= 0, got {self.min_len!r}")
        if not (isinstance(self.max_len, int) and self.max_len >= self.min_len):
            raise ValueError(f"max_len: expected an int >= min_len ({self.min_len}), got {self.max_len!r}")
        for name in ("inside", "slope", "floor"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {getattr(self, name)!r}")
        if self.slope < 0:
            raise ValueError(f"slope: expected >= 0, got {self.slope!r}")
        if self.floor > self.inside:
            raise ValueError(f"floor: expected <= inside ({self.inside}), got {self.floor!r}")
        check_skip(self.skip)


def length_value(length: int, p: LengthParams) -> float:
    """The ``length`` reward of a text of ``length`` units."""
    d = max(p.min_len - length, length - p.max_len, 0)
    return float(p.inside) if d == 0 else max(float(p.floor), p.inside - p.slope * d)


def text_length(text: str, p: LengthParams, spans: Sequence[Span] | None = None) -> int:
    """Length of the ad text of ``text`` in ``p.unit`` (tokens: ``spans`` are the completion's token spans)."""
    segs = segments(text, p.skip)
    if p.unit == "words":
        return sum(len(seg) for seg in words(text, p.skip))
    ad = [False] * (len(text) + 1)
    for s, e in segs:
        for j in range(s, e):
            ad[j] = not text[j].isspace()
    if p.unit == "chars":
        return sum(ad)
    if spans is None:
        raise ValueError("unit: 'tokens' needs meta['completion_ids'] and resources.decode "
                         "(or use unit='chars' / 'words')")
    return sum(any(ad[a:b]) for a, b in spans)


class LengthReward:
    """The ``length`` reward (module docstring)."""

    def __init__(self, params: LengthParams, decode: Callable | None):
        self.p, self.decode = params, decode

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        vals = []
        for text, row in zip(completions, meta):
            spans = completion_spans(row, text, self.decode) if self.p.unit == "tokens" else None
            vals.append(length_value(text_length(text, self.p, spans), self.p))
        return RewardOutput(vals)


@register("length", LengthParams, doc="inside a target length interval: `inside`; outside: linear penalty")
def build_length(params: LengthParams, resources: RewardResources) -> LengthReward:
    """Length reward (RELATE §3.3.1)."""
    return LengthReward(params, resources.decode)


# ------------------------------------------------------------------------------------ blacklist
def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


@dataclass(kw_only=True, slots=True)
class BlacklistParams:
    """Parameters of the ``blacklist`` reward (module docstring)."""

    terms: list[str] = field(default_factory=lambda: list(DEFAULT_BLACKLIST))
    """Blacklisted words or phrases (case-insensitive, word boundaries)."""
    lambda1: float = 1.0
    """λ1 of Eq. 5 (> 0): the penalty per hit and per blacklisted token."""
    count: bool = False
    """Sentence value −λ1·hits (True) or −λ1·[any hit] (False)."""
    skip: str = DEFAULT_SKIP
    """Regex of the parts that are not ad text ('' : the whole completion)."""

    def __post_init__(self):
        TermMatcher(self.terms, "terms")
        _check_positive("lambda1", self.lambda1)
        check_skip(self.skip)


class BlacklistReward:
    """The ``blacklist`` reward (module docstring)."""

    def __init__(self, params: BlacklistParams, decode: Callable | None):
        self.p, self.decode = params, decode
        self.matcher = TermMatcher(params.terms)

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        vals, toks = [], []
        for text, row in zip(completions, meta):
            hits = self.matcher.find(text, self.p.skip)
            vals.append(-self.p.lambda1 * (len(hits) if self.p.count else 1) if hits else 0.0)
            spans = completion_spans(row, text, self.decode)
            toks.append(None if spans is None else overlap_values(spans, hits, -self.p.lambda1))
        return RewardOutput(vals, token_values=toks)


@register("blacklist", BlacklistParams, doc="risk control: −λ1 per blacklisted hit (or any hit); token-level −λ1")
def build_blacklist(params: BlacklistParams, resources: RewardResources) -> BlacklistReward:
    """Risk-control reward (RELATE §3.3.1, Eq. 5)."""
    return BlacklistReward(params, resources.decode)


# ------------------------------------------------------------------------------------ diversity
@dataclass(kw_only=True, slots=True)
class DiversityParams:
    """Parameters of the ``diversity`` reward and ``diversity_score`` (module docstring)."""

    n_min: int = 2
    """Shortest n-gram (Eq. 4: 2)."""
    n_max: int = 10
    """Longest n-gram (Eq. 4: 10)."""
    min_count: int = 2
    """High-frequency: in at least this many of the batch's completions (>= 1) ..."""
    min_share: float = 0.2
    """... and in at least this share of them (in [0, 1])."""
    delta_d: float = 0.1
    """Δd of Eq. 4 (> 0): the penalty per high-frequency n-gram occurrence."""
    lambda2: float = 1.0
    """λ2 of Eq. 5 (> 0): the penalty of a token covered by a high-frequency n-gram."""
    exclude_prompt: bool = True
    """N-grams found in the sample's prompt are never counted or penalized for it."""
    batch_by: str | None = None
    """Meta key forming separate batches (e.g. group: within a prompt's rollouts); None: the whole call."""
    skip: str = DEFAULT_SKIP
    """Regex of the parts that are not ad text ('' : the whole completion)."""

    def __post_init__(self):
        if not (isinstance(self.n_min, int) and self.n_min >= 1):
            raise ValueError(f"n_min: expected an int >= 1, got {self.n_min!r}")
        if not (isinstance(self.n_max, int) and self.n_max >= self.n_min):
            raise ValueError(f"n_max: expected an int >= n_min ({self.n_min}), got {self.n_max!r}")
        if not (isinstance(self.min_count, int) and self.min_count >= 1):
            raise ValueError(f"min_count: expected an int >= 1, got {self.min_count!r}")
        if not (isinstance(self.min_share, (int, float)) and 0 <= self.min_share <= 1):
            raise ValueError(f"min_share: expected a number in [0, 1], got {self.min_share!r}")
        _check_positive("delta_d", self.delta_d)
        _check_positive("lambda2", self.lambda2)
        check_skip(self.skip)


def ngrams(text: str, p: DiversityParams) -> list[tuple[tuple[str, ...], int, int]]:
    """Every n-gram occurrence ``(words, start, end)`` of the ad text, n in [n_min, n_max], within segments."""
    out = []
    for seg in words(text, p.skip):
        for n in range(p.n_min, p.n_max + 1):
            for i in range(len(seg) - n + 1):
                out.append((tuple(w for w, _, _ in seg[i:i + n]), seg[i][1], seg[i + n - 1][2]))
    return out


def high_frequency_occurrences(texts: Sequence[str], p: DiversityParams,
                               prompts: Sequence[str] | None = None) -> list[list[Span]]:
    """Per text: the spans of its occurrences of the batch's high-frequency n-grams (Eq. 4's 𝒢_high)."""
    occ = [ngrams(t, p) for t in texts]
    if p.exclude_prompt and prompts is not None:
        for k, prompt in enumerate(prompts):
            seen = {g for g, _, _ in ngrams(prompt, DiversityParams(n_min=p.n_min, n_max=p.n_max, skip=""))}
            occ[k] = [o for o in occ[k] if o[0] not in seen]
    df = Counter(g for grams in occ for g in {o[0] for o in grams})
    need = max(p.min_count, math.ceil(p.min_share * len(texts) - 1e-9))
    high = {g for g, c in df.items() if c >= need}
    return [[(s, e) for g, s, e in grams if g in high] for grams in occ]


def _batches(meta: Sequence[Mapping[str, Any]], key: str | None) -> list[list[int]]:
    if key is None:
        return [list(range(len(meta)))]
    out: dict[Any, list[int]] = {}
    for i, row in enumerate(meta):
        if key not in row:
            raise ValueError(f"batch_by: sample {i}'s meta has no key {key!r} (keys: {sorted(row)})")
        out.setdefault(row[key], []).append(i)
    return list(out.values())


class DiversityReward:
    """The ``diversity`` reward (module docstring)."""

    def __init__(self, params: DiversityParams, decode: Callable | None):
        self.p, self.decode = params, decode

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        n = len(completions)
        vals: list[float | None] = [0.0] * n
        toks: list[list[float] | None] = [None] * n
        for idx in _batches(meta, self.p.batch_by):
            occ = high_frequency_occurrences([completions[i] for i in idx], self.p, [prompts[i] for i in idx])
            for i, hits in zip(idx, occ):
                vals[i] = -self.p.delta_d * len(hits) if hits else 0.0
                spans = completion_spans(meta[i], completions[i], self.decode)
                toks[i] = None if spans is None else overlap_values(spans, hits, -self.p.lambda2)
        return RewardOutput(vals, token_values=toks)


@register("diversity", DiversityParams,
          doc="Eq. 4: −Δd per occurrence of a batch's high-frequency n-gram; token-level −λ2")
def build_diversity(params: DiversityParams, resources: RewardResources) -> DiversityReward:
    """Diversity reward (RELATE §3.3.2, Eq. 4–5)."""
    return DiversityReward(params, resources.decode)


# ------------------------------------------------------------------------------------ metrics
def compliance_rate(texts: Sequence[str], terms: Sequence[str] = DEFAULT_BLACKLIST,
                    format_ok: Sequence[bool] | None = None, skip: str = DEFAULT_SKIP) -> float:
    """Eq. 11: share of ``texts`` with no blacklist hit (and ``format_ok[i]`` when given), in [0, 1]."""
    if not texts:
        raise ValueError("texts: expected at least one text")
    if format_ok is not None and len(format_ok) != len(texts):
        raise ValueError(f"format_ok: expected one flag per text ({len(texts)}), got {len(format_ok)}")
    m = TermMatcher(terms)
    ok = [not m.find(t, skip) and (format_ok is None or bool(format_ok[i])) for i, t in enumerate(texts)]
    return sum(ok) / len(ok)


def diversity_score(texts: Sequence[str], params: DiversityParams | None = None,
                    prompts: Sequence[str] | None = None) -> float:
    """Eq. 12 normalized, higher is better: share of ``texts`` (one batch) with no high-frequency n-gram."""
    if not texts:
        raise ValueError("texts: expected at least one text")
    occ = high_frequency_occurrences(texts, params or DiversityParams(), prompts)
    return sum(not o for o in occ) / len(texts)


def delta_ctcvr(experiment: float, baseline: float) -> float:
    """Eq. 10: (CTCVR_exp − CTCVR_base) / CTCVR_base (baseline > 0)."""
    if not (math.isfinite(baseline) and baseline > 0):
        raise ValueError(f"baseline: expected a finite CTCVR > 0, got {baseline!r}")
    if not (math.isfinite(experiment) and experiment >= 0):
        raise ValueError(f"experiment: expected a finite CTCVR >= 0, got {experiment!r}")
    return (experiment - baseline) / baseline
