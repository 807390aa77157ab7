"""checkpoint/tokenizer_dir.py: the one tokenizer lookup (training init, engines, checkpoint copies)."""

import json

from megatron_ads.checkpoint.megatron_io import LATEST as LEGACY_LATEST
from megatron_ads.checkpoint.tokenizer_dir import find_tokenizer_dir, tokenizer_files
from megatron_ads.config.train import ModelSpec
from megatron_ads.train.ckpt import tokenizer_files as checkpoint_tokenizer_files


def _touch(d, *names):
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / n).write_text("{}")


def test_every_layout_a_user_can_name(tmp_path):
    hf = tmp_path / "hf"
    _touch(hf, "config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
    assert find_tokenizer_dir(hf) == hf
    assert [f.name for f in tokenizer_files(hf)] == ["tokenizer.json", "tokenizer_config.json",
                                                     "generation_config.json"]
    legacy = tmp_path / "legacy"  # a converted checkpoint: tokenizer/ at its root
    _touch(legacy / "tokenizer", "tokenizer.model")
    (legacy / LEGACY_LATEST).write_text("1")
    assert find_tokenizer_dir(legacy) == legacy / "tokenizer"
    assert find_tokenizer_dir(legacy, require="tokenizer.json") is None  # only a sentencepiece model there
    run = tmp_path / "run"  # a training run: checkpoints/latest -> step_N/ with tokenizer/
    step = run / "checkpoints" / "step_0000007"
    _touch(step / "tokenizer", "tokenizer.json")
    (step / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (step.parent / "latest").write_text(step.name)
    for p in (run, run / "checkpoints", run / "checkpoints" / "latest", step):
        assert find_tokenizer_dir(p) == step / "tokenizer", p
    assert checkpoint_tokenizer_files(ModelSpec(init="mcore", path=str(run))) == [step / "tokenizer" / "tokenizer.json"]


def test_none_where_there_is_none(tmp_path):
    only_gen = tmp_path / "g"
    _touch(only_gen, "generation_config.json")  # accompanies a tokenizer, does not make one
    assert find_tokenizer_dir(only_gen) is None and tokenizer_files(None) == []
    assert find_tokenizer_dir(tmp_path / "missing") is None
    assert checkpoint_tokenizer_files(ModelSpec(init="random"), tmp_path) == []
