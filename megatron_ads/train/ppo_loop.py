"""Token-level PPO on the GRPO trainer (``grpo.algo=ppo``; TPPO §3.4, Eq. 4–8; spec ``papers_spec.md`` §B.1;
the math is ``train.tppo``, the options the ``ppo`` config section).

A GRPO step (``train.grpo_loop``: prompts, in-process engine rollouts, reward channels, old-policy and
reference log-probs, ``grpo.ppo_epochs`` optimizer passes through megatron's 1F1B schedule) with a critic:

1. Value head: a scalar head (``reward_model.ScalarHead``, ``ppo.value_head_std``; 0: values start at 0; its
   readout times ``ppo.value_scale``, the critic's effective learning-rate factor under Adam) on
   the policy's last pipeline stage, attached through ``Trainer.extend_model`` before DDP and the optimizer
   wrap the chunk, so it is trained, checkpointed, resharded and resumed with the policy. While the trainer's
   own passes run (never during rollouts: the engine sees plain logits) the chunk's post-processing returns
   the logits with V(s_t) appended as one more column [B, S, vocab + 1]; the value of the token at label
   position t is the head's readout of the hidden state that predicts it. PPO needs the full logits
   (``parallel.tp=1``).
2. Per-token rewards R_t [N, S] on the loss mask (every rank builds them from the reward channels, weights
   ``grpo.rewards``): with ``ppo.token_credit`` (TPPO) a channel with per-token values (``token_rm``: the
   frozen token reward model; ``blacklist``, ``diversity``) puts them on their tokens, multiplied by the
   length-weighted penalty lwp(l) (``ppo.lwp_alpha``; s_l = ``ppo.lwp_length`` or the ``lwp_quantile`` of the
   SFT targets' token lengths); every other channel, and every channel without ``token_credit`` (the
   sentence-level PPO baseline), puts its sentence value on the completion's last token. A None value
   (channel not applicable) is 0.
3. After the old-policy pass (which also reads the rollout values V_old): on the last stage, R_t − β·KL_t
   with ``ppo.kl_mode=reward`` (KL_t by ``ppo.kl_estimator`` between the old policy and the frozen reference,
   β = ``grpo.kl_beta``), GAE (``ppo.gamma``, ``ppo.lam``) → advantages and returns; advantages whitened over
   every response token of the step (sums all-reduced over data-parallel ranks) when
   ``ppo.whiten_advantages``.
4. Loss per token: the PPO-clip policy loss of ``train.grpo`` (ratio against the rollout policy,
   ``grpo.eps_low/eps_high/dual_clip``; + β·KL with ``ppo.kl_mode=loss``; entropy bonus) + ``ppo.vf_coef`` ×
   the clipped value loss (``ppo.value_clip`` around V_old), aggregated like GRPO's (``grpo.aggregation``).

Metrics beyond GRPO's: ``value_loss``, ``value_mean``, ``return_mean``, ``adv_mean_raw``, ``adv_std_raw``,
``token_reward_sum`` (per rollout, before the KL), ``kl_reward`` (β·KL per token, when shaped), ``lwp_length``.

Shapes: N rollouts of the step, B of a micro-batch, S = train.seq_len.
"""

from __future__ import annotations

import math
import random
from types import MethodType
from typing import Any

import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.data.tasks import task
from megatron_ads.runtime.log import get_logger
from megatron_ads.train import ckpt, grpo, tppo
from megatron_ads.train.grpo_loop import STATS, GRPOTrainer
from megatron_ads.train.reward_model import ScalarHead
from megatron_ads.train.rollout import RolloutFactory

log = get_logger(__name__)

VALUE_HEAD = "value_head"
"""Attribute (and checkpoint key prefix) of the critic on the policy's last pipeline stage."""
PPO_STATS = STATS + ("value_loss",)
LWP_ROWS = 256
"""SFT rows per task whose target lengths give s_l when ``ppo.lwp_length`` is null."""


