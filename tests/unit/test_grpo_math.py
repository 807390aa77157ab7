"""GRPO math (train/grpo.py) against hand-computed values, and the GRPOSpec config section.

Shapes: B rollouts, T completion positions, V vocabulary.
"""

import math

import pytest
import torch

from megatron_ads.config.train import GRPOSpec, JobConfig
from megatron_ads.train import grpo

LN2 = math.log(2.0)


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------- group advantages

def test_group_advantages_mean_std_and_zero_std_group():
    # group 0: [1, 2, 3] mean 2, unbiased std 1 -> [-1, 0, 1]; group 1: [5, 5, 5] std 0 -> 0, counted
    ch = grpo.group_advantages([1, 2, 3, 5, 5, 5], [0, 0, 0, 1, 1, 1], eps=0.0)
    close(ch.adv_B, [-1, 0, 1, 0, 0, 0])
    assert ch.zero_std_K.tolist() == [False, True] and ch.frac_reward_zero_std == 0.5
    # with eps: (r - mean) / (std + eps)
    ch = grpo.group_advantages([1, 2, 3], [0, 0, 0], eps=0.5)
    close(ch.adv_B, [-1 / 1.5, 0, 1 / 1.5])
    # RELATE Eq. 8 invariant: mean 0 and (sample) std 1 within a group (eps -> 0)
    ch = grpo.group_advantages([0.3, 1.7, -2.0, 4.0, 0.1], [9] * 5, eps=0.0)
    close(ch.adv_B.mean(), 0.0)
    close(ch.adv_B.std(), 1.0)


def test_group_ids_need_not_be_consecutive():
    # ids 7 and 3 interleaved: group 7 = [1, 3] (mean 2, std sqrt 2), group 3 = [10, 10] (zero std)
    ch = grpo.group_advantages([1, 10, 3, 10], [7, 3, 7, 3], eps=0.0)
    close(ch.adv_B, [-1 / math.sqrt(2), 0, 1 / math.sqrt(2), 0])
    assert ch.frac_reward_zero_std == 0.5


def test_leave_one_out_baseline():
    # [1, 2, 3]: baselines (2+3)/2 = 2.5, 2, 1.5 -> [-1.5, 0, 1.5], divided by std 1
    ch = grpo.group_advantages([1, 2, 3], [0, 0, 0], eps=0.0, leave_one_out=True)
    close(ch.adv_B, [-1.5, 0, 1.5])
    # r_i - b_i = n/(n-1) (r_i - mean): [0, 0, 4, 8] mean 3, n = 4
    r = [0.0, 0.0, 4.0, 8.0]
    plain = grpo.group_advantages(r, [0] * 4, eps=0.0).adv_B
    loo = grpo.group_advantages(r, [0] * 4, eps=0.0, leave_one_out=True).adv_B
    close(loo, plain * 4 / 3)


