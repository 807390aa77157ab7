"""SFT data: every task's train/val/test rows (synthetic corpora or the user's own JSONL), the general
instruction data (train / held-out test), and the tokenizer (the checkpoint's own, or a byte-level BPE trained
on the rows, and on ``sft.tokenizer_tasks``' rows)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from megatron_ads.config.train import ModelSpec, SFTSpec
from megatron_ads.data import synthetic
from megatron_ads.data.tasks import GENERAL, load_jsonl, sft_tasks, task
from megatron_ads.data.tokenizer import run_tokenizer

Splits = dict[str, list[dict]]
"""{"train": rows, "val": rows, "test": rows}"""

TOKENIZER_ROWS = 300
"""Training rows per task a random-init model's tokenizer is trained on."""


def load_sft_data(s: SFTSpec) -> dict[str, Splits]:
    """Rows of every SFT task (adaptive tasks in ``sft.tasks`` order, then the general task if any)."""
    data: dict[str, Splits] = {}
    for name in sft_tasks(s):
        if name in s.files:
            data[name] = user_data(name, s.files[name], s.data_seed)
        else:
            rows = synthetic.generate(name, synthetic_config(s, name))
            data[name] = synthetic.split(rows, seed=s.data_seed)
    if s.general_path:
        data[GENERAL.name] = general_data(s)
    return data


def general_data(s: SFTSpec) -> Splits:
    """The general instruction rows: ``sft.general_path`` to train on and ``sft.general_test_path`` held out, or
    without a test file 10% of ``general_path`` held out (deterministic in ``sft.data_seed``). No val rows: the
    general task has no validation metric."""
    rows = load_jsonl(s.general_path, GENERAL)
    if s.general_test_path:
        return {"train": rows, "val": [], "test": load_jsonl(s.general_test_path, GENERAL)}
    parts = synthetic.split(rows, val=0.0, test=0.1, seed=s.data_seed)
    if not parts["train"]:
        raise ValueError(f"sft.general_path: {s.general_path}: {len(rows)} row(s) leave none to train on after "
                         f"holding out 10% (give more rows or sft.general_test_path)")
    return parts


def user_data(name: str, files: dict, seed: int) -> Splits:
    """A task's own labeled JSONL (validated; errors name file, line, field). Without a val (test) file,
    10% of train becomes val (test)."""
    spec = task(name)
    train = load_jsonl(files["train"], spec)
    out = {k: load_jsonl(files[k], spec) for k in ("val", "test") if files.get(k)}
    if len(out) < 2:
        parts = synthetic.split(train, val=0.0 if "val" in out else 0.1, test=0.0 if "test" in out else 0.1, seed=seed)
        train = parts["train"]
        for k in ("val", "test"):
            out.setdefault(k, parts[k])
    if not out["val"]:
        raise ValueError(f"sft.files.{name}: no validation rows (give a 'val' file or more train rows)")
    return {"train": train, **out}


def synthetic_config(s: SFTSpec, name: str) -> synthetic.SyntheticConfig:
    """The synthetic corpus settings of task ``name`` (``sft.synthetic.<name>``, size and seed from the spec)."""
    extra = dict(s.synthetic.get(name, {}))
    try:
        return synthetic.SyntheticConfig(**{**extra, "size": s.train_size, "seed": s.data_seed})
    except TypeError as exc:
        raise ValueError(f"sft.synthetic.{name}: {exc}") from exc


def sft_tokenizer(m: ModelSpec, vocab_size: int, data: dict[str, Splits], save_to: Path | None,
                  s: SFTSpec | None = None):
    """The init checkpoint's tokenizer when it has one; else a byte-level BPE trained on (up to)
    ``TOKENIZER_ROWS`` training rows of every task of ``data`` and of ``s.tokenizer_tasks`` (generated or read
    only then), saved to ``save_to`` when given (``tokenizer.run_tokenizer``)."""

    def texts() -> list[str]:
        everything = dict(data)
        for name in (s.tokenizer_tasks if s is not None else []):
            if name not in everything:
                everything[name] = tokenizer_rows(s, name)
        out = []
        for name, splits in everything.items():
            spec = task(name)
            out += [spec.prompt(row) + spec.target(row) for row in splits["train"][:TOKENIZER_ROWS]]
        return out

    return run_tokenizer(m, vocab_size, texts, save_to)


def tokenizer_rows(s: SFTSpec, name: str) -> Splits:
    """Training rows of task ``name`` for the tokenizer only (``sft.tokenizer_tasks``): its own file, or its
    synthetic corpus with the run's settings (at most ``TOKENIZER_ROWS`` rows generated)."""
    if name in s.files:
        return user_data(name, s.files[name], s.data_seed)
    cfg = synthetic_config(s, name)
    rows = synthetic.generate(name, dataclasses.replace(cfg, size=min(cfg.size, TOKENIZER_ROWS)))
    return {"train": rows, "val": [], "test": []}
