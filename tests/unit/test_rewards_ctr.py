"""The frozen CTR model (trained here on synthetic click logs with a known true click probability) and the
CTR-uplift reward: predictions track the truth on held-out rows, save/load round-trips, uplift has the right sign."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rewards_support as rs

from megatron_ads.data import synthetic
from megatron_ads.rewards import ctr, registry

# Measured (1000 training rows x 20 impressions, 300 held-out rows of another seed, CTRConfig defaults):
# Spearman(predicted, true p) = 0.92, AUC(predicted vs sampled clicks) = 0.73 (the true p itself: 0.75).
# The bounds below are well under those.
MIN_SPEARMAN, MIN_AUC = 0.75, 0.65


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def auc(scores, labels) -> float:
    """P(score of a click > score of a non-click) over impressions (ties count 1/2)."""
    s, y = np.asarray(scores), np.asarray(labels)
    pos, neg = s[y == 1], s[y == 0]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


@pytest.fixture(scope="module")
def model():
    return ctr.train_ctr(synthetic.click_logs(1000, seed=0), rs.embedder())


@pytest.fixture(scope="module")
def held_out():
    return synthetic.click_logs(300, seed=1)


def test_click_logs_deterministic():
    a, b = synthetic.click_logs(50, seed=3), synthetic.click_logs(50, seed=3)
    assert a == b and a != synthetic.click_logs(50, seed=4)
    assert all(0 <= r["clicks"] <= r["impressions"] and r["p_click"] == synthetic.true_ctr(r["keyword"], r["text"])
               for r in a)
    # the true function: keyword coverage and a call to action raise it
    base = synthetic.true_ctr("running shoes", "Nike trail runners. Fast shipping. Free returns. Limited stock.")
    assert synthetic.true_ctr("running shoes", "Nike running shoes. Fast shipping. Free returns. Limited stock.") > base
    assert synthetic.true_ctr("running shoes", "Nike trail runners. Fast shipping. Free returns. Shop now!") > base


def test_predictions_track_the_true_click_probability(model, held_out):
    pred = model.predict([r["keyword"] for r in held_out], [r["text"] for r in held_out])
    truth = np.array([r["p_click"] for r in held_out])
    assert pred.shape == truth.shape and np.all((pred > 0) & (pred < 1))
    rho = spearman(pred, truth)
    # AUC over impressions: each row's clicks are positives, its other impressions negatives
    scores = np.repeat(pred, [r["impressions"] for r in held_out])
    labels = np.concatenate([[1] * r["clicks"] + [0] * (r["impressions"] - r["clicks"]) for r in held_out])
    a = auc(scores, labels)
    print(f"CTR model: Spearman {rho:.3f}, AUC {a:.3f} (true p: AUC "
          f"{auc(np.repeat(truth, [r['impressions'] for r in held_out]), labels):.3f}), {model.summary}")
    assert rho > MIN_SPEARMAN and a > MIN_AUC


def test_training_is_deterministic_and_save_load_round_trips(model, held_out, tmp_path):
    texts, kws = [r["text"] for r in held_out[:20]], [r["keyword"] for r in held_out[:20]]
    small = synthetic.click_logs(1000, seed=0)[:200]
    a, b = (ctr.train_ctr(small, rs.embedder(), ctr.CTRConfig(epochs=20, seed=5)) for _ in range(2))
    np.testing.assert_array_equal(a.predict(kws, texts), b.predict(kws, texts))
    with pytest.raises(ValueError, match="epochs"):
        ctr.CTRConfig(epochs=0)
    out = model.save(tmp_path / "ctr")
    assert sorted(p.name for p in out.iterdir()) == ["ctr_config.json", "model.safetensors"]
    meta = json.loads((out / "ctr_config.json").read_text())
    assert meta["feature_version"] == ctr.FEATURE_VERSION and meta["config"]["hidden"] == [64, 32]
    loaded = ctr.CTRModel.load(out, rs.embedder())
    np.testing.assert_array_equal(loaded.predict(kws, texts), model.predict(kws, texts))
    meta["feature_version"] = 99
    (out / "ctr_config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="feature_version"):
        ctr.CTRModel.load(out, rs.embedder())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        ctr.CTRModel.load(tmp_path, rs.embedder())


def rewrite(title: str, description: str) -> str:
    return f"<think>clearer</think>\n<Title>{title}</Title>\n<Description>{description}</Description>"


def test_ctr_uplift_reward(model):
    fn = registry.build("ctr_uplift", rs.resources(ctr_model=model))
    ad = {"title": "Nike trail runners", "description": "Fast shipping. Free returns"}
    row = {"keyword": "running shoes", "ad": ad}
    comps = [rewrite("Nike trail runners - running shoes", "Fast shipping. Free returns. Shop now!"),  # + keyword + CTA
             rewrite(ad["title"], ad["description"]),                                              # unchanged
             "not a rewrite"]                                                                      # malformed
    values = registry.call(fn, [""] * 3, comps, "ad_rewrite", [row] * 3).values
    assert values[0] > 0.05  # the truth moves the same way
    assert synthetic.true_ctr("running shoes", "Nike trail runners - running shoes. Fast shipping. Free returns. "
                              "Shop now!") > synthetic.true_ctr("running shoes", "Nike trail runners. Fast shipping. "
                                                                "Free returns")
    assert values[1] == pytest.approx(0.0, abs=1e-6)
    base = float(model.predict(["running shoes"], ["Nike trail runners. Fast shipping. Free returns"])[0])
    assert values[2] == pytest.approx(-base)  # an unshowable ad: CTR 0
    # not applicable without a keyword; batch mode averages the uplift per rollout index
    assert registry.call(fn, [""], [comps[0]], "ad_rewrite", [{"ad": ad}]).values == [None]
    batch = registry.build("ctr_uplift", rs.resources(ctr_model=model), {"mode": "batch"})
    meta = [dict(row, rollout=g) for g in (0, 1, 0)]
    got = registry.call(batch, [""] * 3, comps, "ad_rewrite", meta).values
    assert got[0] == got[2] == pytest.approx((values[0] + values[2]) / 2) and got[1] == pytest.approx(values[1])
