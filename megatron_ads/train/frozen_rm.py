"""Frozen backbone reward models inside the RL trainers, loaded on the *policy's* layout and scored through
megatron's pipeline schedule: TPPO's token-level reward model (spec ``papers_spec.md`` §B.1; a
``train rm rm.kind=token`` run, ``RewardResources.token_model``, ``FrozenTokenRM``) and RLPF's performance reward
model (§B.3; a ``train rm`` run with its scalar head, ``RewardResources.perf_model``, ``FrozenPerfRM``, read by
the ``perf_rm`` reward).

FrozenTokenRM:

How it works:

1. Build: ``reward_model.frozen_reward_chunk`` — a chunk of this rank's layout built as the policy's, the
   saved reward head (it must have ``NUM_CLASSES`` outputs) on the last stage, every weight (backbone and head)
   loaded from the run's latest checkpoint by megatron-core's dist_checkpointing (any saved layout loads into
   this one). Frozen, eval mode.
2. Score (collective; every rank calls it with the same rows, as ``compute_rewards`` does): sequence i is
   prompt_ids[i] + completion_ids[i], left-truncated to ``train.seq_len`` (the prompt loses its first tokens:
   every completion token is scored), right-padded, in micro-batches of
   ``train.micro_batch`` (the last one padded by repeating a row); one forward-only pass of the pipeline
   schedule per call; each data-parallel replica scores every row (the rows are few; no gather needed). The
   last stage turns the per-position class logits into per-token rewards (``tppo.token_reward_from_probs``:
   P(2) − P(1), 0 where the argmax is class 0) and the result [N, S] goes to every rank by one broadcast
   from the last rank. Completion token j of row i is input position len(prompt_i) + j: its reward is read
   there (the model classifies each input token from the hidden state at its own position); only a
   completion longer than ``train.seq_len`` itself would lose tokens (they get 0).

The model must share the policy's tokenizer (train it with ``model.init=mcore`` from the SFT run the policy
starts from): token ids are handed over as they are, never re-tokenized.

FrozenPerfRM (texts in, one score per text out; it need not share the policy's architecture or tokenizer):

1. Build (once per rank, collective): the run's latest checkpoint must hold a reward head of one output
   (``reward_model.saved_head_outputs``: none = an SFT/LM run, 3 = a token reward model: both refused, naming
   ``grpo.resources.perf_model``); the backbone is the checkpoint's own (``read_layout(step).cfg``), built on the
   policy's parallel layout (``frozen_reward_chunk``, resharded by dist_checkpointing), frozen, eval mode; its
   tokenizer is the one saved with the checkpoint (or the run), its sequence length and expert implementation
   those of its saved config.
2. Score (collective; every rank calls it with the same texts): each text is encoded as ``train rm`` encodes a
   log text (``perf_sequence``): the prompt ``rm_loop.rm_prompt`` of the sample's keyword and ad fields, then
   " " + text + EOS, the prompt left-truncated so that the sequence fits the RM's ``train.seq_len`` (a text
   that alone does not fit is scored whole, without a prompt: longer than anything the RM was trained on).
   Rows are right-padded to the longest (rounded up to a multiple of TP), in micro-batches of
   ``train.micro_batch`` (the last padded by repeating a row), one forward-only pass of the pipeline schedule;
   the last stage reads each row's score at its last real token (``gather_last``, as training does) and the
   scores reach every rank by one broadcast from the last rank.

FrozenJudge (MarketingFM AutoEval's LLM judge, ``RewardResources.judge_model``, read by the ``autoeval_accept``
reward): an SFT run of the ``ad_judge`` task — a language model, no reward head (a reward model's run is refused) —
built as FrozenPerfRM (its own architecture, tokenizer and ``train.seq_len``, on the policy's layout, frozen). Its
``score(prompts, targets)`` is the ``Scorer`` protocol of label scoring: prompt and target encoded apart (as the
inference engine's ``EngineScorer``), the prompt left-truncated so that both fit the judge's ``train.seq_len``,
one forward-only pass whose last stage returns each position's log-probability of the next token (megatron's
per-token cross entropy with the tokens shifted by one as labels), summed over the target. ``judge(ads)`` is
then ``data.judge.judge`` on it: the expected 0–5 scores ``megatron-ads autoeval --model`` computes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.checkpoint.hf_io import CheckpointError
from megatron_ads.data.packing import model_forward
from megatron_ads.train import ckpt, tppo
from megatron_ads.train.reward_model import frozen_reward_chunk, gather_last, saved_head_outputs

__all__ = ["FrozenJudge", "FrozenPerfRM", "FrozenTokenRM", "perf_sequence"]



def frozen_forward(trainer, chunk, step, phase: str, rows: list[list[int]], S: int, pad: int,
                   tail: tuple[int, ...]) -> torch.Tensor:
    """One forward-only pass of a frozen chunk through megatron's schedule (the trainer's layout; a collective):
    ``rows`` (token ids, each at most ``S``) padded to ``S`` and to whole micro-batches (the last row repeated),
    ``step`` the forward step whose store holds ``{"r": [mb, *tail]}`` on the last stage; the outputs of the
    ``len(rows)`` rows, float64 ``[n, *tail]``, broadcast from the last stage to every rank."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    n, mb = len(rows), trainer.job.train.micro_batch
    n_pad = -(-n // mb) * mb
    tokens = torch.full((n_pad, S), pad, dtype=torch.long)
    mask = torch.zeros(n_pad, S)
    for i in range(n_pad):
        ids = rows[min(i, n - 1)]
        tokens[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[i, :len(ids)] = 1.0
    mbs = [{"tokens": tokens[j:j + mb], "mask": mask[j:j + mb]} for j in range(0, n_pad, mb)]
    with torch.no_grad():
        store = trainer._phase(phase, get_forward_backward_func(), forward_step_func=step, data_iterator=iter(mbs),
                               model=[chunk], num_microbatches=len(mbs), seq_length=S, micro_batch_size=mb,
                               forward_only=True)
    buf = torch.zeros(n_pad, *tail, dtype=torch.float64)
    if trainer.ps.is_pipeline_last_stage():
        buf = torch.cat([d["r"] for d in store])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dev = buf.to(trainer.device)  # NCCL takes no CPU tensors
        dist.broadcast(dev, src=dist.get_world_size() - 1)
        buf = dev.cpu()
    return buf[:n]

class FrozenTokenRM:
    """TPPO's frozen token-level reward model on the trainer's layout (module docstring); the
    ``token_rewards`` of ``RewardResources.token_model``."""

    def __init__(self, trainer, path: str, kind: tppo.TokenReward | None = None):
        self.trainer, self.kind = trainer, kind or "prob_diff"
        try:
            self.ckpt = ckpt.resolve(path)
        except CheckpointError as exc:
            raise ValueError(f"grpo.resources.token_model: {path}: no training checkpoint of a token reward model "
                             f"({exc})") from exc
        saved = self._saved_rm(path)
        if kind is None and saved.get("token_reward"):
            self.kind = saved["token_reward"]
        try:
            self.chunk, n = frozen_reward_chunk(
                self.ckpt, trainer.cfg, trainer.par, dtype=trainer.job.optim.dtype, device=trainer.platform.name,
                experts=trainer.job.model.experts, last_stage=trainer.ps.is_pipeline_last_stage())
        except (CheckpointError, RuntimeError, KeyError, ValueError) as exc:
            raise ValueError(f"grpo.resources.token_model: {self.ckpt}: cannot load it into this policy's "
                             f"architecture and layout ({exc}); it must be a token reward model trained from the "
                             f"same backbone") from exc
        if n != tppo.NUM_CLASSES:
            raise ValueError(f"grpo.resources.token_model: {self.ckpt}: a reward head with {n} output(s); expected "
                             f"a token reward model's {tppo.NUM_CLASSES} (train rm rm.kind=token)")

    def _saved_rm(self, path: str) -> dict[str, Any]:
        """The run's saved ``rm`` section ({} without a saved config); refuses a run that is not a token reward
        model (its per-token reward kind, ``rm.token_reward``, is the one this model then uses)."""
        import yaml

        for cfg_path in (self.ckpt / "config.yaml", Path(path) / "config.yaml"):
            if cfg_path.is_file():
                rm = (yaml.safe_load(cfg_path.read_text()) or {}).get("rm") or {}
                kind = rm.get("kind", "pair")
                if kind != "token":
                    raise ValueError(f"grpo.resources.token_model: {path}: rm.kind={kind!r} in {cfg_path}; "
                                     f"expected a token reward model (train rm rm.kind=token)")
                return rm
        return {}

    # ------------------------------------------------------------------ scoring
    def _step(self, data_iterator, model):
        b = next(data_iterator)
        return model_forward(model, b, self.trainer.device, with_labels=False), partial(self._collect, b)

    def _collect(self, b: dict, logits_BSC: torch.Tensor):
        probs_BSC = torch.softmax(logits_BSC.float(), dim=-1)
        r_BS = tppo.token_reward_from_probs(probs_BSC, b["mask"].to(probs_BSC.device), self.kind)
        return torch.zeros((), device=r_BS.device), torch.tensor(1, dtype=torch.int), {"r": r_BS.double().cpu()}

    def token_rewards(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> list[list[float]]:
        """Per completion token, its reward (module docstring, step 2). Collective."""
        if len(prompt_ids) != len(completion_ids):
            raise ValueError(f"token_rewards: {len(prompt_ids)} prompts for {len(completion_ids)} completions")
        n = len(prompt_ids)
        if n == 0:
            return []
        S = self.trainer.job.train.seq_len
        cut = [max(0, len(p) + len(c) - S) for p, c in zip(prompt_ids, completion_ids)]
        rows = [(list(prompt_ids[k]) + list(completion_ids[k]))[cut[k]:][:S] for k in range(n)]
        buf = frozen_forward(self.trainer, self.chunk, self._step, "token-rm", rows, S, self.trainer.pad, (S,))
        out = []
        for i in range(n):
            p, c = len(prompt_ids[i]) - cut[i], len(completion_ids[i])
            row = buf[i, p:min(p + c, S)].tolist()
            out.append([float(x) for x in row] + [0.0] * (c - len(row)))
        return out

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.ckpt), "kind": self.kind}


# ---------------------------------------------------------------------------------------------------- RLPF
PERF_WHERE = "grpo.resources.perf_model"


def perf_sequence(tokenizer, eos: int, keyword: str, ad: dict | None, text: str, seq_len: int) -> list[int]:
    """Token ids of ``text`` as the performance RM was trained on it (``train.rm_loop.RMTrainer.encode``): the
    prompt ``rm_prompt({keyword, ad})`` left-truncated to fit ``seq_len`` together with " " + text + EOS; a text
    that alone does not fit is returned whole, without the prompt."""
    from megatron_ads.train.rm_loop import rm_prompt

    p = list(tokenizer(rm_prompt({"keyword": keyword, "ad": ad or {}}), add_special_tokens=False)["input_ids"])
    t = list(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) + [eos]
    keep = seq_len - len(t)
    return (p[-keep:] if keep > 0 else []) + t


class FrozenPerfRM:
    """RLPF's frozen performance reward model on the trainer's layout (module docstring): the ``score`` of
    ``RewardResources.perf_model`` that the ``perf_rm`` reward reads."""

    def __init__(self, trainer, path: str):
        self.trainer, self.path = trainer, str(path)
        self.ckpt, n, cfg = _read_run(path, PERF_WHERE, "a `train rm` run (a performance reward model)")
        if n is None:
            raise ValueError(f"{PERF_WHERE}: {self.ckpt}: holds no reward head (reward_head.proj.weight): not a "
                             f"reward model; expected the directory of a `train rm` run (an SFT or LM run has no "
                             f"head)")
        if n != 1:
            raise ValueError(f"{PERF_WHERE}: {self.ckpt}: a reward head with {n} outputs, a token reward model "
                             f"(rm.kind=token: grpo.resources.token_model); expected a performance reward model's "
                             f"scalar head (train rm, rm.kind=pair)")
        saved = self._saved_job(path)
        self.objective = (saved.get("rm") or {}).get("objective", "bt")
        self.seq_len = int((saved.get("train") or {}).get("seq_len") or trainer.job.train.seq_len)
        experts = (saved.get("model") or {}).get("experts") or trainer.job.model.experts
        self.tokenizer, self.eos, self.pad = _saved_tokenizer(self.ckpt, path, PERF_WHERE, "the RM scores at EOS")
        try:
            self.chunk, _ = frozen_reward_chunk(
                self.ckpt, cfg, trainer.par, dtype=trainer.job.optim.dtype, device=trainer.platform.name,
                experts=experts, last_stage=trainer.ps.is_pipeline_last_stage())
        except (CheckpointError, RuntimeError, KeyError, ValueError, AssertionError) as exc:
            raise ValueError(f"{PERF_WHERE}: {self.ckpt}: cannot build this reward model ({cfg.num_layers} layers) "
                             f"on the policy's layout {trainer.par} ({exc})") from exc

    def _saved_job(self, path: str) -> dict[str, Any]:
        """The run's saved config ({} without one); refuses a token reward model's run."""
        import yaml

        for cfg_path in (self.ckpt / "config.yaml", Path(path) / "config.yaml"):
            if cfg_path.is_file():
                job = yaml.safe_load(cfg_path.read_text()) or {}
                kind = (job.get("rm") or {}).get("kind", "pair")
                if kind != "pair":
                    raise ValueError(f"{PERF_WHERE}: {path}: rm.kind={kind!r} in {cfg_path}; expected a performance "
                                     f"reward model (train rm, rm.kind=pair)")
                return job
        return {}

    # ------------------------------------------------------------------ scoring
    def encode(self, keyword: str, ad: dict | None, text: str) -> list[int]:
        """The RM's input ids of one sample (``perf_sequence`` with this RM's tokenizer and sequence length)."""
        return perf_sequence(self.tokenizer, self.eos, keyword, ad, text, self.seq_len)

    def _step(self, data_iterator, model):
        b = next(data_iterator)
        return model_forward(model, b, self.trainer.device, with_labels=False), partial(self._collect, b)

    @staticmethod
    def _collect(b: dict, scores_BS: torch.Tensor):
        r_B = gather_last(scores_BS.float(), b["mask"].to(scores_BS.device))
        return torch.zeros((), device=r_B.device), torch.tensor(1, dtype=torch.int), {"r": r_B.double().cpu()}

    def score(self, keywords, texts, ads=None) -> list[float]:
        """The RM's score of each text after its sample's prompt (module docstring, step 2). Collective."""
        n = len(texts)
        if len(keywords) != n or (ads is not None and len(ads) != n):
            raise ValueError(f"score: {len(keywords)} keywords and {'-' if ads is None else len(ads)} ads for {n} "
                             f"texts")
        if n == 0:
            return []
        rows = [self.encode(str(k), a if isinstance(a, dict) else None, str(t))
                for k, a, t in zip(keywords, ads if ads is not None else [None] * n, texts)]
        tp = max(int(self.trainer.par.tp), 1)
        S = -(-max(len(r) for r in rows) // tp) * tp
        buf = frozen_forward(self.trainer, self.chunk, self._step, "perf-rm", rows, S, self.pad, ())
        return [float(x) for x in buf.tolist()]

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.ckpt), "objective": self.objective, "seq_len": self.seq_len}


