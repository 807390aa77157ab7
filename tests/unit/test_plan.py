import json
from pathlib import Path

import pytest
import yaml

from megatron_ads.cli import main
from megatron_ads.config.flavors import flavor
from megatron_ads.layout.experts import ep_rank_of_expert, expert_ranges
from megatron_ads.layout.memory import layer_activation_bytes, stage_memory, stage_params
from megatron_ads.layout.plan import Cluster, ParallelPlan, PlanError, TrainShape, auto_plan, balance_stages, build_plan

REPO = Path(__file__).resolve().parents[2]
FACTS = REPO.parent / "shared" / "facts" / "deepseek_v3_config.json"


def _v3():
    from megatron_ads.config.model import ModelConfig

    return ModelConfig.from_hf(FACTS) if FACTS.exists() else flavor("deepseek_v3")


@pytest.fixture(scope="module")
def paper_plan():
    return auto_plan(_v3(), Cluster(nodes=31, gpus_per_node=8, gpu_mem_gb=80), TrainShape())


def test_auto_reproduces_the_papers_248_gpu_layout(paper_plan):
    p = paper_plan
    assert (p.tp, p.pp, p.ep, p.dp, p.world_size) == (1, 31, 8, 8, 248)
    layers = [layer for s in p.stages for layer in s.layers]
    assert layers == list(range(61))
    assert all(1 <= len(s.layers) <= 2 for s in p.stages)
    first = p.stages[0]
    assert first.has_embedding and not first.moe_layers and p.dense_only_stages == [0]
    assert p.stages[-1].has_output and p.stages[-1].has_mtp
    assert [(e["first"], e["last"]) for e in p.experts] == [(32 * r, 32 * r + 31) for r in range(8)]
    assert abs(p.total_params / 1e9 - 671.03) / 671.03 < 0.0005
    assert abs(p.active_params / 1e9 - 37.55) / 37.55 < 0.01
    assert p.mtp_params > 0 and p.distributed_optimizer
    assert all(s.memory_gb < 80 for s in p.stages) and p.fits
    # MoE all-to-all stays inside a node; only pipeline hops cross nodes
    assert p.traffic["ep_all_to_all_bytes_per_step"]["inter_node"] == 0
    assert p.traffic["dp_grad_bytes_per_step"]["inter_node"] == 0
    assert p.traffic["pp_p2p_bytes_per_step"]["inter_node"] > 0


