"""``megatron-ads label --model DIR --input IN.jsonl --output OUT.jsonl --task TASK [--mode label|reasoning]
[--precision fp8|bf16|fp32] [--batch-size B] [--cache static|latent] [--max-new-tokens N] [--resume] [--gpu-cost-per-s X] [--json]``

Batch labeling on one process with the inference engine (``infer.job``): label mode = the task's
label-only prompt + candidate scoring (what SFT validation computes), reasoning mode = greedy
generation parsed by the task's parser. The output is appended and synced per batch and resumable
(``--resume``); ``megatron-ads eval --pred OUT --gold IN --task TASK`` reads it directly. Malformed input
lines go to ``OUT.errors.jsonl`` as ``{id?, line, error}`` and the job goes on.

Exit codes: 0 every row labeled; 1 some input lines were malformed (see OUT.errors.jsonl; the others
are labeled); 2 bad arguments, an existing output without --resume, an unreadable checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_ads.cli import emit
from megatron_ads.data.tasks import task, with_metric
from megatron_ads.infer.cache import CACHE_KINDS
from megatron_ads.infer.engine import Engine
from megatron_ads.infer.job import MODES, LabelJob, run_job
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.infer.weights import PRECISIONS, eos_ids, load_for_inference
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.label")


def register(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("exit codes: 0 all rows labeled; 1 some input lines malformed (error records in "
                "OUT.errors.jsonl, the other rows labeled); 2 bad input (flags, existing output without "
                "--resume, checkpoint)")
    p.add_argument("--model", required=True,
                   help="HF checkpoint (BF16 or DeepSeek FP8) or Megatron checkpoint / training run directory")
    p.add_argument("--input", required=True, help="the task's rows (JSONL with an id per row)")
    p.add_argument("--output", required=True,
                   help="predictions JSONL (appended per batch; errors go to OUT.errors.jsonl)")
    p.add_argument("--task", required=True, choices=with_metric(), help="task to label")
    p.add_argument("--mode", choices=MODES, default="label",
                   help="label: label-only prompt + candidate scoring (default); reasoning: generate + parse")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compute precision (fp8: FP8 weights dequantized at load, bf16 compute; default fp32)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per batch (default: %(default)s)")
    p.add_argument("--cache", choices=CACHE_KINDS, default="static",
                   help="generation KV cache: static (megatron-core's, full per-head K and V) or latent (MLA models: "
                        "the absorbed kv_lora latent + rope key, 71x smaller for DeepSeek-V3; same tokens) "
                        "(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="reasoning mode: most generated tokens per row (default: %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue an existing output, skipping its ids")
    p.add_argument("--gpu-cost-per-s", type=float, default=None,
                   help="$ per GPU-second: adds $ per 1M samples to the cost report")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def _human(r: dict) -> str:
    c = r["cost"]
    lines = [f"labeled {r['labeled']} rows ({r['skipped']} already done, {r['failed']} malformed input lines"
             f"{' -> ' + r['errors_file'] if r['failed'] else ''}, {r['parse_failed']} unparsed outputs) "
             f"-> {r['output']}",
             "| avg input tokens | avg output tokens | samples/s | $ / 1M samples |",
             "|---|---|---|---|",
             f"| {c['avg_input_tokens']} | {c['avg_output_tokens']} | {c['samples_per_s']} | "
             f"{c.get('usd_per_1m_samples', '-')} |"]
    return "\n".join(lines)


def run(args) -> int:
    job = LabelJob(input=Path(args.input), output=Path(args.output), task=task(args.task), mode=args.mode,
                   batch_size=args.batch_size, resume=args.resume, max_new_tokens=args.max_new_tokens,
                   model=str(args.model), precision=args.precision, gpu_cost_per_s=args.gpu_cost_per_s)
    if job.output.exists() and not job.resume:  # before the model is read
        raise FileExistsError(f"{job.output}: output exists; pass --resume to continue it or remove it")
    if not job.input.is_file():
        raise FileNotFoundError(f"{job.input}: no such JSONL file")
    model, cfg, tok = load_for_inference(args.model, precision=args.precision)
    if tok is None:
        raise BadInput(f"{args.model}: the checkpoint has no tokenizer; label needs one for the task prompts")
    scorer = EngineScorer(Engine(model, cfg, batch_size=args.batch_size, tokenizer=tok, cache=args.cache), tok, eos_ids(cfg, tok))
    with progress(desc="label", unit="sample") as bar:
        res = run_job(job, scorer, on_batch=bar.update)
    result = {"task": job.task.name, "mode": job.mode, "model": job.model, "precision": job.precision,
              "output": str(job.output), "errors_file": str(job.errors_path), "rows": res.rows,
              "labeled": res.labeled, "skipped": res.skipped, "failed": res.failed, "parse_failed": res.parse_failed,
              "tokens_in": res.tokens_in, "tokens_out": res.tokens_out, "seconds": round(res.seconds, 3),
              "cost": res.cost()}
    emit(result, args.json, _human)
    if res.failed:
        log.error("%d malformed input line(s), e.g. %s (all in %s)", res.failed, res.errors[0]["error"],
                  job.errors_path)
        return 1
    return 0
