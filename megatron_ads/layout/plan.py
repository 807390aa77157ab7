"""ParallelPlan: the single source of truth for a run's layout (tp, pp, ep, dp, stages, experts,
memory, traffic), its validation, stage balancing and the auto search.

Rank order follows megatron-core's default ``tp-cp-ep-dp-pp`` (first = fastest):
dense ranks   rank = tp_r + tp * (dp_r + dp * pp_r)
expert ranks  rank = etp_r + etp * (ep_r + ep * (edp_r + edp * pp_r)),  edp = tp * dp / (etp * ep)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.counts import active_params, count_params
from megatron_ads.layout.experts import expert_ranges
from megatron_ads.layout.memory import GB, stage_cost, stage_memory
from megatron_ads.layout.traffic import traffic
from megatron_ads.runtime.errors import BadInput

Recompute = Literal["none", "full", "auto"]
RECOMPUTE: tuple[str, ...] = get_args(Recompute)


class PlanError(BadInput):
    """A layout request that cannot be satisfied; the message names the constraint."""


@dataclass(kw_only=True, slots=True)
class Cluster:
    """The machines a plan is made for."""

    nodes: int
    """Number of nodes."""
    gpus_per_node: int
    """GPUs per node."""
    gpu_mem_gb: float = 80.0
    """Usable memory per GPU (GB = 10^9 bytes)."""

    def __post_init__(self):
        for name in ("nodes", "gpus_per_node"):
            if getattr(self, name) < 1:
                raise PlanError(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.gpu_mem_gb <= 0:
            raise PlanError(f"gpu_mem_gb: expected > 0, got {self.gpu_mem_gb}")

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(kw_only=True, slots=True)
class TrainShape:
    """What one rank computes per micro-batch, and how."""

    seq_len: int = 4096
    """Tokens per sequence."""
    micro_batch: int = 1
    """Sequences per micro-batch."""
    num_microbatches: int = 0
    """Micro-batches per step (0: 2 x pp)."""
    recompute: Recompute = "auto"
    """Activation recompute: none, full, or auto (none when it fits, else full)."""
    distributed_optimizer: bool = True
    """Shard optimizer state over (expert-)data-parallel ranks."""
    mtp: bool = True
    """Train the model's MTP layers (placed on the last stage)."""

    def __post_init__(self):
        if self.seq_len < 1 or self.micro_batch < 1:
            raise PlanError(f"seq_len/micro_batch: expected >= 1, got {self.seq_len}/{self.micro_batch}")
        if self.recompute not in RECOMPUTE:
            raise PlanError(f"recompute: expected one of {RECOMPUTE}, got {self.recompute!r}")


@dataclass(kw_only=True, slots=True)
class StagePlan:
    index: int
    layers: list[int]
    has_embedding: bool
    has_output: bool
    has_mtp: bool
    moe_layers: list[int]
    params: float
    """Parameters per rank of this stage (dense + its experts)."""
    memory_gb: float
    """Peak memory estimate per rank (GB)."""
    memory: dict[str, float] = field(default_factory=dict)
    cost: float = 0.0
    """Compute per token per rank (FLOPs)."""


