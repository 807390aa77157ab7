"""``benchmarks/memory.py --fast`` (issue 17): planner vs measured peak memory of one training process on the tiny
flavor. The weight / gradient / optimizer terms are tensor bytes, so they match the planner exactly; the total is
an RSS (CPU) reading, so only its presence and finiteness are checked here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]


def test_fast_run_prints_the_figures():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "memory.py"), "--fast"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()
    figures = json.loads(out[-1])
    terms = {"weights", "grads", "optimizer", "activations", "other", "total"}
    assert set(figures["planner_gb"]) == terms and set(figures["measured_gb"]) == terms
    assert figures["params_planner"] == figures["params_model"]
    for term in ("weights", "grads", "optimizer"):
        assert math.isclose(figures["ratio_by_term"][term], 1.0, rel_tol=1e-6), term
    assert math.isfinite(figures["ratio_total"]) and figures["ratio_total"] > 0
    assert figures["measured_gb"]["activations"] > 0 and figures["saved_layers_gb"] > 0
    assert isinstance(figures["within_tolerance"], bool)
    assert any(line.startswith("total ") for line in out)
