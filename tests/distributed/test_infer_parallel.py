"""infer.engine across ranks (gloo): a ParallelPlan's chunks loaded per rank, forwards through the pipeline
stages with the EP all-to-all, results shared from the last stage. pp2 x ep2 on 4 ranks against one rank
on a tiny DeepSeek-V3 (MLA + MoE): candidate probabilities, greedy tokens (ragged prompt lengths, batched),
seeded sampling, per-row stops, the latent cache, ``EngineScorer``; pp2 (and tp2) on a tiny Llama."""

import pytest
import torch

from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed

LENGTHS = (4, 7, 4, 9, 7)  # ragged: two length-4 rows, two length-7 rows, one alone (batch_size 2)
NEW = 6
CANDS = [[3], [11], [17, 42, 5], [8, 9]]  # single- and multi-token candidates
PROB_TOL = 1e-5
LOGPROB_TOL = 1e-5


def _prompts(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _rows(gens):
    return [(g.output_ids, g.logprobs, g.finish_reason) for g in gens]


def _run(model_dir: str, tp: int, pp: int, ep: int, latent: bool, scorer: bool):
    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.engine import Engine, SamplingParams
    from megatron_ads.infer.parallel import ParallelContext
    from megatron_ads.infer.scorer import EngineScorer
    from megatron_ads.infer.weights import load_for_inference

    model, cfg, tok = load_for_inference(model_dir, precision="fp32", par=ParallelConfig(tp=tp, pp=pp, ep=ep))
    parallel = ParallelContext.from_megatron()
    eng = Engine(model, cfg, batch_size=4, tokenizer=tok, parallel=parallel)  # generation: 3 length groups
    prompts = _prompts(cfg.vocab_size, LENGTHS)
    out = {"parallel": (parallel.tp, parallel.pp, parallel.ep, parallel.dp, parallel.pp_rank, parallel.src_rank)}
    out["probs"] = eng.score_candidates(_prompts(cfg.vocab_size, (5, 3, 8), seed=1), CANDS)
    greedy = eng.generate(prompts, SamplingParams(max_new_tokens=NEW))
    out["greedy"] = _rows(greedy)
    out["sampled"] = _rows(eng.generate(prompts[:3], SamplingParams(max_new_tokens=NEW, temperature=1.0, top_p=0.9,
                                                                    seed=123)))
    stop = greedy[0].output_ids[2]  # the same on every rank: row 0 stops early, row 2 (same batch) runs on
    out["stopped"] = _rows(eng.generate(prompts[:3:2], SamplingParams(max_new_tokens=NEW, stop_ids={stop})))
    if latent:
        lat = Engine(model, cfg, batch_size=4, cache="latent", parallel=parallel)
        out["latent"] = _rows(lat.generate(prompts[:3], SamplingParams(max_new_tokens=NEW)))
        out["latent_probs"] = lat.score_candidates(_prompts(cfg.vocab_size, (5, 3, 8), seed=1), CANDS)  # shared prefix
    if scorer:
        sc = EngineScorer(eng, tok)
        out["scorer_score"] = sc.score(["the ad", "the ad", "buy now"], [" yes", " no", " yes"])
        out["scorer_generate"] = sc.generate(["the ad"], 3)
    return out


def _compare(multi: dict, single: dict, latent: bool):
    worst = max(abs(a - b) for key in ("probs",) + (("latent_probs",) if latent else ())
                for ra, rb in zip(multi[key], single[key]) for a, b in zip(ra, rb))
    assert worst <= PROB_TOL, worst
    if latent:  # the shared-prefix path (latent cache) scores as the full-prefill path (static)
        assert max(abs(a - b) for ra, rb in zip(multi["latent_probs"], single["probs"])
                   for a, b in zip(ra, rb)) <= PROB_TOL
    lp_worst = 0.0
    for key in ("greedy", "sampled", "stopped") + (("latent",) if latent else ()):
        for (ids, lps, fin), (ids1, lps1, fin1) in zip(multi[key], single[key]):
            assert ids == ids1 and fin == fin1, key
            lp_worst = max([lp_worst] + [abs(a - b) for a, b in zip(lps, lps1)])
    assert lp_worst <= LOGPROB_TOL, lp_worst
    return worst, lp_worst


def _same_on_every_rank(results: list[dict]):
    for r in results[1:]:
        assert {k: v for k, v in r.items() if k != "parallel"} == \
            {k: v for k, v in results[0].items() if k != "parallel"}


@pytest.mark.slow  # 45-90 s on 2 busy cores: a 1-rank and a 4-rank launch, six passes each
def test_deepseek_pp2_ep2_matches_one_rank(tiny_ckpts):
    hf = str(tiny_ckpts("tiny_deepseek_v3"))
    single = spawn(_run, 1, hf, 1, 1, 1, True, True)[0]
    results = spawn(_run, 4, hf, 1, 2, 2, True, True)
    assert [r["parallel"] for r in results] == [(1, 2, 2, 2, 0, 3), (1, 2, 2, 2, 0, 3), (1, 2, 2, 2, 1, 3),
                                                (1, 2, 2, 2, 1, 3)]
    _same_on_every_rank(results)
    worst, lp_worst = _compare(results[0], single, latent=True)
    (ids0, _, fin0), (ids2, _, fin2) = results[0]["stopped"]
    assert fin0 == "stop" and len(ids0) <= 3 and ids0 == results[0]["greedy"][0][0][:len(ids0)]
    assert fin2 == "stop" or len(ids2) == NEW  # its own stop, or on to the end while row 0 was done
    assert results[0]["scorer_generate"] == single["scorer_generate"]
    assert max(abs(a - b) for a, b in zip(results[0]["scorer_score"], single["scorer_score"])) <= 1e-5
    print(f"pp2 x ep2 vs one rank: max |prob diff| {worst:.2e}, max |logprob diff| {lp_worst:.2e}")


@pytest.mark.parametrize("tp,pp", [(1, 2), (2, 2)])
def test_llama_pipeline_matches_one_rank(tp, pp, tiny_ckpts):
    hf = str(tiny_ckpts("tiny_llama"))
    single = spawn(_run, 1, hf, 1, 1, 1, False, False)[0]
    results = spawn(_run, tp * pp, hf, tp, pp, 1, False, False)
    _same_on_every_rank(results)
    worst, lp_worst = _compare(results[0], single, latent=False)
    print(f"tp{tp} x pp{pp} vs one rank: max |prob diff| {worst:.2e}, max |logprob diff| {lp_worst:.2e}")


def test_multi_rank_layout_in_one_process_is_refused(tiny_ckpts):
    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.weights import init_parallel

    with pytest.raises(ValueError, match="par: tp=1 pp=2 ep=2"):
        init_parallel(ParallelConfig(pp=2, ep=2))


def test_generate_cli_pp2_ep2_writes_the_rows_of_one_process(tiny_ckpts, tmp_path, capsys, single_rank_module):
    import json

    from megatron_ads.cli import main

    ckpt = str(tiny_ckpts("tiny_deepseek_v3"))
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "query: running shoes | ad:"}, {"id": 7, "input_ids": [5, 6, 7, 8]},
        {"id": "c", "input_ids": [9, 10]}, {"id": "d", "input_ids": [11, 12, 13, 14]}]))
    common = ["generate", "--model", ckpt, "--input", str(inp), "--max-new-tokens", "5", "--batch-size", "2",
              "--json"]
    assert main(common + ["--output", str(tmp_path / "multi.jsonl"), "--pp", "2", "--ep", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["pp"], summary["ep"], summary["ranks"]) == (2, 2, 4)
    assert main(common + ["--output", str(tmp_path / "one.jsonl")]) == 0  # this process, one rank
    multi = [json.loads(x) for x in (tmp_path / "multi.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    assert [r["id"] for r in multi] == ["a", 7, "c", "d"]
    for m, o in zip(multi, one):
        assert (m["output_ids"], m["finish_reason"], m.get("text")) == (o["output_ids"], o["finish_reason"], o.get("text"))
        assert max(abs(x - y) for x, y in zip(m["logprobs"], o["logprobs"])) <= LOGPROB_TOL
    assert main(common + ["--output", str(tmp_path / "bad.jsonl"), "--pp", "2", "--nproc", "3"]) == 2
