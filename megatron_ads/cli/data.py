"""``megatron-ads data synth --task TASK --n N --out rows.jsonl [--seed S]``: a task's rule-labeled synthetic
rows as a file (inputs and gold labels), to try ``train sft``, ``eval`` and labeling without data of one's own;
``--task general``: instruction rows with exact answers (``data.general``) for ``sft.general_path``."""

from __future__ import annotations

from pathlib import Path

from megatron_ads.cli import emit
from megatron_ads.data import general
from megatron_ads.data.synthetic import GENERATORS, SyntheticConfig, generate, write_jsonl
from megatron_ads.data.tasks import GENERAL
from megatron_ads.runtime import log as logs

log = logs.get_logger(__name__)


def register(p) -> None:
    sub = p.add_subparsers(dest="data_cmd", required=True)
    s = sub.add_parser("synth", help="write a task's synthetic rows (JSONL)",
                       description="write a task's rule-labeled synthetic rows (JSONL, inputs and gold labels)")
    s.add_argument("--task", required=True, choices=sorted([*GENERATORS, GENERAL.name]),
                   help="task whose generator to run (general: instruction rows with exact answers)")
    s.add_argument("--n", type=int, required=True, help="number of rows")
    s.add_argument("--out", required=True, help="output JSONL file (written atomically)")
    s.add_argument("--seed", type=int, default=0, help="generator seed (default: %(default)s)")
    s.add_argument("--match-rate", type=float, default=None,
                   help="share of ads drawn from the query's/user's category: the class balance")
    s.add_argument("--defect-rate", type=float, default=None, help="share of ads with a quality defect")
    s.add_argument("--label-noise", type=float, default=None, help="share of rows whose labels are randomized")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    s.set_defaults(func=run_synth)


def run_synth(args) -> int:
    if args.n < 1:
        raise ValueError(f"--n: expected a positive number of rows, got {args.n}")
    knobs = {k: getattr(args, k) for k in ("match_rate", "defect_rate", "label_noise") if getattr(args, k) is not None}
    for k, v in knobs.items():
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"--{k.replace('_', '-')}: expected a value in [0, 1], got {v}")
    if args.task == GENERAL.name:
        if knobs:
            raise ValueError(f"--{next(iter(knobs)).replace('_', '-')}: not a setting of the general corpus")
        rows = general.generate(args.n, args.seed)
    else:
        rows = generate(args.task, SyntheticConfig(size=args.n, seed=args.seed, **knobs))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(rows, out)
    emit({"task": args.task, "rows": len(rows), "seed": args.seed, "out": str(out)}, args.json,
         lambda r: f"wrote {r['rows']} {r['task']} rows (seed {r['seed']}) to {r['out']}")
    return 0
