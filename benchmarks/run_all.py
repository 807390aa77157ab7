"""Run every benchmark, collect its figures, and write ``benchmarks/results.json`` and the generated block of
``benchmarks/RESULTS.md`` (``make bench``; ``make bench-gpu`` = ``--gpu``).

    python benchmarks/run_all.py [--only NAME,...] [--usd-per-gpu-s X] [--results-md PATH] [--results-json PATH]
    python benchmarks/run_all.py --gpu [--deadline-s 470] [...]

Each benchmark is a script whose last stdout line is one JSON object with its figures (its human tables come
before; they are echoed here as it runs). ``BENCHMARKS`` (CPU, the default) and ``GPU_BENCHMARKS`` (``--gpu``)
are the lists, as data: a name, the argv, which figures are the ratios (dotted paths into the JSON: ours,
baseline, unit) and, for the labeling benchmark, which rows form the cost table (AdNanny Table 10 form). Both
sides of every ratio come from the same benchmark process, seconds apart.

Writes, each through a temporary file and a rename:

- ``--results-json`` (default ``benchmarks/results.json``; ``results_gpu.json`` with ``--gpu``): the machine
  (CPU model, cores, RAM, GPU, load average), the versions (python, torch, megatron-core, transformers), the
  date, the git commit, and per benchmark its command, exit code, wall time, date and figures. ``--only`` reruns
  some benchmarks and keeps the others' entries from the existing file (the block names their dates);
- ``--results-md`` (default ``benchmarks/RESULTS.md``): only the block between ``<!-- make bench: begin -->``
  and ``<!-- make bench: end -->`` (``make bench-gpu`` for ``--gpu``), inserted after the title when absent
  (the GPU block after the CPU block when that one is there); every byte outside the block stays as it was.

A benchmark that fails (non-zero exit, a timeout, or no JSON last line) is reported as failed in the block
and in the JSON, the others still run, and this script exits 1 at the end. ``--gpu`` on a machine without
CUDA prints "no CUDA device: GPU benchmarks skipped" and exits 0 without writing anything; with CUDA the
whole subset keeps to ``--deadline-s`` (default 470 s: ``make bench-gpu`` within 8 minutes on one H100/H200).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
TITLE = "# Benchmark and GPU results"

PAPER_USD_PER_GPU_S = 0.0027
"""AdNanny Table 10's GPU cost ($/s, $9.72 per GPU-hour): the default price of the labeling cost table."""

PAPER_TABLE10 = [  # AdNanny Table 10 (FP8 inference cluster), for reference next to our rows
    {"mode": "AdNanny label only (paper, Table 10)", "avg_input_tokens": 1654, "avg_output_tokens": 21,
     "usd_per_gpu_s": 0.0027, "samples_per_s": 20.22, "usd_per_1m_samples": 134},
    {"mode": "AdNanny label + reasoning (paper, Table 10)", "avg_input_tokens": 1654, "avg_output_tokens": 279,
     "usd_per_gpu_s": 0.0027, "samples_per_s": 8.79, "usd_per_1m_samples": 307},
]


@dataclass(frozen=True)
class Ratio:
    """One row of the ratio table: ``ours`` / ``baseline`` (dotted paths into the benchmark's JSON figures).

    ``baseline`` None: a figure without a baseline (the ratio column stays empty)."""

    name: str
    ours: str
    baseline: str | None
    unit: str


@dataclass(frozen=True)
class CostRow:
    """One row of the labeling cost table: ``path`` points at a dict with avg_input_tokens, avg_output_tokens,
    usd_per_gpu_s, samples_per_s, usd_per_1m_samples."""

    name: str
    path: str


@dataclass(frozen=True)
class Bench:
    name: str
    argv: tuple[str, ...]
    """Script and arguments, run as ``sys.executable *argv`` from the repository root."""
    ratios: tuple[Ratio, ...] = ()
    cost: tuple[CostRow, ...] = ()
    timeout_s: float = 1800.0
    price_arg: bool = False
    """Whether the script takes ``--usd-per-gpu-s`` (the runner passes its own)."""

    def command(self, usd_per_gpu_s: float | None = None) -> list[str]:
        extra = ["--usd-per-gpu-s", repr(usd_per_gpu_s)] if self.price_arg and usd_per_gpu_s is not None else []
        return [*self.argv, *extra]


