"""The cook prompts (AdNanny §3.2): one ``CookPrompt`` per task, as data — texts and step lists, no logic.

A cook prompt gives the teacher the input, the *gold* labels (the teacher explains, it never relabels) and
the paper's reasoning steps, and asks for a ``<think>`` block followed by the task's tags:

- query–ad: describe the user's intent → summarise the ad (title, description, URL) → explain why the given
  relevance, location and ad-quality labels fit;
- ad–user: summarise the user's interests (searches, clicks, views) → explain the given score;
- keyword query generation: keyword + the generated queries + a reminder of the rules → explain why each
  query is a valid, narrower refinement;
- ad rewriting: keyword + the original ad + the given rewrite (and its limits) → explain how the rewrite
  covers the keyword within the limits and what it changes. Its raw rows pass MarketingFM's AutoEval first
  (``cli.cook``: the gold rewrite's rule checks and, optionally, the judge).

Every prompt has *variations* (§3.3's stress test): the base wording, a rephrased question and reordered
steps. Rejection sampling uses them too: candidate k of an input is written under variation k mod V.

A prompt renders as (``render``)::

    {intro}
    {rules}                      (keyword prompts: the generation rules' reminder)
    {inputs}                     (the row's fields, ``row_view``)
    {given}                      (the gold labels)
    Example:\\n{example}          (optional: an in-prompt example, §3.3's refinement)
    {variation.question}
    Steps:
    1. {steps[order[0]]} ...
    {format instruction}         (from the task's output tags and the answer mode)
    Answer:
    <think>                      (answer mode "gold" only: the teacher continues the reasoning)

``verifier`` says how the smaller verifier model scores a candidate's faithfulness in one prefill
(``pipeline.verifier_scores``): ``label`` — the task's own label-only prompt with the candidate's reasoning
in ``<think>``, then each gold label scored against the field's other values (the score is the smallest
probability of a gold value: every label must follow from the reasoning); ``judge`` — a yes/no question about
the reasoning, the score is P(positive) among the candidates.

Prompts can be replaced from a YAML file of the same fields (``prompt_from_dict``; ``megatron-ads cook
--prompts FILE``): §3.3's loop of clarifying instructions and re-validating needs no code change.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, fields, replace
from typing import Any

from megatron_ads.data.tasks import AD_REWRITE, AD_USER, QUERY_AD, QUERY_GEN, Task, limits


@dataclass(frozen=True, slots=True)
class Variation:
    """A mild variation of a cook prompt: its question and the order of its steps."""

    name: str
    question: str
    order: tuple[int, ...]
    """Indices into ``CookPrompt.steps``, in the order the variation lists them."""


@dataclass(frozen=True, slots=True)
class VerifierPrompt:
    """How the verifier scores a candidate's faithfulness (module docstring)."""

    kind: str = "label"
    """``label`` (the task's label-only format after the reasoning; classification tasks) or ``judge``."""
    template: str = ""
    """``judge``: the question, with the row's placeholders and ``{reasoning}``; ends where the answer goes."""
    candidates: tuple[str, ...] = ("yes", "no")
    """``judge``: the answers scored."""
    positive: str = "yes"
    """``judge``: the answer that means faithful."""
    tag: str = "Verdict"
    """``judge``: the answer's closing tag (the scored targets are ``{candidate}</{tag}>``)."""


