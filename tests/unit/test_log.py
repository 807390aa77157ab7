"""runtime.log: tagged lines on stderr, rank filtering, the per-rank file, bars only where a person watches,
third-party warnings filtered by module + message while ours still show."""

import logging
import sys
import warnings

import pytest

from megatron_ads.runtime import log as logs


@pytest.fixture(autouse=True)
def fresh_logging(monkeypatch):
    monkeypatch.delenv("MEGATRON_ADS_LOG_RANKS", raising=False)
    yield
    logs._drop_handlers(logging.getLogger(logs.ROOT))
    logs.setup("info", rank=0, world=1)
    logs._drop_handlers(logging.getLogger(logs.ROOT))


def test_lines_are_tagged_on_stderr_results_stay_on_stdout(capsys):
    logs.setup("info", rank=0, world=1, with_time=False)
    logs.get_logger("megatron_ads.train.loop").info("step %d", 3)
    logs.get_logger("demo").warning("two\nlines")
    logs.get_logger("demo").debug("hidden at info")
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == ["[loop] step 3", "[demo] warning: two", "[demo] warning: lines"]


def test_time_prefix_and_level_validation(capsys):
    logs.setup("debug", rank=0, world=1)
    logs.get_logger("x").debug("shown")
    assert capsys.readouterr().err.split(" ", 1)[1] == "[x] debug: shown\n"
    with pytest.raises(ValueError, match="--log-level: expected one of debug, info, warning, error; got 'loud'"):
        logs.setup("loud")


def test_other_ranks_show_only_warnings_each_tagged_with_its_rank(capsys, monkeypatch):
    logs.setup("info", rank=1, world=4, with_time=False)
    logs.get_logger("train").info("not on rank 1")
    logs.get_logger("train").error("diverged")
    assert capsys.readouterr().err == "[train r1] error: diverged\n"
    monkeypatch.setenv("MEGATRON_ADS_LOG_RANKS", "all")
    logs.setup("info", rank=1, world=4, with_time=False)
    logs.get_logger("train").info("now shown")
    assert capsys.readouterr().err == "[train r1] now shown\n"


def test_rank_and_world_come_from_the_launcher_environment(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    logs.setup("info", with_time=False)
    logs.get_logger("sft").warning("w")
    assert capsys.readouterr().err == "[sft r2] warning: w\n" and not logs.bars_enabled()


def test_per_rank_file_holds_everything(tmp_path, capsys):
    logs.setup("warning", rank=3, world=4)
    path = logs.add_file(tmp_path / "logs")
    logs.get_logger("train").debug("detail")
    logs.get_logger("train").info("step 1")
    logs.remove_file()
    logs.get_logger("train").info("after")
    assert path == tmp_path / "logs" / "rank_3.log"
    text = path.read_text()
    assert "[train r3] debug: detail" in text and "[train r3] step 1" in text and "after" not in text
    assert capsys.readouterr().err == ""  # console at warning, rank 3


def test_the_console_follows_sys_stderr_when_it_is_swapped(monkeypatch):
    import io

    logs.setup("info", rank=0, world=1, with_time=False)
    swapped = io.StringIO()
    monkeypatch.setattr(sys, "stderr", swapped)  # what pytest's capture does between tests
    logs.get_logger("a").info("to the new stderr")
    assert swapped.getvalue() == "[a] to the new stderr\n"


def test_bars_only_on_a_terminal_on_rank_0_without_json(monkeypatch):
    logs.setup("info", rank=0, world=1)
    assert not logs.bars_enabled() and logs.progress(range(3)).disable  # pytest's stderr is no terminal
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert logs.bars_enabled() and not logs.progress(range(3), desc="convert").disable
    logs.setup("info", rank=0, world=1, json_mode=True)
    assert not logs.bars_enabled()
    logs.setup("info", rank=1, world=2)
    assert not logs.bars_enabled()


def test_env_hand_off_to_workers(tmp_path, monkeypatch, capsys):
    env = logs.export_env("warning", json_mode=True, log_dir=tmp_path / "run" / "logs")
    assert env == {logs.LEVEL_ENV: "warning", logs.JSON_ENV: "1", logs.DIR_ENV: str(tmp_path / "run" / "logs")}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    logs.setup_from_env(env)
    logs.get_logger("w").info("file only")
    assert logs._state.json_mode and (tmp_path / "run" / "logs" / "rank_1.log").read_text().endswith("[w r1] file only\n")
    assert capsys.readouterr().err == ""


def test_third_party_warnings_are_filtered_by_module_and_message_ours_show(capsys):
    logs.setup("info", rank=0, world=1, with_time=False)
    with warnings.catch_warnings():
        warnings.resetwarnings()  # without pytest's own filters
        warnings.simplefilter("always")
        logs.quiet_third_party()
        # megatron-core's import-time notice, as if raised from its module: filtered
        warnings.warn_explicit("Apex is not installed. Falling back to Torch Norm", UserWarning,
                               "backends.py", 21, module="megatron.core.models.backends")
        # the same words from one of our modules: kept, as one tagged line without the source line
        warnings.warn_explicit("Apex is not installed. Falling back to Torch Norm", UserWarning,
                               "ours.py", 7, module="megatron_ads.model.build")
        warnings.warn_explicit("something else", UserWarning, "x.py", 1, module="megatron.core.other")
    err = capsys.readouterr().err.splitlines()
    assert err == ["[warnings] warning: UserWarning: Apex is not installed. Falling back to Torch Norm (ours.py:7)",
                   "[warnings] warning: UserWarning: something else (x.py:1)"]


def test_transformers_bars_off_when_it_was_imported_first(monkeypatch):
    tf_logging = pytest.importorskip("transformers.utils.logging")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logs.quiet_third_party()
    assert not tf_logging.is_progress_bar_enabled()
    for name in logs.QUIET_LOGGERS:
        assert logging.getLogger(name).level == logging.CRITICAL


def test_third_party_log_records_are_tagged_and_known_noise_dropped(capsys):
    logs.setup("info", rank=0, world=1, with_time=False)
    opt = logging.getLogger("megatron.core.dist_checkpointing.optimizer")
    opt.warning("Sharded parameters mapping is empty. It means tensors in model state dict do not correspond")
    opt.warning("something real")
    logging.getLogger("megatron.core.optimizer").info("below the root's WARNING: not made")
    assert capsys.readouterr().err.splitlines() == [
        "[megatron.core.dist_checkpointing.optimizer] warning: something real"]