def _label_ratios(flavor: str, ours_cache: str) -> tuple[Ratio, ...]:
    lj, gen = f"flavors.{flavor}.label_job", f"flavors.{flavor}.generation"
    return (
        Ratio(f"label-only scoring vs generate-based labeling (reasoning mode), {flavor}, {ours_cache} cache",
              f"{lj}.label.samples_per_s", f"{lj}.reasoning_{ours_cache}.samples_per_s", "samples/s"),
        Ratio(f"KV-cache generation ({ours_cache}) vs transformers generate, {flavor}, equal prompts",
              f"{gen}.equal.{ours_cache}_tokens_per_s", f"{gen}.equal.transformers_tokens_per_s", "tokens/s"),
        Ratio(f"KV-cache generation ({ours_cache}) vs transformers generate, {flavor}, ragged prompts",
              f"{gen}.ragged.{ours_cache}_tokens_per_s", f"{gen}.ragged.transformers_tokens_per_s", "tokens/s"),
    )


def _label_cost(flavor: str) -> tuple[CostRow, ...]:
    return (CostRow(f"{flavor}, label only", f"flavors.{flavor}.cost_table.0"),
            CostRow(f"{flavor}, label + reasoning", f"flavors.{flavor}.cost_table.1"))


BENCHMARKS: list[Bench] = [
    Bench("convert", ("benchmarks/convert.py", "--gb", "2"), ratios=(
        Ratio("checkpoint conversion HF→Megatron (pp=2, 2.2 GB) vs plain copy of the shards, throughput",
              "convert_mb_per_s", "copy_mb_per_s", "MB/s"),
        Ratio("checkpoint conversion peak RSS growth vs the checkpoint's size (budget 512 MB)",
              "rss_growth_mb", "checkpoint_mb", "MiB"),
    )),
    Bench("train", ("benchmarks/train.py",), ratios=(
        Ratio("trainer (megatron-core, tiny DeepSeek-V3, fp32) vs an HF/transformers training loop",
              "ours_tokens_per_s", "hf_tokens_per_s", "tokens/s"),
    )),
    Bench("memory", ("benchmarks/memory.py",), ratios=(
        Ratio("peak training memory per rank, measured (RSS growth; ~100M-param Llama, fp32) vs the planner's "
              "estimate (target within 15%)", "measured_gb.total", "planner_gb.total", "GB"),
    )),
    Bench("label", ("benchmarks/label.py", "--repeat", "2", "--threads", "1"),
          ratios=_label_ratios("tiny_deepseek_v3", "latent") + _label_ratios("tiny_llama", "kv"),
          cost=_label_cost("tiny_deepseek_v3") + _label_cost("tiny_llama"), price_arg=True),
    Bench("fp8_gemm", ("benchmarks/fp8_gemm.py",), ratios=(
        Ratio("FP8 reference path (weights dequantized at load) vs bf16 matmul, CPU, S=512",
              "cpu.reference_gflops", "cpu.bf16_gflops", "GFLOP/s"),
        Ratio("FP8 emulated block-scaled GEMM (fp8_gemm_ref) vs bf16 matmul, CPU, S=512",
              "cpu.emulated_gflops", "cpu.bf16_gflops", "GFLOP/s"),
    )),
    Bench("grpo_speed", ("benchmarks/grpo_speed.py", "--steps", "8"), ratios=(
        Ratio("GRPO rollout (tiny DeepSeek-V3, 8 rollouts x 48 new tokens per step)", "rollout_tokens_per_s",
              None, "tokens/s"),
        Ratio("GRPO train (policy + reference log-probs, loss, optimizer; batch x seq_len)", "train_tokens_per_s",
              None, "tokens/s"),
    )),
]


