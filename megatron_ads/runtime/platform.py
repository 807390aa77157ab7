"""Platform selection (cuda | cpu-gloo) and the megatron-core 0.16.1 CPU compatibility layer.

How it works
------------
megatron-core assumes CUDA. Its real modules (MLA, MoE all-to-all dispatcher, DDP, optimizers,
pipeline schedules) run on CPU under gloo once a small set of touchpoints is redirected. On a
machine without CUDA, :func:`activate_cpu_compat` installs exactly these redirections, once,
before megatron-core builds anything. It refuses to run when CUDA is available, so the CUDA
path always uses megatron-core untouched.

Touchpoints (each has a unit test in ``tests/unit/test_compat.py`` that fails if a megatron-core
upgrade changes it):

1. ``torch.cuda.current_device()`` -> ``torch.device("cpu")`` (rotary embeddings, buffers).
2. ``torch.cuda.Stream/Event/stream/current_stream/default_stream/set_stream/synchronize/
   empty_cache`` -> no-op stand-ins (MoE all-to-all dispatcher, DDP).
3. ``torch.cuda.get_rng_state/set_rng_state/manual_seed`` and megatron's
   ``tensor_parallel.random._get_cuda_rng_state/_set_cuda_rng_state`` -> the CPU generator
   (megatron's RNG tracker forks "device" RNG states).
4. Literal ``device='cuda'`` in tensor factories (optimizer scalars, grad clipping, schedules)
   -> CPU: megatron.core modules see a ``torch`` whose factories map 'cuda' to CPU (their own
   namespaces only, so torch's meta-device context keeps working for everyone else).
5. ``Tensor.cuda()`` -> the tensor itself; ``Tensor.record_stream`` -> no-op.
6. ``tensor.type() == 'torch.cuda.FloatTensor'`` checks (grad clipping, mixed-precision and
   distributed optimizers): ``Tensor.type()`` called *from megatron.core* reports CPU tensors
   under their CUDA type names; every other caller sees the real name.
7. Version defects without TransformerEngine: ``moe_utils.te_general_gemm`` undefined (router),
   the dispatcher's host-copy helper returns CPU tensors instead of numpy arrays, and MLA's
   ``isinstance(x, TELinear)`` where ``TELinear`` is not a class (None or a MagicMock placeholder).

The project's own SDPA core attention (``model/attention.py``) replaces the local spec's
``DotProductAttention``, which does not accept MLA's ``k_channels``/``v_channels``; that is a
spec choice, not a patch, and applies on CUDA too when TransformerEngine is absent.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
import sys
from dataclasses import dataclass

import torch

_ACTIVE = False
_CPU = torch.device("cpu")

# Tensor factories that megatron-core calls with a literal device='cuda'.
_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint",
              "zeros_like", "ones_like", "empty_like", "full_like")


@dataclass(frozen=True, slots=True)
class Platform:
    """Where this process computes and how it talks to its peers."""

    name: str
    """'cuda' (NCCL) or 'cpu' (gloo, megatron-core CPU compatibility layer)."""
    backend: str
    """torch.distributed backend: 'nccl' or 'gloo'."""

    @property
    def device(self) -> torch.device:
        if self.name == "cuda":
            return torch.device("cuda", torch.cuda.current_device())
        return _CPU


def detect(force: str | None = None) -> Platform:
    """Pick the platform: CUDA when available, otherwise CPU/gloo.

    Args:
        force: 'cuda' or 'cpu' to override (env MEGATRON_ADS_PLATFORM also overrides).
    """
    choice = force or os.environ.get("MEGATRON_ADS_PLATFORM") or ("cuda" if torch.cuda.is_available() else "cpu")
    if choice not in ("cuda", "cpu"):
        raise ValueError(f"platform: expected 'cuda' or 'cpu', got {choice!r}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("platform 'cuda' requested but torch.cuda.is_available() is False")
    return Platform(name=choice, backend="nccl" if choice == "cuda" else "gloo")


def setup(platform: Platform | None = None) -> Platform:
    """Prepare this process for megatron-core on the given (or detected) platform."""
    platform = platform or detect()
    if platform.name == "cpu":
        activate_cpu_compat()
    else:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return platform


def cpu_compat_active() -> bool:
    return _ACTIVE


# ----------------------------------------------------------------------------------------------
# stand-ins


class _NullStream:
    """A CUDA stream stand-in: every operation is immediate on CPU."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None):
        return event or _NullEvent()

    def synchronize(self):
        pass

    def query(self):
        return True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NullEvent:
    """A CUDA event stand-in (no timing on CPU)."""

    def __init__(self, *args, **kwargs):
        pass

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0


_NULL_STREAM = _NullStream()


def _cpu_device_arg(device):
    """Map a 'cuda' device argument to CPU; leave anything else unchanged."""
    if device is None:
        return None
    if isinstance(device, int):
        return _CPU
    dev = torch.device(device) if isinstance(device, str) else device
    if isinstance(dev, torch.device) and dev.type == "cuda":
        return _CPU
    return device


