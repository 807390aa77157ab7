"""Named model flavors: HF config.json dicts, one table, with a CPU-sized tiny flavor per family.

Tiny flavors keep the real architecture (MLA with/without q_lora, YaRN, sigmoid group-limited
routing with expert bias, shared experts, dense first layers; GQA/SwiGLU/qkv bias) at dims a
2-core CPU trains in seconds.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from megatron_ads.config.model import ModelConfig

_DEEPSEEK_V3_671B: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
    "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1,
    "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "num_nextn_predict_layers": 1, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
    "torch_dtype": "bfloat16",
}

_TINY_DEEPSEEK: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "moe_intermediate_size": 32,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4,
    "n_shared_experts": 1, "n_routed_experts": 8, "routed_scaling_factor": 2.5,
    "kv_lora_rank": 32, "q_lora_rank": 48, "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16,
    "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "norm_topk_prob": True, "scoring_func": "sigmoid", "topk_method": "noaux_tc", "hidden_act": "silu",
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 4.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 512, "type": "yarn"},
    "num_nextn_predict_layers": 0, "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
    "initializer_range": 0.1,
}

_TINY_LLAMA: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_act": "silu", "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "attention_bias": False,
    "bos_token_id": 0, "eos_token_id": 1, "initializer_range": 0.1,
}


def _variant(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None and key in out and key != "q_lora_rank":
            del out[key]
        else:
            out[key] = value
    return out


FLAVORS: dict[str, dict[str, Any]] = {
    # full-size references (never allocated on CPU; used by plan/flops and GPU runs)
    "deepseek_v3": _DEEPSEEK_V3_671B,
    "deepseek_r1": _DEEPSEEK_V3_671B,
    "llama_1b": _variant(_TINY_LLAMA, vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                         num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                         initializer_range=0.02),
    # CPU-sized tiny flavors: real architectures, small dims
    "tiny_deepseek_v3": _TINY_DEEPSEEK,
    "tiny_deepseek_v3_mtp": _variant(_TINY_DEEPSEEK, num_nextn_predict_layers=1),
    "tiny_deepseek_v2_lite": _variant(_TINY_DEEPSEEK, q_lora_rank=None, rope_scaling=None, first_k_dense_replace=2,
                                      num_hidden_layers=5),
    "tiny_llama": _TINY_LLAMA,
    "tiny_qwen2": _variant(_TINY_LLAMA, architectures=["Qwen2ForCausalLM"], model_type="qwen2", attention_bias=None,
                           tie_word_embeddings=True, rope_theta=1000000.0),
}


def flavor_dict(name: str) -> dict[str, Any]:
    """The HF config dict of a named flavor (a copy)."""
    if name not in FLAVORS:
        raise ValueError(f"flavor: expected one of {sorted(FLAVORS)}, got {name!r}")
    return copy.deepcopy(FLAVORS[name])


def flavor(name: str) -> ModelConfig:
    """The ModelConfig of a named flavor."""
    return ModelConfig.from_hf_dict(flavor_dict(name), source=f"flavor {name}")


def resolve_model_config(spec: str | Path) -> ModelConfig:
    """A flavor name, a config.json path, or a checkpoint directory -> ModelConfig."""
    if isinstance(spec, str) and spec in FLAVORS:
        return flavor(spec)
    path = Path(spec)
    if path.exists():
        return ModelConfig.from_hf(path)
    raise ValueError(f"model: {spec!r} is neither a flavor ({', '.join(sorted(FLAVORS))}) nor an existing path")


def write_config(cfg: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
