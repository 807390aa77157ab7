"""TPPO token reward-model data (data/token_labels.py) and its token encoding and metrics (train/token_rm_loop.py):
word labels by the hidden judge (relevant word -> 2, off-topic word -> 1, template words -> their query's label,
everything outside the query fields -> 0), the SFT target format, token classes with the policy's tokenizer
(prompt, tags, EOS -> 0), determinism, the split by user row, the query metrics, and the rm.kind=token config."""

import pytest
import torch

from megatron_ads.config.train import JobConfig, RMSpec
from megatron_ads.data import token_labels as tl
from megatron_ads.data.tasks import USER_QUERY_GEN
from megatron_ads.eval.adtasks import query_relevant
from megatron_ads.train import tppo

ROWS = tl.user_rows(60, 3)


@pytest.fixture(scope="module")
def tokenizer():
    from megatron_ads.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(1024)


def _row_with_once():
    return next(r for r in ROWS if tl.one_off_categories(r))


def _labels(ex):
    return {ex["response"][s:e]: c for s, e, c in ex["word_spans"]}


def test_word_labels_by_the_hidden_judge():
    row = _row_with_once()
    truth = row["truth"]
    rel = next(w for w in truth["relevant_words"] if not w.isdigit())
    off = next(w for w in truth["off_topic_words"] if not w.isdigit() and w not in ("cheap", "best"))
    queries = [f"cheap {rel}", f"best {rel} {off}", f"{off} near me"]
    ex = tl.build_example(row, queries, label_only=False, judge=query_relevant, example_id="x")
    assert ex["query_relevant"] == [True, False, False] and ex["r_global"] == pytest.approx(1 + 1 / 3)
    # the exact SFT target format of the task, with the row's reasoning
    assert ex["response"] == USER_QUERY_GEN.target(dict(row, queries=queries))
    assert ex["prompt"] == USER_QUERY_GEN.prompt(row)
    assert [ex["response"][s:e] for s, e in ex["query_spans"]] == queries
    by_query = []
    for s, e in ex["query_spans"]:
        by_query.append([(ex["response"][a:b], c) for a, b, c in ex["word_spans"] if s <= a and b <= e])
    assert by_query[0] == [("cheap", 2), (rel, 2)]  # a template word of a relevant query: relevant
    assert by_query[1] == [("best", 1), (rel, 2), (off, 1)]  # a relevant word stays 2 in an irrelevant query
    assert by_query[2] == [(off, 1), ("near", 1), ("me", 1)]
    inside = {(a, b) for a, b, _ in ex["word_spans"] if any(s <= a and b <= e for s, e in ex["query_spans"])}
    outside = [(ex["response"][a:b], c) for a, b, c in ex["word_spans"] if (a, b) not in inside]
    assert outside and all(c == tl.CLASS_MASKED for _, c in outside)  # reasoning and the tags' words
    assert ("Query", 0) in outside and ("think", 0) in outside
    # the label-only form: an empty <think></think>, as SFT trains half of its examples
    lo = tl.build_example(row, queries, label_only=True, judge=query_relevant, example_id="y")
    assert lo["response"].startswith("<think></think>\n<Query>")
    assert [c for _, _, c in lo["word_spans"] if c] == [2, 2, 1, 2, 1, 1, 1, 1]


