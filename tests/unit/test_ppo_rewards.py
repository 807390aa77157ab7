"""Token-level PPO's per-token rewards (``train.ppo_loop.PPOTrainer.add_advantages``): TPPO credit puts a
channel's per-token values on their tokens (times lwp), the sentence-level baseline puts every channel's
sentence value on the completion's last token; None is 0; weights per task. Plus the ``token_rm`` reward."""

from types import SimpleNamespace

import pytest
import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.train import tppo
from megatron_ads.train.ppo_loop import PPOTrainer


def _fake(token_credit=True, lwp_alpha=None, s_l=None):
    job = JobConfig.from_dict({"ppo": {"token_credit": token_credit, "lwp_alpha": lwp_alpha}})
    return SimpleNamespace(job=job, s_l=s_l, weights={"a": {"sent": 2.0, "tok": 1.0}, "b": {"sent": 1.0}})


MASK = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.float32)
TASKS = ["a", "a", "b"]
REWARDS = {"sent": [1.0, None, 3.0], "tok": [-1.0, 0.5, None]}
TOKEN_VALUES = {"tok": [[0.1, 0.2, 0.3], [0.0, 0.5, 0.0], None]}


def test_token_credit_places_token_values_and_sentences_on_last_token():
    full = {"loss_mask": MASK}
    PPOTrainer.add_advantages(_fake(), full, REWARDS, TOKEN_VALUES, TASKS)
    want = torch.zeros(3, 5)
    want[0, 3] += 2.0 * 1.0                      # sent (weight 2) on row 0's last token
    want[0, 1:4] += torch.tensor([0.1, 0.2, 0.3])  # tok (weight 1) per token
    want[1, 2:5] += torch.tensor([0.0, 0.5, 0.0])  # sent None -> 0
    want[2, 2] += 1.0 * 3.0                      # task b: sent weight 1, no tok channel
    assert torch.allclose(full["reward"], want)


def test_sentence_level_sums_on_last_token():
    full = {"loss_mask": MASK}
    PPOTrainer.add_advantages(_fake(token_credit=False), full, REWARDS, TOKEN_VALUES, TASKS)
    want = torch.zeros(3, 5)
    want[0, 3] = 2.0 * 1.0 + 1.0 * -1.0
    want[1, 4] = 1.0 * 0.5
    want[2, 2] = 3.0
    assert torch.allclose(full["reward"], want)
    assert (full["reward"] * (1 - MASK)).abs().sum() == 0


def test_lwp_scales_token_values_only():
    full = {"loss_mask": MASK}
    PPOTrainer.add_advantages(_fake(lwp_alpha=1.0, s_l=1.0), full, REWARDS, TOKEN_VALUES, TASKS)
    w = tppo.lwp(torch.tensor([1.0, 2.0, 3.0]), 1.0, 1.0)
    assert torch.allclose(full["reward"][0, 1:4], torch.tensor([0.1, 0.2, 0.3]) * w + torch.tensor([0, 0, 2.0]))
    assert full["reward"][2, 2] == pytest.approx(3.0)  # a sentence value is not length-weighted


def test_token_rm_reward_sums_model_token_values():
    from megatron_ads.rewards.registry import COMPLETION_IDS, PROMPT_IDS, RewardResources, build, make_params

    class Model:
        def token_rewards(self, prompt_ids, completion_ids):
            return [[0.5 * len(p)] * len(c) for p, c in zip(prompt_ids, completion_ids)]

    res = RewardResources(token_model=Model())
    fn = build("token_rm", res, make_params("token_rm", None, "t"))
    meta = [{PROMPT_IDS: [1, 2], COMPLETION_IDS: [5, 6, 7]}, {PROMPT_IDS: [1], COMPLETION_IDS: [9]}]
    out = fn(["p", "q"], ["x", "y"], "user_query_gen", meta)
    assert out.token_values == [[1.0, 1.0, 1.0], [0.5]]
    assert out.values == [3.0, 0.5]
    mean = build("token_rm", res, make_params("token_rm", {"sentence": "mean"}, "t"))
    assert mean(["p", "q"], ["x", "y"], "user_query_gen", meta).values == [1.0, 0.5]
    with pytest.raises(ValueError, match="prompt_ids"):
        fn(["p"], ["x"], "user_query_gen", [{COMPLETION_IDS: [1]}])
    with pytest.raises(ValueError, match="sentence"):
        make_params("token_rm", {"sentence": "max"}, "t")


def test_ppo_config_errors_name_the_field():
    with pytest.raises(ValueError, match="ppo.lam"):
        JobConfig.from_dict({"ppo": {"lam": 1.5}})
    with pytest.raises(ValueError, match="ppo.lwp_alpha"):
        JobConfig.from_dict({"ppo": {"lwp_alpha": -1}})
    with pytest.raises(ValueError, match="grpo.algo"):
        JobConfig.from_dict({"grpo": {"algo": "dpo"}})
