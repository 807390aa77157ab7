"""ModelConfig + ParallelConfig -> megatron-core TransformerConfig and GPTModel chunk for this rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_mtp_block_spec
from megatron.core.transformer.transformer_config import MLATransformerConfig, TransformerConfig

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.pipeline import megatron_layout
from megatron_ads.model.experts import default_experts
from megatron_ads.model.gpt import OneRankGPTModel
from megatron_ads.model.linear import local_linears_supported
from megatron_ads.model.specs import decoder_block_spec
from megatron_ads.runtime.platform import patch_loaded_megatron_modules

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def check_supported(cfg: ModelConfig) -> None:
    """Refuse configurations whose HF semantics megatron-core's modules do not reproduce."""
    if cfg.is_moe:
        if cfg.n_group > 1 and cfg.topk_group < cfg.n_group:
            per_group = cfg.num_experts_per_tok / cfg.topk_group
            if cfg.model_type == "deepseek_v3" and per_group != 2:
                raise ValueError(
                    f"group-limited routing: HF DeepSeek-V3 scores a group by its top-2 experts, megatron-core by "
                    f"its top num_experts_per_tok/topk_group = {per_group:g}; they agree only when that is 2 "
                    f"(num_experts_per_tok={cfg.num_experts_per_tok}, topk_group={cfg.topk_group})")
            if cfg.model_type == "deepseek_v2":
                raise ValueError("group-limited routing (deepseek_v2 group_limited_greedy scores groups by their "
                                 "max expert) is not reproduced by megatron-core's router; use n_group=1")
        if cfg.scoring_func == "sigmoid" and not cfg.norm_topk_prob and cfg.num_experts_per_tok > 1:
            raise ValueError("norm_topk_prob=false with sigmoid scores: megatron-core always normalizes sigmoid "
                             "top-k weights; expected norm_topk_prob=true")
    if cfg.family == "llama" and cfg.rope_type == "llama3":
        if (cfg.low_freq_factor, cfg.high_freq_factor, cfg.original_max_position_embeddings) != (1.0, 4.0, 8192):
            raise ValueError("rope_scaling llama3: megatron-core supports low_freq_factor=1, high_freq_factor=4, "
                             "original_max_position_embeddings=8192 only")
    if cfg.family == "llama" and cfg.rope_type == "yarn":
        raise ValueError("rope_scaling yarn for the llama family is not supported (expected default/linear/llama3)")


def transformer_config(cfg: ModelConfig, par: ParallelConfig, dtype: str = "fp32", device: str = "cpu",
                       **overrides) -> TransformerConfig:
    """The megatron-core TransformerConfig (MLATransformerConfig for DeepSeek) of ``cfg`` under ``par``."""
    check_supported(cfg)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    torch_dtype = DTYPES[dtype]
    common = dict(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.intermediate_size,
        num_attention_heads=cfg.num_attention_heads,
        normalization="RMSNorm",
        layernorm_epsilon=cfg.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        expert_model_parallel_size=par.ep,
        sequence_parallel=False,
        params_dtype=torch_dtype,
        pipeline_dtype=torch_dtype,
        bf16=dtype == "bf16",
        use_cpu_initialization=device == "cpu",
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        init_method_std=0.02,
        attention_softmax_in_fp32=True,
    )
    if par.pp > 1:
        common["pipeline_model_parallel_layout"] = megatron_layout(cfg.num_layers, par, cfg.num_mtp_layers)
    if cfg.is_moe:
        common.update(
            num_moe_experts=cfg.num_experts,
            moe_ffn_hidden_size=cfg.moe_intermediate_size,
            moe_router_topk=cfg.num_experts_per_tok,
            moe_router_num_groups=cfg.n_group if cfg.n_group > 1 else None,
            moe_router_group_topk=cfg.topk_group if cfg.n_group > 1 else None,
            moe_router_score_function=cfg.scoring_func,
            moe_router_pre_softmax=cfg.scoring_func == "softmax" and not cfg.norm_topk_prob,
            moe_router_topk_scaling_factor=cfg.routed_scaling_factor,
            moe_router_enable_expert_bias=cfg.use_expert_bias,
            moe_router_dtype="fp32",
            moe_router_load_balancing_type="none",
            moe_aux_loss_coeff=0.0,
            moe_shared_expert_intermediate_size=(cfg.moe_intermediate_size * cfg.n_shared_experts
                                                 if cfg.n_shared_experts else None),
            moe_layer_freq=cfg.moe_layer_pattern,
            moe_token_dispatcher_type="alltoall",
            moe_grouped_gemm=False,
            moe_permute_fusion=False,
            variable_seq_lengths=True,
        )
    if cfg.num_mtp_layers:
        common.update(mtp_num_layers=cfg.num_mtp_layers, mtp_loss_scaling_factor=0.1)
    common.update(overrides)
    if cfg.family == "deepseek_v3":
        return MLATransformerConfig(
            **common,
            multi_latent_attention=True,
            q_lora_rank=cfg.q_lora_rank,
            kv_lora_rank=cfg.kv_lora_rank,
            qk_head_dim=cfg.qk_nope_head_dim,
            qk_pos_emb_head_dim=cfg.qk_rope_head_dim,
            v_head_dim=cfg.v_head_dim,
            qk_layernorm=True,
            rope_type="yarn" if cfg.rope_type == "yarn" else "rope",
            rotary_base=cfg.rope_theta,
            rotary_scaling_factor=cfg.rope_factor if cfg.rope_type == "yarn" else 1.0,
            original_max_position_embeddings=cfg.original_max_position_embeddings,
            beta_fast=cfg.beta_fast,
            beta_slow=cfg.beta_slow,
            mscale=cfg.mscale,
            mscale_all_dim=cfg.mscale_all_dim,
            rotary_interleaved=False,
        )
    return TransformerConfig(
        **common,
        num_query_groups=cfg.num_key_value_heads,
        kv_channels=cfg.kv_channels,
        add_qkv_bias=cfg.attention_bias,
    )


