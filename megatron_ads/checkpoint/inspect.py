"""A checkpoint at a glance: tensor names, shapes, dtypes, FP8 scale shapes, per-stage / per-EP-rank totals
and the recorded layout of an HF, legacy Megatron or torch_dist checkpoint, from headers and metadata only.

How it works
------------
Nothing here reads tensor data, so it is instant on a 671B checkpoint:

- HF (BF16 or DeepSeek FP8): ``model.safetensors.index.json`` (through :class:`HFCheckpoint`) names the
  file of every tensor; each file's safetensors header gives shapes and dtypes. A ``<name>_scale_inv`` is
  folded into its weight's row (``scale_shape``) and checked against ``ceil(M/bm) x ceil(N/bn)`` for the
  block size ``quantization_config.weight_block_size`` declares (128 x 128 when absent). Totals per file.
- legacy Megatron (``convert hf-to-mcore --format legacy``): ``layout.json`` (through :func:`read_layout`),
  then every ``iter_N/mp_rank_TT[_PPP][_EEE]`` directory: its coordinate comes from the directory name,
  its tensors from its ``model.safetensors.index.json`` and the file headers. Totals per shard, per
  pipeline stage and per EP rank (what each stores: dense tensors are stored once per EP rank).
- torch_dist (megatron-core ``dist_checkpointing``; a training run's ``step_N`` or a converted one): the
  DCP ``.metadata`` (through :class:`DistShard`) gives every global key's size, dtype and chunks, model
  and ``optimizer.*`` keys alike. The tensors are global, so totals per stage / EP rank exist only as the
  layout that saved it (``layout.json``: ``pp``, ``ep``, ``stage_layers``) would hold them: a key goes to
  the stage of its layer (embedding first, final norm / output layer / MTP last), a stacked expert key
  ``[E, ...]`` is split over the EP ranks, and the dense remainder is one row of its own ("dense (every EP
  rank)"), so every grouping still sums to the whole. Saved at pp = ep = 1 it says "global tensors".

The report is a JSON-ready dict (:func:`inspect_checkpoint`); :func:`render_table` prints it for people.
Every grouping (``groups[...]``) partitions the checkpoint: its ``params`` (elements: model parameters, and
optimizer values for ``optimizer.*`` keys) sum to ``totals["params"]`` and its ``bytes`` to ``totals["bytes"]``
— except a torch_dist ``file`` row, whose ``bytes`` are on disk (summing to ``totals["file_bytes"]``).
``tensors`` sum to ``totals["tensors"]`` too, except where one key spans several rows (a torch_dist key
stacked over EP ranks or written in pieces to several files counts in each).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from safetensors import safe_open

from megatron_ads.checkpoint.dist_io import (DCP_METADATA, DIST_METADATA, HF_CONFIG, LEGACY_LATEST, DistShard,
                                             is_torch_dist, read_common, resolve_dir)
from megatron_ads.checkpoint.hf_io import INDEX, SCALE_SUFFIX, SINGLE, CheckpointError, HFCheckpoint
from megatron_ads.checkpoint.megatron_io import (LAYOUT, SHARD_INDEX, MegatronShard, all_coords, iter_dirname,
                                                 read_layout, shard_dirname)
from megatron_ads.layout.experts import expert_ranges
from megatron_ads.layout.pipeline import even_split, stage_layers

ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
               "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
"""Bytes per element of a safetensors header dtype."""
DEFAULT_BLOCK = [128, 128]
"""DeepSeek's FP8 weight block (``quantization_config.weight_block_size`` when the config omits it)."""
CONFIG_SUMMARY_KEYS = ("model_type", "architectures", "num_hidden_layers", "first_k_dense_replace", "hidden_size",
                       "intermediate_size", "moe_intermediate_size", "num_attention_heads", "num_key_value_heads",
                       "vocab_size", "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "n_group",
                       "topk_group", "q_lora_rank", "kv_lora_rank", "num_nextn_predict_layers", "tie_word_embeddings",
                       "torch_dtype", "dtype", "quantization_config")
