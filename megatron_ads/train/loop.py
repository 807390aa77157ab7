"""Trainer: megatron-core model chunks, DDP, (Chained)Optimizer with the stub MoE optimizer, 1F1B pipeline
schedule with micro-batches, loss masks, aux-loss-free expert-bias updates, MoE load metrics,
atomic checkpoints with exact resume, SIGTERM-safe saves, NaN/inf step skipping, collective timeouts
that name the phase (and so the process groups) they were waiting in.

Shapes: B micro-batch, S sequence, V vocab, L layers, E experts.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.checkpoint.convert import TOKENIZER_FILES
from megatron_ads.checkpoint.hf_io import HFCheckpoint
from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk, load_mcore_into_chunk
from megatron_ads.checkpoint.megatron_io import LATEST as LEGACY_LATEST
from megatron_ads.checkpoint.megatron_io import read_layout
from megatron_ads.checkpoint.mtp import resolve_mtp, without_mtp
from megatron_ads.config.flavors import resolve_model_config
from megatron_ads.config.train import JobConfig
from megatron_ads.data import lm_stream
from megatron_ads.layout.groups import init_model_parallel
from megatron_ads.layout.pipeline import stage_layers
from megatron_ads.model.build import build_model_chunk, transformer_config
from megatron_ads.model.flops import mfu, train_flops_per_token
from megatron_ads.model.specs import use_te_default
from megatron_ads.runtime.dist import init_distributed
from megatron_ads.train import ckpt
from megatron_ads.train.optim import build_optimizer, build_scheduler

MOE_TRACK_NAMES = ["seq_load_balancing_loss"]
log = logging.getLogger("megatron_ads.train")
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


class CollectiveTimeout(RuntimeError):
    """A collective did not complete within the configured timeout (names the phase and its groups)."""


class TrainingAborted(RuntimeError):
    """Training stopped on purpose (too many non-finite steps)."""


PHASE_GROUPS = {
    "forward-backward": "pipeline p2p (pp group), MoE all-to-all (ep group), DP grad reduce (dp / expert-dp groups)",
    "optimizer": "grad-norm and zero counting over the dense model-parallel group (tp x pp) and the expert "
                 "group (etp x pp); distributed-optimizer gathers over dp / expert-dp",
    "moe-metrics": "megatron's MoE aux-loss tracker all-reduce over the pipeline-parallel group",
    "moe-load": "expert-load all-reduce over the world group",
    "loss-report": "loss broadcast over the world group",
    "checkpoint": "checkpoint barriers over the world group",
}


def _set_group_timeouts(timeout_s: float) -> None:
    """Apply the collective timeout to every megatron process group (megatron's own knob is in minutes)."""
    import datetime

    from torch.distributed import distributed_c10d as c10d

    td = datetime.timedelta(seconds=timeout_s)
    for pg in list(c10d._world.pg_map.keys()):
        try:
            c10d._set_pg_timeout(td, pg)
        except Exception:  # pragma: no cover - groups this rank is not part of
            pass


class Trainer:
    """One training run (call ``run()``); construct inside every rank."""

    def __init__(self, job: JobConfig, force_project_stub: bool = False, stub_parts: set[str] | None = None):
        self.job = job
        # which collectives the stub keeps uniform: the expert optimizer ("optimizer") and megatron's MoE
        # tracker reduction ("metrics"); optim.stub_moe_optimizer switches both (tests probe them apart)
        self.stub_parts = set(stub_parts) if stub_parts is not None else (
            {"optimizer", "metrics"} if job.optim.stub_moe_optimizer else set())
        t = job.train
        self.platform, self.env = init_distributed(timeout_s=t.collective_timeout_s)
        self.rank = self.env.rank
        self.cfg = self._model_config(job)
        self.par = job.parallel
        self.dp = init_model_parallel(self.par)
        _set_group_timeouts(t.collective_timeout_s)
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        torch.manual_seed(t.seed)
        model_parallel_cuda_manual_seed(t.seed)
        self.ps = ps
        self.out = Path(job.out_dir)
        self.device = self.platform.device
        self._build_model(force_project_stub)
        self.step = 0
        self.nan_steps = 0
        self._stop_requested = False
        self.metrics_path = self.out / "metrics.jsonl"
        self.tb = None

    def _model_config(self, job: JobConfig):
        """The model to build: from the init checkpoint's config (MTP policy ``model.mtp`` applied) or a flavor."""
        m = job.model
        if m.init == "mcore":  # converted (legacy or torch_dist) or a training run: MTP as recorded there
            return read_layout(m.path).cfg
        if m.init == "hf":
            cfg, _reason = resolve_mtp(resolve_model_config(m.path), HFCheckpoint(m.path), m.mtp, warn=self.rank == 0)
            return cfg
        cfg = resolve_model_config(m.name)
        return without_mtp(cfg) if m.mtp == "drop" and cfg.num_mtp_layers else cfg

    # ------------------------------------------------------------------ construction
    def _build_model(self, force_project_stub: bool) -> None:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
        from megatron.core.optimizer import OptimizerConfig

        job = self.job
        o = job.optim
        extra = {}
        if self.cfg.is_moe and job.train.moe_aux_loss_coeff > 0:
            extra.update(moe_router_load_balancing_type="seq_aux_loss", moe_aux_loss_coeff=job.train.moe_aux_loss_coeff)
        tconfig = transformer_config(self.cfg, self.par, dtype=o.dtype, device=self.platform.name,
                                     calculate_per_token_loss=False, **extra)
        chunk = build_model_chunk(self.cfg, self.par, dtype=o.dtype, device=self.platform.name,
                                  use_te=use_te_default(self.platform.name), tconfig=tconfig)
        self._load_initial_weights(chunk)
        ddp_config = DistributedDataParallelConfig(grad_reduce_in_fp32=True, overlap_grad_reduce=False,
                                                   use_distributed_optimizer=o.distributed_optimizer,
                                                   check_for_nan_in_grad=False)
        self.model = DistributedDataParallel(config=tconfig, ddp_config=ddp_config, module=chunk)
        tconfig.no_sync_func = self.model.no_sync
        tconfig.finalize_model_grads_func = finalize_model_grads
        self.tconfig = tconfig
        opt_config = OptimizerConfig(
            optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay, adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2, clip_grad=o.clip_grad, bf16=o.dtype == "bf16",
            params_dtype=torch.bfloat16 if o.dtype == "bf16" else torch.float32,
            use_distributed_optimizer=o.distributed_optimizer)
        if force_project_stub:
            self.optimizer, self.optim_info = _build_with_project_stub(opt_config, [self.model])
        else:
            self.optimizer, self.optim_info = build_optimizer(opt_config, [self.model],
                                                              stub="optimizer" in self.stub_parts)
        self.scheduler = build_scheduler(self.optimizer, o.lr, o.min_lr, o.warmup_steps, job.train.steps,
                                         o.weight_decay)
        self._install_router_counters()

    def _load_initial_weights(self, chunk) -> None:
        m = self.job.model
        if m.init == "hf":
            load_hf_into_chunk(chunk, HFCheckpoint(m.path), self.cfg, self.par, current_coord())
        elif m.init == "mcore":
            src = Path(m.path)
            if (src / LEGACY_LATEST).is_file():
                load_mcore_into_chunk(chunk, src, self.par, current_coord())
            else:
                ckpt.load_model_weights(chunk, ckpt.resolve(src))

    def _install_router_counters(self) -> None:
        """Count tokens routed to each expert of this stage's MoE layers (for load metrics)."""
        from megatron.core.transformer.moe.router import TopKRouter

        self._router_counts: dict[int, torch.Tensor] = {}
        layers = self._stage_layers()
        for name, module in self.model.module.named_modules():
            if isinstance(module, TopKRouter) and name.startswith("decoder.layers."):
                g = layers[int(name.split(".")[2])]

                def hook(_m, _inp, out, g=g):
                    routing_map = out[1]
                    counts = routing_map.sum(dim=0).float().detach()  # stays on device: no sync per layer
                    self._router_counts[g] = self._router_counts.get(g, 0) + counts

                module.register_forward_hook(hook)

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
        b = next(data_iterator)
        tokens = b["tokens"].to(self.device)
        labels = b["labels"].to(self.device)
        mask = b["loss_mask"].to(self.device)
        pos = torch.arange(tokens.shape[1], device=self.device).unsqueeze(0).expand_as(tokens)
        kwargs = {"loss_mask": mask} if self.cfg.num_mtp_layers else {}
        out = model(tokens, pos, None, labels=labels, **kwargs)
        return out, partial(_masked_loss, mask)

    # ------------------------------------------------------------------ steps
    def _phase(self, name: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:
            text = str(exc).lower()
            if "timed out" in text or "timeout" in text:
                raise CollectiveTimeout(
                    f"rank {self.rank}: collective timed out after {self.job.train.collective_timeout_s:g}s in phase "
                    f"'{name}' (process groups: {PHASE_GROUPS[name]}); stub covers "
                    f"{sorted(self.stub_parts) or 'nothing (OFF)'}, expert optimizer on this rank: "
                    f"{self.optim_info['expert_optimizer']}") from exc
            raise

    def train_step(self) -> dict[str, Any]:
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.job.train
        t0 = time.time()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        self._router_counts = {}
        fb = get_forward_backward_func()
        losses = self._phase("forward-backward", fb, forward_step_func=self._forward_step,
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
        moe = {}
        if self.cfg.is_moe:
            if t.moe_metrics:
                self._phase("moe-metrics", self._track_moe_metrics)
            moe = self._phase("moe-load", self._moe_load)
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
            dist.all_reduce(buf, group=self.ps.get_data_parallel_group())
        dist.broadcast(buf, src=dist.get_world_size() - 1)  # the last global rank is on the last stage
        return float(buf[0] / buf[1]) if buf[1] > 0 else float("nan")

    def _track_moe_metrics(self) -> None:
        """megatron's MoE tracker reduction. With the stub on, every rank names the same tracked losses
        (force-initialized), so dense-only stages join the pipeline-group all-reduce. With the stub off,
        it is called the way Megatron-LM's loop does (names from each rank's own tracker), which
        diverges on dense-only stages: the hang of Megatron-LM issue 1444."""
        from megatron.core.transformer.moe.moe_utils import clear_aux_losses_tracker, track_moe_metrics

        names = MOE_TRACK_NAMES if "metrics" in self.stub_parts else None
        track_moe_metrics(1.0, self.step, track_names=names, force_initialize=names is not None,
                          num_layers=self.cfg.num_layers, moe_layer_freq=self.cfg.moe_layer_pattern)
        clear_aux_losses_tracker()

    def _moe_load(self) -> dict[str, Any]:
        """Per-expert load of every MoE layer (summed over all ranks' tokens) and its imbalance; a [L, E]
        world all-reduce every rank joins (zeros on dense-only stages)."""
        counts = torch.zeros(self.cfg.num_layers, self.cfg.num_experts)
        tp_first = self.ps.get_tensor_model_parallel_rank() == 0
        for g, c in self._router_counts.items():
            if tp_first:
                counts[g] += c.cpu()
        dist.all_reduce(counts)
        out: dict[str, Any] = {}
        moe_layers = [i for i in range(self.cfg.num_layers) if self.cfg.is_moe_layer(i)]
        if moe_layers:
            loads = counts[moe_layers]
            imbalance = (loads.max(dim=1).values / loads.mean(dim=1).clamp_min(1e-9))
            out["moe_max_imbalance"] = float(imbalance.max())
            out["moe_expert_load"] = {str(i): counts[i].tolist() for i in moe_layers}
        return out

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

    def _tokenizer_files(self) -> list[Path]:
        """Tokenizer files of the initial checkpoint (copied into every training checkpoint's tokenizer/)."""
        m = self.job.model
        if m.init == "random":
            return []
        src = Path(m.path)
        if m.init == "mcore" and not (src / LEGACY_LATEST).is_file():
            src = ckpt.resolve(src)
        for d in (src, src / "tokenizer"):
            found = [d / f for f in TOKENIZER_FILES if (d / f).is_file()]
            if found:
                return found
        return []

    def save(self) -> Path:
        files = {"config.yaml": self.job.to_yaml(), ckpt.HF_CONFIG: json.dumps(self.cfg.to_hf_dict(), indent=2),
                 ckpt.LAYOUT: json.dumps(self.layout_info(), indent=2, sort_keys=True)}
        return self._phase("checkpoint", ckpt.save, self.ckpt_root, self.step,
                           ckpt.sharded_state(self.model.module, self.optimizer), self.checkpoint_common(),
                           self.checkpoint_rank(), files, self._tokenizer_files() if self.rank == 0 else [],
                           self.job.checkpoint.keep_last)

    def load(self, path: Path) -> None:
        """Restore model, optimizer, schedule and trainer state from a checkpoint saved at any layout."""
        loaded = ckpt.load(path, ckpt.sharded_state(self.model.module, self.optimizer, is_loading=True))
        self.model.module.load_state_dict(loaded["model"])
        ckpt.drop_unowned_steps(loaded["optimizer"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        ckpt.untie_steps(self.optimizer)
        self.restore_common(loaded)
        saved, saved_layout = ckpt.load_rank_states(path), ckpt.saved_layout(path)
        same = {k: v for k, v in saved_layout.items() if k != "step"} == \
            {k: v for k, v in self.layout_info().items() if k != "step"}
        if not same and self.rank == 0:
            log.warning("resuming a checkpoint saved at another layout (%s): weights and optimizer state are "
                        "resharded; per-rank RNG states are not restored", _layout_text(saved_layout))
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
        flag = torch.tensor([1 if self._stop_requested else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def run(self) -> dict[str, Any]:
        """Train to ``train.steps``; returns a summary (rank 0's view)."""
        job = self.job
        t = job.train
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(job.to_yaml())
        resumed = self.maybe_resume()
        old = signal.signal(signal.SIGTERM, self._on_sigterm)
        first_loss = last_loss = None
        stopped_by_signal = False
        try:
            if resumed and self.rank == 0:
                print(f"[train] resumed from {resumed} at step {self.step}", flush=True)
            if t.tensorboard and self.rank == 0:
                from megatron_ads._compat import require

                require("tensorboard")
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            with open(self.metrics_path, "a") if self.rank == 0 else _Null() as metrics:
                while self.step < t.steps:
                    rec = self.train_step()
                    first_loss = rec["loss"] if first_loss is None else first_loss
                    last_loss = rec["loss"]
                    if self.rank == 0:
                        metrics.write(json.dumps(rec) + "\n")
                        metrics.flush()
                        if self.tb is not None:
                            for key, value in rec.items():
                                if isinstance(value, (int, float)) and value is not None and key != "step":
                                    self.tb.add_scalar(f"train/{key}", value, rec["step"])
                        if rec["step"] % t.log_every == 0 or rec["step"] == t.steps:
                            print(f"[train] step {rec['step']}/{t.steps} loss {rec['loss']:.4f} "
                                  f"grad_norm {rec['grad_norm'] if rec['grad_norm'] is None else round(rec['grad_norm'], 4)} "
                                  f"lr {rec['lr']:.2e} {rec['tokens_per_s']:.0f} tok/s"
                                  + (f" moe_imbalance {rec['moe_max_imbalance']:.2f}" if "moe_max_imbalance" in rec else ""),
                                  flush=True)
                    if self._stop_agreed():
                        stopped_by_signal = True
                        self.save()
                        break
                    if job.checkpoint.every and self.step % job.checkpoint.every == 0:
                        self.save()
                else:
                    if job.checkpoint.save_at_end:
                        self.save()
        finally:
            signal.signal(signal.SIGTERM, old)
            if self.tb is not None:
                self.tb.close()
        return {"steps": self.step, "first_loss": first_loss, "last_loss": last_loss,
                "stopped_by_signal": stopped_by_signal, "optimizer": self.optim_info,
                "out_dir": str(self.out), "world_size": dist.get_world_size(), "dp": self.dp}


def _layout_text(lay: dict[str, Any]) -> str:
    return f"tp={lay.get('tp')} pp={lay.get('pp')} ep={lay.get('ep')} on {lay.get('world_size')} ranks"


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, _):
        pass

    def flush(self):
        pass


def _masked_loss(mask_BS: torch.Tensor, output_BS: torch.Tensor):
    """Masked token-mean loss of one micro-batch (megatron divides by tokens and micro-batches)."""
    losses = output_BS.float()
    mask = mask_BS.float()
    total = torch.sum(losses * mask)
    n = mask.sum()
    return total, n.to(torch.int), {"lm loss": torch.stack([total.detach(), n.detach()])}


def _build_with_project_stub(opt_config, model_chunks):
    """Test hook: replace megatron's own expert stub by the project's ExpertStubOptimizer."""
    from megatron.core import parallel_state as ps
    from megatron.core.optimizer import ChainedOptimizer

    from megatron_ads.train.optim import ExpertStubOptimizer, build_optimizer

    optimizer, info = build_optimizer(opt_config, model_chunks, stub=True)
    if info["expert_optimizer"] != "megatron-stub":
        return optimizer, info
    chain = list(optimizer.chained_optimizers[:1])
    chain.append(ExpertStubOptimizer(opt_config, ps.get_expert_tensor_model_pipeline_parallel_group()))
    info = dict(info, expert_optimizer="project-stub")
    return ChainedOptimizer(chain), info


def train_worker(job_dict: dict, force_project_stub: bool = False, stub_parts: list[str] | None = None) -> dict[str, Any]:
    """Entry point of one rank (spawned or under torchrun)."""
    job = JobConfig.from_dict(job_dict)
    trainer = Trainer(job, force_project_stub=force_project_stub,
                      stub_parts=set(stub_parts) if stub_parts is not None else None)
    return trainer.run()