class _TorchForMegatron:
    """What megatron-core modules see as ``torch`` in CPU mode: torch itself, except that tensor
    factories map a literal ``device='cuda'`` (and ``pin_memory=True``) to CPU.

    Scoped to megatron.core's module namespaces on purpose: replacing ``torch.zeros`` & co. globally
    would bypass torch's ``torch.device('meta')`` context (its constructor table is keyed by the
    original functions), which transformers relies on when loading models."""

    def __init__(self):
        for name in _FACTORIES:
            object.__setattr__(self, name, self._factory(getattr(torch, name)))

    @staticmethod
    def _factory(fn):
        @functools.wraps(fn)
        def factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _cpu_device_arg(kwargs["device"])
            if kwargs.get("pin_memory"):
                kwargs["pin_memory"] = False
            return fn(*args, **kwargs)

        return factory

    def __getattr__(self, name):
        return getattr(torch, name)


_TORCH_FOR_MEGATRON: _TorchForMegatron | None = None


def patch_loaded_megatron_modules() -> int:
    """Point ``torch`` inside every loaded megatron.core module at the CPU-mode view (idempotent).

    Called on activation and again before building models, so modules megatron imports lazily are
    covered too. Returns the number of modules patched by this call."""
    if not _ACTIVE:
        return 0
    n = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.core") and module is not None and getattr(module, "torch", None) is torch:
            module.torch = _TORCH_FOR_MEGATRON
            n += 1
    return n


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _wrap_tensor_type(orig):
    @functools.wraps(orig)
    def type_(self, *args, **kwargs):
        result = orig(self, *args, **kwargs)
        if not args and not kwargs and isinstance(result, str):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core"):
                return _CUDA_TYPE_NAMES.get(result, result)
        return result

    type_.__megatron_ads_original__ = orig
    return type_


class _QuietCpuRngWarning(logging.Filter):
    """megatron's RNG tracker warns when the CPU RNG moves inside a fork; on CPU the 'device'
    generator *is* the CPU generator, so the warning is expected and carries no information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def activate_cpu_compat() -> None:
    """Install the megatron-core 0.16.1 CPU compatibility layer (idempotent; never on CUDA)."""
    global _ACTIVE
    if _ACTIVE:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "megatron_ads CPU compatibility layer must not be activated on a machine with CUDA; "
            "use platform 'cuda' (MEGATRON_ADS_PLATFORM=cuda) instead"
        )
    cuda = torch.cuda
    # 1. device queries
    cuda.current_device = lambda: _CPU
    cuda.device_count = lambda: 0
    # 2. streams and events
    cuda.Stream = _NullStream
    cuda.Event = _NullEvent
    cuda.stream = lambda stream=None: contextlib.nullcontext(stream)
    cuda.current_stream = lambda device=None: _NULL_STREAM
    cuda.default_stream = lambda device=None: _NULL_STREAM
    cuda.set_stream = lambda stream: None
    cuda.synchronize = lambda device=None: None
    cuda.empty_cache = lambda: None
    # 3. RNG: the "device" generator is the CPU generator
    cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    # 5. Tensor.cuda / record_stream
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.Tensor.record_stream = lambda self, stream: None
    # 6. CUDA type names seen from megatron.core
    torch.Tensor.type = _wrap_tensor_type(torch.Tensor.type)
    # 7. megatron's tensor-parallel linears advise CUDA_DEVICE_MAX_CONNECTIONS=1 (a CUDA stream-ordering
    # setting, meaningless here) with a UserWarning at tp > 1 unless it is set
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    _ACTIVE = True
    _patch_megatron_modules()
    # 4. literal device='cuda' factories, inside megatron.core's namespaces only
    global _TORCH_FOR_MEGATRON
    _TORCH_FOR_MEGATRON = _TorchForMegatron()
    _import_megatron_runtime_modules()
    patch_loaded_megatron_modules()
    logging.getLogger("megatron.core.tensor_parallel.random").addFilter(_QuietCpuRngWarning())


def _import_megatron_runtime_modules() -> None:
    """Import the megatron-core modules the project runs, so their namespaces get the CPU view."""
    for name in ("megatron.core.optimizer", "megatron.core.distributed", "megatron.core.pipeline_parallel.schedules",
                 "megatron.core.models.gpt", "megatron.core.transformer.moe.moe_layer",
                 "megatron.core.transformer.multi_token_prediction", "megatron.core.tensor_parallel",
                 "megatron.core.optimizer_param_scheduler"):
        importlib.import_module(name)


def _patch_megatron_modules() -> None:
    """Touchpoints inside megatron-core modules (imported here, after the torch-level layer)."""
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core.transformer import multi_latent_attention as mla
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    mrandom._get_cuda_rng_state = lambda device=None, clone=False, graph_safe=False: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)

    # 7a. router: `te_general_gemm is not None` on a name that only exists with TE
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    # 7b. dispatcher host copies: CPU tensors must come back as numpy arrays when asked
    orig_move = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if torch.is_tensor(tensor) and not tensor.is_cuda and as_numpy:
            return tensor.numpy()
        return orig_move(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    # 7c. MLA: isinstance(x, TELinear) where TELinear is not a class without TE (None, or the MagicMock
    # placeholder megatron-core installs when transformer_engine is absent)
    if not isinstance(getattr(mla, "TELinear", None), type):
        mla.TELinear = type("_NoTELinear", (), {})
