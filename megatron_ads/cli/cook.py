"""``megatron-ads cook --task TASK --input raw.jsonl --teacher DIR --out DIR [--verifier DIR] [--golden FILE]
[--prompts FILE.yaml] [--config FILE.yaml] [key=value ...] [--autoeval-judge DIR] [--workers W] [--restart]
[--precision P] [--json]``

Data cooking (AdNanny §3, ``data.cook``): a task's labeled raw rows (query_ad, ad_user, query_gen, ad_rewrite —
what ``megatron-ads data synth`` writes) become the reasoning-augmented SFT corpus. The teacher (any HF or
Megatron checkpoint ``infer.weights.load_for_inference`` reads) runs on the inference engine: greedy for
the golden-set validation, seeded sampling (``SamplingParams.seeds``: per input and candidate) for the
candidates; the verifier (a second, smaller checkpoint) scores faithfulness by label scoring in one prefill
per prompt (``infer.scorer.EngineScorer.score``); self-consistency and the keyword filters use the frozen
MiniLM embedder (``rewards.retrieval.MiniLMEmbedder``). Ad rewriting rows first pass MarketingFM's AutoEval
(``CookConfig.autoeval``): the gold rewrite's rule checks (``rewards.autoeval.RuleChecker``, headline = the
rewrite's title) and, with ``--autoeval-judge DIR``, the judge's expected relevance / generalization scores
(``data.judge``, one prefill per ad and criterion) against ``autoeval_thresholds``; a failing row is dropped
under the input filter ``autoeval`` (failures per rule in the report). Thresholds: ``config.cook.CookConfig`` (a YAML file
with ``--config`` and/or ``key=value`` overrides, e.g. ``n_candidates=2 verifier_min=0.6``).

OUT holds, per task: ``TASK.train.jsonl`` / ``TASK.val.jsonl`` / ``TASK.test.jsonl`` (what ``train sft`` reads
with ``sft.files.TASK.train=OUT/TASK.train.jsonl`` ...; written atomically), ``TASK.journal.jsonl`` (one
record per cooked input: every candidate, the filter that dropped it and why, the scores), ``TASK.settings.json``
and ``TASK.validation.json``; and for all tasks cooked into OUT ``cook_report.json`` (counts per filter per
task, the prompt-validation report, score histograms, the ``sft.files`` to use) and ``plots/``.

Resuming: the journal is appended and fsynced per batch; running the same command again skips the inputs it
holds (a torn last line is cut off and redone) and reuses a passed validation. Other settings than the
journal's are refused (exit 2) unless ``--restart`` discards the task's files (after a prompt refused on the
golden set nothing was cooked: other settings start over without it); ``cook_report.json`` is updated under
a lock, so cooks of different tasks into one OUT may run at the same time. ``--workers W`` starts W
processes (``runtime.launch``), each with its own models, cooking every W-th pending input into its part of
the journal (``infer.job.part_path``), merged at the end; the prompt is validated in the parent first.

Exit codes: 0 cooked; 2 bad input (rows, files, flags, settings) or a prompt refused on the golden set (the
message names the prompt, the variation and the figure; the report is in ``cook_report.json``); 1 a worker
failed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

from megatron_ads.cli import CommandFailed, emit
from megatron_ads.config.cook import CookConfig
from megatron_ads.config.yaml_io import read_mapping
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.data.cook import filters as F
from megatron_ads.data.cook import pipeline as P
from megatron_ads.data.cook.prompts import PROMPTS, CookPrompt, prompt_for, prompt_from_dict
from megatron_ads.data.cook.report import human, task_report
from megatron_ads.data.tasks import task as task_named
from megatron_ads.infer.cache import CACHE_CHOICES
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.job import output_files, part_files, part_path, read_output
from megatron_ads.infer.scorer import EngineScorer, text_stop
from megatron_ads.infer.weights import PRECISIONS, eos_ids, load_for_inference
from megatron_ads.runtime import launch
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path, write_json, write_jsonl
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.cook")

REPORT = "cook_report.json"
SPLITS = ("train", "val", "test")
RECORD_KEYS = ("n_candidates", "answer", "close_truncated", "temperature", "top_p", "max_new_tokens", "seed",
               "self_consistency_min", "verifier_min", "min_entity_overlap", "near_duplicate", "off_topic_min",
               "synonym_min", "keep_per_input", "autoeval", "autoeval_rules", "autoeval_thresholds", "grounding",
               "grounding_lexicon")
"""CookConfig fields the journal's records depend on: a resumed run must have the same values."""


