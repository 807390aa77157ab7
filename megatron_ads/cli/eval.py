"""``megatron-ads eval --pred PRED.jsonl --gold GOLD.jsonl --task TASK [--json] [--embedder DIR]
[--ads ads.jsonl|synthetic] [--ads-seed S] [--recall-k K]``

query_gen also reports recall@K (AdNanny Eq. 8) with the frozen retriever the ``recall_at_k`` reward uses
(``rewards.retrieval``: all-MiniLM-L6-v2 + a faiss index), built here and handed to ``eval`` (which does not
import ``rewards``). Its ad corpus: ``--ads synthetic`` (default: ``data.synthetic.ad_corpus(--ads-seed)``,
the GRPO reward's corpus, relevant ads per keyword) or a JSONL file of ads ``{id, title, description,
keywords?}`` (``keywords``: the keywords the ad is relevant to); a gold row's ``relevant_ads`` (ad ids)
overrides the keyword's set. ``--recall-k 0`` skips recall@K.

ad_rewrite also reports the true CTR uplift of the rewrites over the original ads, for gold rows carrying
``truth`` (synthetic rows): the synthetic world's click probability ``data.synthetic.true_ctr``, handed to
``eval`` here.
"""

from __future__ import annotations

from pathlib import Path

from megatron_ads.cli import emit
from megatron_ads.data.tasks import task, with_metric
from megatron_ads.eval.metrics import evaluate, markdown, metric
from megatron_ads.eval.querygen import RECALL_K
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import iter_jsonl

SYNTHETIC = "synthetic"


def register(p) -> None:
    p.add_argument("--pred", required=True, help="predictions JSONL: {id, <the task's prediction fields>} per line")
    p.add_argument("--gold", required=True, help="gold JSONL: {id, <the task's gold fields>} per line")
    p.add_argument("--task", required=True, choices=with_metric(), help="task whose metric suite to compute")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--embedder", default=None,
                   help="query_gen: local Hugging Face model dir for relevance/diversity embeddings "
                        "(default: built-in hashed character-trigram embedder)")
    p.add_argument("--ads", default=SYNTHETIC,
                   help="query_gen recall@K: the ad corpus, a JSONL file of {id, title, description, keywords?} "
                        "or 'synthetic' (default: the GRPO reward's synthetic corpus)")
    p.add_argument("--ads-seed", type=int, default=0, help="--ads synthetic: the corpus seed (default: %(default)s)")
    p.add_argument("--recall-k", type=int, default=RECALL_K,
                   help="query_gen: K of recall@K (default: %(default)s, the reward's k); 0 skips recall@K")
    p.set_defaults(func=run)


def load_ads(path: str | Path) -> dict:
    """An ad corpus ``{"ads": [...], "relevant": {keyword: [ad id]}}`` from a JSONL file (``--ads``)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"--ads: {path}: no such file (expected a JSONL file of {{id, title, description}} "
                       f"or '{SYNTHETIC}')")
    ads, relevant = [], {}
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or "id" not in row or not (row.get("title") or row.get("description")):
            raise BadInput(f"--ads: {path} line {lineno}: expected {{id, title, description}}, got {row!r:.80}")
        ads.append({k: row[k] for k in ("id", "title", "description") if k in row})
        for kw in row.get("keywords") or []:
            relevant.setdefault(str(kw), []).append(str(row["id"]))
    if not ads:
        raise BadInput(f"--ads: {path}: no ads")
    return {"ads": ads, "relevant": relevant}


def build_retriever(ads: str, seed: int = 0):
    """The recall@K reward's frozen retriever (MiniLM + faiss flat index) over corpus ``ads`` (``--ads``)."""
    from megatron_ads.data.synthetic import ad_corpus
    from megatron_ads.rewards.retrieval import MiniLMEmbedder, Retriever

    corpus = ad_corpus(seed) if ads == SYNTHETIC else load_ads(ads)
    try:
        return Retriever(MiniLMEmbedder(), corpus)
    except ValueError as exc:
        raise BadInput(f"--ads {ads}: {exc}") from exc


def run(args) -> int:
    name = task(args.task).metric
    if args.recall_k < 0:
        raise BadInput(f"--recall-k: expected >= 0 (0 skips recall@K), got {args.recall_k}")
    retriever = None
    if metric(name).embedder and args.recall_k > 0:
        retriever = build_retriever(args.ads, args.ads_seed)
    ctr_fn = None
    if metric(name).ctr:
        from megatron_ads.data.synthetic import true_ctr
        ctr_fn = true_ctr
    r = evaluate(name, args.pred, args.gold, embedder=args.embedder, retriever=retriever,
                 k=max(args.recall_k, 1), corpus_flag=f"--ads {args.ads}", ctr_fn=ctr_fn)
    emit(r, args.json, lambda x: markdown(name, x))
    return 0
