"""``megatron-ads rewrite --input keywords.jsonl --model DIR --output out.jsonl [--judge DIR] [--resume]
[--batch-size B] [--max-new-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S] [--precision P]
[--cache C] [--json] [key=value ...]``

MarketingFM's rewrite chain (§3.2, §6.1; ``rewards.rewrite_chain``): per keyword, 12 headlines and 3
descriptions within the limits and passing AutoEval's rules, from our inference engine in few calls — call 1
asks for 2x the needed count, one rewrite call shortens the items that failed only on length, later calls
(up to ``max_rounds`` in all) refill what is missing.

- Input rows ``{id, keyword[, context]}`` (``context``: product text put before every prompt). Every malformed
  line is listed (file:line: field) and nothing runs (exit 2).
- ``key=value`` overrides set ``RewriteChainConfig`` fields (``n_headlines=12 n_descriptions=3 oversample=2
  headline_max=30 description_max=90 max_rounds=4 require_cta=true relevance_min=4 diversity_threshold=0.5``).
- The generator is ``--model`` on the KV-cache engine, sampling (``--temperature``, ``--top-p``, ``--top-k``)
  with one seed per (``--seed``, row id, call, kind): a keyword's items do not depend on which keywords share
  its batch, and a rerun gives the same rows. ``--batch-size B`` keywords run in lockstep (their prompts share
  the engine's forwards, 2B rows each); their rows are appended and fsynced together.
- ``--judge DIR`` (optional): a checkpoint scoring each headline's relevance 0–5 by label scoring (the
  ``ad_judge`` task, expected score, ``data.judge``); headlines below ``relevance_min`` are dropped (§6.1).
- Output rows ``{id, keyword, headlines: [12], descriptions: [3], calls, dropped: {rule: n}}`` (``calls``: the
  generator calls the keyword took; ``dropped``: rejected items per rule, ``rewards.rewrite_chain.DROP_RULES``).
  An existing output needs ``--resume``: the ids already in it are skipped (a torn last line is cut off and
  redone, ``infer.job.done_ids``); the settings are not checked against the earlier run.
- A keyword still short after ``max_rounds`` calls (or whose prompt does not fit the model) gets no output row:
  its record ``{id, line, keyword, error, missing, calls, dropped}`` goes to ``OUT.errors.jsonl`` (rewritten by
  every run; removed when no keyword failed), the other keywords are written, and the command exits 1 naming
  the keyword and the shortfall. ``--resume`` (e.g. with a larger ``max_rounds``) retries only those.

Exit codes: 0 every keyword done; 1 a keyword fell short (its record in OUT.errors.jsonl); 2 bad input (flags,
overrides, malformed lines, an existing output without --resume, a checkpoint without a tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable

from megatron_ads.cli import CommandFailed, emit
from megatron_ads.cli.engine_args import add_engine_args, read_layout
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.data.judge import judge as judge_ads
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.job import done_ids
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.infer.weights import eos_ids, load_for_inference
from megatron_ads.rewards.rewrite_chain import DROP_RULES, RewriteChain, RewriteChainConfig, RewriteChainError
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl, row_id_problems, write_jsonl
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.rewrite")

ERRORS_SUFFIX = ".errors.jsonl"


def register(p) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("output rows: {id, keyword, headlines, descriptions, calls, dropped: {rule: n}}\n"
                f"drop rules: {', '.join(DROP_RULES)}\n"
                "exit codes: 0 ok; 1 a keyword fell short after max_rounds calls (record in OUT.errors.jsonl);\n"
                "2 bad input (flags, overrides, malformed lines naming file:line and field, existing output\n"
                "without --resume)")
    p.add_argument("--input", required=True, help="keywords JSONL: {id, keyword[, context]}")
    p.add_argument("--model", required=True, help="generator checkpoint (HF or Megatron, with a tokenizer)")
    p.add_argument("--output", required=True,
                   help="output JSONL {id, keyword, headlines, descriptions, calls, dropped} (appended per batch)")
    p.add_argument("--judge", default=None, metavar="DIR",
                   help="relevance judge checkpoint (0-5 by label scoring); headlines below relevance_min drop")
    p.add_argument("--resume", action="store_true", help="skip the ids already in --output")
    p.add_argument("--batch-size", type=int, default=8,
                   help="keywords run together and written per flush (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=384,
                   help="most generated tokens per prompt (a prompt asks for up to 24 items; default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default: %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; each (row id, call, kind) samples with its own seed (default: %(default)s)")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("overrides", nargs="*",
                   help="RewriteChainConfig key=value overrides, e.g. max_rounds=6 require_cta=false")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------ inputs
def read_keywords(path: str | Path) -> list[tuple[int, dict]]:
    """``(line, row)`` of each input row; every malformed line is reported (file:line: field) in one BadInput."""
    rows, problems, seen = [], [], {}

    def bad(n: int, message: str) -> None:
        problems.append(message)

    for n, row in iter_jsonl(path, on_error=bad):
        p = row_id_problems(row, n, seen) + (["field 'keyword': missing"] if "keyword" not in row else [])
        if "keyword" in row and not (isinstance(row["keyword"], str) and row["keyword"].strip()):
            p.append(f"field 'keyword': expected a non-empty string, got {row['keyword']!r}")
        if row.get("context") is not None and not isinstance(row["context"], str):
            p.append(f"field 'context': expected a string, got {row['context']!r}")
        problems += [f"{path}:{n}: {x}" for x in p]
        rows.append((n, row))
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        raise BadInput(f"{len(problems)} invalid line(s) in {path}{more}; expected {{id, keyword[, context]}}:\n"
                       + "\n".join(problems[:20]))
    if not rows:
        raise BadInput(f"{path}: no keywords (expected one {{id, keyword[, context]}} object per line)")
    return rows


def _check_flags(args) -> tuple[RewriteChainConfig, SamplingParams]:
    try:
        cfg = RewriteChainConfig.load(args.overrides)
    except ValueError as exc:
        raise BadInput(f"overrides: {exc}") from None
    try:
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p)
    except ValueError as exc:
        name, _, rest = str(exc).partition(":")
        raise BadInput(f"--{name.replace('_', '-')}:{rest}") from None  # "--top-p: expected 0 < top_p <= 1 ..."
    if args.batch_size < 1:
        raise BadInput(f"--batch-size: expected >= 1, got {args.batch_size}")
    par, _ = read_layout(args)
    if (par.tp, par.pp, par.ep) != (1, 1, 1) or args.nproc is not None:
        raise BadInput(f"--tp/--pp/--ep/--nproc: rewrite runs the generator in one process (got tp {par.tp}, pp "
                       f"{par.pp}, ep {par.ep})")
    out = Path(args.output).resolve()
    if out == Path(args.input).resolve():
        raise BadInput(f"--output {args.output}: the same file as --input; it would be appended to")
    return cfg, params


# ------------------------------------------------------------------------------------ the engine side
def row_seed(base: int, rid: Any, call: int, kind: str) -> int:
    """The sampling seed of one prompt: a stable hash of (base seed, row id, call number, kind)."""
    return zlib.crc32(f"{base}:{json.dumps(rid)}:{call}:{kind}".encode())


class EngineGenerator:
    """The chain's generator on the inference engine: seeded sampling per prompt, EOS stop, decoded text."""

    def __init__(self, engine: Engine, tokenizer: Any, stop_ids: set[int], params: SamplingParams):
        self.engine, self.tokenizer, self.stop_ids, self.params = engine, tokenizer, set(stop_ids), params
        self.limit = engine.cfg.max_position_embeddings

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[str]:
        p = self.params
        params = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, top_k=p.top_k,
                                top_p=p.top_p, seeds=seeds, stop_ids=self.stop_ids)
        gens = self.engine.generate(prompt_ids, params)
        return [self.tokenizer.decode([t for t in g.output_ids if t not in self.stop_ids], skip_special_tokens=True)
                for g in gens]


