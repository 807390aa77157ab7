"""DeepSeek-V2/V3/R1 parameter table (HF -> megatron-core, local spec names). Data only: registered
with the mapping registry, which imports this module by name (``mapping.family``)."""

from megatron_ads.checkpoint.mapping import Rule, register_family

_ATTN = "model.layers.{L}.self_attn."
_MLA = "decoder.layers.{l}.self_attention."
_MTP = "model.layers.{M}."
_MTPL = "mtp.layers.{m}."

RULES = [
    Rule(("model.embed_tokens.weight",), "embedding.word_embeddings.weight", "first", "vocab"),
    Rule(("model.norm.weight",), "decoder.final_layernorm.weight", "last"),
    Rule(("lm_head.weight",), "output_layer.weight", "last", "vocab"),
    # every layer
    Rule(("model.layers.{L}.input_layernorm.weight",), "decoder.layers.{l}.input_layernorm.weight", "layer"),
    Rule((_ATTN + "q_a_proj.weight",), _MLA + "linear_q_down_proj.weight", "layer", when="has_q_lora"),
    Rule((_ATTN + "q_a_layernorm.weight",), _MLA + "q_layernorm.weight", "layer", when="has_q_lora"),
    Rule((_ATTN + "q_b_proj.weight",), _MLA + "linear_q_up_proj.weight", "layer", "col", when="has_q_lora"),
    Rule((_ATTN + "q_proj.weight",), _MLA + "linear_q_proj.weight", "layer", "col", when="no_q_lora"),
    Rule((_ATTN + "kv_a_proj_with_mqa.weight",), _MLA + "linear_kv_down_proj.weight", "layer"),
    Rule((_ATTN + "kv_a_layernorm.weight",), _MLA + "kv_layernorm.weight", "layer"),
    Rule((_ATTN + "kv_b_proj.weight",), _MLA + "linear_kv_up_proj.weight", "layer", "col"),
    Rule((_ATTN + "o_proj.weight",), _MLA + "linear_proj.weight", "layer", "row"),
    Rule(("model.layers.{L}.post_attention_layernorm.weight",), "decoder.layers.{l}.pre_mlp_layernorm.weight", "layer"),
    # dense layers
    Rule(("model.layers.{L}.mlp.gate_proj.weight", "model.layers.{L}.mlp.up_proj.weight"),
         "decoder.layers.{l}.mlp.linear_fc1.weight", "dense", "gated"),
    Rule(("model.layers.{L}.mlp.down_proj.weight",), "decoder.layers.{l}.mlp.linear_fc2.weight", "dense", "row"),
    # MoE layers
    Rule(("model.layers.{L}.mlp.gate.weight",), "decoder.layers.{l}.mlp.router.weight", "moe"),
    Rule(("model.layers.{L}.mlp.gate.e_score_correction_bias",), "decoder.layers.{l}.mlp.router.expert_bias", "moe",
         when="expert_bias"),
    Rule(("model.layers.{L}.mlp.shared_experts.gate_proj.weight", "model.layers.{L}.mlp.shared_experts.up_proj.weight"),
         "decoder.layers.{l}.mlp.shared_experts.linear_fc1.weight", "moe", "gated", when="shared_experts"),
    Rule(("model.layers.{L}.mlp.shared_experts.down_proj.weight",),
         "decoder.layers.{l}.mlp.shared_experts.linear_fc2.weight", "moe", "row", when="shared_experts"),
    Rule(("model.layers.{L}.mlp.experts.{E}.gate_proj.weight", "model.layers.{L}.mlp.experts.{E}.up_proj.weight"),
         "decoder.layers.{l}.mlp.experts.local_experts.{e}.linear_fc1.weight", "expert", "gated"),
    Rule(("model.layers.{L}.mlp.experts.{E}.down_proj.weight",),
         "decoder.layers.{l}.mlp.experts.local_experts.{e}.linear_fc2.weight", "expert"),
    # MTP layers (HF layer index num_layers + m); embedding and output head are shared with the main model
    Rule((_MTP + "enorm.weight",), _MTPL + "enorm.weight", "mtp"),
    Rule((_MTP + "hnorm.weight",), _MTPL + "hnorm.weight", "mtp"),
    Rule((_MTP + "eh_proj.weight",), _MTPL + "eh_proj.weight", "mtp", "col"),
    Rule((_MTP + "shared_head.norm.weight",), _MTPL + "final_layernorm.weight", "mtp"),
    Rule((_MTP + "input_layernorm.weight",), _MTPL + "transformer_layer.input_layernorm.weight", "mtp"),
    Rule((_MTP + "self_attn.q_a_proj.weight",), _MTPL + "transformer_layer.self_attention.linear_q_down_proj.weight",
         "mtp", when="has_q_lora"),
    Rule((_MTP + "self_attn.q_a_layernorm.weight",), _MTPL + "transformer_layer.self_attention.q_layernorm.weight",
         "mtp", when="has_q_lora"),
    Rule((_MTP + "self_attn.q_b_proj.weight",), _MTPL + "transformer_layer.self_attention.linear_q_up_proj.weight",
         "mtp", "col", when="has_q_lora"),
    Rule((_MTP + "self_attn.q_proj.weight",), _MTPL + "transformer_layer.self_attention.linear_q_proj.weight",
         "mtp", "col", when="no_q_lora"),
    Rule((_MTP + "self_attn.kv_a_proj_with_mqa.weight",),
         _MTPL + "transformer_layer.self_attention.linear_kv_down_proj.weight", "mtp"),
    Rule((_MTP + "self_attn.kv_a_layernorm.weight",), _MTPL + "transformer_layer.self_attention.kv_layernorm.weight",
         "mtp"),
    Rule((_MTP + "self_attn.kv_b_proj.weight",), _MTPL + "transformer_layer.self_attention.linear_kv_up_proj.weight",
         "mtp", "col"),
    Rule((_MTP + "self_attn.o_proj.weight",), _MTPL + "transformer_layer.self_attention.linear_proj.weight",
         "mtp", "row"),
    Rule((_MTP + "post_attention_layernorm.weight",), _MTPL + "transformer_layer.pre_mlp_layernorm.weight", "mtp"),
    Rule((_MTP + "mlp.gate.weight",), _MTPL + "transformer_layer.mlp.router.weight", "mtp_moe"),
    Rule((_MTP + "mlp.gate.e_score_correction_bias",), _MTPL + "transformer_layer.mlp.router.expert_bias",
         "mtp_moe", when="expert_bias"),
    Rule((_MTP + "mlp.shared_experts.gate_proj.weight", _MTP + "mlp.shared_experts.up_proj.weight"),
         _MTPL + "transformer_layer.mlp.shared_experts.linear_fc1.weight", "mtp_moe", "gated", when="shared_experts"),
    Rule((_MTP + "mlp.shared_experts.down_proj.weight",),
         _MTPL + "transformer_layer.mlp.shared_experts.linear_fc2.weight", "mtp_moe", "row", when="shared_experts"),
    Rule((_MTP + "mlp.experts.{E}.gate_proj.weight", _MTP + "mlp.experts.{E}.up_proj.weight"),
         _MTPL + "transformer_layer.mlp.experts.local_experts.{e}.linear_fc1.weight", "mtp_expert", "gated"),
    Rule((_MTP + "mlp.experts.{E}.down_proj.weight",),
         _MTPL + "transformer_layer.mlp.experts.local_experts.{e}.linear_fc2.weight", "mtp_expert"),
    Rule((_MTP + "mlp.gate_proj.weight", _MTP + "mlp.up_proj.weight"),
         _MTPL + "transformer_layer.mlp.linear_fc1.weight", "mtp_dense", "gated"),
    Rule((_MTP + "mlp.down_proj.weight",), _MTPL + "transformer_layer.mlp.linear_fc2.weight", "mtp_dense", "row"),
]


