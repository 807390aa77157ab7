"""Pipeline stage assignment: which main-model layers each stage holds.

Embedding sits on the first stage; final norm, output layer (and MTP) on the last.
"""

from __future__ import annotations

from megatron_ads.config.parallel import ParallelConfig


def even_split(num_layers: int, pp: int) -> list[int]:
    """Near-even layer counts; the remainder goes to the later stages (the first holds the embedding)."""
    if pp > num_layers:
        raise ValueError(f"pp: {pp} pipeline stages for {num_layers} layers; each stage needs at least one layer")
    base, rem = divmod(num_layers, pp)
    return [base + (1 if i >= pp - rem else 0) for i in range(pp)]


def stage_layer_counts(num_layers: int, par: ParallelConfig) -> list[int]:
    """Layers per stage for ``par`` (explicit ``stage_layers`` or the even split)."""
    counts = par.stage_layers if par.stage_layers is not None else even_split(num_layers, par.pp)
    if sum(counts) != num_layers:
        raise ValueError(f"stage_layers: {counts} sums to {sum(counts)}, the model has {num_layers} layers")
    return list(counts)


def stage_layers(num_layers: int, par: ParallelConfig) -> list[list[int]]:
    """Global layer indices held by each stage, in order."""
    out, start = [], 0
    for n in stage_layer_counts(num_layers, par):
        out.append(list(range(start, start + n)))
        start += n
    return out


def megatron_layout(num_layers: int, par: ParallelConfig, mtp_layers: int = 0) -> list[list[str]]:
    """megatron-core ``pipeline_model_parallel_layout`` (one list of layer types per stage)."""
    stages = []
    counts = stage_layer_counts(num_layers, par)
    for i, n in enumerate(counts):
        row = (["embedding"] if i == 0 else []) + ["decoder"] * n
        if i == len(counts) - 1:
            row += ["mtp"] * mtp_layers + ["loss"]
        stages.append(row)
    return stages
