"""The resumable JSONL labeling runner behind ``megatron-ads label`` (one worker).

How it works
------------
1. *Input*: every line of the input is read; a line that is not a JSON object, lacks a field of the
   task's schema (``data.tasks.validate_row``), repeats an id, or (reasoning mode) is too long for the
   model becomes an error record ``{"id"?, "line", "error"}`` in the side file ``OUT.errors.jsonl``
   (rewritten, atomically, by every run: it depends on the input only). The other rows are labeled.
2. *Resume*: without ``resume`` an existing output is an error (``FileExistsError``, exit 2). With it,
   the ids already in the output are skipped; a torn last line (a run killed mid-write) is cut off and
   its row redone; any other unreadable line is bad input naming FILE:LINE.
3. *Batches*: pending rows are cut into batches of ``batch_size`` rows in input order; each batch is
   predicted, appended to the output, flushed and fsynced before the next starts. A run killed at
   any point therefore leaves whole rows plus at most one torn line.

Modes. ``label``: ``Task.predict(rows, EngineScorer)`` — for classification tasks the label-only prompt
(empty ``<think>``) and candidate scoring, the same computation as SFT validation; for generation tasks
greedy decoding after the label-only prompt. ``reasoning``: greedy generation after the bare prompt (the
model writes its ``<think>`` block), parsed by ``data.tasks.prediction_row``.

Output row: ``id``, the task's prediction fields as ``megatron-ads eval`` reads them (``labels.*`` /
``score`` / ``queries``), ``probs`` (label mode, classification), ``reasoning`` and ``raw`` (reasoning
mode), ``parse`` (``ok`` | ``failed``) with ``parse_errors``, ``model``, ``precision``, ``task``,
``mode``, ``tokens_in`` (prompt tokens) and ``tokens_out`` (label mode: the chosen label tags' tokens;
otherwise generated tokens).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from megatron_ads.data.tasks import THINK_EMPTY, Task, parse_output, prediction_row, validate_row
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl, write_jsonl

Mode = Literal["label", "reasoning"]
MODES = ("label", "reasoning")
ERRORS_SUFFIX = ".errors.jsonl"


@dataclass(kw_only=True, slots=True)
class LabelJob:
    """One labeling run's settings."""

    input: Path
    """Input JSONL: the task's rows (``data.tasks.Task.required`` fields and an ``id``)."""
    output: Path
    """Output JSONL, appended per batch."""
    task: Task
    """The registered task (one with a metric)."""
    mode: Mode = "label"
    """``label`` (label-only prompt + candidate scoring) or ``reasoning`` (generate + parse)."""
    batch_size: int = 8
    """Rows per batch (one output flush per batch)."""
    resume: bool = False
    """Skip the ids already in ``output`` (else an existing output is an error)."""
    max_new_tokens: int = 256
    """Reasoning mode (and generation tasks): most generated tokens per row."""
    model: str = ""
    """Model name recorded in each output row."""
    precision: str = "fp32"
    """Precision recorded in each output row."""
    gpu_cost_per_s: float | None = None
    """$ per GPU-second for the cost report (None: no $ figure)."""

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.task.kind not in ("classification", "generation"):
            raise ValueError(f"task: {self.task.name!r} is a {self.task.kind} task; it has no labels")
        if self.gpu_cost_per_s is not None and self.gpu_cost_per_s < 0:
            raise ValueError(f"gpu_cost_per_s: expected >= 0, got {self.gpu_cost_per_s}")

    @property
    def errors_path(self) -> Path:
        """The side file of error records: ``OUT.errors.jsonl``."""
        return self.output.with_name(self.output.name + ERRORS_SUFFIX)


