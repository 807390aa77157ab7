"""``megatron-ads demo [--out DIR]``: the end-to-end pipeline on the CPU default.

At this stage: init a tiny DeepSeek-V3 checkpoint (random weights, real architecture), then check
forward parity against transformers on 1 process and on a PP=2 x EP=2 layout (4 gloo processes).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


def register(p) -> None:
    p.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    p.add_argument("--flavor", default="tiny_deepseek_v3")
    p.set_defaults(func=run)


def run(args) -> int:
    from megatron_ads.cli import main as cli_main

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="megatron_ads_demo_"))
    out.mkdir(parents=True, exist_ok=True)
    hf = out / f"hf_{args.flavor}"
    steps = [
        ("init-model", ["init-model", "--flavor", args.flavor, "--out", str(hf), "--seed", "0"]),
        ("parity 1 process", ["verify", "parity", "--hf", str(hf)]),
        ("parity pp=2 x ep=2 (4 gloo ranks, dense-only first stage)",
         ["verify", "parity", "--hf", str(hf), "--pp", "2", "--ep", "2", "--stage-layers", "1,3"]),
    ]
    if hf.exists():
        steps = steps[1:]
        print(f"[demo] reusing {hf}")
    for title, argv in steps:
        print(f"\n[demo] {title}: megatron-ads {' '.join(argv)}", flush=True)
        t0 = time.time()
        rc = cli_main(argv)
        print(f"[demo] {title}: exit {rc} in {time.time() - t0:.1f}s", flush=True)
        if rc:
            return rc
    print(f"\n[demo] all stages passed; artifacts in {out}")
    return 0
