"""`megatron-ads data synth`: the task's synthetic rows as a file, deterministic in the seed, valid task rows
with gold labels that `eval` reads."""

import json

import pytest

from megatron_ads.cli import main
from megatron_ads.data.synthetic import GENERATORS
from megatron_ads.data.tasks import load_jsonl, task


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_synth_writes_valid_rows_deterministically(tmp_path, name, capsys):
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    assert main(["data", "synth", "--task", name, "--n", "7", "--out", str(a), "--seed", "3"]) == 0
    assert main(["data", "synth", "--task", name, "--n", "7", "--out", str(b), "--seed", "3"]) == 0
    assert main(["data", "synth", "--task", name, "--n", "7", "--out", str(c), "--seed", "4", "--json"]) == 0
    assert a.read_text() == b.read_text() != c.read_text()
    rows = load_jsonl(a, task(name), with_targets=True)
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7
    assert not list(tmp_path.glob("*.tmp"))


def test_synth_json_summary(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["data", "synth", "--task", "ad_user", "--n", "4", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"task": "ad_user", "rows": 4, "seed": 0, "out": str(out)}


def test_synth_rows_are_gold_for_eval(tmp_path, capsys):
    gold = tmp_path / "gold.jsonl"
    assert main(["data", "synth", "--task", "query_ad", "--n", "40", "--out", str(gold)]) == 0
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": r["id"], "labels": r["labels"]}) + "\n"
                            for r in map(json.loads, gold.read_text().splitlines())))
    capsys.readouterr()
    assert main(["eval", "--task", "query_ad", "--pred", str(pred), "--gold", str(gold), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n"] == 40 and r["malformed"] == 0
    assert r["bad_view"]["BACC"] == r["fair_view"]["BACC"] == r["location"]["BACC"] == pytest.approx(1.0)


@pytest.mark.parametrize("argv, field", [(["--n", "0"], "--n"), (["--n", "3", "--defect-rate", "1.5"], "--defect-rate")])
def test_synth_bad_input_exits_2(tmp_path, argv, field, caplog):
    assert main(["data", "synth", "--task", "query_ad", "--out", str(tmp_path / "x.jsonl"), *argv]) == 2
    assert field in caplog.text and not (tmp_path / "x.jsonl").exists()
