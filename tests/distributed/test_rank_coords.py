"""ParallelPlan rank coordinates agree with megatron-core's own parallel_state groups (gloo)."""

import pytest

from megatron_ads.runtime.launch import spawn

pytestmark = pytest.mark.distributed


def _coords(tp, pp, ep):
    from megatron.core import parallel_state as ps

    from megatron_ads.config.parallel import ParallelConfig
    from megatron_ads.layout.groups import init_model_parallel
    from megatron_ads.runtime.dist import init_distributed

    _, env = init_distributed(timeout_s=120)
    init_model_parallel(ParallelConfig(tp=tp, pp=pp, ep=ep))
    return {"rank": env.rank, "tp": ps.get_tensor_model_parallel_rank(), "pp": ps.get_pipeline_model_parallel_rank(),
            "dp": ps.get_data_parallel_rank(), "ep": ps.get_expert_model_parallel_rank(),
            "edp": ps.get_expert_data_parallel_rank(), "etp": ps.get_expert_tensor_parallel_rank()}


@pytest.mark.parametrize("name, tp, pp, ep", [
    ("tiny_llama", 2, 2, 1),
    ("tiny_deepseek_v3", 1, 2, 2),
    ("tiny_deepseek_v3", 1, 2, 4),
])
def test_plan_coords_match_megatron(name, tp, pp, ep):
    from megatron_ads.config.flavors import flavor
    from megatron_ads.layout.plan import Cluster, TrainShape, build_plan

    plan = build_plan(flavor(name), Cluster(nodes=2, gpus_per_node=4), TrainShape(seq_len=16), tp=tp, pp=pp, ep=ep)
    got = spawn(_coords, 8, tp, pp, ep)
    for row in got:
        mine = plan.rank_coords(row["rank"])
        assert {k: mine[k] for k in ("tp", "pp", "dp", "ep", "edp", "etp")} == \
            {k: row[k] for k in ("tp", "pp", "dp", "ep", "edp", "etp")}, row["rank"]
