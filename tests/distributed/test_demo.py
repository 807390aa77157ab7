import pytest

from megatron_ads.cli import main

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_demo_runs_end_to_end(tmp_path, capfd, console_noise):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out, err = capfd.readouterr()  # file descriptors: the worker processes' output too
    assert "all stages passed" in out and "EQUAL" in out and out.count("PASS") == 2
    assert "pp=31 ep=8 dp=8" in out
    assert "train sft (4 ranks)" in out and "total" in out  # the closing summary table
    assert console_noise(out, err) == []
    sft = tmp_path / "demo" / "sft"
    assert (sft / "plots" / "lambda.png").is_file() and len((sft / "val_metrics.jsonl").read_text().splitlines()) == 2