@dataclass(kw_only=True, slots=True)
class ParallelPlan:
    """A validated layout. JSON fields: tp, pp, ep, dp, expert_dp, world_size, params, stages, experts, dense-only stages (plus memory/traffic detail)."""

    tp: int
    pp: int
    ep: int
    etp: int
    dp: int
    expert_dp: int
    world_size: int
    total_params: int
    active_params: int
    mtp_params: int
    stages: list[StagePlan]
    experts: list[dict[str, int]]
    dense_only_stages: list[int]
    gpus_per_node: int
    nodes: int
    gpu_mem_gb: float
    seq_len: int
    micro_batch: int
    num_microbatches: int
    recompute: str
    distributed_optimizer: bool
    traffic: dict[str, Any] = field(default_factory=dict)
    max_memory_gb: float = 0.0
    fits: bool = True
    model_type: str = ""
    explanation: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    def to_parallel_config(self) -> ParallelConfig:
        return ParallelConfig(tp=self.tp, pp=self.pp, ep=self.ep, stage_layers=[len(s.layers) for s in self.stages])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParallelPlan":
        d = dict(d)
        d["stages"] = [StagePlan(**s) for s in d["stages"]]
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "ParallelPlan":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise PlanError(f"{path}: not a ParallelPlan JSON ({exc})") from exc

    def rank_coords(self, rank: int) -> dict[str, int]:
        """Megatron coordinates of a global rank: tp, pp, dp (dense view) and ep, edp, etp (expert view)."""
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank: expected 0..{self.world_size - 1}, got {rank}")
        tp_r, rest = rank % self.tp, rank // self.tp
        dp_r, pp_r = rest % self.dp, rest // self.dp
        within = rank % (self.tp * self.dp)
        etp_r, rest = within % self.etp, within // self.etp
        ep_r, edp_r = rest % self.ep, rest // self.ep
        return {"tp": tp_r, "pp": pp_r, "dp": dp_r, "ep": ep_r, "edp": edp_r, "etp": etp_r}

    def node_of(self, rank: int) -> int:
        return rank // self.gpus_per_node


# ---------------------------------------------------------------------------------- validation
def validate(cfg: ModelConfig, cluster: Cluster, tp: int, pp: int, ep: int, etp: int = 1) -> int:
    """Check a (tp, pp, ep) request; return dp. Raises PlanError naming the violated constraint."""
    world = cluster.world_size
    for name, v in (("tp", tp), ("pp", pp), ("ep", ep), ("etp", etp)):
        if v < 1:
            raise PlanError(f"{name}: expected >= 1, got {v}")
    if world % (tp * pp):
        raise PlanError(f"world size {world} ({cluster.nodes} nodes x {cluster.gpus_per_node}) is not divisible "
                        f"by tp*pp = {tp}*{pp}")
    dp = world // (tp * pp)
    if pp > cfg.num_layers:
        raise PlanError(f"pp: {pp} pipeline stages for {cfg.num_layers} layers; each stage needs at least one layer")
    if cfg.num_attention_heads % tp:
        raise PlanError(f"tp: num_attention_heads={cfg.num_attention_heads} is not divisible by tp={tp}")
    if cfg.num_key_value_heads % tp:
        raise PlanError(f"tp: num_key_value_heads={cfg.num_key_value_heads} is not divisible by tp={tp}")
    if cfg.vocab_size % tp:
        raise PlanError(f"tp: vocab_size={cfg.vocab_size} is not divisible by tp={tp}")
    if cfg.intermediate_size % tp:
        raise PlanError(f"tp: intermediate_size={cfg.intermediate_size} is not divisible by tp={tp}")
    if cfg.family == "deepseek_v3" and tp > 1:
        raise PlanError("tp: MLA models are supported with tp=1 (use PP x EP x DP, as the paper's layout does)")
    if tp > cluster.gpus_per_node:
        raise PlanError(f"tp: {tp} exceeds gpus_per_node={cluster.gpus_per_node}; tensor parallelism must stay in a node")
    if cfg.is_moe:
        if cfg.num_experts % ep:
            raise PlanError(f"ep: n_routed_experts={cfg.num_experts} is not divisible by ep={ep}")
        if (tp * dp) % (ep * etp):
            raise PlanError(f"ep: ep*etp = {ep}*{etp} must divide tp*dp = {tp}*{dp}")
    elif ep != 1:
        raise PlanError(f"ep: {ep} given for a dense model (no routed experts); expected 1")
    return dp


