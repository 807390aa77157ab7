"""SFT validation and the held-out test report: every task predicts through the ``Scorer`` the trainer was
given (label-candidate scoring or greedy decoding, ``data.tasks.Task.predict``), its metric
(``eval.metrics.METRICS``) scores the predictions, and the values logged per interval / λ_t's input
come from the metric's summary. The test report also scores held-out general instruction rows (response NLL,
perplexity, greedy exact match: ``general_report``). Also the interval's instance-weight histogram (Eq. 5),
reduced over every rank."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.config.train import SFTSpec
from megatron_ads.data.general import evaluate_general
from megatron_ads.data.synthetic import true_ctr, write_jsonl
from megatron_ads.data.tasks import GENERAL, Scorer, lambda_metric, normalized, task
from megatron_ads.eval.metrics import evaluate, markdown, metric, parsed_rows
from megatron_ads.runtime.io import write_text
from megatron_ads.runtime.log import get_logger

log = get_logger("megatron_ads.train.sft_loop")
WEIGHT_BINS = 16


def validate_tasks(names: list[str], data: dict[str, dict[str, list[dict]]], scorer: Scorer,
                   s: SFTSpec) -> tuple[dict[str, Any], dict[str, float]]:
    """Each task's validation values (``<task>/<key>``, plus an example output of generation tasks) and its
    normalized metric M_t for λ_t (Eq. 6)."""
    rec: dict[str, Any] = {}
    norm: dict[str, float] = {}
    for name in names:
        t = task(name)
        rows = data[name]["val"][: s.val_rows][: t.val_rows]
        preds = t.predict(rows, scorer)
        m = metric(t.metric)
        extra = {"ctr_fn": true_ctr} if m.ctr else {}
        values = m.summary(m.evaluate(parsed_rows([t.gold(r) for r in rows]), parsed_rows(preds), **extra))
        rec.update({f"{name}/{k}": v for k, v in values.items()})
        if t.kind == "generation":
            rec[f"{name}/example"] = preds[0]["raw"] if preds else ""
        norm[name] = normalized(values[lambda_metric(s, name)])
    return rec, norm


def weight_summary(interval_w: list[tuple[str, float]], tasks: list[str], s: SFTSpec) -> dict[str, Any]:
    """Histogram (log-spaced bins over [w_min, w_max]) and per-task mean of the interval's instance weights.

    Weights live on the last pipeline stage of every DP replica; one world all-reduce sums them.
    """
    lo, hi = math.log10(s.w_min), math.log10(max(s.w_max, s.w_min * 1.001))
    edges = torch.logspace(lo, hi, WEIGHT_BINS + 1, dtype=torch.float64)
    counts = torch.zeros(WEIGHT_BINS, dtype=torch.float64)
    per_task = torch.zeros(2 * len(tasks), dtype=torch.float64)
    for name, w in interval_w:
        k = int(torch.searchsorted(edges, torch.tensor(w, dtype=torch.float64), right=True)) - 1
        counts[min(max(k, 0), WEIGHT_BINS - 1)] += 1
        i = tasks.index(name)
        per_task[2 * i] += w
        per_task[2 * i + 1] += 1
    both = torch.cat([counts, per_task])
    dist.all_reduce(both)
    counts, per_task = both[:WEIGHT_BINS], both[WEIGHT_BINS:]
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts],
            "mean_by_task": {t: (float(per_task[2 * i] / per_task[2 * i + 1]) if per_task[2 * i + 1] else None)
                             for i, t in enumerate(tasks)},
            "samples_by_task": {t: int(per_task[2 * i + 1]) for i, t in enumerate(tasks)}}


def test_report(names: list[str], data: dict[str, dict[str, list[dict]]], scorer: Scorer, s: SFTSpec,
                run_dir: Path, step: int, write: bool, tokenizer: Any = None) -> dict[str, Any]:
    """Predict the test split of every task (every rank), write ``eval/<task>.{pred,gold}.jsonl`` and score them
    with the ``megatron-ads eval`` code path; ``eval/report.md`` holds the paper-style tables (``write``: rank 0).
    With held-out general rows in ``data`` and the run's ``tokenizer``, also the general metrics
    (``general_report``) under "general"."""
    out_dir = run_dir / "eval"
    results: dict[str, Any] = {}
    sections = []
    for name in names:
        t = task(name)
        rows = data[name]["test"][: s.test_rows]
        if not rows:
            continue
        preds = t.predict(rows, scorer)
        if not write:
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        pred_path, gold_path = out_dir / f"{name}.pred.jsonl", out_dir / f"{name}.gold.jsonl"
        write_jsonl(preds, pred_path)
        write_jsonl([t.gold(r) for r in rows], gold_path)
        r = evaluate(t.metric, pred_path, gold_path, ctr_fn=true_ctr)
        results[name] = {k: v for k, v in r.items() if k not in ("pred_line_errors", "unmatched_predictions")}
        sections.append(f"## {name} (step {step}, {len(rows)} test rows)\n\n{markdown(t.metric, r)}\n")
    general_rows = data.get(GENERAL.name, {}).get("test", [])[: s.test_rows]
    if general_rows and tokenizer is not None:
        metrics, section = general_report(general_rows, scorer, tokenizer, out_dir if write else None, step)
        if write:
            results[GENERAL.name] = metrics
            sections.append(section)
    if write and sections:
        write_text(out_dir / "report.md", f"# Held-out test report: {run_dir}\n\n" + "\n".join(sections))
        write_text(out_dir / "report.json", json.dumps(results, indent=1))
        log.info("test report: %s", out_dir / "report.md")
    return results


def general_report(rows: list[dict], scorer: Scorer, tokenizer: Any, out_dir: Path | None,
                   step: int) -> tuple[dict[str, Any], str]:
    """Held-out general metrics (``data.general.evaluate_general``: mean response NLL per token, perplexity,
    greedy exact match, per family) of ``rows`` through ``scorer``; predictions to ``out_dir/general.pred.jsonl``
    when given. Returns the metrics and the report's markdown section."""
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    metrics, preds = evaluate_general(rows, scorer, encode, eos=getattr(tokenizer, "eos_token", None))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(preds, out_dir / f"{GENERAL.name}.pred.jsonl")
    fams = metrics["exact_match_by_family"]
    lines = [f"## {GENERAL.name} (step {step}, {metrics['n']} held-out instructions)", "",
             "| response NLL / token | perplexity | exact match |", "|---|---|---|",
             f"| {metrics['nll']:.4f} | {metrics['ppl']:.3f} | {metrics['exact_match']:.3f} |", ""]
    if fams:
        lines += ["| family | exact match |", "|---|---|", *(f"| {f} | {v:.3f} |" for f, v in fams.items()), ""]
    return metrics, "\n".join(lines)
