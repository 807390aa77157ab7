import pytest
import torch

from megatron_ads.data.packing import collate, encode
from megatron_ads.data.synthetic import SyntheticConfig, generate
from megatron_ads.data.tasks import task
from megatron_ads.data.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tok():
    rows = generate("query_ad", SyntheticConfig(size=200, seed=0))
    spec = task("query_ad")
    return train_bpe_tokenizer(2048, [spec.prompt(r) + spec.target(r) for r in rows])


def test_loss_mask_covers_exactly_the_target(tok):
    spec = task("query_ad")
    row = generate("query_ad", SyntheticConfig(size=1, seed=1))[0]
    ex = encode(tok, spec, row, seq_len=256)
    b = collate([ex])
    masked = b["labels"][0][b["loss_mask"][0].bool()].tolist()
    target_ids = tok(spec.target(row), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert masked == target_ids and ex.n_target == len(target_ids)
    assert tok.decode(masked[:-1]) == spec.target(row)
    # the prompt mask covers exactly the labels that are prompt tokens (for sft.prompt_loss_weight)
    prompt_labels = b["labels"][0][b["prompt_mask"][0].bool()].tolist()
    prompt_ids = tok(spec.prompt(row), add_special_tokens=False)["input_ids"]
    assert prompt_labels == prompt_ids[1:]
    assert not (b["prompt_mask"] * b["loss_mask"]).any()


def test_prompt_is_left_truncated_and_long_targets_are_refused(tok):
    spec = task("query_ad")
    row = generate("query_ad", SyntheticConfig(size=1, seed=2))[0]
    n_target = len(tok(spec.target(row), add_special_tokens=False)["input_ids"]) + 1
    ex = encode(tok, spec, row, seq_len=n_target + 5)
    assert sum(ex.mask) == n_target and len(ex.tokens) == n_target + 6
    assert ex.n_prompt == 6 and collate([ex])["prompt_mask"].sum() == 5
    with pytest.raises(ValueError, match="seq_len"):
        encode(tok, spec, row, seq_len=n_target - 2)


def test_label_only_mode_has_empty_think(tok):
    spec = task("ad_user")
    row = generate("ad_user", SyntheticConfig(size=1, seed=3))[0]
    ex = encode(tok, spec, row, seq_len=256, label_only=True)
    text = tok.decode([t for t, m in zip(ex.tokens[1:], ex.mask) if m][:-1])
    assert text.startswith("<think></think>") and f"<Score>{row['score']}</Score>" in text
    assert torch.equal(collate([ex, ex])["tokens"][0], collate([ex])["tokens"][0])
