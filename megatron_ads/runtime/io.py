"""Files that are never seen half-written, and the one JSONL reader.

``atomic_path(path)`` yields a temporary sibling (``<name>.tmp``) to write; it replaces ``path`` only
when the block finishes, and is removed if the block raises. Works for files and directories.
``read_jsonl`` reads one object per line and names the file and line of anything malformed.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from megatron_ads.runtime.errors import BadInput

TMP_SUFFIX = ".tmp"


def tmp_sibling(path: str | os.PathLike) -> Path:
    """``path`` with ``.tmp`` appended to its name (same directory, so the rename is atomic)."""
    path = Path(path)
    return path.with_name(path.name + TMP_SUFFIX)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield ``<path>.tmp`` to write (a file, or a directory the block creates); rename it to ``path`` on
    success (replacing a file; a directory ``path`` must not exist yet), remove it on error."""
    path = Path(path)
    tmp = tmp_sibling(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    os.replace(tmp, path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, trailing newline) atomically; returns ``path``."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write one JSON object per line atomically; returns ``path``."""
    return write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def row_id_problems(row: dict, line: int, seen: dict[str, int]) -> list[str]:
    """What is wrong with a row's ``id`` (missing, not a string or an integer, a duplicate of an earlier line's;
    ``seen`` maps the ids read so far to their lines and gains this one): messages naming the field."""
    if "id" not in row:
        return ["field 'id': missing"]
    rid = row["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        return [f"field 'id': expected a string or an integer, got {rid!r}"]
    if str(rid) in seen:
        return [f"field 'id': duplicate {rid!r} (first on line {seen[str(rid)]})"]
    seen[str(rid)] = line
    return []


def iter_jsonl(path: str | os.PathLike, required: tuple[str, ...] = (),
               on_error: Callable[[int, str], None] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each non-blank line of a JSONL file.

    A line with invalid JSON, one that is not an object, or a row missing one of ``required`` raises
    ``BadInput`` naming ``FILE:LINE``; with ``on_error``, ``on_error(line_number, message)`` is called
    instead and the reading goes on (jobs that report bad rows and label the rest).
    ``FileNotFoundError`` if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such JSONL file")

    def bad(n: int, message: str) -> None:
        if on_error is None:
            raise BadInput(message)
        on_error(n, message)

    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                bad(n, f"{path}:{n}: invalid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(row, dict):
                bad(n, f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                continue
            missing = [k for k in required if k not in row]
            if missing:
                bad(n, f"{path}:{n}: missing field(s) {', '.join(missing)}; expected {', '.join(required)}")
                continue
            yield n, row


def read_jsonl(path: str | os.PathLike, required: tuple[str, ...] = ()) -> list[dict]:
    """All rows of a JSONL file (see ``iter_jsonl`` for the errors)."""
    return [row for _, row in iter_jsonl(path, required)]
