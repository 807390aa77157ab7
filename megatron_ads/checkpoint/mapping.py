"""Mapping classes and the wildcard registry: HF tensor names <-> megatron-core names per rank.

A family module (``families/*.py``) lists its parameters as data: ``Rule`` rows with an HF pattern,
a megatron-core pattern, a scope and a mapping name, and registers them with ``register_family``.
The registry imports a family module by name (``importlib``) the first time it is asked for it, so
this module never imports a family (an import-linter contract checks it). Patterns use ``{L}``
(global layer), ``{l}`` (layer local to the pipeline stage), ``{E}`` (global expert), ``{e}``
(expert local to the EP rank), ``{M}``/``{m}`` (HF layer index of an MTP layer / MTP index).

The non-1:1 cases are owned by a few mapping classes (``MAPPINGS`` names them for the tables):
- ``Replicate`` (``replicate``): same tensor on every TP rank;
- ``TPSplit`` (``col`` / ``row``): split dim 0 / dim 1 across TP ranks (``vocab`` = ``col`` for the
  embedding/output);
- ``GatedFC1`` (``gated``): fc1 = [gate; up], split so TP shard i holds [gate_i; up_i];
- ``QKV`` (``qkv``): q, k, v interleaved per query group ([q_g; k_g; v_g] for g in groups), split by groups;
- ``ExpertShard``: global <-> local expert numbering of an EP rank (experts are not TP-split:
  expert tensor parallel = 1); the tables name expert E's tensors per expert
  (``local_experts.{e}.linear_fc{1,2}``) on every format; a model built with grouped experts
  (``model.experts.GroupedExperts``: one ``[E_local, ...]`` weight per projection) exposes slice e of
  its weights under those names through ``expert_views``, so the same tables load and export it;
- FP8 block scales are a property of the HF files, not of a megatron tensor: ``hf_io.FP8BlockScale``.
Each mapping class builds a rank's tensor from the HF tensors (``to_mcore``) and reassembles the HF
tensors from the TP pieces (``to_hf``), so conversion in both directions uses one definition.
"""

from __future__ import annotations

import importlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator

import torch

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.pipeline import stage_layers

SCOPES = ("first", "last", "layer", "dense", "moe", "expert", "mtp", "mtp_dense", "mtp_moe", "mtp_expert")
FAMILIES_PACKAGE = "megatron_ads.checkpoint.families"


# ------------------------------------------------------------------------------- mapping classes
def _split(t: torch.Tensor, dim: int, tp: int, rank: int, name: str) -> torch.Tensor:
    if t.shape[dim] % tp:
        raise ValueError(f"{name}: dim {dim} of shape {tuple(t.shape)} is not divisible by tp={tp}")
    return t.chunk(tp, dim=dim)[rank].contiguous()


class Mapping(ABC):
    """How one megatron-core tensor is made from its HF tensors, and the HF tensors back from it."""

    splits_tp: ClassVar[bool] = True
    """Whether TP ranks hold different pieces (False: every TP rank holds the whole tensor)."""

    @abstractmethod
    def to_mcore(self, sources: list[torch.Tensor], cfg: ModelConfig, tp: int, tp_rank: int,
                 name: str) -> torch.Tensor:
        """The piece TP rank ``tp_rank`` of ``tp`` holds, from the HF ``sources`` (in the rule's order)."""

    @abstractmethod
    def to_hf(self, parts: list[torch.Tensor], hf: tuple[str, ...], cfg: ModelConfig) -> dict[str, torch.Tensor]:
        """The HF tensors named ``hf`` from the TP pieces ``parts`` (one per TP rank, in rank order)."""


class Replicate(Mapping):
    """Same tensor on every TP rank (norms, routers, MLA down-projections, experts)."""

    splits_tp = False

    def to_mcore(self, sources, cfg, tp, tp_rank, name):
        return sources[0]

    def to_hf(self, parts, hf, cfg):
        return {hf[0]: parts[0]}


@dataclass(frozen=True, slots=True)
class TPSplit(Mapping):
    """Split along ``dim`` across TP ranks: 0 for column-parallel (and vocab) linears, 1 for row-parallel."""

    dim: int

    def to_mcore(self, sources, cfg, tp, tp_rank, name):
        return _split(sources[0], self.dim, tp, tp_rank, name)

    def to_hf(self, parts, hf, cfg):
        return {hf[0]: torch.cat(parts, self.dim)}


class GatedFC1(Mapping):
    """Gated MLP fc1 = [gate; up]; TP shard i holds [gate_i; up_i]."""

    def to_mcore(self, sources, cfg, tp, tp_rank, name):
        gate, up = sources
        return torch.cat([_split(gate, 0, tp, tp_rank, name), _split(up, 0, tp, tp_rank, name)], dim=0)

    def to_hf(self, parts, hf, cfg):
        halves = [p.chunk(2, dim=0) for p in parts]
        return {hf[0]: torch.cat([g for g, _ in halves], 0), hf[1]: torch.cat([u for _, u in halves], 0)}


