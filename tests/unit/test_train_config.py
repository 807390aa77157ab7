import pytest

from megatron_ads.config.train import JobConfig


def test_tiny_cpu_config_and_overrides(tmp_path):
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[2] / "launch" / "configs" / "tiny_cpu.yaml"
    job = JobConfig.load(cfg, ["train.steps=7", "out_dir=/x", "resume=auto", "checkpoint.every=3",
                               "parallel.stage_layers=null"])
    assert (job.train.steps, job.out_dir, job.resume, job.checkpoint.every) == (7, "/x", "auto", 3)
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
])
def test_bad_values_name_the_field(override, needle, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("out_dir: x\n")
    with pytest.raises(ValueError, match=needle):
        JobConfig.load(path, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        JobConfig.load(tmp_path / "nope.yaml")
