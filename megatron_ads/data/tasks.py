"""The task registry: one ``Task`` object per ads task, and the only place task names are spelled.

A task knows its input schema (``required``), its prompt template and its target in the paper's
"label + reasoning" format::

    <think>reasoning</think>
    <Label>good</Label> ...            (tagged fields, one per line)

its output fields (``outputs``: tag, row key, allowed values), which row keys a gold row keeps
(``gold_keys``), the name of its metric in ``eval.metrics.METRICS`` (``metric``) and the validation
values its SFT task weight λ_t may follow (``lambda_metrics``, first = default). ``predict`` turns
rows into prediction rows (the ``megatron-ads eval`` format) through any ``Scorer``: label tasks by
label-candidate scoring, generation tasks by greedy decoding. ``parse_output`` reads a model's text
back into fields and reports what is malformed (missing or repeated tags, values outside the
allowed set, an unclosed ``<think>``, a field whose ``decode`` rejects it) instead of guessing. JSONL inputs
are validated row by row (presence of ``required`` keys, then the task's ``check``); errors name the file,
line and field.

Tasks (AdNanny §2): ``query_ad`` and ``ad_user`` relevance labeling (classification), ``query_gen`` (keyword
query generation), ``ad_rewrite`` (ad rewriting / keyword extension: ``<Rationale>`` (optional when
parsing), ``<Title>`` ≤ 30 characters and ``<Description>`` within the stated limit, ``AD_LIMITS``),
``user_query_gen`` (the user's next ``n_queries`` ``<Query>`` lines from a history), ``user_profile``
(``<Profile>`` JSON ``{interests, intents, constraints}``) and ``eval_report`` (two labelers against gold:
``<Summary>``, a markdown ``<Table>`` of per-labeler correct / total / accuracy and ``<Better>``), ``ad_judge``
(MarketingFM AutoEval's judge: an ad copy and a criterion -> ``<Score>`` 0–5, label-candidate scored), plus
``general`` instruction data.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from megatron_ads.runtime.io import iter_jsonl

THINK_EMPTY = "<think></think>\n"
"""The label-only form's (empty) reasoning: what validation and prediction prompts end with."""


class Scorer(Protocol):
    """What ``Task.predict`` needs from a model (``infer`` provides one over the training pipeline)."""

    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target given its prompt."""

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuation text of each prompt (without EOS)."""


@dataclass(frozen=True, slots=True)
class OutputField:
    """A tagged output field: its tag, the row key it comes from, and the allowed values (None: free text)."""

    tag: str
    key: str
    allowed: tuple[str, ...] | None = None
    repeated: bool = False
    """Several tags of this kind (one per item), e.g. <Query> lines."""
    cast: Callable[[str], Any] = str
    """Type of the value in a prediction row (the ad-user score is an int)."""
    optional: bool = False
    """A missing tag is not a format error (the field is then absent from the parsed output); a repeated or
    undecodable one still is. The target template always writes it when the row has it."""
    render: Callable[[Any], str] = str
    """Row value -> the text between the tags (a user profile: JSON; an evaluation table: markdown)."""
    decode: Callable[[str], Any] | None = None
    """Tag text -> the parsed value, raising ValueError with the reason when the text is malformed
    (None: the stripped text itself)."""

    @property
    def name(self) -> str:
        """The key's last part: the name of the field in parsed outputs."""
        return self.key.split(".")[-1]


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    kind: str
    """classification (label-candidate scoring), generation (decoding) or general (plain instruction data)."""
    required: tuple[str, ...]
    """Input keys a row must have (dotted for nested)."""
    outputs: tuple[OutputField, ...]
    prompt: Callable[[dict], str]
    plain_target: Callable[[dict], str] | None = None
    """Target without the label+reasoning format (general instruction data: the response as is)."""
    gold_keys: tuple[str, ...] = ()
    """Top-level row keys a gold row (``eval`` format) keeps besides ``id``."""
    metric: str | None = None
    """Name of the task's metric in ``eval.metrics.METRICS`` (None: no metric, not trainable by SFT)."""
    lambda_metrics: tuple[str, ...] = ()
    """Validation values (keys of the metric's summary) λ_t may follow; the first is the default."""
    val_rows: int | None = None
    """Cap on validation rows per interval (greedy decoding costs one forward per token)."""
    max_new_tokens: int = 48
    """Generation tasks: tokens decoded per prediction."""
    check: Callable[[dict], list[str]] | None = None
    """Input checks beyond presence (types, limits): problems naming the field, [] when the row is fine."""

    def target(self, row: dict) -> str:
        """The training target: reasoning in <think>, then the tagged fields."""
        if self.plain_target is not None:
            return self.plain_target(row)
        lines = [f"<think>{row.get('reasoning', '').strip()}</think>"]
        for f in self.outputs:
            try:
                value = _get(row, f.key)
            except KeyError:
                if f.optional:
                    continue
                raise
            values = value if f.repeated else [value]
            lines += [f"<{f.tag}>{f.render(v).strip()}</{f.tag}>" for v in values]
        return "\n".join(lines)

    def gold(self, row: dict) -> dict:
        """The gold row ``megatron-ads eval`` reads."""
        return {"id": row["id"], **{k: row[k] for k in self.gold_keys}}

    def predict(self, rows: list[dict], scorer: Scorer) -> list[dict]:
        """Prediction rows (``eval`` format) for ``rows``: by label-candidate scoring or greedy decoding."""
        if self.kind == "classification":
            return _score_fields(self, rows, scorer)
        if self.kind == "generation":
            texts = scorer.generate([self.prompt(r) + THINK_EMPTY for r in rows], self.max_new_tokens)
            out = []
            for r, text in zip(rows, texts):
                parsed = parse_output(self, THINK_EMPTY + text)
                out.append({"id": r["id"], **{f.name: parsed.fields.get(f.name) for f in self.outputs}, "raw": text})
            return out
        raise ValueError(f"task {self.name!r}: {self.kind} tasks have no predictions")


