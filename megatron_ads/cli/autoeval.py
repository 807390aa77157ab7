"""``megatron-ads autoeval --input ads.jsonl --output out.jsonl [--model DIR] [--human human.jsonl]
[--thresholds relevance=R,generalization=G] [--sweep] [--sample N [--strategy random|uncertainty|diversity]
[--review-out FILE]] [--refine reviewed.jsonl] [--seed S] [--confidence max_prob|entropy] [--json]``

MarketingFM AutoEval (§5, Table 3/8/9): rule checks and an LLM judge decide which ad copies to accept.

- Input rows ``{id, keyword, headline, description[, category]}`` (``category`` is optional and only groups ads
  for diversity sampling). Every malformed line is listed (file, line, field) and nothing is written (exit 2).
- Rules (``rewards.autoeval``, default ``RuleConfig``): ``mention_sale``, ``headline_length``, ``cta_missing``,
  ``blacklist``, ``diversity`` (against the other ads of the same keyword, the first of a near-duplicate pair
  kept).
- Judge (``--model DIR``, ``data.judge``): per ad and criterion (relevance, generalization) the ``ad_judge``
  task's prompt and one prefill over the six score candidates give p(0..5); the score is the expected score
  Σ s·p(s), the ad's confidence the smallest over its criteria of max p (``--confidence max_prob``) or
  1 − normalized entropy (``entropy``). Without ``--model`` the command runs the rules only: ``scores`` and
  ``confidence`` are null and ``accept`` = the rules pass.
- Output rows ``{id, rule_failures, scores: {relevance, generalization} | null, confidence, accept}`` in input
  order; accept = no rule failure and every expected score >= its threshold (``--thresholds``, default
  relevance=2,generalization=3: Table 8's best mode). The file is written whole (temporary file + rename) and
  replaces an existing one.
- ``--human FILE`` (rows ``{id, accept: bool}``, ids of the input, any subset): agreement, FPR (LLM accept &
  human reject) and FNR (LLM reject & human accept) as fractions of the labeled ads (Table 8 style; FPR + FNR =
  1 − agreement). ``--sweep`` (needs ``--human`` and ``--model``): the same for every threshold pair in
  {0..5}² (36 rows, relevance-major).
- ``--sample N``: choose N ads for human review (``--strategy random | uncertainty | diversity``; uncertainty =
  the lowest judge confidence first, or with ``--uncertainty margin`` the expected score nearest its threshold;
  diversity = round-robin over categories / keywords; deterministic in ``--seed``) and write them with the
  judge's outputs to ``--review-out`` (default ``OUT`` with suffix ``.review.jsonl``) for reviewers to label.
- ``--refine FILE`` (the reviewed sample, rows ``{id, accept: bool}``; needs ``--model``): choose the thresholds
  of the {0..5}² grid that agree best with the reviewers (ties: lower FPR, then the smallest change), report
  FP / FN / Acc before and after on the sample (Table 9 style; and on ``--human`` when given, as a validation
  set), and write the output with the refined thresholds.

Exit codes: 0 ok; 2 bad input (flags, malformed lines, unknown ids, an unreadable checkpoint).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from megatron_ads.cli import emit
from megatron_ads.cli.engine_args import add_engine_args, read_layout
from megatron_ads.data.judge import CONFIDENCE_KINDS, judge
from megatron_ads.data.tasks import JUDGE_CRITERIA
from megatron_ads.rewards.autoeval import (DEFAULT_THRESHOLDS, RULES, STRATEGIES, SWEEP_GRID, UNCERTAINTY_BY,
                                           RuleChecker, RuleConfig, accept, agreement, agreement_summary, refine,
                                           select_for_review, threshold_sweep)
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl, row_id_problems, write_text
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.autoeval")

CRITERIA = tuple(JUDGE_CRITERIA)
"""The judge's criteria, in output order."""
INPUT_KEYS = ("id", "keyword", "headline", "description")


