"""Streaming checkpoint conversion: HF -> Megatron shards, Megatron -> HF (BF16 or FP8), Megatron -> Megatron.

How it works
------------
No model is built. A *plan* lists output files; each file is a group of tensors (one layer of one
rank shard, the embedding, the head, ...) and every tensor names its sources and transform in the
mapping registry. An executor writes the files with W worker processes, each holding one group at
a time, so the working set is bounded by ``workers x largest group``; the budget flag caps it.
Every file is written to a temp name and renamed when complete; a journal records finished files,
so ``resume`` after a kill skips them. Workers are spawned (not forked), so a parent that already
runs torch threads or process groups cannot deadlock them. Key accounting (every source tensor used, every target
written once) is checked before any byte is written and again at the end; the completion marker
(``latest_checkpointed_iteration.txt`` / ``model.safetensors.index.json``) is written last.

Reshard (Megatron A -> Megatron B) reads A through ``MegatronAsHF`` and runs the HF -> Megatron
path, so it equals a direct HF -> B conversion bit for bit.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file, save_file

from megatron_ads.checkpoint.dist_io import (COMMON, DIST_METADATA, MEGATRON_DIST_METADATA, dist_key,
                                             write_dist_metadata)
from megatron_ads.checkpoint.hf_io import INDEX, QUANT_CONFIG, CheckpointError, FP8BlockScale, HFCheckpoint
from megatron_ads.checkpoint.mapping import alias_of, apply_transform, expected_hf_shape, rank_tasks
from megatron_ads.checkpoint.megatron_io import (FORMAT_VERSION, LATEST, LAYOUT, MEGATRON_LM_PT, SHARD_INDEX,
                                                 MegatronAsHF, all_coords, group_of, iter_dirname, shard_dirname)
from megatron_ads.checkpoint.mtp import mtp_tensors_in, resolve_mtp
from megatron_ads.checkpoint.tokenizer_dir import tokenizer_files
from megatron_ads.config.model import ModelConfig
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.layout.pipeline import stage_layers
from megatron_ads.runtime.io import atomic_path, write_text
from megatron_ads.runtime.log import get_logger, progress as progress_bar

log = get_logger(__name__)

JOURNAL = ".convert_journal.jsonl"
FORMATS = ("legacy", "torch_dist")
WORKING_SET_FACTOR = 3
GB = 1e9
"""Sizes behind ``--max-memory-gb`` / ``--shard-size-gb`` are decimal gigabytes (10^9 bytes), as in
``megatron-ads plan`` and transformers' ``max_shard_size="5GB"``."""


@dataclass(slots=True)
class FileJob:
    """One output file: its path relative to the output dir and the tensors it holds."""

    rel: str
    entries: list[tuple[str, Any]] = field(default_factory=list)
    """(output key, recipe): a TensorTask + tp info (to Megatron) or an HF name + fp8 flag (to HF)."""
    nbytes: int = 0


# ------------------------------------------------------------------------------------ sources
def open_source(spec: tuple[str, str]):
    """('hf', dir) -> HFCheckpoint (BF16 dequant, no cached maps); ('mcore', dir) -> MegatronAsHF."""
    kind, path = spec
    if kind == "hf":
        return HFCheckpoint(path, dequant_dtype=torch.bfloat16, keep_open=False)
    return MegatronAsHF(path)


_WORKER_SOURCE: dict[tuple, Any] = {}


def _source(spec):
    if spec not in _WORKER_SOURCE:
        _WORKER_SOURCE.clear()
        _WORKER_SOURCE[spec] = open_source(spec)
    return _WORKER_SOURCE[spec]


def check_source_shapes(src, cfg: ModelConfig) -> None:
    """Every source tensor must have the shape config.json implies (named error otherwise)."""
    for name in src.keys():
        expected = expected_hf_shape(cfg, name)
        if expected is None:
            continue
        got = tuple(src.shape(name)) if hasattr(src, "shape") else tuple(src.get(name).shape)
        if got != expected:
            raise CheckpointError(f"{getattr(src, 'dir', '?')}: tensor {name!r} has shape {got}, but config.json implies "
                                  f"{expected}")


