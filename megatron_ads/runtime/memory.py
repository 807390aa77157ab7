"""Process memory readings (Linux /proc): current RSS and the peak since the last reset."""

from __future__ import annotations

from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_mb() -> float:
    """Current resident set size (MB)."""
    return _status_kb("VmRSS") / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set size since process start or the last ``reset_peak_rss`` (MB)."""
    return _status_kb("VmHWM") / 1024
