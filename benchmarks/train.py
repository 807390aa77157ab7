"""Training throughput of our megatron-core trainer vs a plain HF-transformers loop, same model and data.

    python benchmarks/train.py [--flavor tiny_deepseek_v3] [--steps 40] [--seq-len 128] [--micro-batch 4] [--dtype fp32]
                               [--experts grouped|sequential|both] [--num-experts N] [--profile] [--repeat 3]
                               [--single-rank auto|megatron]

Each loop runs in one process on this machine's device (CPU here; CUDA on a GPU machine), from the same
random-weight HF checkpoint, on the same synthetic batches, with AdamW; a step is timed alike on both sides, from
building its batch to the optimizer step (our trainer's ``tokens_per_s`` covers its whole ``train_step``). ``--repeat`` runs of each, alternating
(HF, ours, HF, ours, ...: a slow spell of a shared machine, which moves one run by ±20%, hits both sides);
prints the median over the runs of each run's upper-quartile tokens/s (``upper_quartile``: per-step figures,
first 2 steps excluded), the ratio ours / HF of those and the per-run ratios. ``--single-rank megatron``: our trainer with megatron-core's linears
and MoE dispatcher (``model.single_rank``) instead of the one-rank twins. ``--experts`` picks our routed experts module
(``model.experts``: grouped GEMM, or megatron's SequentialMLP; ``both`` runs ours with each);
``--num-experts`` overrides the flavor's routed expert count (n_routed_experts). ``--profile``: our run also
profiles steps 3..N (``train.profile_steps``) and prints its trainer phases (ms per step) and top ops, so the
fixed costs per step (loss report, expert-load reduction, stop check, step log) show next to forward-backward
(the profiler slows the profiled steps: take ratios from a run without ``--profile``).

On CUDA both sides also get an MFU (``model.flops.mfu``: training FLOPs per token x tokens/s over the GPU's
dense bf16 peak, ``train.loop.PEAK_FLOPS``; ours is the median of the trainer's own ``mfu`` records). The
random checkpoint is written in ``--dtype``. The last line printed is one JSON object: ``device``,
``hf_tokens_per_s``, ``ours_tokens_per_s`` and ``ratio_ours_over_hf`` (the first ``--experts`` kind),
``ours_by_experts`` / ``ratio_by_experts`` (every kind run), ``hf_mfu`` / ``ours_mfu`` (CUDA, known GPU;
else null), the per-run figures (``hf_tokens_per_s_runs``, ``ours_tokens_per_s_runs``, ``ratio_per_run``) and
the settings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HF_LOOP = r"""
import json, sys, time, torch, transformers
from megatron_ads.data import lm_stream
hf, steps, seq, mb, dtype = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32).to(dev)
model.train()
opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
times = []
for step in range(steps):
    t = time.time()  # the batch is built inside the timed step, as our trainer's step builds it
    b = lm_stream.batch(step * mb, mb, seq, 1234, 8, 256)
    logits = model(b["tokens"].to(dev)).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), b["labels"].to(dev).view(-1), reduction="none")
    m = b["loss_mask"].to(dev).view(-1)
    loss = (loss * m).sum() / m.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    if dev == "cuda": torch.cuda.synchronize()
    times.append(time.time() - t)