def _value_postprocess(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``GPTModel._postprocess`` of a PPO policy's last stage: the LM's output, plus (while ``emit_values``)
    the value head's per-position readout as one more column of the logits."""
    out = self._lm_postprocess(hidden_states, *args, **kwargs)
    if not getattr(self, "emit_values", False):
        return out
    if kwargs.get("labels") is not None or (len(args) > 2 and args[2] is not None):
        raise RuntimeError("ppo: the value head needs the logits path (no labels in the forward call)")
    v_BS = getattr(self, VALUE_HEAD).token_scores(hidden_states) * self.value_scale
    return torch.cat([out, v_BS.unsqueeze(-1).to(out.dtype)], dim=-1)


def attach_value_head(chunk: torch.nn.Module, hidden_size: int, *, last_stage: bool, std: float = 0.0,
                      scale: float = 1.0, seed: int = 0) -> ScalarHead | None:
    """A critic on this rank's policy chunk, in place (last stage only; module docstring, step 1):
    V = scale x head(h)."""
    if not last_stage:
        return None
    head = ScalarHead(hidden_size, seq_first=True, std=std, generator=torch.Generator().manual_seed(seed + 7))
    first = next(chunk.parameters(), None)
    if first is not None:
        head.to(device=first.device, dtype=first.dtype)
    setattr(chunk, VALUE_HEAD, head)
    chunk._lm_postprocess = chunk._postprocess
    chunk._postprocess = MethodType(_value_postprocess, chunk)
    chunk.emit_values = False
    chunk.value_scale = float(scale)
    return head


class PPOTrainer(GRPOTrainer):
    """GRPO trainer whose step is token-level PPO with a critic (module docstring)."""

    stats_names = PPO_STATS

    def __init__(self, job: JobConfig, rollout_factory: RolloutFactory):
        if job.parallel.tp != 1:
            raise ValueError(f"grpo.algo=ppo: parallel.tp must be 1 (the value head rides on the full logits), "
                             f"got tp={job.parallel.tp}")
        if job.ppo.lwp_alpha is not None and not job.ppo.token_credit:
            raise ValueError("ppo.lwp_alpha: the length-weighted penalty scales per-token rewards; with "
                             "ppo.token_credit=false (sentence rewards only) set it to null")
        super().__init__(job, rollout_factory)
        p = job.ppo
        self.s_l = None
        if p.lwp_alpha is not None:
            self.s_l = float(p.lwp_length) if p.lwp_length is not None else self._sft_length(p.lwp_quantile)
            if self.rank == 0:
                log.info("ppo: length-weighted penalty alpha=%g, s_l=%.1f tokens%s", p.lwp_alpha, self.s_l,
                         "" if p.lwp_length is not None else f" (the {p.lwp_quantile:g} quantile of SFT targets)")

    def _sft_length(self, quantile: float) -> float:
        """s_l default: the ``quantile`` of the token lengths of SFT targets (≤ LWP_ROWS rows per task, + EOS)."""
        lens = []
        for name in self.task_names:
            rows = list(self.data[name]["train"])
            random.Random(f"lwp:{self.job.sft.data_seed}:{name}").shuffle(rows)
            spec = task(name)
            lens += [len(self.tokenizer(spec.target(r), add_special_tokens=False)["input_ids"]) + 1
                     for r in rows[:LWP_ROWS]]
        return tppo.suggested_length(lens, quantile)

    # ------------------------------------------------------------------ model
    def extend_model(self, chunk) -> None:
        """The critic (``attach_value_head``); from an ``model.init=mcore`` checkpoint that holds one (a PPO run),
        its weights too (every rank takes part in that load)."""
        super().extend_model(chunk)
        attach_value_head(chunk, self.cfg.hidden_size, last_stage=self.ps.is_pipeline_last_stage(),
                          std=self.job.ppo.value_head_std, scale=self.job.ppo.value_scale,
                          seed=self.job.train.seed)
        src = ckpt.init_checkpoint(self.job.model)
        if src is not None:
            if ckpt.holds_tensors(src, VALUE_HEAD + "."):
                ckpt.load_model_weights(chunk, src, only=VALUE_HEAD + ".")
                if self.rank == 0:
                    log.info("ppo: value head loaded from %s", src)

    def _emit_values(self, on: bool) -> None:
        chunk = self.model.module
        if hasattr(chunk, VALUE_HEAD):
            chunk.emit_values = on

    def run_rollouts(self, prompts, step):
        self._emit_values(False)
        try:
            return super().run_rollouts(prompts, step)
        finally:
            self._emit_values(True)

    def train_step(self) -> dict[str, Any]:
        try:
            return super().train_step()
        finally:
            self._emit_values(False)

    def _split(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, values or None): the policy's output carries one column more than the vocabulary."""
        if out.shape[-1] == self.cfg.vocab_size + 1:
            return out[..., :-1], out[..., -1]
        return out, None

    def _token_logp(self, b: dict, out: torch.Tensor, entropy: bool = False):
        return super()._token_logp(b, self._split(out)[0], entropy)

    def _collect_logp(self, b: dict, out: torch.Tensor):
        logits, v = self._split(out)
        logp, _ = super()._token_logp(b, logits)
        d = {"logp": logp.detach()}
        if v is not None:
            d["values"] = v.detach().float().cpu().clone()  # a copy: a view would keep the whole logits alive
        return torch.zeros((), device=out.device), torch.tensor(1, dtype=torch.int), d

    def forward_logp(self, model, mbs):
        """GRPO's pass; on the policy it also stores the rollout values in each micro-batch (``old_values``)."""
        store = self.forward_collect(model, mbs)
        if model is self.model:
            for b, d in zip(mbs, store):
                if d is not None:
                    if "values" not in d:
                        raise RuntimeError("ppo: the policy's forward returned no values (value head not emitting)")
                    b["old_values"] = d["values"].cpu()
        return [None if d is None else d["logp"].double().cpu() for d in store]

    # ------------------------------------------------------------------ rewards and advantages
    def add_advantages(self, full: dict[str, Any], rewards, token_values, tasks) -> dict[str, Any]:
        """Per-token rewards R_t [N, S] (module docstring, step 2) into full["reward"]."""
        p = self.job.ppo
        mask = full["loss_mask"]
        R = torch.zeros(mask.shape)
        for ch, vals in rewards.items():
            w = torch.tensor([self.weights[t].get(ch, 0.0) for t in tasks])
            tv = token_values.get(ch) if p.token_credit else None
            has_tok = torch.tensor([tv is not None and tv[i] is not None for i in range(len(tasks))])
            if tv is not None:
                tok = grpo.pack_token_rewards(tv, mask)
                if self.s_l is not None:
                    tok = tppo.apply_lwp(tok, mask, self.s_l, p.lwp_alpha)
                R += (w * has_tok)[:, None] * tok
            sent = torch.tensor([0.0 if v is None else float(v) for v in vals])
            R += (w * ~has_tok)[:, None] * tppo.sentence_to_token_rewards(sent, mask)
        full["reward"] = R
        out: dict[str, Any] = {"token_reward_sum": float(R.sum()) / max(len(tasks), 1)}
        if self.s_l is not None:
            out["lwp_length"] = self.s_l
        return out

    def after_old_pass(self, mbs: list[dict[str, Any]]) -> dict[str, Any]:
        """KL shaping, GAE and whitening on the last stage (module docstring, step 3); metrics on every rank."""
        g, p = self.job.grpo, self.job.ppo
        last = self.ps.is_pipeline_last_stage()
        sums = torch.zeros(7, dtype=torch.float64)  # Σadv, Σadv², n, Σvalue, Σreturn, Σkl_reward, n_kl
        shaped = self.ref is not None and p.kl_mode == "reward" and g.kl_beta > 0
        for b in mbs:
            if not last:
                b["adv"] = torch.zeros_like(b["loss_mask"])
                continue
            mask = b["loss_mask"]
            kl = grpo.kl_penalty(b["old_logp"], b["ref_logp"], p.kl_estimator).float() if shaped else None
            R = tppo.shaped_rewards(b["reward"], mask, kl_BT=kl, kl_beta=g.kl_beta if shaped else 0.0)
            adv, ret = tppo.gae(R, b["old_values"], mask, gamma=p.gamma, lam=p.lam)
            b["adv"], b["returns"] = adv, ret
            m = mask.bool()
            sums += torch.tensor([float(adv[m].sum()), float((adv[m] ** 2).sum()), float(m.sum()),
                                  float(b["old_values"][m].sum()), float(ret[m].sum()),
                                  float(g.kl_beta * kl[m].sum()) if kl is not None else 0.0, float(m.sum())],
                                 dtype=torch.float64)
        sums = self._reduce_last(sums)
        n = max(float(sums[2]), 1.0)
        mean = float(sums[0]) / n
        var = max(float(sums[1]) / n - mean * mean, 0.0)
        if p.whiten_advantages and last:
            for b in mbs:
                m = b["loss_mask"].bool()
                b["adv"] = torch.where(m, (b["adv"] - mean) / math.sqrt(var + 1e-8), torch.zeros_like(b["adv"]))
        out = {"adv_mean_raw": mean, "adv_std_raw": math.sqrt(var), "value_mean": float(sums[3]) / n,
               "return_mean": float(sums[4]) / n}
        if shaped:
            out["kl_reward"] = float(sums[5]) / max(float(sums[6]), 1.0)
        return out

    # ------------------------------------------------------------------ loss
    def _grpo_loss(self, b: dict, out: torch.Tensor):
        """This micro-batch's share of the global PPO loss (module docstring, step 4) and its statistics."""
        g, p = self.job.grpo, self.job.ppo
        logits, v = self._split(out)
        if v is None:
            raise RuntimeError("ppo: the policy's forward returned no values (value head not emitting)")
        mask = b["loss_mask"].to(out.device)
        logp, ent = super()._token_logp(b, logits, entropy=True)
        loss_beta = g.kl_beta if p.kl_mode == "loss" else 0.0
        v = v.float()
        total_BT, pl, kl_BT, vl_BT = tppo.ppo_token_loss(
            logp, b["old_logp"].to(logp), b["adv"].to(logp), v, b["old_values"].to(v), b["returns"].to(v),
            vf_coef=p.vf_coef, value_clip=p.value_clip,
            ref_logp_BT=b["ref_logp"].to(logp) if "ref_logp" in b else None,
            entropy_BT=ent, eps_low=g.eps_low, eps_high=g.eps_high, dual_clip=g.dual_clip,
            kl_estimator=g.kl_estimator, kl_beta=loss_beta, entropy_coef=g.entropy_coef if ent is not None else 0.0)
        return self._loss_share(b, total_BT, mask, pl, kl_BT, ent,
                                extra=((vl_BT * mask).sum(),))

    def epoch_metrics(self, st: dict[str, float], n_tok: float) -> dict[str, Any]:
        return {"value_loss": st["value_loss"] / n_tok}


def ppo_or_grpo(job: JobConfig, rollout_factory: RolloutFactory) -> GRPOTrainer:
    """The trainer ``grpo.algo`` names."""
    return (PPOTrainer if job.grpo.algo == "ppo" else GRPOTrainer)(job, rollout_factory)
