"""SFT options: config validation, label noise, the general task, and the PNG plots of a run."""

import json

import numpy as np
import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.data.mixing import TaskMixer, uniform_lambdas
from megatron_ads.data.packing import encode
from megatron_ads.data.synthetic import SyntheticConfig, generate
from megatron_ads.data.tasks import check_sft, lambda_metric, load_jsonl, sft_tasks, task
from megatron_ads.data.tokenizer import train_bpe_tokenizer
from megatron_ads.eval.plots import plot_sft_run


@pytest.mark.parametrize("override, needle", [
    ("sft.task_weighting=mixer", "sft.task_weighting"),
    ("sft.task_metric.query_ad=AUC", "sft.task_metric.query_ad"),
    ("sft.task_metric.query_gen=AUC", "sft.task_metric.query_gen"),
    ("sft.synthetic.query_gen.label_noise=0.5", "sft.synthetic"),
    ("sft.general_weight=1.0", "sft.general_weight"),
    ("sft.files.query_gen.train=x.jsonl", "sft.files.query_gen"),
    ("sft.files.query_ad.val=x.jsonl", "sft.files.query_ad"),
    ("sft.test_rows=-1", "sft.test_rows"),
    ("sft.prompt_loss_weight=2", "sft.prompt_loss_weight"),
    ("sft.label_balance=-0.5", "sft.label_balance"),
])
def test_sft_options_name_the_field(override, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\nsft: {general_path: g.jsonl}\n")
    with pytest.raises(ValueError, match=needle):
        check_sft(JobConfig.load(path, [override]).sft)  # task-dependent checks live with the task registry


def test_sft_task_metric_defaults_and_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    s = JobConfig.load(path).sft
    check_sft(s)
    assert sft_tasks(s) == ["query_ad", "ad_user"]
    assert (lambda_metric(s, "query_ad"), lambda_metric(s, "ad_user")) == ("bad_view_BACC", "AUC")
    s = JobConfig.load(path, ["sft.task_metric.query_ad=quality_BACC", "sft.task_weighting=sampling"]).sft
    assert lambda_metric(s, "query_ad") == "quality_BACC" and s.task_weighting == "sampling"


def test_sft_tasks_must_be_registered(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    with pytest.raises(ValueError, match="sft.tasks: expected a non-empty subset"):
        check_sft(JobConfig.load(path, ["sft.tasks=[query_ad, nope]"]).sft)
    with pytest.raises(ValueError, match="sft.tasks"):
        check_sft(JobConfig.load(path, ["sft.tasks=[general]"]).sft)  # registered, but no metric


def test_task_mixer_is_deterministic_and_follows_the_probabilities():
    data = {"query_ad": generate("query_ad", SyntheticConfig(size=50, seed=1)),
            "ad_user": generate("ad_user", SyntheticConfig(size=50, seed=1))}
    mixer = TaskMixer(data=data, seed=3, label_only_fraction=0.5)
    picks = mixer.draw(7, 400, {"query_ad": 0.8, "ad_user": 0.2})
    assert picks == mixer.draw(7, 400, {"query_ad": 0.8, "ad_user": 0.2}) != mixer.draw(8, 400, {"query_ad": 0.8, "ad_user": 0.2})
    share = sum(name == "query_ad" for name, _, _ in picks) / 400
    assert 0.72 < share < 0.88 and all(row in data[name] for name, row, _ in picks)
    assert uniform_lambdas(["query_ad", "ad_user"], 0.2) == {"query_ad": 0.4, "ad_user": 0.4, "general": 0.2}


def test_label_noise_rate_and_determinism():
    clean = generate("ad_user", SyntheticConfig(size=1000, seed=4))
    noisy = generate("ad_user", SyntheticConfig(size=1000, seed=4, label_noise=0.4))
    flagged = [r for r in noisy if r.get("noisy_label")]
    assert 0.34 < len(flagged) / 1000 < 0.46
    # inputs are unchanged; only flagged rows may differ, and about 3/4 of them do (random of 4 scores)
    assert all(a["history"] == b["history"] and a["ad"] == b["ad"] for a, b in zip(clean, noisy))
    assert all(a == b for a, b in zip(clean, noisy) if not b.get("noisy_label"))
    changed = sum(a["score"] != b["score"] for a, b in zip(clean, noisy))
    assert 0.6 * len(flagged) < changed < 0.9 * len(flagged)
    assert generate("ad_user", SyntheticConfig(size=1000, seed=4, label_noise=0.4)) == noisy
    with pytest.raises(ValueError, match="label_noise"):
        SyntheticConfig(label_noise=1.5)


def test_general_task_rows_and_plain_target(tmp_path):
    spec = task("general")
    p = tmp_path / "general.jsonl"
    p.write_text(json.dumps({"id": 1, "prompt": "Name a color.", "response": "Blue."}) + "\n"
                 + json.dumps({"id": 2, "prompt": "Say hi."}) + "\n")
    with pytest.raises(ValueError, match=r"general.jsonl:2: field 'response': missing"):
        load_jsonl(p, spec)
    row = {"id": 1, "prompt": "Name a color.", "response": "Blue."}
    assert spec.prompt(row) == "Name a color.\n" and spec.target(row) == "Blue."
    tok = train_bpe_tokenizer(1024)
    ex = encode(tok, spec, row, 32)
    target_ids = [t for t, m in zip(ex.tokens[1:], ex.mask) if m]
    assert tok.decode(target_ids[:-1]) == "Blue." and target_ids[-1] == tok.eos_token_id


def _read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(str(path))


def test_plot_sft_run_writes_every_plot(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 3.0 / i}) + "\n" for i in range(1, 21)))
    val = []
    for k, step in enumerate((10, 20)):
        val.append({"step": step, "query_ad/bad_view_BACC": 0.5 + 0.1 * k, "ad_user/AUC": 0.6,
                    "lambda/query_ad": 0.55 - 0.1 * k, "lambda/ad_user": 0.45 + 0.1 * k,
                    "weights": {"edges": list(np.logspace(-0.7, 0.7, 17)), "counts": [k + 1] * 16}})
    (tmp_path / "val_metrics.jsonl").write_text("".join(json.dumps(v) + "\n" for v in val) + '{"step": 3')  # torn tail
    files = {p.name for p in plot_sft_run(tmp_path)}
    assert files == {"loss.png", "val_metrics.png", "lambda.png", "weights_step10.png", "weights_step20.png"}
    img = _read_png(tmp_path / "plots" / "lambda.png")
    assert img.shape[:2] == (400, 640) and (img[..., :3] < 1.0).any()
    assert not list((tmp_path / "plots").glob("*.tmp"))