def load_generator(model: str, precision: str, cache: str, batch_size: int, params: SamplingParams
                   ) -> EngineGenerator:
    m, mcfg, tok = load_for_inference(model, precision=precision, par=ParallelConfig())
    if tok is None:
        raise BadInput(f"--model {model}: the checkpoint has no tokenizer; rewrite needs one for its prompts")
    return EngineGenerator(Engine(m, mcfg, batch_size=batch_size, tokenizer=tok, cache=cache), tok,
                           eos_ids(mcfg, tok), params)


def load_judge(path: str, precision: str, cache: str, batch_size: int) -> Callable[[str, str], float]:
    """``judge(keyword, headline) -> expected relevance 0–5`` on the checkpoint in ``path`` (memoized)."""
    m, mcfg, tok = load_for_inference(path, precision=precision, par=ParallelConfig())
    if tok is None:
        raise BadInput(f"--judge {path}: the checkpoint has no tokenizer; the judge needs one for its prompts")
    scorer = EngineScorer(Engine(m, mcfg, batch_size=batch_size, tokenizer=tok, cache=cache), tok, eos_ids(mcfg, tok))
    memo: dict[tuple[str, str], float] = {}

    def judge(keyword: str, headline: str) -> float:
        key = (keyword, headline)
        if key not in memo:
            ad = {"keyword": keyword, "headline": headline, "description": ""}
            memo[key] = float(judge_ads([ad], scorer, ("relevance",))[0]["scores"]["relevance"])
        return memo[key]

    return judge


