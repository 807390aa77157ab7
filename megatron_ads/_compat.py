"""Optional dependencies in one place: feature flags and ``require`` with the install command."""

from __future__ import annotations

import importlib.util

_INSTALL = {
    "transformer_engine": "pip install 'megatron-ads[gpu]'  (transformer-engine[pytorch]; CUDA machines only)",
    "modelopt": "pip install 'megatron-ads[quant]'  (nvidia-modelopt[torch])",
    "triton": "pip install triton",
    "tensorboard": "pip install tensorboard",
}


def _have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def have_te() -> bool:
    """TransformerEngine importable (checked by import: a broken install counts as absent)."""
    if not _have("transformer_engine"):
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


HAVE_TE = have_te()
HAVE_MODELOPT = _have("modelopt")
HAVE_TRITON = _have("triton")


def require(name: str):
    """Import an optional dependency or raise ImportError naming the install command."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ImportError(f"{name} is required for this feature: {_INSTALL.get(name, 'pip install ' + name)}") from exc

