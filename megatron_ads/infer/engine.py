"""Inference engine over our megatron-core GPTModel: label scoring and KV-cache generation.

How it works
------------
*Label scoring* needs no cache: each (prompt, candidate) becomes one right-padded sequence
``prompt + candidate[:-1]`` (single-token candidates of a row share the bare prompt), run through
``model(ids, pos, None)`` (causal: what follows a position never changes its logits). The
log-likelihood of a candidate is the sum of the log-probabilities of its tokens after the prompt;
a row's probabilities are the softmax of its candidates' log-likelihoods. Sequences are sorted by
length and cut into batches of ``batch_size`` (length bucketing: little padding).

*Generation* is prefill + incremental decode with megatron-core's ``StaticInferenceContext``:
``model(ids, pos, None, inference_context=ctx, runtime_gather_output=True)`` returns the last
position's logits and fills the context's KV cache; ``ctx.sequence_len_offset`` is advanced by the
number of tokens fed. One offset serves the whole batch (RoPE positions come from it and decode steps
run without a mask), so a batch holds rows of the *same* prompt length only: rows are grouped by exact
prompt length, each group cut into batches of ``batch_size``, each batch with its own context. Rows
stop on their own (a stop id, a stop sequence, ``max_new_tokens``); a finished row keeps being fed
(its last token) until the batch is done, but its output is frozen. A batched row therefore gives
what it gives alone. ``Engine(..., cache="latent")`` (MLA models) swaps the context for
``infer.cache.LatentCache``: absorbed attention over the kv_lora latent + rope key per token, the same
logits (fp32 <= 1e-5) with 71x less cache for DeepSeek-V3.

Sampling: temperature 0 (or top_k 1) is greedy (argmax). Otherwise logits / temperature, then top-k,
then top-p (the smallest set of most likely tokens whose probability reaches top_p), then one draw
from a ``torch.Generator`` *per row*, seeded ``seed + i`` for the i-th prompt of the call: a row's
draws depend on its seed and its own logits only, not on which other rows share its batch.
Log-probabilities returned are those of the chosen token under the model's distribution at
temperature 1 (``log_softmax(logits)``), before temperature, top-k and top-p: what a policy-gradient
loss recomputes.

*Across ranks* (a ParallelPlan's tp x pp x ep x dp; ``infer.weights.load_for_inference(..., par=...)``
builds this rank's chunk, ``infer.parallel.ParallelContext`` says where it sits): every forward runs
forward-only through the pipeline stages (the first stage embeds, the others receive the previous stage's
hidden states and ``set_input_tensor`` them, the last produces logits; each stage's generation context,
static or latent, holds its own layers' cache). Every rank holds every row (EP's all-to-all needs every
EP rank of a stage in every forward; DP replicas replicate the rows, they do not split them). The source
rank, on a last stage, picks the next tokens and computes the log-likelihoods; these (not the logits) are
broadcast, so every rank stops the same rows, makes the same number of forward calls and returns the
same results. On one rank nothing is communicated.

Shapes: B batch, S sequence, D hidden, V vocab, C candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_ads.config.model import ModelConfig
from megatron_ads.infer.cache import CACHE_KINDS, CacheKind, LatentCache, latent_forward
from megatron_ads.infer.parallel import ParallelContext

FinishReason = Literal["stop", "length"]


@dataclass(kw_only=True, slots=True)
class SamplingParams:
    """How ``Engine.generate`` picks tokens and when a row stops."""

    max_new_tokens: int = 64
    """Most tokens generated per row (the stop token included)."""
    temperature: float = 0.0
    """0: greedy (argmax); > 0: sample from softmax(logits / temperature)."""
    top_k: int = 0
    """Keep the k most likely tokens before sampling (0: all; 1: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches top_p."""
    seed: int = 0
    """Row i of a call samples with a generator seeded ``seed + i``."""
    stop_ids: set[int] = field(default_factory=set)
    """A row stops after generating one of these ids (kept in its output)."""
    stop_sequences: list[list[int]] = field(default_factory=list)
    """A row stops once its output ends with one of these id sequences (kept in its output)."""
    stop_check: Callable[[list[int]], bool] | None = None
    """Called with a row's output ids after each new token; True stops the row (e.g. a closing tag in the
    decoded text, however it was tokenized: ``infer.scorer.text_stop``)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: expected >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k: expected >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: expected 0 < top_p <= 1, got {self.top_p}")
        if any(not s for s in self.stop_sequences):
            raise ValueError("stop_sequences: expected non-empty id sequences, got an empty one")
        self.stop_ids = {int(i) for i in self.stop_ids}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(kw_only=True, slots=True)
