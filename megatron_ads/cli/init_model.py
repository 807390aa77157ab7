"""``megatron-ads init-model --flavor NAME --out DIR [--seed S] [--fp8] [--dtype bf16|fp32] [--json]``"""

from __future__ import annotations

from megatron_ads.checkpoint.hf_init import write_random_checkpoint
from megatron_ads.cli import emit
from megatron_ads.config.flavors import FLAVORS, flavor_dict
from megatron_ads.data.tokenizer import train_bpe_tokenizer


def register(p) -> None:
    p.add_argument("--flavor", required=True, choices=sorted(FLAVORS), help="named model flavor")
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default: %(default)s)")
    p.add_argument("--fp8", action="store_true", help="write DeepSeek FP8 weights with weight_scale_inv")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="dtype of the non-FP8 tensors")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = flavor_dict(args.flavor)
    if cfg["vocab_size"] * cfg["hidden_size"] * cfg["num_hidden_layers"] > 5e9:
        raise ValueError(f"flavor {args.flavor}: too large to initialize on this machine; use a tiny_* flavor")
    result = write_random_checkpoint(cfg, args.out, seed=args.seed, fp8=args.fp8, dtype=args.dtype,
                                     tokenizer=train_bpe_tokenizer(cfg["vocab_size"]))
    result["flavor"] = args.flavor
    emit(result, args.json, lambda r: (f"wrote {r['path']}: {r['model_type']} flavor {r['flavor']}, "
                                       f"{r['parameters']:,} parameters, dtype {r['dtype']}, "
                                       f"{r['fp8_weights']} FP8 weights"))
    return 0
