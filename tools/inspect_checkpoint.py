#!/usr/bin/env python
"""Look into a checkpoint without loading it: tensor names, shapes, dtypes, FP8 scale shapes, per-stage /
per-EP-rank totals and the recorded layout of an HF (BF16 / DeepSeek FP8), legacy Megatron or torch_dist
checkpoint (or a training run: RUN, RUN/checkpoints, RUN/checkpoints/latest, RUN/checkpoints/step_N).

    python tools/inspect_checkpoint.py DIR [--json] [--summary]

Reads headers and metadata only (instant on a 671B checkpoint). Exit code 0 ok, 2 bad input.
The logic lives in ``megatron_ads.checkpoint.inspect``; this is its command-line wrapper.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

try:
    from megatron_ads.checkpoint.inspect import inspect_checkpoint, render_table
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from megatron_ads.checkpoint.inspect import inspect_checkpoint, render_table
from megatron_ads.checkpoint.hf_io import CheckpointError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inspect_checkpoint.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="checkpoint directory (HF, legacy Megatron, torch_dist) or training run")
    parser.add_argument("--json", action="store_true", help="print the report as JSON to stdout")
    parser.add_argument("--summary", action="store_true", help="totals and layout only, no per-tensor rows")
    args = parser.parse_args(argv)
    try:
        report = inspect_checkpoint(args.dir)
    except (CheckpointError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"inspect_checkpoint.py: error: {exc}", file=sys.stderr)
        return 2
    if args.json and args.summary:
        report = {k: v for k, v in report.items() if k != "tensors"}
    text = json.dumps(report, indent=2, sort_keys=True) if args.json else render_table(report, tensors=not args.summary)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
