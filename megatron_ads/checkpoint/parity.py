"""Forward-prop parity: Hugging Face transformers (reference) vs our megatron-core model, same weights.

Every rank builds its model chunk for the layout, loads the HF checkpoint through the mapping
registry, and runs one fixed batch through the pipeline (stages pass hidden states point to
point); the last stage gathers the TP-split logits. Every rank also runs the HF reference on the
same batch, so each stage can diff its own layers' hidden states. Rank 0 returns the report.

Shapes: B batch, S sequence, H hidden, V vocab.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from megatron_ads.checkpoint.hf_io import HFCheckpoint, write_dequantized_copy
from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk, load_mcore_into_chunk
from megatron_ads.checkpoint.megatron_io import MegatronAsHF
from megatron_ads.checkpoint.mtp import resolve_mtp
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.groups import init_model_parallel
from megatron_ads.layout.pipeline import stage_layers
from megatron_ads.model.build import DTYPES, build_model_chunk
from megatron_ads.model.specs import use_te_default
from megatron_ads.runtime.dist import init_distributed
from megatron_ads.runtime.io import atomic_path
from megatron_ads.runtime.seed import seed_all

DEFAULT_ATOL = {"fp32": 1e-5, "bf16": 0.5}


def parity_batch(vocab_size: int, batch: int, seq: int, seed: int) -> torch.Tensor:
    """The fixed token batch [B, S] every rank uses."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq), generator=g)


