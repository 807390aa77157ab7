"""Worker entry points (one call per rank, spawned or under torchrun): the trainers wired with what they are
handed. The SFT trainer gets its ``Scorer`` from ``infer`` here, the one layer that may import both
``train`` and ``infer``: ``engine_scorer`` builds the inference engine (``infer.engine``: one-prefill label
scoring, KV-cache greedy generation) over the trainer's own model chunk, on the training layout. The GRPO
trainer gets its ``Rollout`` (``train.rollout``) the same way: ``engine_rollout`` samples with the engine
in-process over the policy's chunk."""

from __future__ import annotations

from typing import Any

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.train import JobConfig
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.parallel import ParallelContext
from megatron_ads.infer.scorer import EngineScorer, text_stop
from megatron_ads.train.grpo_loop import GRPOTrainer
from megatron_ads.train.loop import train_worker, worker_logging
from megatron_ads.train.rm_loop import rm_worker
from megatron_ads.train.rollout import Completion, RolloutSettings
from megatron_ads.train.sft_loop import SFTTrainer
from megatron_ads.train.token_rm_loop import token_rm_worker

__all__ = ["EngineRollout", "engine_rollout", "engine_scorer", "grpo_trainer", "grpo_worker", "rm_worker",
           "rm_worker_for", "sft_trainer", "sft_worker", "token_rm_worker", "train_worker"]


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


class EngineRollout:
    """``train.rollout.Rollout`` on the inference engine, in-process on the trainer's ranks over the policy's
    own chunk.

    Why in-process (rather than a separate inference engine fed by weight sync): the engine reads the very
    parameters the optimizer just updated, so rollouts always come from the current policy with no weight
    transfer, no bucketed sync, no sync timeout and no second copy of the model in memory; the engine already
    runs on the training layout (``ParallelContext.from_megatron``: pipeline stages forward-only, EP across
    ranks, DP replicas replicating the rows), every rank making the same calls and getting the same results
    (the picks are broadcast from the last stage). The cost is that training waits while the engine
    generates (no overlap of generation and training), which on the sizes this project trains is the lesser
    evil. The engine leaves the chunk in eval mode; the trainer switches it back to train mode.
    """

    def __init__(self, engine: Engine, tokenizer: Any):
        self.engine = engine
        self.tokenizer = tokenizer

    def generate(self, prompt_ids: list[list[int]], settings: RolloutSettings,
                 group_size: int) -> list[list[Completion]]:
        """``group_size`` samples per prompt (rows prompt-major: row r = prompt r // G, seeded seed + r)."""
        check = (text_stop(self.tokenizer.decode, settings.stop_text, settings.stop_ids)
                 if settings.stop_text else None)
        params = SamplingParams(max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                                top_p=settings.top_p, seed=settings.seed, stop_ids=set(settings.stop_ids),
                                stop_check=check)
        rows = [p for p in prompt_ids for _ in range(group_size)]
        gens = self.engine.generate(rows, params)
        flat = [Completion(output_ids=list(g.output_ids), logprobs=list(g.logprobs), finish_reason=g.finish_reason)
                for g in gens]
        return [flat[k * group_size:(k + 1) * group_size] for k in range(len(prompt_ids))]


def engine_rollout(*, model: Any, cfg: ModelConfig, tokenizer: Any, batch_size: int) -> EngineRollout:
    """The GRPO trainer's ``Rollout`` (``train.rollout.RolloutFactory``): an ``EngineRollout`` over this rank's
    chunk (unwrapped from megatron's DDP) on the training layout; every rank must call this."""
    from megatron.core.utils import unwrap_model  # heavy: megatron-core at use

    engine = Engine(unwrap_model(model), cfg, batch_size=batch_size, tokenizer=tokenizer,
                    parallel=ParallelContext.from_megatron())
    return EngineRollout(engine, tokenizer)


def grpo_trainer(job_dict: dict) -> GRPOTrainer:
    """A GRPO (or, with ``grpo.algo=ppo``, token-level PPO) trainer for this rank whose rollouts run on the
    inference engine in-process."""
    from megatron_ads.train.ppo_loop import ppo_or_grpo

    return ppo_or_grpo(JobConfig.from_dict(job_dict), rollout_factory=engine_rollout)


def grpo_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one GRPO rank."""
    worker_logging()
    return grpo_trainer(job_dict).run()


def rm_worker_for(kind: str):
    """The ``train rm`` worker of ``rm.kind``: pair (``train.rm_loop``) or token (``train.token_rm_loop``)."""
    return {"pair": rm_worker, "token": token_rm_worker}[kind]
