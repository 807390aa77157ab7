"""The paper's metric suite (AdNanny §5.1–5.2) for query–ad and ad–user labeling.

Every setting is a binary problem with a *positive* class (non-defect) and a *negative* class
(defect): DR = ground-truth defect rate, ModelDR = predicted defect rate, PosAcc / NegAcc = recall
of each class, PosPrec / NegPrec = precision, PosF1 / NegF1, Acc, and BACC = (PosAcc + NegAcc) / 2,
the primary metric. Ad–user relevance: negative = score 0 ("Bad"), RR / ModelRR are the negative
rates, AUC ranks P(positive) = 1 - P(score 0). All values are fractions in [0, 1]; an empty class
gives 0 for its recall/precision/F1 (scikit-learn's zero_division=0).

Malformed predictions (missing row, missing or unparseable label) are counted and scored as wrong
answers: the predicted class is the opposite of the gold class, and for AUC the probability is the
worst one (0 for a positive, 1 for a negative).

``METRICS`` names each metric (a task names the one it is scored by, ``data.tasks.Task.metric``):
its evaluation over gold/prediction rows, its paper-style markdown table, and its flat summary (the
values SFT validation logs per interval and λ_t can follow).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from megatron_ads.eval import adtasks
from megatron_ads.eval.querygen import RECALL_K, HFEmbedder, Retriever, evaluate_query_gen
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl

RELEVANCE = ("bad", "fair", "good")
BINARY = ("good", "bad")
QUERY_AD_VIEWS = {
    "bad_view": ("relevance", lambda v: v == "bad"),
    "fair_view": ("relevance", lambda v: v in ("bad", "fair")),
    "location": ("location", lambda v: v == "bad"),
    "quality": ("quality", lambda v: v == "bad"),
}
ALLOWED = {"relevance": RELEVANCE, "location": BINARY, "quality": BINARY}


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def binary_metrics(gold_defect: list[bool], pred_defect: list[bool]) -> dict[str, float]:
    """Defect-view metrics; positive = non-defect, negative = defect."""
    if len(gold_defect) != len(pred_defect):
        raise ValueError(f"binary_metrics: {len(gold_defect)} gold vs {len(pred_defect)} predictions")
    n = len(gold_defect)
    tp = sum(1 for g, p in zip(gold_defect, pred_defect) if not g and not p)  # positive predicted positive
    tn = sum(1 for g, p in zip(gold_defect, pred_defect) if g and p)
    fp = sum(1 for g, p in zip(gold_defect, pred_defect) if g and not p)  # defect predicted non-defect
    fn = sum(1 for g, p in zip(gold_defect, pred_defect) if not g and p)
    pos_acc, neg_acc = _div(tp, tp + fn), _div(tn, tn + fp)
    pos_prec, neg_prec = _div(tp, tp + fp), _div(tn, tn + fn)
    return {
        "DR": _div(tn + fp, n), "ModelDR": _div(tn + fn, n),
        "BACC": (pos_acc + neg_acc) / 2, "Acc": _div(tp + tn, n),
        "PosAcc": pos_acc, "PosPrec": pos_prec, "NegAcc": neg_acc, "NegPrec": neg_prec,
        "PosF1": _div(2 * pos_prec * pos_acc, pos_prec + pos_acc),
        "NegF1": _div(2 * neg_prec * neg_acc, neg_prec + neg_acc),
        "n": n,
    }


def auc(labels_pos: list[bool], scores: list[float]) -> float:
    """ROC AUC of ``scores`` for the positive class (Mann–Whitney U with average ranks for ties)."""
    pairs = sorted(zip(scores, labels_pos))
    n_pos = sum(labels_pos)
    n_neg = len(labels_pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg_rank = (i + j) / 2 + 1
        rank_sum += avg_rank * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


ECE_BINS = 15
"""Default number of equal-width confidence bins of ``expected_calibration_error`` (Guo et al., 2017)."""


def expected_calibration_error(probs: list[list[float]], gold: list[int], n_bins: int = ECE_BINS) -> float:
    """Expected calibration error (top-label) of predicted distributions against gold class indices.

    Each row's confidence is its largest probability, its prediction the first class with it, and it is
    correct when that is the gold class. Rows fall into ``n_bins`` equal-width bins over [0, 1] by
    confidence: bin b (0-based) holds confidences in (b/n_bins, (b+1)/n_bins], the first bin also 0.
    ECE = sum over bins of (rows in bin / rows) * |accuracy(bin) - mean confidence(bin)|; empty bins add
    nothing. 0 for a perfectly calibrated predictor; NaN without rows.
    """
    if len(probs) != len(gold):
        raise ValueError(f"expected_calibration_error: {len(probs)} rows of probs vs {len(gold)} gold labels")
    if n_bins < 1:
        raise ValueError(f"n_bins: expected >= 1, got {n_bins}")
    if not probs:
        return float("nan")
    count = [0] * n_bins
    conf_sum = [0.0] * n_bins
    correct_sum = [0] * n_bins
    for p, g in zip(probs, gold):
        conf = max(p)
        pred = list(p).index(conf)
        b = min(max(math.ceil(conf * n_bins) - 1, 0), n_bins - 1)
        count[b] += 1
        conf_sum[b] += conf
        correct_sum[b] += int(pred == g)
    n = len(probs)
    return sum(abs(correct_sum[b] - conf_sum[b]) / n for b in range(n_bins) if count[b])


# ------------------------------------------------------------------------------------ JSONL
@dataclass(slots=True)
class ParsedJSONL:
    rows: dict[str, dict]
    errors: list[dict[str, Any]]
    """{"line": n, "error": "..."} for lines that could not be used."""


def read_jsonl(path: str | Path, strict: bool) -> ParsedJSONL:
    """Rows keyed by ``id``. ``strict`` (gold rows): any bad line raises ``BadInput`` naming file and line.
    Not strict (predictions, i.e. model output): a bad line is recorded in ``errors`` and its row, if any,
    is scored as a wrong answer."""
    if strict:
        rows: dict[str, dict] = {}
        for lineno, row in iter_jsonl(path, required=("id",)):
            key = str(row["id"])
            if key in rows:
                raise BadInput(f"{path}:{lineno}: duplicate id {key!r}")
            rows[key] = row
        return ParsedJSONL(rows, [])
    return _read_predictions(Path(path))


def _read_predictions(path: Path) -> ParsedJSONL:
    """Predictions keyed by ``id``; unreadable lines (and repeated ids) are recorded, not fatal."""
    rows: dict[str, dict] = {}
    errors: list[dict[str, Any]] = []

    def bad(lineno: int, message: str) -> None:
        errors.append({"line": lineno, "error": message})

    for lineno, row in iter_jsonl(path, ("id",), on_error=bad):
        key = str(row["id"])
        if key in rows:
            bad(lineno, f"{path}:{lineno}: duplicate id {key!r}")
            continue
        rows[key] = row
    return ParsedJSONL(rows, errors)


def parsed_rows(rows: list[dict]) -> ParsedJSONL:
    """In-memory rows (already valid, e.g. predictions made during training) keyed by ``id``."""
    return ParsedJSONL({str(r["id"]): r for r in rows}, [])


def _label(row: dict | None, field: str) -> str | None:
    if row is None or not isinstance(row.get("labels"), dict):
        return None
    v = row["labels"].get(field)
    v = v.strip().lower() if isinstance(v, str) else None
    return v if v in ALLOWED[field] else None


def evaluate_query_ad(gold: ParsedJSONL, pred: ParsedJSONL) -> dict[str, Any]:
    """Bad/Fair views and the location/quality attributes (JSON layout of the `eval` command)."""
    for key, row in gold.rows.items():
        for field in ALLOWED:
            if _label(row, field) is None:
                raise ValueError(f"gold id {key!r}: labels.{field} must be one of {ALLOWED[field]}")
    ids = sorted(gold.rows)
    malformed_ids = set()
    out: dict[str, Any] = {}
    for view, (field, is_defect) in QUERY_AD_VIEWS.items():
        g, p = [], []
        for key in ids:
            gd = is_defect(_label(gold.rows[key], field))
            pv = _label(pred.rows.get(key), field)
            if pv is None:
                malformed_ids.add(key)
                pd = not gd
            else:
                pd = is_defect(pv)
            g.append(gd)
            p.append(pd)
        out[view] = binary_metrics(g, p)
    out.update(n=len(ids), malformed=len(malformed_ids), pred_line_errors=pred.errors,
               unmatched_predictions=sorted(set(pred.rows) - set(gold.rows)))
    return out


def _score(row: dict | None) -> int | None:
    if row is None:
        return None
    v = row.get("score")
    try:
        iv = int(v)
    except (TypeError, ValueError):
        return None
    return iv if iv in (0, 1, 2, 3) and float(v) == iv else None


def _p_positive(row: dict | None) -> float | None:
    probs = row.get("probs") if row else None
    if not isinstance(probs, dict):
        return None
    try:
        p0 = float(probs.get("0", probs.get(0)))
    except (TypeError, ValueError):
        return None
    return 1.0 - p0 if 0.0 <= p0 <= 1.0 else None


def evaluate_ad_user(gold: ParsedJSONL, pred: ParsedJSONL) -> dict[str, Any]:
    """Bad (score 0, negative) vs Others (positive): RR, ModelRR, BACC, Acc, PosAcc, NegAcc, AUC."""
    ids = sorted(gold.rows)
    g_neg, p_neg, pos_labels, p_scores = [], [], [], []
    malformed = 0
    for key in ids:
        gs = _score(gold.rows[key])
        if gs is None:
            raise ValueError(f"gold id {key!r}: score must be an integer 0..3")
        row = pred.rows.get(key)
        ps = _score(row)
        gneg = gs == 0
        if ps is None:
            malformed += 1
            pneg, prob = not gneg, (1.0 if gneg else 0.0)
        else:
            pneg = ps == 0
            prob = _p_positive(row)
            if prob is None:
                prob = 0.0 if pneg else 1.0
        g_neg.append(gneg)
        p_neg.append(pneg)
        pos_labels.append(not gneg)
        p_scores.append(prob)
    m = binary_metrics(g_neg, p_neg)
    return {"RR": m["DR"], "ModelRR": m["ModelDR"], "BACC": m["BACC"], "Acc": m["Acc"], "PosAcc": m["PosAcc"],
            "NegAcc": m["NegAcc"], "AUC": auc(pos_labels, p_scores), "n": len(ids), "malformed": malformed,
            "pred_line_errors": pred.errors, "unmatched_predictions": sorted(set(pred.rows) - set(gold.rows))}


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _footer(r: dict[str, Any]) -> str:
    return (f"\nn={r['n']}, malformed predictions={r['malformed']}, unreadable prediction lines="
            f"{[e['line'] for e in r['pred_line_errors']]}")


def _views_markdown(r: dict[str, Any]) -> list[str]:
    cols = ["ModelDR", "BACC", "Acc", "PosAcc", "PosPrec", "NegAcc", "NegPrec", "PosF1", "NegF1"]
    lines = ["| view | DR | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for view in QUERY_AD_VIEWS:
        v = r[view]
        lines.append(f"| {view} | {_pct(v['DR'])} | " + " | ".join(_pct(v[c]) for c in cols) + " |")
    return lines


def _score_markdown(r: dict[str, Any]) -> list[str]:
    cols = ["ModelRR", "BACC", "Acc", "PosAcc", "NegAcc", "AUC"]
    return ["| RR | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|",
            f"| {_pct(r['RR'])} | " + " | ".join(_pct(r[c]) for c in cols) + " |"]


def _queries_markdown(r: dict[str, Any]) -> list[str]:
    cols = ["Relevance", "Diversity", "Difficulty", "Distinct1", "Distinct2"]
    heads = list(cols)
    if "recall_at_k" in r:  # with a retriever (eval --task query_gen)
        k = r["recall_k"]
        cols += ["recall_at_k", "recall_at_k_keyword", "recall_at_k_gain"]
        heads += [f"Recall@{k}", f"Recall@{k} keyword", f"Recall@{k} gain"]
    return ["| " + " | ".join(heads) + " |", "|---" * len(cols) + "|", "| " + " | ".join(_pct(r[c]) for c in cols) + " |"]


def _views_summary(r: dict[str, Any]) -> dict[str, float]:
    out = {f"{view if view.endswith('view') else field}_BACC": r[view]["BACC"]
           for view, (field, _) in QUERY_AD_VIEWS.items()}
    out["mean_BACC"] = sum(out[k] for k in ("bad_view_BACC", "location_BACC", "quality_BACC")) / 3
    return out


def _score_summary(r: dict[str, Any]) -> dict[str, float]:
    return {"AUC": r["AUC"], "BACC": r["BACC"]}


def _queries_summary(r: dict[str, Any]) -> dict[str, float]:
    out = {k: r[k] for k in ("Relevance", "Diversity", "Difficulty", "Distinct2")}
    out["malformed"] = r["malformed"] / max(1, r["n"])
    out.update({k: r[k] for k in ("recall_at_k", "recall_at_k_gain") if k in r})
    return out


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of ``METRICS``."""

    evaluate: Callable[..., dict[str, Any]]
    """(gold: ParsedJSONL, pred: ParsedJSONL[, embedder]) -> the ``eval`` command's JSON."""
    table: Callable[[dict[str, Any]], list[str]]
    summary: Callable[[dict[str, Any]], dict[str, float]]
    """The flat values SFT validation logs (``<task>/<key>``) and λ_t can follow."""
    embedder: bool = False
    """Takes an embedder (``--embedder``) and a retriever (``--ads``, ``--recall-k``: recall@K)."""
    ctr: bool = False
    """Takes ``ctr_fn`` (keyword, ad text) -> true click probability (the synthetic world's ``true_ctr``)."""


