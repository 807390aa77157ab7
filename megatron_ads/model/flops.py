"""MFU on top of the parameter and FLOP counts of ``layout.counts`` (re-exported here).

The counts are arithmetic the planner needs too, so they live in the lower ``layout`` layer; this
module keeps the names the trainer and tests import (``count_params``, ``train_flops_per_token``, ...).
"""

from __future__ import annotations

from megatron_ads.config.model import ModelConfig
from megatron_ads.layout.counts import (ParamCount, active_params, attention_params, count_params, head_dims,
                                        layer_params, train_flops_per_token)

__all__ = ["ParamCount", "active_params", "attention_params", "count_params", "head_dims", "layer_params",
           "mfu", "train_flops_per_token"]


def mfu(cfg: ModelConfig, seq_len: int, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved model FLOP/s over peak FLOP/s (of all devices used)."""
    return train_flops_per_token(cfg, seq_len) * tokens_per_s / peak_flops
