"""RELATE rewards (papers_spec.md §B.2, §C 21–26): length, blacklist and diversity, their token-level values
aligned with real completion tokens, the GRPO advantage they feed (Eq. 8–9), and the metrics (Eq. 10–12)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from megatron_ads.rewards import REWARDS, RewardCombination, registry, relate
from megatron_ads.rewards.registry import COMPLETION_IDS, RewardResources, token_spans
from megatron_ads.train import grpo


@pytest.fixture(scope="module")
def tok():
    """The project's tiny byte-level BPE (what random-init runs train with)."""
    from megatron_ads.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(1024)


def _decode(tok):
    eos = tok.eos_token_id
    return lambda ids: tok.decode([x for x in ids if x != eos])


def _rollout(tok, text: str) -> list[int]:
    """A completion's ids as the engine returns them: the text's tokens, then the stop token."""
    return list(tok(text, add_special_tokens=False)["input_ids"]) + [tok.eos_token_id]


def _call(name, completions, params=None, prompts=None, meta=None, decode=None):
    fn = registry.build(name, RewardResources(decode=decode), params)
    return registry.call(fn, prompts or [""] * len(completions), completions, "ad_rewrite", meta)


def _marked(ids, values, decode):
    """The text of each maximal run of tokens with a non-zero value."""
    runs, k = [], 0
    while k < len(ids):
        if values[k]:
            j = k
            while j + 1 < len(ids) and values[j + 1]:
                j += 1
            runs.append(decode(ids[k:j + 1]).strip())
            k = j + 1
        else:
            k += 1
    return runs


# ------------------------------------------------------------------------------------ token alignment
def test_registered_with_docs():
    for name in ("length", "blacklist", "diversity"):
        assert name in REWARDS and REWARDS[name].doc


def test_token_spans_cover_multibyte_words(tok):
    decode = _decode(tok)
    text = "<Title>Garantía café 日本 deals</Title>"
    ids = _rollout(tok, text)
    spans = token_spans(ids, decode, text)
    assert len(spans) == len(ids) and spans[-1] == (len(text), len(text))  # EOS: empty, at the end
    assert all(0 <= a <= b <= len(text) for a, b in spans)
    assert all(spans[k][0] <= spans[k + 1][0] for k in range(len(spans) - 1))
    for word in ("Garantía", "café", "日本"):
        s = text.index(word)
        e = s + len(word)
        hit = [k for k, (a, b) in enumerate(spans) if a < e and s < b]
        lo, hi = hit[0], hit[-1]
        assert hit == list(range(lo, hi + 1))
        assert word in decode(ids[lo:hi + 1])  # every byte of the word is in the marked tokens ...
        assert len(decode(ids[:lo])) <= s and len(decode(ids[:hi + 1])) >= e  # ... and no token outside has one
    with pytest.raises(ValueError, match="completion_ids"):
        token_spans(ids, decode, text + "x")


# ------------------------------------------------------------------------------------ §C 22: Eq. 5
def test_blacklist_token_values_mark_every_subtoken_case_insensitive(tok):
    decode = _decode(tok)
    text = ("<think>never say guaranteed</think>\n<Title>GUARANTEED café</Title>\n"
            "<Description>Risk-free trial, guaranteedly 100% fun</Description>")
    ids = _rollout(tok, text)
    out = _call("blacklist", [text], {"lambda1": 0.5, "count": True}, meta=[{COMPLETION_IDS: ids}], decode=decode)
    tv = out.token_values[0]
    assert len(tv) == len(ids) and set(tv) <= {0.0, -0.5}
    # <think> is skipped; "guaranteedly" is no word-boundary hit; "Risk-free" and "100%" are
    assert _marked(ids, tv, decode) == ["GUARANTEED", "Risk-free", "100%"]
    assert out.values == [-1.5]  # count: −λ1 · 3 hits
    assert _call("blacklist", [text, "clean text"]).values == [-1.0, 0.0]  # any hit: −λ1
    assert _call("blacklist", [text]).token_values == [None]  # no ids / decode: no token values


def test_blacklist_multiword_terms_and_boundaries():
    m = relate.TermMatcher(["number one", "#1", "cure"])
    text = "The Number\n one pick, #1 choice; curettage and secure are fine. CURE!"
    assert [text[s:e] for s, e in m.find(text, "")] == ["Number\n one", "#1", "CURE"]


