"""Reward-model math for RLPF / AdLlama (rlpf_adllama.txt; spec ``papers_spec.md`` §B.3, §C 27, 29): the
Bradley–Terry pairwise loss, pairwise accuracy, the pointwise CTR-regression baseline, the length penalty
(``rewards.perf.length_penalty``, re-exported) and the head that turns a backbone into a reward model (a scalar,
or C outputs per position: TPPO's token-level reward model, ``train.token_rm_loop``), and its frozen copies.

How it works
------------
- Bradley–Terry: P(y_w ≻ y_l) = σ(r_w − r_l), so L = −log σ(r_w − r_l) = softplus(r_l − r_w), averaged over
  pairs (``bt_loss``). Equal scores give ln 2; ∂L/∂r_w = −σ(r_l − r_w) per pair (before the mean).
- ``pairwise_accuracy``: the share of pairs with r_w > r_l (a tie counts ½: a constant scorer gets 0.5).
- ``pointwise_loss``: the baseline the paper found worse at ranking similar texts — regress each text's
  observed CTR from its score: ``bce`` (default) = binary cross-entropy of σ(score) against the CTR, weighted
  by impressions when given (the same loss as one BCE term per impression, as ``rewards.ctr``), or ``mse``
  = (score − CTR)² on the raw score.
- ``ScalarHead``: a linear map hidden → ``num_outputs`` (default 1: a scalar) applied to the hidden state of
  each sequence's last non-pad token (the usual RM readout of a causal backbone: the last token has attended
  to the whole text), or at every position (``token_scores``). It takes megatron-core's sequence-first
  [S, B, H] (``seq_first=True``) or batch-first [B, S, H] states. With num_outputs C > 1 it is the token
  classifier of TPPO's token-level reward model (C = 3 classes, ``train.tppo``): per-position logits.
- ``attach_reward_head``: the head inside a megatron-core GPTModel chunk (on the last pipeline stage, in its
  state dict) whose post-processing returns per-position scores [B, S] (num_outputs 1) or logits [B, S, C]
  (num_outputs C > 1); ``gather_last`` reads each sequence's score at its last real token (the same value as
  ``ScalarHead.forward``: the head is applied row-wise).

Frozen copies (a reward model another trainer reads, e.g. GRPO): build the chunk as the trainer does
(``model.build.build_model_chunk``), then ``attach_reward_head(chunk, hidden, last_stage=..., num_outputs=C)``
and ``train.ckpt.load_model_weights(chunk, train.ckpt.resolve(run_dir))`` (``frozen_reward_chunk`` does all three
and freezes the result): the head's tensors are
``reward_head.proj.weight`` [C, H] and ``reward_head.proj.bias`` [C] on the last stage, loaded with the rest
(any pipeline layout). C is read from a checkpoint by ``saved_head_outputs`` (the shape of the saved weight;
``train rm`` also records ``{"kind", "num_outputs"}`` under ``reward_head`` in the checkpoint's common state,
and ``rm.kind`` is in its config.yaml): 1 for ``rm.kind=pair``, 3 for ``rm.kind=token``.

Shapes: P pairs, N texts, B sequences, S positions, H hidden size, C head outputs.
"""

from __future__ import annotations

import math
from types import MethodType
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from megatron_ads.rewards.perf import length_penalty

