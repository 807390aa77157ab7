"""Per-tensor FP8 post-training quantization with nvidia-modelopt, calibrated on a task's prompts.

How it works: the HF checkpoint is loaded with transformers (BF16 or FP32; a DeepSeek block-FP8
checkpoint is first written as a dequantized copy, ``checkpoint.hf_io.write_dequantized_copy``, and
loaded from there; ``trust_remote_code`` is never set). modelopt's ``mtq.quantize(model,
mtq.FP8_DEFAULT_CFG, forward_loop)`` inserts fake quantizers (E4M3, one scale per tensor for each linear
weight and each linear's input) and calibrates their amax with a max calibrator while ``forward_loop`` runs
the task's prompts (``data.tasks.task(name).prompt(row)``) of the calibration rows, tokenized with the
checkpoint's tokenizer. The fake-quant model is compared with the original on a few of those prompts
(logits max |diff|, relative L2 error, next-token argmax agreement), then modelopt's HF export
(``modelopt.torch.export.export_hf_checkpoint``) writes FP8 weights with ``weight_scale`` / ``input_scale``
and the ``quantization_config`` (``quant_method: modelopt``) vLLM and TensorRT-LLM read, into ``OUT.tmp``,
renamed to ``OUT`` last. Embeddings, ``lm_head`` and the MoE router stay unquantized (modelopt's defaults).

modelopt is optional (the ``quant`` extra): without it ``quantize`` raises ``BadInput`` naming the install
command.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from megatron_ads._compat import require
from megatron_ads.checkpoint.hf_io import HFCheckpoint, write_dequantized_copy
from megatron_ads.checkpoint.tokenizer_dir import TOKENIZER_FILES
from megatron_ads.data.tasks import task, validate_row
from megatron_ads.runtime.errors import BadInput
from megatron_ads.runtime.io import atomic_path, iter_jsonl, write_json
from megatron_ads.runtime.log import get_logger

log = get_logger(__name__)

FORMATS = ("fp8",)
"""Export formats: ``fp8`` = per-tensor E4M3 weights and static per-tensor input scales (modelopt FP8)."""
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
"""Load / compute dtypes (unquantized tensors are exported in this dtype)."""
REPORT_FILE = "ptq_report.json"
"""The report written beside the export."""


@dataclass(kw_only=True, slots=True)
class PTQConfig:
    """Settings of one ``megatron-ads quantize`` run."""

    model: str
    """HF checkpoint directory (BF16/FP32 safetensors, or DeepSeek block-FP8: dequantized first)."""
    task: str
    """Task whose prompt template turns the calibration rows into text (``data.tasks``)."""
    calib: str
    """JSONL of the task's rows; the first ``n`` are the calibration set."""
    out: str
    """Export directory (must not exist; written to ``OUT.tmp`` and renamed last)."""
    n: int = 64
    """Calibration rows used (fewer if the file has fewer)."""
    format: str = "fp8"
    """Export format, one of ``FORMATS``."""
    dtype: str = "bf16"
    """Load / compute dtype, one of ``DTYPES``; unquantized tensors are exported in it."""
    max_len: int = 1024
    """Prompt tokens kept per calibration row (longer prompts are truncated)."""
    compare: int = 4
    """Calibration prompts on which the fake-quant logits are compared with the original (0: none)."""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n: expected a positive number of calibration rows, got {self.n}")
        if self.format not in FORMATS:
            raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_len < 1:
            raise ValueError(f"max_len: expected a positive token count, got {self.max_len}")
        if self.compare < 0:
            raise ValueError(f"compare: expected a count >= 0, got {self.compare}")


def modelopt_modules() -> tuple[Any, Callable]:
    """``(modelopt.torch.quantization, export_hf_checkpoint)``, or ``BadInput`` with the install command."""
    try:
        require("modelopt")
        import modelopt.torch.quantization as mtq
        from modelopt.torch.export import export_hf_checkpoint
    except ImportError as exc:
        cause = "" if "is required" in str(exc) else f" (import failed: {exc})"
        raise BadInput(f"quantize needs nvidia-modelopt: pip install 'megatron-ads[quant]'{cause}") from exc
    return mtq, export_hf_checkpoint