METRICS: dict[str, Metric] = {
    "defect_views": Metric(evaluate=evaluate_query_ad, table=_views_markdown, summary=_views_summary),
    "relevance_score": Metric(evaluate=evaluate_ad_user, table=_score_markdown, summary=_score_summary),
    "query_generation": Metric(evaluate=evaluate_query_gen, table=_queries_markdown, summary=_queries_summary,
                               embedder=True),
    "ad_rewrite": Metric(evaluate=adtasks.evaluate_ad_rewrite, table=adtasks.rewrite_markdown,
                         summary=adtasks.rewrite_summary, ctr=True),
    "user_query_gen": Metric(evaluate=adtasks.evaluate_user_queries, table=adtasks.user_queries_markdown,
                             summary=adtasks.user_queries_summary),
    "user_profile": Metric(evaluate=adtasks.evaluate_user_profile, table=adtasks.profile_markdown,
                           summary=adtasks.profile_summary),
    "eval_report": Metric(evaluate=adtasks.evaluate_eval_report, table=adtasks.report_markdown,
                          summary=adtasks.report_summary),
    "judge_score": Metric(evaluate=adtasks.evaluate_ad_judge, table=adtasks.judge_markdown,
                          summary=adtasks.judge_summary),
}
"""Query–ad defect views (Bad/Fair relevance, location, quality), ad–user relevance score (Bad vs Others, AUC),
keyword query generation (relevance, diversity, difficulty), and the other AdNanny §2 generation tasks
(``eval.adtasks``): ad rewriting (limits, keyword coverage, true CTR uplift), user-history query generation
(relevance against the true interests, distinct-n), user profiles (precision/recall/F1 against the true
profile, JSON validity), evaluation reports (table accuracy against the true per-labeler accuracy) and the AutoEval
judge's 0–5 scores (exact / within-one accuracy, MAE of the predicted and of the expected score)."""


