"""Reward-model math for RLPF / AdLlama (rlpf_adllama.txt; spec ``papers_spec.md`` §B.3, §C 27, 29): the
Bradley–Terry pairwise loss, pairwise accuracy, the pointwise CTR-regression baseline, the length penalty
(``rewards.perf.length_penalty``, re-exported) and the scalar head that turns a backbone into a reward model.

How it works
------------
- Bradley–Terry: P(y_w ≻ y_l) = σ(r_w − r_l), so L = −log σ(r_w − r_l) = softplus(r_l − r_w), averaged over
  pairs (``bt_loss``). Equal scores give ln 2; ∂L/∂r_w = −σ(r_l − r_w) per pair (before the mean).
- ``pairwise_accuracy``: the share of pairs with r_w > r_l (a tie counts ½: a constant scorer gets 0.5).
- ``pointwise_loss``: the baseline the paper found worse at ranking similar texts — regress each text's
  observed CTR from its score: ``bce`` (default) = binary cross-entropy of σ(score) against the CTR, weighted
  by impressions when given (the same loss as one BCE term per impression, as ``rewards.ctr``), or ``mse``
  = (score − CTR)² on the raw score.
- ``ScalarHead``: a linear map hidden → 1 applied to the hidden state of each sequence's last non-pad
  token (the usual RM readout of a causal backbone: the last token has attended to the whole text). It
  takes megatron-core's sequence-first [S, B, H] (``seq_first=True``) or batch-first [B, S, H] states.
- ``attach_reward_head``: the head inside a megatron-core GPTModel chunk (on the last pipeline stage, in its
  state dict) whose post-processing returns per-position scores; ``gather_last`` reads each sequence's
  score at its last real token (the same value as ``ScalarHead.forward``: the head is applied row-wise).

Shapes: P pairs, N texts, B sequences, S positions, H hidden size.
"""

from __future__ import annotations

import math
from types import MethodType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from megatron_ads.rewards.perf import length_penalty

__all__ = ["HEAD", "PointwiseKind", "ScalarHead", "attach_reward_head", "bt_loss", "gather_last", "last_token_index",
           "length_penalty", "pairwise_accuracy", "pointwise_loss"]

PointwiseKind = Literal["bce", "mse"]


