"""Training plots with matplotlib (Agg): PNG files of an SFT or a GRPO run directory.

Reads ``metrics.jsonl`` (one record per step) and ``val_metrics.jsonl`` (one per validation
interval, with ``lambda/<task>`` and a ``weights`` histogram) and writes ``plots/``:

- ``loss.png``          training loss per step
- ``val_metrics.png``   every validation metric (BACC, AUC, ...) per interval
- ``lambda.png``        task weights λ_t per interval (Eq. 7)
- ``weights_step<N>.png`` histogram of the instance weights (Eq. 5) used during the interval ending at step N

A GRPO run (``plot_grpo_run``, from ``metrics.jsonl`` alone) gets ``plots/``:

- ``rewards.png``              reward mean per task and channel (``reward/<task>/<channel>/mean``)
- ``frac_reward_zero_std.png`` share of groups with no reward variance (all channels, and per channel)
- ``kl.png``                   KL to the reference (and ``entropy.png`` when logged)
- ``clip_frac.png``            PPO clip fractions (low, high, dual)
- ``response_len.png``         response length mean and max (tokens)
- ``token_mult_prob_error.png`` engine vs trainer log-prob mismatch
- ``throughput.png``           rollout and train tokens/s
- ``loss.png``                 GRPO loss and policy-gradient loss

A data-cooking report (``plot_cook_report``, from ``cook_report.json``) gets, per task, its kept/dropped
inputs and candidates by filter, the verifier and self-consistency score histograms and the golden-set
figures of its prompt (``megatron-ads cook``).

Files are written atomically (a reader never sees half a PNG); a run directory being written to is
fine (a torn last line of a JSONL file is left for the next call).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window; set before any figure exists

from matplotlib.figure import Figure  # noqa: E402  (after the backend choice)

from megatron_ads.runtime.errors import BadInput  # noqa: E402
from megatron_ads.runtime.io import atomic_path, iter_jsonl  # noqa: E402

SIZE_IN, DPI = (6.4, 4.0), 100
"""640 x 400 pixels."""


def _complete_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file up to its first unreadable line (a line being appended right now)."""
    rows: list[dict] = []
    if not path.is_file():
        return rows
    try:
        for _, row in iter_jsonl(path):
            rows.append(row)
    except BadInput:
        pass
    return rows


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def line_chart(path: str | Path, series: dict[str, tuple[Sequence[float], Sequence[float | None]]], title: str,
               xlabel: str = "step", ylabel: str = "", ylim: tuple[float, float] | None = None) -> Path:
    """One line per named series (x, y); None/NaN points are skipped. Returns ``path``."""
    fig = Figure(figsize=SIZE_IN)
    ax = fig.add_subplot()
    plotted = 0
    for name, (xs, ys) in series.items():
        pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if len(pts) == 1 else None, label=name)
            plotted += 1
    if not plotted:
        raise ValueError(f"line_chart {title!r}: no finite points to plot")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    return _save(fig, Path(path))