def _read_run(path: str, where: str, expected: str) -> tuple[Path, int | None, Any]:
    """(latest checkpoint, outputs of its reward head or None, its model config) of a run directory; ValueError
    naming ``where`` (and what was ``expected``) when there is no checkpoint or it is unreadable."""
    from megatron_ads.checkpoint.megatron_io import read_layout

    try:
        src = ckpt.resolve(path)
    except CheckpointError as exc:
        raise ValueError(f"{where}: {path}: no training checkpoint ({exc}); expected the directory of "
                         f"{expected}") from exc
    try:
        return src, saved_head_outputs(src), read_layout(src).cfg
    except (CheckpointError, OSError, RuntimeError, KeyError, ValueError) as exc:
        raise ValueError(f"{where}: {src}: unreadable checkpoint ({exc})") from exc


def _saved_tokenizer(ckpt_dir: Path, path: str, where: str, why: str) -> tuple[Any, int, int]:
    """(tokenizer, eos, pad) of a run: the ``tokenizer/`` beside its checkpoint (or the run's); ValueError naming
    ``where`` without one or without an EOS token (``why`` it is needed)."""
    from megatron_ads.data.tokenizer import load_tokenizer

    tok_dir = next((d for d in (ckpt_dir / "tokenizer", Path(path) / "tokenizer") if d.is_dir()), None)
    if tok_dir is None:
        raise ValueError(f"{where}: {path}: no tokenizer/ beside its checkpoint {ckpt_dir} (training saves the one "
                         f"it trained with)")
    tokenizer = load_tokenizer(tok_dir)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{where}: {tok_dir}: a tokenizer without an EOS token ({why})")
    return tokenizer, eos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos


