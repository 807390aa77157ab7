"""``train rm`` with ``rm.kind=token``: TPPO's token-level reward model (tppo.txt §3.2–3.3; spec ``papers_spec.md``
§B.1) on the Trainer. The math is ``train.tppo``, the data ``data.token_labels``, the encoding and metrics
``train.token_rm``, the head and the shared trainer parts ``train.reward_model`` / ``train.rm_loop.HeadTrainer``.

Model: this rank's megatron-core GPT chunk, any layout the Trainer supports, with a 3-output head on its last
pipeline stage (``attach_reward_head(..., num_outputs=3)`` through ``Trainer.extend_model``): the chunk's
post-processing returns per-position class logits [B, S, 3] (0 masked/separator, 1 irrelevant, 2 relevant); the
logits at position t classify token t (the state s_t = prompt + response up to and including the token: a
causal backbone's position t has attended to it). ``model.init=mcore`` from a token reward-model run also loads
its head; from an SFT run (the policy TPPO trains) the head starts fresh and the run uses that checkpoint's
tokenizer, so token ids match the policy's (the tokenizer is required there); a random init trains a BPE on the
training examples.

Data (``data.token_labels``): ``rm.rows`` synthetic user_query_gen rows split by row (``rm.val_fraction``,
``rm.test_fraction``, ``rm.data_seed``), ``rm.responses_per_row`` responses per row in the SFT target format
(gold queries, and queries perturbed off-topic with ``rm.perturb_rate``; ``rm.label_only_fraction`` with an
empty ``<think>``), words labeled by the rule-based judge on the hidden truth. A sequence is the task prompt
(left-truncated to fit) + the response + EOS, right-padded to ``train.seq_len``; the response's token classes
come from the word labels with the run's tokenizer (``tppo.word_token_labels``: sub-tokens inherit their word's
class; reasoning, tags, separators, EOS get 0; prompt and padding are outside the response). A step takes the
next global_batch examples of a per-epoch permutation (seeded by ``rm.data_seed`` and the epoch), data-parallel
rank r the r-th slice: the data position is the step, so a resumed run sees what the uninterrupted one saw.

Loss (per micro-batch): the valid set 𝒱 = the response tokens minus a random subset of the majority class among
{1, 2} (``tppo.balance_mask``, ``rm.balance_max_ratio``; the generator seeded by ``rm.data_seed`` and the
micro-batch's (step, data-parallel rank, index), so resume is exact), then ``tppo.token_rm_loss`` with
``rm.local_weight`` (w·L_local + (1 − w)·L_global), ``rm.class_weights`` and R_global = the response's sentence
label (1 + its share of relevant queries). megatron averages micro-batches and DDP data-parallel ranks. Each step
logs, over the micro-batches' response tokens (all of them, not only 𝒱): ``train/token_acc`` (argmax = gold on
gold classes 1 and 2), ``train/recall_0/1/2``, the local and global losses and the kept #2/#1 ratio.

Validation: every ``rm.eval_every`` steps (and at the last step), the first ``rm.val_examples`` validation
responses by a forward-only pass (``HeadTrainer.forward_rows``, sharded over data-parallel ranks); ``token_metrics``:
``token_acc``, ``recall_0/1/2``, ``loss`` (the unbalanced token RM loss), and per query the mean per-token reward
(``tppo.token_reward_from_probs`` with ``rm.token_reward``) over the query's tokens against the hidden judge
(``eval.adtasks.query_relevant``): ``query_auc`` and ``query_acc`` (score > 0 read as relevant; ``query_min_*``
the same with the query's lowest token reward), in
``val_metrics.jsonl`` and the step's ``metrics.jsonl`` row (``val/...``). After training the test split
(``rm.test_examples``) goes to ``eval/report.json`` and per-query scores to ``eval/test_queries.jsonl``.

Checkpoints hold ``reward_head.proj.weight`` [3, H] / ``.bias`` [3] with the model, ``{"kind": "token",
"num_outputs": 3}`` under ``reward_head`` in the common state and ``rm.kind: token`` in config.yaml; a frozen
copy for a policy trainer: ``reward_model`` module docstring.

Shapes: B sequences of a micro-batch, S = train.seq_len, C = 3 classes, N scored responses.
"""

from __future__ import annotations

import time
import zlib
from functools import partial
from typing import Any

import torch

from megatron_ads.config.train import JobConfig
from megatron_ads.data.packing import model_forward
from megatron_ads.data.tokenizer import init_tokenizer_dir, run_tokenizer
from megatron_ads.runtime.log import get_logger
from megatron_ads.train import tppo
from megatron_ads.train.loop import worker_logging
from megatron_ads.train.rm_loop import HeadTrainer
from megatron_ads.train.token_rm import encode_example, pad_rows, token_metrics, token_rm_examples

__all__ = ["TokenRMTrainer", "token_rm_worker"]

