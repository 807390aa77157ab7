"""Metrics of the AdNanny §2 generation tasks beyond keyword query generation: ad rewriting, user-history
query generation, user profiles and model evaluation reports. The paper gives no metrics for them
(spec §A.4); these check a prediction against the hidden ground truth of the synthetic rows.

Gold rows are the task's ``gold`` rows (``data.tasks``); prediction rows hold the parsed output fields
(``{"id", "title", "description", "rationale"?}``, ``{"id", "queries"}``, ``{"id", "profile"}``,
``{"id", "summary", "table", "better"}``). A missing prediction or unusable fields count as malformed and
score as a wrong answer on every metric (as for the labeling tasks). Values are fractions in [0, 1] unless
said otherwise.

- **ad_rewrite**: ``title_ok`` / ``description_ok`` — share of rows whose headline / description is within
  the gold row's ``limits`` (default 30 / 90 characters, ``AD_LIMITS``); ``constraint_rate`` — both;
  ``keyword_coverage`` — mean share of the keyword's words in the rewrite's text (title and description
  joined with ". "), ``keyword_coverage_original`` the same for the original ad; ``rationale_rate`` — share
  with a non-empty rationale; ``parse_rate``. With ``ctr_fn`` (the synthetic world's true click probability,
  ``data.synthetic.true_ctr``, handed in by the caller: ``eval`` does not import ``data``) and over the gold
  rows that carry ``truth``: ``ctr_original``, ``ctr_rewrite`` (a malformed rewrite is an unshowable ad: CTR
  0), ``ctr_uplift`` = their difference (mean over rows) and ``ctr_win_rate`` (share with uplift > 0); NaN
  without ``ctr_fn`` or such rows.
- **user_query_gen**: per row the first N distinct queries count (N = the row's ``n_queries``; de-duplicated
  case-insensitively after whitespace normalization). A query is *relevant* iff it has a word of
  ``truth.relevant_words`` and none of ``truth.off_topic_words`` (words: lower-cased ``[\\w']+``).
  ``Relevance`` — relevant queries / counted queries over all rows (a malformed row counts as N irrelevant
  queries); ``InterestCoverage`` — mean share of the row's true interests with at least one relevant query
  holding a word of that interest (``truth.interest_words``); ``Distinct1`` / ``Distinct2`` — mean distinct-n
  of the row's counted queries; ``CountOK`` — share of rows with exactly N distinct queries.
- **user_profile**: a predicted profile (an object, or its JSON text) is *valid* when it has exactly the keys
  interests, intents and constraints, each a list of strings; ``json_valid`` is their share. Items compare as
  sets after lower-casing and collapsing whitespace. Per key, micro-averaged over rows: precision = matched /
  predicted, recall = matched / gold, F1 (``interest_precision``, ``interest_recall``, ``interest_F1``,
  ``intent_F1``, ``constraint_F1``; an invalid profile predicts nothing); ``exact_match`` — share of rows with
  all three sets equal.
- **ad_judge** (MarketingFM AutoEval's judge, scores 0–5): ``Acc`` — share of rows whose predicted score
  equals the gold one; ``Within1`` — share within one point; ``MAE`` — mean absolute error of the predicted
  score; ``ExpMAE`` — the same for the expected score Σ s·p(s) of the prediction's ``probs`` (the predicted
  score when it has none); a malformed prediction counts the largest possible error, max(g, 5 − g);
  ``by_criterion`` — n, Acc and MAE per gold ``criterion``.
- **eval_report**: ``parse_rate`` — share of rows with a summary, a table with both labelers and a better
  labeler; ``table_accuracy`` — share of (row, labeler) table entries whose correct and total counts equal the
  truth and whose accuracy (percent) is the true accuracy to one decimal (within 0.05 points); ``accuracy_MAE``
  — mean |reported accuracy / 100 − true accuracy| over (row, labeler) entries, a missing entry counting 1;
  ``better_accuracy`` — share of rows naming the true better labeler (or tie).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from megatron_ads.eval.querygen import clean_queries, distinct_n, words

AD_LIMITS = {"title": 30, "description": 90}
"""Default character limits of a rewrite (as ``data.tasks.AD_LIMITS``) when a gold row has no ``limits``."""
PROFILE_KEYS = ("interests", "intents", "constraints")
LABELERS = ("baseline", "candidate")
"""The labelers of an evaluation report (as ``data.tasks.LABELERS``)."""


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _common(gold, pred, malformed: int) -> dict[str, Any]:
    return {"n": len(gold.rows), "malformed": malformed, "pred_line_errors": pred.errors,
            "unmatched_predictions": sorted(set(pred.rows) - set(gold.rows))}


# ------------------------------------------------------------------------------------ ad_rewrite
def ad_text(title: str, description: str) -> str:
    """Title and description joined with ". " (as ``data.synthetic.ad_text`` and the CTR reward)."""
    return ". ".join(p.strip().rstrip(".") for p in (title, description) if p and p.strip())


def coverage(keyword: str, text: str) -> float:
    """Share of the keyword's words found in ``text`` (as ``data.synthetic.keyword_coverage``)."""
    kw, ws = words(keyword), set(words(text))
    return sum(w in ws for w in kw) / len(kw) if kw else 0.0


