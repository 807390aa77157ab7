"""The flags every verb that runs the inference engine shares (``generate``, ``label``): compute precision,
generation cache, and the layout of a model split across ranks, with one reading of them."""

from __future__ import annotations

from megatron_ads.checkpoint.parity import default_nproc
from megatron_ads.config.parallel import ParallelConfig
from megatron_ads.infer.cache import CACHE_CHOICES
from megatron_ads.infer.weights import PRECISIONS
from megatron_ads.runtime.errors import BadInput


def add_engine_args(p) -> None:
    """``--precision``, ``--cache``, ``--tp/--pp/--ep`` and ``--nproc`` on parser ``p``."""
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="compute precision; fp8: an FP8 checkpoint's E4M3 blocks in FP8 linears (Triton or "
                        "_scaled_mm block GEMMs on CUDA, dequantized at load on CPU) (default: %(default)s)")
    p.add_argument("--cache", choices=CACHE_CHOICES, default="auto",
                   help="generation KV cache: latent (MLA models: the absorbed kv_lora latent + rope key, 71x smaller "
                        "for DeepSeek-V3) or kv (other models), both batching prompts of any length, tp 1 only; "
                        "static (megatron-core's: full per-head K and V, one prompt length per batch); auto: latent "
                        "or kv at tp 1, else static. Same tokens either way (default: %(default)s)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel size of the model (default: %(default)s)")
    p.add_argument("--pp", type=int, default=1, help="pipeline-parallel size of the model (default: %(default)s)")
    p.add_argument("--ep", type=int, default=1, help="expert-parallel size of the model (default: %(default)s)")
    p.add_argument("--nproc", type=int, default=None,
                   help="with --tp/--pp/--ep: start N gloo workers (CPU) that together hold the model; default: "
                        "pp * lcm(tp, ep) (every rank holds every row); ignored under torchrun/srun")


def read_layout(args) -> tuple[ParallelConfig, int]:
    """The model layout of ``--tp/--pp/--ep`` and the number of local ranks to start (``--nproc``, default
    ``pp * lcm(tp, ep)``). Raises BadInput naming the flag."""
    try:
        par = ParallelConfig(tp=args.tp, pp=args.pp, ep=args.ep)
    except ValueError as exc:
        raise BadInput(f"--{exc}") from None  # "--pp: expected an integer >= 1, got 0"
    model_ranks = default_nproc(par.tp, par.pp, par.ep)
    nproc = args.nproc if args.nproc is not None else model_ranks
    if nproc < 1 or nproc % model_ranks:
        raise BadInput(f"--nproc: expected a multiple of pp * lcm(tp, ep) = {model_ranks}, got {nproc}")
    return par, nproc
