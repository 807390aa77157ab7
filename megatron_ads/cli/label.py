"""``megatron-ads label --model DIR --input IN.jsonl --output OUT.jsonl --task TASK [--mode label|reasoning]
[--precision fp8|bf16|fp32] [--batch-size B] [--cache static|latent] [--max-new-tokens N] [--workers W]
[--tp T --pp P --ep E [--nproc N]] [--calibrate VAL.jsonl | --temperature-file FILE] [--resume]
[--gpu-cost-per-s X] [--json]``

Batch labeling with the inference engine (``infer.job``): label mode = the task's label-only prompt +
candidate scoring (what SFT validation computes), reasoning mode = greedy generation (stopping at EOS,
``--max-new-tokens`` or the task's closing tag) parsed by the task's parser. The output is appended and
synced per batch and resumable (``--resume``); ``megatron-ads eval --pred OUT --gold IN --task TASK`` reads
it directly. Malformed input lines go to ``OUT.errors.jsonl`` as ``{id?, line, error}`` and the job goes on.

Workers: ``--workers W`` starts W local processes (``runtime.launch``), each loading the model and
labeling every W-th pending row into its part file ``OUT.part-RRR-of-WWW.jsonl``; this process then merges
them into OUT in input order (``infer.job.merge_outputs``). Under torchrun or srun with WORLD_SIZE > 1 each
rank is one worker (``--workers`` is ignored) and rank 0 merges and reports. ``--resume`` continues after a
kill at any point, with any number of workers. The cost report covers the whole job (samples/s = rows
labeled / wall seconds from the first worker's start to the last one's end; $ per 1M samples at
``--gpu-cost-per-s`` x the GPUs held: the workers, or the ranks of a split model).

A model split across ranks (``--tp/--pp/--ep``, for checkpoints that do not fit one device): one worker
of ``pp * lcm(tp, ep)`` processes, as ``generate`` runs (``infer.parallel``): alone, the command starts
``--nproc`` gloo workers itself (default ``pp * lcm(tp, ep)``); under torchrun or srun the WORLD_SIZE
ranks form the model instead of being independent workers. Every rank loads its chunk, reads the input,
the done ids and the calibration identically and runs the same batches (every rank holds every row: the
throughput of one model replica); only rank 0 writes the output, the errors file, the calibration file
and prints the summary (``infer.job``, 5), so the output is the one a single process writes and
``--resume`` works as above. ``--workers`` must then be 1: the MoE all-to-all spans the ranks megatron
counts as data-parallel replicas, so replicas cannot label different rows (exit 2 otherwise); ranks beyond
``pp * lcm(tp, ep)`` replicate the rows and add no throughput.

Calibration: ``--calibrate VAL.jsonl`` first labels a validation file with gold labels, fits one
temperature per classification field (``infer.calibrate``; NLL and ECE before/after, written to
``OUT.calibration.json``, reused by ``--resume``), then labels the input with ``probs = softmax(loglik / T)``;
``--temperature-file FILE`` applies a saved one. Labels are unchanged (T > 0 keeps the argmax).

Exit codes: 0 every row labeled; 1 some input lines were malformed (see OUT.errors.jsonl; the others
are labeled) or a worker failed; 2 bad arguments, an existing output without --resume, an unreadable
checkpoint.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

from megatron_ads.checkpoint.parity import default_nproc
from megatron_ads.cli import emit
from megatron_ads.cli.engine_args import add_engine_args, read_layout
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.data.tasks import task, with_metric
from megatron_ads.infer.calibrate import Calibration
from megatron_ads.infer.engine import Engine
from megatron_ads.infer.job import MODES, JobResult, LabelJob, calibrate, merge_outputs, output_files, run_job
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.infer.weights import eos_ids, load_for_inference
from megatron_ads.runtime import launch
from megatron_ads.runtime.dist import read_env
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.label")


def register(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 all rows labeled; 1 some input lines malformed (error records in OUT.errors.jsonl,\n"
                "the other rows labeled) or a worker failed; 2 bad input (flags, existing output without --resume,\n"
                "checkpoint)\n\n"
                "generation (reasoning mode, generation tasks) stops at EOS, --max-new-tokens or the task's closing\n"
                "tag (the last output field's, e.g. </AdQuality>; none when that field repeats, as <Query> does)")
    p.add_argument("--model", required=True,
                   help="HF checkpoint (BF16 or DeepSeek FP8) or Megatron checkpoint / training run directory")
    p.add_argument("--input", required=True, help="the task's rows (JSONL with an id per row)")
    p.add_argument("--output", required=True,
                   help="predictions JSONL (appended per batch; errors go to OUT.errors.jsonl)")
    p.add_argument("--task", required=True, choices=with_metric(), help="task to label")
    p.add_argument("--mode", choices=MODES, default="label",
                   help="label: label-only prompt + candidate scoring (default); reasoning: generate + parse")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="reasoning mode: most generated tokens per row (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes, each with its own model, labeling every W-th pending row into "
                        "OUT.part-RRR-of-WWW.jsonl, merged into OUT at the end (under torchrun/srun: one per rank; "
                        "must be 1 with --tp/--pp/--ep > 1; default: %(default)s)")
    add_engine_args(p)
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--calibrate", default=None, metavar="VAL.jsonl",
                     help="fit a temperature per label field on this labeled validation file first (written to "
                          "OUT.calibration.json with ECE before/after), then label with calibrated probs")
    cal.add_argument("--temperature-file", default=None, metavar="FILE",
                     help="apply the temperatures of a calibration file (OUT.calibration.json of a --calibrate run)")
    p.add_argument("--resume", action="store_true",
                   help="continue an existing output (and its part files), skipping their ids")
    p.add_argument("--gpu-cost-per-s", type=float, default=None,
                   help="$ per GPU-second: adds $ per 1M samples to the cost report (x the GPUs the job holds: "
                        "--workers, or the ranks of a split model)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def _human(r: dict) -> str:
    c = r["cost"]
    lines = [f"labeled {r['labeled']} rows ({r['skipped']} already done, {r['failed']} malformed input lines"
             f"{' -> ' + r['errors_file'] if r['failed'] else ''}, {r['parse_failed']} unparsed outputs) "
             f"-> {r['output']}" + (f" with {r['workers']} workers" if r["workers"] > 1 else "")
             + (f" on {r['ranks']} ranks (tp {r['tp']}, pp {r['pp']}, ep {r['ep']})"
                if (r["tp"], r["pp"], r["ep"]) != (1, 1, 1) else ""),
             "| avg input tokens | avg output tokens | samples/s | $ / 1M samples |",
             "|---|---|---|---|",
             f"| {c['avg_input_tokens']} | {c['avg_output_tokens']} | {c['samples_per_s']} | "
             f"{c.get('usd_per_1m_samples', '-')} |"]
    if r.get("calibration"):
        lines += ["", "| field | temperature | ECE before | ECE after | NLL before | NLL after |",
                  "|---|---|---|---|---|---|"]

        def fmt(x):
            return "-" if x is None else f"{x:.4f}"

        for name, f in r["calibration"]["fields"].items():
            lines.append(f"| {name} | {f['temperature']:.4f} | {fmt(f['ece_before'])} | {fmt(f['ece_after'])} | "
                         f"{fmt(f['nll_before'])} | {fmt(f['nll_after'])} |")
    return "\n".join(lines)


def _split(spec: dict) -> bool:
    """True when the model is split across ranks (tp, pp or ep > 1)."""
    return (spec["tp"], spec["pp"], spec["ep"]) != (1, 1, 1)


def _spec(args) -> dict[str, Any]:
    """What every worker needs (picklable)."""
    job = LabelJob(input=Path(args.input), output=Path(args.output), task=task(args.task), mode=args.mode,
                   batch_size=args.batch_size, resume=args.resume, max_new_tokens=args.max_new_tokens,
                   model=str(args.model), precision=args.precision, gpu_cost_per_s=args.gpu_cost_per_s)
    return {"job": job.to_dict(), "model": str(args.model), "precision": args.precision,
            "batch_size": args.batch_size, "cache": args.cache, "calibrate": args.calibrate,
            "temperature_file": args.temperature_file, "tp": args.tp, "pp": args.pp, "ep": args.ep}


def _scorer(spec: dict) -> EngineScorer:
    par = ParallelConfig(tp=spec["tp"], pp=spec["pp"], ep=spec["ep"])
    model, cfg, tok = load_for_inference(spec["model"], precision=spec["precision"], par=par)
    if tok is None:
        raise BadInput(f"{spec['model']}: the checkpoint has no tokenizer; label needs one for the task prompts")
    engine = Engine(model, cfg, batch_size=spec["batch_size"], tokenizer=tok, cache=spec["cache"])
    return EngineScorer(engine, tok, eos_ids(cfg, tok))


def _rank_run(spec: dict, rank: int, world: int, sync: Callable[[], Any] | None,
              on_batch: Callable[[int], None] | None = None, write: bool = True) -> JobResult:
    """One worker (or, with a split model, one of its processes: ``write`` only on global rank 0): load the
    model, calibrate (worker 0 fits — every process of a split model takes part, the writer saves the
    file; the others wait for it), label its share."""
    job = LabelJob(**spec["job"])
    scorer = _scorer(spec)
    cal_file = spec["temperature_file"]
    if spec["calibrate"]:
        cal_file = job.calibration_path
        fit = not (job.resume and cal_file.exists())
        if sync is not None:
            sync()  # every process has decided before the file may appear
        if fit and (rank == 0 or _split(spec)):
            cal = calibrate(job, scorer, spec["calibrate"])  # a split model: collective forwards on every rank
            if rank == 0 and write:
                cal.save(cal_file)
                log.info("calibrated on %s: %s -> %s", spec["calibrate"],
                         ", ".join(f"{k} T={v:.3g}" for k, v in cal.temperatures().items()), cal_file)
        if sync is not None:
            sync()
    if cal_file:
        job.temperatures = Calibration.load(cal_file, job.task).temperatures()
        LabelJob.__post_init__(job)  # label mode and a classification task, valid temperatures
    return run_job(job, scorer, on_batch, rank=rank, world=world, sync=sync, write=write)


def _worker(spec: dict) -> dict:
    """Entry point of one spawned worker (``launch.spawn``): its ``JobResult`` as a dict."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    with progress(desc=f"label (worker 0 of {world})", unit="sample") as bar:
        res = _rank_run(spec, rank, world, sync=dist.barrier, on_batch=bar.update)
    return res.to_dict()


