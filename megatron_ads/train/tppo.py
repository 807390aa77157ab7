"""TPPO math (tppo.txt; spec ``papers_spec.md`` §B.1, §C 14–20): the token-level reward model (labels, class
balance, local + global loss, per-token reward), the length-weighted penalty, and token-level PPO (GAE,
clipped value loss, the policy loss of ``train.grpo``).

Pure torch, no megatron-core: the trainer calls these on the last pipeline stage's per-token tensors.

How it works
------------
Token-level reward model (§3.2–3.3). Classes: 0 = masked/separator, 1 = irrelevant, 2 = relevant.

1. ``word_token_labels``: a judge labels *words* of a response; every sub-token inherits its word's class
   (via the tokenizer's character offsets). Tokens that touch no labeled word (commas, tags, newlines),
   prompt tokens and padding get class 0. A judge's 0/1 relevance maps to class 1/2 (``JUDGE_TO_CLASS``).
2. ``balance_mask``: the valid set 𝒱 = response tokens, minus a uniformly random subset of the majority
   class among {1, 2} so that #2 / #1 ∈ [1/max_ratio, max_ratio] over the batch (exactly: the kept count is
   ⌊max_ratio · minority⌋; a batch without the minority class keeps none of the majority). Class-0 tokens
   are never dropped.
3. ``token_rm_loss``: L = w·L_local + (1 − w)·L_global, w default 0.5 (§5.1: 0.4–0.6 is best), with
       L_local  = class-weighted CE against the *gold* label on 𝒱 (Eq. 1; the paper's 1[R_φ = c] read as the
                  gold label): token_mean = Σ_𝒱 w_y·(−log P(y)) / |𝒱| (with w_c = 1 the standard CE), or
                  per_seq_sum = that sum / n sequences (Eq. 1 literally);
       L_global = mean over sequences of ( mean_t E_t − R_global )² with the soft expected class value
                  E_t = Σ_c c·P(c) in place of Eq. 2's argmax (not differentiable). The mean runs over the
                  sequence's 𝒱 tokens with a gold label in {1, 2} (global_tokens="labeled", the default: on
                  R_global's {1, 2} scale; separators kept in 𝒱 would otherwise pull the mean below 1), or over
                  all of 𝒱 ("valid", Eq. 2 literally). Sequences with no such token are left out.
4. ``token_reward_from_probs``: r = P(2) − P(1) ("prob_diff", default) or the argmax mapped 1 → −1, 2 → +1
   ("class_map"); tokens whose argmax is class 0, and tokens outside the mask, get 0.

Length-weighted penalty (Eq. 4–5): lwp(l) = 1/(1 + exp(α(l − s_l) − 6)) = sigmoid(6 − α(l − s_l)), l the
1-based position of the token in the response; R'_t = lwp(l)·R_t (``apply_lwp``). lwp(s_l) = 0.99753 and
lwp = 0.5 at l = s_l + 6/α. Multiplying shrinks late *negative* rewards towards 0 too: length control comes
from removing positive reward, not from a penalty. s_l default: the 0.9-quantile of SFT response lengths
(``suggested_length``).

Token-level PPO (§3.4, Eq. 6–9):
5. Per-token rewards R'_t − β·KL_t (``shaped_rewards``, kl_mode="reward", standard PPO-RLHF) or the KL as a
   loss term (kl_mode="loss", as GRPO). The ratio is against the rollout policy π_old; the KL against the
   frozen SFT reference π_ref (the spec's reading of Eq. 7's π_ref).
6. ``gae``: δ_t = R_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, returns = A + V, with V and A taken as 0
   after the last response token (γ = 1, λ = 0.95 by default); ``masked_whiten`` normalizes advantages.
7. ``tppo_loss``: the PPO-clip policy loss (``grpo.policy_loss``), the clipped value loss (``value_loss``),
   an optional KL term, aggregated with ``grpo.aggregate_loss``.
8. ``optimal_policy`` (Eq. 9, Lemma 3.1): π*(a|s) = π_ref(a|s)·exp(A/β) / Z(s; β) — the target the KL-
   regularized objective (Eq. 8) converges to; a check, not a training step.

Shapes: B sequences, T positions (right-padded), C = 3 classes, V actions (vocabulary). ``mask_BT`` /
``valid_BT`` are 1 on response tokens that count, 0 on prompt and padding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from megatron_ads.config.train import KlEstimator
from megatron_ads.train.grpo import aggregate_loss, kl_penalty, masked_fraction, policy_loss

__all__ = ["CLASS_IRRELEVANT", "CLASS_MASKED", "CLASS_RELEVANT", "JUDGE_TO_CLASS", "NUM_CLASSES", "RMLoss",
           "TPPOLoss", "TPPOSpec", "apply_lwp", "balance_mask", "expected_class_value", "gae", "lwp",
           "masked_whiten", "optimal_policy", "response_positions", "sentence_to_token_rewards",
           "shaped_rewards", "split_words", "suggested_length", "token_reward_from_probs", "token_rm_loss",
           "tppo_loss", "value_loss", "word_token_labels"]

NUM_CLASSES = 3
CLASS_MASKED, CLASS_IRRELEVANT, CLASS_RELEVANT = 0, 1, 2
JUDGE_TO_CLASS = {0: CLASS_IRRELEVANT, 1: CLASS_RELEVANT}
"""The judge's binary word relevance (App. B prompt: 0/1) → reward-model class (spec §B.1 default)."""

