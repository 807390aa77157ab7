"""The FP8 linear module a megatron-core ModuleSpec selects: Triton | torch._scaled_mm blockwise | reference.

How it works
------------
A drop-in for the local spec's ``ColumnParallelLinear`` / ``RowParallelLinear`` at tp = 1 (same
constructor keywords, ``forward(x) -> (y, bias)``), used for every linear of the attention and MLP
submodules (routed and shared experts included); embeddings, lm_head, norms and the router stay
unquantized, as in DeepSeek's FP8 checkpoints. ``model.specs.decoder_block_spec(..., fp8_backend=)``
swaps the classes, so no ``forward`` tests a flag. Three classes, one per backend:

- ``FP8LinearReference`` ("reference", the CPU path): the weight is dequantized once at load with
  DeepSeek's formula (``W = bf16(fp32(Q) * S)``, by the checkpoint reader) and held in the compute
  dtype; ``y = x @ W^T`` with the same op megatron's linear uses, so logits equal the plain spec's
  bit for bit.
- ``FP8LinearTriton`` ("triton"): holds ``weight`` as e4m3 codes [N, K] and ``weight_scale_inv``
  (fp32); ``y`` = ``kernels.fp8_triton.fp8_gemm_triton`` (activations quantized per token per 128
  channels, fp32 accumulation rescaled per 128-K block). No bf16 copy of the weight exists.
- ``FP8LinearScaledMM`` ("scaled_mm"): the same storage, ``torch.nn.functional.scaled_mm`` with
  ``BlockWise1x128`` activation scales and ``BlockWise128x128`` weight scales (cuBLAS, CUDA sm90+).
  A probe on the first use checks the call against ``fp8_gemm_ref``; when the device, torch or the
  shape (K or N not a multiple of 128, per-row scales) does not allow it, the module logs one line
  and falls back to the Triton kernel (or the torch reference GEMM without Triton).

Scales: ``weight_scale_inv`` has one row per 128 output rows (the checkpoint's 128x128 blocks) when
every 128-row block shares its scales, else one row per output row (``row_block`` = 1): a gated fc1
``[gate; up]`` whose halves are not multiples of 128 rows (tiny models) concatenates two block grids
that do not align. ``load_fp8`` (called by ``checkpoint.load``) takes per-row scales and compresses them
when it can.

MLA accepts only ``ColumnParallelLinear`` (or TE/ModelOpt linears) for its down projections, by a
list-membership test; these classes are its drop-in, so their metaclass makes them compare equal to
``ColumnParallelLinear`` (identity hash kept; nothing else changes).
"""

from __future__ import annotations

import abc

import functools
import os
from typing import ClassVar

import torch
from megatron.core.tensor_parallel.layers import ColumnParallelLinear

from megatron_ads._compat import HAVE_TRITON, require
from megatron_ads.kernels.fp8 import (BLOCK, FP8_DTYPE, act_quant, block_quant, compress_scale_rows, expand_scale_rows,
                                      fp8_gemm_ref)
from megatron_ads.runtime.log import get_logger

log = get_logger("megatron_ads.fp8")

FP8_BACKENDS = ("reference", "emulated", "triton", "scaled_mm")
"""The FP8 linear backends a spec can select."""
BACKEND_ENV = "MEGATRON_ADS_FP8_BACKEND"
"""Environment variable that forces the backend ``default_backend`` picks (e.g. ``triton`` on CPU under
``TRITON_INTERPRET=1`` for tests)."""
PROBE_TOL = 2e-2
"""Relative error (of the output's max) the scaled_mm probe allows against ``fp8_gemm_ref``."""


class ColumnParallelDropIn(abc.ABCMeta):
    """Metaclass: the class compares equal to megatron's ``ColumnParallelLinear`` (MLA's class check; also
    ``model.linear.LocalColumnParallelLinear``'s)."""

    def __eq__(cls, other):
        return cls is other or other is ColumnParallelLinear

    __hash__ = abc.ABCMeta.__hash__


