"""``megatron-ads`` console script: a verb table of thin commands.

Exit codes: 0 ok, 2 bad input (named file/field), 1 failure. ``--json`` prints JSON to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from megatron_ads.checkpoint.hf_io import CheckpointError


class CommandFailed(RuntimeError):
    """The command ran but its check failed (exit code 1)."""


def _verbs() -> dict[str, tuple[str, Callable]]:
    from megatron_ads.cli import convert, demo, eval as eval_cli, init_model, plan, train, verify

    return {
        "eval": ("score labeling predictions with the paper's metric suite", eval_cli.register),
        "train": ("train on megatron-core: 1F1B pipeline x EP x DP (mode lm)", train.register),
        "convert": ("convert checkpoints: hf-to-mcore, mcore-to-hf, reshard", convert.register),
        "plan": ("choose a PP/EP/DP/TP layout with per-rank memory and traffic", plan.register),
        "init-model": ("write a random-weight HF checkpoint of a named flavor", init_model.register),
        "verify": ("verify parity (HF vs megatron-core) or compare checkpoints", verify.register),
        "demo": ("end-to-end pipeline on the CPU default", demo.register),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-ads", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for name, (help_text, register) in _verbs().items():
        register(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def emit(result: dict, as_json: bool, human: Callable[[dict], str]) -> None:
    """Print ``result`` as JSON (stdout) or as the human rendering."""
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else human(result))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options (argparse binds positionals before --config otherwise)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, CheckpointError) as exc:
        print(f"megatron-ads {args.verb}: error: {exc}", file=sys.stderr)
        return 2
    except CommandFailed as exc:
        print(f"megatron-ads {args.verb}: FAILED: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # named runtime failures (collective timeouts, aborted training, worker errors)
        if type(exc).__name__ not in ("CollectiveTimeout", "TrainingAborted", "WorkerError"):
            raise
        print(f"megatron-ads {args.verb}: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