def register(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 cooked; 2 bad input or a prompt refused on the golden set (report in\n"
                "OUT/cook_report.json); 1 a worker failed")
    p.add_argument("--task", required=True, help=f"task whose rows to cook: one of {', '.join(sorted(PROMPTS))}")
    p.add_argument("--input", required=True, help="labeled raw rows (JSONL; e.g. `megatron-ads data synth` output)")
    p.add_argument("--teacher", required=True, help="teacher checkpoint (HF or Megatron) that writes the reasoning")
    p.add_argument("--out", required=True, help="output directory (corpus splits, journal, cook_report.json, plots/)")
    p.add_argument("--verifier", default=None,
                   help="smaller verifier checkpoint scoring faithfulness by label scoring (default: no verifier "
                        "filter, reported as off)")
    p.add_argument("--autoeval-judge", default=None, metavar="DIR",
                   help="ad_rewrite: judge checkpoint scoring each gold rewrite's relevance and generalization "
                        "(AutoEval; thresholds: autoeval_thresholds); default: the rule checks only")
    p.add_argument("--golden", default=None,
                   help="golden rows (same format) for prompt validation; default: the first golden_rows inputs")
    p.add_argument("--prompts", default=None,
                   help="YAML of cook prompt fields replacing the registered prompt's (intro, steps, variations, ...)")
    p.add_argument("--embedder", default=None, help="sentence embedder directory (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--config", default=None, help="YAML of CookConfig fields (thresholds, sampling, splits)")
    p.add_argument("overrides", nargs="*", help="CookConfig key=value overrides, e.g. n_candidates=2 verifier_min=0.6")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default: %(default)s)")
    p.add_argument("--restart", action="store_true", help="discard this task's journal and outputs in OUT first")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="compute precision (default: %(default)s)")
    p.add_argument("--cache", choices=CACHE_CHOICES, default="auto", help="generation KV cache (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------ the engine side
class EngineTeacher:
    """``data.cook.pipeline.Teacher`` on the inference engine: seeded sampling per prompt, text stop."""

    def __init__(self, engine: Engine, tokenizer: Any, stop_ids: set[int]):
        self.engine, self.tokenizer, self.stop_ids = engine, tokenizer, set(stop_ids)
        self.limit = engine.cfg.max_position_embeddings

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fits(self, prompt: str, max_new_tokens: int) -> bool:
        return len(self.encode(prompt)) + max_new_tokens <= self.limit

    def generate(self, prompts: list[str], seeds: list[int], *, temperature: float, top_p: float,
                 max_new_tokens: int, stop_text: str | None) -> list[tuple[str, str]]:
        check = text_stop(self.tokenizer.decode, stop_text, self.stop_ids) if stop_text else None
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seeds=seeds,
                                stop_ids=self.stop_ids, stop_check=check)
        gens = self.engine.generate([self.encode(p) for p in prompts], params)
        return [(self.tokenizer.decode([t for t in g.output_ids if t not in self.stop_ids]), g.finish_reason)
                for g in gens]


def _load(path: str, precision: str, cache: str, batch_size: int) -> tuple[Engine, Any, set[int]]:
    model, cfg, tok = load_for_inference(path, precision=precision, par=ParallelConfig())
    if tok is None:
        raise BadInput(f"{path}: the checkpoint has no tokenizer; cook needs one for its prompts")
    return Engine(model, cfg, batch_size=batch_size, tokenizer=tok, cache=cache), tok, eos_ids(cfg, tok)


def _embedder(path: str | None):
    from megatron_ads.rewards.retrieval import EmbedderConfig, MiniLMEmbedder  # heavy: transformers at use

    return MiniLMEmbedder(EmbedderConfig(model_dir=path))


