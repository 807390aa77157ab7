"""The rejection filters of data cooking (AdNanny §3.4), pure functions on texts, rows and vectors.

Candidate filters, in the order the pipeline applies them (a candidate is counted under the first it fails):

- ``schema``: the output has the task's format — teacher answer mode: ``data.tasks.parse_output`` finds a
  closed, non-empty ``<think>`` and every tag well-formed; gold answer mode: the reasoning was closed with
  ``</think>`` before the token limit, is non-empty and holds no tag of the task (the gold tags appended
  after it must parse).
- ``contradiction``: the tags differ from the gold labels (classification: a field's value; query_gen: the
  set of queries; ad_rewrite: the rewrite's title and description, and the rationale when the row has one,
  as words), or the reasoning *states* a label other than the gold one (``stated_labels``: "relevance
  label 'fair'", "a score of 2").
- ``boilerplate``: the reasoning shares fewer than ``min_entity_overlap`` words with the input's entities
  (``entities``: the content words of ``input_texts`` — the query, ad, history, keyword, queries and given rewrite).
- ``grounding``: the reasoning names an entity of the closed ``LEXICON`` (city, brand, category, product, price
  tier: the synthetic world's own lists; a JSON file replaces or adds kinds, ``lexicon``) that occurs neither in
  the input (``input_texts``) nor in the row's reference ``reasoning`` when it has one — whole words,
  case- and plural-insensitive, a synonym group grounded by any of its members (``grounding``: "the reasoning
  names city 'boston', not in the input"). The reference is a source because the synthetic rule text names
  facts the input does not show (an ad with an empty description still has a city, and its rule reasoning
  names it); without one, the input alone.
- ``self_consistency``: mean pairwise cosine of a candidate's reasoning to the input's other candidates
  below the threshold (``self_consistency``: the most divergent dropped first, then the means recomputed).
- ``verifier``: the verifier's faithfulness score below the threshold (scored in ``pipeline``).

Input filter of ad data (ad_rewrite), on the raw rows before any generation (run by ``cli.cook``, which
holds the rule checker and the judge):

- ``autoeval``: the gold rewrite fails MarketingFM's AutoEval — a rule check (``rewards.autoeval``) or, with
  a judge, an expected score below its threshold.

Keyword-data filters, on the raw (keyword, query) pairs before any generation:

- ``broader``: the query is not a narrower refinement of the keyword (``is_narrower``: it must add a word and
  keep every keyword word — or be a natural synonym, cosine to the keyword ≥ ``synonym_min``);
- ``off_topic``: cosine of the query to the ad's text below ``off_topic_min``;
- ``near_duplicate``: normalised edit similarity or cosine ≥ ``near_duplicate`` with an earlier kept query of
  the same keyword (``edit_similarity``).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from megatron_ads.data.synthetic import CATALOGUE, CITIES, PRICE
from megatron_ads.data.tasks import AD_REWRITE, QUERY_GEN, ParsedOutput, Task, _get, parse_output
from megatron_ads.runtime.errors import BadInput

SCHEMA, CONTRADICTION, BOILERPLATE, GROUNDING, SELF_CONSISTENCY, VERIFIER = (
    "schema", "contradiction", "boilerplate", "grounding", "self_consistency", "verifier")
CANDIDATE_FILTERS = (SCHEMA, CONTRADICTION, BOILERPLATE, GROUNDING, SELF_CONSISTENCY, VERIFIER)
"""Candidate filters in the order they apply."""
AUTOEVAL = "autoeval"
"""The ad-data input filter (module docstring)."""
BROADER, OFF_TOPIC, NEAR_DUPLICATE = "broader", "off_topic", "near_duplicate"
KEYWORD_FILTERS = (BROADER, OFF_TOPIC, NEAR_DUPLICATE)
"""Keyword-data filters in the order they apply."""

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being below between
both but by can could did do does doing down during each few for from further had has have having he her here
hers him his how i if in into is it its itself just me more most my no nor not of off on once only or other our
out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your www com
https http example html shop great fair budget premium prices price fast shipping
""".split())
"""Words that say nothing about a particular input (function words, URL parts, the ads' stock phrases)."""


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text``."""
    return _WORD.findall(str(text).lower())


def _stem(w: str) -> str:
    """A crude plural-insensitive form (shoes ~ shoe, laptops ~ laptop)."""
    if len(w) > 4 and w.endswith("es") and not w.endswith("ses"):
        return w[:-2] if w[-3] in "sxz" or w.endswith(("ches", "shes")) else w[:-1]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def content_words(text: str) -> set[str]:
    """The stems of the words of ``text`` worth citing: 3+ characters, not a stopword."""
    return {_stem(w) for w in words(text) if len(w) >= 3 and w not in STOPWORDS}


# ------------------------------------------------------------------------------------ candidate filters
def input_texts(task: Task, row: dict) -> list[str]:
    """The texts of a row's input fields, what the cook prompt shows the teacher besides the labels: query,
    keyword, the ad's title / description / URL, the history events, query_gen's queries and ad_rewrite's given
    rewrite (title, description, rationale)."""
    parts: list[str] = []
    for key in ("query", "keyword"):
        if key in row:
            parts.append(str(row[key]))
    ad = row.get("ad") or {}
    parts += [str(ad.get(k, "")) for k in ("title", "description", "url")]
    parts += [str(e) for e in row.get("history") or []]
    if task.name == QUERY_GEN.name:
        parts += [str(q) for q in row.get("queries") or []]
    if task.name == AD_REWRITE.name:
        new = row.get("rewrite") or {}
        parts += [str(new.get(k, "")) for k in ("title", "description", "rationale")]
    return parts


def entities(task: Task, row: dict) -> set[str]:
    """The input's entity words (``content_words`` of every input field, ``input_texts``): what a
    non-boilerplate reasoning cites at least one of."""
    parts = input_texts(task, row)
    return set().union(*(content_words(p) for p in parts)) if parts else set()


def is_boilerplate(reasoning: str, ents: set[str], min_overlap: int = 1) -> bool:
    """True when the reasoning cites fewer than ``min_overlap`` of the entity words (0: never boilerplate)."""
    if min_overlap <= 0:
        return False
    return len(content_words(reasoning) & ents) < min_overlap


# ---- grounding
LEXICON: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "city": tuple(CITIES),
    "brand": tuple(dict.fromkeys(b for c in CATALOGUE.values() for b in c["brands"])),
    "category": tuple(CATALOGUE),
    "product": tuple(dict.fromkeys(i for c in CATALOGUE.values() for i in c["items"])),
    "price": tuple(dict.fromkeys([*PRICE, *PRICE.values()])),
}
"""The built-in grounding lexicon, kind -> entity words (the synthetic world's own lists: ``CITIES``, the
``CATALOGUE``'s brands, categories and items, the ``PRICE`` words of queries and ads). A word is a phrase of
one or more words ("ito en", "coffee beans"); an entry that is itself a tuple is a synonym group (any member in
the input grounds every member). No synonym group is built in: the rule texts name each price word as the row
writes it (the query's "cheap" / "luxury", the ad's "budget" / "premium"), and a group luxury ~ premium would
let "the ad is premium" pass for a luxury query whose ad is budget."""


def _stems(text: str) -> list[str]:
    """``_stem`` of each word of ``text``, a possessive 's dropped (boston's ~ boston)."""
    return [_stem(w[:-2] if w.endswith("'s") else w) for w in words(text)]


@dataclass(frozen=True, slots=True)
class Lexicon:
    """A compiled grounding lexicon (``lexicon``)."""

    entries: dict[tuple[str, ...], tuple[str, str, int]]
    """Per phrase (its stems): its kind, its word as written (lower case) and its synonym group's index."""
    groups: tuple[tuple[tuple[str, ...], ...], ...]
    """Per synonym group, the stems of its members."""
    lengths: tuple[int, ...]
    """The phrase lengths in words, longest first."""
    source: str
    """``built-in`` or the file it was read from."""