def register(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("output rows: {id, rule_failures, scores: {relevance, generalization} | null, confidence, accept}\n"
                f"rule failures: {', '.join(RULES)}\n"
                "exit codes: 0 ok; 2 bad input (flags, malformed lines naming file:line and field, unknown ids,\n"
                "checkpoint)")
    p.add_argument("--input", required=True, help="ads JSONL: {id, keyword, headline, description[, category]}")
    p.add_argument("--output", required=True,
                   help="decisions JSONL {id, rule_failures, scores, confidence, accept} (written whole, replaced)")
    p.add_argument("--model", default=None,
                   help="judge checkpoint (HF or Megatron, with a tokenizer); without it: rules only")
    p.add_argument("--human", default=None, metavar="FILE",
                   help="human labels {id, accept: bool}: agreement, FPR, FNR (fractions of the labeled ads)")
    p.add_argument("--thresholds", default=None, metavar="relevance=R,generalization=G",
                   help="judge thresholds on the expected 0-5 scores (default: relevance=2,generalization=3)")
    p.add_argument("--sweep", action="store_true",
                   help="with --human and --model: FPR/FNR/total for every threshold pair in {0..5}^2")
    p.add_argument("--sample", type=int, default=None, metavar="N", help="choose N ads for human review")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="active sampling for --sample (default: random); uncertainty needs --model")
    p.add_argument("--uncertainty", choices=UNCERTAINTY_BY, default="confidence",
                   help="uncertainty sampling by the lowest judge confidence or the expected score nearest its "
                        "threshold (default: %(default)s)")
    p.add_argument("--review-out", default=None, metavar="FILE",
                   help="where --sample writes the chosen ads (default: OUT with suffix .review.jsonl)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random and diversity sampling (default: 0)")
    p.add_argument("--refine", default=None, metavar="FILE",
                   help="reviewed sample {id, accept: bool}: re-choose the thresholds on it (needs --model) and "
                        "report FP/FN/Acc before and after")
    p.add_argument("--confidence", choices=CONFIDENCE_KINDS, default="max_prob",
                   help="judge confidence per criterion: max p(s) or 1 - normalized entropy (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="ads per judge batch (default: %(default)s)")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------ inputs
def parse_thresholds(text: str | None) -> dict[str, float]:
    """``relevance=R,generalization=G`` (either or both) over ``DEFAULT_THRESHOLDS``; BadInput naming the flag."""
    out = {k: float(v) for k, v in DEFAULT_THRESHOLDS.items()}
    if text is None:
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        try:
            v = float(value) if sep else None
        except ValueError:
            v = None
        if key not in CRITERIA or v is None or not 0.0 <= v <= 5.0:
            raise BadInput(f"--thresholds: expected CRITERION=VALUE pairs with CRITERION in {list(CRITERIA)} and "
                           f"VALUE in [0, 5], e.g. relevance=2,generalization=3; got {part!r}")
        out[key] = v
    return out


def _report(path: Any, problems: list[str], what: str) -> None:
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise BadInput(f"{len(problems)} invalid line(s) in {path}{more}; expected {what}:\n"
                       + "\n".join(problems[:20]))


def read_ads(path: str | Path) -> list[dict]:
    """The input ads; every malformed line is reported (file:line: field) in one ``BadInput``."""
    rows, problems, seen = [], [], {}

    def bad(n: int, message: str) -> None:
        problems.append(message)

    for n, row in iter_jsonl(path, on_error=bad):
        p = row_id_problems(row, n, seen) + [f"field '{k}': missing" for k in INPUT_KEYS if k != "id" and k not in row]
        if "keyword" in row and not (isinstance(row["keyword"], str) and row["keyword"].strip()):
            p.append(f"field 'keyword': expected a non-empty string, got {row['keyword']!r}")
        p += [f"field '{k}': expected a string, got {row[k]!r}" for k in ("headline", "description", "category")
              if k in row and not isinstance(row[k], str)]
        problems += [f"{path}:{n}: {x}" for x in p]
        rows.append(row)
    _report(path, problems, "{id, keyword, headline, description[, category]}")
    if not rows:
        raise BadInput(f"{path}: no ads (expected one JSON object per line)")
    return rows


def read_labels(path: str | Path, flag: str, ids: dict[str, int]) -> dict[int, bool]:
    """Human decisions ``{id, accept: bool}`` of ``path`` by ad index (ids must be the input's)."""
    out: dict[int, bool] = {}
    problems, seen = [], {}

    def bad(n: int, message: str) -> None:
        problems.append(message)

    for n, row in iter_jsonl(path, on_error=bad):
        p = [f"field '{k}': missing" for k in ("id", "accept") if k not in row]
        if "accept" in row and not isinstance(row["accept"], bool):
            p.append(f"field 'accept': expected true or false, got {row['accept']!r}")
        if "id" in row:
            key = str(row["id"])
            if key in seen:
                p.append(f"field 'id': duplicate {row['id']!r} (first on line {seen[key]})")
            elif key not in ids:
                p.append(f"field 'id': {row['id']!r} is not an id of the --input ads")
            seen.setdefault(key, n)
        if p:
            problems += [f"{path}:{n}: {x}" for x in p]
        else:
            out[ids[str(row["id"])]] = row["accept"]
    _report(path, problems, f"{flag} rows {{id, accept: true|false}}")
    if not out:
        raise BadInput(f"{flag} {path}: no labels (expected one {{id, accept}} object per line)")
    return out


def _check_flags(args) -> dict[str, float]:
    thresholds = parse_thresholds(args.thresholds)
    if args.batch_size < 1:
        raise BadInput(f"--batch-size: expected >= 1, got {args.batch_size}")
    if args.sample is None and (args.strategy is not None or args.review_out is not None):
        raise BadInput("--strategy/--review-out: only with --sample N")
    if args.sample is not None and args.sample < 1:
        raise BadInput(f"--sample: expected a number of ads >= 1, got {args.sample}")
    if args.sweep and not args.human:
        raise BadInput("--sweep: needs --human (the sweep compares decisions with human labels)")
    need_model = [flag for flag, on in (("--sweep", args.sweep), ("--refine", args.refine),
                                        ("--strategy uncertainty", args.strategy == "uncertainty")) if on]
    if need_model and not args.model:
        raise BadInput(f"{need_model[0]}: needs --model (without the judge there are no scores or confidences; "
                       f"rules-only mode accepts exactly the ads that pass the rules)")
    par, _ = read_layout(args)
    if (par.tp, par.pp, par.ep) != (1, 1, 1) or args.nproc is not None:
        raise BadInput(f"--tp/--pp/--ep/--nproc: autoeval runs the judge in one process (got tp {par.tp}, pp "
                       f"{par.pp}, ep {par.ep}); for a model split across ranks label the ad_judge rows with "
                       f"`megatron-ads label --task ad_judge`")
    reads = {Path(p).resolve(): flag for flag, p in (("--refine", args.refine), ("--human", args.human),
                                                     ("--input", args.input)) if p}
    written: dict[Path, str] = {}
    for flag, path in (("--output", args.output), ("--review-out", _review_path(args) if args.sample else None)):
        if path is not None:
            r = Path(path).resolve()
            if r in reads or r in written:
                raise BadInput(f"{flag} {path}: the same file as {reads.get(r) or written[r]}; it would be replaced")
            written[r] = flag
    return thresholds


def _review_path(args) -> Path:
    return Path(args.review_out) if args.review_out else Path(args.output).with_suffix(".review.jsonl")


# ------------------------------------------------------------------------------------ judge
def load_judge(args):
    """The judge's scorer: the checkpoint on the inference engine (``cli.label``'s loader)."""
    from megatron_ads.cli.label import _scorer

    return _scorer({"model": str(args.model), "precision": args.precision, "tp": args.tp, "pp": args.pp,
                    "ep": args.ep, "batch_size": args.batch_size, "cache": args.cache})


def judge_ads(ads: list[dict], scorer, batch_size: int, confidence_kind: str) -> list[dict]:
    """``data.judge.judge`` over ``ads`` in batches of ``batch_size`` ads, with a progress bar."""
    out: list[dict] = []
    with progress(total=len(ads), desc="autoeval judge", unit="ad") as bar:
        for start in range(0, len(ads), batch_size):
            chunk = ads[start:start + batch_size]
            out += judge(chunk, scorer, CRITERIA, confidence_kind)
            bar.update(len(chunk))
    return out


# ------------------------------------------------------------------------------------ run
def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def run(args) -> int:
    thresholds = _check_flags(args)
    t0 = time.perf_counter()
    ads = read_ads(args.input)
    ids = {str(a["id"]): i for i, a in enumerate(ads)}
    human = read_labels(args.human, "--human", ids) if args.human else None
    reviewed = read_labels(args.refine, "--refine", ids) if args.refine else None
    failures = RuleChecker(RuleConfig()).check(ads)
    judged = judge_ads(ads, load_judge(args), args.batch_size, args.confidence) if args.model else None
    scores = [j["scores"] for j in judged] if judged else None

    def decide(th: dict[str, float]) -> list[bool]:
        return [accept(f, s, th) for f, s in zip(failures, scores)] if scores else [not f for f in failures]

    def versus(decisions: list[bool], labels: dict[int, bool]) -> dict[str, float]:
        idx = sorted(labels)
        return agreement_summary(agreement([decisions[i] for i in idx], [labels[i] for i in idx]))

    result: dict[str, Any] = {"input": str(args.input), "output": str(args.output),
                              "model": str(args.model) if args.model else None,
                              "mode": "judge" if judged else "rules"}
    if reviewed is not None:
        idx = sorted(reviewed)
        rep = refine([failures[i] for i in idx], [scores[i] for i in idx], [reviewed[i] for i in idx], thresholds)
        rep["file"] = str(args.refine)
        if human is not None:
            rep["validation"] = {"before": versus(decide(thresholds), human),
                                 "after": versus(decide(rep["thresholds_after"]), human)}
        thresholds = rep["thresholds_after"]
        result["refine"] = rep
    decisions = decide(thresholds)
    out_rows = [{"id": a["id"], "rule_failures": f, "scores": j["scores"] if j else None,
                 "confidence": j["confidence"] if j else None, "accept": d}
                for a, f, j, d in zip(ads, failures, judged or [None] * len(ads), decisions)]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    write_text(args.output, _jsonl(out_rows))
    n = len(ads)
    result.update(rows=n, accepted=sum(decisions), accept_rate=sum(decisions) / n,
                  rules_passed=sum(not f for f in failures),
                  rule_failures={r: sum(r in f for f in failures) for r in RULES},
                  thresholds=thresholds if judged else None, confidence=args.confidence if judged else None)
    if human is not None:
        result["human"] = {"file": str(args.human), **versus(decisions, human)}
    if args.sweep:
        idx = sorted(human)
        result["sweep"] = threshold_sweep([failures[i] for i in idx], [scores[i] for i in idx],
                                          [human[i] for i in idx], SWEEP_GRID)
    if args.sample is not None:
        strategy = args.strategy or "random"
        view = [{"keyword": a["keyword"], "category": a.get("category"), "scores": r["scores"],
                 "confidence": r["confidence"]} for a, r in zip(ads, out_rows)]
        chosen = select_for_review(view, args.sample, strategy, seed=args.seed, thresholds=thresholds,
                                   uncertainty_by=args.uncertainty)
        review_rows = [{**{k: ads[i][k] for k in ("id", "keyword", "headline", "description", "category")
                           if k in ads[i]},
                        "rule_failures": out_rows[i]["rule_failures"], "scores": out_rows[i]["scores"],
                        "confidence": out_rows[i]["confidence"], "llm_accept": out_rows[i]["accept"]}
                       for i in chosen]
        path = _review_path(args)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, _jsonl(review_rows))
        result["review"] = {"strategy": strategy, "seed": args.seed, "requested": args.sample, "n": len(chosen),
                            "file": str(path), "ids": [ads[i]["id"] for i in chosen]}
        if strategy == "uncertainty":
            result["review"]["uncertainty"] = args.uncertainty
    seconds = time.perf_counter() - t0
    result.update(seconds=round(seconds, 3), ads_per_s=round(n / seconds, 2) if seconds > 0 else None)
    emit(result, args.json, _human)
    return 0


