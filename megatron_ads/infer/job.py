"""The resumable JSONL labeling runner behind ``megatron-ads label`` (one or several workers).

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
4. *Workers* (``run_job(..., rank=r, world=N)``, N > 1): the rows pending after every output file
   already written (``OUT`` and every part file ``OUT.part-RRR-of-NNN.jsonl``, whatever N wrote them) are
   shared round-robin, pending row i to worker i mod N; worker r appends its rows to its own part file
   ``OUT.part-r-of-N.jsonl`` as in 3 (repairing only that file's torn line; a torn line elsewhere is
   ignored and its row redone). Every worker reads the done ids before any of them writes (``sync``, a
   barrier). When all are done, ``merge_outputs`` writes ``OUT`` from ``OUT`` + every part file in input
   order (each id once) through a synced temporary file renamed last, then removes the part files. Killed
   before the rename, the next ``--resume`` finds everything in the part files; after it, ``OUT`` holds
   every row and the leftover part files only copies. So ``--resume`` works after a kill at any point,
   with the same or another number of workers; a single worker (N = 1) appends to ``OUT`` itself and
   merges leftover part files at its end.
5. *A model split across ranks* (tp, pp or ep > 1: one worker made of several processes): every process
   of the worker calls ``run_job(..., rank=0, world=1)`` and runs the same batches through the engine
   (its forwards are collective; every process holds every row and the shared results), reading the
   input and the done ids identically; only the process with ``write=True`` (global rank 0) writes
   ``OUT``, the errors file and merges, the others (``write=False``) compute and write nothing. The
   ``sync`` barrier after reading the done ids keeps the writer from appending before every process
   has read them.

Modes. ``label``: ``Task.predict(rows, EngineScorer)`` — for classification tasks the label-only prompt
(empty ``<think>``) and candidate scoring, the same computation as SFT validation; for generation tasks
greedy decoding after the label-only prompt. ``reasoning``: greedy generation after the bare prompt (the
model writes its ``<think>`` block), parsed by ``data.tasks.prediction_row``.

Output row: ``id``, the task's prediction fields as ``megatron-ads eval`` reads them (``labels.*`` /
``score`` / ``queries``), ``probs`` (label mode, classification), ``reasoning`` and ``raw`` (reasoning
mode), ``parse`` (``ok`` | ``failed``) with ``parse_errors``, ``model``, ``precision``, ``task``,
``mode``, ``tokens_in`` (prompt tokens) and ``tokens_out`` (label mode: the chosen label tags' tokens;
otherwise generated tokens); generated rows also ``finish_reason``. Generation stops at EOS,
``max_new_tokens`` or the task's closing tag (``infer.scorer.closing_tag``). With ``temperatures``
(``infer.calibrate``), ``probs`` are the calibrated ``softmax(loglik / T)`` per field and the row carries
``temperature`` ``{field: T}``; the labels are unchanged.

Test hook: ``MEGATRON_ADS_LABEL_KILL=POINT[:K][@RANK]`` SIGKILLs the job's whole process group at POINT:
``batch:K`` (after the K-th batch of this run is synced), ``torn:K`` (after half of the K-th batch's
bytes are written and synced), ``merge`` (merged temporary file written, before the rename), ``merged``
(after the rename, before the part files are removed); ``@RANK`` limits batch/torn to one worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import math
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from megatron_ads.data.tasks import THINK_EMPTY, Task, load_jsonl, parse_output, prediction_row, validate_row
from megatron_ads.data.tasks import task as task_named
from megatron_ads.infer.calibrate import Calibration, apply_temperature, fit_task, row_probs, set_row_probs
from megatron_ads.infer.scorer import EngineScorer, closing_tag
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path, iter_jsonl, write_jsonl

Mode = Literal["label", "reasoning"]
MODES = ("label", "reasoning")
ERRORS_SUFFIX = ".errors.jsonl"
CALIBRATION_SUFFIX = ".calibration.json"
KILL_ENV = "MEGATRON_ADS_LABEL_KILL"
"""Test hook (module docstring): where to SIGKILL the job."""
_PART = re.compile(r"\.part-(\d{3,})-of-(\d{3,})\.jsonl")


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
    temperatures: dict[str, float] | None = None
    """Label mode, classification: a temperature per field name (``infer.calibrate``); None: uncalibrated."""

    def __post_init__(self):
        self.input, self.output = Path(self.input), Path(self.output)
        if isinstance(self.task, str):
            self.task = task_named(self.task)
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
        if self.temperatures is not None:
            if self.mode != "label" or self.task.kind != "classification":
                raise ValueError("temperatures: calibration applies to label mode of classification tasks, got "
                                 f"mode {self.mode!r} and a {self.task.kind} task")
            bad = {k: t for k, t in self.temperatures.items() if not (math.isfinite(t) and t > 0)}
            if bad:
                raise ValueError(f"temperatures: expected finite values > 0, got {bad}")

    @property
    def errors_path(self) -> Path:
        """The side file of error records: ``OUT.errors.jsonl``."""
        return self.output.with_name(self.output.name + ERRORS_SUFFIX)

    @property
    def calibration_path(self) -> Path:
        """Where ``label --calibrate`` writes the fitted temperatures: ``OUT.calibration.json``."""
        return self.output.with_name(self.output.name + CALIBRATION_SUFFIX)

    def to_dict(self) -> dict[str, Any]:
        """Picklable settings (the task by name) for worker processes; ``LabelJob(**d)`` rebuilds it."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(input=str(self.input), output=str(self.output), task=self.task.name)
        return d


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
    started: float = 0.0
    """Wall-clock time (``time.time()``) the labeling began (after loading and planning)."""
    ended: float = 0.0

    @classmethod
    def combine(cls, results: list["JobResult"]) -> "JobResult":
        """The whole job from its workers' results (rank 0 first): rows and errors as rank 0 saw them, counts
        and tokens summed, ``seconds`` from the first worker's start to the last one's end (wall time)."""
        first = results[0]
        labeled = sum(r.labeled for r in results)
        return cls(rows=first.rows, labeled=labeled, skipped=first.rows - labeled, failed=first.failed,
                   parse_failed=sum(r.parse_failed for r in results), tokens_in=sum(r.tokens_in for r in results),
                   tokens_out=sum(r.tokens_out for r in results),
                   seconds=max(r.ended for r in results) - min(r.started for r in results),
                   gpu_cost_per_s=first.gpu_cost_per_s, errors=first.errors, started=min(r.started for r in results),
                   ended=max(r.ended for r in results))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def cost(self, devices: int = 1) -> dict[str, Any]:
        """The paper's Table 10 row for this run: avg input/output tokens, samples/s, $ per 1M samples
        (``gpu_cost_per_s`` x ``devices``, the GPUs the whole job held — workers, or the ranks of a split
        model — per sample)."""
        n = self.labeled
        sps = n / self.seconds if self.seconds > 0 and n else None
        out: dict[str, Any] = {"avg_input_tokens": round(self.tokens_in / n, 1) if n else None,
                               "avg_output_tokens": round(self.tokens_out / n, 1) if n else None,
                               "samples_per_s": round(sps, 3) if sps else None}
        if self.gpu_cost_per_s is not None:
            out["gpu_cost_per_s"] = self.gpu_cost_per_s
            out["gpus"] = devices
            out["usd_per_1m_samples"] = round(self.gpu_cost_per_s * devices * 1e6 / sps, 2) if sps else None
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