class FP8Linear(torch.nn.Module, metaclass=ColumnParallelDropIn):
    """Base of the FP8 linears: megatron's linear constructor keywords, ``forward(x) -> (y, bias)``."""

    backend: ClassVar[str] = ""

    def __init__(self, input_size: int, output_size: int, *, config, init_method=None, bias: bool = False,
                 skip_bias_add: bool = False, is_expert: bool = False, stride: int = 1, **_megatron_kwargs):
        super().__init__()
        tp = getattr(config, "tensor_model_parallel_size", 1)
        if tp != 1:
            raise ValueError(f"fp8_backend={self.backend!r}: FP8 linears run at tensor_model_parallel_size=1, "
                             f"got {tp}")
        self.in_features, self.out_features = int(input_size), int(output_size)
        self.skip_bias_add = skip_bias_add
        self.is_expert = is_expert
        self.stride = stride
        self.config = config
        device = torch.device("cpu") if getattr(config, "use_cpu_initialization", True) or \
            not torch.cuda.is_available() else torch.device("cuda", torch.cuda.current_device())
        self._device = device
        dtype = getattr(config, "params_dtype", torch.float32)
        self.bias = torch.nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device)) if bias else None
        self._init_weight(init_method, dtype, device)

    @abc.abstractmethod
    def _init_weight(self, init_method, dtype: torch.dtype, device: torch.device) -> None:
        """Each backend's own."""

    @abc.abstractmethod
    def _gemm(self, x_TK: torch.Tensor) -> torch.Tensor:
        """Each backend's own."""

    def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None, runtime_gather_output=None):
        """``y = x @ W^T`` (+ bias unless ``skip_bias_add``). Returns ``(y, bias or None)`` as megatron's linears."""
        if weight is not None:
            raise ValueError(f"{type(self).__name__}: an external weight is not supported by FP8 linears")
        lead = input_.shape[:-1]
        y = self._gemm(input_.reshape(-1, input_.shape[-1])).reshape(*lead, self.out_features)
        if self.bias is None:
            return y, None
        if self.skip_bias_add:
            return y, self.bias
        return y + self.bias, None

    @abc.abstractmethod
    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weight as a dense [N, K] tensor (the absorbed MLA cache folds ``linear_kv_up_proj`` with it)."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, backend={self.backend}"


class FP8LinearReference(FP8Linear):
    """Reference backend: the weight dequantized once at load, held in the compute dtype."""

    backend = "reference"

    def _init_weight(self, init_method, dtype, device):
        self.weight = torch.nn.Parameter(torch.empty(self.out_features, self.in_features, dtype=dtype,
                                                     device=device))
        if init_method is not None:
            with torch.no_grad():
                init_method(self.weight)

    def _gemm(self, x_TK):
        return torch.matmul(x_TK, self.weight.t())  # the op megatron's linear uses: bit-equal outputs

    def dequantized_weight(self, dtype=None):
        return self.weight if dtype is None else self.weight.to(dtype)


class FP8LinearBlockScaled(FP8Linear):
    """Storage of the block-scaled backends: ``weight`` = e4m3 codes [N, K] (a frozen parameter, so the
    checkpoint loader and ``.cuda()`` see it) and the ``weight_scale_inv`` buffer (fp32)."""

    def _init_weight(self, init_method, dtype, device):
        n, k = self.out_features, self.in_features
        self.weight = torch.nn.Parameter(torch.zeros(n, k, dtype=FP8_DTYPE, device=device), requires_grad=False)
        self.register_buffer("weight_scale_inv", torch.ones((n + BLOCK - 1) // BLOCK, (k + BLOCK - 1) // BLOCK,
                                                            dtype=torch.float32, device=device))
        self.row_block = BLOCK
        if init_method is not None:  # a random model (tests): quantize an initialized weight
            w = torch.empty(n, k, dtype=torch.float32)
            init_method(w)
            q, s = block_quant(w)
            self.load_fp8(q, expand_scale_rows(s, n))

    @torch.no_grad()
    def load_fp8(self, codes_NK: torch.Tensor, scale_NC: torch.Tensor, name: str = "weight") -> None:
        """Set the weight from e4m3 codes [N, K] and per-row inverse scales [N, ceil(K/128)] (block scales
        expanded with ``kernels.fp8.expand_scale_rows``); stored per 128 rows when the blocks allow it."""
        n, k = self.out_features, self.in_features
        c = (k + BLOCK - 1) // BLOCK
        if tuple(codes_NK.shape) != (n, k) or codes_NK.dtype != FP8_DTYPE:
            raise ValueError(f"{name}: FP8 codes {tuple(codes_NK.shape)} {codes_NK.dtype}; expected ({n}, {k}) "
                             f"{FP8_DTYPE}")
        if tuple(scale_NC.shape) != (n, c):
            raise ValueError(f"{name}_scale_inv: per-row scales {tuple(scale_NC.shape)}; expected ({n}, {c})")
        scale = scale_NC.to(torch.float32)
        blocks = compress_scale_rows(scale)
        self.row_block = BLOCK if blocks is not None else 1
        self.weight.data.copy_(codes_NK)
        self.weight_scale_inv = (blocks if blocks is not None else scale).contiguous().to(self.weight.device)

    def dequantized_weight(self, dtype=None):
        scale_NC = expand_scale_rows(self.weight_scale_inv, self.out_features, self.row_block)
        return _per_row_dequant(self.weight, scale_NC).to(dtype or torch.bfloat16)