"""The config.json fields the report keeps (the rest is one open away)."""
EXPECTED = ("an HF checkpoint (model.safetensors.index.json or model.safetensors), a legacy Megatron checkpoint "
            f"({LEGACY_LATEST} + {LAYOUT} + iter_N/mp_rank_*/), a torch_dist checkpoint ({DIST_METADATA} + "
            f"{DCP_METADATA} + *.distcp) or a training run whose checkpoints/ holds a complete step_N")

_LAYER = re.compile(r"(?:^|\.)decoder\.layers\.(\d+)\.")
_FIRST = re.compile(r"(?:^|\.)embedding\.")
_LAST = re.compile(r"(?:^|\.)(?:output_layer|decoder\.final_layernorm|mtp)\.")
_STACKED = ".mlp.experts.experts."


def inspect_checkpoint(path: str | Path) -> dict[str, Any]:
    """Describe the checkpoint ``path`` names from headers and metadata only (no tensor data is read).

    Args:
        path: an HF checkpoint directory, a legacy Megatron or torch_dist checkpoint directory, or a training
            run (``RUN``, ``RUN/checkpoints``, ``RUN/checkpoints/latest``, ``RUN/checkpoints/step_N``).
    Returns:
        a JSON-ready dict: ``format`` (hf | legacy | torch_dist), ``dir`` (the resolved directory),
        ``tensors`` (one row per tensor), ``totals``, ``groups`` (name -> rows that partition the totals),
        ``layout`` (what the checkpoint records about its layout), ``config`` (config.json summary),
        ``notes`` and ``problems`` (inconsistencies found in the metadata).
    Raises:
        CheckpointError: ``path`` is not a checkpoint (the message names it and what was expected) or its
            metadata is unreadable.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{path}: does not exist; expected {EXPECTED}")
    if p.is_dir() and ((p / INDEX).is_file() or (p / SINGLE).is_file()):
        report = _inspect_hf(p)
    else:
        try:
            d = resolve_dir(p)
        except (FileNotFoundError, CheckpointError):  # resolve_dir's refusal knows Megatron layouts only
            raise CheckpointError(f"{path}: not a checkpoint directory; expected {EXPECTED}") from None
        report = _inspect_dist(d) if is_torch_dist(d) else _inspect_legacy(d)
    report["path"] = str(path)
    return report


# ----------------------------------------------------------------------------------------------------- helpers

def _numel(shape: list[int]) -> int:
    return math.prod(shape)


def _headers(directory: Path, names_by_file: dict[str, list[str]]) -> dict[str, tuple[list[int], str]]:
    """{name: (shape, safetensors dtype)} from the headers of the files (one open per file, no data read)."""
    out = {}
    for fname, names in sorted(names_by_file.items()):
        path = directory / fname
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                stored = set(f.keys())
                for name in names:
                    if name not in stored:
                        raise CheckpointError(f"{path}: tensor {name!r} listed in the index is not in the file")
                    sl = f.get_slice(name)
                    out[name] = (list(sl.get_shape()), sl.get_dtype())
        except CheckpointError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: unreadable safetensors header ({exc})") from exc
    return out


def _by_file(weight_map: dict[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        out.setdefault(fname, []).append(name)
    return out


def _group(label: str, **coords) -> dict[str, Any]:
    return {"label": label, **coords, "tensors": 0, "params": 0, "bytes": 0}


def _add(group: dict[str, Any], params: int, nbytes: int, tensors: int = 1) -> None:
    group["tensors"] += tensors
    group["params"] += params
    group["bytes"] += nbytes


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"tensors": len(rows), "params": sum(r["params"] for r in rows), "bytes": sum(r["bytes"] for r in rows)}


def _config_summary(cfg: dict[str, Any] | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    return {k: cfg[k] for k in CONFIG_SUMMARY_KEYS if k in cfg}


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc


def _scalar(v: Any) -> Any:
    """``v`` when JSON has it as a scalar, else its type name (common.pt may hold anything)."""
    return v if v is None or isinstance(v, (bool, int, float, str)) else type(v).__name__


def _stage_of(key: str, starts: list[int], pp: int) -> int | None:
    """The pipeline stage a megatron-core key (global layer indices) belongs to; None when it names no place."""
    m = _LAYER.search(key)
    if m is not None:
        layer = int(m[1])
        return max(i for i, s in enumerate(starts) if s <= layer)
    if _FIRST.search(key):
        return 0
    if _LAST.search(key):
        return pp - 1
    return None


# ---------------------------------------------------------------------------------------------------------- HF

def _inspect_hf(d: Path) -> dict[str, Any]:
    ck = HFCheckpoint(d)
    cfg = _read_json(d / "config.json")
    quant = (cfg or {}).get("quantization_config") or {}
    block = list(quant.get("weight_block_size") or DEFAULT_BLOCK)
    head = _headers(d, _by_file(ck.weight_map))
    problems, notes = [], []
    files = {f: _group(f, file=f) for f in sorted(set(ck.weight_map.values()))}
    rows = []
    for name in ck.keys():
        shape, dtype = head[name]
        nbytes = _numel(shape) * ST_ITEMSIZE.get(dtype, 4)
        row = {"name": name, "shape": shape, "dtype": dtype, "params": _numel(shape), "bytes": nbytes,
               "file": ck.weight_map[name], "scale_shape": None, "scale_dtype": None, "scale_file": None}
        _add(files[row["file"]], row["params"], nbytes)
        if ck.is_fp8(name):
            sname = name + SCALE_SUFFIX
            sshape, sdtype = head[sname]
            sbytes = _numel(sshape) * ST_ITEMSIZE.get(sdtype, 4)
            row.update(scale_shape=sshape, scale_dtype=sdtype, scale_file=ck.weight_map[sname])
            row["bytes"] += sbytes
            files[ck.weight_map[sname]]["bytes"] += sbytes
            want = [math.ceil(n / b) for n, b in zip(shape, block)]
            if len(shape) != 2 or sshape != want:
                problems.append(f"{sname}: scale shape {sshape}, expected {want} for weight {shape} "
                                f"in {block[0]}x{block[1]} blocks")
        elif dtype.startswith("F8_"):
            problems.append(f"{name}: {dtype} weight without {name + SCALE_SUFFIX}")
        rows.append(row)
    orphans = sorted(k for k in ck.weight_map
                     if k.endswith(SCALE_SUFFIX) and k[:-len(SCALE_SUFFIX)] not in ck.weight_map)
    problems += [f"{k}: a scale without its weight {k[:-len(SCALE_SUFFIX)]!r}" for k in orphans]
    scales = sum(1 for k in ck.weight_map if k.endswith(SCALE_SUFFIX))
    if cfg is None:
        notes.append(f"{d / 'config.json'}: missing")
    fp8 = [r for r in rows if r["scale_shape"] is not None]
    totals = {**_totals(rows), "scales": scales, "keys": len(ck.weight_map), "fp8_tensors": len(fp8),
              "files": len(files)}
    layout = {"index": INDEX if (d / INDEX).is_file() else SINGLE, "files": len(files),
              "fp8": {"tensors": len(fp8), "weight_block_size": block, "quant_method": quant.get("quant_method"),
                      "fmt": quant.get("fmt")} if (fp8 or quant) else None}
    return {"format": "hf", "dir": str(d), "tensors": rows, "totals": totals, "groups": {"file": list(files.values())},
            "layout": layout, "config": _config_summary(cfg), "notes": notes, "problems": problems}


# ------------------------------------------------------------------------------------------------------ legacy

def _inspect_legacy(d: Path) -> dict[str, Any]:
    lay = read_layout(d)
    par = lay.par
    raw = _read_json(d / LAYOUT)
    base = d / iter_dirname(lay.iteration)
    if not base.is_dir():
        raise CheckpointError(f"{base}: iteration directory missing (layout.json records iteration {lay.iteration})")
    coord_of = {shard_dirname(c, par): c for c in all_coords(par)}
    problems, notes = [], []
    present = sorted(p.name for p in base.iterdir() if p.is_dir())
    problems += [f"{base / n}: not a shard of tp={par.tp} pp={par.pp} ep={par.ep}"
                 for n in present if n not in coord_of]
    missing = [n for n in coord_of if n not in present]
    if missing:
        raise CheckpointError(f"{base}: shard directories missing for the recorded layout tp={par.tp} pp={par.pp} "
                              f"ep={par.ep}: {', '.join(missing[:8])}")
    stages_layers = stage_layers(lay.cfg.num_layers, par)
    ranges = expert_ranges(lay.cfg.num_experts, par.ep) if lay.cfg.is_moe else []
    stages = [_group(f"stage {i}", pp_rank=i, layers=ls) for i, ls in enumerate(stages_layers)]
    eps = [_group(f"ep {e}", ep_rank=e, experts=[ranges[e]["first"], ranges[e]["last"]] if ranges else None)
           for e in range(par.ep)]
    shards, rows = [], []
    for sname, c in sorted(coord_of.items(), key=lambda kv: (kv[1].pp_rank, kv[1].ep_rank, kv[1].tp_rank)):
        sdir = base / sname
        try:
            wmap = MegatronShard(sdir).weight_map  # checks the index and that its files exist
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{sdir / SHARD_INDEX}: expected JSON with a 'weight_map' object ({exc})") from exc
        head = _headers(sdir, _by_file(wmap))
        group = _group(sname, shard=sname, tp_rank=c.tp_rank, pp_rank=c.pp_rank, ep_rank=c.ep_rank)
        for name in sorted(wmap):
            shape, dtype = head[name]
            nbytes = _numel(shape) * ST_ITEMSIZE.get(dtype, 4)
            row = {"name": name, "shape": shape, "dtype": dtype, "params": _numel(shape), "bytes": nbytes,
                   "shard": sname, "file": wmap[name], "tp_rank": c.tp_rank, "pp_rank": c.pp_rank,
                   "ep_rank": c.ep_rank, "layer": None}
            m = _LAYER.search(name)
            if m is not None:
                local = int(m[1])
                if local >= len(stages_layers[c.pp_rank]):
                    problems.append(f"{sdir}: {name}: local layer {local}, stage {c.pp_rank} holds "
                                    f"{len(stages_layers[c.pp_rank])}")
                else:
                    row["layer"] = stages_layers[c.pp_rank][local]
            rows.append(row)
            for g in (group, stages[c.pp_rank], eps[c.ep_rank]):
                _add(g, row["params"], nbytes)
        shards.append(group)
    if raw is not None and raw.get("tensors") not in (None, len(rows)):
        problems.append(f"{d / LAYOUT}: records {raw['tensors']} tensors, the shards hold {len(rows)}")
    if par.ep > 1:
        notes.append("per EP rank: what each shard stores (dense tensors are stored once per EP rank)")
    return {"format": "legacy", "dir": str(d), "tensors": rows, "totals": {**_totals(rows), "shards": len(shards)},
            "groups": {"shard": shards, "stage": stages, "ep_rank": eps},
            "layout": {"recorded": raw, "tp": par.tp, "pp": par.pp, "ep": par.ep,
                       "stage_layers": [len(s) for s in stages_layers], "iteration": lay.iteration},
            "config": _config_summary(_read_json(d / HF_CONFIG)), "notes": notes, "problems": problems}


# -------------------------------------------------------------------------------------------------- torch_dist

def _inspect_dist(d: Path) -> dict[str, Any]:
    shard = DistShard(d)
    md_all = shard.meta.state_dict_metadata
    saved = _read_json(d / LAYOUT)
    hf_cfg = _read_json(d / HF_CONFIG)
    problems, notes = [], []
    pp, ep = int((saved or {}).get("pp", 1)), int((saved or {}).get("ep", 1))
    counts = (saved or {}).get("stage_layers")
    if counts is not None and len(counts) != pp:
        problems.append(f"{d / LAYOUT}: stage_layers {counts} for pp={pp}; using the even split")
        counts = None
    if counts is None and pp > 1:
        n_layers = (hf_cfg or {}).get("num_hidden_layers")
        if n_layers is None:
            notes.append(f"pp={pp} without stage_layers or {HF_CONFIG}: stages not computed")
            pp = 1
        else:
            counts = even_split(int(n_layers), pp)
    per_layout = pp > 1 or ep > 1
    counts = [int(c) for c in counts] if counts is not None else None
    starts = [sum(counts[:i]) for i in range(len(counts))] if counts is not None else [0]
    stages = [_group(f"stage {i}", pp_rank=i, layers=list(range(starts[i], starts[i] + counts[i])))
              for i in range(pp)] if pp > 1 else []
    n_experts = int((hf_cfg or {}).get("n_routed_experts") or 0)
    ranges = expert_ranges(n_experts, ep) if ep > 1 and n_experts and n_experts % ep == 0 else []
    eps = [_group(f"ep {e}", ep_rank=e, experts=[ranges[e]["first"], ranges[e]["last"]] if ranges else None)
           for e in range(ep)] if ep > 1 else []
    dense = _group("dense (every EP rank)", ep_rank=None, experts=None) if ep > 1 else None
    unplaced = _group("not in a stage", pp_rank=None) if pp > 1 else None
    files: dict[str, dict[str, Any]] = {}
    storage = {}
    for idx, info in shard.meta.storage_data.items():
        storage[(idx.fqn, tuple(idx.offset or ()))] = info
        g = files.setdefault(info.relative_path, _group(info.relative_path, file=info.relative_path, chunks=0))
        g["chunks"] += 1
        g["bytes"] += int(info.length)  # on disk (torch.save framing included): sums to totals["file_bytes"]
    rows, objects = [], []
    for key in sorted(md_all):
        md = md_all[key]
        if not hasattr(md, "chunks"):
            objects.append(key)
            continue
        shape = [int(s) for s in md.size]
        dtype = md.properties.dtype
        params = _numel(shape)
        nbytes = params * dtype.itemsize
        kind = "optimizer" if key.startswith("optimizer.") else "model"
        row = {"name": key, "shape": shape, "dtype": str(dtype).removeprefix("torch."), "params": params,
               "bytes": nbytes, "kind": kind, "chunks": len(md.chunks),
               "experts": shape[0] if _STACKED in key else None, "pp_rank": None}
        if stages:
            s = _stage_of(key, starts, pp)
            row["pp_rank"] = s
            _add(stages[s] if s is not None else unplaced, params, nbytes)
        if eps:
            if _STACKED in key and shape and shape[0] % ep == 0:
                for e in range(ep):
                    _add(eps[e], params // ep, nbytes // ep)
                row["experts_per_ep_rank"] = shape[0] // ep
            else:
                if _STACKED in key:
                    problems.append(f"{key}: {shape[0] if shape else 0} stacked experts do not split over ep={ep}")
                _add(dense, params, nbytes)
        in_files = set()
        for chunk in md.chunks:
            info = storage.get((key, tuple(chunk.offsets)))
            if info is None:
                problems.append(f"{d / DCP_METADATA}: {key}: no storage entry for the chunk at {list(chunk.offsets)}")
                continue
            files[info.relative_path]["params"] += _numel(list(chunk.sizes))
            in_files.add(info.relative_path)
        for f in in_files:
            files[f]["tensors"] += 1
        rows.append(row)
    model = [r for r in rows if r["kind"] == "model"]
    optim = [r for r in rows if r["kind"] == "optimizer"]
    totals = {**_totals(rows), "model": _totals(model), "optimizer": _totals(optim), "objects": len(objects),
              "keys": len(md_all), "files": len(files), "file_bytes": sum(g["bytes"] for g in files.values())}
    groups: dict[str, list[dict[str, Any]]] = {"file": [files[f] for f in sorted(files)]}
    if stages:
        groups["stage"] = stages + ([unplaced] if unplaced["tensors"] else [])
    if eps:
        groups["ep_rank"] = eps + [dense]
    if not per_layout:
        notes.append("global tensors: saved at " + (f"tp={saved.get('tp', 1)} pp=1 ep=1" if saved else
                                                    f"an unknown layout (no {LAYOUT})") + "; any layout loads them")
    else:
        notes.append(f"global tensors; per stage / EP rank as the layout that saved it (pp={pp} ep={ep}) holds them"
                     + ("; stacked expert keys split over EP ranks, the rest under 'dense'" if eps else ""))
    try:
        common = read_common(d)
    except Exception as exc:  # a common.pt with objects weights_only refuses: say so, do not fail
        common = {}
        problems.append(f"{d / 'common.pt'}: not readable with weights_only ({exc})")
    if not isinstance(common, dict):
        common = {}
    trainer = common.get("trainer")
    layout = {"recorded": saved, "pp": pp, "ep": ep, "stage_layers": counts, "global_tensors": True,
              "common": {"keys": sorted(str(k) for k in common), "iteration": _scalar(common.get("iteration")),
                         "trainer": {str(k): _scalar(v) for k, v in trainer.items()} if isinstance(trainer, dict)
                         else None} if common else None}
    if saved is not None and saved.get("keys") not in (None, len(rows)):
        problems.append(f"{d / LAYOUT}: records {saved['keys']} keys, {DCP_METADATA} holds {len(rows)}")
    return {"format": "torch_dist", "dir": str(d), "tensors": rows, "totals": totals, "groups": groups,
            "layout": layout, "config": _config_summary(hf_cfg), "notes": notes, "problems": problems,
            "objects": objects}


# ------------------------------------------------------------------------------------------------------- table

def _h_count(n: int) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _h_bytes(n: int) -> str:
    for unit, div in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


def _shape(s: list[int] | None) -> str:
    return "" if s is None else ("x".join(str(x) for x in s) or "scalar")


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: indent + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _groups_lines(title: str, groups: list[dict[str, Any]], extra: tuple[str, ...] = ()) -> list[str]:
    header = ["", *extra, "tensors", "params", "bytes"]
    rows = []
    for g in groups:
        cells = []
        for k in extra:
            v = g.get(k)
            if isinstance(v, list):
                cells.append("" if not v else str(v[0]) if v[0] == v[-1] else f"{v[0]}-{v[-1]}")
            else:
                cells.append("" if v is None else str(v))
        rows.append([g["label"], *cells, str(g["tensors"]), _h_count(g["params"]), _h_bytes(g["bytes"])])
    return ["", title] + _table(header, rows)


def render_table(report: dict[str, Any], tensors: bool = True) -> str:
    """The human rendering of an :func:`inspect_checkpoint` report (``tensors=False``: totals and layout only)."""
    fmt, t = report["format"], report["totals"]
    out = []
    where = report["dir"] if report["dir"] == report.get("path") else f"{report['dir']}  (from {report.get('path')})"
    cfg = report.get("config") or {}
    if fmt == "hf":
        fp8 = report["layout"]["fp8"]
        kind = (f"FP8 ({fp8['fmt'] or 'e4m3'}, {fp8['weight_block_size'][0]}x{fp8['weight_block_size'][1]} block "
                f"scales on {fp8['tensors']} weights)" if fp8 and fp8["tensors"] else "no FP8 scales")
        out.append(f"HF checkpoint {where}: {t['files']} file(s), {kind}")
    elif fmt == "legacy":
        lay = report["layout"]
        out.append(f"legacy Megatron checkpoint {where}: iteration {lay['iteration']}, tp={lay['tp']} pp={lay['pp']} "
                   f"ep={lay['ep']}, stage layers {lay['stage_layers']}, {t['shards']} shard(s)")
    else:
        lay = report["layout"]
        out.append(f"torch_dist checkpoint {where}: {t['model']['tensors']} model + {t['optimizer']['tensors']} "
                   f"optimizer tensor keys, {t['objects']} object(s), {t['files']} data file(s)")
    if cfg:
        parts = [str(cfg.get("model_type"))]
        if cfg.get("num_hidden_layers") is not None:
            parts.append(f"{cfg['num_hidden_layers']} layers"
                         + (f" ({cfg['first_k_dense_replace']} dense)" if cfg.get("first_k_dense_replace") is not None
                            and cfg.get("n_routed_experts") else ""))
        parts += [f"{k} {cfg[f]}" for k, f in (("hidden", "hidden_size"), ("vocab", "vocab_size")) if f in cfg]
        if cfg.get("n_routed_experts"):
            parts.append(f"{cfg['n_routed_experts']} routed experts (top-{cfg.get('num_experts_per_tok')}) + "
                         f"{cfg.get('n_shared_experts') or 0} shared")
        if cfg.get("num_nextn_predict_layers") is not None:
            parts.append(f"MTP {cfg['num_nextn_predict_layers']}")
        out.append("config: " + ", ".join(parts))
    else:
        out.append("config: none recorded")

    if tensors:
        out.append("")
        out.append("tensors:")
        rows = report["tensors"]
        if fmt == "hf":
            fp8_cols = any(r["scale_shape"] is not None for r in rows)
            header = ["name", "shape", "dtype"] + (["scale_inv"] if fp8_cols else []) + ["params", "file"]
            body = [[r["name"], _shape(r["shape"]), r["dtype"]]
                    + ([_shape(r["scale_shape"]) + (f" {r['scale_dtype']}" if r["scale_dtype"] else "")]
                       if fp8_cols else [])
                    + [_h_count(r["params"]), r["file"]] for r in rows]
            out += _table(header, body)
        elif fmt == "legacy":
            for g in report["groups"]["shard"]:
                out.append(f"  {g['shard']}  (tp {g['tp_rank']}, stage {g['pp_rank']}, ep {g['ep_rank']})")
                body = [[r["name"], _shape(r["shape"]), r["dtype"], "" if r["layer"] is None else str(r["layer"]),
                         _h_count(r["params"]), r["file"]] for r in rows if r["shard"] == g["shard"]]
                out += _table(["name", "shape", "dtype", "layer", "params", "file"], body, indent="    ")
        else:
            staged = "stage" in report["groups"]
            header = ["name", "shape", "dtype", "chunks"] + (["stage"] if staged else []) + ["params"]
            body = [[r["name"], _shape(r["shape"]), r["dtype"], str(r["chunks"])]
                    + (["" if r["pp_rank"] is None else str(r["pp_rank"])] if staged else [])
                    + [_h_count(r["params"])] for r in rows]
            out += _table(header, body)

    out.append("")
    if fmt == "torch_dist":
        out.append(f"totals: {t['tensors']} tensor keys ({t['model']['tensors']} model, "
                   f"{_h_count(t['model']['params'])} params; {t['optimizer']['tensors']} optimizer, "
                   f"{_h_count(t['optimizer']['params'])} values), "
                   f"{_h_bytes(t['bytes'])} ({_h_bytes(t['file_bytes'])} in data files)")
    elif fmt == "hf":
        out.append(f"totals: {t['tensors']} tensors + {t['scales']} scales = {t['keys']} keys, "
                   f"{_h_count(t['params'])} params, {_h_bytes(t['bytes'])}")
    else:
        out.append(f"totals: {t['tensors']} tensors in {t['shards']} shard(s), {_h_count(t['params'])} params "
                   f"stored, {_h_bytes(t['bytes'])}")
    groups = report["groups"]
    if "stage" in groups:
        out += _groups_lines("per pipeline stage:", groups["stage"], ("layers",))
    if "ep_rank" in groups:
        out += _groups_lines("per EP rank:", groups["ep_rank"], ("experts",))
    if fmt == "legacy":
        out += _groups_lines("per shard:", groups["shard"])
    if "file" in groups:
        out += _groups_lines("per file:", groups["file"], ("chunks",) if fmt == "torch_dist" else ())

    out += ["", "layout:"]
    lay = report["layout"]
    recorded = lay.get("recorded") if fmt != "hf" else lay
    if recorded is None:
        out.append(f"  no {LAYOUT} recorded")
    else:
        for k in sorted(recorded):
            v = recorded[k]
            text = json.dumps(v, sort_keys=True)
            out.append(f"  {k}: {text if len(text) <= 100 else text[:97] + '...'}")
    if fmt == "torch_dist" and lay.get("common"):
        c = lay["common"]
        out.append(f"  common.pt: keys {c['keys']}" + (f", trainer {json.dumps(c['trainer'], sort_keys=True)}"
                                                       if c.get("trainer") else ""))
    if cfg.get("quantization_config"):
        out.append(f"  config quantization_config: {json.dumps(cfg['quantization_config'], sort_keys=True)}")
    for n in report.get("notes", []):
        out.append(f"note: {n}")
    for pr in report.get("problems", []):
        out.append(f"PROBLEM: {pr}")
    return "\n".join(out)
