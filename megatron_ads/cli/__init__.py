"""``megatron-ads`` console script: a verb table of thin commands.

Exit codes: 0 ok, 2 bad input (named file/field), 1 failure. ``--json`` prints JSON to stdout; logs go
to stderr (``--log-level``, rank 0 by default).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
from typing import Callable, Iterator

from megatron_ads.runtime import log as logs
from megatron_ads.runtime.errors import BAD_INPUT, Failure

log = logs.get_logger("megatron_ads.cli")


class CommandFailed(Failure):
    """The command ran but its check failed (exit code 1)."""


VERBS: dict[str, tuple[str, str]] = {
    "eval": ("megatron_ads.cli.eval", "score labeling predictions with the paper's metric suite"),
    "train": ("megatron_ads.cli.train", "train on megatron-core (lm | sft): 1F1B pipeline x EP x DP"),
    "convert": ("megatron_ads.cli.convert", "convert checkpoints: hf-to-mcore, mcore-to-hf, reshard"),
    "plan": ("megatron_ads.cli.plan", "choose a PP/EP/DP/TP layout with per-rank memory and traffic"),
    "init-model": ("megatron_ads.cli.init_model", "write a random-weight HF checkpoint of a named flavor"),
    "verify": ("megatron_ads.cli.verify", "verify parity (HF vs megatron-core) or compare checkpoints"),
    "data": ("megatron_ads.cli.data", "write a task's synthetic rows (data synth)"),
    "demo": ("megatron_ads.cli.demo", "end-to-end pipeline on the CPU default"),
    "generate": ("megatron_ads.cli.generate", "plain completions from a JSONL of prompts (KV-cache engine)"),
    "label": ("megatron_ads.cli.label", "label a task's rows: label-only scoring or reasoning, resumable, cost report"),
    "quantize": ("megatron_ads.cli.quantize", "per-tensor FP8 PTQ with nvidia-modelopt, calibrated on task rows"),
    "cook": ("megatron_ads.cli.cook", "cook labeled raw rows into the reasoning-augmented SFT corpus: teacher "
             "reasoning, golden-set prompt validation, rejection sampling, verifier, splits"),
    "autoeval": ("megatron_ads.cli.autoeval", "MarketingFM AutoEval: rule checks + 0-5 LLM judge, human agreement, "
                 "threshold sweep, review sampling, refinement"),
    "rewrite": ("megatron_ads.cli.rewrite", "MarketingFM rewrite chain: 12 headlines + 3 descriptions per keyword"),
}
"""The verb table (data): name -> (module with ``register(parser)``, help). Only the verb being run is
imported: the verbs pull in megatron-core and transformers (seconds of imports), and they import this
module (``emit``), so they are loaded by name, after ``main()`` installed the warning filters."""


def _verb_of(argv: list[str]) -> str | None:
    """The verb named on the command line (the first argument that is one), or None (``--help``)."""
    return next((a for a in argv if a in VERBS), None)


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


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the options of ``verbs`` (default: every verb; the others are listed by name)."""
    parser = argparse.ArgumentParser(prog="megatron-ads", description=__doc__.splitlines()[0].replace("``", ""),
                                     parents=[_common("info")])
    sub = parser.add_subparsers(dest="verb", required=True)
    for name, (module, help_text) in VERBS.items():
        verb = sub.add_parser(name, help=help_text, description=help_text, parents=[_common(None)])
        if verbs is not None and name not in verbs:
            continue
        importlib.import_module(module).register(verb)
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
    argv = sys.argv[1:] if argv is None else list(argv)
    verb = _verb_of(argv)
    parser = build_parser([verb] if verb else [])
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
    except BrokenPipeError:  # stdout closed early (`| head`): not an error of the command
        sys.stdout = open(os.devnull, "w")
        return 0
    except Failure as exc:  # CommandFailed, WorkerError, CollectiveTimeout, TrainingAborted, ...
        log.error("%s: FAILED: %s", args.verb, getattr(exc, "brief", exc))
        if hasattr(exc, "brief"):
            log.debug("%s", exc)  # the workers' tracebacks
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