TaskSpec = Task
"""Former name of ``Task``."""


def _score_fields(spec: Task, rows: list[dict], scorer: Scorer) -> list[dict]:
    """Fields are scored in order, each given the fields chosen before it, in label-only form (empty
    <think>); probs are the softmax of the candidates' summed log-probs (per field when there are several)."""
    import torch  # heavy: only predictions need it (the eval CLI reads this registry too)

    preds: list[dict[str, Any]] = [{"id": r["id"]} for r in rows]
    chosen: list[dict[str, str]] = [{} for _ in rows]
    several = len(spec.outputs) > 1
    for f in spec.outputs:
        cands = f.allowed
        prompts, targets = [], []
        for r, ch in zip(rows, chosen):
            prefix = THINK_EMPTY + "".join(f"<{g.tag}>{ch[g.key]}</{g.tag}>\n" for g in spec.outputs if g.key in ch)
            for c in cands:
                prompts.append(spec.prompt(r) + prefix)
                targets.append(f"<{f.tag}>{c}</{f.tag}>")
        scores = scorer.score(prompts, targets)
        for i, (pr, ch) in enumerate(zip(preds, chosen)):
            sl = torch.tensor(scores[i * len(cands):(i + 1) * len(cands)])
            p = torch.softmax(sl, 0)
            ch[f.key] = cands[int(sl.argmax())]
            _set(pr, f.key, f.cast(ch[f.key]))
            probs = {c: float(p[k]) for k, c in enumerate(cands)}
            if several:
                pr.setdefault("probs", {})[f.name] = probs
            else:
                pr["probs"] = probs
    return preds


