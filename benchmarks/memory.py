"""Peak memory per rank: the planner's memory model (``layout.memory.stage_memory``) vs what one training process
measures, same model, micro-batch, sequence, micro-batches and dtype.

    python benchmarks/memory.py [--hidden 768] [--layers 8] [--ffn 2048] [--heads 12] [--kv-heads 4] [--vocab 32000]
                                [--seq-len 256] [--micro-batch 2] [--num-microbatches 1] [--steps 3]
                                [--dtype fp32|bf16] [--fast]

One process (pp=1, ep=1, dp=1) on this machine's device trains a Llama-shaped model (``tiny_llama`` at the sizes
given; ``--fast``: the tiny flavor itself, for the smoke test) from a random-weight HF checkpoint, in a fresh
child process that runs the project's ``Trainer`` in-process and measures:

- CPU: resident set size over the child's baseline (RSS after importing torch / megatron-core / the trainer and
  initializing the process group, before the model is built); per-phase peaks from the kernel's VmHWM, reset
  before each phase (``runtime.memory``);
- CUDA: ``torch.cuda.memory_allocated`` / ``max_memory_allocated`` (the planner's fixed runtime overhead, CUDA
  context and allocator slack, is outside these; ``max_memory_reserved`` is printed beside).

Measured terms: weights, gradients (megatron DDP's contiguous grad buffer) and optimizer state are the bytes of
the tensors that hold them (after the first optimizer step); activations are the largest rise of the peak over
the memory held just before a training step (step 2 on: step 1 also allocates the optimizer state), so they
include the step's transients (autograd's per-parameter ``.grad`` before it is added to the grad buffer,
gradient-clipping temporaries); total is the largest peak of any phase (model build included) over the
baseline. The planner is called with ``runtime_overhead_gb=0`` for the comparison (its default overhead is
printed beside). The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GB = 1e9
TOLERANCE = 0.15
TERMS = ("weights", "grads", "optimizer", "activations")


# ------------------------------------------------------------------------------------------- child: measure
def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def _optimizer_bytes(optimizer, model_params) -> int:
    """Bytes of optimizer state: Adam's m, v (every state tensor) plus main params that are not the model's
    own tensors (bf16 training: megatron's fp32 copies)."""
    import torch

    own = {p.untyped_storage().data_ptr() for p in model_params}
    chain = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    tensors = []
    for opt in chain:
        inner = getattr(opt, "optimizer", None)
        if inner is None or inner is opt:
            continue
        for group in inner.param_groups:
            tensors += [p for p in group["params"] if p.untyped_storage().data_ptr() not in own]
        for state in inner.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor) and v.numel() > 1]
    return _unique_bytes(tensors)


class _SavedTensors:
    """Bytes autograd saves for backward during one micro-batch's forward (``saved_tensors_hooks``): unique
    storages, the model's parameters left out, split into those saved inside the decoder layers and the rest
    (embedding, final norm, output layer, loss). The largest micro-batch is the saved-activation peak (pp=1
    runs each micro-batch's backward before the next forward)."""

    def __init__(self, trainer, params):
        self.own = {p.untyped_storage().data_ptr() for p in params}
        self.per_microbatch: list[dict[tuple, tuple[int, bool]]] = []
        self.depth = 0
        forward_step = trainer._forward_step

        def counted(data_iterator, model):
            self.per_microbatch.append({})
            return forward_step(data_iterator, model)

        trainer._forward_step = counted  # the schedule looks the forward step up on the trainer at each step
        for layer in trainer.model.module.decoder.layers:
            layer.register_forward_pre_hook(self._enter)
            layer.register_forward_hook(self._leave)

    def _enter(self, module, args):
        self.depth += 1

    def _leave(self, module, args, output):
        self.depth -= 1

    def pack(self, t):
        st = t.untyped_storage()
        ptr = st.data_ptr()
        if ptr and ptr not in self.own and self.per_microbatch:
            self.per_microbatch[-1].setdefault((t.device, ptr), (st.nbytes(), self.depth > 0))
        return t

    def peak(self) -> tuple[int, int]:
        """(bytes saved inside the decoder layers, bytes saved elsewhere) of the largest micro-batch."""
        sums = [(sum(n for n, inside in d.values() if inside), sum(n for n, inside in d.values() if not inside))
                for d in self.per_microbatch]
        return max(sums, key=sum, default=(0, 0))