def _per_row_dequant(q_NK: torch.Tensor, scale_NC: torch.Tensor) -> torch.Tensor:
    """fp32(Q) * S with per-row scales [N, C] (each scale over 128 columns), in fp32."""
    k = q_NK.shape[1]
    return q_NK.to(torch.float32) * scale_NC.repeat_interleave(BLOCK, 1)[:, :k]


class FP8LinearEmulated(FP8LinearBlockScaled):
    """Emulated backend: the block-scaled numerics of the GPU backends in pure torch
    (``kernels.fp8.fp8_gemm_ref``: per-token activation quantization, fp32 per-K-block rescale). Slow;
    for checking on CPU what FP8 inference computes, and the spec the Triton backend is tested against."""

    backend = "emulated"

    def _gemm(self, x_TK):
        return fp8_gemm_ref(x_TK, self.weight, self.weight_scale_inv, row_block=self.row_block)


class FP8LinearTriton(FP8LinearBlockScaled):
    """Triton backend: ``kernels.fp8_triton.fp8_gemm_triton`` on the codes and scales."""

    backend = "triton"

    def __init__(self, *args, **kwargs):
        require("triton")
        super().__init__(*args, **kwargs)

    def _gemm(self, x_TK):
        from megatron_ads.kernels.fp8_triton import fp8_gemm_triton

        return fp8_gemm_triton(x_TK, self.weight, self.weight_scale_inv, row_block=self.row_block)


