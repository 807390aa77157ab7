"""``megatron-ads train lm --config FILE.yaml [key=value ...] [--nproc N]``

Runs under torchrun/srun (each process is one rank) or alone; with ``--nproc N`` on CPU it starts
N gloo workers itself. ``sft`` trains the multi-task label+reasoning model; ``grpo`` aligns it with downstream
rewards (rollouts on the inference engine in-process); ``rm`` trains a reward model on the backbone, by ``rm.kind``:
pair, a performance reward model (scalar head, Bradley–Terry or pointwise) on pairs mined from synthetic
multitext logs; token, TPPO's token-level reward model (3-class token head) on word-labeled user_query_gen
responses; ``ppo`` is ``grpo`` with ``grpo.algo=ppo`` (token-level PPO with a value head, TPPO).
"""

from __future__ import annotations

from pathlib import Path

from megatron_ads.cli import emit
from megatron_ads.cli.workers import grpo_worker, rm_worker_for, sft_worker, train_worker
from megatron_ads.config.model import MTP_POLICIES
from megatron_ads.config.train import JobConfig
from megatron_ads.runtime import log as logs
from megatron_ads.runtime.dist import read_env
from megatron_ads.runtime.launch import spawn


def register(p) -> None:
    p.add_argument("mode", choices=("lm", "sft", "grpo", "ppo", "rm"),
                   help="lm: next-token prediction; sft: multi-task label+reasoning SFT with reweighting; "
                   "grpo: GRPO with downstream rewards (init from an SFT checkpoint: model.init=mcore model.path=DIR); "
                   "ppo: token-level PPO with a value head (= grpo with grpo.algo=ppo; TPPO with a token reward model); "
                   "rm: a reward model by rm.kind: pair (default; performance RM, rm.objective bt|pointwise, on multitext "
                   "preference pairs) or token (TPPO's token-level RM on word-labeled user_query_gen responses)")
    p.add_argument("--config", required=True, help="job YAML (see launch/configs/)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=10 out_dir=runs/x resume=auto")
    p.add_argument("--nproc", type=int, default=None, help="start N local gloo workers (CPU)")
    p.add_argument("--no-stub-moe-optimizer", action="store_true",
                   help="debug: do not give expert-less ranks an expert-side optimizer (reproduces the hang)")
    p.add_argument("--mtp", choices=MTP_POLICIES, default=None,
                   help="MTP layers config.json declares (same as model.mtp=...): require, auto (default: build "
                   "without them when the init checkpoint holds none) or drop")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.overrides)
    if args.no_stub_moe_optimizer:
        overrides.append("optim.stub_moe_optimizer=false")
    if args.mtp is not None:
        overrides.append(f"model.mtp={args.mtp}")
    if args.mode == "ppo":
        overrides.append("grpo.algo=ppo")
    job = JobConfig.load(args.config, overrides)
    worker = {"sft": sft_worker, "grpo": grpo_worker, "ppo": grpo_worker}.get(args.mode, train_worker)
    if args.mode == "rm":
        worker = rm_worker_for(job.rm.kind)
    world_needed = job.parallel.tp * job.parallel.pp
    log_dir = Path(job.out_dir) / "logs"  # every rank's full log (DEBUG): <out_dir>/logs/rank_R.log
    if read_env().launcher != "single" or (args.nproc or 1) == 1:
        logs.add_file(log_dir)
        try:
            result = worker(job.to_dict())
        finally:
            logs.remove_file()
        if result is None:
            return 0
    else:
        if args.nproc % world_needed:
            raise ValueError(f"--nproc {args.nproc}: must be a multiple of tp*pp = {world_needed}")
        result = spawn(worker, args.nproc, job.to_dict(), env={logs.DIR_ENV: str(log_dir)})[0]
    if read_env().rank != 0:
        return 0
    emit(result, args.json, lambda r: (f"trained {r['steps']} steps on {r['world_size']} ranks (dp={r['dp']}): loss "
                                       f"{r['first_loss']:.4f} -> {r['last_loss']:.4f}; run dir {r['out_dir']}"
                                       if r["first_loss"] is not None else f"nothing to do: at step {r['steps']}")
         + _held_out(r))
    return 0


def _held_out(r: dict) -> str:
    """The summary's tail for a reward-model run: its held-out pairwise accuracy (pair) or query AUC (token)."""
    test = r.get("test") or {}
    if "query_auc" in test:
        return (f"; held-out token accuracy {test['token_acc']:.4f}, query AUC {test['query_auc']:.4f} on "
                f"{test['n_queries']} test queries")
    if "pairwise_acc" not in test:
        return ""
    return (f"; held-out pairwise accuracy {test['pairwise_acc']:.4f} on {test['n_pairs']} test pairs "
            f"({test['objective']})")
