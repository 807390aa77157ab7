"""Training checkpoints carry the tokenizer their export needs: the initial checkpoint's, or for a random
init the one the run trained itself (SFT's BPE in RUN/tokenizer)."""

from megatron_ads.config.train import ModelSpec
from megatron_ads.train.ckpt import tokenizer_files


def test_random_init_takes_the_runs_own_tokenizer(tmp_path):
    run = tmp_path / "run"
    assert tokenizer_files(ModelSpec(init="random"), run) == []  # nothing trained yet: nothing to copy
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    (run / "tokenizer" / "tokenizer_config.json").write_text("{}")
    names = sorted(p.name for p in tokenizer_files(ModelSpec(init="random"), run))
    assert names == ["tokenizer.json", "tokenizer_config.json"]


def test_initial_checkpoint_tokenizer_wins(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "tokenizer.json").write_text("{}")
    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer.json").write_text("{}")
    assert tokenizer_files(ModelSpec(init="hf", path=str(hf)), run) == [hf / "tokenizer.json"]
