import json

import pytest
import torch

from megatron_ads.checkpoint.hf_io import is_fp8_weight
from megatron_ads.checkpoint.hf_io import CheckpointError, HFCheckpoint
from megatron_ads.cli import main


@pytest.mark.parametrize("fp8", [False, True])
def test_init_model_output_loads_in_transformers(tmp_path, fp8):
    import transformers

    out = tmp_path / "ckpt"
    argv = ["init-model", "--flavor", "tiny_deepseek_v3", "--out", str(out), "--seed", "3"] + (["--fp8"] if fp8 else [])
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert ("quantization_config" in cfg) == fp8
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits.float()).all()
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "query: running shoes | ad: trail shoes <Label>good</Label>"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) <= cfg["vocab_size"]
    ck = HFCheckpoint(out)
    fp8_keys = [k for k in ck.keys() if ck.is_fp8(k)]
    if fp8:
        assert fp8_keys and all(is_fp8_weight(k) for k in fp8_keys)
        assert not any(ck.is_fp8(k) for k in ck.keys() if "embed" in k or "lm_head" in k or "norm" in k
                       or k.endswith("mlp.gate.weight"))
        assert ck.raw(fp8_keys[0]).dtype == torch.float8_e4m3fn
    else:
        assert not fp8_keys


def test_same_seed_same_weights(tmp_path):
    for name in ("a", "b"):
        assert main(["init-model", "--flavor", "tiny_llama", "--out", str(tmp_path / name), "--seed", "5"]) == 0
    a, b = HFCheckpoint(tmp_path / "a"), HFCheckpoint(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a.get(k), b.get(k)) for k in a.keys())


def test_init_model_refuses_nonempty_out(tmp_path, capsys):
    (tmp_path / "x").write_text("keep me")
    assert main(["init-model", "--flavor", "tiny_llama", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "x").read_text() == "keep me"


def test_fp8_weight_without_scale_is_an_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 4).to(torch.float8_e4m3fn)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no 'model.layers.0.mlp.down_proj.weight_scale_inv'"):
        HFCheckpoint(tmp_path).get("model.layers.0.mlp.down_proj.weight")


def test_missing_and_corrupt_shards_are_named(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "part-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="part-1.safetensors"):
        HFCheckpoint(tmp_path)
    (tmp_path / "part-1.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="part-1.safetensors"):
        HFCheckpoint(tmp_path).get("a")
