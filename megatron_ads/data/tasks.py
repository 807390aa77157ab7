"""Ads task schemas, prompt/target templates in the paper's "label + reasoning" format, and output parsing.

Every task renders a prompt from its input fields and a target of the form::

    <think>reasoning</think>
    <Label>good</Label> ...            (tagged fields, one per line)

``parse_output`` reads a model's text back into fields and reports what is malformed (missing or
repeated tags, values outside the allowed set, an unclosed ``<think>``) instead of guessing.
JSONL inputs are validated row by row; errors name the file, line and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True, slots=True)
class OutputField:
    """A tagged output field: its tag, the row key it comes from, and the allowed values (None: free text)."""

    tag: str
    key: str
    allowed: tuple[str, ...] | None = None
    repeated: bool = False
    """Several tags of this kind (one per item), e.g. <Query> lines."""


@dataclass(frozen=True, slots=True)
class TaskSpec:
    name: str
    kind: str
    """classification (label-candidate scoring) or generation (decoding)."""
    required: tuple[str, ...]
    """Input keys a row must have (dotted for nested)."""
    outputs: tuple[OutputField, ...]
    prompt: Callable[[dict], str]
    plain_target: Callable[[dict], str] | None = None
    """Target without the label+reasoning format (general instruction data: the response as is)."""

    def target(self, row: dict) -> str:
        """The training target: reasoning in <think>, then the tagged fields."""
        if self.plain_target is not None:
            return self.plain_target(row)
        lines = [f"<think>{row.get('reasoning', '').strip()}</think>"]
        for f in self.outputs:
            value = _get(row, f.key)
            values = value if f.repeated else [value]
            lines += [f"<{f.tag}>{str(v).strip()}</{f.tag}>" for v in values]
        return "\n".join(lines)


def _get(row: dict, dotted: str) -> Any:
    cur: Any = row
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def _ad_text(ad: dict) -> str:
    return f"title: {ad.get('title', '')}\ndescription: {ad.get('description', '')}\nurl: {ad.get('url', '')}"


def _history(events: list) -> str:
    return "\n".join(f"- {e}" for e in events)


TASKS: dict[str, TaskSpec] = {
    "query_ad": TaskSpec(
        name="query_ad", kind="classification", required=("query", "ad.title", "ad.description", "ad.url"),
        outputs=(OutputField("Label", "labels.relevance", ("bad", "fair", "good")),
                 OutputField("LocationLabel", "labels.location", ("good", "bad")),
                 OutputField("AdQuality", "labels.quality", ("good", "bad"))),
        prompt=lambda r: ("Task: judge query-ad relevance, location match and ad quality.\n"
                          f"query: {r['query']}\n{_ad_text(r['ad'])}\nAnswer:\n")),
    "ad_user": TaskSpec(
        name="ad_user", kind="classification", required=("history", "ad.title", "ad.description"),
        outputs=(OutputField("Score", "score", ("0", "1", "2", "3")),),
        prompt=lambda r: ("Task: score how relevant the ad is to the user (0-3).\n"
                          f"user history:\n{_history(r['history'])}\n{_ad_text(r['ad'])}\nAnswer:\n")),
    "query_gen": TaskSpec(
        name="query_gen", kind="generation", required=("keyword", "ad.title", "ad.description"),
        outputs=(OutputField("Query", "queries", None, repeated=True),),
        prompt=lambda r: ("Task: write narrower user queries for the advertiser keyword.\n"
                          f"keyword: {r['keyword']}\n{_ad_text(r['ad'])}\nAnswer:\n")),
    "user_profile": TaskSpec(
        name="user_profile", kind="generation", required=("history",),
        outputs=(OutputField("Profile", "profile"),),
        prompt=lambda r: f"Task: summarize the user's interests.\nuser history:\n{_history(r['history'])}\nAnswer:\n"),
    "ad_rewrite": TaskSpec(
        name="ad_rewrite", kind="generation", required=("ad.title", "ad.description"),
        outputs=(OutputField("Title", "rewrite.title"), OutputField("Description", "rewrite.description")),
        prompt=lambda r: f"Task: rewrite the ad clearly and without defects.\n{_ad_text(r['ad'])}\nAnswer:\n"),
    "general": TaskSpec(
        name="general", kind="general", required=("prompt", "response"), outputs=(),
        prompt=lambda r: f"{str(r['prompt']).strip()}\n", plain_target=lambda r: str(r["response"]).strip()),
}
"""``general``: public instruction data ({"id", "prompt", "response"}) mixed into SFT at a fixed weight."""


def task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


# ------------------------------------------------------------------------------------ validation
def validate_row(spec: TaskSpec, row: Any, with_targets: bool) -> list[str]:
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
    if with_targets:
        for f in spec.outputs:
            try:
                value = _get(row, f.key)
            except KeyError:
                problems.append(f"field '{f.key}': missing")
                continue
            values = value if f.repeated else [value]
            if f.repeated and not (isinstance(value, list) and value):
                problems.append(f"field '{f.key}': expected a non-empty list")
                continue
            for v in values:
                if f.allowed is not None and str(v) not in f.allowed:
                    problems.append(f"field '{f.key}': expected one of {list(f.allowed)}, got {v!r}")
    return problems


def load_jsonl(path: str | Path, spec: TaskSpec, with_targets: bool = True) -> list[dict]:
    """Rows of a task JSONL; any invalid line raises ValueError naming file, line and field (all listed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    rows, problems, seen = [], [], set()
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{lineno}: invalid JSON ({exc.msg})")
            continue
        for p in validate_row(spec, row, with_targets):
            problems.append(f"{path}:{lineno}: {p}")
        if isinstance(row, dict) and "id" in row:
            if str(row["id"]) in seen:
                problems.append(f"{path}:{lineno}: field 'id': duplicate {row['id']!r}")
            seen.add(str(row["id"]))
        rows.append(row)
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} invalid line(s) in {path}{more}:\n" + "\n".join(problems[:20]))
    return rows


# ------------------------------------------------------------------------------------ parsing
@dataclass(slots=True)
class ParsedOutput:
    fields: dict[str, Any] = field(default_factory=dict)
    reasoning: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_output(spec: TaskSpec, text: str) -> ParsedOutput:
    """Model output text -> fields (keyed by the row key's last part) with every problem listed."""
    out = ParsedOutput()
    think = re.search(r"<think>(.*?)</think>", text, re.S)
    if "<think>" in text and think is None:
        out.errors.append("<think> is not closed")
    out.reasoning = think.group(1).strip() if think else None
    body = text[think.end():] if think else text
    for f in spec.outputs:
        values = [v.strip() for v in re.findall(rf"<{f.tag}>(.*?)</{f.tag}>", body, re.S)]
        name = f.key.split(".")[-1]
        if not values:
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
        out.fields[name] = norm if f.repeated else norm[0]
    return out


def prediction_row(spec: TaskSpec, row_id: Any, text: str) -> dict:
    """The JSON row `megatron-ads eval` reads, from a model output (malformed outputs keep their errors)."""
    parsed = parse_output(spec, text)
    rec: dict[str, Any] = {"id": row_id, "raw": text}
    if spec.name == "query_ad":
        rec["labels"] = {k: parsed.fields.get(k) for k in ("relevance", "location", "quality")}
    elif spec.name == "ad_user":
        rec["score"] = int(parsed.fields["score"]) if "score" in parsed.fields else None
    else:
        rec.update(parsed.fields)
    if parsed.errors:
        rec["malformed"] = parsed.errors
    return rec
