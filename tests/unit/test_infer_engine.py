"""infer.engine on tiny real architectures (one process): greedy generation token for token against
transformers' ``generate``, label probabilities against transformers' candidate log-likelihoods,
seeded sampling, per-row stops, and loading from init-model / save_pretrained / Megatron checkpoints."""

import pytest
import torch

from megatron_ads.checkpoint.hf_io import HFCheckpoint, write_dequantized_copy
from megatron_ads.cli import main
from megatron_ads.infer.engine import Engine, SamplingParams, filter_logits
from megatron_ads.infer.weights import eos_ids, load_for_inference

LENGTHS = (4, 7, 4, 9, 7)  # ragged: two length-4 rows, two length-7 rows, one alone
NEW = 6
PROB_TOL = 1e-5
LOGPROB_TOL = 1e-5  # measured <= 9.6e-7


pytestmark = pytest.mark.usefixtures("single_rank_module")


def _prompts(vocab: int, lengths=LENGTHS, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _hf_model(path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None  # compare max_new_tokens tokens, whatever they are
    return model


def _hf_greedy(model, prompt, new=NEW):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    ids = out.sequences[0, len(prompt):].tolist()
    logp = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, ids)]
    return ids, logp


def _hf_loglik(model, prompt, cand):
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([prompt + cand])).logits[0].double(), -1)
    return sum(lp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cand))


@pytest.fixture(scope="module")
def engines(hf_saved):
    cache = {}

    def get(name):
        if name not in cache:
            path = hf_saved(name)
            model, cfg, tok = load_for_inference(path, precision="fp32")
            cache[name] = (Engine(model, cfg, batch_size=2, tokenizer=tok), _hf_model(path))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora", "llama_tied"])
def test_greedy_matches_transformers_batched_and_alone(name, engines):
    eng, ref = engines(name)
    prompts = _prompts(eng.cfg.vocab_size)
    params = SamplingParams(max_new_tokens=NEW)
    batched = eng.generate(prompts, params)  # batch_size 2: the two length-7 rows share a batch
    for p, b in zip(prompts, batched):
        alone = eng.generate([p], params)[0]
        hf_ids, hf_logp = _hf_greedy(ref, p)
        assert b.output_ids == alone.output_ids == hf_ids, name
        assert b.finish_reason == "length" and len(b.logprobs) == NEW
        assert max(abs(x - y) for x, y in zip(b.logprobs, hf_logp)) <= LOGPROB_TOL
        # tokens are exact; a different batch size may move a log-prob by an fp32 ulp (GEMM blocking)
        assert max(abs(x - y) for x, y in zip(b.logprobs, alone.logprobs)) <= 1e-5


@pytest.mark.parametrize("name,cache", [("ds_qlora", "latent"), ("ds_noqlora", "latent"), ("llama_tied", "kv")])
def test_our_caches_ragged_batch_matches_transformers(name, cache, engines):
    """Our caches batch rows of different prompt lengths together: each row's greedy tokens are
    transformers' for that row alone, log-probs within fp32 rounding."""
    eng, ref = engines(name)
    ours = Engine(eng.model, eng.cfg, batch_size=len(LENGTHS), cache=cache)
    prompts = _prompts(eng.cfg.vocab_size)
    assert len(ours._batches(prompts)) == 1  # one ragged batch
    for p, g in zip(prompts, ours.generate(prompts, SamplingParams(max_new_tokens=NEW))):
        hf_ids, hf_logp = _hf_greedy(ref, p)
        assert g.output_ids == hf_ids, name
        assert max(abs(x - y) for x, y in zip(g.logprobs, hf_logp)) <= LOGPROB_TOL


@pytest.mark.parametrize("name", ["ds_qlora", "llama_tied"])
def test_label_probabilities_match_transformers(name, engines):
    eng, ref = engines(name)
    prompts = _prompts(eng.cfg.vocab_size, lengths=(5, 3, 8))
    cands = [[3], [11], [17, 42, 5], [8, 9]]  # single- and multi-token candidates
    probs = eng.score_candidates(prompts, cands)
    worst = 0.0
    for p, row in zip(prompts, probs):
        ref_p = torch.tensor([_hf_loglik(ref, p, c) for c in cands], dtype=torch.float64).softmax(-1)
        worst = max(worst, (torch.tensor(row, dtype=torch.float64) - ref_p).abs().max().item())
        assert abs(sum(row) - 1.0) < 1e-9
    assert worst <= PROB_TOL, worst
    # the same rows one at a time: the same probabilities up to fp32 rounding of another batch shape
    alone = [eng.score_candidates([p], cands)[0] for p in prompts]
    assert max(abs(a - b) for ra, rb in zip(alone, probs) for a, b in zip(ra, rb)) <= 1e-6


