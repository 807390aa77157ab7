"""RLPF math: Bradley–Terry loss, pairwise accuracy, the pointwise baseline and the scalar head
(train/reward_model.py), the length penalty and the perf_rm reward (rewards/perf.py), and multitext logs with
pair mining (data/multitext.py). Spec §C invariants 27–29.

Shapes: P pairs, N texts, B sequences, S positions, H hidden size.
"""

import math
from types import SimpleNamespace

import pytest
import torch

from megatron_ads.data import multitext
from megatron_ads.data.synthetic import true_ctr
from megatron_ads.rewards import perf
from megatron_ads.rewards.registry import REWARDS, RewardOutput, RewardResources
from megatron_ads.train import reward_model as rm

LN2 = math.log(2.0)


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


# ---------------------------------------------------------------- §C27 Bradley–Terry

def test_bt_loss_identities_and_hand_values():
    rw, rl = torch.tensor([0.0, 2.0, -1.0, 0.3]), torch.tensor([0.0, 1.0, 1.0, 0.3])
    close(rm.bt_loss(rw[:1], rl[:1]), LN2)  # equal scores
    close(rm.bt_loss(rw, rl), (-torch.log(torch.sigmoid(rw - rl))).mean())
    close(rm.bt_loss(rw[1:2], rl[1:2]), math.log(1 + math.exp(-1.0)))
    # swapping w and l with the sign of the scores flipped gives the same loss
    close(rm.bt_loss(-rl, -rw), rm.bt_loss(rw, rl))
    # the two orders are complementary probabilities: exp(-L(w,l)) + exp(-L(l,w)) = 1 per pair
    for a, b in zip(rw, rl):
        close(math.exp(-float(rm.bt_loss(a[None], b[None]))) + math.exp(-float(rm.bt_loss(b[None], a[None]))), 1.0)
    with pytest.raises(ValueError, match="r_l"):
        rm.bt_loss(rw, rl[:2])


def test_bt_loss_decreases_in_the_margin_and_gradient_is_minus_sigmoid():
    margins = torch.linspace(-6, 6, 25)
    losses = torch.stack([rm.bt_loss(m[None], torch.zeros(1)) for m in margins])
    assert bool((losses[1:] < losses[:-1]).all())
    rw = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    rl = torch.tensor([0.0, 1.0, 2.0], requires_grad=True)
    rm.bt_loss(rw, rl).backward()
    P = 3  # the loss is a mean over pairs
    close(rw.grad * P, -torch.sigmoid(rl - rw).detach())
    close(rl.grad * P, torch.sigmoid(rl - rw).detach())
    close(rw.grad * P, [-1 / (1 + math.exp(0.5)), -1 / (1 + math.exp(-2.0)), -0.5])  # by hand


def test_pairwise_accuracy():
    assert rm.pairwise_accuracy(torch.tensor([1.0, 2.0, 0.0, 5.0]), torch.tensor([0.0, 3.0, 0.0, 1.0])) == 0.625
    assert rm.pairwise_accuracy(torch.zeros(7), torch.zeros(7)) == 0.5  # a constant scorer is at chance
    with pytest.raises(ValueError):
        rm.pairwise_accuracy(torch.zeros(0), torch.zeros(0))


def test_pointwise_loss_bce_mse_and_impression_weighting():
    s, ctr = torch.tensor([0.0, 1.0]), torch.tensor([0.25, 0.5])
    # BCE with a soft label: -(c log sigmoid(s) + (1-c) log(1 - sigmoid(s)))
    p = torch.sigmoid(s)
    per = -(ctr * p.log() + (1 - ctr) * (1 - p).log())
    close(rm.pointwise_loss(s, ctr), per.mean())
    close(rm.pointwise_loss(s, ctr, kind="mse"), ((s - ctr) ** 2).mean())
    # weighting by impressions = one BCE term per impression with 0/1 clicks
    imp = torch.tensor([4.0, 2.0])
    clicks_expanded = torch.tensor([1.0, 0, 0, 0, 1, 0])
    s_expanded = torch.tensor([0.0] * 4 + [1.0] * 2)
    close(rm.pointwise_loss(s, ctr, imp),
          torch.nn.functional.binary_cross_entropy_with_logits(s_expanded, clicks_expanded))
    with pytest.raises(ValueError, match="ctr"):
        rm.pointwise_loss(s, torch.tensor([1.5, 0.0]))
    with pytest.raises(ValueError, match="kind"):
        rm.pointwise_loss(s, ctr, kind="huber")


