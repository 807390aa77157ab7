"""Rewards for RL (AdNanny §4.3): functions ``fn(prompts, completions, task, meta) -> list[float | None]``
registered by name (``registry.REWARDS``) and combined per task with weights (``registry.RewardCombination``).

- ``rules``: ``label`` (label correctness, format penalty when malformed) and ``format``.
- ``retrieval``: the frozen MiniLM embedder, the faiss ad index, and ``recall_at_k`` (Eq. 8, per-sample or batch).
- ``ctr``: the frozen CTR model trained on click logs, and ``ctr_uplift``.
- ``esmm``: RELATE's shared-bottom CTR/CVR model (ESMM, CTCVR = CTR x CVR) trained on conversion logs, and ``ctcvr``.
- ``relate``: RELATE's ``length``, ``blacklist`` and ``diversity`` (token-level credit, Eq. 4–5) and its metrics.
- ``perf``: RLPF's ``perf_rm`` (a frozen performance reward model's score minus a length penalty).
- ``token_rm``: TPPO's ``token_rm`` (per-token rewards of a frozen token-level reward model).
- ``autoeval``: MarketingFM's AutoEval rule checks, acceptance, agreement / threshold sweep, ``autoeval_rules``.

Importing this package registers every reward. ``rewards`` sits beside ``data`` and ``eval`` in the layer
order and imports neither: task parsers, gold labels and corpora come in through ``RewardResources``.
"""

from megatron_ads.rewards import autoeval, ctr, esmm, perf, relate, retrieval, rules, token_rm  # noqa: F401  (registers)
from megatron_ads.rewards.registry import (REWARDS, RewardCombination, RewardOutput, RewardResources, build,
                                           call, check_combination, get)

__all__ = ["REWARDS", "RewardCombination", "RewardOutput", "RewardResources", "build", "call",
           "check_combination", "get", "autoeval", "ctr", "esmm", "perf", "relate", "retrieval", "rules",
           "token_rm"]
