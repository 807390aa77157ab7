"""FP8 block-scaled GEMM throughput: Triton and torch._scaled_mm blockwise vs torch bf16 matmul.

    python benchmarks/fp8_gemm.py [--sizes 4096,8192] [--repeat 20] [--json]

On CUDA, for each size S (M = N = K = S): ``y = x @ W^T`` with W as e4m3 codes + 128x128 block scales,
activations quantized per token per 128 channels inside the timed call (as in inference):

- ``triton``: ``kernels.fp8_triton.fp8_gemm_triton`` (act-quant kernel + block-scaled GEMM);
- ``scaled_mm``: ``torch.nn.functional.scaled_mm`` with BlockWise1x128 x BlockWise128x128 scales
  (skipped, with the probe's reason, where cuBLAS's blockwise call is not supported);
- ``bf16``: ``torch.matmul`` of bf16 x and a bf16 W (the baseline).

TFLOP/s = 2 S^3 / time (CUDA events, median of ``--repeat`` after warm-up) and the ratio to bf16
(issue 13 target >= 1.6x at 4096 and 8192), plus the relative error of each FP8 result vs
``kernels.fp8.fp8_gemm_ref``.

On CPU the GPU figures are pending: it prints so, then a small sanity ratio of the reference path
(``FP8LinearReference``: weights dequantized at load, bf16 matmul) and of the emulated block-scaled
GEMM (``fp8_gemm_ref``) against a bf16 matmul at S = 512. Nothing is asserted.

The last line printed is one JSON object (``--json``: only that line): on CUDA ``{"device", "sizes": {"4096":
{bf16_tflops, triton_tflops, triton_vs_bf16, scaled_mm_tflops, scaled_mm_vs_bf16, ...}, ...}}``; on CPU
``{"device": "cpu", "cpu": {size, bf16_gflops, reference_gflops, emulated_gflops, reference_vs_bf16,
emulated_vs_bf16}}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def _cuda_time(fn, repeat: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def _cpu_time(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_cuda(sizes: list[int], repeat: int) -> list[dict]:
    from megatron_ads._compat import HAVE_TRITON
    from megatron_ads.kernels.fp8 import block_quant, fp8_gemm_ref
    from megatron_ads.kernels.fp8_linear import _probe, _scaled_mm_blockwise

    dev = torch.device("cuda", torch.cuda.current_device())
    ok, pad_k, why = _probe(str(dev))
    rows = []
    for s in sizes:
        g = torch.Generator(device="cpu").manual_seed(s)
        x = torch.randn(s, s, generator=g).to(dev, torch.bfloat16)
        w = (torch.randn(s, s, generator=g) * 0.05).to(dev)
        q, sc = block_quant(w)
        w16 = w.to(torch.bfloat16)
        flops = 2.0 * s ** 3
        row = {"size": s, "device": torch.cuda.get_device_name(dev)}
        t = _cuda_time(lambda: torch.matmul(x, w16.t()), repeat)
        row["bf16_tflops"] = flops / t / 1e12
        ref = fp8_gemm_ref(x[:256], q, sc, out_dtype=torch.float32)  # error check on 256 rows
        if HAVE_TRITON:
            from megatron_ads.kernels.fp8_triton import fp8_gemm_triton

            t = _cuda_time(lambda: fp8_gemm_triton(x, q, sc), repeat)
            row["triton_tflops"] = flops / t / 1e12
            row["triton_vs_bf16"] = row["triton_tflops"] / row["bf16_tflops"]
            y = fp8_gemm_triton(x[:256], q, sc, out_dtype=torch.float32)
            row["triton_rel_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
        else:
            row["triton"] = "triton not installed"
        if ok:
            t = _cuda_time(lambda: _scaled_mm_blockwise(x, q, sc, torch.bfloat16, pad_k), repeat)
            row["scaled_mm_tflops"] = flops / t / 1e12
            row["scaled_mm_vs_bf16"] = row["scaled_mm_tflops"] / row["bf16_tflops"]
            y = _scaled_mm_blockwise(x[:256], q, sc, torch.float32, pad_k)
            row["scaled_mm_rel_err"] = ((y - ref).abs().max() / ref.abs().max()).item()
        else:
            row["scaled_mm"] = f"unsupported: {why}"
        rows.append(row)
    return rows


def bench_cpu(repeat: int, size: int = 512) -> dict:
    from megatron_ads.kernels.fp8 import block_dequant, block_quant, fp8_gemm_ref

    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, size, generator=g).to(torch.bfloat16)
    q, sc = block_quant(torch.randn(size, size, generator=g) * 0.05)
    w_deq = block_dequant(q, sc)  # the reference backend's weight (dequantized once at load)
    w16 = w_deq.clone()
    t_bf16 = _cpu_time(lambda: torch.matmul(x, w16.t()), repeat)
    t_ref = _cpu_time(lambda: torch.matmul(x, w_deq.t()), repeat)
    t_emu = _cpu_time(lambda: fp8_gemm_ref(x, q, sc), max(2, repeat // 5))
    flops = 2.0 * size ** 3
    return {"size": size, "device": "cpu", "bf16_s": t_bf16, "bf16_gflops": flops / t_bf16 / 1e9,
            "reference_gflops": flops / t_ref / 1e9, "emulated_gflops": flops / t_emu / 1e9,
            "reference_vs_bf16": t_bf16 / t_ref, "emulated_vs_bf16": t_bf16 / t_emu}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4096,8192", help="comma-separated square sizes (CUDA)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if torch.cuda.is_available():
        rows = bench_cuda([int(s) for s in args.sizes.split(",")], args.repeat)
        if not args.json:
            for r in rows:
                print(f"S={r['size']} on {r['device']}: bf16 {r['bf16_tflops']:.0f} TFLOP/s"
                      + (f" | triton {r['triton_tflops']:.0f} ({r['triton_vs_bf16']:.2f}x, rel err "
                         f"{r['triton_rel_err']:.1e})" if "triton_tflops" in r else f" | {r.get('triton')}")
                      + (f" | scaled_mm {r['scaled_mm_tflops']:.0f} ({r['scaled_mm_vs_bf16']:.2f}x, rel err "
                         f"{r['scaled_mm_rel_err']:.1e})" if "scaled_mm_tflops" in r else f" | {r.get('scaled_mm')}"))
        # the last line: machine-readable figures (benchmarks/run_all.py)
        print(json.dumps({"device": rows[0]["device"] if rows else "cuda", "sizes": {str(r["size"]): r for r in rows}}))
        return 0
    r = bench_cpu(max(3, args.repeat // 4))
    if not args.json:
        print("FP8 GEMM TFLOP/s (Triton, torch._scaled_mm) vs bf16: GPU figures pending (no CUDA device here).")
        print(f"CPU sanity, S={r['size']}: reference path (dequantized at load) / bf16 matmul = "
              f"{r['reference_vs_bf16']:.2f}x; emulated block-scaled GEMM (fp8_gemm_ref) / bf16 = "
              f"{r['emulated_vs_bf16']:.3g}x")
    print(json.dumps({"device": "cpu", "cpu": r}))  # the last line: machine-readable figures (benchmarks/run_all.py)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