def test_none_rewards_are_excluded_from_the_baseline():
    # [None, 1, 3]: applicable [1, 3], mean 2, std sqrt 2 -> [0, -1/sqrt 2, 1/sqrt 2]
    ch = grpo.group_advantages([None, 1, 3], [0, 0, 0], eps=0.0)
    close(ch.adv_B, [0, -1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert ch.applicable_B.tolist() == [False, True, True] and ch.applicable_K.tolist() == [2]
    # a None treated as 0 would have given mean 4/3: the excluded version is different
    as_zero = grpo.group_advantages([0, 1, 3], [0, 0, 0], eps=0.0)
    assert not torch.allclose(as_zero.adv_B[1:], ch.adv_B[1:])
    # one applicable member: no relative signal -> 0 and counted; an all-None group is not counted
    ch = grpo.group_advantages([None, None, 4, None, None, None], [0, 0, 0, 1, 1, 1])
    close(ch.adv_B, [0] * 6)
    assert ch.zero_std_K.tolist() == [True, True] and ch.frac_reward_zero_std == 1.0
    assert ch.applicable_K.tolist() == [1, 0]
    with pytest.raises(ValueError, match="finite or None"):
        grpo.group_advantages([1.0, math.inf], [0, 0])


def test_batch_constant_reward_gives_zero_advantages():
    """Eq. 8 read literally (one reward per batch): if all G rollouts of a prompt share a batch, every
    advantage is 0 and the group counts as zero-std; one batch per rollout index gives a signal."""
    shared = grpo.group_advantages([0.37] * 4, [0] * 4)
    close(shared.adv_B, [0] * 4)
    assert shared.frac_reward_zero_std == 1.0
    per_rollout = grpo.group_advantages([0.37, 0.10, 0.52, 0.37], [0] * 4)
    assert per_rollout.frac_reward_zero_std == 0.0 and per_rollout.adv_B.abs().sum() > 0


def test_normalize_then_sum_per_task():
    # one group; channel a = [1, 2, 3] -> [-1, 0, 1]; b = [0, 0, 30]: mean 10, std sqrt(300) = 17.320508
    # -> [-0.577350, -0.577350, 1.154701]
    rewards = {"a": [1, 2, 3], "b": [0, 0, 30]}
    adv = grpo.combine_advantages(rewards, [0, 0, 0], ["gen"] * 3, {"gen": {"a": 1.0, "b": 1.0}}, eps=0.0)
    close(adv.channels["b"].adv_B, [-0.577350, -0.577350, 1.154701])
    close(adv.adv_B, [-1.577350, -0.577350, 2.154701])
    adv = grpo.combine_advantages(rewards, [0, 0, 0], ["gen"] * 3, {"gen": {"a": 1.0, "b": 0.5}}, eps=0.0)
    close(adv.adv_B, [-1.288675, -0.288675, 1.577350])
    # sum then normalize would be dominated by b's raw scale: [1, 2, 33] -> [-0.604615, -0.549650, 1.154265]
    summed = grpo.group_advantages([1, 2, 33], [0, 0, 0], eps=0.0).adv_B
    close(summed, [-0.604615, -0.549650, 1.154265])
    assert not torch.allclose(summed, adv.adv_B, atol=1e-2)


def test_combine_per_task_weights_and_zero_std_accounting():
    # group 0 (gen): recall [1,2,3] -> [-1,0,1]; fmt is not weighted for gen.
    # group 1 (label): correct [0,1,1]: mean 2/3, std 1/sqrt 3 -> [-1.154701, 0.577350, 0.577350];
    # fmt [0,1,1] the same, weight 0.5 -> total 1.5x
    tasks = ["gen"] * 3 + ["label"] * 3
    weights = {"gen": {"recall": 1.0}, "label": {"correct": 1.0, "fmt": 0.5}}
    rewards = {"recall": [1, 2, 3, None, None, None], "correct": [None, None, None, 0, 1, 1],
               "fmt": [1, 0, 1, 0, 1, 1]}
    adv = grpo.combine_advantages(rewards, [0, 0, 0, 1, 1, 1], tasks, weights, eps=0.0)
    close(adv.adv_B, [-1, 0, 1, -1.732051, 0.866025, 0.866025])
    assert adv.frac_reward_zero_std == 0.0
    # gen's only weighted channel is flat: the group has no signal even though (unweighted) fmt varies
    rewards["recall"] = [2, 2, 2, None, None, None]
    adv = grpo.combine_advantages(rewards, [0, 0, 0, 1, 1, 1], tasks, weights, eps=0.0)
    close(adv.adv_B[:3], [0, 0, 0])
    assert adv.zero_std_K.tolist() == [True, False] and adv.frac_reward_zero_std == 0.5
    assert adv.frac_reward_zero_std_by_channel == {"recall": 1.0, "correct": 0.0, "fmt": 0.0}


def test_combine_errors_name_the_problem():
    with pytest.raises(ValueError, match="no reward combination for task 'gen'"):
        grpo.combine_advantages({"a": [1, 2]}, [0, 0], ["gen", "gen"], {"label": {"a": 1.0}})
    with pytest.raises(ValueError, match=r"channel\(s\) \['b'\]"):
        grpo.combine_advantages({"a": [1, 2]}, [0, 0], ["gen", "gen"], {"gen": {"b": 1.0}})
    with pytest.raises(ValueError, match="mixes tasks"):
        grpo.combine_advantages({"a": [1, 2]}, [0, 0], ["gen", "label"], {"gen": {"a": 1}, "label": {"a": 1}})


# ---------------------------------------------------------------- token-level advantage

def test_token_level_advantage():
    adv_B = torch.tensor([1.0, -0.5])
    mask_BT = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    tok_BT = grpo.pack_token_rewards([[0, -1, 0], [-2, 0]], mask_BT)
    close(tok_BT, [[0, -1, 0, 0], [-2, 0, 0, 0]])
    close(grpo.token_advantages(adv_B, mask_BT, tok_BT, alpha=0.5), [[1, 0.5, 1, 0], [-1.5, -0.5, 0, 0]])
    # alpha = 0 -> plain GRPO: one advantage for every token of a completion
    close(grpo.token_advantages(adv_B, mask_BT, tok_BT, alpha=0.0), [[1, 1, 1, 0], [-0.5, -0.5, 0, 0]])
    close(grpo.pack_token_rewards([None, [3, 4]], mask_BT), [[0, 0, 0, 0], [3, 4, 0, 0]])
    with pytest.raises(ValueError, match="row 1: expected 2 values"):
        grpo.pack_token_rewards([[0, 0, 0], [1]], mask_BT)


# ---------------------------------------------------------------- PPO clip

RHO = [0.5, 0.9, 1.2, 1.25, 1.5]


def _clip_case(adv, eps_low=0.2, eps_high=0.28, dual_clip=None, rho=RHO):
    logp_BT = torch.log(torch.tensor([rho], dtype=torch.float64)).requires_grad_()
    old_BT = torch.zeros_like(logp_BT)
    adv_BT = torch.full_like(logp_BT, adv)
    out = grpo.policy_loss(logp_BT, old_BT, adv_BT, eps_low=eps_low, eps_high=eps_high, dual_clip=dual_clip)
    out.loss_BT.sum().backward()
    return out, logp_BT.grad[0]


def test_clip_positive_advantage_high_side_asymmetric():
    # A = +1: obj = min(ρ, clip(ρ, 0.8, 1.28)); 1.25 is inside the asymmetric range, 1.5 clips at 1.28
    out, grad = _clip_case(+1.0)
    close(out.loss_BT[0], [-0.5, -0.9, -1.2, -1.25, -1.28])
    assert out.clipped_high_BT[0].tolist() == [False, False, False, False, True]
    assert not out.clipped_low_BT.any()
    close(grad, [-0.5, -0.9, -1.2, -1.25, 0.0])  # d(-ρA)/dlogp = -Aρ; 0 where the clip binds
    # symmetric eps 0.2 would clip 1.25 too
    sym, _ = _clip_case(+1.0, eps_high=0.2)
    close(sym.loss_BT[0], [-0.5, -0.9, -1.2, -1.2, -1.2])


def test_clip_negative_advantage_low_side():
    # A = -1: obj = min(-ρ, -clip(ρ)); ρ = 0.5 clips at 0.8 (low side); large ρ is not clipped
    out, grad = _clip_case(-1.0)
    close(out.loss_BT[0], [0.8, 0.9, 1.2, 1.25, 1.5])
    assert out.clipped_low_BT[0].tolist() == [True, False, False, False, False]
    assert not out.clipped_high_BT.any() and not out.dual_clipped_BT.any()
    close(grad, [0.0, 0.9, 1.2, 1.25, 1.5])


def test_dual_clip():
    # c = 3, A = -1: loss = min(max(ρ, clip(ρ)), 3): ρ = 4 -> 3 (bound binds, no gradient); ρ = 2 -> 2
    out, grad = _clip_case(-1.0, dual_clip=3.0, rho=[0.5, 2.0, 4.0])
    close(out.loss_BT[0], [0.8, 2.0, 3.0])
    assert out.dual_clipped_BT[0].tolist() == [False, False, True]
    close(grad, [0.0, 2.0, 0.0])
    # A > 0 is unaffected by the dual clip
    out, _ = _clip_case(+1.0, dual_clip=3.0, rho=[4.0])
    close(out.loss_BT[0], [-1.28])
    with pytest.raises(ValueError, match="dual_clip"):
        _clip_case(-1.0, dual_clip=1.0)


def test_clip_fractions_and_on_policy_objective():
    logp_BT = torch.log(torch.tensor([[0.5, 1.0, 1.5], [0.5, 1.5, 1.0]]))
    adv_BT = torch.tensor([[-1.0, 2.0, 1.0], [1.0, -1.0, 7.0]])
    mask_BT = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = grpo.policy_loss(logp_BT, torch.zeros_like(logp_BT), adv_BT, eps_low=0.2, eps_high=0.2)
    # low: (0,0) [A<0, ρ=0.5]; high: (0,2) [A>0, ρ=1.5]; (1,0) A>0 ρ small and (1,1) A<0 ρ big don't bind
    assert grpo.masked_fraction(out.clipped_low_BT, mask_BT) == pytest.approx(1 / 5)
    assert grpo.masked_fraction(out.clipped_high_BT, mask_BT) == pytest.approx(1 / 5)
    # at θ = θ_old: ρ = 1 and the clipped objective is the mean advantage (spec §C.20)
    same = grpo.policy_loss(logp_BT, logp_BT.clone(), adv_BT)
    close(same.ratio_BT, torch.ones(2, 3))
    close(-grpo.aggregate_loss(same.loss_BT, mask_BT, "token_mean"), (-1 + 2 + 1 + 1 - 1) / 5)


# ---------------------------------------------------------------- KL and entropy

def test_kl_estimators_hand_values():
    # π_θ = 0.5, π_ref = 0.25: r = 0.5, log r = -ln 2
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    close(grpo.kl_penalty(logp, ref, "k1"), [LN2, -LN2, 0])
    close(grpo.kl_penalty(logp, ref, "k2"), [0.5 * LN2**2, 0.5 * LN2**2, 0])  # 0.240227
    close(grpo.kl_penalty(logp, ref, "k3"), [-0.5 + LN2, 1 - LN2, 0])  # 0.193147, 0.306853
    with pytest.raises(ValueError, match="kl_estimator"):
        grpo.kl_penalty(logp, ref, "k4")


def test_kl_nonnegativity_and_unbiasedness():
    g = torch.Generator().manual_seed(0)
    logp = torch.log_softmax(torch.randn(64, 16, generator=g), -1)
    ref = torch.log_softmax(torch.randn(64, 16, generator=g), -1)
    assert (grpo.kl_penalty(logp, ref, "k2") >= 0).all()
    assert (grpo.kl_penalty(logp, ref, "k3") >= 0).all()
    assert (grpo.kl_penalty(logp, ref, "k1") < 0).any()  # k1 is not non-negative per token
    # exact expectation under π_θ over the vocabulary: k1 and k3 are unbiased for KL(π_θ‖π_ref)
    p = logp.exp()
    kl = (p * (logp - ref)).sum(-1)
    for est in ("k1", "k3"):
        close((p * grpo.kl_penalty(logp, ref, est)).sum(-1), kl)


def test_kl_k3_gradient():
    # d k3 / d logp = 1 - r, r = π_ref/π_θ = 0.5 -> 0.5; k1: 1; k2: -log r = ln 2
    for est, expected in (("k3", 0.5), ("k1", 1.0), ("k2", LN2)):
        logp = torch.tensor([math.log(0.5)], dtype=torch.float64, requires_grad=True)
        grpo.kl_penalty(logp, torch.tensor([math.log(0.25)], dtype=torch.float64), est).sum().backward()
        close(logp.grad, [expected])


def test_entropy_and_bonus():
    logits_BTV = torch.log(torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.25, 1e-30]]]))
    # uniform over 4: ln 4; [.5, .25, .25]: 0.5 ln 2 + 2 * 0.25 ln 4 = 1.5 ln 2
    close(grpo.token_entropy(logits_BTV), [[math.log(4), 1.5 * LN2]])
    logp_BT = torch.zeros(1, 2)
    adv_BT = torch.tensor([[1.0, 1.0]])
    ent_BT = grpo.token_entropy(logits_BTV)
    loss_BT, _, kl_BT = grpo.grpo_token_loss(logp_BT, logp_BT, adv_BT, entropy_BT=ent_BT, entropy_coef=0.1)
    close(loss_BT, -1.0 - 0.1 * ent_BT)
    assert kl_BT is None
    with pytest.raises(ValueError, match="ref_logp_BT"):
        grpo.grpo_token_loss(logp_BT, logp_BT, adv_BT, kl_beta=0.1)


