"""SFT data: every task's train/val/test rows (synthetic corpora or the user's own JSONL), the general
instruction data, and the tokenizer (the checkpoint's own, or a byte-level BPE trained on the rows)."""

from __future__ import annotations

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
        data[GENERAL.name] = {"train": load_jsonl(s.general_path, GENERAL), "val": [], "test": []}
    return data


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


def sft_tokenizer(m: ModelSpec, vocab_size: int, data: dict[str, Splits], save_to: Path | None):
    """The init checkpoint's tokenizer when it has one; else a byte-level BPE trained on (up to)
    ``TOKENIZER_ROWS`` training rows of every task, saved to ``save_to`` when given (``tokenizer.run_tokenizer``)."""

    def texts() -> list[str]:
        out = []
        for name, splits in data.items():
            spec = task(name)
            out += [spec.prompt(row) + spec.target(row) for row in splits["train"][:TOKENIZER_ROWS]]
        return out

    return run_tokenizer(m, vocab_size, texts, save_to)