print(json.dumps({"tokens_per_s": [mb * seq / x for x in times]}))
"""


def upper_quartile(xs: list[float]) -> float:
    """The upper quartile of a run's per-step throughputs: on a shared machine slow spells of a few steps (down
    to 0.6x) only ever slow a step, so the upper quartile tracks the unhindered speed where the median still
    moves with how many spells a run caught; both loops get the same statistic."""
    xs = list(xs)
    return statistics.quantiles(xs, n=4, method="inclusive")[2] if len(xs) > 1 else xs[0]


def _device_and_hf_mfu(hf: Path, seq_len: int, hf_tokens_per_s: float) -> tuple[str, float | None]:
    """This machine's device name, and the HF loop's MFU where it ran on a GPU of known peak (else None)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    from megatron_ads.config.model import ModelConfig
    from megatron_ads.model.flops import mfu
    from megatron_ads.train.loop import PEAK_FLOPS

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return name, (mfu(ModelConfig.from_hf(hf), seq_len, hf_tokens_per_s, peak) if peak else None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavor", default="tiny_deepseek_v3")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--experts", choices=("grouped", "sequential", "both"), default="grouped")
    ap.add_argument("--num-experts", type=int, default=None, help="override n_routed_experts of the flavor")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over our steps 3..N: phases and top ops")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each loop, alternating (medians over the runs)")
    ap.add_argument("--single-rank", choices=("auto", "megatron"), default="auto",
                    help="model.single_rank of our trainer (megatron: megatron-core's linears and dispatcher)")
    args = ap.parse_args()
    if args.profile and args.steps < 3:
        ap.error("--profile profiles steps 3..N: needs --steps >= 3")
    if args.repeat < 1:
        ap.error("--repeat: expected >= 1")
    with tempfile.TemporaryDirectory(prefix="megatron_ads_trainbench_") as tmp:
        hf = Path(tmp) / "hf"
        if args.num_experts is None:
            subprocess.run([sys.executable, "-m", "megatron_ads", "init-model", "--flavor", args.flavor, "--out",
                            str(hf), "--dtype", args.dtype], check=True, capture_output=True)
        else:
            from megatron_ads.checkpoint.hf_init import write_random_checkpoint
            from megatron_ads.config.flavors import flavor_dict

            cfg = {**flavor_dict(args.flavor), "n_routed_experts": args.num_experts}
            write_random_checkpoint(cfg, hf, seed=0, dtype=args.dtype)
        hf_runs: list[float] = []
        runs_by_kind: dict[str, list[float]] = {}
        mfu_by_kind: dict[str, list[float]] = {}
        profiles = {}
        kinds = ("grouped", "sequential") if args.experts == "both" else (args.experts,)
        for rep in range(args.repeat):  # alternating: a slow spell of the machine hits both sides alike
            r = subprocess.run([sys.executable, "-c", HF_LOOP, str(hf), str(args.steps), str(args.seq_len),
                                str(args.micro_batch), args.dtype], check=True, capture_output=True, text=True)
            hf_runs.append(upper_quartile(json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"][2:]))
            for kind in kinds:
                profile = args.profile and rep == 0
                run = Path(tmp) / f"ours_{kind}_{rep}"
                subprocess.run([sys.executable, "-m", "megatron_ads", "train", "lm", "--config",
                                str(Path(__file__).resolve().parents[1] / "launch/configs/tiny_cpu.yaml"),
                                f"out_dir={run}", "model.init=hf", f"model.path={hf}", f"model.experts={kind}",
                                f"model.single_rank={args.single_rank}",
                                "parallel.pp=1", "parallel.ep=1", "parallel.stage_layers=null",
                                f"train.steps={args.steps}", f"train.seq_len={args.seq_len}",
                                f"train.micro_batch={args.micro_batch}", "train.num_microbatches=1",
                                f"optim.dtype={args.dtype}", "checkpoint.save_at_end=false", "train.moe_metrics=false",
                                *([f"train.profile_steps=[3,{args.steps}]"] if profile else [])],
                               check=True, capture_output=True)
                if profile:
                    profiles[kind] = json.loads((run / "profile" / "rank0.json").read_text())["ms_per_step"]
                    table = (run / "profile" / "rank0.txt").read_text().splitlines()
                    print(f"--- profile, ours ({kind} experts) ---")
                    print("\n".join(table[:60]))
                recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][2:]
                runs_by_kind.setdefault(kind, []).append(upper_quartile([x["tokens_per_s"] for x in recs]))
                mfus = [x["mfu"] for x in recs if x.get("mfu") is not None]
                if mfus:
                    mfu_by_kind.setdefault(kind, []).append(statistics.median(mfus))
        hf_tps = hf_runs
        ours = {k: statistics.median(v) for k, v in runs_by_kind.items()}
        ours_mfu = {k: (statistics.median(mfu_by_kind[k]) if k in mfu_by_kind else None) for k in kinds}
        pair_ratios = {k: [o / h for o, h in zip(v, hf_runs)] for k, v in runs_by_kind.items()}
        device, hf_mfu = _device_and_hf_mfu(hf, args.seq_len, statistics.median(hf_tps))
    base = statistics.median(hf_tps)
    experts = f", {args.num_experts} experts" if args.num_experts else ""
    print(f"model {args.flavor}{experts}, {args.dtype}, seq {args.seq_len} x mb {args.micro_batch}, {args.steps} steps "
          f"(first 2 excluded)")
    print(f"HF transformers loop: {base:10.1f} tokens/s (median of {args.repeat} runs)")
    for kind, tps in ours.items():
        paired = ", ".join(f"{x:.3f}" for x in pair_ratios[kind])
        print(f"megatron_ads trainer ({kind} experts): {tps:10.1f} tokens/s (median), ratio ours / HF: {tps / base:.3f} "
              f"(per run: {paired})")
    if len(ours) == 2:
        print(f"grouped / sequential: {ours['grouped'] / ours['sequential']:.3f}")
    first = next(iter(ours))
    if hf_mfu is not None or ours_mfu[first] is not None:
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"MFU on {device}: HF loop {fmt(hf_mfu)}, ours ({first}) {fmt(ours_mfu[first])}")
    figures = {"device": device, "flavor": args.flavor, "dtype": args.dtype, "seq_len": args.seq_len,
               "micro_batch": args.micro_batch, "steps": args.steps, "num_experts": args.num_experts,
               "hf_tokens_per_s": base, "ours_tokens_per_s": ours[first], "ratio_ours_over_hf": ours[first] / base,
               "ours_experts": first, "ours_by_experts": ours, "ratio_by_experts": {k: v / base for k, v in ours.items()},
               "hf_mfu": hf_mfu, "ours_mfu": ours_mfu[first], "ours_mfu_by_experts": ours_mfu,
               "repeat": args.repeat, "single_rank": args.single_rank, "hf_tokens_per_s_runs": hf_runs,
               "ours_tokens_per_s_runs": runs_by_kind, "ratio_per_run": pair_ratios,
               "profile_ms_per_step": profiles or None}
    print(json.dumps(figures), flush=True)  # the last line: machine-readable figures (benchmarks/run_all.py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