def part_path(output: Path, rank: int, world: int) -> Path:
    """Worker ``rank`` of ``world``'s part file: ``OUT.part-RRR-of-NNN.jsonl`` beside ``OUT``."""
    return output.with_name(f"{output.name}.part-{rank:03d}-of-{world:03d}.jsonl")


def part_files(output: Path) -> list[Path]:
    """Every part file of ``output`` on disk (any number of workers wrote them), sorted by name."""
    output = Path(output)
    found = output.parent.glob(glob.escape(output.name) + ".part-*-of-*.jsonl")
    return sorted(p for p in found if _PART.fullmatch(p.name[len(output.name):]))


def output_files(output: Path) -> list[Path]:
    """``output`` (when it exists) and its part files: where done rows are."""
    output = Path(output)
    return ([output] if output.exists() else []) + part_files(output)


def _kill_here(point: str, k: int | None = None, rank: int = 0) -> bool:
    """Whether the test hook ``MEGATRON_ADS_LABEL_KILL`` names this point (module docstring)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return False
    m = re.fullmatch(r"(batch|torn|merge|merged)(?::(\d+))?(?:@(\d+))?", spec)
    if m is None:
        raise ValueError(f"{KILL_ENV}: expected batch:K|torn:K|merge|merged, optionally @RANK; got {spec!r}")
    return (m.group(1) == point and (m.group(2) is None or int(m.group(2)) == k)
            and (m.group(3) is None or int(m.group(3)) == rank))


def _kill() -> None:
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole job, as `kill -9` of its process group


def read_output(path: Path, expect: dict[str, Any] | None = None, repair: bool = False) -> list[tuple[str, bytes]]:
    """``(id, line)`` of each complete row of an output or part file. A last line without its newline (a
    write cut short by a kill) is not a row; with ``repair`` it is cut off the file. Any other unreadable
    line, or a row whose ``expect`` keys (task, mode, precision, temperature) differ, is ``BadInput``."""
    out: list[tuple[str, bytes]] = []
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
            if row.get(key) != want:
                raise BadInput(f"{path}:{n}: field '{key}': the output was written with {row.get(key)!r}, this "
                               f"run has {want!r}; resume with the same settings or write a new output")
        out.append((str(row["id"]), raw))
    if repair and len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    return out


def done_ids(path: Path, expect: dict[str, Any] | None = None, repair: bool = True) -> set[str]:
    """Ids (as ``str``) of the rows already in an output (``read_output``; by default a torn last line is
    cut off the file, its row redone)."""
    return {rid for rid, _ in read_output(path, expect, repair)}


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


def _expect(job: LabelJob) -> dict[str, Any]:
    """Row fields a resumed output must share with this run."""
    return {"task": job.task.name, "mode": job.mode, "precision": job.precision, "temperature": job.temperatures}


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
            if job.temperatures is not None:
                for name, probs in row_probs(task, p).items():
                    set_row_probs(task, p, name, apply_temperature(probs, job.temperatures[name]))
                p["temperature"] = dict(job.temperatures)
            out.append(p)
        return out
    label_only = job.mode == "label"
    prompts = [task.prompt(r) + (THINK_EMPTY if label_only else "") for r in rows]
    max_new = task.max_new_tokens if label_only else job.max_new_tokens
    gens = scorer.generate_full(prompts, max_new, stop_text=closing_tag(task))
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


def run_job(job: LabelJob, scorer: EngineScorer, on_batch: Callable[[int], None] | None = None, *,
            rank: int = 0, world: int = 1, sync: Callable[[], Any] | None = None, write: bool = True) -> JobResult:
    """Label the input into the output (resumable; see the module docstring).

    Args:
        job: the settings.
        scorer: the engine scorer (model + tokenizer).
        on_batch: called with the number of rows after each batch is written and synced (progress bars;
            tests raise from it to interrupt a run).
        rank, world: this worker and the number of workers. ``world == 1`` writes ``job.output`` (and merges
            leftover part files at the end); otherwise rank r writes ``OUT.part-r-of-world.jsonl`` and the
            caller runs ``merge_outputs`` once every rank is done.
        sync: a barrier over the job's processes (``torch.distributed.barrier``; needed with ``world > 1``
            or a model split across ranks), called after every process has read the done ids and before
            any writes.
        write: False on the processes of a model split across ranks other than the writer (module
            docstring, 5): they label the same rows (the engine's collective forwards) and write no file.
    Returns:
        the run's ``JobResult`` (this worker's part). Raises FileExistsError (an output or part file exists
        without resume) or BadInput.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank: expected 0 <= rank < world ({world}), got {rank}")
    existing = output_files(job.output)
    if existing and not job.resume:
        raise FileExistsError(f"{existing[0]}: output exists; pass --resume to continue it or remove it")
    rows, errors = read_rows(job)
    rows, long_errors = _too_long(job, scorer, rows)
    errors = sorted(errors + long_errors, key=lambda e: e["line"])
    if rank == 0 and write:
        write_jsonl(job.errors_path, errors)
    own = job.output if world == 1 else part_path(job.output, rank, world)
    done: set[str] = set()
    for path in existing:
        done |= done_ids(path, _expect(job), repair=write and path == own)
    pending = [r for _, r in rows if str(r["id"]) not in done][rank::world]
    if sync is not None:
        sync()  # every process has its share before any output file grows
    if write:
        job.output.parent.mkdir(parents=True, exist_ok=True)
    tokens_in = tokens_out = parse_failed = 0
    started, start = time.time(), time.perf_counter()
    with own.open("a", encoding="utf-8") if write else contextlib.nullcontext() as f:
        for k, s in enumerate(range(0, len(pending), job.batch_size), 1):
            batch = pending[s:s + job.batch_size]
            preds = predict_batch(job, scorer, batch)
            if f is not None:
                text = "".join(json.dumps(p, sort_keys=True) + "\n" for p in preds)
                if _kill_here("torn", k, rank):
                    cut = len(text) // 2
                    f.write(text[:cut - 1 if text[cut - 1] == "\n" else cut])  # never a whole line
                    f.flush()
                    os.fsync(f.fileno())
                    _kill()
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
                if _kill_here("batch", k, rank):
                    _kill()
            tokens_in += sum(p["tokens_in"] for p in preds)
            tokens_out += sum(p["tokens_out"] for p in preds)
            parse_failed += sum(p["parse"] != "ok" for p in preds)
            if on_batch is not None:
                on_batch(len(batch))
    seconds = time.perf_counter() - start
    if write and world == 1 and part_files(job.output):
        merge_outputs(job)
    n_done = sum(1 for _, r in rows if str(r["id"]) in done)
    return JobResult(rows=len(rows), labeled=len(pending), skipped=n_done, failed=len(errors),
                     parse_failed=parse_failed, tokens_in=tokens_in, tokens_out=tokens_out, seconds=seconds,
                     gpu_cost_per_s=job.gpu_cost_per_s, errors=errors, started=started, ended=time.time())