def test_exponent_overrides_are_floats(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    job = JobConfig.load(path, ["optim.lr=1e-5", "optim.min_lr=0", "sft.tasks=[query_ad]"])
    assert job.optim.lr == 1e-5 and isinstance(job.optim.lr, float) and job.sft.tasks == ["query_ad"]


def test_city_mismatch_rate_sets_the_location_defect_rate_and_the_reasoning_names_both_cities():
    bad = lambda rows: sum(r["labels"]["location"] == "bad" for r in rows) / len(rows)  # noqa: E731
    default = generate("query_ad", SyntheticConfig(size=3000, seed=3))
    high = generate("query_ad", SyntheticConfig(size=3000, seed=3, city_rate=0.8, city_mismatch_rate=0.6))
    assert abs(bad(default) - 0.4 * 0.4 * 0.8) < 0.03 and abs(bad(high) - 0.8 * 0.6 * 0.8) < 0.03
    assert bad(generate("query_ad", SyntheticConfig(size=300, seed=3, city_mismatch_rate=0.0))) == 0
    for r in high[:200]:
        city = r["query"].split(" in ")[-1] if " in " in r["query"] else None
        ad_city = r["ad"]["description"].split(" in ")[-1].split(".")[0] if r["ad"]["description"] else None
        if city is None:
            assert "The query names no city" in r["reasoning"] and r["labels"]["location"] == "good"
        else:
            assert f"Query city {city}, ad city " in r["reasoning"]
            if ad_city is not None:
                assert (r["labels"]["location"] == "bad") == (ad_city != city)
                assert f"ad city {ad_city}:" in r["reasoning"]
    with pytest.raises(ValueError, match="city_mismatch_rate"):
        SyntheticConfig(city_mismatch_rate=1.5)

