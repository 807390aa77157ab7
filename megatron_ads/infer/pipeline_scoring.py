"""Label-candidate scoring and greedy generation through the training pipeline (megatron-core's
forward-only schedule over the model chunks a trainer holds): the ``Scorer`` that SFT validation and
test predictions use (``data.tasks.Scorer``). It re-runs the full sequence for every new token (no KV
cache; meant for validation-sized batches); a KV-cache engine will fill the same seam.

Every rank joins every forward; the last pipeline stage's results are broadcast, so every rank
returns the same scores and token ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from megatron_ads.data.packing import Example, collate, model_forward


@dataclass(kw_only=True)
class PipelineScorer:
    """Scores and greedy-decodes with ``model`` (one DDP-wrapped megatron-core chunk of this rank)."""

    model: Any
    tokenizer: Any
    seq_len: int
    """Sequence length of every forward (prompts are left-truncated to fit)."""
    micro_batch: int
    """Rows per micro-batch (batches are padded to a multiple of it)."""
    device: Any

    def _forward_only(self, step_func, batches: list[dict]) -> list[dict]:
        from megatron.core.pipeline_parallel import get_forward_backward_func  # heavy: megatron-core at use

        self.model.eval()
        try:
            return get_forward_backward_func()(
                forward_step_func=step_func, data_iterator=iter(batches), model=[self.model],
                num_microbatches=len(batches), seq_length=self.seq_len, micro_batch_size=self.micro_batch,
                forward_only=True)
        finally:
            self.model.train()

    @staticmethod
    def _last_stage() -> bool:
        from megatron.core import parallel_state as ps  # heavy: megatron-core at use

        return ps.is_pipeline_last_stage()

    @torch.no_grad()
    def score(self, prompts: list[str], targets: list[str]) -> list[float]:
        """Summed log-probability of each target given its prompt (all ranks get it)."""
        seq = self.seq_len
        rows = []
        for i, (p, tgt) in enumerate(zip(prompts, targets)):
            pid = self.tokenizer(p, add_special_tokens=False)["input_ids"]
            tid = self.tokenizer(tgt, add_special_tokens=False)["input_ids"]
            pid = pid[-(seq + 1 - len(tid)):]
            ids = pid + tid
            ids = ids + [self.tokenizer.pad_token_id] * (seq + 1 - len(ids))
            mask = [0.0] * seq
            for j in range(len(pid) - 1, len(pid) + len(tid) - 1):
                mask[j] = 1.0
            rows.append(Example(str(i), "score", ids, mask, len(tid)))
        b = self.micro_batch
        while len(rows) % b:
            rows.append(rows[-1])
        store = self._forward_only(self._score_step, [collate(rows[i:i + b]) for i in range(0, len(rows), b)])
        out = torch.zeros(len(rows), dtype=torch.float64)
        if self._last_stage():
            out = torch.cat([d["logp"].double().cpu() for d in store])
        dist.broadcast(out, src=dist.get_world_size() - 1)  # the last global rank is on the last stage
        return out[: len(prompts)].tolist()

    def _score_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_forward(model, batch, self.device), partial(_logp_loss, batch["loss_mask"])

    def generate(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy decoding (see ``generate_ids``); texts without the EOS."""
        eos = self.tokenizer.eos_token_id
        return [self.tokenizer.decode([x for x in g if x != eos]) for g in self.generate_ids(prompts, max_new_tokens)]

    @torch.no_grad()
    def generate_ids(self, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
        """Greedy decoding, one forward-only pass per new token. Every rank returns the same new token ids,
        up to and including EOS."""
        seq, b = self.seq_len, self.micro_batch
        if max_new_tokens >= seq:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} must be below train.seq_len={seq}")
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        ctx = [self.tokenizer(p, add_special_tokens=False)["input_ids"][-(seq - max_new_tokens):] for p in prompts]
        n = len(ctx)
        ctx += [ctx[-1]] * ((-n) % b)
        new: list[list[int]] = [[] for _ in ctx]
        finished = [False] * len(ctx)
        for _ in range(max_new_tokens):
            rows = [c + g for c, g in zip(ctx, new)]
            batches = []
            for i in range(0, len(rows), b):
                chunk = rows[i:i + b]
                tok = torch.tensor([r + [pad] * (seq - len(r)) for r in chunk], dtype=torch.long)
                batches.append({"tokens": tok, "last": torch.tensor([len(r) - 1 for r in chunk])})
            store = self._forward_only(self._next_token_step, batches)
            nxt = torch.zeros(len(rows), dtype=torch.long)
            if self._last_stage():
                nxt = torch.cat([d["next"].cpu() for d in store])
            dist.broadcast(nxt, src=dist.get_world_size() - 1)
            for i, tk in enumerate(nxt.tolist()):
                if not finished[i]:
                    new[i].append(tk)
                    finished[i] = tk == eos
            if all(finished):
                break
        return new[:n]

    def _next_token_step(self, data_iterator, model):
        batch = next(data_iterator)
        return model_forward(model, batch, self.device, with_labels=False), partial(_argmax_at, batch["last"])


def _logp_loss(mask_BS: torch.Tensor, nll_BS: torch.Tensor):
    logp = -(nll_BS.float() * mask_BS.to(nll_BS.device)).sum(1)
    return torch.zeros((), device=nll_BS.device), torch.tensor(1, dtype=torch.int), {"logp": logp.detach()}


def _argmax_at(last_B: torch.Tensor, logits_BSV: torch.Tensor):
    nxt = logits_BSV[torch.arange(logits_BSV.shape[0]), last_B.to(logits_BSV.device)].argmax(-1)
    return torch.zeros((), device=logits_BSV.device), torch.tensor(1, dtype=torch.int), {"next": nxt}
