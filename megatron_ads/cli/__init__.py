"""``megatron-ads`` console script: a verb table of thin commands.

Exit codes: 0 ok, 2 bad input (named file/field), 1 failure. ``--json`` prints JSON to stdout; logs go
to stderr (``--log-level``, rank 0 by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Callable, Iterator

from megatron_ads.runtime import log as logs
from megatron_ads.runtime.errors import BAD_INPUT, Failure

log = logs.get_logger("megatron_ads.cli")


class CommandFailed(Failure):
    """The command ran but its check failed (exit code 1)."""


def _verbs() -> dict[str, tuple[str, Callable]]:
    # imported when the parser is built, after main() installed the warning filters: the verbs pull in
    # megatron-core and transformers (heavy; megatron-core warns at import), and they import this module
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


def _common(default: str | None) -> argparse.ArgumentParser:
    """Options every verb takes, before or after the verb: the top parser holds the default, the verbs'
    copies suppress theirs (a subparser default would overwrite a value given before the verb)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", choices=logs.LEVELS, default=default if default else argparse.SUPPRESS,
                   help="console log level (rank 0; other ranks show warnings and errors; default info)")
    return p


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers of a verb's own sub-commands (``verify parity``, ``convert hf-to-mcore``), at any depth."""
    found = []
    for action in parser._actions:  # argparse keeps no public list of them
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                found += [p, *_subparsers(p)]
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-ads", description=__doc__.splitlines()[0].replace("``", ""),
                                     parents=[_common("info")])
    sub = parser.add_subparsers(dest="verb", required=True)
    for name, (help_text, register) in _verbs().items():
        verb = sub.add_parser(name, help=help_text, description=help_text, parents=[_common(None)])
        register(verb)
        for nested in _subparsers(verb):  # the common options after a sub-command too
            for action in _common(None)._actions:
                nested._add_action(action)
    return parser


def emit(result: dict, as_json: bool, human: Callable[[dict], str]) -> None:
    """Print ``result`` as JSON (stdout) or as the human rendering: what the user asked for."""
    print(json.dumps(result, indent=2, sort_keys=True) if as_json else human(result))


@contextlib.contextmanager
def _logging_env(level: str, json_mode: bool) -> Iterator[None]:
    """The level and ``--json`` for worker processes started by this command (``runtime.launch``)."""
    saved = {k: os.environ.get(k) for k in (logs.LEVEL_ENV, logs.JSON_ENV)}
    logs.export_env(level, json_mode, environ=os.environ)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: list[str] | None = None) -> int:
    logs.quiet_third_party()  # before the verbs import megatron-core
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # key=value overrides may follow options (argparse binds positionals before --config otherwise)
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    json_mode = bool(getattr(args, "json", False))
    logs.setup(args.log_level, json_mode=json_mode)
    try:
        with _logging_env(args.log_level, json_mode):
            return int(args.func(args) or 0)
    except BAD_INPUT as exc:  # BadInput and its layers' subclasses, config validation's ValueError/...
        log.error("%s: %s", args.verb, exc)
        return 2
    except Failure as exc:  # CommandFailed, WorkerError, CollectiveTimeout, TrainingAborted, ...
        log.error("%s: FAILED: %s", args.verb, getattr(exc, "brief", exc))
        if hasattr(exc, "brief"):
            log.debug("%s", exc)  # the workers' tracebacks
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