# ---------------------------------------------------------------- aggregation

# row 0: label task, 1 token (loss 2); row 1: gen, 4 tokens (loss 1 each); row 2: gen, 3 tokens (0, 3, 0)
LOSS_BT = torch.tensor([[2.0, 99, 99, 99], [1, 1, 1, 1], [0, 3, 0, 99]])
MASK_BT = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]])
TASKS = ["label", "gen", "gen"]


def test_aggregation_hand_values():
    close(grpo.aggregate_loss(LOSS_BT, MASK_BT, "token_mean"), 9 / 8)                 # (2 + 4 + 3) / 8
    close(grpo.aggregate_loss(LOSS_BT, MASK_BT, "seq_mean"), (2 / 1 + 4 / 4 + 3 / 3) / 3)
    close(grpo.aggregate_loss(LOSS_BT, MASK_BT, "task_token_mean", tasks=TASKS), 0.5 * 2 + 0.5 * 7 / 7)
    close(grpo.aggregate_loss(LOSS_BT, MASK_BT, "task_token_mean", tasks=TASKS,
                              task_weights={"label": 0.25, "gen": 0.75}), 0.25 * 2 + 0.75 * 1)
    with pytest.raises(ValueError, match="aggregation"):
        grpo.aggregate_loss(LOSS_BT, MASK_BT, "sum")
    with pytest.raises(ValueError, match="tasks"):
        grpo.aggregate_loss(LOSS_BT, MASK_BT, "task_token_mean")


