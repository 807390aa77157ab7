"""MarketingFM AutoEval on the CPU (issue 15; marketingfm.txt §5, Tables 8–9; ``papers_spec.md`` §B.4, §C 30–31):
rules + a tiny SFT-trained 0–5 judge against "human" labels derived from hidden ground truth.

    python benchmarks/autoeval_tiny.py [--workdir DIR] [--fast] [--pool N] [--val N] [--judge-rows N]
        [--judge-steps S] [--budget B] [--human-noise P] [--human relevance=R,generalization=G]
        [--start relevance=R,generalization=G] [--defect-rate P] [--match-rate P] [--sample-seeds K] [--seed S]
        [--plot PNG] [--judge-set key=value ...]                                          (make autoeval-tiny)

Stages (``megatron-ads`` subprocesses in ``--workdir``; a finished stage — ``done.json`` with its command and,
for ``autoeval``, the hashes of the files it reads — is reused when they are the same and refused when they differ:
use another workdir):

1. **ads with hidden truth** (``--pool`` + ``--val`` ads, seed ``--seed``): ``data.synthetic``'s ``ad_judge``
   generator (``generate("ad_judge", ...)`` at ``--match-rate``) gives each ad a keyword, headline, description
   and its true relevance (0–5: category / group / brand) and generalization (5 minus the narrowing details);
   then, with probability ``--defect-rate``, one injected rule defect, equally often: a sale mention in the
   description ("Huge sale on now.", "Clearance event.", "Extra discounts inside."), an over-long headline
   ("and much more", "all in one place", "from trusted brands" appended until > 30 characters) or a missing call
   to action (the headline's verb replaced by "Top" / "Our" / "Quality" / "Great") — phrases without any of the
   narrowing details the judge counts, so a defect leaves the true scores as they are. The ``category`` field is
   the keyword's category (what diversity sampling groups by). Truth per ad: ``relevance``, ``generalization``,
   ``defects`` (sale mention, headline > 30 characters — injected or not —, no CTA, and ``near_copy``: a
   reviewer rejects a near copy of an earlier ad of the same keyword; the diversity rule's own verdict stands in
   for that judgment).
2. **human labels**: accept = no defect and relevance >= R and generalization >= G (``--human``, default 2 and 3:
   the policy Table 8's best mode encodes), each label then flipped with probability ``--human-noise`` (default
   0.04: the paper's reviewers are 96.29 % accurate). The first ``--pool`` ads are the review pool, the other
   ``--val`` the validation set of the refinement.
3. **judge**: ``train sft --config launch/configs/autoeval_judge_tiny_cpu.yaml`` (``sft.tasks=[ad_judge]``,
   label-only targets; ``--judge-rows`` synthetic rows at seed 0 — the ads above use ``--seed`` + 1000 —,
   ``--judge-steps``): the judge checkpoint and its held-out ad_judge test report (exact / within-one accuracy,
   MAE of the expected score).
4. **autoeval, pool** (``megatron-ads autoeval --input pool.jsonl --model JUDGE --human pool_human.jsonl
   --thresholds START --sample B --strategy uncertainty``): the CLI's own review set, the ``--budget`` pool ads
   of lowest judge confidence.
5. **autoeval, all ads** (``--input all.jsonl --human all_human.jsonl --sweep --thresholds START --refine
   reviewed.jsonl``, the reviewed file = the human labels of stage 4's review set): the Table 8 sweep over every
   threshold pair in {0..5}² and the CLI's refinement report.

Reported (from the CLI's JSON and its output rows — the scores, confidences and rule failures —, with the
library functions the CLI itself calls, ``rewards.autoeval``; the CLI's own figures are checked against them):

- **Table 8 form** on all ads: agreement, FPR (LLM accept & human reject) and FNR (LLM reject & human accept)
  as fractions of all ads, for the modes rules only (0, 0); relevance only (2, 0) and the best relevance-only
  threshold; generalization only (0, 3) and the best generalization-only threshold; the paper's combined rows
  (2, 3), (3, 3), (4, 2), (4, 3); the best pair of the grid. Paper direction: combined thresholds give the lowest
  total disagreement (``combined_lowest``); FPR falls and FNR rises as a threshold rises (§C 30,
  ``sweep_monotone``, checked on every step of the grid; ``fpr_falls`` / ``fnr_rises``: from 0 to 5 on each
  single-criterion axis). ``best_quarter``: the best pair on a 0.25 grid — the thresholds compare *expected*
  scores, which a judge's spread probability pulls towards the middle, so the best pair can sit below the
  policy's integers.
- **Threshold sweep plot** (``--plot``, default ``benchmarks/plots/autoeval_tiny.png``; ``--fast``: in the
  workdir): FPR, FNR and total vs the relevance threshold (generalization at 0 and at the best pair's) and vs the
  generalization threshold (relevance at 0 and at the best pair's), on a 0.1 grid; the judge's expected score
  against the true score; disagreements found vs review budget per sampling strategy.
- **Active sampling**: for a review budget of ``--budget`` pool ads, how many of the chosen ads the AutoEval at
  ``--start`` decides differently from the human label: random and diversity (mean ± std over
  ``--sample-seeds`` seeds), uncertainty by judge confidence (the CLI's default; stage 4's choice) and by margin
  (expected score nearest its threshold). Paper direction: uncertainty finds more disagreements than random
  (``uncertainty_confidence_beats_random``, ``uncertainty_margin_beats_random``; ``..._from_default``: from the
  CLI's default thresholds).
- **Refinement (Table 9 form)**: per strategy, ``refine`` (the thresholds of {0..5}² that agree best with the
  reviewed sample; ties: lower FPR, then the smallest change) from ``--start``, FP / FN / Acc before and after
  on the reviewed sample and on the validation ads (never reviewed). ``--start`` defaults to relevance=4,
  generalization=2 (Table 8's strict Context(4)+General(2)): a mis-set AutoEval the loop has something to correct.
  Active sampling and refinement are repeated from the CLI's default thresholds (2, 3) (``also``), where the
  start is close to the hidden policy and a small reviewed sample has little to add. Paper direction (Table 9):
  every update strategy beats the baseline (``refinement_beats_baseline``, validation agreement) and uncertainty
  sampling's refinement is at least as good as random's and diversity's (``uncertainty_refines_best``).

Prints the tables, then, last, one JSON object: ``table8`` (rows {mode, relevance, generalization, accept_rate,
agreement, fpr, fnr, disagreement}), ``best`` (best pair / relevance-only / generalization-only), ``best_quarter``,
``direction`` (the flags above), ``sampling`` (per strategy: disagreements found, mean and std over seeds where
seeded), ``found_curve`` (the same vs budget), ``table9`` (baseline and per strategy: thresholds,
reviewed and validation FP / FN / Acc), ``also`` ({start, sampling, table9} from the CLI's default), ``judge``
(steps, rows, test report, ``on_ads``: exact share and MAE per criterion on the benchmark ads that pass the rules,
wall_s), ``human`` (policy, noise, accept rate, flips), ``ads`` (counts, rule failures, truth defects), ``cli`` (the
CLI's own figures and the consistency checks), the settings, ``plot``, stage times and ``wall_s``.

``--fast``: 16 pool + 8 validation ads, a 3-step judge on 200 rows: the smoke test in
``tests/distributed/test_bench_autoeval_tiny.py``, not a measurement (the judge is untrained; ~30 s of CPU, about
a minute of wall time on 2 loaded cores).

Measured (2026-12-03, 2 cores shared with other jobs, load 5–9, ``OMP_NUM_THREADS=1``; the defaults; the judge
stage was run as ``train sft --config launch/configs/autoeval_judge_tiny_cpu.yaml`` with exactly the stage's
settings, the rest by this script): judge 903 s (held-out exact 0.92: generalization 1.00, relevance 0.83; on the
benchmark's rule-passing ads relevance 0.75), the two autoeval stages 57 s, analysis 5 s — about 16 min.
Table 8 form: combined (2, 3) agreement 92.4 %, FPR 1.1, FNR 6.5, total 7.6 (paper: 89.57 / 1.53 / 8.90 /
10.43); relevance only 18.7, generalization only 16.5, rules only 34.2; best integer pair (2, 2) 7.4 (the judge's
expected relevance runs below the true score, so the best pair on a 0.25 grid is (1.25, 2.5), 5.6); every
direction flag of Table 8 holds. Sampling 60 of 600 pool ads at (4, 2): uncertainty by confidence finds 16
disagreements, random 10.1 ± 2.9, diversity 8.6, uncertainty by margin 5 (at (2, 3): 9, 4.5, 4.0, 8). Refinement
from (4, 2): validation agreement 84.8 % -> random 91.0, diversity 91.0, uncertainty (confidence) 90.8, (margin)
85.5 — every strategy beats the baseline, uncertainty's refinement is not the best (its sample is the judge's
hardest ads, which pull the relevance threshold to 1); from (2, 3) (92.0 %, about the hidden policy) no strategy
improves the validation agreement with 60 reviewed ads (90.8–91.5).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from relate_tiny import _stage, _wall, save_figure

from megatron_ads.data import synthetic
from megatron_ads.rewards.autoeval import (DEFAULT_THRESHOLDS, RuleChecker, RuleConfig, accept, agreement,
                                           agreement_summary, refine, select_for_review, threshold_sweep)

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "megatron_ads"]
JUDGE_CFG = REPO / "launch" / "configs" / "autoeval_judge_tiny_cpu.yaml"
CRITERIA = ("relevance", "generalization")
DEFAULTS = {"pool": 600, "val": 400, "judge_rows": 6000, "judge_steps": 4000, "budget": 60, "sample_seeds": 20}
FAST_SIZES = {"pool": 16, "val": 8, "judge_rows": 200, "judge_steps": 3, "budget": 4, "sample_seeds": 3}
FAST_JUDGE = ["sft.val_rows=4", "sft.test_rows=8", "sft.eval_every=3", "train.micro_batch=4", "train.log_every=1"]
GRID = {"relevance": tuple(range(6)), "generalization": tuple(range(6))}
FINE = [round(0.1 * i, 1) for i in range(51)]
"""The plot's threshold grid."""
QUARTER = [0.25 * i for i in range(21)]
"""The grid of ``best_quarter``: the best pair when thresholds need not be integers."""
PAPER_MODES = (("rules only", 0, 0), ("relevance only", 2, 0), ("generalization only", 0, 3),
               ("combined (2, 3)", 2, 3), ("combined (3, 3)", 3, 3), ("combined (4, 2)", 4, 2),
               ("combined (4, 3)", 4, 3))
