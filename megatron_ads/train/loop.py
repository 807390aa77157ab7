"""Trainer: megatron-core model chunks, DDP, (Chained)Optimizer with the stub MoE optimizer, 1F1B pipeline
schedule with micro-batches, loss masks, aux-loss-free expert-bias updates, MoE load metrics,
atomic checkpoints with exact resume, SIGTERM-safe saves, NaN/inf step skipping, collective timeouts
that name the phase (and so the process groups) they were waiting in.

Shapes: B micro-batch, S sequence.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.config.train import JobConfig
from megatron_ads.data import lm_stream
from megatron_ads.data.packing import model_forward
from megatron_ads.layout.groups import init_model_parallel
from megatron_ads.layout.pipeline import stage_layers
from megatron_ads.model.flops import mfu, train_flops_per_token
from megatron_ads.runtime import log as runtime_log
from megatron_ads.runtime.dist import init_distributed, set_group_timeouts
from megatron_ads.runtime.errors import Failure
from megatron_ads.train import ckpt
from megatron_ads.train.build import build, model_config, stub_parts
from megatron_ads.train.moe import ExpertLoad, track_moe_metrics
from megatron_ads.train.profile import StepProfiler
from megatron_ads.train.step_log import StepLog
from megatron_ads.train.timeouts import CollectiveTimeout, is_timeout, named_timeout

__all__ = ["CollectiveTimeout", "TrainingAborted", "Trainer", "train_worker"]

log = runtime_log.get_logger(__name__)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class TrainingAborted(Failure):
    """Training stopped on purpose (too many non-finite steps)."""


class Trainer:
    """One training run (call ``run()``); construct inside every rank."""

    def __init__(self, job: JobConfig):
        from megatron.core import parallel_state as ps  # heavy: megatron-core at use
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed  # heavy, as above

        self.job = job
        self.stub_parts = stub_parts(job)
        t = job.train
        self.platform, self.env = init_distributed(timeout_s=t.collective_timeout_s)
        self.rank = self.env.rank
        self.cfg = model_config(job.model, warn=self.rank == 0)
        self.par = job.parallel
        self.dp = init_model_parallel(self.par, timeout_s=t.collective_timeout_s)
        set_group_timeouts(t.collective_timeout_s)  # groups megatron-core made outside initialize_model_parallel
        torch.manual_seed(t.seed)
        model_parallel_cuda_manual_seed(t.seed)
        self.ps = ps
        self.out = Path(job.out_dir)
        self.device = self.platform.device
        built = build(job, self.cfg, self.platform.name, self.stub_parts, extend=self.extend_model)
        self.model, self.tconfig, self.optimizer = built.model, built.tconfig, built.optimizer
        self.optim_info, self.scheduler = built.optim_info, built.scheduler
        self.expert_load = ExpertLoad(self.model.module, self.cfg, self._stage_layers())
        self.step = 0
        self.nan_steps = 0
        self._stop_requested = False
        self._stop_seen: bool | None = None  # this step's agreed stop flag, when a collective already carried it
        self.metrics_path = self.out / "metrics.jsonl"
        self.profiler = StepProfiler(t.profile_steps, self.out, self.rank, self.platform.name == "cuda")

    def extend_model(self, chunk) -> None:
        """Hook: change this rank's model chunk after its initial weights are loaded and before DDP and the
        optimizer wrap it (``train.build.build``); subclasses add heads here (the reward model's scalar head)."""

    def _stage_layers(self) -> list[int]:
        return stage_layers(self.cfg.num_layers, self.par)[self.ps.get_pipeline_model_parallel_rank()]

    # ------------------------------------------------------------------ data
    @property
    def global_batch(self) -> int:
        t = self.job.train
        return self.dp * t.num_microbatches * t.micro_batch

    def _microbatches(self, step: int):
        t, d = self.job.train, self.job.data
        dp_rank = self.ps.get_data_parallel_rank()
        base = step * self.global_batch + dp_rank * t.num_microbatches * t.micro_batch
        for m in range(t.num_microbatches):
            yield lm_stream.batch(base + m * t.micro_batch, t.micro_batch, t.seq_len, d.seed, d.motif_len,
                                  min(d.vocab_limit, self.cfg.vocab_size))

    def _forward_step(self, data_iterator, model):
        with self.profiler.phase("data"):
            b = next(data_iterator)
        mask = b["loss_mask"].to(self.device)
        kwargs = {"loss_mask": mask} if self.cfg.num_mtp_layers else {}
        return model_forward(model, b, self.device, **kwargs), partial(_masked_loss, mask)

    # ------------------------------------------------------------------ steps
    def _phase(self, name: str, fn, *args, **kwargs):
        try:
            with self.profiler.phase(name):
                return fn(*args, **kwargs)
        except RuntimeError as exc:
            if is_timeout(exc) and not isinstance(exc, CollectiveTimeout):
                raise named_timeout(name, self.rank, self.job.train.collective_timeout_s,
                                    f"stub covers {sorted(self.stub_parts) or 'nothing (OFF)'}, expert optimizer on "
                                    f"this rank: {self.optim_info['expert_optimizer']}") from exc
            raise

    def moe_step_metrics(self) -> dict:
        """Collective: this step's MoE metrics (megatron's aux-loss tracker when ``train.moe_metrics``) and the
        per-expert load; {} for a dense model. The expert-load all-reduce also carries the ranks' stop flags
        (SIGTERM), so a MoE step needs no separate stop collective."""
        if not self.cfg.is_moe:
            return {}
        if self.job.train.moe_metrics:
            self._phase("moe-metrics", track_moe_metrics, self.cfg, self.step, "metrics" in self.stub_parts)
        out = self._phase("moe-load", self.expert_load.reduce, self.ps.get_tensor_model_parallel_rank() == 0,
                          stop=self._stop_requested)
        self._stop_seen = out.pop("stop")
        return out

    def train_step(self) -> dict[str, Any]:
        from megatron.core.pipeline_parallel import get_forward_backward_func  # heavy: megatron-core at use

        t = self.job.train
        t0 = time.time()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        self.expert_load.reset()
        losses = self._phase("forward-backward", get_forward_backward_func(), forward_step_func=self._forward_step,
                             data_iterator=self._microbatches(self.step), model=[self.model],
                             num_microbatches=t.num_microbatches, seq_length=t.seq_len,
                             micro_batch_size=t.micro_batch, forward_only=False)
        loss = self._phase("loss-report", self._reduce_loss, losses)
        finite = math.isfinite(loss)
        if finite:
            ok, grad_norm, _zeros = self._phase("optimizer", self.optimizer.step)
            if ok:
                self.scheduler.step(increment=1)
        else:
            ok, grad_norm = False, float("nan")
            self.nan_steps += 1
        moe = self.moe_step_metrics()
        dt = time.time() - t0
        tokens_per_s = self.global_batch * t.seq_len / dt
        rec = {"step": self.step + 1, "loss": loss, "grad_norm": float(grad_norm) if grad_norm is not None else None,
               "lr": float(self.optimizer.param_groups[0]["lr"]), "tokens_per_s": tokens_per_s,
               "step_time_s": dt, "skipped": not (finite and ok), "nan_steps": self.nan_steps}
        peak = self._peak_flops()
        if peak:
            rec["mfu"] = mfu(self.cfg, t.seq_len, tokens_per_s, peak * dist.get_world_size())
        rec["model_tflops_per_s"] = train_flops_per_token(self.cfg, t.seq_len) * tokens_per_s / 1e12
        rec.update(moe)
        self.step += 1
        if not finite and self.nan_steps > t.max_nan_steps:
            raise TrainingAborted(f"{self.nan_steps} steps with a non-finite loss (limit train.max_nan_steps="
                                  f"{t.max_nan_steps}); last at step {self.step}. Lower optim.lr or check the data.")
        return rec

    def _reduce_loss(self, losses) -> float:
        """Mean loss over micro-batches and data-parallel ranks, broadcast from the last stage to all ranks."""
        buf = torch.zeros(2, dtype=torch.float64)
        if self.ps.is_pipeline_last_stage():
            for item in losses:
                buf += item["lm loss"].detach().double().cpu()
        buf = self.reduce_last_stage(buf)
        return float(buf[0] / buf[1]) if buf[1] > 0 else float("nan")

    def reduce_last_stage(self, buf: torch.Tensor) -> torch.Tensor:
        """Collective: ``buf`` (float64; filled on last-stage ranks) summed over data-parallel ranks and
        broadcast from the last rank to every rank; returns it."""
        if dist.get_world_size() == 1:  # one process (a single-GPU run, the CPU benchmark): nothing to exchange
            return buf
        if self.ps.is_pipeline_last_stage():
            dist.all_reduce(buf, group=self.ps.get_data_parallel_group())
        dist.broadcast(buf, src=dist.get_world_size() - 1)  # the last global rank is on the last stage
        return buf

    def _peak_flops(self) -> float | None:
        if self.platform.name != "cuda":
            return None
        name = torch.cuda.get_device_name()
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)

    # ------------------------------------------------------------------ checkpoints
    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    def layout_info(self) -> dict[str, Any]:
        """What ``layout.json`` of a training checkpoint records (the layout that saved it)."""
        return {"format": "torch_dist", "tp": self.par.tp, "pp": self.par.pp, "ep": self.par.ep,
                "stage_layers": [len(s) for s in stage_layers(self.cfg.num_layers, self.par)],
                "world_size": dist.get_world_size(), "mtp_layers": self.cfg.num_mtp_layers,
                "model_type": self.cfg.model_type, "step": self.step}

    def checkpoint_common(self) -> dict[str, Any]:
        """Non-tensor state every rank shares (rank 0's copy is saved). Subclasses extend it."""
        return {"scheduler": self.scheduler.state_dict(),
                "trainer": {"step": self.step, "nan_steps": self.nan_steps,
                            "data_position": self.step * self.global_batch}}

    def restore_common(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = state["trainer"]["step"]
        self.nan_steps = state["trainer"]["nan_steps"]

    def checkpoint_rank(self) -> dict[str, Any]:
        """State that differs per rank (saved by every rank). Subclasses extend it."""
        return {"rng": ckpt.rng_state()}

    def restore_rank(self, mine: dict[str, Any] | None, saved: list[dict[str, Any]]) -> None:
        """``mine``: this rank's saved state when the layout is unchanged, else None (``saved`` holds
        every saved rank's state, for subclasses that can merge it)."""
        if mine is not None:
            ckpt.set_rng_state(mine["rng"])

    def save(self) -> Path:
        files = {"config.yaml": self.job.to_yaml(), ckpt.HF_CONFIG: json.dumps(self.cfg.to_hf_dict(), indent=2),
                 ckpt.LAYOUT: json.dumps(self.layout_info(), indent=2, sort_keys=True)}
        tok = ckpt.tokenizer_files(self.job.model, self.out) if self.rank == 0 else []
        return self._phase("checkpoint", ckpt.save, self.ckpt_root, self.step,
                           ckpt.sharded_state(self.model.module, self.optimizer), self.checkpoint_common(),
                           self.checkpoint_rank(), files, tok, self.job.checkpoint.keep_last)

    def load(self, path: Path) -> None:
        """Restore model, optimizer, schedule and trainer state from a checkpoint saved at any layout."""
        loaded = ckpt.load(path, ckpt.sharded_state(self.model.module, self.optimizer, is_loading=True))
        self.model.module.load_state_dict(loaded["model"])
        ckpt.drop_unowned_steps(loaded["optimizer"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        ckpt.untie_steps(self.optimizer)
        self.restore_common(loaded)
        saved, saved_layout = ckpt.load_rank_states(path), ckpt.saved_layout(path)
        same = ckpt.same_layout(saved_layout, self.layout_info())
        if not same and self.rank == 0:
            log.warning("resuming a checkpoint saved at another layout (%s): weights and optimizer state are "
                        "resharded; per-rank RNG states are not restored", ckpt.layout_text(saved_layout))
        self.restore_rank(saved[self.rank] if same and self.rank < len(saved) else None, saved)

    def maybe_resume(self) -> Path | None:
        r = self.job.resume
        if r == "none":
            return None
        path = ckpt.find_latest(self.ckpt_root) if r == "auto" else Path(r)
        if path is None:
            return None
        path = ckpt.resolve(path)
        self.load(path)
        return path

    # ------------------------------------------------------------------ main loop
    def _on_sigterm(self, signum, frame):
        self._stop_requested = True

    def _stop_agreed(self) -> bool:
        """Collective unless this step's expert-load reduction carried it: True when any rank got SIGTERM
        (every rank sees the same answer, from one collective)."""
        if self._stop_seen is not None:
            seen, self._stop_seen = self._stop_seen, None
            return seen
        if dist.get_world_size() == 1:
            return self._stop_requested
        flag = torch.tensor([1 if self._stop_requested else 0])
        self._phase("stop-check", dist.all_reduce, flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def run(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns a summary (rank 0's view)."""
        job = self.job
        t = job.train
        runtime_log.add_file(self.out / "logs", self.rank)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(job.to_yaml())
        resumed = self.maybe_resume()
        old = signal.signal(signal.SIGTERM, self._on_sigterm)
        first_loss = last_loss = None
        stopped_by_signal = False
        try:
            if resumed and self.rank == 0:
                log.info("resumed from %s at step %d", resumed, self.step)
            with StepLog(self.metrics_path, t, self.out / "tensorboard") if self.rank == 0 else nullcontext() as steps:
                while self.step < t.steps:
                    with self.profiler.step(self.step + 1):
                        rec = self.train_step()
                        first_loss = rec["loss"] if first_loss is None else first_loss
                        last_loss = rec["loss"]
                        if steps is not None:
                            with self.profiler.phase("step-log"):
                                steps.write(rec)
                        stop = self._stop_agreed()
                    if stop:
                        stopped_by_signal = True
                        self.save()
                        break
                    if job.checkpoint.every and self.step % job.checkpoint.every == 0:
                        self.save()
                else:
                    every = job.checkpoint.every
                    saved_now = bool(every) and self.step % every == 0 and first_loss is not None
                    if job.checkpoint.save_at_end and not saved_now:  # a periodic save at the last step holds it
                        self.save()
        finally:
            signal.signal(signal.SIGTERM, old)
            self.profiler.close()
        return {"steps": self.step, "first_loss": first_loss, "last_loss": last_loss,
                "stopped_by_signal": stopped_by_signal, "optimizer": self.optim_info,
                "out_dir": str(self.out), "world_size": dist.get_world_size(), "dp": self.dp}


def _masked_loss(mask_BS: torch.Tensor, output_BS: torch.Tensor):
    """Masked token-mean loss of one micro-batch (megatron divides by tokens and micro-batches)."""
    losses = output_BS.float()
    mask = mask_BS.float()
    total = torch.sum(losses * mask)
    n = mask.sum()
    return total, n.to(torch.int), {"lm loss": torch.stack([total.detach(), n.detach()])}


def worker_logging() -> None:
    """Console logging for a worker process the CLI did not set up (a spawned rank): the project default.
    Under torchrun the CLI's own ``log.setup`` (its ``--log-level``) is kept."""
    if not logging.getLogger(runtime_log.ROOT).handlers:
        runtime_log.setup()


def train_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one LM rank (spawned or under torchrun)."""
    worker_logging()
    return Trainer(JobConfig.from_dict(job_dict)).run()
