"""``megatron-ads convert hf-to-mcore | mcore-to-hf | reshard``"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_ads.checkpoint.convert import EXPORT_DTYPES, FORMATS, hf_to_mcore, mcore_to_hf, reshard
from megatron_ads.cli import emit
from megatron_ads.config.model import MTP_POLICIES
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.plan import ParallelPlan


def _parallel_args(q, required: bool = False) -> None:
    q.add_argument("--tp", type=int, default=None if required else 1, help="tensor-parallel size of the target layout")
    q.add_argument("--pp", type=int, default=None if required else 1, help="pipeline-parallel size of the target layout")
    q.add_argument("--ep", type=int, default=None if required else 1, help="expert-parallel size of the target layout")
    q.add_argument("--stage-layers", default=None, help="layers per stage, e.g. 2,2,1 (default: balanced)")


def _common(q) -> None:
    q.add_argument("--workers", type=int, default=1, help="parallel writer processes")
    q.add_argument("--resume", action="store_true", help="continue an interrupted conversion (journal)")
    q.add_argument("--max-memory-gb", type=float, default=None,
                   help="working-set budget for tensor groups, in GB (10^9 bytes, as in `plan --gpu-mem-gb`)")
    q.add_argument("--quiet", action="store_true", help="no progress bar or summary line")
    q.add_argument("--json", action="store_true", help="print the result as JSON")


def register(p) -> None:
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF (BF16 or FP8) -> Megatron (legacy per-rank shards or torch_dist)")
    a.add_argument("--hf", required=True, help="HF checkpoint directory (config.json + safetensors, BF16 or DeepSeek FP8)")
    a.add_argument("--out", required=True, help="output directory (must not hold a finished checkpoint; --resume continues a killed run)")
    _parallel_args(a)
    a.add_argument("--plan", default=None, help="plan.json from `megatron-ads plan --out` (overrides --tp/--pp/--ep)")
    a.add_argument("--megatron-lm-pt", action="store_true",
                   help="also write model_optim_rng.pt per shard for Megatron-LM (holds one whole shard in memory)")
    a.add_argument("--format", choices=FORMATS, default="legacy",
                   help="legacy: per-rank safetensors shards for this layout (default: readable file by file, "
                   "Megatron-LM's legacy naming); torch_dist: megatron-core dist_checkpointing, global tensors "
                   "any layout loads (--ep only splits the expert files)")
    a.add_argument("--mtp", choices=MTP_POLICIES, default="auto",
                   help="MTP layers config.json declares: require them, auto (convert without them when the "
                   "checkpoint holds none, e.g. transformers' save_pretrained; recorded in layout.json), or drop them")
    _common(a)
    a.set_defaults(func=run_hf_to_mcore)
    b = sub.add_parser("mcore-to-hf", help="Megatron checkpoint (converted, torch_dist or a training run's "
                                           "checkpoints/<step|latest>) -> HF safetensors")
    b.add_argument("--mcore", required=True, help="converted directory, RUN/checkpoints/step_N, RUN/checkpoints/latest "
                                                  "or RUN")
    b.add_argument("--out", required=True, help="output directory (must not hold a finished checkpoint; --resume continues a killed run)")
    b.add_argument("--dtype", choices=tuple(EXPORT_DTYPES), default="source",
                   help="source: as stored (bit-identical round trips); fp8: DeepSeek 128x128 block-scaled E4M3")
    b.add_argument("--shard-size-gb", type=float, default=5.0,
                   help="target size of one safetensors file, in GB (10^9 bytes, as transformers' \"5GB\")")
    _common(b)
    b.set_defaults(func=run_mcore_to_hf)
    c = sub.add_parser("reshard", help="Megatron -> Megatron for another layout")
    c.add_argument("--mcore", required=True, help="Megatron checkpoint: a converted directory, a training run, its checkpoints/ or a step_N")
    c.add_argument("--out", required=True, help="output directory (must not hold a finished checkpoint; --resume continues a killed run)")
    _parallel_args(c)
    _common(c)
    c.set_defaults(func=run_reshard)


def _par(args) -> ParallelConfig:
    counts = [int(x) for x in args.stage_layers.split(",")] if args.stage_layers else None
    return ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep, stage_layers=counts)


def _human(r: dict) -> str:
    return "converted -> " + r["out"] + ": " + ", ".join(f"{k}={v}" for k, v in r.items() if k != "out")


def run_hf_to_mcore(args) -> int:
    plan_json = None
    if args.plan:
        plan = ParallelPlan.load(args.plan)
        par = plan.to_parallel_config()
        plan_json = json.loads(Path(args.plan).read_text())
    else:
        par = _par(args)
    r = hf_to_mcore(args.hf, args.out, par, workers=args.workers, resume=args.resume, max_memory_gb=args.max_memory_gb,
                    plan_json=plan_json, megatron_lm_pt=args.megatron_lm_pt, progress=not args.quiet, mtp=args.mtp,
                    format=args.format)
    emit(r, args.json, _human)
    return 0


def run_mcore_to_hf(args) -> int:
    r = mcore_to_hf(args.mcore, args.out, dtype=args.dtype, workers=args.workers, resume=args.resume,
                    shard_size_gb=args.shard_size_gb, max_memory_gb=args.max_memory_gb, progress=not args.quiet)
    emit(r, args.json, _human)
    return 0


def run_reshard(args) -> int:
    r = reshard(args.mcore, args.out, _par(args), workers=args.workers, resume=args.resume,
                max_memory_gb=args.max_memory_gb, progress=not args.quiet)
    emit(r, args.json, _human)
    return 0