@functools.cache
def _probe(device: str) -> tuple[bool, bool, str]:
    """(supported, pad_k, why): whether ``F.scaled_mm`` blockwise runs on ``device`` and matches
    ``fp8_gemm_ref``, and which weight-scale layout it takes (K-block stride padded to 4 or not)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return False, False, f"{device}: blockwise scaled_mm needs CUDA"
    if torch.cuda.get_device_capability(dev) < (9, 0):
        return False, False, f"{device}: blockwise scaled_mm needs sm90+, got sm{''.join(map(str, torch.cuda.get_device_capability(dev)))}"
    F = torch.nn.functional
    if not hasattr(F, "scaled_mm") or not hasattr(F, "ScalingType"):
        return False, False, f"torch {torch.__version__}: no torch.nn.functional.scaled_mm"
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(40, 384, generator=g).to(dev, torch.bfloat16)  # 3 K blocks: exercises the padding
    q, s = block_quant(torch.randn(256, 384, generator=g) * 0.05)
    q, s = q.to(dev), s.to(dev)
    ref = fp8_gemm_ref(x, q, s, out_dtype=torch.float32)
    errors = []
    for pad_k in (True, False):
        try:
            y = _scaled_mm_blockwise(x, q, s, torch.float32, pad_k)
            err = ((y - ref).abs().max() / ref.abs().max()).item()
            if err <= PROBE_TOL:
                return True, pad_k, f"relative error {err:.2e} vs fp8_gemm_ref"
            errors.append(f"pad_k={pad_k}: relative error {err:.2e} > {PROBE_TOL}")
        except Exception as exc:  # the op's checks raise RuntimeError with their reason
            errors.append(f"pad_k={pad_k}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    return False, False, "; ".join(errors)


def scaled_mm_blockwise_supported(device: torch.device | str) -> bool:
    """Whether ``torch.nn.functional.scaled_mm`` with 1x128 x 128x128 block scales runs (and is right) here."""
    return _probe(str(torch.device(device)))[0]


def _scaled_mm_blockwise(x_TK: torch.Tensor, q_NK: torch.Tensor, scale_RC: torch.Tensor, out_dtype: torch.dtype,
                         pad_k: bool) -> torch.Tensor:
    """cuBLAS's block-scaled GEMM. Layouts (torch's checks): activation scales [M, C] column-major
    (token-major, M padded to a multiple of 4); weight scales passed as ``S^T`` of a row-major [N/128, C]
    whose row stride is C rounded up to 4 (``pad_k``; older torch wants exactly C); mat_b = ``Q^T``
    (column-major [K, N])."""
    F = torch.nn.functional
    m, k = x_TK.shape
    xp = F.pad(x_TK, (0, 0, 0, -m % 4)) if m % 4 else x_TK
    if HAVE_TRITON and xp.is_cuda:
        from megatron_ads.kernels.fp8_triton import act_quant_triton

        a, sa = act_quant_triton(xp)
    else:
        a, sa = act_quant(xp)
    c = sa.shape[1]
    sb = scale_RC
    if pad_k and c % 4:
        sb = F.pad(scale_RC, (0, -c % 4))[:, :c]
    y = F.scaled_mm(a, q_NK.t(), sa.t().contiguous().t(), F.ScalingType.BlockWise1x128, sb.t(),
                    F.ScalingType.BlockWise128x128, output_dtype=out_dtype)
    return y[:m]


class FP8LinearScaledMM(FP8LinearBlockScaled):
    """``torch._scaled_mm`` blockwise backend (CUDA sm90+), falling back per module when it cannot run."""

    backend = "scaled_mm"
    _fallback_logged: ClassVar[set[str]] = set()

    def _fallback_reason(self, x_TK: torch.Tensor) -> str | None:
        ok, _, why = _probe(str(x_TK.device))
        if not ok:
            return why
        if self.row_block != BLOCK:
            return "per-row weight scales (a gated fc1 whose halves are not multiples of 128 rows)"
        if self.in_features % BLOCK or self.out_features % BLOCK:
            return f"shape [{self.out_features}, {self.in_features}] not a multiple of {BLOCK}"
        return None

    def _gemm(self, x_TK):
        why = getattr(self, "_why", "unset")
        if why == "unset":
            why = self._why = self._fallback_reason(x_TK)
            if why is not None and why not in self._fallback_logged:
                self._fallback_logged.add(why)
                log.info("fp8 scaled_mm: %s; using the %s GEMM for such linears", why,
                         "Triton" if HAVE_TRITON else "torch reference")
        if why is None:
            return _scaled_mm_blockwise(x_TK, self.weight, self.weight_scale_inv, x_TK.dtype,
                                        _probe(str(x_TK.device))[1])
        if HAVE_TRITON and (x_TK.is_cuda or _interpreting()):
            from megatron_ads.kernels.fp8_triton import fp8_gemm_triton

            return fp8_gemm_triton(x_TK, self.weight, self.weight_scale_inv, row_block=self.row_block)
        return fp8_gemm_ref(x_TK, self.weight, self.weight_scale_inv, row_block=self.row_block)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


BACKEND_CLASSES: dict[str, type[FP8Linear]] = {
    "reference": FP8LinearReference,
    "emulated": FP8LinearEmulated,
    "triton": FP8LinearTriton,
    "scaled_mm": FP8LinearScaledMM,
}


def fp8_linear_class(backend: str) -> type[FP8Linear]:
    """The FP8 linear class of ``backend`` (one of ``FP8_BACKENDS``)."""
    if backend not in BACKEND_CLASSES:
        raise ValueError(f"fp8_backend: expected one of {', '.join(FP8_BACKENDS)}, got {backend!r}")
    if backend == "triton":
        require("triton")
    return BACKEND_CLASSES[backend]


def default_backend(device: str | torch.device) -> str:
    """The backend for ``device``: ``$MEGATRON_ADS_FP8_BACKEND`` when set; on CUDA ``scaled_mm`` where the
    blockwise call is supported, else ``triton`` when installed, else ``reference``; on CPU ``reference``."""
    forced = os.environ.get(BACKEND_ENV, "").strip()
    if forced:
        if forced not in FP8_BACKENDS:
            raise ValueError(f"{BACKEND_ENV}: expected one of {', '.join(FP8_BACKENDS)}, got {forced!r}")
        return forced
    dev = torch.device(device)
    if dev.type != "cuda":
        return "reference"
    if scaled_mm_blockwise_supported(dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())):
        return "scaled_mm"
    return "triton" if HAVE_TRITON else "reference"


def holds_codes(module: torch.nn.Module) -> bool:
    """Whether ``module`` keeps FP8 codes + scales (loaded with ``load_fp8``, not as a dense weight)."""
    return isinstance(module, FP8LinearBlockScaled)


def dense_weight(module: torch.nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A linear module's weight as a dense [N, K] tensor: FP8 linears dequantize theirs."""
    if isinstance(module, FP8Linear):
        return module.dequantized_weight(dtype)
    w = module.weight
    return w if dtype is None else w.to(dtype)