# ------------------------------------------------------------------------------------ planning
def plan_hf_to_mcore(src, cfg: ModelConfig, par: ParallelConfig, iteration: int = 0,
                     skipped: Iterable[str] = ()) -> list[FileJob]:
    """Output files of an HF -> Megatron conversion, with key accounting against ``src``.

    ``skipped``: source tensors left out on purpose (MTP layers under ``mtp=drop``); any other source
    tensor without a place in the mapping is an error."""
    stages = stage_layers(cfg.num_layers, par)
    used: set[str] = set()
    jobs: dict[str, FileJob] = {}
    for coord in all_coords(par):
        sdir = f"{iter_dirname(iteration)}/{shard_dirname(coord, par)}"
        for task in rank_tasks(cfg, par, coord):
            missing = [h for h in task.hf if h not in src]
            if missing:
                raise CheckpointError(f"{getattr(src, 'dir', '?')}: source tensor(s) {missing} needed for {task.mcore} "
                                      f"(tp={coord.tp_rank} pp={coord.pp_rank} ep={coord.ep_rank}) are missing")
            used.update(task.hf)
            rel = f"{sdir}/{group_of(task.mcore, stages[coord.pp_rank])}.safetensors"
            job = jobs.setdefault(rel, FileJob(rel))
            job.entries.append((task.mcore, (task, par.tp, coord.tp_rank)))
    skipped = set(skipped)
    unused = [k for k in src.keys() if k not in used and k not in skipped and alias_of(cfg, k) is None]
    if unused:
        raise CheckpointError(f"{getattr(src, 'dir', '?')}: {len(unused)} source tensors have no place in the "
                              f"{cfg.model_type} mapping (refusing to drop them): {unused[:6]}")
    for job in jobs.values():
        seen = set()
        for _key, (task, _tp, _r) in job.entries:
            for h in task.hf:
                if h not in seen:
                    seen.add(h)
                    job.nbytes += _nbytes(src, h) // (par.tp if task.mapping.splits_tp else 1)
    return sorted(jobs.values(), key=lambda j: j.rel)


