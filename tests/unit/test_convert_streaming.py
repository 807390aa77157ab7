"""Streaming properties of the converter: kill -9 + --resume, and the working-set budget (peak RSS)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from megatron_ads.checkpoint.convert import JOURNAL
from megatron_ads.checkpoint.megatron_io import LATEST
from megatron_ads.checkpoint.verify import compare


@pytest.fixture(scope="module")
def wide_ckpt(tmp_path_factory):
    """A ~170 MB llama-architecture checkpoint: 24 layers of ~7 MB each."""
    from megatron_ads.checkpoint.hf_init import write_random_checkpoint
    from megatron_ads.config.flavors import flavor_dict

    cfg = flavor_dict("tiny_llama")
    cfg.update(hidden_size=512, intermediate_size=2048, num_hidden_layers=24, num_attention_heads=8,
               num_key_value_heads=4, vocab_size=4096)
    out = tmp_path_factory.mktemp("wide") / "hf"
    write_random_checkpoint(cfg, out, seed=1, dtype="bf16")
    return out


def _cli(*args):
    return [sys.executable, "-m", "megatron_ads", *args]


def test_kill_9_then_resume_matches_uninterrupted(wide_ckpt, tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_cli("convert", "hf-to-mcore", "--hf", str(wide_ckpt), "--out", str(ref), "--pp", "2", "--quiet"),
                   check=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli("convert", "hf-to-mcore", "--hf", str(wide_ckpt), "--out", str(out), "--pp", "2",
                                 "--quiet"), start_new_session=True)
    journal = out / JOURNAL
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / LATEST).exists(), "conversion finished before the kill; test needs a larger checkpoint"
    finished = len(journal.read_text().splitlines())
    assert finished >= 3
    r = subprocess.run(_cli("convert", "hf-to-mcore", "--hf", str(wide_ckpt), "--out", str(out), "--pp", "2",
                            "--resume", "--quiet", "--json"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / LATEST).is_file() and not journal.exists()
    assert not list(out.rglob("*.tmp"))
    assert compare(ref, out)["equal"]


BUDGET_PROBE = r"""
import json, sys
from megatron_ads.checkpoint.convert import hf_to_mcore
from megatron_ads.config.parallel import ParallelConfig
import torch, safetensors, transformers  # everything the conversion imports, before the baseline
from megatron_ads.runtime.memory import peak_rss_mb, reset_peak_rss, rss_mb
assert reset_peak_rss(), "kernel refused to reset VmHWM"
base = rss_mb()
hf_to_mcore(sys.argv[1], sys.argv[2], ParallelConfig(pp=2), max_memory_gb=float(sys.argv[3]), progress=False)
peak = peak_rss_mb()
print(json.dumps({"growth_mb": peak - base}))
"""


def test_peak_rss_stays_under_the_budget(wide_ckpt, tmp_path):
    budget_gb = 0.06
    total_mb = sum(f.stat().st_size for f in wide_ckpt.glob("*.safetensors")) / 2**20
    r = subprocess.run([sys.executable, "-c", BUDGET_PROBE, str(wide_ckpt), str(tmp_path / "m"), str(budget_gb)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    growth = json.loads(r.stdout.strip().splitlines()[-1])["growth_mb"]
    assert total_mb > 3 * budget_gb * 1024, "checkpoint must be much larger than the budget for this to mean anything"
    assert growth <= budget_gb * 1024, f"peak RSS grew {growth:.0f} MB over a {budget_gb * 1024:.0f} MB budget"