def _fp8_cuda_ratios(size: int) -> tuple[Ratio, ...]:
    return (Ratio(f"FP8 block-scaled GEMM, Triton, vs torch bf16 matmul, S={size}", f"sizes.{size}.triton_tflops",
                  f"sizes.{size}.bf16_tflops", "TFLOP/s"),
            Ratio(f"FP8 block-scaled GEMM, torch scaled_mm blockwise, vs bf16 matmul, S={size}",
                  f"sizes.{size}.scaled_mm_tflops", f"sizes.{size}.bf16_tflops", "TFLOP/s"))


GPU_BENCHMARKS: list[Bench] = [
    Bench("fp8_gemm", ("benchmarks/fp8_gemm.py", "--sizes", "4096,8192", "--repeat", "20"),
          ratios=_fp8_cuda_ratios(4096) + _fp8_cuda_ratios(8192), timeout_s=120),
    Bench("train_llama_1b", ("benchmarks/train.py", "--flavor", "llama_1b", "--dtype", "bf16", "--seq-len", "2048",
                             "--micro-batch", "4", "--steps", "12"), ratios=(
        Ratio("trainer vs HF/transformers loop, ~1B dense llama, bf16, seq 2048 x 4", "ours_tokens_per_s",
              "hf_tokens_per_s", "tokens/s"),
        Ratio("MFU, trainer vs HF/transformers loop, ~1B dense llama", "ours_mfu", "hf_mfu", "MFU"),
    ), timeout_s=240),
    Bench("label", ("benchmarks/label.py", "--repeat", "1"),
          ratios=_label_ratios("tiny_deepseek_v3", "latent") + _label_ratios("tiny_llama", "kv"),
          cost=_label_cost("tiny_deepseek_v3") + _label_cost("tiny_llama"), price_arg=True, timeout_s=180),
]


# ---------------------------------------------------------------------------------------------- figures

def lookup(figures: Any, path: str) -> Any:
    """``figures`` at the dotted ``path`` (dict keys; list indices as integers), or None where absent."""
    cur = figures
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def ratio_rows(bench: Bench, result: dict, usd_per_gpu_s: float | None = None) -> list[dict]:
    """The ratio table's rows of one benchmark's result (``status`` failed: one row saying so)."""
    cmd = "python " + shlex.join(bench.command(usd_per_gpu_s))
    if result["status"] != "ok":
        return [{"name": r.name, "ours": None, "baseline": None, "ratio": None, "unit": r.unit, "command": cmd,
                 "benchmark": bench.name, "status": result["status"], "rc": result["rc"]} for r in bench.ratios]
    rows = []
    for r in bench.ratios:
        ours = _num(lookup(result["figures"], r.ours))
        base = _num(lookup(result["figures"], r.baseline)) if r.baseline else None
        ratio = ours / base if ours is not None and base else None
        rows.append({"name": r.name, "ours": ours, "baseline": base, "ratio": ratio, "unit": r.unit, "command": cmd,
                     "benchmark": bench.name, "status": "ok" if ours is not None else "missing", "rc": result["rc"]})
    return rows


def cost_rows(bench: Bench, result: dict) -> list[dict]:
    if result["status"] != "ok":
        return []
    out = []
    for c in bench.cost:
        row = lookup(result["figures"], c.path)
        if isinstance(row, dict):
            out.append({"mode": c.name + (f" ({row['cache']} cache)" if row.get("cache") else ""),
                        **{k: row.get(k) for k in ("avg_input_tokens", "avg_output_tokens", "usd_per_gpu_s",
                                                   "samples_per_s", "usd_per_1m_samples")}})
    return out


# ---------------------------------------------------------------------------------------------- running

def _tail(text: str, n: int = 20) -> str:
    return "\n".join(text.splitlines()[-n:])