def test_long_task_does_not_drown_short_task():
    # one label token vs 64 generation tokens: the label token's weight in the loss
    mask_BT = torch.zeros(2, 64)
    mask_BT[0, 0], mask_BT[1, :] = 1, 1
    loss_BT = torch.zeros(2, 64, requires_grad=True)
    tasks = ["label", "gen"]
    grads = {}
    for mode in ("token_mean", "task_token_mean"):
        loss_BT.grad = None
        grpo.aggregate_loss(loss_BT, mask_BT, mode, tasks=tasks).backward()
        grads[mode] = float(loss_BT.grad[0, 0])
    assert grads["token_mean"] == pytest.approx(1 / 65)         # drowned
    assert grads["task_token_mean"] == pytest.approx(0.5)       # each task's tokens average within the task


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean", "task_token_mean"])
def test_microbatch_shares_sum_to_the_global_loss(mode):
    """The caller passes global denominators; micro-batch shares (as on DP ranks) add up to the full loss."""
    full = grpo.aggregate_loss(LOSS_BT, MASK_BT, mode, tasks=TASKS)
    kw = {"num_tokens": 8, "num_seqs": 3, "task_tokens": {"label": 1, "gen": 7}}
    parts = [grpo.aggregate_loss(LOSS_BT[s], MASK_BT[s], mode, tasks=[TASKS[i] for i in range(3)][s], **kw)
             for s in (slice(0, 2), slice(2, 3))]
    close(sum(parts), full)


