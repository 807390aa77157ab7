"""Mapping classes and the wildcard registry: HF tensor names <-> megatron-core names per rank.

A family module (``families/*.py``) lists its parameters as data: ``Rule`` rows with an HF pattern,
a megatron-core pattern, a scope and a transform. Patterns use ``{L}`` (global layer), ``{l}``
(layer local to the pipeline stage), ``{E}`` (global expert), ``{e}`` (expert local to the EP rank),
``{M}``/``{m}`` (HF layer index of an MTP layer / MTP index).

Transforms (the only non-1:1 cases):
- ``replicate``: same tensor on every TP rank;
- ``col`` / ``row``: split dim 0 / dim 1 across TP ranks (``vocab`` = ``col`` for embedding/output);
- ``gated``: fc1 = [gate; up], split so TP shard i holds [gate_i; up_i];
- ``qkv``: q, k, v interleaved per query group ([q_g; k_g; v_g] for g in groups), split by groups.
Experts are not TP-split (expert tensor parallel = 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.pipeline import stage_layers

TRANSFORMS = ("replicate", "col", "row", "vocab", "gated", "qkv")
SCOPES = ("first", "last", "layer", "dense", "moe", "expert", "mtp", "mtp_dense", "mtp_moe", "mtp_expert")


@dataclass(frozen=True, slots=True)
class Rule:
    """One parameter kind: HF name pattern(s) -> megatron-core name pattern."""

    hf: tuple[str, ...]
    mcore: str
    scope: str
    transform: str = "replicate"
    when: str | None = None
    """Name of a ModelConfig predicate that must hold (e.g. 'has_q_lora'); None: always."""

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Rule {self.mcore}: transform {self.transform!r} not in {TRANSFORMS}")
        if self.scope not in SCOPES:
            raise ValueError(f"Rule {self.mcore}: scope {self.scope!r} not in {SCOPES}")


@dataclass(frozen=True, slots=True)
class RankCoord:
    """The model-parallel coordinates that decide which tensors a rank holds."""

    pp_rank: int = 0
    tp_rank: int = 0
    ep_rank: int = 0


@dataclass(frozen=True, slots=True)
class TensorTask:
    """One megatron-core tensor of one rank and how to make it from HF tensors."""

    mcore: str
    hf: tuple[str, ...]
    transform: str


PREDICATES: dict[str, Callable[[ModelConfig], bool]] = {
    "has_q_lora": lambda c: c.q_lora_rank is not None,
    "no_q_lora": lambda c: c.q_lora_rank is None,
    "expert_bias": lambda c: c.use_expert_bias,
    "shared_experts": lambda c: c.n_shared_experts > 0,
    "qkv_bias": lambda c: c.attention_bias,
}


def family_rules(cfg: ModelConfig) -> list[Rule]:
    """The registry rows of ``cfg``'s family, filtered by its predicates."""
    from megatron_ads.checkpoint.families import deepseek_v3, llama

    table = {"deepseek_v3": deepseek_v3.RULES, "llama": llama.RULES}[cfg.family]
    return [r for r in table if r.when is None or PREDICATES[r.when](cfg)]


def _family(cfg: ModelConfig):
    from megatron_ads.checkpoint.families import deepseek_v3, llama

    return {"deepseek_v3": deepseek_v3, "llama": llama}[cfg.family]


def expected_hf_shape(cfg: ModelConfig, name: str) -> tuple[int, ...] | None:
    """The shape config.json implies for HF tensor ``name`` (None when the family table has no rule)."""
    import re

    for pattern, shape in _family(cfg).SHAPES:
        if re.fullmatch(pattern, name):
            return tuple(int(x) for x in shape(cfg))
    return None


def alias_of(cfg: ModelConfig, name: str) -> str | None:
    """The HF tensor ``name`` duplicates (e.g. an MTP layer's copy of the embedding), or None."""
    import re

    for pattern, target in _family(cfg).ALIASES:
        if re.fullmatch(pattern, name):
            return target
    return None


