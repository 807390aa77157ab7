"""``megatron-ads plan --hf-config PATH --nodes N --gpus-per-node G [--gpu-mem-gb M] [--tp T] [--pp P] [--ep E]
[--seq-len S] [--micro-batch B] [--json | --svg FILE] [--out plan.json] [--recipe FILE.yaml]``"""

from __future__ import annotations

from pathlib import Path

from megatron_ads.cli import emit
from megatron_ads.config.flavors import flavor
from megatron_ads.config.model import ModelConfig
from megatron_ads.layout.plan import RECOMPUTE, Cluster, PlanError, TrainShape, auto_plan, build_plan
from megatron_ads.layout.recipe import write_recipe
from megatron_ads.layout.report import svg, table
from megatron_ads.runtime.io import write_text
from megatron_ads.runtime.log import get_logger

log = get_logger(__name__)


def register(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--hf-config", help="HF config.json (or a checkpoint directory holding one)")
    src.add_argument("--flavor", help="a named flavor instead of a config file")
    p.add_argument("--nodes", type=int, required=True, help="number of nodes")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs per node")
    p.add_argument("--gpu-mem-gb", type=float, default=80.0,
                   help="usable memory per GPU in GB (10^9 bytes, as data sheets quote it; 80 GB H100 = 80)")
    p.add_argument("--tp", type=int, default=None, help="fix tensor parallel size (default: searched)")
    p.add_argument("--pp", type=int, default=None, help="fix pipeline parallel size (default: searched)")
    p.add_argument("--ep", type=int, default=None, help="fix expert parallel size (default: searched)")
    p.add_argument("--stage-layers", default=None, help="explicit layers per stage, e.g. 2,2,...,1 (needs --pp)")
    p.add_argument("--seq-len", type=int, default=4096, help="training sequence length (activation memory) (default: %(default)s)")
    p.add_argument("--micro-batch", type=int, default=1, help="micro-batch size (activation memory) (default: %(default)s)")
    p.add_argument("--num-microbatches", type=int, default=0, help="micro-batches per step (default 2 x pp)")
    p.add_argument("--recompute", choices=RECOMPUTE, default="auto",
                   help="activation recompute (auto: none when it fits, else full)")
    p.add_argument("--no-distributed-optimizer", action="store_true", help="count Adam state unsharded (no distributed optimizer)")
    p.add_argument("--no-mtp", action="store_true", help="do not train the MTP layers")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the plan as JSON")
    out.add_argument("--svg", default=None, metavar="FILE", help="write an SVG of stages x EP ranks")
    p.add_argument("--out", default=None, metavar="plan.json", help="also write the plan JSON here")
    p.add_argument("--recipe", default=None, metavar="FILE.yaml", help="also write a launch recipe YAML here")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = ModelConfig.from_hf(Path(args.hf_config)) if args.hf_config else flavor(args.flavor)
    cluster = Cluster(nodes=args.nodes, gpus_per_node=args.gpus_per_node, gpu_mem_gb=args.gpu_mem_gb)
    shape = TrainShape(seq_len=args.seq_len, micro_batch=args.micro_batch, num_microbatches=args.num_microbatches,
                       recompute=args.recompute, distributed_optimizer=not args.no_distributed_optimizer,
                       mtp=not args.no_mtp)
    counts = [int(x) for x in args.stage_layers.split(",")] if args.stage_layers else None
    if counts is not None and args.pp is None:
        raise PlanError("--stage-layers needs --pp")
    if args.tp and args.pp and args.ep or counts is not None:
        plan = build_plan(cfg, cluster, shape, tp=args.tp or 1, pp=args.pp, ep=args.ep or 1,
                          stage_layer_counts=counts)
        if not plan.fits:
            raise PlanError(f"memory: tp={plan.tp} pp={plan.pp} ep={plan.ep} needs {plan.max_memory_gb:.1f} GB on its "
                            f"fullest rank (stage {max(plan.stages, key=lambda s: s.memory_gb).index}), more than "
                            f"--gpu-mem-gb {cluster.gpu_mem_gb:g}")
    else:
        plan = auto_plan(cfg, cluster, shape, tp=args.tp, pp=args.pp, ep=args.ep)
    source = args.hf_config or f"flavor:{args.flavor}"
    if args.out:
        write_text(args.out, plan.to_json() + "\n")
        log.info("wrote %s", args.out)
    if args.recipe:
        write_recipe(plan, source, Path(args.recipe))
        log.info("wrote %s", args.recipe)
    if args.svg:
        write_text(args.svg, svg(plan))
        log.info("wrote %s", args.svg)
        print(table(plan))
        return 0
    emit(plan.to_dict(), args.json, lambda _: table(plan))
    return 0