# ---------------------------------------------------------------------------------- stages
def balance_stages(costs: list[float], pp: int, first_extra: float = 0.0, last_extra: float = 0.0) -> list[int]:
    """Contiguous split of per-layer ``costs`` into ``pp`` non-empty stages minimizing the sum of squared
    stage costs (most even split; stage 0 also carries ``first_extra``, the last ``last_extra``)."""
    n = len(costs)
    if pp > n:
        raise PlanError(f"pp: {pp} stages for {n} layers")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[k][i]: min objective splitting the first i layers into k stages
    best = [[inf] * (n + 1) for _ in range(pp + 1)]
    arg = [[0] * (n + 1) for _ in range(pp + 1)]
    best[0][0] = 0.0
    for k in range(1, pp + 1):
        for i in range(k, n - (pp - k) + 1):
            for j in range(k - 1, i):
                if best[k - 1][j] == inf:
                    continue
                c = prefix[i] - prefix[j] + (first_extra if k == 1 else 0.0) + (last_extra if k == pp else 0.0)
                v = best[k - 1][j] + c * c
                if v < best[k][i] - 1e-9 * abs(v):
                    best[k][i], arg[k][i] = v, j
    counts, i = [], n
    for k in range(pp, 0, -1):
        j = arg[k][i]
        counts.append(i - j)
        i = j
    return counts[::-1]


def build_plan(cfg: ModelConfig, cluster: Cluster, shape: TrainShape, tp: int = 1, pp: int = 1, ep: int = 1,
               etp: int = 1, stage_layer_counts: list[int] | None = None) -> ParallelPlan:
    """A full plan for fixed sizes: balanced stages, experts, memory, traffic."""
    dp = validate(cfg, cluster, tp, pp, ep, etp)
    edp = (tp * dp) // (ep * etp)
    mtp = shape.mtp and cfg.num_mtp_layers > 0
    seq = shape.seq_len
    if stage_layer_counts is None:
        per_layer = [stage_cost(cfg, [layer], False, False, tp, False, seq) for layer in range(cfg.num_layers)]
        last_extra = stage_cost(cfg, [], False, True, tp, mtp, seq)
        counts = balance_stages(per_layer, pp, 0.0, last_extra)
    else:
        counts = list(stage_layer_counts)
        if len(counts) != pp or sum(counts) != cfg.num_layers or min(counts) < 1:
            raise PlanError(f"stage_layers: {counts} must have {pp} entries >= 1 summing to {cfg.num_layers}")
    recompute_choices = ("none", "full") if shape.recompute == "auto" else (shape.recompute,)
    for recompute in recompute_choices:
        stages, start = [], 0
        for s, n in enumerate(counts):
            layers = list(range(start, start + n))
            start += n
            first, last = s == 0, s == pp - 1
            mem = stage_memory(cfg, layers, s, pp, tp, ep, dp, edp, seq, shape.micro_batch, recompute,
                               shape.distributed_optimizer, mtp)
            stages.append(StagePlan(
                index=s, layers=layers, has_embedding=first, has_output=last, has_mtp=last and mtp,
                moe_layers=[layer for layer in layers if cfg.is_moe_layer(layer)]
                + ([cfg.num_layers + m for m in range(cfg.num_mtp_layers)] if last and mtp and cfg.is_moe else []),
                params=mem["params"], memory_gb=round(mem["total_gb"], 3),
                memory={k: round(v, 3) for k, v in mem.items() if k.endswith("_gb")},
                cost=stage_cost(cfg, layers, first, last, tp, mtp, seq)))
        max_mem = max(s.memory_gb for s in stages)
        if max_mem <= cluster.gpu_mem_gb:
            break
    pc = count_params(cfg)
    plan = ParallelPlan(
        tp=tp, pp=pp, ep=ep, etp=etp, dp=dp, expert_dp=edp, world_size=cluster.world_size,
        total_params=pc.total, active_params=active_params(cfg), mtp_params=pc.mtp, stages=stages,
        experts=expert_ranges(cfg.num_experts, ep) if cfg.is_moe else [],
        dense_only_stages=[s.index for s in stages if cfg.is_moe and not s.moe_layers],
        gpus_per_node=cluster.gpus_per_node, nodes=cluster.nodes, gpu_mem_gb=cluster.gpu_mem_gb,
        seq_len=seq, micro_batch=shape.micro_batch, num_microbatches=shape.num_microbatches or 2 * pp,
        recompute=recompute, distributed_optimizer=shape.distributed_optimizer,
        max_memory_gb=max_mem, fits=max_mem <= cluster.gpu_mem_gb, model_type=cfg.model_type,
    )
    plan.traffic = traffic(cfg, plan)
    return plan


