"""GRPO with RELATE's reward channels on ad_rewrite (issue 15; recipe ``launch/configs/grpo_relate_tiny_cpu.yaml``):
``length``, the token-level ``blacklist`` and ``diversity``, and ``ctr_uplift`` from a frozen CTR model that
``tools/make_reward_models.py`` trained and saved under tmp_path, named by ``grpo.resources``; the ESMM
model also named there is never loaded (no used reward reads it). Tiny random-init DeepSeek-V3, G = 5.

A random model's rollouts hit no blacklisted term, share no n-gram and all fail to parse (every group's RELATE
channels are constant: no sentence-level signal), so a test channel ``test_token_e`` (registered here: sentence
value 0, token value −1 on every completion token whose text holds an "e") checks that token-level values reach
the loss through grpo.token_alpha > 0 (A_{i,t} = 0 + α·r_token: a non-zero gradient)."""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed
ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "launch" / "configs" / "grpo_relate_tiny_cpu.yaml"
CHANNELS = ("length", "blacklist", "diversity", "ctr_uplift", "test_token_e")
REWARDS = ("grpo.rewards={ad_rewrite: {length: 0.5, blacklist: 1.0, diversity: 1.0, ctr_uplift: 1.0, "
           "test_token_e: 1.0}}")
COMMON = ["train.steps=2", "train.seq_len=192", "grpo.max_new_tokens=16", "sft.train_size=100", "grpo.kl_beta=0.0",
          REWARDS]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Both frozen reward models, tiny (few rows, few epochs), written by the recipe's script."""
    spec = importlib.util.spec_from_file_location("make_reward_models", ROOT / "tools" / "make_reward_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("reward_models")
    res = mod.main(["--out", str(out), "--ctr-rows", "60", "--esmm-rows", "60", "--ctr-epochs", "5",
                    "--esmm-epochs", "5"])
    return Path(res["ctr_model"]), Path(res["esmm_model"])


@dataclass(kw_only=True, slots=True)
class _NoParams:
    """The test reward has no parameters."""


def _register_test_reward():
    from megatron_ads.rewards import registry

    if "test_token_e" in registry.REWARDS:
        return

    @registry.register("test_token_e", _NoParams, doc="test: token value -1 on tokens whose text holds an 'e'")
    def _build(params, resources):
        decode = resources.need("decode", "test_token_e")

        def fn(prompts, completions, task, meta):
            toks = []
            for text, row in zip(completions, meta):
                spans = registry.token_spans(row[registry.COMPLETION_IDS], decode, text)
                toks.append([-1.0 if "e" in text[a:b] else 0.0 for a, b in spans])
            return registry.RewardOutput([0.0] * len(completions), token_values=toks)

        return fn


def _worker(job_dict):
    _register_test_reward()
    from megatron_ads.cli.workers import grpo_trainer
    from megatron_ads.rewards import ctr, esmm

    loads = []
    ctr_load = ctr.CTRModel.load.__func__

    def counting_load(cls, *a, **kw):
        loads.append("ctr_model")
        return ctr_load(cls, *a, **kw)

    def refuse(cls, *a, **kw):
        raise AssertionError("esmm_model loaded although no used reward reads it")

    ctr.CTRModel.load = classmethod(counting_load)
    esmm.ESMMModel.load = classmethod(refuse)
    tr = grpo_trainer(job_dict)
    summary = tr.run()
    return {"loads": loads, "steps": summary["steps"]}


def test_grpo_relate_channels_with_a_saved_ctr_model(model_dirs, tmp_path):
    ctr_dir, esmm_dir = model_dirs
    job = JobConfig.load(CFG, [f"out_dir={tmp_path}", *COMMON,
                               f"grpo.resources={{ctr_model: {ctr_dir}, esmm_model: {esmm_dir}}}"])
    assert job.grpo.group_size == 5 and job.grpo.token_alpha > 0
    r = spawn(_worker, 1, job.to_dict())[0]
    assert r["loads"] == ["ctr_model"] and r["steps"] == 2  # loaded once, the unused ESMM model never
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in recs] == [1, 2]
    for rec in recs:
        for ch in CHANNELS:
            for stat in ("mean", "std"):
                k = f"reward/ad_rewrite/{ch}/{stat}"
                assert k in rec and rec[k] is not None, (k, sorted(rec))
        assert rec["reward/ad_rewrite/blacklist/mean"] <= 0.0 and rec["reward/ad_rewrite/diversity/mean"] <= 0.0
        assert rec["grad_norm"] > 0.0  # the token-level channel's credit (sentence advantages are all 0 here)


def test_resources_config_errors_name_the_key(model_dirs, tmp_path):
    ctr_dir, _ = model_dirs
    base = [f"out_dir={tmp_path}", *COMMON]
    with pytest.raises(ValueError, match=r"grpo\.resources\.esmm_model: .*no such directory"):
        JobConfig.load(CFG, base)  # the recipe's runs/reward_models/esmm does not exist here
    with pytest.raises(ValueError, match=r"grpo\.resources\.bogus_model: unknown resource"):
        JobConfig.load(CFG, [*base, f"grpo.resources={{bogus_model: {ctr_dir}}}"])
    # perf_model (RLPF's reward model, a `train rm` run directory) is a resource; checked when the trainer loads it
    assert JobConfig.load(CFG, [*base, f"grpo.resources={{perf_model: {ctr_dir}}}"]).grpo.resources == {
        "perf_model": str(ctr_dir)}
    with pytest.raises(ValueError, match=r"grpo\.resources\.ctr_model: .*no such directory"):
        JobConfig.load(CFG, [*base, f"grpo.resources={{ctr_model: {tmp_path / 'nope'}}}"])
    with pytest.raises(ValueError, match=r"grpo\.resources\.ctr_model: expected a model directory"):
        JobConfig.load(CFG, [*base, "grpo.resources={ctr_model: 3}"])
    assert JobConfig.load(CFG, [*base, "grpo.resources={}"]).grpo.resources == {}


def test_build_rewards_loads_only_what_a_used_reward_needs(model_dirs, tmp_path):
    """A directory that is no model: never touched unless a used reward needs it; then the error names the key."""
    from megatron_ads.train.grpo_loop import build_rewards

    bad = tmp_path / "not_a_model"
    bad.mkdir()
    fns, _ = build_rewards({"ad_rewrite": {"length": 1.0}}, 0, models={"esmm_model": str(bad)})
    assert set(fns) == {"length"}
    with pytest.raises(ValueError, match=r"grpo\.resources\.esmm_model: .*cannot load"):
        build_rewards({"ad_rewrite": {"ctcvr": 1.0}}, 0, models={"esmm_model": str(bad)})
    with pytest.raises(ValueError, match=r"resources\.ctr_model: reward 'ctr_uplift' needs it"):
        build_rewards({"ad_rewrite": {"ctr_uplift": 1.0}}, 0, models={"esmm_model": str(bad)})
    fns, _ = build_rewards({"ad_rewrite": {"ctcvr": 1.0}}, 0, models={"esmm_model": str(model_dirs[1])})
    out = fns["ctcvr"](["p"], ["<Title>Nike shoes</Title><Description>Shop now.</Description>"], "ad_rewrite",
                       [{"keyword": "shoes", "ad": {"title": "Old", "description": "Old text"}}])
    assert 0.0 <= out.values[0] <= 1.0