def _str_field(row: dict | None, key: str) -> str | None:
    v = row.get(key) if row else None
    return v.strip() if isinstance(v, str) else None


def evaluate_ad_rewrite(gold, pred, ctr_fn: Callable[[str, str], float] | None = None) -> dict[str, Any]:
    """The ad_rewrite metrics (module docstring) of prediction rows ``{id, title, description, rationale?}``."""
    per: dict[str, list[float]] = {k: [] for k in ("title_ok", "description_ok", "constraint_rate",
                                                   "keyword_coverage", "keyword_coverage_original",
                                                   "rationale_rate")}
    ctr: dict[str, list[float]] = {"ctr_original": [], "ctr_rewrite": [], "ctr_uplift": [], "ctr_win_rate": []}
    malformed = 0
    for key in sorted(gold.rows):
        g = gold.rows[key]
        kw, ad = g.get("keyword"), g.get("ad")
        if not (isinstance(kw, str) and kw.strip() and isinstance(ad, dict)):
            raise ValueError(f"gold id {key!r}: expected a keyword (non-empty string) and an ad {{title, description}}")
        lim = {**AD_LIMITS, **(g.get("limits") or {})}
        original = ad_text(str(ad.get("title", "")), str(ad.get("description", "")))
        row = pred.rows.get(key)
        title, desc = _str_field(row, "title"), _str_field(row, "description")
        ok = bool(title) and desc is not None
        malformed += not ok
        text = ad_text(title, desc) if ok else ""
        per["title_ok"].append(float(ok and len(title) <= lim["title"]))
        per["description_ok"].append(float(ok and len(desc) <= lim["description"]))
        per["constraint_rate"].append(per["title_ok"][-1] * per["description_ok"][-1])
        per["keyword_coverage"].append(coverage(kw, text) if ok else 0.0)
        per["keyword_coverage_original"].append(coverage(kw, original))
        per["rationale_rate"].append(float(ok and bool(_str_field(row, "rationale"))))
        if ctr_fn is not None and isinstance(g.get("truth"), dict):
            base = float(ctr_fn(kw, original))
            new = float(ctr_fn(kw, text)) if ok else 0.0
            ctr["ctr_original"].append(base)
            ctr["ctr_rewrite"].append(new)
            ctr["ctr_uplift"].append(new - base)
            ctr["ctr_win_rate"].append(float(new > base))
    n = len(gold.rows)
    out: dict[str, Any] = {k: _mean(v) for k, v in {**per, **ctr}.items()}
    out.update(parse_rate=1.0 - _div(malformed, n) if n else math.nan, ctr_rows=len(ctr["ctr_uplift"]))
    out.update(_common(gold, pred, malformed))
    return out


# ------------------------------------------------------------------------------------ user_query_gen
def query_relevant(query: str, truth: dict) -> bool:
    """The hidden judge: the query has a relevant word and no off-topic word."""
    ws = set(words(query))
    return bool(ws & set(truth["relevant_words"])) and not ws & set(truth.get("off_topic_words", ()))