@dataclass(kw_only=True, slots=True)
class JobResult:
    """What a run did (the CLI's summary)."""

    rows: int
    """Valid input rows."""
    labeled: int
    """Rows labeled by this run."""
    skipped: int
    """Rows already in the output (resume)."""
    failed: int
    """Input lines that became error records."""
    parse_failed: int
    """Rows labeled by this run whose output did not parse (reasoning mode / generation tasks)."""
    tokens_in: int
    tokens_out: int
    seconds: float
    gpu_cost_per_s: float | None = None
    errors: list[dict] = field(default_factory=list)

    def cost(self) -> dict[str, Any]:
        """The paper's Table 10 row for this run: avg input/output tokens, samples/s, $ per 1M samples."""
        n = self.labeled
        sps = n / self.seconds if self.seconds > 0 and n else None
        out: dict[str, Any] = {"avg_input_tokens": round(self.tokens_in / n, 1) if n else None,
                               "avg_output_tokens": round(self.tokens_out / n, 1) if n else None,
                               "samples_per_s": round(sps, 3) if sps else None}
        if self.gpu_cost_per_s is not None:
            out["gpu_cost_per_s"] = self.gpu_cost_per_s
            out["usd_per_1m_samples"] = round(self.gpu_cost_per_s * 1e6 / sps, 2) if sps else None
        return out


def read_rows(job: LabelJob) -> tuple[list[tuple[int, dict]], list[dict]]:
    """``(line, row)`` for each valid input row, and the error records of the others."""
    rows, errors, seen = [], [], {}
    for n, row in iter_jsonl(job.input, on_error=lambda n, message: errors.append({"line": n, "error": message})):
        rid = row.get("id")
        problems = validate_row(job.task, row, with_targets=False)
        if not problems and str(rid) in seen:
            problems = [f"field 'id': duplicate {rid!r} (first on line {seen[str(rid)]})"]
        if problems:
            rec = {"line": n, "error": f"{job.input}:{n}: " + "; ".join(problems)}
            if rid is not None:
                rec["id"] = rid
            errors.append(rec)
            continue
        seen[str(rid)] = n
        rows.append((n, row))
    return rows, errors