def test_loss_gradient_wrt_logp_matches_hand_derivation():
    # unclipped region, β = 0, token mean over N = 3 tokens: dL/dlogp = -A ρ / N
    old_BT = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], dtype=torch.float64)
    rho_BT = torch.tensor([[1.1, 0.95], [1.0, 1.0]], dtype=torch.float64)
    adv_BT = torch.tensor([[2.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    mask_BT = torch.tensor([[1, 1], [1, 0]])
    logp_BT = (old_BT + rho_BT.log()).requires_grad_()
    loss_BT, _, _ = grpo.grpo_token_loss(logp_BT, old_BT, adv_BT)
    grpo.aggregate_loss(loss_BT, mask_BT, "token_mean").backward()
    close(logp_BT.grad, [[-2 * 1.1 / 3, -2 * 0.95 / 3], [1.0 / 3, 0.0]])
    # seq mean: -A ρ / (|y_i| · num_seqs)
    logp_BT.grad = None
    loss_BT, _, _ = grpo.grpo_token_loss(logp_BT, old_BT, adv_BT)
    grpo.aggregate_loss(loss_BT, mask_BT, "seq_mean").backward()
    close(logp_BT.grad, [[-2 * 1.1 / 4, -2 * 0.95 / 4], [1.0 / 2, 0.0]])
    # + β k3 with r = π_ref/π_θ = 0.5 on every token: + β (1 - r) / N per token
    logp_BT.grad = None
    ref_BT = (logp_BT + math.log(0.5)).detach()
    loss_BT, _, kl_BT = grpo.grpo_token_loss(logp_BT, old_BT, adv_BT, ref_logp_BT=ref_BT, kl_beta=0.1)
    grpo.aggregate_loss(loss_BT, mask_BT, "token_mean").backward()
    close(logp_BT.grad, [[(-2 * 1.1 + 0.05) / 3, (-2 * 0.95 + 0.05) / 3], [(1.0 + 0.05) / 3, 0.0]])
    close(kl_BT, torch.full((2, 2), -0.5 + LN2))


# ---------------------------------------------------------------- metrics

def test_token_mult_prob_error():
    # Δ = lp_engine - lp_trainer = [ln 2, -ln 2, 0, (pad)] -> |2 - 1|, |0.5 - 1|, 0 -> mean 0.5
    trainer_BT = torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    engine_BT = trainer_BT + torch.tensor([[LN2, -LN2, 0.0, 5.0]])
    mask_BT = torch.tensor([[1, 1, 1, 0]])
    assert grpo.token_mult_prob_error(engine_BT, trainer_BT, mask_BT) == pytest.approx(0.5)
    assert grpo.token_mult_prob_error(trainer_BT, trainer_BT, mask_BT) == 0.0
    assert grpo.token_mult_prob_error(engine_BT, trainer_BT, torch.zeros_like(mask_BT)) == 0.0


def test_reward_stats():
    stats = grpo.reward_stats({"recall": [0.0, 1.0, None, 0.5], "fmt": [1.0, 1.0, 0.0, 1.0]},
                              ["gen", "gen", "label", "label"])
    assert stats["reward/gen/recall/mean"] == pytest.approx(0.5)
    assert stats["reward/gen/recall/std"] == pytest.approx(0.5)
    assert stats["reward/label/recall/n"] == 1.0 and stats["reward/label/fmt/mean"] == pytest.approx(0.5)


# ---------------------------------------------------------------- GRPOSpec

def test_grpo_spec_defaults():
    s = GRPOSpec()
    assert (s.group_size, s.eps_low, s.eps_high, s.dual_clip, s.kl_estimator) == (8, 0.2, 0.2, None, "k3")
    assert 0.01 <= s.kl_beta <= 0.04 and s.token_alpha == 0.0 and s.ppo_epochs == 1
    assert not s.leave_one_out and not s.expert_bias_update and s.aggregation == "task_token_mean"
    assert JobConfig().grpo == s


@pytest.mark.parametrize("kw, needle", [
    ({"group_size": 1}, "grpo.group_size"),
    ({"temperature": 0.0}, "grpo.temperature"),
    ({"top_p": 0.0}, "grpo.top_p"),
    ({"top_p": 1.5}, "grpo.top_p"),
    ({"max_new_tokens": 0}, "grpo.max_new_tokens"),
    ({"eps_low": 1.0}, "grpo.eps_low"),
    ({"eps_high": -0.1}, "grpo.eps_high"),
    ({"dual_clip": 1.0}, "grpo.dual_clip"),
    ({"kl_estimator": "k4"}, "grpo.kl_estimator: expected one of k1, k2, k3"),
    ({"kl_beta": -0.01}, "grpo.kl_beta"),
    ({"entropy_coef": -1.0}, "grpo.entropy_coef"),
    ({"ppo_epochs": 0}, "grpo.ppo_epochs"),
    ({"adv_eps": -1e-6}, "grpo.adv_eps"),
    ({"token_alpha": math.nan}, "grpo.token_alpha"),
    ({"aggregation": "sum"}, "grpo.aggregation"),
    ({"task_weights": {"gen": -1.0}}, "grpo.task_weights.gen"),
    ({"rewards": {"query_gen": {}}}, "grpo.rewards.query_gen"),
    ({"rewards": {"query_gen": {"recall_at_k": "high"}}}, "grpo.rewards.query_gen.recall_at_k"),
])
def test_grpo_spec_errors_name_the_field(kw, needle):
    with pytest.raises(ValueError, match=needle):
        GRPOSpec(**kw)


def test_grpo_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "grpo.yaml"
    path.write_text("out_dir: x\n"
                    "grpo:\n"
                    "  group_size: 4\n"
                    "  eps_high: 0.28\n"
                    "  dual_clip: 3.0\n"
                    "  kl_estimator: k2\n"
                    "  rewards:\n"
                    "    query_gen: {recall_at_k: 1.0, format: 0.2}\n"
                    "    query_ad: {label_correct: 1.0}\n")
    job = JobConfig.load(path, ["grpo.kl_beta=0", "grpo.adv_eps=1e-4", "grpo.aggregation=seq_mean"])
    g = job.grpo
    assert (g.group_size, g.eps_high, g.dual_clip, g.kl_estimator, g.kl_beta, g.adv_eps, g.aggregation) == \
        (4, 0.28, 3.0, "k2", 0, 1e-4, "seq_mean")
    assert g.rewards == {"query_gen": {"recall_at_k": 1.0, "format": 0.2}, "query_ad": {"label_correct": 1.0}}
    again = tmp_path / "again.yaml"
    again.write_text(job.to_yaml())
    assert JobConfig.load(again).to_dict() == job.to_dict()
    with pytest.raises(ValueError, match="bogus"):
        JobConfig.load(path, ["grpo.bogus=1"])
    with pytest.raises(ValueError, match="grpo.group_size"):
        JobConfig.load(path, ["grpo.group_size=1"])