def compile_lexicon(lex: dict[str, Any], source: str = "built-in") -> Lexicon:
    """A ``Lexicon`` of ``{kind: [word | [synonym, ...]]}``. Raises BadInput naming ``source`` and the field
    (``kind[i]``) of an entry that is not a word or a list of words, or of a word already in the lexicon."""
    entries: dict[tuple[str, ...], tuple[str, str, int]] = {}
    groups: list[tuple[tuple[str, ...], ...]] = []
    for kind, items in lex.items():
        if not isinstance(kind, str) or not kind.strip():
            raise BadInput(f"{source}: field {kind!r}: expected a kind name (a non-empty string)")
        if not isinstance(items, (list, tuple)):
            raise BadInput(f"{source}: field '{kind}': expected a list of words (or lists of synonyms), got "
                           f"{type(items).__name__} {items!r}")
        for i, item in enumerate(items):
            members = [item] if isinstance(item, str) else item
            if not (isinstance(members, (list, tuple)) and members
                    and all(isinstance(m, str) and _stems(m) for m in members)):
                raise BadInput(f"{source}: field '{kind}[{i}]': expected a word or a non-empty list of synonym "
                               f"words, got {item!r}")
            group = []
            for m in members:
                key = tuple(_stems(m))
                if key in entries:
                    raise BadInput(f"{source}: field '{kind}[{i}]': {m!r} is already in the lexicon (kind "
                                   f"{entries[key][0]!r})")
                entries[key] = (kind, " ".join(words(m)), len(groups))
                group.append(key)
            groups.append(tuple(group))
    return Lexicon(entries=entries, groups=tuple(groups),
                   lengths=tuple(sorted({len(k) for k in entries}, reverse=True)), source=source)