class _Meter:
    """Memory now, and the peak since the last reset, in bytes (RSS on CPU, allocated on CUDA)."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def now(self) -> float:
        import torch

        from megatron_ads.runtime.memory import rss_mb

        return float(torch.cuda.memory_allocated()) if self.cuda else rss_mb() * 2**20

    def reset(self) -> bool:
        import torch

        from megatron_ads.runtime.memory import reset_peak_rss

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            return True
        return reset_peak_rss()

    def peak(self) -> float:
        import torch

        from megatron_ads.runtime.memory import peak_rss_mb

        if self.cuda:
            torch.cuda.synchronize()
            return float(torch.cuda.max_memory_allocated())
        return peak_rss_mb() * 2**20


def child(spec: dict) -> dict:
    """Build the Trainer in this (fresh) process, run ``spec['steps']`` steps, return the measured bytes."""
    import torch
    import megatron.core  # noqa: F401  (imported before the baseline: its import is not model memory)

    from megatron_ads.config.train import JobConfig
    from megatron_ads.runtime.dist import init_distributed
    from megatron_ads.train.loop import Trainer

    job = JobConfig.load(REPO / "launch/configs/tiny_cpu.yaml", spec["overrides"])
    platform, _env = init_distributed(timeout_s=job.train.collective_timeout_s)
    meter = _Meter(platform.name == "cuda")
    resettable = meter.reset()
    base = meter.now()
    trainer = Trainer(job)
    build_peak = meter.peak() - base
    after_build = meter.now() - base
    model = trainer.model
    params = list(model.module.parameters())
    weights = _unique_bytes(params)
    grads = _unique_bytes([b.grad_data for b in model.buffers + model.expert_parallel_buffers])
    saved = _SavedTensors(trainer, params)
    steps = []
    for _ in range(spec["steps"]):
        meter.reset()
        before = meter.now() - base
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            rec = trainer.train_step()
        steps.append({"before": before, "peak": meter.peak() - base, "after": meter.now() - base,
                      "loss": rec["loss"]})
    optim = _optimizer_bytes(trainer.optimizer, params)
    steady = steps[1:] or steps
    activations = max(s["peak"] - s["before"] for s in steady)
    peaks = [build_peak] + [s["peak"] for s in steps]
    total = max(peaks) if resettable else peaks[-1]
    saved_layers, saved_rest = saved.peak()
    out = {"device": torch.cuda.get_device_name() if meter.cuda else "cpu", "peak_resettable": resettable,
           "baseline": base, "params": sum(p.numel() for p in params), "weights": weights, "grads": grads,
           "optimizer": optim, "activations": activations, "other": total - (weights + grads + optim + activations),
           "total": total, "after_build": after_build, "build_peak": build_peak, "steps": steps,
           "held_not_in_tensors": steps[-1]["after"] - (weights + grads + optim),
           "saved_layers": saved_layers, "saved_rest": saved_rest,
           "largest_weight": max(p.numel() * p.element_size() for p in params)}
    if meter.cuda:
        out["max_reserved"] = float(torch.cuda.max_memory_reserved())
    return out


# ------------------------------------------------------------------------------------------- parent: compare
def model_dict(args) -> dict:
    from megatron_ads.config.flavors import flavor_dict

    cfg = flavor_dict("tiny_llama")
    if not args.fast:
        cfg.update(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.ffn,
                   num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                   initializer_range=0.02)
    return cfg


def planner(hf: Path, args, overhead_gb: float) -> dict:
    """The planner's breakdown (GB) for this one-rank run, plus ``layers_activations_gb`` (the decoder layers' part
    of its activations term; the rest is the last stage's fp32 logits and their gradient)."""
    from megatron_ads.config.model import ModelConfig
    from megatron_ads.layout.memory import layer_activation_bytes, precision, stage_memory

    cfg = ModelConfig.from_hf(hf)
    layers = list(range(cfg.num_layers))
    out = stage_memory(cfg, layers, stage=0, pp=1, tp=1, ep=1, dp=1, edp=1, seq_len=args.seq_len,
                       micro_batch=args.micro_batch, recompute="none", distributed_optimizer=False, mtp=False,
                       dtype=args.dtype, runtime_overhead_gb=overhead_gb)
    tokens, value = args.seq_len * args.micro_batch, precision(args.dtype).activation
    out["layers_activations_gb"] = sum(layer_activation_bytes(cfg, cfg.is_moe_layer(i), tokens, 1, value)
                                       for i in layers) / GB
    out["other_gb"] = 0.0
    return out