def calibration_prompts(path: str | Path, task_name: str, n: int) -> list[str]:
    """The task prompts of the first ``n`` rows of ``path`` (rows are checked against the task's inputs)."""
    spec = task(task_name)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--calib {p}: no such file")
    prompts, problems = [], []
    for lineno, row in iter_jsonl(p):
        bad = validate_row(spec, row, with_targets=False)
        problems += [f"{p}:{lineno}: {b}" for b in bad]
        if not bad:
            prompts.append(spec.prompt(row))
        if len(prompts) + len(problems) >= n:
            break
    if problems:
        raise BadInput(f"{len(problems)} calibration row(s) do not fit task {task_name!r}:\n" + "\n".join(problems[:20]))
    if not prompts:
        raise BadInput(f"--calib {p}: no rows")
    return prompts


def source_kind(model_dir: str | Path) -> str:
    """``"fp8"`` for a DeepSeek block-FP8 checkpoint (``*_scale_inv`` tensors), ``"dense"`` for BF16/FP32;
    ``BadInput`` for any other quantized checkpoint (its ``quantization_config`` is named)."""
    ckpt = HFCheckpoint(model_dir)
    fp8 = any(k.endswith("_scale_inv") for k in ckpt.weight_map)
    qc = ckpt.config().get("quantization_config")
    if qc is not None and not fp8:
        raise BadInput(f"{ckpt.dir / 'config.json'}: quantization_config {qc.get('quant_method', qc)!r} found; "
                       "expected a BF16/FP32 checkpoint or DeepSeek block-FP8 (weight_scale_inv)")
    return "fp8" if fp8 else "dense"


def load_hf(model_dir: str | Path, dtype: torch.dtype, workdir: Path) -> tuple[torch.nn.Module, Any, str]:
    """``(model, tokenizer, source)``: the transformers model in ``dtype`` (eval mode) and its tokenizer;
    a DeepSeek block-FP8 checkpoint is dequantized into ``workdir`` first (``source == "fp8"``)."""
    import transformers

    src = Path(model_dir)
    kind = source_kind(src)
    load_dir = src
    if kind == "fp8":
        load_dir = write_dequantized_copy(HFCheckpoint(src, dequant_dtype=dtype), workdir / "dequantized")
        log.info("dequantized the block-FP8 checkpoint %s to %s for calibration", src, str(dtype).split(".")[-1])
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{src}: no tokenizer transformers can load ({exc})") from exc
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(load_dir), dtype=dtype,
                                                                  trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise BadInput(f"{src / 'config.json'}: transformers cannot load this checkpoint ({exc})") from exc
    return model.eval(), tok, kind


def _quantizer_stats(model: torch.nn.Module, quantizer_cls: type) -> dict:
    """Enabled quantizers and amax statistics, by kind (weight / input)."""
    kinds: dict[str, list[tuple[str, float]]] = {"weight": [], "input": []}
    modules = set()
    for name, q in model.named_modules():
        if not isinstance(q, quantizer_cls) or not q.is_enabled or getattr(q, "amax", None) is None:
            continue
        parent, leaf = name.rsplit(".", 1)
        fused = leaf.isdigit()  # fused MoE experts: <experts>.<proj>_weight_quantizers.<expert>
        if leaf.endswith("weight_quantizer") or (fused and parent.endswith("_weight_quantizers")):
            kind = "weight"
        elif leaf.endswith("input_quantizer"):
            kind = "input"
        else:
            continue
        kinds[kind].append((name, float(q.amax.float().max())))
        if kind == "weight" and fused:
            experts, proj = parent.rsplit(".", 1)
            modules.add(f"{experts}.{leaf}.{proj.removesuffix('_weight_quantizers')}")
        elif kind == "weight":
            modules.add(parent)
    stats = {}
    for kind, items in kinds.items():
        values = [v for _, v in items]
        stats[kind] = {"quantizers": len(items)} | ({
            "amax_min": min(values), "amax_median": statistics.median(values), "amax_max": max(values),
            "largest": [{"name": n, "amax": v} for n, v in sorted(items, key=lambda t: -t[1])[:5]]} if values else {})
    return {"quantized_modules": len(modules), "amax": stats}


