import pytest

from megatron_ads.cli import main

pytestmark = pytest.mark.distributed


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "all stages passed" in out and "EQUAL" in out and out.count("PASS") == 2
    assert "pp=31 ep=8 dp=8" in out
    sft = tmp_path / "demo" / "sft"
    assert (sft / "plots" / "lambda.png").is_file() and len((sft / "val_metrics.jsonl").read_text().splitlines()) == 2