def test_token_reward_is_zero_minus_lambda1_or_both_eq5(tok):
    decode = _decode(tok)
    texts = ["<Title>miracle shine wax for cars</Title>", "<Title>miracle shine wax for boats</Title>",
             "<Title>plain soap</Title>"]
    ids = [_rollout(tok, t) for t in texts]
    meta = [{COMPLETION_IDS: x} for x in ids]
    black = _call("blacklist", texts, {"terms": ["miracle"], "lambda1": 2.0}, meta=meta, decode=decode)
    div = _call("diversity", texts, {"lambda2": 0.5, "min_share": 0.0, "exclude_prompt": False}, meta=meta,
                decode=decode)
    for i in (0, 1):
        assert _marked(ids[i], black.token_values[i], decode) == ["miracle"]
        assert _marked(ids[i], div.token_values[i], decode) == ["miracle shine wax for"]
    # as the trainer sums the channels (token_reward_tensor: weight · pack_token_rewards), weights 1
    n = max(len(x) for x in ids)
    mask = torch.zeros(len(texts), n + 2)
    for i, x in enumerate(ids):
        mask[i, 2:2 + len(x)] = 1.0
    r = grpo.pack_token_rewards(black.token_values, mask) + grpo.pack_token_rewards(div.token_values, mask)
    for i, x in enumerate(ids):
        row = r[i, 2:2 + len(x)].tolist()
        m = texts[i].find("miracle")
        black_c = (m, m + len("miracle")) if m >= 0 else (0, 0)
        cover_c = (m, m + len("miracle shine wax for")) if m >= 0 else (0, 0)
        for k, (a, b) in enumerate(token_spans(x, decode, texts[i])):
            in_black, covered = a < black_c[1] and black_c[0] < b, a < cover_c[1] and cover_c[0] < b
            # blacklisted and covered: −λ1 − λ2; covered only: −λ2; neither: 0
            assert row[k] == pytest.approx(-2.0 * in_black - 0.5 * covered), texts[i][a:b]
        assert r[i, :2].abs().sum() == 0 and r[i, 2 + len(x):].abs().sum() == 0
    assert r.min() == pytest.approx(-2.5)
    assert r[2].abs().sum() == 0


# ------------------------------------------------------------------------------------ §C 23: Eq. 4
def test_diversity_hand_example():
    texts = ["alpha beta gamma x", "alpha beta gamma y", "zeta eta theta", "one two"]
    p = {"min_count": 2, "min_share": 0.0, "delta_d": 0.1, "exclude_prompt": False}
    out = _call("diversity", texts, p)
    # high-frequency: (alpha beta), (beta gamma), (alpha beta gamma) -> 3 occurrences in each of the first two
    assert out.values == pytest.approx([-0.3, -0.3, 0.0, 0.0]) and out.values[2] == 0.0
    assert all(v <= 0 for v in out.values)
    # within-text repeats count once per occurrence
    out = _call("diversity", ["buy now buy now", "buy now"], p)
    assert out.values == pytest.approx([-0.2, -0.1])


def test_diversity_only_ngrams_from_2_to_10():
    shared_word = ["shoes are red", "shoes look blue", "shoes feel green"]
    assert _call("diversity", shared_word, {"min_share": 0.5, "exclude_prompt": False}).values == [0.0] * 3
    long = " ".join(f"w{k}" for k in range(12))  # one 12-word phrase in two texts
    p = {"min_count": 2, "min_share": 0.0, "delta_d": 1.0, "exclude_prompt": False}
    # n in [2, 10]: sum over n of (12 − n + 1) = 11 + 10 + ... + 3 = 63 occurrences
    assert _call("diversity", [long, long + " tail"], p).values[0] == pytest.approx(-63.0)
    assert relate.ngrams("a b c", relate.DiversityParams(n_min=2, n_max=10))[0][0] == ("a", "b")
    assert {len(g) for g, _, _ in relate.ngrams(long, relate.DiversityParams())} == set(range(2, 11))


