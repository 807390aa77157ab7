"""``train rm`` (``rm.kind=pair``, the default): a performance reward model (RLPF / AdLlama; spec ``papers_spec.md``
§B.3, §C 27–28) on the Trainer. The math is ``train.reward_model``, the data ``data.multitext``. ``HeadTrainer``
holds what it shares with ``rm.kind=token`` (TPPO's token-level reward model, ``train.token_rm_loop``): the head on
the last stage, the per-step data position, the sharded forward-only scoring pass, validation and the test report.

Model: this rank's megatron-core GPT chunk, any layout the Trainer supports, with a scalar head on its last
pipeline stage (``reward_model.attach_reward_head`` through ``Trainer.extend_model``, after the initial
weights are loaded and before DDP): the head is a submodule of the chunk, so it is trained, checkpointed and
resharded with the model; the chunk's post-processing returns per-position scores instead of logits, and a
sequence's score is the one at its last real token (EOS). ``model.init=mcore`` from a reward-model run of the
same kind also loads its head; from any other checkpoint (an SFT run) the head starts fresh. Checkpoints record
``{"kind": "pair", "num_outputs": 1}`` under ``reward_head`` in their common state.

Data: synthetic multitext logs (``multitext_logs``: ``rm.n_ads`` ads, each with ``rm.variants`` text
variants of noisy observed CTR; the hidden true CTR is kept for evaluation), split by ad into train / val /
test (``rm.val_fraction``, ``rm.test_fraction``: held-out pairs come from ads never trained on), then pairs
mined within each split (``mine_pairs``: ``rm.min_impressions``, ``rm.min_ctr_gap``, ``rm.gap``; chosen =
the higher observed CTR).

Batches: a pair is two sequences of one micro-batch, rows 2i (chosen) and 2i + 1 (rejected), so
``train.micro_batch`` (even) sequences hold micro_batch / 2 pairs. A sequence is the prompt (keyword and the
ad's fixed fields, ``rm_prompt``) + the variant's text + EOS, right-padded to ``train.seq_len``; the prompt
is left-truncated when it does not fit. A step takes the next global_batch / 2 pairs of a per-epoch
permutation of the training pairs (seeded by ``rm.data_seed`` and the epoch), data-parallel rank r the r-th
slice: the data position is the step, so a resumed run sees exactly what the uninterrupted one saw.

Loss (``rm.objective``): ``bt``, the mean over the micro-batch's pairs of −log σ(r_chosen − r_rejected);
``pointwise``, the CTR regression of every text of the micro-batch (``rm.pointwise_loss``, weighted by
impressions): the same texts, batches and steps, only the loss differs. megatron averages micro-batches and
DDP averages data-parallel ranks. Every step also logs the training pairs' accuracy.

Validation: every ``rm.eval_every`` steps (and at the last step), the first ``rm.val_pairs`` validation pairs
are scored by a forward-only pass of the pipeline schedule (pairs sharded over data-parallel ranks):
``pairwise_acc`` (against the observed preference, the paper's metric; ties ½), ``true_pairwise_acc``
(against the hidden true CTR order), ``true_order_rate`` (how often the observed preference is the true one:
the ceiling of ``pairwise_acc`` for a model that knew the true CTR), the BT loss and the mean margin, in
``val_metrics.jsonl`` and the step's ``metrics.jsonl`` row (``val/...``). After training the test split goes
to ``eval/report.json`` and per-pair scores to ``eval/test_scores.jsonl``.

Shapes: P pairs, B = 2P sequences of a micro-batch, S = train.seq_len.
"""

from __future__ import annotations

import json
import math
import random
import time
from functools import partial
from typing import Any

import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.data.multitext import mine_pairs, multitext_logs, split_by_ad, true_order_rate
from megatron_ads.data.packing import model_forward
from megatron_ads.data.tokenizer import run_tokenizer
from megatron_ads.runtime.io import write_text
from megatron_ads.runtime.log import get_logger
from megatron_ads.train import ckpt
from megatron_ads.train.loop import Trainer, worker_logging
from megatron_ads.train.reward_model import (HEAD, attach_reward_head, bt_loss, gather_last, pairwise_accuracy,
                                             pointwise_loss, saved_head_outputs)

__all__ = ["HeadTrainer", "RMTrainer", "pair_metrics", "rm_data", "rm_prompt", "rm_worker"]

log = get_logger(__name__)
STATS = ("correct", "pairs", "bt", "margin")
"""Per-micro-batch sums of the training pairs (ties count ½ in ``correct``), reduced each step."""


