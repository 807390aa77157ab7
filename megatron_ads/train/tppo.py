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
7. ``ppo_token_loss``: the PPO-clip policy loss with its optional KL and entropy terms
   (``grpo.grpo_token_loss``) + vf_coef·the clipped value loss (``value_loss``), per token; aggregated with
   ``grpo.aggregate_loss``. The hyperparameters are the ``ppo`` and ``grpo`` config sections' (``PPOSpec``,
   ``GRPOSpec``), the reward model's the ``rm`` section's (``RMSpec``).
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

import torch

from megatron_ads.config.train import RMGlobalTokens, RMLocalReduction, RMTokenReward
from megatron_ads.train.grpo import PolicyLoss, grpo_token_loss

__all__ = ["CLASS_IRRELEVANT", "CLASS_MASKED", "CLASS_RELEVANT", "JUDGE_TO_CLASS", "NUM_CLASSES", "RMLoss",
           "apply_lwp", "balance_mask", "expected_class_value", "gae", "lwp",
           "masked_whiten", "optimal_policy", "ppo_token_loss", "response_positions", "sentence_to_token_rewards",
           "shaped_rewards", "split_words", "suggested_length", "token_reward_from_probs", "token_rm_loss",
           "value_loss", "word_token_labels"]

NUM_CLASSES = 3
CLASS_MASKED, CLASS_IRRELEVANT, CLASS_RELEVANT = 0, 1, 2
JUDGE_TO_CLASS = {0: CLASS_IRRELEVANT, 1: CLASS_RELEVANT}
"""The judge's binary word relevance (App. B prompt: 0/1) → reward-model class (spec §B.1 default)."""

_WORD = re.compile(r"[\w']+")


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
                  class_weights: Sequence[float] | None = None, local_reduction: RMLocalReduction = "token_mean",
                  global_tokens: RMGlobalTokens = "labeled") -> RMLoss:
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
                            kind: RMTokenReward = "prob_diff") -> torch.Tensor:
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


def ppo_token_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_BT: torch.Tensor,
                   values_BT: torch.Tensor, old_values_BT: torch.Tensor, returns_BT: torch.Tensor, *,
                   vf_coef: float, value_clip: float | None, **policy) -> tuple[torch.Tensor, PolicyLoss,
                                                                                 torch.Tensor | None, torch.Tensor]:
    """Eq. 6–7 with a critic, per token (unmasked): ``grpo.grpo_token_loss`` (PPO-clip against π_old, + β·KL to
    π_ref when ``kl_beta`` is given, − the entropy bonus; ``policy``: its keyword arguments) + vf_coef·the
    clipped value loss (``value_loss``). Aggregate with ``grpo.aggregate_loss``.

    Returns (loss_BT, the PolicyLoss, kl_BT or None without a reference, value_loss_BT)."""
    if vf_coef < 0:
        raise ValueError(f"vf_coef: expected >= 0, got {vf_coef}")
    loss_BT, pl, kl_BT = grpo_token_loss(logp_BT, old_logp_BT, adv_BT, **policy)
    vl_BT = value_loss(values_BT, old_values_BT, returns_BT, clip=value_clip)
    return loss_BT + vf_coef * vl_BT, pl, kl_BT, vl_BT
