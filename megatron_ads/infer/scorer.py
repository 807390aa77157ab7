"""``EngineScorer``: the ``data.tasks.Scorer`` protocol on the inference engine (``infer.engine``); the one
scorer of labeling jobs and of SFT validation / test predictions (``cli.workers``).

``score(prompts, targets)`` tokenizes prompt and target apart (no special tokens) and returns the summed
log-probability of the target tokens after the prompt, computed by ``Engine.candidate_loglik``. Pairs are
grouped by prompt, and prompts sharing the same candidate list are scored in one call (``Task.predict`` asks for every
candidate of a field after each row's prompt: one call per field). ``generate(prompts, max_new_tokens)``
is greedy KV-cache generation stopping at EOS; texts are decoded without the EOS token.

Length limit: with ``max_len`` (SFT validation passes ``train.seq_len``) prompts are left-truncated, as the
training pipeline truncates them: for scoring, to ``max_len + 1 - (longest candidate of the call)`` tokens
(every candidate's sequence ``prompt + candidate[:-1]`` fits ``max_len``; all candidates of a prompt see
the same prompt); for generation, to ``max_len - max_new_tokens`` tokens.

Stop rule: ``generate_full(..., stop_text=...)`` also stops a row once the decoded text of its output
contains ``stop_text`` (after ``</think>`` when the output opened a ``<think>`` block), checked after every
token. Labeling passes the task's closing tag (``closing_tag``: the last output field's closing tag, e.g.
``</AdQuality>`` for query_ad, ``</Score>`` for ad_user; none when that field repeats, as ``<Query>``
does). Matching decoded text rather than id sequences makes the stop independent of how the tag was
tokenized in context (``>`` merged with the next newline, a tag split over several tokens); the row keeps
the token that completed the tag (and whatever else that token holds) and finishes with ``stop``.
"""

from __future__ import annotations

from typing import Any, Callable

from megatron_ads.data.tasks import Task
from megatron_ads.infer.engine import Engine, Generation, SamplingParams

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def closing_tag(task: Task) -> str | None:
    """The text generation for ``task`` may stop at: the closing tag of its last output field (the end of
    the task's target template), or None when that field repeats (several ``<Query>`` lines)."""
    if not task.outputs or task.outputs[-1].repeated:
        return None
    return f"</{task.outputs[-1].tag}>"


def text_stop(decode: Callable[[list[int]], str], text: str, skip_ids: set[int] = frozenset()
              ) -> Callable[[list[int]], bool]:
    """A ``SamplingParams.stop_check``: True once ``decode(output ids without skip_ids)`` contains ``text``
    in the answer part (after ``</think>`` when the output opened ``<think>``; never inside the reasoning)."""
    if not text:
        raise ValueError("text: expected a non-empty stop text")

    def check(out: list[int]) -> bool:
        s = decode([t for t in out if t not in skip_ids])
        if THINK_OPEN in s:
            end = s.find(THINK_CLOSE)
            if end < 0:
                return False
            s = s[end + len(THINK_CLOSE):]
        return text in s

    return check


class EngineScorer:
    """``data.tasks.Scorer`` over an ``Engine`` and its tokenizer.

    Args:
        engine: the engine (one model chunk).
        tokenizer: the checkpoint's tokenizer (HF tokenizer API: ``__call__``, ``decode``).
        stop_ids: ids generation stops at (``infer.weights.eos_ids``); default the tokenizer's EOS.
        max_len: left-truncate prompts so every forward fits this many tokens (module docstring); None: no
            truncation (the engine refuses rows beyond the model's max_position_embeddings).
    """

    def __init__(self, engine: Engine, tokenizer: Any, stop_ids: set[int] | None = None,
                 max_len: int | None = None):
        if max_len is not None and max_len < 2:
            raise ValueError(f"max_len: expected >= 2 tokens or None, got {max_len}")
        self.max_len = max_len
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
            cand_ids = [self.encode(c) for c in distinct]
            prompt_ids = [self.encode(p) for p in group]
            if self.max_len is not None:
                longest = max(len(c) for c in cand_ids)
                keep = self.max_len + 1 - longest
                if keep < 1:
                    raise ValueError(f"targets: one of {longest} tokens leaves no room for the prompt within "
                                     f"max_len {self.max_len}")
                prompt_ids = [p[-keep:] for p in prompt_ids]
            ll = self.engine.candidate_loglik(prompt_ids, cand_ids)
            for p, row in zip(group, ll):
                for i in by_prompt[p]:
                    out[i] = row[distinct.index(targets[i])]
        return out

    def generate_full(self, prompts: list[str], max_new_tokens: int, on_batch=None,
                      stop_text: str | None = None) -> list[Generation]:
        """Greedy generation with EOS stop (and, with ``stop_text``, the text stop of the module docstring):
        the engine's ``Generation`` per prompt (ids, log-probs, finish)."""
        check = text_stop(self.tokenizer.decode, stop_text, self.stop_ids) if stop_text else None
        params = SamplingParams(max_new_tokens=max_new_tokens, stop_ids=self.stop_ids, stop_check=check)
        prompt_ids = [self.encode(p) for p in prompts]
        if self.max_len is not None:
            if max_new_tokens >= self.max_len:
                raise ValueError(f"max_new_tokens: {max_new_tokens} must be below max_len {self.max_len}")
            prompt_ids = [p[-(self.max_len - max_new_tokens):] for p in prompt_ids]
        return self.engine.generate(prompt_ids, params, on_batch=on_batch)

    def text(self, gen: Generation) -> str:
        """A generation's text without its stop token(s)."""
        return self.tokenizer.decode([t for t in gen.output_ids if t not in self.stop_ids])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy continuation text of each prompt, without EOS (``Scorer.generate``)."""
        return [self.text(g) for g in self.generate_full(prompts, max_new_tokens)]