def merge_outputs(job: LabelJob) -> int:
    """Write ``job.output`` from itself and every part file: each id once, in input order (ids the input no
    longer has last, in file order), through a synced temporary file renamed last; then remove the part
    files. Torn last lines are left out (their rows were not done). Returns the number of rows."""
    order = {str(r["id"]): n for n, r in read_rows(job)[0]}
    parts = part_files(job.output)
    seen: set[str] = set()
    lines: list[tuple[float, int, bytes]] = []
    for path in output_files(job.output):
        for rid, raw in read_output(path):
            if rid not in seen:
                seen.add(rid)
                lines.append((order.get(rid, math.inf), len(lines), raw))
    lines.sort()
    with atomic_path(job.output) as tmp:
        with tmp.open("wb") as f:
            f.write(b"".join(raw + b"\n" for _, _, raw in lines))
            f.flush()
            os.fsync(f.fileno())
        if _kill_here("merge"):
            _kill()
    _fsync_dir(job.output.parent)
    if _kill_here("merged"):
        _kill()
    for path in parts:
        path.unlink()
    _fsync_dir(job.output.parent)
    return len(lines)


def _fsync_dir(path: Path) -> None:
    """Make renames and removals in ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def calibrate(job: LabelJob, scorer: EngineScorer, val: str | Path) -> Calibration:
    """Fit a temperature per classification field on the labeled validation file ``val`` (the task's rows
    with their gold fields): label it in memory with ``job``'s settings (uncalibrated), then
    ``infer.calibrate.fit_task``. Invalid rows raise ValueError naming FILE:LINE and the field."""
    if job.mode != "label" or job.task.kind != "classification":
        raise ValueError(f"calibrate: temperature calibration needs label mode and a classification task, got mode "
                         f"{job.mode!r} and {job.task.name!r} ({job.task.kind})")
    gold = load_jsonl(val, job.task, with_targets=True)
    if not gold:
        raise BadInput(f"{val}: no rows to calibrate on")
    plain = dataclasses.replace(job, temperatures=None)
    preds = []
    for s in range(0, len(gold), job.batch_size):
        preds += predict_batch(plain, scorer, gold[s:s + job.batch_size])
    return fit_task(job.task, preds, gold, source=str(val))
