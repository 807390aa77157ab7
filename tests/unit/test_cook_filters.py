"""Data cooking (``data.cook``) on scripted models: every filter drops the row it must and keeps the one it must,
the golden-set validation refuses a bad prompt (naming it and the figure), resuming skips the journal's ids, the
split is deterministic, the report's counts add up, and the cooked rows are what ``train sft`` reads."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from megatron_ads.config.cook import CookConfig
from megatron_ads.data.cook import filters as F
from megatron_ads.data.cook import pipeline as P
from megatron_ads.data.cook.prompts import PROMPTS, prompt_for, prompt_from_dict, render
from megatron_ads.data.cook.report import check_counts, task_report
from megatron_ads.data.synthetic import CATALOGUE, CITIES, PRICE, SyntheticConfig, generate, write_jsonl
from megatron_ads.data.tasks import load_jsonl, parse_output, task
from megatron_ads.runtime.errors import BadInput

QA, AU, QG, AR = task("query_ad"), task("ad_user"), task("query_gen"), task("ad_rewrite")


class BowEmbed:
    """Unit bag-of-words vectors: the cosine of two texts is their word overlap (a stand-in for MiniLM)."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts):
        out = np.zeros((len(texts), 256), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in F.words(t):
                out[i, self.vocab.setdefault(w, len(self.vocab) % 256)] += 1.0
            n = np.linalg.norm(out[i])
            out[i] = out[i] / n if n else out[i]
        return out


def _labels(prompt):
    return {k: re.search(rf"{k}: (\w+)", prompt).group(1) for k in ("Relevance label", "Location label",
                                                                     "Ad-quality label")}


class ScriptedTeacher:
    """Explains the given query-ad labels citing the query; ``bad`` maps a candidate index or variation name to
    a defect (``schema``, ``contradiction``, ``boilerplate``, ``ungrounded``, ``divergent``, ``unfaithful``)."""

    def __init__(self, bad=None, limit=10_000):
        self.bad, self.calls, self.limit = bad or {}, [], limit

    def fits(self, prompt, max_new_tokens):
        return len(prompt) + max_new_tokens <= self.limit

    def generate(self, prompts, seeds, *, temperature, top_p, max_new_tokens, stop_text):
        self.calls.append(list(prompts))
        outs = []
        for p, seed in zip(prompts, seeds):
            lab = _labels(p)
            query = re.search(r"Query: (.*)", p).group(1)
            var = ("reordered" if "Justify the labels" in p else "rephrased" if "What makes" in p else "base")
            defect = self.bad.get(var) or self.bad.get(("seed", seed))
            reasoning = f"The user searches {query}. The ad matches the query words {query}."
            if defect == "boilerplate":
                reasoning = "This is a reasonable judgement overall and the labels look right."
            elif defect == "divergent":
                reasoning = f"Zebra xylophone quantum nebula orchestra {query.split()[-1]}."  # cites one word
            elif defect == "unfaithful":
                reasoning += " UNFAITHFUL"
            elif defect == "ungrounded":  # a city the prompt does not name
                reasoning += f" The ad serves {[c for c in CITIES if c not in p.lower()][0]}."
            rel = lab["Relevance label"]
            if defect == "contradiction":
                rel = {"bad": "good", "fair": "bad", "good": "bad"}[rel]
            text = (f"<think>{reasoning}</think>\n<Label>{rel}</Label>\n<LocationLabel>{lab['Location label']}"
                    f"</LocationLabel>\n<AdQuality>{lab['Ad-quality label']}</AdQuality>")
            if defect == "schema":
                text = text.replace("</think>", "")
            outs.append((text, "stop"))
        return outs


class GoldVerifier:
    """Log-probs favouring each row's gold label tags (found by the query and title in the verifier's prompt),
    the other values when the reasoning says UNFAITHFUL."""

    def __init__(self, rows):
        self.gold = {(r["query"], r["ad"]["title"]): {"Label": r["labels"]["relevance"],
                                                      "LocationLabel": r["labels"]["location"],
                                                      "AdQuality": r["labels"]["quality"]} for r in rows}

    def score(self, prompts, targets):
        out = []
        for p, t in zip(prompts, targets):
            key = (re.search(r"query: (.*)", p).group(1), re.search(r"title: (.*)", p).group(1))
            tag, value = re.fullmatch(r"<(\w+)>(\w+)</\w+>", t).groups()
            right = (value == self.gold[key][tag]) != ("UNFAITHFUL" in p)
            out.append(0.0 if right else -5.0)
        return out


def _qa_rows(n=6, seed=3):
    return generate("query_ad", SyntheticConfig(size=n, seed=seed))


def _cfg(**kw):
    return CookConfig(**{"golden_rows": 4, **kw})


# ------------------------------------------------------------------------------------ candidate filters
def test_schema_filter_drops_malformed_keeps_well_formed():
    ok = "<think>why</think>\n<Label>good</Label>\n<LocationLabel>good</LocationLabel>\n<AdQuality>bad</AdQuality>"
    assert F.schema_check(QA, ok, "teacher")[1] is None
    for bad in (ok.replace("</think>", ""), ok.replace("<Label>good</Label>\n", ""),
                ok.replace("<AdQuality>bad", "<AdQuality>meh"), ok.replace("<think>why</think>", ""),
                ok.replace("why", " ")):
        assert F.schema_check(QA, bad, "teacher")[1] is not None, bad
    # gold answer mode: the reasoning must be closed, non-empty and free of answer tags
    assert F.schema_check(QA, "The query asks for tents.</think>", "gold")[1] is None
    assert "token limit" in F.schema_check(QA, "The query asks for tents", "gold", "length")[1]
    assert F.schema_check(QA, "tents <Label>good</Label></think>", "gold")[1] is not None


def test_contradiction_filter_tags_and_stated_labels():
    row = _qa_rows(1)[0] | {"labels": {"relevance": "fair", "location": "good", "quality": "good"}}
    good = "<think>{}</think>\n<Label>fair</Label>\n<LocationLabel>good</LocationLabel>\n<AdQuality>good</AdQuality>"
    parsed = parse_output(QA, good.format("Therefore the location label 'Good', relevance label 'Fair' and "
                                          "ad-quality label 'Good' are appropriate."))
    assert F.contradiction(QA, row, parsed, "teacher") is None
    assert F.stated_labels(QA, parsed.reasoning) == {"location": {"good"}, "relevance": {"fair"}, "quality": {"good"}}
    wrong_tag = parse_output(QA, good.format("fine").replace("<Label>fair", "<Label>good"))
    assert "contradicts the gold" in F.contradiction(QA, row, wrong_tag, "teacher")
    wrong_text = parse_output(QA, good.format("So the relevance label is bad."))
    assert "states relevance 'bad'" in F.contradiction(QA, row, wrong_text, "gold")
    # "location relevance" names the location field, not relevance
    assert F.stated_labels(QA, "the location relevance is good") == {"location": {"good"}}
    au = {"id": 1, "history": ["searched tents"], "ad": {"title": "t", "description": "d"}, "score": 2}
    assert F.contradiction(AU, au, parse_output(AU, "<think>a score of 3 fits</think>\n<Score>2</Score>"), "teacher")
    fits = parse_output(AU, "<think>a score of 2 fits</think>\n<Score>2</Score>")
    assert F.contradiction(AU, au, fits, "teacher") is None
    qg = {"id": 1, "keyword": "tents", "ad": {"title": "t", "description": "d"},
          "queries": ["cheap tents", "msr tents"]}
    both = parse_output(QG, "<think>x</think>\n<Query>MSR tents</Query>\n<Query>cheap tents</Query>")
    assert F.contradiction(QG, qg, both, "teacher") is None
    assert F.contradiction(QG, qg, parse_output(QG, "<think>x</think>\n<Query>cheap tents</Query>"), "teacher")
    # ad_rewrite: the repeated rewrite must be the given one (words; the rationale only when one is given)
    ar = {"id": 1, "keyword": "tents", "ad": {"title": "t", "description": "d"},
          "rewrite": {"rationale": "adds the keyword", "title": "Shop MSR tents", "description": "Light. Buy now!"}}
    out = "<think>x</think>\n<Rationale>{}</Rationale>\n<Title>{}</Title>\n<Description>Light.  buy now</Description>"
    assert F.contradiction(AR, ar, parse_output(AR, out.format("Adds the keyword.", "shop MSR tents")), "teacher") is None
    changed = F.contradiction(AR, ar, parse_output(AR, out.format("adds the keyword", "Shop cheap tents")), "teacher")
    assert changed.startswith("<Title> 'Shop cheap tents' differs from the given")
    assert "<Rationale>" in F.contradiction(AR, ar, parse_output(AR, out.format("other", "Shop MSR tents")), "teacher")
    no_rationale = {**ar, "rewrite": {k: v for k, v in ar["rewrite"].items() if k != "rationale"}}
    assert F.contradiction(AR, no_rationale, parse_output(AR, out.format("", "Shop MSR tents")), "teacher") is None


def test_boilerplate_filter_needs_an_input_entity():
    row = {"id": 1, "query": "cheap Nike running shoes in boston",
           "ad": {"title": "Asics trail runners", "description": "Shop in denver.",
                  "url": "https://www.asics.example.com"}}
    ents = F.entities(QA, row)
    assert {"nike", "running", "shoe", "boston", "asic", "denver"} <= ents and "the" not in ents
    assert F.is_boilerplate("The ad is relevant and the labels are appropriate for this pair.", ents)
    assert not F.is_boilerplate("The user wants Nike shoes but the ad sells Asics.", ents)
    assert not F.is_boilerplate("anything", ents, min_overlap=0)  # the filter off


def _fair_row():
    """The first synthetic query_ad row with a price and a brand conflict, a city in the query and an ad
    description (every entity of its rule reasoning is in its input fields)."""
    for r in generate("query_ad", SyntheticConfig(size=500, seed=0, city_rate=0.8)):
        if "price-intent" in r["reasoning"] and "but the ad is for" in r["reasoning"] and " in " in r["query"] \
                and r["ad"]["description"]:
            return r
    raise AssertionError("no such row")


def test_grounding_filter_drops_wrong_city_price_brand_keeps_the_rule_text():
    lex = F.lexicon()
    row = _fair_row()
    rule = row["reasoning"]
    text = " ".join([row["query"], *row["ad"].values()]).lower()
    assert F.grounding(QA, row, rule, lex) is None  # the exact rule reasoning of the row
    no_ref = {k: v for k, v in row.items() if k != "reasoning"}
    assert F.grounding(QA, no_ref, rule, lex) is None  # ... grounded by the input fields alone
    # a city, a price tier, a brand, a category the row does not hold
    city = next(c for c in CITIES if c not in text)
    ad_city = re.search(r"ad city (\w+)", rule).group(1)
    assert F.grounding(QA, row, rule.replace(f"ad city {ad_city}", f"ad city {city}"), lex) == \
        f"the reasoning names city '{city}', not in the input"
    said = re.search(r"but the ad is (\w+), a price-intent", rule).group(1)  # the ad's word: budget / premium
    other = next(w for w in PRICE.values() if w != said)
    assert other not in text
    assert F.grounding(QA, row, rule.replace(f"the ad is {said},", f"the ad is {other},"), lex) == \
        f"the reasoning names price '{other}', not in the input"
    qbrand = re.search(r"The query names (.+?) but", rule).group(1)
    brand = next(b for c in CATALOGUE.values() for b in c["brands"] if b.lower() not in text)
    assert F.grounding(QA, row, rule.replace(f"names {qbrand} but", f"names {brand} but"), lex) == \
        f"the reasoning names brand '{brand.lower()}', not in the input"
    other_cat = next(c for c in CATALOGUE if c not in text)
    assert "names category" in F.grounding(QA, row, f"The ad sells {other_cat}.", lex)
    # case-, plural- and possessive-insensitive whole words; a word inside another word is no mention
    cat = re.search(r"both about (.+?)\.", rule).group(1)
    one = cat[:-1] if cat.endswith("s") else cat + "s"
    assert F.grounding(QA, row, f"A {one.upper()} in {ad_city.capitalize()}'s shops. Bostonians, Parisians.",
                       lex) is None


def test_grounding_filter_reference_reasoning_grounds_a_city_the_input_does_not_show():
    """An ad with an empty description still has a city, and the rule reasoning names it: the row's reference
    reasoning is a grounding source, so the rule text is kept and another city is dropped."""
    lex = F.lexicon()
    row = next(r for r in generate("query_ad", SyntheticConfig(size=500, seed=0, city_rate=0.8))
               if not r["ad"]["description"] and "different cities" in r["reasoning"])
    ad_city = re.search(r"ad city (\w+)", row["reasoning"]).group(1)
    assert ad_city not in " ".join([row["query"], *row["ad"].values()]).lower()
    assert F.grounding(QA, row, row["reasoning"], lex) is None
    other = next(c for c in CITIES if c != ad_city and c not in row["query"])
    assert F.grounding(QA, row, row["reasoning"].replace(f"ad city {ad_city}", f"ad city {other}"), lex) == \
        f"the reasoning names city '{other}', not in the input"
    no_ref = {k: v for k, v in row.items() if k != "reasoning"}
    assert F.grounding(QA, no_ref, row["reasoning"], lex) == f"the reasoning names city '{ad_city}', not in the input"


def test_grounding_filter_never_drops_the_rule_reasoning_of_synthetic_rows():
    """The rule reasoning of 2 000 query_ad and 2 000 ad_user rows (the SFT recipe's synthetic settings), and of
    500 query_gen and ad_rewrite rows, is never dropped; without the reference reasoning as a source the only
    ungrounded mentions are the cities of query_ad ads whose description is empty."""
    from megatron_ads.config.train import JobConfig
    from megatron_ads.data.sft_data import synthetic_config

    sft = JobConfig.load(Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml").sft
    lex = F.lexicon()
    for name, n in (("query_ad", 2000), ("ad_user", 2000), ("query_gen", 500), ("ad_rewrite", 500)):
        t = task(name)
        cfg = synthetic_config(sft, name) if name in sft.synthetic or name in sft.tasks else SyntheticConfig()
        rows = generate(name, dataclasses.replace(cfg, size=n, seed=0))
        dropped = [(r["id"], why) for r in rows if (why := F.grounding(t, r, r["reasoning"], lex)) is not None]
        assert dropped == [], (name, len(dropped), dropped[:3])
        bare = [(r, F.grounding(t, {k: v for k, v in r.items() if k != "reasoning"}, r["reasoning"], lex))
                for r in rows]
        bare = [(r, why) for r, why in bare if why is not None]
        if name == "query_ad":
            assert bare and all(not r["ad"]["description"] and why.startswith("the reasoning names city")
                                for r, why in bare), bare[:3]
        else:
            assert bare == [], (name, bare[:3])


def test_grounding_lexicon_file_replaces_adds_and_removes_kinds(tmp_path):
    row = {"id": 1, "query": "red tents in boston", "ad": {"title": "MSR family tent - budget tents",
                                                           "description": "Shop MSR family tent in paris."}}
    f = tmp_path / "lex.json"
    f.write_text(json.dumps({"city": ["paris", "lyon"], "color": [["red", "crimson"], "blue"], "product": []}))
    lex = F.lexicon(str(f))
    assert set(k for k, _, _ in lex.entries.values()) == {"city", "brand", "category", "price", "color"}
    assert F.grounding(QA, row, "A crimson tent in paris; Denver is elsewhere.", lex) is None  # city replaced
    assert F.grounding(QA, row, "The ad serves lyon.", lex) == "the reasoning names city 'lyon', not in the input"
    assert F.grounding(QA, row, "A blue tent.", lex) == "the reasoning names color 'blue', not in the input"
    assert F.grounding(QA, row, "The 2 person tent.", lex) is None  # product removed
    assert F.grounding(QA, row, "The ad serves denver.", F.lexicon()) is not None  # the built-in one


@pytest.mark.parametrize("content, match", [
    ("{not json", r"lex\.json \(cook config grounding_lexicon\): invalid JSON"),
    ('["boston"]', r"lex\.json .*expected a JSON object \{kind: \[words\]\}, got list"),
    ('{"city": "boston"}', r"lex\.json .*field 'city': expected a list of words"),
    ('{"city": ["boston", 3]}', r"lex\.json .*field 'city\[1\]': expected a word or a non-empty list"),
    ('{"city": ["boston", []]}', r"field 'city\[1\]'"),
    ('{"city": ["boston", "--"]}', r"field 'city\[1\]'"),
    ('{"extra": ["Boston"]}', r"field 'extra\[0\]': 'Boston' is already in the lexicon \(kind 'city'\)"),
])
def test_grounding_lexicon_file_errors_name_the_file_and_field(tmp_path, content, match):
    f = tmp_path / "lex.json"
    f.write_text(content)
    with pytest.raises(BadInput, match=match):
        F.lexicon(str(f))


def test_grounding_config_switch_and_lexicon_errors(tmp_path):
    from argparse import Namespace

    from megatron_ads.cli.cook import RECORD_KEYS
    from megatron_ads.cli.cook import run as cook_run

    assert CookConfig().grounding is True and CookConfig().grounding_lexicon is None
    assert CookConfig.load(None, ["grounding=false"]).grounding is False
    assert {"grounding", "grounding_lexicon"} <= set(RECORD_KEYS)  # a resumed journal must have the same
    with pytest.raises(ValueError, match="grounding: expected true or false"):
        CookConfig(grounding="yes")
    with pytest.raises(ValueError, match="grounding_lexicon: expected the path of a JSON file"):
        CookConfig(grounding_lexicon=3)
    with pytest.raises(BadInput, match=r"missing\.json \(cook config grounding_lexicon\): no such file"):
        F.lexicon(str(tmp_path / "missing.json"))
    # megatron-ads cook refuses a bad lexicon file (exit 2) before reading any input or model
    bad = tmp_path / "bad.json"
    bad.write_text('{"city": 1}')
    args = Namespace(task="query_ad", workers=1, config=None, overrides=[f"grounding_lexicon={bad}"])
    with pytest.raises(BadInput, match=r"bad\.json .*field 'city'"):
        cook_run(args)


def test_self_consistency_drops_the_divergent_candidate():
    embed = BowEmbed()
    texts = ["the ad sells nike running shoes in boston", "the ad sells nike running shoes in boston today",
             "the ad sells nike running shoes", "zebra xylophone quantum nebula"]
    keep, sims = F.self_consistency(embed(texts), 0.8)
    assert keep == [True, True, True, False] and sims[3] < 0.1 and min(sims[:3]) >= 0.8
    # the literal mean over all four would have dropped the agreeing ones too (one outlier at cosine 0)
    assert max(F.mean_pairwise_cosine(embed(texts))[:3]) < 0.8
    assert F.self_consistency(embed(texts[:1]), 0.8)[0] == [True]  # alone: kept
    assert F.self_consistency(embed([texts[0], texts[3]]), 0.8)[0] == [False, False]  # two that disagree


def test_verifier_threshold_drops_unfaithful_candidates():
    prompt = prompt_for("query_ad")
    rows = _qa_rows(2)
    ver = GoldVerifier(rows)
    s = P.verifier_scores(QA, prompt, [(rows[0], "faithful reasons"), (rows[1], "UNFAITHFUL reasons")], ver)
    assert s[0] > 0.5 > s[1]
    # the judge kind (query_gen): P(yes) among yes/no
    qg = generate("query_gen", SyntheticConfig(size=1))[0]

    class Judge:
        def score(self, prompts, targets):
            return [0.0 if (t == "yes</Verdict>") == ("UNFAITHFUL" not in p) else -3.0
                    for p, t in zip(prompts, targets)]

    a, b = P.verifier_scores(QG, prompt_for("query_gen"), [(qg, "fine"), (qg, "UNFAITHFUL")], Judge())
    assert a == pytest.approx(1 / (1 + np.exp(-3))) and b == pytest.approx(1 - a)


# ------------------------------------------------------------------------------------ keyword filters
def test_keyword_filters_broader_off_topic_near_duplicate():
    cfg = CookConfig()
    assert F.is_narrower("running shoes", "cheap running shoes", 0.5, 0.7)
    assert F.is_narrower("running shoes", "nike running shoe reviews", 0.5, 0.7)  # plural-insensitive
    assert not F.is_narrower("running shoes", "shoes", 0.9, 0.7)  # broader
    assert not F.is_narrower("running shoes", "running shoes", 1.0, 0.7)  # adds nothing
    assert not F.is_narrower("laptop computer", "gaming notebook", 0.3, 0.7)
    assert F.is_narrower("laptop computer", "gaming notebook", 0.8, 0.7)  # a close synonym
    assert F.edit_similarity("Cheap Tents!", "cheap tents") == 1.0 and F.edit_similarity("abc", "xyz") == 0.0
    v = np.eye(4, dtype=np.float32)

    def item(q, cos_ad=0.8, vec=0, kw="tents"):
        return {"keyword": kw, "query": q, "cos_keyword": 0.5, "cos_ad": cos_ad, "vec": v[vec]}

    verdicts = F.keyword_filter([item("cheap tents"), item("tent"), item("coffee tents", cos_ad=0.1),
                                 item("cheap tents!", vec=1), item("cheap tent", vec=2),  # edit sim 0.91 -> dup
                                 item("msr family tents", vec=0),  # cosine 1 with "cheap tents" -> dup
                                 item("msr 2 person tents", vec=3), item("cheap tents", kw="green tea", vec=3)], cfg)
    assert verdicts == [None, F.BROADER, F.OFF_TOPIC, F.NEAR_DUPLICATE, F.NEAR_DUPLICATE, F.NEAR_DUPLICATE,
                        None, F.BROADER]


def test_keyword_prefilter_rows_and_counts():
    rows = [{"id": "a", "keyword": "tents", "ad": {"title": "REI tents", "description": "family tents"},
             "queries": ["cheap tents", "tents"]},
            {"id": "b", "keyword": "tents", "ad": {"title": "REI tents", "description": "family tents"},
             "query": "cheap tents"}]
    rows = [P.normalize_row(QG, r) for r in rows]
    out, dropped, counts = P.keyword_prefilter(QG, rows, CookConfig(off_topic_min=0.0), BowEmbed())
    assert [r["queries"] for r in out] == [["cheap tents"]] and dropped == {"b": F.NEAR_DUPLICATE}
    assert counts == {"raw": 3, "kept": 1, "dropped": {"broader": 1, "off_topic": 0, "near_duplicate": 1}}


# ------------------------------------------------------------------------------------ pipeline
def _cook(rows, teacher, verifier, cfg, done=None):
    journal = []
    P.run(QA, prompt_for("query_ad"), rows, teacher=teacher, verifier=verifier, embed=BowEmbed(), cfg=cfg,
          done=done or set(), append=journal.extend)
    return journal


def test_cook_batch_attributes_each_candidate_to_its_first_failed_filter():
    rows = _qa_rows(4)
    seeds = {k: P.candidate_seed(0, rows[0]["id"], k) for k in range(4)}
    bad = {("seed", seeds[0]): "schema", ("seed", seeds[1]): "contradiction", ("seed", seeds[2]): "boilerplate",
           ("seed", seeds[3]): "unfaithful"}
    recs = _cook(rows, ScriptedTeacher(bad), GoldVerifier(rows), _cfg(self_consistency_min=0.3))
    first = recs[0]
    assert [c["dropped_by"] for c in first["candidates"]] == ["schema", "contradiction", "boilerplate", "verifier"]
    assert first["status"] == "dropped" and first["dropped_by"] == "verifier" and first["rows"] == []
    for rec in recs[1:]:
        assert rec["status"] == "kept" and all(c["dropped_by"] is None for c in rec["candidates"])
        (row,) = rec["rows"]
        assert row["cook"]["prompt"] == "query_ad/v1" and row["cook"]["verifier"] > 0.5
        target = QA.target(row)  # what train sft learns: the cooked reasoning in <think>, then the gold tags
        assert target.startswith(f"<think>{row['reasoning']}</think>") and parse_output(QA, target).ok
    # a divergent candidate among consistent ones: self-consistency
    bad = {("seed", P.candidate_seed(0, rows[1]["id"], 2)): "divergent"}
    recs = _cook(rows[1:2], ScriptedTeacher(bad), None, _cfg())
    assert [c["dropped_by"] for c in recs[0]["candidates"]] == [None, None, "self_consistency", None]
    assert recs[0]["candidates"][2]["self_consistency"] < 0.8 <= recs[0]["candidates"][0]["self_consistency"]


def test_cook_batch_grounding_filter_drops_an_ungrounded_candidate_and_the_switch_keeps_it():
    rows = _qa_rows(3)
    bad = {("seed", P.candidate_seed(0, rows[0]["id"], 1)): "ungrounded"}
    recs = _cook(rows, ScriptedTeacher(bad), GoldVerifier(rows), _cfg(self_consistency_min=0.3))
    cands = recs[0]["candidates"]
    assert [c["dropped_by"] for c in cands] == [None, "grounding", None, None]
    assert re.fullmatch(r"the reasoning names city '\w+', not in the input", cands[1]["why"])
    rep = task_report(task="query_ad", prompt="query_ad/v1", n_read=3, keyword_dropped={}, query_counts={},
                      records=recs, splits=P.finalize(rows, {str(r["id"]): r for r in recs}, _cfg()),
                      validation=None, settings={})
    assert rep["candidates"]["dropped"]["grounding"] == 1 and rep["inputs"]["dropped"]["grounding"] == 0
    # the switch off: nothing dropped
    off = _cook(rows, ScriptedTeacher(bad), GoldVerifier(rows), _cfg(self_consistency_min=0.3, grounding=False))
    assert all(c["dropped_by"] is None for rec in off for c in rec["candidates"])
    # every candidate of an input ungrounded: the input is dropped by grounding
    allbad = {("seed", P.candidate_seed(0, rows[0]["id"], k)): "ungrounded" for k in range(4)}
    rec = _cook(rows[:1], ScriptedTeacher(allbad), None, _cfg())[0]
    assert rec["status"] == "dropped" and rec["dropped_by"] == "grounding"
    # golden set: a variation whose outputs name an entity the row lacks fails the grounding figure
    val = P.validate_prompt(QA, prompt_for("query_ad"), _qa_rows(5), ScriptedTeacher({"rephrased": "ungrounded"}),
                            BowEmbed(), _cfg())
    assert val["variations"]["rephrased"]["grounding"] == 0.0 and val["variations"]["base"]["grounding"] == 1.0
    assert "variation 'rephrased': grounding 0.00 < 0.80" in val["failures"]
    val = P.validate_prompt(QA, prompt_for("query_ad"), _qa_rows(5), ScriptedTeacher({"rephrased": "ungrounded"}),
                            BowEmbed(), _cfg(grounding=False))
    assert val["variations"]["rephrased"]["grounding"] == 1.0


def test_prompt_validation_refuses_a_bad_prompt_and_passes_a_good_one():
    rows = _qa_rows(5)
    embed, prompt = BowEmbed(), prompt_for("query_ad")
    good = P.validate_prompt(QA, prompt, rows, ScriptedTeacher(), embed, _cfg())
    assert good["passed"] and good["failures"] == [] and good["agreement"] > 0.8
    assert set(good["variations"]) == {"base", "rephrased", "reordered"}
    P.check_validation(good)
    # the reordered variation makes the teacher drop its closing think tag; the rephrased one relabels
    bad = P.validate_prompt(QA, prompt, rows, ScriptedTeacher({"reordered": "schema", "rephrased": "contradiction"}),
                            embed, _cfg())
    assert not bad["passed"]
    assert bad["variations"]["reordered"]["format_validity"] == 0.0
    assert bad["variations"]["rephrased"]["label_consistency"] == 0.0
    with pytest.raises(P.PromptRefused, match=r"prompt query_ad/v1 refused.*variation 'rephrased': label "
                                              r"consistency 0\.00 < 0\.90.*variation 'reordered': format validity"
                                              r" 0\.00 < 0\.90") as exc:
        P.check_validation(bad)
    assert exc.value.report is bad and isinstance(exc.value, BadInput)
    divergent = P.validate_prompt(QA, prompt, rows, ScriptedTeacher({"reordered": "divergent"}), embed, _cfg())
    assert any(f.startswith("agreement between variations") for f in divergent["failures"])


def test_resume_skips_done_ids_and_gives_the_same_corpus():
    rows = _qa_rows(7)
    cfg = _cfg(batch_size=2)
    full = _cook(rows, ScriptedTeacher(), None, cfg)
    done = {str(r["id"]) for r in rows[:4]}
    teacher = ScriptedTeacher()
    rest = _cook(rows, teacher, None, cfg, done=done)
    assert [r["id"] for r in rest] == [r["id"] for r in rows[4:]]
    assert sum(len(call) for call in teacher.calls) == 4 * (len(rows) - 4)
    recs = {str(r["id"]): r for r in full[:4] + rest}
    assert P.finalize(rows, recs, cfg) == P.finalize(rows, {str(r["id"]): r for r in full}, cfg)
    # workers: each takes every world-th pending input, together all of them once
    shares = [[r["id"] for r in _cook_share(rows, cfg, k, 3)] for k in range(3)]
    assert sorted(sum(shares, [])) == sorted(r["id"] for r in rows)


def _cook_share(rows, cfg, rank, world):
    journal = []
    P.run(QA, prompt_for("query_ad"), rows, teacher=ScriptedTeacher(), verifier=None, embed=BowEmbed(), cfg=cfg,
          done=set(), append=journal.extend, rank=rank, world=world)
    return journal


def test_split_is_deterministic_and_disjoint():
    rows = _qa_rows(20)
    cfg = _cfg(keep_per_input=2)
    recs = {str(r["id"]): r for r in _cook(rows, ScriptedTeacher(), None, cfg)}
    a, b = P.finalize(rows, recs, cfg), P.finalize(rows, dict(reversed(list(recs.items()))), cfg)
    assert a == b
    assert (len(a["val"]), len(a["test"])) == (2, 2) and len(a["train"]) == 2 * 16
    ids = {k: {str(r["id"]).split("#")[0] for r in v} for k, v in a.items()}
    assert not (ids["train"] & ids["val"] or ids["train"] & ids["test"] or ids["val"] & ids["test"])
    c = P.finalize(rows, recs, _cfg(keep_per_input=2, split_seed=1))
    assert [r["id"] for r in c["val"]] != [r["id"] for r in a["val"]]
    assert P.split_counts(3, cfg) == (1, 1) and P.split_counts(2, cfg) == (0, 0)


def test_report_counts_add_up_and_rows_load_as_sft_files(tmp_path):
    rows = _qa_rows(6)
    cfg = _cfg()
    bad = {("seed", P.candidate_seed(0, rows[0]["id"], k)): "schema" for k in range(4)}
    recs = _cook(rows, ScriptedTeacher(bad), GoldVerifier(rows), cfg)
    by_id = {str(r["id"]): r for r in recs}
    splits = P.finalize(rows, by_id, cfg)
    rep = task_report(task="query_ad", prompt="query_ad/v1", n_read=6, keyword_dropped={}, query_counts={},
                      records=recs, splits=splits, validation=None, settings={})
    assert rep["inputs"] == {"read": 6, "kept": 5, "dropped": {"too_long": 0, "schema": 1, "contradiction": 0,
                                                               "boilerplate": 0, "grounding": 0, "self_consistency": 0,
                                                               "verifier": 0}}
    assert list(rep["candidates"]["dropped"]) == list(F.CANDIDATE_FILTERS)
    assert rep["candidates"]["generated"] == 24 and rep["candidates"]["dropped"]["schema"] == 4
    assert rep["scores"]["verifier"]["n"] == 20 and sum(rep["scores"]["verifier"]["counts"]) == 20
    bad_rep = json.loads(json.dumps(rep))
    bad_rep["inputs"]["kept"] += 1
    with pytest.raises(AssertionError, match="inputs do not add up"):
        check_counts(bad_rep)
    for name, part in splits.items():  # what sft_data.user_data reads through sft.files
        write_jsonl(part, tmp_path / f"{name}.jsonl")
        back = load_jsonl(tmp_path / f"{name}.jsonl", QA)
        assert [QA.target(r) for r in back] == [QA.target(r) for r in part]


def test_too_long_inputs_are_dropped_not_generated():
    rows = _qa_rows(2)
    teacher = ScriptedTeacher(limit=0)
    recs = _cook(rows, teacher, None, _cfg())
    assert [r["dropped_by"] for r in recs] == ["too_long", "too_long"] and teacher.calls == []


# ------------------------------------------------------------------------------------ prompts, input, config
def test_prompt_registry_renders_every_variation_with_gold_labels():
    for name, prompt in PROMPTS.items():
        t = task(name)
        row = generate(name, SyntheticConfig(size=1, seed=1))[0]
        for v in prompt.variations:
            text = render(prompt, v, t, row, "teacher")
            assert text.endswith("Answer:\n") and v.question in text and "{" not in text
            assert render(prompt, v, t, row, "gold").endswith("Answer:\n<think>")
        base = render(prompt, prompt.variations[0], t, row, "teacher")
        reordered = render(prompt, prompt.variations[-1], t, row, "teacher")
        assert base.index(prompt.steps[0]) < base.index(prompt.steps[1])
        assert reordered.index(prompt.steps[1]) < reordered.index(prompt.steps[0])
    qa = generate("query_ad", SyntheticConfig(size=1))[0]
    text = render(PROMPTS["query_ad"], PROMPTS["query_ad"].variations[0], QA, qa, "teacher")
    assert f"Relevance label: {qa['labels']['relevance']}" in text and qa["query"] in text
    edited = prompt_from_dict("query_ad", {"intro": "Explain {query}.", "variations": [
        {"name": "only", "question": "Why?", "order": [2, 1, 0]}]})
    assert edited.id == "query_ad/v1" and len(edited.variations) == 1
    with pytest.raises(ValueError, match="unknown placeholder"):
        prompt_from_dict("query_ad", {"intro": "Explain {keyword}."})
    with pytest.raises(ValueError, match="not a permutation"):
        prompt_from_dict("query_ad", {"variations": [{"name": "x", "question": "?", "order": [0, 0, 1]}]})
    with pytest.raises(ValueError, match="cooking has prompts for"):
        prompt_for("user_profile")
    ar = generate("ad_rewrite", SyntheticConfig(size=1, seed=2))[0]
    text = render(PROMPTS["ad_rewrite"], PROMPTS["ad_rewrite"].variations[0], AR, ar, "teacher")
    assert f"Rewritten title: {ar['rewrite']['title']}" in text and f"Keyword: {ar['keyword']}" in text
    assert "at most 30 characters and the description at most 90" in text
    assert "<Rationale>...</Rationale>, <Title>...</Title>, <Description>...</Description>" in text


def test_read_raw_names_file_line_and_field(tmp_path):
    f = tmp_path / "raw.jsonl"
    rows = generate("query_ad", SyntheticConfig(size=3))
    rows[1]["labels"]["relevance"] = "great"
    del rows[2]["query"]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadInput, match=r"raw\.jsonl:2: field 'labels.relevance'.*\n.*raw\.jsonl:3: field 'query': "
                                        r"missing"):
        P.read_raw(f, QA)
    g = tmp_path / "qg.jsonl"
    g.write_text(json.dumps({"id": 1, "keyword": "tents", "ad": {"title": "t", "description": "d"},
                             "query": "msr tents"}))
    assert P.read_raw(g, QG)[0]["queries"] == ["msr tents"]


def test_cook_config_defaults_and_validation():
    c = CookConfig()
    assert (c.n_candidates, c.self_consistency_min, c.near_duplicate, c.verifier_min, c.min_entity_overlap) == \
        (4, 0.8, 0.9, 0.5, 1)
    assert CookConfig.load(None, ["n_candidates=2", "verifier_min=6e-1", "answer=gold"]).verifier_min == 0.6
    with pytest.raises(ValueError, match="verifier_min: expected a value in"):
        CookConfig(verifier_min=1.5)
    with pytest.raises(ValueError, match="answer: expected one of"):
        CookConfig(answer="model")
    with pytest.raises(ValueError, match="unknown field"):
        CookConfig.load(None, ["n_candidate=2"])


def _ar_row(i, title, description="Light and warm. Ships today.", keyword="camping tents"):
    return {"id": f"ar{i}", "keyword": keyword, "ad": {"title": "MSR Hubba", "description": "A tent."},
            "rewrite": {"rationale": "r", "title": title, "description": description}}


def test_autoeval_filter_drops_failing_gold_rewrites_and_keeps_passing(tmp_path):
    """Ad rewriting rows pass MarketingFM's AutoEval before any generation: one row per rule it must drop, one
    it must keep; the counts add up in the report; autoeval=false and other tasks pass through."""
    from argparse import Namespace

    from megatron_ads.cli.cook import _autoeval_filter
    from megatron_ads.data.cook.report import human

    rows = [_ar_row(0, "Shop MSR camping tents"),                                         # keep
            _ar_row(1, "MSR camping tents on sale", "Great for hikers."),                 # mention_sale, no CTA
            _ar_row(2, "Shop ultralight backpacking camping tents", "Pitches in minutes."),  # headline > 30
            _ar_row(3, "MSR camping tents", "Stays dry in storms."),                      # cta_missing
            _ar_row(4, "Buy camping tents", "No scam, a trusted brand."),                 # blacklist
            _ar_row(5, "Shop MSR camping tents!", "Light and warm. Ships today!"),        # diversity: copies ar0
            _ar_row(6, "Shop MSR camping tents!", "Light and warm. Ships today!", keyword="tents")]  # other keyword
    args = Namespace(autoeval_judge=None)
    kept, dropped, counts = _autoeval_filter(AR, rows, CookConfig(), args)
    assert [r["id"] for r in kept] == ["ar0", "ar6"]
    assert dropped == {f"ar{i}": "autoeval" for i in (1, 2, 3, 4, 5)}
    assert counts["failed"] == {"mention_sale": 1, "headline_length": 1, "cta_missing": 2, "blacklist": 1,
                                "diversity": 1}
    assert (counts["checked"], counts["passed"], counts["judge"]) == (7, 2, None)
    # a rule left out of autoeval_rules no longer drops
    kept2, _, c2 = _autoeval_filter(AR, rows, CookConfig(autoeval_rules=["headline_length", "blacklist"]), args)
    assert [r["id"] for r in kept2] == ["ar0", "ar1", "ar3", "ar5", "ar6"] and set(c2["failed"]) == {
        "headline_length", "blacklist"}
    assert _autoeval_filter(AR, rows, CookConfig(autoeval=False), args) == (rows, {}, None)
    qa = _qa_rows(2)
    assert _autoeval_filter(QA, qa, CookConfig(), args) == (qa, {}, None)
    with pytest.raises(BadInput, match="autoeval_rules: expected distinct names"):
        _autoeval_filter(AR, rows, CookConfig(autoeval_rules=["cta"]), args)
    with pytest.raises(ValueError, match="autoeval_thresholds"):
        CookConfig(autoeval_thresholds={"relevance": 6})
    # the report: autoeval drops are input drops, and the counts add up
    # (the 5 dropped inputs alone: nothing was cooked)
    rep = task_report(task="ad_rewrite", prompt="ad_rewrite/v1", n_read=5, keyword_dropped=dropped, query_counts={},
                      records=[], splits={"train": [], "val": [], "test": []}, validation=None, settings={},
                      autoeval={**counts, "checked": 5, "passed": 0})
    assert rep["inputs"]["dropped"]["autoeval"] == 5 and rep["autoeval"]["failed"]["diversity"] == 1
    with pytest.raises(AssertionError, match="autoeval does not add up"):
        check_counts({**rep, "autoeval": {**rep["autoeval"], "passed": 1}})
    assert "autoeval: 0 of 5 gold rewrites accepted (rule failures: mention_sale 1, headline_length 1, " \
           "cta_missing 2, blacklist 1, diversity 1)" in human({"tasks": {"ad_rewrite": rep}})
    assert "autoeval" not in task_report(task="query_ad", prompt="p", n_read=0, keyword_dropped={}, query_counts={},
                                         records=[], splits={}, validation=None, settings={})["inputs"]["dropped"]


def test_human_report_with_a_refused_task():
    """A task refused on the golden set has no counts: the console report names it instead of failing."""
    from megatron_ads.data.cook.report import human

    text = human({"tasks": {"query_ad": {"prompt_validation": {"prompt": "query_ad", "passed": False}}}})
    assert text == "query_ad: refused (prompt query_ad); see its prompt_validation"