class QKV(Mapping):
    """Fused linear_qkv: [q_g; k_g; v_g] per query group g, split across TP ranks by groups."""

    @staticmethod
    def _dims(cfg: ModelConfig) -> tuple[int, int, int]:
        groups, d = cfg.num_key_value_heads, cfg.kv_channels
        return groups, cfg.num_attention_heads // groups, d

    def to_mcore(self, sources, cfg, tp, tp_rank, name):
        if cfg.num_key_value_heads % tp:
            raise ValueError(f"{name}: num_key_value_heads={cfg.num_key_value_heads} not divisible by tp={tp}")
        q, k, v = sources
        groups, per, d = self._dims(cfg)
        rest = q.shape[1:]
        fused = torch.cat([q.reshape(groups, per * d, *rest), k.reshape(groups, d, *rest),
                           v.reshape(groups, d, *rest)], dim=1).reshape(groups * (per + 2) * d, *rest)
        return _split(fused, 0, tp, tp_rank, name)

    def to_hf(self, parts, hf, cfg):
        full = torch.cat(parts, 0)
        groups, per, d = self._dims(cfg)
        rest = full.shape[1:]
        q, k, v = full.reshape(groups, (per + 2) * d, *rest).split([per * d, d, d], dim=1)
        return {hf[0]: q.reshape(groups * per * d, *rest).contiguous(),
                hf[1]: k.reshape(groups * d, *rest).contiguous(),
                hf[2]: v.reshape(groups * d, *rest).contiguous()}


@dataclass(frozen=True, slots=True)
class ExpertShard:
    """The routed experts one EP rank holds: local index ``e`` is global expert ``first + e``."""

    first: int
    count: int

    @classmethod
    def of(cls, cfg: ModelConfig, ep: int, ep_rank: int) -> "ExpertShard":
        """The experts of EP rank ``ep_rank`` of ``ep`` (none for a dense model)."""
        count = cfg.num_experts // ep if cfg.is_moe else 0
        return cls(first=ep_rank * count, count=count)

    def pairs(self) -> Iterator[tuple[int, int]]:
        """(local, global) index of every expert of this rank."""
        for e in range(self.count):
            yield e, self.first + e


_GROUPED_EXPERTS = re.compile(r"^(?P<head>(?:.*\.)?mlp\.experts\.)(?P<proj>linear_fc[12])\.weight$")


def expert_views(name: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """Model tensor ``name`` under the names the tables use: a grouped experts weight
    ``...mlp.experts.linear_fc{1,2}.weight`` of shape [E_local, N, K] as its slices
    ``...mlp.experts.local_experts.{e}.linear_fc{1,2}.weight`` (views: writing one writes slice e of the
    grouped tensor, so expert E lands in slice E - first of EP rank E // (experts / EP)); any other
    tensor as itself."""
    m = _GROUPED_EXPERTS.match(name)
    if m is None:
        return {name: tensor}
    if tensor.dim() != 3:
        raise ValueError(f"{name}: grouped experts weight must be [E_local, N, K], got shape {tuple(tensor.shape)}")
    return {f"{m['head']}local_experts.{e}.{m['proj']}.weight": tensor[e] for e in range(tensor.shape[0])}


MAPPINGS: dict[str, Mapping] = {
    "replicate": Replicate(),
    "col": TPSplit(0),
    "vocab": TPSplit(0),
    "row": TPSplit(1),
    "gated": GatedFC1(),
    "qkv": QKV(),
}
"""The mapping a table row names (``Rule.transform``)."""
TRANSFORMS = tuple(MAPPINGS)


# ------------------------------------------------------------------------------- tables
@dataclass(frozen=True, slots=True)
class Rule:
    """One parameter kind: HF name pattern(s) -> megatron-core name pattern."""

    hf: tuple[str, ...]
    mcore: str
    scope: str
    transform: str = "replicate"
    """Name of the mapping in ``MAPPINGS``."""
    when: str | None = None
    """Name of a ModelConfig predicate that must hold (e.g. 'has_q_lora'); None: always."""

    def __post_init__(self):
        if self.transform not in MAPPINGS:
            raise ValueError(f"Rule {self.mcore}: transform {self.transform!r} not in {TRANSFORMS}")
        if self.scope not in SCOPES:
            raise ValueError(f"Rule {self.mcore}: scope {self.scope!r} not in {SCOPES}")
        if self.when is not None and self.when not in PREDICATES:
            raise ValueError(f"Rule {self.mcore}: when {self.when!r} not in {sorted(PREDICATES)}")


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

    @property
    def mapping(self) -> Mapping:
        """The mapping class instance that makes this tensor."""
        try:
            return MAPPINGS[self.transform]
        except KeyError:
            raise ValueError(f"{self.mcore}: unknown transform {self.transform!r}; expected one of "
                             f"{TRANSFORMS}") from None


PREDICATES: dict[str, Callable[[ModelConfig], bool]] = {
    "has_q_lora": lambda c: c.q_lora_rank is not None,
    "no_q_lora": lambda c: c.q_lora_rank is None,
    "expert_bias": lambda c: c.use_expert_bias,
    "shared_experts": lambda c: c.n_shared_experts > 0,
    "qkv_bias": lambda c: c.attention_bias,
}


@dataclass(frozen=True, slots=True)
class Family:
    """A family's tables: parameter rules, HF shapes implied by config.json, and HF aliases."""

    name: str
    rules: tuple[Rule, ...]
    shapes: tuple[tuple[str, Callable[[ModelConfig], tuple[int, ...]]], ...]
    """(regex over HF names, config -> shape)."""
    aliases: tuple[tuple[str, str], ...]
    """(regex over HF names, the HF tensor it duplicates)."""


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, *, rules, shapes=(), aliases=()) -> Family:
    """Register a family's tables (called by ``families/<name>.py`` at import); returns the Family."""
    fam = Family(name=name, rules=tuple(rules), shapes=tuple(shapes), aliases=tuple(aliases))
    _FAMILIES[name] = fam
    return fam


