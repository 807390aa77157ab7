"""The AdNanny §2 generation tasks (issue 15): ad_rewrite, user_query_gen, user_profile, eval_report — template →
parser round trips on synthetic rows, schema and format errors naming the field, the hidden ground truth of the
rows, the metrics recomputed by hand, determinism in the seed, and `data synth` / `eval` for each task."""

import json
import math
from collections import Counter

import pytest

from megatron_ads.cli import main
from megatron_ads.data import synthetic
from megatron_ads.data.synthetic import CATALOGUE, SyntheticConfig, generate, true_ctr, write_jsonl
from megatron_ads.data.tasks import (AD_LIMITS, LABELERS, check_sft, decode_table, load_jsonl, parse_output,
                                     prediction_row, task, validate_row)
from megatron_ads.eval import adtasks
from megatron_ads.eval.metrics import metric, parsed_rows

NEW = ["ad_rewrite", "user_query_gen", "user_profile", "eval_report"]
FIELDS = {"ad_rewrite": lambda r: {"rationale": r["rewrite"]["rationale"], "title": r["rewrite"]["title"],
                                   "description": r["rewrite"]["description"]},
          "user_query_gen": lambda r: {"queries": r["queries"]},
          "user_profile": lambda r: {"profile": r["profile"]},
          "eval_report": lambda r: dict(r["report"])}
"""The gold output fields of a row, as the parser names them."""


@pytest.mark.parametrize("name", NEW)
def test_template_parses_back_to_the_gold_fields(name, tmp_path):
    rows = generate(name, SyntheticConfig(size=80, seed=1))
    write_jsonl(rows, tmp_path / "d.jsonl")
    spec = task(name)
    assert load_jsonl(tmp_path / "d.jsonl", spec) == rows  # every row fits the schema (with targets)
    assert spec.metric and spec.kind == "generation" and spec.lambda_metrics
    for row in rows:
        prompt, target = spec.prompt(row), spec.target(row)
        assert prompt.endswith("Answer:\n") and target.startswith("<think>")
        parsed = parse_output(spec, target)
        assert parsed.ok, parsed.errors
        assert parsed.reasoning == row["reasoning"] and parsed.fields == FIELDS[name](row)
        label_only = parse_output(spec, spec.target(dict(row, reasoning="")))  # the label-only form
        assert label_only.ok and label_only.reasoning == "" and label_only.fields == parsed.fields
        pred = prediction_row(spec, row["id"], target)
        assert "malformed" not in pred and {k: pred[k] for k in parsed.fields} == parsed.fields
    # deterministic in the seed
    assert generate(name, SyntheticConfig(size=80, seed=1)) == rows
    assert generate(name, SyntheticConfig(size=80, seed=2)) != rows
    assert len({r["id"] for r in rows}) == 80


def test_ad_rewrite_prompt_states_the_limits_and_the_rationale_is_optional():
    row = generate("ad_rewrite", SyntheticConfig(size=1, seed=0))[0]
    spec = task("ad_rewrite")
    assert "headline at most 30 characters" in spec.prompt(row) and "at most 90 characters" in spec.prompt(row)
    assert "at most 60 characters" in spec.prompt(dict(row, limits={"description": 60}))
    assert row["limits"] == AD_LIMITS == adtasks.AD_LIMITS
    p = parse_output(spec, "<think></think>\n<Title>Shop tents</Title>\n<Description>Light.</Description>")
    assert p.ok and p.fields == {"title": "Shop tents", "description": "Light."}  # rewards' completions still parse
    # the target's last field is still the description: labeling and GRPO stop at </Description>
    assert spec.outputs[-1].tag == "Description"


def test_parsers_tolerate_whitespace():
    p = parse_output(task("ad_rewrite"), "  <think> x </think>\n\n<Rationale>  adds the keyword \n</Rationale>"
                                         "<Title>\n Illy coffee beans  </Title>  "
                                         "<Description> Shop now! </Description>")
    assert p.ok and p.fields == {"rationale": "adds the keyword", "title": "Illy coffee beans",
                                 "description": "Shop now!"}
    p = parse_output(task("user_query_gen"), "<think></think>\n<Query> cheap tents </Query>\n\n<Query>rei tent</Query>")
    assert p.ok and p.fields["queries"] == ["cheap tents", "rei tent"]
    p = parse_output(task("user_profile"), '<Profile>\n{ "interests" : [" tents "],\n "intents": [],\n'
                                           ' "constraints": ["budget"] }\n</Profile>')
    assert p.ok and p.fields["profile"] == {"interests": ["tents"], "intents": [], "constraints": ["budget"]}
    text = ("<Summary>ok</Summary><Table>\n  |labeler|correct|total|accuracy|\n| baseline |  5 | 6 | 83.3% |\n"
            "|candidate|3|6|50|\n</Table><Better> Tie </Better>")
    p = parse_output(task("eval_report"), text)  # no separator row, a % sign, a capitalized closed value
    assert p.ok, p.errors
    assert p.fields["table"] == {"baseline": {"correct": 5, "total": 6, "accuracy": 83.3},
                                 "candidate": {"correct": 3, "total": 6, "accuracy": 50.0}}
    assert p.fields["better"] == "tie"


