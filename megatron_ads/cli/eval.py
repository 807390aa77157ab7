"""``megatron-ads eval --pred PRED.jsonl --gold GOLD.jsonl --task TASK [--json] [--embedder DIR]``"""

from __future__ import annotations

from megatron_ads.cli import emit
from megatron_ads.data.tasks import task, with_metric
from megatron_ads.eval.metrics import evaluate, markdown


def register(p) -> None:
    p.add_argument("--pred", required=True, help="predictions JSONL: {id, <the task's prediction fields>} per line")
    p.add_argument("--gold", required=True, help="gold JSONL: {id, <the task's gold fields>} per line")
    p.add_argument("--task", required=True, choices=with_metric(), help="task whose metric suite to compute")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--embedder", default=None,
                   help="query_gen: local Hugging Face model dir for relevance/diversity embeddings "
                        "(default: built-in hashed character-trigram embedder)")
    p.set_defaults(func=run)


def run(args) -> int:
    name = task(args.task).metric
    r = evaluate(name, args.pred, args.gold, embedder=args.embedder)
    emit(r, args.json, lambda x: markdown(name, x))
    return 0
