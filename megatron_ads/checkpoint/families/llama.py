"""Llama/Qwen2/Mistral parameter table (HF -> megatron-core, local spec names). Data only."""

from megatron_ads.checkpoint.mapping import Rule

_A = "model.layers.{L}.self_attn."
_M = "decoder.layers.{l}."

RULES = [
    Rule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", "first", "vocab"),
    Rule(("model.norm.weight",), "decoder.final_layernorm.weight", "last"),
    Rule(("lm_head.weight",), "output_layer.weight", "last", "vocab"),
    Rule(("model.layers.{L}.input_layernorm.weight",), _M + "input_layernorm.weight", "layer"),
    Rule((_A + "q_proj.weight", _A + "k_proj.weight", _A + "v_proj.weight"),
         _M + "self_attention.linear_qkv.weight", "layer", "qkv"),
    Rule((_A + "q_proj.bias", _A + "k_proj.bias", _A + "v_proj.bias"),
         _M + "self_attention.linear_qkv.bias", "layer", "qkv", when="qkv_bias"),
    Rule((_A + "o_proj.weight",), _M + "self_attention.linear_proj.weight", "layer", "row"),
    Rule(("model.layers.{L}.post_attention_layernorm.weight",), _M + "pre_mlp_layernorm.weight", "layer"),
    Rule(("model.layers.{L}.mlp.gate_proj.weight", "model.layers.{L}.mlp.up_proj.weight"),
         _M + "mlp.linear_fc1.weight", "layer", "gated"),
    Rule(("model.layers.{L}.mlp.down_proj.weight",), _M + "mlp.linear_fc2.weight", "layer", "row"),
]