@pytest.mark.parametrize("name,cache", [("ds_qlora", "latent"), ("ds_noqlora", "latent"), ("llama_tied", "kv")])
def test_shared_prefix_scoring_equals_full_prefill_and_transformers(name, cache, engines):
    """Our caches score candidates by prefilling each prompt once and feeding every multi-token candidate's
    tokens in one step over replicated cache rows: the same probabilities as the full-prefill path
    (static cache) and as transformers; ragged prompts, candidates of 1 to 5 tokens."""
    eng, ref = engines(name)
    shared = Engine(eng.model, eng.cfg, batch_size=3, cache=cache)
    prompts = _prompts(eng.cfg.vocab_size, lengths=(5, 3, 8, 12, 7), seed=2)  # two ragged batches of 3 rows
    cands = [[3], [17, 42, 5], [11], [8, 9], [4, 5, 6, 7, 8]]
    full = torch.tensor(eng.score_candidates(prompts, cands), dtype=torch.float64)
    ours = torch.tensor(shared.score_candidates(prompts, cands), dtype=torch.float64)
    assert (full - ours).abs().max().item() <= 1e-6
    assert torch.equal(full.argmax(-1), ours.argmax(-1))
    ref_p = torch.tensor([[_hf_loglik(ref, p, c) for c in cands] for p in prompts], dtype=torch.float64).softmax(-1)
    assert (ours - ref_p).abs().max().item() <= PROB_TOL
    # single-token candidates only: the prefill alone; one row alone: what it gives in a batch
    single = [[3], [11], [2]]
    assert (torch.tensor(shared.score_candidates(prompts, single), dtype=torch.float64)
            - torch.tensor(eng.score_candidates(prompts, single), dtype=torch.float64)).abs().max().item() <= 1e-6
    alone = torch.tensor(shared.score_candidates(prompts[3:4], cands), dtype=torch.float64)
    assert (alone - ours[3:4]).abs().max().item() <= 1e-6


def test_seeded_sampling(engines):
    eng, _ = engines("llama_tied")
    prompts = _prompts(eng.cfg.vocab_size, lengths=(5, 5, 8))
    params = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=123)
    first = eng.generate(prompts, params)
    again = eng.generate(prompts, params)
    assert [g.output_ids for g in first] == [g.output_ids for g in again]
    # row 0 keeps its sample alone and with other rows around it (its generator is seeded seed + 0)
    assert eng.generate(prompts[:1], params)[0].output_ids == first[0].output_ids
    other = eng.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=124))
    assert [g.output_ids for g in other] != [g.output_ids for g in first]
    greedy = eng.generate(prompts, SamplingParams(max_new_tokens=8))
    top1 = eng.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.7, top_k=1, seed=5))
    assert [g.output_ids for g in top1] == [g.output_ids for g in greedy]


def test_filter_logits_top_k_top_p():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top2 = filter_logits(logits, 2, 1.0)
    assert torch.isinf(top2[2:]).all() and torch.isfinite(top2[:2]).all()
    kept = torch.isfinite(filter_logits(logits, 0, 0.75))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.75
    assert torch.isfinite(filter_logits(logits, 0, 0.1)).tolist() == [True, False, False, False]


def test_per_row_stop(engines):
    eng, _ = engines("ds_qlora")
    prompts = _prompts(eng.cfg.vocab_size, lengths=(6, 6))
    free = eng.generate(prompts, SamplingParams(max_new_tokens=NEW))
    stop = free[0].output_ids[2]
    assert stop not in free[1].output_ids, "pick another prompt seed: the stop id occurs in both rows"
    out = eng.generate(prompts, SamplingParams(max_new_tokens=NEW, stop_ids={stop}))
    cut = free[0].output_ids.index(stop) + 1
    assert out[0].output_ids == free[0].output_ids[:cut] and out[0].finish_reason == "stop"
    assert out[0].logprobs == free[0].logprobs[:cut]
    assert out[1].output_ids == free[1].output_ids and out[1].finish_reason == "length"
    seq = free[1].output_ids[1:3]
    out = eng.generate(prompts, SamplingParams(max_new_tokens=NEW, stop_sequences=[seq]))
    assert out[1].output_ids == free[1].output_ids[:3] and out[1].finish_reason == "stop"
    assert out[0].output_ids == free[0].output_ids