def rank_tasks(cfg: ModelConfig, par: ParallelConfig, coord: RankCoord) -> Iterator[TensorTask]:
    """Every megatron-core tensor rank ``coord`` holds, with its HF sources and transform."""
    stages = stage_layers(cfg.num_layers, par)
    layers = stages[coord.pp_rank]
    first, last = coord.pp_rank == 0, coord.pp_rank == par.pp - 1
    n_local_experts = cfg.num_experts // par.ep if cfg.is_moe else 0
    experts = range(coord.ep_rank * n_local_experts, (coord.ep_rank + 1) * n_local_experts)
    rules = family_rules(cfg)

    def emit(rule: Rule, **fmt) -> TensorTask:
        return TensorTask(rule.mcore.format(**fmt), tuple(h.format(**fmt) for h in rule.hf), rule.transform)

    for rule in rules:
        if rule.scope == "first" and (first or (last and cfg.num_mtp_layers)):
            yield emit(rule)  # MTP on the last stage embeds its input tokens with its own copy
        elif rule.scope == "last" and last:
            if rule.mcore.startswith("output_layer") and cfg.tie_word_embeddings:
                if not first:
                    # tied output on a later stage: megatron keeps its own copy of the embedding there
                    yield TensorTask(rule.mcore, ("model.embed_tokens.weight",), rule.transform)
            else:
                yield emit(rule)
        elif rule.scope in ("layer", "dense", "moe", "expert"):
            for local, layer in enumerate(layers):
                moe = cfg.is_moe_layer(layer)
                if rule.scope == "layer" or (rule.scope == "dense" and not moe) or (rule.scope == "moe" and moe):
                    yield emit(rule, L=layer, l=local)
                elif rule.scope == "expert" and moe:
                    for e, expert in enumerate(experts):
                        yield emit(rule, L=layer, l=local, E=expert, e=e)
        elif rule.scope.startswith("mtp") and last:
            for m in range(cfg.num_mtp_layers):
                layer = cfg.num_layers + m
                moe = cfg.is_moe
                if rule.scope == "mtp" or (rule.scope == "mtp_dense" and not moe) or (rule.scope == "mtp_moe" and moe):
                    yield emit(rule, M=layer, m=m)
                elif rule.scope == "mtp_expert" and moe:
                    for e, expert in enumerate(experts):
                        yield emit(rule, M=layer, m=m, E=expert, e=e)


# ------------------------------------------------------------------------------- transforms
def _split(t: torch.Tensor, dim: int, tp: int, rank: int, name: str) -> torch.Tensor:
    if t.shape[dim] % tp:
        raise ValueError(f"{name}: dim {dim} of shape {tuple(t.shape)} is not divisible by tp={tp}")
    return t.chunk(tp, dim=dim)[rank].contiguous()


def _qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    groups, d = cfg.num_key_value_heads, cfg.kv_channels
    per = cfg.num_attention_heads // groups
    rest = q.shape[1:]
    q = q.reshape(groups, per * d, *rest)
    k = k.reshape(groups, d, *rest)
    v = v.reshape(groups, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(groups * (per + 2) * d, *rest)


def apply_transform(task: TensorTask, sources: list[torch.Tensor], cfg: ModelConfig, tp: int,
                    tp_rank: int) -> torch.Tensor:
    """Build the megatron-core tensor of ``task`` for TP rank ``tp_rank`` from its HF tensors."""
    name = task.mcore
    if task.transform == "replicate":
        return sources[0]
    if task.transform in ("col", "vocab"):
        return _split(sources[0], 0, tp, tp_rank, name)
    if task.transform == "row":
        return _split(sources[0], 1, tp, tp_rank, name)
    if task.transform == "gated":
        gate, up = sources
        return torch.cat([_split(gate, 0, tp, tp_rank, name), _split(up, 0, tp, tp_rank, name)], dim=0)
    if task.transform == "qkv":
        if cfg.num_key_value_heads % tp:
            raise ValueError(f"{name}: num_key_value_heads={cfg.num_key_value_heads} not divisible by tp={tp}")
        return _split(_qkv(*sources, cfg), 0, tp, tp_rank, name)
    raise ValueError(f"{name}: unknown transform {task.transform!r}")