def family(name: str) -> Family:
    """The registered tables of family ``name``, importing ``families/<name>.py`` on first use."""
    if name not in _FAMILIES:
        try:
            importlib.import_module(f"{FAMILIES_PACKAGE}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{FAMILIES_PACKAGE}.{name}":
                raise
            raise ValueError(f"family {name!r}: no mapping tables ({FAMILIES_PACKAGE}.{name} not found)") from None
        if name not in _FAMILIES:
            raise ValueError(f"family {name!r}: {FAMILIES_PACKAGE}.{name} did not call register_family")
    return _FAMILIES[name]


def family_rules(cfg: ModelConfig) -> list[Rule]:
    """The registry rows of ``cfg``'s family, filtered by its predicates."""
    return [r for r in family(cfg.family).rules if r.when is None or PREDICATES[r.when](cfg)]


def expected_hf_shape(cfg: ModelConfig, name: str) -> tuple[int, ...] | None:
    """The shape config.json implies for HF tensor ``name`` (None when the family table has no rule)."""
    for pattern, shape in family(cfg.family).shapes:
        if re.fullmatch(pattern, name):
            return tuple(int(x) for x in shape(cfg))
    return None


def alias_of(cfg: ModelConfig, name: str) -> str | None:
    """The HF tensor ``name`` duplicates (e.g. an MTP layer's copy of the embedding), or None."""
    for pattern, target in family(cfg.family).aliases:
        if re.fullmatch(pattern, name):
            return target
    return None


def rank_tasks(cfg: ModelConfig, par: ParallelConfig, coord: RankCoord) -> Iterator[TensorTask]:
    """Every megatron-core tensor rank ``coord`` holds, with its HF sources and transform."""
    stages = stage_layers(cfg.num_layers, par)
    layers = stages[coord.pp_rank]
    first, last = coord.pp_rank == 0, coord.pp_rank == par.pp - 1
    experts = ExpertShard.of(cfg, par.ep, coord.ep_rank)
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
                    for e, expert in experts.pairs():
                        yield emit(rule, L=layer, l=local, E=expert, e=e)
        elif rule.scope.startswith("mtp") and last:
            for m in range(cfg.num_mtp_layers):
                layer = cfg.num_layers + m
                moe = cfg.is_moe
                if rule.scope == "mtp" or (rule.scope == "mtp_dense" and not moe) or (rule.scope == "mtp_moe" and moe):
                    yield emit(rule, M=layer, m=m)
                elif rule.scope == "mtp_expert" and moe:
                    for e, expert in experts.pairs():
                        yield emit(rule, M=layer, m=m, E=expert, e=e)


# ------------------------------------------------------------------------------- transforms
def apply_transform(task: TensorTask, sources: list[torch.Tensor], cfg: ModelConfig, tp: int,
                    tp_rank: int) -> torch.Tensor:
    """Build the megatron-core tensor of ``task`` for TP rank ``tp_rank`` from its HF tensors."""
    return task.mapping.to_mcore(sources, cfg, tp, tp_rank, task.mcore)


def invert_transform(task: TensorTask, parts: list[torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The HF tensors of ``task`` from its TP pieces (one per TP rank, in order; one for replicated tensors)."""
    return task.mapping.to_hf(parts, task.hf, cfg)