def run_chains(chains: list[RewriteChain], ids: list[Any], gen: EngineGenerator, seed: int) -> dict[int, str]:
    """Drive ``chains`` in lockstep: each step, the pending prompts of every unfinished chain in one engine call
    (seeded by ``row_seed``). Returns ``{chain index: message}`` for chains stopped because a prompt plus
    ``max_new_tokens`` does not fit the model."""
    broken: dict[int, str] = {}
    while True:
        prompt_ids, seeds, owners = [], [], []
        for i, chain in enumerate(chains):
            if i in broken or (prompts := chain.prompts()) is None:
                continue
            encoded = [gen.encode(p) for p in prompts]
            longest = max(len(e) for e in encoded)
            if longest + gen.params.max_new_tokens > gen.limit:
                broken[i] = (f"keyword {chain.keyword!r}: a prompt of {longest} tokens + --max-new-tokens "
                             f"{gen.params.max_new_tokens} exceeds the model's max_position_embeddings {gen.limit} "
                             f"(call {len(chain.calls) + 1})")
                continue
            call = len(chain.calls) + 1
            prompt_ids += encoded
            seeds += [row_seed(seed, ids[i], call, kind) for kind in chain.pending.actions]
            owners.append((i, len(encoded)))
        if not owners:
            return broken
        texts = gen(prompt_ids, seeds)
        at = 0
        for i, k in owners:
            chains[i].feed(texts[at:at + k])
            at += k


# ------------------------------------------------------------------------------------ run
def run(args) -> int:
    cfg, params = _check_flags(args)
    t0 = time.perf_counter()
    rows = read_keywords(args.input)
    out = Path(args.output)
    errors_path = out.with_name(out.name + ERRORS_SUFFIX)
    if out.exists() and not args.resume:
        raise FileExistsError(f"{out}: output exists; pass --resume to continue it or remove it")
    done = done_ids(out) if out.exists() else set()
    pending = [(n, r) for n, r in rows if str(r["id"]) not in done]
    skipped = len(rows) - len(pending)
    result: dict[str, Any] = {"input": str(args.input), "output": str(out), "model": str(args.model),
                              "judge": str(args.judge) if args.judge else None, "rows": len(rows),
                              "skipped": skipped, "config": cfg.to_dict()}
    written, failures = 0, []
    calls: list[int] = []
    rewrite_calls = 0
    dropped = dict.fromkeys(DROP_RULES, 0)
    if pending:
        gen = load_generator(str(args.model), args.precision, args.cache, 2 * args.batch_size, params)
        judge = load_judge(str(args.judge), args.precision, args.cache, 8) if args.judge else None
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", encoding="utf-8") as f, \
                progress(total=len(pending), desc="rewrite", unit="keyword") as bar:
            for s in range(0, len(pending), args.batch_size):
                batch = pending[s:s + args.batch_size]
                chains = [RewriteChain(r["keyword"], cfg, context=r.get("context"), judge=judge) for _, r in batch]
                broken = run_chains(chains, [r["id"] for _, r in batch], gen, args.seed)
                lines = []
                for i, ((n, row), chain) in enumerate(zip(batch, chains)):
                    calls.append(len(chain.calls))
                    rewrite_calls += sum("rewrite" in c.actions.values() for c in chain.calls)
                    for c in chain.calls:
                        for k, v in c.dropped.items():
                            dropped[k] += v
                    rec = {"id": row["id"], "line": n, "keyword": row["keyword"]}
                    if i in broken:
                        failures.append({**rec, "error": broken[i], "missing": {k: chain.missing(k) for k in
                                                                                 ("headlines", "descriptions")},
                                         "calls": len(chain.calls)})
                        continue
                    try:
                        res = chain.result()
                    except RewriteChainError as exc:
                        failures.append({**rec, "error": str(exc), "missing": exc.missing, "calls": len(exc.calls),
                                         "dropped": exc.dropped})
                        continue
                    lines.append(json.dumps({"id": row["id"], "keyword": row["keyword"], "headlines": res.headlines,
                                             "descriptions": res.descriptions, "calls": res.n_calls,
                                             "dropped": res.dropped}) + "\n")
                f.write("".join(lines))
                f.flush()
                os.fsync(f.fileno())
                written += len(lines)
                bar.update(len(batch))
    if failures:
        write_jsonl(errors_path, failures)
    elif errors_path.exists():
        errors_path.unlink()
    seconds = time.perf_counter() - t0
    result.update(written=written, failed=len(failures), errors=str(errors_path) if failures else None,
                  calls=sum(calls), calls_per_keyword=round(sum(calls) / len(calls), 3) if calls else None,
                  rewrite_calls=rewrite_calls, dropped=dropped, seconds=round(seconds, 3),
                  keywords_per_s=round(len(calls) / seconds, 3) if calls and seconds > 0 else None)
    emit(result, args.json, _human)
    if failures:
        first = failures[0]
        raise CommandFailed(f"{len(failures)} of {len(pending)} keyword(s) fell short (first: line {first['line']}, "
                            f"id {first['id']!r}: {first['error']}); records in {errors_path}; the other rows are "
                            f"in {out}; rerun with --resume (e.g. with a larger max_rounds=) to retry them")
    return 0


def _human(r: dict) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in r["dropped"].items() if v) or "none"
    lines = [f"rewrite: {r['rows']} keywords ({r['skipped']} already done) -> {r['output']} in {r['seconds']} s",
             f"written {r['written']}, fell short {r['failed']}; generator calls {r['calls']} "
             f"({r['calls_per_keyword']} per keyword, {r['rewrite_calls']} rewrite calls); dropped: {drops}"]
    if r["errors"]:
        lines.append(f"short keywords: {r['errors']}")
    return "\n".join(lines)
