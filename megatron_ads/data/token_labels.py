"""Training data of TPPO's token-level reward model (tppo.txt §3.2; spec ``papers_spec.md`` §B.1) on the synthetic
``user_query_gen`` task: (prompt, response) examples whose *words* carry the classes 0 / 1 / 2 of §3.2, labeled by
a rule-based judge that reads the rows' hidden truth (in place of the paper's LLaMA-3-70B labeler).

How it works
------------
1. Rows: ``user_query_gen`` synthetic rows (``data.synthetic.user_query_gen_row``), split *by row* (user) into
   train / val / test (``synthetic.split``): held-out examples come from users never trained on.
2. Responses: per row, ``responses_per_row`` responses in exactly the format the SFT'd policy emits for the task
   (``task("user_query_gen").target``: ``<think>reasoning</think>`` then one ``<Query>q</Query>`` line per
   query; with probability ``label_only_fraction`` the label-only form with an empty ``<think></think>``, as SFT
   trains half of its examples, ``data.packing.label_only_target``). Response 0 holds the row's gold queries;
   in the others each query goes off-topic with probability ``perturb_rate`` (``perturb_query``): replaced by a
   query of a non-interest category (half the time one of the user's one-off categories in the history, the
   realistic mistake: the history mentions it once) built with the task's own templates
   (``synthetic.user_query``), or given one off-topic word (inserted, or replacing one of its words). So both
   classes occur, and irrelevant queries can hold relevant words.
3. Word labels (``word_spans``): the hidden judge's rule, per word (``[\\w']+``, lower-cased for look-up):

   - a word *inside a query* (between ``<Query>`` and ``</Query>``) that is in ``truth.relevant_words`` → 2
     (relevant), one in ``truth.off_topic_words`` → 1 (irrelevant);
   - any other query word (template words: "cheap", "near", "me", "best", "reviews") → the label of its query:
     2 iff the query is relevant by the judge (``judge(query, truth)``: ``eval.adtasks.query_relevant``, a
     relevant word and no off-topic word), else 1. The word of a category says whether *it* fits the user; a
     filler word has no topic of its own and inherits its query's verdict;
   - every word outside the query fields (the reasoning in ``<think>``, the tag names) → 0 (not a reward token,
     as separators, tags, prompt and padding in §3.2).

   ``judge`` is handed in by the caller (``data`` does not import ``eval``: the layer contract); the trainer
   passes ``eval.adtasks.query_relevant``.
4. Sentence label ``r_global`` (Eq. 2's R_global, on the {1, 2} class scale): 1 + the share of the response's
   queries the judge finds relevant (2: all relevant, 1: none), which is where the mean class of a response's
   query words lies.

Token classes come from these word spans with the policy's tokenizer in ``train.token_rm_loop``
(``tppo.word_token_labels``: every sub-token inherits its word's class). Everything here is deterministic
given the seed (one RNG per row, seeded by the seed and the row id).
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

from megatron_ads.data import synthetic
from megatron_ads.data.tasks import USER_QUERY_GEN

__all__ = ["CLASS_IRRELEVANT", "CLASS_MASKED", "CLASS_RELEVANT", "Judge", "build_example", "one_off_categories",
           "perturb_query", "render_response", "token_rm_data", "user_rows", "word_spans"]

CLASS_MASKED, CLASS_IRRELEVANT, CLASS_RELEVANT = 0, 1, 2
"""TPPO's classes (as ``train.tppo``): 0 masked / not a reward token, 1 irrelevant, 2 relevant."""
Judge = Callable[[str, dict], bool]
"""judge(query, truth) -> whether the query is relevant to the user (``eval.adtasks.query_relevant``)."""
_WORD = re.compile(r"[\w']+")
_OPEN, _CLOSE = "<Query>", "</Query>"


def user_rows(n: int, seed: int) -> list[dict]:
    """``n`` synthetic user_query_gen rows, deterministic in ``seed``."""
    return synthetic.generate(USER_QUERY_GEN.name, synthetic.SyntheticConfig(size=n, seed=seed))


def one_off_categories(row: dict) -> list[str]:
    """The row's one-off categories: catalogue categories that are not interests but occur in the history."""
    hist = {w for e in row["history"] for w in _WORD.findall(str(e).lower())}
    interests = set(row["truth"]["interests"])
    return [c for c in sorted(synthetic.CATALOGUE)
            if c not in interests and hist & set(synthetic.category_words(c))]


def perturb_query(rng: random.Random, row: dict, query: str) -> str:
    """An off-topic version of ``query`` (module docstring, step 2): a category outside the user's interests
    (one of the row's one-off categories with probability 1/2 when it has some), then with probability 1/2 a
    whole query of that category, else one of its words inserted into the query or replacing one of its words."""
    interests = set(row["truth"]["interests"])
    once = one_off_categories(row)
    others = [c for c in sorted(synthetic.CATALOGUE) if c not in interests]
    cat = rng.choice(once) if once and rng.random() < 0.5 else rng.choice(others)
    if rng.random() < 0.5:
        return synthetic.user_query(rng, cat)
    word = rng.choice([w for w in synthetic.category_words(cat) if not w.isdigit()])
    ws = query.split()
    if rng.random() < 0.5:
        ws[rng.randrange(len(ws))] = word
    else:
        ws.insert(rng.randint(0, len(ws)), word)
    return " ".join(ws)


