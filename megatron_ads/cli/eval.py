"""``megatron-ads eval --pred PRED.jsonl --gold GOLD.jsonl --task query_ad|ad_user|query_gen [--json] [--embedder DIR]``"""

from __future__ import annotations


def register(p) -> None:
    p.add_argument("--pred", required=True)
    p.add_argument("--gold", required=True)
    p.add_argument("--task", required=True, choices=("query_ad", "ad_user", "query_gen"))
    p.add_argument("--json", action="store_true")
    p.add_argument("--embedder", default=None,
                   help="query_gen: local Hugging Face model dir for relevance/diversity embeddings "
                        "(default: built-in hashed character-trigram embedder)")
    p.set_defaults(func=run)


def run(args) -> int:
    from megatron_ads.cli import emit
    from megatron_ads.eval.metrics import evaluate, markdown

    r = evaluate(args.task, args.pred, args.gold, embedder=args.embedder)
    emit(r, args.json, lambda x: markdown(args.task, x))
    return 0
