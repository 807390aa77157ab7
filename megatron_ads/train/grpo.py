"""GRPO math (AdNanny §4.3; spec ``papers_spec.md`` §A.1, RELATE Eq. 6–9): group advantages, the PPO-clip
policy loss, KL to a frozen reference, entropy bonus, loss aggregation and the engine/trainer log-prob check.

Pure torch, no megatron-core: the trainer calls these on the last pipeline stage's per-token log-probs.

How it works
------------
Rollouts come in groups: the G completions of one prompt (same task). Each reward channel c (a registered
reward: recall@K, CTR uplift, label correctness, format, ...) gives every rollout a float, or None when the
channel does not apply to it.

1. Group advantage per channel (``group_advantages``), over the group's applicable members only (None is
   excluded from mean and std and gets advantage 0 for that channel):
       A_{i,c} = (r_{i,c} − b_{i,c}) / (std_c + eps)
   b = the group mean, or with leave_one_out the mean of the *other* applicable members
   (r_i − b_i = n/(n−1)·(r_i − mean)); std is the unbiased (n − 1) sample std of the group's applicable
   rewards (as TRL and verl use). A group whose std ≤ zero_std_tol, or with fewer than 2 applicable members,
   is a zero-std group: advantage 0, no gradient, counted in ``frac_reward_zero_std``.
2. Channels are combined per task after normalization ("normalize then sum", ``combine_advantages``):
       A_i = Σ_c w_{task(i),c} · A_{i,c}
   so a channel with a large raw scale does not swamp the others. A group contributes no gradient when every
   channel its task weights (w ≠ 0) is zero-std there; ``frac_reward_zero_std`` counts those groups.
3. Token-level advantage (RELATE Eq. 9; the token-level reward hook): A_{i,t} = A_i + α·r^token_{i,t}
   (α = 0 → plain GRPO, the same advantage for every token of a completion).
4. Policy loss per token (PPO clip, asymmetric range, optional dual clip c > 1), with ρ = π_θ/π_θold:
       obj = min(ρ·A, clip(ρ, 1 − eps_low, 1 + eps_high)·A);   dual clip: obj = max(obj, c·A) where A < 0
       ℓ_pg = −obj
   Clip fractions: low = A < 0 and ρ < 1 − eps_low; high = A > 0 and ρ > 1 + eps_high (where clipping binds,
   so the token has no policy gradient); dual = A < 0 and c·A > min(...) (the dual bound binds).
5. KL to the frozen reference π_ref, per token, Schulman's estimators with r = π_ref/π_θ (sampled from π_θ):
       k1 = −log r = log π_θ − log π_ref     (unbiased, can be negative)
       k2 = ½ (log r)²                        (≥ 0)
       k3 = (r − 1) − log r                   (≥ 0, unbiased; the spec's default)
   Note k1 is −log r, not log r: with r = π_ref/π_θ, log r estimates −KL(π_θ‖π_ref).
6. Token loss: ℓ_{i,t} = ℓ_pg + β·k_{i,t} − entropy_coef·H_{i,t}.
7. Aggregation over the completion tokens (``aggregate_loss``); the caller passes the *global* denominators
   (summed over DP ranks and micro-batches), so each micro-batch returns its share and the shares sum to the
   global loss (gradients must then be summed, not averaged, over DP ranks and micro-batches):
       token_mean:       Σ_{i,t} ℓ_{i,t} / N_tokens
       seq_mean:         Σ_i (1/|y_i|) Σ_t ℓ_{i,t} / N_seqs            (DeepSeekMath / spec A.1 form)
       task_token_mean:  Σ_k λ_k · Σ_{i ∈ task k} Σ_t ℓ_{i,t} / N_tokens,k    (λ default uniform over tasks)
   task_token_mean keeps a long-answer task from drowning a label task whose answers are a few tokens.
8. ``token_mult_prob_error`` = mean over completion tokens of |exp(lp_engine − lp_trainer) − 1|: 0 when the
   engine and the trainer agree; ≈ mean |Δlp| for small gaps. (NeMo-RL's metric of the same name is
   mean exp(|Δlp|), 1 when they agree: ours is that shifted to 0 for small gaps.)

Shapes: B rollouts (completions) in the batch, T completion positions (right-padded), V vocabulary,
K groups. ``mask_BT`` is 1 on completion tokens that count, 0 on padding (and prompt tokens if present).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from megatron_ads.config.train import GrpoAggregation as Aggregation
from megatron_ads.config.train import KlEstimator

__all__ = ["Advantages", "Aggregation", "ChannelAdvantages", "KlEstimator", "PolicyLoss", "aggregate_loss",
           "combine_advantages", "group_advantages", "grpo_token_loss", "kl_penalty", "masked_fraction",
           "pack_token_rewards", "policy_loss", "reward_stats", "token_advantages", "token_entropy",
           "token_mult_prob_error"]


# ----------------------------------------------------------------------------------------------------------
# 1–3. Advantages
# ----------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True, slots=True)
class ChannelAdvantages:
    """One reward channel's group-normalized advantages."""

    adv_B: torch.Tensor
    """A_{i,c}; 0 for None rewards and zero-std groups."""
    applicable_B: torch.Tensor
    """bool: the reward was not None."""
    group_B: torch.Tensor
    """Group index k in [0, K) of each rollout."""
    applicable_K: torch.Tensor
    """Number of applicable members per group."""
    zero_std_K: torch.Tensor
    """bool: the group has < 2 applicable members or std <= zero_std_tol (advantage 0)."""
    frac_reward_zero_std: float
    """Share of the groups with >= 1 applicable member that are zero-std (0 when there are none)."""


