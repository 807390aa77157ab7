"""TPPO math (train/tppo.py) against hand-computed values and spec §C invariants 14–20.

Shapes: B sequences, T positions, C = 3 classes, V actions.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from megatron_ads.train import tppo
from megatron_ads.config.train import GRPOSpec, PPOSpec, RMSpec
from megatron_ads.train.grpo import aggregate_loss, masked_fraction


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------- §C14 length-weighted penalty (Eq. 4–5)

def test_lwp_values_at_suggested_length_and_half_point():
    for s_l in (5.0, 30.0):
        close(tppo.lwp(s_l, s_l, 1.0), 0.9975273768433653)  # sigmoid(6)
        for alpha in (0.5, 1.0, 2.0):
            close(tppo.lwp(s_l + 6.0 / alpha, s_l, alpha), 0.5)
    # hand value of Eq. 4 itself: l=12, s_l=10, alpha=1 -> 1 / (1 + e^(2 - 6))
    close(tppo.lwp(12, 10, 1.0), 1.0 / (1.0 + math.exp(-4.0)))


def test_lwp_shape_bounds_and_monotonicity():
    s_l = 20.0
    l = torch.arange(10, 60, dtype=torch.float64)  # positions where float64 resolves 1 - lwp and lwp
    for alpha in (0.5, 1.0, 2.0):
        w = tppo.lwp(l, s_l, alpha)
        assert bool(((w > 0) & (w < 1)).all())
        assert bool((tppo.lwp(torch.arange(0, 21.0), s_l, alpha) > 0.997).all())
        assert bool((w[l <= s_l] > 0.997).all())
        assert bool((w[1:] < w[:-1]).all())  # strictly decreasing
        # the float path agrees with the tensor path
        close([tppo.lwp(float(x), s_l, alpha) for x in l[::7]], w[::7])
    assert tppo.lwp(s_l + 100, s_l, 1.0) < 1e-30 and tppo.lwp(1e6, s_l, 1.0) == 0.0  # -> 0
    late = l[l > s_l]
    assert bool((tppo.lwp(late, s_l, 1.0) < tppo.lwp(late, s_l, 0.5)).all())  # larger alpha, smaller lwp
    with pytest.raises(ValueError, match="alpha"):
        tppo.lwp(1.0, 1.0, -0.1)


def test_apply_lwp_uses_one_based_response_positions():
    # row 0: 2 prompt tokens then 3 response tokens; row 1: 2 response tokens then padding
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 0, 0, 0]])
    assert tppo.response_positions(mask).tolist() == [[0, 0, 1, 2, 3], [1, 2, 0, 0, 0]]
    r = torch.tensor([[9.0, 9.0, 1.0, -1.0, 2.0], [0.5, 0.5, 9.0, 9.0, 9.0]])
    out = tppo.apply_lwp(r, mask, s_l=2.0, alpha=1.0)
    expect = [[0, 0, 1.0 * tppo.lwp(1, 2, 1), -1.0 * tppo.lwp(2, 2, 1), 2.0 * tppo.lwp(3, 2, 1)],
              [0.5 * tppo.lwp(1, 2, 1), 0.5 * tppo.lwp(2, 2, 1), 0, 0, 0]]
    close(out, expect)
    # a late negative reward is shrunk towards 0, not made more negative (spec §B.1 AMBIG)
    late = tppo.apply_lwp(torch.tensor([[-1.0] * 30]), torch.ones(1, 30), s_l=5.0)
    assert bool((late <= 0).all()) and float(late[0, -1]) > -1e-6


def test_suggested_length_is_the_quantile():
    close(tppo.suggested_length(list(range(1, 11)), 0.9), 9.1)  # linear interpolation
    close(tppo.suggested_length([7, 7, 7]), 7.0)
    with pytest.raises(ValueError, match="lengths"):
        tppo.suggested_length([])


# ---------------------------------------------------------------- §C15 word -> token labels

@pytest.fixture(scope="module")
def tokenizer():
    from megatron_ads.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(1024)


def test_sub_tokens_inherit_their_words_label(tokenizer):
    response = "relevant café, Nike running\n<Query>levantine tents</Query>"
    words = tppo.split_words(response)
    assert [response[s:e] for s, e, _ in words] == ["relevant", "café", "Nike", "running", "Query",
                                                    "levantine", "tents", "Query"]
    labels = [2, 1, 2, 2, 0, 1, 2, 0]  # the tags' words are format, not content: class 0
    spans = tppo.split_words(response, labels)
    ids, cls = tppo.word_token_labels(tokenizer, response, spans)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    assert ids == enc["input_ids"] and len(cls) == len(ids)  # token count = tokenizer length
    by_word = {}
    for (a, b), c in zip(enc["offset_mapping"], cls):
        hit = [(s, e, lab) for s, e, lab in spans if s < b and a < e]
        if hit:
            assert c == hit[0][2]
            by_word.setdefault(hit[0][:2], []).append(c)
        else:  # separators: comma, space, newline, "<", ">", "</"
            assert c == 0 and not response[a:b].strip(" \n<>/,")
    multi = {k: v for k, v in by_word.items() if len(v) > 1}
    assert multi, "the tiny tokenizer splits at least one word into several sub-tokens"
    for (s, e), cs in multi.items():
        assert len(set(cs)) == 1  # every sub-token of a word carries the word's class


def test_prompt_eos_and_padding_get_class_zero(tokenizer):
    response = "cheap tents, tents near me"
    spans = tppo.split_words(response, [1, 2, 2, 1, 1])
    bare_ids, bare = tppo.word_token_labels(tokenizer, response, spans)
    prompt = tokenizer("keyword: tents\nAnswer:\n", add_special_tokens=False)["input_ids"]
    n = len(prompt) + len(bare_ids) + 1 + 4
    ids, cls = tppo.word_token_labels(tokenizer, response, spans, prompt_ids=prompt, add_eos=True, pad_to=n)
    assert len(ids) == len(cls) == n
    assert ids[:len(prompt)] == prompt and cls[:len(prompt)] == [0] * len(prompt)
    assert cls[len(prompt):len(prompt) + len(bare)] == bare
    assert ids[len(prompt) + len(bare)] == tokenizer.eos_token_id
    assert cls[len(prompt) + len(bare):] == [0] * 5
    assert ids[-4:] == [tokenizer.pad_token_id] * 4
    assert set(bare) == {0, 1, 2}  # the comma is a separator
    assert tppo.JUDGE_TO_CLASS == {0: 1, 1: 2}
    with pytest.raises(ValueError, match="labels"):
        tppo.split_words(response, [1, 2])
    with pytest.raises(ValueError, match="word_spans"):
        tppo.word_token_labels(tokenizer, response, [(0, 5, 3)])
    with pytest.raises(ValueError, match="pad_to"):
        tppo.word_token_labels(tokenizer, response, spans, pad_to=2)


# ---------------------------------------------------------------- §C16 balance mask

@pytest.mark.parametrize("p2", [0.9, 0.1, 0.5, 0.97])
def test_balance_mask_keeps_the_ratio_and_every_label_zero(p2):
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        labels = torch.where(torch.rand(6, 40, generator=g) < p2, 2, 1)
        labels[torch.rand(6, 40, generator=g) < 0.2] = 0
        valid = torch.ones(6, 40, dtype=torch.bool)
        valid[:, 30:] = False  # padding
        keep = tppo.balance_mask(labels, valid, generator=torch.Generator().manual_seed(seed))
        n1, n2 = int((keep & (labels == 1)).sum()), int((keep & (labels == 2)).sum())
        assert n1 > 0 and 1 / 3 <= n2 / n1 <= 3
        assert bool((keep[valid & (labels == 0)]).all())  # label 0 never dropped
        assert not bool(keep[~valid].any())  # nothing outside the valid tokens
        # the minority class is kept whole
        minority = 1 if int((valid & (labels == 2)).sum()) > int((valid & (labels == 1)).sum()) else 2
        assert bool(keep[valid & (labels == minority)].all())


def test_balance_mask_is_seeded_and_leaves_balanced_batches_alone():
    labels = torch.tensor([[2] * 20 + [1] * 2 + [0] * 3])
    valid = torch.ones_like(labels, dtype=torch.bool)
    a = tppo.balance_mask(labels, valid, generator=torch.Generator().manual_seed(3))
    b = tppo.balance_mask(labels, valid, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and int((a & (labels == 2)).sum()) == 6  # floor(3 * 2)
    even = torch.tensor([[2, 2, 1, 0, 1, 2, 1]])
    assert torch.equal(tppo.balance_mask(even, torch.ones_like(even, dtype=torch.bool)),
                       torch.ones_like(even, dtype=torch.bool))
    # no minority class at all: the majority cannot be balanced and is dropped; label 0 stays
    only2 = torch.tensor([[2, 2, 0, 2]])
    assert tppo.balance_mask(only2, torch.ones_like(only2, dtype=torch.bool)).tolist() == [[False, False, True, False]]
    with pytest.raises(ValueError, match="max_ratio"):
        tppo.balance_mask(even, torch.ones_like(even, dtype=torch.bool), max_ratio=0.5)


# ---------------------------------------------------------------- §C17–18 reward-model loss

def _rm_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 6, 3, generator=g)
    labels = torch.randint(0, 3, (3, 6), generator=g)
    valid = torch.rand(3, 6, generator=g) < 0.6
    valid[:, 0] = True
    labels[:, 0] = 2
    return logits, labels, valid, torch.tensor([2.0, 1.0, 1.5])


def test_local_loss_ignores_tokens_outside_the_valid_set():
    logits, labels, valid, rg = _rm_batch()
    base = tppo.token_rm_loss(logits, labels, valid, rg)
    changed = logits.clone()
    changed[~valid] = torch.randn(int((~valid).sum()), 3) * 10
    other = tppo.token_rm_loss(changed, labels, valid, rg)
    close(other.local, base.local)
    close(other.total, base.total)
    x = logits.clone().requires_grad_(True)
    tppo.token_rm_loss(x, labels, valid, rg).total.backward()
    assert float(x.grad[~valid].abs().max()) == 0.0


def test_local_loss_with_unit_weights_is_standard_ce_and_weights_scale_by_class():
    logits, labels, valid, rg = _rm_batch(1)
    out = tppo.token_rm_loss(logits, labels, valid, rg)
    close(out.local, F.cross_entropy(logits[valid], labels[valid]))
    w = torch.tensor([0.5, 2.0, 3.0])
    nll = F.cross_entropy(logits[valid], labels[valid], reduction="none")
    weighted = tppo.token_rm_loss(logits, labels, valid, rg, class_weights=w)
    close(weighted.local, (nll * w[labels[valid]]).sum() / int(valid.sum()))
    per_seq = tppo.token_rm_loss(logits, labels, valid, rg, local_reduction="per_seq_sum")
    close(per_seq.local, nll.sum() / 3)  # Eq. 1 literally: sum over the valid set / n


def test_global_loss_hand_value_and_zero_at_the_target():
    # P = [0, .5, .5] -> E = 1.5 ; P = [0, 0, 1] -> E = 2 ; mean over the two labeled tokens = 1.75
    probs = torch.tensor([[[1e-12, 0.5, 0.5], [1e-12, 1e-12, 1.0], [1.0, 1e-12, 1e-12]]])
    logits = probs.log()
    labels = torch.tensor([[1, 2, 0]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    out = tppo.token_rm_loss(logits, labels, valid, torch.tensor([2.0]))
    close(out.mean_value_B, [1.75], atol=1e-6)
    close(out.global_, 0.0625, atol=1e-6)
    close(tppo.token_rm_loss(logits, labels, valid, torch.tensor([1.75])).global_, 0.0, atol=1e-9)
    # "valid": the separator (E = 0) joins the mean: (1.5 + 2 + 0) / 3
    lit = tppo.token_rm_loss(logits, labels, valid, torch.tensor([2.0]), global_tokens="valid")
    close(lit.mean_value_B, [3.5 / 3], atol=1e-6)
    # L_global = 0 whenever the target is the mean soft value, on any batch
    logits, labels, valid, _ = _rm_batch(2)
    m = tppo.token_rm_loss(logits, labels, valid, torch.zeros(3)).mean_value_B
    target = torch.nan_to_num(m, nan=0.0)
    close(tppo.token_rm_loss(logits, labels, valid, target).global_, 0.0, atol=1e-10)


def test_total_loss_is_linear_in_the_weights():
    logits, labels, valid, rg = _rm_batch(3)
    parts = tppo.token_rm_loss(logits, labels, valid, rg)
    for w in (0.0, 0.3, 0.5, 1.0):
        out = tppo.token_rm_loss(logits, labels, valid, rg, local_weight=w)
        close(out.total, w * parts.local + (1 - w) * parts.global_)
    t0 = tppo.token_rm_loss(logits, labels, valid, rg, local_weight=0.0).total
    t1 = tppo.token_rm_loss(logits, labels, valid, rg, local_weight=1.0).total
    close(tppo.token_rm_loss(logits, labels, valid, rg, local_weight=0.3).total, 0.3 * t1 + 0.7 * t0)
    with pytest.raises(ValueError, match="local_weight"):
        tppo.token_rm_loss(logits, labels, valid, rg, local_weight=1.5)


def test_expected_class_value():
    probs = torch.tensor([[[0.2, 0.3, 0.5]]])
    close(tppo.expected_class_value(probs.log()), [[0.3 + 1.0]])


def test_token_reward_from_probs():
    probs = torch.tensor([[[0.1, 0.2, 0.7], [0.1, 0.6, 0.3], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]]])
    mask = torch.tensor([[1, 1, 1, 0]])
    close(tppo.token_reward_from_probs(probs, mask), [[0.5, -0.3, 0.0, 0.0]])
    close(tppo.token_reward_from_probs(probs, mask, kind="class_map"), [[1.0, -1.0, 0.0, 0.0]])
    close(tppo.token_reward_from_probs(probs), [[0.5, -0.3, 0.0, 0.2]])


# ---------------------------------------------------------------- §C19 optimal policy (Eq. 9)

def test_optimal_policy_hand_value_and_limits():
    ref = torch.tensor([0.5, 0.5], dtype=torch.float64)
    close(tppo.optimal_policy(ref, torch.tensor([0.0, math.log(3.0)]), beta=1.0), [0.25, 0.75])
    g = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(4, 7, generator=g, dtype=torch.float64), dim=-1)
    adv = torch.randn(4, 7, generator=g, dtype=torch.float64)
    for beta in (0.1, 1.0, 10.0):
        close(tppo.optimal_policy(ref, adv, beta).sum(-1), torch.ones(4))
    close(tppo.optimal_policy(ref, torch.full_like(adv, 2.5), 0.7), ref)  # A = const -> pi_ref
    close(tppo.optimal_policy(ref, adv, 1e9), ref)  # beta -> inf
    close(tppo.optimal_policy(ref, adv, math.inf), ref)
    sharp = tppo.optimal_policy(ref, adv, 1e-4)  # beta -> 0: all mass on argmax A
    close(sharp, F.one_hot(adv.argmax(-1), 7).double())
    with pytest.raises(ValueError, match="beta"):
        tppo.optimal_policy(ref, adv, 0.0)


def test_optimal_policy_maximizes_the_kl_regularized_objective():
    g = torch.Generator().manual_seed(1)
    ref = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), dim=0)
    adv = torch.randn(6, generator=g, dtype=torch.float64)
    beta = 0.5

    def objective(pi):  # Eq. 8: E_pi[A] - beta KL(pi || pi_ref)
        return float((pi * adv).sum() - beta * (pi * (pi / ref).log()).sum())

    best = objective(tppo.optimal_policy(ref, adv, beta))
    for _ in range(50):
        other = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64) * 2, dim=0)
        assert objective(other) < best
    # and its value is beta * log Z
    close(best, beta * math.log(float((ref * (adv / beta).exp()).sum())))


# ---------------------------------------------------------------- GAE and the value loss

def test_gae_three_tokens_by_hand():
    # gamma=1, lambda=0.95; r = [1, 0, 2], V = [0.5, 1.0, 1.5], V after the end = 0
    # d2 = 2 - 1.5 = 0.5                  A2 = 0.5
    # d1 = 0 + 1.5 - 1.0 = 0.5            A1 = 0.5 + 0.95 * 0.5 = 0.975
    # d0 = 1 + 1.0 - 0.5 = 1.5            A0 = 1.5 + 0.95 * 0.975 = 2.42625
    r = torch.tensor([[1.0, 0.0, 2.0]])
    v = torch.tensor([[0.5, 1.0, 1.5]])
    adv, ret = tppo.gae(r, v, torch.ones(1, 3))
    close(adv, [[2.42625, 0.975, 0.5]])
    close(ret, [[2.92625, 1.975, 2.0]])
    # gamma = 0.9, lambda = 0.5: d2 = 0.5, d1 = 0.9*1.5 - 1 = 0.35, d0 = 1 + 0.9 - 0.5 = 1.4
    # A1 = 0.35 + 0.45*0.5 = 0.575, A0 = 1.4 + 0.45*0.575 = 1.65875
    adv, _ = tppo.gae(r, v, torch.ones(1, 3), gamma=0.9, lam=0.5)
    close(adv, [[1.65875, 0.575, 0.5]])


def test_gae_limits_and_padding():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(2, 5, generator=g)
    v = torch.randn(2, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # lambda = gamma = 1: Monte Carlo, A_t = sum_{k>=t} r_k - V_t (row 1 ends after 3 tokens)
    adv, ret = tppo.gae(r, v, mask, gamma=1.0, lam=1.0)
    mc0 = r[0].flip(0).cumsum(0).flip(0)
    mc1 = r[1, :3].flip(0).cumsum(0).flip(0)
    close(adv[0], mc0 - v[0], atol=1e-5)
    close(adv[1, :3], mc1 - v[1, :3], atol=1e-5)
    close(ret[1, :3], mc1, atol=1e-5)
    assert adv[1, 3:].abs().max() == 0 and ret[1, 3:].abs().max() == 0
    # garbage at padded positions changes nothing; a padded row equals the same row alone
    r2, v2 = r.clone(), v.clone()
    r2[1, 3:], v2[1, 3:] = 100.0, -100.0
    adv2, _ = tppo.gae(r2, v2, mask)
    alone, _ = tppo.gae(r[1:, :3], v[1:, :3], torch.ones(1, 3))
    close(adv2[1, :3], alone[0])
    # gamma = 0: A = r - V
    adv0, _ = tppo.gae(r, v, mask, gamma=0.0)
    close(adv0, (r - v) * mask)
    with pytest.raises(ValueError, match="gamma"):
        tppo.gae(r, v, mask, gamma=1.5)


def test_value_loss_clipping_by_hand():
    v, old = torch.tensor([1.0, 1.0, 0.6]), torch.tensor([0.5, 0.5, 0.5])
    ret = torch.tensor([2.0, 0.0, 2.0])
    # 1: v_clip = 0.7 -> max(1, 1.69)/2 ; 2: max(1, 0.49)/2 ; 3: inside the clip -> (1.4^2)/2
    close(tppo.value_loss(v, old, ret, clip=0.2), [0.845, 0.5, 0.98])
    close(tppo.value_loss(v, old, ret, clip=None), [0.5, 0.5, 0.98])
    x = v.clone().requires_grad_(True)
    tppo.value_loss(x, old, ret, clip=0.2).sum().backward()
    close(x.grad, [0.0, 1.0, -1.4])  # case 1: the clipped branch binds, no gradient


def test_masked_whiten_and_reward_helpers():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    w = tppo.masked_whiten(x, m)
    close(w[0, :3].mean(), 0.0)
    close(w[0, :3].var(unbiased=False), 1.0, atol=1e-5)
    assert float(w[0, 3]) == 0.0
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    close(tppo.sentence_to_token_rewards(torch.tensor([2.0, -1.0, 5.0]), mask),
          [[0, 0, 2.0, 0], [0, 0, -1.0, 0], [0, 0, 0, 0]])
    close(tppo.shaped_rewards(torch.ones(3, 4), mask, kl_BT=torch.full((3, 4), 0.5), kl_beta=0.2),
          mask * 0.9)


# ---------------------------------------------------------------- §C20 token-level PPO

def _ppo(logp, old, adv, values, old_values, returns, mask, *, vf_coef=0.0, value_clip=0.2, **policy):
    """``ppo_token_loss`` aggregated as the PPO trainer does (token_mean over the mask): total, policy, value,
    KL means and the clipped share."""
    total_BT, pl, kl_BT, vl_BT = tppo.ppo_token_loss(logp, old, adv, values, old_values, returns,
                                                     vf_coef=vf_coef, value_clip=value_clip, **policy)
    mean = lambda x: aggregate_loss(x, mask)  # noqa: E731
    return (mean(total_BT), mean(pl.loss_BT), mean(vl_BT), None if kl_BT is None else mean(kl_BT.detach()),
            masked_fraction(pl.clipped_low_BT | pl.clipped_high_BT, mask))


def test_on_policy_objective_is_mean_advantage_and_clipped_side_has_no_gradient():
    adv = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    logp = torch.tensor([[-1.0, -2.0, -0.5, -3.0]], requires_grad=True)
    zeros = torch.zeros(1, 4)
    total, policy, _, kl, clip_frac = _ppo(logp, logp.detach(), adv, zeros, zeros, zeros, mask)
    close(policy, -(1.0 - 2.0 + 0.5) / 3)  # ratio 1: objective = mean A
    assert clip_frac == 0.0 and kl is None
    total.backward()
    close(logp.grad, -adv * mask / 3)
    # ratio outside [1 - eps, 1 + eps] on the binding side: no gradient; on the other side: gradient
    eps = GRPOSpec().eps_low
    old = torch.zeros(1, 4)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.5)]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # binds, binds, free, free
    total, _, _, _, clip_frac = _ppo(logp, old, adv, zeros, zeros, zeros, torch.ones(1, 4), eps_low=eps,
                                     eps_high=eps)
    total.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] == 0
    close(logp.grad[0, 2:], [-0.5 / 4, 1.5 / 4])  # -A * ratio / N
    assert clip_frac == 0.5 and 1 + eps < 1.5 and 1 - eps > 0.5


def test_ppo_token_loss_value_and_kl_terms():
    logp = torch.tensor([[-1.0, -1.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -0.5]])
    v, ret = torch.tensor([[0.0, 1.0]], requires_grad=True), torch.tensor([[1.0, 1.0]])
    total, policy, value, kl, _ = _ppo(logp, logp.detach(), torch.zeros(1, 2), v, v.detach(), ret, torch.ones(1, 2),
                                       vf_coef=0.5, value_clip=None, ref_logp_BT=ref, kl_estimator="k1",
                                       kl_beta=0.1)
    close(kl, 0.0)  # k1: (0.5 + -0.5) / 2
    close(value, 0.25)  # (0.5 + 0) / 2
    close(total, 0.5 * 0.25)
    total.backward()
    close(v.grad, [[-0.5 * 1.0 / 2, 0.0]])  # vf_coef · (V − R) / N
    close(logp.grad, [[0.1 / 2, 0.1 / 2]])  # k1 = logp − ref: β / N per token, A = 0
    # clipped value loss (clip 0.2): V moved beyond V_old ± clip keeps the larger of the two errors
    _, _, value, _, _ = _ppo(logp, logp.detach(), torch.zeros(1, 2), torch.tensor([[0.5, 1.0]]),
                             torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 1.0]]), torch.ones(1, 2), vf_coef=1.0)
    close(value, 0.5 * (2.0 - 0.2) ** 2 / 2)  # max((0.5 − 2)², (0.2 − 2)²) = 3.24, ½ of it over 2 tokens
    with pytest.raises(ValueError, match="kl_beta"):
        _ppo(logp, logp, torch.zeros(1, 2), v, v, ret, torch.ones(1, 2), kl_beta=0.1)
    with pytest.raises(ValueError, match="vf_coef"):
        _ppo(logp, logp, torch.zeros(1, 2), v, v, ret, torch.ones(1, 2), vf_coef=-1.0)


# ---------------------------------------------------------------- the TPPO settings (config sections)

def test_tppo_defaults_are_the_papers():
    p, r = PPOSpec(), RMSpec()
    assert (p.gamma, p.lam, p.lwp_quantile, p.value_clip, p.kl_mode) == (1.0, 0.95, 0.9, 0.2, "reward")
    assert p.lwp_alpha is None and p.lwp_length is None and p.token_credit  # lwp on with ppo.lwp_alpha (TPPO: 1.0)
    assert (r.local_weight, r.balance_max_ratio, r.token_reward, r.global_tokens) == (0.5, 3.0, "prob_diff",
                                                                                    "labeled")


@pytest.mark.parametrize("kw, needle", [
    ({"lwp_alpha": -1.0}, "ppo.lwp_alpha"), ({"lwp_length": 0.0}, "ppo.lwp_length"),
    ({"lwp_quantile": 0.0}, "ppo.lwp_quantile"), ({"gamma": 1.1}, "ppo.gamma"), ({"lam": -0.1}, "ppo.lam"),
    ({"value_clip": 0.0}, "ppo.value_clip"), ({"vf_coef": -1.0}, "ppo.vf_coef"), ({"kl_mode": "both"}, "ppo.kl_mode"),
    ({"kl_estimator": "k4"}, "ppo.kl_estimator"), ({"value_scale": 0.0}, "ppo.value_scale"),
])
def test_ppo_spec_errors_name_the_field(kw, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        PPOSpec(**kw)