def plan_hf_to_dist(src, cfg: ModelConfig, par: ParallelConfig, skipped: Iterable[str] = ()) -> list[FileJob]:
    """Data files of an HF -> torch_dist conversion: one per tensor group (a layer, the embedding, the
    head, an MTP layer), a MoE layer's routed experts split into ``par.ep`` files, so a file holds what
    one EP rank owns. Entries are (global key, (task, expert index or None)); key accounting as
    ``plan_hf_to_mcore`` at tp=pp=ep=1 (global names)."""
    flat = plan_hf_to_mcore(src, cfg, ParallelConfig(), skipped=skipped)
    per = max(cfg.num_experts // par.ep, 1) if cfg.is_moe else 1
    jobs: dict[str, FileJob] = {}
    for base in flat:
        group = base.rel.rsplit("/", 1)[1].removesuffix(".safetensors")
        for name, (task, _tp, _rank) in base.entries:
            key, index = dist_key(name)
            rel = f"{group}.distcp" if index is None else f"{group}_experts{index // per:03d}.distcp"
            job = jobs.setdefault(rel, FileJob(rel))
            job.entries.append((key, (task, index)))
            job.nbytes += sum(_nbytes(src, h) for h in task.hf)
    return sorted(jobs.values(), key=lambda j: j.rel)


def _nbytes(src, name: str) -> int:
    if hasattr(src, "nbytes"):
        return src.nbytes(name)
    t = src.get(name)
    return t.numel() * t.element_size()


EXPORT_DTYPES = {"source": None, "bf16": torch.bfloat16, "fp32": torch.float32, "fp8": torch.bfloat16}
"""mcore-to-hf ``--dtype``: the precision of the written tensors (fp8: the FP8 linears' E4M3 codes + scales,
every other tensor bf16). ``source`` keeps what the checkpoint stores (a bf16 conversion stays bit-identical,
an fp32 training checkpoint stays exact)."""
FP32_KEPT = ("e_score_correction_bias",)
"""Tensors DeepSeek keeps in fp32 in every release (the router's expert bias)."""


def export_cast(name: str, dtype: str) -> str | None:
    """The dtype a tensor is written in under ``--dtype`` (None: as stored)."""
    target = EXPORT_DTYPES[dtype]
    if target is None or name.endswith(FP32_KEPT):
        return None
    return str(target).removeprefix("torch.")


def plan_to_hf(src, cfg: ModelConfig, fp8: bool, shard_bytes: int, dtype: str = "source") -> list[FileJob]:
    """Output files of a (Megatron ->) HF write: tensors in name order, ~``shard_bytes`` per file."""
    names = list(src.keys())
    # aliases (MTP copies of embedding/head) are written again from their targets
    for m in range(cfg.num_mtp_layers):
        layer = cfg.num_layers + m
        for name in (f"model.layers.{layer}.embed_tokens.weight", f"model.layers.{layer}.shared_head.head.weight"):
            if name not in names and alias_of(cfg, name) in names:
                names.append(name)
    names.sort(key=_hf_order)
    jobs: list[FileJob] = []
    current = FileJob("")
    for name in names:
        target = alias_of(cfg, name) if name not in src else name
        nb = _nbytes(src, target)
        if current.entries and current.nbytes + nb > shard_bytes:
            jobs.append(current)
            current = FileJob("")
        current.entries.append((name, (target, fp8 and FP8BlockScale.applies(name), export_cast(name, dtype))))
        current.nbytes += nb
    if current.entries:
        jobs.append(current)
    n = len(jobs)
    for i, job in enumerate(jobs):
        job.rel = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
    return jobs


def _hf_order(name: str):
    parts = name.split(".")
    if len(parts) > 2 and parts[1] == "layers" and parts[2].isdigit():
        return (1, int(parts[2]), name)
    return (0 if "embed" in name else 2, 0, name)


# ------------------------------------------------------------------------------------ execution
def _run_job(kind: str, spec, cfg_dict: dict, out_dir: str, job: FileJob) -> tuple[str, int, list[str]]:
    src = _source(spec)
    cfg = ModelConfig.from_hf_dict(cfg_dict)
    tensors: dict[str, torch.Tensor] = {}
    if kind == "to_dist":
        return _run_dist_job(src, cfg, Path(out_dir), job)
    for key, recipe in job.entries:
        if kind == "to_mcore":
            task, tp, tp_rank = recipe
            value = apply_transform(task, [src.get(h) for h in task.hf], cfg, tp, tp_rank)
            tensors[key] = value.contiguous()
        else:
            name, quantize, cast = recipe
            value = src.get(name)
            if cast is not None and value.is_floating_point() and not quantize:
                value = value.to(getattr(torch, cast))
            if quantize:
                tensors.update(FP8BlockScale.quantize(key, value))
            else:
                tensors[key] = value.contiguous()
    path = Path(out_dir) / job.rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    keys = sorted(tensors)
    size = path.stat().st_size
    del tensors
    return job.rel, size, keys


def _run_dist_job(src, cfg: ModelConfig, out_dir: Path, job: FileJob) -> tuple[str, int, list]:
    """Write one torch_dist data file: each tensor (or one expert's slice of a stacked key) as a
    ``torch.save`` record at its offset, the way DCP's FileSystemWriter stores a chunk."""
    path = out_dir / job.rel
    records = []
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for key, (task, index) in job.entries:
            value = apply_transform(task, [src.get(h) for h in task.hf], cfg, 1, 0)
            chunk = (value if index is None else value.unsqueeze(0)).contiguous().clone()
            offset = f.tell()
            torch.save(chunk, f)
            records.append([key, index, offset, f.tell() - offset, str(value.dtype).removeprefix("torch."),
                            list(value.shape)])
        f.flush()
        os.fsync(f.fileno())
    return job.rel, path.stat().st_size, records


class Progress:
    """One progress bar over the planned bytes of the files (``runtime.log.progress``: silent off-TTY,
    under --json and on other ranks), and a summary log line of the bytes written at the end;
    ``enabled=False`` (``--quiet``) silences both."""

    def __init__(self, total_files: int, total_bytes: int, enabled: bool = True):
        self.total_files, self.total_bytes, self.enabled = total_files, total_bytes, enabled
        self.files = self.bytes = 0
        self.t0 = time.time()
        self.bar = progress_bar(total=total_bytes, desc="convert", unit="B", unit_scale=True) if enabled else None

    def update(self, planned: int, written: int) -> None:
        """One more file done: ``planned`` bytes of the total, ``written`` bytes on disk."""
        self.files += 1
        self.bytes += written
        if self.bar is not None:
            self.bar.update(planned)
            self.bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)

    def close(self) -> None:
        """Close the bar and log the summary (files, bytes, throughput)."""
        if self.bar is None:
            return
        self.bar.close()
        self.bar = None
        elapsed = max(time.time() - self.t0, 1e-9)
        log.info("%d/%d files, %.2f GB in %.1f s (%.0f MB/s)", self.files, self.total_files, self.bytes / GB,
                 elapsed, self.bytes / elapsed / 1e6)


