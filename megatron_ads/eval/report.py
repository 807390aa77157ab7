"""Training reports: PNG plots of an SFT run directory (loss, validation metrics, λ_t, instance weights).

Reads ``metrics.jsonl`` (one record per step) and ``val_metrics.jsonl`` (one per validation
interval, with ``lambda/<task>`` and a ``weights`` histogram) and writes ``plots/``:

- ``loss.png``          training loss per step
- ``val_metrics.png``   every validation metric (BACC, AUC, ...) per interval
- ``lambda.png``        task weights λ_t per interval (Eq. 7)
- ``weights_step<N>.png`` histogram of the instance weights (Eq. 5) used during the interval ending at step N
"""

from __future__ import annotations

import json
from pathlib import Path

from megatron_ads.eval.png import histogram_counts, line_chart


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being appended right now
                continue
    return out


def plot_sft_run(run_dir: str | Path) -> list[Path]:
    """(Re)write the run's PNG plots; returns the files written."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    steps = [r for r in _read_jsonl(run_dir / "metrics.jsonl") if r.get("loss") is not None]
    if steps:
        written.append(line_chart(plots / "loss.png", {"loss": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                                  "SFT training loss", ylabel="loss"))
    val = _read_jsonl(run_dir / "val_metrics.jsonl")
    if val:
        xs = [r["step"] for r in val]
        metric_keys = sorted({k for r in val for k, v in r.items()
                              if "/" in k and not k.startswith("lambda/") and isinstance(v, (int, float))})
        if metric_keys:
            written.append(line_chart(plots / "val_metrics.png", {k: (xs, [r.get(k) for r in val]) for k in metric_keys},
                                      "Validation metrics", ylabel="metric", ylim=(0.0, 1.0)))
        lam_keys = sorted({k for r in val for k in r if k.startswith("lambda/")})
        if lam_keys:
            written.append(line_chart(plots / "lambda.png",
                                      {k.split("/", 1)[1]: (xs, [r.get(k) for r in val]) for k in lam_keys},
                                      "Task weights lambda_t (Eq. 7)", ylabel="lambda", ylim=(0.0, 1.0)))
        for r in val:
            w = r.get("weights")
            if isinstance(w, dict) and sum(w.get("counts", [])) > 0:
                written.append(histogram_counts(plots / f"weights_step{r['step']}.png", w["counts"], w["edges"],
                                                f"Instance weights, steps to {r['step']} (Eq. 5)", xlabel="w"))
    return written