@dataclass(frozen=True, slots=True)
class CookPrompt:
    """One task's reasoning prompt with its variations (module docstring)."""

    id: str
    """Name and version, e.g. ``query_ad/v1``: reports, journal and corpus rows carry it."""
    task: str
    intro: str
    inputs: str
    """The input block, with placeholders of ``row_view``."""
    given: str
    """The gold-label block, with placeholders of ``row_view``."""
    steps: tuple[str, ...]
    variations: tuple[Variation, ...]
    rules: str = ""
    example: str = ""
    verifier: VerifierPrompt = field(default_factory=VerifierPrompt)

    def __post_init__(self):
        if not self.variations:
            raise ValueError(f"prompt {self.id}: variations: expected at least one")
        names = [v.name for v in self.variations]
        if len(set(names)) != len(names):
            raise ValueError(f"prompt {self.id}: variations: names must be distinct, got {names}")
        for v in self.variations:
            if sorted(v.order) != list(range(len(self.steps))):
                raise ValueError(f"prompt {self.id}: variation {v.name!r}: order {list(v.order)} is not a "
                                 f"permutation of the {len(self.steps)} steps")
        if self.verifier.kind not in ("label", "judge"):
            raise ValueError(f"prompt {self.id}: verifier.kind: expected label or judge, got {self.verifier.kind!r}")
        if self.verifier.kind == "judge" and (not self.verifier.template
                                              or self.verifier.positive not in self.verifier.candidates):
            raise ValueError(f"prompt {self.id}: verifier: a judge needs a template and its positive answer among "
                             f"the candidates {list(self.verifier.candidates)}")


_REFINE_RULES = ("Rules: a query stays in the keyword's product category and is narrower (more specific) than the "
                 "keyword; natural synonyms only when strongly relevant; it may add domain terms, a brand or a "
                 "purpose, vary the intent (buying or researching), or add realistic constraints (budget, near me).")

PROMPTS: dict[str, CookPrompt] = {p.task: p for p in (
    CookPrompt(
        id="query_ad/v1", task=QUERY_AD.name,
        intro=("You are an ads relevance expert. Trusted judges assigned the labels below; do not change them. "
               "Explain why they are right."),
        inputs="Query: {query}\nAd title: {title}\nAd description: {description}\nAd URL: {url}",
        given="Relevance label: {relevance}\nLocation label: {location}\nAd-quality label: {quality}",
        steps=("Describe what the user wants from the query (product, brand, price level, city).",
               "Summarize what the ad offers from its title, description and URL.",
               "Explain why the given relevance, location and ad-quality labels fit, citing the words of the "
               "query and the ad."),
        variations=(Variation("base", "Why are these labels appropriate for this query and ad?", (0, 1, 2)),
                    Variation("rephrased", "What makes this ad relevant or not relevant to the query, and why do "
                              "the labels follow?", (0, 1, 2)),
                    Variation("reordered", "Justify the labels.", (1, 0, 2)))),
    CookPrompt(
        id="ad_user/v1", task=AD_USER.name,
        intro=("You are an ads relevance expert. Trusted judges scored how relevant the ad is to the user (0 = "
               "unrelated, 3 = the user's main interest); do not change the score. Explain why it is right."),
        inputs="User history:\n{history}\nAd title: {title}\nAd description: {description}\nAd URL: {url}",
        given="Relevance score: {score}",
        steps=("Summarize the user's main interests from the searches, clicks and page views.",
               "Summarize what the ad offers.",
               "Explain why the given score fits, naming the interests the ad matches or misses."),
        variations=(Variation("base", "Why is this score appropriate for this user and ad?", (0, 1, 2)),
                    Variation("rephrased", "Why might this user click this ad, or not?", (0, 1, 2)),
                    Variation("reordered", "Justify the score.", (1, 0, 2)))),
    CookPrompt(
        id="query_gen/v1", task=QUERY_GEN.name,
        intro=("You are a search ads expert. The queries below were generated from the advertiser keyword by "
               "rules and checked; do not change them. Explain why they are valid refinements."),
        rules=_REFINE_RULES,
        inputs="Keyword: {keyword}\nAd title: {title}\nAd description: {description}\nAd URL: {url}",
        given="Generated queries:\n{queries}",
        steps=("State the product category of the keyword and the ad.",
               "For each query, name what it adds to the keyword (a brand, a price, a place, an item or an intent).",
               "Explain why each query is narrower than the keyword and still relevant to the ad."),
        variations=(Variation("base", "Why are these queries valid refinements of the keyword?", (0, 1, 2)),
                    Variation("rephrased", "What makes each query a good, more specific search for this ad?",
                              (0, 1, 2)),
                    Variation("reordered", "Justify the queries.", (1, 0, 2))),
        verifier=VerifierPrompt(
            kind="judge",
            template=("Keyword: {keyword}\nAd title: {title}\nQueries:\n{queries}\nExplanation: {reasoning}\n"
                      "Question: is the explanation faithful to the keyword, the queries and the ad, and does it "
                      "show that each query is a narrower refinement of the keyword? Answer yes or no.\n<Verdict>"))),
    CookPrompt(
        id="ad_rewrite/v1", task=AD_REWRITE.name,
        intro=("You are a search ads copywriter. The rewrite below was approved by the advertiser and passed the "
               "ad checks; do not change it. Explain why it is a good rewrite of the ad for the keyword."),
        rules=("Rules: the headline has at most {limit_title} characters and the description at most "
               "{limit_description}; the rewrite covers the keyword, keeps the ad's product and brand, and invites "
               "the user to act."),
        inputs="Keyword: {keyword}\nAd title: {title}\nAd description: {description}",
        given="Rationale: {rationale}\nRewritten title: {new_title}\nRewritten description: {new_description}",
        steps=("Check the original ad against the limits and the keyword (lengths, keyword words, a call to action).",
               "Name what the rewrite keeps from the ad (the product, the brand) and what it adds or drops.",
               "Explain why the rewrite fits the limits and serves the keyword better than the original."),
        variations=(Variation("base", "Why is this rewrite appropriate for the keyword?", (0, 1, 2)),
                    Variation("rephrased", "What makes the rewritten ad better for this keyword than the original?",
                              (0, 1, 2)),
                    Variation("reordered", "Justify the rewrite.", (1, 0, 2))),
        verifier=VerifierPrompt(
            kind="judge",
            template=("Keyword: {keyword}\nAd title: {title}\nRewritten title: {new_title}\nRewritten description: "
                      "{new_description}\nExplanation: {reasoning}\nQuestion: is the explanation faithful to the "
                      "keyword, the ad and the rewrite? Answer yes or no.\n<Verdict>"))),
)}
"""The registry: task name -> its cook prompt."""


