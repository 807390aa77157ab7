"""Training job configuration: one dataclass per concern, composed in JobConfig (YAML in/out, overrides)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

import yaml

from megatron_ads.config.model import MtpPolicy
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.config.yaml_io import read_mapping, split_override

Init = Literal["random", "hf", "mcore"]
DataKind = Literal["synthetic"]
Dtype = Literal["fp32", "bf16"]
StubImpl = Literal["megatron", "project"]
StubPart = Literal["optimizer", "metrics"]
TaskWeighting = Literal["loss", "sampling"]
KlEstimator = Literal["k1", "k2", "k3"]
GrpoAggregation = Literal["token_mean", "seq_mean", "task_token_mean"]
Experts = Literal["grouped", "sequential"]
SingleRank = Literal["auto", "megatron"]
RMObjective = Literal["bt", "pointwise"]
RMGap = Literal["relative", "absolute"]
RMPointwiseLoss = Literal["bce", "mse"]
RMKind = Literal["pair", "token"]
RMTokenReward = Literal["prob_diff", "class_map"]
RMLocalReduction = Literal["token_mean", "per_seq_sum"]
RMGlobalTokens = Literal["labeled", "valid"]
GrpoAlgo = Literal["grpo", "ppo"]
PpoKlMode = Literal["reward", "loss"]
DTYPES = get_args(Dtype)


def _one_of(section: str, obj: Any, name: str, kind: Any) -> None:
    """Validate a ``Literal`` field: ValueError naming ``section.name``, the allowed values and what was found."""
    allowed = get_args(kind)
    value = getattr(obj, name)
    if value not in allowed:
        raise ValueError(f"{section}.{name}: expected one of {', '.join(map(str, allowed))}, got {value!r}")


def _default_experts() -> str:
    import torch  # heavy: only when a ModelSpec is made without ``experts``

    return "grouped" if hasattr(torch, "_grouped_mm") else "sequential"


@dataclass(kw_only=True, slots=True)
class ModelSpec:
    """Which model to train and where its initial weights come from."""

    name: str = "tiny_deepseek_v3"
    """A flavor name, an HF config.json, or an HF checkpoint directory."""
    init: Init = "random"
    """random (megatron init, seeded), hf (load the HF checkpoint at ``path``) or mcore (converted shards)."""
    path: str = ""
    """Checkpoint directory for init=hf|mcore."""
    mtp: MtpPolicy = "auto"
    """MTP layers config.json declares (num_nextn_predict_layers): require (the init=hf checkpoint must hold
    them), auto (build without them when the checkpoint holds none, as transformers' save_pretrained writes
    it; with a warning) or drop (never build them)."""
    experts: Experts = field(default_factory=lambda: _default_experts())
    """Routed experts module: grouped (``model.experts``: one ``torch._grouped_mm`` per projection; the
    default where torch has it) or sequential (megatron-core's per-expert loop, ``SequentialMLP``)."""
    single_rank: SingleRank = "auto"
    """auto: where a parallel group has one rank, the project's twins of megatron's modules without their
    communication steps (``model.linear``: TP-1 attention / MLP linears, one ``F.linear`` each, where nothing
    needs megatron's linear (no TE, sequence parallelism, fused or deferred weight gradients);
    ``model.dispatch``: the MoE token dispatcher at EP = TP = 1 without its identity all-to-alls and chunk
    sorts; in a one-process run ``train.finalize.OneRankFinalize``: megatron's ``finalize_model_grads`` without
    its identity collectives and module walks); megatron: megatron-core's modules and functions throughout. Same
    numerics (bit-equal in fp32), same checkpoints."""

    def __post_init__(self):
        _one_of("model", self, "init", Init)
        _one_of("model", self, "mtp", MtpPolicy)
        _one_of("model", self, "experts", Experts)
        _one_of("model", self, "single_rank", SingleRank)
        if self.init != "random" and not self.path:
            raise ValueError(f"model.path: required for model.init={self.init}")


@dataclass(kw_only=True, slots=True)
class DataSpec:
    """Where training tokens come from."""

    kind: DataKind = "synthetic"
    """synthetic: a seeded, learnable token stream (periodic motifs); the base the SFT data builds on."""
    seed: int = 1234
    """Seed of the token stream (independent of the model seed)."""
    motif_len: int = 8
    """Period of the synthetic motifs (the model learns to continue them)."""
    vocab_limit: int = 256
    """Synthetic tokens are drawn from [0, vocab_limit)."""

    def __post_init__(self):
        if self.kind not in get_args(DataKind):
            raise ValueError(f"data.kind: expected 'synthetic' (SFT data arrives with `train sft`), got {self.kind!r}")


@dataclass(kw_only=True, slots=True)
class OptimSpec:
    """Optimizer, schedule and precision. The fields named as in megatron-core's ``OptimizerConfig`` (lr, min_lr,
    weight_decay, adam_beta1, adam_beta2, clip_grad) pass to it by name, with ``megatron`` for any other of its
    fields; ``train.optim.megatron_optimizer_config`` builds it (megatron-core is not imported by config)."""

    lr: float = 3e-3
    """Peak learning rate."""
    min_lr: float = 3e-4
    """Final learning rate of the cosine decay."""
    warmup_steps: int = 5
    """Linear warmup steps."""
    weight_decay: float = 0.01
    """Decoupled weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0: off)."""
    dtype: Dtype = "fp32"
    """Compute dtype: fp32 (CPU default) or bf16 (GPU; fp32 main params and grads)."""
    distributed_optimizer: bool = False
    """Shard optimizer state over (expert-)data-parallel ranks."""
    stub_moe_optimizer: bool = True
    """Give ranks without expert parameters an expert-side optimizer that joins every MoE collective."""
    stub_parts: list[StubPart] | None = None
    """Debug: which collectives the stub keeps uniform, the expert optimizer ("optimizer") and megatron's MoE
    tracker reduction ("metrics"); None: both with stub_moe_optimizer, none without (tests probe them apart)."""
    stub_impl: StubImpl = "megatron"
    """Debug: the expert-side stub optimizer: megatron's own (its builder's empty-group expert optimizer) or the
    project's ExpertStubOptimizer in its place."""
    megatron: dict[str, Any] = field(default_factory=dict)
    """Further megatron-core OptimizerConfig fields, passed as they are (e.g. {adam_eps: 1.0e-8})."""

    def __post_init__(self):
        _one_of("optim", self, "dtype", Dtype)
        _one_of("optim", self, "stub_impl", StubImpl)
        for part in self.stub_parts or []:
            if part not in get_args(StubPart):
                raise ValueError(f"optim.stub_parts: expected a list of {', '.join(get_args(StubPart))}, got {part!r}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"optim.lr/min_lr: expected 0 <= min_lr <= lr, lr > 0; got {self.lr}/{self.min_lr}")


@dataclass(kw_only=True, slots=True)
class TrainSpec:
    """Steps, batch shape and failure handling."""

    steps: int = 50
    """Optimizer steps to run (in total, counting resumed ones)."""
    seq_len: int = 32
    """Tokens per sequence."""
    micro_batch: int = 2
    """Sequences per micro-batch per data-parallel rank."""
    num_microbatches: int = 2
    """Micro-batches per step (gradient accumulation; >= pp keeps the pipeline busy)."""
    seed: int = 1
    """Model init / dropout seed."""
    log_every: int = 1
    """Console progress every N steps (metrics.jsonl gets every step)."""
    max_nan_steps: int = 3
    """Abort after this many skipped non-finite steps."""
    collective_timeout_s: float = 600.0
    """A collective that waits longer raises (naming the group) instead of hanging."""
    moe_metrics: bool = True
    """Track per-layer MoE load metrics (megatron's tracker; reduced over the pipeline group)."""
    moe_aux_loss_coeff: float = 0.0
    """DeepSeek-V3 sequence-wise balance loss coefficient (0: aux-loss-free balancing only, via expert bias)."""
    tensorboard: bool = False
    """Also write TensorBoard scalars (needs the tensorboard package)."""
    profile_steps: list[int] | None = None
    """[first, last]: run ``torch.profiler`` over these optimizer steps (1-based, as ``step`` in metrics.jsonl);
    every rank writes ``profile/rank<r>.txt`` (ops by self time, the trainer's phases) and a Chrome trace."""

    def __post_init__(self):
        for name in ("steps", "seq_len", "micro_batch", "num_microbatches", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name}: expected >= 1, got {getattr(self, name)}")
        p = self.profile_steps
        if p is not None and (not isinstance(p, (list, tuple)) or len(p) != 2
                              or not all(isinstance(x, int) and not isinstance(x, bool) for x in p)
                              or not 1 <= p[0] <= p[1]):
            raise ValueError(f"train.profile_steps: expected [first, last] optimizer steps with 1 <= first <= last "
                             f"(or null), got {p!r}")
        if p is not None:
            self.profile_steps = list(p)


@dataclass(kw_only=True, slots=True)
class CheckpointSpec:
    """When and how checkpoints are kept."""

    every: int = 0
    """Save every N steps (0: only at the end and on SIGTERM)."""
    keep_last: int = 2
    """Keep this many most recent checkpoints."""
    save_at_end: bool = True
    """Save after the last step."""


class TaskFiles(TypedDict, total=False):
    """A task's own labeled JSONL files (val and test optional)."""

    train: str
    val: str
    test: str


@dataclass(kw_only=True, slots=True)
class SFTSpec:
    """Multi-task SFT: tasks, synthetic data sizes, reweighting (AdNanny Eq. 2–7) and validation."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to train (of query_ad, ad_user, query_gen, ...); empty: query_ad and ad_user; [general]: the
    instruction data of ``general_path`` alone (a base model with general ability, e.g. for Table 8). Task
    names and the task-dependent settings below are checked against the task registry (``data.tasks.check_sft``)."""
    train_size: int = 2000
    """Synthetic rows per task (before the val/test split)."""
    data_seed: int = 0
    """Seed of the synthetic corpora."""
    label_only_fraction: float = 0.5
    """Share of training examples in label-only form (empty <think>), which validation scores."""
    prompt_loss_weight: float = 0.0
    """ρ: weight of the prompt tokens' mean NLL added to each sample's loss (0 = Eq. 1, target tokens only).
    A small model learns copy/compare circuits from the prompt text much sooner with ρ > 0."""
    val_rows: int = 64
    """Validation rows per classification task scored at each interval."""
    eval_every: int = 20
    """Steps between validations (and task-weight / perplexity-checkpoint updates)."""
    beta: float = 1.0
    """Instance reweighting sensitivity β (Eq. 5)."""
    w_min: float = 0.2
    """Instance weight lower clip."""
    w_max: float = 5.0
    """Instance weight upper clip."""
    alpha: float = 1.0
    """Task reweighting exponent α (Eq. 7)."""
    lambda_min: float = 0.05
    """Floor on every adaptive task's λ_t, as a fraction of the adaptive tasks' share (renormalized:
    λ_t = share · (λ_min + (1 − n·λ_min) · p_t)). A stated deviation from Eq. 7, where a task whose validation
    metric reaches 1 gets λ = 0 and no gradient until it degrades; 0 = the literal Eq. 7."""
    lambda_ema: float = 0.0
    """Smoothing of Eq. 7's task proportions over validations (EMA: p ← ema · p_prev + (1 − ema) · p_new);
    0 = none (the literal Eq. 7)."""
    label_balance: float = 0.0
    """γ: class-balance weight on the training rows of classification tasks (not in the paper; 0 = off). A row
    weighs (1 / (K · p))^γ for its rarest label (K classes of that field, p the label's share of the task's
    training rows), normalized to mean 1 per task, times its Eq. 5 weight (``train.sft.label_balance_weights``).
    Rare labels (13 % location defects) otherwise leave "always good" a strong optimum."""
    reweight_instances: bool = True
    """Apply Eq. 5 instance weights."""
    reweight_tasks: bool = True
    """Apply Eq. 7 task weights."""
    task_weighting: TaskWeighting = "loss"
    """Where λ_t acts: "loss" (Eq. 2, default) or "sampling" (task-mixer probabilities; the loss then averages tasks)."""
    task_metric: dict[str, str] = field(default_factory=dict)
    """Normalized validation metric M_t per task (Eq. 6); defaults: query_ad bad_view_BACC, ad_user AUC,
    query_gen Relevance (greedy decoding). query_ad also accepts fair_view_BACC, location_BACC, quality_BACC,
    mean_BACC; ad_user BACC; query_gen Diversity, Difficulty."""
    synthetic: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-task synthetic corpus settings (data/synthetic.py SyntheticConfig fields, e.g.
    {ad_user: {label_noise: 0.5}}); size and seed come from train_size / data_seed."""
    files: dict[str, TaskFiles] = field(default_factory=dict)
    """Your own labeled JSONL per task instead of the synthetic corpus: {query_ad: {train: F, val: F, test: F}}
    (val/test optional: 10% of train each). Rows as `megatron-ads eval` gold rows plus the task's inputs."""
    test_rows: int = 256
    """Held-out test rows per task predicted after training into eval/ (0: no test report)."""
    general_path: str | None = None
    """Optional JSONL of public instruction data ({"id", "prompt", "response"}) mixed in as a fixed-weight
    "general" task (paper Table 8)."""
    general_weight: float = 0.1
    """λ of the general task (the adaptive tasks share the rest); also its sampling share (1 with tasks [general]).
    0: never trained on, only scored in the test report (the general metrics of an ads-only run)."""
    general_test_path: str | None = None
    """Held-out general rows (same format) scored into the test report (``eval/report.json`` "general": response
    NLL, perplexity, greedy exact match); None: 10% of ``general_path`` (by ``data_seed``) is held out instead."""
    tokenizer_tasks: list[str] = field(default_factory=list)
    """Tasks whose training rows a random-init run's BPE tokenizer also learns from, besides the tasks it trains
    on (a general-only base run that ads SFT runs continue from: [query_ad, ad_user]); ``synthetic`` / ``files``
    settings apply to them too."""

    def __post_init__(self):
        if not 0.0 <= self.label_only_fraction <= 1.0:
            raise ValueError(f"sft.label_only_fraction: expected [0, 1], got {self.label_only_fraction}")
        for name in ("train_size", "val_rows", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"sft.{name}: expected >= 1, got {getattr(self, name)}")
        if self.test_rows < 0:
            raise ValueError(f"sft.test_rows: expected >= 0, got {self.test_rows}")
        if not 0.0 <= self.lambda_min < 1.0 / max(len(self.tasks), 1):
            raise ValueError(f"sft.lambda_min: expected 0 <= lambda_min < 1 / {len(self.tasks)} (the number of "
                             f"sft.tasks), got {self.lambda_min}")
        if not 0.0 <= self.lambda_ema < 1.0:
            raise ValueError(f"sft.lambda_ema: expected 0 <= ema < 1, got {self.lambda_ema}")
        if not 0.0 <= self.prompt_loss_weight <= 1.0:
            raise ValueError(f"sft.prompt_loss_weight: expected [0, 1], got {self.prompt_loss_weight}")
        if not 0.0 <= self.label_balance <= 1.0:
            raise ValueError(f"sft.label_balance: expected [0, 1], got {self.label_balance}")
        _one_of("sft", self, "task_weighting", TaskWeighting)
        for t, kw in self.synthetic.items():
            if not isinstance(kw, dict):
                raise ValueError(f"sft.synthetic.{t}: expected a mapping of SyntheticConfig fields, got {kw!r}")
        if self.general_path is not None and not 0.0 <= self.general_weight < 1.0:
            raise ValueError(f"sft.general_weight: expected 0 <= w < 1 (0: scored, not trained on), "
                             f"got {self.general_weight}")
        if self.general_test_path is not None and not self.general_path:
            raise ValueError("sft.general_test_path: set without sft.general_path (the general training rows)")


GRPO_RESOURCES = ("ctr_model", "esmm_model", "token_model", "perf_model", "judge_model")
"""Keys of ``grpo.resources``: the ``rewards.registry.RewardResources`` fields a directory can provide
(``token_model``: a ``train rm rm.kind=token`` run directory; ``perf_model``: a ``train rm`` (rm.kind=pair) run
directory; ``judge_model``: an ``ad_judge`` SFT run directory; all three built by the trainer on its own
layout)."""


@dataclass(kw_only=True, slots=True)
class GRPOSpec:
    """GRPO with downstream rewards (AdNanny §4.3; defaults from papers_spec.md §A.1): rollouts, advantages,
    PPO-clip loss, KL to the frozen reference. The math is ``train.grpo``."""

    group_size: int = 8
    """G: rollouts sampled per prompt (one advantage group)."""
    temperature: float = 1.0
    """Rollout sampling temperature (> 0)."""
    top_p: float = 1.0
    """Rollout nucleus sampling mass, in (0, 1]."""
    max_new_tokens: int = 128
    """Rollout length limit (generation also stops at EOS or the task's closing tag)."""
    eps_low: float = 0.2
    """PPO clip range below 1: ρ is clipped at 1 − eps_low (spec ε = 0.2)."""
    eps_high: float = 0.2
    """PPO clip range above 1: ρ is clipped at 1 + eps_high (may differ from eps_low, e.g. 0.28)."""
    dual_clip: float | None = None
    """Dual clip constant c > 1: for A < 0 the objective is bounded below by c·A; None: off."""
    kl_estimator: KlEstimator = "k3"
    """Per-token KL(π_θ‖π_ref) estimator with r = π_ref/π_θ: k1 = −log r, k2 = ½(log r)², k3 = r − 1 − log r."""
    kl_beta: float = 0.02
    """β: KL coefficient (0: no KL term; the spec suggests 0.01–0.04)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (0: off)."""
    ppo_epochs: int = 1
    """μ: optimizer passes over each rollout batch."""
    leave_one_out: bool = False
    """Baseline each rollout with the mean of the other members of its group instead of the group mean."""
    adv_eps: float = 1e-6
    """eps in A = (r − baseline)/(std + eps)."""
    token_alpha: float = 0.0
    """α in A_{i,t} = A_i + α·r_token_{i,t} (0: plain GRPO, one advantage per completion)."""
    aggregation: GrpoAggregation = "task_token_mean"
    """Loss denominator: token_mean (global token count), seq_mean (mean over rollouts of each rollout's token
    mean) or task_token_mean (token mean within each task, tasks combined by task_weights) so that a
    long-answer task does not drown a label task."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """λ per task for task_token_mean (empty: equal weights over the batch's tasks)."""
    rewards: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per-task reward combination {task: {reward_name: weight}}, each channel normalized within its group
    before the weighted sum; reward names are checked against the rewards registry by ``train grpo``."""
    expert_bias_update: bool = False
    """Keep updating the MoE aux-loss-free expert bias during GRPO (off by default)."""
    algo: GrpoAlgo = "grpo"
    """grpo: group-normalized advantages, no critic (AdNanny §4.3); ppo: token-level PPO with a value head and
    GAE (TPPO §3.4, ``train.ppo_loop``; its options are the ``ppo`` section). Rollouts, rewards, clip and
    KL reference are shared."""
    resources: dict[str, str] = field(default_factory=dict)
    """Frozen reward models the rewards read, {name: directory its ``save()`` wrote}: ``ctr_model``
    (``rewards.ctr.CTRModel``, reward ``ctr_uplift``), ``esmm_model`` (``rewards.esmm.ESMMModel``, reward
    ``ctcvr``). Each is loaded (``load()``, with the packaged MiniLM embedder) only when a reward of
    ``grpo.rewards`` needs it; empty: nothing is loaded. ``tools/make_reward_models.py`` writes both.
    ``token_model``: TPPO's token-level reward model (reward ``token_rm``), a ``train rm rm.kind=token`` run
    directory (its latest checkpoint) on the same backbone and tokenizer as the policy; the trainer builds it
    on its own layout, frozen, when a reward reads it. ``perf_model``: RLPF's performance reward model (reward
    ``perf_rm``), a ``train rm`` run directory (rm.kind=pair, objective bt or pointwise; its latest
    checkpoint): built once per rank on the policy's layout, frozen, its own architecture and tokenizer (the
    ones saved with it); it scores each completion's ad text after the prompt it was trained with (keyword and
    ad fields: ``train.rm_loop.rm_prompt``). ``judge_model``: MarketingFM AutoEval's judge (reward
    ``autoeval_accept``), an SFT run of the ``ad_judge`` task (e.g. ``launch/configs/autoeval_judge_tiny_cpu.yaml``;
    its latest checkpoint): built once per rank on the policy's layout, frozen, its own architecture and
    tokenizer; it scores each rule-passing rewrite's relevance and generalization by label scoring, as
    ``megatron-ads autoeval --model`` does."""
    reward_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Parameters of the rewards of ``grpo.rewards``, {reward_name: {field: value}} (the fields of the reward's
    parameter dataclass in ``rewards/``; absent: its defaults), checked against the rewards registry by
    ``train grpo``. E.g. ``perf_rm`` (``rewards.perf.PerfRMParams``): r = RM(x, y) − penalty(len(y)) with
    ``L0`` (90: free length), ``lam`` (0.02: penalty per unit beyond L0), ``form`` (linear: λ·(len − L0);
    quadratic: λ·(len − L0)²), ``unit`` (chars | words), ``fields`` ([title, description]: the parsed fields
    joined with ". " are the scored text), ``keyword_key``, ``malformed_reward`` (−1)."""
    save_rollouts: bool = False
    """Write every step's rollouts to OUT/rollouts.jsonl (rank 0): per rollout its step, task, prompt row id,
    group, completion text, each channel's reward and the per-sample details a reward reports (perf_rm: the
    RM score, the penalty and the length)."""

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(f"grpo.group_size: expected >= 2 (a group of 1 has no relative advantage), "
                             f"got {self.group_size}")
        for name in ("max_new_tokens", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"grpo.{name}: expected >= 1, got {getattr(self, name)}")
        if not self.temperature > 0:
            raise ValueError(f"grpo.temperature: expected > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"grpo.top_p: expected (0, 1], got {self.top_p}")
        if not 0.0 <= self.eps_low < 1.0:
            raise ValueError(f"grpo.eps_low: expected [0, 1), got {self.eps_low}")
        if not self.eps_high >= 0.0:
            raise ValueError(f"grpo.eps_high: expected >= 0, got {self.eps_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"grpo.dual_clip: expected null (off) or > 1, got {self.dual_clip}")
        _one_of("grpo", self, "kl_estimator", KlEstimator)
        _one_of("grpo", self, "aggregation", GrpoAggregation)
        _one_of("grpo", self, "algo", GrpoAlgo)
        for name in ("kl_beta", "entropy_coef", "adv_eps"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"grpo.{name}: expected >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.token_alpha):
            raise ValueError(f"grpo.token_alpha: expected a finite number, got {self.token_alpha}")
        for t, w in self.task_weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not w >= 0:
                raise ValueError(f"grpo.task_weights.{t}: expected a weight >= 0, got {w!r}")
        if not isinstance(self.rewards, dict):
            raise ValueError(f"grpo.rewards: expected {{task: {{reward_name: weight}}}}, got {self.rewards!r}")
        for t, combo in self.rewards.items():
            if not isinstance(combo, dict) or not combo:
                raise ValueError(f"grpo.rewards.{t}: expected a non-empty mapping {{reward_name: weight}}, "
                                 f"got {combo!r}")
            for name, w in combo.items():
                if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
                    raise ValueError(f"grpo.rewards.{t}.{name}: expected a finite weight, got {w!r}")
        if not isinstance(self.resources, dict):
            raise ValueError(f"grpo.resources: expected {{name: model directory}}, got {self.resources!r}")
        for key, path in self.resources.items():
            if key not in GRPO_RESOURCES:
                raise ValueError(f"grpo.resources.{key}: unknown resource; expected one of {list(GRPO_RESOURCES)}")
            if not isinstance(path, str) or not path:
                raise ValueError(f"grpo.resources.{key}: expected a model directory (a path), got {path!r}")
            if not Path(path).is_dir():
                raise ValueError(f"grpo.resources.{key}: {path}: no such directory (a model's save() writes it; "
                                 f"see tools/make_reward_models.py)")
        if (any("autoeval_accept" in combo for combo in self.rewards.values())
                and "judge_model" not in self.resources):
            raise ValueError("grpo.resources.judge_model: reward autoeval_accept (grpo.rewards) needs AutoEval's "
                             "judge: the directory of an ad_judge SFT run (launch/configs/autoeval_judge_tiny_cpu.yaml)")
        if any("perf_rm" in combo for combo in self.rewards.values()) and "perf_model" not in self.resources:
            raise ValueError("grpo.resources.perf_model: reward perf_rm (grpo.rewards) needs a performance reward "
                             "model: the directory of a `train rm` run")
        if not isinstance(self.reward_params, dict):
            raise ValueError(f"grpo.reward_params: expected {{reward_name: {{field: value}}}}, got "
                             f"{self.reward_params!r}")
        for name, values in self.reward_params.items():
            if not isinstance(values, dict):
                raise ValueError(f"grpo.reward_params.{name}: expected a mapping {{field: value}}, got {values!r}")


@dataclass(kw_only=True, slots=True)
class PPOSpec:
    """Token-level PPO (TPPO §3.4, Eq. 4–8; ``papers_spec.md`` §B.1) when ``grpo.algo=ppo``: per-token rewards,
    a value head on the policy, GAE, the length-weighted penalty. Rollouts, rewards (``grpo.rewards``), the
    PPO clip (``grpo.eps_low/eps_high/dual_clip``), ``grpo.kl_beta``, ``grpo.ppo_epochs`` and the loss
    aggregation are the ``grpo`` section's. The math is ``train.tppo``."""

    gamma: float = 1.0
    """GAE discount γ, in [0, 1]."""
    lam: float = 0.95
    """GAE λ, in [0, 1]."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss (>= 0)."""
    value_clip: float | None = 0.2
    """Clip of the value update around the rollout values (null: unclipped value loss); > 0."""
    value_head_std: float = 0.0
    """Std of the value head's initial weight (0: values start at 0); >= 0."""
    value_scale: float = 10.0
    """V = value_scale x head(h): with Adam (updates of ~lr per weight whatever the gradient's scale) the same
    as a value_scale times larger learning rate for the fresh critic, which must catch up with a pretrained
    backbone within a short run (1: the policy's rate); > 0. The value loss's gradient into the shared trunk
    scales with it too (vf_coef balances that). ``value_clip`` stays absolute: with returns of several units
    a clip of 0.2 per epoch also slows the critic (null: unclipped)."""
    kl_mode: PpoKlMode = "reward"
    """reward: −grpo.kl_beta·KL_t added to the per-token rewards before GAE (PPO-RLHF; TPPO Eq. 7);
    loss: grpo.kl_beta·KL_t in the loss (as GRPO)."""
    kl_estimator: KlEstimator = "k1"
    """Per-token KL estimator of the reward-shaping KL (kl_mode=reward); the loss KL uses grpo.kl_estimator."""
    whiten_advantages: bool = True
    """Normalize the advantages to mean 0, std 1 over the batch's response tokens (all data-parallel ranks)."""
    token_credit: bool = True
    """true (TPPO): a reward channel with per-token values (token_rm, blacklist, diversity) rewards each token;
    false (sentence-level PPO): every channel's sentence value, on the completion's last token."""
    lwp_alpha: float | None = None
    """α of the length-weighted penalty lwp(l) = 1/(1 + exp(α(l − s_l) − 6)) multiplying the per-token
    rewards (Eq. 4–5; TPPO: 1.0; 0.5 lets the length grow); null: off."""
    lwp_length: float | None = None
    """s_l in tokens; null: the ``lwp_quantile`` of the SFT targets' token lengths of the tasks."""
    lwp_quantile: float = 0.9
    """Quantile of the SFT response lengths taken for s_l when ``lwp_length`` is null, in (0, 1]."""

    def __post_init__(self):
        for name in ("gamma", "lam"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"ppo.{name}: expected a number in [0, 1], got {v!r}")
        for name in ("vf_coef", "value_head_std"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"ppo.{name}: expected a finite number >= 0, got {v!r}")
        if not (isinstance(self.value_scale, (int, float)) and math.isfinite(self.value_scale)
                and self.value_scale > 0):
            raise ValueError(f"ppo.value_scale: expected a finite number > 0, got {self.value_scale!r}")
        if self.value_clip is not None and not (isinstance(self.value_clip, (int, float)) and self.value_clip > 0):
            raise ValueError(f"ppo.value_clip: expected null (unclipped) or a number > 0, got {self.value_clip!r}")
        _one_of("ppo", self, "kl_mode", PpoKlMode)
        _one_of("ppo", self, "kl_estimator", KlEstimator)
        if self.lwp_alpha is not None and not (isinstance(self.lwp_alpha, (int, float))
                                               and math.isfinite(self.lwp_alpha) and self.lwp_alpha >= 0):
            raise ValueError(f"ppo.lwp_alpha: expected null (off) or a finite number >= 0, got {self.lwp_alpha!r}")
        if self.lwp_length is not None and not (isinstance(self.lwp_length, (int, float))
                                                and math.isfinite(self.lwp_length) and self.lwp_length > 0):
            raise ValueError(f"ppo.lwp_length: expected null (from the SFT lengths) or a number > 0, "
                             f"got {self.lwp_length!r}")
        if not (isinstance(self.lwp_quantile, (int, float)) and 0.0 < self.lwp_quantile <= 1.0):
            raise ValueError(f"ppo.lwp_quantile: expected a quantile in (0, 1], got {self.lwp_quantile!r}")


@dataclass(kw_only=True, slots=True)
class RMSpec:
    """Reward models on the backbone (``train rm``), by ``kind``: pair, the performance reward model (RLPF /
    AdLlama, ``papers_spec.md`` §B.3: a scalar head trained on preference pairs mined from synthetic multitext
    logs, ``data.multitext``; ``train.rm_loop``); token, TPPO's token-level reward model (§B.1: a 3-class token
    classifier trained on word-labeled user_query_gen responses, ``data.token_labels``;
    ``train.token_rm_loop``). ``data_seed``, ``val_fraction``, ``test_fraction``, ``eval_every`` and
    ``head_init_std`` serve both kinds; the other fields one kind each (as their docstrings say)."""

    kind: RMKind = "pair"
    """pair: the performance RM (scalar head, Bradley–Terry / pointwise on preference pairs); token: TPPO's
    token-level RM (3-output head: class 0 masked/separator, 1 irrelevant, 2 relevant per token)."""
    objective: RMObjective = "bt"
    """bt: Bradley–Terry −log σ(r_chosen − r_rejected) per pair (the paper's RM); pointwise: regress each
    text's observed CTR from its score (the baseline the paper found worse at ranking similar texts), on the
    same pairs' texts, batches and steps, so that only the loss differs."""
    pointwise_loss: RMPointwiseLoss = "bce"
    """The pointwise baseline's loss: bce (BCE of σ(score) against the observed CTR, impression-weighted) or
    mse ((score − CTR)², impression-weighted)."""
    n_ads: int = 2000
    """Ads in the synthetic multitext logs (each shown with several text variants)."""
    variants: list[int] = field(default_factory=lambda: [2, 5])
    """[min, max] text variants per ad (inclusive; min >= 2)."""
    impressions: list[int] = field(default_factory=lambda: [50, 2000])
    """[min, max] impressions per variant (log-uniform, inclusive); clicks ~ Binomial(impressions, true CTR)."""
    ad_effect: float = 0.0
    """Std of a hidden per-ad CTR logit offset shared by the ad's variants (image, audience, placement: what
    multitext pairs hold fixed); 0: the CTR depends on the text alone (``data.multitext.multitext_logs``)."""
    data_seed: int = 0
    """Seed of the logs and of the train/val/test split by ad."""
    val_fraction: float = 0.1
    """Share of ads held out for validation (their pairs are scored every ``eval_every`` steps)."""
    test_fraction: float = 0.1
    """Share of ads held out for the final report (``eval/report.json``); disjoint from train and val."""
    min_impressions: int = 100
    """A variant enters pairs only with at least this many impressions (paper: not given)."""
    min_ctr_gap: float = 0.1
    """Pairs need an observed CTR gap of at least this much (``gap`` kind; paper: not given)."""
    gap: RMGap = "relative"
    """relative: (ctr_w − ctr_l) / ctr_l; absolute: ctr_w − ctr_l."""
    eval_every: int = 20
    """Steps between validations (pairwise accuracy on held-out pairs, ``val_metrics.jsonl``)."""
    val_pairs: int = 256
    """Validation pairs scored at each validation (the first N of the val split; fewer if it holds fewer)."""
    test_pairs: int = 0
    """Test pairs scored after training into ``eval/report.json`` (0: all of the test split)."""
    head_init_std: float | None = None
    """Std of the head's initial weight (bias 0); null: 1/sqrt(hidden + 1); 0: a zero head."""
    rows: int = 2000
    """token: synthetic user_query_gen rows (users) the examples are built from, split by row into train / val /
    test (``val_fraction``, ``test_fraction``, seeded by ``data_seed``)."""
    responses_per_row: int = 2
    """token: responses per row: the first has the row's gold queries, the others perturbed queries
    (``perturb_rate``)."""
    perturb_rate: float = 0.5
    """token: per query of a perturbed response, the probability that it goes off-topic (replaced by a query of
    a non-interest category, half the time one of the user's one-off categories in the history, or given an
    off-topic word); in [0, 1]."""
    label_only_fraction: float = 0.5
    """token: share of responses with an empty <think></think> (the SFT'd policy emits both forms); in [0, 1]."""
    local_weight: float = 0.5
    """token: w in L = w·L_local + (1 − w)·L_global (TPPO Eq. 3; §5.1: 0.4–0.6 best); in [0, 1]."""
    balance_max_ratio: float = 3.0
    """token: per micro-batch, #class-2 / #class-1 tokens kept within [1/r, r] (TPPO §3.3: about 1:3 to 3:1);
    >= 1."""
    class_weights: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """token: w_c of the local cross-entropy for classes 0, 1, 2 (TPPO Eq. 1; not given by the paper)."""
    local_reduction: RMLocalReduction = "token_mean"
    """token: normalization of L_local (``tppo.token_rm_loss``): token_mean (over the balanced valid tokens of
    the micro-batch) or per_seq_sum (Eq. 1 literally: the sum over a sequence's valid tokens / n)."""
    global_tokens: RMGlobalTokens = "labeled"
    """token: tokens of L_global's per-sequence mean (Eq. 2): labeled (valid tokens of gold class 1 or 2) or
    valid (all valid tokens)."""
    token_reward: RMTokenReward = "prob_diff"
    """token: per-token reward the query metrics read (``tppo.token_reward_from_probs``): prob_diff (P(2) − P(1))
    or class_map (argmax 1 → −1, 2 → +1); a query's score is its tokens' mean."""
    val_examples: int = 256
    """token: validation responses scored at each validation (the first N of the val split)."""
    test_examples: int = 0
    """token: test responses scored after training into ``eval/report.json`` (0: all of the test split)."""

    def __post_init__(self):
        _one_of("rm", self, "kind", RMKind)
        _one_of("rm", self, "token_reward", RMTokenReward)
        _one_of("rm", self, "local_reduction", RMLocalReduction)
        _one_of("rm", self, "global_tokens", RMGlobalTokens)
        for name in ("rows", "responses_per_row", "val_examples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"rm.{name}: expected an integer >= 1, got {v!r}")
        if isinstance(self.test_examples, bool) or not isinstance(self.test_examples, int) or self.test_examples < 0:
            raise ValueError(f"rm.test_examples: expected an integer >= 0 (0: the whole test split), "
                             f"got {self.test_examples!r}")
        for name in ("perturb_rate", "label_only_fraction", "local_weight"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"rm.{name}: expected a number in [0, 1], got {v!r}")
        if (isinstance(self.balance_max_ratio, bool) or not isinstance(self.balance_max_ratio, (int, float))
                or not (math.isfinite(self.balance_max_ratio) and self.balance_max_ratio >= 1.0)):
            raise ValueError(f"rm.balance_max_ratio: expected a finite ratio >= 1, got {self.balance_max_ratio!r}")
        cw = self.class_weights
        if (not isinstance(cw, (list, tuple)) or len(cw) != 3
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0)
                       for w in cw) or not any(cw)):
            raise ValueError(f"rm.class_weights: expected 3 finite weights >= 0 (classes 0, 1, 2), not all 0, "
                             f"got {cw!r}")
        _one_of("rm", self, "objective", RMObjective)
        _one_of("rm", self, "pointwise_loss", RMPointwiseLoss)
        _one_of("rm", self, "gap", RMGap)
        for name in ("n_ads", "min_impressions", "eval_every", "val_pairs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"rm.{name}: expected an integer >= 1, got {v!r}")
        if isinstance(self.test_pairs, bool) or not isinstance(self.test_pairs, int) or self.test_pairs < 0:
            raise ValueError(f"rm.test_pairs: expected an integer >= 0 (0: the whole test split), "
                             f"got {self.test_pairs!r}")
        for name, lo in (("variants", 2), ("impressions", 1)):
            v = getattr(self, name)
            if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, int) for x in v)
                    or not lo <= v[0] <= v[1]):
                raise ValueError(f"rm.{name}: expected [min, max] integers with {lo} <= min <= max, got {v!r}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 < v < 0.5:
                raise ValueError(f"rm.{name}: expected a share in (0, 0.5), got {v!r}")
        if not isinstance(self.ad_effect, (int, float)) or not (math.isfinite(self.ad_effect) and self.ad_effect >= 0):
            raise ValueError(f"rm.ad_effect: expected a finite std >= 0, got {self.ad_effect!r}")
        if not isinstance(self.min_ctr_gap, (int, float)) or not self.min_ctr_gap >= 0:
            raise ValueError(f"rm.min_ctr_gap: expected a number >= 0, got {self.min_ctr_gap!r}")
        if self.head_init_std is not None and not (isinstance(self.head_init_std, (int, float))
                                                   and math.isfinite(self.head_init_std) and self.head_init_std >= 0):
            raise ValueError(f"rm.head_init_std: expected null (1/sqrt(hidden + 1)) or a number >= 0, "
                             f"got {self.head_init_std!r}")


@dataclass(kw_only=True, slots=True)
class JobConfig:
    """A training job: what, how, where. Saved as YAML beside every checkpoint."""

    out_dir: str = "runs/tiny"
    """Run directory: metrics.jsonl, checkpoints/, config.yaml."""
    resume: str = "none"
    """none, auto (latest checkpoint in out_dir if any) or a checkpoint directory."""
    model: ModelSpec = field(default_factory=ModelSpec)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataSpec = field(default_factory=DataSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    sft: SFTSpec = field(default_factory=SFTSpec)
    grpo: GRPOSpec = field(default_factory=GRPOSpec)
    ppo: PPOSpec = field(default_factory=PPOSpec)
    rm: RMSpec = field(default_factory=RMSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "JobConfig":
        d = dict(d or {})
        nested = {"model": ModelSpec, "parallel": ParallelConfig, "data": DataSpec, "optim": OptimSpec,
                  "train": TrainSpec, "checkpoint": CheckpointSpec, "sft": SFTSpec,
                  "grpo": GRPOSpec, "ppo": PPOSpec, "rm": RMSpec}
        kwargs: dict[str, Any] = {}
        known = {f.name for f in dataclasses.fields(cls)}
        for key, value in d.items():
            if key not in known:
                raise ValueError(f"{source}: unknown field {key!r}; expected one of {sorted(known)}")
            if key in nested:
                sub_known = {f.name for f in dataclasses.fields(nested[key])}
                bad = set(value or {}) - sub_known
                if bad:
                    raise ValueError(f"{source}: unknown field(s) {sorted(bad)} in {key!r}; expected {sorted(sub_known)}")
                kwargs[key] = nested[key](**(value or {}))
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "JobConfig":
        """Read YAML and apply ``key=value`` overrides (dotted keys, YAML-typed values)."""
        d = read_mapping(path)
        for item in overrides or []:
            key, value = split_override(item, "train.steps=10")
            node = d
            parts = key.split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
                if not isinstance(node, dict):
                    raise ValueError(f"override {item!r}: {p!r} is not a section")
            node[parts[-1]] = value
        return cls.from_dict(d, source=str(path))
