"""RELATE's CTCVR reward (papers_spec.md §B.2, §C 26): the shared-bottom CTR/CVR model (ESMM) trained here on
synthetic conversion logs with known true CTR and CVR, its entire-space loss, save/load, and the ``ctcvr`` reward."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import rewards_support as rs
import torch

from megatron_ads.data import conversions, synthetic
from megatron_ads.rewards import esmm, registry, relate

# Measured (600 training rows of conversion_logs(seed=0), impressions log-uniform in [50, 2000]; 300 held-out rows
# of seed 1; ESMMConfig(epochs=200), otherwise defaults; the real MiniLM embedder):
# Spearman(predicted CTCVR, true ctr·cvr) = 0.93, Spearman(predicted CVR, true cvr) = 0.89; predicted CTR alone
# ranks the true CTCVR at 0.74. The bounds below are well under those.
MIN_SPEARMAN_CTCVR, MIN_SPEARMAN_CVR, MIN_GAIN_OVER_CTR = 0.8, 0.7, 0.05


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


class HashEmbedder:
    """A tiny deterministic stand-in for the frozen embedder (hashed bag of words, unit vectors [N, 16])."""

    dim = 16

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


@pytest.fixture(scope="module")
def model():
    return esmm.train_esmm(conversions.conversion_logs(600, seed=0), rs.embedder(), esmm.ESMMConfig(epochs=200))


@pytest.fixture(scope="module")
def held_out():
    return conversions.conversion_logs(300, seed=1)


# ------------------------------------------------------------------------------------ the synthetic world
def test_conversion_logs_deterministic_and_consistent():
    a, b = conversions.conversion_logs(80, seed=3), conversions.conversion_logs(80, seed=3)
    assert a == b and a != conversions.conversion_logs(80, seed=4)
    for r in a:
        assert 50 <= r["impressions"] <= 2000 and 0 <= r["conversions"] <= r["clicks"] <= r["impressions"]
        assert r["p_click"] == synthetic.true_ctr(r["keyword"], r["text"])
        assert r["p_convert"] == conversions.true_cvr(r["keyword"], r["text"])
    with pytest.raises(ValueError, match="off_keyword"):
        conversions.conversion_logs(5, off_keyword=1.5)


def test_true_cvr_is_a_different_function_of_the_text():
    kw = "running shoes"
    plain = "Trail runners. Fast shipping"
    assert conversions.true_cvr(kw, plain) == pytest.approx(1 / (1 + math.exp(2.5)))
    # brand of the keyword's category, explicit price, trust signals raise it; another category's brand does not
    assert conversions.true_cvr(kw, "Nike trail runners. Fast shipping") > conversions.true_cvr(kw, plain)
    assert conversions.true_cvr(kw, "Dell trail runners. Fast shipping") == conversions.true_cvr(kw, plain)
    assert conversions.true_cvr(kw, "Trail runners. From $89") > conversions.true_cvr(kw, plain)
    assert conversions.true_cvr(kw, "Trail runners. Free returns. 2-year warranty") > conversions.true_cvr(
        kw, "Trail runners. Free returns")
    assert conversions.cvr_factors(kw, "Free returns. Free shipping. Warranty. Rated 4.8")["trust"] == 2.0
    # a freebie call to action: more clicks, fewer conversions
    shop, free = "Nike running shoes. Shop now!", "Nike running shoes. Try it free!"
    assert synthetic.true_ctr(kw, free) >= synthetic.true_ctr(kw, shop)
    assert conversions.true_cvr(kw, free) < conversions.true_cvr(kw, shop)
    # CTR's drivers (keyword coverage, length) leave CVR unchanged
    assert conversions.true_cvr(kw, "Nike trail runners.") == conversions.true_cvr(kw, "Nike running shoes.")


# ------------------------------------------------------------------------------------ §C 26
def test_ctcvr_never_above_ctr_by_construction():
    """§C 26: pCTCVR = pCTR·pCVR <= pCTR for every input, saturated logits included (an untrained net with
    large random weights, a toy embedder)."""
    emb = HashEmbedder()
    cfg = esmm.ESMMConfig(bottom=[8], tower=[4])
    net = esmm.ESMMNet(2 * emb.dim + 5, cfg.bottom, cfg.tower)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 20.0)  # logits far beyond where float sigmoids saturate
    m = esmm.ESMMModel(net, cfg, emb, 2 * emb.dim + 5)
    rows = conversions.conversion_logs(200, seed=7)
    ctr, cvr, ctcvr = m.predict([r["keyword"] for r in rows], [r["text"] for r in rows])
    assert ctr.dtype == cvr.dtype == ctcvr.dtype == np.float64
    assert np.all(ctcvr <= ctr) and np.all((cvr >= 0) & (cvr <= 1)) and np.array_equal(ctcvr, ctr * cvr)
    assert np.any(ctr == 1.0) or np.any(cvr == 1.0) or np.any(ctr < 1e-6)  # the extremes were reached
    # the net's own probabilities (float32), on random logits of any size
    p_ctr, _, p_ctcvr = esmm.ESMMNet.probabilities(torch.randn(1000) * 30, torch.randn(1000) * 30)
    assert bool(torch.all(p_ctcvr <= p_ctr))


# ------------------------------------------------------------------------------------ the loss
def test_entire_space_loss_on_a_hand_made_two_row_example():
    # row 1: 3 impressions, 2 clicks, 1 conversion; row 2: 2 impressions, 1 click, 0 conversions
    a, b = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.2, 1.5], dtype=torch.float64)
    n, c, v = torch.tensor([3, 2]), torch.tensor([2, 1]), torch.tensor([1, 0])

    def sig(x):
        return 1 / (1 + math.exp(-x))

    def bce(p, y):
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    # the impressions, expanded: (row, click, conversion)
    impressions = [(0, 1, 1), (0, 1, 0), (0, 0, 0), (1, 1, 0), (1, 0, 0)]
    for w in (1.0, 2.0):
        want = sum(bce(sig(a[r]), k) + w * bce(sig(a[r]) * sig(b[r]), k * z) for r, k, z in impressions) / 5
        assert float(esmm.esmm_loss(a, b, n, c, v, w)) == pytest.approx(want, rel=1e-12)
    # pCVR is trained only through pCTCVR, over all impressions: with no conversion anywhere its gradient pushes
    # pCVR down on every row
    bb = b.clone().requires_grad_(True)
    esmm.esmm_loss(a, bb, n, c, torch.zeros(2, dtype=torch.long)).backward()
    assert bool(torch.all(bb.grad > 0))
    # stable at saturated logits
    big = torch.tensor([60.0, -60.0], dtype=torch.float64)
    assert math.isfinite(float(esmm.esmm_loss(big, -big, n, c, v)))


def test_config_and_rows_errors_name_the_field():
    for kw, name in [({"bottom": []}, "bottom"), ({"tower": [0]}, "tower"), ({"epochs": 0}, "epochs"),
                     ({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"),
                     ({"ctcvr_weight": math.nan}, "ctcvr_weight")]:
        with pytest.raises(ValueError, match=name):
            esmm.ESMMConfig(**kw)
    row = {"keyword": "tents", "text": "REI family tent.", "impressions": 10, "clicks": 2, "conversions": 1}
    with pytest.raises(ValueError, match=r"rows\[0\]\.conversions"):
        esmm.train_esmm([{k: x for k, x in row.items() if k != "conversions"}], HashEmbedder())
    with pytest.raises(ValueError, match="conversions <= clicks"):
        esmm.train_esmm([dict(row, conversions=3)], HashEmbedder())


# ------------------------------------------------------------------------------------ training on the logs
def test_predicted_ctcvr_ranks_the_true_ctcvr(model, held_out):
    kws, texts = [r["keyword"] for r in held_out], [r["text"] for r in held_out]
    ctr, cvr, ctcvr = model.predict(kws, texts)
    p_ctr, p_cvr = np.array([r["p_click"] for r in held_out]), np.array([r["p_convert"] for r in held_out])
    truth = p_ctr * p_cvr
    rho, rho_cvr, rho_ctr_only = spearman(ctcvr, truth), spearman(cvr, p_cvr), spearman(ctr, truth)
    print(f"ESMM: Spearman(pCTCVR, true ctr*cvr) {rho:.3f}, Spearman(pCVR, true cvr) {rho_cvr:.3f}, "
          f"Spearman(pCTR, true ctr*cvr) {rho_ctr_only:.3f}, {model.summary}")
    assert np.all(ctcvr <= ctr) and np.all((ctcvr > 0) & (ctr < 1))
    assert rho > MIN_SPEARMAN_CTCVR and rho_cvr > MIN_SPEARMAN_CVR and rho > rho_ctr_only + MIN_GAIN_OVER_CTR


def test_training_is_deterministic_and_save_load_round_trips(model, held_out, tmp_path):
    kws, texts = [r["keyword"] for r in held_out[:20]], [r["text"] for r in held_out[:20]]
    small = conversions.conversion_logs(100, seed=0)
    a, b = (esmm.train_esmm(small, HashEmbedder(), esmm.ESMMConfig(epochs=20, seed=5)) for _ in range(2))
    for x, y in zip(a.predict(kws, texts), b.predict(kws, texts)):
        np.testing.assert_array_equal(x, y)
    out = model.save(tmp_path / "esmm")
    assert sorted(p.name for p in out.iterdir()) == ["esmm_config.json", "model.safetensors"]
    meta = json.loads((out / "esmm_config.json").read_text())
    assert meta["feature_version"] == esmm.FEATURE_VERSION and meta["config"]["bottom"] == [64]
    loaded = esmm.ESMMModel.load(out, rs.embedder())
    for x, y in zip(loaded.predict(kws, texts), model.predict(kws, texts)):
        np.testing.assert_array_equal(x, y)
    meta["feature_version"] = 99
    (out / "esmm_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="feature_version"):
        esmm.ESMMModel.load(out, rs.embedder())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        esmm.ESMMModel.load(tmp_path, rs.embedder())


# ------------------------------------------------------------------------------------ the ctcvr reward
def rewrite(title: str, description: str) -> str:
    return f"<think>convert</think>\n<Title>{title}</Title>\n<Description>{description}</Description>"


AD = {"title": "Nike trail runners - running shoes", "description": "Shop now!"}
ROW = {"keyword": "running shoes", "ad": AD}
COMPLETIONS = [rewrite(AD["title"], "From $89. Free returns. Shop now!"),  # + price + trust
               rewrite(AD["title"], AD["description"]),                   # unchanged
               rewrite(AD["title"], "Try it free!"),                      # a freebie CTA
               "not a rewrite"]                                           # malformed


def _values(model, params=None, meta=None):
    fn = registry.build("ctcvr", rs.resources(esmm_model=model), params)
    meta = meta or [ROW] * len(COMPLETIONS)
    return registry.call(fn, [""] * len(meta), COMPLETIONS[:len(meta)], "ad_rewrite", meta).values


def test_ctcvr_reward_modes(model):
    kw = ROW["keyword"]
    texts = ["Nike trail runners - running shoes. From $89. Free returns. Shop now!",
             "Nike trail runners - running shoes. Shop now!", "Nike trail runners - running shoes. Try it free!"]
    pred = model.predict_ctcvr([kw] * 3, texts)
    base = pred[1]
    # (predictions of one text in batches of different sizes agree to float32 rounding, hence the tolerances)
    absolute = _values(model)
    assert absolute == pytest.approx([pred[0], pred[1], pred[2], 0.0], rel=1e-5)  # malformed: CTCVR 0
    uplift = _values(model, {"mode": "uplift"})
    assert uplift == pytest.approx([pred[0] - base, 0.0, pred[2] - base, -base], rel=1e-5, abs=1e-7)
    assert uplift[1] == 0.0  # unchanged: exactly its baseline
    relative = _values(model, {"mode": "relative"})
    assert relative == pytest.approx([relate.delta_ctcvr(pred[0], base), 0.0, relate.delta_ctcvr(pred[2], base), -1.0],
                                     rel=1e-5, abs=1e-7)
    assert relative[1] == 0.0 and relative[3] == -1.0
    assert _values(model, {"g": "scale", "g_scale": 0.1}) == pytest.approx([10 * x for x in absolute])
    # the model learned the truth's direction: price + trust up, a freebie CTA down
    assert relative[0] > 0.2 > -0.2 > relative[2]
    true = [synthetic.true_ctr(kw, t) * conversions.true_cvr(kw, t) for t in texts]
    assert true[0] > true[1] > true[2]
    assert esmm.predicted_delta_ctcvr(model, [kw], texts[:1], texts[1:2]) == pytest.approx(relative[0], rel=1e-5)
    # not applicable: no keyword; no baseline in the base-relative modes (absolute needs none)
    assert _values(model, meta=[{"ad": AD}]) == [None]
    assert _values(model, {"mode": "uplift"}, meta=[{"keyword": kw}]) == [None]
    assert _values(model, meta=[{"keyword": kw}]) == pytest.approx([pred[0]], rel=1e-5)
    # a string baseline works like the mapping
    assert _values(model, {"mode": "uplift"}, meta=[dict(ROW, ad=texts[1])]) == pytest.approx([uplift[0]], rel=1e-5)
    with pytest.raises(ValueError, match="esmm_model"):
        registry.build("ctcvr", rs.resources())


@pytest.mark.parametrize("params, field", [
    ({"mode": "batch"}, "mode"), ({"fields": []}, "fields"), ({"fields": ["title", ""]}, "fields"),
    ({"base_key": ""}, "base_key"), ({"keyword_key": None}, "keyword_key"), ({"g": "log"}, "g"),
    ({"g_scale": 0.0}, "g_scale"), ({"alpha": 1.0}, "alpha"),
])
def test_ctcvr_params_errors_name_the_field(params, field):
    with pytest.raises(ValueError, match=rf"reward_params\.ctcvr\.{field}"):
        registry.make_params("ctcvr", params)
