"""Multi-task SFT on the Trainer: the Eq. 2 reweighted loss over task-mixed batches, validation at
intervals (``train/sft_eval.py``), task weights λ_t and per-sample perplexity state in checkpoints.

Data (``data/sft_data.py``): synthetic rule-labeled corpora per task or the user's own JSONL, split
train/val/test, and optional general instruction data at a fixed weight (``sft.general_path``; with
``sft.tasks: [general]`` alone, λ = 1: a base model for Table 8; weight 0: held-out rows scored only); each
training example is the task prompt + "label + reasoning" target (or its label-only form with an empty
<think>), tokenized to a fixed length with loss on target tokens only, drawn by the task mixer
(``data/mixing.py``).

Loss (Eq. 2): per-sample mean NLL ℓ_{t,i}, instance weights w_{t,i} from perplexity progress between
validation intervals (Eq. 3–5), task weights λ_t from validation difficulty (Eq. 6–7).

Validation and test predictions go through the ``Scorer`` built by ``scorer_factory`` (the caller's
choice; ``cli.workers`` hands in the inference engine's ``EngineScorer`` over this rank's chunk, on the
training layout): label-candidate scoring for label tasks, greedy decoding for generation tasks. The
model is in eval mode while they run and back in train mode after.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable

import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.data.mixing import TaskMixer, uniform_lambdas
from megatron_ads.data.packing import collate, model_forward
from megatron_ads.data.sft_data import load_sft_data, sft_tokenizer
from megatron_ads.data.tasks import GENERAL, Scorer, check_sft, general_only, sft_tasks, task
from megatron_ads.eval.plots import plot_sft_run
from megatron_ads.runtime.log import get_logger
from megatron_ads.train.loop import Trainer
from megatron_ads.train.sft import InstanceReweighter, TaskReweighter, label_balance_weights, weighted_loss
from megatron_ads.train.sft_eval import test_report, validate_tasks, weight_summary

log = get_logger(__name__)

ScorerFactory = Callable[..., Scorer]
"""Called on every rank as ``factory(model=, cfg=, tokenizer=, seq_len=, micro_batch=)`` once the model (this
rank's DDP-wrapped chunk) exists; ``cfg`` is its ModelConfig. The factory may leave the model in either mode."""


class SFTTrainer(Trainer):
    """Trainer whose data and loss are multi-task SFT (``job.sft``)."""

    def __init__(self, job: JobConfig, scorer_factory: ScorerFactory):
        check_sft(job.sft)
        super().__init__(job)
        s, t = job.sft, job.train
        self.adaptive = sft_tasks(s)
        """The tasks with Eq. 6–7 weights (none with ``sft.tasks: [general]``)."""
        self.data = load_sft_data(s)
        self.general_weight = 1.0 if general_only(s) else s.general_weight if s.general_path else None
        """λ of the general task: None without ``sft.general_path``; 0: its held-out rows are only scored."""
        self.train_tasks = [n for n in self.data if n != GENERAL.name or self.general_weight]
        """The adaptive tasks, then the general task when ``sft.general_path`` is set (and its weight is > 0)."""
        self.tokenizer = sft_tokenizer(job.model, self.cfg.vocab_size, self.data,
                                       self.out / "tokenizer" if self.rank == 0 else None, s)
        self.mixer = TaskMixer(data={n: self.data[n]["train"] for n in self.train_tasks}, seed=s.data_seed,
                               label_only_fraction=s.label_only_fraction)
        self.instance = InstanceReweighter(beta=s.beta, w_min=s.w_min, w_max=s.w_max)
        self.tasks = TaskReweighter(tasks=list(self.adaptive), alpha=s.alpha, lambda_min=s.lambda_min,
                                    lambda_ema=s.lambda_ema,
                                    general_task=GENERAL.name if s.general_path else None,
                                    general_weight=self.general_weight or 0.0) if self.adaptive else None
        """Eq. 6–7 task weights (None without adaptive tasks: the general task alone, λ = 1)."""
        self.scorer = scorer_factory(model=self.model, cfg=self.cfg, tokenizer=self.tokenizer, seq_len=t.seq_len,
                                     micro_batch=t.micro_batch)
        self.model.train()  # a factory may leave it in eval mode (the inference engine does)
        self.val_path = self.out / "val_metrics.jsonl"
        self._interval_w: list[tuple[str, float]] = []
        """(task, instance weight) of every sample trained on since the last validation (last stage)."""
        self.balance = self._label_balance() if s.label_balance > 0 else {}
        """Class-balance weight per training row id of the classification tasks (``sft.label_balance``)."""

    # ------------------------------------------------------------------ data
    def _label_balance(self) -> dict[str, float]:
        """``sft.label_balance`` weights of every classification task's training rows, keyed "task\trow id"."""
        out: dict[str, float] = {}
        for name in self.adaptive:
            spec = task(name)
            if spec.kind != "classification":
                continue
            rows = self.data[name]["train"]
            labels = [tuple(str(_dotted(r, f.key)) for f in spec.outputs) for r in rows]
            weights = label_balance_weights(labels, self.job.sft.label_balance)
            out.update(zip((f"{name}\t{r['id']}" for r in rows), weights))
        return out

    def _task_probabilities(self) -> dict[str, float]:
        """Task-mixer probabilities: λ_t in "sampling" mode, else uniform over the adaptive tasks
        (the general task always gets its fixed share)."""
        s = self.job.sft
        if s.task_weighting == "sampling" and s.reweight_tasks and self.tasks is not None:
            return dict(self.tasks.lambdas)
        return uniform_lambdas(self.adaptive, self.general_weight)

    def _microbatches(self, step: int):
        t = self.job.train
        per_rank = t.num_microbatches * t.micro_batch
        ex = self.mixer.examples(self.tokenizer, t.seq_len, step, self.global_batch, self._task_probabilities(),
                                 self.ps.get_data_parallel_rank() * per_rank, per_rank)
        for i in range(0, len(ex), t.micro_batch):
            yield collate(ex[i:i + t.micro_batch])

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_forward(model, batch, self.device), partial(self._sft_loss, batch)

    def _sft_loss(self, batch: dict, token_nll_BS: torch.Tensor):
        mask = batch["loss_mask"].to(token_nll_BS.device)
        nll = token_nll_BS.float()
        per_sample = (nll * mask).sum(1) / mask.sum(1).clamp_min(1)
        s = self.job.sft
        if s.prompt_loss_weight > 0:  # ℓ_{t,i} + ρ · (mean NLL of the prompt tokens)
            pm = batch["prompt_mask"].to(nll.device)
            per_sample = per_sample + s.prompt_loss_weight * (nll * pm).sum(1) / pm.sum(1).clamp_min(1)
        w = (self.instance.weights(batch["sample_ids"], nll, mask) if s.reweight_instances
             else torch.ones(len(batch["sample_ids"])))
        self._interval_w.extend(zip(batch["tasks"], w.tolist()))
        if self.balance:  # keyed by task and row id; sample ids are "<row id>:L" / "<row id>:R"
            w = w * torch.tensor([self.balance.get(f"{t}\t{sid.rsplit(':', 1)[0]}", 1.0)
                                  for t, sid in zip(batch["tasks"], batch["sample_ids"])])
        if s.task_weighting == "sampling":  # the mixer already drew tasks by λ_t: a plain weighted mean
            loss = (w.to(per_sample) * per_sample).mean()
        else:
            lam = (self.tasks.lambdas if s.reweight_tasks and self.tasks is not None
                   else uniform_lambdas(self.adaptive, self.general_weight))
            # λ sums to 1 over tasks; scale by the number of tasks so the loss stays on the per-sample scale
            loss = weighted_loss(per_sample, batch["tasks"], w, lam) * len(self.train_tasks)
        report = torch.stack([per_sample.detach().sum(), torch.tensor(float(len(per_sample)))])
        return loss, torch.tensor(1, dtype=torch.int), {"lm loss": report}

    # ------------------------------------------------------------------ validation and test
    @contextmanager
    def predicting(self):
        """The model in eval mode for the scorer, back in train mode after (errors included)."""
        self.model.eval()
        try:
            yield self.scorer
        finally:
            self.model.train()

    def validate(self) -> dict[str, Any]:
        """Score the validation rows of each task; returns metrics, λ_t and the interval's weight summary."""
        rec: dict[str, Any] = {"step": self.step}
        with self.predicting() as scorer:
            values, norm = validate_tasks(self.adaptive, self.data, scorer, self.job.sft)
        rec.update(values)
        if self.job.sft.reweight_tasks and self.tasks is not None:
            lam = self.tasks.update(norm)
            rec.update({f"lambda/{k}": v for k, v in lam.items()})
        ws = list(self.instance.current.values())
        self.instance.roll_checkpoint()
        rec["instance_ppl_tracked"] = len(self.instance.previous)
        rec["train_ppl_mean"] = sum(ws) / len(ws) if ws else None
        rec["weights"] = weight_summary(self._interval_w, self.train_tasks, self.job.sft)
        self._interval_w = []
        return rec

    def test_report(self) -> dict[str, Any]:
        """Held-out test predictions and metrics in ``eval/`` (see ``sft_eval.test_report``)."""
        with self.predicting() as scorer:
            return test_report(self.adaptive, self.data, scorer, self.job.sft, self.out, self.step, self.rank == 0,
                               tokenizer=self.tokenizer)

    def run(self) -> dict[str, Any]:
        summary = super().run()
        if self.job.sft.test_rows > 0 and not summary["stopped_by_signal"]:
            summary["test"] = self.test_report()
        return summary

    # ------------------------------------------------------------------ hooks into the loop
    def train_step(self) -> dict[str, Any]:
        rec = super().train_step()
        if self.step % self.job.sft.eval_every == 0 or self.step == self.job.train.steps:
            val = self._phase("validate", self.validate)
            if self.rank == 0:
                with open(self.val_path, "a") as f:
                    f.write(json.dumps(val) + "\n")
                log.info("val " + " ".join(f"{k}={v:.4f}" for k, v in val.items() if isinstance(v, float)))
                plot_sft_run(self.out)
            rec.update({k: v for k, v in val.items() if k not in ("step", "weights")})
        return rec

    def checkpoint_common(self) -> dict[str, Any]:
        extra = {"sft_tasks": self.tasks.state_dict()} if self.tasks is not None else {}
        return {**super().checkpoint_common(), **extra}

    def restore_common(self, state: dict[str, Any]) -> None:
        super().restore_common(state)
        if "sft_tasks" in state and self.tasks is not None:
            self.tasks.load_state_dict(state["sft_tasks"])

    def checkpoint_rank(self) -> dict[str, Any]:
        # each rank tracks the perplexities of the samples it saw (Eq. 3-6 compare them across checkpoints)
        return {**super().checkpoint_rank(), "sft_instance": self.instance.state_dict()}

    def restore_rank(self, mine: dict[str, Any] | None, saved: list[dict[str, Any]]) -> None:
        super().restore_rank(mine, saved)
        if mine is not None:
            self.instance.load_state_dict(mine["sft_instance"])
        elif saved:  # another layout: samples move between ranks, so every rank takes the union (ids are unique)
            merged = dict(saved[0]["sft_instance"], previous={}, current={})
            for st in saved:
                merged["previous"].update(st["sft_instance"]["previous"])
                merged["current"].update(st["sft_instance"]["current"])
            self.instance.load_state_dict(merged)


def _dotted(row: dict, key: str):
    """``row``'s value at a dotted key ("labels.location")."""
    for part in key.split("."):
        row = row[part]
    return row