__all__ = ["HEAD", "PointwiseKind", "ScalarHead", "attach_reward_head", "bt_loss", "frozen_reward_chunk", "gather_last",
           "last_token_index", "length_penalty", "pairwise_accuracy", "pointwise_loss", "saved_head_outputs"]

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
    """Reward head: hidden state of each sequence's last non-pad token → one scalar (nn.Linear(H, 1)), or
    ``num_outputs`` C values (nn.Linear(H, C): a token classifier's logits when read at every position).

    Init: weight ~ N(0, std²) with std = 1/sqrt(H + 1) unless given (0: a zero weight), bias 0 (scores start
    near 0); ``generator`` makes the init independent of the global RNG (e.g. of the pipeline layout)."""

    def __init__(self, hidden_size: int, *, seq_first: bool = False, dtype: torch.dtype | None = None,
                 std: float | None = None, generator: torch.Generator | None = None, num_outputs: int = 1):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size: expected >= 1, got {hidden_size}")
        if isinstance(num_outputs, bool) or not isinstance(num_outputs, int) or num_outputs < 1:
            raise ValueError(f"num_outputs: expected an integer >= 1, got {num_outputs!r}")
        if std is not None and not std >= 0:
            raise ValueError(f"std: expected >= 0, got {std}")
        self.seq_first = seq_first
        self.num_outputs = num_outputs
        self.proj = nn.Linear(hidden_size, num_outputs, dtype=dtype)
        with torch.no_grad():
            w = torch.randn(self.proj.weight.shape, generator=generator, dtype=torch.float32)
            self.proj.weight.copy_(w * (1.0 / math.sqrt(hidden_size + 1) if std is None else std))
        nn.init.zeros_(self.proj.bias)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return x.squeeze(-1) if self.num_outputs == 1 else x

    def token_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """The score at every position, [B, S] (num_outputs 1) or [B, S, C] (hidden [S, B, H] if seq_first else
        [B, S, H]): the readout ``forward`` takes at the last real token, for a caller that gathers it later."""
        h_BSH = hidden.transpose(0, 1) if self.seq_first else hidden
        return self._out(self.proj(h_BSH.to(self.proj.weight.dtype)))

    def forward(self, hidden: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
        """Scores [B] ([B, C] with num_outputs C > 1) from hidden states ([S, B, H] if seq_first else [B, S, H])
        and the pad mask [B, S]."""
        h_BSH = hidden.transpose(0, 1) if self.seq_first else hidden
        if h_BSH.shape[:2] != mask_BS.shape:
            raise ValueError(f"mask: expected shape {tuple(h_BSH.shape[:2])} (B, S), got {tuple(mask_BS.shape)}")
        idx_B = last_token_index(mask_BS)
        h_BH = h_BSH[torch.arange(h_BSH.shape[0], device=h_BSH.device), idx_B]
        return self._out(self.proj(h_BH.to(self.proj.weight.dtype)))


def gather_last(scores_BS: torch.Tensor, mask_BS: torch.Tensor) -> torch.Tensor:
    """Each row's score at its last real token: [B] from per-position scores [B, S] and the pad mask."""
    if scores_BS.shape != mask_BS.shape:
        raise ValueError(f"mask: expected shape {tuple(scores_BS.shape)} (B, S), got {tuple(mask_BS.shape)}")
    idx_B = last_token_index(mask_BS.to(scores_BS.device))
    return scores_BS[torch.arange(scores_BS.shape[0], device=scores_BS.device), idx_B]


HEAD = "reward_head"
"""Attribute (and checkpoint key prefix) of the reward head on a reward model's last pipeline stage."""


def _reward_postprocess(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``GPTModel._postprocess`` of a reward model's last stage: the per-position scores [B, S] (logits
    [B, S, C] for a C-output head) of the final (normed) hidden states [S, B, H]; the LM output layer is not
    applied."""
    return getattr(self, HEAD).token_scores(hidden_states)


def attach_reward_head(chunk: nn.Module, hidden_size: int, *, last_stage: bool, num_outputs: int = 1,
                       std: float | None = None, seed: int = 0, tied_embeddings: bool = False) -> ScalarHead | None:
    """Turn this rank's megatron-core ``GPTModel`` chunk into a reward model's chunk, in place.

    On the last pipeline stage: a ``ScalarHead`` with ``num_outputs`` outputs becomes the submodule
    ``reward_head`` (so it is in the chunk's (sharded) state dict, keys ``reward_head.proj.weight`` [C, H] and
    ``reward_head.proj.bias`` [C]: checkpointed with the model, on the stage that owns it) and the chunk's
    post-processing returns per-position scores [B, S] (num_outputs 1) or logits [B, S, C] (C > 1, e.g. TPPO's
    3-class token reward model) instead of LM logits; a sequence's scalar score is read at its last real token
    by the loss (``gather_last``). The LM output layer stays (its weights load and save as before) but is
    unused, so it is frozen unless tied to the embedding (then its gradient sync across stages stays as
    megatron expects it). The head's init draws from its own generator seeded by ``seed``, so every layout
    starts from the same head. Other stages are unchanged (they pass hidden states on). Returns the head (None
    off the last stage). MTP layers are not supported (the caller refuses them)."""
    if not last_stage:
        return None
    head = ScalarHead(hidden_size, seq_first=True, std=std, generator=torch.Generator().manual_seed(seed),
                      num_outputs=num_outputs)
    first = next(chunk.parameters(), None)
    if first is not None:
        head.to(device=first.device, dtype=first.dtype)
    setattr(chunk, HEAD, head)
    chunk._postprocess = MethodType(_reward_postprocess, chunk)
    out = getattr(chunk, "output_layer", None)
    if out is not None and getattr(out, "weight", None) is not None and not tied_embeddings:
        out.weight.requires_grad_(False)
    return head


def saved_head_outputs(ckpt_dir) -> int | None:
    """The number of outputs C of the reward head a torch_dist checkpoint holds (the first dim of its saved
    ``reward_head.proj.weight``; reads the metadata only, no collectives), or None when it holds no head (an
    LM or SFT checkpoint). ``ckpt_dir``: a step directory (``train.ckpt.resolve`` resolves a run's root)."""
    from megatron.core import dist_checkpointing  # heavy: megatron-core at use

    meta = dist_checkpointing.load_tensors_metadata(str(ckpt_dir))
    w = meta.get(f"{HEAD}.proj.weight")
    return None if w is None else int(w.global_shape[0])


def frozen_reward_chunk(run_dir, cfg, par, *, dtype: str = "fp32", device: str = "cpu", experts: str | None = None,
                        last_stage: bool = True):
    """Collective: a frozen reward model of ``train rm``'s checkpoint ``run_dir`` (a run directory, its
    ``checkpoints/`` or a step directory; the newest complete checkpoint) for this rank: the megatron-core chunk of
    ``cfg`` under ``par`` (parallel state initialized; ``cfg`` the backbone the reward model was trained on, e.g.
    ``checkpoint.megatron_io.read_layout(step_dir).cfg``), the saved head's outputs C attached on the last stage
    (``last_stage``), every weight loaded (resharded to this layout), eval mode, no grad. Returns (chunk, C); the
    chunk's forward returns scores [B, S] (C = 1) or logits [B, S, C] on the last stage."""
    from megatron_ads.model.build import build_model_chunk, transformer_config
    from megatron_ads.model.specs import use_te_default
    from megatron_ads.train import ckpt

    src = ckpt.resolve(run_dir)
    n = saved_head_outputs(src)
    if n is None:
        from megatron_ads.checkpoint.hf_io import CheckpointError

        raise CheckpointError(f"{src}: holds no {HEAD}.proj.weight: not a reward-model checkpoint (train rm)")
    tconfig = transformer_config(cfg, par, dtype=dtype, device=device, calculate_per_token_loss=False)
    chunk = build_model_chunk(cfg, par, dtype=dtype, device=device, use_te=use_te_default(device), tconfig=tconfig,
                              experts=experts)
    attach_reward_head(chunk, cfg.hidden_size, last_stage=last_stage, num_outputs=n)
    ckpt.load_model_weights(chunk, src)
    for p in chunk.parameters():
        p.requires_grad_(False)
    return chunk.eval(), n
