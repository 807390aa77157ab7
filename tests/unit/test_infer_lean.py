"""infer.lean: the lean inference twins (eval-mode transformer layers, TP-1 linears, one-rank MoE layers,
sequential experts) give the same logits as megatron-core's own modules, bit for bit, on tiny real
architectures, and the model is left as it was."""

import pytest
import torch

from megatron_ads.infer.lean import _LeanLayer, _LeanLinear, _LeanMoE, lean, unwrap
from megatron_ads.infer.weights import load_for_inference

pytestmark = pytest.mark.usefixtures("single_rank_module")


@pytest.mark.parametrize("modules", ["twins", "megatron"])
@pytest.mark.parametrize("name", ["ds_qlora", "ds_noqlora", "llama_tied"])
def test_lean_logits_bit_identical_and_model_restored(name, modules, hf_saved, hf_chunk):
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

    from megatron_ads.model.linear import LOCAL_LINEARS

    if modules == "twins":  # as the engine loads it: the one-rank twins already are plain linears
        model, cfg, _ = load_for_inference(hf_saved(name), precision="fp32")
    else:
        model, cfg = hf_chunk(hf_saved(name), "megatron", "sequential")  # megatron's linears and dispatcher
    model.eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (3, 11), generator=g)
    pos = torch.arange(11).unsqueeze(0).expand(3, -1)
    before = [type(m) for m in model.modules()]
    with torch.inference_mode():
        ref = model(ids, pos, None)
        with lean(model):
            kinds = {type(m) for m in model.modules()}  # a twin hides what it stands in for: look inside
            kinds |= {type(m) for layer in model.decoder.layers for m in unwrap(layer).modules()}
            assert _LeanLayer in kinds
            assert (_LeanLinear in kinds) == (modules == "megatron")
            assert not {ColumnParallelLinear, RowParallelLinear} & kinds  # each linear is plain: lean or a twin
            assert bool(set(LOCAL_LINEARS) & kinds) == (modules == "twins")
            assert (_LeanMoE in kinds) == (cfg.family == "deepseek_v3")
            out = model(ids, pos, None)
    assert torch.equal(out, ref)
    assert [type(m) for m in model.modules()] == before


def test_lean_restores_on_error(hf_saved):
    model, cfg, _ = load_for_inference(hf_saved("ds_qlora"), precision="fp32")
    before = [type(m) for m in model.modules()]
    with pytest.raises(RuntimeError, match="boom"):
        with lean(model):
            raise RuntimeError("boom")
    assert [type(m) for m in model.modules()] == before