def prompt_for(task_name: str) -> CookPrompt:
    """The registered cook prompt of a task (ValueError listing the tasks that have one)."""
    if task_name not in PROMPTS:
        raise ValueError(f"task: cooking has prompts for {sorted(PROMPTS)}, got {task_name!r}")
    return PROMPTS[task_name]


def prompt_from_dict(task_name: str, d: dict[str, Any], source: str = "prompts") -> CookPrompt:
    """A cook prompt from a mapping of ``CookPrompt`` fields (``variations``: a list of {name, question, order};
    ``verifier``: a mapping); fields left out keep the registered prompt's values. ValueError naming the field."""
    base = prompt_for(task_name)
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a mapping of prompt fields, got {type(d).__name__}")
    known = {f.name for f in fields(CookPrompt)} - {"task"}
    bad = sorted(set(d) - known)
    if bad:
        raise ValueError(f"{source}: unknown field(s) {bad}; expected some of {sorted(known)}")
    kw: dict[str, Any] = dict(d)
    try:
        if "steps" in kw:
            kw["steps"] = tuple(str(s) for s in kw["steps"])
        if "variations" in kw:
            kw["variations"] = tuple(Variation(name=str(v["name"]), question=str(v["question"]),
                                               order=tuple(int(i) for i in v["order"])) for v in kw["variations"])
        if "verifier" in kw:
            ver = dict(kw["verifier"])
            if "candidates" in ver:
                ver["candidates"] = tuple(str(c) for c in ver["candidates"])
            kw["verifier"] = VerifierPrompt(**ver)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None
    try:
        out = replace(base, **kw)
    except TypeError as exc:
        raise ValueError(f"{source}: {exc}") from None
    for name in ("intro", "inputs", "given", "rules", "example"):
        _placeholders(out, name, getattr(out, name))
    _placeholders(out, "verifier.template", out.verifier.template, extra=("reasoning",))
    return out


# ------------------------------------------------------------------------------------ rendering
def _lines(items: list) -> str:
    return "\n".join(f"- {x}" for x in items)


