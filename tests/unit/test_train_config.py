import pytest

from megatron_ads.config.train import JobConfig


def test_tiny_cpu_config_and_overrides(tmp_path):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny_cpu.yaml"
    job = JobConfig.load(cfg, ["train.steps=7", "out_dir=/x", "resume=auto", "checkpoint.every=3",
                               "parallel.stage_layers=null", "train.profile_steps=[2,4]"])
    assert (job.train.steps, job.out_dir, job.resume, job.checkpoint.every) == (7, "/x", "auto", 3)
    assert job.train.profile_steps == [2, 4]
    assert job.parallel.pp == 2 and job.parallel.ep == 2 and job.parallel.stage_layers is None
    again = tmp_path / "again.yaml"
    again.write_text(job.to_yaml())
    assert JobConfig.load(again).to_dict() == job.to_dict()


@pytest.mark.parametrize("override, needle", [
    ("train.steps=0", "train.steps"),
    ("optim.dtype=fp16", "optim.dtype"),
    ("bogus=1", "unknown field 'bogus'"),
    ("train.bogus=1", "bogus"),
    ("model.init=hf", "model.path"),
    ("parallel.tp=0", "tp"),
    ("nokeyvalue", "key=value"),
    ("train.profile_steps=[3,2]", "train.profile_steps"),
    ("train.profile_steps=[0,2]", "train.profile_steps"),
    ("train.profile_steps=5", "train.profile_steps"),
    ("train.profile_steps=[1,2,3]", "train.profile_steps"),
])
def test_bad_values_name_the_field(override, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    with pytest.raises(ValueError, match=needle):
        JobConfig.load(path, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        JobConfig.load(tmp_path / "nope.yaml")


def test_grpo_recipe_for_248_gpus_has_the_sft_layout():
    """The 248-GPU GRPO recipe: the same layout as the training one (pp31 x ep8 x dp8, dense-only first stage,
    stub MoE optimizer), GRPO spec defaults, initialized from an SFT training checkpoint."""
    from pathlib import Path

    from megatron_ads.config.flavors import flavor

    configs = Path(__file__).resolve().parents[2] / "launch" / "configs"
    job = JobConfig.load(configs / "deepseek_r1_248gpu_grpo.yaml")
    train = JobConfig.load(configs / "deepseek_r1_248gpu_h100_train.yaml")
    p = job.parallel
    assert (p.tp, p.pp, p.ep) == (1, 31, 8) == (train.parallel.tp, train.parallel.pp, train.parallel.ep)
    assert p.stage_layers == train.parallel.stage_layers and sum(p.stage_layers) == 61
    assert 248 // (p.tp * p.pp) == 8  # dp
    cfg = flavor(job.model.name)
    assert p.stage_layers[0] <= cfg.first_k_dense_replace  # dense-only first stage
    assert job.optim.stub_moe_optimizer and job.optim.distributed_optimizer
    assert job.model.init == "mcore" and job.model.mtp == "drop"
    g = job.grpo
    assert (g.group_size, g.eps_low, g.eps_high, g.kl_estimator, g.kl_beta) == (8, 0.2, 0.2, "k3", 0.02)
    assert not g.expert_bias_update
    assert set(job.sft.tasks) == {"query_ad", "ad_user", "query_gen"} and "recall_at_k" in g.rewards["query_gen"]
    # rollouts per step = prompts x G
    assert (job.train.micro_batch * job.train.num_microbatches * 8) % g.group_size == 0
