"""Tokenization and fixed-length examples for SFT: prompt + target, loss on target tokens only.

Each example becomes ``tokens``/``labels`` of length S (labels = tokens shifted by one) and a loss
mask that is 1 exactly on the positions whose label is a target token (the response, closing
EOS included). Prompts are left-truncated when prompt + target exceeds S, so the target survives;
a target longer than S - 1 tokens is an error naming the example. Sequences are padded (no
cross-example packing), so attention never crosses examples.

Per-task token accounting: ``Example.n_target`` is kept so the SFT loss can average per sample
(Eq. 2's ℓ_{t,i} is a per-sample mean), which keeps short-label tasks from being drowned by
long-reasoning ones in a token-mean loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_ads.data.tasks import TaskSpec


@dataclass(frozen=True, slots=True)
class Example:
    sample_id: str
    task: str
    tokens: list[int]
    """Length S + 1 before the shift (prompt + target + EOS, padded)."""
    mask: list[float]
    """Length S: 1 where labels[j] = tokens[j + 1] is a target token."""
    n_target: int
    n_prompt: int = 0
    """Prompt tokens kept (they come first); labels[j] is a prompt token for j < n_prompt - 1."""


def label_only_target(spec: TaskSpec, row: dict) -> str:
    """The target without reasoning (label-only mode): an empty <think></think> then the fields."""
    return spec.target(dict(row, reasoning=""))


def encode(tokenizer, spec: TaskSpec, row: dict, seq_len: int, label_only: bool = False) -> Example:
    """One training example of ``row`` (prompt + target [+ EOS]) at fixed length ``seq_len``."""
    prompt_ids = tokenizer(spec.prompt(row), add_special_tokens=False)["input_ids"]
    target = label_only_target(spec, row) if label_only else spec.target(row)
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if len(target_ids) > seq_len:
        raise ValueError(f"example {row.get('id')!r} ({spec.name}): target is {len(target_ids)} tokens, "
                         f"more than seq_len={seq_len}; raise train.seq_len")
    keep = seq_len + 1 - len(target_ids)
    prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    ids = prompt_ids + target_ids
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    n = len(ids)
    ids = ids + [pad] * (seq_len + 1 - n)
    mask = [0.0] * seq_len
    for j in range(len(prompt_ids) - 1, n - 1):  # label position j predicts token j + 1
        if j >= 0:
            mask[j] = 1.0
    return Example(str(row["id"]), spec.name, ids, mask, len(target_ids), len(prompt_ids))


def collate(examples: list[Example]) -> dict:
    """A micro-batch: tokens/labels/loss_mask/prompt_mask [B, S], sample ids and task names."""
    t = torch.tensor([e.tokens for e in examples], dtype=torch.long)
    seq = t.shape[1] - 1
    prompt = torch.zeros(len(examples), seq)
    for i, e in enumerate(examples):
        prompt[i, :max(e.n_prompt - 1, 0)] = 1.0
    return {"tokens": t[:, :-1].contiguous(), "labels": t[:, 1:].contiguous(),
            "loss_mask": torch.tensor([e.mask for e in examples], dtype=torch.float32),
            "prompt_mask": prompt,
            "sample_ids": [e.sample_id for e in examples], "tasks": [e.task for e in examples]}


def model_forward(model, batch: dict, device, *, with_labels: bool = True, **kwargs):
    """The model call of a micro-batch (the forward-step preamble every schedule step shares): tokens (and
    labels) moved to ``device``, positions 0..S-1; ``kwargs`` go to the model (e.g. ``loss_mask``).
    Returns the model's output: per-token NLL [B, S] with labels, logits [B, S, V] without."""
    tokens = batch["tokens"].to(device)
    pos = torch.arange(tokens.shape[1], device=device).unsqueeze(0).expand_as(tokens)
    if with_labels:
        kwargs["labels"] = batch["labels"].to(device)
    return model(tokens, pos, None, **kwargs)