"""Table 8's modes as threshold pairs (relevance, generalization): 0 switches a criterion off."""
SALE_PHRASES = ("Huge sale on now.", "Clearance event.", "Extra discounts inside.")
LONG_TAILS = ("and much more", "all in one place", "from trusted brands")
"""Sale mentions and headline tails free of the narrowing details the judge counts (no price, date, size,
audience or model): an injected defect should not also change the true generalization."""
NON_CTA = ("Top", "Our", "Quality", "Great")
DEFECTS = ("mention_sale", "headline_length", "cta_missing")
STRATEGIES = (("random", "random", "confidence"), ("diversity", "diversity", "confidence"),
              ("uncertainty (confidence)", "uncertainty", "confidence"),
              ("uncertainty (margin)", "uncertainty", "margin"))
"""(row label, select_for_review strategy, uncertainty_by)."""


# ------------------------------------------------------------------------------------ 1–2. ads, truth, labels
def make_ads(n: int, seed: int, match_rate: float, defect_rate: float) -> tuple[list[dict], list[dict]]:
    """``n`` ads (CLI input rows) and their hidden truth (module docstring, 1)."""
    rows = synthetic.generate("ad_judge", synthetic.SyntheticConfig(size=n, seed=seed, match_rate=match_rate))
    rng = random.Random(f"autoeval_tiny:defects:{seed}")
    ads, truth = [], []
    for i, r in enumerate(rows):
        head, desc, injected = r["headline"], r["description"], None
        if rng.random() < defect_rate:
            injected = rng.choice(DEFECTS)
            if injected == "mention_sale":
                desc = f"{desc} {rng.choice(SALE_PHRASES)}"
            elif injected == "headline_length":
                tails = list(LONG_TAILS)
                rng.shuffle(tails)
                while len(head) <= 30:
                    head = f"{head} {tails.pop()}"
            else:
                head = " ".join([rng.choice(NON_CTA), *head.split()[1:]])
        kcat = r["truth"]["keyword_category"]
        ads.append({"id": f"ad{i}", "keyword": r["keyword"], "headline": head, "description": desc, "category": kcat})
        defects = [d for d, on in (("mention_sale", injected == "mention_sale"),
                                   ("headline_length", len(head.strip()) > 30),
                                   ("cta_missing", injected == "cta_missing")) if on]
        truth.append({"id": f"ad{i}", "relevance": r["truth"]["relevance"],
                      "generalization": r["truth"]["generalization"], "defects": defects,
                      "ad_category": r["truth"]["category"], "injected": injected})
    for j in RuleChecker(RuleConfig()).near_duplicates(ads):
        truth[j]["defects"].append("near_copy")
    return ads, truth


