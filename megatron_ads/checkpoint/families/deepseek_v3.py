"""DeepSeek-V2/V3/R1 parameter table (HF -> megatron-core, local spec names). Data only."""

from megatron_ads.checkpoint.mapping import Rule

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
