"""MarketingFM's rewrite chain (papers_spec.md §B.4 "Task chaining", §C 32) on scripted generators: call 1 asks for
2x the needed count, exactly 12 headlines + 3 descriptions come back, all within the limits and passing the rules;
over-long items are fixed by the single rewrite call; refills ask for 2x what is missing; a generator that never
delivers raises an error naming the keyword and the shortfall; drops are counted per rule."""

from __future__ import annotations

import re

import pytest

from megatron_ads.data.tasks import AD_LIMITS
from megatron_ads.rewards.autoeval import RuleChecker, RuleConfig
from megatron_ads.rewards.rewrite_chain import (DROP_RULES, RewriteChain, RewriteChainConfig, RewriteChainError,
                                                parse_items, run_rewrite_chain)

KW = "running shoes"
ASK = re.compile(r"Write exactly (\d+) (headlines|descriptions)")
REWRITE = re.compile(r"Rewrite each of the (\d+) (headlines|descriptions)")
ADJ = ["Light", "Fast", "Trail", "Road", "Soft", "Bold", "Wide", "Vegan", "Retro", "Kids", "Pro", "Daily", "Comfy",
       "Grippy", "Bright", "Sleek", "Airy", "Tough", "Eco", "Race", "Cushy", "Flex", "Urban", "Sport", "Smart",
       "Swift", "Prime", "Cozy", "Neon", "Stable"]
VERBS = ["Shop", "Buy", "Discover", "Explore", "Find", "Get"]
FEAT = ["breathable mesh", "carbon plates", "foam soles", "wide toe boxes", "recycled uppers", "reflective trims",
        "grippy outsoles", "arch support", "quick laces", "padded collars"]


def good_headline(i: int) -> str:
    return f"{VERBS[i % len(VERBS)]} {ADJ[i]} Running Shoes"


def good_description(i: int) -> str:
    return f"{ADJ[i]} running shoes with {FEAT[i % len(FEAT)]}, made for mile {i + 1} and beyond."


def asked(prompt: str) -> tuple[str, int, str]:
    """(kind, count, action) the prompt asks for; the count is stated in the prompt."""
    m = ASK.search(prompt)
    if m:
        return m.group(2), int(m.group(1)), "generate"
    m = REWRITE.search(prompt)
    assert m, prompt
    return m.group(2), int(m.group(1)), "rewrite"


def numbered(items) -> str:
    return "\n".join(f"{i}. {x}" for i, x in enumerate(items, 1))