def _get(row: dict, dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def _set(row: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        row = row.setdefault(part, {})
    row[last] = value


def _ad_text(ad: dict) -> str:
    return f"title: {ad.get('title', '')}\ndescription: {ad.get('description', '')}\nurl: {ad.get('url', '')}"


def _history(events: list) -> str:
    return "\n".join(f"- {e}" for e in events)


QUERY_AD = Task(
    name="query_ad", kind="classification", required=("query", "ad.title", "ad.description", "ad.url"),
    outputs=(OutputField("Label", "labels.relevance", ("bad", "fair", "good")),
             OutputField("LocationLabel", "labels.location", ("good", "bad")),
             OutputField("AdQuality", "labels.quality", ("good", "bad"))),
    prompt=lambda r: ("Task: judge query-ad relevance, location match and ad quality.\n"
                      f"query: {r['query']}\n{_ad_text(r['ad'])}\nAnswer:\n"),
    gold_keys=("labels",), metric="defect_views",
    lambda_metrics=("bad_view_BACC", "fair_view_BACC", "location_BACC", "quality_BACC", "mean_BACC"))
AD_USER = Task(
    name="ad_user", kind="classification", required=("history", "ad.title", "ad.description"),
    outputs=(OutputField("Score", "score", ("0", "1", "2", "3"), cast=int),),
    prompt=lambda r: ("Task: score how relevant the ad is to the user (0-3).\n"
                      f"user history:\n{_history(r['history'])}\n{_ad_text(r['ad'])}\nAnswer:\n"),
    gold_keys=("score",), metric="relevance_score", lambda_metrics=("AUC", "BACC"))
QUERY_GEN = Task(
    name="query_gen", kind="generation", required=("keyword", "ad.title", "ad.description"),
    outputs=(OutputField("Query", "queries", None, repeated=True),),
    prompt=lambda r: ("Task: write narrower user queries for the advertiser keyword.\n"
                      f"keyword: {r['keyword']}\n{_ad_text(r['ad'])}\nAnswer:\n"),
    gold_keys=("keyword", "ad"), metric="query_generation", lambda_metrics=("Relevance", "Diversity", "Difficulty"),
    val_rows=32)
AD_LIMITS = {"title": 30, "description": 90}
"""Default character limits of an ad rewrite (headline ≤ 30 as in MarketingFM's AutoEval rules); a row's
``limits`` overrides them and the prompt states the ones that apply."""
USER_QUERIES = 3
"""Queries asked for per user (user_query_gen) when a row has no ``n_queries``."""
PROFILE_KEYS = ("interests", "intents", "constraints")
"""The keys of a user profile (user_profile), each a list of strings."""
LABELERS = ("baseline", "candidate")
"""The two labelers an evaluation report (eval_report) compares."""
TABLE_HEADER = ("labeler", "correct", "total", "accuracy")
"""Columns of an evaluation report's table (accuracy in percent, one decimal)."""


def limits(row: dict) -> dict[str, int]:
    """The character limits of an ad rewrite row: ``AD_LIMITS`` updated by the row's ``limits``."""
    return {**AD_LIMITS, **(row.get("limits") or {})}


def _check_ad_rewrite(row: dict) -> list[str]:
    out = []
    if "keyword" in row and not (isinstance(row["keyword"], str) and row["keyword"].strip()):
        out.append("field 'keyword': expected a non-empty string")
    lim = row.get("limits")
    if lim is not None:
        if not isinstance(lim, dict) or set(lim) - set(AD_LIMITS):
            out.append(f"field 'limits': expected an object with keys among {list(AD_LIMITS)}, got {lim!r}")
        else:
            out += [f"field 'limits.{k}': expected a positive integer, got {v!r}" for k, v in lim.items()
                    if not (isinstance(v, int) and not isinstance(v, bool) and v > 0)]
    return out


def _check_user_query_gen(row: dict) -> list[str]:
    n = row.get("n_queries", USER_QUERIES)
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
        return [f"field 'n_queries': expected a positive integer, got {n!r}"]
    return []


def _check_eval_report(row: dict) -> list[str]:
    items = row.get("items")
    if items is None:
        return []
    if not (isinstance(items, list) and items):
        return ["field 'items': expected a non-empty list of {gold, baseline, candidate}"]
    out = []
    for i, it in enumerate(items):
        for k in ("gold", *LABELERS):
            if not (isinstance(it, dict) and isinstance(it.get(k), str) and it[k].strip()):
                out.append(f"field 'items[{i}].{k}': expected a non-empty string")
    return out


def render_profile(profile: dict) -> str:
    """A user profile as the JSON text of its ``<Profile>`` tag (keys in ``PROFILE_KEYS`` order, then any others)."""
    return json.dumps({**{k: profile[k] for k in PROFILE_KEYS if k in profile}, **profile})


def decode_profile(text: str) -> dict[str, list[str]]:
    """The ``<Profile>`` text -> ``{interests, intents, constraints}`` (lists of stripped strings).
    ValueError naming the problem: invalid JSON, not an object, a key missing or unknown, a non-list value."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object with keys {list(PROFILE_KEYS)}, got {type(obj).__name__}")
    missing, extra = [k for k in PROFILE_KEYS if k not in obj], sorted(set(obj) - set(PROFILE_KEYS))
    if missing or extra:
        raise ValueError(f"expected keys {list(PROFILE_KEYS)}, missing {missing}, unknown {extra}")
    for k in PROFILE_KEYS:
        if not isinstance(obj[k], list) or not all(isinstance(v, str) for v in obj[k]):
            raise ValueError(f"key '{k}': expected a list of strings, got {obj[k]!r}")
    return {k: [v.strip() for v in obj[k]] for k in PROFILE_KEYS}


def render_table(table: dict) -> str:
    """An evaluation report's per-labeler table ``{labeler: {correct, total, accuracy}}`` (accuracy in
    percent) as the markdown of its ``<Table>`` tag."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|---" * len(TABLE_HEADER) + "|"]
    for name in LABELERS:
        r = table[name]
        lines.append(f"| {name} | {r['correct']} | {r['total']} | {float(r['accuracy']):.1f} |")
    return "\n".join(lines)


