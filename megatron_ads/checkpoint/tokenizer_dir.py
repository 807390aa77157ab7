"""Where a checkpoint's tokenizer is: the one lookup every reader uses (training init, the label / generate
engines, the files copied into training checkpoints and conversions).

A tokenizer lies in the directory a path names or in its ``tokenizer/`` (an HF directory; a converted
Megatron checkpoint's root; a training run's directory, with the BPE it trained), else in those two places of
the Megatron checkpoint the path resolves to (``dist_io.resolve_dir``: a run, its ``checkpoints/``, the
``latest`` pointer, a step directory — every training checkpoint carries ``tokenizer/``).
"""

from __future__ import annotations

from pathlib import Path

from megatron_ads.checkpoint.dist_io import resolve_dir
from megatron_ads.checkpoint.hf_io import CheckpointError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "generation_config.json", "chat_template.jinja")
"""Every file that belongs with a tokenizer (copied along with checkpoints and exports)."""
DEFINING_FILES = tuple(f for f in TOKENIZER_FILES if f not in ("generation_config.json", "chat_template.jinja"))
"""Files that define a tokenizer on their own (a directory with only a generation config has none)."""


def find_tokenizer_dir(path: str | Path, require: str | None = None) -> Path | None:
    """The directory holding the tokenizer of the checkpoint ``path`` names (module docstring), or None.
    ``require``: a file that must be there (``tokenizer.json`` for the fast-tokenizer loader); by default any of
    ``DEFINING_FILES``."""
    p = Path(path)
    dirs = [p, p / "tokenizer"]
    try:
        step = resolve_dir(p)
    except (CheckpointError, OSError):
        step = None
    if step is not None and step != p:
        dirs += [step, step / "tokenizer"]
    names = (require,) if require else DEFINING_FILES
    return next((d for d in dirs if any((d / f).is_file() for f in names)), None)


def tokenizer_files(d: Path | None) -> list[Path]:
    """The tokenizer files present in directory ``d`` (none for None)."""
    return [] if d is None else [d / f for f in TOKENIZER_FILES if (d / f).is_file()]
