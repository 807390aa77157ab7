"""General instruction data with exact answers, and its held-out metrics (AdNanny Table 8, in shape).

The paper mixes public instruction data into ads SFT so that the model keeps its general ability
(ads-only SFT: average public-benchmark score 0.867 -> 0.819; with the mix: 0.867). No public instruction
corpus ships with a registry package this project installs, so ``generate`` makes one procedurally: short
instructions from several families, each with one exact answer, so a greedy answer can be checked by exact
match. Families (``FAMILIES``): two-number arithmetic (0–15), upper-casing, reversing and counting the letters of a
word (a fixed word list), the day / month after or before a named one, sorting three numbers, and a fixed
country -> capital table. Each family has a few phrasings; every prompt in a corpus is distinct, so a
held-out split never repeats a training prompt (it may ask a trained fact in another phrasing, as public
benchmarks do). Rows are ``{"id", "family", "prompt", "response"}`` (the ``general`` task's format,
``data.tasks.GENERAL``, plus the family), deterministic in the seed; ``megatron-ads data synth --task
general`` writes them.

Metrics (``general_metrics``, from ``evaluate_general`` through any ``Scorer``): the mean NLL per response
token (the response's tokens and EOS, as SFT trains them: ``-Σ log p / Σ tokens``), its perplexity
``exp(NLL)``, and the exact-match accuracy of the greedy answer (stripped text equal to the stripped
response, case-sensitive), overall and per family.
"""

from __future__ import annotations

import math
import random
from typing import Callable, Iterator

from megatron_ads.data.tasks import GENERAL, Scorer

WORDS = ("apple", "river", "planet", "garden", "window", "silver", "orange", "pencil", "summer", "winter",
         "castle", "forest", "candle", "rocket", "bridge", "guitar", "monkey", "jacket", "basket", "mirror",
         "tiger", "cloud", "stone", "bread", "chair", "light", "ocean", "paper", "music", "green",
         "table", "house", "water", "horse", "lemon", "piano", "robot", "snake", "train", "zebra",
         "cat", "dog", "sun", "map", "cup", "box", "key", "pen", "hat", "bus",
         "book", "lamp", "tree", "fish", "bird", "door", "milk", "rain", "star", "moon")
"""The words of the word families (common, 3–6 letters)."""

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Canada": "Ottawa", "Mexico": "Mexico City",
    "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Egypt": "Cairo", "Kenya": "Nairobi", "Russia": "Moscow",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw",
    "Greece": "Athens", "Turkey": "Ankara", "Ireland": "Dublin", "Austria": "Vienna", "Peru": "Lima",
    "Chile": "Santiago", "Cuba": "Havana", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Australia": "Canberra",
}
"""The fixed country -> capital table of the ``capital`` family."""

Pair = tuple[str, str]
"""(prompt, response)"""


def _arithmetic() -> Iterator[Pair]:
    for a in range(16):
        for b in range(16):
            yield f"What is {a} + {b}?", str(a + b)
            yield f"Add {a} and {b}.", str(a + b)
            if a >= b:
                yield f"What is {a} - {b}?", str(a - b)
                yield f"Subtract {b} from {a}.", str(a - b)


def _uppercase() -> Iterator[Pair]:
    for w in WORDS:
        for p in (f"Write {w} in uppercase.", f"Uppercase the word: {w}", f"Convert {w} to capital letters."):
            yield p, w.upper()


def _reverse() -> Iterator[Pair]:
    for w in WORDS:
        for p in (f"Reverse the word {w}.", f"Spell {w} backwards.", f"Write the letters of {w} in reverse order."):
            yield p, w[::-1]


def _count_letters() -> Iterator[Pair]:
    for w in WORDS:
        for p in (f"How many letters are in the word {w}?", f"Count the letters of {w}.",
                  f"What is the length of the word {w}?"):
            yield p, str(len(w))


def _cycle(kind: str, names: tuple[str, ...]) -> Iterator[Pair]:
    n = len(names)
    for i, x in enumerate(names):
        after, before = names[(i + 1) % n], names[(i - 1) % n]
        yield f"What {kind} comes after {x}?", after
        yield f"Which {kind} follows {x}?", after
        yield f"Name the {kind} after {x}.", after
        yield f"What {kind} comes before {x}?", before
        yield f"Which {kind} precedes {x}?", before
        yield f"Name the {kind} before {x}.", before


def _sort() -> Iterator[Pair]:
    for a in range(10):
        for b in range(10):
            for c in range(10):
                if len({a, b, c}) < 3:
                    continue
                answer = ", ".join(map(str, sorted((a, b, c))))
                yield f"Sort in ascending order: {a}, {b}, {c}", answer
                yield f"Put these numbers in increasing order: {a} {b} {c}", answer


def _capital() -> Iterator[Pair]:
    for country, city in CAPITALS.items():
        for p in (f"What is the capital of {country}?", f"Name the capital city of {country}.",
                  f"Which city is the capital of {country}?"):
            yield p, city


