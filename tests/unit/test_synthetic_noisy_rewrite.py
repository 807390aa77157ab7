"""Noisy source ads of the ad_rewrite corpus (``SyntheticConfig.noisy_rewrite_rate``, issue 15: the data RELATE's
RL must clean up in ``benchmarks/relate_tiny.py``)."""

import pytest

from megatron_ads.data.synthetic import CTA_PHRASES, RISKY_CLAIMS, SyntheticConfig, ad_text, generate, true_ctr
from megatron_ads.data.tasks import task
from megatron_ads.rewards.relate import DEFAULT_BLACKLIST, TermMatcher

MATCH = TermMatcher(DEFAULT_BLACKLIST)


def test_every_risky_claim_hits_the_default_blacklist():
    assert all(len(MATCH.find(c, skip="")) == 1 for c in RISKY_CLAIMS)


def test_clean_corpus_never_hits_the_blacklist():
    spec = task("ad_rewrite")
    rows = generate("ad_rewrite", SyntheticConfig(size=500, seed=1))
    assert not any(MATCH.find(spec.prompt(r) + spec.target(r), skip="") for r in rows)
    assert all("noise" not in r["truth"] for r in rows)


def test_noisy_rows_only_change_and_keep_or_repeat_at_half_rate():
    clean = generate("ad_rewrite", SyntheticConfig(size=2000, seed=3))
    noisy = generate("ad_rewrite", SyntheticConfig(size=2000, seed=3, noisy_rewrite_rate=0.4))
    assert generate("ad_rewrite", SyntheticConfig(size=2000, seed=3, noisy_rewrite_rate=0.4)) == noisy
    flagged = [i for i, r in enumerate(noisy) if "noise" in r["truth"]]
    assert abs(len(flagged) / 2000 - 0.4) < 0.04
    for a, b in zip(clean, noisy):
        if "noise" not in b["truth"]:
            assert a == b  # a row the knob leaves alone is the row without the knob
    kept = repeated = 0
    for i in flagged:
        r, n = noisy[i], noisy[i]["truth"]["noise"]
        assert n["claim"] in RISKY_CLAIMS and n["claim"] in r["ad"]["description"]
        assert (n["claim"] in r["rewrite"]["description"]) == n["kept"]
        assert bool(MATCH.find(r["rewrite"]["description"], skip="")) == n["kept"]
        calls = sum(r["rewrite"]["description"].lower().count(c) for c in CTA_PHRASES)
        assert calls == (2 if n["repeated"] else 1)
        assert not MATCH.find(r["rewrite"]["title"] + r["rewrite"]["rationale"] + r["reasoning"], skip="")
        assert r["truth"]["ctr_rewrite"] == true_ctr(r["keyword"], ad_text(r["rewrite"]["title"],
                                                                        r["rewrite"]["description"]))
        assert len(r["rewrite"]["description"]) <= r["limits"]["description"]
        # the clean parts of a noisy row are the clean row's: keyword, titles, the rewrite's first sentence
        assert (r["keyword"], r["ad"]["title"], r["rewrite"]["title"]) == \
            (clean[i]["keyword"], clean[i]["ad"]["title"], clean[i]["rewrite"]["title"])
        kept += n["kept"]
        repeated += n["repeated"]
    assert abs(kept / len(flagged) - 0.5) < 0.08 and abs(repeated / len(flagged) - 0.5) < 0.08


def test_rate_is_validated():
    with pytest.raises(ValueError, match="noisy_rewrite_rate"):
        SyntheticConfig(noisy_rewrite_rate=1.5)
