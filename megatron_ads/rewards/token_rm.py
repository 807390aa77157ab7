"""TPPO (tppo.txt §3.3–3.4; spec ``papers_spec.md`` §B.1): the ``token_rm`` reward — per-token rewards of a
frozen token-level reward model (3 classes per token: 0 masked/separator, 1 irrelevant, 2 relevant).

How it works: the model is ``resources.token_model``, an object with
``token_rewards(prompt_ids, completion_ids) -> list[list[float]]`` (one reward per completion token: the
trainer's frozen ``train rm rm.kind=token`` run on the policy's own layout and tokenizer, r_t = P(2) − P(1) or
the class map, 0 where the argmax is class 0). The ids come from the trainer in ``meta[i][PROMPT_IDS]`` and
``meta[i][COMPLETION_IDS]`` (the reward model reads exactly the tokens the policy saw and produced, so the
per-token values align with the loss mask without re-tokenizing). The sentence value is the sum (default) or
the mean of the token values: the reward a sentence-level PPO/GRPO arm gets from the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from megatron_ads.rewards.registry import COMPLETION_IDS, PROMPT_IDS, RewardOutput, RewardResources, register

SENTENCE = ("sum", "mean")


@dataclass(kw_only=True, slots=True)
class TokenRMParams:
    """Parameters of the ``token_rm`` reward."""

    sentence: str = "sum"
    """The sentence value from the token values: sum (the total a sentence-level arm gets; default) or mean."""

    def __post_init__(self):
        if self.sentence not in SENTENCE:
            raise ValueError(f"sentence: expected one of {', '.join(SENTENCE)}, got {self.sentence!r}")


class TokenRMReward:
    """``token_rm``: per-token values of the frozen token reward model, and their sum (or mean)."""

    def __init__(self, params: TokenRMParams, resources: RewardResources):
        self.p, self.resources = params, resources

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], task: str,
                 meta: Sequence[dict]) -> RewardOutput:
        missing = [i for i, m in enumerate(meta) if PROMPT_IDS not in m or COMPLETION_IDS not in m]
        if missing:
            raise ValueError(f"token_rm: meta[{missing[0]}] lacks {PROMPT_IDS!r}/{COMPLETION_IDS!r} (the trainer "
                             f"hands the token ids in; the reward has no text path)")
        model = self.resources.need("token_model", "token_rm")
        tv = [list(map(float, v)) for v in model.token_rewards([list(m[PROMPT_IDS]) for m in meta],
                                                               [list(m[COMPLETION_IDS]) for m in meta])]
        if len(tv) != len(meta):
            raise ValueError(f"token_model.token_rewards: expected {len(meta)} rows, got {len(tv)}")
        for i, (v, m) in enumerate(zip(tv, meta)):
            if len(v) != len(m[COMPLETION_IDS]):
                raise ValueError(f"token_model.token_rewards: row {i}: {len(v)} values for "
                                 f"{len(m[COMPLETION_IDS])} completion tokens")
        values = [sum(v) if self.p.sentence == "sum" else (sum(v) / len(v) if v else 0.0) for v in tv]
        return RewardOutput([float(x) for x in values], token_values=tv)


@register("token_rm", TokenRMParams, doc="TPPO: per-token rewards of a frozen token-level reward model "
          "(P(relevant) − P(irrelevant)); sentence value = their sum")
def build_token_rm(params: TokenRMParams, resources: RewardResources) -> TokenRMReward:
    """``token_rm`` over ``resources.token_model`` (loaded on the first call through ``resources.need``)."""
    return TokenRMReward(params, resources)