class Scripted:
    """A generator answering each prompt with ``answer(kind, count, action, prompt, call)`` lines."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return [numbered(self.answer(*asked(p), p, len(self.calls))) for p in prompts]


def check_rules(result, cfg: RewriteChainConfig | None = None):
    cfg = cfg or RewriteChainConfig()
    checker = RuleChecker(RuleConfig(headline_max_chars=cfg.headline_max))
    for h in result.headlines:
        assert len(h) <= cfg.headline_max and not checker.ad_failures(h, ""), h
    for d in result.descriptions:
        assert len(d) <= cfg.description_max and not checker.ad_failures("", d) - {"cta_missing"}, d
    for items in (result.headlines, result.descriptions):
        assert len({x.lower() for x in items}) == len(items)


# ------------------------------------------------------------------------------------ §C 32
def test_first_call_asks_2x_and_returns_exactly_12_and_3_within_limits():
    gen = Scripted(lambda kind, n, action, p, call: [good_headline(i) if kind == "headlines" else good_description(i)
                                                     for i in range(n)])
    res = run_rewrite_chain(KW, gen)
    assert len(gen.calls) == 1 and res.n_calls == 1
    first = res.calls[0]
    assert first.asked == {"headlines": 24, "descriptions": 6}
    assert "Write exactly 24 headlines" in gen.calls[0][0] and "Write exactly 6 descriptions" in gen.calls[0][1]
    assert "at most 30 characters" in gen.calls[0][0] and "at most 90 characters" in gen.calls[0][1]
    assert len(res.headlines) == 12 and len(res.descriptions) == 3
    assert res.headlines == [good_headline(i) for i in range(12)]  # numbering stripped, answer order kept
    check_rules(res)
    assert first.kept == {"headlines": 12, "descriptions": 3} and first.surplus == {"headlines": 12, "descriptions": 3}
    assert res.dropped == dict.fromkeys(DROP_RULES, 0)


def test_defaults_are_the_papers_and_the_ad_rewrite_tasks_limits():
    cfg = RewriteChainConfig()
    assert (cfg.n_headlines, cfg.n_descriptions, cfg.oversample, cfg.relevance_min) == (12, 3, 2.0, 4.0)
    assert cfg.headline_max == AD_LIMITS["title"] == RuleConfig().headline_max_chars == 30
    assert cfg.description_max == AD_LIMITS["description"]
    assert [cfg.asked(n) for n in (12, 3, 1)] == [24, 6, 2]
    assert RewriteChainConfig(oversample=1.5).asked(3) == 5


def test_drops_counted_per_rule_and_the_result_still_exact():
    bad = ["Shop Our Sale on Running Shoes",    # mention_sale
           "Running Shoes Discounts Today",     # mention_sale + cta_missing
           "Running Shoes for Everyone",        # cta_missing
           "Shop Casino Running Shoes",         # blacklist
           good_headline(0).upper(),            # exact duplicate of the first
           good_headline(1) + "!"]              # near duplicate (same words)

    def answer(kind, n, action, p, call):
        if kind == "descriptions":
            return [good_description(0), good_description(0), "Running shoes on clearance."] + \
                [good_description(i) for i in range(1, n - 2)]
        return [good_headline(0), good_headline(1)] + bad + [good_headline(i) for i in range(2, n - len(bad))]

    res = run_rewrite_chain(KW, Scripted(answer))
    assert res.n_calls == 1 and len(res.headlines) == 12 and len(res.descriptions) == 3
    check_rules(res)
    assert res.dropped == {**dict.fromkeys(DROP_RULES, 0), "mention_sale": 3, "cta_missing": 2, "blacklist": 1,
                           "diversity": 3}
    assert res.calls[0].kept == {"headlines": 12, "descriptions": 3}


def test_over_long_headlines_fixed_by_the_single_rewrite_call():
    short = {f"Shop {ADJ[i]} Running Shoes Online Today For You": good_headline(i) for i in range(24)}
    assert all(len(x) > 30 for x in short)

    def answer(kind, n, action, p, call):
        if kind == "descriptions":
            return [good_description(i) for i in range(n)]
        if action == "generate":
            return list(short)[:n]
        sent = p.split("<rewrite>\n")[1].split("\n</rewrite>")[0].splitlines()
        return [short[x] for x in sent]

    gen = Scripted(answer)
    res = run_rewrite_chain(KW, gen)
    assert res.n_calls == 2 and len(gen.calls) == 2
    first, second = res.calls
    assert first.dropped["headline_length"] == 24 and first.to_rewrite == {"headlines": 24, "descriptions": 0}
    assert second.actions == {"headlines": "rewrite"} and second.asked == {"headlines": 24}
    assert len(gen.calls[1]) == 1 and "create shorter versions" in gen.calls[1][0]
    assert all(x in gen.calls[1][0] for x in short)
    assert len(res.headlines) == 12 and len(res.descriptions) == 3
    check_rules(res)


def test_rewrite_only_for_length_only_failures_and_never_resent():
    # long + no CTA is not rewritten; a rewrite that is still too long is dropped, then a refill generates
    def answer(kind, n, action, p, call):
        if kind == "descriptions":
            return [good_description(i) for i in range(n)]
        if call == 1:
            return ([good_headline(i) for i in range(10)] + ["Shop Extremely Lightweight Running Shoes Now"] * 1
                    + ["Extremely Lightweight Running Shoes Here"] + ["Huge Sale"] * (n - 12))
        if action == "rewrite":
            return ["Shop The Extremely Lightweight Running Shoes"]  # still too long
        return [good_headline(i) for i in range(10, 10 + n)]

    gen = Scripted(answer)
    res = run_rewrite_chain(KW, gen)
    assert [c.actions for c in res.calls] == [{"headlines": "generate", "descriptions": "generate"},
                                               {"headlines": "rewrite"}, {"headlines": "generate"}]
    assert res.calls[1].asked == {"headlines": 1}  # only the length-only failure
    assert res.calls[1].dropped["headline_length"] == 1 and res.calls[1].to_rewrite["headlines"] == 0
    assert res.calls[2].asked == {"headlines": 4}  # refill: 2x the 2 missing
    assert len(res.headlines) == 12
    check_rules(res)


def test_description_length_rewritten_and_counted():
    long_desc = {good_description(i) + " Free returns on every single pair, always.": good_description(i)
                 for i in range(6)}
    assert all(len(x) > 90 for x in long_desc)

    def answer(kind, n, action, p, call):
        if kind == "headlines":
            return [good_headline(i) for i in range(n)]
        if action == "generate":
            return list(long_desc)[:n]
        return [long_desc[x] for x in p.split("<rewrite>\n")[1].split("\n</rewrite>")[0].splitlines()]

    res = run_rewrite_chain(KW, Scripted(answer))
    assert res.n_calls == 2 and res.calls[1].actions == {"descriptions": "rewrite"}
    assert res.dropped["description_length"] == 6 and len(res.descriptions) == 3
    check_rules(res)


def test_never_enough_raises_naming_the_keyword_and_the_shortfall():
    def answer(kind, n, action, p, call):
        if kind == "descriptions":
            return [good_description(i) for i in range(n)]
        return ([good_headline(0), good_headline(1)] if call == 1 else []) + \
            [f"Running Shoes Here {call}-{i}" for i in range(n)]  # no CTA verb

    gen = Scripted(answer)
    cfg = RewriteChainConfig(max_rounds=3)
    with pytest.raises(RewriteChainError, match=r"keyword 'running shoes' is short of 10 headlines after 3 call") as e:
        run_rewrite_chain(KW, gen, cfg)
    err = e.value
    assert err.keyword == KW and err.missing == {"headlines": 10, "descriptions": 0}
    assert err.have == {"headlines": 2, "descriptions": 3} and len(gen.calls) == 3
    assert [c.asked for c in err.calls] == [{"headlines": 24, "descriptions": 6}, {"headlines": 20},
                                            {"headlines": 20}]
    assert err.dropped["cta_missing"] == 22 + 20 + 20 and "cta_missing 62" in str(err)


def test_judge_relevance_below_min_is_dropped_after_the_rules():
    seen = []

    def judge(keyword, headline):
        seen.append(headline)
        return 3.0 if ADJ[3] in headline or ADJ[4] in headline else 4.5

    def answer(kind, n, action, p, call):
        if kind == "descriptions":
            return [good_description(i) for i in range(n)]
        return ["Big Sale Running Shoes"] + [good_headline(i) for i in range(n - 1)]

    res = run_rewrite_chain(KW, Scripted(answer), judge=judge)
    assert res.dropped["relevance"] == 2 and res.dropped["mention_sale"] == 1
    assert "Big Sale Running Shoes" not in seen  # the judge sees only rule-passing items
    assert len(seen) == 14  # and stops once 12 are kept
    assert not any(ADJ[3] in h or ADJ[4] in h for h in res.headlines) and len(res.headlines) == 12
    with pytest.raises(ValueError, match="judge: expected a score"):
        run_rewrite_chain(KW, Scripted(answer), judge=lambda k, h: None)


def test_no_cta_required_context_in_prompts_and_step_machine():
    cfg = RewriteChainConfig(require_cta=False, n_headlines=2, n_descriptions=0)
    chain = RewriteChain(KW, cfg, context="Pegasus 41, size 10")
    prompts = chain.prompts()
    assert prompts == chain.prompts() and len(prompts) == 1  # no description prompt when none are needed
    assert prompts[0].startswith("Context: Pegasus 41, size 10\n") and "call-to-action" not in prompts[0]
    with pytest.raises(ValueError, match="expected 1 text"):
        chain.feed(["a", "b"])
    chain.feed(["Running Shoes For Trails\n- Running Shoes In Red\nextra one\nmore\nand more"])
    assert chain.complete and chain.prompts() is None
    res = chain.result()
    assert res.headlines == ["Running Shoes For Trails", "Running Shoes In Red"] and res.descriptions == []
    assert res.calls[0].extra == {"headlines": 1} and res.calls[0].surplus == {"headlines": 2}


def test_parse_items_strips_numbering_bullets_and_quotes():
    text = '1. Shop Now\n2) Buy X\n - "Quoted"\n\n(3) Three\n• Bullet\n[4] Four\n1.5 Liter Bottles\n10-Day Returns'
    assert parse_items(text) == ["Shop Now", "Buy X", "Quoted", "Three", "Bullet", "Four", "1.5 Liter Bottles",
                                 "10-Day Returns"]


def test_config_validation_and_overrides():
    cfg = RewriteChainConfig.load(["max_rounds=6", "require_cta=false", "oversample=3", "headline_max=40"])
    assert (cfg.max_rounds, cfg.require_cta, cfg.oversample, cfg.headline_max) == (6, False, 3, 40)
    assert "cta_missing" not in cfg.rule_config().rules
    with pytest.raises(ValueError, match="unknown field.*'n_headline'"):
        RewriteChainConfig.load(["n_headline=3"])
    for bad, field in ((dict(oversample=0.5), "oversample"), (dict(max_rounds=0), "max_rounds"),
                       (dict(n_headlines=0, n_descriptions=0), "n_headlines"),
                       (dict(headline_max=True), "headline_max"), (dict(relevance_min=6), "relevance_min"), (dict(diversity_threshold=0), "diversity_threshold"),
                       (dict(require_cta="yes"), "require_cta")):
        with pytest.raises(ValueError, match=field):
            RewriteChainConfig(**bad)
    with pytest.raises(ValueError, match="keyword"):
        RewriteChain("  ")
