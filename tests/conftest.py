import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_ckpts(tmp_path_factory):
    """Random-weight HF checkpoints of the tiny flavors, written once per test session."""
    from megatron_ads.checkpoint.hf_init import write_random_checkpoint
    from megatron_ads.config.flavors import flavor_dict
    from megatron_ads.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("ckpts")
    cache = {}

    def get(name: str, fp8: bool = False, dtype: str = "fp32"):
        key = (name, fp8, dtype)
        if key not in cache:
            out = root / f"{name}{'_fp8' if fp8 else ''}_{dtype}"
            cfg = flavor_dict(name)
            write_random_checkpoint(cfg, out, seed=7, fp8=fp8, dtype=dtype,
                                    tokenizer=train_bpe_tokenizer(cfg["vocab_size"]))
            cache[key] = out
        return cache[key]

    return get