def _group_index(group_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(group_ids)
    if ids.dim() != 1:
        raise ValueError(f"group_ids: expected one id per rollout (1-D), got shape {tuple(ids.shape)}")
    return torch.unique(ids, sorted=True, return_inverse=True)[1]


def _rewards_tensor(rewards: Sequence[float | None], name: str) -> torch.Tensor:
    vals = [math.nan if r is None else float(r) for r in rewards]
    r_B = torch.tensor(vals, dtype=torch.float64)
    bad = torch.isinf(r_B)
    if bad.any():
        raise ValueError(f"{name}: rewards must be finite or None, got {vals[int(bad.nonzero()[0])]}")
    return r_B


def group_advantages(rewards: Sequence[float | None], group_ids: Sequence[int] | torch.Tensor, *,
                     eps: float = 1e-6, leave_one_out: bool = False, zero_std_tol: float = 0.0,
                     name: str = "rewards") -> ChannelAdvantages:
    """Step 1 for one channel: A_i = (r_i − b_i)/(std + eps) within each group, None excluded.

    Args: rewards (one per rollout, None = not applicable), group_ids (one per rollout; equal ids = one
    prompt's group), eps, leave_one_out (b_i = mean of the other applicable members instead of the group
    mean), zero_std_tol (std at or below it counts as zero), name (for error messages).
    Returns: ChannelAdvantages (float32 advantages, per-group counts and the zero-std share).
    """
    if eps < 0:
        raise ValueError(f"eps: expected >= 0, got {eps}")
    r_B = _rewards_tensor(rewards, name)
    g_B = _group_index(group_ids)
    if g_B.numel() != r_B.numel():
        raise ValueError(f"group_ids: expected {r_B.numel()} ids (one per reward), got {g_B.numel()}")
    K = int(g_B.max()) + 1 if g_B.numel() else 0
    ok_B = ~torch.isnan(r_B)
    r0_B = torch.where(ok_B, r_B, torch.zeros_like(r_B))
    n_K = torch.zeros(K, dtype=torch.float64).index_add_(0, g_B, ok_B.double())
    s_K = torch.zeros(K, dtype=torch.float64).index_add_(0, g_B, r0_B)
    mean_K = s_K / n_K.clamp_min(1)
    dev_B = torch.where(ok_B, r0_B - mean_K[g_B], torch.zeros_like(r_B))
    var_K = torch.zeros(K, dtype=torch.float64).index_add_(0, g_B, dev_B**2) / (n_K - 1).clamp_min(1)
    std_K = var_K.sqrt()
    zero_K = (n_K < 2) | (std_K <= zero_std_tol)
    if leave_one_out:
        base_B = (s_K[g_B] - r0_B) / (n_K[g_B] - 1).clamp_min(1)
    else:
        base_B = mean_K[g_B]
    adv_B = (r0_B - base_B) / (std_K[g_B] + eps)
    adv_B = torch.where(ok_B & ~zero_K[g_B], adv_B, torch.zeros_like(adv_B))
    has_K = n_K > 0
    frac = float(zero_K[has_K].double().mean()) if has_K.any() else 0.0
    return ChannelAdvantages(adv_B=adv_B.float(), applicable_B=ok_B, group_B=g_B, applicable_K=n_K.long(),
                             zero_std_K=zero_K, frac_reward_zero_std=frac)


@dataclass(kw_only=True, slots=True)
class Advantages:
    """Per-rollout advantages combined over channels, with the zero-std accounting."""

    adv_B: torch.Tensor
    """A_i = Σ_c w_{task(i),c} A_{i,c} (float32)."""
    channels: dict[str, ChannelAdvantages]
    """Each channel's own normalized advantages."""
    zero_std_K: torch.Tensor
    """bool per group: no weighted channel has signal there (the group contributes no gradient)."""
    frac_reward_zero_std: float
    """Share of groups with no signal in any weighted channel."""
    frac_reward_zero_std_by_channel: dict[str, float] = field(default_factory=dict)
    """Each channel's own zero-std share (over the groups where it applies)."""


def combine_advantages(rewards: Mapping[str, Sequence[float | None]], group_ids: Sequence[int] | torch.Tensor,
                       tasks: Sequence[str], weights: Mapping[str, Mapping[str, float]], *, eps: float = 1e-6,
                       leave_one_out: bool = False, zero_std_tol: float = 0.0) -> Advantages:
    """Steps 1–2: normalize each channel within its groups, then weighted-sum per task.

    Args: rewards ({channel: one value or None per rollout}), group_ids (one per rollout), tasks (the task of
    each rollout; one task per group), weights ({task: {channel: w}}; channels a task does not name weigh 0),
    eps, leave_one_out, zero_std_tol (as ``group_advantages``).
    Returns: Advantages.
    """
    g_B = _group_index(group_ids)
    B = g_B.numel()
    if len(tasks) != B:
        raise ValueError(f"tasks: expected {B} task names (one per rollout), got {len(tasks)}")
    for t in sorted(set(tasks)):
        if t not in weights:
            raise ValueError(f"weights: no reward combination for task {t!r} (known: {sorted(weights)})")
        missing = [c for c in weights[t] if c not in rewards]
        if missing:
            raise ValueError(f"rewards: task {t!r} weights channel(s) {missing} that were not computed "
                             f"(have: {sorted(rewards)})")
    K = int(g_B.max()) + 1 if B else 0
    task_K: list[str | None] = [None] * K
    for i, t in enumerate(tasks):
        k = int(g_B[i])
        if task_K[k] is None:
            task_K[k] = t
        elif task_K[k] != t:
            raise ValueError(f"tasks: group {k} mixes tasks {task_K[k]!r} and {t!r} (a group is one prompt)")
    channels: dict[str, ChannelAdvantages] = {}
    adv_B = torch.zeros(B, dtype=torch.float32)
    signal_K = torch.zeros(K, dtype=torch.bool)
    for c, vals in rewards.items():
        if len(vals) != B:
            raise ValueError(f"rewards[{c!r}]: expected {B} values (one per rollout), got {len(vals)}")
        ch = group_advantages(vals, g_B, eps=eps, leave_one_out=leave_one_out, zero_std_tol=zero_std_tol,
                              name=f"rewards[{c!r}]")
        channels[c] = ch
        w_B = torch.tensor([float(weights[t].get(c, 0.0)) for t in tasks], dtype=torch.float32)
        adv_B = adv_B + w_B * ch.adv_B
        w_K = torch.tensor([float(weights[t].get(c, 0.0)) if t is not None else 0.0 for t in task_K])
        signal_K |= (w_K != 0) & ~ch.zero_std_K
    zero_K = ~signal_K
    frac = float(zero_K.double().mean()) if K else 0.0
    return Advantages(adv_B=adv_B, channels=channels, zero_std_K=zero_K, frac_reward_zero_std=frac,
                      frac_reward_zero_std_by_channel={c: ch.frac_reward_zero_std for c, ch in channels.items()})


def pack_token_rewards(values: Sequence[Sequence[float] | None], mask_BT: torch.Tensor) -> torch.Tensor:
    """Per-token rewards (one list per rollout, aligned with its completion tokens; None = none) placed on
    the positions where ``mask_BT`` is set, in order. Returns a float32 [B, T] tensor, 0 elsewhere."""
    m_BT = mask_BT.bool()
    if len(values) != m_BT.shape[0]:
        raise ValueError(f"token rewards: expected {m_BT.shape[0]} rows (one per rollout), got {len(values)}")
    out_BT = torch.zeros(m_BT.shape, dtype=torch.float32)
    for i, v in enumerate(values):
        if v is None:
            continue
        n = int(m_BT[i].sum())
        if len(v) != n:
            raise ValueError(f"token rewards row {i}: expected {n} values (its completion tokens), got {len(v)}")
        out_BT[i, m_BT[i]] = torch.tensor([float(x) for x in v], dtype=torch.float32)
    return out_BT


def token_advantages(adv_B: torch.Tensor, mask_BT: torch.Tensor, token_rewards_BT: torch.Tensor | None = None,
                     alpha: float = 0.0) -> torch.Tensor:
    """Step 3: A_{i,t} = A_i + α·r^token_{i,t} on masked tokens, 0 elsewhere (α = 0 → plain GRPO)."""
    m_BT = mask_BT.to(adv_B.dtype)
    a_BT = adv_B[:, None] * m_BT
    if token_rewards_BT is not None and alpha != 0.0:
        if token_rewards_BT.shape != mask_BT.shape:
            raise ValueError(f"token_rewards_BT: expected shape {tuple(mask_BT.shape)}, "
                             f"got {tuple(token_rewards_BT.shape)}")
        a_BT = a_BT + alpha * token_rewards_BT.to(a_BT.dtype) * m_BT
    return a_BT


# ----------------------------------------------------------------------------------------------------------
# 4–6. Per-token loss terms
# ----------------------------------------------------------------------------------------------------------

@dataclass(kw_only=True, slots=True)
class PolicyLoss:
    """PPO-clip per-token loss and where each bound binds."""

    loss_BT: torch.Tensor
    """ℓ_pg = −obj per token (unmasked: multiply by the mask or aggregate)."""
    ratio_BT: torch.Tensor
    """ρ = exp(logp − old_logp)."""
    clipped_low_BT: torch.Tensor
    """bool: A < 0 and ρ < 1 − eps_low."""
    clipped_high_BT: torch.Tensor
    """bool: A > 0 and ρ > 1 + eps_high."""
    dual_clipped_BT: torch.Tensor
    """bool: A < 0 and the dual bound c·A binds (all False without dual clip)."""


def policy_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_BT: torch.Tensor, *,
                eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: float | None = None) -> PolicyLoss:
    """Step 4: ℓ_pg = −min(ρA, clip(ρ, 1−eps_low, 1+eps_high)A), and with dual clip c > 1 for A < 0
    ℓ_pg = −max(min(...), c·A). old_logp_BT is treated as a constant (detached)."""
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"eps_low/eps_high: expected 0 <= eps_low < 1, eps_high >= 0; got {eps_low}/{eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip: expected None or > 1, got {dual_clip}")
    ratio_BT = torch.exp(logp_BT - old_logp_BT.detach())
    adv_BT = adv_BT.detach().to(ratio_BT.dtype)
    surr1_BT = ratio_BT * adv_BT
    surr2_BT = torch.clamp(ratio_BT, 1.0 - eps_low, 1.0 + eps_high) * adv_BT
    obj_BT = torch.minimum(surr1_BT, surr2_BT)
    neg_BT = adv_BT < 0
    dual_BT = torch.zeros_like(neg_BT)
    if dual_clip is not None:
        bound_BT = dual_clip * adv_BT
        dual_BT = neg_BT & (bound_BT > obj_BT)
        obj_BT = torch.where(neg_BT, torch.maximum(obj_BT, bound_BT), obj_BT)
    with torch.no_grad():
        low_BT = neg_BT & (ratio_BT < 1.0 - eps_low)
        high_BT = (adv_BT > 0) & (ratio_BT > 1.0 + eps_high)
    return PolicyLoss(loss_BT=-obj_BT, ratio_BT=ratio_BT, clipped_low_BT=low_BT, clipped_high_BT=high_BT,
                      dual_clipped_BT=dual_BT)