def read_journal(out: Path) -> dict[str, dict]:
    """Finished files recorded by an earlier run whose bytes are still on disk."""
    done = {}
    path = out / JOURNAL
    if not path.is_file():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a kill
        f = out / rec["file"]
        if f.is_file() and f.stat().st_size == rec["bytes"]:
            done[rec["file"]] = rec
    return done


def execute(kind: str, spec, cfg: ModelConfig, out: Path, jobs: list[FileJob], workers: int, resume: bool,
            max_memory_gb: float | None, progress: bool = True) -> dict[str, dict]:
    """Write every job's file (skipping journaled ones on resume); returns {rel: journal record}."""
    largest = max((j.nbytes for j in jobs), default=0)
    if max_memory_gb is not None:
        # a group in flight holds its source tensors, the transformed outputs and the serialization buffer
        budget = max_memory_gb * GB
        if WORKING_SET_FACTOR * largest > budget:
            big = max(jobs, key=lambda j: j.nbytes)
            raise ValueError(f"max-memory-gb: {max_memory_gb:g} GB (10^9 bytes) is below {WORKING_SET_FACTOR}x the "
                             f"largest tensor group ({big.rel}: {big.nbytes / GB:.3f} GB); raise the budget")
        workers = max(1, min(workers, int(budget // max(WORKING_SET_FACTOR * largest, 1))))
    done = read_journal(out) if resume else {}
    if not resume and (out / JOURNAL).exists():
        (out / JOURNAL).unlink()
    for tmp in out.rglob("*.tmp"):
        tmp.unlink()
    pending = [j for j in jobs if j.rel not in done]
    prog = Progress(len(jobs), sum(j.nbytes for j in jobs), progress)
    for j in jobs:
        if j.rel in done:
            prog.update(j.nbytes, done[j.rel]["bytes"])
    journal = open(out / JOURNAL, "a")
    cfg_dict = cfg.to_hf_dict()
    planned = {j.rel: j.nbytes for j in jobs}

    def record(result):
        rel, size, keys = result
        done[rel] = {"file": rel, "bytes": size, "keys": keys}
        journal.write(json.dumps(done[rel]) + "\n")
        journal.flush()
        os.fsync(journal.fileno())
        prog.update(planned[rel], size)

    try:
        if workers <= 1 or len(pending) <= 1:
            for job in pending:
                record(_run_job(kind, spec, cfg_dict, str(out), job))
        else:
            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_run_job, kind, spec, cfg_dict, str(out), job) for job in pending]
                for fut in futures:
                    record(fut.result())
    finally:
        journal.close()
        prog.close()
    return done


def _prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not resume:
        if any(out.iterdir()):
            raise FileExistsError(f"{out}: exists and is not empty; choose a new --out or pass --resume")
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        return
    for marker in (out / LATEST, out / INDEX, out / DIST_METADATA):
        if marker.exists():
            raise FileExistsError(f"{out}: already a complete checkpoint ({marker.name} present); nothing to resume")


def _copy_tokenizer(src_dir: Path, dst: Path) -> None:
    files = tokenizer_files(src_dir)
    if not files:
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, dst / f.name)