def _split_worker(spec: dict) -> dict | None:
    """Entry point of one spawned process of a split model: rank 0 writes and returns its ``JobResult`` as a
    dict; the other ranks compute the same batches and return None."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    with progress(desc="label", unit="sample") as bar:
        res = _rank_run(spec, 0, 1, sync=dist.barrier, on_batch=bar.update, write=rank == 0)
    return res.to_dict() if rank == 0 else None


def run(args) -> int:
    if args.workers < 1:
        raise BadInput(f"--workers: expected >= 1, got {args.workers}")
    if args.nproc is not None and (args.tp, args.pp, args.ep) == (1, 1, 1):
        raise BadInput(f"--nproc: only with a model split across ranks (--tp/--pp/--ep > 1); for independent "
                       f"workers use --workers, got --nproc {args.nproc}")
    par, nproc = read_layout(args)
    model_ranks = default_nproc(par.tp, par.pp, par.ep)
    split = (par.tp, par.pp, par.ep) != (1, 1, 1)
    if split and args.workers != 1:
        raise BadInput(f"--workers: expected 1 with a model split across ranks (--tp {par.tp} --pp {par.pp} "
                       f"--ep {par.ep}), got {args.workers}: the ranks of one model label the same rows; run "
                       f"separate jobs on separate inputs for more replicas")
    spec = _spec(args)  # flag errors before any model is read
    job = LabelJob(**spec["job"])
    existing = output_files(job.output)
    if existing and not job.resume:  # before the model is read
        raise FileExistsError(f"{existing[0]}: output exists; pass --resume to continue it or remove it")
    if not job.input.is_file():
        raise FileNotFoundError(f"{job.input}: no such JSONL file")
    for flag, path in (("--calibrate", args.calibrate), ("--temperature-file", args.temperature_file)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    if args.temperature_file:
        LabelJob(**{**spec["job"], "temperatures": Calibration.load(args.temperature_file, job.task).temperatures()})
    if args.calibrate:
        LabelJob(**{**spec["job"], "temperatures": {}})  # label mode and a classification task
    env = read_env()
    ranks = 1
    if split and env.launcher != "single":  # under torchrun / srun: the ranks form the model
        import torch.distributed as dist

        if env.world_size % model_ranks:
            raise BadInput(f"--tp {par.tp} --pp {par.pp} --ep {par.ep}: needs a multiple of pp * lcm(tp, ep) = "
                           f"{model_ranks} ranks, launched with WORLD_SIZE {env.world_size}")
        if args.nproc is not None:
            log.info("--nproc %d ignored: launched as %d ranks", args.nproc, env.world_size)
        with progress(desc="label", unit="sample") as bar:
            mine = _rank_run(spec, 0, 1, sync=dist.barrier, on_batch=bar.update, write=env.rank == 0)
        if env.rank != 0:
            return 0
        results, workers, ranks = [mine], 1, env.world_size
    elif split:
        results = [JobResult(**launch.spawn(_split_worker, nproc, spec)[0])]
        workers, ranks = 1, nproc
    elif env.launcher != "single" and env.world_size > 1:  # under torchrun / srun: this process is one worker
        import torch.distributed as dist

        if args.workers != 1:
            log.info("--workers %d ignored: launched as %d ranks, one worker each", args.workers, env.world_size)
        with progress(desc="label", unit="sample") as bar:
            mine = _rank_run(spec, env.rank, env.world_size, sync=dist.barrier, on_batch=bar.update)
        gathered: list[Any] = [None] * env.world_size
        dist.all_gather_object(gathered, mine.to_dict())
        if env.rank != 0:
            return 0
        results, workers = [JobResult(**r) for r in gathered], env.world_size
        merge_outputs(job)
    elif args.workers > 1:
        results, workers = [JobResult(**r) for r in launch.spawn(_worker, args.workers, spec)], args.workers
        merge_outputs(job)
    else:
        with progress(desc="label", unit="sample") as bar:
            results, workers = [_rank_run(spec, 0, 1, sync=None, on_batch=bar.update)], 1
    res = JobResult.combine(results)
    result = {"task": job.task.name, "mode": job.mode, "model": job.model, "precision": job.precision,
              "output": str(job.output), "errors_file": str(job.errors_path), "rows": res.rows,
              "labeled": res.labeled, "skipped": res.skipped, "failed": res.failed, "parse_failed": res.parse_failed,
              "tokens_in": res.tokens_in, "tokens_out": res.tokens_out, "seconds": round(res.seconds, 3),
              "workers": workers, "tp": par.tp, "pp": par.pp, "ep": par.ep,
              "ranks": ranks if split else workers, "cost": res.cost(ranks if split else workers)}
    cal_file = job.calibration_path if args.calibrate else args.temperature_file
    if cal_file:
        result["calibration"] = Calibration.load(cal_file).to_dict()
        result["calibration_file"] = str(cal_file)
    emit(result, args.json, _human)
    if res.failed:
        log.error("%d malformed input line(s), e.g. %s (all in %s)", res.failed, res.errors[0]["error"],
                  job.errors_path)
        return 1
    return 0
