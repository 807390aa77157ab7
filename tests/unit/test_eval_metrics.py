"""Metric suite vs scikit-learn (an independent reference) on random predictions, and malformed handling."""

import json
import random

import pytest

from megatron_ads.cli import main
from megatron_ads.data.tasks import task
from megatron_ads.eval.metrics import auc, binary_metrics, evaluate

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the independent reference (dev extra)")


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_match_sklearn(seed):
    rng = random.Random(seed)
    n = rng.randint(20, 400)
    rate = rng.random()
    gold = [rng.random() < rate for _ in range(n)]
    pred = [g if rng.random() < 0.7 else not g for g in gold]
    m = binary_metrics(gold, pred)
    y, yp = [0 if g else 1 for g in gold], [0 if p else 1 for p in pred]  # 1 = positive = non-defect
    assert abs(m["BACC"] - sk.balanced_accuracy_score(y, yp)) < 1e-9
    assert abs(m["Acc"] - sk.accuracy_score(y, yp)) < 1e-9
    prec, rec, f1, _ = sk.precision_recall_fscore_support(y, yp, labels=[1, 0], zero_division=0)
    for ours, ref in zip([m["PosPrec"], m["NegPrec"], m["PosAcc"], m["NegAcc"], m["PosF1"], m["NegF1"]],
                         [prec[0], prec[1], rec[0], rec[1], f1[0], f1[1]]):
        assert abs(ours - ref) < 1e-9
    assert abs(m["DR"] - sum(gold) / n) < 1e-12 and abs(m["ModelDR"] - sum(pred) / n) < 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    rng = random.Random(seed)
    labels = [rng.random() < 0.4 for _ in range(300)]
    scores = [round(rng.random(), 1) for _ in labels]  # many ties
    assert abs(auc(labels, scores) - sk.roc_auc_score(labels, scores)) < 1e-9


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def test_query_ad_eval_cli_counts_malformed_as_wrong(tmp_path, capsys):
    rng = random.Random(3)
    gold, pred = [], []
    for i in range(200):
        labels = {"relevance": rng.choice(["bad", "fair", "good"]), "location": rng.choice(["good", "bad"]),
                  "quality": rng.choice(["good", "bad"])}
        gold.append({"id": i, "labels": labels})
        guess = dict(labels) if rng.random() < 0.8 else {k: rng.choice(v) for k, v in
                                                         {"relevance": ["bad", "fair", "good"],
                                                          "location": ["good", "bad"], "quality": ["good", "bad"]}.items()}
        pred.append({"id": i, "labels": guess})
    pred[5] = {"id": 5, "labels": {"relevance": "excellent", "location": "good", "quality": "good"}}
    pred[6] = "{not json"
    del pred[7]
    _write(tmp_path / "gold.jsonl", gold)
    _write(tmp_path / "pred.jsonl", pred)
    assert main(["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(tmp_path / "gold.jsonl"),
                 "--task", "query_ad", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 200 and r["malformed"] == 3
    assert [e["line"] for e in r["pred_line_errors"]] == [7]
    for view in ("bad_view", "fair_view", "location", "quality"):
        for key in ("DR", "ModelDR", "BACC", "Acc", "PosAcc", "PosPrec", "NegAcc", "NegPrec", "PosF1", "NegF1"):
            assert 0.0 <= r[view][key] <= 1.0
    # recompute the bad view independently: malformed rows are wrong answers
    by_id = {p["id"]: p for p in pred if isinstance(p, dict)}
    y, yp = [], []
    for g in gold:
        gd = g["labels"]["relevance"] == "bad"
        p = by_id.get(g["id"])
        pv = p["labels"]["relevance"] if p and p["labels"]["relevance"] in ("bad", "fair", "good") else None
        y.append(0 if gd else 1)
        yp.append((1 if gd else 0) if pv is None else (0 if pv == "bad" else 1))
    assert abs(r["bad_view"]["BACC"] - sk.balanced_accuracy_score(y, yp)) < 1e-9


def test_ad_user_eval_matches_sklearn(tmp_path):
    rng = random.Random(4)
    gold, pred = [], []
    for i in range(300):
        s = rng.choice([0, 0, 1, 2, 3])
        gold.append({"id": f"u{i}", "score": s})
        p0 = min(1.0, max(0.0, (0.7 if s == 0 else 0.2) + rng.uniform(-0.3, 0.3)))
        rest = (1 - p0) / 3
        pred.append({"id": f"u{i}", "score": 0 if p0 > 0.5 else rng.choice([1, 2, 3]),
                     "probs": {"0": p0, "1": rest, "2": rest, "3": rest}})
    _write(tmp_path / "gold.jsonl", gold)
    _write(tmp_path / "pred.jsonl", pred)
    r = evaluate(task("ad_user").metric, tmp_path / "pred.jsonl", tmp_path / "gold.jsonl")
    y = [g["score"] > 0 for g in gold]
    assert abs(r["AUC"] - sk.roc_auc_score(y, [1 - p["probs"]["0"] for p in pred])) < 1e-9
    assert abs(r["BACC"] - sk.balanced_accuracy_score(y, [p["score"] > 0 for p in pred])) < 1e-9
    assert r["malformed"] == 0 and abs(r["RR"] - sum(not v for v in y) / 300) < 1e-12


def test_bad_gold_line_is_named(tmp_path):
    _write(tmp_path / "gold.jsonl", [{"id": 1, "score": 2}, "oops"])
    _write(tmp_path / "pred.jsonl", [{"id": 1, "score": 2}])
    with pytest.raises(ValueError, match="gold.jsonl:2"):
        evaluate(task("ad_user").metric, tmp_path / "pred.jsonl", tmp_path / "gold.jsonl")
