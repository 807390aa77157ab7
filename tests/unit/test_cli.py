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


@pytest.mark.parametrize("argv, level", [
    ([], "info"),
    (["--log-level", "warning", "eval"], "warning"),
    (["eval", "--log-level", "debug"], "debug"),
    (["--log-level", "error", "eval", "--log-level", "debug"], "debug"),
])
def test_log_level_before_or_after_the_verb(argv, level):
    from megatron_ads.cli import build_parser

    argv = argv or ["eval"]
    i = argv.index("eval")
    before, after = argv[:i], argv[i + 1:]
    assert build_parser().parse_args([*before, "eval", "--pred", "p", "--gold", "g", "--task", "query_ad", *after]
                                     ).log_level == level
    # after a verb's own sub-command too
    assert build_parser().parse_args([*before, "verify", "parity", "--hf", "x", *after]).log_level == level


@pytest.mark.parametrize("exc, code, text", [
    ("bad_input", 2, "[cli] error: eval: pred.jsonl:3: invalid JSON"),
    ("value", 2, "[cli] error: eval: seq_len: expected > 0"),
    ("failure", 1, "[cli] error: eval: FAILED: parity above atol"),
    ("worker", 1, "[cli] error: eval: FAILED: rank 1: CollectiveTimeout: phase 'optimizer'"),
])
def test_errors_map_to_exit_codes_by_class_on_one_tagged_line(exc, code, text, monkeypatch, capsys, tmp_path):
    from megatron_ads.cli import CommandFailed, eval as eval_cli
    from megatron_ads.runtime.errors import BadInput, Failure
    from megatron_ads.runtime.launch import WorkerError

    errors = {"bad_input": BadInput("pred.jsonl:3: invalid JSON"), "value": ValueError("seq_len: expected > 0"),
              "failure": CommandFailed("parity above atol"),
              "worker": WorkerError([(1, "CollectiveTimeout: phase 'optimizer'", "Traceback (most recent call last):\n")])}
    assert isinstance(errors["worker"], Failure) and isinstance(errors["failure"], Failure)

    def boom(args):
        raise errors[exc]

    monkeypatch.setattr(eval_cli, "run", boom)
    assert main(["eval", "--pred", "p", "--gold", "g", "--task", "query_ad"]) == code
    out, err = capsys.readouterr()
    assert out == "" and text in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_other_exceptions_are_not_hidden(monkeypatch):
    from megatron_ads.cli import eval as eval_cli

    def boom(args):
        raise KeyError("a bug")

    monkeypatch.setattr(eval_cli, "run", boom)
    with pytest.raises(KeyError):
        main(["eval", "--pred", "p", "--gold", "g", "--task", "query_ad"])