class Generation:
    """One row's result."""

    output_ids: list[int]
    """Generated ids only (the stop token included)."""
    logprobs: list[float]
    """Per generated token: its log-probability under the model at temperature 1."""
    finish_reason: FinishReason
    """``stop`` (a stop id or sequence) or ``length`` (max_new_tokens reached)."""


def _check_ids(rows: list[list[int]], vocab: int, what: str) -> None:
    for i, ids in enumerate(rows):
        if not ids:
            raise ValueError(f"{what}[{i}]: empty; expected at least one token id")
        bad = [t for t in ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{what}[{i}]: token ids {bad[:5]} outside [0, {vocab}) (the model's vocab_size)")


def filter_logits(logits_V: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``logits_V`` with the tokens outside top-k / top-p set to -inf (at least the most likely kept)."""
    out = logits_V
    if 0 < top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out = out.masked_fill(out < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # tokens past the set that already reached top_p
        drop_sorted[0] = False
        drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


class Engine:
    """Label scoring and generation with this rank's megatron-core GPTModel chunk (one rank, or one of a
    ParallelPlan's ranks: every rank constructs the engine and makes the same calls with the same rows).

    Args:
        model: the GPTModel (``infer.weights.load_for_inference``); put in eval mode here.
        cfg: its ModelConfig (vocab size, max positions).
        batch_size: most rows per forward.
        tokenizer: optional, kept for callers (``Engine.tokenizer``); the engine works on ids.
        cache: generation's KV cache: ``static`` (megatron-core's StaticInferenceContext, full per-head
            K and V) or ``latent`` (MLA models only: the absorbed-attention latent cache of
            ``infer.cache``, kv_lora_rank + qk_rope_head_dim values per token per layer).
        parallel: this rank's place in the layout (``ParallelContext``); None: built here from megatron's
            parallel state (``ParallelContext.from_megatron``: single-rank when none is initialized). With
            tp, pp or ep > 1 every rank must construct its engine (one all-gather).
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, *, batch_size: int = 8, tokenizer: Any = None,
                 cache: CacheKind = "static", parallel: ParallelContext | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        if cache not in CACHE_KINDS:
            raise ValueError(f"cache: expected one of {CACHE_KINDS}, got {cache!r}")
        if cache == "latent" and cfg.family != "deepseek_v3":
            raise ValueError(f"cache 'latent': only for MLA models (deepseek_v3 family), got {cfg.model_type}")
        self.cache = cache
        self.model = model.eval()
        self.cfg = cfg
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.parallel = parallel if parallel is not None else ParallelContext.from_megatron()
        self._pipe_dtype = getattr(model.config, "pipeline_dtype", None) or next(model.parameters()).dtype

    # ------------------------------------------------------------------ forward
    def _forward(self, ids_BS: torch.Tensor, ctx: StaticInferenceContext | LatentCache | None = None):
        """One forward of ``ids_BS`` through this rank's stage (positions from ``ctx.sequence_len_offset``,
        0 without a context). Last stage: logits [B, S, V] (S = 1 for a static context, which keeps only
        the last position); other stages: None, after sending their hidden states [S, B, D] on."""
        par = self.parallel
        b, s = ids_BS.shape
        ids_BS = ids_BS.to(self.device)
        if not par.first:
            hidden_SBD = torch.empty(s, b, self.cfg.hidden_size, dtype=self._pipe_dtype, device=self.device)
            self.model.set_input_tensor(par.recv_prev(hidden_SBD))
        if isinstance(ctx, LatentCache):
            out = latent_forward(self.model, ctx, ids_BS)
        else:
            off = 0 if ctx is None else ctx.sequence_len_offset
            pos_BS = (torch.arange(s, device=self.device) + off).unsqueeze(0).expand(b, -1)
            kwargs = {} if ctx is None else {"inference_context": ctx}
            out = self.model(ids_BS, pos_BS, None, runtime_gather_output=True, **kwargs)
        if not par.last:
            par.send_next(out.to(self._pipe_dtype))
            return None
        return out

    # ------------------------------------------------------------------ scoring
    def _logits(self, ids_BS: torch.Tensor) -> torch.Tensor | None:
        """Logits [B, S, V] of a right-padded batch (no cache) on the last stage; None on other stages."""
        out = self._forward(ids_BS)
        return None if out is None else out.float()

    @torch.inference_mode()
    def candidate_loglik(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """Per row, the log-likelihood of each candidate after its prompt (summed over the candidate's
        tokens), [rows][C]. ``candidates`` is shared by every row."""
        vocab = self.cfg.vocab_size
        _check_ids(prompt_ids, vocab, "prompt_ids")
        _check_ids(candidates, vocab, "candidates")
        # one sequence per (row, distinct input): the bare prompt for single-token candidates,
        # prompt + cand[:-1] for longer ones
        seqs: list[list[int]] = []
        plens: list[int] = []  # per sequence: its prompt's length
        tasks: list[list[tuple[int, int]]] = []  # per row: (seq index, candidate index)
        for p in prompt_ids:
            row = []
            bare = None
            for c, cand in enumerate(candidates):
                if len(cand) == 1:
                    if bare is None:
                        bare = len(seqs)
                        seqs.append(list(p))
                        plens.append(len(p))
                    row.append((bare, c))
                else:
                    row.append((len(seqs), c))
                    seqs.append(list(p) + list(cand[:-1]))
                    plens.append(len(p))
            tasks.append(row)
        logprobs_of: dict[int, torch.Tensor] = {}  # seq index -> log_softmax rows from the prompt's last position
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        for start in range(0, len(order), self.batch_size):  # every rank: the same forwards
            chunk = order[start:start + self.batch_size]
            width = max(len(seqs[i]) for i in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            for b, i in enumerate(chunk):
                ids[b, :len(seqs[i])] = torch.tensor(seqs[i])
            logits = self._logits(ids)
            if logits is None or not self.parallel.is_src:
                continue
            for b, i in enumerate(chunk):
                plen = plens[i]
                take = len(seqs[i]) - plen + 1  # positions plen-1 .. end predict the candidate's tokens
                logprobs_of[i] = torch.log_softmax(logits[b, plen - 1:plen - 1 + take], dim=-1).double().cpu()
        out_RC = torch.zeros(len(tasks), len(candidates), dtype=torch.float64)
        if self.parallel.is_src:
            for r, row in enumerate(tasks):
                for s, c in row:
                    lp = logprobs_of[s]
                    out_RC[r, c] = sum(lp[k, t].item() for k, t in enumerate(candidates[c]))
        if self.parallel.multi:
            out_RC = self.parallel.share(out_RC.to(self.device)).cpu()
        return out_RC.tolist()

    def score_candidates(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """Per row, the probability of each candidate: softmax over the candidates' log-likelihoods
        (``candidate_loglik``); multi-token candidates are scored as sequences. Returns [rows][C]."""
        ll = torch.tensor(self.candidate_loglik(prompt_ids, candidates), dtype=torch.float64)
        return ll.softmax(-1).tolist()

    # --------------------------------------------------------------- generation
    def _step(self, ctx: StaticInferenceContext | LatentCache, ids_BS: torch.Tensor) -> torch.Tensor | None:
        """Feed ``ids_BS`` at positions from ``ctx.sequence_len_offset`` (advanced here, on every stage);
        the last position's logits [B, V] on the last stage, None on other stages."""
        logits = self._forward(ids_BS, ctx)
        ctx.sequence_len_offset += ids_BS.shape[1]
        return None if logits is None else logits[:, -1, :].float()

    def _pick(self, logits_V: torch.Tensor, params: SamplingParams, gen: torch.Generator) -> int:
        if params.greedy:
            return int(torch.argmax(logits_V).item())
        filtered = filter_logits(logits_V / params.temperature, params.top_k, params.top_p)
        probs = torch.softmax(filtered.double().cpu(), dim=-1)
        return int(torch.multinomial(probs, 1, generator=gen).item())

    def _pick_rows(self, logits_BV: torch.Tensor, active: list[int], params: SamplingParams,
                   gens: list[torch.Generator]) -> torch.Tensor:
        """The next token of every row and its log-probability at temperature 1, as one float64 tensor
        [2, B] (ids are exact in float64). Greedy: one argmax over [B, V]; sampling: one draw per active
        row from its own generator (finished rows draw nothing: a row's draws depend on its seed and its
        own logits only). Inactive rows get token 0."""
        if params.greedy:
            tok_B = torch.argmax(logits_BV, dim=-1)
        else:
            tok_B = torch.zeros(logits_BV.shape[0], dtype=torch.long, device=logits_BV.device)
            for j in active:
                tok_B[j] = self._pick(logits_BV[j], params, gens[j])
        logp_B = torch.log_softmax(logits_BV, dim=-1).gather(1, tok_B.unsqueeze(1)).squeeze(1)
        return torch.stack([tok_B.double(), logp_B.double()])

    @staticmethod
    def _stopped(out: list[int], params: SamplingParams) -> bool:
        if out[-1] in params.stop_ids:
            return True
        if any(len(out) >= len(s) and out[-len(s):] == list(s) for s in params.stop_sequences):
            return True
        return params.stop_check is not None and bool(params.stop_check(out))

    @torch.inference_mode()
    def _generate_batch(self, rows: list[int], prompts: list[list[int]], params: SamplingParams) -> list[Generation]:
        b, plen = len(rows), len(prompts[0])
        if self.cache == "latent":
            ctx = LatentCache.allocate(self.model, b, plen + params.max_new_tokens)
        else:
            ctx = StaticInferenceContext(b, plen + params.max_new_tokens)
        gens = [torch.Generator().manual_seed(params.seed + r) for r in rows]
        outs: list[list[int]] = [[] for _ in rows]
        lps: list[list[float]] = [[] for _ in rows]
        done: list[FinishReason | None] = [None] * b
        par = self.parallel
        logits = self._step(ctx, torch.tensor(prompts, dtype=torch.long))
        while True:  # every rank: the same steps, decided from the shared picks
            active = [j for j in range(b) if done[j] is None]
            if par.is_src:
                picks_2B = self._pick_rows(logits, active, params, gens)
            else:
                picks_2B = torch.zeros(2, b, dtype=torch.float64, device=self.device)
            if par.multi:
                picks_2B = par.share(picks_2B.to(self.device))
            toks, logps = picks_2B.cpu().tolist()
            feed = []
            for j in range(b):
                if done[j] is None:
                    outs[j].append(int(toks[j]))
                    lps[j].append(logps[j])
                    if self._stopped(outs[j], params):
                        done[j] = "stop"
                    elif len(outs[j]) >= params.max_new_tokens:
                        done[j] = "length"
                feed.append(outs[j][-1])
            if all(d is not None for d in done):
                break
            logits = self._step(ctx, torch.tensor(feed, dtype=torch.long).unsqueeze(1))
        return [Generation(output_ids=o, logprobs=lp, finish_reason=d) for o, lp, d in zip(outs, lps, done)]

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                 on_batch: Callable[[int], None] | None = None) -> list[Generation]:
        """Generate for each prompt (ragged lengths allowed); results in input order, each what the row
        gives alone. ``on_batch(n_rows)`` is called after each batch (progress bars)."""
        _check_ids(prompt_ids, self.cfg.vocab_size, "prompt_ids")
        limit = self.cfg.max_position_embeddings
        for i, p in enumerate(prompt_ids):
            if len(p) + params.max_new_tokens > limit:
                raise ValueError(f"prompt_ids[{i}]: {len(p)} prompt tokens + max_new_tokens {params.max_new_tokens} "
                                 f"exceed the model's max_position_embeddings {limit}")
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompt_ids):
            by_len.setdefault(len(p), []).append(i)
        results: list[Generation | None] = [None] * len(prompt_ids)
        for n in sorted(by_len):
            idx = by_len[n]
            for start in range(0, len(idx), self.batch_size):
                rows = idx[start:start + self.batch_size]
                for r, g in zip(rows, self._generate_batch(rows, [prompt_ids[r] for r in rows], params)):
                    results[r] = g
                if on_batch is not None:
                    on_batch(len(rows))
        return results  # type: ignore[return-value]
