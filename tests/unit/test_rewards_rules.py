"""Label-correctness and format rewards on hand-written outputs, through the real task parser."""

from __future__ import annotations

import pytest
import rewards_support as rs

from megatron_ads.rewards import registry

QA_GOLD = {"labels": {"relevance": "fair", "location": "good", "quality": "bad"}}
AU_GOLD = {"score": 2}


def qa(rel="fair", loc="good", qual="bad", think="<think>The brand differs.</think>"):
    return f"{think}\n<Label>{rel}</Label>\n<LocationLabel>{loc}</LocationLabel>\n<AdQuality>{qual}</AdQuality>"


def run(name, task, completions, meta, **params):
    fn = registry.build(name, rs.resources(), params)
    return registry.call(fn, [""] * len(completions), completions, task, meta).values


def test_label_reward_query_ad():
    comps = [qa(), qa(rel="good"), qa(rel="bad", loc="bad", qual="good"), qa(rel="FAIR"),
             qa(think="<think>unclosed"),                     # malformed: <think> not closed
             qa(rel="excellent"),                              # malformed: value outside the allowed set
             "<think>x</think>\n<Label>fair</Label>",          # malformed: two tags missing
             qa() + "\n<Label>good</Label>",                   # malformed: <Label> twice
             "fair"]                                           # no tags at all
    values = run("label", "query_ad", comps, [QA_GOLD] * len(comps))
    assert values[:4] == [1.0, pytest.approx(2 / 3), 0.0, 1.0]
    assert values[4:] == [-1.0] * 5
    # the penalty and per-field weights are configurable
    values = run("label", "query_ad", [qa(rel="good"), "junk"], [QA_GOLD] * 2,
                 format_penalty=-0.5, field_weights={"relevance": 2.0, "location": 1.0, "quality": 1.0})
    assert values == [pytest.approx(2 / 4), -0.5]


def test_label_reward_ad_user_and_not_applicable():
    comps = ["<think>likes it</think>\n<Score>2</Score>", "<think>no</think>\n<Score>0</Score>",
             "<Score>2</Score>",                       # no <think> at all is allowed by the parser
             "<think>x</think>\n<Score>7</Score>",     # outside 0-3: malformed
             "<think>x</think>\n<Score>2</Score>"]
    meta = [AU_GOLD] * 4 + [{"history": ["viewed tents"]}]  # the last row has no gold score
    assert run("label", "ad_user", comps, meta) == [1.0, 0.0, 1.0, -1.0, None]


def test_format_reward():
    comps = [qa(), qa(rel="good"), qa(think="<think>open"), "plain text"]
    assert run("format", "query_ad", comps, [{}] * 4) == [0.0, 0.0, -1.0, -1.0]
    assert run("format", "query_gen", ["<think></think>\n<Query>a b</Query>", "<Query>a</Query>\n<Query>b</Query>", "none"],
               [{}] * 3, format_penalty=-0.2) == [0.0, 0.0, -0.2]


def test_params_validation_names_the_field():
    with pytest.raises(ValueError, match=r"reward_params\.label\.format_penalty"):
        registry.make_params("label", {"format_penalty": 0.5})
    with pytest.raises(ValueError, match=r"reward_params\.label\.field_weights\.relevance"):
        registry.make_params("label", {"field_weights": {"relevance": -1}})
    with pytest.raises(ValueError, match=r"reward_params\.format\.penalty"):
        registry.make_params("format", {"penalty": -1})
    with pytest.raises(ValueError, match=r"resources\.gold"):
        registry.build("label", registry.RewardResources(parse=rs.parse))
