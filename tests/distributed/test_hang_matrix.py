"""The dense-only-first-stage hang matrix (paper §4.1.3; Megatron-LM issues 1444/1462).

Layout: tiny DeepSeek, pp=2 with stage 0 = embedding + the dense layer only, ep=2, 4 gloo ranks.
Findings (megatron-core 0.16.1), asserted below:
- fp32 optimizer, distributed optimizer, MTP: megatron's builder already gives expert-less ranks an
  expert optimizer with an empty parameter group, so the step completes; removing that expert-side
  optimizer (the situation the paper hit) hangs the MoE ranks in the expert grad-norm reduction —
  except with the distributed optimizer, whose dense and expert optimizers share one grad-stats
  reduction (so the removal changes no collective).
- MoE aux-loss tracking: calling megatron's tracker the way Megatron-LM does (names from each
  rank's own tracker) hangs in the pipeline-group all-reduce, because dense-only ranks track nothing
  (issue 1444). The project's stub makes every rank reduce the same names.
A hang never stalls the suite: the collective timeout raises CollectiveTimeout naming the phase.
"""

import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import WorkerError, spawn
from megatron_ads.train.loop import train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # 12 four-rank runs, 4 of them 30 s hangs: minutes
TIMEOUT = 30  # for the runs expected to hang; runs expected to complete get a generous one (slow CI machines)
BASE = ["train.steps=2", "checkpoint.save_at_end=false", "train.moe_metrics=false"]
CONFIGS = {
    "fp32": [],
    "distributed_optimizer": ["optim.distributed_optimizer=true"],
    "moe_metrics": ["train.moe_metrics=true", "train.moe_aux_loss_coeff=0.0001"],
    "mtp": ["model.name=tiny_deepseek_v3_mtp"],
}


def run(tmp_path, name, overrides, stub_parts=None, project_stub=False, expect_hang=False):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny_cpu.yaml"
    timeout = TIMEOUT if expect_hang else 600
    debug = [f"optim.stub_impl={'project' if project_stub else 'megatron'}"]
    if stub_parts is not None:
        debug.append(f"optim.stub_parts=[{', '.join(stub_parts)}]")
    job = JobConfig.load(cfg, [f"out_dir={tmp_path / name}", *BASE, f"train.collective_timeout_s={timeout}",
                               *overrides, *debug])
    return spawn(train_worker, 4, job.to_dict(), grace_s=TIMEOUT + 60)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_with_the_stub_every_configuration_completes(name, tmp_path):
    r = run(tmp_path, name, CONFIGS[name])
    assert r[0]["steps"] == 2 and r[0]["optimizer"]["uniform_chain"]
    assert r[0]["optimizer"]["expert_optimizer"] in ("megatron-stub", "project-stub")  # rank 0: dense-only stage


def test_the_projects_own_stub_optimizer_also_completes(tmp_path):
    r = run(tmp_path, "project", CONFIGS["moe_metrics"], project_stub=True)
    assert r[0]["optimizer"]["expert_optimizer"] == "project-stub" and r[0]["steps"] == 2


@pytest.mark.parametrize("name", ["fp32", "moe_metrics", "mtp"])
def test_without_the_stub_the_hang_is_a_named_timeout(name, tmp_path):
    with pytest.raises(WorkerError) as exc:
        run(tmp_path, "nostub", CONFIGS[name], stub_parts=[], expect_hang=True)
    text = str(exc.value)
    # the MoE ranks (stage 1) wait in the expert-side grad-norm reduction the dense-only ranks skipped
    assert "CollectiveTimeout" in text and "phase 'optimizer'" in text and "expert group" in text


def test_distributed_optimizer_shares_one_grad_stats_reduction(tmp_path):
    """With the distributed optimizer, dense and expert optimizers reduce their grad statistics over the
    same group in one call, so even without the expert-side optimizer the collectives stay aligned."""
    r = run(tmp_path, "nostub_distopt", CONFIGS["distributed_optimizer"], stub_parts=[], expect_hang=True)
    assert r[0]["steps"] == 2 and r[0]["optimizer"]["expert_optimizer"] == "none (stub disabled)"


def test_megatron_native_tracker_reduction_hangs_with_aux_losses(tmp_path):
    with pytest.raises(WorkerError) as exc:
        run(tmp_path, "native_metrics", CONFIGS["moe_metrics"], stub_parts=["optimizer"], expect_hang=True)
    assert "phase 'moe-metrics'" in str(exc.value) and "pipeline-parallel group" in str(exc.value)


@pytest.mark.parametrize("name", ["distributed_optimizer", "mtp"])
def test_megatron_native_optimizer_stub_covers(name, tmp_path):
    r = run(tmp_path, name, CONFIGS[name], stub_parts=["optimizer"])
    assert r[0]["optimizer"]["expert_optimizer"] == "megatron-stub"
