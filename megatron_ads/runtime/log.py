"""The project logger: one ``megatron_ads`` logger tree, set up once by the CLI (and by each worker).

- ``get_logger(__name__)`` in every module; messages carry a short tag (the module's last name, or the
  name given) instead of hand-made ``[train]`` prefixes.
- ``setup(level, rank=..., world=...)``: console on stderr (stdout stays for results and ``--json``);
  rank 0 logs at ``level``, other ranks only warnings and errors (``MEGATRON_ADS_LOG_RANKS=all`` shows
  every rank, each line tagged with its rank); ``add_file(dir, rank)`` adds a per-rank DEBUG log file.
  ``export_env(...)`` / ``setup_from_env()``: the CLI's choices (level, ``--json``, log directory) travel
  to worker processes through ``MEGATRON_ADS_LOG_*`` environment variables.
- ``quiet_third_party()``: narrow filters (module + message) for known third-party noise, transformers' /
  huggingface_hub's progress bars off, torch elastic's launcher logs down to errors. Our own warnings are
  kept, shown as one tagged line each (``[warnings] warning: UserWarning: ... (file:line)``).
- ``progress(...)``: one tqdm bar per long stage, silent when stderr is not a terminal, under
  ``--json`` (``setup(json_mode=True)``), or on ranks other than 0.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

ROOT = "megatron_ads"
_HANDLER_MARK = "_megatron_ads_handler"
LEVELS = ("debug", "info", "warning", "error")
"""What ``--log-level`` accepts."""
LEVEL_ENV, JSON_ENV, DIR_ENV = "MEGATRON_ADS_LOG_LEVEL", "MEGATRON_ADS_LOG_JSON", "MEGATRON_ADS_LOG_DIR"
"""Environment variables that carry the CLI's logging choices to worker processes."""


class _State:
    rank = 0
    world = 1
    json_mode = False


_state = _State()


def get_logger(name: str) -> logging.Logger:
    """The project logger for ``name`` (a module's ``__name__`` or a short tag such as ``"demo"``)."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


class _Formatter(logging.Formatter):
    def __init__(self, with_time: bool):
        super().__init__("%(asctime)s %(message)s" if with_time else "%(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == ROOT or not record.name.startswith(ROOT + "."):
            tag = record.name  # a third-party logger (THIRD_PARTY_LOGGERS) keeps its full name
        else:
            tag = record.name.rsplit(".", 1)[-1]
        if _state.world > 1:
            tag += f" r{_state.rank}"
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = "\n".join(f"[{tag}] {level}{line}" for line in record.getMessage().split("\n"))  # every line tagged
        record = logging.makeLogRecord({**record.__dict__, "msg": text, "args": None})
        return super().format(record)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of the record (pytest's capture swaps it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _drop_handlers(logger: logging.Logger, kind: str | None = None) -> None:
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, None) and (kind is None or getattr(h, _HANDLER_MARK) == kind):
            logger.removeHandler(h)
            h.close()


def level_number(level: str | int) -> int:
    """``"info"`` -> ``logging.INFO``; a ``BadInput``-style ``ValueError`` names the accepted levels."""
    if isinstance(level, int):
        return level
    if level.lower() not in LEVELS:
        raise ValueError(f"--log-level: expected one of {', '.join(LEVELS)}; got {level!r}")
    return logging.getLevelNamesMapping()[level.upper()]


def setup(level: str | int = "INFO", *, rank: int | None = None, world: int | None = None,
          json_mode: bool = False, with_time: bool = True) -> logging.Logger:
    """Configure the project logger (idempotent: calling again replaces the console handler).

    ``rank``/``world`` default to the RANK/WORLD_SIZE environment of torchrun, srun or our launcher.
    """
    level = level_number(level)
    _state.rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
    _state.world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) if world is None else world
    _state.json_mode = json_mode
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)  # records still propagate: a CLI's root logger has no handler; pytest's does
    _drop_handlers(logger, "console")
    console = _StderrHandler()
    all_ranks = os.environ.get("MEGATRON_ADS_LOG_RANKS", "0") == "all"
    console.setLevel(level if _state.rank == 0 or all_ranks else max(level, logging.WARNING))
    console.setFormatter(_Formatter(with_time))
    setattr(console, _HANDLER_MARK, "console")
    logger.addHandler(console)
    for name in THIRD_PARTY_LOGGERS:  # their warnings on our console, tagged, instead of bare lines
        other = logging.getLogger(name)
        _drop_handlers(other, "console")
        other.addHandler(console)
    quiet_third_party()
    return logger


def export_env(level: str | int = "INFO", json_mode: bool = False, log_dir: str | os.PathLike | None = None,
               environ: dict | None = None) -> dict[str, str]:
    """The ``MEGATRON_ADS_LOG_*`` variables for ``setup_from_env`` in a worker; set in ``environ`` if given."""
    env = {LEVEL_ENV: logging.getLevelName(level_number(level)).lower(), JSON_ENV: "1" if json_mode else "0"}
    if log_dir is not None:
        env[DIR_ENV] = str(log_dir)
    if environ is not None:
        environ.update(env)
    return env


def setup_from_env(environ: dict | None = None) -> logging.Logger:
    """``setup`` with the level / ``--json`` the CLI exported (``export_env``); adds the per-rank file
    when ``MEGATRON_ADS_LOG_DIR`` is set. What every worker process calls first."""
    env = os.environ if environ is None else environ
    logger = setup(env.get(LEVEL_ENV, "info"), json_mode=env.get(JSON_ENV) == "1")
    if env.get(DIR_ENV):
        add_file(env[DIR_ENV])
    return logger


def add_file(log_dir: str | os.PathLike, rank: int | None = None) -> Path:
    """Log everything (DEBUG) of this rank to ``log_dir/rank_R.log`` as well; returns the file."""
    rank = _state.rank if rank is None else rank
    path = Path(log_dir) / f"rank_{rank}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(ROOT)
    _drop_handlers(logger, "file")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(_Formatter(with_time=True))
    setattr(handler, _HANDLER_MARK, "file")
    logger.addHandler(handler)
    return path


def remove_file() -> None:
    """Stop logging to the file ``add_file`` opened (closes it)."""
    _drop_handlers(logging.getLogger(ROOT), "file")


THIRD_PARTY_WARNINGS: list[tuple[str, str, type[Warning]]] = [
    # (module regex, message regex, category): known, harmless noise of our pinned dependencies.
    # megatron-core 0.16.1 without Apex / TransformerEngine (the CPU default) says so at import, per module
    (r"megatron\.core\.", r"(Transformer Engine and )?Apex (is|are) not installed", UserWarning),
    (r"megatron\.core\.", r".*(TransformerEngine|Transformer Engine|transformer_engine) .*not installed", UserWarning),
    # megatron-core's TransformerConfig default cuda_graph_scope ("full") warns in __post_init__ although
    # CUDA graphs are off (cuda_graph_impl="none")
    (r"megatron\.core\.transformer\.transformer_config", r"full scope is deprecated", UserWarning),
    # megatron-core's MoE / optimizer code calls the deprecated all_gather_into_tensor (torch 2.13 warns from
    # its c10d logger wrapper, hence the bare "return func(*args, **kwargs)" source line)
    (r"torch\.distributed\.c10d_logger", r"`torch\.distributed\.all_gather_into_tensor` is deprecated", FutureWarning),
    (r"torch\.distributed\.c10d_logger", r"`torch\.distributed\.reduce_scatter_tensor` is deprecated", FutureWarning),
    (r"torch\.distributed", r".*TypedStorage is deprecated", UserWarning),
    # loading a torch_dist checkpoint (resume, init from a training checkpoint): megatron-core 0.16.1 calls
    # torch DCP's deprecated load_state_dict, and DCP's planner warns about megatron's ShardedTensor use
    (r"megatron\.core\.dist_checkpointing\.strategies\.torch", r"`load_state_dict` is deprecated", FutureWarning),
    (r"torch\.distributed\.checkpoint\.", r"Please use DTensor instead and we are deprecating ShardedTensor",
     FutureWarning),
    # nvidia-modelopt 0.47 (the quant extra) at import: it was released against transformers < 5.15
    (r"modelopt\.torch", r"transformers \S+ is not tested with current version of modelopt", UserWarning),
    # ... its megatron-core plugin, imported with it, checks a GPTModel method it patches (we quantize HF models)
    (r"modelopt\.torch\.quantization\.plugins\.megatron", r"GPTModel\.sharded_state_dict is not the version",
     UserWarning),
    # ... and its HF export copies a scale with torch.tensor(tensor)
    (r"modelopt\.torch\.export\.", r"To copy construct from a tensor", UserWarning),
]
"""Warnings the CLI filters where it starts (and every worker); everything else (ours included) still shows."""

THIRD_PARTY_LOGGERS = ("megatron",)
"""Libraries that log through ``logging`` without a handler of their own (Python would print their warnings
as bare lines): the console handler takes them, each line tagged with the logger's name."""