FAMILIES: dict[str, Callable[[], Iterator[Pair]]] = {
    "arithmetic": _arithmetic, "uppercase": _uppercase, "reverse": _reverse, "count_letters": _count_letters,
    "next_day": lambda: _cycle("day", DAYS), "next_month": lambda: _cycle("month", MONTHS), "sort": _sort,
    "capital": _capital,
}
"""Instruction families: each enumerates its (prompt, response) pairs (every prompt once)."""


def generate(n: int, seed: int = 0) -> list[dict]:
    """``n`` instruction rows ``{"id", "family", "prompt", "response"}``, deterministic in ``seed``.

    Each family's pairs are shuffled (seeded per family), then the families are taken from in turn until ``n``
    rows are drawn (a family whose pairs run out drops out), and the rows are shuffled; prompts never repeat.
    Raises ValueError when ``n`` exceeds the number of distinct prompts."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of rows, got {n}")
    pools = {}
    for name, make in FAMILIES.items():
        pairs = list(make())
        random.Random(f"general:{seed}:{name}").shuffle(pairs)
        pools[name] = pairs
    total = sum(len(p) for p in pools.values())
    if n > total:
        raise ValueError(f"n: the general families hold {total} distinct prompts, got n={n}")
    picked: list[tuple[str, Pair]] = []
    depth = 0
    while len(picked) < n:
        for name, pairs in pools.items():
            if depth < len(pairs) and len(picked) < n:
                picked.append((name, pairs[depth]))
        depth += 1
    random.Random(f"general:{seed}").shuffle(picked)
    return [{"id": f"gen{seed}-{i}", "family": name, "prompt": p, "response": r}
            for i, (name, (p, r)) in enumerate(picked)]


def exact(output: str, response: str) -> bool:
    """Whether a greedy answer matches the response: equal after stripping surrounding whitespace."""
    return output.strip() == str(response).strip()


def general_metrics(logprobs: list[float], n_tokens: list[int], outputs: list[str], rows: list[dict]) -> dict:
    """Held-out general metrics of ``rows`` from each response's summed log-probability (``logprobs``), its
    token count (``n_tokens``) and the greedy ``outputs``.

    Returns ``n``, ``tokens``, ``nll`` (mean NLL per response token: ``-Σ logprobs / Σ n_tokens``), ``ppl``
    (``exp(nll)``), ``exact_match`` (share of outputs equal to their response, ``exact``) and
    ``exact_match_by_family`` (rows with a ``family`` only)."""
    if not (len(logprobs) == len(n_tokens) == len(outputs) == len(rows)):
        raise ValueError(f"general_metrics: {len(logprobs)} log-probs, {len(n_tokens)} token counts, "
                         f"{len(outputs)} outputs for {len(rows)} rows")
    if not rows:
        raise ValueError("rows: expected at least one held-out general row")
    tokens = sum(n_tokens)
    if tokens < 1:
        raise ValueError("n_tokens: the responses hold no tokens")
    nll = -sum(logprobs) / tokens
    hits = [exact(o, r["response"]) for o, r in zip(outputs, rows)]
    fams: dict[str, list[bool]] = {}
    for h, r in zip(hits, rows):
        if "family" in r:
            fams.setdefault(str(r["family"]), []).append(h)
    return {"n": len(rows), "tokens": tokens, "nll": nll, "ppl": math.exp(min(nll, 700.0)),
            "exact_match": sum(hits) / len(hits),
            "exact_match_by_family": {f: sum(v) / len(v) for f, v in sorted(fams.items())}}


def evaluate_general(rows: list[dict], scorer: Scorer, encode: Callable[[str], list[int]],
                     eos: str | None = None, max_new_tokens: int | None = None) -> tuple[dict, list[dict]]:
    """Score held-out general ``rows`` through ``scorer``: each response (+ ``eos``, the EOS token's text, as
    trained) given its prompt, and a greedy answer of at most ``max_new_tokens`` (default: the longest
    response's tokens + 4). ``encode`` tokenizes text as the scorer does (no special tokens added).

    Returns ``general_metrics`` and one prediction row per input row (``id``, ``family``, ``output``,
    ``response``, ``exact``, ``logprob``, ``tokens``)."""
    prompts = [GENERAL.prompt(r) for r in rows]
    targets = [GENERAL.target(r) + (eos or "") for r in rows]
    logprobs = scorer.score(prompts, targets)
    n_tokens = [len(encode(t)) for t in targets]
    budget = max_new_tokens or max(len(encode(GENERAL.target(r))) for r in rows) + 4
    outputs = scorer.generate(prompts, budget)
    metrics = general_metrics(logprobs, n_tokens, outputs, rows)
    preds = [{"id": r["id"], "family": r.get("family"), "output": o, "response": GENERAL.target(r),
              "exact": exact(o, r["response"]), "logprob": lp, "tokens": k}
             for r, o, lp, k in zip(rows, outputs, logprobs, n_tokens)]
    return metrics, preds