def done_ids(path: Path, expect: dict[str, Any] | None = None) -> set[str]:
    """Ids (as ``str``) of the rows already in an output. A last line without its newline (a write cut
    short by a kill) is cut off the file, its row redone; any other unreadable line, or a row whose
    ``expect`` keys (task, mode, precision) differ, is ``BadInput``."""
    done: set[str] = set()
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]  # everything up to the last newline
    for n, raw in enumerate(complete.split(b"\n")[:-1], 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            raise BadInput(f"{path}:{n}: unreadable output row ({exc}); only a torn last line is repaired "
                           f"on --resume") from None
        if not isinstance(row, dict) or "id" not in row:
            raise BadInput(f"{path}:{n}: expected an output row (a JSON object with an 'id')")
        for key, want in (expect or {}).items():
            if key in row and row[key] != want:
                raise BadInput(f"{path}:{n}: field '{key}': the output was written with {row[key]!r}, this run "
                               f"has {want!r}; resume with the same settings or write a new output")
        done.add(str(row["id"]))
    if len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    return done


def _tokens_out_label(scorer: EngineScorer, task: Task, pred: dict) -> int:
    if task.kind != "classification":
        return 0
    total = 0
    for f in task.outputs:
        value: Any = pred
        for part in f.key.split("."):
            value = value[part]
        total += len(scorer.encode(f"<{f.tag}>{value}</{f.tag}>"))
    return total


def predict_batch(job: LabelJob, scorer: EngineScorer, rows: list[dict]) -> list[dict]:
    """Output rows for one batch (see the module docstring)."""
    task = job.task
    common = {"model": job.model, "precision": job.precision, "task": task.name, "mode": job.mode}
    out = []
    if job.mode == "label" and task.kind == "classification":
        preds = task.predict(rows, scorer)
        for r, p in zip(rows, preds):
            p.update(common, parse="ok", parse_errors=[],
                     tokens_in=len(scorer.encode(task.prompt(r) + THINK_EMPTY)),
                     tokens_out=_tokens_out_label(scorer, task, p))
            out.append(p)
        return out
    label_only = job.mode == "label"
    prompts = [task.prompt(r) + (THINK_EMPTY if label_only else "") for r in rows]
    max_new = task.max_new_tokens if label_only else job.max_new_tokens
    gens = scorer.generate_full(prompts, max_new)
    for r, prompt, g in zip(rows, prompts, gens):
        text = scorer.text(g)
        full = THINK_EMPTY + text if label_only else text
        parsed = parse_output(task, full)
        p = prediction_row(task, r["id"], full)
        p.pop("malformed", None)
        p.update(common, raw=text, reasoning=parsed.reasoning, parse="ok" if parsed.ok else "failed",
                 parse_errors=parsed.errors, finish_reason=g.finish_reason,
                 tokens_in=len(scorer.encode(prompt)), tokens_out=len(g.output_ids))
        out.append(p)
    return out


def _too_long(job: LabelJob, scorer: EngineScorer, rows: list[tuple[int, dict]]) -> tuple[list, list[dict]]:
    """Rows too long for the model's max positions become error records: generation needs prompt +
    max_new_tokens; label scoring prompt + every field's longest candidate tag (the fields scored before
    a field are part of its prompt)."""
    limit = scorer.engine.cfg.max_position_embeddings
    label_only = job.mode == "label"
    if label_only and job.task.kind == "classification":
        extra = sum(max(len(scorer.encode(f"<{f.tag}>{c}</{f.tag}>\n")) for c in f.allowed or ("",))
                    for f in job.task.outputs)
        what = "the label tags"
    else:
        extra = job.task.max_new_tokens if label_only else job.max_new_tokens
        what = f"max_new_tokens {extra}"
    keep, errors = [], []
    for n, r in rows:
        k = len(scorer.encode(job.task.prompt(r) + (THINK_EMPTY if label_only else "")))
        if k + extra > limit:
            errors.append({"id": r["id"], "line": n, "error": f"{job.input}:{n}: {k} prompt tokens + {what} "
                                                              f"({extra}) exceed max_position_embeddings {limit}"})
        else:
            keep.append((n, r))
    return keep, errors


def run_job(job: LabelJob, scorer: EngineScorer, on_batch: Callable[[int], None] | None = None) -> JobResult:
    """Label the input into the output (resumable; see the module docstring).

    Args:
        job: the settings.
        scorer: the engine scorer (model + tokenizer).
        on_batch: called with the number of rows after each batch is written and synced (progress bars;
            tests raise from it to interrupt a run).
    Returns:
        the run's ``JobResult``. Raises FileExistsError (output exists without resume) or BadInput.
    """
    if job.output.exists() and not job.resume:
        raise FileExistsError(f"{job.output}: output exists; pass --resume to continue it or remove it")
    rows, errors = read_rows(job)
    rows, long_errors = _too_long(job, scorer, rows)
    errors = sorted(errors + long_errors, key=lambda e: e["line"])
    write_jsonl(job.errors_path, errors)
    expect = {"task": job.task.name, "mode": job.mode, "precision": job.precision}
    done = done_ids(job.output, expect) if job.output.exists() else set()
    pending = [r for _, r in rows if str(r["id"]) not in done]
    job.output.parent.mkdir(parents=True, exist_ok=True)
    tokens_in = tokens_out = parse_failed = 0
    start = time.perf_counter()
    with job.output.open("a", encoding="utf-8") as f:
        for s in range(0, len(pending), job.batch_size):
            batch = pending[s:s + job.batch_size]
            preds = predict_batch(job, scorer, batch)
            f.write("".join(json.dumps(p, sort_keys=True) + "\n" for p in preds))
            f.flush()
            os.fsync(f.fileno())
            tokens_in += sum(p["tokens_in"] for p in preds)
            tokens_out += sum(p["tokens_out"] for p in preds)
            parse_failed += sum(p["parse"] != "ok" for p in preds)
            if on_batch is not None:
                on_batch(len(batch))
    seconds = time.perf_counter() - start
    return JobResult(rows=len(rows), labeled=len(pending), skipped=len(rows) - len(pending), failed=len(errors),
                     parse_failed=parse_failed, tokens_in=tokens_in, tokens_out=tokens_out, seconds=seconds,
                     gpu_cost_per_s=job.gpu_cost_per_s, errors=errors)