def test_token_classes_with_the_tokenizer(tokenizer):
    from megatron_ads.train.token_rm import encode_example

    row = ROWS[0]
    truth = row["truth"]
    rel = truth["relevant_words"][-1]
    off = truth["off_topic_words"][-1]
    ex = tl.build_example(row, [f"{rel} reviews", f"{off} near me", row["queries"][2]], label_only=False,
                          judge=query_relevant, example_id="x")
    enc = encode_example(tokenizer, ex, 256)
    ids, cls, resp, qidx = enc["ids"], enc["classes"], enc["response"], enc["qidx"]
    assert len(ids) == len(cls) == len(resp) == len(qidx) <= 256
    n_prompt = len(tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"])
    assert ids[:n_prompt] == tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
    assert set(cls[:n_prompt]) == {0} and set(resp[:n_prompt]) == {0} and set(resp[n_prompt:]) == {1}
    assert ids[-1] == tokenizer.eos_token_id and cls[-1] == 0 and qidx[-1] == -1
    # the response's tokens are the tokenizer's own (as SFT encodes targets), each inheriting its word's class
    assert ids[n_prompt:-1] == tokenizer(ex["response"], add_special_tokens=False)["input_ids"]
    toks = [tokenizer.decode([i]) for i in ids]
    by_q = {q: [(toks[j].strip(), cls[j]) for j in range(len(ids)) if qidx[j] == q] for q in range(3)}
    assert "".join(t for t, _ in by_q[0]).startswith(rel.replace(" ", ""))
    assert all(c == 2 for _, c in by_q[0]) and all(c == 1 for _, c in by_q[1])  # relevant / off-topic query
    assert {"<think>", "</think>", "Query"} <= {t for t, c in zip(toks, cls) if c == 0}
    assert all(c == 0 for c, q in zip(cls, qidx) if q == -1)  # tags, separators, reasoning, EOS: 0
    # a prompt longer than the room left is left-truncated; a response that does not fit names the field
    short = encode_example(tokenizer, ex, len(ids) - n_prompt + 5)
    assert short["ids"][:5] == ids[n_prompt - 5:n_prompt] and short["classes"] == [0] * 5 + cls[n_prompt:]
    with pytest.raises(ValueError, match="train.seq_len"):
        encode_example(tokenizer, ex, 10)


def test_perturbed_responses_hold_both_classes_and_gold_is_relevant():
    data = tl.token_rm_data(ROWS, judge=query_relevant, seed=0, responses_per_row=3, perturb_rate=0.5)
    exs = [e for v in data.values() for e in v]
    assert len(exs) == 3 * len(ROWS)
    gold = [e for e in exs if e["id"].endswith(":0")]
    assert all(all(e["query_relevant"]) and e["r_global"] == 2.0 and not any(e["perturbed"]) for e in gold)
    assert all(e["queries"] == r["queries"] for e, r in zip(sorted(gold, key=lambda e: e["row_id"]),
                                                          sorted(ROWS, key=lambda r: r["id"])))
    words = [c for e in exs for _, _, c in e["word_spans"]]
    assert words.count(1) > 0 and words.count(2) > words.count(1)
    perturbed = [(q, ok) for e in exs for q, ok, p in zip(e["queries"], e["query_relevant"], e["perturbed"]) if p]
    assert perturbed and not any(ok for _, ok in perturbed)  # an off-topic perturbation is never relevant
    assert 0.0 < sum(e["label_only"] for e in exs) / len(exs) < 1.0
    # the one-off categories of the history are among the perturbations' sources
    row = _row_with_once()
    once_words = {w for c in tl.one_off_categories(row) for w in __import__(
        "megatron_ads.data.synthetic", fromlist=["category_words"]).category_words(c)}
    assert once_words <= set(row["truth"]["off_topic_words"])
    import random

    rng = random.Random(0)
    hits = sum(bool(set(tl.perturb_query(rng, row, row["queries"][0]).split()) & once_words) for _ in range(200))
    assert 30 < hits < 200


def test_deterministic_and_split_by_user_row():
    kw = dict(judge=query_relevant, seed=5, val=0.2, test=0.2, responses_per_row=2)
    a, b = tl.token_rm_data(ROWS, **kw), tl.token_rm_data(ROWS, **kw)
    assert a == b
    assert tl.token_rm_data(ROWS, **{**kw, "seed": 6}) != a
    assert tl.user_rows(5, 3) == ROWS[:5]
    ids = {k: {e["row_id"] for e in v} for k, v in a.items()}
    assert ids["train"] and ids["val"] and ids["test"]
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert len(ids["val"]) == len(ids["test"]) == 12 and sum(map(len, ids.values())) == len(ROWS)
    assert all(len(v) == 2 * len(ids[k]) for k, v in a.items())  # every response of a row in one split


def test_token_metrics_of_perfect_and_inverted_probabilities(tokenizer):
    from megatron_ads.train.token_rm import encode_example, token_metrics

    exs = tl.token_rm_data(ROWS[:12], judge=query_relevant, seed=1, val=0.0, test=0.0)["train"]
    S = 256
    enc = [encode_example(tokenizer, e, S) for e in exs]
    probs = torch.full((len(exs), S, 3), 0.02)
    for i, e in enumerate(enc):
        for j, c in enumerate(e["classes"]):
            probs[i, j, c] = 0.96
    m, rows = token_metrics(probs, enc, exs)
    assert m["token_acc"] == 1.0 and m["recall_0"] == m["recall_1"] == m["recall_2"] == 1.0
    assert m["query_auc"] == 1.0 and m["n_queries"] == 3 * len(exs) == len(rows)
    # a mean can outvote one off-topic word (a relevant word in an irrelevant query); the lowest token cannot
    assert m["query_acc"] > 0.8 and m["query_min_auc"] == 1.0 and m["query_min_acc"] == 1.0
    assert 0.0 < m["relevant_rate"] < 1.0 and m["loss"] < 0.1
    flipped = probs[..., [0, 2, 1]]  # classes 1 and 2 swapped
    m2, _ = token_metrics(flipped, enc, exs)
    assert m2["token_acc"] == 0.0 and m2["query_auc"] == 0.0 and m2["query_min_auc"] < 0.5
    assert m2["recall_0"] == 1.0 and m2["loss"] > m["loss"]


def test_token_rm_config_defaults_and_errors_name_the_field():
    r = RMSpec()  # TPPO's defaults (spec §B.1) for the token reward model's loss
    assert r.kind == "pair" and r.local_weight == 0.5 and r.balance_max_ratio == 3.0
    assert r.class_weights == [1.0, 1.0, 1.0] and r.token_reward == "prob_diff"
    assert r.local_reduction == "token_mean" and r.global_tokens == "labeled"
    for kw, needle in [({"kind": "sentence"}, "rm.kind"), ({"local_weight": 1.5}, "rm.local_weight"),
                       ({"balance_max_ratio": 0.5}, "rm.balance_max_ratio"), ({"class_weights": [1, 1]},
                                                                             "rm.class_weights"),
                       ({"class_weights": [0, 0, 0]}, "rm.class_weights"), ({"perturb_rate": 2}, "rm.perturb_rate"),
                       ({"rows": 0}, "rm.rows"), ({"responses_per_row": 0}, "rm.responses_per_row"),
                       ({"token_reward": "sign"}, "rm.token_reward"), ({"test_examples": -1}, "rm.test_examples"),
                       ({"label_only_fraction": -0.1}, "rm.label_only_fraction"),
                       ({"local_reduction": "sum"}, "rm.local_reduction"), ({"global_tokens": "all"}, "rm.global_tokens")]:
        with pytest.raises(ValueError, match=needle):
            RMSpec(**kw)
    job = JobConfig.load("launch/configs/token_rm_tiny_cpu.yaml", ["rm.rows=50"])
    assert job.rm.kind == "token" and job.rm.rows == 50 and "kind: token" in job.to_yaml()


def test_train_rm_dispatches_by_kind():
    from megatron_ads.cli.workers import rm_worker_for
    from megatron_ads.train.rm_loop import rm_worker
    from megatron_ads.train.token_rm_loop import token_rm_worker

    assert rm_worker_for("pair") is rm_worker and rm_worker_for("token") is token_rm_worker