GlobalTokens = Literal["labeled", "valid"]
LocalReduction = Literal["token_mean", "per_seq_sum"]
TokenReward = Literal["prob_diff", "class_map"]
KlMode = Literal["reward", "loss"]
_WORD = re.compile(r"[\w']+")


# ----------------------------------------------------------------------------------------------------------
# Hyperparameters
# ----------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True, slots=True)
class TPPOSpec:
    """TPPO hyperparameters (defaults: the paper where it gives them, else spec §B.1's [DEFAULT]s)."""

    alpha: float = 1.0
    """lwp penalty intensity α (Eq. 4; §5.2: 0.5 is too weak, 1.0 bounds the length). >= 0."""
    suggested_length: float | None = None
    """s_l in tokens (Eq. 4); None: the ``suggested_length_quantile`` of the SFT response lengths."""
    suggested_length_quantile: float = 0.9
    """Quantile of the SFT response lengths used for s_l when ``suggested_length`` is None, in (0, 1]."""
    local_weight: float = 0.5
    """w: L = w·L_local + (1 − w)·L_global (§5.1: 0.4–0.6 best), in [0, 1]."""
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """w_c of the local CE for classes 0, 1, 2 (not given by the paper), each >= 0, not all 0."""
    local_reduction: LocalReduction = "token_mean"
    """L_local normalization: token_mean (over 𝒱) or per_seq_sum (Eq. 1 literally: Σ over 𝒱 / n)."""
    global_tokens: GlobalTokens = "labeled"
    """Tokens of the per-sequence mean in L_global: labeled (𝒱 ∩ gold class in {1, 2}) or valid (all 𝒱)."""
    balance_max_ratio: float = 3.0
    """Class balance: #label2 / #label1 kept within [1/r, r] (paper: about 1:3 to 3:1). >= 1."""
    token_reward: TokenReward = "prob_diff"
    """Per-token PPO reward from the RM: prob_diff (P(2) − P(1)) or class_map (argmax 1 → −1, 2 → +1)."""
    gamma: float = 1.0
    """GAE discount γ, in [0, 1]."""
    lam: float = 0.95
    """GAE λ, in [0, 1]."""
    clip_eps: float = 0.2
    """PPO ratio clip ε (Eq. 6), in [0, 1)."""
    value_clip: float | None = 0.2
    """Clip of the value update around the rollout values (None: unclipped value loss). > 0."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (TRL's PPO default). >= 0."""
    kl_beta: float = 0.05
    """β: KL(π_θ‖π_ref) coefficient (Eq. 8; not given by the paper; TRL's default). >= 0."""
    kl_mode: KlMode = "reward"
    """reward: −β·KL_t added to the per-token rewards before GAE (PPO-RLHF); loss: β·KL_t in the loss."""
    kl_estimator: KlEstimator = "k1"
    """Per-token KL estimator (``grpo.kl_penalty``): k1, k2 or k3."""
    whiten_advantages: bool = True
    """Normalize the advantages to mean 0, std 1 over the batch's response tokens."""

    def __post_init__(self):
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"tppo.{name}: expected {expected}, got {getattr(self, name)!r}")

        for name, kind in (("local_reduction", LocalReduction), ("global_tokens", GlobalTokens),
                           ("token_reward", TokenReward), ("kl_mode", KlMode), ("kl_estimator", KlEstimator)):
            if getattr(self, name) not in get_args(kind):
                raise bad(name, f"one of {', '.join(get_args(kind))}")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise bad("alpha", "a finite number >= 0")
        if self.suggested_length is not None and not (math.isfinite(self.suggested_length)
                                                      and self.suggested_length > 0):
            raise bad("suggested_length", "null (from the SFT lengths) or a number > 0")
        if not 0.0 < self.suggested_length_quantile <= 1.0:
            raise bad("suggested_length_quantile", "a quantile in (0, 1]")
        for name in ("local_weight", "gamma", "lam"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise bad(name, "a number in [0, 1]")
        cw = tuple(self.class_weights)
        if len(cw) != NUM_CLASSES or any(not (math.isfinite(w) and w >= 0) for w in cw) or not any(cw):
            raise bad("class_weights", "3 finite weights >= 0 (classes 0, 1, 2), not all 0")
        if not self.balance_max_ratio >= 1.0:
            raise bad("balance_max_ratio", "a ratio >= 1")
        if not 0.0 <= self.clip_eps < 1.0:
            raise bad("clip_eps", "a number in [0, 1)")
        if self.value_clip is not None and not self.value_clip > 0:
            raise bad("value_clip", "null (unclipped) or a number > 0")
        for name in ("vf_coef", "kl_beta"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise bad(name, "a finite number >= 0")


# ----------------------------------------------------------------------------------------------------------
# Length-weighted penalty (Eq. 4–5)
# ----------------------------------------------------------------------------------------------------------

def lwp(l, s_l: float, alpha: float = 1.0):
    """Eq. 4: lwp(l) = 1/(1 + exp(α(l − s_l) − 6)), computed as sigmoid(6 − α(l − s_l)).

    Args: l (position, float or tensor), s_l (suggested length), alpha (>= 0). Returns: float or tensor."""
    if not alpha >= 0:
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    if isinstance(l, torch.Tensor):
        return torch.sigmoid(6.0 - alpha * ((l if l.is_floating_point() else l.float()) - s_l))
    x = 6.0 - alpha * (float(l) - s_l)
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def response_positions(mask_BT: torch.Tensor) -> torch.Tensor:
    """l per token: 1, 2, ... over the masked (response) tokens of each row, 0 elsewhere (long [B, T])."""
    m_BT = mask_BT.bool()
    return torch.cumsum(m_BT.long(), dim=1) * m_BT


def apply_lwp(rewards_BT: torch.Tensor, mask_BT: torch.Tensor, s_l: float, alpha: float = 1.0) -> torch.Tensor:
    """Eq. 5: R'_t = lwp(l_t)·R_t with l_t the token's 1-based response position; 0 outside the mask."""
    if rewards_BT.shape != mask_BT.shape:
        raise ValueError(f"mask_BT: expected shape {tuple(rewards_BT.shape)}, got {tuple(mask_BT.shape)}")
    w_BT = lwp(response_positions(mask_BT).float(), s_l, alpha)
    return rewards_BT * w_BT * mask_BT.to(w_BT.dtype)


def suggested_length(lengths: Sequence[int] | torch.Tensor, quantile: float = 0.9) -> float:
    """s_l default: the ``quantile`` of the SFT response lengths (tokens; linear interpolation)."""
    x = torch.as_tensor(lengths, dtype=torch.float64).flatten()
    if x.numel() == 0:
        raise ValueError("lengths: expected at least one SFT response length, got none")
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile: expected (0, 1], got {quantile}")
    return float(torch.quantile(x, quantile))


# ----------------------------------------------------------------------------------------------------------
# Token labels and class balance (§3.2–3.3)
# ----------------------------------------------------------------------------------------------------------

def split_words(text: str, labels: Sequence[int] | None = None) -> list[tuple[int, int, int]]:
    """Word spans ``(start, end, label)`` of ``text`` (words = runs of ``[\\w']``), labels in word order
    (None: all 0). The input ``word_token_labels`` takes."""
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    if labels is None:
        labels = [CLASS_MASKED] * len(spans)
    if len(labels) != len(spans):
        raise ValueError(f"labels: expected one per word ({len(spans)} in {text!r}), got {len(labels)}")
    return [(s, e, int(c)) for (s, e), c in zip(spans, labels)]


def word_token_labels(tokenizer, response: str, word_spans: Sequence[tuple[int, int, int]], *,
                      prompt_ids: Sequence[int] | None = None, add_eos: bool = False,
                      pad_to: int | None = None) -> tuple[list[int], list[int]]:
    """Token ids and classes of ``response`` (tokenized alone, no special tokens, as SFT encodes targets).

    Each token takes the class of the first word span it overlaps (by character offsets; a word split into
    sub-tokens gives every sub-token its class); tokens overlapping none (separators, tags, whitespace) get 0.
    ``prompt_ids`` (prepended), the EOS (``add_eos``) and padding up to ``pad_to`` (pad token) get 0.

    Args: tokenizer (a transformers fast tokenizer, e.g. ``data.tokenizer.train_bpe_tokenizer``), response,
    word_spans ((start, end, class) in ``response``, class in {0, 1, 2}; ``split_words`` builds them).
    Returns: (ids, classes), equal lengths.
    """
    spans = sorted(word_spans)
    for s, e, c in spans:
        if c not in (CLASS_MASKED, CLASS_IRRELEVANT, CLASS_RELEVANT) or not 0 <= s < e <= len(response):
            raise ValueError(f"word_spans: expected (start, end, class) with 0 <= start < end <= {len(response)} "
                             f"and class in 0/1/2, got {(s, e, c)}")
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = []
    for a, b in offsets:
        cls = CLASS_MASKED
        if b > a:
            for s, e, c in spans:
                if s >= b:
                    break
                if e > a:
                    cls = c
                    break
        labels.append(cls)
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError("add_eos: the tokenizer has no eos_token_id")
        ids.append(tokenizer.eos_token_id)
        labels.append(CLASS_MASKED)
    if prompt_ids is not None:
        ids = list(prompt_ids) + ids
        labels = [CLASS_MASKED] * len(prompt_ids) + labels
    if pad_to is not None:
        if pad_to < len(ids):
            raise ValueError(f"pad_to: expected >= {len(ids)} (the sequence length), got {pad_to}")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids += [pad] * (pad_to - len(ids))
        labels += [CLASS_MASKED] * (pad_to - len(labels))
    return ids, labels


def balance_mask(labels_BT: torch.Tensor, valid_BT: torch.Tensor, *, max_ratio: float = 3.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """The valid set 𝒱 (bool [B, T]): ``valid_BT`` minus a uniformly random subset of the majority class
    among {1, 2}, keeping ⌊max_ratio·n_minority⌋ of it, so that #2/#1 ∈ [1/max_ratio, max_ratio] over the
    batch. Class-0 valid tokens are always kept. Deterministic given ``generator``'s state."""
    if not max_ratio >= 1.0:
        raise ValueError(f"max_ratio: expected >= 1, got {max_ratio}")
    if labels_BT.shape != valid_BT.shape:
        raise ValueError(f"valid_BT: expected shape {tuple(labels_BT.shape)}, got {tuple(valid_BT.shape)}")
    keep_BT = valid_BT.bool().clone()
    n1 = int((keep_BT & (labels_BT == CLASS_IRRELEVANT)).sum())
    n2 = int((keep_BT & (labels_BT == CLASS_RELEVANT)).sum())
    major, n_major, n_minor = (CLASS_RELEVANT, n2, n1) if n2 > n1 else (CLASS_IRRELEVANT, n1, n2)
    k = min(n_major, math.floor(max_ratio * n_minor))
    if k < n_major:
        idx = (keep_BT & (labels_BT == major)).flatten().nonzero().squeeze(1)
        drop = idx[torch.randperm(n_major, generator=generator)[k:]]
        keep_BT.view(-1)[drop] = False
    return keep_BT


# ----------------------------------------------------------------------------------------------------------
# Reward-model loss and per-token reward
# ----------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True, slots=True)
class RMLoss:
    """The token reward model's loss and its parts."""

    total: torch.Tensor
    """w·L_local + (1 − w)·L_global."""
    local: torch.Tensor
    """L_local (Eq. 1, gold label, class-weighted CE)."""
    global_: torch.Tensor
    """L_global (Eq. 2 with the soft expected class value)."""
    mean_value_B: torch.Tensor
    """Per sequence: the mean soft class value over its L_global tokens (NaN where there are none)."""


def expected_class_value(logits_BTC: torch.Tensor) -> torch.Tensor:
    """E_t = Σ_c c·P(c) (the soft stand-in for Eq. 2's argmax), [B, T]."""
    p_BTC = torch.softmax(logits_BTC.float(), dim=-1)
    return p_BTC @ torch.arange(logits_BTC.shape[-1], dtype=p_BTC.dtype, device=p_BTC.device)


def token_rm_loss(logits_BTC: torch.Tensor, labels_BT: torch.Tensor, valid_BT: torch.Tensor,
                  r_global_B: torch.Tensor, *, local_weight: float = 0.5,
                  class_weights: Sequence[float] | None = None, local_reduction: LocalReduction = "token_mean",
                  global_tokens: GlobalTokens = "labeled") -> RMLoss:
    """Eq. 1–3: L = w·L_local + (1 − w)·L_global over the valid set 𝒱 (``valid_BT``, e.g. ``balance_mask``).

    Args: logits_BTC (3 classes), labels_BT (gold class), valid_BT, r_global_B (sentence reward on the {1, 2}
    class scale), local_weight w, class_weights (w_c, default 1), local_reduction, global_tokens (see the
    module docstring). Returns: RMLoss (scalars; tokens outside 𝒱 contribute nothing).
    """
    if not 0.0 <= local_weight <= 1.0:
        raise ValueError(f"local_weight: expected [0, 1], got {local_weight}")
    if logits_BTC.shape[:-1] != labels_BT.shape or valid_BT.shape != labels_BT.shape:
        raise ValueError(f"labels_BT/valid_BT: expected shape {tuple(logits_BTC.shape[:-1])}, "
                         f"got {tuple(labels_BT.shape)}/{tuple(valid_BT.shape)}")
    C = logits_BTC.shape[-1]
    v_BT = valid_BT.bool()
    w_C = torch.ones(C) if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    w_C = w_C.to(logits_BTC.device)
    if w_C.shape != (C,):
        raise ValueError(f"class_weights: expected {C} weights, got {list(w_C.shape)}")
    logp_BTC = torch.log_softmax(logits_BTC.float(), dim=-1)
    y_BT = torch.where(v_BT, labels_BT.long(), torch.zeros_like(labels_BT, dtype=torch.long))
    nll_BT = -logp_BTC.gather(-1, y_BT.unsqueeze(-1)).squeeze(-1) * w_C[y_BT]
    nll_BT = torch.where(v_BT, nll_BT, torch.zeros_like(nll_BT))
    if local_reduction == "token_mean":
        local = nll_BT.sum() / max(int(v_BT.sum()), 1)
    elif local_reduction == "per_seq_sum":
        local = nll_BT.sum() / max(labels_BT.shape[0], 1)
    else:
        raise ValueError(f"local_reduction: expected token_mean or per_seq_sum, got {local_reduction!r}")
    if global_tokens == "labeled":
        g_BT = v_BT & ((labels_BT == CLASS_IRRELEVANT) | (labels_BT == CLASS_RELEVANT))
    elif global_tokens == "valid":
        g_BT = v_BT
    else:
        raise ValueError(f"global_tokens: expected labeled or valid, got {global_tokens!r}")
    e_BT = expected_class_value(logits_BTC)
    n_B = g_BT.sum(dim=1)
    mean_B = torch.where(g_BT, e_BT, torch.zeros_like(e_BT)).sum(dim=1) / n_B.clamp_min(1)
    has_B = n_B > 0
    sq_B = (mean_B - r_global_B.to(mean_B.dtype)) ** 2
    glob = sq_B[has_B].sum() / max(int(has_B.sum()), 1)
    total = local_weight * local + (1.0 - local_weight) * glob
    nan_B = torch.full_like(mean_B, math.nan)
    return RMLoss(total=total, local=local, global_=glob, mean_value_B=torch.where(has_B, mean_B, nan_B).detach())


def token_reward_from_probs(probs_BTC: torch.Tensor, mask_BT: torch.Tensor | None = None,
                            kind: TokenReward = "prob_diff") -> torch.Tensor:
    """Per-token PPO reward from the RM's class probabilities: prob_diff r = P(2) − P(1), class_map
    argmax 1 → −1, 2 → +1. Tokens whose argmax is class 0, or outside ``mask_BT``, get 0."""
    top_BT = probs_BTC.argmax(dim=-1)
    if kind == "prob_diff":
        r_BT = probs_BTC[..., CLASS_RELEVANT] - probs_BTC[..., CLASS_IRRELEVANT]
    elif kind == "class_map":
        r_BT = (top_BT == CLASS_RELEVANT).to(probs_BTC.dtype) - (top_BT == CLASS_IRRELEVANT).to(probs_BTC.dtype)
    else:
        raise ValueError(f"token_reward: expected prob_diff or class_map, got {kind!r}")
    keep_BT = top_BT != CLASS_MASKED
    if mask_BT is not None:
        keep_BT = keep_BT & mask_BT.bool()
    return torch.where(keep_BT, r_BT, torch.zeros_like(r_BT))


# ----------------------------------------------------------------------------------------------------------
# Token-level PPO
# ----------------------------------------------------------------------------------------------------------

def optimal_policy(ref_probs_V: torch.Tensor, adv_V: torch.Tensor, beta: float) -> torch.Tensor:
    """Eq. 9: π*(a|s) = π_ref(a|s)·exp(A(s,a)/β) / Z(s; β) over the last dim (computed in log space;
    β = inf gives π_ref)."""
    if not beta > 0:
        raise ValueError(f"beta: expected > 0, got {beta}")
    logits_V = torch.log(ref_probs_V.double()) + adv_V.double() / beta
    return torch.softmax(logits_V, dim=-1).to(ref_probs_V.dtype)


def sentence_to_token_rewards(r_B: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """The sentence-level PPO baseline: each sequence's reward on its last masked token, 0 elsewhere."""
    m_BT = mask_BT.bool()
    pos_BT = torch.arange(m_BT.shape[1]).expand_as(m_BT)
    last_B = torch.where(m_BT, pos_BT, torch.full_like(pos_BT, -1)).max(dim=1).values
    out_BT = torch.zeros(m_BT.shape, dtype=torch.float32)
    rows = (last_B >= 0).nonzero().squeeze(1)
    out_BT[rows, last_B[rows]] = r_B.float()[rows]
    return out_BT


def shaped_rewards(token_rewards_BT: torch.Tensor, mask_BT: torch.Tensor, *, kl_BT: torch.Tensor | None = None,
                   kl_beta: float = 0.0) -> torch.Tensor:
    """Per-token PPO rewards R_t − β·KL_t on masked tokens, 0 elsewhere (KL detached: a reward, not a loss)."""
    r_BT = token_rewards_BT.float()
    if kl_BT is not None and kl_beta:
        r_BT = r_BT - kl_beta * kl_BT.detach().float()
    return r_BT * mask_BT.float()


def gae(rewards_BT: torch.Tensor, values_BT: torch.Tensor, mask_BT: torch.Tensor, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's masked tokens (right-padded; a masked-out next
    position is terminal: V and A there count as 0).

        δ_t = R_t + γ·m_{t+1}·V_{t+1} − V_t;   A_t = δ_t + γλ·m_{t+1}·A_{t+1};   returns_t = A_t + V_t

    Returns (advantages_BT, returns_BT), float32, 0 outside the mask; both detached."""
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma/lam: expected [0, 1], got {gamma}/{lam}")
    if not rewards_BT.shape == values_BT.shape == mask_BT.shape:
        raise ValueError(f"rewards/values/mask: expected one shape, got {tuple(rewards_BT.shape)}/"
                         f"{tuple(values_BT.shape)}/{tuple(mask_BT.shape)}")
    m_BT = mask_BT.float()
    r_BT = rewards_BT.detach().float() * m_BT
    v_BT = values_BT.detach().float() * m_BT
    B, T = r_BT.shape
    adv_BT = torch.zeros(B, T)
    next_adv_B, next_v_B, next_m_B = torch.zeros(B), torch.zeros(B), torch.zeros(B)
    for t in reversed(range(T)):
        delta_B = r_BT[:, t] + gamma * next_m_B * next_v_B - v_BT[:, t]
        adv_BT[:, t] = delta_B + gamma * lam * next_m_B * next_adv_B
        next_adv_B, next_v_B, next_m_B = adv_BT[:, t], v_BT[:, t], m_BT[:, t]
    adv_BT = adv_BT * m_BT
    return adv_BT, (adv_BT + v_BT) * m_BT


def masked_whiten(x_BT: torch.Tensor, mask_BT: torch.Tensor, *, eps: float = 1e-8) -> torch.Tensor:
    """(x − mean)/sqrt(var + eps) over the masked entries (population variance), 0 elsewhere."""
    m_BT = mask_BT.bool()
    n = int(m_BT.sum())
    if n == 0:
        return torch.zeros_like(x_BT)
    vals = x_BT[m_BT]
    mean, var = vals.mean(), vals.var(unbiased=False)
    return torch.where(m_BT, (x_BT - mean) / torch.sqrt(var + eps), torch.zeros_like(x_BT))


def value_loss(values_BT: torch.Tensor, old_values_BT: torch.Tensor, returns_BT: torch.Tensor, *,
               clip: float | None = 0.2) -> torch.Tensor:
    """Per-token clipped value loss ½·max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±clip)
    (clip None: ½(V − R)²). Unmasked: aggregate with the mask. old values and returns are detached."""
    ret_BT, old_BT = returns_BT.detach(), old_values_BT.detach()
    loss_BT = (values_BT - ret_BT) ** 2
    if clip is not None:
        if not clip > 0:
            raise ValueError(f"clip: expected None or > 0, got {clip}")
        v_clip_BT = old_BT + torch.clamp(values_BT - old_BT, -clip, clip)
        loss_BT = torch.maximum(loss_BT, (v_clip_BT - ret_BT) ** 2)
    return 0.5 * loss_BT


@dataclass(kw_only=True, slots=True)
class TPPOLoss:
    """One micro-batch's token-level PPO loss and its parts (scalars) plus metrics."""

    total: torch.Tensor
    """policy + vf_coef·value (+ β·KL with kl_mode="loss")."""
    policy: torch.Tensor
    value: torch.Tensor
    kl: torch.Tensor
    """Mean per-token KL estimate (0 without a reference)."""
    clip_frac: float
    """Share of response tokens where the ratio clip binds."""


def tppo_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_BT: torch.Tensor, values_BT: torch.Tensor,
              old_values_BT: torch.Tensor, returns_BT: torch.Tensor, mask_BT: torch.Tensor, *,
              spec: TPPOSpec | None = None, ref_logp_BT: torch.Tensor | None = None,
              num_tokens: float | None = None) -> TPPOLoss:
    """Eq. 6–7 with a critic: PPO-clip (``grpo.policy_loss``, ratio against π_old) + vf_coef·clipped value
    loss (+ β·KL to π_ref with kl_mode="loss"), token_mean over the mask (``num_tokens``: the global count)."""
    spec = spec or TPPOSpec()
    pl = policy_loss(logp_BT, old_logp_BT, adv_BT, eps_low=spec.clip_eps, eps_high=spec.clip_eps)
    pol_BT = pl.loss_BT
    kl = logp_BT.new_zeros(())
    if ref_logp_BT is not None:
        kl_BT = kl_penalty(logp_BT, ref_logp_BT, spec.kl_estimator)
        kl = aggregate_loss(kl_BT.detach(), mask_BT, num_tokens=num_tokens)
        if spec.kl_mode == "loss" and spec.kl_beta:
            pol_BT = pol_BT + spec.kl_beta * kl_BT
    elif spec.kl_mode == "loss" and spec.kl_beta:
        raise ValueError(f"tppo.kl_beta={spec.kl_beta} with kl_mode=loss: ref_logp_BT is required")
    policy = aggregate_loss(pol_BT, mask_BT, num_tokens=num_tokens)
    value = aggregate_loss(value_loss(values_BT, old_values_BT, returns_BT, clip=spec.value_clip), mask_BT,
                           num_tokens=num_tokens)
    clip_frac = masked_fraction(pl.clipped_low_BT | pl.clipped_high_BT, mask_BT)
    return TPPOLoss(total=policy + spec.vf_coef * value, policy=policy, value=value, kl=kl, clip_frac=clip_frac)