def hf_reference(hf_dir: str | Path, ids_BS: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """transformers logits [B, S, V] (fp32) and per-layer hidden states (outputs of each layer).

    For an FP8 checkpoint the reference loads a copy dequantized with DeepSeek's formula
    (kernels/fp8.py): transformers' own CPU dequantization rounds differently (up to 1 bf16 ulp),
    and parity is about the model, not about two dequantizers.
    """
    import transformers  # heavy (~5 s); only the reference side needs it

    src = HFCheckpoint(hf_dir)
    tmpdir = None
    if any(src.is_fp8(k) for k in src.keys()):
        tmpdir = tempfile.TemporaryDirectory(prefix="megatron_ads_ref_")
        hf_dir = write_dequantized_copy(src, Path(tmpdir.name) / "bf16")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    if tmpdir is not None:
        tmpdir.cleanup()
    model.float().to(device).eval()  # FP8 checkpoints dequantize to bf16 on load
    with torch.no_grad():
        out = model(ids_BS.to(device), output_hidden_states=True)
    hidden = list(out.hidden_states[1:])
    return out.logits.float(), hidden


def _pipeline_forward(model, ids_BS, cfg: ModelConfig, dtype: torch.dtype, device: torch.device):
    b, s = ids_BS.shape
    ids = ids_BS.to(device)
    pos = torch.arange(s, device=device).unsqueeze(0).expand(b, -1)
    if not ps.is_pipeline_first_stage():
        recv = torch.empty(s, b, cfg.hidden_size, dtype=dtype, device=device)
        dist.recv(recv, src=ps.get_pipeline_model_parallel_prev_rank())
        model.set_input_tensor(recv)
    # MTP heads need labels and return losses; parity compares the main model's logits only
    saved = model.mtp_process, model.config.mtp_num_layers
    model.mtp_process, model.config.mtp_num_layers = False, None
    try:
        out = model(ids, pos, None)
    finally:
        model.mtp_process, model.config.mtp_num_layers = saved
    if not ps.is_pipeline_last_stage():
        dist.send(out.contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
        return None
    return gather_from_tensor_model_parallel_region(out)


def run_parity_rank(hf_dir: str, tp: int = 1, pp: int = 1, ep: int = 1, dtype: str = "fp32", mcore_dir: str | None = None,
                    stage_layer_counts: list[int] | None = None, batch: int = 2, seq: int = 16, seed: int = 1234,
                    dump_logits: str | None = None, timeout_s: float = 300.0, mtp: str = "auto") -> dict | None:
    """Run parity on this rank (inside torchrun or a spawned worker). Rank 0 returns the report.

    ``mtp`` (require | auto | drop) is applied against the checkpoint our model loads (``mcore_dir``
    when given, else ``hf_dir``); MTP layers never enter the compared logits."""
    platform, env = init_distributed(timeout_s=timeout_s)
    par = ParallelConfig(tp=tp, pp=pp, ep=ep, stage_layers=stage_layer_counts)
    dp = init_model_parallel(par)
    seed_all(seed)
    device = platform.device
    source = HFCheckpoint(hf_dir) if mcore_dir is None else MegatronAsHF(mcore_dir)
    cfg, mtp_reason = resolve_mtp(ModelConfig.from_hf(hf_dir), source, mtp, warn=env.rank == 0)
    torch_dtype = DTYPES[dtype]
    model = build_model_chunk(cfg, par, dtype=dtype, device=platform.name, use_te=use_te_default(platform.name))
    coord = current_coord()
    if mcore_dir is None:
        n_loaded = load_hf_into_chunk(model, source, cfg, par, coord)
    else:
        n_loaded = load_mcore_into_chunk(model, mcore_dir, par, coord)  # any layout, legacy or torch_dist
    model.eval()

    ids = parity_batch(cfg.vocab_size, batch, seq, seed)
    ref_logits, ref_hidden = hf_reference(hf_dir, ids, device)

    layers = stage_layers(cfg.num_layers, par)[coord.pp_rank]
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for local, layer in enumerate(model.decoder.layers):
        def hook(_mod, _inp, output, g=layers[local]):
            hidden = output[0] if isinstance(output, tuple) else output
            captured[g] = hidden.detach().float().transpose(0, 1)  # [S,B,H] -> [B,S,H]
        hooks.append(layer.register_forward_hook(hook))
    with torch.no_grad():
        logits = _pipeline_forward(model, ids, cfg, torch_dtype, device)
    for h in hooks:
        h.remove()

    # the last HF hidden state is taken after the final norm; compare every other layer's output
    per_layer = []
    for g, ours in sorted(captured.items()):
        if g == cfg.num_layers - 1:
            continue
        diff = (ours - ref_hidden[g].float()).abs()
        per_layer.append({"layer": g, "stage": coord.pp_rank, "max_abs_diff": diff.max().item(),
                          "mean_abs_diff": diff.mean().item()})
    local = {"rank": env.rank, "coord": [coord.pp_rank, coord.tp_rank, coord.ep_rank], "per_layer": per_layer,
             "tensors_loaded": n_loaded}
    if logits is not None:
        logits = logits.float()
        diff = (logits - ref_logits).abs()
        local.update(max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item(),
                     argmax_agreement=(logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
                     max_abs_logit=ref_logits.abs().max().item())
        if dump_logits and env.rank == dist.get_world_size() - 1:  # pp is megatron's slowest dim
            with atomic_path(dump_logits) as tmp:
                torch.save(logits.cpu(), tmp)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    if env.rank != 0:
        return None
    final = next(r for r in gathered if "max_abs_diff" in r)
    seen: dict[int, dict] = {}
    for r in gathered:
        for row in r["per_layer"]:
            if row["layer"] not in seen or row["max_abs_diff"] > seen[row["layer"]]["max_abs_diff"]:
                seen[row["layer"]] = row
    return {
        "hf": str(hf_dir), "mcore": mcore_dir, "model_type": cfg.model_type, "dtype": dtype, "platform": platform.name,
        "tp": tp, "pp": pp, "ep": ep, "dp": dp, "world_size": dist.get_world_size(),
        "stage_layers": stage_layers(cfg.num_layers, par),
        "batch": batch, "seq": seq, "mtp_layers": cfg.num_mtp_layers, "mtp_reason": mtp_reason,
        "max_abs_diff": max(r["max_abs_diff"] for r in gathered if "max_abs_diff" in r),
        "mean_abs_diff": final["mean_abs_diff"], "argmax_agreement": final["argmax_agreement"],
        "max_abs_logit": final["max_abs_logit"],
        "per_layer": [seen[k] for k in sorted(seen)],
        "tensors_loaded_per_rank": [r["tensors_loaded"] for r in gathered],
    }


def default_nproc(tp: int, pp: int, ep: int) -> int:
    """Smallest world for (tp, pp, ep): ep must divide tp * dp."""
    return pp * math.lcm(tp, ep)