@pytest.mark.parametrize("name, text, error", [
    ("ad_rewrite", "<think></think><Rationale>r</Rationale><Description>d</Description>", "<Title> missing"),
    ("ad_rewrite", "<Title>a</Title><Title>b</Title><Description>d</Description>", "<Title> appears 2 times"),
    ("ad_rewrite", "<think>never closed<Title>a</Title><Description>d</Description>", "<think> is not closed"),
    ("user_query_gen", "<think></think>no queries", "<Query> missing"),
    ("user_profile", "<Profile>{interests: [tents]}</Profile>", "<Profile> is not valid JSON"),
    ("user_profile", '<Profile>["tents"]</Profile>', "<Profile> expected a JSON object"),
    ("user_profile", '<Profile>{"interests": [], "intents": []}</Profile>', "missing ['constraints']"),
    ("user_profile", '<Profile>{"interests": "tents", "intents": [], "constraints": []}</Profile>',
     "key 'interests': expected a list of strings"),
    ("eval_report", "<Summary>s</Summary><Table>| who | n |</Table><Better>tie</Better>",
     "<Table> line 1: expected the header"),
    ("eval_report", "<Summary>s</Summary><Table>|labeler|correct|total|accuracy|\n|baseline|1|2|50|\n|judge|1|2|50|"
                    "</Table><Better>tie</Better>", "line 3: labeler 'judge' is unknown"),
    ("eval_report", "<Summary>s</Summary><Table>|labeler|correct|total|accuracy|\n|baseline|1|2|50|</Table>"
                    "<Better>tie</Better>", "labeler(s) ['candidate'] missing"),
    ("eval_report", "<Summary>s</Summary><Table>|labeler|correct|total|accuracy|\n|baseline|one|2|50|\n"
                    "|candidate|1|2|50|</Table><Better>tie</Better>", "line 2: expected integer correct/total"),
    ("eval_report", "<Summary>s</Summary><Table>|labeler|correct|total|accuracy|\n|baseline|1|2|\n"
                    "|candidate|1|2|50|</Table><Better>tie</Better>", "line 2: expected 4 cells, got 3"),
    ("eval_report", "<Summary>s</Summary><Table>|labeler|correct|total|accuracy|\n|baseline|1|2|50|\n"
                    "|candidate|1|2|50|</Table><Better>judge</Better>", "<Better> value 'judge' not in"),
])
def test_parsers_report_format_errors(name, text, error):
    p = parse_output(task(name), text)
    assert not p.ok and any(error in e for e in p.errors), p.errors
    row = prediction_row(task(name), "x", text)
    assert row["malformed"] == p.errors


def _row(name: str, **changes) -> dict:
    row = generate(name, SyntheticConfig(size=1, seed=3))[0]
    for key, value in changes.items():
        *parents, last = key.split("__")
        cur = row
        for part in parents:
            cur = cur[int(part) if part.isdigit() else part]
        if value is KeyError:
            del cur[last]
        else:
            cur[last] = value
    return row