def evaluate_user_queries(gold, pred) -> dict[str, Any]:
    """The user_query_gen metrics (module docstring) of prediction rows ``{id, queries}``."""
    relevant, counted, malformed = 0, 0, 0
    per: dict[str, list[float]] = {k: [] for k in ("InterestCoverage", "Distinct1", "Distinct2", "CountOK")}
    for key in sorted(gold.rows):
        g = gold.rows[key]
        truth, n_q = g.get("truth"), g.get("n_queries", 3)
        if not (isinstance(truth, dict) and isinstance(truth.get("relevant_words"), list)
                and isinstance(truth.get("interest_words"), dict)):
            raise ValueError(f"gold id {key!r}: expected truth {{interests, interest_words, relevant_words, "
                             "off_topic_words}")
        qs = (pred.rows.get(key) or {}).get("queries")
        qs = clean_queries([q for q in qs if isinstance(q, str)], n_q) if isinstance(qs, list) else []
        if not qs:
            malformed += 1
            counted += n_q
            for v in per.values():
                v.append(0.0)
            continue
        judged = [query_relevant(q, truth) for q in qs]
        relevant += sum(judged)
        counted += len(qs)
        hit = [w for q, ok in zip(qs, judged) if ok for w in words(q)]
        iw = truth["interest_words"]
        per["InterestCoverage"].append(_div(sum(bool(set(hit) & set(ws)) for ws in iw.values()), len(iw)))
        per["Distinct1"].append(distinct_n(qs, 1))
        per["Distinct2"].append(distinct_n(qs, 2))
        per["CountOK"].append(float(len(qs) == n_q))
    out: dict[str, Any] = {"Relevance": _div(relevant, counted) if gold.rows else math.nan}
    out.update({k: _mean(v) for k, v in per.items()})
    out.update(queries=counted, relevant_queries=relevant, **_common(gold, pred, malformed))
    return out


# ------------------------------------------------------------------------------------ user_profile
def _norm(item: str) -> str:
    return " ".join(item.lower().split())


def profile_sets(profile: Any) -> dict[str, set[str]] | None:
    """A profile (object or JSON text) -> normalized item sets per key; None when it is not a valid profile."""
    if isinstance(profile, str):
        try:
            profile = json.loads(profile)
        except json.JSONDecodeError:
            return None
    if not isinstance(profile, dict) or set(profile) != set(PROFILE_KEYS):
        return None
    if not all(isinstance(profile[k], list) and all(isinstance(x, str) for x in profile[k]) for k in PROFILE_KEYS):
        return None
    return {k: {_norm(x) for x in profile[k] if x.strip()} for k in PROFILE_KEYS}


def evaluate_user_profile(gold, pred) -> dict[str, Any]:
    """The user_profile metrics (module docstring) of prediction rows ``{id, profile}``."""
    tp = {k: 0 for k in PROFILE_KEYS}
    n_pred, n_gold = dict(tp), dict(tp)
    valid, exact, malformed = 0, 0, 0
    for key in sorted(gold.rows):
        g = profile_sets(gold.rows[key].get("profile"))
        if g is None:
            raise ValueError(f"gold id {key!r}: profile must be an object with lists {list(PROFILE_KEYS)}")
        p = profile_sets((pred.rows.get(key) or {}).get("profile"))
        if p is None:
            malformed += 1
            p = {k: set() for k in PROFILE_KEYS}
        else:
            valid += 1
            exact += all(p[k] == g[k] for k in PROFILE_KEYS)
        for k in PROFILE_KEYS:
            tp[k] += len(p[k] & g[k])
            n_pred[k] += len(p[k])
            n_gold[k] += len(g[k])
    n = len(gold.rows)
    out: dict[str, Any] = {}
    for k, short in zip(PROFILE_KEYS, ("interest", "intent", "constraint")):
        prec, rec = _div(tp[k], n_pred[k]), _div(tp[k], n_gold[k])
        out.update({f"{short}_precision": prec, f"{short}_recall": rec,
                    f"{short}_F1": _div(2 * prec * rec, prec + rec)})
    out.update(json_valid=_div(valid, n) if n else math.nan, exact_match=_div(exact, n) if n else math.nan)
    out.update(_common(gold, pred, malformed))
    return out