def _qk(c):
    return c.qk_nope_head_dim + c.qk_rope_head_dim


def _shared(c):
    return c.moe_intermediate_size * c.n_shared_experts


# HF tensor shapes implied by config.json (suffix after "model.layers.N." or the full name) -> shape
SHAPES = [
    (r"model\.embed_tokens\.weight|lm_head\.weight|model\.layers\.\d+\.(embed_tokens|shared_head\.head)\.weight",
     lambda c: (c.vocab_size, c.hidden_size)),
    (r"model\.norm\.weight|model\.layers\.\d+\.(input_layernorm|post_attention_layernorm|enorm|hnorm|shared_head\.norm)"
     r"\.weight", lambda c: (c.hidden_size,)),
    (r".*self_attn\.q_a_proj\.weight", lambda c: (c.q_lora_rank, c.hidden_size)),
    (r".*self_attn\.q_a_layernorm\.weight", lambda c: (c.q_lora_rank,)),
    (r".*self_attn\.q_b_proj\.weight", lambda c: (c.num_attention_heads * _qk(c), c.q_lora_rank)),
    (r".*self_attn\.q_proj\.weight", lambda c: (c.num_attention_heads * _qk(c), c.hidden_size)),
    (r".*self_attn\.kv_a_proj_with_mqa\.weight", lambda c: (c.kv_lora_rank + c.qk_rope_head_dim, c.hidden_size)),
    (r".*self_attn\.kv_a_layernorm\.weight", lambda c: (c.kv_lora_rank,)),
    (r".*self_attn\.kv_b_proj\.weight",
     lambda c: (c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)),
    (r".*self_attn\.o_proj\.weight", lambda c: (c.hidden_size, c.num_attention_heads * c.v_head_dim)),
    (r".*mlp\.experts\.\d+\.(gate|up)_proj\.weight", lambda c: (c.moe_intermediate_size, c.hidden_size)),
    (r".*mlp\.experts\.\d+\.down_proj\.weight", lambda c: (c.hidden_size, c.moe_intermediate_size)),
    (r".*mlp\.shared_experts\.(gate|up)_proj\.weight", lambda c: (_shared(c), c.hidden_size)),
    (r".*mlp\.shared_experts\.down_proj\.weight", lambda c: (c.hidden_size, _shared(c))),
    (r".*mlp\.(gate|up)_proj\.weight", lambda c: (c.intermediate_size, c.hidden_size)),
    (r".*mlp\.down_proj\.weight", lambda c: (c.hidden_size, c.intermediate_size)),
    (r".*mlp\.gate\.weight", lambda c: (c.num_experts, c.hidden_size)),
    (r".*mlp\.gate\.e_score_correction_bias", lambda c: (c.num_experts,)),
    (r".*eh_proj\.weight", lambda c: (c.hidden_size, 2 * c.hidden_size)),
]

# HF tensors that duplicate another one (DeepSeek's MTP layers carry copies of the shared embedding and head)
ALIASES = [
    (r"model\.layers\.(\d+)\.embed_tokens\.weight", "model.embed_tokens.weight"),
    (r"model\.layers\.(\d+)\.shared_head\.head\.weight", "lm_head.weight"),
]

FAMILY = register_family("deepseek_v3", rules=RULES, shapes=SHAPES, aliases=ALIASES)
