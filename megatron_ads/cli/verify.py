"""``megatron-ads verify parity --hf DIR [--tp T --pp P --ep E] [--nproc N] [--dtype fp32|bf16] [--mtp M] [--json]``"""

from __future__ import annotations

from pathlib import Path

from megatron_ads.checkpoint.hf_io import HFCheckpoint
from megatron_ads.checkpoint.megatron_io import MegatronAsHF
from megatron_ads.checkpoint.mtp import resolve_mtp
from megatron_ads.checkpoint.parity import DEFAULT_ATOL, default_nproc, run_parity_rank
from megatron_ads.checkpoint.verify import compare
from megatron_ads.cli import CommandFailed, emit
from megatron_ads.config.model import MTP_POLICIES, ModelConfig
from megatron_ads.runtime.dist import read_env
from megatron_ads.runtime import launch


def register(p) -> None:
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("parity", help="HF transformers vs our megatron-core model on the same batch")
    q.add_argument("--hf", required=True, help="HF checkpoint directory")
    q.add_argument("--mcore", default=None, help="load our model from this Megatron checkpoint instead of --hf "
                   "(the layout's own shards when it matches, else reassembled); --hf stays the reference")
    q.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the megatron-core side (default: %(default)s)")
    q.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the megatron-core side (default: %(default)s)")
    q.add_argument("--ep", type=int, default=1, help="expert-parallel size of the megatron-core side (default: %(default)s)")
    q.add_argument("--stage-layers", default=None, help="comma-separated layers per stage, e.g. 1,3")
    q.add_argument("--nproc", type=int, default=None,
                   help="start N gloo workers (CPU); default: the smallest world for tp/pp/ep")
    q.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype both models run in (default: %(default)s)")
    q.add_argument("--atol", type=float, default=None, help="max |logit diff| allowed (default fp32 1e-5, bf16 0.5) (default: %(default)s)")
    q.add_argument("--batch", type=int, default=2, help="rows in the random batch (default: %(default)s)")
    q.add_argument("--seq", type=int, default=32, help="tokens per row (default: %(default)s)")
    q.add_argument("--seed", type=int, default=1234, help="seed of the random batch (default: %(default)s)")
    q.add_argument("--mtp", choices=MTP_POLICIES, default="auto",
                   help="MTP layers config.json declares: require them in the checkpoint, auto (build without "
                   "them when the checkpoint holds none, e.g. transformers' save_pretrained), or drop them")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    q.set_defaults(func=run_parity)
    c = sub.add_parser("checkpoints", help="compare two HF or two Megatron checkpoints tensor by tensor")
    c.add_argument("a", help="first checkpoint (HF, or Megatron: both of one kind and, for Megatron shards, one layout)")
    c.add_argument("b", help="second checkpoint")
    c.add_argument("--atol", type=float, default=0.0, help="largest absolute difference that still counts as equal (default: %(default)s)")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=run_checkpoints)


def run_checkpoints(args) -> int:
    r = compare(args.a, args.b, atol=args.atol)

    def human(r):
        lines = [f"{r['kind']} checkpoints: {r['tensors_a']} vs {r['tensors_b']} tensors, max|diff| "
                 f"{r['max_abs_diff']:.3e} -> {'EQUAL' if r['equal'] else 'DIFFERENT'} (atol {r['atol']:g})"]
        lines += [f"  only in A: {k}" for k in r["only_in_a"][:20]]
        lines += [f"  only in B: {k}" for k in r["only_in_b"][:20]]
        lines += [f"  {m['key']}: {m['reason']}" for m in r["mismatched"][:20]]
        return "\n".join(lines)

    emit(r, args.json, human)
    if not r["equal"]:
        raise CommandFailed(f"checkpoints differ: {len(r['only_in_a'])} only in A, {len(r['only_in_b'])} only in B, "
                            f"{len(r['mismatched'])} mismatched")
    return 0


def _human(r: dict) -> str:
    lines = [f"parity {r['model_type']} tp={r['tp']} pp={r['pp']} ep={r['ep']} dp={r['dp']} "
             f"({r['world_size']} {r['platform']} ranks, {r['dtype']}): "
             f"max|diff|={r['max_abs_diff']:.3e} mean|diff|={r['mean_abs_diff']:.3e} "
             f"argmax agreement={r['argmax_agreement']:.4f} -> {'PASS' if r['passed'] else 'FAIL'} (atol {r['atol']:g})",
             "  layer stage   max|diff|   mean|diff|"]
    lines += [f"  {row['layer']:5d} {row['stage']:5d}  {row['max_abs_diff']:.3e}  {row['mean_abs_diff']:.3e}"
              for row in r["per_layer"]]
    if r.get("mtp_reason"):
        lines.append(f"  mtp: {r['mtp_reason']}")
    return "\n".join(lines)


def run_parity(args) -> int:
    cfg = ModelConfig.from_hf(Path(args.hf))  # fail early, with the file named, on a bad config
    # ... and on MTP tensors the policy refuses (the ranks decide again and rank 0 logs the decision)
    resolve_mtp(cfg, HFCheckpoint(args.hf) if args.mcore is None else MegatronAsHF(args.mcore), args.mtp, warn=False)
    stage_counts = [int(x) for x in args.stage_layers.split(",")] if args.stage_layers else None
    kwargs = dict(tp=args.tp, pp=args.pp, ep=args.ep, dtype=args.dtype, stage_layer_counts=stage_counts,
                  batch=args.batch, seq=args.seq, seed=args.seed, mcore_dir=args.mcore, mtp=args.mtp)
    if read_env().launcher != "single":  # under torchrun or srun: this process is one rank
        report = run_parity_rank(args.hf, **kwargs)
        if report is None:
            return 0
    else:
        nproc = args.nproc or default_nproc(args.tp, args.pp, args.ep)
        report = launch.spawn(_parity_worker, nproc, args.hf, kwargs)[0]
    atol = args.atol if args.atol is not None else DEFAULT_ATOL[args.dtype]
    report.update(atol=atol, passed=report["max_abs_diff"] <= atol)
    emit(report, args.json, _human)
    if not report["passed"]:
        raise CommandFailed(f"max_abs_diff {report['max_abs_diff']:.3e} above tolerance {atol:g}")
    return 0


def _parity_worker(hf: str, kwargs: dict):
    return run_parity_rank(hf, **kwargs)
