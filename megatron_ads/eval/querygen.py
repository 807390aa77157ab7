"""Keyword-based query generation metrics (AdNanny §5.3, Table 6): relevance, diversity, difficulty.

For each gold row (``{"id", "keyword", "ad": {...}?}``) the prediction row holds the generated
queries (``{"id", "queries": [...]}``). Per row, then averaged over rows:

- **Relevance** — mean cosine similarity between each generated query and the advertiser intent
  (the keyword, plus the ad title when the gold row has one), both embedded by a *frozen* embedder.
- **Diversity** — mean pairwise cosine *distance* (1 − cos) between the row's queries; also
  distinct-1 / distinct-2 (unique n-grams / all n-grams over the row's queries).
- **Difficulty** — a lexical-matcher proxy for "how challenging the queries are for downstream
  matching": the share of each query's words that do not occur in the keyword (a keyword/exact
  matcher cannot use them), averaged over queries. 0 = the query repeats the keyword.

- **Recall@K** (AdNanny Eq. 8, the query_gen reward's measure) — with a frozen *retriever* (``Retriever``
  protocol: the CLI builds the one the reward uses, ``rewards.retrieval.Retriever``: MiniLM + faiss over the
  ad corpus; this module does not import it): |(∪ over {keyword} ∪ queries of each one's top-K ads) ∩ R| / |R|,
  R = the gold row's ``relevant_ads`` (ad ids of the corpus) or the corpus's relevant set of its keyword.
  Queries are de-duplicated and capped at ``max_queries`` as in the reward. ``recall_at_k_keyword`` is the
  keyword alone (the baseline the reward subtracts), ``recall_at_k_gain`` their difference.

Rows with no prediction or an empty / non-list ``queries`` count as malformed and score 0 on every
metric (a wrong answer, as for the labeling tasks; recall@K included, not the keyword's baseline).

Embedders: the default is a deterministic hashed character-trigram embedding (no download, fully
reproducible, a lexical-semantic proxy); ``--embedder DIR`` uses a local Hugging Face model
(mean-pooled last hidden state, ``trust_remote_code=False``), e.g. a sentence-embedding model.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np

WORD = re.compile(r"[\w']+", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class Embedder(Protocol):
    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings [N, D] (float64)."""


class HashedTrigramEmbedder:
    """Character-trigram counts hashed into ``dim`` buckets (blake2b, stable across runs), L2-normalized."""

    def __init__(self, dim: int = 4096):
        if dim < 16:
            raise ValueError(f"dim: expected >= 16, got {dim}")
        self.dim = dim

    def _bucket(self, gram: str) -> int:
        return int.from_bytes(hashlib.blake2b(gram.encode(), digest_size=8).digest(), "little") % self.dim

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        for i, t in enumerate(texts):
            for w in words(t):
                padded = f"#{w}#"
                for j in range(max(1, len(padded) - 2)):
                    out[i, self._bucket(padded[j:j + 3])] += 1.0
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norm == 0, 1.0, norm)