# ------------------------------------------------------------------------------------ AutoEval (ad data)
def _autoeval_filter(task, rows: list[dict], cfg: CookConfig, args) -> tuple[list[dict], dict[str, str],
                                                                               dict | None]:
    """MarketingFM's AutoEval of the gold rewrites (module docstring; ad_rewrite with ``autoeval`` on; other
    tasks pass through). Returns the rows left, the dropped inputs ``{id: "autoeval"}`` and the counts
    ``{"checked", "passed", "failed": {rule or "judge_<criterion>": n}, "judge", "thresholds"}`` (None: not run)."""
    if task.name != "ad_rewrite" or not cfg.autoeval:
        return rows, {}, None
    from megatron_ads.cli.autoeval import CRITERIA, judge_ads
    from megatron_ads.rewards.autoeval import RULES, RuleChecker, RuleConfig

    try:
        checker = RuleChecker(RuleConfig(rules=list(cfg.autoeval_rules)))
    except ValueError as exc:
        raise BadInput(f"cook config: autoeval_{exc}") from None
    ads = [{"keyword": r["keyword"], "headline": r["rewrite"]["title"], "description": r["rewrite"]["description"]}
           for r in rows]
    failures = checker.check(ads)
    judged, thresholds = None, {}
    if args.autoeval_judge:
        thresholds = dict(cfg.autoeval_thresholds)
        bad = sorted(set(thresholds) - set(CRITERIA))
        if bad or not thresholds:
            raise BadInput(f"cook config: autoeval_thresholds: expected criteria among {list(CRITERIA)}, got "
                           f"{sorted(thresholds)}")
        engine, tok, stops = _load(args.autoeval_judge, args.precision, args.cache, cfg.batch_size)
        scorer = EngineScorer(engine, tok, stops, max_len=engine.cfg.max_position_embeddings)
        judged = judge_ads(ads, scorer, cfg.batch_size, "max_prob")
    failed = {r: 0 for r in RULES if r in cfg.autoeval_rules}
    failed |= {f"judge_{c}": 0 for c in thresholds}
    kept, dropped = [], {}
    for i, r in enumerate(rows):
        why = list(failures[i])
        if judged is not None:
            why += [f"judge_{c}" for c, t in thresholds.items() if not judged[i]["scores"][c] >= t]
        for w in why:
            failed[w] += 1
        if why:
            dropped[str(r["id"])] = F.AUTOEVAL
        else:
            kept.append(r)
    return kept, dropped, {"checked": len(rows), "passed": len(kept), "failed": failed,
                           "judge": str(args.autoeval_judge) if args.autoeval_judge else None,
                           "thresholds": thresholds or None}


# ------------------------------------------------------------------------------------ files
def _paths(out: Path, task: str) -> dict[str, Path]:
    return {"journal": out / f"{task}.journal.jsonl", "settings": out / f"{task}.settings.json",
            "validation": out / f"{task}.validation.json", **{s: out / f"{task}.{s}.jsonl" for s in SPLITS}}


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _settings(args, cfg: CookConfig, prompt: CookPrompt) -> dict[str, Any]:
    """What the journal's records depend on (compared when resuming)."""
    return {"task": args.task, "input_sha256": _sha256(args.input), "teacher": str(Path(args.teacher).resolve()),
            "verifier": str(Path(args.verifier).resolve()) if args.verifier else None, "precision": args.precision,
            "autoeval_judge": str(Path(args.autoeval_judge).resolve()) if args.autoeval_judge else None,
            "embedder": args.embedder, "prompt": dataclasses.asdict(prompt),
            "config": {k: getattr(cfg, k) for k in RECORD_KEYS}}


