"""``megatron-ads generate --model DIR --input prompts.jsonl --output out.jsonl [--max-new-tokens N]
[--temperature T] [--top-k K] [--top-p P] [--seed S] [--batch-size B] [--cache static|latent] [--precision fp8|bf16|fp32]
[--tp T --pp P --ep E [--nproc N]] [--json]``

Plain completions with the KV-cache engine (``infer.engine``). One process by default; with a layout
(``--tp/--pp/--ep``) the model is split across ranks (each loads only its chunk; forwards run through the
pipeline stages, results are shared from the last stage, so every rank produces the same rows): alone,
the command starts ``--nproc`` gloo workers itself (default ``pp * lcm(tp, ep)``); under torchrun or srun
this process is one rank. Either way the input is read and checked before any model is loaded, and
only rank 0 writes the output and prints the summary. An input row is
``{"id", "prompt"}`` (needs a checkpoint with a tokenizer) or ``{"id", "input_ids": [...]}``; an output
row is ``{id, output_ids, text (when a tokenizer exists), finish_reason, logprobs}``, in input order,
written atomically. Rows stop at the tokenizer's ``eos_token_id`` (else config.json's) or after
``--max-new-tokens``; row i of the file samples with seed ``S + i``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch.distributed as dist

from megatron_ads.cli import emit
from megatron_ads.cli.engine_args import add_engine_args, read_layout
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.data.tokenizer import load_tokenizer
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.checkpoint.tokenizer_dir import find_tokenizer_dir
from megatron_ads.infer.weights import eos_ids, load_for_inference, read_model_config
from megatron_ads.runtime import launch
from megatron_ads.runtime.dist import read_env
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path, iter_jsonl
from megatron_ads.runtime.log import get_logger, progress

log = get_logger("megatron_ads.cli.generate")


def register(p) -> None:
    p.add_argument("--model", required=True,
                   help="HF checkpoint (BF16 or DeepSeek FP8) or Megatron checkpoint / training run directory")
    p.add_argument("--input", required=True,
                   help='prompts JSONL: {"id", "prompt"} or {"id", "input_ids": [...]} per line')
    p.add_argument("--output", required=True,
                   help="output JSONL: {id, output_ids, text, finish_reason, logprobs} per line")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="most generated tokens per row (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="row i samples with seed S + i (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="rows per forward (default: %(default)s)")
    add_engine_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def read_prompts(path: str | Path, has_tokenizer: bool) -> list[tuple[int, dict]]:
    """``(line, row)`` per input row, each with an ``id`` and exactly one of ``prompt`` (a string; needs a
    tokenizer) or ``input_ids`` (a non-empty list of ints). Raises BadInput naming FILE:LINE."""
    rows, seen = [], {}
    for n, row in iter_jsonl(path, required=("id",)):
        where = f"{path}:{n}"
        has_p, has_ids = "prompt" in row, "input_ids" in row
        if has_p == has_ids:
            raise BadInput(f"{where}: expected exactly one of 'prompt' or 'input_ids', got "
                           f"{'both' if has_p else 'neither'}")
        if has_p:
            if not isinstance(row["prompt"], str):
                raise BadInput(f"{where}: 'prompt' must be a string, got {type(row['prompt']).__name__}")
            if not has_tokenizer:
                raise BadInput(f"{where}: a 'prompt' row needs a tokenizer, and the checkpoint has none; "
                               f"give 'input_ids' instead")
        else:
            ids = row["input_ids"]
            if not isinstance(ids, list) or not ids or \
                    not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise BadInput(f"{where}: 'input_ids' must be a non-empty list of integers")
        key = json.dumps(row["id"], sort_keys=True)
        if key in seen:
            raise BadInput(f"{where}: id {row['id']!r} repeats line {seen[key]}")
        seen[key] = n
        rows.append((n, row))
    if not rows:
        raise BadInput(f"{path}: no rows")
    return rows


def encode_prompts(rows: list[tuple[int, dict]], tok, cfg, input_path, max_new_tokens: int) -> list[list[int]]:
    """The token ids of each row (``input_ids``, or the tokenized ``prompt``), checked against the model's
    vocab and max_position_embeddings. Raises BadInput naming FILE:LINE."""
    prompts = []
    for n, row in rows:
        ids = row["input_ids"] if "input_ids" in row else tok(row["prompt"])["input_ids"]
        bad = [t for t in ids if not 0 <= t < cfg.vocab_size]
        if bad:
            raise BadInput(f"{input_path}:{n}: input_ids {bad[:5]} outside [0, {cfg.vocab_size}) "
                           f"(the model's vocab_size)")
        if len(ids) + max_new_tokens > cfg.max_position_embeddings:
            raise BadInput(f"{input_path}:{n}: {len(ids)} prompt tokens + --max-new-tokens {max_new_tokens} "
                           f"exceed the model's max_position_embeddings {cfg.max_position_embeddings}")
        prompts.append(ids)
    return prompts


def generate_rank(model_dir: str, precision: str, par: ParallelConfig, prompts: list[list[int]],
                  params: SamplingParams, batch_size: int, cache: str) -> tuple[list[dict], float] | None:
    """This rank's part of a generate run: load its chunk for ``par``, generate every row. Rank 0 returns
    ``(rows, seconds)`` (``{output_ids, finish_reason, logprobs}`` per prompt); other ranks None."""
    model, cfg, tok = load_for_inference(model_dir, precision=precision, par=par)
    engine = Engine(model, cfg, batch_size=batch_size, tokenizer=tok, cache=cache)
    rank0 = not dist.is_initialized() or dist.get_rank() == 0
    start = time.perf_counter()
    if rank0:
        with progress(total=len(prompts), desc="generate", unit="row") as bar:
            gens = engine.generate(prompts, params, on_batch=bar.update)
    else:
        gens = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    if not rank0:
        return None
    return [{"output_ids": g.output_ids, "finish_reason": g.finish_reason, "logprobs": g.logprobs} for g in gens], \
        seconds


def _generate_worker(*args):
    return generate_rank(*args)


def run(args) -> int:
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)  # flag errors before any model is read
    if args.batch_size < 1:
        raise BadInput(f"--batch-size: expected >= 1, got {args.batch_size}")
    par, nproc = read_layout(args)
    rows = read_prompts(args.input, find_tokenizer_dir(args.model) is not None)
    cfg = read_model_config(args.model)
    tok_dir = find_tokenizer_dir(args.model)
    tok = load_tokenizer(tok_dir) if tok_dir is not None else None
    prompts = encode_prompts(rows, tok, cfg, args.input, params.max_new_tokens)
    params.stop_ids = eos_ids(cfg, tok)
    if not params.stop_ids:
        log.info("%s: no eos_token_id in the tokenizer or config.json: rows run to --max-new-tokens", args.model)
    job = (str(args.model), args.precision, par, prompts, params, args.batch_size, args.cache)
    if read_env().launcher == "single" and nproc > 1:
        done = launch.spawn(_generate_worker, nproc, *job)[0]
        ranks = nproc
    else:
        done = generate_rank(*job)  # one process, or this rank under torchrun / srun
        if done is None:
            return 0  # not rank 0: rank 0 writes the output
        ranks = dist.get_world_size() if dist.is_initialized() else 1
    gens, seconds = done
    with atomic_path(args.output) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for (_, row), g in zip(rows, gens):
            out = {"id": row["id"], **g}
            if tok is not None:
                out["text"] = tok.decode(g["output_ids"], skip_special_tokens=True)
            f.write(json.dumps(out, sort_keys=True) + "\n")
    tokens_out = sum(len(g["output_ids"]) for g in gens)
    result = {"rows": len(rows), "output": str(args.output), "model": str(args.model), "precision": args.precision,
              "tp": par.tp, "pp": par.pp, "ep": par.ep, "ranks": ranks,
              "tokens_in": sum(len(p) for p in prompts), "tokens_out": tokens_out,
              "finish_reasons": dict(Counter(g["finish_reason"] for g in gens)), "seconds": round(seconds, 3),
              "tokens_per_s": round(tokens_out / seconds, 1) if seconds > 0 else None}
    emit(result, args.json, lambda r: (f"generated {r['rows']} rows -> {r['output']}: {r['tokens_in']} tokens in, "
                                       f"{r['tokens_out']} out ({r['tokens_per_s']} tok/s), finish "
                                       f"{', '.join(f'{k} {v}' for k, v in sorted(r['finish_reasons'].items()))}"))
    return 0