# ------------------------------------------------------------------------------------ eval_report
def _table_entry(table: Any, name: str) -> dict[str, float] | None:
    e = table.get(name) if isinstance(table, dict) else None
    if not isinstance(e, dict):
        return None
    try:
        c, t, a = e["correct"], e["total"], float(e["accuracy"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (isinstance(c, int) and isinstance(t, int)) or isinstance(c, bool) or not math.isfinite(a):
        return None
    return {"correct": c, "total": t, "accuracy": a}


def evaluate_eval_report(gold, pred) -> dict[str, Any]:
    """The eval_report metrics (module docstring) of prediction rows ``{id, summary, table, better}``."""
    parsed, entries_ok, entries, errors, better_ok, malformed = 0, 0, 0, [], 0, 0
    for key in sorted(gold.rows):
        truth = gold.rows[key].get("truth")
        if not (isinstance(truth, dict) and all(isinstance(truth.get(f), dict) for f in ("correct", "accuracy"))
                and "better" in truth and "total" in truth):
            raise ValueError(f"gold id {key!r}: expected truth {{correct, total, accuracy, better}}")
        row = pred.rows.get(key) or {}
        table = row.get("table")
        got = {name: _table_entry(table, name) for name in LABELERS}
        better = _str_field(row, "better")
        ok = bool(_str_field(row, "summary")) and all(got.values()) and better in (*LABELERS, "tie")
        parsed += ok
        malformed += not ok
        better_ok += better is not None and better.lower() == truth["better"]
        for name in LABELERS:
            entries += 1
            e, acc = got[name], float(truth["accuracy"][name])
            if e is None:
                errors.append(1.0)
                continue
            errors.append(abs(e["accuracy"] / 100.0 - acc))
            entries_ok += (e["correct"] == truth["correct"][name] and e["total"] == truth["total"]
                           and abs(e["accuracy"] - 100.0 * acc) <= 0.05 + 1e-9)
    n = len(gold.rows)
    out: dict[str, Any] = {"parse_rate": _div(parsed, n) if n else math.nan,
                           "table_accuracy": _div(entries_ok, entries) if n else math.nan,
                           "accuracy_MAE": _mean(errors), "better_accuracy": _div(better_ok, n) if n else math.nan}
    out.update(_common(gold, pred, malformed))
    return out


# ------------------------------------------------------------------------------------ ad_judge
JUDGE_SCORES = tuple(range(6))
"""The judge's scores (as ``data.tasks.JUDGE_SCORES``)."""


def _judge_score(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    try:
        iv = int(v)
    except (TypeError, ValueError):
        return None
    return iv if iv in JUDGE_SCORES and float(v) == iv else None


def _judge_expected(row: dict) -> float | None:
    probs = row.get("probs")
    if not isinstance(probs, dict):
        return None
    try:
        p = [float(probs[str(s)]) for s in JUDGE_SCORES]
    except (KeyError, TypeError, ValueError):
        return None
    total = sum(p)
    if not all(math.isfinite(x) and x >= 0 for x in p) or total <= 0:
        return None
    return sum(s * x for s, x in zip(JUDGE_SCORES, p)) / total


def evaluate_ad_judge(gold, pred) -> dict[str, Any]:
    """The ad_judge metrics (module docstring) of prediction rows ``{id, score[, probs]}``."""
    hits, near, err, exp_err, malformed = 0, 0, [], [], 0
    per: dict[str, dict[str, list[float]]] = {}
    for key in sorted(gold.rows):
        g = _judge_score(gold.rows[key].get("score"))
        if g is None:
            raise ValueError(f"gold id {key!r}: score must be an integer 0..5")
        row = pred.rows.get(key) or {}
        p = _judge_score(row.get("score"))
        worst = float(max(g, JUDGE_SCORES[-1] - g))
        if p is None:
            malformed += 1
            e = ee = worst
        else:
            e = float(abs(p - g))
            ex = _judge_expected(row)
            ee = abs(ex - g) if ex is not None else e
        hits += e == 0
        near += e <= 1
        err.append(e)
        exp_err.append(ee)
        c = per.setdefault(str(gold.rows[key].get("criterion", "all")), {"hit": [], "err": []})
        c["hit"].append(float(e == 0))
        c["err"].append(e)
    n = len(gold.rows)
    out: dict[str, Any] = {"Acc": _div(hits, n) if n else math.nan, "Within1": _div(near, n) if n else math.nan,
                           "MAE": _mean(err), "ExpMAE": _mean(exp_err),
                           "by_criterion": {c: {"n": len(v["hit"]), "Acc": _mean(v["hit"]), "MAE": _mean(v["err"])}
                                            for c, v in sorted(per.items())}}
    out.update(_common(gold, pred, malformed))
    return out


# ------------------------------------------------------------------------------------ tables, summaries
def _pct(x: float) -> str:
    return "nan" if isinstance(x, float) and math.isnan(x) else f"{100 * x:.2f}"


def _row(cols: list[str], r: dict[str, Any]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|",
            "| " + " | ".join(_pct(r[c]) for c in cols) + " |"]


REWRITE_COLS = ["constraint_rate", "title_ok", "description_ok", "keyword_coverage", "keyword_coverage_original",
                "rationale_rate", "parse_rate", "ctr_original", "ctr_rewrite", "ctr_uplift", "ctr_win_rate"]
USER_QUERY_COLS = ["Relevance", "InterestCoverage", "Distinct1", "Distinct2", "CountOK"]
PROFILE_COLS = ["interest_precision", "interest_recall", "interest_F1", "intent_F1", "constraint_F1", "exact_match",
                "json_valid"]
REPORT_COLS = ["table_accuracy", "accuracy_MAE", "better_accuracy", "parse_rate"]


def rewrite_markdown(r: dict[str, Any]) -> list[str]:
    return _row(REWRITE_COLS, r)


def user_queries_markdown(r: dict[str, Any]) -> list[str]:
    return _row(USER_QUERY_COLS, r)


def profile_markdown(r: dict[str, Any]) -> list[str]:
    return _row(PROFILE_COLS, r)


def report_markdown(r: dict[str, Any]) -> list[str]:
    return _row(REPORT_COLS, r)


def rewrite_summary(r: dict[str, Any]) -> dict[str, float]:
    return {k: r[k] for k in ("constraint_rate", "keyword_coverage", "ctr_uplift", "parse_rate")}


def user_queries_summary(r: dict[str, Any]) -> dict[str, float]:
    return {k: r[k] for k in ("Relevance", "InterestCoverage", "Distinct2", "CountOK")}


def profile_summary(r: dict[str, Any]) -> dict[str, float]:
    return {k: r[k] for k in ("interest_F1", "intent_F1", "constraint_F1", "exact_match", "json_valid")}


def report_summary(r: dict[str, Any]) -> dict[str, float]:
    return {k: r[k] for k in REPORT_COLS}


def judge_markdown(r: dict[str, Any]) -> list[str]:
    def mae(x: float) -> str:
        return "nan" if math.isnan(x) else f"{x:.3f}"

    lines = ["| criterion | n | Acc | Within1 | MAE | ExpMAE |", "|---|---|---|---|---|---|",
             f"| all | {r['n']} | {_pct(r['Acc'])} | {_pct(r['Within1'])} | {mae(r['MAE'])} | {mae(r['ExpMAE'])} |"]
    lines += [f"| {c} | {v['n']} | {_pct(v['Acc'])} | - | {mae(v['MAE'])} | - |" for c, v in r["by_criterion"].items()]
    return lines


def judge_summary(r: dict[str, Any]) -> dict[str, float]:
    return {k: r[k] for k in ("Acc", "Within1", "MAE", "ExpMAE")}