@pytest.mark.parametrize("name, changes, error", [
    ("ad_rewrite", {"keyword": KeyError}, "field 'keyword': missing"),
    ("ad_rewrite", {"keyword": " "}, "field 'keyword': expected a non-empty string"),
    ("ad_rewrite", {"ad__description": KeyError}, "field 'ad.description': missing"),
    ("ad_rewrite", {"limits": {"title": 0}}, "field 'limits.title': expected a positive integer"),
    ("ad_rewrite", {"limits": {"headline": 30}}, "field 'limits': expected an object with keys among"),
    ("ad_rewrite", {"rewrite__title": KeyError}, "field 'rewrite.title': missing"),
    ("user_query_gen", {"history": []}, "field 'history': expected a non-empty list"),
    ("user_query_gen", {"n_queries": 0}, "field 'n_queries': expected a positive integer"),
    ("user_query_gen", {"queries": []}, "field 'queries': expected a non-empty list"),
    ("user_profile", {"history": KeyError}, "field 'history': missing"),
    ("user_profile", {"profile__intents": KeyError}, "field 'profile': expected keys"),
    ("user_profile", {"profile__constraints": [1]}, "field 'profile': key 'constraints': expected a list of strings"),
    ("eval_report", {"items": []}, "field 'items': expected a non-empty list"),
    ("eval_report", {"items__1__candidate": KeyError}, "field 'items[1].candidate': expected a non-empty string"),
    ("eval_report", {"report__better": "both"}, "field 'report.better': expected one of"),
    ("eval_report", {"report__table__candidate": KeyError}, "field 'report.table'"),
])
def test_schema_errors_name_the_field(name, changes, error, tmp_path):
    row = _row(name, **changes)
    problems = validate_row(task(name), row, with_targets=True)
    assert any(error in p for p in problems), problems
    write_jsonl([_row(name), dict(row, id="bad")], tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match=r"d\.jsonl:2: field '"):
        load_jsonl(tmp_path / "d.jsonl", task(name))
    assert validate_row(task(name), _row(name), with_targets=True) == []


def test_rationale_may_be_missing_from_a_users_own_rows():
    row = _row("ad_rewrite")
    del row["rewrite"]["rationale"]
    spec = task("ad_rewrite")
    assert validate_row(spec, row, with_targets=True) == []
    assert "<Rationale>" not in spec.target(row) and parse_output(spec, spec.target(row)).ok


# ------------------------------------------------------------------------------------ hidden ground truth
def test_ad_rewrite_truth_is_the_true_ctr_function():
    rows = generate("ad_rewrite", SyntheticConfig(size=300, seed=0))
    for r in rows:
        ad, rw, t = r["ad"], r["rewrite"], r["truth"]
        assert t["ctr_original"] == true_ctr(r["keyword"], synthetic.ad_text(ad["title"], ad["description"]))
        assert t["ctr_rewrite"] == true_ctr(r["keyword"], synthetic.ad_text(rw["title"], rw["description"]))
        assert len(rw["title"]) <= 30 and len(rw["description"]) <= 90
        assert synthetic.keyword_coverage(r["keyword"], rw["title"]) == 1.0
        assert any(p in rw["description"].lower() for p in synthetic.CTA_PHRASES)
        assert t["coverage_original"] == synthetic.keyword_coverage(r["keyword"],
                                                                    ad["title"] + ". " + ad["description"])
        assert ("over the 30 limit" in r["reasoning"]) == (len(ad["title"]) > 30)
    # the originals are flawed: the rewrite is the better ad in the synthetic world
    assert sum(len(r["ad"]["title"]) > 30 for r in rows) > 50
    assert sum(r["truth"]["coverage_original"] < 1 for r in rows) > 50
    assert sum(r["truth"]["ctr_rewrite"] > r["truth"]["ctr_original"] for r in rows) / len(rows) > 0.9
    # eval's copies of the text join and the coverage agree with the synthetic world's
    for r in rows[:50]:
        text = synthetic.ad_text(r["ad"]["title"], r["ad"]["description"])
        assert adtasks.ad_text(r["ad"]["title"], r["ad"]["description"]) == text
        assert adtasks.coverage(r["keyword"], text) == synthetic.keyword_coverage(r["keyword"], text)


def _categories(events: list[str]) -> Counter:
    """Events per category, read back from the event texts (every catalogue word belongs to one category)."""
    out = Counter()
    for e in events:
        ws = set(e.lower().replace(",", " ").split())
        hits = {c for c in CATALOGUE if ws & set(synthetic.category_words(c))}
        assert len(hits) <= 1, e
        out.update(hits)
    return out


def test_user_query_gen_truth_says_which_queries_and_words_are_relevant():
    rows = generate("user_query_gen", SyntheticConfig(size=200, seed=0))
    for r in rows:
        t = r["truth"]
        counts = _categories(r["history"])
        assert t["interests"] == sorted(c for c, n in counts.items() if n >= 2)  # one-offs are not interests
        assert not set(t["relevant_words"]) & set(t["off_topic_words"])
        assert set(t["relevant_words"]) == {w for ws in t["interest_words"].values() for w in ws}
        assert len(r["queries"]) == r["n_queries"] == 3 and len(set(r["queries"])) == 3
        assert all(adtasks.query_relevant(q, t) for q in r["queries"])
    assert sum(len(r["truth"]["interests"]) == 2 for r in rows) > 50
    t = rows[0]["truth"]
    other = next(c for c in sorted(CATALOGUE) if c not in t["interests"])
    assert not adtasks.query_relevant(f"cheap {other}", t) and not adtasks.query_relevant("near me", t)


