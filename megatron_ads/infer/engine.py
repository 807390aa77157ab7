"""Inference engine over our megatron-core GPTModel: label scoring and KV-cache generation.

How it works
------------
*Label scoring* with megatron's ``static`` cache uses no cache: each (prompt, candidate) becomes one
right-padded sequence ``prompt + candidate[:-1]`` (single-token candidates of a row share the bare
prompt), run through ``model(ids, pos, None)`` (causal: what follows a position never changes its
logits). Sequences are sorted by length and cut into batches of ``batch_size`` (length bucketing: little
padding). With our caches (``latent``, ``kv``) the prompt is shared instead: rows are sorted by prompt
length and cut into batches of ``batch_size``; a batch is prefilled once (ragged, right-padded: each row's
last real position gives every candidate's first token), then the cache's rows are replicated, one copy
per (row, multi-token candidate) (``RowCache.select_rows``), and every such candidate's tokens but its
last are fed in one right-padded step (position k predicts token k + 1; a copy's padding is never seen
by its real tokens): one prefill per prompt instead of one per (prompt, candidate). Either way the
log-likelihood of a candidate is the sum of the log-probabilities of its tokens after the prompt (the
two paths agree to fp32 rounding); a row's probabilities are the softmax of its candidates'
log-likelihoods.

*Generation* is prefill + incremental decode with megatron-core's ``StaticInferenceContext``:
``model(ids, pos, None, inference_context=ctx, runtime_gather_output=True)`` returns the last
position's logits and fills the context's KV cache; ``ctx.sequence_len_offset`` is advanced by the
number of tokens fed. One offset serves the whole batch (RoPE positions come from it and decode steps
run without a mask), so with this cache a batch holds rows of the *same* prompt length only: rows are
grouped by exact prompt length, each group cut into batches of ``batch_size``, each batch with its own
context. Our caches (``infer.cache``) replace the context: ``Engine(..., cache="latent")`` (MLA models)
with ``LatentCache``, absorbed attention over the kv_lora latent + rope key per token, the same logits
(fp32 <= 1e-5) with 71x less cache for DeepSeek-V3; ``cache="kv"`` (standard / GQA attention) with
``KVCache``, K and V per KV head. Their attention is ours, so they take *ragged* batches: rows are sorted
by prompt length and cut into batches of ``batch_size``; a batch is prefilled right-padded (each row's
logits taken at its last real position), then each row decodes at its own position
(``RowCache.row_offsets``) and attends to its own positions only, so padding is never seen. Rows stop
on their own (a stop id, a stop sequence, ``max_new_tokens``); a finished row keeps being fed (its last
token) until the batch is done, but its output is frozen. A batched row therefore gives what it gives
alone (tokens exact; log-probs to fp32 rounding of another batch shape).

Every engine call runs under ``infer.lean.lean(model)``: TP-1 linears, one-rank MoE layers and sequential
experts are swapped for lean twins that compute the same values without megatron's training-only
per-module costs (on a tiny model these, not the math, set the speed of a decode step).

Sampling: temperature 0 (or top_k 1) is greedy (argmax). Otherwise logits / temperature, then top-k,
then top-p (the smallest set of most likely tokens whose probability reaches top_p), then one draw
from a ``torch.Generator`` *per row*, seeded ``seed + i`` for the i-th prompt of the call (or
``seeds[i]`` when ``SamplingParams.seeds`` gives one per prompt): a row's
draws depend on its seed and its own logits only, not on which other rows share its batch.
Log-probabilities returned are those of the chosen token under the model's distribution at
temperature 1 (``log_softmax(logits)``), before temperature, top-k and top-p: what a policy-gradient
loss recomputes.

*Across ranks* (a ParallelPlan's tp x pp x ep x dp; ``infer.weights.load_for_inference(..., par=...)``
builds this rank's chunk, ``infer.parallel.ParallelContext`` says where it sits): every forward runs
forward-only through the pipeline stages (the first stage embeds, the others receive the previous stage's
hidden states and ``set_input_tensor`` them, the last produces logits; each stage's generation context,
static, latent or kv, holds its own layers' cache). Every rank holds every row (EP's all-to-all needs every
EP rank of a stage in every forward; DP replicas replicate the rows, they do not split them). The source
rank, on a last stage, picks the next tokens and computes the log-likelihoods; these (not the logits) are
broadcast, so every rank stops the same rows, makes the same number of forward calls and returns the
same results. On one rank nothing is communicated.

Shapes: B batch, S sequence, D hidden, V vocab, C candidates.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from megatron.core.inference.contexts import StaticInferenceContext

from megatron_ads.config.model import ModelConfig
from megatron_ads.infer.cache import (CacheKind, KVCache, LatentCache, RowCache, attached, cache_forward,
                                      check_cache_kind, default_cache_kind)
from megatron_ads.infer.lean import lean
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
    seeds: list[int] | None = None
    """Per-row seeds: row i of a call samples with a generator seeded ``seeds[i]`` (one per prompt), so a
    row's draws do not depend on where it sits in the call (data cooking: seeded by input id and candidate);
    None: ``seed + i``."""
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
        if self.seeds is not None:
            self.seeds = [int(x) for x in self.seeds]

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
            K and V; batches of one prompt length), ``latent`` (MLA models only: the absorbed-attention
            latent cache of ``infer.cache``, kv_lora_rank + qk_rope_head_dim values per token per layer;
            ragged batches) or ``kv`` (non-MLA models: ``infer.cache.KVCache``, K and V per KV head;
            ragged batches). ``latent`` and ``kv`` need TP 1. ``auto``: ``infer.cache.default_cache_kind``
            (latent / kv at TP 1, static otherwise). Candidate scoring follows it: ``static`` runs one full
            forward per (row, candidate), ``latent`` / ``kv`` one prefill per prompt shared by its candidates.
        parallel: this rank's place in the layout (``ParallelContext``); None: built here from megatron's
            parallel state (``ParallelContext.from_megatron``: single-rank when none is initialized). With
            tp, pp or ep > 1 every rank must construct its engine (one all-gather).
    """

    def __init__(self, model: torch.nn.Module, cfg: ModelConfig, *, batch_size: int = 8, tokenizer: Any = None,
                 cache: CacheKind | Literal["auto"] = "static", parallel: ParallelContext | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.parallel = parallel if parallel is not None else ParallelContext.from_megatron()
        if cache == "auto":
            cache = default_cache_kind(cfg, self.parallel.tp)
        check_cache_kind(cfg, cache)
        if cache != "static" and self.parallel.tp > 1:
            raise ValueError(f"cache {cache!r}: needs tensor-parallel size 1, got tp={self.parallel.tp}; use 'static'")
        self.cache = cache
        self.model = model.eval()
        self.cfg = cfg
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._pipe_dtype = getattr(model.config, "pipeline_dtype", None) or next(model.parameters()).dtype

    # ------------------------------------------------------------------ forward
    def _forward(self, ids_BS: torch.Tensor, ctx: StaticInferenceContext | RowCache | None = None):
        """One forward of ``ids_BS`` through this rank's stage (positions from ``ctx.sequence_len_offset``,
        0 without a context). Last stage: logits [B, S, V] (S = 1 for a static context, which keeps only
        the last position); other stages: None, after sending their hidden states [S, B, D] on."""
        par = self.parallel
        b, s = ids_BS.shape
        ids_BS = ids_BS.to(self.device)
        if not par.first:
            hidden_SBD = torch.empty(s, b, self.cfg.hidden_size, dtype=self._pipe_dtype, device=self.device)
            self.model.set_input_tensor(par.recv_prev(hidden_SBD))
        if isinstance(ctx, RowCache):
            out = cache_forward(self.model, ctx, ids_BS)
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
        tokens), [rows][C]. ``candidates`` is shared by every row. With our caches (``latent``, ``kv``) each
        prompt is prefilled once and its cache shared by its candidates; with ``static`` each (row,
        candidate) is one full forward (module docstring)."""
        vocab = self.cfg.vocab_size
        _check_ids(prompt_ids, vocab, "prompt_ids")
        _check_ids(candidates, vocab, "candidates")
        with lean(self.model):
            if self.cache == "static":
                out_RC = self._loglik_full(prompt_ids, candidates)
            else:
                out_RC = self._loglik_shared(prompt_ids, candidates)
        if self.parallel.multi:
            out_RC = self.parallel.share(out_RC.to(self.device)).cpu()
        return out_RC.tolist()

    def _loglik_full(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
        """``candidate_loglik`` without a cache: one right-padded sequence per (row, distinct input), [R, C]
        float64 on the source rank (zeros elsewhere)."""
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
        return out_RC

    def _loglik_shared(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> torch.Tensor:
        """``candidate_loglik`` with our cache (shared prefix): per batch of ``batch_size`` rows (sorted by
        prompt length), one ragged prefill (each row's last real position: every candidate's first token),
        then the cache's rows replicated once per multi-token candidate (``RowCache.select_rows``) and every
        such candidate's tokens but its last fed in one right-padded step (position k: token k + 1).
        [R, C] float64 on the source rank (zeros elsewhere)."""
        par = self.parallel
        multi = [c for c, cand in enumerate(candidates) if len(cand) > 1]
        tail = max((len(candidates[c]) - 1 for c in multi), default=0)
        m = len(multi)
        first_C = torch.tensor([cand[0] for cand in candidates])
        feed_MK = torch.zeros(m, tail, dtype=torch.long)  # candidate tokens 0 .. n-2, right-padded
        next_MK = torch.zeros(m, tail, dtype=torch.long)  # the tokens they predict: 1 .. n-1
        real_MK = torch.zeros(m, tail, dtype=torch.bool)
        for j, c in enumerate(multi):
            n = len(candidates[c]) - 1
            feed_MK[j, :n] = torch.tensor(candidates[c][:-1])
            next_MK[j, :n] = torch.tensor(candidates[c][1:])
            real_MK[j, :n] = True
        kind = LatentCache if self.cache == "latent" else KVCache
        out_RC = torch.zeros(len(prompt_ids), len(candidates), dtype=torch.float64)
        order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
        for start in range(0, len(order), self.batch_size):  # every rank: the same forwards
            rows = order[start:start + self.batch_size]
            b = len(rows)
            lens = [len(prompt_ids[r]) for r in rows]
            ids_BS = torch.zeros(b, max(lens), dtype=torch.long)
            for j, r in enumerate(rows):
                ids_BS[j, :lens[j]] = torch.tensor(prompt_ids[r], dtype=torch.long)
            ctx = kind.allocate(self.model, b, max(lens) + tail)
            logits_BV = self._step(ctx, ids_BS, [n - 1 for n in lens])
            logits_NKV = None
            if m:  # row j's copies are rows j*m .. j*m + m-1, one per multi-token candidate
                rep = ctx.select_rows(torch.arange(b).repeat_interleave(m))
                del ctx
                logits_NKV = self._forward(feed_MK.repeat(b, 1), rep)
                del rep
            if logits_BV is None or not par.is_src:
                continue
            lp_BC = torch.log_softmax(logits_BV.float(), dim=-1)[:, first_C.to(logits_BV.device)]
            out_RC[rows] = lp_BC.double().cpu()
            if m:
                lp_NKV = torch.log_softmax(logits_NKV.float(), dim=-1)
                lp_NK = lp_NKV.gather(-1, next_MK.repeat(b, 1).to(lp_NKV.device)[..., None])[..., 0]
                rest_BM = lp_NK.double().cpu().masked_fill(~real_MK.repeat(b, 1), 0.0).sum(-1).view(b, m)
                out_RC[torch.tensor(rows)[:, None], torch.tensor(multi)[None, :]] += rest_BM
        return out_RC

    def score_candidates(self, prompt_ids: list[list[int]], candidates: list[list[int]]) -> list[list[float]]:
        """Per row, the probability of each candidate: softmax over the candidates' log-likelihoods
        (``candidate_loglik``); multi-token candidates are scored as sequences. Returns [rows][C]."""
        ll = torch.tensor(self.candidate_loglik(prompt_ids, candidates), dtype=torch.float64)
        return ll.softmax(-1).tolist()

    # --------------------------------------------------------------- generation
    def _step(self, ctx: StaticInferenceContext | RowCache, ids_BS: torch.Tensor,
              last_B: list[int] | None = None) -> torch.Tensor | None:
        """Feed ``ids_BS`` at positions from ``ctx.sequence_len_offset`` (per row from our cache's
        ``row_offsets`` when set; advanced here, on every stage); the last position's logits [B, V] on the
        last stage, None on other stages. ``last_B`` (ragged prefill of an empty latent / kv cache,
        rows right-padded): each row's last real position, whose logits are returned; the cache's
        ``row_offsets`` become ``last_B + 1``."""
        b, s = ids_BS.shape
        logits = self._forward(ids_BS, ctx)
        ctx.sequence_len_offset += s
        if last_B is not None:
            ctx.row_offsets = torch.tensor(last_B, dtype=torch.long) + 1
        elif getattr(ctx, "row_offsets", None) is not None:
            ctx.row_offsets += s
        if logits is None:
            return None
        if last_B is None:
            return logits[:, -1, :].float()
        return logits[torch.arange(b), torch.tensor(last_B, device=logits.device)].float()

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
        b = len(rows)
        lens = [len(p) for p in prompts]
        width = max(lens)
        ragged = min(lens) != width
        if self.cache != "static":
            ctx = (LatentCache if self.cache == "latent" else KVCache).allocate(self.model, b,
                                                                                width + params.max_new_tokens)
        elif ragged:
            raise ValueError(f"static cache: one batch needs prompts of one length, got lengths {sorted(set(lens))}")
        else:
            ctx = StaticInferenceContext(b, width + params.max_new_tokens)
        ids_BS = torch.zeros(b, width, dtype=torch.long)
        for j, p in enumerate(prompts):
            ids_BS[j, :len(p)] = torch.tensor(p, dtype=torch.long)
        gens = [torch.Generator().manual_seed(params.seeds[r] if params.seeds is not None else params.seed + r)
                for r in rows]
        outs: list[list[int]] = [[] for _ in rows]
        lps: list[list[float]] = [[] for _ in rows]
        done: list[FinishReason | None] = [None] * b
        par = self.parallel
        # our caches: their attention twins stay swapped in for the whole batch
        with attached(self.model, ctx) if isinstance(ctx, RowCache) else contextlib.nullcontext():
            logits = self._step(ctx, ids_BS, [n - 1 for n in lens] if ragged else None)
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
        with lean(self.model):
            return self._generate(prompt_ids, params, on_batch)

    def _batches(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Row indices per generation batch: our caches (latent, kv) take ragged rows (sorted by length:
        little padding); megatron's static context one prompt length per batch (rows grouped by exact
        length)."""
        if self.cache != "static":
            order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
            return [order[k:k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        by_len: dict[int, list[int]] = {}
        for i, p in enumerate(prompt_ids):
            by_len.setdefault(len(p), []).append(i)
        out = []
        for n in sorted(by_len):
            idx = by_len[n]
            out += [idx[k:k + self.batch_size] for k in range(0, len(idx), self.batch_size)]
        return out

    def _generate(self, prompt_ids: list[list[int]], params: SamplingParams,
                  on_batch: Callable[[int], None] | None) -> list[Generation]:
        _check_ids(prompt_ids, self.cfg.vocab_size, "prompt_ids")
        if params.seeds is not None and len(params.seeds) != len(prompt_ids):
            raise ValueError(f"seeds: expected one per prompt ({len(prompt_ids)}), got {len(params.seeds)}")
        limit = self.cfg.max_position_embeddings
        for i, p in enumerate(prompt_ids):
            if len(p) + params.max_new_tokens > limit:
                raise ValueError(f"prompt_ids[{i}]: {len(p)} prompt tokens + max_new_tokens {params.max_new_tokens} "
                                 f"exceed the model's max_position_embeddings {limit}")
        results: list[Generation | None] = [None] * len(prompt_ids)
        for rows in self._batches(prompt_ids):
            for r, g in zip(rows, self._generate_batch(rows, [prompt_ids[r] for r in rows], params)):
                results[r] = g
            if on_batch is not None:
                on_batch(len(rows))
        return results  # type: ignore[return-value]
