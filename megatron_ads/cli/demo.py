"""``megatron-ads demo [--out DIR]``: the end-to-end pipeline on the CPU default.

At this stage: init a tiny DeepSeek-V3 FP8 checkpoint (random weights, real architecture), plan the
paper's 248-GPU layout, convert HF -> Megatron shards -> HF FP8 (exact), check forward parity
against transformers on 1 process and on the converted PP=2 x EP=2 shards (4 gloo processes), then
run a short multi-task SFT from those shards on the same layout (AdNanny reweighting, validation by
label scoring through the pipeline, plots in <out>/sft/plots).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from megatron_ads import cli
from megatron_ads.runtime.log import get_logger

log = get_logger("demo")

SFT_CONFIG = Path(__file__).resolve().parents[2] / "launch" / "configs" / "sft_tiny_cpu.yaml"


def register(p) -> None:
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--flavor", default="tiny_deepseek_v3", help="named model flavor to build the demo on (default: %(default)s)")
    p.set_defaults(func=run)


def summary(rows: list[tuple[str, int, float]]) -> str:
    """The stages run so far: stage, exit code, seconds (the demo's closing summary)."""
    width = max(len(title) for title, _, _ in rows)
    lines = [f"{'stage':<{width}}  exit  seconds"]
    lines += [f"{title:<{width}}  {rc:>4}  {secs:>7.1f}" for title, rc, secs in rows]
    lines.append(f"{'total':<{width}}  {max(rc for _, rc, _ in rows):>4}  {sum(s for _, _, s in rows):>7.1f}")
    return "\n".join(lines)


def run(args) -> int:
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="megatron_ads_demo_"))
    out.mkdir(parents=True, exist_ok=True)
    hf = out / f"hf_{args.flavor}"
    mcore, back = out / "mcore_pp2_ep2", out / f"hf_{args.flavor}_roundtrip_fp8"
    steps = [
        ("init-model (FP8, DeepSeek block-scaled)", ["init-model", "--flavor", args.flavor, "--out", str(hf), "--seed", "0",
                                                     "--fp8"]),
        ("plan: the paper's 248-GPU layout for DeepSeek-V3",
         ["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8", "--gpu-mem-gb", "80"]),
        ("convert HF FP8 -> Megatron shards, pp=2 x ep=2 with a dense-only first stage",
         ["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(mcore), "--pp", "2", "--ep", "2",
          "--stage-layers", "1,3", "--quiet"]),
        ("convert Megatron -> HF FP8", ["convert", "mcore-to-hf", "--mcore", str(mcore), "--out", str(back),
                                        "--dtype", "fp8", "--quiet"]),
        ("verify the FP8 round trip reproduces every tensor", ["verify", "checkpoints", str(hf), str(back)]),
        ("parity: converted shards on 4 gloo ranks vs transformers",
         ["verify", "parity", "--hf", str(hf), "--mcore", str(mcore), "--pp", "2", "--ep", "2", "--stage-layers", "1,3"]),
        ("parity 1 process, straight from the HF checkpoint", ["verify", "parity", "--hf", str(hf)]),
        ("train sft: multi-task SFT from the converted shards, 4 gloo ranks (pp=2 x ep=2, dp=2)",
         ["train", "sft", "--config", str(SFT_CONFIG), "--nproc", "4", f"out_dir={out / 'sft'}", "model.init=mcore",
          f"model.path={mcore}", "parallel.pp=2", "parallel.ep=2", "parallel.stage_layers=[1,3]", "train.steps=12",
          "train.seq_len=256", "train.micro_batch=2", "train.num_microbatches=2", "train.log_every=4",
          "optim.warmup_steps=2", "sft.train_size=400", "sft.val_rows=8", "sft.eval_every=6",
          "checkpoint.every=0"]),
    ]
    if hf.exists() or mcore.exists() or back.exists():
        raise FileExistsError(f"{out}: holds an earlier demo's outputs; pass a new --out")
    labels = ["init-model", "plan", "convert hf-to-mcore", "convert mcore-to-hf", "verify checkpoints",
              "verify parity (4 ranks)", "verify parity (1 process)", "train sft (4 ranks)"]
    rows = []
    for label, (title, argv) in zip(labels, steps, strict=True):
        log.info("%s: megatron-ads %s", title, " ".join(argv))
        t0 = time.time()
        rc = cli.main(["--log-level", args.log_level, *argv])
        rows.append((label, rc, time.time() - t0))
        log.info("%s: exit %d in %.1fs", title, rc, rows[-1][2])
        if rc:
            print(summary(rows))
            log.error("demo stopped: stage '%s' exited %d; artifacts so far in %s", title, rc, out)
            return rc
    print(summary(rows))
    print(f"all stages passed; artifacts in {out}")
    return 0