def test_user_profile_truth_follows_the_history():
    rows = generate("user_profile", SyntheticConfig(size=300, seed=0))
    for r in rows:
        h, p = r["history"], r["profile"]
        counts = _categories([e for e in h if not e.startswith("hid ")])
        assert p["interests"] == sorted(c for c, n in counts.items() if n >= 2)
        purchase = any(e.startswith(("added ", "purchased ")) for e in h)
        research = any(e.startswith(("read ", "compared ")) for e in h)
        assert p["intents"] == ([x for x, on in (("purchase", purchase), ("research", research)) if on] or ["browse"])
        want = {f"near {e.rsplit(' ', 1)[1]}" for e in h if " in " in e} | \
            {f"avoid {e[4:-4]}" for e in h if e.startswith("hid ")} | \
            {synthetic.PRICE[e.split()[1]] for e in h
             if e.split()[:2] in (["searched", "cheap"], ["searched", "luxury"])}
        assert p["constraints"] == sorted(want)
    seen = Counter(c.split()[0] for r in rows for c in r["profile"]["constraints"])
    assert seen["near"] > 30 and seen["avoid"] > 30 and seen["budget"] > 20 and seen["premium"] > 20
    assert Counter(i for r in rows for i in r["profile"]["intents"]).keys() == {"purchase", "research", "browse"}


def test_eval_report_truth_is_the_per_labeler_accuracy():
    rows = generate("eval_report", SyntheticConfig(size=400, seed=0))
    for r in rows:
        t, items = r["truth"], r["items"]
        assert t["total"] == len(items) and 4 <= len(items) <= 6
        for name in LABELERS:
            correct = sum(it[name] == it["gold"] for it in items)
            assert t["correct"][name] == correct and t["accuracy"][name] == correct / len(items)
            assert r["report"]["table"][name] == {"correct": correct, "total": len(items),
                                                  "accuracy": round(100 * correct / len(items), 1)}
            assert 0.4 <= t["skill"][name] <= 0.95
        b, c = (t["correct"][n] for n in LABELERS)
        assert r["report"]["better"] == t["better"] == ("tie" if b == c else "candidate" if c > b else "baseline")
    # the hidden skill drives the accuracy on the set
    hi = [r["truth"]["accuracy"][n] for r in rows for n in LABELERS if r["truth"]["skill"][n] > 0.8]
    lo = [r["truth"]["accuracy"][n] for r in rows for n in LABELERS if r["truth"]["skill"][n] < 0.55]
    assert sum(hi) / len(hi) > sum(lo) / len(lo) + 0.2
    assert Counter(r["truth"]["better"] for r in rows).keys() == {"baseline", "candidate", "tie"}


# ------------------------------------------------------------------------------------ metrics by hand
def _eval(name: str, gold: list[dict], pred: list[dict], **kw) -> dict:
    return metric(task(name).metric).evaluate(parsed_rows(gold), parsed_rows(pred), **kw)


