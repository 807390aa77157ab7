"""ParallelConfig: the parallel sizes (and optional explicit pipeline split) a model is built for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True, slots=True)
class ParallelConfig:
    """Tensor/pipeline/expert parallel sizes; data parallel is whatever the world leaves."""

    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    ep: int = 1
    """Expert-parallel size."""
    stage_layers: list[int] | None = None
    """Main-model layers per pipeline stage (len == pp, sum == num_layers); None: near-even split."""

    def __post_init__(self):
        for name in ("tp", "pp", "ep"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.stage_layers is not None:
            if len(self.stage_layers) != self.pp:
                raise ValueError(f"stage_layers: expected {self.pp} entries (one per pipeline stage), "
                                 f"got {len(self.stage_layers)}")
            if any(n < 0 for n in self.stage_layers):
                raise ValueError(f"stage_layers: counts must be >= 0, got {self.stage_layers}")

    @property
    def model_parallel_size(self) -> int:
        return self.tp * self.pp
