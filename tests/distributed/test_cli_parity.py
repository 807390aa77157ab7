import json
import subprocess
import sys

import pytest


@pytest.mark.distributed
def test_parity_cli_json_and_failure_exit_code(tiny_ckpts):
    hf = str(tiny_ckpts("tiny_deepseek_v3"))
    ok = subprocess.run([sys.executable, "-m", "megatron_ads", "verify", "parity", "--hf", hf, "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    report = json.loads(ok.stdout)
    for key in ("max_abs_diff", "mean_abs_diff", "argmax_agreement", "per_layer"):
        assert key in report
    bad = subprocess.run([sys.executable, "-m", "megatron_ads", "verify", "parity", "--hf", hf, "--atol", "1e-12"],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "FAILED" in bad.stderr
