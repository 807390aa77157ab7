"""A seeded, learnable token stream for LM training on CPU (the tiny config's data source).

Sample ``i`` is a periodic motif of ``motif_len`` tokens drawn from a generator seeded by
(seed, i), repeated to ``seq_len + 1`` tokens: the first period is noise to the model, every
later token is predictable, so the loss falls quickly and a resumed run can be checked exactly.
Samples are addressed by global index, so the data position is a single integer.
"""

from __future__ import annotations

import torch


def sample(index: int, seq_len: int, seed: int, motif_len: int, vocab_limit: int) -> torch.Tensor:
    """Tokens [seq_len + 1] of global sample ``index``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)
    motif = torch.randint(0, vocab_limit, (motif_len,), generator=g)
    reps = (seq_len + 1 + motif_len - 1) // motif_len
    return motif.repeat(reps)[: seq_len + 1]


def batch(first_index: int, count: int, seq_len: int, seed: int, motif_len: int, vocab_limit: int) -> dict:
    """A micro-batch: tokens/labels [B, S], loss_mask [B, S] (no loss on the first motif period)."""
    rows = torch.stack([sample(first_index + i, seq_len, seed, motif_len, vocab_limit) for i in range(count)])
    mask = torch.ones(count, seq_len)
    mask[:, : motif_len - 1] = 0.0
    return {"tokens": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous(), "loss_mask": mask}