def test_plan_json_round_trip(paper_plan, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(paper_plan.to_json())
    again = ParallelPlan.load(path)
    assert again.to_dict() == json.loads(paper_plan.to_json())
    assert again.to_parallel_config().stage_layers == [len(s.layers) for s in paper_plan.stages]


def test_cli_plan_json_fields(capsys):
    args = ["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8", "--gpu-mem-gb", "80", "--json"]
    assert main(args) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("tp", "pp", "ep", "dp", "expert_dp", "world_size", "total_params", "active_params", "stages",
                "experts", "dense_only_stages"):
        assert key in d
    for key in ("index", "layers", "has_embedding", "has_output", "has_mtp", "moe_layers", "params", "memory_gb"):
        assert key in d["stages"][0]


@pytest.mark.parametrize("extra, needle", [
    (["--tp", "1", "--pp", "31", "--ep", "7"], "ep"),
    (["--pp", "62"], "pp"),
    (["--tp", "3"], "tp"),
])
def test_impossible_requests_exit_2_naming_the_constraint(extra, needle, capsys):
    args = ["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8"] + extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err.split("error:")[1]


def test_layout_that_cannot_fit_exits_2(capsys):
    assert main(["plan", "--flavor", "deepseek_v3", "--nodes", "1", "--gpus-per-node", "8"]) == 2
    assert "memory" in capsys.readouterr().err
    assert main(["plan", "--flavor", "deepseek_v3", "--nodes", "31", "--gpus-per-node", "8",
                 "--tp", "1", "--pp", "31", "--ep", "8", "--gpu-mem-gb", "40"]) == 2
    assert "more than --gpu-mem-gb 40" in capsys.readouterr().err


def test_balance_stages():
    assert balance_stages([1.0] * 8, 4) == [2, 2, 2, 2]
    assert balance_stages([1.0] * 61, 31, last_extra=3.0) == [2] * 30 + [1]
    assert balance_stages([4.0, 1.0, 1.0, 1.0, 1.0], 2) == [1, 4]
    assert balance_stages([1.0, 1.0, 1.0], 3) == [1, 1, 1]
    with pytest.raises(PlanError):
        balance_stages([1.0], 2)


def test_expert_ranges():
    assert expert_ranges(256, 8)[7] == {"ep_rank": 7, "first": 224, "last": 255}
    assert ep_rank_of_expert(225, 256, 8) == (7, 1)
    with pytest.raises(ValueError, match="ep"):
        expert_ranges(256, 7)


def test_memory_arithmetic_by_hand():
    cfg = flavor("tiny_llama")  # h=64, ffn=160, heads 4, kv 2, d=16, vocab 1024, untied
    h, ffn, d = 64, 160, 16
    layer = 2 * h + h * (4 * d + 2 * 2 * d) + 4 * d * h + 3 * h * ffn
    p = stage_params(cfg, [0, 1], first=True, last=False, tp=1, ep=1, mtp=False)
    assert p.dense == 2 * layer + 1024 * h and p.expert == 0
    mem = stage_memory(cfg, [0, 1], stage=0, pp=2, tp=1, ep=1, dp=4, edp=4, seq_len=8, micro_batch=1,
                       recompute="none", distributed_optimizer=True, mtp=False)
    n = p.dense
    assert mem["weights_gb"] == pytest.approx(2 * n / 1e9)
    assert mem["grads_gb"] == pytest.approx(4 * n / 1e9)
    assert mem["optimizer_gb"] == pytest.approx(12 * n / 4 / 1e9)
    act = 2 * layer_activation_bytes(cfg, False, 8, 1) * 2  # 2 layers x 2 micro-batches in flight
    assert mem["activations_gb"] == pytest.approx(act / 1e9)
    no_dist = stage_memory(cfg, [0, 1], 0, 2, 1, 1, 4, 4, 8, 1, "none", False, False)
    assert no_dist["optimizer_gb"] == pytest.approx(12 * n / 1e9)


def test_expert_optimizer_shards_over_expert_dp():
    cfg = flavor("tiny_deepseek_v3")
    m = stage_memory(cfg, [1], 0, 1, 1, ep=2, dp=4, edp=2, seq_len=8, micro_batch=1, recompute="none",
                     distributed_optimizer=True, mtp=False)
    p = stage_params(cfg, [1], True, True, 1, 2, False)
    assert m["optimizer_gb"] == pytest.approx(12 * (p.dense / 4 + p.expert / 2) / 1e9)


def test_committed_recipe_matches_the_plan():
    committed = yaml.safe_load((REPO / "launch/configs/deepseek_r1_248gpu_h100_bf16.yaml").read_text())
    from megatron_ads.layout.recipe import recipe_dict

    plan = auto_plan(flavor("deepseek_r1"), Cluster(nodes=31, gpus_per_node=8, gpu_mem_gb=80), TrainShape())
    assert committed == recipe_dict(plan, "flavor:deepseek_r1")


def test_dense_model_plan_and_svg(tmp_path):
    plan = build_plan(flavor("llama_1b"), Cluster(nodes=1, gpus_per_node=8), TrainShape(seq_len=2048), tp=2, pp=2)
    assert plan.dp == 2 and not plan.experts and not plan.dense_only_stages
    from megatron_ads.layout.report import svg, table

    assert svg(plan).startswith("<svg") and "stage 1" in svg(plan)
    assert "tp=2 pp=2" in table(plan)


def test_training_config_for_248_gpus_matches_the_plan():
    from megatron_ads.config.train import JobConfig

    job = JobConfig.load(REPO / "launch/configs/deepseek_r1_248gpu_h100_train.yaml")
    recipe = yaml.safe_load((REPO / "launch/configs/deepseek_r1_248gpu_h100_bf16.yaml").read_text())
    assert (job.parallel.tp, job.parallel.pp, job.parallel.ep) == (recipe["parallel"]["tp"], recipe["parallel"]["pp"],
                                                                    recipe["parallel"]["ep"])
    assert job.parallel.stage_layers == recipe["parallel"]["stage_layers"]
    assert job.train.num_microbatches == recipe["train"]["num_microbatches"]
