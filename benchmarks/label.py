"""Labeling throughput: label-only vs reasoning mode, our KV-cache generation vs transformers, MLA cache bytes.

    python benchmarks/label.py [--flavors tiny_deepseek_v3,tiny_llama] [--rows 8] [--new-tokens 64]
                               [--batch-size 4] [--repeat 2] [--json]

For each tiny flavor, a random-weight HF checkpoint (``megatron-ads init-model``) and synthetic query-ad
rows (``megatron-ads data synth``) in a temporary directory, then, all in one process and one run:

1. the label job (``infer.job.run_job``) in label mode (label-only prompt + candidate scoring) and in
   reasoning mode (greedy generation of at most ``--new-tokens`` tokens, parsed) on the same rows:
   samples/s of each and the ratio label / reasoning (paper: 2.3x; issue 13 target >= 10x). A random
   tiny model rarely emits EOS or the closing tag, so reasoning rows mostly run to the token limit: the
   average output tokens are printed with it.
2. greedy generation of ``--new-tokens`` tokens for ``--batch-size`` prompts of equal length:
   ``Engine.generate`` (megatron-core GPTModel, static KV cache) vs transformers ``generate`` on the
   same HF directory (float32, ``do_sample=False``, left padding + attention mask; the prompts are of
   equal length, as the engine batches only equal lengths, so no pad is used): new tokens/s and the
   ratio ours / transformers (target >= 1.0), and whether the greedy tokens agree for one unpadded row.
3. KV-cache values per token per layer for the real DeepSeek-V3 config: megatron-core's static MLA cache
   (per-head K and V: heads * (qk_head_dim + v_head_dim)) vs the compressed latent
   (kv_lora_rank + qk_rope_head_dim) - arithmetic from the config.

Each timing is the best of ``--repeat`` runs after one warm-up run. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from megatron_ads.cli import main as cli_main
from megatron_ads.config.flavors import flavor
from megatron_ads.data.tasks import task
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.job import LabelJob, run_job
from megatron_ads.infer.scorer import EngineScorer
from megatron_ads.infer.weights import eos_ids, load_for_inference


def quiet_cli(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        rc = cli_main(argv)
    if rc:
        raise SystemExit(f"megatron-ads {' '.join(argv)}: exit code {rc}")


def best_of(fn, repeat: int) -> tuple[float, object]:
    """One warm-up call, then the fastest of ``repeat`` timed calls: (seconds, last result)."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def label_modes(model_dir: Path, rows: Path, work: Path, args) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    model, cfg, tok = load_for_inference(model_dir, precision="fp32")
    scorer = EngineScorer(Engine(model, cfg, batch_size=args.batch_size, tokenizer=tok), tok, eos_ids(cfg, tok))
    out: dict = {}
    for mode in ("label", "reasoning"):
        n = [0]

        def once(mode=mode, n=n):
            n[0] += 1
            job = LabelJob(input=rows, output=work / f"{mode}-{n[0]}.jsonl", task=task("query_ad"), mode=mode,
                           batch_size=args.batch_size, max_new_tokens=args.new_tokens, model=str(model_dir))
            return run_job(job, scorer)

        once()  # warm-up
        runs = [once() for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r.seconds)
        c = best.cost()
        out[mode] = {"samples_per_s": best.labeled / best.seconds, "seconds": best.seconds, "rows": best.labeled,
                     "avg_input_tokens": c["avg_input_tokens"], "avg_output_tokens": c["avg_output_tokens"],
                     "parse_failed": best.parse_failed}
    out["ratio_label_over_reasoning"] = out["label"]["samples_per_s"] / out["reasoning"]["samples_per_s"]
    return out


def generation(model_dir: Path, args) -> dict:
    from transformers import AutoModelForCausalLM

    model, cfg, _ = load_for_inference(model_dir, precision="fp32")
    engine = Engine(model, cfg, batch_size=args.batch_size)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    plen = args.prompt_len
    prompts = torch.randint(3, cfg.vocab_size, (args.batch_size, plen), generator=g).tolist()
    n_new = args.new_tokens
    params = SamplingParams(max_new_tokens=n_new)  # greedy, no stop ids: every row runs n_new tokens

    def ours():
        return engine.generate(prompts, params)

    pad = 0

    @torch.inference_mode()
    def theirs(batch=prompts):
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new,
                           do_sample=False, pad_token_id=pad, eos_token_id=None)

    t_ours, gens = best_of(ours, args.repeat)
    t_hf, _ = best_of(theirs, args.repeat)
    tokens = args.batch_size * n_new
    one_ours = engine.generate(prompts[:1], params)[0].output_ids
    one_hf = theirs(prompts[:1])[0, plen:].tolist()
    return {"batch": args.batch_size, "prompt_len": plen, "new_tokens": n_new,
            "ours_tokens_per_s": tokens / t_ours, "transformers_tokens_per_s": tokens / t_hf,
            "ratio_ours_over_transformers": t_hf / t_ours,
            "ours_tokens_generated": sum(len(x.output_ids) for x in gens),
            "greedy_identical_single_row": one_ours == one_hf}


