"""Conversion throughput vs a plain copy of the same bytes on the same disk, and peak RSS.

    python benchmarks/convert.py [--gb 2] [--workers 1] [--budget-gb 0.5] [--keep DIR]

Generates a llama-architecture HF checkpoint of about --gb GB (random bf16 tensors, 4 shards),
copies its shards (baseline), converts it HF -> Megatron (pp=2) in a subprocess that reports its
peak RSS growth, and prints the ratio of conversion throughput to copy throughput. The last line printed
is one JSON object: ``copy_mb_per_s``, ``convert_mb_per_s``, ``ratio_convert_over_copy``,
``rss_growth_mb`` (peak RSS growth of the conversion), ``rss_budget_mb``, ``checkpoint_mb``,
``ratio_rss_over_checkpoint``, ``layers``, ``workers``, ``copy_s``, ``convert_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatron_ads.checkpoint.mapping import RankCoord, expected_hf_shape, rank_tasks
from megatron_ads.config.flavors import flavor_dict
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig

PROBE = r"""
import json, sys, time
from megatron_ads.checkpoint.convert import hf_to_mcore
from megatron_ads.config.parallel import ParallelConfig
import torch, safetensors
from megatron_ads.runtime.memory import peak_rss_mb, reset_peak_rss, rss_mb
assert reset_peak_rss(), "kernel refused to reset VmHWM"
base = rss_mb()
t = time.time()
r = hf_to_mcore(sys.argv[1], sys.argv[2], ParallelConfig(pp=2), workers=int(sys.argv[3]),
                max_memory_gb=float(sys.argv[4]), progress=False)
dt = time.time() - t
peak = peak_rss_mb()
print(json.dumps({"seconds": dt, "bytes": r["bytes"], "rss_growth_mb": peak - base}))
"""


def generate(out: Path, gb: float) -> tuple[ModelConfig, int]:
    """Random bf16 llama checkpoint of about ``gb`` GB in 4 safetensors shards + index + config."""
    d = flavor_dict("tiny_llama")
    layer_bytes = 2 * (4 * 2048 * 2048 + 3 * 2048 * 5632)
    layers = max(2, int(gb * 1e9 / layer_bytes))
    d.update(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16,
             vocab_size=32000, num_hidden_layers=layers)
    cfg = ModelConfig.from_hf_dict(d)
    names = sorted({h for t in rank_tasks(cfg, ParallelConfig(), RankCoord()) for h in t.hf})
    out.mkdir(parents=True)
    shards = [names[i::4] for i in range(4)]
    weight_map, total = {}, 0
    g = torch.Generator().manual_seed(0)
    for i, group in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-00004.safetensors"
        tensors = {n: (torch.randn(expected_hf_shape(cfg, n), generator=g) * 0.02).to(torch.bfloat16) for n in group}
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
        total += (out / fname).stat().st_size
        weight_map.update({n: fname for n in group})
        del tensors
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(d))
    return cfg, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--budget-gb", type=float, default=0.5)
    ap.add_argument("--keep", default=None, help="work directory to keep (default: a temporary one, removed)")
    args = ap.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="megatron_ads_bench_"))
    try:
        src = work / "hf"
        t = time.time()
        cfg, total = generate(src, args.gb)
        print(f"generated {total / 1e9:.2f} GB ({cfg.num_layers} layers) in {time.time() - t:.1f}s")
        copy_dir = work / "copy"
        copy_dir.mkdir()
        t = time.time()
        for f in src.glob("*.safetensors"):
            shutil.copyfile(f, copy_dir / f.name)
        os.sync()
        copy_s = time.time() - t
        r = subprocess.run([sys.executable, "-c", PROBE, str(src), str(work / "mcore"), str(args.workers),
                            str(args.budget_gb)], capture_output=True, text=True, check=True)
        conv = json.loads(r.stdout.strip().splitlines()[-1])
        copy_rate = total / copy_s / 1e6
        conv_rate = total / conv["seconds"] / 1e6
        print(f"plain copy:  {copy_rate:8.1f} MB/s ({copy_s:.2f}s)")
        print(f"hf-to-mcore: {conv_rate:8.1f} MB/s ({conv['seconds']:.2f}s, pp=2, workers={args.workers})")
        print(f"ratio conversion/copy throughput: {conv_rate / copy_rate:.3f}")
        print(f"peak RSS growth during conversion: {conv['rss_growth_mb']:.0f} MB "
              f"(budget {args.budget_gb * 1024:.0f} MB, checkpoint {total / 2**20:.0f} MB)")
        ckpt_mb = total / 2**20
        figures = {"checkpoint_gb": total / 1e9, "checkpoint_mb": ckpt_mb, "layers": cfg.num_layers,
                   "workers": args.workers, "copy_s": copy_s, "convert_s": conv["seconds"],
                   "copy_mb_per_s": copy_rate, "convert_mb_per_s": conv_rate,
                   "ratio_convert_over_copy": conv_rate / copy_rate, "rss_growth_mb": conv["rss_growth_mb"],
                   "rss_budget_mb": args.budget_gb * 1024,
                   "ratio_rss_over_checkpoint": conv["rss_growth_mb"] / ckpt_mb}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(figures), flush=True)  # the last line: machine-readable figures (benchmarks/run_all.py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
