"""infer.cache: the absorbed MLA latent cache against megatron-core's static (non-absorbed) cache on tiny
real DeepSeek-V3 checkpoints (with and without q_lora): logits at prefill and decode steps (fp32),
greedy generation token for token (batched, ragged prompt lengths: rows of different lengths in one
batch give what they give alone), and bytes per token; the per-row KV cache likewise on a tiny Llama."""

import pytest
import torch
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from megatron_ads.config.flavors import flavor
from megatron_ads.infer.cache import KVCache, LatentCache, cache_bytes_per_token, cache_values_per_token
from megatron_ads.infer.engine import Engine, SamplingParams
from megatron_ads.infer.weights import load_for_inference

LOGIT_TOL = 1e-5
LENGTHS = (4, 7, 4, 9, 7)
NEW = 6


pytestmark = pytest.mark.usefixtures("single_rank_module")


@pytest.fixture(scope="module")
def engines(hf_saved):
    cache = {}

    def get(name):
        if name not in cache:
            model, cfg, tok = load_for_inference(hf_saved(name), precision="fp32")
            cache[name] = (Engine(model, cfg, batch_size=2), Engine(model, cfg, batch_size=2, cache="latent"))
        return cache[name]

    return get


def _prompts(vocab, lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora"])
def test_latent_logits_equal_static_at_prefill_and_decode(name, engines):
    static, latent = engines(name)
    g = torch.Generator().manual_seed(1)
    b, plen, steps = 3, 7, 5
    prompt = torch.randint(0, static.cfg.vocab_size, (b, plen), generator=g)
    feeds = torch.randint(0, static.cfg.vocab_size, (steps, b, 1), generator=g)
    with torch.inference_mode():
        ctx = StaticInferenceContext(b, plen + steps)
        lat = LatentCache.allocate(latent.model, b, plen + steps)
        worst = (static._step(ctx, prompt) - latent._step(lat, prompt)).abs().max().item()
        assert worst <= LOGIT_TOL, f"prefill: {worst}"
        full = prompt
        for k in range(steps):
            a, c = static._step(ctx, feeds[k]), latent._step(lat, feeds[k])
            full = torch.cat([full, feeds[k]], dim=1)
            nocache = static._logits(full)[:, -1]  # no cache at all: full forward
            diff = max((a - c).abs().max().item(), (nocache - c).abs().max().item())
            assert diff <= LOGIT_TOL, f"decode step {k}: {diff}"
            worst = max(worst, diff)
    assert lat.sequence_len_offset == ctx.sequence_len_offset == plen + steps
    print(f"{name}: max |latent - static| logits {worst:.2e}")


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora"])
def test_latent_greedy_token_exact_with_static_batched_ragged(name, engines):
    static, latent = engines(name)
    prompts = _prompts(static.cfg.vocab_size)
    params = SamplingParams(max_new_tokens=NEW)
    a, c = static.generate(prompts, params), latent.generate(prompts, params)
    for x, y in zip(a, c):
        assert x.output_ids == y.output_ids
        assert x.finish_reason == y.finish_reason == "length"
        assert max(abs(u - v) for u, v in zip(x.logprobs, y.logprobs)) <= LOGIT_TOL
    for i in (1, 4):  # the two length-7 rows shared a batch: alone they give the same
        assert latent.generate([prompts[i]], params)[0].output_ids == c[i].output_ids
    # the model is left as it was: every layer has its own MLA attention back
    assert all(isinstance(layer.self_attention, MLASelfAttention) for layer in static.model.decoder.layers)


def test_latent_cache_is_71x_smaller_for_deepseek_v3():
    cfg = flavor("deepseek_v3")
    assert cache_values_per_token(cfg, "static") == 128 * (192 + 128) == 40_960
    assert cache_values_per_token(cfg, "latent") == 512 + 64 == 576
    assert cache_bytes_per_token(cfg, "static", torch.bfloat16) == 81_920
    assert cache_bytes_per_token(cfg, "latent", torch.bfloat16) == 1_152
    assert cache_bytes_per_token(cfg, "latent", torch.float32) == 2_304
    assert round(cache_bytes_per_token(cfg, "static") / cache_bytes_per_token(cfg, "latent")) == 71


def test_latent_allocated_bytes_and_errors(engines):
    static, latent = engines("ds_qlora")
    cfg = static.cfg
    lat = LatentCache.allocate(latent.model, 2, 10)
    assert lat.nbytes() == 2 * 10 * cfg.num_layers * cache_bytes_per_token(cfg, "latent", torch.float32)
    assert cache_values_per_token(cfg, "static") == cfg.num_attention_heads * (
        cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
    with pytest.raises(ValueError, match="cache"):
        Engine(static.model, cfg, cache="paged")
    llama = flavor("llama_1b")
    assert cache_values_per_token(llama, "static") == 2 * llama.num_key_value_heads * llama.kv_channels
    with pytest.raises(ValueError, match="MLA"):
        cache_values_per_token(llama, "latent")
    with pytest.raises(ValueError, match="MLA"):
        Engine(static.model, llama, cache="latent")
    with pytest.raises(ValueError, match="cache 'kv'"):
        Engine(static.model, cfg, cache="kv")  # MLA models use the latent cache
    assert cache_values_per_token(llama, "kv") == cache_values_per_token(llama, "static")


@pytest.mark.parametrize("name", ["llama_tied"])
def test_kv_cache_ragged_batch_equals_rows_alone(name, hf_saved):
    """The per-row KV cache (standard / GQA attention): a ragged batch gives, per row, the tokens of the row
    alone and of megatron's static cache, log-probs within fp32 rounding; bytes as megatron's."""
    model, cfg, _ = load_for_inference(hf_saved(name), precision="fp32")
    static, kv = Engine(model, cfg, batch_size=8), Engine(model, cfg, batch_size=8, cache="kv")
    prompts = _prompts(cfg.vocab_size, lengths=(4, 7, 1, 9, 7, 13))
    params = SamplingParams(max_new_tokens=NEW + 2)
    assert len(kv._batches(prompts)) == 1
    batched = kv.generate(prompts, params)
    worst = 0.0
    for p, b in zip(prompts, batched):
        alone, ref = kv.generate([p], params)[0], static.generate([p], params)[0]
        assert b.output_ids == alone.output_ids == ref.output_ids
        worst = max([worst] + [abs(x - y) for x, y in zip(b.logprobs, alone.logprobs)]
                    + [abs(x - y) for x, y in zip(b.logprobs, ref.logprobs)])
    assert worst <= LOGIT_TOL, worst
    cache = KVCache.allocate(model, 2, 10)
    assert cache.nbytes() == 2 * 10 * cfg.num_layers * cache_bytes_per_token(cfg, "kv", torch.float32)


@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora"])
def test_latent_ragged_batch_equals_rows_alone(name, engines):
    """Rows of different prompt lengths share one latent-cache batch (right-padded prefill, per-row decode
    positions and key masks): each row gives what it gives alone and what the static cache gives."""
    static, _ = engines(name)
    ragged = Engine(static.model, static.cfg, batch_size=8, cache="latent")
    prompts = _prompts(static.cfg.vocab_size, lengths=(4, 7, 1, 9, 7, 13))
    params = SamplingParams(max_new_tokens=NEW + 2)
    assert len(ragged._batches(prompts)) == 1  # one batch of six lengths
    batched = ragged.generate(prompts, params)
    worst = 0.0
    for p, b in zip(prompts, batched):
        alone, ref = ragged.generate([p], params)[0], static.generate([p], params)[0]
        assert b.output_ids == alone.output_ids == ref.output_ids
        assert b.finish_reason == "length" and len(b.logprobs) == NEW + 2
        worst = max([worst] + [abs(x - y) for x, y in zip(b.logprobs, alone.logprobs)]
                    + [abs(x - y) for x, y in zip(b.logprobs, ref.logprobs)])
    assert worst <= LOGIT_TOL, worst
    # stops per row in a ragged batch: row 1 stops at its stop id, the others run on
    stop = batched[1].output_ids[2]
    if all(stop not in g.output_ids for i, g in enumerate(batched) if i != 1):
        out = ragged.generate(prompts, SamplingParams(max_new_tokens=NEW + 2, stop_ids={stop}))
        cut = batched[1].output_ids.index(stop) + 1
        assert out[1].output_ids == batched[1].output_ids[:cut] and out[1].finish_reason == "stop"
        assert [g.output_ids for i, g in enumerate(out) if i != 1] == \
            [g.output_ids for i, g in enumerate(batched) if i != 1]


def test_select_rows_replicates_cache_rows(engines):
    """``RowCache.select_rows``: a new cache whose rows are copies of the chosen rows (buffers and per-row
    offsets); decoding from a replicated row gives the logits of decoding from the original."""
    _, latent = engines("ds_qlora")
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, latent.cfg.vocab_size, (2, 6), generator=g)
    with torch.inference_mode():
        lat = LatentCache.allocate(latent.model, 2, 8)
        latent._step(lat, prompt, [5, 3])  # ragged: row 1 is 4 tokens long
        rep = lat.select_rows(torch.tensor([1, 0, 1]))
        assert type(rep) is LatentCache and rep.row_offsets.tolist() == [4, 6, 4] and rep._twins == []
        assert torch.equal(rep.latent[0][0], lat.latent[0][1]) and torch.equal(rep.k_pe[-1][1], lat.k_pe[-1][0])
        feed = torch.tensor([[7], [9], [7]])
        a = latent._step(rep, feed)
        b = latent._step(lat, feed[:2].flip(0))  # row 0 fed 9, row 1 fed 7
        assert (a[0] - b[1]).abs().max().item() <= LOGIT_TOL and (a[1] - b[0]).abs().max().item() <= LOGIT_TOL
        assert torch.equal(a[0], a[2])