def cache_bytes() -> dict:
    c = flavor("deepseek_v3")
    qk_head = c.qk_nope_head_dim + c.qk_rope_head_dim
    static = c.num_attention_heads * (qk_head + c.v_head_dim)
    latent = c.kv_lora_rank + c.qk_rope_head_dim
    return {"num_heads": c.num_attention_heads, "qk_head_dim": qk_head, "v_head_dim": c.v_head_dim,
            "kv_lora_rank": c.kv_lora_rank, "qk_rope_head_dim": c.qk_rope_head_dim, "layers": c.num_layers,
            "static_values_per_token_layer": static, "latent_values_per_token_layer": latent,
            "static_bf16_bytes_per_token_layer": 2 * static, "latent_bf16_bytes_per_token_layer": 2 * latent,
            "ratio_static_over_latent": static / latent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavors", default="tiny_deepseek_v3,tiny_llama", help="comma-separated tiny flavors")
    ap.add_argument("--rows", type=int, default=8, help="synthetic query_ad rows for the label job")
    ap.add_argument("--new-tokens", type=int, default=64,
                    help="reasoning max new tokens, and new tokens in the generation comparison")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=64, help="prompt tokens in the generation comparison")
    ap.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up; the best is kept")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    work = Path(tempfile.mkdtemp(prefix="megatron_ads_bench_label_"))
    results: dict = {"args": vars(args), "torch_threads": torch.get_num_threads(), "flavors": {}}
    try:
        rows = work / "rows.jsonl"
        quiet_cli(["data", "synth", "--task", "query_ad", "--n", str(args.rows), "--out", str(rows)])
        for name in args.flavors.split(","):
            d = work / name
            quiet_cli(["init-model", "--flavor", name, "--out", str(d)])
            r = {"label_job": label_modes(d, rows, work / f"{name}-out", args)}
            r["generation"] = generation(d, args)
            results["flavors"][name] = r
            if not args.json:
                lj, gen = r["label_job"], r["generation"]
                print(f"== {name} (fp32, {results['torch_threads']} torch threads, best of {args.repeat})")
                print("| measure | value |\n|---|---|")
                for mode in ("label", "reasoning"):
                    m = lj[mode]
                    print(f"| {mode} mode samples/s ({m['rows']} rows, avg in/out tokens "
                          f"{m['avg_input_tokens']}/{m['avg_output_tokens']}) | {m['samples_per_s']:.2f} |")
                print(f"| **ratio label / reasoning** | **{lj['ratio_label_over_reasoning']:.1f}** |")
                print(f"| ours generate tokens/s (batch {gen['batch']}, prompt {gen['prompt_len']}, "
                      f"{gen['new_tokens']} new) | {gen['ours_tokens_per_s']:.0f} |")
                print(f"| transformers generate tokens/s (same) | {gen['transformers_tokens_per_s']:.0f} |")
                print(f"| **ratio ours / transformers** | **{gen['ratio_ours_over_transformers']:.2f}** |")
                print(f"| greedy tokens identical, single unpadded row | {gen['greedy_identical_single_row']} |")
        results["cache"] = cb = cache_bytes()
        if not args.json:
            print("== DeepSeek-V3 KV cache per token per layer (config arithmetic)")
            print(f"static megatron MLA cache: {cb['num_heads']}*({cb['qk_head_dim']}+{cb['v_head_dim']}) = "
                  f"{cb['static_values_per_token_layer']} values ({cb['static_bf16_bytes_per_token_layer']} B bf16)")
            print(f"latent cache: {cb['kv_lora_rank']}+{cb['qk_rope_head_dim']} = "
                  f"{cb['latent_values_per_token_layer']} values ({cb['latent_bf16_bytes_per_token_layer']} B bf16)")
            print(f"ratio static / latent: {cb['ratio_static_over_latent']:.1f}")
        else:
            print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