def human_labels(truth: list[dict], policy: dict[str, float], noise: float, seed: int) -> list[dict]:
    """Per ad ``{id, clean, accept, flipped}``: the policy's decision on the truth, flipped with prob. ``noise``."""
    rng = random.Random(f"autoeval_tiny:human:{seed}")
    out = []
    for t in truth:
        clean = not t["defects"] and all(t[c] >= policy[c] for c in CRITERIA)
        flip = rng.random() < noise
        out.append({"id": t["id"], "clean": clean, "accept": clean != flip, "flipped": flip})
    return out


def parse_pair(text: str, flag: str) -> dict[str, float]:
    """``relevance=R,generalization=G`` (both required) -> {criterion: value in [0, 5]}."""
    out = {}
    for part in text.split(","):
        k, _, v = part.partition("=")
        try:
            out[k.strip()] = float(v)
        except ValueError:
            raise SystemExit(f"{flag}: expected relevance=R,generalization=G, got {text!r}") from None
    if set(out) != set(CRITERIA) or not all(0 <= v <= 5 for v in out.values()):
        raise SystemExit(f"{flag}: expected relevance=R,generalization=G with values in [0, 5], got {text!r}")
    return out


def th_arg(th: dict[str, float]) -> str:
    return ",".join(f"{c}={th[c]:g}" for c in CRITERIA)


# ------------------------------------------------------------------------------------ files and stages
def write(path: Path, rows: list[dict]) -> Path:
    """``rows`` as JSONL, rewritten only when the content changes."""
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if not path.is_file() or path.read_text() != text:
        synthetic.write_jsonl(rows, path)
    return path


def read(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def autoeval(out: Path, args: list[str], reads: list[Path], root: Path) -> tuple[dict, float]:
    """``megatron-ads autoeval ARGS --json`` with ``out`` as its directory (stderr to ``out/autoeval.log``),
    unless ``out/done.json`` holds the same command and input hashes; returns (its JSON summary, wall s)."""
    done = out / "done.json"
    key = {"cmd": [a.replace(str(root), "<workdir>") for a in args],
           "inputs": {p.name: _digest(p) for p in reads}}
    if done.is_file():
        prev = json.loads(done.read_text())
        if {"cmd": prev.get("cmd"), "inputs": prev.get("inputs")} != key:
            raise SystemExit(f"{out}: finished with other settings or inputs; use another --workdir or delete {out}")
        return prev["summary"], prev["wall_s"]
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "autoeval.log", "w") as err:
        p = subprocess.run([*CLI, "autoeval", *args, "--json"], stdout=subprocess.PIPE, stderr=err, text=True,
                           cwd=REPO, env=os.environ.copy())
    if p.returncode != 0:
        tail = "\n".join((out / "autoeval.log").read_text().splitlines()[-30:])
        raise SystemExit(f"failed (exit {p.returncode}): megatron-ads autoeval {' '.join(args)}\n{tail}")
    summary = json.loads(p.stdout)
    wall = round(time.time() - t0, 1)
    done.write_text(json.dumps({**key, "wall_s": wall, "summary": summary}))
    return summary, wall


