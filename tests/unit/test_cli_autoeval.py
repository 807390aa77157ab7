"""``megatron-ads autoeval`` (MarketingFM AutoEval, papers_spec.md §B.4, §C 30–31): rules-only mode and its exact
output format, agreement / FPR / FNR against human labels (Table 8), the threshold sweep's monotonicity (§C 30),
active sampling (random / uncertainty / diversity), threshold refinement (Table 9), malformed inputs, the
``ad_judge`` task and its synthetic rows, and the judge on a real tiny checkpoint equal to a direct scorer call."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from megatron_ads.cli import autoeval as cli_autoeval
from megatron_ads.cli import main
from megatron_ads.data.judge import confidence, expected_score, judge
from megatron_ads.data.synthetic import SyntheticConfig, generate
from megatron_ads.data.tasks import AD_JUDGE, JUDGE_SCORES, THINK_EMPTY, parse_output, task, validate_row
from megatron_ads.eval.metrics import metric, parsed_rows
from megatron_ads.rewards.autoeval import refine, refine_thresholds, select_for_review


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ad(i, headline, description="", keyword="running shoes", **extra):
    return {"id": i, "keyword": keyword, "headline": headline, "description": description, **extra}


def _run(tmp_path, capsys, ads, *extra, out="out.jsonl"):
    inp = _write(tmp_path / "ads.jsonl", ads)
    code = main(["autoeval", "--input", str(inp), "--output", str(tmp_path / out), *extra])
    cap = capsys.readouterr()
    return code, cap


class FakeScorer:
    """A ``Scorer`` whose score distribution per (headline, criterion) is given: log p(s) for ``<Score>s</Score>``."""

    def __init__(self, dists: dict[str, dict[str, list[float]]]):
        self.dists = dists
        self.calls = 0

    def score(self, prompts, targets):
        self.calls += 1
        out = []
        for p, t in zip(prompts, targets):
            crit = re.search(r"on (\w+) from 0", p).group(1)
            head = re.search(r"headline: (.*)\n", p).group(1)
            s = int(re.fullmatch(r"<Score>(\d)</Score>", t).group(1))
            out.append(math.log(self.dists[head][crit][s]))
        return out


def _dist(mean: float, sharp: float = 2.0) -> list[float]:
    w = [math.exp(-sharp * (s - mean) ** 2) for s in range(6)]
    return [x / sum(w) for x in w]


@pytest.fixture
def fake_judge(monkeypatch):
    """Install a FakeScorer as the judge of ``--model`` (any path): returns a setter for its distributions."""
    state = {}

    def install(dists):
        state["scorer"] = FakeScorer(dists)
        monkeypatch.setattr(cli_autoeval, "load_judge", lambda args: state["scorer"])
        return state["scorer"]

    return install


# ------------------------------------------------------------------------------------ rules-only mode
RULE_ADS = [
    _ad("a", "Shop Nike running shoes", "Light and fast."),                        # passes
    _ad("b", "Shop running shoes", "Big Sale this week."),                         # mention_sale
    _ad("c", "Shop the lightest trail running shoes ever", "Fast."),              # headline_length
    _ad("d", "Running shoes for trails", "Light and fast."),                      # cta_missing
    _ad("e", "Shop running shoes", "A miracle for your feet."),                    # blacklist
    _ad("f", "Shop Nike running shoes", "Light and fast!"),                       # diversity (near copy of a)
    _ad(7, "Discount tents for family camping trips", "Cheap", keyword="tents"),  # three failures
    _ad("h", "Shop Nike running shoes", "Light and fast.", keyword="tents"),      # another keyword: no dup
]


def test_rules_only_output_format_and_each_rule(tmp_path, capsys):
    code, cap = _run(tmp_path, capsys, RULE_ADS, "--json")
    assert code == 0
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert lines[0] == '{"id": "a", "rule_failures": [], "scores": null, "confidence": null, "accept": true}'
    assert _read(tmp_path / "out.jsonl") == [
        {"id": i, "rule_failures": f, "scores": None, "confidence": None, "accept": not f}
        for i, f in [("a", []), ("b", ["mention_sale"]), ("c", ["headline_length"]), ("d", ["cta_missing"]),
                     ("e", ["blacklist"]), ("f", ["diversity"]),
                     (7, ["mention_sale", "headline_length", "cta_missing"]), ("h", [])]]
    s = json.loads(cap.out)
    assert s["mode"] == "rules" and s["model"] is None and s["thresholds"] is None
    assert (s["rows"], s["accepted"], s["rules_passed"]) == (8, 2, 2) and s["accept_rate"] == 0.25
    assert s["rule_failures"] == {"mention_sale": 2, "headline_length": 2, "cta_missing": 2, "blacklist": 1,
                                  "diversity": 1}
    assert not list(tmp_path.glob("*.tmp"))
    # the human rendering: the one summary line per fact
    code, cap = _run(tmp_path, capsys, RULE_ADS)
    assert code == 0 and "accepted 2 / 8 (25.00%)" in cap.out and "rules only" in cap.out


def test_human_agreement_fpr_fnr_hand_computed(tmp_path, capsys):
    # rules-only decisions: a T, b F, c F, d F, e F, f F, 7 F, h T
    human = [{"id": "a", "accept": True},     # agree
             {"id": "b", "accept": True},     # LLM reject, human accept: FN
             {"id": "c", "accept": False},    # agree
             {"id": "h", "accept": False},    # LLM accept, human reject: FP
             {"id": 7, "accept": False}]      # agree (the integer id)
    h = _write(tmp_path / "human.jsonl", human)
    code, cap = _run(tmp_path, capsys, RULE_ADS, "--human", str(h), "--json")
    assert code == 0
    r = json.loads(cap.out)["human"]
    assert r == {"file": str(h), "n": 5, "accept_rate": 0.4, "agreement": 0.6, "fpr": 0.2, "fnr": 0.2,
                 "disagreement": 0.4, "fp": 1, "fn": 1}
    code, cap = _run(tmp_path, capsys, RULE_ADS, "--human", str(h))
    assert "| 5 | 60.00 | 20.00 | 20.00 | 40.00 |" in cap.out


# ------------------------------------------------------------------------------------ judge (fake scorer)
def _judge_set(n=24, seed=0):
    """n passing ads with varied score distributions, and random human labels."""
    rng = random.Random(seed)
    ads, dists, human = [], {}, []
    for i in range(n):
        head = f"Shop brand{i} gear"
        ads.append(_ad(f"x{i}", head, f"Item {i} for you.", keyword=f"kw{i}"))  # one per keyword: no diversity
        dists[head] = {"relevance": _dist(rng.uniform(0, 5), rng.uniform(0.2, 3)),
                       "generalization": _dist(rng.uniform(0, 5), rng.uniform(0.2, 3))}
        human.append({"id": f"x{i}", "accept": rng.random() < 0.5})
    return ads, dists, human


def test_judge_scores_confidence_and_thresholds(tmp_path, capsys, fake_judge):
    ads, dists, _ = _judge_set(6)
    scorer = fake_judge(dists)
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--thresholds", "relevance=2.5", "--json",
                     "--batch-size", "4")
    assert code == 0 and scorer.calls == 2  # one scoring call per batch of ads: every prompt x 6 candidates
    s = json.loads(cap.out)
    assert s["mode"] == "judge" and s["thresholds"] == {"relevance": 2.5, "generalization": 3.0}
    for ad, row in zip(ads, _read(tmp_path / "out.jsonl")):
        assert list(row) == ["id", "rule_failures", "scores", "confidence", "accept"]
        d = dists[ad["headline"]]
        want = {c: sum(k * p for k, p in enumerate(d[c])) for c in ("relevance", "generalization")}
        assert row["scores"] == pytest.approx(want, abs=1e-12)
        assert row["confidence"] == pytest.approx(min(max(d[c]) for c in d), abs=1e-12)
        assert row["accept"] == (want["relevance"] >= 2.5 and want["generalization"] >= 3.0)
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--confidence", "entropy", "--json")
    for ad, row in zip(ads, _read(tmp_path / "out.jsonl")):
        d = dists[ad["headline"]]
        ent = [1 + sum(p * math.log(p) for p in d[c]) / math.log(6) for c in d]
        assert row["confidence"] == pytest.approx(min(ent), abs=1e-12)


def test_confidence_and_expected_score_definitions():
    point = {s: float(s == "4") for s in JUDGE_SCORES}
    uniform = {s: 1 / 6 for s in JUDGE_SCORES}
    assert expected_score(point) == 4 and expected_score(uniform) == pytest.approx(2.5)
    assert confidence(point) == confidence(point, "entropy") == 1.0
    assert confidence(uniform) == pytest.approx(1 / 6) and confidence(uniform, "entropy") == pytest.approx(0.0)
    with pytest.raises(ValueError, match="confidence"):
        confidence(point, "margin")


def test_sweep_is_monotone_in_the_thresholds(tmp_path, capsys, fake_judge):
    """§C 30: raising a threshold never grows the accept set: FPR non-increasing, FNR non-decreasing, and
    FPR + FNR = 1 − agreement."""
    ads, dists, human = _judge_set(40, seed=3)
    ads[5]["headline"] = "Shop sale gear"  # a rule failure: rejected at every threshold
    dists["Shop sale gear"] = dists.pop("Shop brand5 gear")
    fake_judge(dists)
    h = _write(tmp_path / "human.jsonl", human)
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--human", str(h), "--sweep", "--json")
    assert code == 0
    sweep = json.loads(cap.out)["sweep"]
    assert [(r["relevance"], r["generalization"]) for r in sweep] == [(a, b) for a in range(6) for b in range(6)]
    grid = {(r["relevance"], r["generalization"]): r for r in sweep}
    for a in range(6):
        for b in range(6):
            r = grid[(a, b)]
            assert r["fpr"] + r["fnr"] == pytest.approx(1 - r["agreement"])
            for nxt in ((a + 1, b), (a, b + 1)):
                if nxt in grid:
                    assert grid[nxt]["accept_rate"] <= r["accept_rate"]
                    assert grid[nxt]["fpr"] <= r["fpr"] and grid[nxt]["fnr"] >= r["fnr"]
    assert grid[(0, 0)]["accept_rate"] == 39 / 40  # only the rule failure is rejected at (0, 0)
    assert len({r["accept_rate"] for r in sweep}) > 3  # the grid actually moves the decisions
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--human", str(h), "--sweep")
    assert "threshold sweep" in cap.out and cap.out.count("\n| ") >= 36


# ------------------------------------------------------------------------------------ active sampling
def test_random_sampling_is_deterministic_in_the_seed(tmp_path, capsys):
    ads = [_ad(f"r{i}", f"Shop item {i} now", keyword=f"k{i}") for i in range(30)]
    picks = []
    for seed in (1, 1, 2):
        code, cap = _run(tmp_path, capsys, ads, "--sample", "5", "--seed", str(seed), "--json")
        assert code == 0
        picks.append(json.loads(cap.out)["review"]["ids"])
    assert picks[0] == picks[1] != picks[2] and len(set(picks[0])) == 5
    review = _read(tmp_path / "out.review.jsonl")  # the default --review-out
    assert [r["id"] for r in review] == picks[2]
    assert set(review[0]) == {"id", "keyword", "headline", "description", "rule_failures", "scores", "confidence",
                              "llm_accept"}
    code, cap = _run(tmp_path, capsys, ads[:3], "--sample", "10", "--json")  # more than there are: all of them
    assert sorted(json.loads(cap.out)["review"]["ids"]) == ["r0", "r1", "r2"]


def test_uncertainty_sampling_takes_the_least_confident(tmp_path, capsys, fake_judge):
    ads, dists, _ = _judge_set(12, seed=5)
    fake_judge(dists)
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--sample", "4", "--strategy", "uncertainty", "--json")
    assert code == 0
    ids = json.loads(cap.out)["review"]["ids"]
    conf = {r["id"]: r["confidence"] for r in _read(tmp_path / "out.jsonl")}
    assert ids == sorted(conf, key=conf.get)[:4]
    # by margin: the expected score nearest its threshold first
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--sample", "4", "--strategy", "uncertainty",
                     "--uncertainty", "margin", "--json")
    rows = {r["id"]: r for r in _read(tmp_path / "out.jsonl")}
    margin = {i: min(abs(r["scores"]["relevance"] - 2), abs(r["scores"]["generalization"] - 3))
              for i, r in rows.items()}
    assert json.loads(cap.out)["review"]["ids"] == sorted(margin, key=margin.get)[:4]
    # rules-only mode has no confidences
    code, cap = _run(tmp_path, capsys, ads, "--sample", "4", "--strategy", "uncertainty")
    assert code == 2 and "--model" in cap.err


def test_diversity_sampling_round_robins_over_keywords_and_categories(tmp_path, capsys):
    kws = ["tents"] * 6 + ["sofas"] + ["tea"] * 2 + ["boots"] * 3
    ads = [_ad(f"d{i}", f"Shop {k} number {i}", keyword=k) for i, k in enumerate(kws)]
    by_id = {a["id"]: a["keyword"] for a in ads}
    for n, most in ((4, 1), (7, 2)):
        code, cap = _run(tmp_path, capsys, ads, "--sample", str(n), "--strategy", "diversity", "--seed", "3",
                         "--json")
        ids = json.loads(cap.out)["review"]["ids"]
        counts = {k: sum(by_id[i] == k for i in ids) for k in set(kws)}
        assert len(ids) == n and max(counts.values()) == most and min(counts.values()) >= 1
        assert [by_id[i] for i in ids[:4]].count("tents") == 1  # every keyword once before any twice
    # a category groups across keywords
    view = [{"keyword": f"k{i}", "category": "shoes" if i < 5 else "tents"} for i in range(8)]
    first_two = select_for_review(view, 2, "diversity", seed=0)
    assert {view[i]["category"] for i in first_two} == {"shoes", "tents"}
    assert select_for_review(view, 5, "diversity", seed=4) == select_for_review(view, 5, "diversity", seed=4)


# ------------------------------------------------------------------------------------ refinement
def test_refine_picks_the_best_thresholds_on_a_hand_example():
    scores = [{"relevance": 5, "generalization": 5}, {"relevance": 4, "generalization": 2},
              {"relevance": 3, "generalization": 4}, {"relevance": 1, "generalization": 5},
              {"relevance": 4, "generalization": 4}]
    human = [True, True, False, False, True]
    fails = [[]] * 5
    # (2, 3) accepts a, c, e: c is a FP, b a FN. Every relevance 4, generalization <= 2 agrees fully; (4, 2) is
    # the smallest change from (2, 3)
    rep = refine(fails, scores, human, {"relevance": 2, "generalization": 3})
    assert rep["thresholds_after"] == {"relevance": 4.0, "generalization": 2.0}
    assert (rep["before"]["agreement"], rep["before"]["fp"], rep["before"]["fn"]) == (0.6, 1, 1)
    assert (rep["after"]["agreement"], rep["after"]["fpr"], rep["after"]["fnr"]) == (1.0, 0.0, 0.0)
    # equal agreement: the lower FPR wins even when it moves further
    one = [{"relevance": 3}, {"relevance": 2}]
    assert refine_thresholds([[], []], one, [False, True], {"relevance": 2},
                             {"relevance": range(6)}) == {"relevance": 4.0}


def test_refine_flag_rescores_and_reports_before_after(tmp_path, capsys, fake_judge):
    ads = [_ad(f"f{i}", f"Shop thing {i}", keyword=f"k{i}") for i in range(5)]
    means = [(5, 5), (4, 2), (3, 4), (1, 5), (4, 4)]
    # sharp distributions whose expected scores sit just above the integers (4.0025, 2.0025, ...)
    fake_judge({a["headline"]: {"relevance": _dist(r + 0.2, 10), "generalization": _dist(g + 0.2, 10)}
                for a, (r, g) in zip(ads, means)})
    rv = _write(tmp_path / "reviewed.jsonl", [{"id": f"f{i}", "accept": h}
                                              for i, h in enumerate([True, True, False, False, True])])
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--refine", str(rv), "--human", str(rv), "--json")
    assert code == 0
    s = json.loads(cap.out)
    assert s["refine"]["thresholds_before"] == {"relevance": 2.0, "generalization": 3.0}
    assert s["refine"]["thresholds_after"] == s["thresholds"] == {"relevance": 4.0, "generalization": 2.0}
    assert s["refine"]["before"]["agreement"] == pytest.approx(0.6) and s["refine"]["after"]["agreement"] == 1.0
    assert s["refine"]["validation"]["after"]["agreement"] == 1.0 == s["human"]["agreement"]
    assert [r["accept"] for r in _read(tmp_path / "out.jsonl")] == [True, True, False, False, True]
    code, cap = _run(tmp_path, capsys, ads, "--model", "fake", "--refine", str(rv))
    assert "Table 9" in cap.out and "| after: relevance >= 4, generalization >= 2 | reviewed | 5 | 0.00 | 0.00 | " \
                                     "100.00 |" in cap.out


# ------------------------------------------------------------------------------------ bad input
def test_malformed_input_lines_are_named(tmp_path, capsys):
    rows = [_ad("a", "Shop shoes"), "{oops", {"id": "b", "keyword": "", "headline": "x", "description": ""},
            {"id": "c", "keyword": "k", "description": ""}, _ad("a", "Shop again"), _ad("d", 5),
            {"id": True, "keyword": "k", "headline": "h", "description": "d"}]
    code, cap = _run(tmp_path, capsys, rows)
    assert code == 2 and not (tmp_path / "out.jsonl").exists()
    for text in ("ads.jsonl:2: invalid JSON", "ads.jsonl:3: field 'keyword': expected a non-empty string",
                 "ads.jsonl:4: field 'headline': missing", "ads.jsonl:5: field 'id': duplicate 'a' (first on line 1)",
                 "ads.jsonl:6: field 'headline': expected a string", "ads.jsonl:7: field 'id': expected a string"):
        assert text in cap.err


def test_bad_human_file_and_flags_exit_2(tmp_path, capsys):
    ads = RULE_ADS[:3]
    h = _write(tmp_path / "h.jsonl", [{"id": "a", "accept": "yes"}, {"id": "zz", "accept": True}, {"id": "b"}])
    code, cap = _run(tmp_path, capsys, ads, "--human", str(h))
    assert code == 2
    for text in ("h.jsonl:1: field 'accept': expected true or false", "h.jsonl:2: field 'id': 'zz' is not an id",
                 "h.jsonl:3: field 'accept': missing"):
        assert text in cap.err
    good = _write(tmp_path / "g.jsonl", [{"id": "a", "accept": True}])
    for argv, text in [(["--sweep"], "--sweep: needs --human"),
                       (["--sweep", "--human", str(good)], "--sweep: needs --model"),
                       (["--refine", str(good)], "--refine: needs --model"),
                       (["--thresholds", "relevance=7"], "--thresholds"),
                       (["--thresholds", "context=2"], "--thresholds"),
                       (["--strategy", "random"], "only with --sample"),
                       (["--sample", "0"], "--sample"),
                       (["--tp", "2", "--model", "m"], "one process")]:
        code, cap = _run(tmp_path, capsys, ads, *argv)
        assert code == 2 and text in cap.err, (argv, cap.err)
    code, cap = _run(tmp_path, capsys, ads, "--human", str(tmp_path / "ads.jsonl"), out="ads.jsonl")
    assert code == 2 and "the same file" in cap.err


# ------------------------------------------------------------------------------------ the ad_judge task
def test_ad_judge_task_synthetic_rows_and_metric():
    rows = generate("ad_judge", SyntheticConfig(size=60, seed=1))
    assert rows == generate("ad_judge", SyntheticConfig(size=60, seed=1))
    t = task("ad_judge")
    assert {r["criterion"] for r in rows} == {"relevance", "generalization"}
    for r in rows:
        assert validate_row(t, r, with_targets=True) == []
        assert r["score"] == r["truth"][r["criterion"]]
        assert r["truth"]["generalization"] == 5 - len(r["truth"]["specifics"])
        same = r["truth"]["category"] == r["truth"]["keyword_category"]
        assert (r["truth"]["relevance"] >= 2) == same
        assert parse_output(t, t.target(r)).fields == {"score": str(r["score"])}
    assert len({r["truth"]["relevance"] for r in rows}) >= 4 and len({r["truth"]["generalization"] for r in rows}) >= 5
    gold = parsed_rows([t.gold(r) for r in rows])
    assert metric("judge_score").evaluate(gold, parsed_rows([{"id": r["id"], "score": r["score"]} for r in rows])
                                          )["Acc"] == 1.0
    off = [{"id": r["id"], "score": min(5, r["score"] + 1)} for r in rows[:10]]  # the other 50 malformed (missing)
    m = metric("judge_score").evaluate(gold, parsed_rows(off))
    assert m["malformed"] == 50 and m["Acc"] == pytest.approx(sum(r["score"] == 5 for r in rows[:10]) / 60)
    assert validate_row(t, dict(rows[0], criterion="safety"), with_targets=False) == [
        "field 'criterion': expected one of ['relevance', 'generalization'], got 'safety'"]


# ------------------------------------------------------------------------------------ a real tiny checkpoint
@pytest.mark.usefixtures("single_rank_module")
def test_judge_on_a_tiny_checkpoint_equals_a_direct_scorer_call(tmp_path, capsys, tiny_ckpts, console_noise):
    import torch

    from megatron_ads.infer.engine import Engine
    from megatron_ads.infer.scorer import EngineScorer
    from megatron_ads.infer.weights import eos_ids, load_for_inference

    ckpt = tiny_ckpts("tiny_deepseek_v3")
    capsys.readouterr()  # the fixture's checkpoint writing (transformers' bars) is not ours
    ads = [_ad("t1", "Shop Nike running shoes", "Light trail runners."),
           _ad("t2", "Buy tents now", "Family tents for 4.", keyword="tents"),
           _ad("t3", "Get coffee beans", "Dark roast.", keyword="coffee beans")]
    code, cap = _run(tmp_path, capsys, ads, "--model", str(ckpt), "--batch-size", "2", "--json")
    assert code == 0, cap.err
    assert not console_noise(cap.out, cap.err)
    out = _read(tmp_path / "out.jsonl")
    model, cfg, tok = load_for_inference(ckpt, precision="fp32")
    scorer = EngineScorer(Engine(model, cfg, batch_size=4, tokenizer=tok), tok, eos_ids(cfg, tok))
    judged = judge(ads, scorer)
    cands = [f"<Score>{s}</Score>" for s in JUDGE_SCORES]
    for ad, row, j in zip(ads, out, judged):
        for crit in ("relevance", "generalization"):
            assert sum(j["probs"][crit].values()) == pytest.approx(1.0, abs=1e-9)
            prompt = AD_JUDGE.prompt({**ad, "criterion": crit}) + THINK_EMPTY
            p = torch.softmax(torch.tensor(scorer.score([prompt] * 6, cands), dtype=torch.float64), 0).tolist()
            want = sum(s * x for s, x in enumerate(p))
            assert 0.0 <= row["scores"][crit] <= 5.0
            # the same model in other batches (the CLI: 2 ads per batch): equal up to fp32 padding effects
            assert row["scores"][crit] == pytest.approx(want, abs=1e-5)
            assert j["scores"][crit] == pytest.approx(want, abs=1e-5)
        assert row["confidence"] == pytest.approx(j["confidence"], abs=1e-5) and 1 / 6 <= row["confidence"] <= 1
    # the prompt matters far beyond that tolerance: the six (ad, criterion) scores all differ
    got = [r["scores"][c] for r in out for c in ("relevance", "generalization")]
    assert min(abs(a - b) for i, a in enumerate(got) for b in got[i + 1:]) > 1e-4