def test_diversity_threshold_share_prompt_exclusion_and_batches():
    texts = ["shop now fast", "shop now slow", "other thing", "more words", "last item"]
    p = {"min_count": 2, "min_share": 0.5, "exclude_prompt": False}  # need >= ceil(2.5) = 3 of 5
    assert _call("diversity", texts, p).values == [0.0] * 5
    assert _call("diversity", texts, {**p, "min_share": 0.4}).values[:2] == pytest.approx([-0.1, -0.1])
    prompts = ["keyword: shop now"] * 5
    out = _call("diversity", texts, {**p, "min_share": 0.4, "exclude_prompt": True}, prompts=prompts)
    assert out.values == [0.0] * 5
    meta = [{"group": g} for g in (0, 1, 0, 1, 1)]
    assert _call("diversity", texts, {**p, "min_share": 0.0, "batch_by": "group"}, meta=meta).values == [0.0] * 5
    with pytest.raises(ValueError, match="batch_by"):
        _call("diversity", texts, {"batch_by": "group"})


def test_diversity_skips_reasoning_and_tags():
    texts = ["<think>the same reasoning text</think><Title>red</Title>",
             "<think>the same reasoning text</think><Title>blue</Title>"]
    assert _call("diversity", texts, {"min_share": 0.0, "exclude_prompt": False}).values == [0.0, 0.0]
    assert _call("diversity", texts, {"min_share": 0.0, "exclude_prompt": False, "skip": ""}).values[0] < 0


def test_diversity_score_normalized_higher_is_better():
    assert relate.diversity_score(["a b", "c d", "e f"]) == 1.0
    p = relate.DiversityParams(min_share=0.0, exclude_prompt=False)
    assert relate.diversity_score(["a b x", "a b y", "c d", "e f"], p) == 0.5
    assert relate.diversity_score(["same words here"] * 4) == 0.0


# ------------------------------------------------------------------------------------ length
def test_length_linear_penalty_outside_the_interval():
    p = relate.LengthParams(unit="words", min_len=3, max_len=5, inside=1.0, slope=0.25, floor=-0.5)
    assert [relate.length_value(n, p) for n in (0, 2, 3, 5, 6, 7, 20)] == [0.25, 0.75, 1.0, 1.0, 0.75, 0.5, -0.5]
    rlpf = relate.LengthParams(unit="chars", min_len=0, max_len=10, inside=0.0, slope=0.1, floor=-100)
    assert [relate.length_value(n, rlpf) for n in (0, 10, 11, 30)] == pytest.approx([0, 0, -0.1, -2.0])
    texts = ["<think>lots of reasoning words</think><Title>one two three four</Title>", "one two"]
    assert _call("length", texts, {"unit": "words", "min_len": 3, "max_len": 5, "slope": 0.25}).values == [1.0, 0.75]
    assert _call("length", ["ab c"], {"unit": "chars", "min_len": 4, "max_len": 9, "slope": 0.5}).values == [0.5]


def test_length_in_tokens_counts_ad_text_tokens_not_the_stop(tok):
    decode = _decode(tok)
    text = "<Title>fresh coffee beans</Title>"
    ids = _rollout(tok, text)
    plain = list(tok(text, add_special_tokens=False)["input_ids"])
    tag_tokens = len(tok("<Title>", add_special_tokens=False)["input_ids"]) + \
        len(tok("</Title>", add_special_tokens=False)["input_ids"])
    p = relate.LengthParams(unit="tokens", skip="")
    spans = token_spans(ids, decode, text)
    assert relate.text_length(text, p, spans) == len(plain)  # the stop token never counts
    n_ad = relate.text_length(text, relate.LengthParams(unit="tokens"), spans)
    assert 0 < n_ad <= len(plain) - tag_tokens + 2  # tag tokens left out (a merge may straddle a boundary)
    out = _call("length", [text], {"unit": "tokens", "min_len": 0, "max_len": 100}, meta=[{COMPLETION_IDS: ids}],
                decode=decode)
    assert out.values == [1.0]
    with pytest.raises(ValueError, match="tokens"):
        _call("length", [text], {"unit": "tokens"})