def run_bench(bench: Bench, usd_per_gpu_s: float | None, timeout_s: float, echo: bool = True) -> dict:
    """Run one benchmark (stdout echoed as it comes); its figures are its last stdout line, parsed as JSON."""
    argv = [sys.executable, *bench.command(usd_per_gpu_s)]
    if echo:
        print(f"== {bench.name}: python {shlex.join(bench.command(usd_per_gpu_s))}", flush=True)
    t0 = time.time()
    with tempfile.TemporaryFile(mode="w+") as err:
        p = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the benchmark and the processes it started, only
            except ProcessLookupError:
                pass

        timer = threading.Timer(max(timeout_s, 1.0), kill)
        timer.start()
        lines = []
        try:
            assert p.stdout is not None
            for line in p.stdout:
                lines.append(line)
                if echo:
                    print("   " + line.rstrip("\n")[:400], flush=True)
            rc = p.wait()
        finally:
            timer.cancel()
            if p.poll() is None:  # interrupted here (Ctrl-C): its own session would outlive us
                kill()
                p.wait()
        err.seek(0)
        stderr = err.read()
    wall = time.time() - t0
    res: dict[str, Any] = {"name": bench.name, "command": "python " + shlex.join(bench.command(usd_per_gpu_s)),
                           "rc": rc, "wall_s": round(wall, 1), "figures": None}
    last = next((x.strip() for x in reversed(lines) if x.strip()), "")
    if timed_out.is_set():
        res.update(status="timeout", error=f"killed after {timeout_s:.0f} s", stderr_tail=_tail(stderr))
    elif rc != 0:
        res.update(status="failed", error=f"exit code {rc}", stderr_tail=_tail(stderr))
    else:
        try:
            figures = json.loads(last)
            if not isinstance(figures, dict):
                raise ValueError("not a JSON object")
            res.update(status="ok", figures=figures)
        except ValueError as exc:
            res.update(status="failed", error=f"last stdout line is not a JSON object ({exc})",
                       stderr_tail=_tail(stderr))
    if echo:
        state = "ok" if res["status"] == "ok" else f"{res['status'].upper()} ({res['error']})"
        print(f"== {bench.name}: {state} in {wall:.0f} s", flush=True)
        if res["status"] != "ok" and res.get("stderr_tail"):
            print(res["stderr_tail"], file=sys.stderr, flush=True)
    return res


# ---------------------------------------------------------------------------------------------- environment

def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a description only
        gpu = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": ram_gib, "gpu": gpu, "os": platform.platform(),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("megatron-core", "megatron-core"), ("transformers", "transformers")):
        try:
            out[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[key] = None
    return out


def git_info() -> dict:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


# ---------------------------------------------------------------------------------------------- writing

def markers(suite: str) -> tuple[str, str]:
    return f"<!-- {suite}: begin -->", f"<!-- {suite}: end -->"


def replace_block(text: str, block: str, suite: str = "make bench", after: str | None = None) -> str:
    """``text`` with the lines between ``suite``'s markers replaced by ``block`` (markers included in the result).

    Without the markers, the marked block is inserted after the end marker of ``after``'s block when that is
    there, else after the title (the first ``# `` line), else at the top; one newline follows the inserted
    block, so everything outside the markers is ``text`` as it was."""
    begin, end = markers(suite)
    body = block if block.endswith("\n") else block + "\n"
    marked = f"{begin}\n{body}{end}\n"
    i = text.find(begin)
    if i >= 0:
        j = text.find(end, i)
        if j < 0:
            raise ValueError(f"{begin} without {end}")
        j += len(end)
        if text[j:j + 1] == "\n":
            j += 1
        return text[:i] + marked + text[j:]
    pos = None
    if after is not None:
        k = text.find(markers(after)[1])
        if k >= 0:
            pos = text.find("\n", k)
            pos = len(text) if pos < 0 else pos + 1
    if pos is None:
        pos, offset = 0, 0
        for line in text.splitlines(keepends=True):
            offset += len(line)
            if line.startswith("# "):
                pos = offset
                if not line.endswith("\n"):  # a file of the title alone, without its newline
                    text, pos = text + "\n", pos + 1
                break
    return text[:pos] + "\n" + marked + text[pos:]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fmt(x: float | None) -> str:
    if x is None:
        return "—"
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _wall(s: float) -> str:
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec} s" if m else f"{sec} s"


