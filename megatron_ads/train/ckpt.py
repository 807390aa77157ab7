"""Training checkpoints on megatron-core ``dist_checkpointing`` (torch_dist): reshardable on resume.

Layout::

    OUT/checkpoints/
        latest                       "step_0000020"  (pointer, moved last)
        step_0000020/                a torch_dist checkpoint Megatron-LM / Megatron-Bridge can read
            .metadata  __R_N.distcp  model + optimizer tensors as *global* tensors (any layout loads them)
            common.pt                scheduler, trainer state (step, data position, NaN count), SFT task weights
            metadata.json            megatron's backend record, written last by dist_checkpointing.save
            rank_state/rank_R.pt     per-rank state: RNG, SFT per-sample perplexities
            hf_config.json           the model's config.json (what `convert mcore-to-hf` builds the export from)
            layout.json              the layout that saved it (tp/pp/ep, stages, world size, format)
            config.yaml              resolved job config
            tokenizer/               the initial checkpoint's tokenizer, when it had one

A save writes ``step_N.tmp/`` on every rank and rank 0 renames it to ``step_N/`` once every rank is
done and the extra files are in place, then moves ``latest`` and prunes (keep-last-N): a directory
named ``step_N`` is complete. Optimizer state is saved in the canonical per-parameter form (Adam
moments keyed by the parameter's global name; the distributed optimizer in its ``fully_reshardable``
format), so a run saved at one (pp, ep, dp) resumes at another; RNG states are restored only when
the layout is the same (otherwise every rank is re-seeded and a note says so).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from megatron_ads.checkpoint.dist_io import (HF_CONFIG, LATEST, complete_checkpoints, find_latest,  # noqa: F401
                                             is_torch_dist, resolve_dir)
from megatron_ads.checkpoint.tokenizer_dir import find_tokenizer_dir, tokenizer_files as files_in
from megatron_ads.checkpoint.hf_io import CheckpointError
from megatron_ads.runtime.io import atomic_path, write_text

LAYOUT = "layout.json"
RANK_STATE = "rank_state"
OPTIM_METADATA = {"distrib_optim_sharding_type": "fully_reshardable", "chained_optim_avoid_prefix": True}
"""How optimizer state is laid out on disk: per parameter, by global name (reshardable)."""


def step_dirname(step: int) -> str:
    return f"step_{step:07d}"


def rng_state() -> dict[str, Any]:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker  # heavy: megatron-core at use

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "tracker": get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker  # heavy: megatron-core at use

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def sharded_state(model_chunk, optimizer, is_loading: bool = False) -> dict[str, Any]:
    """The model + optimizer sharded state dict of this rank, in the reshardable on-disk form.

    megatron keeps the Adam step count in each chained optimizer's *common* state (``common_step``, or
    the distributed optimizer's param-group ``step``), which only rank 0 saves; a dense-only first
    stage's expert optimizer owns no parameters and so has no count, and ranks with experts would then
    load none. Every chained optimizer on every rank gets the same count (they step together)."""
    for opt in _chain(optimizer):
        if _is_distributed(opt):
            _patch_distributed(opt)
    model_sd = model_chunk.sharded_state_dict()
    optim_sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=dict(OPTIM_METADATA))
    if not is_loading:
        parts = list(optim_sd.values()) if _is_chained(optim_sd) else [optim_sd]
        steps = [p["state"]["common_step"] for p in parts if "common_step" in p.get("state", {})]
        steps += [g["step"] for p in parts for g in p.get("optimizer", {}).get("param_groups", [])
                  if g.get("step") is not None]
        if steps:
            step = max(steps)  # an optimizer without parameter state reports 0
            for p in parts:
                if "state" in p:
                    p["state"]["common_step"] = step
                for g in p.get("optimizer", {}).get("param_groups", []):
                    g["step"] = step
    return {"model": model_sd, "optimizer": optim_sd}


def _chain(optimizer) -> list:
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def untie_steps(optimizer) -> None:
    """After ``load_state_dict``: give every parameter its own Adam step tensor. megatron-core 0.16.1's
    distributed optimizer (torch Adam) restores one tensor shared by all parameters, which torch's Adam
    then increments in place once per parameter: the count (and the bias correction) runs away."""
    for opt in _chain(optimizer):
        inner = getattr(opt, "optimizer", None)
        for state in getattr(inner, "state", {}).values():
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].clone()


def _is_distributed(opt) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer  # heavy: megatron-core at use

    return isinstance(opt, DistributedOptimizer)


def _patch_distributed(opt) -> None:
    """Two megatron-core 0.16.1 defects of the distributed optimizer without Apex/TransformerEngine (torch's
    Adam), patched on the instance, CPU and CUDA alike:

    - ``state_dict`` asserts when the shard holds no parameter state (an expert stub, or before the first
      step): it takes the step from per-parameter states, of which there are none;
    - loading the ``fully_reshardable`` format copies every key of torch Adam's per-parameter state, "step"
      included, from the loaded tensors, which (rightly) carry no "step": a KeyError. The step is restored
      from the param groups by ``load_state_dict`` before that copy.
    """
    from megatron.core.optimizer import distrib_optimizer as dopt  # heavy: megatron-core at use

    if getattr(dopt, "HAVE_APEX_OR_TE", True) or getattr(opt, "_megatron_ads_patched", False):
        return
    opt.state_dict = partial(_distributed_state_dict, opt, type(opt).state_dict)
    opt._set_main_param_and_optimizer_states = partial(_set_main_param_and_states, opt)
    opt._megatron_ads_patched = True


def _distributed_state_dict(opt, original) -> dict[str, Any]:
    if opt.optimizer.state:
        return original(opt)
    inner = opt.optimizer.state_dict()
    out: dict[str, Any] = {"optimizer": {k: v for k, v in inner.items() if k != "state"}}
    for group in out["optimizer"]["param_groups"]:
        group.pop("params", None)
        group["step"] = 0  # no parameter has stepped here; the saved count is aligned in sharded_state
    if opt.grad_scaler:
        out["grad_scaler"] = opt.grad_scaler.state_dict()
    return out


def _set_main_param_and_states(opt, model_param, tensors) -> None:
    if opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
        return type(opt)._set_main_param_and_optimizer_states(opt, model_param, tensors)
    group_index, group_order = opt.model_param_group_index_map[model_param]
    main_param = opt.optimizer.param_groups[group_index]["params"][group_order]
    for key, dst in {"param": main_param, **opt.optimizer.state[main_param]}.items():
        if key != "step":
            dst.copy_(tensors[key])


def _is_chained(optim_sd: dict) -> bool:
    return bool(optim_sd) and all(isinstance(k, int) for k in optim_sd)


def drop_unowned_steps(optim_state: dict) -> None:
    """After loading: an optimizer that owns no parameters takes no step count (torch's Adam refuses a
    state entry without parameters)."""
    for p in optim_state.values() if _is_chained(optim_state) else [optim_state]:
        if "state" in p and not any(g.get("params") for g in p.get("param_groups", [])):
            p["state"].pop("common_step", None)


def save(root: Path, step: int, sharded: dict[str, Any], common: dict[str, Any], rank_state: dict[str, Any],
         files: dict[str, str], tokenizer_files: list[Path], keep_last: int) -> Path:
    """Collective: write a torch_dist checkpoint of ``sharded`` + ``common`` (rank 0's copy is kept),
    each rank's ``rank_state``, and rank 0's text ``files`` and tokenizer; publish it atomically."""
    from megatron.core import dist_checkpointing  # heavy: megatron-core at use

    rank = dist.get_rank()
    final = root / step_dirname(step)
    tmp = root / (step_dirname(step) + ".tmp")
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)  # empty: megatron warns about "overwriting" a non-empty directory
    dist.barrier()
    dist_checkpointing.save({**sharded, **common}, str(tmp), validate_access_integrity=True,
                            preprocess_common_before_consistancy_check=_without_param_state)
    (tmp / RANK_STATE).mkdir(exist_ok=True)
    with atomic_path(tmp / RANK_STATE / f"rank_{rank:05d}.pt") as part:
        torch.save(rank_state, str(part))
    dist.barrier()
    if rank == 0:
        for name, text in files.items():
            (tmp / name).write_text(text)
        if tokenizer_files:
            (tmp / "tokenizer").mkdir()
            for f in tokenizer_files:
                shutil.copy2(f, tmp / "tokenizer" / f.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # every rank wrote into tmp (barriers above), so no atomic_path block here
        write_text(root / LATEST, step_dirname(step) + "\n")
        for old in complete_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def _without_param_state(common: dict[str, Any]) -> dict[str, Any]:
    """The common state minus the distributed optimizer's ``param_state`` entry, which is an empty dict
    (so "common") on a rank whose optimizer owns no parameters and sharded elsewhere: an expected
    difference, not one for megatron's cross-rank consistency warning."""
    opt = common.get("optimizer")
    if not isinstance(opt, dict):
        return common
    parts = opt if _is_chained(opt) else {None: opt}
    clean = {k: ({kk: vv for kk, vv in v.items() if kk != "param_state"} if isinstance(v, dict) else v)
             for k, v in parts.items()}
    return {**common, "optimizer": clean if _is_chained(opt) else clean[None]}


def resolve(path: str | Path) -> Path:
    """A training checkpoint directory (see ``dist_io.resolve_dir``); a converted legacy directory is refused."""
    p = resolve_dir(path)
    if not is_torch_dist(p):
        raise CheckpointError(f"{path}: a legacy converted checkpoint, not a training checkpoint (torch_dist)")
    return p


def init_checkpoint(m) -> Path | None:
    """The training checkpoint a job's model starts from (``m``: its ``ModelSpec``), where a head added on top of
    the backbone (a reward head, PPO's critic) may find its saved weights: None unless ``model.init=mcore`` names
    a torch_dist training checkpoint (a legacy converted directory holds an LM, no head)."""
    if m.init != "mcore":
        return None
    try:
        return resolve(m.path)
    except CheckpointError:
        return None


def saved_layout(ckpt: Path) -> dict[str, Any]:
    """The layout a training checkpoint was saved from (its ``layout.json``)."""
    return json.loads((ckpt / LAYOUT).read_text())


def load(ckpt: Path, template: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint into this rank's ``template`` (its sharded state dict): megatron reshards the
    global tensors to this rank's layout. Returns the loaded sharded + common state."""
    from megatron.core import dist_checkpointing  # heavy: megatron-core at use

    return dist_checkpointing.load(template, str(ckpt))


def load_rank_states(ckpt: Path) -> list[dict[str, Any]]:
    """Every saved rank's per-rank state (``weights_only=True``), in rank order."""
    files = sorted((ckpt / RANK_STATE).glob("rank_*.pt"))
    return [torch.load(f, weights_only=True) for f in files]


@torch.no_grad()
def load_model_weights(model_chunk, ckpt: Path, only: str | None = None) -> int:
    """Collective: load only the model weights of a torch_dist checkpoint (a training checkpoint or a
    converted one) into ``model_chunk``, resharded to this rank's layout. Returns the tensor count.
    ``only``: just the tensors whose state-dict key starts with it (e.g. ``"reward_head."``); every rank still
    calls (a rank without such tensors loads none), and the chunk's other tensors are left as they are."""
    from megatron.core import dist_checkpointing  # heavy: megatron-core at use
    from megatron.core.dist_checkpointing.mapping import ShardedObject  # heavy: megatron-core at use

    # tensors (and megatron's tensor factories, e.g. gated fc1); not the per-module extra-state objects
    template = {k: v for k, v in model_chunk.sharded_state_dict().items()
                if not isinstance(v, ShardedObject) and (only is None or k.startswith(only))}
    loaded = dist_checkpointing.load({"model": template}, str(ckpt)).get("model", {})  # {} where the template is empty
    result = model_chunk.load_state_dict(loaded, strict=False)
    if only is not None:
        return len(loaded)
    missing = [k for k in result.missing_keys if "_extra_state" not in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{ckpt}: model tensors do not match: missing {missing[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}")
    return len(loaded)


def holds_tensors(ckpt: Path, prefix: str) -> bool:
    """Whether a torch_dist checkpoint holds a tensor whose key starts with ``prefix`` (reads its metadata
    only; no collectives)."""
    from megatron.core import dist_checkpointing  # heavy: megatron-core at use

    return any(str(k).startswith(prefix) for k in dist_checkpointing.load_tensors_metadata(str(ckpt)))


def tokenizer_files(m, run_dir: Path | None = None) -> list[Path]:
    """Tokenizer files copied into every training checkpoint's tokenizer/ (so its HF export labels and
    generates as it is): the initial checkpoint's of model spec ``m``; for a random init, the one the run
    trained itself (``run_dir/tokenizer``, e.g. SFT's BPE), if any."""
    if m.init == "random":
        return files_in(Path(run_dir) / "tokenizer") if run_dir is not None else []
    return files_in(find_tokenizer_dir(m.path))


def same_layout(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two ``layout.json`` records describe the same layout (the step aside)."""
    return {k: v for k, v in a.items() if k != "step"} == {k: v for k, v in b.items() if k != "step"}


def layout_text(lay: dict[str, Any]) -> str:
    return f"tp={lay.get('tp')} pp={lay.get('pp')} ep={lay.get('ep')} on {lay.get('world_size')} ranks"