# ------------------------------------------------------------------------------------ public entry points
def hf_to_mcore(hf_dir: str | Path, out: str | Path, par: ParallelConfig, workers: int = 1, resume: bool = False,
                max_memory_gb: float | None = None, plan_json: dict | None = None, megatron_lm_pt: bool = False,
                progress: bool = True, mtp: str = "auto", format: str = "legacy",
                _source_spec=None) -> dict[str, Any]:
    """Convert an HF checkpoint (BF16 or DeepSeek FP8) into a Megatron checkpoint: ``legacy`` per-rank
    shards for ``par``, or one ``torch_dist`` checkpoint of global tensors that any layout loads (``par``
    then only decides how the routed experts are split into data files).

    ``mtp`` (require | auto | drop) decides about MTP layers config.json declares (checkpoint/mtp.py);
    layout.json records the MTP layers converted (``mtp_layers``) and, when they were dropped, why
    (``mtp_reason``)."""
    out = Path(out)
    spec = _source_spec or ("hf", str(hf_dir))
    src = open_source(spec)
    cfg = ModelConfig.from_hf_dict(src.config(), source=str(Path(hf_dir) / "config.json"))
    if cfg.family == "deepseek_v3" and par.tp > 1:
        raise ValueError("tp: MLA models are converted for tp=1 only (the paper's layout uses PP x EP x DP)")
    if cfg.is_moe and cfg.num_experts % par.ep:
        raise ValueError(f"ep: n_routed_experts={cfg.num_experts} is not divisible by ep={par.ep}")
    stage_layers(cfg.num_layers, par)  # validates the split against the model
    declared = cfg
    cfg, mtp_reason = resolve_mtp(declared, src, mtp)
    if mtp_reason is None and spec[0] == "mcore":
        mtp_reason = src.layout.info.get("mtp_reason")  # reshard keeps the record of an earlier drop
    skipped = mtp_tensors_in(declared, src) if cfg.num_mtp_layers < declared.num_mtp_layers else []
    if spec[0] == "hf":
        check_source_shapes(src, cfg)
    if format not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    if format == "torch_dist":
        if megatron_lm_pt:
            raise ValueError("megatron-lm-pt: model_optim_rng.pt belongs to the legacy format; torch_dist is "
                             "read by Megatron-LM's dist_checkpointing directly")
        return _hf_to_dist(src, spec, cfg, par, out, workers, resume, max_memory_gb, progress, skipped,
                           {"source": str(hf_dir), "mtp_layers": cfg.num_mtp_layers,
                            **({"mtp_reason": mtp_reason} if mtp_reason else {}),
                            **({"plan": plan_json} if plan_json is not None else {})})
    jobs = plan_hf_to_mcore(src, cfg, par, skipped=skipped)
    _prepare_out(out, resume)
    done = execute("to_mcore", spec, cfg, out, jobs, workers, resume, max_memory_gb, progress)
    # per-shard indexes, accounting, optional Megatron-LM .pt, then the markers
    shards: dict[str, dict[str, str]] = {}
    for job in jobs:
        sdir, fname = job.rel.rsplit("/", 1)
        expected = sorted(k for k, _ in job.entries)
        if done[job.rel]["keys"] != expected:
            raise CheckpointError(f"{out / job.rel}: wrote {done[job.rel]['keys'][:4]}..., expected {expected[:4]}...")
        for key in expected:
            if key in shards.setdefault(sdir, {}):
                raise CheckpointError(f"{out / sdir}: tensor {key} written twice")
            shards[sdir][key] = fname
    for sdir, weight_map in shards.items():
        write_text(out / sdir / SHARD_INDEX, json.dumps({"weight_map": weight_map}, indent=1, sort_keys=True))
        if megatron_lm_pt:
            _write_megatron_lm_pt(out / sdir, weight_map)
    layout = {"format_version": FORMAT_VERSION, "tp": par.tp, "pp": par.pp, "ep": par.ep,
              "stage_layers": [len(s) for s in stage_layers(cfg.num_layers, par)], "iteration": 0,
              "source": str(hf_dir), "dtype": "bf16",
              "shards": len(shards), "tensors": sum(len(w) for w in shards.values()),
              "mtp_layers": cfg.num_mtp_layers}
    if mtp_reason is not None:
        layout["mtp_reason"] = mtp_reason
    if plan_json is not None:
        layout["plan"] = plan_json
    write_text(out / "hf_config.json", json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True))
    write_text(out / LAYOUT, json.dumps(layout, indent=2, sort_keys=True))
    _copy_tokenizer(_tokenizer_source(spec, src), out / "tokenizer")
    (out / JOURNAL).unlink(missing_ok=True)
    write_text(out / LATEST, "0\n")
    return {"out": str(out), "shards": len(shards), "files": len(jobs), "tensors": layout["tensors"],
            "bytes": sum(r["bytes"] for r in done.values()), "tp": par.tp, "pp": par.pp, "ep": par.ep,
            "mtp_layers": cfg.num_mtp_layers}


def _tokenizer_source(spec, src) -> Path:
    return Path(spec[1]) if spec[0] == "hf" else src.dir / "tokenizer"


