"""The mapping classes own both directions of every non-1:1 case; the family registry loads tables by name."""

import pytest
import torch

from megatron_ads.checkpoint import mapping
from megatron_ads.checkpoint.hf_io import SCALE_SUFFIX, FP8BlockScale, HFCheckpoint
from megatron_ads.checkpoint.mapping import MAPPINGS, ExpertShard, TensorTask, apply_transform, invert_transform
from megatron_ads.config.flavors import flavor

SOURCES = {
    "replicate": lambda c: [torch.randn(8, 4)],
    "col": lambda c: [torch.randn(8, 4)],
    "vocab": lambda c: [torch.randn(8, 4)],
    "row": lambda c: [torch.randn(4, 8)],
    "gated": lambda c: [torch.randn(8, 4), torch.randn(8, 4)],
    "qkv": lambda c: [torch.randn(c.num_attention_heads * c.kv_channels, 4),
                      torch.randn(c.num_key_value_heads * c.kv_channels, 4),
                      torch.randn(c.num_key_value_heads * c.kv_channels, 4)],
}


@pytest.mark.parametrize("name", sorted(MAPPINGS))
@pytest.mark.parametrize("tp", [1, 2])
def test_to_hf_inverts_to_mcore_bit_exactly(name, tp):
    cfg = flavor("tiny_llama")
    sources = SOURCES[name](cfg)
    hf = tuple(f"src{i}" for i in range(len(sources)))
    task = TensorTask("t", hf, name)
    parts = [apply_transform(task, sources, cfg, tp, r) for r in range(tp)]
    back = invert_transform(task, parts if task.mapping.splits_tp else parts[:1], cfg)
    assert sorted(back) == sorted(hf)
    for h, src in zip(hf, sources):
        assert torch.equal(back[h], src), (name, h)


def test_unknown_transform_is_named():
    with pytest.raises(ValueError, match="mytensor.*unknown transform 'nope'"):
        apply_transform(TensorTask("mytensor", ("a",), "nope"), [torch.zeros(2)], flavor("tiny_llama"), 1, 0)


def test_expert_shard_numbering():
    shard = ExpertShard.of(flavor("tiny_deepseek_v3"), ep=4, ep_rank=3)
    assert list(shard.pairs()) == [(0, 6), (1, 7)]
    assert list(ExpertShard.of(flavor("tiny_llama"), ep=1, ep_rank=0).pairs()) == []


def test_families_are_loaded_by_name_and_unknown_ones_are_named():
    fam = mapping.family("llama")
    assert fam.name == "llama" and fam.rules and fam.shapes
    with pytest.raises(ValueError, match="family 'nosuch'"):
        mapping.family("nosuch")


def test_fp8_block_scale_names_and_round_trip(tiny_ckpts):
    name = "model.layers.0.mlp.down_proj.weight"
    assert FP8BlockScale.applies(name) and not FP8BlockScale.applies("model.layers.0.mlp.gate.weight")
    w = torch.randn(256, 128).to(torch.bfloat16)
    stored = FP8BlockScale.quantize(name, w)
    assert sorted(stored) == [name, name + SCALE_SUFFIX]
    back = FP8BlockScale.dequantize(name, stored[name], stored[name + SCALE_SUFFIX], torch.bfloat16)
    assert back.shape == w.shape and (back.float() - w.float()).abs().max() < 0.1 * w.float().abs().max()
    ckpt = HFCheckpoint(tiny_ckpts("tiny_deepseek_v3", fp8=True))
    fp8 = [k for k in ckpt.keys() if ckpt.is_fp8(k)]
    assert fp8 and all(FP8BlockScale.applies(k) for k in fp8)