# ---------------------------------------------------------------------------------- auto search
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_sizes(cfg: ModelConfig, cluster: Cluster, tp: int | None, pp: int | None,
                    ep: int | None) -> list[tuple[int, int, int]]:
    """Every (tp, pp, ep) that passes validation, honouring the sizes the user fixed."""
    out = []
    world = cluster.world_size
    for t in ([tp] if tp else _divisors(cluster.gpus_per_node)):
        for p in ([pp] if pp else _divisors(world // t if world % t == 0 else 1)):
            eps = [ep] if ep else (_divisors(cfg.num_experts) if cfg.is_moe else [1])
            for e in eps:
                try:
                    validate(cfg, cluster, t, p, e)
                except PlanError:
                    continue
                out.append((t, p, e))
    return out


def auto_plan(cfg: ModelConfig, cluster: Cluster, shape: TrainShape, tp: int | None = None, pp: int | None = None,
              ep: int | None = None) -> ParallelPlan:
    """Search valid layouts; pick by (fits memory, least inter-node bytes per step, most balanced stages,
    least memory). Raises PlanError naming why nothing fits."""
    cands = candidate_sizes(cfg, cluster, tp, pp, ep)
    if not cands:
        # re-run the fixed request through validate to surface the named constraint
        validate(cfg, cluster, tp or 1, pp or 1, ep or 1)
        raise PlanError(f"no valid (tp, pp, ep) for {cluster.world_size} GPUs with the fixed sizes "
                        f"tp={tp} pp={pp} ep={ep}")
    plans = [build_plan(cfg, cluster, shape, t, p, e) for t, p, e in cands]

    def key(p: ParallelPlan):
        costs = [s.cost for s in p.stages]
        imbalance = max(costs) / (sum(costs) / len(costs))
        return (not p.fits, p.traffic["inter_node_bytes_per_step"], round(imbalance, 3), p.max_memory_gb)

    plans.sort(key=key)
    best = plans[0]
    if not best.fits:
        smallest = min(plans, key=lambda p: p.max_memory_gb)
        raise PlanError(f"memory: no layout fits {cluster.gpu_mem_gb:g} GB per GPU on {cluster.world_size} GPUs; "
                        f"the smallest peak is {smallest.max_memory_gb:.1f} GB (tp={smallest.tp} pp={smallest.pp} "
                        f"ep={smallest.ep}); add nodes, shorten seq_len or use recompute")
    fitting = [p for p in plans if p.fits]
    best.explanation = [
        f"{len(cands)} valid (tp, pp, ep) layouts for {cluster.world_size} GPUs; {len(fitting)} fit "
        f"{cluster.gpu_mem_gb:g} GB per GPU",
        f"chosen tp={best.tp} pp={best.pp} ep={best.ep} dp={best.dp}: peak {best.max_memory_gb:.1f} GB "
        f"(recompute {best.recompute}), inter-node {best.traffic['inter_node_bytes_per_step'] / GB:.2f} GB/step per rank, "
        f"stage cost max/mean {key(best)[2]:.3f}",
    ]
    if len(fitting) > 1:
        runner = fitting[1]
        best.explanation.append(
            f"runner-up tp={runner.tp} pp={runner.pp} ep={runner.ep}: inter-node "
            f"{runner.traffic['inter_node_bytes_per_step'] / GB:.2f} GB/step, peak {runner.max_memory_gb:.1f} GB")
    return best
