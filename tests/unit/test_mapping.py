import itertools
from collections import Counter

import pytest
import torch

from megatron_ads.checkpoint.hf_io import HFCheckpoint
from megatron_ads.checkpoint.mapping import RankCoord, TensorTask, apply_transform, rank_tasks
from megatron_ads.config.flavors import flavor
from megatron_ads.config.parallel import ParallelConfig


def _all_ranks(par: ParallelConfig):
    for pp, tp, ep in itertools.product(range(par.pp), range(par.tp), range(par.ep)):
        yield RankCoord(pp_rank=pp, tp_rank=tp, ep_rank=ep)


@pytest.mark.parametrize("name, par", [
    ("tiny_deepseek_v3", ParallelConfig()),
    ("tiny_deepseek_v3", ParallelConfig(pp=2, ep=2)),
    ("tiny_deepseek_v3", ParallelConfig(pp=3, ep=2, stage_layers=[1, 1, 2])),
    ("tiny_deepseek_v3_mtp", ParallelConfig(pp=2, ep=4)),
    ("tiny_deepseek_v2_lite", ParallelConfig(pp=2, ep=8)),
    ("tiny_llama", ParallelConfig(tp=2, pp=2)),
    ("tiny_qwen2", ParallelConfig(tp=2, pp=2)),
])
def test_every_hf_tensor_is_used_by_the_layout(name, par, tiny_ckpts):
    """Key accounting: across the ranks of one model replica, every HF tensor is read, and every
    (mcore name, pp, ep) target is produced once; expert tensors exactly once."""
    cfg = flavor(name)
    used = Counter()
    targets = Counter()
    for coord in _all_ranks(par):
        for task in rank_tasks(cfg, par, coord):
            used.update(task.hf)
            targets[(task.mcore, coord.pp_rank, coord.ep_rank, coord.tp_rank)] += 1
    assert all(v == 1 for v in targets.values())
    from megatron_ads.checkpoint.mapping import alias_of

    hf_keys = {k for k in HFCheckpoint(tiny_ckpts(name)).keys() if alias_of(cfg, k) is None}
    assert set(used) == hf_keys, (sorted(hf_keys - set(used))[:5], sorted(set(used) - hf_keys)[:5])
    for key, n in used.items():
        if ".experts." in key:
            assert n == par.tp, key  # one EP rank holds each expert (replicated over tp only)


def test_mtp_tasks_name_megatron_mtp_modules():
    cfg = flavor("tiny_deepseek_v3_mtp")
    tasks = list(rank_tasks(cfg, ParallelConfig(pp=2), RankCoord(pp_rank=1)))
    names = {t.mcore for t in tasks if t.mcore.startswith("mtp.")}
    assert "mtp.layers.0.eh_proj.weight" in names
    assert "mtp.layers.0.transformer_layer.mlp.experts.local_experts.7.linear_fc2.weight" in names
    assert any(t.hf == ("model.layers.4.enorm.weight",) for t in tasks)
    assert not any(t.mcore.startswith("mtp.") for t in rank_tasks(cfg, ParallelConfig(pp=2), RankCoord(pp_rank=0)))


def test_expert_renumbering_per_ep_rank():
    cfg = flavor("tiny_deepseek_v3")
    tasks = [t for t in rank_tasks(cfg, ParallelConfig(ep=4), RankCoord(ep_rank=3))
             if "local_experts" in t.mcore and "layers.1." in t.mcore and "fc2" in t.mcore]
    pairs = [(t.mcore.split(".")[6], t.hf[0].split(".")[5]) for t in tasks]
    assert pairs == [("0", "6"), ("1", "7")], pairs


def test_gated_split_per_tp_shard():
    gate, up = torch.arange(4.0).view(4, 1), torch.arange(10.0, 14.0).view(4, 1)
    task = TensorTask("x", ("g", "u"), "gated")
    cfg = flavor("tiny_llama")
    assert apply_transform(task, [gate, up], cfg, 2, 0).flatten().tolist() == [0, 1, 10, 11]
    assert apply_transform(task, [gate, up], cfg, 2, 1).flatten().tolist() == [2, 3, 12, 13]


def test_qkv_interleaves_per_query_group():
    cfg = flavor("tiny_llama")  # 4 heads, 2 kv groups, head dim 16
    d = cfg.kv_channels
    q = torch.arange(4 * d).float().view(4 * d, 1)
    k = 1000 + torch.arange(2 * d).float().view(2 * d, 1)
    v = 2000 + torch.arange(2 * d).float().view(2 * d, 1)
    out = apply_transform(TensorTask("qkv", ("q", "k", "v"), "qkv"), [q, k, v], cfg, 1, 0).flatten()
    group0 = torch.cat([q[: 2 * d], k[:d], v[:d]]).flatten()
    assert torch.equal(out[: 4 * d], group0)
    shard1 = apply_transform(TensorTask("qkv", ("q", "k", "v"), "qkv"), [q, k, v], cfg, 2, 1).flatten()
    assert torch.equal(shard1, out[4 * d:])


def test_indivisible_split_names_the_tensor():
    with pytest.raises(ValueError, match="mytensor"):
        apply_transform(TensorTask("mytensor", ("a",), "col"), [torch.zeros(3, 2)], flavor("tiny_llama"), 2, 0)