def decode_table(text: str) -> dict[str, dict[str, Any]]:
    """The ``<Table>`` markdown -> ``{labeler: {"correct": int, "total": int, "accuracy": float (percent)}}``.
    Tolerates spaces around cells and a missing separator row; ValueError naming the line otherwise (wrong
    header, a row without 4 cells, an unknown or repeated labeler, non-integer counts, a missing labeler)."""
    rows = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in rows]
    if not cells or [c.lower() for c in cells[0]] != list(TABLE_HEADER):
        raise ValueError(f"line 1: expected the header | {' | '.join(TABLE_HEADER)} |")
    out: dict[str, dict[str, Any]] = {}
    for n, c in enumerate(cells[1:], start=2):
        if all(set(x) <= set("-: ") for x in c):
            continue  # the separator row
        if len(c) != len(TABLE_HEADER):
            raise ValueError(f"line {n}: expected {len(TABLE_HEADER)} cells, got {len(c)}")
        name = c[0].lower()
        if name not in LABELERS or name in out:
            raise ValueError(f"line {n}: labeler {c[0]!r} is {'repeated' if name in out else 'unknown'} "
                             f"(expected each of {list(LABELERS)} once)")
        try:
            out[name] = {"correct": int(c[1]), "total": int(c[2]), "accuracy": float(c[3].rstrip("%"))}
        except ValueError:
            raise ValueError(f"line {n}: expected integer correct/total and a number accuracy, got {c[1:]}") from None
    missing = [x for x in LABELERS if x not in out]
    if missing:
        raise ValueError(f"labeler(s) {missing} missing")
    return out


def _items(items: list[dict]) -> str:
    return "\n".join(f"{i}. gold={it['gold']} baseline={it['baseline']} candidate={it['candidate']}"
                     for i, it in enumerate(items, start=1))


AD_REWRITE = Task(
    name="ad_rewrite", kind="generation", required=("keyword", "ad.title", "ad.description"),
    outputs=(OutputField("Rationale", "rewrite.rationale", optional=True),
             OutputField("Title", "rewrite.title"), OutputField("Description", "rewrite.description")),
    prompt=lambda r: ("Task: rewrite the ad for the keyword: the headline at most "
                      f"{limits(r)['title']} characters, the description at most {limits(r)['description']} "
                      "characters; give a short rationale.\n"
                      + (f"keyword: {r['keyword']}\n" if "keyword" in r else "")  # in-memory rows may lack it
                      + f"title: {r['ad']['title']}\ndescription: {r['ad']['description']}\nAnswer:\n"),
    gold_keys=("keyword", "ad", "limits", "truth"), metric="ad_rewrite",
    lambda_metrics=("constraint_rate", "keyword_coverage"), val_rows=32, max_new_tokens=96,
    check=_check_ad_rewrite)
"""Ad rewriting / keyword extension (AdNanny §2): a rewrite of the ad that covers the keyword within the
stated limits, with a short rationale (optional when parsing: rewards read only title and description)."""
USER_QUERY_GEN = Task(
    name="user_query_gen", kind="generation", required=("history",),
    outputs=(OutputField("Query", "queries", None, repeated=True),),
    prompt=lambda r: (f"Task: write the user's next {r.get('n_queries', USER_QUERIES)} search queries.\n"
                      f"user history:\n{_history(r['history'])}\nAnswer:\n"),
    gold_keys=("n_queries", "truth"), metric="user_query_gen",
    lambda_metrics=("Relevance", "InterestCoverage", "Distinct2"), val_rows=32, max_new_tokens=64,
    check=_check_user_query_gen)