def _check_settings(paths: dict[str, Path], settings: dict, restart: bool) -> None:
    """Start over (``--restart``), resume (same settings), or refuse (other settings). A run whose prompt was
    refused on the golden set cooked nothing, so other settings (a corrected prompt, other thresholds) simply
    start over."""
    f = paths["settings"]
    if not restart and f.exists() and _refused_before(paths):
        log.info("%s: the last cook of this task was refused on the golden set and cooked nothing; starting over",
                 f.parent)
        restart = True
    if restart:
        for p in [*output_files(paths["journal"]), paths["settings"], paths["validation"],
                  *(paths[s] for s in SPLITS)]:
            if p.exists():
                p.unlink()
    settings = json.loads(json.dumps(settings))  # as the file holds it (tuples -> lists)
    if f.exists():
        old = json.loads(f.read_text())
        diff = sorted(k for k in set(old) | set(settings) if k != "config" and old.get(k) != settings.get(k))
        diff += [f"config.{k}" for k in RECORD_KEYS
                 if (old.get("config") or {}).get(k) != settings["config"].get(k)]
        if diff:
            raise BadInput(f"{f}: this output was cooked with other settings ({', '.join(diff)} differ); pass "
                           f"--restart to discard it, or cook into another --out")
    write_json(f, settings)


def _refused_before(paths: dict[str, Path]) -> bool:
    """The task's last validation failed and its journal holds no record."""
    v = paths["validation"]
    try:
        refused = v.exists() and not json.loads(v.read_text()).get("passed")
    except (json.JSONDecodeError, AttributeError):
        return False
    return refused and not any(p.stat().st_size for p in output_files(paths["journal"]))


def _records(journal: Path) -> dict[str, dict]:
    recs: dict[str, dict] = {}
    for path in output_files(journal):
        for rid, raw in read_output(path):
            recs.setdefault(rid, json.loads(raw))
    return recs


def _merge_journal(journal: Path) -> None:
    """The journal from itself and the workers' parts (each id once), through a temporary file renamed
    last; then the parts are removed. A torn last line of a part is left out (its input is redone)."""
    parts = part_files(journal)
    if not parts:
        return
    seen: set[str] = set()
    lines = []
    for path in output_files(journal):
        for rid, raw in read_output(path):
            if rid not in seen:
                seen.add(rid)
                lines.append(raw)
    with atomic_path(journal) as tmp:
        with tmp.open("wb") as f:
            f.write(b"".join(raw + b"\n" for raw in lines))
            f.flush()
            os.fsync(f.fileno())
    for path in parts:
        path.unlink()


class _Journal:
    """Appends a batch of records and syncs it before the next batch starts."""

    def __init__(self, path: Path):
        self.f = path.open("a", encoding="utf-8")

    def __call__(self, records: list[dict]) -> None:
        self.f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        self.f.close()


# ------------------------------------------------------------------------------------ one worker
def _validate(spec: dict, teacher: "EngineTeacher | None" = None, embed=None) -> bool:
    """The golden-set validation of the prompt into the task's validation file (a passed one for the same golden
    rows and thresholds is reused; the teacher is loaded here when none is given). Returns whether it passed.
    With ``--workers`` > 1 this runs in the parent before the workers start, so no worker waits at a collective
    while the golden set is generated."""
    cfg = CookConfig.from_dict(spec["config"])
    vfile = Path(spec["paths"]["validation"])
    golden_sha = hashlib.sha256(json.dumps(spec["golden"], sort_keys=True).encode()).hexdigest()
    old = json.loads(vfile.read_text()) if vfile.exists() else None
    if (old is not None and old.get("passed") and old.get("golden_sha256") == golden_sha
            and old.get("thresholds") == P.validation_thresholds(cfg)):
        return True
    if teacher is None:
        teacher = EngineTeacher(*_load(spec["teacher"], spec["precision"], spec["cache"],
                                       cfg.batch_size * cfg.n_candidates))
    report = P.validate_prompt(task_named(spec["task"]), spec["prompt"], spec["golden"], teacher,
                               embed if embed is not None else _embedder(spec["embedder"]), cfg,
                               source=spec["golden_source"])
    report["golden_sha256"] = golden_sha
    write_json(vfile, report)
    log.info("prompt %s on %d golden rows: %s", spec["prompt"].id, report["golden_rows"],
             "passed" if report["passed"] else "REFUSED: " + "; ".join(report["failures"]))
    return bool(report["passed"])


