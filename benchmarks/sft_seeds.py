"""The tiny multi-task SFT recipe over several training seeds (issue 18): headline held-out metrics as mean ± std.

    python benchmarks/sft_seeds.py [--seeds N] [--first-seed S] [--parallel P] [--workdir DIR] [--fast]
        [--set key=value ...]                                                      (make sft-seeds)

Seed s runs ``megatron-ads train sft --config launch/configs/sft_tiny_cpu.yaml train.seed=<1 + s>`` (the data,
its held-out split and the recipe stay fixed; the seed changes the initialization, the sampling order and the
dropout-free training noise), up to ``--parallel`` runs at a time, each in its own process and run directory
``<workdir>/seed<s>``; a run whose ``eval/report.json`` exists is reused (refused if it was made with other
overrides, e.g. ``--fast``), so an interrupted sweep resumes and seeds can be spread over several invocations. Per run it reads the held-out test report (``eval/report.json``:
query–ad Bad / Fair / location / quality BACC, ad–user AUC and BACC) and the smallest λ_t of every validation
(``val_metrics.jsonl``, against ``sft.lambda_min``), then prints a markdown table (per seed, mean ± population
std) and, last, one JSON object: ``metrics`` {name: {mean, std, per_seed}}, ``min_lambda``, ``seeds``,
``wall_s``, ``fast``.

``--fast``: tiny step and row counts (the smoke test in ``tests/distributed/test_bench_sft_seeds.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CFG = REPO / "launch" / "configs" / "sft_tiny_cpu.yaml"
FAST = ["train.steps=4", "sft.train_size=300", "sft.val_rows=4", "sft.eval_every=2", "sft.test_rows=8",
        "train.micro_batch=4", "train.log_every=2", "checkpoint.every=0", "checkpoint.save_at_end=false"]
METRICS = (  # (column, task, path in the task's report.json entry)
    ("query–ad Bad-view BACC", "query_ad", ("bad_view", "BACC")),
    ("Fair-view BACC", "query_ad", ("fair_view", "BACC")),
    ("quality BACC", "query_ad", ("quality", "BACC")),
    ("location BACC", "query_ad", ("location", "BACC")),
    ("ad–user AUC", "ad_user", ("AUC",)),
    ("ad–user BACC", "ad_user", ("BACC",)),
)


def run_seed(seed: int, work: Path, extra: list[str]) -> float:
    """Train seed ``seed`` into ``work/seed<seed>`` (skipped when its test report exists); wall seconds."""
    out = work / f"seed{seed}"
    if (out / "eval" / "report.json").is_file():
        done = json.loads((out / "wall.json").read_text()) if (out / "wall.json").is_file() else {}
        if done.get("overrides") != extra:
            raise SystemExit(f"{out}: a finished run with other overrides ({done.get('overrides')}) than these "
                             f"({extra}); use another --workdir")
        return float(done["wall_s"])
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "megatron_ads", "train", "sft", "--config", str(CFG), f"out_dir={out}",
            f"train.seed={1 + seed}", "resume=auto", *extra]
    t0 = time.time()
    with open(out / "train.log", "a") as log:
        p = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    wall = time.time() - t0
    if p.returncode != 0:
        tail = "\n".join((out / "train.log").read_text().splitlines()[-30:])
        raise SystemExit(f"seed {seed}: exit {p.returncode}: {' '.join(argv[2:])}\n--- {out / 'train.log'}\n{tail}")
    (out / "wall.json").write_text(json.dumps({"wall_s": round(wall, 1), "overrides": extra}))
    return wall


def read_seed(out: Path) -> dict:
    """Headline test metrics and the smallest λ_t over the validations of one finished run."""
    report = json.loads((out / "eval" / "report.json").read_text())
    row = {}
    for name, t, path in METRICS:
        v = report[t]
        for k in path:
            v = v[k]
        row[name] = float(v)
    lams = [v for line in (out / "val_metrics.jsonl").read_text().splitlines() if line.strip()
            for k, v in json.loads(line).items() if k.startswith("lambda/")]
    row["min λ"] = min(lams) if lams else math.nan
    return row


def mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))


def table(seeds: list[int], rows: list[dict], walls: list[float]) -> str:
    cols = [name for name, _, _ in METRICS] + ["min λ"]
    lines = ["| seed (train.seed) | " + " | ".join(cols) + " | wall s |", "|---" * (len(cols) + 2) + "|"]
    for s, r, w in zip(seeds, rows, walls, strict=True):
        lines.append(f"| {s} ({1 + s}) | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {w:.0f} |")
    stats = [mean_std([r[c] for r in rows]) for c in cols]
    lines.append("| **mean ± std** | " + " | ".join(f"**{m:.3f} ± {sd:.3f}**" for m, sd in stats) + " | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="number of training seeds (default: %(default)s)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 (default: %(default)s)")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time, one process each (default: %(default)s)")
    ap.add_argument("--workdir", default="runs/sft_seeds", help="run directories; finished runs are reused "
                                                                 "(default: %(default)s)")
    ap.add_argument("--fast", action="store_true", help="tiny step and row counts: a smoke run, not a measurement")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run")
    args = ap.parse_args()
    if args.seeds < 1 or args.first_seed < 0 or args.parallel < 1:
        ap.error("--seeds and --parallel: expected >= 1; --first-seed: expected >= 0")
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    extra = (FAST if args.fast else []) + args.overrides
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        walls = list(pool.map(lambda s: run_seed(s, work, extra), seeds))
    rows = [read_seed(work / f"seed{s}") for s in seeds]
    print(table(seeds, rows, walls))
    metrics = {}
    for name in [n for n, _, _ in METRICS]:
        m, sd = mean_std([r[name] for r in rows])
        metrics[name] = {"mean": m, "std": sd, "per_seed": [r[name] for r in rows]}
    print(json.dumps({"metrics": metrics, "min_lambda": min(r["min λ"] for r in rows), "seeds": seeds,
                      "wall_s": round(time.time() - t0, 1), "fast": args.fast}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