def train_judge(args, root: Path) -> Path:
    """Stage 3: the judge's SFT run directory."""
    out = root / "judge"
    cmd = [f"out_dir={out}", f"train.steps={args.judge_steps}", f"sft.train_size={args.judge_rows}",
           "sft.data_seed=0", "resume=none", *(FAST_JUDGE if args.fast else []), *args.judge_set]
    return _stage(out, [*CLI, "train", "sft", "--config", str(JUDGE_CFG), *cmd], root / "judge.log", root)


def judge_report(run: Path) -> dict:
    rep = json.loads((run / "eval" / "report.json").read_text())["ad_judge"]
    keep = ("n", "Acc", "Within1", "MAE", "ExpMAE")
    out = {k: rep[k] for k in keep if k in rep}
    if isinstance(rep.get("by_criterion"), dict):
        out["by_criterion"] = rep["by_criterion"]
    return out


# ------------------------------------------------------------------------------------ analysis
def judge_on_ads(rows: list[dict], truth: list[dict]) -> dict:
    """Per criterion, on the ads that pass the rules: the share whose rounded expected score is the true score,
    and the mean |expected − true|."""
    keep = [(r["scores"], t) for r, t in zip(rows, truth) if not r["rule_failures"]]
    return {"n": len(keep), **{c: {"exact": statistics.fmean(round(s[c]) == t[c] for s, t in keep),
                                   "mae": statistics.fmean(abs(s[c] - t[c]) for s, t in keep)}
                               for c in CRITERIA}} if keep else {"n": 0}


def decisions(rows: list[dict], th: dict[str, float]) -> list[bool]:
    return [accept(r["rule_failures"], r["scores"], th) for r in rows]


def versus(rows: list[dict], human: list[bool], th: dict[str, float]) -> dict:
    return agreement_summary(agreement(decisions(rows, th), human))


def table8(rows: list[dict], human: list[bool]) -> tuple[list[dict], dict, list[dict]]:
    """Table 8 rows (module docstring), the best pairs and the integer sweep (library ``threshold_sweep``)."""
    fails, scores = [r["rule_failures"] for r in rows], [r["scores"] for r in rows]
    sweep = threshold_sweep(fails, scores, human, GRID)
    at = {(s["relevance"], s["generalization"]): s for s in sweep}

    def best(cands):  # lowest total, then lowest FPR, then the first
        return min(cands, key=lambda s: (round(s["disagreement"], 12), round(s["fpr"], 12)))

    b = {"combined": best(sweep), "relevance_only": best([s for s in sweep if s["generalization"] == 0]),
         "generalization_only": best([s for s in sweep if s["relevance"] == 0])}
    out = [{"mode": m, **at[(float(r), float(g))]} for m, r, g in PAPER_MODES]
    out += [{"mode": f"best {k.replace('_', '-')}", **v} for k, v in b.items()]
    return out, b, sweep


def monotone(sweep: list[dict]) -> bool:
    """§C 30 on the integer grid: raising either threshold never raises FPR nor lowers FNR."""
    at = {(s["relevance"], s["generalization"]): s for s in sweep}
    ok = True
    for (r, g), s in at.items():
        for nxt in ((r + 1, g), (r, g + 1)):
            if nxt in at:
                ok &= at[nxt]["fpr"] <= s["fpr"] + 1e-12 and at[nxt]["fnr"] >= s["fnr"] - 1e-12
    return ok


def view(ads: list[dict], rows: list[dict]) -> list[dict]:
    """What ``cli.autoeval`` hands ``select_for_review``."""
    return [{"keyword": a["keyword"], "category": a.get("category"), "scores": r["scores"],
             "confidence": r["confidence"]} for a, r in zip(ads, rows)]


def sampling(ads: list[dict], rows: list[dict], human: list[bool], start: dict, budget: int, seeds: int) -> dict:
    """Per strategy: the pool ads chosen for review and how many of them the AutoEval at ``start`` decides
    differently from the human label (random / diversity over ``seeds`` seeds)."""
    dec = decisions(rows, start)
    wrong = [d != h for d, h in zip(dec, human)]
    v = view(ads, rows)
    out = {}
    for label, strategy, by in STRATEGIES:
        runs = range(seeds) if strategy in ("random", "diversity") else range(1)
        picks = [select_for_review(v, budget, strategy, seed=s, thresholds=start, uncertainty_by=by) for s in runs]
        found = [sum(wrong[i] for i in p) for p in picks]
        out[label] = {"strategy": strategy, "uncertainty_by": by if strategy == "uncertainty" else None,
                      "found": statistics.fmean(found), "std": statistics.pstdev(found) if len(found) > 1 else 0.0,
                      "per_seed": found, "picks": picks, "n": len(picks[0])}
    out["_pool"] = {"n": len(rows), "disagreements": sum(wrong), "rate": sum(wrong) / len(rows)}
    return out