def render_block(report: dict, suite: str) -> str:
    m, v, g = report["machine"], report["versions"], report["git"]
    gpu = ", ".join(m["gpu"]) if m.get("gpu") else "no GPU"
    commit = (g["commit"] or "unknown")[:12] + (" + uncommitted changes" if g.get("dirty") else "")
    lines = [f"## `{suite}` — generated {report['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {gpu}; load average "
             f"{m['load_average']} at the start, {report.get('load_average_end')} at the end. "
             f"Python {v['python']}, torch {v['torch']}, megatron-core {v['megatron-core']}, "
             f"transformers {v['transformers']}. Commit {commit}. Wall time {_wall(report['wall_s'])}. "
             f"Written by `benchmarks/run_all.py` (all figures: `{report['results_json']}`); both sides of each "
             "ratio are measured in the same benchmark process, seconds apart. Ratio = ours / baseline "
             "(throughputs: > 1 is faster than the baseline).", "",
             "| figure | ours | baseline | ratio | unit | command |", "|---|---|---|---|---|---|"]
    for r in report["ratios"]:
        if r["status"] in ("ok", "missing"):
            ours = fmt(r["ours"]) if r["status"] == "ok" else "missing"
            ratio = f"**{r['ratio']:.2f}**" if r["ratio"] is not None else "—"
            lines.append(f"| {r['name']} | {ours} | {fmt(r['baseline'])} | {ratio} | {r['unit']} | "
                         f"`{r['command']}` |")
        else:
            what = f"exit code {r['rc']}" if r["status"] == "failed" and r["rc"] else r["status"]
            lines.append(f"| {r['name']} | **FAILED** ({what}) | — | — | {r['unit']} | `{r['command']}` |")
    if report["cost"]:
        lines += ["", f"Labeling cost, AdNanny Table 10 form: $ per 1M samples = $/GPU-s × 1 device ÷ samples/s, "
                  f"at {report['usd_per_gpu_s']} $/GPU-s (default: Table 10's GPU cost, $9.72 per GPU-hour; "
                  "`--usd-per-gpu-s`). Random-weight tiny models, synthetic query–ad rows, reasoning capped at "
                  "Table 10's 279 output tokens" + ("; on a CPU machine the price is applied to CPU seconds, "
                                                    "an illustration, not a cost" if not m.get("gpu") else "") + ".",
                  "", "| mode | avg input tokens | avg output tokens | $/GPU-s | samples/s | $ / 1M samples |",
                  "|---|---|---|---|---|---|"]
        for c in report["cost"] + PAPER_TABLE10:
            lines.append(f"| {c['mode']} | {fmt(_num(c['avg_input_tokens']))} | {fmt(_num(c['avg_output_tokens']))} "
                         f"| {c['usd_per_gpu_s']} | {fmt(_num(c['samples_per_s']))} | "
                         f"{fmt(_num(c['usd_per_1m_samples']))} |")
    lines += ["", "Benchmarks: " + "; ".join(
        f"{b['name']} {'ok' if b['status'] == 'ok' else '**' + b['status'].upper() + '** (' + b['error'] + ')'} "
        f"{_wall(b['wall_s'])}" + (f" (run {b['date']})" if b.get("date", report["date"]) != report["date"] else "")
        for b in report["benchmarks"]) + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- main

def merge_previous(every: list[Bench], ran: list[Bench], results: list[dict], results_json: Path,
                   suite: str) -> tuple[list[Bench], list[dict]]:
    """``--only``: this run's results plus, for every other benchmark of the suite, its entry in the existing
    ``results_json`` (same suite; each keeps its own ``date``), in the suite's order."""
    previous: dict[str, dict] = {}
    if results_json.is_file():
        try:
            old = json.loads(results_json.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            print(f"--only: {results_json} is not readable JSON ({exc}); writing this run's benchmarks alone",
                  file=sys.stderr)
            old = {}
        if old.get("suite") == suite:
            previous = {b["name"]: {**{k: v for k, v in b.items() if k != "argv"}, "date": b.get("date", old["date"])}
                        for b in old.get("benchmarks", [])}
    now = {b.name: r for b, r in zip(ran, results)}
    pairs = [(b, now.get(b.name, previous.get(b.name))) for b in every]
    pairs = [(b, r) for b, r in pairs if r is not None]
    return [b for b, _ in pairs], [r for _, r in pairs]


def main(argv: list[str] | None = None, benchmarks: list[Bench] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="the GPU subset (make bench-gpu); skipped without CUDA")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names")
    ap.add_argument("--usd-per-gpu-s", type=float, default=PAPER_USD_PER_GPU_S,
                    help="$ per GPU-second for the labeling cost table (default %(default)s: AdNanny Table 10)")
    ap.add_argument("--results-md", default=str(BENCH_DIR / "RESULTS.md"))
    ap.add_argument("--results-json", default=None,
                    help="default benchmarks/results.json (results_gpu.json with --gpu)")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="wall-clock budget of the whole run (default: 470 with --gpu, none otherwise)")
    args = ap.parse_args(argv)
    suite = "make bench-gpu" if args.gpu else "make bench"
    if args.gpu and benchmarks is None:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: GPU benchmarks skipped")
            return 0
    every = list(benchmarks if benchmarks is not None else (GPU_BENCHMARKS if args.gpu else BENCHMARKS))
    benches = every
    if args.only:
        wanted = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(wanted) - {b.name for b in benches})
        if unknown:
            ap.error(f"--only: unknown benchmark(s) {unknown}; known: {[b.name for b in benches]}")
        benches = [b for b in benches if b.name in wanted]
    deadline_s = args.deadline_s if args.deadline_s is not None else (470.0 if args.gpu else None)
    results_json = Path(args.results_json or BENCH_DIR / ("results_gpu.json" if args.gpu else "results.json"))
    results_md = Path(args.results_md)

    t0 = time.time()
    report: dict[str, Any] = {
        "suite": suite, "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(), "versions": versions(), "git": git_info(), "usd_per_gpu_s": args.usd_per_gpu_s,
        "results_json": str(results_json.resolve().relative_to(REPO) if results_json.resolve().is_relative_to(REPO)
                            else results_json)}
    results = []
    for b in benches:
        left = None if deadline_s is None else deadline_s - (time.time() - t0)
        if left is not None and left < 5:
            results.append({"name": b.name, "command": "python " + shlex.join(b.command(args.usd_per_gpu_s)),
                            "rc": None, "wall_s": 0.0, "figures": None, "status": "skipped",
                            "error": f"no time left of --deadline-s {deadline_s:.0f}"})
            continue
        results.append(run_bench(b, args.usd_per_gpu_s, b.timeout_s if left is None else min(b.timeout_s, left)))
    report["wall_s"] = round(time.time() - t0, 1)
    report["load_average_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    for r in results:
        r["date"] = report["date"]
    fresh = list(results)
    if args.only:  # the other benchmarks keep their figures from the results file's earlier run
        benches, results = merge_previous(every, benches, results, results_json, suite)
    report["benchmarks"] = [{**r, "argv": list(b.command(args.usd_per_gpu_s))} for b, r in zip(benches, results)]
    report["ratios"] = [row for b, r in zip(benches, results) for row in ratio_rows(b, r, args.usd_per_gpu_s)]
    report["cost"] = [row for b, r in zip(benches, results) for row in cost_rows(b, r)]

    write_atomic(results_json, json.dumps(report, indent=2) + "\n")
    text = results_md.read_text(encoding="utf-8") if results_md.exists() else TITLE + "\n"
    new = replace_block(text, render_block(report, suite), suite, after="make bench" if args.gpu else None)
    write_atomic(results_md, new)
    failed = [r for r in fresh if r["status"] != "ok"]  # this run's; kept entries were reported when they ran
    print(f"wrote {results_json} and the `{suite}` block of {results_md} in {_wall(report['wall_s'])}")
    if failed:
        print("FAILED: " + ", ".join(f"{r['name']} ({r['error']})" for r in failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