def bt_loss(r_w_P: torch.Tensor, r_l_P: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry loss mean_p softplus(r_l − r_w) = −log σ(r_w − r_l) (preferred w, rejected l)."""
    if r_w_P.shape != r_l_P.shape:
        raise ValueError(f"r_l: expected the shape of r_w {tuple(r_w_P.shape)}, got {tuple(r_l_P.shape)}")
    return F.softplus(r_l_P - r_w_P).mean()


def pairwise_accuracy(r_w_P: torch.Tensor, r_l_P: torch.Tensor) -> float:
    """Share of pairs the scores order correctly (r_w > r_l; ties count ½). 0.5 is chance."""
    if r_w_P.shape != r_l_P.shape or r_w_P.numel() == 0:
        raise ValueError(f"r_w/r_l: expected two non-empty tensors of one shape, got {tuple(r_w_P.shape)}/"
                         f"{tuple(r_l_P.shape)}")
    d_P = (r_w_P - r_l_P).detach().double()
    return float(((d_P > 0).double() + 0.5 * (d_P == 0).double()).mean())


def pointwise_loss(score_N: torch.Tensor, ctr_N: torch.Tensor, impressions_N: torch.Tensor | None = None,
                   kind: PointwiseKind = "bce") -> torch.Tensor:
    """CTR regression baseline: bce = BCE(σ(score), ctr) (impression-weighted mean when impressions are
    given), mse = (score − ctr)² (impression-weighted likewise). ctr in [0, 1]."""
    ctr_N = ctr_N.to(score_N.dtype)
    if score_N.shape != ctr_N.shape:
        raise ValueError(f"ctr: expected shape {tuple(score_N.shape)}, got {tuple(ctr_N.shape)}")
    if bool(((ctr_N < 0) | (ctr_N > 1)).any()):
        raise ValueError("ctr: expected click rates in [0, 1]")
    if kind == "bce":
        per_N = F.binary_cross_entropy_with_logits(score_N, ctr_N, reduction="none")
    elif kind == "mse":
        per_N = (score_N - ctr_N) ** 2
    else:
        raise ValueError(f"kind: expected bce or mse, got {kind!r}")
    if impressions_N is None:
        return per_N.mean()
    w_N = impressions_N.to(per_N.dtype)
    if bool((w_N < 0).any()) or not float(w_N.sum()) > 0:
        raise ValueError("impressions: expected counts >= 0 with a positive sum")
    return (per_N * w_N).sum() / w_N.sum()


def last_token_index(mask_BS: torch.Tensor) -> torch.Tensor:
    """Per row, the index of its last non-pad position (mask 1 = real token); right or left padding."""
    m_BS = mask_BS.bool()
    if not bool(m_BS.any(dim=1).all()):
        raise ValueError("mask: every sequence needs at least one real token")
    pos_BS = torch.arange(m_BS.shape[1], device=m_BS.device).expand_as(m_BS)
    return torch.where(m_BS, pos_BS, torch.full_like(pos_BS, -1)).max(dim=1).values


class ScalarHead(nn.Module):
    """Reward head: hidden state of each sequence's last non-pad token → one scalar (nn.Linear(H, 1)).

    Init: weight ~ N(0, std²) with std = 1/sqrt(H + 1) unless given (0: a zero weight), bias 0 (scores start
    near 0); ``generator`` makes the init independent of the global RNG (e.g. of the pipeline layout)."""

    def __init__(self, hidden_size: int, *, seq_first: bool = False, dtype: torch.dtype | None = None,
                 std: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size: expected >= 1, got {hidden_size}")
        if std is not None and not std >= 0:
            raise ValueError(f"std: expected >= 0, got {std}")
        self.seq_first = seq_first
        self.proj = nn.Linear(hidden_size, 1, dtype=dtype)
        with torch.no_grad():
            w = torch.randn(self.proj.weight.shape, generator=generator, dtype=torch.float32)
            self.proj.weight.copy_(w * (1.0 / math.sqrt(hidden_size + 1) if std is None else std))
        nn.init.zeros_(self.proj.bias)

    def token_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """The score at every position, [B, S] (hidden [S, B, H] if seq_first else [B, S, H]): the readout
        ``forward`` takes at the last real token, for a caller that gathers it later."""
        h_BSH = hidden.transpose(0, 1) if self.seq_first else hidden
        return self.proj(h_BSH.to(self.proj.weight.dtype)).squeeze(-1)

    def forward(self, hidden: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
        """Scores [B] from hidden states ([S, B, H] if seq_first else [B, S, H]) and the pad mask [B, S]."""
        h_BSH = hidden.transpose(0, 1) if self.seq_first else hidden
        if h_BSH.shape[:2] != mask_BS.shape:
            raise ValueError(f"mask: expected shape {tuple(h_BSH.shape[:2])} (B, S), got {tuple(mask_BS.shape)}")
        idx_B = last_token_index(mask_BS)
        h_BH = h_BSH[torch.arange(h_BSH.shape[0], device=h_BSH.device), idx_B]
        return self.proj(h_BH.to(self.proj.weight.dtype)).squeeze(-1)


def gather_last(scores_BS: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
    """Each row's score at its last real token: [B] from per-position scores [B, S] and the pad mask."""
    if scores_BS.shape != mask_BS.shape:
        raise ValueError(f"mask: expected shape {tuple(scores_BS.shape)} (B, S), got {tuple(mask_BS.shape)}")
    idx_B = last_token_index(mask_BS.to(scores_BS.device))
    return scores_BS[torch.arange(scores_BS.shape[0], device=scores_BS.device), idx_B]


HEAD = "reward_head"
"""Attribute (and checkpoint key prefix) of the scalar head on a reward model's last pipeline stage."""


def _reward_postprocess(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``GPTModel._postprocess`` of a reward model's last stage: the per-position scores [B, S] of the final
    (normed) hidden states [S, B, H]; the LM output layer is not applied."""
    return getattr(self, HEAD).token_scores(hidden_states)


def attach_reward_head(chunk: nn.Module, hidden_size: int, *, last_stage: bool, std: float | None = None,
                       seed: int = 0, tied_embeddings: bool = False) -> ScalarHead | None:
    """Turn this rank's megatron-core ``GPTModel`` chunk into a reward model's chunk, in place.

    On the last pipeline stage: a ``ScalarHead`` becomes the submodule ``reward_head`` (so it is in the
    chunk's (sharded) state dict: checkpointed with the model, on the stage that owns it) and the chunk's
    post-processing returns per-position scores [B, S] instead of logits; the score of a sequence is read at
    its last real token by the loss (``gather_last``). The LM output layer stays (its weights load and save as
    before) but is unused, so it is frozen unless tied to the embedding (then its gradient sync across stages
    stays as megatron expects it). The head's init draws from its own generator seeded by ``seed``, so every
    layout starts from the same head. Other stages are unchanged (they pass hidden states on). Returns the
    head (None off the last stage). MTP layers are not supported (the caller refuses them)."""
    if not last_stage:
        return None
    head = ScalarHead(hidden_size, seq_first=True, std=std, generator=torch.Generator().manual_seed(seed))
    first = next(chunk.parameters(), None)
    if first is not None:
        head.to(device=first.device, dtype=first.dtype)
    setattr(chunk, HEAD, head)
    chunk._postprocess = MethodType(_reward_postprocess, chunk)
    out = getattr(chunk, "output_layer", None)
    if out is not None and getattr(out, "weight", None) is not None and not tied_embeddings:
        out.weight.requires_grad_(False)
    return head