def rm_prompt(pair: dict) -> str:
    """The prompt of a pair's texts: the keyword and the ad's fixed fields (the image and landing page are
    identifiers the text does not depend on, left out)."""
    ad = pair.get("ad") or {}
    fields = " | ".join(f"{k}: {ad[k]}" for k in ("brand", "item", "city", "price") if k in ad)
    return f"keyword: {pair['keyword']} | {fields}\nad:"


def rm_data(job: JobConfig) -> dict[str, Any]:
    """The run's multitext logs and mined pairs: ``{"rows": {id: row}, "pairs": {split: [pair]}}``, splits by
    ad (train / val / test). ValueError naming the ``rm`` fields when the training or validation split mines
    no pair."""
    r = job.rm
    rows = multitext_logs(r.n_ads, r.data_seed, variants=tuple(r.variants), impressions=tuple(r.impressions),
                          ad_effect=r.ad_effect)
    splits = split_by_ad(rows, val=r.val_fraction, test=r.test_fraction, seed=r.data_seed)
    pairs = {k: mine_pairs(v, r.min_impressions, r.min_ctr_gap, r.gap) for k, v in splits.items()}
    for k in ("train", "val"):
        if not pairs[k]:
            raise ValueError(f"rm: the {k} split ({len(splits[k])} log rows) mines no pair; raise rm.n_ads or lower "
                             f"rm.min_impressions={r.min_impressions} / rm.min_ctr_gap={r.min_ctr_gap}")
    return {"rows": {x["id"]: x for x in rows}, "pairs": pairs,
            "ads": {k: len({x["ad_id"] for x in v}) for k, v in splits.items()}}


def pair_metrics(r_w: torch.Tensor, r_l: torch.Tensor, pairs: list[dict]) -> dict[str, float]:
    """Ranking metrics of scores (chosen r_w, rejected r_l) [P] on ``pairs``: pairwise accuracy against the
    observed preference and against the hidden true CTR (pairs with equal true CTRs left out), the true
    order rate of the pairs (the ceiling of the first for a model that knew the true CTR), the BT loss and
    the mean margin r_w − r_l."""
    out = {"pairwise_acc": pairwise_accuracy(r_w, r_l), "bt_loss": float(bt_loss(r_w.double(), r_l.double())),
           "margin_mean": float((r_w - r_l).double().mean()), "n_pairs": len(pairs)}
    sign = torch.tensor([0.0 if p.get("chosen_p") is None or p.get("rejected_p") is None
                         else float((p["chosen_p"] > p["rejected_p"]) - (p["chosen_p"] < p["rejected_p"]))
                         for p in pairs], dtype=torch.float64)
    known = sign != 0
    if bool(known.any()):
        d = (r_w - r_l).double()[known] * sign[known]
        out["true_pairwise_acc"] = pairwise_accuracy(d, torch.zeros_like(d))
        out["true_order_rate"] = true_order_rate(pairs)
    return out


