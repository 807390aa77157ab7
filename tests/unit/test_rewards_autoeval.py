"""MarketingFM AutoEval (papers_spec.md §B.4, §C 30–31): rule checks, acceptance, agreement with human labels,
the threshold sweep, and the ``autoeval_rules`` reward."""

from __future__ import annotations

import itertools
import random

import pytest
import rewards_support as rs

from megatron_ads.rewards import REWARDS, RewardCombination, autoeval, registry
from megatron_ads.rewards.autoeval import RuleChecker, RuleConfig


def _ad(headline: str, description: str = "", keyword: str = "running shoes") -> dict:
    return {"keyword": keyword, "headline": headline, "description": description}


def _fails(headline: str, description: str = "", **cfg) -> list[str]:
    return RuleChecker(RuleConfig(**cfg)).check([_ad(headline, description)])[0]


# ------------------------------------------------------------------------------------ §C 31: rules
def test_headline_length_limit_is_30_chars():
    h30 = "Shop " + "x" * 25
    assert len(h30) == 30 and _fails(h30) == []
    assert _fails(h30 + "y") == ["headline_length"]
    assert _fails("  Shop trail shoes now   ") == []  # surrounding spaces do not count


@pytest.mark.parametrize("text", ["Big Sale on shoes", "SALES event", "discount inside", "Discounts here",
                                  "Clearance!", "sale-priced"])
def test_mention_sale_fails_case_insensitive(text):
    assert _fails("Shop shoes", text) == ["mention_sale"]
    assert _fails(f"Shop {text}"[:30], "")[:1] == ["mention_sale"]


@pytest.mark.parametrize("text", ["Wholesale prices", "Ask our salesman", "Discounted? no", "Salesforce tools"])
def test_mention_sale_needs_a_word_boundary(text):
    assert _fails("Shop shoes", text) == []


def test_cta_missing_and_blacklist():
    assert _fails("Running shoes for trails") == ["cta_missing"]
    assert _fails("Shop Running Shoes") == [] and _fails("BUY NOW: trail shoes") == []
    assert _fails("", "Explore our trail range") == []  # no headline: the description is checked
    assert _fails("Shopping for shoes?") == ["cta_missing"]  # "shopping" is no CTA verb: word boundary
    assert _fails("Shop shoes", "A miracle for your feet") == ["blacklist"]
    assert _fails("Shop shoes", "A miracle for your feet", rules=["mention_sale"]) == []  # rule switched off
    all_bad = _fails("Trail shoes clearance for everyone today", "Cure guaranteed")
    assert all_bad == ["mention_sale", "headline_length", "cta_missing", "blacklist"]  # RULES order


def test_diversity_compares_ads_of_the_same_keyword():
    ads = [_ad("Shop Trail Running Shoes", "Grip for rocky paths"),
           _ad("Shop Trail Running Shoes!", "Grip for rocky paths"),
           _ad("Buy Kids Running Shoes", "Light and colorful"),
           _ad("Shop Trail Running Shoes", "Grip for rocky paths", keyword="trail shoes")]
    first = RuleChecker(RuleConfig(rules=["diversity"])).check(ads)
    assert first == [[], ["diversity"], [], []]  # the first copy passes; another keyword is not compared
    both = RuleChecker(RuleConfig(rules=["diversity"], diversity_keep_first=False)).check(ads)
    assert both == [["diversity"], ["diversity"], [], []]
    c = RuleChecker()
    a, b = c.gram_set(ads[0]), c.gram_set(ads[2])  # keyword words left out
    assert a == {("shop",), ("trail",), ("grip",), ("for",), ("rocky",), ("paths",)}
    assert autoeval.jaccard(a, b) == 0.0 and autoeval.jaccard(set(), set()) == 1.0
    assert autoeval.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5