THIRD_PARTY_LOG_RECORDS: list[tuple[str, str]] = [
    # (logger, message regex): known, harmless log records of our pinned dependencies.
    # megatron-core's optimizer checkpointing on a rank whose expert optimizer is the empty stub (dense-only
    # pipeline stages; train/ gives them one so the collectives stay uniform): nothing to map, by design
    ("megatron.core.dist_checkpointing.optimizer", r"Sharded parameters mapping is empty"),
]
"""Log records dropped where they are made (a filter on that one logger); every other record still shows."""


class _DropRecords(logging.Filter):
    def __init__(self, patterns: list[str]):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(p.match(record.getMessage()) for p in self.patterns)


QUIET_LOGGERS = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
"""torch's launcher logs each start, stop and worker failure itself; ``runtime.launch`` reports them."""


def quiet_third_party() -> None:
    """Filter the known third-party warnings, turn off transformers / huggingface_hub bars, quiet torch
    elastic's logs, and show the warnings that remain as one tagged log line each.

    Environment variables (not imports) so it costs nothing and reaches worker processes too; a
    transformers already imported is told directly (it reads the variable at import)."""
    for module, message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1":
        tf_logging = sys.modules.get("transformers.utils.logging")
        if tf_logging is not None:
            tf_logging.disable_progress_bar()
            tf_logging.set_verbosity_error()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    by_logger: dict[str, list[str]] = {}
    for name, pattern in THIRD_PARTY_LOG_RECORDS:
        by_logger.setdefault(name, []).append(pattern)
    for name, patterns in by_logger.items():
        other = logging.getLogger(name)
        for f in [f for f in other.filters if isinstance(f, _DropRecords)]:
            other.removeFilter(f)
        other.addFilter(_DropRecords(patterns))
    if warnings.showwarning is not _show_warning and getattr(warnings.showwarning, "__module__", "") == "warnings":
        warnings.showwarning = _show_warning  # pytest's capture (its own showwarning) is left alone


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning that passed the filters, as one log line (no source line: it was often
    ``return func(*args, **kwargs)`` of a wrapper)."""
    get_logger("warnings").warning("%s: %s (%s:%s)", category.__name__, message, filename, lineno)


def bars_enabled() -> bool:
    """Progress bars show on rank 0, outside ``--json``, when stderr is a terminal."""
    return _state.rank == 0 and not _state.json_mode and sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar for one long stage (disabled where ``bars_enabled()`` is false)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not bars_enabled(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)