@pytest.mark.parametrize("name, params, field", [
    ("length", {"unit": "bytes"}, "unit"), ("length", {"min_len": 5, "max_len": 4}, "max_len"),
    ("length", {"slope": -1.0}, "slope"), ("length", {"floor": 2.0}, "floor"), ("length", {"skip": "("}, "skip"),
    ("blacklist", {"terms": []}, "terms"), ("blacklist", {"terms": ["ok", " "]}, "terms"),
    ("blacklist", {"lambda1": 0.0}, "lambda1"), ("diversity", {"n_min": 0}, "n_min"),
    ("diversity", {"n_min": 3, "n_max": 2}, "n_max"), ("diversity", {"min_share": 1.5}, "min_share"),
    ("diversity", {"min_count": 0}, "min_count"), ("diversity", {"delta_d": -0.1}, "delta_d"),
    ("diversity", {"lambda2": math.inf}, "lambda2"),
])
def test_params_errors_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=rf"reward_params\.{name}\.{field}"):
        registry.make_params(name, params)


# ------------------------------------------------------------------------------------ §C 21, 24: Eq. 8–9
def test_sentence_advantage_mean_zero_std_one_and_identical_zero():
    assert relate.GROUP_SIZE == 5
    r = [0.3, -1.0, 2.5, 0.0, 1.1]
    a = grpo.group_advantages(r, [0] * relate.GROUP_SIZE, eps=0.0).adv_B.double()
    assert float(a.mean()) == pytest.approx(0.0, abs=1e-6) and float(a.std()) == pytest.approx(1.0, abs=1e-6)
    same = grpo.group_advantages([0.7] * 5, [0] * 5)
    assert same.adv_B.abs().sum() == 0 and same.frac_reward_zero_std == 1.0


def test_token_advantage_alpha_zero_is_vanilla_grpo(tok):
    decode = _decode(tok)
    texts = ["<Title>guaranteed deals</Title>", "<Title>fresh deals</Title>"]
    ids = [_rollout(tok, t) for t in texts]
    out = _call("blacklist", texts, meta=[{COMPLETION_IDS: x} for x in ids], decode=decode)
    mask = torch.zeros(2, 1 + max(map(len, ids)))
    for i, x in enumerate(ids):
        mask[i, 1:1 + len(x)] = 1.0
    r_BT = grpo.pack_token_rewards(out.token_values, mask)
    adv_B = torch.tensor([0.8, -0.8])
    plain = grpo.token_advantages(adv_B, mask, r_BT, alpha=0.0)
    assert torch.equal(plain, adv_B[:, None] * mask)  # the same advantage for every token
    a_BT = grpo.token_advantages(adv_B, mask, r_BT, alpha=0.3)
    assert torch.allclose(a_BT, (adv_B[:, None] + 0.3 * r_BT) * mask)
    assert (a_BT[0][mask[0].bool()] < 0.8).sum() == sum(v != 0 for v in out.token_values[0]) > 0


def test_trainer_reward_call_aligns_with_the_loss_mask(tok):
    """compute_rewards, batch_tokens and token_reward_tensor of the GRPO trainer, on a real tokenizer: token values land on the
    completion tokens of the mask, the stop token included."""
    from megatron_ads.train.grpo_loop import GRPOTrainer, build_rewards

    weights = {"ad_rewrite": {"blacklist": 1.0, "diversity": 0.5}}
    eos = tok.eos_token_id
    self = SimpleNamespace(tokenizer=tok, eos=eos, pad=tok.pad_token_id, task_names=["ad_rewrite"], weights=weights,
                           job=SimpleNamespace(grpo=SimpleNamespace(group_size=2, token_alpha=1.0),
                                               train=SimpleNamespace(seq_len=96)))
    self.decode_completion = lambda ids: GRPOTrainer.decode_completion(self, ids)
    self.reward_fns, _ = build_rewards(weights, 0, decode=self.decode_completion)
    row = {"ad": {"title": "Old title", "description": "Old text"}}
    comps = [SimpleNamespace(output_ids=_rollout(tok, t), logprobs=[0.0] * 64) for t in (
        "<think></think>\n<Title>Miracle shoes</Title>\n<Description>Guaranteed grip</Description>",
        "<think></think>\n<Title>Trail shoes</Title>\n<Description>Guaranteed grip</Description>")]
    tasks, texts, rewards, token_values = GRPOTrainer.compute_rewards(self, [("ad_rewrite", row)], comps)
    assert rewards["blacklist"] == [-1.0, -1.0] and rewards["diversity"][0] < 0
    prompt_ids = [list(tok("Task: rewrite the ad", add_special_tokens=False)["input_ids"])]
    batch = GRPOTrainer.batch_tokens(self, prompt_ids, comps, tasks)  # what add_advantages does, with A_i = 0
    tok_r = GRPOTrainer.token_reward_tensor(self, token_values, tasks, batch["loss_mask"])
    batch["adv"] = grpo.token_advantages(torch.zeros(2), batch["loss_mask"], tok_r, 1.0)
    P = len(prompt_ids[0])
    for i, c in enumerate(comps):
        m = batch["loss_mask"][i].bool()
        assert int(m.sum()) == len(c.output_ids) and bool(m[P - 1 + len(c.output_ids) - 1])  # stop token in mask
        adv = batch["adv"][i][m].tolist()
        assert adv[-1] == 0.0  # the stop token carries no text
        marked = _marked(c.output_ids, adv, _decode(tok))
        assert "Miracle" in " ".join(marked) if i == 0 else "Miracle" not in " ".join(marked)
        assert any("Guaranteed grip" in s for s in marked)  # blacklisted + high-frequency n-gram
        assert min(adv) == pytest.approx(-1.5)  # −λ1·1 − λ2·0.5 (channel weights) where both apply
        assert {round(x, 6) for x in adv} <= {0.0, -1.0, -0.5, -1.5}