def test_bad_params_and_ids_name_the_field(engines):
    eng, _ = engines("llama_tied")
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match=r"prompt_ids\[1\]"):
        eng.generate([[1, 2], [eng.cfg.vocab_size]], SamplingParams(max_new_tokens=2))
    with pytest.raises(ValueError, match=r"candidates\[0\]: empty"):
        eng.score_candidates([[1, 2]], [[]])


def test_fp8_checkpoint_dequantized_at_load(tiny_ckpts, tmp_path):
    fp8 = tiny_ckpts("tiny_deepseek_v3", fp8=True)
    model, cfg, tok = load_for_inference(fp8, precision="fp8")
    assert tok is not None and eos_ids(cfg, tok) == {tok.eos_token_id}
    assert next(model.parameters()).dtype == torch.bfloat16
    bf16 = write_dequantized_copy(HFCheckpoint(fp8), tmp_path / "bf16")  # DeepSeek's formula, as the load
    ref_model, ref_cfg, _ = load_for_inference(bf16, precision="bf16")
    prompts = _prompts(cfg.vocab_size, lengths=(5, 5, 3))
    params = SamplingParams(max_new_tokens=5)
    a = Engine(model, cfg).generate(prompts, params)
    b = Engine(ref_model, ref_cfg).generate(prompts, params)
    assert [g.output_ids for g in a] == [g.output_ids for g in b]


@pytest.mark.parametrize("fmt", ["legacy", "torch_dist"])
def test_megatron_checkpoint_generates_like_hf(fmt, tiny_ckpts, tmp_path):
    hf = tiny_ckpts("tiny_llama")
    out = tmp_path / "mcore"
    assert main(["convert", "hf-to-mcore", "--hf", str(hf), "--out", str(out), "--format", fmt, "--quiet"]) == 0
    model, cfg, tok = load_for_inference(out)
    assert tok is not None  # the converter copies the tokenizer to tokenizer/
    hf_model, hf_cfg, _ = load_for_inference(hf)
    prompts = _prompts(cfg.vocab_size, lengths=(4, 6))
    params = SamplingParams(max_new_tokens=5)
    assert [g.output_ids for g in Engine(model, cfg).generate(prompts, params)] == \
        [g.output_ids for g in Engine(hf_model, hf_cfg).generate(prompts, params)]


@pytest.mark.parametrize("source", ["ds_qlora:bf16", "ds_noqlora:bf16", "llama_tied:bf16", "init_fp8"])
def test_bf16_and_fp8_checkpoints_match_transformers(source, hf_saved, tiny_ckpts, tmp_path):
    """Peer check on BF16 checkpoints written by transformers' save_pretrained and an FP8 (DeepSeek block-scaled)
    checkpoint: the engine computing in fp32 from those weights vs transformers in fp32 from the same weights
    (for FP8: its dequantized copy, DeepSeek's formula): greedy tokens exact batched (ragged) and alone, label
    probabilities <= PROB_TOL."""
    if source == "init_fp8":
        path = tiny_ckpts("tiny_deepseek_v3", fp8=True)
        ref_path = write_dequantized_copy(HFCheckpoint(path), tmp_path / "dequantized")
    else:
        name, dtype = source.split(":")
        path = ref_path = hf_saved(name, dtype=dtype)
    model, cfg, _ = load_for_inference(path, precision="fp32")
    eng, ref = Engine(model, cfg, batch_size=2), _hf_model(ref_path)
    prompts = _prompts(cfg.vocab_size, lengths=(4, 7, 4, 7))
    batched = eng.generate(prompts, SamplingParams(max_new_tokens=NEW))
    for p, b in zip(prompts, batched):
        assert b.output_ids == eng.generate([p], SamplingParams(max_new_tokens=NEW))[0].output_ids
        assert b.output_ids == _hf_greedy(ref, p)[0], source
    cands = [[3], [11], [17, 42, 5]]
    probs = eng.score_candidates(prompts[:2], cands)
    for p, row in zip(prompts[:2], probs):
        ref_p = torch.tensor([_hf_loglik(ref, p, c) for c in cands], dtype=torch.float64).softmax(-1)
        assert (torch.tensor(row, dtype=torch.float64) - ref_p).abs().max().item() <= PROB_TOL, source
