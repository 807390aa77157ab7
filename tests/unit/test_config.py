import json
from pathlib import Path

import pytest

from megatron_ads.config.flavors import FLAVORS, flavor, flavor_dict, resolve_model_config
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.pipeline import even_split, megatron_layout, stage_layers

FACTS = Path(__file__).resolve().parents[3] / "shared" / "facts" / "deepseek_v3_config.json"


def test_deepseek_v3_facts_file():
    path = FACTS if FACTS.exists() else None
    cfg = ModelConfig.from_hf(path) if path else flavor("deepseek_v3")
    assert cfg.family == "deepseek_v3" and cfg.num_layers == 61 and cfg.num_experts == 256
    assert cfg.q_lora_rank == 1536 and cfg.kv_lora_rank == 512 and cfg.qk_rope_head_dim == 64
    assert cfg.rope_type == "yarn" and cfg.rope_factor == 40 and cfg.mscale_all_dim == 1.0
    assert cfg.scoring_func == "sigmoid" and cfg.use_expert_bias and cfg.norm_topk_prob
    assert (cfg.n_group, cfg.topk_group, cfg.num_experts_per_tok) == (8, 4, 8)
    assert cfg.first_k_dense_replace == 3 and cfg.num_mtp_layers == 1
    assert cfg.moe_layer_pattern[:4] == [0, 0, 0, 1] and sum(cfg.moe_layer_pattern) == 58


@pytest.mark.parametrize("name", sorted(FLAVORS))
def test_every_flavor_parses(name):
    cfg = flavor(name)
    assert cfg.to_hf_dict() == flavor_dict(name)


def test_v2_lite_style_has_no_q_lora_and_default_rope():
    cfg = flavor("tiny_deepseek_v2_lite")
    assert cfg.q_lora_rank is None and cfg.rope_type == "default" and cfg.first_k_dense_replace == 2


def test_qwen2_has_qkv_bias_and_tied_embeddings():
    cfg = flavor("tiny_qwen2")
    assert cfg.attention_bias and cfg.tie_word_embeddings and cfg.family == "llama"


def test_deepseek_v2_softmax_defaults():
    d = flavor_dict("tiny_deepseek_v3")
    d.update(model_type="deepseek_v2", scoring_func="softmax", n_group=1, topk_group=1, norm_topk_prob=False)
    d.pop("topk_method")
    cfg = ModelConfig.from_hf_dict(d)
    assert cfg.scoring_func == "softmax" and not cfg.use_expert_bias


@pytest.mark.parametrize("change, field", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"n_group": 3}, "n_group"),
    ({"num_experts_per_tok": 99}, "num_experts_per_tok"),
    ({"kv_lora_rank": None}, "kv_lora_rank"),
])
def test_bad_configs_name_the_field(change, field):
    d = flavor_dict("tiny_deepseek_v3")
    d.update(change)
    with pytest.raises(ValueError, match=field):
        ModelConfig.from_hf_dict(d, source="x/config.json")


def test_from_hf_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=str(tmp_path)):
        ModelConfig.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="missing required field"):
        ModelConfig.from_hf(tmp_path)


def test_resolve_model_config_accepts_names_and_paths(tmp_path):
    assert resolve_model_config("tiny_llama").family == "llama"
    (tmp_path / "config.json").write_text(json.dumps(flavor_dict("tiny_llama")))
    assert resolve_model_config(str(tmp_path)).num_layers == 4
    with pytest.raises(ValueError, match="neither a flavor"):
        resolve_model_config("nope")


def test_pipeline_splits():
    assert even_split(61, 31) == [1] + [2] * 30
    assert even_split(4, 3) == [1, 1, 2]
    with pytest.raises(ValueError, match="pp"):
        even_split(2, 3)
    par = ParallelConfig(pp=2, stage_layers=[1, 3])
    assert stage_layers(4, par) == [[0], [1, 2, 3]]
    assert megatron_layout(4, par, mtp_layers=1) == [["embedding", "decoder"], ["decoder"] * 3 + ["mtp", "loss"]]
    with pytest.raises(ValueError, match="stage_layers"):
        stage_layers(5, par)
    with pytest.raises(ValueError, match="stage_layers"):
        ParallelConfig(pp=2, stage_layers=[4])
    with pytest.raises(ValueError, match="tp"):
        ParallelConfig(tp=0)
