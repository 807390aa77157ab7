"""General ability through ads SFT (AdNanny Table 8, in shape on the tiny CPU model): does ads-only SFT lose it, and
does a small mix of general instruction data keep it without costing the ads metrics?

    python benchmarks/generalization.py [--workdir DIR] [--fast] [--base-steps B] [--sft-steps S] [--general-rows N]
        [--general-weight W] [--parallel P] [--set key=value ...] [--base-set ...] [--sft-set ...]
                                                                                    (make generalization)

The paper: ads-only SFT drops the average public-benchmark score 0.867 -> 0.819 (-5.5% relative); with a small
mix of public instruction data it stays at 0.867. Here, all runs on ``launch/configs/sft_tiny_cpu.yaml``:

0. **general corpus**: ``megatron-ads data synth --task general --n N`` (``data/general.py``: generated
   instructions with exact answers; no public instruction set ships with an installed package), 10% of it held
   out by the SFT data loading (``sft.data_seed``), the same rows for every run;
1. **base**: ``train sft sft.tasks=[general]`` from random weights (``--base-steps``), its BPE tokenizer also
   trained on query_ad / ad_user rows (``sft.tokenizer_tasks``) so that the ads runs after it tokenize ads text
   as compactly as an ads run would;
2. **ads-only**: ``train sft`` of the recipe's tasks (query_ad + ad_user) from the base checkpoint
   (``model.init=mcore``, which also takes the base's tokenizer), ``sft.general_weight=0``: the general rows are
   not trained on, only scored;
3. **mix**: the same with ``sft.general_weight=W`` (``--general-weight``, default 0.1: a tenth of the examples and
   of λ). Runs 2 and 3 run in parallel (``--parallel``, default 2).

Every SFT run's test report (``eval/report.json``) holds the held-out general metrics (mean response NLL per
token, perplexity, greedy exact match, per family) and the ads metrics on the held-out test split (query–ad
Bad-view BACC, location BACC, ad–user AUC); the base run's ads metrics come from ``megatron-ads label`` +
``megatron-ads eval`` on the same test rows (it never saw an ads label: chance level). Finished runs in
``--workdir`` are reused when their saved config has the same settings (else refused: use another workdir). Prints a markdown table, then, last, one JSON object: ``base``, ``ads_only``, ``mix``
(each: ``nll``, ``ppl``, ``exact_match``, ``exact_match_by_family``, ``bad_view_bacc``, ``location_bacc``,
``auc``, ``steps``, ``wall_s``), ``exact_match_drop_rel`` (ads-only vs base), ``exact_match_recovered`` and
``nll_recovered`` (share of the ads-only loss the mix wins back), ``ads_max_diff_points`` (largest |mix -
ads-only| ads metric, in points), ``general_weight``, ``general_rows``, ``fast``, ``wall_s``.

``--fast``: tiny step and row counts (the smoke test in ``tests/distributed/test_bench_generalization.py``).
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_ads.cli import main as cli_main
from megatron_ads.config.train import JobConfig
from megatron_ads.data.sft_data import load_sft_data
from megatron_ads.data.tasks import task
from megatron_ads.runtime.io import write_jsonl

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "megatron_ads"]
CFG = REPO / "launch" / "configs" / "sft_tiny_cpu.yaml"
ADS = (  # (key, column, task, path in the task's eval metrics)
    ("bad_view_bacc", "query–ad Bad-view BACC", "query_ad", ("bad_view", "BACC")),
    ("location_bacc", "location BACC", "query_ad", ("location", "BACC")),
    ("auc", "ad–user AUC", "ad_user", ("AUC",)),
)
FAST = ["sft.train_size=300", "sft.val_rows=4", "sft.test_rows=8", "train.micro_batch=4", "train.log_every=2"]
RUNS = (("base", "base (general only)"), ("ads_only", "ads-only SFT"), ("mix", "ads + general mix SFT"))


def _run(args: list[str], log: Path) -> None:
    """A CLI command in a subprocess; its output goes to ``log`` (shown on failure)."""
    with open(log, "w") as f:
        p = subprocess.run([*CLI, *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=os.environ.copy())
    if p.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"failed (exit {p.returncode}): megatron-ads {' '.join(args)}\n--- {log} (last lines)\n{tail}")


def corpus(work: Path, n: int) -> Path:
    """The general instruction corpus (``data synth --task general``, seed 0), written once per workdir."""
    out = work / f"general_{n}.jsonl"
    if not out.is_file():
        _run(["data", "synth", "--task", "general", "--n", str(n), "--out", str(out), "--seed", "0"],
             work / "synth.log")
    return out


def _settings(job: JobConfig) -> dict:
    """What makes two runs the same run: the whole job config but where it is written and how it started."""
    d = job.to_dict()
    d.pop("out_dir", None)
    d.pop("resume", None)
    return d


def train(out: Path, overrides: list[str]) -> float:
    """``train sft`` into ``out`` (skipped when its test report and checkpoint exist and its saved config has
    these settings; a finished run with other settings is refused); wall seconds."""
    wall_file = out / "wall.json"
    if (out / "eval" / "report.json").is_file() and (out / "checkpoints").is_dir() and wall_file.is_file():
        want = _settings(JobConfig.load(CFG, [f"out_dir={out}", "resume=none", *overrides]))
        have = _settings(JobConfig.load(out / "config.yaml"))
        if have != want:
            diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise SystemExit(f"{out}: a finished run made with other settings (differing sections: {diff}, e.g. "
                             f"train.steps {have.get('train', {}).get('steps')} vs {want.get('train', {}).get('steps')})"
                             f"; use another --workdir")
        return float(json.loads(wall_file.read_text())["wall_s"])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _run(["train", "sft", "--config", str(CFG), f"out_dir={out}", "resume=none", *overrides], out / "train.log")
    wall = time.time() - t0
    wall_file.write_text(json.dumps({"wall_s": round(wall, 1)}))
    return wall


def _dig(d: dict, path: tuple[str, ...]) -> float:
    for k in path:
        d = d[k]
    return float(d)


def read_report(out: Path) -> dict:
    """General and ads metrics of a finished SFT run (its ``eval/report.json``; ads keys absent when not trained)."""
    report = json.loads((out / "eval" / "report.json").read_text())
    g = report["general"]
    row = {"nll": g["nll"], "ppl": g["ppl"], "exact_match": g["exact_match"],
           "exact_match_by_family": g["exact_match_by_family"], "general_test_rows": g["n"]}
    for key, _, name, path in ADS:
        if name in report:
            row[key] = _dig(report[name], path)
    return row


def base_ads(base: Path, overrides: list[str], work: Path) -> dict:
    """The base model's ads metrics on the SFT runs' held-out test rows (``label`` + ``eval``), computed once."""
    done = work / "base_ads.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = JobConfig.load(CFG, overrides)
    data = load_sft_data(cfg.sft)
    res: dict = {}
    for name in sorted({n for _, _, n, _ in ADS}):
        rows = data[name]["test"][: cfg.sft.test_rows]
        inp, gold, pred = (work / f"base_{name}.{k}.jsonl" for k in ("in", "gold", "pred"))
        write_jsonl(inp, rows)
        write_jsonl(gold, [task(name).gold(r) for r in rows])
        pred.unlink(missing_ok=True)
        _run(["label", "--model", str(base), "--input", str(inp), "--output", str(pred), "--task", name,
              "--batch-size", "16"], work / f"base_label_{name}.log")
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = cli_main(["eval", "--pred", str(pred), "--gold", str(gold), "--task", name, "--json"])
        if rc != 0:
            raise SystemExit(f"megatron-ads eval --task {name} --pred {pred}: exit {rc}")
        m = json.loads(buf.getvalue())
        for key, _, t, path in ADS:
            if t == name:
                res[key] = _dig(m, path)
    done.write_text(json.dumps(res))
    return res


def _recovered(base: float, ads: float, mix: float) -> float:
    """Share of the ads-only change from base that the mix wins back (1: all of it; nan without a change)."""
    return (mix - ads) / (base - ads) if base != ads else math.nan


def _pct(x: float, fmt: str = ".0f") -> str:
    return "n/a" if math.isnan(x) else f"{100 * x:{fmt}}%"


def table(res: dict, steps: dict) -> str:
    cols = ["general NLL / token", "perplexity", "exact match"] + [c for _, c, _, _ in ADS] + ["steps", "wall s"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in RUNS:
        r = res[key]
        vals = [f"{r['nll']:.4f}", f"{r['ppl']:.3f}", f"{r['exact_match']:.3f}"]
        vals += [f"{r[k]:.3f}" if k in r else "—" for k, _, _, _ in ADS]
        vals += [str(steps[key]), f"{r['wall_s']:.0f}"]
        lines.append(f"| {label} | " + " | ".join(vals) + " |")
    fams = sorted(res["base"]["exact_match_by_family"])
    lines += ["", "| exact match by family | " + " | ".join(label for _, label in RUNS) + " |", "|---" * 4 + "|"]
    for f in fams:
        lines.append(f"| {f} | " + " | ".join(f"{res[k]['exact_match_by_family'].get(f, math.nan):.3f}"
                                              for k, _ in RUNS) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="runs, corpus and logs (default: a temp dir); finished runs "
                                                    "found there are reused")
    ap.add_argument("--fast", action="store_true", help="tiny step and row counts: a smoke run, not a measurement")
    ap.add_argument("--base-steps", type=int, default=None, help="base (general-only) steps (default: 1500; --fast: 4)")
    ap.add_argument("--sft-steps", type=int, default=None, help="steps of each ads SFT run (default: 3000; --fast: 4)")
    ap.add_argument("--general-rows", type=int, default=None,
                    help="general corpus rows, 10%% held out (default: 2000; --fast: 200)")
    ap.add_argument("--general-weight", type=float, default=0.1, help="sft.general_weight of the mix run "
                                                                      "(default: %(default)s)")
    ap.add_argument("--parallel", type=int, default=2, help="SFT runs at a time (default: %(default)s)")
    ap.add_argument("--set", dest="common", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run")
    ap.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE", help="extra base override")
    ap.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="extra ads SFT override")
    args = ap.parse_args()
    if not 0.0 < args.general_weight < 1.0:
        ap.error(f"--general-weight: expected 0 < w < 1, got {args.general_weight}")
    if args.parallel < 1:
        ap.error(f"--parallel: expected >= 1, got {args.parallel}")
    base_steps = args.base_steps or (4 if args.fast else 1500)
    sft_steps = args.sft_steps or (4 if args.fast else 3000)
    rows = args.general_rows or (200 if args.fast else 2000)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="generalization_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    general = corpus(work, rows)
    common = [f"sft.general_path={general}", "checkpoint.every=0", *(FAST if args.fast else []), *args.common]
    base_dir = work / "base"
    base = [*common, "sft.tasks=[general]", "sft.tokenizer_tasks=[query_ad, ad_user]", f"train.steps={base_steps}",
            f"sft.eval_every={base_steps}", "checkpoint.save_at_end=true", *args.base_set]
    walls = {"base": train(base_dir, base)}
    eval_every = sft_steps if args.fast else max(1, sft_steps // 6)
    sft = [*common, "model.init=mcore", f"model.path={base_dir / 'checkpoints'}", f"train.steps={sft_steps}",
           f"sft.eval_every={eval_every}", "checkpoint.save_at_end=true", *args.sft_set]
    arms = {"ads_only": [*sft, "sft.general_weight=0"], "mix": [*sft, f"sft.general_weight={args.general_weight}"]}
    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        futures = {k: pool.submit(train, work / k, v) for k, v in arms.items()}
        walls.update({k: f.result() for k, f in futures.items()})
    res = {k: read_report(work / k) for k, _ in RUNS}
    res["base"].update(base_ads(base_dir, arms["ads_only"], work))
    for k in res:
        res[k]["wall_s"] = walls[k]
    steps = {"base": base_steps, "ads_only": sft_steps, "mix": sft_steps}
    print(table(res, steps))
    b, a, m = res["base"], res["ads_only"], res["mix"]
    out = {**{k: dict(v, steps=steps[k]) for k, v in res.items()},
           "exact_match_drop_rel": (b["exact_match"] - a["exact_match"]) / b["exact_match"] if b["exact_match"] else math.nan,
           "exact_match_recovered": _recovered(b["exact_match"], a["exact_match"], m["exact_match"]),
           "nll_recovered": _recovered(b["nll"], a["nll"], m["nll"]),
           "ads_max_diff_points": max(abs(m[k] - a[k]) * 100 for k, _, _, _ in ADS),
           "general_weight": args.general_weight, "general_rows": rows, "fast": args.fast,
           "wall_s": round(time.time() - t0, 1)}
    print(f"ads-only vs base: exact match {a['exact_match'] - b['exact_match']:+.3f} "
          f"({_pct(-out['exact_match_drop_rel'], '+.1f')} relative), NLL {a['nll'] - b['nll']:+.4f}; "
          f"mix recovers {_pct(out['exact_match_recovered'])} of the exact-match drop and "
          f"{_pct(out['nll_recovered'])} of the NLL rise; ads metrics mix vs ads-only within "
          f"{out['ads_max_diff_points']:.2f} points")
    print(f"workdir: {work}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
