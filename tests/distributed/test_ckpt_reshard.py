"""Training checkpoints (torch_dist) resume on another layout: weights and Adam moments resharded exactly,
the first resumed step's loss equal to the same-layout resume."""

import json
from pathlib import Path

import pytest
import torch

from megatron_ads.checkpoint.dist_io import DistShard, read_common
from megatron_ads.config.train import JobConfig
from megatron_ads.runtime.launch import spawn
from megatron_ads.train.loop import Trainer, train_worker

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # each test > ~40 s on 2 cores
REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "launch" / "configs" / "tiny_cpu.yaml"
EXPERT_FC1 = "decoder.layers.1.mlp.experts.experts.linear_fc1.weight"
DENSE = "decoder.layers.0.self_attention.linear_proj.weight"  # lives on the dense-only first stage at pp=2


def job(tmp, name, *overrides):
    return JobConfig.load(TINY, [f"out_dir={tmp / name}", *overrides])


def _resumed_worker(job_dict):
    """Resume, then report this rank's moments of the sample tensors (by global key) and one step's loss."""
    from megatron.core import parallel_state as ps

    tr = Trainer(JobConfig.from_dict(job_dict))
    tr.maybe_resume()
    per = tr.cfg.num_experts // tr.par.ep
    first = ps.get_expert_model_parallel_rank() * per
    params = dict(tr.model.module.named_parameters())
    grouped = "decoder.layers.1.mlp.experts.linear_fc1.weight"  # GroupedExperts: [E_local, 2F, D], expert e = [e]
    if grouped in params:
        wanted = {(grouped, e): (EXPERT_FC1, first + e) for e in range(per)}
    else:  # SequentialMLP: one tensor per local expert
        wanted = {(f"decoder.layers.1.mlp.experts.local_experts.{e}.linear_fc1.weight", None): (EXPERT_FC1, first + e)
                  for e in range(per)}
    wanted[(DENSE, None)] = (DENSE, None)
    state = {}
    for opt in tr.optimizer.chained_optimizers:
        state.update(getattr(opt.optimizer, "state", {}))
    moments = {}
    for (name, sl), (key, idx) in wanted.items():
        if name in params:
            st = state[params[name]]

            def pick(t, sl=sl):
                return (t if sl is None else t[sl]).detach().tolist()

            moments[f"{key}[{idx}]"] = {"exp_avg": pick(st["exp_avg"]), "exp_avg_sq": pick(st["exp_avg_sq"]),
                                        "param": pick(params[name])}
    rec = tr.train_step()
    return {"moments": moments, "loss": rec["loss"], "step": tr.step, "lr": rec["lr"]}


def losses(run_dir):
    return [json.loads(x)["loss"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_same_layout_bit_exact_and_other_layouts(tmp_path):
    common = ["train.steps=6", "optim.warmup_steps=2", "checkpoint.every=3", "checkpoint.keep_last=5"]
    spawn(train_worker, 4, job(tmp_path, "full", *common).to_dict())  # pp=2 x ep=2, dp=2
    step3 = tmp_path / "full" / "checkpoints" / "step_0000003"
    layout = json.loads((step3 / "layout.json").read_text())
    assert (layout["pp"], layout["ep"], layout["world_size"], layout["format"]) == (2, 2, 4, "torch_dist")
    assert read_common(step3)["trainer"]["step"] == 3 and (step3 / "metadata.json").is_file()
    full = losses(tmp_path / "full")
    # same layout: bit for bit (fp32, CPU), three steps on
    spawn(train_worker, 4, job(tmp_path, "resumed", *common, f"resume={step3}").to_dict())
    assert len(full) == 6 and losses(tmp_path / "resumed") == full[3:]
    same = full[3]

    saved = DistShard(step3)
    flat = ["parallel.pp=1", "parallel.stage_layers=null", f"resume={step3}"]
    runs = {
        "pp1ep2": spawn(_resumed_worker, 2, job(tmp_path, "r2", *common, *flat).to_dict()),  # dp=2 x ep=2
        # one process: dp=1, so 4 micro-batches keep the global batch (and the samples) of the saved run
        "pp1ep1": spawn(_resumed_worker, 1, job(tmp_path, "r1", *common, *flat, "parallel.ep=1",
                                                "train.num_microbatches=4").to_dict()),
    }
    for name, results in runs.items():
        seen = set()
        for r in results:
            assert r["step"] == 4
            assert abs(r["loss"] - same) <= 1e-4, (name, r["loss"], same)
            for tag, got in r["moments"].items():
                key, idx = tag[:-1].split("[")
                idx = None if idx == "None" else int(idx)
                for moment in ("exp_avg", "exp_avg_sq"):
                    want = saved.read(f"optimizer.state.{moment}.{key}", idx)
                    assert torch.equal(torch.tensor(got[moment]), want), (name, tag, moment)
                assert torch.equal(torch.tensor(got["param"]), saved.read(key, idx)), (name, tag)
                assert torch.tensor(got["exp_avg"]).abs().sum() > 0  # a real moment, not a fresh zero state
                seen.add(tag)
        # every expert of the sample layer and the dense tensor were checked on some rank
        assert seen == {f"{EXPERT_FC1}[{e}]" for e in range(8)} | {f"{DENSE}[None]"}, (name, seen)


def test_distributed_optimizer_resumes_on_same_and_other_layout(tmp_path):
    """The distributed optimizer (Adam state sharded over DP) saves in the reshardable per-parameter form:
    same layout bit for bit over 3 resumed steps, pp1 x ep2 within fp32 noise."""
    common = ["train.steps=6", "optim.warmup_steps=2", "checkpoint.every=3", "checkpoint.keep_last=5",
              "optim.distributed_optimizer=true"]
    spawn(train_worker, 4, job(tmp_path, "full", *common).to_dict())
    step3 = tmp_path / "full" / "checkpoints" / "step_0000003"
    spawn(train_worker, 4, job(tmp_path, "same", *common, f"resume={step3}").to_dict())
    spawn(train_worker, 2, job(tmp_path, "other", *common, f"resume={step3}", "parallel.pp=1",
                               "parallel.stage_layers=null").to_dict())

    full = losses(tmp_path / "full")
    assert losses(tmp_path / "same") == full[3:]
    assert max(abs(a - b) for a, b in zip(losses(tmp_path / "other"), full[3:])) <= 1e-4
    # every optimizer on every rank saved the same Adam step count (one per optimizer step, not per parameter)
    steps = {g["step"] for part in read_common(tmp_path / "same" / "checkpoints" / "step_0000006")["optimizer"].values()
             for g in part["optimizer"]["param_groups"]}
    assert steps == {6.0}
