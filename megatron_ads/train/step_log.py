"""Per-step records of rank 0: appended to ``metrics.jsonl`` (every step), a console line every
``train.log_every`` steps, and TensorBoard scalars when ``train.tensorboard`` is on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_ads._compat import require
from megatron_ads.config.train import TrainSpec
from megatron_ads.runtime.log import get_logger

log = get_logger("megatron_ads.train.loop")


class StepLog:
    """Context manager: ``write(rec)`` for each step's record."""

    def __init__(self, metrics_path: Path, t: TrainSpec, tensorboard_dir: Path):
        self.t = t
        self.path = metrics_path
        self.tb_dir = tensorboard_dir
        self.tb = None
        self.file = None

    def __enter__(self) -> "StepLog":
        if self.t.tensorboard:
            require("tensorboard")
            from torch.utils.tensorboard import SummaryWriter  # optional dependency (tensorboard)

            self.tb = SummaryWriter(str(self.tb_dir))
        self.file = open(self.path, "a")
        return self

    def __exit__(self, *exc) -> bool:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        return False

    def write(self, rec: dict[str, Any]) -> None:
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in rec.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.tb.add_scalar(f"train/{key}", value, rec["step"])
        if rec["step"] % self.t.log_every == 0 or rec["step"] == self.t.steps:
            gn = rec["grad_norm"] if rec["grad_norm"] is None else round(rec["grad_norm"], 4)
            log.info("step %d/%d loss %.4f grad_norm %s lr %.2e %.0f tok/s%s", rec["step"], self.t.steps, rec["loss"],
                     gn, rec["lr"], rec["tokens_per_s"],
                     f" moe_imbalance {rec['moe_max_imbalance']:.2f}" if "moe_max_imbalance" in rec else "")
