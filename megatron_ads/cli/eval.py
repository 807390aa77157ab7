"""``megatron-ads eval --pred PRED.jsonl --gold GOLD.jsonl --task query_ad|ad_user [--json]``"""

from __future__ import annotations


def register(p) -> None:
    p.add_argument("--pred", required=True)
    p.add_argument("--gold", required=True)
    p.add_argument("--task", required=True, choices=("query_ad", "ad_user"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from megatron_ads.cli import emit
    from megatron_ads.eval.metrics import evaluate, markdown

    r = evaluate(args.task, args.pred, args.gold)
    emit(r, args.json, lambda x: markdown(args.task, x))
    return 0