# ------------------------------------------------------------------------------------ human rendering
def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _th(th: dict[str, float]) -> str:
    return ", ".join(f"{k} >= {v:g}" for k, v in th.items())


def _human(r: dict) -> str:
    how = (f"judge {r['model']}: {_th(r['thresholds'])}, confidence {r['confidence']}" if r["mode"] == "judge"
           else "rules only")
    fails = ", ".join(f"{k} {v}" for k, v in r["rule_failures"].items() if v) or "none"
    lines = [f"autoeval: {r['rows']} ads -> {r['output']} ({how}) in {r['seconds']} s",
             f"accepted {r['accepted']} / {r['rows']} ({_pct(r['accept_rate'])}%); rules passed {r['rules_passed']}; "
             f"rule failures: {fails}"]
    if "human" in r:
        h = r["human"]
        lines += ["", f"vs human labels ({h['file']}, Table 8 style, % of the {h['n']} labeled ads):",
                  "| n | agreement | FPR (LLM accept, human reject) | FNR (LLM reject, human accept) | total |",
                  "|---|---|---|---|---|",
                  f"| {h['n']} | {_pct(h['agreement'])} | {_pct(h['fpr'])} | {_pct(h['fnr'])} | "
                  f"{_pct(h['disagreement'])} |"]
    if "sweep" in r:
        lines += ["", "threshold sweep (%):", "| relevance | generalization | accept rate | FPR | FNR | total |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {s['relevance']:g} | {s['generalization']:g} | {_pct(s['accept_rate'])} | {_pct(s['fpr'])} | "
                  f"{_pct(s['fnr'])} | {_pct(s['disagreement'])} |" for s in r["sweep"]]
    if "refine" in r:
        f = r["refine"]
        lines += ["", f"refinement on the reviewed sample ({f['file']}, Table 9 style, %):",
                  "| thresholds | on | n | FP | FN | Acc |", "|---|---|---|---|---|---|"]
        for when in ("before", "after"):
            th = _th(f[f"thresholds_{when}"])
            sets = [("reviewed", f[when])] + ([("validation (--human)", f["validation"][when])]
                                              if "validation" in f else [])
            lines += [f"| {when}: {th} | {on} | {a['n']} | {_pct(a['fpr'])} | {_pct(a['fnr'])} | "
                      f"{_pct(a['agreement'])} |" for on, a in sets]
    if "review" in r:
        v = r["review"]
        lines += ["", f"human review: {v['n']} ads chosen by {v['strategy']} sampling (seed {v['seed']}) -> "
                      f"{v['file']}"]
    return "\n".join(lines)
