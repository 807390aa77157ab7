import json
import subprocess
import sys

import pytest

from megatron_ads.cli import main


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in ("init-model", "verify", "demo"):
        assert verb in out


def test_bad_input_exits_2_with_named_file(tmp_path, capsys):
    assert main(["verify", "parity", "--hf", str(tmp_path)]) == 2
    assert "config.json" in capsys.readouterr().err


def test_unknown_flavor_is_rejected():
    with pytest.raises(SystemExit) as exc:
        main(["init-model", "--flavor", "nope", "--out", "x"])
    assert exc.value.code == 2


def test_too_large_flavor_is_refused(tmp_path, capsys):
    assert main(["init-model", "--flavor", "deepseek_v3", "--out", str(tmp_path / "x")]) == 2
    assert "too large" in capsys.readouterr().err
