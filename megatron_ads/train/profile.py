"""``train.profile_steps``: ``torch.profiler`` over a window of optimizer steps, written per rank.

``<out>/profile/rank<r>.txt``: the trainer's phases (``ads::<phase>`` ranges: forward-backward, optimizer,
loss-report, moe-load, stop-check, step-log, ...) per step, then the op table sorted by self time;
``rank<r>.json``: the phases as numbers (ms per step); ``rank<r>.trace.json``: the Chrome trace
(chrome://tracing, Perfetto). A run that ends inside the window writes what it has.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from megatron_ads.runtime.io import atomic_path, write_json, write_text
from megatron_ads.runtime.log import get_logger

log = get_logger(__name__)
PHASE_PREFIX = "ads::"


class StepProfiler:
    """Profiles optimizer steps ``first..last`` (1-based) of one rank; ``phase(name)`` marks a trainer phase
    (a no-op outside the window)."""

    def __init__(self, steps: list[int] | None, out_dir: Path, rank: int, cuda: bool):
        self.window = steps
        self.dir = Path(out_dir) / "profile"
        self.rank = rank
        self.cuda = cuda
        self.prof: torch.profiler.profile | None = None
        self.profiled = 0

    def phase(self, name: str):
        """Context manager: a named range in the profile while the window is open."""
        return torch.profiler.record_function(PHASE_PREFIX + name) if self.prof is not None else nullcontext()

    @contextmanager
    def step(self, number: int):
        """Wraps optimizer step ``number`` (1-based): opens the window at ``first``, closes it after ``last``."""
        if self.window is not None and number == self.window[0] and self.prof is None:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if self.cuda:
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
        with self.phase("step"):
            yield
        if self.prof is not None:
            self.profiled += 1
            if number >= self.window[1]:
                self.close()

    def close(self) -> Path | None:
        """Stops an open window and writes its files; returns the table's path (None when nothing was open)."""
        if self.prof is None:
            return None
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        self.dir.mkdir(parents=True, exist_ok=True)
        steps = max(self.profiled, 1)
        averages = prof.key_averages()
        time_attr = "device_time_total" if self.cuda else "cpu_time_total"
        phases = {e.key[len(PHASE_PREFIX):]: getattr(e, time_attr) / 1e3 / steps
                  for e in averages if e.key.startswith(PHASE_PREFIX)}
        summary = {"rank": self.rank, "steps": self.window, "profiled_steps": self.profiled,
                   "device": "cuda" if self.cuda else "cpu", "ms_per_step": dict(sorted(phases.items()))}
        sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
        lines = [f"torch.profiler, rank {self.rank}, optimizer steps {self.window[0]}..{self.window[1]} "
                 f"({self.profiled} profiled)", "", "trainer phases (ms per step, inclusive):"]
        lines += [f"  {k:<20} {v:10.2f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
        lines += ["", f"ops by {sort} (all profiled steps):",
                  averages.table(sort_by=sort, row_limit=40, max_name_column_width=60)]
        table = self.dir / f"rank{self.rank}.txt"
        write_text(table, "\n".join(lines) + "\n")
        write_json(self.dir / f"rank{self.rank}.json", summary)
        with atomic_path(self.dir / f"rank{self.rank}.trace.json") as tmp:
            prof.export_chrome_trace(str(tmp))
        if self.rank == 0:
            log.info("profile of steps %d..%d written to %s", self.window[0], self.window[1], self.dir)
        return table