# ---------------------------------------------------------------- §C29 length penalty

def test_length_penalty_zero_up_to_L0_then_increasing():
    L = torch.arange(0, 200, dtype=torch.float64)
    for form in ("linear", "quadratic"):
        pen = rm.length_penalty(L, 90, 0.02, form)
        assert bool((pen[L <= 90] == 0).all())
        assert bool((pen[L >= 90][1:] > pen[L >= 90][:-1]).all())  # strictly increasing after L0
        close([rm.length_penalty(float(x), 90, 0.02, form) for x in L[::13]], pen[::13])
    assert rm.length_penalty(100, 90, 0.02) == pytest.approx(0.2)
    assert rm.length_penalty(100, 90, 0.02, "quadratic") == pytest.approx(2.0)
    assert rm.length_penalty(torch.tensor([10, 95]), 90, 1.0).tolist() == [0.0, 5.0]  # integer lengths
    assert rm.length_penalty is perf.length_penalty
    with pytest.raises(ValueError, match="form"):
        rm.length_penalty(5, 1, 1, "cubic")
    with pytest.raises(ValueError, match="L0"):
        rm.length_penalty(5, -1, 1)


class _Scorer:
    def score(self, keywords, texts):
        return [float(len(k)) for k in keywords]


def _parse(task, text):
    if "|" not in text:
        return SimpleNamespace(fields={}, errors=["no separator"])
    title, desc = text.split("|", 1)
    return SimpleNamespace(fields={"title": title, "description": desc}, errors=[])


def test_perf_rm_reward_is_score_minus_length_penalty():
    assert "perf_rm" in REWARDS
    params = perf.PerfRMParams(L0=15, lam=0.5)
    fn = REWARDS["perf_rm"].build(params, RewardResources(perf_model=_Scorer(), parse=_parse))
    completions = ["Tents|Buy now", "Tents for every trip|Shop now and save", "no fields"]
    out = fn(["p"] * 3, completions, "ad_rewrite", [{"keyword": "tents"}] * 3)
    assert isinstance(out, RewardOutput)
    # score len("tents") = 5; "Tents. Buy now" is 14 chars (free); the joined long text is 39 chars
    assert len("Tents for every trip. Shop now and save") == 39
    assert out.values == [5.0, pytest.approx(5.0 - 0.5 * (39 - 15)), -1.0]
    words = perf.PerfRMReward(perf.PerfRMParams(L0=2, lam=1.0, unit="words", fields=[]), _Scorer(), None)
    assert words(["p"], ["one two three four"], "t", [{"keyword": "ab"}]).values == [0.0]  # 2 - (4 - 2)
    with pytest.raises(ValueError, match="perf_model"):
        REWARDS["perf_rm"].build(params, RewardResources(parse=_parse))
    with pytest.raises(ValueError, match="unit"):
        perf.PerfRMParams(unit="tokens")


# ---------------------------------------------------------------- scalar head

def test_scalar_head_reads_the_last_real_token():
    torch.manual_seed(0)
    head = rm.ScalarHead(8)
    h = torch.randn(3, 5, 8)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert rm.last_token_index(right).tolist() == [2, 4, 0] and rm.last_token_index(left).tolist() == [4, 4, 4]
    out = head(h, right)
    assert out.shape == (3,)
    close(out, head.proj(h[torch.arange(3), torch.tensor([2, 4, 0])]).squeeze(-1))
    h2 = h.clone()
    h2[0, 3:] = 99.0  # padding changes nothing
    close(head(h2, right), out)
    seq_first = rm.ScalarHead(8, seq_first=True)
    seq_first.load_state_dict(head.state_dict())
    close(seq_first(h.transpose(0, 1), right), out)  # megatron's [S, B, H]
    assert float(head.proj.bias.detach()) == 0.0
    with pytest.raises(ValueError, match="real token"):
        head(h, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="mask"):
        head(h, right[:, :4])