def metric(name: str) -> Metric:
    """The metric ``name`` of ``METRICS`` (ValueError listing the known ones otherwise)."""
    if name not in METRICS:
        raise ValueError(f"metric: expected one of {sorted(METRICS)}, got {name!r}")
    return METRICS[name]


def evaluate(name: str, pred_path: str | Path, gold_path: str | Path, embedder: str | None = None,
             retriever: Retriever | None = None, k: int = RECALL_K, corpus_flag: str = "--ads",
             ctr_fn: Callable[[str, str], float] | None = None) -> dict[str, Any]:
    """Score a prediction JSONL against a gold JSONL (rows join on ``id``) with metric ``name``.

    Query generation only: ``embedder`` — a local Hugging Face model directory for the relevance/diversity
    embeddings (default: the built-in hashed character-trigram embedder); ``retriever`` — a frozen retriever
    (``querygen.Retriever``) for recall@K at K = ``k`` (None: no recall@K); ``corpus_flag`` names its corpus
    in errors.

    Ad rewriting only: ``ctr_fn`` — (keyword, ad text) -> true click probability (``data.synthetic.true_ctr``) for
    the true CTR uplift (None: those values are NaN).
    """
    m = metric(name)
    gold = read_jsonl(gold_path, strict=True)
    pred = read_jsonl(pred_path, strict=False)
    if m.embedder:
        return m.evaluate(gold, pred, HFEmbedder(embedder) if embedder else None, retriever=retriever, k=k,
                          corpus_flag=corpus_flag)
    if m.ctr:
        return m.evaluate(gold, pred, ctr_fn=ctr_fn)
    return m.evaluate(gold, pred)


def markdown(name: str, r: dict[str, Any]) -> str:
    """Metric ``name``'s tables laid out like the paper's (percentages with two decimals)."""
    return "\n".join(metric(name).table(r) + [_footer(r)])