def test_combination_accepts_the_relate_channels():
    combo = RewardCombination(tasks={"ad_rewrite": {"length": 0.5, "blacklist": 1.0, "diversity": 1.0}},
                              params={"length": {"unit": "words"}, "diversity": {"batch_by": "group"}})
    fns = combo.build_all(RewardResources())
    out = combo.evaluate(fns, "ad_rewrite", ["p", "p"], ["<Title>cure all</Title>", "<Title>fine</Title>"],
                         [{"group": 0}, {"group": 0}])
    assert out["blacklist"].values == [-1.0, 0.0] and set(out) == {"length", "blacklist", "diversity"}


# ------------------------------------------------------------------------------------ §C 25, 26: metrics
def test_delta_ctcvr_and_compliance_rate():
    assert relate.delta_ctcvr(0.0546, 0.05) == pytest.approx(0.092)
    assert relate.delta_ctcvr(0.05, 0.05) == 0.0
    with pytest.raises(ValueError, match="baseline"):
        relate.delta_ctcvr(0.1, 0.0)
    texts = ["<Title>Miracle cream</Title>", "<Title>Soft cream</Title>", "<Title>Gentle soap</Title>",
             "<think>not a miracle</think><Title>Bath salts</Title>"]
    assert relate.compliance_rate(texts) == 0.75
    assert relate.compliance_rate(texts, format_ok=[True, True, False, True]) == 0.5
    rate = relate.compliance_rate(texts, terms=["cream", "soap", "salts"])
    assert rate == 0.0 and 0.0 <= relate.compliance_rate(texts, terms=["zzz"]) == 1.0
    with pytest.raises(ValueError, match="format_ok"):
        relate.compliance_rate(texts, format_ok=[True])


def test_esmm_ctcvr_not_above_ctr():
    """§C 26: the shared-bottom model's predicted CTCVR = CTR·CVR never exceeds its predicted CTR, saturated
    logits included (the trained model, the loss and the ``ctcvr`` reward: test_rewards_esmm.py)."""
    import numpy as np

    from megatron_ads.rewards import esmm

    def embed(texts):  # a toy frozen embedder: one-hot of the length mod 4
        return np.eye(4, dtype=np.float32)[[len(t) % 4 for t in texts]]

    cfg = esmm.ESMMConfig(bottom=[8], tower=[4])
    net = esmm.ESMMNet(2 * 4 + 5, cfg.bottom, cfg.tower)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 20.0)
    ctr, cvr, ctcvr = esmm.ESMMModel(net, cfg, embed, 2 * 4 + 5).predict(
        ["tents"] * 60, [f"REI family tent {'x' * i}." for i in range(60)])
    assert np.all(ctcvr <= ctr) and np.array_equal(ctcvr, ctr * cvr) and np.all((cvr >= 0) & (cvr <= 1))