def render_response(row: dict, queries: list[str], label_only: bool) -> tuple[str, list[tuple[int, int]]]:
    """The response the SFT'd policy would emit with ``queries`` (``task.target`` of the row with these queries;
    empty reasoning when ``label_only``) and the character span (start, end) of each query's text in it."""
    text = USER_QUERY_GEN.target(dict(row, queries=list(queries), reasoning="" if label_only else row["reasoning"]))
    spans, pos = [], 0
    for q in queries:
        start = text.index(f"{_OPEN}{q.strip()}{_CLOSE}", pos) + len(_OPEN)
        pos = start + len(q.strip())
        spans.append((start, pos))
    return text, spans


def word_spans(response: str, query_spans: list[tuple[int, int]], truth: dict,
               relevant: list[bool]) -> list[tuple[int, int, int]]:
    """(start, end, class) of every word of ``response`` by the rule of the module docstring (step 3):
    ``relevant[i]`` is the judge's verdict on query i (its span ``query_spans[i]``)."""
    rel, off = set(truth["relevant_words"]), set(truth.get("off_topic_words", ()))
    out = []
    for m in _WORD.finditer(response):
        s, e = m.span()
        q = next((i for i, (a, b) in enumerate(query_spans) if a <= s and e <= b), None)
        if q is None:
            c = CLASS_MASKED
        else:
            w = m.group().lower()
            c = (CLASS_RELEVANT if w in rel else CLASS_IRRELEVANT if w in off
                 else CLASS_RELEVANT if relevant[q] else CLASS_IRRELEVANT)
        out.append((s, e, c))
    return out


def build_example(row: dict, queries: list[str], *, label_only: bool, judge: Judge, example_id: str,
                  perturbed: list[bool] | None = None) -> dict[str, Any]:
    """One reward-model example of ``row`` with ``queries``: ``{"id", "row_id", "prompt", "response", "queries",
    "query_spans", "query_relevant", "word_spans", "r_global", "label_only", "perturbed"}``."""
    truth = row["truth"]
    response, spans = render_response(row, queries, label_only)
    relevant = [bool(judge(q, truth)) for q in queries]
    return {"id": example_id, "row_id": row["id"], "prompt": USER_QUERY_GEN.prompt(row), "response": response,
            "queries": list(queries), "query_spans": spans, "query_relevant": relevant,
            "word_spans": word_spans(response, spans, truth, relevant),
            "r_global": 1.0 + sum(relevant) / max(len(relevant), 1), "label_only": label_only,
            "perturbed": list(perturbed) if perturbed is not None else [False] * len(queries)}


def row_examples(row: dict, *, seed: int, responses_per_row: int, perturb_rate: float, label_only_fraction: float,
                 judge: Judge) -> list[dict[str, Any]]:
    """The ``responses_per_row`` examples of one row (response 0 gold, the others perturbed; module docstring)."""
    rng = random.Random(f"token_rm:{seed}:{row['id']}")
    out = []
    for k in range(responses_per_row):
        queries, perturbed = list(row["queries"]), [False] * len(row["queries"])
        if k > 0:
            for i, q in enumerate(row["queries"]):
                if rng.random() < perturb_rate:
                    new = q
                    for _ in range(5):  # keep the queries distinct (the task asks for distinct queries)
                        new = perturb_query(rng, row, q)
                        if new not in queries:
                            break
                    queries[i], perturbed[i] = new, new != q
        label_only = rng.random() < label_only_fraction
        out.append(build_example(row, queries, label_only=label_only, judge=judge, example_id=f"{row['id']}:{k}",
                                 perturbed=perturbed))
    return out


def token_rm_data(rows: list[dict], *, judge: Judge, seed: int = 0, val: float = 0.1, test: float = 0.1,
                  responses_per_row: int = 2, perturb_rate: float = 0.5,
                  label_only_fraction: float = 0.5) -> dict[str, list[dict[str, Any]]]:
    """Reward-model examples of ``rows`` split by row: ``{"train", "val", "test"}`` (``synthetic.split`` with
    ``seed``; every example of a row in one split). Deterministic given the arguments."""
    parts = synthetic.split(rows, val=val, test=test, seed=seed)
    return {k: [ex for row in v for ex in row_examples(row, seed=seed, responses_per_row=responses_per_row,
                                                       perturb_rate=perturb_rate,
                                                       label_only_fraction=label_only_fraction, judge=judge)]
            for k, v in parts.items()}
