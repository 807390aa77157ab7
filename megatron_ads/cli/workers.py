"""Worker entry points (one call per rank, spawned or under torchrun): the trainers wired with what they are
handed. The SFT trainer gets its ``Scorer`` from ``infer`` here, the one layer that may import both
``train`` and ``infer``: ``engine_scorer`` builds the inference engine (``infer.engine``: one-prefill label
scoring, KV-cache greedy generation) over the trainer's own model chunk, on the training layout."""

from __future__ import annotations

from typing import Any

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.train import JobConfig
from megatron_ads.infer.engine import Engine
from megatron_ads.infer.parallel import ParallelContext
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.train.loop import train_worker, worker_logging
from megatron_ads.train.sft_loop import SFTTrainer

__all__ = ["engine_scorer", "sft_trainer", "sft_worker", "train_worker"]


def engine_scorer(*, model: Any, cfg: ModelConfig, tokenizer: Any, seq_len: int, micro_batch: int) -> EngineScorer:
    """The SFT trainer's ``Scorer`` (``train.sft_loop.ScorerFactory``): an ``EngineScorer`` over this rank's
    chunk (``model`` unwrapped from megatron's DDP / Float16Module; the trainer keeps training it) on the
    training layout (``ParallelContext.from_megatron``: pipeline stages and EP across ranks, DP replicas
    replicate the rows; every rank returns the same results; every rank must call this). Forwards hold
    ``micro_batch`` rows; prompts are left-truncated to fit ``seq_len`` (``EngineScorer``'s ``max_len``), as
    training truncates them; generation stops at the tokenizer's EOS. The engine leaves the chunk in eval
    mode: the trainer switches modes around validation."""
    from megatron.core.utils import unwrap_model  # heavy: megatron-core at use

    engine = Engine(unwrap_model(model), cfg, batch_size=micro_batch, tokenizer=tokenizer,
                    parallel=ParallelContext.from_megatron())
    return EngineScorer(engine, tokenizer, max_len=seq_len)


def sft_trainer(job_dict: dict) -> SFTTrainer:
    """An SFT trainer for this rank whose validation and test predictions run on the inference engine."""
    return SFTTrainer(JobConfig.from_dict(job_dict), scorer_factory=engine_scorer)


def sft_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one SFT rank."""
    worker_logging()
    return sft_trainer(job_dict).run()