def compare(plan: dict, measured: dict) -> dict:
    """Per-term planner vs measured (GB) and ratios measured / planner (None where the planner has no term)."""
    rows = {}
    for term in (*TERMS, "other", "total"):
        p, m = plan[f"{term}_gb"], measured[term] / GB
        rows[term] = {"planner_gb": p, "measured_gb": m, "ratio": m / p if p else None}
    return rows


def _fmt(x: float | None, width: int) -> str:
    return f"{'-':>{width}}" if x is None else f"{x:{width}.3f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--num-microbatches", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None,
                    help="training dtype (optim.dtype); default fp32 on CPU, bf16 on CUDA")
    ap.add_argument("--fast", action="store_true", help="the tiny_llama flavor itself, seq 32 x mb 2, 2 steps")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))), flush=True)
        return 0
    if args.fast:
        args.seq_len, args.micro_batch, args.steps = 32, 2, 2
    if args.steps < 1:
        ap.error("--steps: expected >= 1")
    if args.dtype is None:
        import torch

        args.dtype = "bf16" if torch.cuda.is_available() else "fp32"
    from megatron_ads.checkpoint.hf_init import write_random_checkpoint
    from megatron_ads.layout.memory import RUNTIME_OVERHEAD_GB

    with tempfile.TemporaryDirectory(prefix="megatron_ads_membench_") as tmp:
        hf = Path(tmp) / "hf"
        write_random_checkpoint(model_dict(args), hf, seed=0, dtype=args.dtype)
        overrides = [f"out_dir={Path(tmp) / 'run'}", "model.init=hf", f"model.path={hf}", "parallel.pp=1",
                     "parallel.ep=1", "parallel.tp=1", "parallel.stage_layers=null", f"train.steps={args.steps}",
                     f"train.seq_len={args.seq_len}", f"train.micro_batch={args.micro_batch}",
                     f"train.num_microbatches={args.num_microbatches}", f"optim.dtype={args.dtype}",
                     "optim.distributed_optimizer=false", "checkpoint.save_at_end=false", "train.moe_metrics=false"]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID")}
        r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                            json.dumps({"overrides": overrides, "steps": args.steps})],
                           capture_output=True, text=True, env=env)
        if r.returncode:
            sys.stderr.write(r.stderr[-6000:])
            raise SystemExit(f"memory benchmark child failed (exit {r.returncode})")
        measured = json.loads(r.stdout.strip().splitlines()[-1])
        plan = planner(hf, args, 0.0)
        plan_default = planner(hf, args, RUNTIME_OVERHEAD_GB)
    rows = compare(plan, measured)
    ratio = rows["total"]["ratio"]
    within = abs(ratio - 1) <= TOLERANCE
    unit = "RSS over baseline" if measured["device"] == "cpu" else "torch.cuda.max_memory_allocated"
    shape = "" if args.fast else (f" h={args.hidden} L={args.layers} ffn={args.ffn} heads={args.heads}/{args.kv_heads}"
                                  f" vocab={args.vocab}")
    print(f"model tiny_llama{shape}: {plan['params'] / 1e6:.1f}M params (planner), {measured['params'] / 1e6:.1f}M "
          f"(model); {args.dtype}, seq {args.seq_len} x mb {args.micro_batch} x {args.num_microbatches} micro-batches, "
          f"{args.steps} steps, tp=pp=ep=dp=1 on {measured['device']}")
    print(f"measured: {unit}, baseline {measured['baseline'] / GB:.3f} GB; planner: runtime_overhead_gb=0")
    print(f"{'term':<12} {'planner GB':>11} {'measured GB':>12} {'measured/planner':>17}")
    for term, row in rows.items():
        print(f"{term:<12} {row['planner_gb']:11.3f} {row['measured_gb']:12.3f} {_fmt(row['ratio'], 17)}")
    layers_p = plan["layers_activations_gb"]
    head_p = plan["activations_gb"] - layers_p
    saved_l, saved_r = measured["saved_layers"] / GB, measured["saved_rest"] / GB
    transient = measured["activations"] / GB - saved_l - saved_r
    largest = measured["largest_weight"] / GB
    print("activations, in parts:")
    print(f"  saved for backward in the decoder layers: {saved_l:.3f} GB, planner's layers {layers_p:.3f} "
          f"(ratio {saved_l / layers_p if layers_p else float('nan'):.3f})")
    print(f"  saved outside the layers (final norm, head input, loss softmax): {saved_r:.3f} GB; planner's last-stage "
          f"term (fp32 logits and their gradient) {head_p:.3f}")
    print(f"  step transients (peak rise - saved): {transient:.3f} GB; the largest weight's autograd .grad, which "
          f"exists until megatron DDP adds it to the grad buffer (gradient_accumulation_fusion off): {largest:.3f} GB")
    print(f"other: peak - (weights + grads + optimizer + activations): memory the allocator holds and not yet "
          f"reused; after the last step {measured['held_not_in_tensors'] / GB:.3f} GB is held outside the weight/"
          f"grad/optimizer tensors")
    print(f"after build {measured['after_build'] / GB:.3f} GB (build peak {measured['build_peak'] / GB:.3f})")
    for i, s in enumerate(measured["steps"], 1):
        print(f"step {i}: before {s['before'] / GB:.3f}  peak {s['peak'] / GB:.3f}  after {s['after'] / GB:.3f} GB"
              f"  loss {s['loss']:.4f}")
    if "max_reserved" in measured:
        print(f"torch.cuda.max_memory_reserved: {measured['max_reserved'] / GB:.3f} GB")
    print(f"planner total with its default runtime overhead ({RUNTIME_OVERHEAD_GB:g} GB): "
          f"{plan_default['total_gb']:.3f} GB")
    print(f"total: measured / planner = {ratio:.3f} -> {'within' if within else 'NOT within'} {TOLERANCE:.0%}")
    figures = {"device": measured["device"], "dtype": args.dtype, "seq_len": args.seq_len,
               "micro_batch": args.micro_batch, "num_microbatches": args.num_microbatches, "steps": args.steps,
               "fast": args.fast, "params_planner": plan["params"], "params_model": measured["params"],
               "measured_as": unit, "baseline_gb": measured["baseline"] / GB,
               "planner_gb": {t: plan[f"{t}_gb"] for t in (*TERMS, "other", "total")},
               "planner_layers_activations_gb": layers_p, "planner_total_gb_with_overhead": plan_default["total_gb"],
               "measured_gb": {t: measured[t] / GB for t in (*TERMS, "other", "total")},
               "ratio_by_term": {t: rows[t]["ratio"] for t in rows}, "ratio_total": ratio,
               "within_tolerance": within, "tolerance": TOLERANCE,
               "saved_layers_gb": saved_l, "saved_outside_layers_gb": saved_r, "transients_gb": transient,
               "largest_weight_grad_gb": largest, "held_after_last_step_gb": measured["held_not_in_tensors"] / GB,
               "peak_resettable": measured["peak_resettable"]}
    print(json.dumps(figures), flush=True)  # the last line: machine-readable figures
    return 0


if __name__ == "__main__":
    sys.exit(main())