def test_per_position_scores_gathered_at_the_last_token_equal_the_head_readout():
    # what the reward model's pipeline does (attach_reward_head: scores at every position on the last stage,
    # gather_last in the loss) is the ScalarHead readout: the head acts row-wise
    head = rm.ScalarHead(8, seq_first=True, generator=torch.Generator().manual_seed(3))
    h_SBH = torch.randn(5, 3, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    with torch.no_grad():
        scores_BS, readout = head.token_scores(h_SBH), head(h_SBH, mask)
    assert scores_BS.shape == (3, 5)
    close(rm.gather_last(scores_BS, mask), readout)
    with pytest.raises(ValueError, match="mask"):
        rm.gather_last(scores_BS, mask[:, :4])
    # the init is a function of the generator's seed alone (every pipeline layout starts from one head)
    torch.manual_seed(123)
    again = rm.ScalarHead(8, seq_first=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.proj.weight, head.proj.weight) and float(again.proj.bias.detach()) == 0.0
    close(head.proj.weight.detach().std(), 1 / 3, atol=0.25)  # std 1/sqrt(H + 1) by default
    assert float(rm.ScalarHead(8, std=0.0).proj.weight.detach().abs().max()) == 0.0  # rm.head_init_std=0: a zero head
    wide = rm.ScalarHead(64, std=0.5, generator=torch.Generator().manual_seed(0))
    close(wide.proj.weight.detach().std(), 0.5, atol=0.1)


def test_head_with_several_outputs_gives_per_position_logits():
    # rm.kind=token: the same head with num_outputs=3 (TPPO's classes); num_outputs=1 keeps the scalar head exactly
    one = rm.ScalarHead(8, seq_first=True, generator=torch.Generator().manual_seed(3))
    again = rm.ScalarHead(8, seq_first=True, generator=torch.Generator().manual_seed(3), num_outputs=1)
    assert torch.equal(one.proj.weight, again.proj.weight) and one.proj.weight.shape == (1, 8)
    head = rm.ScalarHead(8, seq_first=True, generator=torch.Generator().manual_seed(3), num_outputs=3)
    assert head.proj.weight.shape == (3, 8) and head.proj.bias.shape == (3,) and head.num_outputs == 3
    h_SBH = torch.randn(5, 2, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = head.token_scores(h_SBH)
        assert logits.shape == (2, 5, 3)
        close(logits, h_SBH.transpose(0, 1) @ head.proj.weight.T + head.proj.bias)
        assert head(h_SBH, mask).shape == (2, 3) and one.token_scores(h_SBH).shape == (2, 5)
        close(head(h_SBH, mask), logits[torch.arange(2), torch.tensor([2, 4])])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_outputs"):
            rm.ScalarHead(8, num_outputs=bad)


def test_bt_on_a_scalar_head_learns_the_mined_preferences():
    # features a backbone could see: keyword coverage, a call to action, length; the head learns to rank
    rows = multitext.multitext_logs(120, seed=1)
    parts = multitext.split_by_ad(multitext.mine_pairs(rows, 100, 0.1), val=0.0, test=0.3, seed=0)

    def feats(pairs, key):
        out = []
        for p in pairs:
            t = p[key].lower()
            c = len(p[key]) / 100
            out.append([float(p["keyword"] in t), float(any(x in t for x in ("now", "today", "free"))), c, c * c])
        return torch.tensor(out)[:, None, :]  # [P, S=1, H=4]

    torch.manual_seed(0)
    head = rm.ScalarHead(4)
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    one = torch.ones(len(parts["train"]), 1)
    fw, fl = feats(parts["train"], "chosen"), feats(parts["train"], "rejected")
    for _ in range(200):
        opt.zero_grad()
        rm.bt_loss(head(fw, one), head(fl, one)).backward()
        opt.step()
    tw, tl = feats(parts["test"], "chosen"), feats(parts["test"], "rejected")
    one = torch.ones(len(parts["test"]), 1)
    with torch.no_grad():
        acc = rm.pairwise_accuracy(head(tw, one), head(tl, one))
    assert acc > 0.8, acc


# ---------------------------------------------------------------- §C28 multitext logs and pair mining

def test_multitext_logs_are_deterministic_and_carry_the_truth():
    a = multitext.multitext_logs(20, seed=5)
    assert a == multitext.multitext_logs(20, seed=5)
    assert a != multitext.multitext_logs(20, seed=6)
    by_ad = {}
    for r in a:
        by_ad.setdefault(r["ad_id"], []).append(r)
        assert r["p_click"] == true_ctr(r["keyword"], r["text"])
        assert 50 <= r["impressions"] <= 2000 and 0 <= r["clicks"] <= r["impressions"]
        assert r["ctr"] == r["clicks"] / r["impressions"]
    assert len(by_ad) == 20
    for group in by_ad.values():
        assert 2 <= len(group) <= 5
        assert len({r["text"] for r in group}) == len(group)
        assert all(r["ad"] == group[0]["ad"] and r["keyword"] == group[0]["keyword"] for r in group)
    with pytest.raises(ValueError, match="variants"):
        multitext.multitext_logs(3, variants=(1, 2))


def test_ad_effect_shifts_whole_ads_and_keeps_the_order_within_each():
    base = multitext.multitext_logs(60, seed=2)
    assert base == multitext.multitext_logs(60, seed=2, ad_effect=0.0)  # the default: rows unchanged
    shifted = multitext.multitext_logs(60, seed=2, ad_effect=1.5)
    assert [(r["id"], r["text"], r["impressions"]) for r in shifted] == [(r["id"], r["text"], r["impressions"])
                                                                         for r in base]
    offsets = {}
    for b, s in zip(base, shifted):
        logit = lambda p: math.log(p / (1 - p))  # noqa: E731
        offsets.setdefault(s["ad_id"], set()).add(round(logit(s["p_click"]) - logit(b["p_click"]), 9))
    assert all(len(v) == 1 for v in offsets.values())  # one offset per ad, shared by its variants
    shift = [next(iter(v)) for v in offsets.values()]
    assert len(set(shift)) == 60 and max(abs(x) for x in shift) > 0.5
    for ad in offsets:  # so the order of an ad's variants is the order of true_ctr
        rows = [(b["p_click"], s["p_click"]) for b, s in zip(base, shifted) if s["ad_id"] == ad]
        assert sorted(range(len(rows)), key=lambda i: rows[i][0]) == sorted(range(len(rows)), key=lambda i: rows[i][1])
    with pytest.raises(ValueError, match="ad_effect"):
        multitext.multitext_logs(3, ad_effect=-1.0)


def _row(ad, v, text, imp, clicks, **extra):
    return {"id": f"{ad}-{v}", "ad_id": ad, "keyword": "tents", "ad": {"brand": "MSR"}, "text": text,
            "impressions": imp, "clicks": clicks, **extra}


def test_mine_pairs_by_hand():
    rows = [_row("a", 0, "x0", 100, 10), _row("a", 1, "x1", 100, 12), _row("a", 2, "x2", 100, 20),
            _row("a", 3, "x3", 50, 40),  # too few impressions
            _row("b", 0, "y0", 200, 20), _row("b", 1, "y1", 200, 20),  # equal CTR: no pair
            _row("c", 0, "z0", 100, 0), _row("c", 1, "z1", 100, 1)]
    pairs = multitext.mine_pairs(rows, min_impressions=100, min_ctr_gap=0.25)
    got = [(p["chosen_id"], p["rejected_id"]) for p in pairs]
    # a: 0.12 vs 0.10 = +20 % (dropped), 0.20 vs 0.10 = +100 %, 0.20 vs 0.12 = +67 %; c: 0.01 vs 0 = inf
    assert got == [("a-2", "a-0"), ("a-2", "a-1"), ("c-1", "c-0")]
    assert pairs[0]["gap"] == pytest.approx(1.0) and pairs[2]["gap"] == math.inf
    assert pairs[0]["chosen"] == "x2" and pairs[0]["rejected"] == "x0" and pairs[0]["chosen_p"] is None
    absolute = multitext.mine_pairs(rows, min_impressions=100, min_ctr_gap=0.05, gap="absolute")
    assert [(p["chosen_id"], p["rejected_id"]) for p in absolute] == [("a-2", "a-0"), ("a-2", "a-1")]
    loose = multitext.mine_pairs(rows, min_impressions=1, min_ctr_gap=0.0)
    assert ("a-3", "a-2") in [(p["chosen_id"], p["rejected_id"]) for p in loose]
    assert all(p["ad_id"] != "b" for p in loose)
    bad = rows + [{**_row("a", 9, "x9", 100, 5), "ad": {"brand": "REI"}}]
    with pytest.raises(ValueError, match="non-text fields differ"):
        multitext.mine_pairs(bad)
    with pytest.raises(ValueError, match="gap"):
        multitext.mine_pairs(rows, gap="ratio")


@pytest.mark.parametrize("gap, threshold", [("relative", 0.2), ("absolute", 0.03), ("relative", 0.0)])
def test_mined_pairs_stay_within_one_ad_and_respect_the_thresholds(gap, threshold):
    rows = multitext.multitext_logs(60, seed=2)
    by_id = {r["id"]: r for r in rows}
    pairs = multitext.mine_pairs(rows, min_impressions=200, min_ctr_gap=threshold, gap=gap)
    assert pairs
    for p in pairs:
        w, l = by_id[p["chosen_id"]], by_id[p["rejected_id"]]
        assert w["ad_id"] == l["ad_id"] == p["ad_id"]
        assert {k: v for k, v in w.items() if k not in multitext.VARYING_FIELDS} == \
               {k: v for k, v in l.items() if k not in multitext.VARYING_FIELDS}
        assert w["ctr"] > l["ctr"] and min(w["impressions"], l["impressions"]) >= 200
        g = (w["ctr"] - l["ctr"]) / l["ctr"] if gap == "relative" and l["ctr"] > 0 else (
            math.inf if gap == "relative" else w["ctr"] - l["ctr"])
        assert g >= threshold and p["gap"] == g
    # a higher threshold keeps a subset
    stricter = multitext.mine_pairs(rows, min_impressions=200, min_ctr_gap=threshold + 0.1, gap=gap)
    key = {(p["chosen_id"], p["rejected_id"]) for p in pairs}
    assert {(p["chosen_id"], p["rejected_id"]) for p in stricter} <= key


def test_thresholds_make_the_preferences_truer_and_split_by_ad_is_disjoint():
    rows = multitext.multitext_logs(150, seed=0)
    loose = multitext.true_order_rate(multitext.mine_pairs(rows, 1, 0.0))
    strict = multitext.true_order_rate(multitext.mine_pairs(rows, 300, 0.3))
    assert 0.5 < loose < strict <= 1.0
    parts = multitext.split_by_ad(rows, val=0.2, test=0.2, seed=1)
    ads = {k: {r["ad_id"] for r in v} for k, v in parts.items()}
    assert not (ads["train"] & ads["val"]) and not (ads["train"] & ads["test"]) and not (ads["val"] & ads["test"])
    assert sum(len(v) for v in parts.values()) == len(rows)
    assert parts == multitext.split_by_ad(rows, val=0.2, test=0.2, seed=1)
