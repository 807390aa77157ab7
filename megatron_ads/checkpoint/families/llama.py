"""Llama/Qwen2/Mistral parameter table (HF -> megatron-core, local spec names). Data only: registered
with the mapping registry, which imports this module by name (``mapping.family``)."""

from megatron_ads.checkpoint.mapping import Rule, register_family

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


def _q(c):
    return c.num_attention_heads * c.kv_channels


def _kv(c):
    return c.num_key_value_heads * c.kv_channels


SHAPES = [
    (r"model\.embed_tokens\.weight|lm_head\.weight", lambda c: (c.vocab_size, c.hidden_size)),
    (r"model\.norm\.weight|.*(input_layernorm|post_attention_layernorm)\.weight", lambda c: (c.hidden_size,)),
    (r".*self_attn\.q_proj\.weight", lambda c: (_q(c), c.hidden_size)),
    (r".*self_attn\.(k|v)_proj\.weight", lambda c: (_kv(c), c.hidden_size)),
    (r".*self_attn\.q_proj\.bias", lambda c: (_q(c),)),
    (r".*self_attn\.(k|v)_proj\.bias", lambda c: (_kv(c),)),
    (r".*self_attn\.o_proj\.weight", lambda c: (c.hidden_size, _q(c))),
    (r".*mlp\.(gate|up)_proj\.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    (r".*mlp\.down_proj\.weight", lambda c: (c.hidden_size, c.intermediate_size)),
]
ALIASES: list[tuple[str, str]] = []

FAMILY = register_family("llama", rules=RULES, shapes=SHAPES, aliases=ALIASES)