def row_view(task: Task, row: dict) -> dict[str, str]:
    """The placeholders a cook prompt may use for a row (strings): ad ``title``/``description``/``url``; query_ad
    ``query``, ``relevance``, ``location``, ``quality``; ad_user ``history`` (one ``- event`` per line),
    ``score``; query_gen ``keyword``, ``queries`` (one ``- query`` per line); ad_rewrite ``keyword``, the given
    rewrite's ``new_title``, ``new_description`` and ``rationale``, and the limits ``limit_title``,
    ``limit_description`` (characters)."""
    ad = row.get("ad") or {}
    view = {"title": str(ad.get("title", "")), "description": str(ad.get("description", "")),
            "url": str(ad.get("url", ""))}
    if task.name == QUERY_AD.name:
        labels = row.get("labels") or {}
        view.update(query=str(row["query"]), relevance=str(labels.get("relevance", "")),
                    location=str(labels.get("location", "")), quality=str(labels.get("quality", "")))
    elif task.name == AD_USER.name:
        view.update(history=_lines(row["history"]), score=str(row.get("score", "")))
    elif task.name == QUERY_GEN.name:
        view.update(keyword=str(row["keyword"]), queries=_lines(row.get("queries") or []))
    elif task.name == AD_REWRITE.name:
        new, lim = row.get("rewrite") or {}, limits(row)
        view.update(keyword=str(row["keyword"]), new_title=str(new.get("title", "")),
                    new_description=str(new.get("description", "")), rationale=str(new.get("rationale", "")),
                    limit_title=str(lim["title"]), limit_description=str(lim["description"]))
    return view


def _placeholders(prompt: CookPrompt, part: str, text: str, extra: tuple[str, ...] = ()) -> None:
    names = {f for _, f, _, _ in string.Formatter().parse(text) if f}
    allowed = set(_VIEW_KEYS[prompt.task]) | set(extra)
    bad = sorted(names - allowed)
    if bad:
        raise ValueError(f"prompt {prompt.id}: {part}: unknown placeholder(s) {bad}; expected some of "
                         f"{sorted(allowed)}")


_VIEW_KEYS = {QUERY_AD.name: ("title", "description", "url", "query", "relevance", "location", "quality"),
              AD_USER.name: ("title", "description", "url", "history", "score"),
              QUERY_GEN.name: ("title", "description", "url", "keyword", "queries"),
              AD_REWRITE.name: ("title", "description", "url", "keyword", "new_title", "new_description", "rationale",
                                "limit_title", "limit_description")}


def format_instruction(task: Task, answer: str) -> str:
    """What the prompt asks the output to look like: the task's tags (answer ``teacher``) or the reasoning only
    (answer ``gold``)."""
    if answer == "gold":
        return "Write your reasoning only, then close it with </think>."
    if any(f.repeated for f in task.outputs):
        tags = " ".join(f"<{f.tag}>...</{f.tag}>" for f in task.outputs)
        return f"Write your reasoning inside <think></think>, then repeat each given item on its own line as {tags}."
    tags = ", ".join(f"<{f.tag}>...</{f.tag}>" for f in task.outputs)
    return f"Write your reasoning inside <think></think>, then repeat the given labels exactly, one per line: {tags}."


def render(prompt: CookPrompt, variation: Variation, task: Task, row: dict, answer: str) -> str:
    """The teacher's prompt for ``row`` under ``variation`` (module docstring)."""
    view = row_view(task, row)
    try:
        parts = [prompt.intro.format(**view)]
        if prompt.rules:
            parts.append(prompt.rules.format(**view))
        parts += [prompt.inputs.format(**view), prompt.given.format(**view)]
        if prompt.example:
            parts.append("Example:\n" + prompt.example.format(**view))
    except (KeyError, IndexError) as exc:
        raise ValueError(f"prompt {prompt.id}: unknown placeholder {exc}") from None
    parts.append(variation.question)
    parts.append("Steps:\n" + "\n".join(f"{i}. {prompt.steps[k]}" for i, k in enumerate(variation.order, 1)))
    parts.append(format_instruction(task, answer))
    text = "\n".join(parts) + "\nAnswer:\n"
    return text + "<think>" if answer == "gold" else text
