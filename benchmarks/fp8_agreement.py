"""FP8 vs BF16 labels on an SFT-trained model's held-out split (AdNanny Table 9: FP8 83.38 vs BF16 83.01).

    python benchmarks/fp8_agreement.py --run RUN [--rows 256] [--tasks query_ad,ad_user] [--workdir DIR] [--json]

``RUN`` is a finished ``megatron-ads train sft`` run (e.g. ``launch/configs/sft_tiny_cpu.yaml``). In one run:

1. its newest checkpoint is exported three times with ``megatron-ads convert mcore-to-hf``: ``--dtype fp32``
   (the trained weights as they are, a reference for how much BF16 itself moves the labels), ``bf16`` and
   ``fp8`` (DeepSeek's 128x128 block-scaled E4M3 weights with ``weight_scale_inv``);
2. the run's held-out **test** split is rebuilt from its saved ``config.yaml`` (the same rows its
   ``eval/report.md`` scored: ``data.sft_data.load_sft_data``, first ``--rows`` of each task), written as
   label input (``IN.jsonl``) and gold (``GOLD.jsonl``);
3. ``megatron-ads label`` (label-only mode) runs on each export: fp32 on the fp32 one, bf16 on the bf16 one and
   ``--precision fp8`` on the FP8 one, once per FP8 linear backend of ``--fp8-backends``
   (``MEGATRON_ADS_FP8_BACKEND``): ``reference`` dequantizes the weights at load (weight-only FP8, the CPU
   default), ``emulated`` also quantizes activations per token per 128 channels and rescales per K block
   in fp32 (W8A8, what the Triton and ``_scaled_mm`` kernels compute on GPU); ``megatron-ads eval`` scores
   every output against the gold rows;
4. the table: per task and precision the metric suite (BACC per view for query-ad, AUC/BACC for ad-user),
   and the share of rows whose predicted labels (every field) are identical to BF16's.

Targets (issue 13): labels agree on >= 99% of rows and BACC within 0.5 point. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_ads.config.train import JobConfig
from megatron_ads.data.sft_data import load_sft_data
from megatron_ads.data.tasks import task
from megatron_ads.runtime.io import iter_jsonl, write_jsonl

CLI = [sys.executable, "-m", "megatron_ads"]
PRED_KEYS = ("labels", "score", "queries")
"""The prediction fields of a label output row that must agree between precisions."""


def _cli(*args: str, env: dict | None = None) -> dict:
    out = subprocess.run([*CLI, *args, "--json"], check=True, capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    return json.loads(out.stdout)


def _headline(metrics: dict) -> dict[str, float]:
    """BACC and AUC of every view (query-ad nests them per view; ad-user has them at the top)."""
    flat = {f"{k} {kk}": vv for k, v in metrics.items() if isinstance(v, dict) for kk, vv in v.items()}
    flat.update({k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return {k: float(v) for k, v in flat.items() if k.split()[-1] in ("BACC", "AUC") and isinstance(v, (int, float))}


def _preds(path: Path) -> dict[str, dict]:
    return {str(r["id"]): {k: r[k] for k in PRED_KEYS if k in r} for _, r in iter_jsonl(path)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a finished `train sft` run directory")
    ap.add_argument("--rows", type=int, default=256, help="held-out rows per task (default: %(default)s)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: the run's sft.tasks)")
    ap.add_argument("--batch-size", type=int, default=16, help="label batch size (default: %(default)s)")
    ap.add_argument("--fp8-backends", default="reference,emulated",
                    help="FP8 linear backends to label with (default: %(default)s)")
    ap.add_argument("--workdir", default=None, help="keep exports and outputs here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    run = Path(args.run)
    cfg = JobConfig.load(run / "config.yaml")
    names = args.tasks.split(",") if args.tasks else list(cfg.sft.tasks)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="fp8_agreement_"))
    work.mkdir(parents=True, exist_ok=True)
    exports = {}
    for dtype in ("fp32", "bf16", "fp8"):
        exports[dtype] = work / f"hf_{dtype}"
        if not (exports[dtype] / "config.json").is_file():
            _cli("convert", "mcore-to-hf", "--mcore", str(run), "--out", str(exports[dtype]), "--dtype", dtype,
                 "--quiet")
    data = load_sft_data(cfg.sft)
    results: dict[str, dict] = {}
    for name in names:
        t = task(name)
        rows = data[name]["test"][: args.rows]
        inp, gold = work / f"{name}.in.jsonl", work / f"{name}.gold.jsonl"
        write_jsonl(inp, rows)
        write_jsonl(gold, [t.gold(r) for r in rows])
        per: dict[str, dict] = {}
        variants = [("fp32", "fp32", None), ("bf16", "bf16", None)]
        variants += [(f"fp8_{b}", "fp8", b) for b in args.fp8_backends.split(",")]
        for label, prec, backend in variants:
            out = work / f"{name}.{label}.jsonl"
            # --resume: an output left by an earlier (possibly interrupted) run is completed, never trusted as is
            _cli("label", "--model", str(exports[prec]), "--input", str(inp), "--output", str(out),
                 "--task", name, "--precision", prec, "--batch-size", str(args.batch_size),
                 *(["--resume"] if out.is_file() else []),
                 env={"MEGATRON_ADS_FP8_BACKEND": backend} if backend else None)
            metrics = _cli("eval", "--pred", str(out), "--gold", str(gold), "--task", name)
            per[label] = _headline(metrics)
            per[label]["_preds"] = _preds(out)
        base = per["bf16"]["_preds"]
        agree = {label: sum(base[i] == p["_preds"].get(i) for i in base) / len(base) if base else None
                 for label, p in per.items() if label != "bf16"}
        for p in per.values():
            p.pop("_preds")
        results[name] = {"rows": len(rows), "agreement_with_bf16": agree, **per}
    if args.json:
        print(json.dumps({"run": str(run), "workdir": str(work), "tasks": results}, indent=1))
        return 0
    print(f"run {run}  (exports and outputs in {work})")
    for name, r in results.items():
        labels = [k for k in r if k not in ("rows", "agreement_with_bf16")]
        keys = list(r["bf16"])
        print(f"\n{name}: {r['rows']} held-out rows")
        print("| precision | labels = bf16's | " + " | ".join(keys) + " |")
        print("|---" * (len(keys) + 2) + "|")
        for label in labels:
            a = r["agreement_with_bf16"].get(label)
            print(f"| {label} | {'-' if a is None else f'{100 * a:.2f}%'} | "
                  + " | ".join(f"{100 * r[label][k]:.2f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