def _rank_run(spec: dict, rank: int, world: int, sync: Callable[[], Any] | None,
              on_batch: Callable[[int], None] | None = None, embed=None) -> dict:
    """Load the models, validate the prompt (one process; with workers the parent has validated), cook this
    worker's share. Returns ``{"cooked": n}`` or ``{"refused": True}``."""
    task = task_named(spec["task"])
    cfg = CookConfig.from_dict(spec["config"])
    prompt: CookPrompt = spec["prompt"]
    paths = {k: Path(v) for k, v in spec["paths"].items()}
    engine, tok, stops = _load(spec["teacher"], spec["precision"], spec["cache"], cfg.batch_size * cfg.n_candidates)
    teacher = EngineTeacher(engine, tok, stops)
    verifier = None
    if spec["verifier"]:
        v_engine, v_tok, v_stops = _load(spec["verifier"], spec["precision"], spec["cache"], cfg.batch_size)
        # prompts left-truncated to the verifier's positions (its reasoning after a long input stays whole)
        verifier = EngineScorer(v_engine, v_tok, v_stops, max_len=v_engine.cfg.max_position_embeddings)
    embed = embed if embed is not None else _embedder(spec["embedder"])
    if spec["golden"] is not None:
        passed = (_validate(spec, teacher, embed) if world == 1
                  else json.loads(paths["validation"].read_text())["passed"])
        if not passed:
            return {"refused": True}
    journal = paths["journal"] if world == 1 else part_path(paths["journal"], rank, world)
    done: set[str] = set()
    for path in output_files(paths["journal"]):
        done |= {rid for rid, _ in read_output(path, repair=path == journal)}
    if sync is not None:
        sync()  # every worker has its share before any journal grows
    writer = _Journal(journal)
    try:
        n = P.run(task, prompt, spec["rows"], teacher=teacher, verifier=verifier, embed=embed, cfg=cfg, done=done,
                  append=writer, rank=rank, world=world, teacher_name=spec["teacher"], on_batch=on_batch)
    finally:
        writer.close()
    return {"cooked": n}


