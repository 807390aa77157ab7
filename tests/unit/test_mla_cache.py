"""infer.cache: the absorbed MLA latent cache against megatron-core's static (non-absorbed) cache on tiny
real DeepSeek-V3 checkpoints (with and without q_lora): logits at prefill and decode steps (fp32),
greedy generation token for token (batched, ragged prompt lengths), and bytes per token."""

import pytest
import torch
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from megatron_ads.config.flavors import flavor
from megatron_ads.infer.cache import LatentCache, cache_bytes_per_token, cache_values_per_token
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
    assert all(type(layer.self_attention) is MLASelfAttention for layer in static.model.decoder.layers)


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
