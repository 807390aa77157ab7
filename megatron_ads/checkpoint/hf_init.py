"""Random-weight HF checkpoints of a named flavor (real architecture), optionally in DeepSeek FP8 format."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from megatron_ads.checkpoint.hf_io import INDEX, QUANT_CONFIG, FP8BlockScale, is_fp8_weight
from megatron_ads.runtime.io import atomic_path, write_text

__all__ = ["add_mtp_layers", "build_random_hf_model", "is_fp8_weight", "quantize_checkpoint_fp8",
           "write_random_checkpoint"]


def build_random_hf_model(hf_config: dict[str, Any], seed: int, dtype: torch.dtype):
    """A transformers model of ``hf_config`` with seeded random weights (expert bias randomized too).
    MTP layers are not part of it (transformers does not model them; see ``add_mtp_layers``)."""
    import transformers  # heavy (~5 s); only init-model and tests build HF models

    torch.manual_seed(seed)
    if hf_config.get("model_type") == "deepseek_v3":
        hf_config = dict(hf_config, num_nextn_predict_layers=0)
    config = transformers.AutoConfig.for_model(**hf_config)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.05)
    return model.to(dtype)


def add_mtp_layers(directory: Path, hf_config: dict[str, Any], seed: int, dtype: torch.dtype) -> int:
    """Append DeepSeek MTP layers (HF layer index num_hidden_layers + m) to a checkpoint transformers wrote.

    transformers does not model MTP, so the layer body comes from a model built with the extra
    layers (same architecture), and the MTP-only tensors are added as DeepSeek names them:
    enorm, hnorm, eh_proj, shared_head.norm, plus copies of the shared embedding and head.
    Returns the number of tensors added.
    """
    n_mtp = int(hf_config.get("num_nextn_predict_layers") or hf_config.get("num_mtp_layers") or 0)
    if n_mtp == 0:
        return 0
    n_layers, h = hf_config["num_hidden_layers"], hf_config["hidden_size"]
    bigger = dict(hf_config, num_hidden_layers=n_layers + n_mtp, num_nextn_predict_layers=0)
    with tempfile.TemporaryDirectory(prefix="megatron_ads_mtp_") as tmp:
        build_random_hf_model(bigger, seed + 7, dtype).save_pretrained(tmp)
        extra = {}
        for f in Path(tmp).glob("*.safetensors"):
            for k, v in load_file(str(f)).items():
                if k.startswith("model.layers.") and int(k.split(".")[2]) >= n_layers:
                    extra[k] = v
    path = directory / "model.safetensors"
    if not path.is_file():
        raise ValueError(f"{directory}: MTP synthesis expects a single-file checkpoint")
    tensors = load_file(str(path))
    g = torch.Generator().manual_seed(seed + 11)
    for m in range(n_mtp):
        p = f"model.layers.{n_layers + m}."
        extra[p + "enorm.weight"] = torch.ones(h, dtype=dtype)
        extra[p + "hnorm.weight"] = torch.ones(h, dtype=dtype)
        extra[p + "eh_proj.weight"] = (torch.randn(h, 2 * h, generator=g) * 0.02).to(dtype)
        extra[p + "shared_head.norm.weight"] = torch.ones(h, dtype=dtype)
        extra[p + "embed_tokens.weight"] = tensors["model.embed_tokens.weight"].clone()
        extra[p + "shared_head.head.weight"] = tensors["lm_head.weight"].clone()
    tensors.update(extra)
    with atomic_path(path) as tmp_path:
        save_file(tensors, str(tmp_path), metadata={"format": "pt"})
    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_nextn_predict_layers"] = n_mtp
    write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return len(extra)


def quantize_checkpoint_fp8(directory: Path) -> int:
    """Rewrite every FP8-eligible weight of an HF checkpoint as E4M3 + ``weight_scale_inv`` (in place,
    file by file through temp names), and add ``quantization_config`` to config.json. Returns the count."""
    index_path = directory / INDEX
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        files = sorted(set(index["weight_map"].values()))
    else:
        files, index = ["model.safetensors"], {"metadata": {}, "weight_map": {}}
    n = 0
    for fname in files:
        path = directory / fname
        tensors = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if FP8BlockScale.applies(key):
                    tensors.update(FP8BlockScale.quantize(key, t))
                    n += 1
                else:
                    tensors[key] = t
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        for key in tensors:
            index["weight_map"][key] = fname
    if index_path.is_file() or len(files) > 1:
        write_text(index_path, json.dumps(index, indent=2, sort_keys=True))
    cfg_path = directory / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"] = QUANT_CONFIG
    write_text(cfg_path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return n


def write_random_checkpoint(hf_config: dict[str, Any], out: str | Path, seed: int = 0, fp8: bool = False,
                            dtype: str = "bf16", tokenizer=None) -> dict[str, Any]:
    """Write a random-weight HF checkpoint (safetensors + config.json [+ tokenizer]) to ``out``.

    Written under ``out.tmp`` and renamed at the end, so ``out`` never looks complete while partial.
    Returns a summary (path, tensors, parameters, fp8 weights).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; choose a new --out")
    torch_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    with atomic_path(out) as tmp:
        model = build_random_hf_model(hf_config, seed, torch_dtype)
        model.save_pretrained(str(tmp))
        n_params = sum(p.numel() for p in model.parameters())
        del model
        add_mtp_layers(tmp, hf_config, seed, torch_dtype)
        n_fp8 = quantize_checkpoint_fp8(tmp) if fp8 else 0
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if out.exists():
            out.rmdir()  # an empty directory the caller made

    return {"path": str(out), "model_type": hf_config["model_type"], "parameters": n_params, "fp8_weights": n_fp8,
            "dtype": dtype, "seed": seed}
