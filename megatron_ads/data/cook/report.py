"""The cook report (``cook_report.json``): what happened to every input and every candidate of a task.

``task_report`` builds one task's section from the inputs read, the keyword filters' verdicts and the journal
records. Its counts add up (``check_counts`` asserts it, the tests too):

- ``inputs.read == inputs.kept + Σ inputs.dropped`` — an input is dropped by ``autoeval`` (ad_rewrite: its
  gold rewrite fails AutoEval; ``autoeval`` holds the failures per rule), a keyword filter (query_gen: its
  last query removed), ``too_long`` (a prompt does not fit the teacher) or the filter that removed its last
  candidate (``candidate filters``: the latest stage any of its candidates reached);
- ``candidates.generated == candidates.survived + Σ candidates.dropped`` — each candidate counted under the
  first filter it failed;
- ``rows`` per split: val and test one per kept input, train one or more (``keep_per_input``).

Score histograms (verifier, self-consistency; 10 bins over [0, 1]) are there for the plots
(``eval.plots.plot_cook_report``) and for tuning the thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from megatron_ads.data.cook import filters as F
from megatron_ads.data.cook.pipeline import KEEP, TOO_LONG

EDGES = [i / 10 for i in range(11)]


def _hist(values: list[float]) -> dict[str, Any]:
    vals = [v for v in values if v is not None and v == v]
    counts, _ = np.histogram(np.clip(vals, 0.0, 1.0), bins=EDGES) if vals else (np.zeros(10, int), None)
    return {"n": len(vals), "mean": float(np.mean(vals)) if vals else None, "counts": [int(c) for c in counts],
            "edges": EDGES}


def task_report(*, task: str, prompt: str, n_read: int, keyword_dropped: dict[str, str], query_counts: dict,
                records: list[dict], splits: dict[str, list[dict]], validation: dict | None,
                settings: dict[str, Any], autoeval: dict | None = None) -> dict[str, Any]:
    """One task's section of ``cook_report.json`` (module docstring). ``keyword_dropped``: the inputs the input
    filters dropped ``{id: filter}`` (autoeval, keyword filters); ``records``: the journal records of the inputs
    left; ``autoeval``: the AutoEval counts (None: the filter did not run)."""
    in_dropped: dict[str, int] = {f: 0 for f in (F.AUTOEVAL, *F.KEYWORD_FILTERS, TOO_LONG, *F.CANDIDATE_FILTERS)}
    for f in keyword_dropped.values():
        in_dropped[f] += 1
    cand_dropped = {f: 0 for f in F.CANDIDATE_FILTERS}
    generated = survived = kept = 0
    ver, sc = [], []
    for rec in records:
        if rec["status"] == KEEP:
            kept += 1
        else:
            in_dropped[rec["dropped_by"]] += 1
        for c in rec["candidates"]:
            generated += 1
            if c["dropped_by"] is None:
                survived += 1
            else:
                cand_dropped[c["dropped_by"]] += 1
            if c.get("verifier") is not None:
                ver.append(c["verifier"])
            if c.get("self_consistency") is not None:
                sc.append(c["self_consistency"])
    if query_counts is None or not query_counts:
        query_counts = None
    if task != "query_gen":
        for f in F.KEYWORD_FILTERS:
            in_dropped.pop(f)
    if autoeval is None:
        assert not in_dropped[F.AUTOEVAL], "autoeval drops without autoeval counts"
        in_dropped.pop(F.AUTOEVAL)
    out = {"task": task, "prompt": prompt, "settings": settings,
           "inputs": {"read": n_read, "kept": kept, "dropped": in_dropped},
           "candidates": {"generated": generated, "survived": survived, "dropped": cand_dropped},
           "rows": {k: len(v) for k, v in splits.items()},
           "scores": {"verifier": _hist(ver), "self_consistency": _hist(sc)},
           "prompt_validation": validation}
    if query_counts is not None:
        out["queries"] = query_counts
    if autoeval is not None:
        out["autoeval"] = autoeval
    check_counts(out)
    return out


def check_counts(section: dict) -> None:
    """AssertionError when a task section's counts do not add up (module docstring)."""
    i, c = section["inputs"], section["candidates"]
    assert i["read"] == i["kept"] + sum(i["dropped"].values()), f"inputs do not add up: {i}"
    assert c["generated"] == c["survived"] + sum(c["dropped"].values()), f"candidates do not add up: {c}"
    r = section["rows"]
    assert r.get("val", 0) + r.get("test", 0) <= i["kept"] <= sum(r.values()), f"rows vs kept inputs: {r}, {i}"
    a = section.get("autoeval")
    if a:
        assert a["checked"] == a["passed"] + i["dropped"].get(F.AUTOEVAL, 0), f"autoeval does not add up: {a}"
    q = section.get("queries")
    if q:
        assert q["raw"] == q["kept"] + sum(q["dropped"].values()), f"queries do not add up: {q}"


def human(report: dict) -> str:
    """A few lines per task for the console."""
    lines = []
    for name, s in report["tasks"].items():
        if "inputs" not in s:  # a task whose prompt was refused on the golden set: nothing cooked
            pv = s.get("prompt_validation") or {}
            lines.append(f"{name}: refused (prompt {pv.get('prompt', '?')}); see its prompt_validation")
            continue
        i, c = s["inputs"], s["candidates"]
        drops = ", ".join(f"{k} {v}" for k, v in i["dropped"].items() if v) or "none"
        cdrops = ", ".join(f"{k} {v}" for k, v in c["dropped"].items() if v) or "none"
        lines.append(f"cooked {name}: {i['kept']} of {i['read']} inputs kept (dropped: {drops}); candidates "
                     f"{c['survived']} of {c['generated']} survived (dropped: {cdrops}); rows train "
                     f"{s['rows']['train']} / val {s['rows']['val']} / test {s['rows']['test']}")
        if s.get("autoeval"):
            a = s["autoeval"]
            fails = ", ".join(f"{k} {v}" for k, v in a["failed"].items() if v) or "none"
            lines.append(f"  autoeval: {a['passed']} of {a['checked']} gold rewrites accepted (rule failures: "
                         f"{fails}{'; judge ' + a['judge'] if a.get('judge') else ''})")
        if s.get("queries"):
            q = s["queries"]
            lines.append(f"  queries: {q['kept']} of {q['raw']} kept (" +
                         ", ".join(f"{k} {v}" for k, v in q["dropped"].items()) + ")")
        pv = s.get("prompt_validation")
        if pv:
            lines.append(f"  prompt {pv['prompt']}: " + ("passed" if pv["passed"] else "REFUSED") +
                         f" on {pv['golden_rows']} golden rows" +
                         (f", agreement {pv['agreement']:.2f}" if pv.get("agreement") is not None else ""))
    if report.get("sft_files"):
        lines.append("train sft with: " + " ".join(
            f"sft.files.{t}.{k}={v}" for t, f in report["sft_files"].items() for k, v in f.items()))
    return "\n".join(lines)
