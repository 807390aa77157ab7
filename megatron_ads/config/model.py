"""ModelConfig: the typed view of a Hugging Face ``config.json`` for the two supported families.

Families
--------
- ``deepseek_v3``: DeepSeek-V2/V3/R1 (HF model types ``deepseek_v3``, ``deepseek_v2``): MLA with or
  without q_lora, YaRN rope with mscale, MoE with sigmoid or softmax scores, group-limited top-k,
  expert score-correction bias, routed scaling factor, shared experts, first_k_dense_replace,
  moe_layer_freq, MTP layers.
- ``llama``: dense Llama/Qwen2/Mistral: GQA, SwiGLU, RoPE (default/linear/llama3 scaling),
  optional qkv bias, tied embeddings.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

ModelType = Literal["deepseek_v3", "deepseek_v2", "llama", "qwen2", "mistral"]
Family = Literal["deepseek_v3", "llama"]
RopeType = Literal["default", "yarn", "linear", "llama3"]
ScoreFunc = Literal["sigmoid", "softmax"]
MtpPolicy = Literal["require", "auto", "drop"]

FAMILY_OF_MODEL_TYPE: dict[str, Family] = {
    "deepseek_v3": "deepseek_v3",
    "deepseek_v2": "deepseek_v3",
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
}
ROPE_TYPES: tuple[str, ...] = get_args(RopeType)
SCORE_FUNCS: tuple[str, ...] = get_args(ScoreFunc)
MTP_POLICIES: tuple[str, ...] = get_args(MtpPolicy)
"""What to do with MTP layers a config.json declares (checkpoint/mtp.py ``resolve_mtp``)."""


@dataclass(kw_only=True, slots=True)
class ModelConfig:
    """Architecture of one model, independent of any parallel layout."""

    model_type: ModelType
    """HF ``model_type``: one of deepseek_v3, deepseek_v2, llama, qwen2, mistral."""
    vocab_size: int
    """Vocabulary size (rows of the embedding and the output layer)."""
    hidden_size: int
    """Model width."""
    num_layers: int
    """Transformer layers of the main model (MTP layers not included)."""
    num_attention_heads: int
    """Query heads."""
    num_key_value_heads: int
    """KV heads (GQA) for the llama family; equals num_attention_heads for MLA."""
    head_dim: int = 0
    """Per-head dim for the llama family (0: hidden_size // num_attention_heads)."""
    intermediate_size: int
    """FFN width of dense layers."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    max_position_embeddings: int = 4096
    """Maximum sequence length the rope tables are built for."""
    tie_word_embeddings: bool = False
    """Output layer shares the embedding weight."""
    attention_bias: bool = False
    """Bias on q/k/v projections (Qwen2); for MLA, bias on q_a/kv_a projections (unsupported)."""
    rope_theta: float = 10000.0
    """RoPE base."""
    rope_type: RopeType = "default"
    """Rope scaling: default, yarn, linear or llama3."""
    rope_factor: float = 1.0
    """Rope scaling factor (yarn/linear/llama3)."""
    original_max_position_embeddings: int = 4096
    """Context length before scaling (yarn, llama3)."""
    beta_fast: float = 32.0
    """YaRN beta_fast."""
    beta_slow: float = 1.0
    """YaRN beta_slow."""
    mscale: float = 1.0
    """YaRN mscale."""
    mscale_all_dim: float = 0.0
    """YaRN mscale_all_dim (enters the softmax scale as mscale(factor, mscale_all_dim)**2)."""
    low_freq_factor: float = 1.0
    """llama3 rope low_freq_factor."""
    high_freq_factor: float = 4.0
    """llama3 rope high_freq_factor."""
    # MLA
    q_lora_rank: int | None = None
    """Low-rank query compression (None: a single q_proj, DeepSeek-V2-Lite style)."""
    kv_lora_rank: int = 0
    """KV latent rank (MLA)."""
    qk_nope_head_dim: int = 0
    """Query/key dims without rope (MLA)."""
    qk_rope_head_dim: int = 0
    """Query/key dims with rope (MLA)."""
    v_head_dim: int = 0
    """Value head dim (MLA)."""
    # MoE
    num_experts: int = 0
    """Routed experts per MoE layer (0: dense model)."""
    moe_intermediate_size: int = 0
    """FFN width of one routed expert."""
    num_experts_per_tok: int = 0
    """Routed experts per token (top-k)."""
    n_shared_experts: int = 0
    """Shared experts (their FFN width is n_shared_experts * moe_intermediate_size)."""
    n_group: int = 1
    """Expert groups for group-limited routing."""
    topk_group: int = 1
    """Groups kept per token."""
    scoring_func: ScoreFunc = "sigmoid"
    """Router score function: sigmoid (V3) or softmax (V2)."""
    norm_topk_prob: bool = True
    """Normalize the selected expert weights to sum to one."""
    routed_scaling_factor: float = 1.0
    """Multiplier on routed expert weights."""
    use_expert_bias: bool = False
    """Router has e_score_correction_bias (aux-loss-free balancing; V3)."""
    first_k_dense_replace: int = 0
    """The first k layers are dense."""
    moe_layer_freq: int = 1
    """After first_k_dense_replace, every moe_layer_freq-th layer is MoE."""
    num_mtp_layers: int = 0
    """Multi-token-prediction layers stored after the main layers (HF layer index num_layers + i)."""
    hf_config: dict[str, Any] = field(default_factory=dict)
    """The source config.json, kept verbatim so it can be written back."""

    def __post_init__(self):
        if self.model_type not in FAMILY_OF_MODEL_TYPE:
            raise ValueError(f"model_type: expected one of {sorted(FAMILY_OF_MODEL_TYPE)}, got {self.model_type!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_attention_heads", "num_key_value_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads: {self.num_key_value_heads} must divide "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type: expected one of {ROPE_TYPES}, got {self.rope_type!r}")
        if self.family == "deepseek_v3":
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, name) <= 0:
                    raise ValueError(f"{name}: MLA needs a positive value, got {getattr(self, name)}")
            if self.attention_bias:
                raise ValueError("attention_bias: MLA with biased projections is not supported (expected false)")
        if self.num_experts:
            if self.scoring_func not in SCORE_FUNCS:
                raise ValueError(f"scoring_func: expected one of {SCORE_FUNCS}, got {self.scoring_func!r}")
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"num_experts_per_tok: expected 1..{self.num_experts}, got {self.num_experts_per_tok}")
            if self.num_experts % self.n_group:
                raise ValueError(f"n_group: {self.n_group} must divide n_routed_experts={self.num_experts}")
            if not 1 <= self.topk_group <= self.n_group:
                raise ValueError(f"topk_group: expected 1..n_group={self.n_group}, got {self.topk_group}")
            if self.moe_intermediate_size <= 0:
                raise ValueError("moe_intermediate_size: expected a positive integer for an MoE model")
            if self.moe_layer_freq < 1:
                raise ValueError(f"moe_layer_freq: expected >= 1, got {self.moe_layer_freq}")

    # ------------------------------------------------------------------ derived facts
    @property
    def family(self) -> Family:
        """'deepseek_v3' or 'llama'."""
        return FAMILY_OF_MODEL_TYPE[self.model_type]

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def kv_channels(self) -> int:
        """Per-head dim of the llama family."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    def is_moe_layer(self, layer: int) -> bool:
        """Whether main-model layer ``layer`` (0-based) is an MoE layer (HF semantics)."""
        if not self.is_moe:
            return False
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    @property
    def moe_layer_pattern(self) -> list[int]:
        """1 for MoE layers, 0 for dense, for every main layer."""
        return [int(self.is_moe_layer(i)) for i in range(self.num_layers)]

    # ------------------------------------------------------------------ HF io
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Build from a parsed HF config.json; errors name ``source`` and the field."""
        model_type = cfg.get("model_type")
        if model_type not in FAMILY_OF_MODEL_TYPE:
            raise ValueError(f"{source}: model_type: expected one of {sorted(FAMILY_OF_MODEL_TYPE)}, got {model_type!r}")

        def need(key):
            if key not in cfg or cfg[key] is None:
                raise ValueError(f"{source}: missing required field {key!r} for model_type {model_type}")
            return cfg[key]

        rope = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
        heads = need("num_attention_heads")
        kw: dict[str, Any] = dict(
            model_type=model_type,
            vocab_size=need("vocab_size"),
            hidden_size=need("hidden_size"),
            num_layers=need("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            intermediate_size=need("intermediate_size"),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=model_type == "qwen2" or bool(cfg.get("attention_bias", False)),
            rope_theta=float(rope_theta),
            rope_type=rope_type,
            rope_factor=float(rope.get("factor", 1.0)),
            original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                          cfg.get("max_position_embeddings", 4096))),
            beta_fast=float(rope.get("beta_fast", 32.0)),
            beta_slow=float(rope.get("beta_slow", 1.0)),
            mscale=float(rope.get("mscale", 1.0)),
            mscale_all_dim=float(rope.get("mscale_all_dim", 0.0)),
            low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            hf_config=copy.deepcopy(cfg),
        )
        if FAMILY_OF_MODEL_TYPE[model_type] == "llama":
            kw["head_dim"] = cfg.get("head_dim") or 0
        else:
            kw["num_key_value_heads"] = heads
            kw.update(
                q_lora_rank=cfg.get("q_lora_rank"),
                kv_lora_rank=need("kv_lora_rank"),
                qk_nope_head_dim=need("qk_nope_head_dim"),
                qk_rope_head_dim=need("qk_rope_head_dim"),
                v_head_dim=need("v_head_dim"),
            )
            n_experts = cfg.get("n_routed_experts") or 0
            if n_experts:
                kw.update(
                    num_experts=n_experts,
                    moe_intermediate_size=need("moe_intermediate_size"),
                    num_experts_per_tok=need("num_experts_per_tok"),
                    n_shared_experts=cfg.get("n_shared_experts") or 0,
                    n_group=cfg.get("n_group") or 1,
                    topk_group=cfg.get("topk_group") or 1,
                    scoring_func=cfg.get("scoring_func", "sigmoid" if model_type == "deepseek_v3" else "softmax"),
                    norm_topk_prob=bool(cfg.get("norm_topk_prob", model_type == "deepseek_v3")),
                    routed_scaling_factor=float(cfg.get("routed_scaling_factor", 1.0)),
                    use_expert_bias=(model_type == "deepseek_v3"
                                     or cfg.get("topk_method") == "noaux_tc"),
                    first_k_dense_replace=cfg.get("first_k_dense_replace") or 0,
                    moe_layer_freq=cfg.get("moe_layer_freq") or 1,
                )
            kw["num_mtp_layers"] = cfg.get("num_nextn_predict_layers", cfg.get("num_mtp_layers", 0)) or 0
        return cls(**kw)

    @classmethod
    def from_hf(cls, path: str | Path) -> "ModelConfig":
        """Read ``config.json`` (a file or a checkpoint directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no HF config.json there")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_hf_dict(cfg, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF config.json this model came from (verbatim copy)."""
        return copy.deepcopy(self.hf_config)