class HFEmbedder:
    """Mean-pooled last hidden state of a local Hugging Face model directory (frozen, eval mode)."""

    def __init__(self, path: str | Path, batch_size: int = 32):
        import torch  # heavy: only the optional HF embedder needs torch and transformers
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a Hugging Face model directory (config.json missing)")
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModel.from_pretrained(str(path), trust_remote_code=False).eval()
        self.batch_size = batch_size
        self.torch = torch

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        torch = self.torch
        outs = []
        with torch.no_grad():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True)
                h = self.model(**enc).last_hidden_state.float()
                m = enc["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1).clamp_min(1)
                outs.append(torch.nn.functional.normalize(e, dim=-1).double().numpy())
        return np.concatenate(outs) if outs else np.zeros((0, 1))


class Retriever(Protocol):
    """What recall@K needs from a frozen retriever (``rewards.retrieval.Retriever`` satisfies it)."""

    row: Mapping[str, int]
    """Ad id -> corpus row."""
    relevant: Mapping[str, set[int]]
    """Keyword -> corpus rows relevant to it."""

    def recall(self, queries: Sequence[str], relevant: Iterable[int], k: int) -> float:
        """recall@K of the union of the queries' top-K results."""


RECALL_K = 10
"""Default K of recall@K (as the ``recall_at_k`` reward's ``k``)."""
MAX_QUERIES = 8
"""Generated queries counted per row (as the reward's ``max_queries``)."""


def clean_queries(queries: Sequence[str], limit: int = MAX_QUERIES) -> list[str]:
    """Whitespace-normalized queries, de-duplicated case-insensitively, the first ``limit`` (as the reward)."""
    seen, out = set(), []
    for q in queries:
        q = " ".join(str(q).split())
        if q and q.lower() not in seen:
            seen.add(q.lower())
            out.append(q)
    return out[:limit]


def relevant_rows(retriever: Retriever, key: Any, row: Mapping[str, Any], source: str = "--ads") -> set[int]:
    """Corpus rows relevant to gold row ``row``: its ``relevant_ads`` ids, else the corpus's set of its keyword.
    ValueError naming the gold id and ``source`` (the corpus's flag) when there are none or an id is unknown."""
    if row.get("relevant_ads") is not None:
        ids = [str(a) for a in row["relevant_ads"]]
        unknown = [a for a in ids if a not in retriever.row]
        if unknown:
            raise ValueError(f"gold id {key!r}: relevant_ads id {unknown[0]!r} is not in the ad corpus ({source})")
        if ids:
            return {retriever.row[a] for a in ids}
    rel = retriever.relevant.get(str(row.get("keyword")))
    if not rel:
        raise ValueError(f"gold id {key!r}: keyword {row.get('keyword')!r} has no relevant ads in the ad corpus "
                         f"({source}); give relevant_ads (ad ids) in the gold row or a corpus that covers it")
    return set(rel)


def distinct_n(queries: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over ``queries`` (0 when there are none)."""
    grams = [tuple(w[i:i + n]) for w in (words(q) for q in queries) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def difficulty(query: str, keyword: str) -> float:
    """Share of the query's words absent from the keyword (what a keyword matcher cannot match)."""
    q, k = words(query), set(words(keyword))
    return sum(1 for w in q if w not in k) / len(q) if q else 0.0


def _queries(row: dict | None) -> list[str] | None:
    if row is None:
        return None
    qs = row.get("queries")
    if not isinstance(qs, list):
        return None
    qs = [q.strip() for q in qs if isinstance(q, str) and q.strip()]
    return qs or None


def evaluate_query_gen(gold, pred, embedder: Embedder | None = None, retriever: Retriever | None = None,
                       k: int = RECALL_K, max_queries: int = MAX_QUERIES, corpus_flag: str = "--ads") -> dict[str, Any]:
    """Relevance, Diversity, Difficulty, Distinct1/2 (fractions in [0, 1]) over the gold rows; with a
    ``retriever`` also ``recall_at_k`` ({keyword} ∪ queries), ``recall_at_k_keyword`` (keyword alone) and
    ``recall_at_k_gain`` at K = ``k`` (reported as ``recall_k``)."""
    emb = embedder or HashedTrigramEmbedder()
    ids = sorted(gold.rows)
    for key in ids:
        kw = gold.rows[key].get("keyword")
        if not isinstance(kw, str) or not kw.strip():
            raise ValueError(f"gold id {key!r}: keyword must be a non-empty string")
    per = {"Relevance": [], "Diversity": [], "Difficulty": [], "Distinct1": [], "Distinct2": []}
    recall: dict[str, list[float]] = {"recall_at_k": [], "recall_at_k_keyword": []}
    if retriever is not None:
        if k < 1:
            raise ValueError(f"recall k: expected >= 1, got {k}")
        rel = {key: relevant_rows(retriever, key, gold.rows[key], corpus_flag) for key in ids}
        for key in ids:
            kw = gold.rows[key]["keyword"].strip()
            base = retriever.recall([kw], rel[key], k)
            qs = _queries(pred.rows.get(key))
            added = [q for q in clean_queries(qs, max_queries) if q.lower() != kw.lower()] if qs else None
            recall["recall_at_k_keyword"].append(base)
            recall["recall_at_k"].append(0.0 if qs is None else
                                         retriever.recall([kw] + added, rel[key], k) if added else base)
    malformed, n_queries = 0, 0
    for key in ids:
        g = gold.rows[key]
        qs = _queries(pred.rows.get(key))
        if qs is None:
            malformed += 1
            for v in per.values():
                v.append(0.0)
            continue
        n_queries += len(qs)
        intent = g["keyword"] + (f" {g['ad']['title']}" if isinstance(g.get("ad"), dict) and g["ad"].get("title") else "")
        e = emb([intent] + qs)
        sims = e[1:] @ e[0]
        per["Relevance"].append(float(np.clip(sims, 0.0, 1.0).mean()))
        if len(qs) > 1:
            pair = e[1:] @ e[1:].T
            iu = np.triu_indices(len(qs), k=1)
            per["Diversity"].append(float(np.clip(1.0 - pair[iu], 0.0, 1.0).mean()))
        else:
            per["Diversity"].append(0.0)
        per["Difficulty"].append(sum(difficulty(q, g["keyword"]) for q in qs) / len(qs))
        per["Distinct1"].append(distinct_n(qs, 1))
        per["Distinct2"].append(distinct_n(qs, 2))
    out: dict[str, Any] = {m: (sum(v) / len(v) if v else math.nan) for m, v in per.items()}
    if retriever is not None:
        out.update({m: (sum(v) / len(v) if v else math.nan) for m, v in recall.items()})
        out["recall_at_k_gain"] = out["recall_at_k"] - out["recall_at_k_keyword"]
        out["recall_k"] = k
    out.update(n=len(ids), malformed=malformed, queries=n_queries, pred_line_errors=pred.errors,
               unmatched_predictions=sorted(set(pred.rows) - set(gold.rows)))
    return out
