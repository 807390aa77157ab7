import json
from collections import Counter

import pytest

from megatron_ads.data.synthetic import SyntheticConfig, generate, split, write_jsonl
from megatron_ads.data.tasks import TASKS, load_jsonl, parse_output, prediction_row, task


@pytest.mark.parametrize("name", ["query_ad", "ad_user", "query_gen"])
def test_generated_rows_validate_and_targets_parse_back(name, tmp_path):
    rows = generate(name, SyntheticConfig(size=200, seed=1))
    write_jsonl(rows, tmp_path / "d.jsonl")
    spec = task(name)
    loaded = load_jsonl(tmp_path / "d.jsonl", spec)
    assert len(loaded) == 200
    for row in loaded[:50]:
        parsed = parse_output(spec, spec.target(row))
        assert parsed.ok, parsed.errors
        assert parsed.reasoning == row["reasoning"]
        assert spec.prompt(row).endswith("Answer:\n")
    assert generate(name, SyntheticConfig(size=200, seed=1)) == rows  # deterministic


def test_query_ad_labels_follow_the_rules():
    rows = generate("query_ad", SyntheticConfig(size=600, seed=2, defect_rate=0.2))
    counts = Counter(r["labels"]["relevance"] for r in rows)
    assert all(counts[k] > 30 for k in ("bad", "fair", "good")), counts
    for r in rows:
        q, ad, lab = r["query"], r["ad"], r["labels"]
        cat = next(c for c in sorted(__import__("megatron_ads.data.synthetic", fromlist=["CATALOGUE"]).CATALOGUE,
                                     key=len, reverse=True) if c in q)
        if cat.lower() not in (ad["title"] + ad["description"]).lower():
            assert lab["relevance"] == "bad"
        defective = ad["title"].isupper() or "htps//" in ad["url"] or not ad["description"]
        assert (lab["quality"] == "bad") == defective
        assert (lab["relevance"] == "fair") == ("price-intent conflict" in r["reasoning"] or "but the ad is for" in r["reasoning"])


def test_defect_rate_and_balance_are_configurable():
    low = generate("query_ad", SyntheticConfig(size=500, seed=3, defect_rate=0.0, match_rate=0.9))
    high = generate("query_ad", SyntheticConfig(size=500, seed=3, defect_rate=0.5, match_rate=0.1))
    bad = lambda rows, f, v: sum(r["labels"][f] == v for r in rows) / len(rows)  # noqa: E731
    assert bad(low, "quality", "bad") == 0 and 0.35 < bad(high, "quality", "bad") < 0.65
    assert bad(low, "relevance", "bad") < 0.2 < 0.8 < bad(high, "relevance", "bad")
    au = generate("ad_user", SyntheticConfig(size=400, seed=3))
    assert set(Counter(r["score"] for r in au)) == {0, 1, 2, 3}


def test_split_is_deterministic_and_disjoint():
    rows = generate("ad_user", SyntheticConfig(size=100, seed=4))
    s = split(rows, seed=7)
    ids = [r["id"] for part in s.values() for r in part]
    assert len(ids) == len(set(ids)) == 100 and len(s["val"]) == len(s["test"]) == 10
    assert split(rows, seed=7) == s


def test_parser_reports_malformed_outputs_instead_of_guessing():
    spec = task("query_ad")
    p = parse_output(spec, "<think>ok</think>\n<Label>great</Label>\n<LocationLabel>good</LocationLabel>")
    assert not p.ok and any("great" in e for e in p.errors) and any("AdQuality" in e for e in p.errors)
    p = parse_output(spec, "<think>never closed <Label>good</Label>")
    assert "<think> is not closed" in p.errors
    row = prediction_row(spec, 5, "<think>x</think><Label>bad</Label><LocationLabel>good</LocationLabel>")
    assert row["labels"]["relevance"] == "bad" and row["labels"]["quality"] is None and row["malformed"]
    assert prediction_row(task("ad_user"), 1, "<think></think><Score>2</Score>")["score"] == 2
    assert prediction_row(task("query_gen"), 1, "<Query>a</Query><Query>b</Query>")["queries"] == ["a", "b"]
    assert set(TASKS) == {"query_ad", "ad_user", "query_gen", "user_profile", "ad_rewrite", "user_query_gen",
                          "eval_report", "ad_judge", "general"}


def test_invalid_jsonl_lines_are_named(tmp_path):
    good = generate("ad_user", SyntheticConfig(size=2, seed=5))
    bad = dict(good[1], id="x", score=7)
    (tmp_path / "d.jsonl").write_text(json.dumps(good[0]) + "\n{oops\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="d.jsonl:2: invalid JSON"):  # unreadable JSON: its line (runtime.io)
        load_jsonl(tmp_path / "d.jsonl", task("ad_user"))
    (tmp_path / "d.jsonl").write_text(json.dumps(good[0]) + "\n\n" + json.dumps(bad) + "\n"
                                      + json.dumps({"id": "y"}) + "\n")
    with pytest.raises(ValueError) as exc:  # rows that do not fit the task: all of them, by line
        load_jsonl(tmp_path / "d.jsonl", task("ad_user"))
    msg = str(exc.value)
    assert "d.jsonl:3: field 'score'" in msg and "d.jsonl:4: field 'history'" in msg


class _FakeScorer:
    """Prefers the last candidate of every field; echoes a fixed generation."""

    def __init__(self):
        self.calls = []

    def score(self, prompts, targets):
        self.calls.append((prompts, targets))
        return [float(len(t)) if "good" in t or "3" in t else 0.0 for t in targets]

    def generate(self, prompts, max_new_tokens):
        return ["<Query>a b</Query>\n<Query>c</Query>" for _ in prompts]


def test_predict_dispatches_on_the_task_object():
    rows = generate("query_ad", SyntheticConfig(size=3, seed=1))
    sc = _FakeScorer()
    preds = task("query_ad").predict(rows, sc)
    assert [list(p) for p in preds] == [["id", "labels", "probs"]] * 3
    assert preds[0]["labels"] == {"relevance": "good", "location": "good", "quality": "good"}
    assert abs(sum(preds[0]["probs"]["relevance"].values()) - 1) < 1e-6 and set(preds[0]["probs"]) == {
        "relevance", "location", "quality"}
    # fields are scored in order, each given the ones chosen before it
    assert len(sc.calls) == 3 and sc.calls[2][0][0].endswith("<think></think>\n<Label>good</Label>\n"
                                                             "<LocationLabel>good</LocationLabel>\n")
    au = task("ad_user").predict(generate("ad_user", SyntheticConfig(size=2, seed=1)), _FakeScorer())
    assert au[0]["score"] == 3 and set(au[0]["probs"]) == {"0", "1", "2", "3"}
    qg = task("query_gen").predict(generate("query_gen", SyntheticConfig(size=2, seed=1)), _FakeScorer())
    assert qg[0]["queries"] == ["a b", "c"] and qg[0]["raw"].startswith("<Query>")
    assert task("query_gen").gold(generate("query_gen", SyntheticConfig(size=1, seed=1))[0]).keys() == {"id", "keyword", "ad"}
