"""Our generation caches, alternatives to megatron-core's static KV cache: the MLA latent cache (absorbed
attention) for DeepSeek-V2/V3 models, ``Engine(..., cache="latent")``, and a per-row KV cache for
standard / GQA attention (Llama, Qwen2), ``Engine(..., cache="kv")``. Both take ragged batches.

How it works
------------
megatron-core's ``StaticInferenceContext`` caches, per token per layer, the full per-head key
(``qk_nope + qk_rope`` dims) and value (``v_head_dim``) of every head: for DeepSeek-V3
128 * (192 + 128) = 40,960 values. MLA's key and value are both functions of a small per-token
latent: ``c = kv_layernorm(x W_DKV)[:kv_lora_rank]`` and the shared rope key ``k_pe`` (rotated), so
caching ``c`` and ``k_pe`` (512 + 64 = 576 values for DeepSeek-V3, 71x less) is enough. As in
DeepSeek's own inference code (``MLA`` with ``attn_impl="absorb"``), the up projection
``linear_kv_up_proj`` (weight [H, dn + dv, C]: W_UK = [:, :dn], W_UV = [:, dn:]) is folded in:

    score[b,h,s,t] = ((q_nope[s,b,h] @ W_UK[h]) . c[b,t] + q_pe[s,b,h] . k_pe[b,t]) * softmax_scale
    out[s,b,h]     = (softmax_t(score + causal mask) @ c[b]) @ W_UV[h]^T   -> linear_proj

which equals ``softmax(q k^T) v`` with ``k = [c W_UK^T, k_pe]``, ``v = c W_UV^T`` (matrix products
re-associated: equal up to fp rounding). The query path (``linear_q_down_proj`` / ``q_layernorm`` /
``linear_q_up_proj`` or ``linear_q_proj``), ``linear_kv_down_proj``, ``kv_layernorm`` and
``linear_proj`` are the model's own modules; rope uses the model's own ``rotary_pos_emb`` table (rope
or YaRN, with the YaRN mscale it returns), built once per cache for its whole length, with cos/sin
applied as megatron's ``apply_rotary_pos_emb`` applies them for MLA (same ops); the softmax scale is
the attention module's ``softmax_scale`` (YaRN mscale**2 / sqrt(q_head_dim)). Everything else in the
forward (embedding, norms, MoE/MLP, residuals, final norm, output layer) is the model's own: for one
step each layer's ``self_attention`` is swapped for an ``_AbsorbedAttention`` that reads/writes the
``LatentCache`` at positions ``sequence_len_offset ..``, and ``model(ids, pos, None)`` is called
(no megatron inference context). Prefill and decode both run this path. Single rank (TP 1) only.

The KV cache (``KVCache``) does the same for megatron's ``SelfAttention``: the swapped-in
``_CachedAttention`` calls the module's own ``get_query_key_value_tensors`` (fused qkv projection, GQA
split, q/k norms), applies rope from the model's ``rotary_pos_emb`` table at the tokens' positions
(cos/sin built once, applied with megatron's ops), stores K and V per KV head ([B, T, G, Dh], as many
values as megatron's static cache), attends (each KV head with its group of query heads, the core
attention's softmax scale; explicit matmuls: CPU SDPA with a mask is slow on a handful of queries), and
calls the module's own ``linear_proj``. Single rank (TP 1) only.

Ragged batches (both caches, ``RowCache``): with ``row_offsets`` set, row b's new tokens go to positions
``row_offsets[b] ..`` (rope at those positions, cache written there) and a query at position p sees
keys 0 .. p of its own row only. A right-padded prefill writes padding past a short row's prompt; the
row's decode steps overwrite it one position at a time, and no query of that row ever sees a position it
has not written with a real token. (megatron's ``StaticInferenceContext`` cannot do this: one
``sequence_len_offset`` gives every row its RoPE positions and write range, and decode runs unmasked.)
``RowCache.select_rows`` copies rows (with their offsets) into a new cache: candidate scoring continues
one prompt's cache with several candidates at once.

Shapes (legend): B batch, S new tokens, T cached tokens (offset + S), H heads, G KV heads, Dh head dim,
D hidden, C kv_lora_rank, R qk_rope_head_dim, N qk_nope_head_dim, V v_head_dim; X 1 or B.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from typing import Iterator, Literal

import torch
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from megatron_ads.config.model import ModelConfig
from megatron_ads.infer.lean import unwrap
from megatron_ads.kernels.fp8_linear import dense_weight
from megatron_ads.model.attention import rope_with_cos_sin

CacheKind = Literal["static", "latent", "kv"]
CACHE_KINDS: tuple[str, ...] = ("static", "latent", "kv")


CACHE_CHOICES: tuple[str, ...] = ("auto", *CACHE_KINDS)
"""What a user may ask for: a cache kind, or ``auto`` (``default_cache_kind``)."""


def default_cache_kind(cfg: ModelConfig, tp: int = 1) -> CacheKind:
    """The cache ``auto`` means: at TP 1 the ragged-batch cache of the model's attention (``latent`` for MLA
    models, ``kv`` for the others: rows of any prompt length decode together); at TP > 1 megatron-core's
    ``static`` context (batches of one prompt length)."""
    if tp > 1:
        return "static"
    return "latent" if cfg.family == "deepseek_v3" else "kv"


def check_cache_kind(cfg: ModelConfig, kind: str) -> None:
    """Raise ValueError unless ``kind`` is a cache kind for ``cfg``: ``static`` for every model, ``latent``
    for MLA models (deepseek_v3 family), ``kv`` for the others (standard / GQA attention)."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"cache: expected one of {CACHE_KINDS}, got {kind!r}")
    if kind == "latent" and cfg.family != "deepseek_v3":
        raise ValueError(f"cache 'latent': only for MLA models (deepseek_v3 family), got {cfg.model_type}")
    if kind == "kv" and cfg.family == "deepseek_v3":
        raise ValueError(f"cache 'kv': for standard (GQA) attention; MLA models ({cfg.model_type}) use 'latent'")