def found_curve(ads: list[dict], rows: list[dict], human: list[bool], start: dict, budgets: list[int],
                seeds: int) -> dict[str, list[float]]:
    """Disagreements found vs budget per strategy (random / diversity: mean over seeds)."""
    per_budget = [sampling(ads, rows, human, start, b, seeds) for b in budgets]
    out = {label: [r[label]["found"] for r in per_budget] for label, _, _ in STRATEGIES}
    return out


def table9(pool_rows, pool_human, val_rows, val_human, picks: dict, start: dict) -> dict:
    """Baseline (``start``) and, per strategy, the refinement on its reviewed sample, before/after on the sample
    and on the validation ads (seeded strategies: mean over seeds, thresholds per seed)."""
    base = versus(val_rows, val_human, start)
    out = {"baseline": {"thresholds": start, "validation": base}}
    for label, sel in picks.items():
        per = []
        for p in sel:
            rep = refine([pool_rows[i]["rule_failures"] for i in p], [pool_rows[i]["scores"] for i in p],
                         [pool_human[i] for i in p], start, GRID)
            per.append({"thresholds_after": rep["thresholds_after"], "reviewed_before": rep["before"],
                        "reviewed_after": rep["after"], "validation_after": versus(val_rows, val_human,
                                                                                   rep["thresholds_after"])})
        mean = {k: {m: statistics.fmean(x[k][m] for x in per) for m in ("agreement", "fpr", "fnr")}
                for k in ("reviewed_before", "reviewed_after", "validation_after")}
        out[label] = {"thresholds_after": [x["thresholds_after"] for x in per], **mean,
                      "validation_agreement_std": statistics.pstdev([x["validation_after"]["agreement"] for x in per])
                      if len(per) > 1 else 0.0, "runs": len(per)}
    return out


