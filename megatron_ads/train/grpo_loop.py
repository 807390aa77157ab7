"""GRPO on the Trainer (AdNanny §4.3; spec ``papers_spec.md`` §A.1; the math is ``train.grpo``).

One step:
1. Prompts: ``global_batch / group_size`` rows of the SFT tasks (``sft.tasks``, the SFT data loading), tasks
   taken round-robin, rows drawn with an RNG seeded by (data seed, model seed, step): every rank draws the
   same batch and a resumed run draws what the uninterrupted one drew (the data position is the step).
2. Rollouts: ``group_size`` completions per prompt through the ``Rollout`` the caller hands in
   (``train.rollout``; ``cli.workers`` runs the inference engine in-process over this rank's chunk), seeded
   per step; model in eval mode during it, back in train mode after. Every rank holds every rollout.
3. Rewards per task from the rewards registry (``grpo.rewards``: {task: {reward: weight}}; defaults: ``label``
   for the labeling tasks, ``recall_at_k`` + ``format`` for query_gen), group advantages per channel, then
   the weighted sum (``train.grpo.combine_advantages``). Token-level rewards align with the completion tokens
   through ``meta["completion_ids"]`` (the generated ids, stop token included: what the loss mask covers)
   and ``RewardResources.decode`` (``decode_completion``, which made the completion text); their per-token
   values, weighted by the channel weights, enter A_{i,t} = A_i + grpo.token_alpha·r_token. Rewards take their
   parameters from ``grpo.reward_params``; the frozen models of ``grpo.resources`` are loaded once, when a used
   reward reads them — the backbone ones (``token_model``, ``perf_model``: ``train.frozen_rm``) on this
   trainer's layout, at construction, on every rank together. Per-sample details a reward reports (its
   ``details``: perf_rm's RM score, penalty and length) are logged as ``reward/<task>/<channel>/<name>/mean``;
   ``grpo.save_rollouts`` writes every rollout with its rewards to ``rollouts.jsonl``.
4. Old-policy log-probs: one forward-only pass of the trainer's model over this rank's rollouts (megatron's
   pipeline schedule); ``token_mult_prob_error`` against the engine's log-probs is logged. Reference
   log-probs (``grpo.kl_beta > 0``): the same pass over a frozen copy of the initial policy (a second chunk
   built the same way, weights copied before any resume, no grad); skipped when β = 0.
5. ``grpo.ppo_epochs`` passes of the PPO-clip loss through megatron's forward_backward_func (1F1B), each
   followed by an optimizer step. Each micro-batch returns its share of the *global* loss (denominators over
   the whole batch: every rank holds every rollout, so the global token / sequence / per-task counts are
   known on every rank without an all-reduce); megatron divides a micro-batch's loss by the number of
   micro-batches and DDP averages gradients over DP ranks, so the share is multiplied by both.

MoE: the aux-loss-free expert-bias update is off unless ``grpo.expert_bias_update`` (it would chase the
rollouts' routing). MTP layers are not trained by GRPO (``model.mtp=drop``).

Shapes: B rollouts in a micro-batch, S = train.seq_len, V vocab.
"""

from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.config.train import JobConfig
from megatron_ads.data.packing import model_forward
from megatron_ads.data.sft_data import load_sft_data, sft_tokenizer
from megatron_ads.data.synthetic import ad_corpus
from megatron_ads.data.tasks import check_sft, parse_output, sft_tasks, task
from megatron_ads.eval.plots import plot_grpo_run
from megatron_ads.runtime.log import get_logger
from megatron_ads.train import grpo
from megatron_ads.train.build import load_initial_weights
from megatron_ads.train.loop import Trainer, TrainingAborted
from megatron_ads.train.rollout import Completion, RolloutFactory, RolloutSettings, check_groups

log = get_logger(__name__)

DEFAULT_REWARDS = {"query_ad": {"label": 1.0}, "ad_user": {"label": 1.0},
                   "query_gen": {"recall_at_k": 1.0, "format": 0.5}}
"""Reward combination of a task ``grpo.rewards`` does not name."""
POLICY_HEADS = ("value_head.",)
"""State-dict prefixes of heads a trainer adds to the policy (PPO's critic) that its frozen copies do not have."""
STATS = ("share", "pg", "kl", "clip_low", "clip_high", "dual", "entropy", "tokens")
"""Per-micro-batch sums reduced after each pass (masked sums; ``tokens`` the mask count)."""


def reward_weights(job: JobConfig, tasks: list[str]) -> dict[str, dict[str, float]]:
    """{task: {reward: weight}} for ``tasks``: ``grpo.rewards`` or the defaults; ValueError naming the field."""
    out = {}
    for t in tasks:
        combo = job.grpo.rewards.get(t) or DEFAULT_REWARDS.get(t)
        if not combo:
            raise ValueError(f"grpo.rewards.{t}: no reward for task {t!r} (no default either); "
                             f"give {{reward_name: weight}}")
        out[t] = dict(combo)
    extra = sorted(set(job.grpo.rewards) - set(tasks))
    if extra:
        raise ValueError(f"grpo.rewards: task(s) {extra} not in sft.tasks {tasks} (the tasks prompts come from)")
    return out


