"""Worker entry points (one call per rank, spawned or under torchrun): the trainers wired with what they are
handed. The SFT trainer gets its ``Scorer`` from ``infer`` here, the one layer that may import both
``train`` and ``infer``."""

from __future__ import annotations

from typing import Any

from megatron_ads.config.train import JobConfig
from megatron_ads.infer.pipeline_scoring import PipelineScorer
from megatron_ads.train.loop import train_worker, worker_logging
from megatron_ads.train.sft_loop import SFTTrainer

__all__ = ["sft_trainer", "sft_worker", "train_worker"]


def sft_trainer(job_dict: dict) -> SFTTrainer:
    """An SFT trainer for this rank whose validation scores and decodes through its own pipeline."""
    return SFTTrainer(JobConfig.from_dict(job_dict), scorer_factory=PipelineScorer)


def sft_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one SFT rank."""
    worker_logging()
    return sft_trainer(job_dict).run()
