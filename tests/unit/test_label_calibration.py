"""Expected calibration error (a hand-computed case, an independent numpy computation), temperature fitting on
synthetic over-confident probabilities, the calibration file, and the closing-tag stop rule of generation."""

import json
import math

import numpy as np
import pytest

from megatron_ads.data.tasks import task
from megatron_ads.eval.metrics import ECE_BINS, expected_calibration_error
from megatron_ads.infer.calibrate import (Calibration, FieldCalibration, apply_temperature, fit_task,
                                          fit_temperature, nll)
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.scorer import closing_tag, text_stop
from megatron_ads.runtime.errors import BadInput


def test_ece_hand_computed():
    probs = [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]
    gold = [0, 1, 1, 0]
    # 5 bins of width 0.2: (0.8, 1] {0.9 right}: 1/4 * |1 - 0.9|; (0.6, 0.8] {0.8 wrong, 0.7 right}:
    # 2/4 * |0.5 - 0.75|; (0.4, 0.6] {0.6 right}: 1/4 * |1 - 0.6|
    assert expected_calibration_error(probs, gold, n_bins=5) == pytest.approx(0.025 + 0.125 + 0.1, abs=1e-12)
    assert expected_calibration_error([[1.0, 0.0]] * 3, [0, 0, 0]) == 0.0
    assert expected_calibration_error([[0.5, 0.5]], [1], n_bins=1) == pytest.approx(0.5)  # first of ties predicted
    assert math.isnan(expected_calibration_error([], []))
    assert ECE_BINS == 15
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(probs, gold, n_bins=0)


def _numpy_ece(p, y, m):
    conf, pred = p.max(1), p.argmax(1)
    b = np.digitize(conf, np.linspace(0, 1, m + 1)[1:-1], right=True)  # edges[b-1] < conf <= edges[b]
    return sum(abs((pred[b == k] == y[b == k]).mean() - conf[b == k].mean()) * (b == k).mean()
               for k in range(m) if (b == k).any())


@pytest.mark.parametrize("m", [1, 10, 15])
def test_ece_matches_numpy(m):
    rng = np.random.default_rng(0)
    p = rng.dirichlet([0.5, 0.5, 0.5], size=500)
    y = rng.integers(0, 3, size=500)
    assert expected_calibration_error(p.tolist(), y.tolist(), m) == pytest.approx(_numpy_ece(p, y, m), abs=1e-12)


def _overconfident(n=3000, sharpen=3.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=t) for t in true])
    over = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)  # the model's over-confident probs
    return over.tolist(), y.tolist()


def test_fitted_temperature_lowers_nll_and_ece_on_overconfident_probs():
    probs, gold = _overconfident()
    t = fit_temperature(probs, gold)
    assert 2.5 < t < 3.5  # the sharpening undone
    grid = np.exp(np.linspace(math.log(0.5), math.log(8), 400))
    best = grid[int(np.argmin([nll(probs, gold, g) for g in grid]))]
    assert nll(probs, gold, t) <= nll(probs, gold, best) + 1e-9  # the search finds the grid's minimum or better
    assert nll(probs, gold, t) < nll(probs, gold) - 0.05
    after = [list(apply_temperature({str(k): v for k, v in enumerate(p)}, t).values()) for p in probs]
    assert expected_calibration_error(after, gold) < expected_calibration_error(probs, gold) / 2
    assert [int(np.argmax(a)) for a in after] == [int(np.argmax(p)) for p in probs]  # labels unchanged


def test_fit_task_per_field_and_file_roundtrip(tmp_path):
    t = task("query_ad")
    p_rel, y_rel = _overconfident(600, 3.0, seed=1)
    p_loc, y_loc = _overconfident(600, 0.5, seed=2)  # under-confident: T < 1
    rel, loc = ("bad", "fair", "good"), ("good", "bad")
    preds, gold = [], []
    for i in range(600):
        ploc = [p_loc[i][0], p_loc[i][1] + p_loc[i][2]]
        preds.append({"id": i, "probs": {"relevance": dict(zip(rel, p_rel[i])), "location": dict(zip(loc, ploc)),
                                         "quality": {"good": 0.5, "bad": 0.5}}})
        gold.append({"id": i, "labels": {"relevance": rel[y_rel[i]], "location": loc[min(y_loc[i], 1)],
                                         "quality": "good" if i % 2 else "bad"}})
    cal = fit_task(t, preds, gold, source="val.jsonl")
    f = cal.fields
    assert set(f) == {"relevance", "location", "quality"} and f["relevance"].temperature > 2
    assert f["location"].temperature < 1
    for name in f:
        assert f[name].nll_after <= f[name].nll_before + 1e-12 and f[name].n == 600
    assert f["relevance"].ece_after < f["relevance"].ece_before
    path = cal.save(tmp_path / "cal.json")
    assert Calibration.load(path, t).to_dict() == cal.to_dict()
    assert json.loads(path.read_text())["fields"]["relevance"]["temperature"] == f["relevance"].temperature

    bad = cal.to_dict()
    bad["fields"]["location"]["temperature"] = -1
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(BadInput, match=r"bad.json: fields.location.temperature: expected a finite number > 0"):
        Calibration.load(tmp_path / "bad.json", t)
    del bad["fields"]["location"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(BadInput, match=r"bad.json: field 'fields': no temperature for \['location'\]"):
        Calibration.load(tmp_path / "bad.json", t)
    with pytest.raises(BadInput, match=r"cal.json: field 'task': calibrated for 'query_ad'"):
        Calibration.load(path, task("ad_user"))
    with pytest.raises(FileNotFoundError, match="nope.json"):
        Calibration.load(tmp_path / "nope.json")
    with pytest.raises(ValueError, match="temperature: expected a finite number > 0"):
        FieldCalibration(temperature=0.0)


def test_closing_tags_of_the_tasks():
    assert closing_tag(task("query_ad")) == "</AdQuality>"
    assert closing_tag(task("ad_user")) == "</Score>"
    assert closing_tag(task("ad_rewrite")) == "</Description>"
    assert closing_tag(task("query_gen")) is None  # <Query> repeats: no stop after the first one


VOCAB = ["<think>", "hmm </Ad", "Quality>", "</think>", "\n<AdQuality>", "good</", "AdQ", "uality", ">\n", "more",
         "EOS"]


def _decode(ids):
    return "".join(VOCAB[i] for i in ids)


def test_text_stop_split_tag_and_reasoning():
    check = text_stop(_decode, "</AdQuality>", skip_ids={10})
    answer = [4, 5, 6, 7, 8, 9]  # "\n<AdQuality>" "good</" "AdQ" "uality" ">\n" "more": the tag over 4 tokens
    stops = [k for k in range(1, len(answer) + 1) if check(answer[:k])]
    assert stops[0] == 5  # the token holding ">" completes it (its newline comes along)
    reasoning = [0, 1, 2, 3] + answer  # the tag inside <think> does not count
    assert [k for k in range(1, len(reasoning) + 1) if check(reasoning[:k])][0] == 9
    assert check(answer[:5] + [10])  # a stop id is not text
    assert not check([0, 1, 2])  # an unclosed <think>
    with pytest.raises(ValueError, match="stop text"):
        text_stop(_decode, "")


def test_engine_stop_check_finishes_with_stop():
    assert Engine._stopped([1, 2, 3], SamplingParams(stop_check=lambda out: out[-2:] == [2, 3]))
    assert not Engine._stopped([1, 2], SamplingParams(stop_check=lambda out: len(out) > 2))
    assert not Engine._stopped([1, 2], SamplingParams())
