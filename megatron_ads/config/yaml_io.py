"""The YAML side of every config file: read a file of fields, type a ``key=value`` override."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def yaml_value(raw: str) -> Any:
    """A YAML-typed override value; ``1e-5`` is a float (YAML 1.1 would read it as a string)."""
    v = yaml.safe_load(raw)
    return float(v) if isinstance(v, str) and _FLOAT.match(v.strip()) else v


def read_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML file holds (an empty file: {}); errors name the file and what was expected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of fields, got {type(d).__name__}")
    return d


def split_override(item: str, example: str) -> tuple[str, Any]:
    """``key=value`` → (key, YAML-typed value); ValueError showing ``example`` otherwise."""
    if "=" not in item:
        raise ValueError(f"override {item!r}: expected key=value (e.g. {example})")
    key, raw = item.split("=", 1)
    return key.strip(), yaml_value(raw)