def test_regeneration_below_relevance_4_or_without_cta():
    assert autoeval.needs_regeneration([], 3.9) and autoeval.needs_regeneration([], None)
    assert not autoeval.needs_regeneration([], 4.0) and not autoeval.needs_regeneration(["blacklist"], 5)
    assert autoeval.needs_regeneration(["cta_missing"], 5) and autoeval.needs_regeneration(["headline_length"], 5)


@pytest.mark.parametrize("cfg, field", [
    ({"rules": ["mention_sale", "typo"]}, "rules"), ({"rules": ["blacklist", "blacklist"]}, "rules"),
    ({"headline_max_chars": 0}, "headline_max_chars"), ({"sale_terms": []}, "sale_terms"),
    ({"cta_verbs": "buy"}, "cta_verbs"), ({"blacklist": [""]}, "blacklist"),
    ({"diversity_threshold": 0.0}, "diversity_threshold"), ({"diversity_ngram": 0}, "diversity_ngram"),
])
def test_rule_config_errors_name_the_field(cfg, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        RuleConfig(**cfg)


# ------------------------------------------------------------------------------------ acceptance, §C 30
def test_accept_needs_rules_and_every_score_at_threshold():
    th = {"relevance": 2, "generalization": 3}
    assert autoeval.DEFAULT_THRESHOLDS == {"relevance": 2.0, "generalization": 3.0}
    assert autoeval.accept([], {"relevance": 2, "generalization": 3}, th)
    assert not autoeval.accept([], {"relevance": 1.9, "generalization": 5}, th)
    assert not autoeval.accept([], {"relevance": 5}, th)  # a missing score rejects
    assert not autoeval.accept(["cta_missing"], {"relevance": 5, "generalization": 5}, th)


def test_agreement_fractions_of_all_samples_table8():
    # Table 8, Context(2)+General(3): FPR 1.53, FNR 8.90 of all samples -> agreement 89.57
    n, fp, fn = 10_000, 153, 890
    llm = [True] * fp + [False] * fn + [True] * 6000 + [False] * (n - fp - fn - 6000)
    human = [False] * fp + [True] * fn + [True] * 6000 + [False] * (n - fp - fn - 6000)
    a = autoeval.agreement(llm, human)
    assert (a.fpr, a.fnr, a.agreement) == pytest.approx((0.0153, 0.0890, 0.8957))
    assert a.disagreement == pytest.approx(0.1043) and a.disagreement == pytest.approx(1 - a.agreement)
    assert a.accept_rate == pytest.approx((fp + 6000) / n)
    with pytest.raises(ValueError, match="human_accept"):
        autoeval.agreement([True], [True, False])


def _judged(n=400, seed=0):
    rng = random.Random(seed)
    fails = [[] if rng.random() < 0.8 else ["cta_missing"] for _ in range(n)]
    scores = [{"relevance": rng.randint(0, 5), "generalization": rng.randint(0, 5)} for _ in range(n)]
    human = [not f and s["relevance"] + rng.choice([-1, 0, 1]) >= 3 for f, s in zip(fails, scores)]
    return fails, scores, human


def test_acceptance_monotone_in_thresholds():
    fails, scores, human = _judged()
    grid = {"relevance": [0, 1, 2, 3, 4, 5], "generalization": [0, 2, 3, 5]}
    rows = autoeval.threshold_sweep(fails, scores, human, grid)
    assert len(rows) == 24 and [(r["relevance"], r["generalization"]) for r in rows[:5]] == \
        [(0, 0), (0, 2), (0, 3), (0, 5), (1, 0)]
    for r in rows:
        assert r["fpr"] + r["fnr"] == pytest.approx(r["disagreement"]) == pytest.approx(1 - r["agreement"])
    sets = {(r["relevance"], r["generalization"]):
            {i for i, (f, s) in enumerate(zip(fails, scores))
             if autoeval.accept(f, s, {"relevance": r["relevance"], "generalization": r["generalization"]})}
            for r in rows}
    by = {(r["relevance"], r["generalization"]): r for r in rows}
    for lo, hi in itertools.product(by, by):
        if hi[0] >= lo[0] and hi[1] >= lo[1]:  # raising any threshold ...
            assert sets[hi] <= sets[lo]  # ... never adds an accepted ad,
            assert by[hi]["fpr"] <= by[lo]["fpr"] and by[hi]["fnr"] >= by[lo]["fnr"]  # FPR down, FNR up
    assert by[(0, 0)]["accept_rate"] == pytest.approx(sum(not f for f in fails) / len(fails))


def test_threshold_sweep_hand_example():
    fails = [[], [], ["blacklist"], []]
    scores = [{"relevance": 5}, {"relevance": 2}, {"relevance": 5}, {"relevance": 3}]
    human = [True, False, False, True]
    rows = autoeval.threshold_sweep(fails, scores, human, {"relevance": [2, 4]})
    assert rows == [
        {"relevance": 2.0, "accept_rate": 0.75, "agreement": 0.75, "fpr": 0.25, "fnr": 0.0, "disagreement": 0.25},
        {"relevance": 4.0, "accept_rate": 0.25, "agreement": 0.75, "fpr": 0.0, "fnr": 0.25, "disagreement": 0.25}]
    with pytest.raises(ValueError, match="grid"):
        autoeval.threshold_sweep(fails, scores, human, {"relevance": []})


def test_evaluate_rows_output_format():
    rows = [{"id": "a", "keyword": "tents", "headline": "Shop 4-person tents", "description": "Easy setup",
             "scores": {"relevance": 4, "generalization": 3}},
            {"id": "b", "keyword": "tents", "headline": "Tents on sale", "description": "",
             "scores": {"relevance": 5, "generalization": 5}},
            {"id": "c", "keyword": "tents", "headline": "Find camping tents", "description": "Stay dry"}]
    out = autoeval.evaluate_rows(rows)
    assert out == [{"id": "a", "rule_failures": [], "scores": {"relevance": 4, "generalization": 3}, "accept": True},
                   {"id": "b", "rule_failures": ["mention_sale", "cta_missing"],
                    "scores": {"relevance": 5, "generalization": 5}, "accept": False},
                   {"id": "c", "rule_failures": [], "scores": {}, "accept": False}]
    assert {f for r in out for f in r["rule_failures"]} <= set(autoeval.RULES)
    with pytest.raises(ValueError, match=r"rows\[0\]\.headline"):
        autoeval.evaluate_rows([{"id": 1, "keyword": "k"}])


# ------------------------------------------------------------------------------------ the reward
def _res() -> registry.RewardResources:
    return registry.RewardResources(parse=rs.parse)


def _rewrite(title: str, description: str = "Stay dry on every trip") -> str:
    return f"<think>keep it short</think>\n<Title>{title}</Title>\n<Description>{description}</Description>"


def test_autoeval_rules_reward_binary_and_penalty():
    assert "autoeval_rules" in REWARDS and REWARDS["autoeval_rules"].doc
    comps = [_rewrite("Shop camping tents"), _rewrite("Camping tents on sale today only", "Light poles"),
             "no tags at all", _rewrite("Shop camping tents")]
    meta = [{"group": 0}, {"group": 0}, {"group": 0}, {"group": 1}]
    fn = registry.build("autoeval_rules", _res())
    out = registry.call(fn, [""] * 4, comps, "ad_rewrite", meta)
    assert out.values == [1.0, 0.0, -1.0, 1.0]  # rollout 3 is another prompt: not compared with rollout 0
    fn = registry.build("autoeval_rules", _res(), {"mode": "penalty", "failure_penalty": 0.5})
    out = registry.call(fn, [""] * 4, comps, "ad_rewrite", meta)
    assert out.values == [0.0, -1.5, -1.0, 0.0]  # mention_sale, headline_length, cta_missing
    same = [{"group": 0, "keyword": "tents"}, {"group": 1, "keyword": "tents"}]
    out = registry.call(registry.build("autoeval_rules", _res()), ["", ""], comps[:1] * 2, "ad_rewrite", same)
    assert out.values == [0.0, 0.0]  # the same keyword: near duplicates, both fail (no order bias)


def test_autoeval_rules_params_and_combination():
    with pytest.raises(ValueError, match=r"reward_params\.autoeval_rules\.mode"):
        registry.make_params("autoeval_rules", {"mode": "soft"})
    with pytest.raises(ValueError, match=r"reward_params\.autoeval_rules\.headline_max_chars"):
        registry.make_params("autoeval_rules", {"headline_max_chars": -1})
    with pytest.raises(ValueError, match=r"reward_params\.autoeval_rules\.format_penalty"):
        registry.make_params("autoeval_rules", {"format_penalty": 1.0})
    p = registry.make_params("autoeval_rules", {})
    assert p.diversity_keep_first is False and p.rules == list(autoeval.RULES)
    with pytest.raises(ValueError, match="parse"):
        registry.build("autoeval_rules", registry.RewardResources())
    RewardCombination(tasks={"ad_rewrite": {"autoeval_rules": 1.0}}, params={"autoeval_rules": {"mode": "penalty"}})



class _ScriptedJudge:
    """A judge whose relevance is 4 for headlines naming tents, 1 otherwise; generalization always 3.5; records
    what it was asked."""

    def __init__(self):
        self.seen = []

    def judge(self, ads):
        self.seen.append([a["headline"] for a in ads])
        return [{"scores": {"relevance": 4.0 if "tents" in a["headline"].lower() else 1.0,
                            "generalization": 3.5}} for a in ads]


def test_autoeval_accept_reward_rules_then_judge_thresholds():
    """Accept = the rules pass and every judge score reaches its threshold (Table 3); the judge only sees the
    rule-passing completions; its scores are the details."""
    assert "autoeval_accept" in REWARDS and REWARDS["autoeval_accept"].doc
    judge = _ScriptedJudge()
    res = _res()
    res.judge_model = judge
    comps = [_rewrite("Shop camping tents"), _rewrite("Shop warm lanterns"), _rewrite("Tents on sale"),
             "no tags at all"]
    meta = [{"keyword": "tents"}, {"keyword": "lanterns"}, {"keyword": "sale"}, {"keyword": "x"}]
    fn = registry.build("autoeval_accept", res)
    assert registry.call(fn, [""] * 4, comps, "ad_rewrite", meta).values == [1.0, 0.0, 0.0, -1.0]
    assert judge.seen == [["Shop camping tents", "Shop warm lanterns"]]  # the sale ad failed a rule first
    assert fn.details == {"judge_relevance": [4.0, 1.0, None, None], "judge_generalization": [3.5, 3.5, None, None]}
    strict = registry.build("autoeval_accept", res, {"thresholds": {"relevance": 2.0, "generalization": 4.0}})
    assert registry.call(strict, [""] * 4, comps, "ad_rewrite", meta).values == [0.0, 0.0, 0.0, -1.0]
    pen = registry.build("autoeval_accept", res, {"mode": "penalty", "failure_penalty": 0.5,
                                                  "thresholds": {"relevance": 2.0, "generalization": 4.0}})
    # lanterns: relevance and generalization below: two failures; sale: mention_sale and cta_missing
    assert registry.call(pen, [""] * 4, comps, "ad_rewrite", meta).values == [-0.5, -1.0, -1.0, -1.0]
    with pytest.raises(ValueError, match="judge_model"):
        registry.call(registry.build("autoeval_accept", _res()), [""], comps[:1], "ad_rewrite", meta[:1])
    with pytest.raises(ValueError, match=r"reward_params\.autoeval_accept\.thresholds"):
        registry.make_params("autoeval_accept", {"thresholds": {"tone": 2}})