# ---------------------------------------------------------------------------------------------------- AutoEval
JUDGE_WHERE = "grpo.resources.judge_model"


class FrozenJudge:
    """AutoEval's frozen LLM judge on the trainer's layout (module docstring): ``score`` (the ``Scorer``
    protocol) and ``judge`` for the ``autoeval_accept`` reward. Collective: every rank calls with the same rows."""

    def __init__(self, trainer, path: str):
        import yaml

        from megatron_ads.model.build import build_model_chunk, transformer_config
        from megatron_ads.model.specs import use_te_default

        self.trainer, self.path = trainer, str(path)
        self.ckpt, n, cfg = _read_run(path, JUDGE_WHERE,
                                      "an ad_judge SFT run (launch/configs/autoeval_judge_tiny_cpu.yaml)")
        if n is not None:
            raise ValueError(f"{JUDGE_WHERE}: {self.ckpt}: holds a reward head ({n} output(s)): a reward model's "
                             f"run; expected the judge, an ad_judge SFT run (a language model)")
        saved = next((yaml.safe_load(f.read_text()) or {} for f in (self.ckpt / "config.yaml",
                                                                     Path(path) / "config.yaml") if f.is_file()), {})
        self.seq_len = int((saved.get("train") or {}).get("seq_len") or trainer.job.train.seq_len)
        self.tokenizer, self.eos, self.pad = _saved_tokenizer(self.ckpt, path, JUDGE_WHERE, "padding")
        o = trainer.job.optim
        try:
            tconfig = transformer_config(cfg, trainer.par, dtype=o.dtype, device=trainer.platform.name,
                                         calculate_per_token_loss=False)
            chunk = build_model_chunk(cfg, trainer.par, dtype=o.dtype, device=trainer.platform.name,
                                      use_te=use_te_default(trainer.platform.name), tconfig=tconfig,
                                      experts=(saved.get("model") or {}).get("experts") or trainer.job.model.experts)
            ckpt.load_model_weights(chunk, self.ckpt)
        except (CheckpointError, RuntimeError, KeyError, ValueError, AssertionError) as exc:
            raise ValueError(f"{JUDGE_WHERE}: {self.ckpt}: cannot build this judge ({cfg.num_layers} layers) on the "
                             f"policy's layout {trainer.par} ({exc})") from exc
        for p in chunk.parameters():
            p.requires_grad_(False)
        self.chunk = chunk.eval()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _step(self, data_iterator, model):
        b = next(data_iterator)
        b = {**b, "labels": torch.roll(b["tokens"], -1, dims=1)}  # position t scores token t + 1
        return model_forward(model, b, self.trainer.device), partial(self._collect, b)

    @staticmethod
    def _collect(b: dict, nll_BS: torch.Tensor):
        return torch.zeros((), device=nll_BS.device), torch.tensor(1, dtype=torch.int), {"r": (-nll_BS).double().cpu()}

    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target after its prompt (module docstring). Collective."""
        if len(prompts) != len(targets):
            raise ValueError(f"score: {len(prompts)} prompts vs {len(targets)} targets")
        if not prompts:
            return []
        pairs = []
        for p, t in zip(prompts, targets):
            p_ids, t_ids = self.encode(p), self.encode(t)
            keep = self.seq_len - len(t_ids)
            if keep < 1:
                raise ValueError(f"{JUDGE_WHERE}: a target of {len(t_ids)} tokens leaves no room for its prompt "
                                 f"within the judge's train.seq_len {self.seq_len}")
            pairs.append((p_ids[-keep:], t_ids))
        tp = max(int(self.trainer.par.tp), 1)
        S = -(-max(len(p) + len(t) for p, t in pairs) // tp) * tp
        buf = frozen_forward(self.trainer, self.chunk, self._step, "judge", [p + t for p, t in pairs], S, self.pad,
                             (S,))
        return [float(buf[i, len(p) - 1:len(p) - 1 + len(t)].sum()) for i, (p, t) in enumerate(pairs)]

    def judge(self, ads: list[dict]) -> list[dict[str, Any]]:
        """``data.judge.judge`` of ``ads`` ({keyword, headline, description}) on this judge, both criteria."""
        from megatron_ads.data.judge import judge

        return judge(ads, self) if ads else []

    def describe(self) -> dict[str, Any]:
        return {"checkpoint": str(self.ckpt), "seq_len": self.seq_len}
