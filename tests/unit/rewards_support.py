"""Shared, cached objects of the rewards tests (imported by tests/unit/test_rewards_*.py): the real frozen
MiniLM embedder, loaded once per test session, and the task parser / gold wiring the trainer does."""

from __future__ import annotations

import functools

from megatron_ads.data.tasks import _get, parse_output, task
from megatron_ads.rewards.registry import RewardResources


@functools.lru_cache(maxsize=1)
def embedder():
    """The packaged all-MiniLM-L6-v2 (one instance for the whole session)."""
    from megatron_ads.rewards.retrieval import MiniLMEmbedder

    return MiniLMEmbedder()


def parse(task_name: str, text: str):
    """``data.tasks``' parser as a reward parser (task name, text)."""
    return parse_output(task(task_name), text)


def gold(task_name: str, row: dict) -> dict:
    """Gold value of each output field of the task in ``row`` ({} when the row has none)."""
    out = {}
    for f in task(task_name).outputs:
        try:
            out[f.name] = _get(row, f.key)
        except KeyError:
            return {}
    return out


def resources(**kw) -> RewardResources:
    """Resources wired as the trainer wires them (parser and gold from data.tasks, the cached embedder)."""
    return RewardResources(parse=parse, gold=gold, embedder=embedder(), **kw)