def _gold(t: str, row: dict) -> dict[str, Any]:
    """Gold value of each closed-set output field of task ``t`` in ``row`` ({} when there are none)."""
    out = {}
    for f in task(t).outputs:
        if f.allowed is None:
            continue
        cur: Any = row
        for part in f.key.split("."):
            if not isinstance(cur, dict) or part not in cur:
                cur = None
                break
            cur = cur[part]
        if cur is not None:
            out[f.name] = str(cur)
    return out


def build_rewards(weights: dict[str, dict[str, float]], seed: int, decode=None,
                  models: dict[str, str] | None = None, loaders: dict[str, Any] | None = None,
                  params: dict[str, dict[str, Any]] | None = None):
    """The reward functions ``weights`` uses, bound to the task parser, the gold labels, (recall@K) the
    synthetic ad corpus, ``decode`` (ids -> completion text, for token-level rewards) and the frozen models of
    ``models`` (``grpo.resources``: {ctr_model | esmm_model | token_model | perf_model | judge_model: directory}), each loaded
    on the first ``need`` of a reward that reads it (never when no used reward does); ``loaders``
    ({key: fn(directory)}) build the keys the trainer owns (the backbone reward models). ``params``
    (``grpo.reward_params``): {reward name: {field: value}}, checked against each reward's parameter dataclass
    (errors name ``grpo.reward_params.<reward>.<field>``). Returns ({reward name: fn}, resources)."""
    from megatron_ads.rewards import registry, rules  # noqa: F401  (rules registers label and format)

    used = {n for combo in weights.values() for n in combo}
    checked = {}
    for name, values in (params or {}).items():
        if name not in registry.REWARDS:
            raise ValueError(f"grpo.reward_params.{name}: unknown reward; expected one of {sorted(registry.REWARDS)}")
        checked[name] = registry.make_params(name, values, where="grpo.reward_params")
        if name not in used:
            log.warning("grpo.reward_params.%s: no task of grpo.rewards uses reward %s; its parameters are unused",
                        name, name)
    if "recall_at_k" in used:
        from megatron_ads.rewards import retrieval  # noqa: F401  (registers recall_at_k; loads the embedder)
    resources = registry.RewardResources(
        parse=lambda t, text: parse_output(task(t), text), gold=_gold,
        ad_corpus=ad_corpus(seed) if "recall_at_k" in used else None, decode=decode)
    own = loaders or {}
    resources.loaders = {key: (partial(own[key], path) if key in own else partial(_load_model, key, path, resources))
                         for key, path in (models or {}).items()}
    combo = registry.RewardCombination(tasks=weights, where="grpo.rewards")
    fns = {n: registry.build(n, resources, checked.get(n)) for n in combo.used()}
    for key in sorted(models or {}):
        if getattr(resources, key) is None and key not in own:
            log.info("grpo.resources.%s: no reward of grpo.rewards reads it; not loaded", key)
    return fns, resources


def _load_model(key: str, path: str, resources) -> Any:
    """Frozen model ``key`` of ``grpo.resources`` from ``path`` (its ``save()`` output), on the resources'
    embedder (the packaged MiniLM, built once and shared); errors name ``grpo.resources.<key>``."""
    from megatron_ads.rewards import ctr, esmm
    from megatron_ads.rewards.retrieval import MiniLMEmbedder

    kinds = {"ctr_model": ctr.CTRModel, "esmm_model": esmm.ESMMModel}
    if key in ("token_model", "perf_model", "judge_model"):
        raise ValueError(f"grpo.resources.{key}: a backbone reward model, built by the GRPO trainer on its own "
                         f"layout (train grpo); not loadable on its own")
    if key not in kinds:
        raise ValueError(f"grpo.resources.{key}: unknown resource; expected one of {sorted(kinds)}")
    if resources.embedder is None:
        resources.embedder = MiniLMEmbedder()
    try:
        model = kinds[key].load(path, embedder=resources.embedder)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ValueError(f"grpo.resources.{key}: {path}: cannot load a {kinds[key].__name__} ({exc})") from exc
    log.info("grpo.resources.%s: loaded %s from %s", key, kinds[key].__name__, path)
    return model


def stop_text(name: str) -> str | None:
    """Where a rollout of task ``name`` may stop besides EOS: its last output field's closing tag."""
    outs = task(name).outputs
    return None if not outs or outs[-1].repeated else f"</{outs[-1].tag}>"


