"""The project logger: one ``megatron_ads`` logger tree, set up once by the CLI.

- ``get_logger(__name__)`` in every module; messages carry a short tag (the module's last name, or the
  name given) instead of hand-made ``[train]`` prefixes.
- ``setup(level, rank=..., world=...)``: console on stderr (stdout stays for results and ``--json``);
  rank 0 logs at ``level``, other ranks only warnings and errors (``MEGATRON_ADS_LOG_RANKS=all`` shows
  every rank, each line tagged with its rank); ``add_file(dir, rank)`` adds a per-rank DEBUG log file.
- ``quiet_third_party()``: narrow filters (module + message) for known third-party noise, and
  transformers' / huggingface_hub's progress bars off. Our own warnings are kept.
- ``progress(...)``: one tqdm bar per long stage, silent when stderr is not a terminal, under
  ``--json`` (``setup(json_mode=True)``), or on ranks other than 0.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

ROOT = "megatron_ads"
_HANDLER_MARK = "_megatron_ads_handler"


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
        tag = record.name.rsplit(".", 1)[-1] if record.name != ROOT else ROOT
        if _state.world > 1:
            tag += f" r{_state.rank}"
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        record = logging.makeLogRecord({**record.__dict__, "msg": f"[{tag}] {level}{record.getMessage()}", "args": None})
        return super().format(record)


def _drop_handlers(logger: logging.Logger, kind: str | None = None) -> None:
    for h in list(logger.handlers):
        if getattr(h, _HANDLER_MARK, None) and (kind is None or getattr(h, _HANDLER_MARK) == kind):
            logger.removeHandler(h)
            h.close()


def setup(level: str | int = "INFO", *, rank: int | None = None, world: int | None = None,
          json_mode: bool = False, with_time: bool = True) -> logging.Logger:
    """Configure the project logger (idempotent: calling again replaces the console handler).

    ``rank``/``world`` default to the RANK/WORLD_SIZE environment of torchrun, srun or our launcher.
    """
    _state.rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
    _state.world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) if world is None else world
    _state.json_mode = json_mode
    if isinstance(level, str):
        if level.upper() not in logging.getLevelNamesMapping():
            raise ValueError(f"--log-level: expected one of debug, info, warning, error; got {level!r}")
        level = logging.getLevelNamesMapping()[level.upper()]
    logger = logging.getLogger(ROOT)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    _drop_handlers(logger, "console")
    console = logging.StreamHandler(sys.stderr)
    all_ranks = os.environ.get("MEGATRON_ADS_LOG_RANKS", "0") == "all"
    console.setLevel(level if _state.rank == 0 or all_ranks else max(level, logging.WARNING))
    console.setFormatter(_Formatter(with_time))
    setattr(console, _HANDLER_MARK, "console")
    logger.addHandler(console)
    quiet_third_party()
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


THIRD_PARTY_WARNINGS: list[tuple[str, str, type[Warning]]] = [
    # (module regex, message regex, category): known, harmless noise of our pinned dependencies
    (r"megatron\.core.*", r".*(Apex|apex|Transformer ?Engine|TE ).*", Warning),
    (r"megatron\.core.*", r".*is not installed.*", Warning),
    (r"torch\.distributed.*", r".*TypedStorage is deprecated.*", UserWarning),
]
"""Warnings the CLI filters where it starts; everything else (ours included) still shows."""


def quiet_third_party() -> None:
    """Filter the known third-party warnings and turn off transformers / huggingface_hub bars.

    Environment variables (not imports) so it costs nothing and reaches worker processes too."""
    for module, message, category in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def bars_enabled() -> bool:
    """Progress bars show on rank 0, outside ``--json``, when stderr is a terminal."""
    return _state.rank == 0 and not _state.json_mode and sys.stderr.isatty()


def progress(iterable: Iterable | None = None, *, total: float | None = None, desc: str = "",
             unit: str = "it", **kwargs) -> tqdm:
    """A tqdm bar for one long stage (disabled where ``bars_enabled()`` is false)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not bars_enabled(), file=sys.stderr,
                dynamic_ncols=True, **kwargs)