"""User-history-conditioned query generation (AdNanny §2): the queries the user is likely to type next."""
USER_PROFILE = Task(
    name="user_profile", kind="generation", required=("history",),
    outputs=(OutputField("Profile", "profile", render=render_profile, decode=decode_profile),),
    prompt=lambda r: ("Task: write the user's profile as JSON with interests, intents and constraints.\n"
                      f"user history:\n{_history(r['history'])}\nAnswer:\n"),
    gold_keys=("profile",), metric="user_profile", lambda_metrics=("interest_F1", "json_valid"), val_rows=32,
    max_new_tokens=64)
"""User profile generation (AdNanny §2): structured interests, intents and constraints as JSON."""
EVAL_REPORT = Task(
    name="eval_report", kind="generation", required=("items",),
    outputs=(OutputField("Summary", "report.summary"),
             OutputField("Table", "report.table", render=render_table, decode=decode_table),
             OutputField("Better", "report.better", (*LABELERS, "tie"))),
    prompt=lambda r: ("Task: compare the baseline and candidate labelers with the gold labels: a summary, a "
                      "table of per-labeler accuracy and the better labeler.\n"
                      f"items:\n{_items(r['items'])}\nAnswer:\n"),
    gold_keys=("items", "truth"), metric="eval_report",
    lambda_metrics=("table_accuracy", "better_accuracy", "parse_rate"), val_rows=16, max_new_tokens=96,
    check=_check_eval_report)
"""Model evaluation report (AdNanny §2): two labelers' outputs on a set with gold -> a natural-language
summary, a per-labeler accuracy table and the better labeler."""
JUDGE_CRITERIA = {
    "relevance": ("the ad copy aligns with the keyword's search intent, balanced between vague and specific, "
                  "without bias and without focusing narrowly on one or two products"),
    "generalization": ("the ad copy generalizes while remaining relevant, avoiding excessive specificity "
                       "(model numbers, sizes, prices, dates) and bias (a narrowed audience)"),
}
"""The AutoEval judge's criteria (MarketingFM Table 3), each scored 0–5, with the definition the prompt states."""
JUDGE_SCORES = ("0", "1", "2", "3", "4", "5")
"""The judge's score candidates: one prefill scores all six (``<Score>s</Score>``)."""


def _check_ad_judge(row: dict) -> list[str]:
    out = []
    if "criterion" in row and row["criterion"] not in JUDGE_CRITERIA:
        out.append(f"field 'criterion': expected one of {list(JUDGE_CRITERIA)}, got {row['criterion']!r}")
    if "keyword" in row and not (isinstance(row["keyword"], str) and row["keyword"].strip()):
        out.append("field 'keyword': expected a non-empty string")
    out += [f"field '{k}': expected a string, got {row[k]!r}" for k in ("headline", "description")
            if k in row and not isinstance(row[k], str)]
    return out


AD_JUDGE = Task(
    name="ad_judge", kind="classification", required=("keyword", "headline", "description", "criterion"),
    outputs=(OutputField("Score", "score", JUDGE_SCORES, cast=int),),
    prompt=lambda r: (f"Task: rate the ad copy for the search keyword on {r['criterion']} from 0 (worst) to 5 "
                      f"(best).\n{r['criterion']}: {JUDGE_CRITERIA.get(r['criterion'], '')}\n"
                      f"keyword: {r['keyword']}\nheadline: {r['headline']}\ndescription: {r['description']}\n"
                      "Answer:\n"),
    gold_keys=("criterion", "score"), metric="judge_score", lambda_metrics=("Acc", "Within1"),
    check=_check_ad_judge)
"""MarketingFM AutoEval's LLM judge (§5.1): one ad copy and one criterion of ``JUDGE_CRITERIA`` -> a score 0–5;
labeling scores the six candidates in one prefill and the expected score is Σ s·p(s) (``data.judge``)."""
GENERAL = Task(
    name="general", kind="general", required=("prompt", "response"), outputs=(),
    prompt=lambda r: f"{str(r['prompt']).strip()}\n", plain_target=lambda r: str(r["response"]).strip())
