import os
import re

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Triton kernels run in its interpreter on a machine without CUDA. Triton reads the variable when a kernel
# is decorated, i.e. when kernels.fp8_triton is first imported, by whichever test gets there first: set it
# here, before any test module is collected (worker processes inherit it). torch's CPU paths never use Triton.
if not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# What must never reach the console of a CLI run: a Python warning, a traceback fragment, a third-party bar.
CONSOLE_NOISE = re.compile(r"Warning:|Traceback|File \"|return func\(|Loading weights|Writing model shards|\d+it/s\]")
# A line of ours on stderr: the project logger's "[tag] ..." (a time first), "[tag rN] ..." on ranks > 0.
LOG_LINE = re.compile(r"^(\d\d:\d\d:\d\d )?\[[\w.-]+( r\d+)?\] ")


@pytest.fixture(scope="module")
def single_rank_module():
    """For test modules whose inference loads start a 1-rank process group (``infer.weights.init_single_rank``):
    the group lives for the module and is destroyed after it, so later modules start without one."""
    from megatron_ads.runtime.dist import destroy

    yield
    destroy()


def _build_hf_chunk(hf_dir, single_rank: str = "auto", experts: str = "grouped"):
    """One-rank model chunk of the HF checkpoint ``hf_dir`` (fp32, CPU, no MTP: transformers saves no MTP
    tensors) built with ``single_rank`` / ``experts`` and loaded from it, in train mode; (model, cfg)."""
    import dataclasses

    import torch

    from megatron_ads.checkpoint.hf_io import HFCheckpoint
    from megatron_ads.checkpoint.load import current_coord, load_hf_into_chunk
    from megatron_ads.config.model import ModelConfig
    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.infer.weights import init_parallel
    from megatron_ads.model.build import build_model_chunk

    par = ParallelConfig()
    init_parallel(par)
    cfg = dataclasses.replace(ModelConfig.from_hf(str(hf_dir)), num_mtp_layers=0)
    torch.manual_seed(0)
    model = build_model_chunk(cfg, par, dtype="fp32", device="cpu", experts=experts, single_rank=single_rank)
    load_hf_into_chunk(model, HFCheckpoint(str(hf_dir)), cfg, par, current_coord())
    return model.train(), cfg


@pytest.fixture
def hf_chunk():
    """``build(hf_dir, single_rank="auto", experts="grouped")`` -> (model, cfg): the one-rank model chunk of an
    HF checkpoint (fp32, CPU, no MTP), built with those options and loaded from it, in train mode. Starts the
    one-rank group: with ``single_rank_module``."""
    return _build_hf_chunk


@pytest.fixture
def console_noise():
    """``check(stdout, stderr)`` -> the offending lines: noise anywhere, or a stderr line not from our logger
    (argparse's own usage/error lines, ``megatron-ads: error: ...``, are ours too)."""

    def check(stdout: str, stderr: str) -> list[str]:
        bad = [line for line in (stdout + "\n" + stderr).splitlines() if CONSOLE_NOISE.search(line)]
        bad += [line for line in stderr.splitlines()
                if line.strip() and not LOG_LINE.match(line) and not line.startswith(("usage:", "megatron-ads"))]
        return bad

    return check


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


# Checkpoints written by transformers' own ``save_pretrained`` (not our init-model), at small configs that
# vary what our flavors fix. DeepSeek: group-limited routing only where megatron agrees with HF
# (num_experts_per_tok / topk_group == 2, or one group; docs/architecture.md). Each declares
# num_nextn_predict_layers=1 (the transformers default) and holds no MTP tensors.
HF_SAVED = {
    # q_lora, YaRN, 2 groups keep 1 (topk 2), a dense first layer, one shared expert
    "ds_qlora": ("DeepseekV3", dict(
        vocab_size=256, hidden_size=48, intermediate_size=96, moe_intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
        topk_group=1, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, routed_scaling_factor=2.5, max_position_embeddings=256,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64, "beta_fast": 32.0, "beta_slow": 1.0,
                         "mscale": 1.0, "mscale_all_dim": 1.0},
        initializer_range=0.1)),
    # no q_lora (a single q_proj, V2-Lite style), one expert group, top-3, two dense layers, 2 shared experts
    "ds_noqlora": ("DeepseekV3", dict(
        vocab_size=200, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=4,
        num_attention_heads=2, n_routed_experts=4, n_shared_experts=2, num_experts_per_tok=3, n_group=1,
        topk_group=1, first_k_dense_replace=2, kv_lora_rank=24, q_lora_rank=None, qk_nope_head_dim=8,
        qk_rope_head_dim=16, v_head_dim=12, routed_scaling_factor=1.0, max_position_embeddings=128,
        initializer_range=0.1)),
    # 4 groups keep 2 (topk 4), every layer MoE, 16 experts, 8 heads
    "ds_groups4": ("DeepseekV3", dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=8, n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, n_group=4,
        topk_group=2, first_k_dense_replace=0, kv_lora_rank=32, q_lora_rank=32, qk_nope_head_dim=8,
        qk_rope_head_dim=8, v_head_dim=8, routed_scaling_factor=1.5, max_position_embeddings=128,
        initializer_range=0.1)),
    # GQA 6:2, tied embeddings
    "llama_tied": ("Llama", dict(
        vocab_size=300, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, max_position_embeddings=128,
        initializer_range=0.1)),
    # MHA with head_dim != hidden / heads, llama3 rope scaling, untied
    "llama_hd": ("Llama", dict(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, head_dim=16, tie_word_embeddings=False, max_position_embeddings=16384,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        initializer_range=0.1)),
    # qkv bias, MQA (one kv head), untied
    "qwen2": ("Qwen2", dict(
        vocab_size=256, hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5,
        num_key_value_heads=1, tie_word_embeddings=False, rope_theta=1000000.0, max_position_embeddings=128,
        initializer_range=0.1)),
}


@pytest.fixture(scope="session")
def hf_saved(tmp_path_factory):
    """``get(name, dtype="fp32"|"bf16")``: the HF_SAVED checkpoint ``name`` as transformers'
    ``save_pretrained`` writes it (seeded; norms and expert bias perturbed so the mapping of each shows),
    written once per session."""
    root = tmp_path_factory.mktemp("hf_saved")
    cache = {}

    def get(name: str, dtype: str = "fp32"):
        key = (name, dtype)
        if key not in cache:
            import zlib

            import torch
            import transformers

            arch, kwargs = HF_SAVED[name]
            config = getattr(transformers, f"{arch}Config")(**kwargs)
            torch.manual_seed(zlib.crc32(name.encode()))
            model = getattr(transformers, f"{arch}ForCausalLM")(config).float()
            with torch.no_grad():
                for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
                    if pname.endswith("norm.weight") or pname.endswith("e_score_correction_bias"):
                        t.add_(torch.randn(t.shape) * 0.1)
            out = root / f"{name}_{dtype}"
            model.to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]).save_pretrained(str(out))
            cache[key] = out
        return cache[key]

    return get