def test_ad_rewrite_metrics_by_hand():
    ad = {"title": "REI family tent", "description": "Fast shipping."}
    gold = [{"id": "a", "keyword": "rei tents", "ad": ad, "limits": {"title": 30, "description": 90}, "truth": {}},
            {"id": "b", "keyword": "rei tents", "ad": ad, "truth": {}},
            {"id": "c", "keyword": "camping tents", "ad": ad, "limits": {"description": 20}}]
    pred = [{"id": "a", "title": "REI tents", "description": "Shop now!", "rationale": "adds the keyword"},
            {"id": "b", "title": "x" * 31, "description": "Tents for all."},  # headline too long
            {"id": "c", "title": "Family tents", "description": "d" * 21}]  # description over its own limit
    r = _eval("ad_rewrite", gold, pred, ctr_fn=true_ctr)
    assert r["title_ok"] == pytest.approx(2 / 3) and r["description_ok"] == pytest.approx(2 / 3)
    assert r["constraint_rate"] == pytest.approx(1 / 3) and r["parse_rate"] == 1.0 and r["malformed"] == 0
    assert r["keyword_coverage"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert r["keyword_coverage_original"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert r["rationale_rate"] == pytest.approx(1 / 3)

    def sig(x):
        return 1 / (1 + math.exp(-x))
    # true_ctr by hand: sigmoid(-2 + 1.5·coverage + cta - min(((chars - 80)/50)², 2)); c has no truth: not counted
    base = sig(-2 + 1.5 * 0.5 - ((len("REI family tent. Fast shipping") - 80) / 50) ** 2)
    new_a = sig(-2 + 1.5 + 1 - ((len("REI tents. Shop now!") - 80) / 50) ** 2)
    new_b = sig(-2 + 1.5 * 0.5 - ((len("x" * 31 + ". Tents for all") - 80) / 50) ** 2)
    assert r["ctr_rows"] == 2 and r["ctr_original"] == pytest.approx(base)
    assert r["ctr_uplift"] == pytest.approx((new_a - base + new_b - base) / 2)
    assert r["ctr_win_rate"] == pytest.approx(((new_a > base) + (new_b > base)) / 2)
    # a malformed rewrite: every check fails and its CTR is 0; without ctr_fn the CTR values are NaN
    r = _eval("ad_rewrite", gold[:2], [pred[0], {"id": "b", "title": " ", "description": "x"}], ctr_fn=true_ctr)
    assert r["malformed"] == 1 and r["parse_rate"] == 0.5 and r["constraint_rate"] == 0.5
    assert r["ctr_uplift"] == pytest.approx((new_a - base - base) / 2)
    assert math.isnan(_eval("ad_rewrite", gold, pred)["ctr_uplift"])
    with pytest.raises(ValueError, match="gold id 'a': expected a keyword"):
        _eval("ad_rewrite", [dict(gold[0], keyword="")], pred)


def test_user_query_gen_metrics_by_hand():
    truth = {"interests": ["sofas", "tents"], "interest_words": {"sofas": ["ikea", "sofa", "sofas"],
                                                                 "tents": ["rei", "tent", "tents"]},
             "relevant_words": ["ikea", "rei", "sofa", "sofas", "tent", "tents"],
             "off_topic_words": ["beans", "coffee"]}
    gold = [{"id": i, "n_queries": 3, "truth": truth} for i in ("a", "b", "c")]
    pred = [{"id": "a", "queries": ["cheap tents", "tents coffee", "best sofa", "ikea sofa"]},  # the 4th is not counted
            {"id": "b", "queries": ["Cheap  Tents", "cheap tents"]},  # one distinct query
            {"id": "c", "queries": []}]  # malformed: 3 irrelevant queries
    r = _eval("user_query_gen", gold, pred)
    assert r["Relevance"] == pytest.approx((2 + 1 + 0) / (3 + 1 + 3)) and r["malformed"] == 1
    assert r["InterestCoverage"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert r["Distinct1"] == pytest.approx((5 / 6 + 1.0 + 0.0) / 3)  # cheap tents tents coffee best sofa
    assert r["Distinct2"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert r["CountOK"] == pytest.approx(1 / 3) and r["queries"] == 7 and r["relevant_queries"] == 3


def test_user_profile_metrics_by_hand():
    gold = [{"id": "a", "profile": {"interests": ["tents"], "intents": ["purchase", "research"],
                                    "constraints": ["budget"]}},
            {"id": "b", "profile": {"interests": ["laptops", "tents"], "intents": ["browse"], "constraints": []}},
            {"id": "c", "profile": {"interests": ["sofas"], "intents": ["browse"], "constraints": ["near austin"]}}]
    pred = [{"id": "a", "profile": {"interests": ["tents", "Sofas "], "intents": ["purchase"], "constraints": []}},
            {"id": "b", "profile": "{oops"},  # invalid JSON: predicts nothing
            {"id": "c", "profile": '{"interests": ["sofas"], "intents": ["BROWSE"], "constraints": ["Near  Austin"]}'}]
    r = _eval("user_profile", gold, pred)
    # interests: TP 2 of 3 predicted, 4 gold; intents: TP 2 of 2, 4 gold; constraints: TP 1 of 1, 2 gold
    assert r["interest_precision"] == pytest.approx(2 / 3) and r["interest_recall"] == pytest.approx(2 / 4)
    assert r["interest_F1"] == pytest.approx(4 / 7)
    assert r["intent_F1"] == pytest.approx(2 * 1 * 0.5 / 1.5) and r["constraint_F1"] == pytest.approx(2 / 3)
    assert r["json_valid"] == pytest.approx(2 / 3) and r["exact_match"] == pytest.approx(1 / 3)
    assert r["malformed"] == 1
    with pytest.raises(ValueError, match="gold id 'a': profile must be"):
        _eval("user_profile", [{"id": "a", "profile": {"interests": []}}], pred)


def test_eval_report_metrics_by_hand():
    gold = [{"id": "a", "truth": {"correct": {"baseline": 5, "candidate": 3}, "total": 6,
                                  "accuracy": {"baseline": 5 / 6, "candidate": 3 / 6}, "better": "baseline"}},
            {"id": "b", "truth": {"correct": {"baseline": 2, "candidate": 2}, "total": 4,
                                  "accuracy": {"baseline": 0.5, "candidate": 0.5}, "better": "tie"}}]
    pred = [{"id": "a", "summary": "baseline wins", "better": "baseline",
             "table": {"baseline": {"correct": 5, "total": 6, "accuracy": 83.3},
                       "candidate": {"correct": 3, "total": 6, "accuracy": 55.0}}},  # accuracy off by 5 points
            {"id": "b", "summary": "?", "better": "candidate",
             "table": {"baseline": {"correct": 2, "total": 4, "accuracy": 50.0}}}]  # candidate missing: malformed
    r = _eval("eval_report", gold, pred)
    assert r["table_accuracy"] == pytest.approx(2 / 4) and r["parse_rate"] == 0.5 and r["malformed"] == 1
    assert r["better_accuracy"] == 0.5
    assert r["accuracy_MAE"] == pytest.approx((abs(0.833 - 5 / 6) + 0.05 + 0.0 + 1.0) / 4)
    with pytest.raises(ValueError, match="gold id 'a': expected truth"):
        _eval("eval_report", [{"id": "a"}], pred)


# ------------------------------------------------------------------------------------ CLI, SFT
@pytest.mark.parametrize("name", NEW)
def test_synth_then_eval_perfect_predictions(name, tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    assert main(["data", "synth", "--task", name, "--n", "30", "--out", str(gold), "--seed", "2"]) == 0
    rows = [json.loads(x) for x in gold.read_text().splitlines()]
    assert rows == generate(name, SyntheticConfig(size=30, seed=2))
    spec = task(name)
    write_jsonl([prediction_row(spec, r["id"], spec.target(r)) for r in rows], tmp_path / "pred.jsonl")
    capsys.readouterr()
    assert main(["eval", "--task", name, "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(gold), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 30 and r["malformed"] == 0
    perfect = {"ad_rewrite": "constraint_rate", "user_query_gen": "Relevance", "user_profile": "exact_match",
               "eval_report": "table_accuracy"}[name]
    assert r[perfect] == 1.0
    if name == "ad_rewrite":  # the CLI hands eval the true CTR function
        want = sum(x["truth"]["ctr_rewrite"] - x["truth"]["ctr_original"] for x in rows) / 30
        assert r["ctr_uplift"] == pytest.approx(want) and r["ctr_uplift"] > 0.2
    assert main(["eval", "--task", name, "--pred", str(tmp_path / "pred.jsonl"), "--gold", str(gold)]) == 0
    assert "|---" in capsys.readouterr().out


def test_new_tasks_are_sft_tasks_and_predict_through_a_scorer():
    from megatron_ads.config.train import SFTSpec

    check_sft(SFTSpec(tasks=list(NEW), task_metric={"ad_rewrite": "keyword_coverage", "user_profile": "json_valid"}))
    with pytest.raises(ValueError, match=r"sft\.task_metric\.eval_report"):
        check_sft(SFTSpec(tasks=list(NEW), task_metric={"eval_report": "BACC"}))

    class Echo:  # generates each row's gold label-only target (the prompt tells which row)
        def __init__(self, rows, spec):
            empty = len("<think></think>\n")
            self.by_prompt = {spec.prompt(r): spec.target(dict(r, reasoning=""))[empty:] for r in rows}

        def generate(self, prompts, max_new_tokens):
            return [self.by_prompt[p[:-len("<think></think>\n")]] for p in prompts]

    for name in NEW:
        spec, rows = task(name), generate(name, SyntheticConfig(size=5, seed=4))
        preds = spec.predict(rows, Echo(rows, spec))
        m = metric(spec.metric)
        values = m.summary(m.evaluate(parsed_rows([spec.gold(r) for r in rows]), parsed_rows(preds),
                                      **({"ctr_fn": true_ctr} if m.ctr else {})))
        assert all(k in values for k in spec.lambda_metrics)
        assert values[spec.lambda_metrics[0]] == 1.0