class GRPOTrainer(Trainer):
    """Trainer whose step is a GRPO iteration (``job.grpo``) over the SFT tasks' prompts (``job.sft``)."""

    def __init__(self, job: JobConfig, rollout_factory: RolloutFactory):
        check_sft(job.sft)
        g, t = job.grpo, job.train
        if g.max_new_tokens >= t.seq_len:
            raise ValueError(f"grpo.max_new_tokens: {g.max_new_tokens} must be below train.seq_len {t.seq_len} "
                             f"(prompt + completion are trained as one sequence)")
        super().__init__(job)
        if self.global_batch % g.group_size:
            raise ValueError(f"train.micro_batch x train.num_microbatches x dp = {self.global_batch} rollouts per "
                             f"step: expected a multiple of grpo.group_size={g.group_size}")
        if self.cfg.num_mtp_layers:
            raise ValueError(f"model: {self.cfg.num_mtp_layers} MTP layer(s); GRPO trains without them "
                             f"(set model.mtp=drop)")
        self.n_prompts = self.global_batch // g.group_size
        self.task_names = sft_tasks(job.sft)
        self.data = load_sft_data(job.sft)
        self.tokenizer = sft_tokenizer(job.model, self.cfg.vocab_size, self.data,
                                       self.out / "tokenizer" if self.rank == 0 else None)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self.weights = reward_weights(job, self.task_names)
        missing = sorted(set(g.task_weights) - set(self.task_names))
        if missing:
            raise ValueError(f"grpo.task_weights: task(s) {missing} not in sft.tasks {self.task_names}")
        self.reward_fns, self.resources = build_rewards(
            self.weights, job.sft.data_seed, decode=self.decode_completion, models=g.resources,
            loaders={"token_model": self._load_token_model, "perf_model": self._load_perf_model,
                     "judge_model": self._load_judge_model},
            params=g.reward_params)
        self._details: dict[str, dict[str, list[float | None]]] = {}
        """Per channel, the per-rollout details its reward reported at the last ``compute_rewards``."""
        self.rollout = rollout_factory(model=self.model, cfg=self.cfg, tokenizer=self.tokenizer,
                                       batch_size=self.global_batch)
        self.model.train()  # a factory may leave it in eval mode (the inference engine does)
        if not g.expert_bias_update:
            self.tconfig.moe_router_enable_expert_bias = False  # finalize_model_grads skips the bias update
        self.logits_path = self.par.tp == 1
        """Log-probs (and entropy) from the full logits (TP 1); else -NLL from megatron's vocab-parallel CE."""
        self.ref = self._build_reference() if g.kl_beta > 0 else None
        if any("token_rm" in c for c in self.weights.values()):
            if "token_model" not in g.resources:
                raise ValueError("grpo.resources.token_model: reward token_rm (grpo.rewards) needs a token reward "
                                 "model: a `train rm rm.kind=token` run directory")
            self.resources.need("token_model", "token_rm")  # collective: built now, on every rank together
        if any("perf_rm" in c for c in self.weights.values()):
            if "perf_model" not in g.resources:
                raise ValueError("grpo.resources.perf_model: reward perf_rm (grpo.rewards) needs a performance "
                                 "reward model: the directory of a `train rm` run")
            rm = self.resources.need("perf_model", "perf_rm")  # collective: built now, once, on every rank
            if self.rank == 0:
                log.info("grpo.resources.perf_model: %s", rm.describe())
        if any("autoeval_accept" in c for c in self.weights.values()):
            if "judge_model" not in g.resources:
                raise ValueError("grpo.resources.judge_model: reward autoeval_accept (grpo.rewards) needs AutoEval's "
                                 "judge: the directory of an ad_judge SFT run")
            judge = self.resources.need("judge_model", "autoeval_accept")  # collective: built now, on every rank
            if self.rank == 0:
                log.info("grpo.resources.judge_model: %s", judge.describe())

    # ------------------------------------------------------------------ frozen models
    def build_frozen_chunk(self, load):
        """A frozen chunk of this rank's layout, built as the policy's, ``load(chunk)`` its weights; eval mode,
        no grad."""
        from megatron_ads.model.build import build_model_chunk, transformer_config
        from megatron_ads.model.specs import use_te_default

        o = self.job.optim
        tconfig = transformer_config(self.cfg, self.par, dtype=o.dtype, device=self.platform.name,
                                     calculate_per_token_loss=False)
        chunk = build_model_chunk(self.cfg, self.par, dtype=o.dtype, device=self.platform.name,
                                  use_te=use_te_default(self.platform.name), tconfig=tconfig,
                                  experts=self.job.model.experts)
        load(chunk)
        for p in chunk.parameters():
            p.requires_grad_(False)
        return chunk.eval()

    def _build_reference(self):
        """A frozen copy of the initial policy: a second chunk built the same way, the policy's weights copied
        in now (before any resume), eval mode, no grad."""
        def load(chunk):
            if self.job.model.init == "random":
                own = self.model.module.state_dict()
                chunk.load_state_dict({k: v for k, v in own.items() if not k.startswith(POLICY_HEADS)})
            else:
                load_initial_weights(chunk, self.job.model, self.cfg, self.job)
        return self.build_frozen_chunk(load)

    def _load_token_model(self, path: str):
        """``grpo.resources.token_model``: the frozen token-level reward model of ``path`` (``train.frozen_rm``)."""
        from megatron_ads.train.frozen_rm import FrozenTokenRM

        return FrozenTokenRM(self, path)

    def _load_perf_model(self, path: str):
        """``grpo.resources.perf_model``: the frozen performance reward model of ``path`` (``train.frozen_rm``)."""
        from megatron_ads.train.frozen_rm import FrozenPerfRM

        return FrozenPerfRM(self, path)

    def _load_judge_model(self, path: str):
        """``grpo.resources.judge_model``: AutoEval's frozen judge of ``path`` (``train.frozen_rm``)."""
        from megatron_ads.train.frozen_rm import FrozenJudge

        return FrozenJudge(self, path)

    # ------------------------------------------------------------------ prompts and rollouts
    def draw_prompts(self, step: int) -> list[tuple[str, dict]]:
        """The (task, row) of each prompt of ``step`` (module docstring, step 1)."""
        s = self.job.sft
        rng = random.Random(f"grpo:{s.data_seed}:{self.job.train.seed}:{step}")
        out = []
        for k in range(self.n_prompts):
            name = self.task_names[(step * self.n_prompts + k) % len(self.task_names)]
            out.append((name, rng.choice(self.data[name]["train"])))
        return out

    def rollout_seed(self, step: int) -> int:
        """Sampling seed of ``step``'s rollouts (row r of the batch samples with seed + r)."""
        return (self.job.train.seed * 1_000_003 + step * 7_919 * max(self.global_batch, 1)) % (2**31 - 1)

    def encode_prompt(self, name: str, row: dict) -> list[int]:
        g, t = self.job.grpo, self.job.train
        ids = list(self.tokenizer(task(name).prompt(row), add_special_tokens=False)["input_ids"])
        return ids[-(t.seq_len + 1 - g.max_new_tokens):]

    def run_rollouts(self, prompts: list[tuple[str, dict]], step: int) -> tuple[list[list[int]], list[Completion]]:
        """Prompt ids and G completions per prompt (flattened: rollout i = prompt i // G, member i % G)."""
        g = self.job.grpo
        G = g.group_size
        prompt_ids = [self.encode_prompt(n, r) for n, r in prompts]
        comps: list[Completion | None] = [None] * (len(prompts) * G)
        base = self.rollout_seed(step)
        self.model.eval()
        try:
            for name in self.task_names:  # one call per task: its own stop text
                idx = [k for k, (n, _) in enumerate(prompts) if n == name]
                if not idx:
                    continue
                settings = RolloutSettings(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                           top_p=g.top_p, seed=base + idx[0] * G,
                                           stop_ids={self.eos} if self.eos is not None else set(),
                                           stop_text=stop_text(name))
                groups = check_groups(self.rollout.generate([prompt_ids[k] for k in idx], settings, G), len(idx), G)
                for k, grp in zip(idx, groups):
                    for j, c in enumerate(grp):
                        comps[k * G + j] = c
        finally:
            self.model.train()
        return prompt_ids, comps  # type: ignore[return-value]

    def decode_completion(self, ids) -> str:
        """A completion's text as rewards see it: its ids decoded without EOS (``RewardResources.decode``)."""
        return self.tokenizer.decode([x for x in ids if x != self.eos])

    def compute_rewards(self, prompts, comps: list[Completion], prompt_ids: list[list[int]] | None = None):
        """Reward channels per rollout (None where a channel does not score that rollout's task); each meta row
        carries the rollout's ``completion_ids`` (and its prompt's ``prompt_ids`` when given) for token-level
        and backbone rewards. Collective when a reward runs a frozen backbone model (every rank calls it with
        the same rollouts)."""
        from megatron_ads.rewards.registry import COMPLETION_IDS, PROMPT_IDS, call

        G = self.job.grpo.group_size
        tasks = [prompts[i // G][0] for i in range(len(comps))]
        texts = [self.decode_completion(c.output_ids) for c in comps]
        rewards: dict[str, list[float | None]] = {}
        token_values: dict[str, list[list[float] | None]] = {}
        self._details = {}
        for name in self.task_names:
            idx = [i for i, t in enumerate(tasks) if t == name]
            if not idx:
                continue
            spec = task(name)
            p_text = [spec.prompt(prompts[i // G][1]) for i in idx]
            meta = [dict(prompts[i // G][1], group=i // G, rollout=i % G,
                         **{COMPLETION_IDS: list(comps[i].output_ids)},
                         **({PROMPT_IDS: list(prompt_ids[i // G])} if prompt_ids is not None else {}))
                    for i in idx]
            for ch in self.weights[name]:
                out = call(self.reward_fns[ch], p_text, [texts[i] for i in idx], name, meta)
                vals = rewards.setdefault(ch, [None] * len(comps))
                for i, v in zip(idx, out.values):
                    vals[i] = v
                details = getattr(self.reward_fns[ch], "details", None)
                if isinstance(details, dict):
                    for k, xs in details.items():
                        col = self._details.setdefault(ch, {}).setdefault(k, [None] * len(comps))
                        for i, x in zip(idx, xs):
                            col[i] = x
                if out.token_values is not None:
                    tv = token_values.setdefault(ch, [None] * len(comps))
                    for i, v in zip(idx, out.token_values):
                        tv[i] = v
        return tasks, texts, rewards, token_values

    # ------------------------------------------------------------------ batches
    def token_reward_tensor(self, token_values: dict[str, list], tasks, mask: torch.Tensor) -> torch.Tensor | None:
        """Σ over channels of (the task's channel weight) x (the channel's per-token values) on the mask [N, S];
        None when no channel has token values."""
        if not token_values:
            return None
        tok_r = torch.zeros(mask.shape)
        for ch, vals in token_values.items():
            w = torch.tensor([self.weights[t].get(ch, 0.0) for t in tasks])
            tok_r += w[:, None] * grpo.pack_token_rewards(vals, mask)
        return tok_r

    def batch_tokens(self, prompt_ids, comps: list[Completion], tasks) -> dict[str, Any]:
        """tokens/labels/loss_mask [N, S] (mask on the completion's label positions), engine log-probs, tasks."""
        g, S = self.job.grpo, self.job.train.seq_len
        G = g.group_size
        N = len(comps)
        tokens = torch.full((N, S + 1), self.pad, dtype=torch.long)
        mask = torch.zeros(N, S)
        elp = torch.zeros(N, S, dtype=torch.float64)
        for i, c in enumerate(comps):
            p = prompt_ids[i // G]
            ids = (p + c.output_ids)[:S + 1]
            tokens[i, :len(ids)] = torch.tensor(ids)
            n_out = len(ids) - len(p)
            mask[i, len(p) - 1:len(p) - 1 + n_out] = 1.0
            elp[i, len(p) - 1:len(p) - 1 + n_out] = torch.tensor(c.logprobs[:n_out], dtype=torch.float64)
        return {"tokens": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous(), "loss_mask": mask,
                "engine_logp": elp, "tasks": list(tasks)}

    def _my_microbatches(self, full: dict[str, Any]) -> list[dict[str, Any]]:
        t = self.job.train
        per_rank = t.num_microbatches * t.micro_batch
        start = self.ps.get_data_parallel_rank() * per_rank
        out = []
        for m in range(t.num_microbatches):
            lo, hi = start + m * t.micro_batch, start + (m + 1) * t.micro_batch
            out.append({k: v[lo:hi] for k, v in full.items()})
        return out

    # ------------------------------------------------------------------ forward passes
    def _token_logp(self, b: dict, out: torch.Tensor, entropy: bool = False):
        """Log-prob of each label [B, S] (and the entropy [B, S] when asked and on the logits path)."""
        labels = b["labels"].to(out.device)
        if self.logits_path:
            logits = out.float()
            lp_BSV = torch.log_softmax(logits, dim=-1)
            logp = lp_BSV.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
            ent = -(lp_BSV.exp() * lp_BSV).sum(-1) if entropy else None
            return logp, ent
        return -out.float(), None

    def _model_out(self, model, b: dict):
        return model_forward(model, b, self.device, with_labels=not self.logits_path)

    def _logp_step(self, data_iterator, model):
        b = next(data_iterator)
        return self._model_out(model, b), partial(self._collect_logp, b)

    def _collect_logp(self, b: dict, out: torch.Tensor):
        logp, _ = self._token_logp(b, out)
        return torch.zeros((), device=out.device), torch.tensor(1, dtype=torch.int), {"logp": logp.detach()}

    def forward_collect(self, model, mbs: list[dict[str, Any]]) -> list[dict[str, torch.Tensor] | None]:
        """What ``_collect_logp`` returns for each micro-batch (last stage; None elsewhere): one forward-only
        pass of the pipeline schedule."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        t = self.job.train
        with torch.no_grad():
            store = self._phase("logp-forward", get_forward_backward_func(), forward_step_func=self._logp_step,
                                data_iterator=iter(mbs), model=[model], num_microbatches=len(mbs),
                                seq_length=t.seq_len, micro_batch_size=t.micro_batch, forward_only=True)
        if not self.ps.is_pipeline_last_stage():
            return [None] * len(mbs)
        return list(store)

    def forward_logp(self, model, mbs: list[dict[str, Any]]) -> list[torch.Tensor | None]:
        """Per-token log-probs of each micro-batch (last stage; None elsewhere): one forward-only pass."""
        return [None if d is None else d["logp"].double().cpu() for d in self.forward_collect(model, mbs)]

    def _forward_step(self, data_iterator, model):
        b = next(data_iterator)
        return self._model_out(model, b), partial(self._grpo_loss, b)

    def _grpo_loss(self, b: dict, out: torch.Tensor):
        """This micro-batch's share of the global GRPO loss (module docstring, step 5) and its statistics."""
        g = self.job.grpo
        mask = b["loss_mask"].to(out.device)
        logp, ent = self._token_logp(b, out, entropy=True)
        loss_BT, pl, kl_BT = grpo.grpo_token_loss(
            logp, b["old_logp"].to(logp), b["adv"].to(logp),
            ref_logp_BT=b["ref_logp"].to(logp) if "ref_logp" in b else None,
            entropy_BT=ent, eps_low=g.eps_low, eps_high=g.eps_high, dual_clip=g.dual_clip,
            kl_estimator=g.kl_estimator, kl_beta=g.kl_beta, entropy_coef=g.entropy_coef if ent is not None else 0.0)
        return self._loss_share(b, loss_BT, mask, pl, kl_BT, ent)

    def _loss_share(self, b: dict, loss_BT: torch.Tensor, mask: torch.Tensor, pl, kl_BT, ent, extra=()):
        """The micro-batch's share of the global loss from per-token losses ``loss_BT`` (``grpo.aggregation``
        over the batch's global denominators), and the statistic sums of ``stats_names`` (``extra``: the
        subclass's own sums, appended)."""
        g = self.job.grpo
        d = self._denoms
        share = grpo.aggregate_loss(loss_BT, mask, g.aggregation, num_tokens=d["tokens"], num_seqs=d["seqs"],
                                    tasks=b["tasks"], task_tokens=d["task_tokens"], task_weights=d["task_weights"])
        m = mask.bool()
        with torch.no_grad():
            zero = torch.zeros((), dtype=torch.float64)
            stats = torch.stack([
                share.detach().double(), (pl.loss_BT * mask).sum().double(),
                (kl_BT * mask).sum().double() if kl_BT is not None else zero,
                (pl.clipped_low_BT & m).sum().double(), (pl.clipped_high_BT & m).sum().double(),
                (pl.dual_clipped_BT & m).sum().double(),
                (ent * mask).sum().double() if ent is not None else zero, mask.sum().double(),
                *[x.detach().double() for x in extra]]).cpu()
        scaled = share * self.job.train.num_microbatches * self.dp  # undo megatron's /num_microbatches and DDP's /dp
        return scaled, torch.tensor(1, dtype=torch.int), {"grpo": stats}

    def _denominators(self, full: dict[str, Any]) -> dict[str, Any]:
        """Global loss denominators over the whole batch (every rank holds every rollout)."""
        m = full["loss_mask"]
        task_tokens: dict[str, float] = {}
        for t, n in zip(full["tasks"], m.sum(1).tolist()):
            task_tokens[t] = task_tokens.get(t, 0.0) + n
        tw = self.job.grpo.task_weights
        if tw:
            total = sum(tw.get(t, 0.0) for t in task_tokens) or 1.0
            weights = {t: tw.get(t, 0.0) / total for t in task_tokens}
        else:
            weights = {t: 1.0 / len(task_tokens) for t in task_tokens}
        return {"tokens": float(m.sum()), "seqs": float((m.sum(1) > 0).sum()), "task_tokens": task_tokens,
                "task_weights": weights}

    def _reduce_last(self, buf: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """Reduce ``buf`` (float64 on the CPU, filled on last-stage ranks) over DP (``op``: sum) and broadcast it
        from the last rank; the collectives run on the platform's device (NCCL takes no CPU tensors)."""
        dev = buf.to(self.device)
        if self.ps.is_pipeline_last_stage():
            dist.all_reduce(dev, op=op, group=self.ps.get_data_parallel_group())
        dist.broadcast(dev, src=dist.get_world_size() - 1)
        return dev.cpu()

    # ------------------------------------------------------------------ the step
    def train_step(self) -> dict[str, Any]:
        g, t = self.job.grpo, self.job.train
        t0 = time.time()
        prompts = self.draw_prompts(self.step)
        prompt_ids, comps = self._phase("rollout", self.run_rollouts, prompts, self.step)
        t_roll = time.time() - t0
        tasks, texts, rewards, token_values = self.compute_rewards(prompts, comps, prompt_ids)
        full = self.batch_tokens(prompt_ids, comps, tasks)
        rec_adv = self.add_advantages(full, rewards, token_values, tasks)
        self._denoms = self._denominators(full)
        mbs = self._my_microbatches(full)
        err, max_diff = self.old_policy_pass(mbs)
        rec_adv.update(self.after_old_pass(mbs))
        t1 = time.time()
        epoch_stats, ok, grad_norm, finite = self.train_epochs(mbs)
        moe = self.moe_step_metrics()
        t_train = time.time() - t1
        dt = time.time() - t0
        st = epoch_stats[0]
        n_tok = max(st["tokens"], 1.0)
        lens = [len(c.output_ids) for c in comps]
        gen_tokens = sum(lens)
        rec: dict[str, Any] = {
            "step": self.step + 1, "loss": epoch_stats[-1]["share"],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "lr": float(self.optimizer.param_groups[0]["lr"]), "skipped": not (finite and ok),
            "nan_steps": self.nan_steps, "pg_loss": st["pg"] / n_tok,
            "kl": st["kl"] / n_tok if self.ref is not None else None,
            "clip_frac_low": st["clip_low"] / n_tok, "clip_frac_high": st["clip_high"] / n_tok,
            "clip_frac_dual": st["dual"] / n_tok, "entropy": st["entropy"] / n_tok if self.logits_path else None,
            **rec_adv,
            **grpo.reward_stats(rewards, tasks),
            "response_len_mean": gen_tokens / len(lens), "response_len_max": max(lens),
            "finish_stop_frac": sum(c.finish_reason == "stop" for c in comps) / len(comps),
            "token_mult_prob_error": float(err[0] / err[1]) if err[1] > 0 else 0.0,
            "logprob_max_abs_diff": float(max_diff),
            "rollout_time_s": t_roll, "rollout_tokens_per_s": gen_tokens / max(t_roll, 1e-9),
            "train_time_s": t_train,
            "train_tokens_per_s": self.global_batch * t.seq_len * g.ppo_epochs / max(t_train, 1e-9),
            "tokens_per_s": self.global_batch * t.seq_len / dt, "step_time_s": dt}
        rec.update(self.epoch_metrics(st, n_tok))
        rec.update(self.detail_stats(tasks))
        if g.save_rollouts and self.rank == 0:
            self.write_rollouts(prompts, tasks, texts, comps, rewards)
        if g.ppo_epochs > 1:
            rec["loss_first_epoch"] = st["share"]
        rec.update(moe)
        self.last_texts = texts
        self.step += 1
        if not finite and self.nan_steps > t.max_nan_steps:
            raise TrainingAborted(f"{self.nan_steps} steps with a non-finite {g.algo.upper()} loss (limit "
                                  f"train.max_nan_steps={t.max_nan_steps}); last at step {self.step}. Lower optim.lr.")
        return rec

    def detail_stats(self, tasks) -> dict[str, float]:
        """Mean of each reward detail per task over the rollouts that have one:
        {"reward/<task>/<channel>/<name>/mean": ...} (from the last ``compute_rewards``)."""
        out = {}
        for ch, cols in self._details.items():
            for k, xs in cols.items():
                for t in sorted(set(tasks)):
                    vals = [float(x) for x, s in zip(xs, tasks) if s == t and x is not None]
                    if vals:
                        out[f"reward/{t}/{ch}/{k}/mean"] = sum(vals) / len(vals)
        return out

    def write_rollouts(self, prompts, tasks, texts, comps: list[Completion], rewards) -> None:
        """Rank 0: append this step's rollouts to ``rollouts.jsonl`` (``grpo.save_rollouts``): step, task, prompt
        row id (and keyword when the row has one), group, member, completion text, generated tokens, finish
        reason, each channel's reward and each channel's details."""
        G = self.job.grpo.group_size
        lines = []
        for i, c in enumerate(comps):
            row = prompts[i // G][1]
            rec = {"step": self.step + 1, "task": tasks[i], "id": row.get("id"), "group": i // G, "member": i % G,
                   "completion": texts[i], "tokens": len(c.output_ids), "finish_reason": c.finish_reason,
                   "rewards": {ch: vals[i] for ch, vals in rewards.items()},
                   "details": {ch: {k: xs[i] for k, xs in cols.items()} for ch, cols in self._details.items()}}
            if "keyword" in row:
                rec["keyword"] = row["keyword"]
            lines.append(json.dumps(rec) + "\n")
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / "rollouts.jsonl", "a") as f:
            f.write("".join(lines))

    # ------------------------------------------------------------------ step parts (PPOTrainer overrides some)
    def add_advantages(self, full: dict[str, Any], rewards, token_values, tasks) -> dict[str, Any]:
        """GRPO: group-normalized advantages per channel, weighted sum, + token_alpha·r_token → full["adv"];
        returns the step's advantage metrics."""
        g = self.job.grpo
        G = g.group_size
        adv = grpo.combine_advantages(rewards, [i // G for i in range(len(tasks))], tasks, self.weights,
                                      eps=g.adv_eps, leave_one_out=g.leave_one_out)
        tok_r = self.token_reward_tensor(token_values, tasks, full["loss_mask"]) if g.token_alpha else None
        full["adv"] = grpo.token_advantages(adv.adv_B, full["loss_mask"], tok_r, g.token_alpha)
        return {"frac_reward_zero_std": adv.frac_reward_zero_std,
                **{f"frac_reward_zero_std/{c}": v for c, v in adv.frac_reward_zero_std_by_channel.items()}}

    def old_policy_pass(self, mbs: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Old-policy (and reference) log-probs into each micro-batch; returns the engine-vs-trainer error sums
        [Σ|exp(Δ) − 1|, tokens, ·] and the max |Δ| over all ranks."""
        old = self.forward_logp(self.model, mbs)
        ref = self.forward_logp(self.ref, mbs) if self.ref is not None else None
        err = torch.zeros(3, dtype=torch.float64)
        for k, b in enumerate(mbs):
            if old[k] is not None:
                b["old_logp"] = old[k]
                if ref is not None:
                    b["ref_logp"] = ref[k]
                m = b["loss_mask"].bool()
                diff = (b["engine_logp"] - old[k])[m]
                err += torch.stack([torch.expm1(diff).abs().sum(), torch.tensor(float(m.sum()), dtype=torch.float64),
                                    diff.abs().max() if diff.numel() else torch.zeros((), dtype=torch.float64)])
            else:
                b["old_logp"] = torch.zeros_like(b["loss_mask"], dtype=torch.float64)
        max_diff = self._reduce_last(err[2].clone(), op=dist.ReduceOp.MAX)
        err = self._reduce_last(err)
        return err, max_diff

    def after_old_pass(self, mbs: list[dict[str, Any]]) -> dict[str, Any]:
        """Hook after the old-policy pass (PPO: GAE); returns metrics. GRPO: nothing."""
        return {}

    def epoch_metrics(self, st: dict[str, float], n_tok: float) -> dict[str, Any]:
        """Extra per-step metrics from the first epoch's summed statistics (PPO: the value loss)."""
        return {}

    stats_names = STATS
    """Names of the per-micro-batch statistic sums the loss returns (``STATS``; PPO adds its own)."""

    def train_epochs(self, mbs: list[dict[str, Any]]):
        """``grpo.ppo_epochs`` passes of the loss through forward_backward_func, each followed by an optimizer
        step. Returns (per-epoch summed stats, optimizer ok, grad norm, loss finite)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        g, t = self.job.grpo, self.job.train
        epoch_stats, ok, grad_norm, finite = [], True, None, True
        for _epoch in range(g.ppo_epochs):
            self.model.zero_grad_buffer()
            self.optimizer.zero_grad()
            self.expert_load.reset()
            losses = self._phase("forward-backward", get_forward_backward_func(),
                                 forward_step_func=self._forward_step, data_iterator=iter(mbs), model=[self.model],
                                 num_microbatches=t.num_microbatches, seq_length=t.seq_len,
                                 micro_batch_size=t.micro_batch, forward_only=False)
            buf = torch.zeros(len(self.stats_names), dtype=torch.float64)
            if self.ps.is_pipeline_last_stage():
                for item in losses:
                    buf += item["grpo"]
            buf = self._phase("loss-report", self._reduce_last, buf)
            epoch_stats.append(dict(zip(self.stats_names, buf.tolist())))
            finite = math.isfinite(epoch_stats[-1]["share"])
            if not finite:
                ok = False
                break
            ok, grad_norm, _zeros = self._phase("optimizer", self.optimizer.step)
            if not ok:
                break
        if ok and finite:
            self.scheduler.step(increment=1)
        if not finite:
            self.nan_steps += 1
        return epoch_stats, ok, grad_norm, finite

    def run(self) -> dict[str, Any]:
        """Train (``Trainer.run``), then rank 0 writes the run's plots (``eval.plots.plot_grpo_run``) in ``plots/``."""
        summary = super().run()
        if self.rank == 0:
            summary["plots"] = [str(p) for p in plot_grpo_run(self.out)]
        return summary

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_common(self) -> dict[str, Any]:
        # prompts and rollout seeds are functions of the step (draw_prompts, rollout_seed): the step is the
        # data position and the rollout RNG state; both saved explicitly for inspection
        return {**super().checkpoint_common(),
                "grpo": {"prompts_drawn": self.step * self.n_prompts, "next_rollout_seed": self.rollout_seed(self.step)}}

    def restore_common(self, state: dict[str, Any]) -> None:
        super().restore_common(state)
        saved = state.get("grpo")
        if saved is not None and saved["next_rollout_seed"] != self.rollout_seed(self.step):
            raise ValueError(f"checkpoint: rollout seed {saved['next_rollout_seed']} at step {self.step} differs from "
                             f"this run's {self.rollout_seed(self.step)} (train.seed or the batch shape changed)")