def _compare(ref: list[torch.Tensor], new: list[torch.Tensor]) -> dict:
    """Fake-quant vs original logits over the compared prompts (all positions)."""
    if not ref:
        return {"prompts": 0}
    diffs = [(a.float() - b.float()) for a, b in zip(ref, new)]
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref, new))
    tokens = sum(a.shape[0] for a in ref)
    return {"prompts": len(ref), "tokens": tokens,
            "max_abs_diff": max(float(d.abs().max()) for d in diffs),
            "mean_abs_diff": sum(float(d.abs().sum()) for d in diffs) / sum(d.numel() for d in diffs),
            "max_rel_l2": max(float(d.norm() / a.float().norm().clamp_min(1e-12)) for d, a in zip(diffs, ref)),
            "ref_max_abs_logit": max(float(a.abs().max()) for a in ref),
            "argmax_agreement": agree / tokens}


@contextlib.contextmanager
def _captured_stdout(tag: str):
    """modelopt prints its progress to stdout (which carries ``--json``): keep it, as debug log lines."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield
    for line in buf.getvalue().splitlines():
        if line.strip():
            log.debug("%s: %s", tag, line.replace("\x1b[1m", "").replace("\x1b[0m", ""))


def quantize(cfg: PTQConfig) -> dict:
    """Calibrate, compare and export (see the module docstring). Returns the report (also written to
    ``OUT/ptq_report.json``)."""
    mtq, export_hf_checkpoint = modelopt_modules()
    out = Path(cfg.out)
    if out.exists():
        raise FileExistsError(f"--out {out}: exists; choose a new directory")
    prompts = calibration_prompts(cfg.calib, cfg.task, cfg.n)
    dtype = DTYPES[cfg.dtype]
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ptq-", dir=out.parent) as work:
        model, tok, source = load_hf(cfg.model, dtype, Path(work))
        device = next(model.parameters()).device
        batches = [tok(p, return_tensors="pt", truncation=True, max_length=cfg.max_len).input_ids.to(device)
                   for p in prompts]
        compared = batches[:cfg.compare]
        with torch.no_grad():
            ref = [model(ids).logits[0].cpu() for ids in compared]

        def forward_loop(m: torch.nn.Module) -> None:
            with torch.no_grad():
                for ids in batches:
                    m(ids)

        t1 = time.perf_counter()
        with _captured_stdout("modelopt"):
            model = mtq.quantize(model, mtq.FP8_DEFAULT_CFG, forward_loop)
        calib_s = time.perf_counter() - t1
        with torch.no_grad():
            new = [model(ids).logits[0].cpu() for ids in compared]
        from modelopt.torch.quantization.nn import TensorQuantizer

        report = {"model": str(cfg.model), "source": source, "task": cfg.task, "calib": str(cfg.calib),
                  "calibration_rows": len(prompts), "calibration_tokens": sum(int(b.numel()) for b in batches),
                  "format": cfg.format, "dtype": cfg.dtype, "out": str(out),
                  **_quantizer_stats(model, TensorQuantizer), "logits": _compare(ref, new),
                  "calibration_s": round(calib_s, 3), "settings": asdict(cfg)}
        with atomic_path(out) as tmp, _captured_stdout("modelopt export"):
            export_hf_checkpoint(model, dtype=dtype, export_dir=str(tmp))
            for name in TOKENIZER_FILES:
                if (Path(cfg.model) / name).is_file() and not (tmp / name).exists():
                    shutil.copy2(Path(cfg.model) / name, tmp / name)
            qcfg = tmp / "hf_quant_config.json"
            if qcfg.is_file():
                report["exclude_modules"] = json.loads(qcfg.read_text()).get("quantization", {}).get("exclude_modules")
            report["seconds"] = round(time.perf_counter() - t0, 3)
            write_json(tmp / REPORT_FILE, report)
    log.debug("ptq report: %s", json.dumps(report, sort_keys=True))
    return report
