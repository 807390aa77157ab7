"""SFT tiny -> GRPO tiny -> held-out eval (issue 14): does GRPO with downstream rewards raise recall@K of the
generated queries without losing the labeling quality?

    python benchmarks/grpo_tiny.py [--seeds N] [--first-seed S] [--fast] [--workdir DIR] [--rows R] [--sft-steps S]
        [--grpo-steps S] [--sft-set key=value ...] [--grpo-set key=value ...]      (make grpo-tiny)

Per seed s (``train.seed = 1 + s`` in both runs; the data, its held-out split and the ad corpus stay fixed):

1. **SFT**: ``megatron-ads train sft --config launch/configs/sft_tiny_cpu.yaml`` with query_gen added to its
   tasks (``sft.tasks=[query_ad, ad_user, query_gen]``) and a shorter schedule (``--sft-steps``, default 5000
   of the recipe's 7000, so that the whole experiment fits ~30 min on 2 cores), no test report of its own;
2. **GRPO**: ``megatron-ads train grpo --config launch/configs/grpo_tiny_cpu.yaml`` from the SFT run's checkpoint
   (``model.init=mcore``) over the same three tasks: ``recall_at_k`` (+ ``format``) for query_gen, ``label``
   (+ ``format``) for query_ad and ad_user (``--grpo-steps``, default 200; the recipe's lr 5e-5);
3. **held-out eval** of both models on the first ``--rows`` test rows of each task (rows neither run trained on):
   ``megatron-ads label`` (label mode for query_ad / ad_user, reasoning mode = greedy generation for query_gen)
   on the run directories, then ``megatron-ads eval``: recall@K of query_gen with the reward's frozen
   retriever (MiniLM + faiss over the synthetic ad corpus), Bad-view BACC of query_ad, AUC of ad_user.

``--fast``: tiny step counts and row counts (the smoke test in ``tests/distributed/test_grpo_tiny.py``): a check
that the pipeline runs, not a measurement. Extra ``key=value`` overrides go to SFT (``--sft-set``) or GRPO
(``--grpo-set``). The last line printed is one JSON object: ``recall_at_k_sft``, ``recall_at_k_grpo``,
``bacc_sft``, ``bacc_grpo``, ``auc_sft``, ``auc_grpo`` (means over seeds; ``*_std`` the population std and
``per_seed`` the values when ``--seeds`` > 1), ``k``, ``rows``, ``seeds``, ``wall_s``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megatron_ads.cli import main as cli_main
from megatron_ads.config.train import JobConfig
from megatron_ads.data.sft_data import load_sft_data
from megatron_ads.data.tasks import task
from megatron_ads.runtime.io import write_jsonl

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "megatron_ads"]
SFT_CFG = REPO / "launch" / "configs" / "sft_tiny_cpu.yaml"
GRPO_CFG = REPO / "launch" / "configs" / "grpo_tiny_cpu.yaml"
TASKS = "[query_ad, ad_user, query_gen]"
REWARDS = ("grpo.rewards={query_ad: {label: 1.0, format: 0.5}, ad_user: {label: 1.0, format: 0.5}, "
           "query_gen: {recall_at_k: 1.0, format: 0.5}}")
KEYS = ("recall_at_k", "bacc", "auc")
FAST_SFT = ["sft.train_size=300", "sft.val_rows=4", "train.micro_batch=4", "train.log_every=10"]
FAST_GRPO = ["sft.train_size=300", "train.seq_len=160", "grpo.max_new_tokens=12", "grpo.group_size=4",
             "train.micro_batch=8"]


def _run(args: list[str], log: Path) -> None:
    """A CLI command in a subprocess; its output goes to ``log`` (shown on failure)."""
    with open(log, "w") as f:
        p = subprocess.run([*CLI, *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    if p.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"failed (exit {p.returncode}): megatron-ads {' '.join(args)}\n--- {log} (last lines)\n{tail}")


def _eval(pred: Path, gold: Path, name: str, extra: list[str]) -> dict:
    """``megatron-ads eval ... --json`` (in this process: the retriever's embedder loads once per call)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli_main(["eval", "--pred", str(pred), "--gold", str(gold), "--task", name, "--json", *extra])
    if rc != 0:
        raise SystemExit(f"megatron-ads eval --task {name} --pred {pred}: exit {rc}")
    return json.loads(buf.getvalue())


def held_out(cfg: JobConfig, rows: int, work: Path) -> dict[str, tuple[Path, Path]]:
    """Input and gold JSONL of the first ``rows`` test rows of each task (the split the runs never train on)."""
    data = load_sft_data(cfg.sft)
    out = {}
    for name in ("query_gen", "query_ad", "ad_user"):
        test = data[name]["test"][:rows]
        if not test:
            raise SystemExit(f"{name}: the held-out split is empty (raise sft.train_size)")
        inp, gold = work / f"{name}.in.jsonl", work / f"{name}.gold.jsonl"
        write_jsonl(inp, test)
        write_jsonl(gold, [task(name).gold(r) for r in test])
        out[name] = (inp, gold)
    return out


def evaluate_run(run: Path, tag: str, data: dict[str, tuple[Path, Path]], work: Path, args, ads_seed: int) -> dict:
    """recall@K (query_gen), Bad-view BACC (query_ad), AUC (ad_user) of the model in training run ``run``."""
    res = {}
    for name, (inp, gold) in data.items():
        pred = work / f"{name}.{tag}.pred.jsonl"
        done = work / f"{name}.{tag}.metrics.json"
        if done.is_file():  # evaluated before (a finished run of this workdir, e.g. a seed run in parallel)
            m = json.loads(done.read_text())
            res.update(_headline(name, m))
            continue
        mode = ["--mode", "reasoning", "--max-new-tokens", str(args.gen_tokens)] if name == "query_gen" else []
        _run(["label", "--model", str(run), "--input", str(inp), "--output", str(pred), "--task", name,
              "--batch-size", str(args.batch_size), *mode], work / f"label_{name}_{tag}.log")
        extra = ["--recall-k", str(args.k), "--ads-seed", str(ads_seed)] if name == "query_gen" else []
        m = _eval(pred, gold, name, extra)
        tmp = done.with_suffix(".tmp")
        tmp.write_text(json.dumps(m, indent=1))
        tmp.replace(done)
        res.update(_headline(name, m))
    return res


def _headline(name: str, m: dict) -> dict:
    """The figures the experiment reports from one task's ``eval`` metrics."""
    if name == "query_gen":
        return {"recall_at_k": m["recall_at_k"], "recall_at_k_keyword": m["recall_at_k_keyword"],
                "query_gen_malformed": m["malformed"] / max(1, m["n"])}
    if name == "query_ad":
        return {"bacc": m["bad_view"]["BACC"]}
    return {"auc": m["AUC"]}


def one_seed(seed: int, args, root: Path) -> dict:
    work = root / f"seed{seed}"
    work.mkdir(parents=True, exist_ok=True)
    sft_out, grpo_out = work / "sft", work / "grpo"
    t0 = time.time()
    sft = [f"out_dir={sft_out}", f"sft.tasks={TASKS}", f"train.seed={1 + seed}", f"train.steps={args.sft_steps}",
           "sft.test_rows=0", "checkpoint.every=0", "checkpoint.save_at_end=true", "resume=none",
           f"sft.eval_every={args.sft_eval_every or (args.sft_steps if args.fast else max(1, args.sft_steps // 5))}"]
    sft += (FAST_SFT if args.fast else []) + args.sft_set
    if not (sft_out / "checkpoints").is_dir():
        _run(["train", "sft", "--config", str(SFT_CFG), *sft], work / "sft.log")
    t1 = time.time()
    grpo = [f"out_dir={grpo_out}", "model.init=mcore", f"model.path={sft_out / 'checkpoints'}",
            f"sft.tasks={TASKS}", REWARDS, f"train.seed={1 + seed}", f"train.steps={args.grpo_steps}",
            "checkpoint.every=0", "checkpoint.save_at_end=true", "resume=none"]
    grpo += (FAST_GRPO if args.fast else []) + args.grpo_set
    if not (grpo_out / "checkpoints").is_dir():
        _run(["train", "grpo", "--config", str(GRPO_CFG), *grpo], work / "grpo.log")
    t2 = time.time()
    cfg = JobConfig.load(GRPO_CFG, grpo)
    data = held_out(cfg, args.rows, work)
    out = {"seed": seed}
    for tag, run in (("sft", sft_out), ("grpo", grpo_out)):
        for k, v in evaluate_run(run, tag, data, work, args, cfg.sft.data_seed).items():
            out[f"{k}_{tag}"] = v
    out.update(sft_s=round(t1 - t0, 1), grpo_s=round(t2 - t1, 1), eval_s=round(time.time() - t2, 1))
    return out


def summarize(per_seed: list[dict], args, wall: float) -> dict:
    out: dict = {}
    for key in KEYS:
        for tag in ("sft", "grpo"):
            name = f"{key}_{tag}"
            xs = [float(r[name]) for r in per_seed]
            mean = sum(xs) / len(xs)
            out[name] = mean
            if len(xs) > 1:
                out[f"{name}_std"] = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    out.update(k=args.k, rows=args.rows, seeds=len(per_seed), fast=args.fast, wall_s=round(wall, 1))
    if len(per_seed) > 1:
        out["per_seed"] = per_seed
    else:
        out.update({k: v for k, v in per_seed[0].items() if k not in out and k != "seed"})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1, help="repeat with N training seeds; report mean ± std")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds first..first+N-1 (run seeds in parallel processes on one --workdir, then report "
                         "them all with --seeds N: finished runs are reused)")
    ap.add_argument("--fast", action="store_true", help="tiny step and row counts: a smoke run, not a measurement")
    ap.add_argument("--workdir", default=None, help="runs, predictions and logs (default: a temp dir); finished "
                                                    "runs found there are reused")
    ap.add_argument("--rows", type=int, default=None, help="held-out rows per task (default: 200; --fast: 6)")
    ap.add_argument("--sft-steps", type=int, default=None, help="SFT steps (default: 5000; --fast: 4)")
    ap.add_argument("--sft-eval-every", type=int, default=None, help="SFT validation interval (default: steps / 5; --fast: steps)")
    ap.add_argument("--grpo-steps", type=int, default=None, help="GRPO steps (default: 200; --fast: 2)")
    ap.add_argument("--k", type=int, default=10, help="K of recall@K (default: %(default)s, the reward's)")
    ap.add_argument("--gen-tokens", type=int, default=None,
                    help="query_gen eval: most generated tokens (default: 48, as the GRPO rollouts; --fast: 12)")
    ap.add_argument("--batch-size", type=int, default=16, help="label batch size (default: %(default)s)")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra SFT override")
    ap.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="extra GRPO override")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error(f"--seeds: expected >= 1, got {args.seeds}")
    if args.first_seed < 0:
        ap.error(f"--first-seed: expected >= 0, got {args.first_seed}")
    args.rows = args.rows or (6 if args.fast else 200)
    args.sft_steps = args.sft_steps or (4 if args.fast else 5000)
    args.grpo_steps = args.grpo_steps or (2 if args.fast else 200)
    args.gen_tokens = args.gen_tokens or (12 if args.fast else 48)
    root = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="grpo_tiny_"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    per_seed = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = one_seed(seed, args, root)
        per_seed.append(r)
        print(f"seed {seed}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in r.items() if k != "seed"), flush=True)
    out = summarize(per_seed, args, time.time() - t0)
    if args.seeds > 1:
        for key in KEYS:
            print(f"{key}: SFT {out[f'{key}_sft']:.4f} ± {out[f'{key}_sft_std']:.4f}   "
                  f"GRPO {out[f'{key}_grpo']:.4f} ± {out[f'{key}_grpo_std']:.4f}")
    print(f"workdir: {root}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