def kl_penalty(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor, estimator: KlEstimator = "k3", *,
               log_ratio_clamp: float | None = 20.0) -> torch.Tensor:
    """Step 5: per-token KL(π_θ‖π_ref) estimate with r = π_ref/π_θ: k1 = −log r, k2 = ½(log r)²,
    k3 = (r − 1) − log r. log r is clamped to ±log_ratio_clamp (None: off) so exp cannot overflow.
    ref_logp_BT is treated as a constant (detached)."""
    log_r_BT = ref_logp_BT.detach() - logp_BT
    if log_ratio_clamp is not None:
        log_r_BT = log_r_BT.clamp(-log_ratio_clamp, log_ratio_clamp)
    if estimator == "k1":
        return -log_r_BT
    if estimator == "k2":
        return 0.5 * log_r_BT**2
    if estimator == "k3":
        return torch.expm1(log_r_BT) - log_r_BT
    raise ValueError(f"kl_estimator: expected one of k1, k2, k3, got {estimator!r}")


def token_entropy(logits_BTV: torch.Tensor) -> torch.Tensor:
    """H_{i,t} = −Σ_v p log p of the softmax over the last dim (full vocabulary; a vocab-parallel caller
    reduces its shards itself)."""
    logp_BTV = torch.log_softmax(logits_BTV.float(), dim=-1)
    return -(logp_BTV.exp() * logp_BTV).sum(dim=-1)


