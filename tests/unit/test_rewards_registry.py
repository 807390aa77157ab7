"""The reward registry: outputs, registration, calling, and the per-task combination's validation."""

from __future__ import annotations

import pytest
import rewards_support as rs

from megatron_ads.data.tasks import TASKS
from megatron_ads.rewards import REWARDS, RewardCombination, RewardOutput, registry


def test_registered_rewards():
    assert {"label", "format", "recall_at_k", "ctr_uplift"} <= set(REWARDS)
    with pytest.raises(ValueError, match="reward: expected one of"):
        registry.get("bleu")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("label", registry.get("label").params)(lambda p, r: None)


def test_reward_output_and_call():
    out = RewardOutput([1.0, None], token_values=[[0.0, -1.0], None])
    assert out.values == [1.0, None]
    with pytest.raises(ValueError, match=r"values\[1\]"):
        RewardOutput([0.0, float("nan")])
    with pytest.raises(ValueError, match="token_values"):
        RewardOutput([0.0], token_values=[None, None])
    plain = registry.call(lambda p, c, t, m: [len(x) for x in c], ["a", "b"], ["xy", "z"], "query_ad")
    assert isinstance(plain, RewardOutput) and plain.values == [2, 1]
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        registry.call(lambda p, c, t, m: [0.0], ["a", "b"], ["x", "y"], "query_ad")
    with pytest.raises(ValueError, match="meta"):
        registry.call(lambda p, c, t, m: [0.0], ["a"], ["x"], "query_ad", [{}, {}])


def test_combination_builds_and_evaluates_per_task():
    combo = RewardCombination(tasks={"query_ad": {"label": 1.0, "format": 0.1}, "ad_user": {"label": 1.0}},
                              params={"label": {"format_penalty": -0.5}})
    assert combo.used() == ["format", "label"]
    assert combo.channels("query_ad") == {"label": 1.0, "format": 0.1} and combo.channels("query_gen") == {}
    fns = combo.build_all(rs.resources())
    out = combo.evaluate(fns, "ad_user", ["", ""], ["<think>x</think>\n<Score>3</Score>", "oops"],
                         [{"score": 3}, {"score": 3}])
    assert set(out) == {"label"} and out["label"].values == [1.0, -0.5]


@pytest.mark.parametrize("tasks, params, field", [
    ({}, None, r"rewards\.tasks"),
    ({"query_ad": {}}, None, r"rewards\.tasks\.query_ad"),
    ({"query_ad": {"bleu": 1.0}}, None, r"rewards\.tasks\.query_ad\.bleu: unknown reward"),
    ({"query_ad": {"label": 0}}, None, r"rewards\.tasks\.query_ad\.label: expected a finite non-zero"),
    ({"query_ad": {"label": float("inf")}}, None, r"rewards\.tasks\.query_ad\.label"),
    ({"query_ad": {"label": 1.0}}, {"format": {}}, r"rewards\.params\.format: parameters for a reward no task"),
    ({"query_ad": {"label": 1.0}}, {"label": {"k": 3}}, r"rewards\.params\.label\.k: unknown parameter"),
    ({"query_gen": {"recall_at_k": 1.0}}, {"recall_at_k": {"mode": "all"}}, r"rewards\.params\.recall_at_k\.mode"),
])
def test_combination_errors_name_the_field(tasks, params, field):
    with pytest.raises(ValueError, match=field):
        RewardCombination(tasks=tasks, params=params or {})


def test_check_combination_with_known_tasks():
    registry.check_combination({"query_ad": {"label": 1.0}}, known_tasks=list(TASKS))
    with pytest.raises(ValueError, match=r"grpo\.rewards\.tasks\.query_adx: unknown task"):
        registry.check_combination({"query_adx": {"label": 1.0}}, where="grpo.rewards", known_tasks=list(TASKS))
