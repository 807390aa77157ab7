"""``EngineScorer``: the ``data.tasks.Scorer`` protocol on the inference engine (``infer.engine``).

``score(prompts, targets)`` tokenizes prompt and target apart (no special tokens, as the training
pipeline's scorer does: ``infer.pipeline_scoring``) and returns the summed log-probability of the target
tokens after the prompt, computed by ``Engine.candidate_loglik``. Pairs are grouped by prompt, and
prompts sharing the same candidate list are scored in one call (``Task.predict`` asks for every
candidate of a field after each row's prompt: one call per field). ``generate(prompts, max_new_tokens)``
is greedy KV-cache generation stopping at EOS; texts are decoded without the EOS token.
"""

from __future__ import annotations

from typing import Any

from megatron_ads.infer.engine import Engine, Generation, SamplingParams


class EngineScorer:
    """``data.tasks.Scorer`` over an ``Engine`` and its tokenizer.

    Args:
        engine: the engine (one model chunk).
        tokenizer: the checkpoint's tokenizer (HF tokenizer API: ``__call__``, ``decode``).
        stop_ids: ids generation stops at (``infer.weights.eos_ids``); default the tokenizer's EOS.
    """

    def __init__(self, engine: Engine, tokenizer: Any, stop_ids: set[int] | None = None):
        if tokenizer is None:
            raise ValueError("tokenizer: the scorer needs the checkpoint's tokenizer (the checkpoint has none)")
        self.engine = engine
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token_id", None)
        self.stop_ids = set(stop_ids) if stop_ids is not None else ({int(eos)} if eos is not None else set())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (how prompts and targets are split)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target given its prompt (``Scorer.score``)."""
        if len(prompts) != len(targets):
            raise ValueError(f"score: {len(prompts)} prompts vs {len(targets)} targets")
        by_prompt: dict[str, list[int]] = {}  # prompt text -> pair indices, first-seen order
        for i, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(i)
        groups: dict[tuple[str, ...], list[str]] = {}  # candidate list -> prompts sharing it
        for p, idx in by_prompt.items():
            groups.setdefault(tuple(targets[i] for i in idx), []).append(p)
        out = [0.0] * len(prompts)
        for cands, group in groups.items():
            distinct = list(dict.fromkeys(cands))
            ll = self.engine.candidate_loglik([self.encode(p) for p in group], [self.encode(c) for c in distinct])
            for p, row in zip(group, ll):
                for i in by_prompt[p]:
                    out[i] = row[distinct.index(targets[i])]
        return out

    def generate_full(self, prompts: list[str], max_new_tokens: int, on_batch=None) -> list[Generation]:
        """Greedy generation with EOS stop: the engine's ``Generation`` per prompt (ids, log-probs, finish)."""
        params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=self.stop_ids)
        return self.engine.generate([self.encode(p) for p in prompts], params, on_batch=on_batch)

    def text(self, gen: Generation) -> str:
        """A generation's text without its stop token(s)."""
        return self.tokenizer.decode([t for t in gen.output_ids if t not in self.stop_ids])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuation text of each prompt, without EOS (``Scorer.generate``)."""
        return [self.text(g) for g in self.generate_full(prompts, max_new_tokens)]