# ------------------------------------------------------------------------------------ plot
def plot(path: Path, rows: list[dict], human: list[bool], truth: list[dict], best: dict, curve: dict,
         budgets: list[int], title: str) -> Path:
    """FPR / FNR / total vs each threshold (fine grid), expected vs true score, disagreements found vs budget."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fails, scores = [r["rule_failures"] for r in rows], [r["scores"] for r in rows]
    fig = Figure(figsize=(13, 9))
    b = best["combined"]
    for k, (crit, other) in enumerate((("relevance", "generalization"), ("generalization", "relevance"))):
        ax = fig.add_subplot(2, 2, k + 1)
        for fixed, ls in ((0.0, "--"), (b[other], "-")):
            sw = threshold_sweep(fails, scores, human, {crit: FINE, other: (fixed,)})
            xs = [s[crit] for s in sw]
            for key, color, name in (("fpr", "tab:red", "FPR (LLM accept, human reject)"),
                                     ("fnr", "tab:blue", "FNR (LLM reject, human accept)"),
                                     ("disagreement", "black", "total")):
                ax.plot(xs, [100 * s[key] for s in sw], color=color, ls=ls, lw=1.6 if ls == "-" else 1.0,
                        label=f"{name}, {other} >= {fixed:g}")
        ax.axvline(b[crit], color="gray", ls=":", lw=1)
        ax.set_xlabel(f"{crit} threshold (expected 0–5 score)")
        ax.set_ylabel("% of all ads")
        ax.set_title(f"sweep of the {crit} threshold", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    ax = fig.add_subplot(2, 2, 3)
    keep = [i for i, f in enumerate(fails) if not f]
    for crit, color, dx in (("relevance", "tab:green", -0.12), ("generalization", "tab:purple", 0.12)):
        rnd = random.Random(0)
        ax.scatter([truth[i][crit] + dx + rnd.uniform(-0.06, 0.06) for i in keep], [scores[i][crit] for i in keep],
                   s=5, alpha=0.35, color=color, label=crit)
    ax.plot([0, 5], [0, 5], color="gray", ls=":", lw=1)
    ax.set_xlabel("true score (hidden ground truth)")
    ax.set_ylabel("judge's expected score Σ s·p(s)")
    ax.set_title(f"judge calibration on the {len(keep)} ads that pass the rules (where the scores decide)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(2, 2, 4)
    for label, ys in curve.items():
        ax.plot(budgets, ys, lw=1.6, label=label)
    ax.set_xlabel("review budget (pool ads)")
    ax.set_ylabel("LLM–human disagreements among them")
    ax.set_title("active sampling at the start thresholds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------ output
def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _th(th: dict) -> str:
    return f"({th['relevance']:g}, {th['generalization']:g})"


def sampling_lines(s: dict, start: dict, budget: int) -> list[str]:
    lines = [f"Active sampling (budget {budget} of {s['_pool']['n']} pool ads; AutoEval at {_th(start)}; "
             f"{s['_pool']['disagreements']} disagreements in the pool, {pct(s['_pool']['rate'])}%):",
             "| strategy | disagreements found | std over seeds | seeds |", "|---|---|---|---|"]
    return lines + [f"| {k} | {v['found']:.2f} | {v['std']:.2f} | {len(v['per_seed'])} |"
                    for k, v in s.items() if not k.startswith("_")]


def table9_lines(t: dict, budget: int, val: int) -> list[str]:
    lines = [f"Refinement from {_th(t['baseline']['thresholds'])} (Table 9 form, %; reviewed: the {budget} sampled "
             f"pool ads; validation: the {val} never-reviewed ads):",
             "| strategy | thresholds after | reviewed FP / FN / Acc before | reviewed FP / FN / Acc after | "
             "validation FP | validation FN | validation Acc |", "|---|---|---|---|---|---|---|"]
    b = t["baseline"]["validation"]
    lines.append(f"| baseline {_th(t['baseline']['thresholds'])} | – | – | – | {pct(b['fpr'])} | {pct(b['fnr'])} | "
                 f"{pct(b['agreement'])} |")
    for k, v in t.items():
        if k == "baseline":
            continue
        ths = sorted({_th(x) for x in v["thresholds_after"]})
        th = ths[0] if len(ths) == 1 else f"{len(ths)} pairs over {v['runs']} seeds"
        rb, ra, va = v["reviewed_before"], v["reviewed_after"], v["validation_after"]
        lines.append(f"| {k} | {th} | {pct(rb['fpr'])} / {pct(rb['fnr'])} / {pct(rb['agreement'])} | "
                     f"{pct(ra['fpr'])} / {pct(ra['fnr'])} / {pct(ra['agreement'])} | {pct(va['fpr'])} | "
                     f"{pct(va['fnr'])} | {pct(va['agreement'])}"
                     + (f" ± {100 * v['validation_agreement_std']:.2f}" if v["runs"] > 1 else "") + " |")
    return lines


def tables(res: dict) -> str:
    q = res["best_quarter"]
    lines = ["Table 8 form (all ads; % of all ads; thresholds (relevance, generalization), 0 = off):",
             "| mode | thresholds | accept rate | agreement | FPR | FNR | total |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['mode']} | {_th(r)} | {pct(r['accept_rate'])} | {pct(r['agreement'])} | {pct(r['fpr'])} | "
              f"{pct(r['fnr'])} | {pct(r['disagreement'])} |" for r in [*res["table8"], {"mode": "best on a 0.25 grid",
                                                                                       **q}]]
    lines += ["", *sampling_lines(res["sampling"], res["start"], res["budget"]), "",
              *table9_lines(res["table9"], res["budget"], res["val"])]
    if res["also"]:
        a = res["also"]
        lines += ["", "The same review round from the CLI's default thresholds:",
                  *sampling_lines(a["sampling"], a["start"], res["budget"]), "",
                  *table9_lines(a["table9"], res["budget"], res["val"])]
    j = res["judge"]
    lines += ["", f"judge: {j['steps']} steps on {j['rows']} ad_judge rows ({j['wall_s']:.0f} s); held-out "
                  f"exact {j['test'].get('Acc', math.nan):.3f}, within one {j['test'].get('Within1', math.nan):.3f}, "
                  f"MAE of the expected score {j['test'].get('ExpMAE', math.nan):.3f}; on the "
                  f"{j['on_ads']['n']} benchmark ads that pass the rules: "
                  + ", ".join(f"{c} exact {j['on_ads'][c]['exact']:.3f} (MAE {j['on_ads'][c]['mae']:.3f})"
                              for c in CRITERIA if c in j["on_ads"]),
              "direction: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in res["direction"].items())]
    return "\n".join(lines)


def _no_picks(samp: dict) -> dict:
    return {k: {kk: vv for kk, vv in v.items() if kk != "picks"} for k, v in samp.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=None, help="ads, runs and logs; finished stages are reused (default: "
                                                    "runs/autoeval_tiny, --fast: runs/autoeval_tiny_fast)")
    ap.add_argument("--fast", action="store_true", help="tiny counts, an untrained judge: a smoke run")
    ap.add_argument("--pool", type=int, default=None, help=f"review-pool ads (default: {DEFAULTS['pool']})")
    ap.add_argument("--val", type=int, default=None, help=f"validation ads (default: {DEFAULTS['val']})")
    ap.add_argument("--judge-rows", type=int, default=None,
                    help=f"synthetic ad_judge rows of the judge's SFT (default: {DEFAULTS['judge_rows']})")
    ap.add_argument("--judge-steps", type=int, default=None,
                    help=f"judge SFT steps (default: {DEFAULTS['judge_steps']})")
    ap.add_argument("--budget", type=int, default=None,
                    help=f"review budget: pool ads sampled (default: {DEFAULTS['budget']})")
    ap.add_argument("--sample-seeds", type=int, default=None,
                    help=f"seeds of random / diversity sampling (default: {DEFAULTS['sample_seeds']})")
    ap.add_argument("--human", default="relevance=2,generalization=3",
                    help="the human policy on the true scores (default: %(default)s)")
    ap.add_argument("--human-noise", type=float, default=0.04, help="human label flip probability (default: "
                                                                    "%(default)s)")
    ap.add_argument("--start", default="relevance=4,generalization=2",
                    help="the AutoEval's thresholds before refinement, where sampling happens (default: %(default)s, "
                         "Table 8's strict Context(4)+General(2); the round is repeated from the CLI's default)")
    ap.add_argument("--defect-rate", type=float, default=0.3, help="share of ads with an injected rule defect "
                                                                   "(default: %(default)s)")
    ap.add_argument("--match-rate", type=float, default=0.7,
                    help="share of ads of the keyword's category (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the ads and the human noise (default: %(default)s)")
    ap.add_argument("--plot", default=None,
                    help="PNG (default: benchmarks/plots/autoeval_tiny.png; --fast: in the workdir)")
    ap.add_argument("--judge-set", action="append", default=[], metavar="KEY=VALUE", help="extra judge SFT override")
    args = ap.parse_args()
    for k in DEFAULTS:
        if getattr(args, k) is None:
            setattr(args, k, (FAST_SIZES if args.fast else DEFAULTS)[k])
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')}: expected >= 1, got {getattr(args, k)}")
    if args.budget > args.pool:
        ap.error(f"--budget: expected at most --pool ({args.pool}), got {args.budget}")
    for name in ("human_noise", "defect_rate", "match_rate"):
        if not 0.0 <= getattr(args, name) <= 1.0:
            ap.error(f"--{name.replace('_', '-')}: expected a probability in [0, 1], got {getattr(args, name)}")
    policy, start = parse_pair(args.human, "--human"), parse_pair(args.start, "--start")
    root = Path(args.workdir or ("runs/autoeval_tiny_fast" if args.fast else "runs/autoeval_tiny")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    # 1–2. ads, truth, human labels
    n = args.pool + args.val
    ads, truth = make_ads(n, args.seed + 1000, args.match_rate, args.defect_rate)
    labels = human_labels(truth, policy, args.human_noise, args.seed)
    human = [x["accept"] for x in labels]
    data = root / "data"
    data.mkdir(exist_ok=True)
    pool_in = write(data / "pool.jsonl", ads[:args.pool])
    all_in = write(data / "all.jsonl", ads)
    pool_h = write(data / "pool_human.jsonl", [{"id": x["id"], "accept": x["accept"]} for x in labels[:args.pool]])
    all_h = write(data / "all_human.jsonl", [{"id": x["id"], "accept": x["accept"]} for x in labels])
    write(data / "truth.jsonl", [{**t, **{k: x[k] for k in ("clean", "accept", "flipped")}}
                                 for t, x in zip(truth, labels)])

    # 3. judge
    judge_run = train_judge(args, root)
    judge = {"steps": args.judge_steps, "rows": args.judge_rows, "wall_s": _wall(judge_run),
             "test": judge_report(judge_run)}
    print(f"judge: {judge_run} ({judge['wall_s']:.0f} s)", flush=True)
    model = str(judge_run / "checkpoints")

    # 4. the CLI on the pool: its uncertainty sample
    review = root / "pool" / "review.jsonl"
    s_pool, w_pool = autoeval(root / "pool", ["--input", str(pool_in), "--output", str(root / "pool" / "out.jsonl"),
                                              "--model", model, "--human", str(pool_h), "--thresholds", th_arg(start),
                                              "--sample", str(args.budget), "--strategy", "uncertainty",
                                              "--review-out", str(review)],
                              [pool_in, pool_h], root)
    pool_rows = read(root / "pool" / "out.jsonl")
    reviewed = write(data / "reviewed_uncertainty.jsonl",
                     [{"id": r["id"], "accept": human[int(r["id"][2:])]} for r in read(review)])

    # 5. the CLI on all ads: Table 8 sweep, refinement of the CLI's reviewed sample
    s_all, w_all = autoeval(root / "all", ["--input", str(all_in), "--output", str(root / "all" / "out.jsonl"),
                                           "--model", model, "--human", str(all_h), "--sweep",
                                           "--thresholds", th_arg(start), "--refine", str(reviewed)],
                            [all_in, all_h, reviewed], root)
    rows = read(root / "all" / "out.jsonl")
    judge["on_ads"] = judge_on_ads(rows, truth)
    print(f"autoeval: pool {w_pool:.0f} s ({s_pool['ads_per_s']} ads/s), all {w_all:.0f} s "
          f"({s_all['ads_per_s']} ads/s)", flush=True)

    # analysis
    t8, best, sweep = table8(rows, human)
    quarter = threshold_sweep([r["rule_failures"] for r in rows], [r["scores"] for r in rows], human,
                              {"relevance": QUARTER, "generalization": QUARTER})
    best_quarter = min(quarter, key=lambda s: (round(s["disagreement"], 12), round(s["fpr"], 12)))
    cli_sweep = {(s["relevance"], s["generalization"]): s for s in s_all["sweep"]}
    sweep_equal = all(abs(cli_sweep[(s["relevance"], s["generalization"])][k] - s[k]) < 1e-12
                      for s in sweep for k in ("fpr", "fnr", "agreement"))
    samp = sampling(ads[:args.pool], pool_rows, human[:args.pool], start, args.budget, args.sample_seeds)
    cli_pick = [a["id"] for a in read(review)]
    lib_pick = [ads[i]["id"] for i in samp["uncertainty (confidence)"]["picks"][0]]
    # the validation ads' rows of the all-ads run; the pool ads' rows of the same run for the refinement
    picks = {k: v["picks"] for k, v in samp.items() if not k.startswith("_")}
    t9 = table9(rows[:args.pool], human[:args.pool], rows[args.pool:], human[args.pool:], picks, start)
    also = {}
    default = {k: float(v) for k, v in DEFAULT_THRESHOLDS.items()}
    if default != start:  # the same round from the CLI's default thresholds
        s2 = sampling(ads[:args.pool], pool_rows, human[:args.pool], default, args.budget, args.sample_seeds)
        p2 = {k: v["picks"] for k, v in s2.items() if not k.startswith("_")}
        also = {"start": default, "sampling": s2,
                "table9": table9(rows[:args.pool], human[:args.pool], rows[args.pool:], human[args.pool:], p2,
                                 default)}
    cli_ref = s_all["refine"]
    idx = [int(i[2:]) for i in cli_pick]
    lib_ref = refine([rows[i]["rule_failures"] for i in idx], [rows[i]["scores"] for i in idx],
                     [human[i] for i in idx], start, GRID)
    refine_equal = (cli_ref["thresholds_after"] == lib_ref["thresholds_after"]
                    and all(abs(cli_ref[w][k] - lib_ref[w][k]) < 1e-12 for w in ("before", "after")
                            for k in ("agreement", "fpr", "fnr")))
    budgets = sorted({max(1, round(args.pool * f)) for f in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)}
                     | {args.budget})
    curve = found_curve(ads[:args.pool], pool_rows, human[:args.pool], start, budgets, args.sample_seeds)
    rel = [s for s in sweep if s["generalization"] == 0]
    gen = [s for s in sweep if s["relevance"] == 0]
    direction = {
        "combined_lowest": best["combined"]["disagreement"] < min(best["relevance_only"]["disagreement"],
                                                                  best["generalization_only"]["disagreement"]),
        "sweep_monotone": monotone(sweep),
        "fpr_falls": rel[-1]["fpr"] < rel[0]["fpr"] and gen[-1]["fpr"] < gen[0]["fpr"],
        "fnr_rises": rel[-1]["fnr"] > rel[0]["fnr"] and gen[-1]["fnr"] > gen[0]["fnr"],
        "uncertainty_confidence_beats_random": samp["uncertainty (confidence)"]["found"] > samp["random"]["found"],
        "uncertainty_margin_beats_random": samp["uncertainty (margin)"]["found"] > samp["random"]["found"]}
    val_acc = {k: v["validation_after"]["agreement"] for k, v in t9.items() if k != "baseline"}
    direction.update(
        refinement_beats_baseline=min(val_acc.values()) > t9["baseline"]["validation"]["agreement"],
        uncertainty_refines_best=val_acc["uncertainty (confidence)"] >= max(val_acc["random"], val_acc["diversity"]))
    if also:
        s2 = also["sampling"]
        direction.update(
            uncertainty_confidence_beats_random_from_default=s2["uncertainty (confidence)"]["found"]
            > s2["random"]["found"],
            uncertainty_margin_beats_random_from_default=s2["uncertainty (margin)"]["found"] > s2["random"]["found"])
    png = Path(args.plot) if args.plot else (root / "autoeval_tiny.png" if args.fast else
                                             REPO / "benchmarks" / "plots" / "autoeval_tiny.png")
    title = (f"AutoEval tiny: {n} synthetic ads ({args.pool} pool + {args.val} validation), human policy "
             f"{_th(policy)} + {args.human_noise:g} label noise, judge {args.judge_steps} SFT steps; best pair "
             f"{_th(best['combined'])}")
    plot(png, rows, human, truth, best, curve, budgets, title)

    n_def = {d: sum(d in t["defects"] for t in truth) for d in (*DEFECTS, "near_copy")}
    res = {"table8": t8, "best": best, "best_quarter": best_quarter, "direction": direction,
           "sampling": _no_picks(samp), "also": {**also, "sampling": _no_picks(also["sampling"])} if also else {},
           "found_curve": {"budgets": budgets, **curve}, "table9": t9, "judge": judge,
           "human": {"policy": policy, "noise": args.human_noise, "accept_rate": sum(human) / n,
                     "clean_accept_rate": sum(x["clean"] for x in labels) / n,
                     "flipped": sum(x["flipped"] for x in labels)},
           "ads": {"n": n, "pool": args.pool, "val": args.val, "truth_defects": n_def,
                   "rule_failures": s_all["rule_failures"], "rules_passed": s_all["rules_passed"],
                   "relevance": {str(k): sum(t["relevance"] == k for t in truth) for k in range(6)},
                   "generalization": {str(k): sum(t["generalization"] == k for t in truth) for k in range(6)}},
           "cli": {"pool_human_at_start": s_pool["human"], "all_human_refined": s_all["human"], "refine": cli_ref,
                   "review_ids": cli_pick, "uncertainty_pick_equal": cli_pick == lib_pick,
                   "sweep_equal": sweep_equal, "refine_equal": refine_equal,
                   "ads_per_s": {"pool": s_pool["ads_per_s"], "all": s_all["ads_per_s"]}},
           "start": start, "budget": args.budget, "val": args.val, "sample_seeds": args.sample_seeds,
           "match_rate": args.match_rate, "defect_rate": args.defect_rate, "seed": args.seed, "fast": args.fast,
           "plot": str(png), "stage_s": {"judge": judge["wall_s"], "autoeval_pool": w_pool, "autoeval_all": w_all}}
    print(tables(res))
    print(f"workdir: {root}")
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