def _hf_to_dist(src, spec, cfg: ModelConfig, par: ParallelConfig, out: Path, workers: int, resume: bool,
                max_memory_gb: float | None, progress: bool, skipped: list[str], info: dict) -> dict[str, Any]:
    """The torch_dist branch of ``hf_to_mcore``: data files through the executor (journal, resume,
    bounded memory), then DCP's ``.metadata``, megatron's ``common.pt``, our records, and megatron's
    ``metadata.json`` last (the completion marker ``dist_checkpointing`` checks)."""
    jobs = plan_hf_to_dist(src, cfg, par, skipped=skipped)
    _prepare_out(out, resume)
    done = execute("to_dist", spec, cfg, out, jobs, workers, resume, max_memory_gb, progress)
    records = []
    for job in jobs:
        got = sorted((k, -1 if i is None else i) for k, i, *_ in done[job.rel]["keys"])
        expected = sorted((k, -1 if i is None else i) for k, (_t, i) in job.entries)
        if got != expected:
            raise CheckpointError(f"{out / job.rel}: wrote {got[:3]}..., expected {expected[:3]}...")
        records += [(job.rel, *r) for r in done[job.rel]["keys"]]
    n_keys = write_dist_metadata(out, records)
    with atomic_path(out / COMMON) as tmp:
        torch.save({"iteration": 0, "checkpoint_version": 3.0}, tmp)
    layout = {"format": "torch_dist", "format_version": FORMAT_VERSION, "tp": 1, "pp": 1, "ep": 1,
              "expert_files_per_layer": par.ep if cfg.is_moe else 0, "iteration": 0, "dtype": "bf16",
              "tensors": len(records), "keys": n_keys, **info}
    write_text(out / "hf_config.json", json.dumps(cfg.to_hf_dict(), indent=2, sort_keys=True))
    write_text(out / LAYOUT, json.dumps(layout, indent=2, sort_keys=True))
    _copy_tokenizer(_tokenizer_source(spec, src), out / "tokenizer")
    (out / JOURNAL).unlink(missing_ok=True)
    write_text(out / DIST_METADATA, json.dumps(MEGATRON_DIST_METADATA))
    return {"out": str(out), "format": "torch_dist", "files": len(jobs), "tensors": len(records), "keys": n_keys,
            "bytes": sum(r["bytes"] for r in done.values()), "mtp_layers": cfg.num_mtp_layers}


def _write_megatron_lm_pt(sdir: Path, weight_map: dict[str, str]) -> None:
    """Megatron-LM's ``model_optim_rng.pt`` (state dict under 'model'); holds the whole shard in memory."""
    sd = {}
    for fname in sorted(set(weight_map.values())):
        sd.update(load_file(str(sdir / fname)))
    with atomic_path(sdir / MEGATRON_LM_PT) as tmp:
        torch.save({"model": sd, "iteration": 0, "checkpoint_version": 3.0}, tmp)


def mcore_to_hf(mcore_dir: str | Path, out: str | Path, dtype: str = "source", workers: int = 1, resume: bool = False,
                shard_size_gb: float = 5.0, max_memory_gb: float | None = None,
                progress: bool = True) -> dict[str, Any]:
    """Merge a Megatron checkpoint (converted shards, torch_dist, or a training run's ``checkpoints/<step or
    latest>``) back into an HF checkpoint: as stored, BF16, FP32, or DeepSeek FP8 with 128x128 block scales."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    out = Path(out)
    spec = ("mcore", str(mcore_dir))
    src = open_source(spec)
    cfg = src.cfg
    shard_bytes = int(shard_size_gb * GB)
    if max_memory_gb is not None:
        shard_bytes = min(shard_bytes, int(max_memory_gb * GB / WORKING_SET_FACTOR))
    jobs = plan_to_hf(src, cfg, dtype == "fp8", shard_bytes, dtype)
    _prepare_out(out, resume)
    done = execute("to_hf", spec, cfg, out, jobs, workers, resume, max_memory_gb, progress)
    weight_map = {}
    for job in jobs:
        for key in done[job.rel]["keys"]:
            if key in weight_map:
                raise CheckpointError(f"{out}: tensor {key} written twice")
            weight_map[key] = job.rel
    hf_cfg = cfg.to_hf_dict()
    hf_cfg.pop("quantization_config", None)
    if dtype == "fp8":
        hf_cfg["quantization_config"] = dict(QUANT_CONFIG)
    write_text(out / "config.json", json.dumps(hf_cfg, indent=2, sort_keys=True))
    _copy_tokenizer(src.dir / "tokenizer", out)
    total = sum(r["bytes"] for r in done.values())
    write_text(out / INDEX, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2,
                                          sort_keys=True))
    (out / JOURNAL).unlink(missing_ok=True)
    return {"out": str(out), "files": len(jobs), "tensors": len(weight_map), "bytes": total, "dtype": dtype}


def reshard(mcore_dir: str | Path, out: str | Path, par: ParallelConfig, workers: int = 1, resume: bool = False,
            max_memory_gb: float | None = None, progress: bool = True) -> dict[str, Any]:
    """Megatron -> Megatron for another layout, without an HF round trip on disk."""
    return hf_to_mcore(mcore_dir, out, par, workers=workers, resume=resume, max_memory_gb=max_memory_gb,
                       progress=progress, _source_spec=("mcore", str(mcore_dir)))