@functools.lru_cache(maxsize=8)
def lexicon(path: str | None = None) -> Lexicon:
    """The grounding lexicon of ``CookConfig.grounding_lexicon``: the built-in ``LEXICON`` (None), or it with the
    kinds of a JSON file ``{kind: [word | [synonym, ...]]}`` — a kind of the file replaces the built-in kind of
    that name (list its words again to extend it), a new kind is added, an empty list removes the kind.
    Raises BadInput naming the file (and the field) when it is missing or malformed."""
    if path is None:
        return compile_lexicon(LEXICON)
    f = Path(path)
    where = f"{f} (cook config grounding_lexicon)"
    if not f.is_file():
        raise BadInput(f"{where}: no such file")
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInput(f"{where}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadInput(f"{where}: expected a JSON object {{kind: [words]}}, got {type(data).__name__}")
    return compile_lexicon({**LEXICON, **data}, where)


def grounding(task: Task, row: dict, reasoning: str, lex: Lexicon) -> str | None:
    """The first entity of ``lex`` the reasoning names (whole words, case- and plural-insensitive, the longest
    phrase at a position) that no member of its synonym group grounds in the row — its input fields
    (``input_texts``) or its reference ``reasoning`` (a string field of the raw row, e.g. the synthetic rule
    text) — as "the reasoning names KIND 'WORD', not in the input"; None when every named entity is grounded."""
    texts = input_texts(task, row)
    if isinstance(row.get("reasoning"), str):
        texts.append(row["reasoning"])
    have: set[tuple[str, ...]] = set()
    for t in texts:
        st = _stems(t)
        have.update(tuple(st[i:i + n]) for n in lex.lengths for i in range(len(st) - n + 1))
    st = _stems(reasoning)
    i = 0
    while i < len(st):
        for n in lex.lengths:
            hit = lex.entries.get(tuple(st[i:i + n])) if i + n <= len(st) else None
            if hit is not None:
                kind, word, g = hit
                if not any(m in have for m in lex.groups[g]):
                    return f"the reasoning names {kind} {word!r}, not in the input"
                i += n - 1
                break
        i += 1
    return None


def schema_check(task: Task, text: str, answer: str, finish_reason: str = "stop") -> tuple[ParsedOutput, str | None]:
    """Parse a candidate (the teacher's output text) and say what is wrong with its format (None: nothing).

    ``answer="teacher"``: the text holds ``<think>...</think>`` and the tags. ``answer="gold"``: the text is the
    reasoning after the prefilled ``<think>``, ending with ``</think>``; the gold tags are appended by the
    caller (``Task.target`` with the row's ``reasoning``). Returns the parsed output of the text as a whole target (its ``reasoning`` is
    the think block's content) and the problem."""
    if answer == "gold":
        end = text.find("</think>")
        if end < 0:
            reason = ("the reasoning was not closed with </think> before the token limit" if finish_reason == "length"
                      else "the reasoning was not closed with </think>")
            return ParsedOutput(errors=[reason]), reason
        reasoning = text[:end].strip()
        parsed = ParsedOutput(reasoning=reasoning)
        tags = [f.tag for f in task.outputs if re.search(rf"</?{f.tag}>", reasoning)]
        if "<think>" in reasoning or tags:
            parsed.errors.append(f"the reasoning holds tags of the answer ({', '.join(tags) or 'think'})")
    else:
        parsed = parse_output(task, text)
        if "<think>" not in text:
            parsed.errors.insert(0, "<think> missing")
    if not parsed.errors and not (parsed.reasoning or "").strip():
        parsed.errors.append("empty reasoning")
    return parsed, "; ".join(parsed.errors) if parsed.errors else None



def _norm_query(q: str) -> str:
    return " ".join(words(q))


_ALIASES: dict[str, dict[str, str]] = {
    "query_ad": {"relevance": r"(?<!location )relevance", "location": r"location", "quality": r"ad[- ]quality|quality"},
    "ad_user": {"score": r"relevance score|score"},
}
"""Per classification task, the regex that names each label field in prose ("location relevance" is the
location field, not relevance)."""


def stated_labels(task: Task, reasoning: str) -> dict[str, set[str]]:
    """The label values the reasoning states for each field: a field's name, optionally "label"/"score"/
    "rating", optionally "is"/"of"/":"/"="/"should be", then an allowed value (quotes allowed), e.g. "the
    relevance label 'Fair'", "location is bad", "a score of 2"."""
    found: dict[str, set[str]] = {}
    aliases = _ALIASES.get(task.name, {})
    low = reasoning.lower()
    for f in task.outputs:
        if f.allowed is None or f.name not in aliases:
            continue
        names = aliases[f.name]
        values = "|".join(re.escape(v) for v in sorted(f.allowed, key=len, reverse=True))
        pat = (rf"(?<![\w-])(?:{names})(?:\s+(?:relevance|label|score|rating|grade))?\s*(?:is|of|was|should be|=|:)?\s*"
               rf"['\"‘’“”]?({values})(?![\w-])")
        for m in re.finditer(pat, low):
            found.setdefault(f.name, set()).add(m.group(1))
    return found


def contradiction(task: Task, row: dict, parsed: ParsedOutput, answer: str) -> str | None:
    """What in a well-formed candidate contradicts the gold labels (None: nothing): in teacher mode its tags;
    in both modes the labels its reasoning states (``stated_labels``)."""
    if answer == "teacher":
        for f in task.outputs:
            try:
                gold = _get(row, f.key)
            except KeyError:
                if f.optional:  # e.g. an ad rewrite without a rationale: nothing given to repeat
                    continue
                raise
            got = parsed.fields.get(f.name)
            if f.repeated:
                want = sorted({_norm_query(str(v)) for v in gold})
                have = sorted({_norm_query(str(v)) for v in got or []})
                if want != have:
                    return f"<{f.tag}> items {have} differ from the given {want}"
            elif f.allowed is not None and str(got).lower() != str(gold).lower():
                return f"<{f.tag}> {got!r} contradicts the gold {str(gold)!r}"
            elif f.allowed is None and gold is not None and words(str(got or "")) != words(str(gold)):
                return f"<{f.tag}> {got!r} differs from the given {str(gold)!r}"
    for name, values in stated_labels(task, parsed.reasoning or "").items():
        f = next(x for x in task.outputs if x.name == name)
        gold = str(_get(row, f.key)).lower()
        other = sorted(v for v in values if v != gold)
        if other:
            return f"the reasoning states {name} {other[0]!r}, the gold label is {gold!r}"
    return None


def mean_pairwise_cosine(vectors: np.ndarray) -> list[float]:
    """Per row of ``vectors`` [N, D] (unit rows), its mean cosine to the other rows; NaN for N < 2."""
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    if n < 2:
        return [float("nan")] * n
    sims = v @ v.T
    return [float((sims[i].sum() - sims[i, i]) / (n - 1)) for i in range(n)]


def self_consistency(vectors: np.ndarray, threshold: float) -> tuple[list[bool], list[float]]:
    """Which candidates agree with the others (keep flags) and each one's mean cosine to the others.

    The most divergent candidate is dropped while its mean cosine to the remaining others is below
    ``threshold``, and the means are recomputed among the rest: one hallucinated candidate at cosine 0 would
    otherwise pull three agreeing ones (1, 1, 0 -> 0.67) below 0.8 with it. Two candidates left that disagree
    are both dropped (no agreement to keep); a lone candidate is kept (nothing to compare, NaN). A dropped
    candidate's score is its mean when it was dropped; a kept one's, its mean among the kept."""
    v = np.asarray(vectors, dtype=np.float64)
    n = v.shape[0]
    keep, scores = [True] * n, [float("nan")] * n
    alive = list(range(n))
    while len(alive) >= 2:
        means = mean_pairwise_cosine(v[alive])
        for i, m in zip(alive, means):
            scores[i] = m
        worst = int(np.argmin(means))
        if means[worst] >= threshold:
            break
        if len(alive) == 2:
            keep[alive[0]] = keep[alive[1]] = False
            break
        keep[alive.pop(worst)] = False
    return keep, scores


# ------------------------------------------------------------------------------------ keyword filters
def edit_similarity(a: str, b: str) -> float:
    """1 − Levenshtein distance / the longer length, on the normalised strings (lower-cased words joined by
    one space); 1.0 for two empty strings."""
    a, b = _norm_query(a), _norm_query(b)
    if not a and not b:
        return 1.0
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def is_narrower(keyword: str, query: str, cos_to_keyword: float, synonym_min: float) -> bool:
    """Whether ``query`` refines ``keyword``: it adds at least one word, and it keeps every keyword word
    (plural-insensitive) or, replacing some by synonyms, stays close to it (cosine ≥ ``synonym_min``)."""
    kw = {_stem(w) for w in words(keyword)}
    q = {_stem(w) for w in words(query)}
    if not q - kw:
        return False
    return kw <= q or cos_to_keyword >= synonym_min


def keyword_filter(items: list[dict[str, Any]], cfg: Any) -> list[str | None]:
    """The keyword filters over (keyword, query) pairs in input order.

    Args:
        items: per pair ``{"keyword", "query", "cos_keyword": cos(query, keyword), "cos_ad": cos(query, ad
            text), "vec": the query's unit vector}``.
        cfg: thresholds (``config.cook.CookConfig``: synonym_min, off_topic_min, near_duplicate).
    Returns:
        per pair the filter that drops it (``broader``, ``off_topic``, ``near_duplicate``) or None (kept).
        Near-duplicates are checked against the kept queries of the same keyword (normalised).
    """
    kept: dict[str, list[dict]] = {}
    out: list[str | None] = []
    for it in items:
        kw = _norm_query(it["keyword"])
        if not is_narrower(it["keyword"], it["query"], it["cos_keyword"], cfg.synonym_min):
            out.append(BROADER)
            continue
        if it["cos_ad"] < cfg.off_topic_min:
            out.append(OFF_TOPIC)
            continue
        dup = any(edit_similarity(it["query"], k["query"]) >= cfg.near_duplicate
                  or float(np.dot(it["vec"], k["vec"])) >= cfg.near_duplicate for k in kept.get(kw, []))
        if dup:
            out.append(NEAR_DUPLICATE)
            continue
        kept.setdefault(kw, []).append(it)
        out.append(None)
    return out