def grpo_token_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_BT: torch.Tensor, *,
                    ref_logp_BT: torch.Tensor | None = None, entropy_BT: torch.Tensor | None = None,
                    eps_low: float = 0.2, eps_high: float = 0.2, dual_clip: float | None = None,
                    kl_estimator: KlEstimator = "k3", kl_beta: float = 0.0,
                    entropy_coef: float = 0.0) -> tuple[torch.Tensor, PolicyLoss, torch.Tensor | None]:
    """Step 6: ℓ_{i,t} = ℓ_pg + β·k_{i,t} − entropy_coef·H_{i,t} (unmasked, per token).

    Returns (loss_BT, the PolicyLoss, kl_BT or None when no reference was given)."""
    if kl_beta < 0 or entropy_coef < 0:
        raise ValueError(f"kl_beta/entropy_coef: expected >= 0, got {kl_beta}/{entropy_coef}")
    pl = policy_loss(logp_BT, old_logp_BT, adv_BT, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    loss_BT = pl.loss_BT
    kl_BT = None
    if ref_logp_BT is not None:
        kl_BT = kl_penalty(logp_BT, ref_logp_BT, kl_estimator)
        if kl_beta:
            loss_BT = loss_BT + kl_beta * kl_BT
    elif kl_beta:
        raise ValueError(f"kl_beta={kl_beta}: a reference (ref_logp_BT) is required when kl_beta > 0")
    if entropy_coef:
        if entropy_BT is None:
            raise ValueError(f"entropy_coef={entropy_coef}: entropy_BT is required when entropy_coef > 0")
        loss_BT = loss_BT - entropy_coef * entropy_BT
    return loss_BT, pl, kl_BT


# ----------------------------------------------------------------------------------------------------------
# 7. Aggregation
# ----------------------------------------------------------------------------------------------------------

def aggregate_loss(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: Aggregation = "token_mean", *,
                   num_tokens: float | None = None, num_seqs: float | None = None,
                   tasks: Sequence[str] | None = None, task_tokens: Mapping[str, float] | None = None,
                   task_weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """Step 7: this micro-batch's share of the global loss.

    Args: loss_BT, mask_BT; mode token_mean | seq_mean | task_token_mean; the global denominators (summed
    over DP ranks and micro-batches; default: this batch's own): num_tokens (masked tokens), num_seqs
    (rollouts with >= 1 masked token), task_tokens ({task: masked tokens}); tasks (the task of each row, for
    task_token_mean); task_weights ({task: λ}; default 1/len(task_tokens) each, the tasks in task_tokens).
    Returns: a scalar; the shares of all micro-batches and ranks sum to the global loss.
    """
    m_BT = mask_BT.to(loss_BT.dtype)
    masked_BT = loss_BT * m_BT
    if mode == "token_mean":
        n = float(m_BT.sum()) if num_tokens is None else float(num_tokens)
        return masked_BT.sum() / max(n, 1.0)
    if mode == "seq_mean":
        len_B = m_BT.sum(dim=1)
        n = float((len_B > 0).sum()) if num_seqs is None else float(num_seqs)
        return (masked_BT.sum(dim=1) / len_B.clamp_min(1)).sum() / max(n, 1.0)
    if mode == "task_token_mean":
        if tasks is None or len(tasks) != loss_BT.shape[0]:
            raise ValueError(f"tasks: task_token_mean needs one task per row ({loss_BT.shape[0]}), "
                             f"got {None if tasks is None else len(tasks)}")
        if task_tokens is None:
            task_tokens = {}
            for i, t in enumerate(tasks):
                task_tokens[t] = task_tokens.get(t, 0.0) + float(m_BT[i].sum())
        if task_weights is None:
            task_weights = {t: 1.0 / len(task_tokens) for t in task_tokens}
        row_B = masked_BT.sum(dim=1)
        total = loss_BT.new_zeros(())
        for t in sorted(set(tasks)):
            if t not in task_tokens or t not in task_weights:
                raise ValueError(f"task_tokens/task_weights: no entry for task {t!r} "
                                 f"(have {sorted(task_tokens)} / {sorted(task_weights)})")
            idx = torch.tensor([i for i, s in enumerate(tasks) if s == t])
            total = total + float(task_weights[t]) * row_B[idx].sum() / max(float(task_tokens[t]), 1.0)
        return total
    raise ValueError(f"aggregation: expected one of token_mean, seq_mean, task_token_mean, got {mode!r}")


# ----------------------------------------------------------------------------------------------------------
# 8. Metrics
# ----------------------------------------------------------------------------------------------------------

def masked_fraction(flag_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Share of masked tokens where flag is set (e.g. clip fractions; 0 with no tokens). For a global figure
    all-reduce (flag·mask).sum() and mask.sum() instead."""
    m_BT = mask_BT.bool()
    n = int(m_BT.sum())
    return float((flag_BT.bool() & m_BT).sum()) / n if n else 0.0


def token_mult_prob_error(engine_logp_BT: torch.Tensor, trainer_logp_BT: torch.Tensor,
                          mask_BT: torch.Tensor) -> float:
    """Step 8: mean over masked tokens of |exp(lp_engine − lp_trainer) − 1| (0 = the engine and the
    trainer agree)."""
    m_BT = mask_BT.bool()
    n = int(m_BT.sum())
    if not n:
        return 0.0
    err_BT = torch.expm1(engine_logp_BT.detach().double() - trainer_logp_BT.detach().double()).abs()
    return float(err_BT[m_BT].sum()) / n


def reward_stats(rewards: Mapping[str, Sequence[float | None]], tasks: Sequence[str]) -> dict[str, float]:
    """Mean and (population) std of each channel's applicable rewards per task:
    {"reward/<task>/<channel>/mean": ..., ".../std": ..., ".../n": ...}; channels with no applicable value
    for a task are left out."""
    out: dict[str, float] = {}
    for c, vals in rewards.items():
        for t in sorted(set(tasks)):
            xs = [float(v) for v, s in zip(vals, tasks) if s == t and v is not None]
            if not xs:
                continue
            x = torch.tensor(xs, dtype=torch.float64)
            key = f"reward/{t}/{c}"
            out[f"{key}/mean"] = float(x.mean())
            out[f"{key}/std"] = float(x.std(unbiased=False))
            out[f"{key}/n"] = float(len(xs))
    return out