class HeadTrainer(Trainer):
    """What the reward-model trainers share (``RMTrainer``: pairs, scalar head; ``train.token_rm_loop``'s
    ``TokenRMTrainer``: token classes, 3-output head): the head on the last stage (``extend_model``), training
    items drawn per step from a per-epoch permutation of ``train_items`` (the data position is the step, so a
    resumed run sees what the uninterrupted one saw), a forward-only scoring pass sharded over data-parallel
    ranks (``forward_rows``), validation every ``rm.eval_every`` steps (and at the last step) into
    ``val_metrics.jsonl`` and the step's ``metrics.jsonl`` row (``val/...``), a test report after training, and
    the head's kind and size in the checkpoint's common state (``reward_head``: ``{"kind", "num_outputs"}``).

    Subclasses set ``KIND``, ``NUM_OUTPUTS``, ``SEQS_PER_ITEM`` (sequences an item takes in a micro-batch) and
    ``train_items``, and implement ``collate``, ``validate``, ``val_line`` and ``test_report``."""

    KIND = "pair"
    NUM_OUTPUTS = 1
    SEQS_PER_ITEM = 1
    PERM_PREFIX = "rm"
    """Prefix of the per-epoch permutation's seed (with ``rm.data_seed`` and the epoch)."""

    def __init__(self, job: JobConfig):
        self._t_start = time.time()
        t = job.train
        if t.micro_batch % self.SEQS_PER_ITEM:
            raise ValueError(f"train.micro_batch: expected a multiple of {self.SEQS_PER_ITEM} sequences (an item is "
                             f"{self.SEQS_PER_ITEM} sequences of one micro-batch), got {t.micro_batch}")
        super().__init__(job)
        self.train_items: list = []
        self._perms: dict[int, list[int]] = {}
        self._train_stats: dict[str, float] = {}
        self.val_path = self.out / "val_metrics.jsonl"
        self.last_val: dict[str, Any] | None = None

    @property
    def items_per_step(self) -> int:
        return self.global_batch // self.SEQS_PER_ITEM

    @property
    def items_per_microbatch(self) -> int:
        return self.job.train.micro_batch // self.SEQS_PER_ITEM

    # ------------------------------------------------------------------ model
    def extend_model(self, chunk) -> None:
        """The head on the last stage (``attach_reward_head`` with ``NUM_OUTPUTS`` outputs); from an
        ``model.init=mcore`` checkpoint that holds a head of that size (a reward-model run of this kind), its
        weights too; a head of another size (another ``rm.kind``) is left out and this one starts fresh. Every
        rank takes part in that load."""
        if self.cfg.num_mtp_layers:
            raise ValueError(f"model: {self.cfg.num_mtp_layers} MTP layer(s); the reward model trains without them "
                             f"(set model.mtp=drop)")
        attach_reward_head(chunk, self.cfg.hidden_size, last_stage=self.ps.is_pipeline_last_stage(),
                           num_outputs=self.NUM_OUTPUTS, std=self.job.rm.head_init_std, seed=self.job.train.seed,
                           tied_embeddings=self.cfg.tie_word_embeddings)
        src = ckpt.init_checkpoint(self.job.model)
        if src is not None:
            n = saved_head_outputs(src)
            if n == self.NUM_OUTPUTS:
                ckpt.load_model_weights(chunk, src, only=HEAD + ".")
                if self.rank == 0:
                    log.info("reward head loaded from %s", src)
            elif n is not None and self.rank == 0:
                log.warning("%s holds a reward head of %d output(s), not the %d of rm.kind=%s: the backbone is "
                            "loaded, the head starts fresh", src, n, self.NUM_OUTPUTS, self.KIND)

    # ------------------------------------------------------------------ data
    def collate(self, items: list) -> dict[str, Any]:
        """A micro-batch of ``items`` (``tokens`` [B, S] and what the loss needs)."""
        raise NotImplementedError

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(len(self.train_items)))
            random.Random(f"{self.PERM_PREFIX}:{self.job.rm.data_seed}:{epoch}").shuffle(order)
            self._perms = {epoch: order}  # steps move forward: one epoch's permutation at a time
        return self._perms[epoch]

    def step_items(self, step: int) -> list:
        """The training items of ``step`` (all data-parallel ranks' together, in rank order)."""
        n = len(self.train_items)
        out = []
        for k in range(step * self.items_per_step, (step + 1) * self.items_per_step):
            epoch, i = divmod(k, n)
            out.append(self.train_items[self._perm(epoch)[i]])
        return out

    def _microbatches(self, step: int):
        t = self.job.train
        per_mb = self.items_per_microbatch
        per_rank = per_mb * t.num_microbatches
        dp_rank = self.ps.get_data_parallel_rank()
        mine = self.step_items(step)[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        for m in range(t.num_microbatches):
            b = self.collate(mine[m * per_mb:(m + 1) * per_mb])
            b["key"] = f"{step}:{dp_rank}:{m}"  # names the micro-batch (seeds per-micro-batch randomness)
            yield b

    # ------------------------------------------------------------------ scoring
    def forward_rows(self, items: list, collect, width: int, phase: str = "rm-score") -> torch.Tensor:
        """Collective: ``collect(batch, head_output)`` -> float64 [items in the micro-batch, width] of every item,
        [len(items), width] on every rank, by one forward-only pass of the pipeline schedule in eval mode; items
        are sharded over data-parallel ranks (the last shard padded with the last item)."""
        from megatron.core.pipeline_parallel import get_forward_backward_func  # heavy: megatron-core at use

        if not items:
            raise ValueError("forward_rows: no items")
        t = self.job.train
        per_mb = self.items_per_microbatch
        n_mb = math.ceil(math.ceil(len(items) / self.dp) / per_mb)
        per_rank = n_mb * per_mb
        padded = list(items) + [items[-1]] * (per_rank * self.dp - len(items))
        dp_rank = self.ps.get_data_parallel_rank()
        mine = padded[dp_rank * per_rank:(dp_rank + 1) * per_rank]
        mbs = [self.collate(mine[i:i + per_mb]) for i in range(0, per_rank, per_mb)]

        def step(data_iterator, model):
            b = next(data_iterator)
            return model_forward(model, b, self.device, with_labels=False), partial(_collect_rows, collect, b)

        self.model.eval()
        try:
            with torch.no_grad():
                store = self._phase(phase, get_forward_backward_func(), forward_step_func=step,
                                    data_iterator=iter(mbs), model=[self.model], num_microbatches=len(mbs),
                                    seq_length=t.seq_len, micro_batch_size=t.micro_batch, forward_only=True)
        finally:
            self.model.train()
        buf = torch.zeros(self.dp, per_rank, width, dtype=torch.float64)
        if self.ps.is_pipeline_last_stage():
            buf[dp_rank] = torch.cat([d["rows"] for d in store])
        return self._phase(phase, self.reduce_last_stage, buf).reshape(-1, width)[:len(items)].clone()

    def validate(self) -> dict[str, Any]:
        """Collective: the validation metrics at this step (``{"step", ..., "time_s"}``)."""
        raise NotImplementedError

    def val_line(self, val: dict[str, Any]) -> str:
        """The console line of a validation."""
        raise NotImplementedError

    def test_report(self) -> dict[str, Any]:
        """Collective: score the test split into ``eval/report.json`` (rank 0 writes); returns the report."""
        raise NotImplementedError

    def write_report(self, report: dict[str, Any], rows_name: str, rows: list[dict]) -> None:
        """Rank 0: ``eval/report.json`` and ``eval/<rows_name>`` (JSONL of ``rows``)."""
        if self.rank != 0:
            return
        out = self.out / "eval"
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
        write_text(out / rows_name, "".join(json.dumps(r) + "\n" for r in rows))

    # ------------------------------------------------------------------ hooks into the loop
    def train_step(self) -> dict[str, Any]:
        rec = super().train_step()
        rec.update(self._train_stats)
        if self.step % self.job.rm.eval_every == 0 or self.step == self.job.train.steps:
            val = self.last_val = self.validate()
            if self.rank == 0:
                with open(self.val_path, "a") as f:
                    f.write(json.dumps(val) + "\n")
                log.info("val step %d: %s", self.step, self.val_line(val))
            rec.update({f"val/{k}": v for k, v in val.items() if k != "step"})
        return rec

    def run(self) -> dict[str, Any]:
        summary = super().run()
        if not summary["stopped_by_signal"]:
            summary["test"] = self.test_report()
        return summary

    def data_state(self) -> dict[str, Any]:
        """What identifies the training items (checked on resume; subclasses name theirs)."""
        return {"train_items": len(self.train_items), "data_seed": self.job.rm.data_seed}

    def checkpoint_common(self) -> dict[str, Any]:
        # the items of a step are a function of the step (step_items): the step is the data position
        return {**super().checkpoint_common(), "rm": self.data_position(),
                "reward_head": {"kind": self.KIND, "num_outputs": self.NUM_OUTPUTS}}

    def data_position(self) -> dict[str, Any]:
        """The ``rm`` entry of the checkpoint's common state: the data position and ``data_state``."""
        return {"items_seen": self.step * self.items_per_step, **self.data_state()}

    def restore_common(self, state: dict[str, Any]) -> None:
        super().restore_common(state)
        saved = state.get("rm")
        now = self.data_state()
        if saved is not None and {k: saved.get(k) for k in now} != now and self.rank == 0:
            log.warning("resuming a reward model trained on other data (%s; now %s): the data position restarts "
                        "in this run's data", {k: saved.get(k) for k in now}, now)


def _collect_rows(collect, b: dict, out: torch.Tensor):
    """Loss-function shape of a forward-only step: no loss, ``collect``'s rows in the store."""
    rows = collect(b, out).detach().double().cpu()
    return torch.zeros((), device=out.device), torch.tensor(1, dtype=torch.int), {"rows": rows}


class RMTrainer(HeadTrainer):
    """Trainer whose model is a performance reward model (backbone + scalar head) and whose data are preference
    pairs (``job.rm``); see the module docstring."""

    KIND = "pair"
    NUM_OUTPUTS = 1
    SEQS_PER_ITEM = 2

    def __init__(self, job: JobConfig):
        if job.rm.kind != "pair":
            raise ValueError(f"rm.kind: the performance reward model trainer needs rm.kind=pair, got {job.rm.kind!r} "
                             f"(rm.kind=token: train.token_rm_loop)")
        if job.train.micro_batch % 2:
            raise ValueError(f"train.micro_batch: expected an even number of sequences (a pair is two sequences of "
                             f"one micro-batch), got {job.train.micro_batch}")
        super().__init__(job)
        r = job.rm
        self.data = rm_data(job)
        self.rows, self.pairs = self.data["rows"], self.data["pairs"]
        self.train_items = self.pairs["train"]
        self.pairs_per_step = self.items_per_step
        train_ads = {p["ad_id"] for p in self.pairs["train"]}
        self.tokenizer = run_tokenizer(  # a random init: a BPE trained on the training ads' texts
            job.model, self.cfg.vocab_size,
            lambda: [rm_prompt(x) + " " + x["text"] for x in self.rows.values() if x["ad_id"] in train_ads],
            self.out / "tokenizer" if self.rank == 0 else None)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self._ids: dict[str, list[int]] = {}
        self.val_pairs = self.pairs["val"][: r.val_pairs]
        if self.rank == 0:
            log.info("rm data: %d ads -> pairs train %d / val %d / test %d (true order rate of the training pairs "
                     "%.3f); objective %s, %d pairs per step", r.n_ads, len(self.pairs["train"]),
                     len(self.pairs["val"]), len(self.pairs["test"]), true_order_rate(self.pairs["train"]),
                     r.objective, self.pairs_per_step)

    # ------------------------------------------------------------------ data
    def encode(self, text_id: str) -> list[int]:
        """Token ids of log row ``text_id``: prompt + " " + text + EOS, the prompt left-truncated to fit
        ``train.seq_len``; ValueError when the text alone does not fit."""
        ids = self._ids.get(text_id)
        if ids is None:
            row, S = self.rows[text_id], self.job.train.seq_len
            p = list(self.tokenizer(rm_prompt(row), add_special_tokens=False)["input_ids"])
            t = list(self.tokenizer(" " + row["text"], add_special_tokens=False)["input_ids"]) + [self.eos]
            if len(t) > S:
                raise ValueError(f"rm: text {text_id!r} is {len(t)} tokens with EOS, more than train.seq_len={S}; "
                                 f"raise train.seq_len")
            keep = S - len(t)
            ids = self._ids[text_id] = (p[-keep:] if keep > 0 else []) + t
        return ids

    def collate(self, pairs: list[dict]) -> dict[str, Any]:
        """A micro-batch of ``pairs``: tokens / mask [2P, S] (rows 2i chosen, 2i + 1 rejected), observed CTR and
        impressions [2P] (the pointwise targets)."""
        S = self.job.train.seq_len
        tokens = torch.full((2 * len(pairs), S), self.pad, dtype=torch.long)
        mask = torch.zeros(2 * len(pairs), S)
        ctr, imp = torch.zeros(2 * len(pairs)), torch.zeros(2 * len(pairs))
        for i, p in enumerate(pairs):
            for j, (tid, c) in enumerate(((p["chosen_id"], p["chosen_ctr"]), (p["rejected_id"], p["rejected_ctr"]))):
                ids = self.encode(tid)
                tokens[2 * i + j, :len(ids)] = torch.tensor(ids)
                mask[2 * i + j, :len(ids)] = 1.0
                ctr[2 * i + j], imp[2 * i + j] = c, self.rows[tid]["impressions"]
        return {"tokens": tokens, "mask": mask, "ctr": ctr, "impressions": imp}

    def step_pairs(self, step: int) -> list[dict]:
        """The training pairs of ``step`` (all data-parallel ranks' together, in rank order)."""
        return self.step_items(step)

    # ------------------------------------------------------------------ loss
    def _forward_step(self, data_iterator, model):
        b = next(data_iterator)
        return model_forward(model, b, self.device, with_labels=False), partial(self._rm_loss, b)

    def _rm_loss(self, b: dict, scores_BS: torch.Tensor):
        """This micro-batch's loss (``rm.objective``) and its pair statistics."""
        r = self.job.rm
        r_B = gather_last(scores_BS.float(), b["mask"])
        r_w, r_l = r_B[0::2], r_B[1::2]
        if r.objective == "bt":
            loss = bt_loss(r_w, r_l)
        else:
            loss = pointwise_loss(r_B, b["ctr"].to(r_B.device), b["impressions"].to(r_B.device), kind=r.pointwise_loss)
        with torch.no_grad():
            d = (r_w - r_l).double()
            stats = torch.stack([((d > 0).double() + 0.5 * (d == 0).double()).sum(), torch.tensor(float(d.numel())),
                                 torch.nn.functional.softplus(-d).sum(), d.sum()]).cpu()
        report = torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64)]).cpu()
        return loss, torch.tensor(1, dtype=torch.int), {"lm loss": report, "rm": stats}

    def _reduce_loss(self, losses) -> float:
        buf = torch.zeros(len(STATS), dtype=torch.float64)
        if self.ps.is_pipeline_last_stage():
            for item in losses:
                buf += item["rm"]
        buf = self.reduce_last_stage(buf)
        s = dict(zip(STATS, buf.tolist()))
        n = max(s["pairs"], 1.0)
        self._train_stats = {"train/pairwise_acc": s["correct"] / n, "train/bt_loss": s["bt"] / n,
                             "train/margin_mean": s["margin"] / n}
        return super()._reduce_loss(losses)

    # ------------------------------------------------------------------ scoring
    def score_pairs(self, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Collective: scores (chosen, rejected) [P] of ``pairs`` on every rank, by one forward-only pass of the
        pipeline schedule in eval mode (``forward_rows``); pairs are sharded over data-parallel ranks."""
        if not pairs:
            raise ValueError("score_pairs: no pairs")
        r = self.forward_rows(pairs, lambda b, scores_BS: gather_last(scores_BS.float(), b["mask"]).reshape(-1, 2), 2)
        return r[:, 0].clone(), r[:, 1].clone()

    def validate(self) -> dict[str, Any]:
        """Ranking metrics of the validation pairs (``pair_metrics``) at this step."""
        t0 = time.time()
        r_w, r_l = self.score_pairs(self.val_pairs)
        return {"step": self.step, **pair_metrics(r_w, r_l, self.val_pairs), "time_s": time.time() - t0}

    def val_line(self, val: dict[str, Any]) -> str:
        return (f"pairwise_acc={val['pairwise_acc']:.4f} "
                f"true_pairwise_acc={val.get('true_pairwise_acc', math.nan):.4f} bt_loss={val['bt_loss']:.4f} "
                f"({val['n_pairs']} pairs)")

    def test_report(self) -> dict[str, Any]:
        """Score the test split (``rm.test_pairs``; 0: all of it) into ``eval/report.json`` and
        ``eval/test_scores.jsonl`` (rank 0 writes); returns the report."""
        r = self.job.rm
        pairs = self.pairs["test"][: r.test_pairs or None]
        if not pairs:
            log.warning("rm: the test split mines no pair; no eval/report.json")
            return {}
        r_w, r_l = self.score_pairs(pairs)
        report = {"kind": self.KIND, "objective": r.objective, "step": self.step, "split": "test",
                  **pair_metrics(r_w, r_l, pairs), "n_ads": self.data["ads"]["test"],
                  "data": {"train_pairs": len(self.pairs["train"]), "val_pairs": len(self.pairs["val"]),
                           "test_pairs": len(self.pairs["test"]),
                           "train_true_order_rate": true_order_rate(self.pairs["train"])},
                  "val": self.last_val, "wall_s": time.time() - self._t_start}
        if r.objective == "pointwise":
            report["pointwise_loss"] = r.pointwise_loss
        self.write_report(report, "test_scores.jsonl", [
            {"ad_id": p["ad_id"], "chosen_id": p["chosen_id"], "rejected_id": p["rejected_id"],
             "r_chosen": float(a), "r_rejected": float(b), "chosen_ctr": p["chosen_ctr"],
             "rejected_ctr": p["rejected_ctr"], "chosen_p": p["chosen_p"], "rejected_p": p["rejected_p"]}
            for p, a, b in zip(pairs, r_w, r_l)])
        if self.rank == 0:
            log.info("test (%d held-out pairs): pairwise_acc=%.4f true_pairwise_acc=%.4f (true order rate %.4f); "
                     "%s", len(pairs), report["pairwise_acc"], report.get("true_pairwise_acc", float("nan")),
                     report.get("true_order_rate", float("nan")), self.out / "eval" / "report.json")
        return report

    # ------------------------------------------------------------------ checkpoints
    def data_state(self) -> dict[str, Any]:
        return {"train_pairs": len(self.pairs["train"]), "data_seed": self.job.rm.data_seed}

    def data_position(self) -> dict[str, Any]:
        return {"pairs_seen": self.step * self.pairs_per_step, **self.data_state()}


def rm_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one reward-model rank (spawned or under torchrun)."""
    worker_logging()
    return RMTrainer(JobConfig.from_dict(job_dict)).run()