"""Public instruction data ({"id", "prompt", "response"}) mixed into SFT at a fixed weight."""

TASKS: dict[str, Task] = {t.name: t for t in (QUERY_AD, AD_USER, QUERY_GEN, AD_REWRITE, USER_QUERY_GEN,
                                              USER_PROFILE, EVAL_REPORT, AD_JUDGE, GENERAL)}
DEFAULT_SFT_TASKS = (QUERY_AD.name, AD_USER.name)
"""What ``sft.tasks`` means when it is left empty."""


def task(name: str) -> Task:
    """The registered task ``name`` (ValueError listing the known ones otherwise)."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def with_metric() -> list[str]:
    """Names of the tasks that have a metric (``eval --task`` choices)."""
    return [n for n, t in TASKS.items() if t.metric]


# ------------------------------------------------------------------------------------ validation
def validate_row(spec: Task, row: Any, with_targets: bool) -> list[str]:
    """Problems of one row (empty list: valid)."""
    if not isinstance(row, dict):
        return ["expected a JSON object"]
    problems = []
    if "id" not in row:
        problems.append("field 'id': missing")
    for key in spec.required:
        try:
            value = _get(row, key)
        except KeyError:
            problems.append(f"field '{key}': missing")
            continue
        if key == "history" and not (isinstance(value, list) and value):
            problems.append("field 'history': expected a non-empty list of events")
    if spec.check is not None:
        problems += spec.check(row)
    if with_targets:
        for f in spec.outputs:
            try:
                value = _get(row, f.key)
            except KeyError:
                if not f.optional:
                    problems.append(f"field '{f.key}': missing")
                continue
            values = value if f.repeated else [value]
            if f.repeated and not (isinstance(value, list) and value):
                problems.append(f"field '{f.key}': expected a non-empty list")
                continue
            for v in values:
                if f.allowed is not None and str(v) not in f.allowed:
                    problems.append(f"field '{f.key}': expected one of {list(f.allowed)}, got {v!r}")
                elif f.decode is not None:
                    try:
                        f.decode(f.render(v))
                    except (ValueError, TypeError, KeyError, AttributeError) as exc:
                        problems.append(f"field '{f.key}': {exc}")
    return problems


def load_jsonl(path: str | Path, spec: Task, with_targets: bool = True) -> list[dict]:
    """Rows of a task JSONL. Unreadable JSON raises ``BadInput`` at its line; rows that do not fit the task
    raise ValueError naming file, line and field (all of them listed)."""
    rows, problems, seen = [], [], set()
    for lineno, row in iter_jsonl(path):
        for p in validate_row(spec, row, with_targets):
            problems.append(f"{path}:{lineno}: {p}")
        if "id" in row:
            if str(row["id"]) in seen:
                problems.append(f"{path}:{lineno}: field 'id': duplicate {row['id']!r}")
            seen.add(str(row["id"]))
        rows.append(row)
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} invalid line(s) in {path}{more}:\n" + "\n".join(problems[:20]))
    return rows


# ------------------------------------------------------------------------------------ SFT options
def sft_tasks(sft) -> list[str]:
    """The adaptive tasks of an SFT spec (``sft.tasks``, or the defaults when it is empty; none when it is
    [general], ``general_only``)."""
    if general_only(sft):
        return []
    return list(sft.tasks) if sft.tasks else list(DEFAULT_SFT_TASKS)


def general_only(sft) -> bool:
    """Whether an SFT spec trains on its general instruction data alone (``sft.tasks: [general]``)."""
    return list(sft.tasks) == [GENERAL.name]


def lambda_metric(sft, name: str) -> str:
    """The validation value task ``name``'s λ_t follows (``sft.task_metric`` or the task's default)."""
    t = task(name)
    return sft.task_metric.get(name, t.lambda_metrics[0]) if t.lambda_metrics else ""


def check_sft(sft) -> None:
    """The task-dependent checks of an SFT spec (``config.train.SFTSpec``): task names, λ metrics, and the
    per-task ``synthetic`` / ``files`` settings. Raises ValueError naming the field."""
    trainable = [n for n, t in TASKS.items() if t.metric]
    if GENERAL.name in sft.tasks:
        if not general_only(sft):
            raise ValueError(f"sft.tasks: {GENERAL.name!r} stands alone ([{GENERAL.name}]: sft.general_path's data "
                             f"only); to mix general data into ads SFT, list the ads tasks and set sft.general_path "
                             f"(sft.general_weight), got {list(sft.tasks)}")
        if not sft.general_path:
            raise ValueError(f"sft.general_path: required by sft.tasks=[{GENERAL.name}] (the instruction data to "
                             f"train on)")
    names = sft_tasks(sft)
    bad = [n for n in names if n not in trainable]
    if bad:
        raise ValueError(f"sft.tasks: expected a non-empty subset of {sorted(trainable)} or [{GENERAL.name}], "
                         f"got {list(sft.tasks)}")
    bad = [n for n in sft.tokenizer_tasks if n not in trainable]
    if bad:
        raise ValueError(f"sft.tokenizer_tasks: expected tasks of {sorted(trainable)}, got {list(sft.tokenizer_tasks)}")
    names = names + [n for n in sft.tokenizer_tasks if n not in names]  # settings below may name either
    for n, f in sft.files.items():
        if n not in names:
            raise ValueError(f"sft.files.{n}: task not in sft.tasks or sft.tokenizer_tasks {names}")
        if not isinstance(f, dict) or not f.get("train") or set(f) - {"train", "val", "test"}:
            raise ValueError(f"sft.files.{n}: expected {{train: FILE[, val: FILE][, test: FILE]}}, got {f!r}")
    with_lambda = {n: t.lambda_metrics for n, t in TASKS.items() if t.lambda_metrics}
    for n, m in sft.task_metric.items():
        if n not in with_lambda or m not in with_lambda[n]:
            raise ValueError(f"sft.task_metric.{n}: expected one of {with_lambda.get(n, ())} "
                             f"(tasks with a metric: {sorted(with_lambda)}), got {m!r}")
    bad = set(sft.synthetic) - set(names)
    if bad:
        raise ValueError(f"sft.synthetic: settings for task(s) {sorted(bad)} not in sft.tasks or "
                         f"sft.tokenizer_tasks {names}")


def normalized(value: float) -> float:
    """A validation value as λ_t's input: NaN (e.g. AUC with one class only) is uninformative (0.5)."""
    return 0.5 if math.isnan(value) else value