def build_model_chunk(cfg: ModelConfig, par: ParallelConfig, dtype: str = "fp32", device: str = "cpu",
                      use_te: bool = False, tconfig: TransformerConfig | None = None, fp8_backend: str | None = None,
                      experts: str | None = None, single_rank: str = "auto"):
    """The GPTModel chunk of this rank (megatron parallel state must be initialized for ``par``).

    ``fp8_backend`` (``reference`` | ``triton`` | ``scaled_mm``): FP8 linears of that backend in the
    decoder layers (``model.specs.decoder_block_spec``; local spec, tp = 1); None: plain linears.
    ``experts`` (``grouped`` | ``sequential``; None: ``grouped`` where ``torch._grouped_mm`` exists): the
    routed experts module (``model.experts``); FP8 backends always use megatron's ``SequentialMLP``.
    ``single_rank`` (``auto`` | ``megatron``): the project's one-rank twins of megatron's linears, MoE
    dispatcher, output layer and loss where a TP / EP group has one rank (``model.linear``, ``model.dispatch``,
    ``model.gpt``; the default), or megatron-core's modules throughout (``model.specs.decoder_block_spec``)."""
    patch_loaded_megatron_modules()  # CPU mode: cover megatron modules imported lazily
    tconfig = tconfig or transformer_config(cfg, par, dtype=dtype, device=device)
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pre = parallel_state.is_pipeline_first_stage()
    post = parallel_state.is_pipeline_last_stage()
    block = decoder_block_spec(tconfig, use_te=use_te, pp_rank=pp_rank, fp8_backend=fp8_backend,
                               experts=experts or default_experts(), single_rank=single_rank)
    if fp8_backend is not None:
        use_te = False  # the MTP spec follows the block's backend
    mtp = None
    if cfg.num_mtp_layers:
        mtp = get_gpt_mtp_block_spec(tconfig, block.layer_specs[-1] if block.layer_specs else block,
                                     use_transformer_engine=use_te, pp_rank=pp_rank)
    extra = {}
    if cfg.family == "llama":
        if cfg.rope_type == "llama3":
            extra.update(rope_scaling=True, rope_scaling_factor=cfg.rope_factor)
        elif cfg.rope_type == "linear":
            extra.update(seq_len_interpolation_factor=cfg.rope_factor)
    one_rank = single_rank == "auto" and local_linears_supported(tconfig) is None
    model = (OneRankGPTModel if one_rank else GPTModel)(
        config=tconfig,
        transformer_layer_spec=block,
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.max_position_embeddings,
        pre_process=pre,
        post_process=post,
        parallel_output=True,
        share_embeddings_and_output_weights=cfg.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_base=int(cfg.rope_theta) if float(cfg.rope_theta).is_integer() else cfg.rope_theta,
        mtp_block_spec=mtp,
        **extra,
    )
    if device == "cuda":
        model = model.cuda()
    return model