log = get_logger(__name__)
STATS = ("n0", "n1", "n2", "c0", "c1", "c2", "kept1", "kept2", "local", "global", "mbs")
"""Per-micro-batch sums reduced each step: response tokens and correct argmaxes per gold class, the kept class-1/2
tokens of 𝒱, the local and global losses and the micro-batch count."""
TOKENIZER_EXAMPLES = 600
"""Training examples a random-init run's BPE is trained on."""


class TokenRMTrainer(HeadTrainer):
    """Trainer whose model is TPPO's token-level reward model (backbone + 3-class token head) and whose data are
    word-labeled user_query_gen responses (``job.rm``, ``rm.kind=token``); see the module docstring."""

    KIND = "token"
    NUM_OUTPUTS = tppo.NUM_CLASSES
    SEQS_PER_ITEM = 1
    PERM_PREFIX = "token_rm"

    def __init__(self, job: JobConfig):
        if job.rm.kind != "token":
            raise ValueError(f"rm.kind: the token reward model trainer needs rm.kind=token, got {job.rm.kind!r}")
        if job.model.init != "random" and init_tokenizer_dir(job.model) is None:  # before any process group exists
            raise ValueError(f"model.path: {job.model.path} has no tokenizer (tokenizer.json in it, its tokenizer/ "
                             f"or its newest checkpoint's): the token reward model must tokenize as the policy it "
                             f"scores")
        super().__init__(job)
        r = job.rm
        self.data = token_rm_examples(r)
        self.train_items = self.data["train"]
        self.tokenizer = run_tokenizer(  # a random init: a BPE trained on the training examples
            job.model, self.cfg.vocab_size,
            lambda: [e["prompt"] + e["response"] for e in self.data["train"][:TOKENIZER_EXAMPLES]],
            self.out / "tokenizer" if self.rank == 0 else None)
        self.eos = self.tokenizer.eos_token_id
        self.pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos
        self._enc: dict[str, dict[str, list[int]]] = {}
        self.val_examples = self.data["val"][: r.val_examples]
        if self.rank == 0:
            words = [sum(c == k for ex in self.data["train"] for _s, _e, c in ex["word_spans"]) for k in (1, 2)]
            queries = [ok for ex in self.data["train"] for ok in ex["query_relevant"]]
            log.info("token rm data: %d user rows -> responses train %d / val %d / test %d; training query words "
                     "irrelevant %d / relevant %d, relevant queries %.3f; %d responses per step", r.rows,
                     len(self.data["train"]), len(self.data["val"]), len(self.data["test"]), words[0], words[1],
                     sum(queries) / max(len(queries), 1), self.items_per_step)

    # ------------------------------------------------------------------ data
    def encode(self, ex: dict) -> dict[str, list[int]]:
        """``encode_example`` of ``ex`` with this run's tokenizer and ``train.seq_len`` (cached by id)."""
        enc = self._enc.get(ex["id"])
        if enc is None:
            enc = self._enc[ex["id"]] = encode_example(self.tokenizer, ex, self.job.train.seq_len)
        return enc

    def collate(self, examples: list[dict]) -> dict[str, Any]:
        """A micro-batch: tokens [B, S] (right-padded), token classes [B, S], response mask [B, S], R_global [B]."""
        S = self.job.train.seq_len
        enc = [self.encode(ex) for ex in examples]
        return {"tokens": pad_rows([e["ids"] for e in enc], S, self.pad),
                "classes": pad_rows([e["classes"] for e in enc], S, tppo.CLASS_MASKED),
                "response": pad_rows([e["response"] for e in enc], S, 0).float(),
                "r_global": torch.tensor([ex["r_global"] for ex in examples], dtype=torch.float32)}

    # ------------------------------------------------------------------ loss
    def _forward_step(self, data_iterator, model):
        b = next(data_iterator)
        return model_forward(model, b, self.device, with_labels=False), partial(self._token_loss, b)

    def _token_loss(self, b: dict, logits_BSC: torch.Tensor):
        """This micro-batch's token RM loss on its balanced valid set, and its token statistics."""
        sp, dev = self.job.rm, logits_BSC.device
        labels = b["classes"]
        g = torch.Generator().manual_seed(zlib.crc32(f"token_rm:{self.job.rm.data_seed}:{b['key']}".encode()))
        valid = tppo.balance_mask(labels, b["response"], max_ratio=sp.balance_max_ratio, generator=g)
        out = tppo.token_rm_loss(logits_BSC.float(), labels.to(dev), valid.to(dev), b["r_global"].to(dev),
                                 local_weight=sp.local_weight, class_weights=sp.class_weights,
                                 local_reduction=sp.local_reduction, global_tokens=sp.global_tokens)
        with torch.no_grad():
            pred = logits_BSC.argmax(-1).cpu()
            resp = b["response"].bool()
            n = [float((resp & (labels == c)).sum()) for c in range(tppo.NUM_CLASSES)]
            ok = [float((resp & (labels == c) & (pred == c)).sum()) for c in range(tppo.NUM_CLASSES)]
            kept = [float((valid & (labels == c)).sum()) for c in (tppo.CLASS_IRRELEVANT, tppo.CLASS_RELEVANT)]
            stats = torch.tensor([*n, *ok, *kept, float(out.local), float(out.global_), 1.0], dtype=torch.float64)
        report = torch.stack([out.total.detach().double(), torch.ones((), dtype=torch.float64, device=dev)]).cpu()
        return out.total, torch.tensor(1, dtype=torch.int), {"lm loss": report, "tok": stats}

    def _reduce_loss(self, losses) -> float:
        buf = torch.zeros(len(STATS), dtype=torch.float64)
        if self.ps.is_pipeline_last_stage():
            for item in losses:
                buf += item["tok"]
        buf = self.reduce_last_stage(buf)
        s = dict(zip(STATS, buf.tolist()))
        nan = float("nan")
        mbs = max(s["mbs"], 1.0)
        n12 = s["n1"] + s["n2"]
        self._train_stats = {"train/token_acc": (s["c1"] + s["c2"]) / n12 if n12 else nan,
                             **{f"train/recall_{c}": s[f"c{c}"] / s[f"n{c}"] if s[f"n{c}"] else nan for c in range(3)},
                             "train/local_loss": s["local"] / mbs, "train/global_loss": s["global"] / mbs,
                             "train/kept_ratio_2_1": s["kept2"] / s["kept1"] if s["kept1"] else nan}
        return super()._reduce_loss(losses)

    # ------------------------------------------------------------------ scoring
    def token_probs(self, examples: list[dict]) -> torch.Tensor:
        """Collective: class probabilities [N, S, 3] of ``examples`` on every rank (``forward_rows``)."""
        S, C = self.job.train.seq_len, self.NUM_OUTPUTS

        def collect(b, logits_BSC):
            return torch.softmax(logits_BSC.float(), dim=-1).reshape(logits_BSC.shape[0], S * C)

        return self.forward_rows(examples, collect, S * C, phase="token-rm-score").reshape(len(examples), S, C)

    def score(self, examples: list[dict]) -> tuple[dict[str, float], list[dict]]:
        """Collective: ``token_metrics`` of ``examples`` at this step."""
        probs = self.token_probs(examples)
        return token_metrics(probs, [self.encode(ex) for ex in examples], examples, self.job.rm.token_reward)

    def validate(self) -> dict[str, Any]:
        t0 = time.time()
        metrics, _rows = self.score(self.val_examples)
        return {"step": self.step, **metrics, "time_s": time.time() - t0}

    def val_line(self, val: dict[str, Any]) -> str:
        return (f"token_acc={val['token_acc']:.4f} recall_1={val['recall_1']:.4f} recall_2={val['recall_2']:.4f} "
                f"query_auc={val['query_auc']:.4f} query_acc={val['query_acc']:.4f} loss={val['loss']:.4f} "
                f"({val['n_examples']} responses, {val['n_queries']} queries)")

    def test_report(self) -> dict[str, Any]:
        """Score the test split (``rm.test_examples``; 0: all of it) into ``eval/report.json`` and
        ``eval/test_queries.jsonl`` (rank 0 writes); returns the report."""
        r = self.job.rm
        examples = self.data["test"][: r.test_examples or None]
        if not examples:
            log.warning("rm: the test split is empty (raise rm.rows or rm.test_fraction); no eval/report.json")
            return {}
        metrics, rows = self.score(examples)
        report = {"kind": self.KIND, "num_outputs": self.NUM_OUTPUTS, "step": self.step, "split": "test", **metrics,
                  "n_rows": len({ex["row_id"] for ex in examples}), "token_reward": r.token_reward,
                  "data": {k: len(v) for k, v in self.data.items()},
                  "val": self.last_val, "wall_s": time.time() - self._t_start}
        self.write_report(report, "test_queries.jsonl", rows)
        if self.rank == 0:
            log.info("test (%d held-out responses): %s; %s", len(examples), self.val_line(report),
                     self.out / "eval" / "report.json")
        return report

    # ------------------------------------------------------------------ checkpoints
    def data_state(self) -> dict[str, Any]:
        return {"train_examples": len(self.data["train"]), "data_seed": self.job.rm.data_seed}

    def data_position(self) -> dict[str, Any]:
        return {"examples_seen": self.step * self.items_per_step, **self.data_state()}


def token_rm_worker(job_dict: dict) -> dict[str, Any]:
    """Entry point of one token reward-model rank (spawned or under torchrun)."""
    worker_logging()
    return TokenRMTrainer(JobConfig.from_dict(job_dict)).run()
