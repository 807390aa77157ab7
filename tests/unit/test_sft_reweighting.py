import math

import pytest
import torch

from megatron_ads.train.sft import InstanceReweighter, TaskReweighter, label_balance_weights, weighted_loss


def test_eq3_perplexity_and_eq5_weights_by_hand():
    nll = torch.tensor([[1.0, 3.0, 9.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    ppl = InstanceReweighter.perplexity(nll, mask)
    assert torch.allclose(ppl, torch.tensor([math.exp(2.0), math.exp(2.0)]))
    r = InstanceReweighter(beta=0.5, w_min=0.2, w_max=5.0, previous={"a": 10.0, "b": 3.0, "c": 1.0})
    assert r.weight("a", 7.0) == pytest.approx(math.exp(-0.5 * 3.0))      # learned: down-weighted
    assert r.weight("b", 3.0) == pytest.approx(1.0)                       # no progress
    assert r.weight("c", 3.0) == pytest.approx(math.exp(0.5 * 2.0))       # got worse: up-weighted
    assert r.weight("a", -100.0) == 0.2 and r.weight("c", 100.0) == 5.0   # clipped
    assert r.weight("new", 4.0) == 1.0


def test_batch_weights_roll_and_state_round_trip():
    r = InstanceReweighter(beta=1.0)
    nll, mask = torch.full((2, 4), 1.0), torch.ones(2, 4)
    w = r.weights(["x", "y"], nll, mask)
    assert torch.equal(w, torch.ones(2))
    r.roll_checkpoint()
    w2 = r.weights(["x", "y"], torch.full((2, 4), 0.5), mask)
    delta = math.exp(1.0) - math.exp(0.5)
    assert torch.allclose(w2, torch.full((2,), max(math.exp(-delta), r.w_min)))
    again = InstanceReweighter()
    again.load_state_dict(r.state_dict())
    assert again.state_dict() == r.state_dict()


def test_eq7_task_weights_by_hand_and_general_task():
    t = TaskReweighter(tasks=["query_ad", "ad_user"], alpha=2.0)
    lam = t.update({"query_ad": 0.9, "ad_user": 0.6})
    d1, d2 = 0.1 ** 2, 0.4 ** 2
    assert lam["query_ad"] == pytest.approx(d1 / (d1 + d2)) and lam["ad_user"] == pytest.approx(d2 / (d1 + d2))
    g = TaskReweighter(tasks=["a", "b"], general_task="general", general_weight=0.2)
    lam = g.update({"a": 0.5, "b": 0.5})
    assert lam == {"a": pytest.approx(0.4), "b": pytest.approx(0.4), "general": 0.2}
    with pytest.raises(ValueError, match="missing"):
        g.update({"a": 0.5})


def test_harder_task_weight_rises_across_intervals():
    t = TaskReweighter(tasks=["easy", "hard"], alpha=1.0)
    # the easy task keeps improving while the hard one stalls: its share must rise interval after interval
    for m_easy in (0.6, 0.75, 0.9):
        t.update({"easy": m_easy, "hard": 0.55})
    shares = [h["hard"] for h in t.history]
    assert shares == sorted(shares) and shares[-1] > shares[0]
    again = TaskReweighter(tasks=["easy", "hard"])
    again.load_state_dict(t.state_dict())
    assert again.lambdas == t.lambdas and again.history == t.history


def test_eq2_weighted_loss():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, 0.5, 2.0, 1.0])
    out = weighted_loss(loss, ["a", "a", "b", "b"], w, {"a": 0.25, "b": 0.75})
    assert out.item() == pytest.approx(0.25 * (1.0 + 1.0) / 2 + 0.75 * (6.0 + 4.0) / 2)


def test_label_balance_weights_by_hand():
    # two fields, each 3 "good" : 1 "bad" over 4 rows -> good weighs 4 / (2 * 3) = 2/3, bad 4 / (2 * 1) = 2;
    # a row takes its rarest label's weight: [2/3, 2/3, 2, 2], mean 4/3 -> normalized [0.5, 0.5, 1.5, 1.5]
    labels = [("good", "good"), ("good", "good"), ("good", "bad"), ("bad", "good")]
    assert label_balance_weights(labels, 1.0) == pytest.approx([0.5, 0.5, 1.5, 1.5])
    # gamma = 0.5: good sqrt(2/3), bad sqrt(2) -> the bad rows weigh sqrt(3) times the good ones, mean 1
    half = label_balance_weights(labels, 0.5)
    assert half[2] / half[0] == pytest.approx(math.sqrt(3)) and sum(half) / 4 == pytest.approx(1.0)
    assert label_balance_weights(labels, 0.0) == pytest.approx([1.0] * 4)
    # three classes a, a, b, c: a weighs 4 / (3 * 2) = 2/3, b and c 4 / 3; mean (2/3 + 2/3 + 4/3 + 4/3) / 4 = 1
    assert label_balance_weights([("a",), ("a",), ("b",), ("c",)], 1.0) == pytest.approx([2 / 3, 2 / 3, 4 / 3, 4 / 3])
    assert label_balance_weights([("x",), ("y",)], 1.0) == pytest.approx([1.0, 1.0])  # balanced: unchanged
    assert label_balance_weights([], 1.0) == []
    with pytest.raises(ValueError, match="gamma"):
        label_balance_weights(labels, -1.0)


def test_lambda_floor_keeps_a_solved_task_training():
    # literal Eq. 7: a task at metric 1.0 gets lambda 0
    literal = TaskReweighter(tasks=["a", "b"])
    assert literal.update({"a": 1.0, "b": 0.4}) == {"a": 0.0, "b": 1.0}
    # floor 0.05 of the share: lambda_t = 0.05 + (1 - 2 * 0.05) * p_t with p = (0, 1)
    floored = TaskReweighter(tasks=["a", "b"], lambda_min=0.05)
    lam = floored.update({"a": 1.0, "b": 0.4})
    assert lam["a"] == pytest.approx(0.05) and lam["b"] == pytest.approx(0.95)
    # with a general task the floor is a fraction of the adaptive share (1 - 0.1)
    g = TaskReweighter(tasks=["a", "b"], lambda_min=0.05, general_task="general", general_weight=0.1)
    lam = g.update({"a": 1.0, "b": 1.0})  # both solved: equal split, nothing below the floor
    assert lam == pytest.approx({"a": 0.45, "b": 0.45, "general": 0.1})
    lam = g.update({"a": 1.0, "b": 0.0})
    assert lam["a"] == pytest.approx(0.9 * 0.05) and sum(lam.values()) == pytest.approx(1.0)


def test_lambda_ema_smooths_the_proportions_by_hand():
    r = TaskReweighter(tasks=["a", "b"], lambda_ema=0.5)
    # previous p = (0.5, 0.5) (initial split); new p = (0.2, 0.8) from d = (0.2, 0.8)
    lam = r.update({"a": 0.8, "b": 0.2})
    assert lam == pytest.approx({"a": 0.35, "b": 0.65})
    # next: new p = (1, 0) -> 0.5 * (0.35, 0.65) + 0.5 * (1, 0)
    lam = r.update({"a": 0.0, "b": 1.0})
    assert lam == pytest.approx({"a": 0.675, "b": 0.325})
    # with a floor too: p is recovered from lambda through the floor, so the smoothing is on p
    f = TaskReweighter(tasks=["a", "b"], lambda_ema=0.5, lambda_min=0.1)
    lam = f.update({"a": 1.0, "b": 0.0})  # p = 0.5 * (0.5, 0.5) + 0.5 * (0, 1) = (0.25, 0.75)
    assert lam == pytest.approx({"a": 0.1 + 0.8 * 0.25, "b": 0.1 + 0.8 * 0.75})


def test_lambda_settings_are_checked():
    with pytest.raises(ValueError, match="lambda_min"):
        TaskReweighter(tasks=["a", "b"], lambda_min=0.5)  # 2 * 0.5 leaves nothing to distribute
    with pytest.raises(ValueError, match="lambda_ema"):
        TaskReweighter(tasks=["a"], lambda_ema=1.0)
    from megatron_ads.config.train import SFTSpec

    with pytest.raises(ValueError, match="sft.lambda_min"):
        SFTSpec(tasks=["query_ad", "ad_user"], lambda_min=0.6)
    with pytest.raises(ValueError, match="sft.lambda_ema"):
        SFTSpec(lambda_ema=-0.1)
    assert SFTSpec().lambda_min == 0.05 and SFTSpec().lambda_ema == 0.0


def test_eq5_weight_survives_huge_regressions_and_infinite_perplexity():
    """A sample whose perplexity regressed by thousands (exp(-β·Δ) beyond float range) gets w_max, not an
    OverflowError (seen in an ads SFT run from a general-only base); inf - inf counts as no progress."""
    r = InstanceReweighter(beta=1.0, w_min=0.2, w_max=5.0)
    r.previous = {"up": 1.0, "down": 5000.0, "inf": math.inf, "to_inf": 3.0}
    assert r.weight("up", 5000.0) == 5.0                    # Δ = -4999: exp(4999) would overflow
    assert r.weight("down", 1.0) == 0.2                     # Δ = +4999: exp(-4999) underflows to 0 -> w_min
    assert r.weight("inf", math.inf) == 1.0                 # Δ undefined
    assert r.weight("to_inf", math.inf) == 5.0              # Δ = -inf
    assert r.weight("up", 1.0 + math.log(2.0)) == pytest.approx(2.0)  # unchanged inside the clip: exp(ln 2)