def cache_values_per_token(cfg: ModelConfig, kind: CacheKind) -> int:
    """Values cached per token per layer: ``static`` (megatron-core's K and V for every head), ``latent``
    (MLA only: kv_lora_rank latent + qk_rope_head_dim rope key) or ``kv`` (non-MLA: K and V per KV head,
    as ``static``)."""
    if kind not in CACHE_KINDS:
        raise ValueError(f"cache kind: expected one of {CACHE_KINDS}, got {kind!r}")
    check_cache_kind(cfg, kind)
    if cfg.family == "deepseek_v3":
        if kind == "static":
            return cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return cfg.kv_lora_rank + cfg.qk_rope_head_dim
    return 2 * cfg.num_key_value_heads * cfg.kv_channels


def cache_bytes_per_token(cfg: ModelConfig, kind: CacheKind, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes cached per token per layer (``cache_values_per_token`` times the element size of ``dtype``)."""
    return cache_values_per_token(cfg, kind) * torch.empty((), dtype=dtype).element_size()


@dataclass(kw_only=True, slots=True)
class RowCache:
    """What our caches share: positions (one offset for the batch, or one per row) and the rope tables.
    ``sequence_len_offset``: tokens already cached (the position of the next token fed), advanced by the
    caller as with ``StaticInferenceContext``; with ``row_offsets`` set, each row has its own (the caller
    advances both)."""

    max_sequence_length: int
    sequence_len_offset: int = 0
    row_offsets: torch.Tensor | None = None
    """Ragged batches: per row, the position of the next token fed ([B] long; row b's tokens of a step go
    to positions ``row_offsets[b] ..``); None: every row is at ``sequence_len_offset``."""
    _rope: dict = field(default_factory=dict)
    """Per rotary module: its (cos, sin) for max_sequence_length positions, computed once."""
    _layers: list = field(default_factory=list)
    """The model's decoder layers (checked once, at ``allocate``)."""
    _twins: list = field(default_factory=list)
    """Per layer, the attention twin swapped in for a step (built at the first step)."""
    _attached: bool = False
    """True inside ``attached``: the twins stay in place across steps."""

    def rope(self, rot: torch.nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [T_max, 1, 1, R] of the rotary module ``rot``'s table (rope, or YaRN, which returns
        (table, mscale)), times the mscale, as megatron's ``apply_rotary_pos_emb`` computes them per call;
        built once for ``max_sequence_length`` positions (an entry depends on its position only)."""
        if id(rot) not in self._rope:
            out = rot(self.max_sequence_length)
            emb, mscale = out if isinstance(out, tuple) else (out, 1.0)
            self._rope[id(rot)] = ((torch.cos(emb) * mscale).to(dtype), (torch.sin(emb) * mscale).to(dtype))
        return self._rope[id(rot)]

    def positions(self, s: int, device: torch.device) -> tuple[int, int, torch.Tensor | None]:
        """For ``s`` new tokens: (uniform offset, cached tokens after the step T, per-row positions [B, S]
        or None when uniform)."""
        if self.row_offsets is None:
            off = self.sequence_len_offset
            t, pos_BS = off + s, None
        else:  # ragged: row b's new tokens at row_offsets[b] + 0 .. s-1
            off = 0
            pos_BS = self.row_offsets.to(device)[:, None] + torch.arange(s, device=device)
            t = int(pos_BS.max()) + 1
        if t > self.max_sequence_length:
            raise ValueError(f"{type(self).__name__}: {t} tokens exceed its max_sequence_length "
                             f"{self.max_sequence_length}")
        return off, t, pos_BS

    def select_rows(self, index_N: torch.Tensor) -> "RowCache":
        """A new cache of the same kind whose row n is this cache's row ``index_N[n]`` (an index_select over
        the row dimension of every buffer and of ``row_offsets``; rows may repeat: shared-prefix candidate
        scoring gives each (row, candidate) its own copy of the row's prompt cache). Offsets and rope tables
        carried over; its attention twins are its own (built at its first step)."""
        kw = {}
        for f in fields(self):
            if f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, list):  # per-layer buffers [B, T_max, ...]
                v = [t.index_select(0, index_N.to(t.device)) for t in v]
            elif isinstance(v, torch.Tensor):  # row_offsets [B]
                v = v.index_select(0, index_N.to(v.device))
            kw[f.name] = v
        return type(self)(**kw, _rope=dict(self._rope), _layers=list(self._layers))

    @staticmethod
    def seen(off: int, s: int, t: int, pos_BS: torch.Tensor | None, device) -> torch.Tensor | None:
        """Which cached positions each new token sees, [X, S, T] (X: 1 uniform, B ragged), None when all
        (one new token per row at a shared offset): a row sees its own positions up to the query's
        (later ones: this row's padding or positions not written yet)."""
        if pos_BS is None:
            if s == 1:
                return None
            return (torch.arange(t, device=device)[None, :] <= (off + torch.arange(s, device=device))[:, None])[None]
        return torch.arange(t, device=device)[None, None, :] <= pos_BS[:, :, None]

    @staticmethod
    def write(buf_BT_: torch.Tensor, val_SB_: torch.Tensor, off: int, t: int, pos_BS: torch.Tensor | None) -> None:
        """Store the step's values [S, B, ...] into a per-layer buffer [B, T_max, ...] at their positions."""
        if pos_BS is None:
            buf_BT_[:, off:t] = val_SB_.transpose(0, 1)
        else:
            rows_B1 = torch.arange(pos_BS.shape[0], device=pos_BS.device)[:, None]
            buf_BT_[rows_B1, pos_BS] = val_SB_.transpose(0, 1)


@dataclass(kw_only=True, slots=True)
class LatentCache(RowCache):
    """Per-layer latent cache of one batch: ``latent[i]`` [B, T_max, C] (kv_layernorm'ed latent) and
    ``k_pe[i]`` [B, T_max, R] (rotated rope key); positions as ``RowCache``."""

    latent: list[torch.Tensor]
    k_pe: list[torch.Tensor]

    @classmethod
    def allocate(cls, model: torch.nn.Module, batch: int, max_sequence_length: int) -> "LatentCache":
        layers = _mla_layers(model)
        p = next(model.parameters())
        c = layers[0].self_attention.config
        shape = (batch, max_sequence_length)
        return cls(latent=[torch.zeros(*shape, c.kv_lora_rank, dtype=p.dtype, device=p.device) for _ in layers],
                   k_pe=[torch.zeros(*shape, c.qk_pos_emb_head_dim, dtype=p.dtype, device=p.device) for _ in layers],
                   max_sequence_length=max_sequence_length, _layers=layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.latent, *self.k_pe))


@dataclass(kw_only=True, slots=True)
class KVCache(RowCache):
    """Per-layer K and V cache of one batch for standard (GQA) attention: ``k[i]``, ``v[i]`` [B, T_max, G, Dh]
    (K rotated); positions as ``RowCache``. Rope comes from the model's own ``rotary_pos_emb``."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    @classmethod
    def allocate(cls, model: torch.nn.Module, batch: int, max_sequence_length: int) -> "KVCache":
        layers = _gqa_layers(model)
        p = next(model.parameters())
        a = layers[0].self_attention
        shape = (batch, max_sequence_length, a.num_query_groups_per_partition, a.hidden_size_per_attention_head)
        return cls(k=[torch.zeros(*shape, dtype=p.dtype, device=p.device) for _ in layers],
                   v=[torch.zeros(*shape, dtype=p.dtype, device=p.device) for _ in layers],
                   max_sequence_length=max_sequence_length, _layers=layers)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


def _mla_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = [unwrap(layer) for layer in model.decoder.layers]  # inside ``infer.lean.lean``: the real layers
    for i, layer in enumerate(layers):
        attn = layer.self_attention
        if not isinstance(attn, MLASelfAttention):
            raise ValueError(f"cache 'latent': layer {i} has {type(attn).__name__}, expected MLASelfAttention "
                             "(the latent cache is for MLA models: the deepseek_v3 family)")
        if attn.num_attention_heads_per_partition != attn.config.num_attention_heads:
            raise ValueError("cache 'latent': tensor parallelism is not supported (TP must be 1)")
    return layers


def _gqa_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    layers = [unwrap(layer) for layer in model.decoder.layers]  # inside ``infer.lean.lean``: the real layers
    if getattr(model, "rotary_pos_emb", None) is None or getattr(model, "position_embedding_type", "rope") != "rope":
        raise ValueError("cache 'kv': the model has no rotary position embedding (rope expected)")
    for i, layer in enumerate(layers):
        attn = layer.self_attention
        if not isinstance(attn, SelfAttention):  # megatron's, or its twin model.attention.LeanSelfAttention
            raise ValueError(f"cache 'kv': layer {i} has {type(attn).__name__}, expected SelfAttention "
                             "(standard / GQA attention; MLA models use the 'latent' cache)")
        if attn.num_attention_heads_per_partition != attn.config.num_attention_heads:
            raise ValueError("cache 'kv': tensor parallelism is not supported (TP must be 1)")
        c = attn.config
        if c.rotary_interleaved or getattr(c, "attention_output_gate", False) or c.apply_rope_fusion:
            raise ValueError("cache 'kv': interleaved or fused rope and output gates are not supported")
    return layers


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """megatron's MLA rope (``apply_rotary_pos_emb`` with ``multi_latent_attention``, not interleaved) with
    cos/sin given: de-interleave the pairs, then ``x cos + rotate_half(x) sin`` - the same ops."""
    x = torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return (x * cos) + (torch.cat((-x2, x1), dim=-1) * sin)


class _CachedAttention(torch.nn.Module):
    """Stands in for one layer's SelfAttention (standard / GQA) during a ``KVCache`` step (same call and
    return: ``(output_SBD, bias)``): the module's own q/k/v projection and q/k norms
    (``get_query_key_value_tensors``), rope from the model's table at the tokens' positions, K and V
    written to the cache, attention over this row's cached positions (each KV head with its group of
    query heads, softmax scale as the core attention's), the module's own ``linear_proj``."""

    def __init__(self, attn: SelfAttention, cache: "KVCache", index: int, rot: torch.nn.Module):
        super().__init__()
        object.__setattr__(self, "attn", attn)  # not registered: the swap is temporary
        object.__setattr__(self, "rot", rot)
        self.cache = cache
        self.index = index

    def forward(self, hidden_SBD: torch.Tensor, attention_mask=None, **unused):
        a, cache = self.attn, self.cache
        s, b, _ = hidden_SBD.shape
        dev = hidden_SBD.device
        off, t, pos_BS = cache.positions(s, dev)
        q_SBHD, k_SBGD, v_SBGD = a.get_query_key_value_tensors(hidden_SBD, None)
        cos, sin = cache.rope(self.rot, q_SBHD.dtype)
        if pos_BS is None:
            cos, sin = cos[off:t], sin[off:t]  # [S, 1, 1, R]
        else:
            cos, sin = cos[pos_BS.t()].squeeze(2), sin[pos_BS.t()].squeeze(2)  # [S, B, 1, R]
        q_SBHD, k_SBGD = rope_with_cos_sin(q_SBHD, cos, sin), rope_with_cos_sin(k_SBGD, cos, sin)
        cache.write(cache.k[self.index], k_SBGD, off, t, pos_BS)
        cache.write(cache.v[self.index], v_SBGD, off, t, pos_BS)
        k_BGTD = cache.k[self.index][:, :t].transpose(1, 2)
        v_BGTD = cache.v[self.index][:, :t].transpose(1, 2)
        heads, groups, d = q_SBHD.shape[2], k_BGTD.shape[1], q_SBHD.shape[3]
        hg = heads // groups  # query heads per KV head (consecutive: head h uses KV head h // hg)
        seen_XST = cache.seen(off, s, t, pos_BS, dev)
        scale = getattr(a.core_attention, "softmax_scale", None) or a.config.softmax_scale
        scale = scale if scale is not None else 1.0 / math.sqrt(d)
        # explicit matmuls (on CPU, SDPA with a mask is far slower for a handful of queries); a KV head's
        # query heads are folded into the query rows ([B, G, hg*S, Dh]) instead of repeating K and V
        q_BGYD = q_SBHD.permute(1, 2, 0, 3).reshape(b, groups, hg * s, d)
        scores_BGYT = torch.matmul(q_BGYD, k_BGTD.transpose(-1, -2)).float() * scale
        if seen_XST is not None:
            scores_BGYT = scores_BGYT.view(b, groups, hg, s, t).masked_fill(
                ~seen_XST[:, None, None], float("-inf")).view(b, groups, hg * s, t)
        out_BGYD = torch.matmul(scores_BGYT.softmax(-1).to(v_BGTD.dtype), v_BGTD)
        return a.linear_proj(out_BGYD.view(b, heads, s, d).permute(2, 0, 1, 3).reshape(s, b, heads * d))


class _AbsorbedAttention(torch.nn.Module):
    """Stands in for one layer's MLASelfAttention during a latent-cache step (same call and return:
    ``(output_SBD, bias)``)."""

    def __init__(self, attn: MLASelfAttention, cache: LatentCache, index: int):
        super().__init__()
        object.__setattr__(self, "attn", attn)  # not registered: the swap is temporary
        self.cache = cache
        self.index = index

    def forward(self, hidden_SBD: torch.Tensor, attention_mask=None, **unused):
        a, c, cache = self.attn, self.attn.config, self.cache
        s, b, _ = hidden_SBD.shape
        h, n, r, v = c.num_attention_heads, c.qk_head_dim, c.qk_pos_emb_head_dim, c.v_head_dim
        dev = hidden_SBD.device
        off, t, pos_BS = cache.positions(s, dev)
        # query
        if c.q_lora_rank is not None:
            q_SBX = a.linear_q_up_proj(a.q_layernorm(a.linear_q_down_proj(hidden_SBD)[0]))[0]
        else:
            q_SBX = a.linear_q_proj(hidden_SBD)[0]
        q_nope_SBHN, q_pe_SBHR = q_SBX.view(s, b, h, n + r).split([n, r], dim=-1)
        # latent and rope key
        kv_SBX = a.linear_kv_down_proj(hidden_SBD)[0]
        lat_SBC, k_pe_SBR = kv_SBX.split([c.kv_lora_rank, r], dim=-1)
        lat_SBC = a.kv_layernorm(lat_SBC)
        # rope: the model's own table (rope, or YaRN returning its mscale) at the tokens' positions
        cos, sin = cache.rope(a.rotary_pos_emb, lat_SBC.dtype)
        if pos_BS is None:
            cos, sin = cos[off:t], sin[off:t]  # [S, 1, 1, R]
        else:
            cos, sin = cos[pos_BS.t()].squeeze(2), sin[pos_BS.t()].squeeze(2)  # [S, B, 1, R]
        q_pe_SBHR = _rope(q_pe_SBHR, cos, sin)
        k_pe_SB1R = _rope(k_pe_SBR.unsqueeze(-2), cos, sin)
        cache.write(cache.latent[self.index], lat_SBC, off, t, pos_BS)
        cache.write(cache.k_pe[self.index], k_pe_SB1R.squeeze(-2), off, t, pos_BS)
        seen_XST = cache.seen(off, s, t, pos_BS, dev)
        lat_B1TC = cache.latent[self.index][:, None, :t]
        k_pe_B1TR = cache.k_pe[self.index][:, None, :t]
        # absorbed attention (matmuls broadcast over B and H)
        w_HXC = dense_weight(a.linear_kv_up_proj, lat_B1TC.dtype).view(h, n + v, c.kv_lora_rank)  # FP8: dequantized
        w_uk_HNC, w_uv_HVC = w_HXC[:, :n], w_HXC[:, n:]
        q_lat_BHSC = torch.matmul(q_nope_SBHN.permute(1, 2, 0, 3), w_uk_HNC)
        scores_BHST = (torch.matmul(q_lat_BHSC, lat_B1TC.transpose(-1, -2))
                       + torch.matmul(q_pe_SBHR.permute(1, 2, 0, 3), k_pe_B1TR.transpose(-1, -2))).float()
        scores_BHST = scores_BHST * a.softmax_scale
        if seen_XST is not None:
            scores_BHST = scores_BHST.masked_fill(~seen_XST.unsqueeze(1), float("-inf"))
        probs_BHST = scores_BHST.softmax(-1).to(lat_B1TC.dtype)
        o_BHSV = torch.matmul(torch.matmul(probs_BHST, lat_B1TC), w_uv_HVC.transpose(-1, -2))
        return a.linear_proj(o_BHSV.permute(2, 0, 1, 3).reshape(s, b, h * v))


@contextmanager
def attached(model: torch.nn.Module, cache: RowCache) -> Iterator[None]:
    """Each decoder layer's ``self_attention`` replaced by the cache's twin (``_AbsorbedAttention`` for a
    ``LatentCache``, ``_CachedAttention`` for a ``KVCache``) for the block: ``cache_forward`` calls inside
    it (a batch's steps) reuse the swap; restored on exit. Nested use is a no-op."""
    if cache._attached:
        yield
        return
    if isinstance(cache, LatentCache):
        layers = cache._layers or _mla_layers(model)
        if not cache._twins:
            cache._twins = [_AbsorbedAttention(layer.self_attention, cache, i) for i, layer in enumerate(layers)]
    else:
        layers = cache._layers or _gqa_layers(model)
        if not cache._twins:
            cache._twins = [_CachedAttention(layer.self_attention, cache, i, model.rotary_pos_emb)
                            for i, layer in enumerate(layers)]
    originals = [layer.self_attention for layer in layers]
    try:
        for layer, twin in zip(layers, cache._twins):
            layer.self_attention = twin
        cache._attached = True
        yield
    finally:
        cache._attached = False
        for layer, attn in zip(layers, originals):
            layer.self_attention = attn


def cache_forward(model: torch.nn.Module, cache: RowCache, ids_BS: torch.Tensor) -> torch.Tensor:
    """Feed ``ids_BS`` at positions ``cache.sequence_len_offset ..`` (row b: ``cache.row_offsets[b] ..``
    when set) through the model with each layer's attention over ``cache`` (absorbed MLA for a
    ``LatentCache``, standard for a ``KVCache``; filled here, the caller advances the offsets).
    Logits [B, S, V]."""
    s = ids_BS.shape[1]
    if cache.row_offsets is None:
        pos_BS = (torch.arange(s, device=ids_BS.device) + cache.sequence_len_offset).unsqueeze(0).expand_as(ids_BS)
    else:
        pos_BS = cache.row_offsets.to(ids_BS.device)[:, None] + torch.arange(s, device=ids_BS.device)
    with attached(model, cache):
        return model(ids_BS, pos_BS, None)


latent_forward = cache_forward
"""The same function, under its first name (a ``LatentCache``)."""