def _worker(spec: dict) -> dict:
    """Entry point of one spawned worker (``launch.spawn``)."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with progress(desc=f"cook (worker {rank} of {world})", unit="input") as bar:
        return _rank_run(spec, rank, world, sync=dist.barrier, on_batch=bar.update)


# ------------------------------------------------------------------------------------ the command
def _read_report(out: Path) -> dict:
    f = out / REPORT
    if f.exists():
        try:
            r = json.loads(f.read_text())
            if isinstance(r, dict) and isinstance(r.get("tasks"), dict):
                return r
        except json.JSONDecodeError:
            pass
    return {"tasks": {}, "sft_files": {}}


@contextlib.contextmanager
def _report_locked(out: Path) -> Iterator[dict]:
    """``cook_report.json`` read under an exclusive lock held until the caller has written it back: cooks of
    different tasks into one OUT at the same time each keep their section."""
    with (out / f".{REPORT}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield _read_report(out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run(args) -> int:
    if args.task not in PROMPTS:
        raise BadInput(f"--task: cooking has prompts for {sorted(PROMPTS)}, got {args.task!r}")
    if args.workers < 1:
        raise BadInput(f"--workers: expected >= 1, got {args.workers}")
    try:
        cfg = CookConfig.load(args.config, args.overrides)
    except (ValueError, TypeError) as exc:
        raise BadInput(f"cook config: {exc}") from None
    if cfg.grounding:
        F.lexicon(cfg.grounding_lexicon)  # a missing or malformed lexicon file: BadInput naming it, before any model
    task = task_named(args.task)
    if args.autoeval_judge and not (args.task == "ad_rewrite" and cfg.autoeval):
        raise BadInput(f"--autoeval-judge: judges ad rewrites only (--task ad_rewrite with autoeval=true), got "
                       f"--task {args.task}" + ("" if cfg.autoeval else " and autoeval=false"))
    for flag, path, kind in (("--input", args.input, "file"), ("--golden", args.golden, "file"),
                             ("--autoeval-judge", args.autoeval_judge, "dir"),
                             ("--prompts", args.prompts, "file"), ("--config", args.config, "file"),
                             ("--teacher", args.teacher, "dir"), ("--verifier", args.verifier, "dir")):
        if path is None:
            continue
        ok = Path(path).is_file() if kind == "file" else Path(path).is_dir()
        if not ok:
            raise BadInput(f"{flag} {path}: no such {'file' if kind == 'file' else 'checkpoint directory'}")
    prompt = prompt_for(args.task)
    if args.prompts:
        try:
            d = read_mapping(args.prompts, "--prompts")
        except (FileNotFoundError, ValueError) as exc:
            raise BadInput(f"--prompts: {exc}") from None
        prompt = prompt_from_dict(args.task, d, source=f"--prompts {args.prompts}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _paths(out, args.task)
    rows = P.read_raw(args.input, task)
    golden_rows = P.read_raw(args.golden, task) if args.golden else None
    _check_settings(paths, _settings(args, cfg, prompt), args.restart)

    embed = _embedder(args.embedder)
    ae_rows, ae_dropped, ae_counts = _autoeval_filter(task, rows, cfg, args)
    cook_rows, kw_dropped, query_counts = P.keyword_prefilter(task, ae_rows, cfg, embed)
    if golden_rows is None and cfg.golden_rows > 0 and cook_rows:  # (no input left: nothing to validate for)
        golden, source = cook_rows[:cfg.golden_rows], f"the first {cfg.golden_rows} inputs"
    elif golden_rows is not None:
        golden, source = golden_rows, str(args.golden)
    else:
        golden, source = None, ""
    spec = {"task": args.task, "config": cfg.to_dict(), "prompt": prompt, "rows": cook_rows, "golden": golden,
            "golden_source": source, "teacher": str(args.teacher), "verifier": args.verifier,
            "embedder": args.embedder, "precision": args.precision, "cache": args.cache,
            "paths": {k: str(v) for k, v in paths.items()}}
    if args.workers == 1:
        with progress(desc="cook", unit="input") as bar:
            results = [_rank_run(spec, 0, 1, sync=None, on_batch=bar.update, embed=embed)]
    elif golden is not None and not _validate(spec, embed=embed):
        results = [{"refused": True}]  # refused in the parent: no worker started
    else:
        results = launch.spawn(_worker, args.workers, spec)
    _merge_journal(paths["journal"])
    validation = json.loads(paths["validation"].read_text()) if golden is not None else None
    if any(r.get("refused") for r in results):
        with _report_locked(out) as report:
            report["tasks"][args.task] = {"task": args.task, "prompt": prompt.id, "status": "refused",
                                          "prompt_validation": validation}
            report["sft_files"].pop(args.task, None)
            write_json(out / REPORT, report)
        P.check_validation(validation)  # raises PromptRefused (exit 2) naming prompt and figures

    records = _records(paths["journal"])
    missing = [r["id"] for r in cook_rows if str(r["id"]) not in records]
    if missing:
        raise CommandFailed(f"{paths['journal']}: {len(missing)} input(s) not cooked, e.g. {missing[0]!r}")
    splits = P.finalize(cook_rows, records, cfg)
    for s in SPLITS:
        write_jsonl(paths[s], splits[s])
    section = task_report(task=args.task, prompt=prompt.id, n_read=len(rows),
                          keyword_dropped={**ae_dropped, **kw_dropped}, autoeval=ae_counts,
                          query_counts=query_counts, records=[records[str(r["id"])] for r in cook_rows],
                          splits=splits, validation=validation,
                          settings={"config": cfg.to_dict(), "teacher": str(args.teacher),
                                    "verifier": args.verifier, "autoeval_judge": args.autoeval_judge,
                                    "input": str(args.input),
                                    "precision": args.precision})
    section["status"] = "cooked"
    if not section["inputs"]["kept"]:
        drops = ", ".join(f"{k} {v}" for k, v in section["inputs"]["dropped"].items() if v)
        log.warning("%s: no input of %s kept (dropped: %s): the corpus files are empty", args.task, args.input, drops)
    from megatron_ads.eval.plots import plot_cook_report  # matplotlib at use

    with _report_locked(out) as report:
        report["tasks"][args.task] = section
        report["sft_files"][args.task] = {s: str(paths[s]) for s in SPLITS}
        write_json(out / REPORT, report)
        report["plots"] = [str(p) for p in plot_cook_report(report, out / "plots")]
        write_json(out / REPORT, report)
    emit(report, args.json, human)
    return 0
