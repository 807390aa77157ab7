"""MarketingFM's rewrite chain (marketingfm.txt §3.2, §6.1, App. A.3; spec ``papers_spec.md`` §B.4 "Task
chaining", §C invariant 32): the headlines and descriptions of one keyword from any text generator, all within
the limits and passing AutoEval's rules, in few generator calls.

How it works
------------
Per keyword the chain needs ``n_headlines`` (12) headlines and ``n_descriptions`` (3) descriptions. Each *call*
is one invocation of ``generate(prompts) -> texts`` with one prompt per kind that still needs items (so a
caller may batch a call's prompts, and the calls of many keywords, on one engine):

1. **generate** (call 1): ask for ``asked(n) = ceil(oversample * n)`` items of each kind (2x: 24 headlines, 6
   descriptions); the prompt states the count (``GENERATE_PROMPT``).
2. **rewrite** (call 2, the paper's single summarisation call instead of up to 10 attempts): the items of the
   previous call that failed *only* on length (``headline_length`` / ``description_length``) are sent back in
   one ``REWRITE_PROMPT`` per kind (App. A.3: "create shorter versions"), at most ``asked(missing)`` of them;
   their rewrites are new items, checked like any other (a rewrite too long again is dropped, not re-sent).
3. **refill** (later calls, while short and fewer than ``max_rounds`` calls were made): per short kind, the
   previous call's length-only failures are rewritten as in 2 when there are some, else ``asked(missing)`` new
   items are generated (the same 2x rule on what is missing).

A kind's prompt in a call is thus a rewrite when the previous call left length-only failures of that kind,
else a generation; kinds already complete get no prompt. The chain stops when both kinds are complete; after
``max_rounds`` calls it raises ``RewriteChainError`` naming the keyword and the shortfall.

Parsing: one item per line; numbering and bullets (``1.``, ``2)``, ``(3)``, ``-``, ``*``, ``•``) and
surrounding quotes are stripped, blank lines skipped, and only the first ``asked`` items of a prompt are used
(the rest is counted as ``extra``).

Checks, per item in answer order (once a kind is complete the call's remaining items of that kind are
``surplus``, unchecked):

- the per-item AutoEval rules (``rewards.autoeval.RuleChecker.ad_failures``): ``mention_sale``, ``blacklist``;
  for headlines ``headline_length`` (> ``headline_max``) and, with ``require_cta``, ``cta_missing``; for
  descriptions ``description_length`` (> ``description_max``). An item counts under every rule it fails;
- ``diversity``: the item's word set (keyword words left out: ``RuleChecker.gram_set``) has a Jaccard
  similarity >= ``diversity_threshold`` with an item of the same kind already kept for this keyword (exact
  duplicates always: similarity 1);
- ``relevance`` (headlines, with a ``judge``): ``judge(keyword, headline)`` (0–5) < ``relevance_min`` (§6.1:
  below 4, reject and regenerate). The judge sees only items that passed everything else.

The result (``ChainResult``) has exactly ``n_headlines`` headlines and ``n_descriptions`` descriptions (the first
kept, in order) and a ``CallRecord`` per call: its action per kind, items asked / received / kept, sent to the
rewrite, dropped per rule. ``dropped`` totals count every rejected item, including the length-only failures
whose rewrites replace them.

Defaults: 12 + 3 items, 2x oversampling (§3.2), headline <= 30 characters (``RuleConfig.headline_max_chars``,
the ``ad_rewrite`` task's ``AD_LIMITS["title"]``), description <= 90 characters (``AD_LIMITS["description"]``;
the rewards layer does not import ``data``, a test keeps the two equal), relevance >= 4 (§6.1).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from megatron_ads.config.yaml_io import split_override
from megatron_ads.rewards.autoeval import RuleChecker, RuleConfig, jaccard
from megatron_ads.runtime.errors import Failure

KINDS = ("headlines", "descriptions")
"""The two kinds of item, in prompt order (also the result's keys)."""
DROP_RULES = ("mention_sale", "headline_length", "description_length", "cta_missing", "blacklist", "diversity",
              "relevance")
"""Why an item is dropped (``ChainResult.dropped`` keys), in this order."""
LENGTH_RULE = {"headlines": "headline_length", "descriptions": "description_length"}
ACTIONS = ("generate", "rewrite")
_RULE_DEFAULTS = RuleConfig()

GENERATE_PROMPT = ("{context}Task: write ad copy for a paid search ad.\n"
                   "Keyword: {keyword}\n"
                   "Write exactly {count} {noun}, each at most {max_chars} characters{cta}. Make them relevant to "
                   "the keyword and different from each other; do not mention a sale, discounts or clearance.\n"
                   "One per line, no numbering.\n"
                   "{title}:\n")
"""The generation prompt (call 1 and refills): ``{count}`` items of ``{noun}`` (headlines | descriptions)."""
REWRITE_PROMPT = ("{context}Use the {noun} in <rewrite></rewrite> XML tags below to create shorter versions.\n"
                  "Previous Output: <rewrite>\n{items}\n</rewrite>\n"
                  "The {noun} were generated by an LLM that did not follow the length limit. Rewrite each of the "
                  "{count} {noun} in at most {max_chars} characters{cta}, keeping its meaning and the keyword.\n"
                  "Keyword: {keyword}\n"
                  "One per line, no numbering.\n"
                  "{title}:\n")
"""The task-chaining rewrite prompt (App. A.3): ``{items}`` are the over-long items, one per line."""
CONTEXT_BLOCK = "Context: {context}\n"
"""Put before a prompt when the keyword has product context."""
CTA_RULE = ", each starting with a call-to-action verb such as Shop, Buy or Discover"
"""Added to headline prompts with ``require_cta``."""

_NUMBERING = re.compile(r"^\s*(?:[-*•]+\s*|\(?\d{1,3}[.)]\s+|\d{1,3}:\s+|\[\d{1,3}\]\s*)")
_QUOTES = ('"', "'", "“”", "‘’")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(kw_only=True, slots=True)
class RewriteChainConfig:
    """Settings of the rewrite chain (module docstring)."""

    n_headlines: int = 12
    """Headlines returned per keyword (§3.2: 12)."""
    n_descriptions: int = 3
    """Descriptions returned per keyword (§3.2: 3; 0: none asked)."""
    oversample: float = 2.0
    """Items asked per item needed: call 1 asks ceil(oversample * n) of each kind (§3.2: 2x); refills
    ceil(oversample * missing)."""
    headline_max: int = _RULE_DEFAULTS.headline_max_chars
    """Longest headline (characters; AutoEval's rule and the ad_rewrite task's limit: 30)."""
    description_max: int = 90
    """Longest description (characters; the ad_rewrite task's limit: 90)."""
    max_rounds: int = 4
    """Most generator calls per keyword, call 1 and the rewrite call included (>= 1)."""
    require_cta: bool = True
    """Headlines need a call-to-action verb (§6.1; ``RuleConfig.cta_verbs``)."""
    relevance_min: float = 4.0
    """With a judge: headlines scoring below this (0–5) are dropped (§6.1: < 4 rejected)."""
    diversity_threshold: float = _RULE_DEFAULTS.diversity_threshold
    """Word-set Jaccard similarity at or above which an item duplicates a kept one of its kind (in (0, 1])."""

    def __post_init__(self):
        for name in ("n_headlines", "n_descriptions"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 0):
                raise ValueError(f"{name}: expected an integer >= 0, got {v!r}")
        if self.n_headlines + self.n_descriptions == 0:
            raise ValueError("n_headlines/n_descriptions: expected at least one item to generate, got 0 and 0")
        if not (_is_num(self.oversample) and self.oversample >= 1.0):
            raise ValueError(f"oversample: expected a number >= 1 (items asked per item needed), got "
                             f"{self.oversample!r}")
        for name in ("headline_max", "description_max", "max_rounds"):
            v = getattr(self, name)
            if not (_is_int(v) and v >= 1):
                raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
        if not isinstance(self.require_cta, bool):
            raise ValueError(f"require_cta: expected true or false, got {self.require_cta!r}")
        if not (_is_num(self.relevance_min) and 0.0 <= self.relevance_min <= 5.0):
            raise ValueError(f"relevance_min: expected a number in [0, 5], got {self.relevance_min!r}")
        t = self.diversity_threshold
        if not (_is_num(t) and 0 < t <= 1):
            raise ValueError(f"diversity_threshold: expected a number in (0, 1], got {t!r}")

    def need(self, kind: str) -> int:
        """Items of ``kind`` a result holds."""
        return self.n_headlines if kind == "headlines" else self.n_descriptions

    def asked(self, n: int) -> int:
        """Items asked for ``n`` needed: ceil(oversample * n)."""
        return math.ceil(round(self.oversample * n, 9))

    def max_chars(self, kind: str) -> int:
        return self.headline_max if kind == "headlines" else self.description_max

    def rule_config(self) -> RuleConfig:
        """AutoEval's rule settings for these limits (diversity is checked by the chain against kept items)."""
        rules = [r for r in _RULE_DEFAULTS.rules if r != "cta_missing" or self.require_cta]
        return RuleConfig(rules=rules, headline_max_chars=self.headline_max,
                          diversity_threshold=self.diversity_threshold)

    @classmethod
    def load(cls, overrides: Sequence[str] | None = None) -> "RewriteChainConfig":
        """The defaults with ``key=value`` overrides (YAML-typed values, e.g. ``max_rounds=6 require_cta=false``);
        ValueError naming an unknown key."""
        d: dict[str, Any] = {}
        for item in overrides or []:
            key, value = split_override(item, "max_rounds=6")
            d[key] = value
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(set(d) - set(known))
        if bad:
            raise ValueError(f"rewrite chain config: unknown field(s) {bad}; expected some of {known}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def parse_items(text: str) -> list[str]:
    """One item per non-blank line of ``text``, numbering / bullets and surrounding quotes stripped."""
    out = []
    for line in text.splitlines():
        s = _NUMBERING.sub("", line, count=1).strip()
        for q in _QUOTES:
            if len(s) >= 2 and s[0] == q[0] and s[-1] == q[-1]:
                s = s[1:-1].strip()
                break
        if s:
            out.append(s)
    return out


def _context(context: str | None) -> str:
    return CONTEXT_BLOCK.format(context=context.strip()) if context and context.strip() else ""


def generate_prompt(cfg: RewriteChainConfig, kind: str, keyword: str, count: int, context: str | None = None) -> str:
    """``GENERATE_PROMPT`` for ``count`` items of ``kind``."""
    return GENERATE_PROMPT.format(context=_context(context), keyword=keyword, count=count, noun=kind,
                                  title=kind.capitalize(), max_chars=cfg.max_chars(kind),
                                  cta=CTA_RULE if kind == "headlines" and cfg.require_cta else "")


def rewrite_prompt(cfg: RewriteChainConfig, kind: str, keyword: str, items: Sequence[str],
                   context: str | None = None) -> str:
    """``REWRITE_PROMPT`` asking for shorter versions of ``items`` (one per line)."""
    return REWRITE_PROMPT.format(context=_context(context), keyword=keyword, count=len(items), noun=kind,
                                 title=kind.capitalize(), max_chars=cfg.max_chars(kind), items="\n".join(items),
                                 cta=CTA_RULE if kind == "headlines" and cfg.require_cta else "")


def _zero(keys: Sequence[str]) -> dict[str, int]:
    return {k: 0 for k in keys}


@dataclass(kw_only=True, slots=True)
class CallRecord:
    """One generator call of a chain."""

    index: int
    """1-based call number."""
    actions: dict[str, str]
    """Per kind prompted: ``generate`` or ``rewrite``."""
    prompts: list[str]
    """The prompts sent, in ``actions`` order."""
    asked: dict[str, int]
    """Items asked per kind (the count the prompt states)."""
    received: dict[str, int] = field(default_factory=dict)
    """Items parsed per kind (at most ``asked``)."""
    extra: dict[str, int] = field(default_factory=dict)
    """Items beyond ``asked`` per kind, ignored."""
    kept: dict[str, int] = field(default_factory=dict)
    """Items kept per kind."""
    surplus: dict[str, int] = field(default_factory=dict)
    """Items not checked per kind: the kind was complete."""
    to_rewrite: dict[str, int] = field(default_factory=dict)
    """Length-only failures per kind, sent to the next call's rewrite when the kind is still short."""
    dropped: dict[str, int] = field(default_factory=lambda: _zero(DROP_RULES))
    """Dropped items per rule (an item counts under each per-item rule it fails)."""

    def to_dict(self) -> dict[str, Any]:
        """The record without its prompts."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "prompts"}


@dataclass(kw_only=True, slots=True)
class ChainResult:
    """A completed chain: exactly ``n_headlines`` headlines and ``n_descriptions`` descriptions."""

    keyword: str
    headlines: list[str]
    descriptions: list[str]
    calls: list[CallRecord]

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    @property
    def dropped(self) -> dict[str, int]:
        """Dropped items per rule over all calls."""
        return _total(self.calls)

    def to_dict(self) -> dict[str, Any]:
        return {"keyword": self.keyword, "headlines": list(self.headlines), "descriptions": list(self.descriptions),
                "calls": self.n_calls, "dropped": self.dropped, "records": [c.to_dict() for c in self.calls]}


def _total(calls: Sequence[CallRecord]) -> dict[str, int]:
    out = _zero(DROP_RULES)
    for c in calls:
        for k, v in c.dropped.items():
            out[k] += v
    return out


class RewriteChainError(Failure):
    """The chain made ``max_rounds`` calls and is still short of items."""

    def __init__(self, keyword: str, missing: dict[str, int], have: dict[str, int], need: dict[str, int],
                 calls: list[CallRecord], max_rounds: int):
        self.keyword, self.missing, self.have, self.need = keyword, missing, have, need
        self.calls, self.max_rounds = calls, max_rounds
        short = " and ".join(f"{m} {k if m != 1 else k[:-1]}" for k, m in missing.items() if m)
        kept = ", ".join(f"{have[k]}/{need[k]} {k}" for k in need if need[k])
        drops = ", ".join(f"{k} {v}" for k, v in _total(calls).items() if v) or "none"
        super().__init__(f"rewrite chain: keyword {keyword!r} is short of {short} after {len(calls)} call(s) "
                         f"(max_rounds {max_rounds}): kept {kept}; dropped: {drops}")

    @property
    def dropped(self) -> dict[str, int]:
        return _total(self.calls)


class RewriteChain:
    """The rewrite chain of one keyword as a step machine: ``prompts()`` gives the next call's prompts (None when
    complete or out of calls), ``feed(texts)`` takes the generator's answers, ``result()`` returns the items or
    raises ``RewriteChainError``. ``run_rewrite_chain`` drives one; a caller may drive many in lockstep and
    batch their prompts.

    Args:
        keyword: the advertiser keyword (non-empty).
        cfg: the settings (default ``RewriteChainConfig()``).
        context: optional product context put before every prompt (``CONTEXT_BLOCK``).
        judge: optional ``judge(keyword, headline) -> score in [0, 5]``; headlines below ``relevance_min`` drop.
    """

    def __init__(self, keyword: str, cfg: RewriteChainConfig | None = None, *, context: str | None = None,
                 judge: Callable[[str, str], float] | None = None):
        if not (isinstance(keyword, str) and keyword.strip()):
            raise ValueError(f"keyword: expected a non-empty string, got {keyword!r}")
        if context is not None and not isinstance(context, str):
            raise ValueError(f"context: expected a string or None, got {context!r}")
        self.keyword, self.context, self.judge = keyword.strip(), context, judge
        self.cfg = cfg = cfg or RewriteChainConfig()
        self.checker = RuleChecker(cfg.rule_config())
        self.kept: dict[str, list[str]] = {k: [] for k in KINDS}
        self._grams: dict[str, list[set]] = {k: [] for k in KINDS}
        self._long: dict[str, list[str]] = {k: [] for k in KINDS}
        self.calls: list[CallRecord] = []
        self._pending: CallRecord | None = None

    # ---------------------------------------------------------------- state
    def missing(self, kind: str) -> int:
        return max(0, self.cfg.need(kind) - len(self.kept[kind]))

    @property
    def complete(self) -> bool:
        return all(self.missing(k) == 0 for k in KINDS)

    @property
    def pending(self) -> CallRecord | None:
        """The call ``prompts()`` prepared and ``feed`` has not answered yet (its ``actions`` name the kind of
        each prompt, in order), or None."""
        return self._pending

    @property
    def exhausted(self) -> bool:
        """Out of calls and still short."""
        return not self.complete and len(self.calls) >= self.cfg.max_rounds

    # ---------------------------------------------------------------- steps
    def prompts(self) -> list[str] | None:
        """The next call's prompts (one per short kind, in ``KINDS`` order), or None when the chain is complete
        or has made ``max_rounds`` calls. Calling it again before ``feed`` returns the same prompts."""
        if self._pending is not None:
            return list(self._pending.prompts)
        if self.complete or self.exhausted:
            return None
        actions, prompts, asked = {}, [], {}
        for kind in KINDS:
            miss = self.missing(kind)
            if not miss:
                continue
            long = self._long[kind][:self.cfg.asked(miss)]
            if long:
                actions[kind], asked[kind] = "rewrite", len(long)
                prompts.append(rewrite_prompt(self.cfg, kind, self.keyword, long, self.context))
            else:
                actions[kind], asked[kind] = "generate", self.cfg.asked(miss)
                prompts.append(generate_prompt(self.cfg, kind, self.keyword, asked[kind], self.context))
        self._pending = CallRecord(index=len(self.calls) + 1, actions=actions, prompts=prompts, asked=asked)
        return list(prompts)

    def feed(self, texts: Sequence[str]) -> CallRecord:
        """Take the answers to the last ``prompts()`` (one text per prompt) and check their items."""
        rec = self._pending
        if rec is None:
            raise RuntimeError("feed: no call pending (call prompts() first)")
        if len(texts) != len(rec.prompts) or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"generate: expected {len(rec.prompts)} text(s), one per prompt, got {texts!r}")
        self._pending = None
        for kind, text in zip(rec.actions, texts):
            items = parse_items(text)
            used = items[:rec.asked[kind]]
            rec.received[kind], rec.extra[kind] = len(used), len(items) - len(used)
            rec.kept[kind] = rec.surplus[kind] = rec.to_rewrite[kind] = 0
            long: list[str] = []
            for item in used:
                if not self.missing(kind):
                    rec.surplus[kind] += 1
                    continue
                verdict = self._check(kind, item)
                if verdict is None:
                    self.kept[kind].append(item)
                    rec.kept[kind] += 1
                    continue
                for rule in verdict:
                    rec.dropped[rule] += 1
                if verdict == [LENGTH_RULE[kind]] and rec.actions[kind] == "generate":
                    long.append(item)
            rec.to_rewrite[kind] = len(long) if self.missing(kind) else 0
            self._long[kind] = long if self.missing(kind) else []
        for kind in KINDS:  # a kind not prompted this call has nothing left to rewrite
            if kind not in rec.actions:
                self._long[kind] = []
        self.calls.append(rec)
        return rec

    def _check(self, kind: str, item: str) -> list[str] | None:
        """None when ``item`` is kept (and its word set recorded), else the rules it fails."""
        if kind == "headlines":
            fails = self.checker.ad_failures(item, "")
        else:
            fails = self.checker.ad_failures("", item) - {"cta_missing"}  # CTA is a headline rule
            if len(item) > self.cfg.description_max:
                fails.add("description_length")
        if fails:
            return [r for r in DROP_RULES if r in fails]
        ad = {"keyword": self.keyword, "headline": item if kind == "headlines" else "",
              "description": item if kind == "descriptions" else ""}
        grams = self.checker.gram_set(ad)
        if any(jaccard(grams, g) >= self.cfg.diversity_threshold for g in self._grams[kind]):
            return ["diversity"]
        if kind == "headlines" and self.judge is not None:
            score = self.judge(self.keyword, item)
            if not _is_num(score):
                raise ValueError(f"judge: expected a score in [0, 5] for {item!r}, got {score!r}")
            if score < self.cfg.relevance_min:
                return ["relevance"]
        self._grams[kind].append(grams)
        return None

    def result(self) -> ChainResult:
        """The items (exactly the configured counts) and the call records; ``RewriteChainError`` when short."""
        if not self.complete:
            if not self.exhausted:
                raise RuntimeError(f"result: the chain of {self.keyword!r} is not done (call prompts()/feed())")
            need = {k: self.cfg.need(k) for k in KINDS}
            raise RewriteChainError(self.keyword, {k: self.missing(k) for k in KINDS},
                                    {k: len(self.kept[k]) for k in KINDS}, need, list(self.calls),
                                    self.cfg.max_rounds)
        return ChainResult(keyword=self.keyword, headlines=self.kept["headlines"][:self.cfg.n_headlines],
                           descriptions=self.kept["descriptions"][:self.cfg.n_descriptions], calls=list(self.calls))


def run_rewrite_chain(keyword: str, generate: Callable[[list[str]], list[str]],
                      cfg: RewriteChainConfig | None = None, *, context: str | None = None,
                      judge: Callable[[str, str], float] | None = None) -> ChainResult:
    """Run the rewrite chain of ``keyword`` (module docstring) with ``generate(prompts) -> texts`` (one text per
    prompt; one invocation per call) and an optional ``judge(keyword, headline) -> 0–5``.

    Returns:
        ``ChainResult``: exactly ``cfg.n_headlines`` headlines and ``cfg.n_descriptions`` descriptions, all
        passing the rules, with the record of every call.
    Raises:
        RewriteChainError: still short after ``cfg.max_rounds`` calls (the message names the keyword, the items
        missing per kind and the drops per rule).
    """
    chain = RewriteChain(keyword, cfg, context=context, judge=judge)
    while (prompts := chain.prompts()) is not None:
        chain.feed(list(generate(prompts)))
    return chain.result()