def histogram_counts(path: str | Path, counts: Sequence[int], edges: Sequence[float], title: str,
                     xlabel: str = "value") -> Path:
    """Bars for pre-binned ``counts`` (``len(edges) == len(counts) + 1``; log-spaced edges get a log axis)."""
    if len(edges) != len(counts) + 1 or not counts:
        raise ValueError(f"histogram {title!r}: expected len(edges) == len(counts) + 1 > 1, "
                         f"got {len(edges)} edges for {len(counts)} counts")
    fig = Figure(figsize=SIZE_IN)
    ax = fig.add_subplot()
    ax.stairs(list(counts), list(edges), fill=True)
    widths = [b - a for a, b in zip(edges, edges[1:])]
    if edges[0] > 0 and max(widths) > 1.5 * min(widths):
        ax.set_xscale("log")
        ax.minorticks_off()
    ticks = list(edges[::max(1, len(counts) // 4)])
    ax.set_xticks(ticks, [f"{e:.3g}" for e in ticks])
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    return _save(fig, Path(path))


def plot_sft_run(run_dir: str | Path) -> list[Path]:
    """(Re)write the run's PNG plots; returns the files written."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    steps = [r for r in _complete_rows(run_dir / "metrics.jsonl") if r.get("loss") is not None]
    if steps:
        written.append(line_chart(plots / "loss.png", {"loss": ([r["step"] for r in steps], [r["loss"] for r in steps])},
                                  "SFT training loss", ylabel="loss"))
    val = _complete_rows(run_dir / "val_metrics.jsonl")
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
                                      "Task weights λ_t (Eq. 7)", ylabel="λ", ylim=(0.0, 1.0)))
        for r in val:
            w = r.get("weights")
            if isinstance(w, dict) and sum(w.get("counts", [])) > 0:
                written.append(histogram_counts(plots / f"weights_step{r['step']}.png", w["counts"], w["edges"],
                                                f"Instance weights, steps to {r['step']} (Eq. 5)", xlabel="w"))
    return written


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def chart_of_keys(path: str | Path, rows: list[dict], keys: dict[str, str], title: str, ylabel: str = "",
                  ylim: tuple[float, float] | None = None) -> Path | None:
    """``line_chart`` of the per-step ``rows`` for ``keys`` ({row key: legend name}); keys with no finite value
    are left out, and no file is written (None) when none has one."""
    xs = [r.get("step") for r in rows]
    series = {name: (xs, [r.get(k) if _finite(r.get(k)) else None for r in rows])
              for k, name in keys.items() if any(_finite(r.get(k)) for r in rows)}
    return line_chart(path, series, title, ylabel=ylabel, ylim=ylim) if series else None


GRPO_CHARTS: tuple[tuple[str, str, str, tuple[float, float] | None], ...] = (
    # (file, title, y label, y limits); the keys of each come from ``_grpo_keys``
    ("rewards.png", "GRPO reward mean per task / channel", "reward", None),
    ("frac_reward_zero_std.png", "Groups with zero reward std", "fraction", (0.0, 1.0)),
    ("kl.png", "KL to the reference policy", "KL", None),
    ("entropy.png", "Policy entropy (per token)", "nats", None),
    ("clip_frac.png", "PPO clip fractions", "fraction of tokens", None),
    ("response_len.png", "Response length", "tokens", None),
    ("token_mult_prob_error.png", "token_mult_prob_error (engine vs trainer log-probs)", "mean |p_e/p_t - 1|", None),
    ("throughput.png", "Throughput", "tokens/s", None),
    ("loss.png", "GRPO loss", "loss", None),
)


def _grpo_keys(rows: list[dict]) -> dict[str, dict[str, str]]:
    """{plot file: {metrics.jsonl key: legend name}} for ``GRPO_CHARTS``."""
    seen = sorted({k for r in rows for k in r})
    return {
        "rewards.png": {k: k[len("reward/"):-len("/mean")] for k in seen
                        if k.startswith("reward/") and k.endswith("/mean")},
        "frac_reward_zero_std.png": {"frac_reward_zero_std": "all channels",
                                     **{k: k.split("/", 1)[1] for k in seen if k.startswith("frac_reward_zero_std/")}},
        "kl.png": {"kl": "KL"},
        "entropy.png": {"entropy": "entropy"},
        "clip_frac.png": {"clip_frac_low": "low (1 - eps_low)", "clip_frac_high": "high (1 + eps_high)",
                          "clip_frac_dual": "dual"},
        "response_len.png": {"response_len_mean": "mean", "response_len_max": "max"},
        "token_mult_prob_error.png": {"token_mult_prob_error": "token_mult_prob_error"},
        "throughput.png": {"rollout_tokens_per_s": "rollout (generated tokens/s)",
                           "train_tokens_per_s": "train (tokens/s)"},
        "loss.png": {"loss": "loss", "pg_loss": "policy-gradient loss"},
    }


def plot_grpo_run(run_dir: str | Path) -> list[Path]:
    """(Re)write a GRPO run's PNG plots from its ``metrics.jsonl`` into ``plots/``; returns the files written."""
    run_dir = Path(run_dir)
    rows = [r for r in _complete_rows(run_dir / "metrics.jsonl") if isinstance(r.get("step"), (int, float))]
    if not rows:
        return []
    plots = run_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    keys = _grpo_keys(rows)
    written = []
    for name, title, ylabel, ylim in GRPO_CHARTS:
        path = chart_of_keys(plots / name, rows, keys[name], title, ylabel=ylabel, ylim=ylim)
        if path is not None:
            written.append(path)
    return written


def bar_chart(path: str | Path, values: dict[str, float], title: str, ylabel: str = "count",
              ylim: tuple[float, float] | None = None) -> Path:
    """One bar per named value (labels rotated when there are many). Returns ``path``."""
    if not values:
        raise ValueError(f"bar_chart {title!r}: no values")
    fig = Figure(figsize=SIZE_IN)
    ax = fig.add_subplot()
    names = list(values)
    ax.bar(range(len(names)), [float(values[n]) for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 4 else 0,
                  ha="right" if len(names) > 4 else "center", fontsize="small")
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, Path(path))


def plot_cook_report(report: dict, out_dir: str | Path) -> list[Path]:
    """PNG plots of a ``cook_report.json`` (``megatron-ads cook``) into ``out_dir``, per cooked task:
    ``TASK_inputs.png`` (kept and dropped inputs by filter), ``TASK_candidates.png`` (surviving and dropped
    candidates by filter), ``TASK_verifier.png`` / ``TASK_self_consistency.png`` (score histograms) and
    ``TASK_prompt_validation.png`` (the golden-set figures per variation). Returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, s in report.get("tasks", {}).items():
        if "inputs" in s:
            i, c = s["inputs"], s["candidates"]
            written.append(bar_chart(out / f"{name}_inputs.png", {"kept": i["kept"], **i["dropped"]},
                                     f"{name}: inputs kept and dropped (by filter)", ylabel="inputs"))
            written.append(bar_chart(out / f"{name}_candidates.png", {"survived": c["survived"], **c["dropped"]},
                                     f"{name}: candidates surviving and dropped (first failed filter)",
                                     ylabel="candidates"))
            for key, label in (("verifier", "verifier faithfulness score"),
                               ("self_consistency", "mean cosine to the other candidates")):
                h = s.get("scores", {}).get(key) or {}
                if h.get("n"):
                    written.append(histogram_counts(out / f"{name}_{key}.png", h["counts"], h["edges"],
                                                    f"{name}: {label}", xlabel=key))
        pv = s.get("prompt_validation")
        if pv and pv.get("variations"):
            vals = {f"{v}/{k}": figs[k] for v, figs in pv["variations"].items()
                    for k in ("format_validity", "label_consistency", "grounding") if _finite(figs.get(k))}
            if _finite(pv.get("agreement")):
                vals["agreement"] = pv["agreement"]
            if vals:
                written.append(bar_chart(out / f"{name}_prompt_validation.png", vals,
                                         f"{name}: golden-set validation of {pv['prompt']}", ylabel="share",
                                         ylim=(0.0, 1.0)))
    return written