# ------------------------------------------------------------------------------------ parsing
@dataclass(slots=True)
class ParsedOutput:
    fields: dict[str, Any] = field(default_factory=dict)
    reasoning: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_output(spec: Task, text: str) -> ParsedOutput:
    """Model output text -> fields (keyed by the row key's last part) with every problem listed."""
    out = ParsedOutput()
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    if "<think>" in text and think is None:
        out.errors.append("<think> is not closed")
    out.reasoning = think.group(1).strip() if think else None
    body = text[think.end():] if think else text
    for f in spec.outputs:
        values = [v.strip() for v in re.findall(rf"<{f.tag}>(.*?)</{f.tag}>", body, re.S)]
        if not values:
            if not f.optional:
                out.errors.append(f"<{f.tag}> missing")
            continue
        if not f.repeated and len(values) > 1:
            out.errors.append(f"<{f.tag}> appears {len(values)} times")
            continue
        bad = [v for v in values if f.allowed is not None and v.lower() not in f.allowed]
        if bad:
            out.errors.append(f"<{f.tag}> value {bad[0]!r} not in {list(f.allowed)}")
            continue
        norm = [v.lower() if f.allowed is not None else v for v in values]
        if f.decode is not None:
            try:
                norm = [f.decode(v) for v in norm]
            except ValueError as exc:
                out.errors.append(f"<{f.tag}> {exc}")
                continue
        out.fields[f.name] = norm if f.repeated else norm[0]
    return out


def prediction_row(spec: Task, row_id: Any, text: str) -> dict:
    """The JSON row `megatron-ads eval` reads, from a model output (malformed outputs keep their errors)."""
    parsed = parse_output(spec, text)
    rec: dict[str, Any] = {"id": row_id, "raw": text}
    if spec.kind == "classification":  # every label, nested as in the gold rows (None when missing)
        for f in spec.outputs:
            value = parsed.fields.get(f.name)
            _set(rec, f.key, f.cast(value) if value is not None else None)
    else:
        rec.update(parsed.fields)
    if parsed.errors:
        rec["malformed"] = parsed.errors
    return rec

