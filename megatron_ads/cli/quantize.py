"""``megatron-ads quantize --model HF_DIR --task TASK --calib rows.jsonl [--n 64] --out DIR [--format fp8]
[--dtype bf16|fp32] [--max-len L] [--compare K] [--json]``

Per-tensor FP8 post-training quantization with nvidia-modelopt (``infer.ptq``): calibrates on the task's
prompts of the first N calibration rows and writes modelopt's HF export (FP8 weights + ``weight_scale`` /
``input_scale``, ``quantization_config`` with ``quant_method: modelopt``) for vLLM / TensorRT-LLM, with
``ptq_report.json`` beside it. Needs the ``quant`` extra: ``pip install 'megatron-ads[quant]'``.

Exit codes: 0 exported; 2 bad input (flags, calibration rows, checkpoint, existing output, modelopt missing).
"""

from __future__ import annotations

from megatron_ads.cli import emit
from megatron_ads.data.tasks import TASKS
from megatron_ads.infer.ptq import DTYPES, FORMATS, PTQConfig, quantize


def register(p) -> None:
    p.add_argument("--model", required=True,
                   help="HF checkpoint directory (BF16/FP32, or DeepSeek block-FP8: dequantized before calibration)")
    p.add_argument("--task", required=True, choices=sorted(TASKS), help="task whose prompts calibrate the scales")
    p.add_argument("--calib", required=True, metavar="ROWS.jsonl",
                   help="the task's rows (e.g. from `megatron-ads data synth`); the first --n calibrate")
    p.add_argument("--n", type=int, default=64, help="calibration rows (default: %(default)s)")
    p.add_argument("--out", required=True, help="export directory (must not exist; written atomically)")
    p.add_argument("--format", choices=FORMATS, default="fp8",
                   help="fp8: per-tensor E4M3 weights + static per-tensor input scales (default: %(default)s)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="load/compute dtype; unquantized tensors (embeddings, lm_head, norms, router) are exported "
                        "in it (default: %(default)s)")
    p.add_argument("--max-len", type=int, default=1024, help="prompt tokens kept per row (default: %(default)s)")
    p.add_argument("--compare", type=int, default=4,
                   help="calibration prompts on which fake-quant logits are compared with the original "
                        "(default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def _human(r: dict) -> str:
    lg, a = r["logits"], r["amax"]
    lines = [f"quantized {r['quantized_modules']} modules of {r['model']} ({r['source']}) to per-tensor FP8 "
             f"on {r['calibration_rows']} {r['task']} rows ({r['calibration_tokens']} tokens) -> {r['out']}"]
    for kind in ("weight", "input"):
        s = a[kind]
        if s["quantizers"]:
            lines.append(f"  {kind} amax over {s['quantizers']} quantizers: min {s['amax_min']:.4g}, "
                         f"median {s['amax_median']:.4g}, max {s['amax_max']:.4g} ({s['largest'][0]['name']})")
    if lg["prompts"]:
        lines.append(f"  fake-quant vs original logits on {lg['prompts']} prompts ({lg['tokens']} positions): "
                     f"max |diff| {lg['max_abs_diff']:.4g} (|logit| up to {lg['ref_max_abs_logit']:.4g}), "
                     f"rel L2 {lg['max_rel_l2']:.4g}, argmax agreement {lg['argmax_agreement']:.3f}")
    if r.get("exclude_modules"):
        lines.append(f"  left unquantized: {', '.join(r['exclude_modules'])}")
    return "\n".join(lines)


def run(args) -> int:
    cfg = PTQConfig(model=args.model, task=args.task, calib=args.calib, out=args.out, n=args.n, format=args.format,
                    dtype=args.dtype, max_len=args.max_len, compare=args.compare)
    emit(quantize(cfg), args.json, _human)
    return 0
