import pytest

from megatron_ads.runtime.dist import expand_slurm_nodelist, read_env


def test_expand_slurm_nodelist():
    assert expand_slurm_nodelist("gpu[001-003,007],login1") == ["gpu001", "gpu002", "gpu003", "gpu007", "login1"]
    assert expand_slurm_nodelist("node7") == ["node7"]
    assert expand_slurm_nodelist("a[1-2],b[10-11]") == ["a1", "a2", "b10", "b11"]


def test_torchrun_env_wins():
    env = read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234",
                    "SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port, env.launcher) == \
        (3, 8, 1, "h", 1234, "torchrun")


def test_slurm_env():
    env = read_env({"SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
                    "SLURM_JOB_NODELIST": "gpu[010-011]"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.launcher) == (9, 16, 1, "gpu010", "slurm")
    with pytest.raises(ValueError, match="NODELIST"):
        read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})


def test_single_process_default():
    env = read_env({})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single")


def test_worker_start_method_is_named(monkeypatch):
    from megatron_ads.runtime import launch

    monkeypatch.setenv("MEGATRON_ADS_START_METHOD", "threads")
    with pytest.raises(ValueError, match="MEGATRON_ADS_START_METHOD: expected forkserver or spawn"):
        launch.start_method()
    monkeypatch.setenv("MEGATRON_ADS_START_METHOD", "spawn")
    assert launch.start_method() == "spawn"


@pytest.fixture
def one_rank_group():
    """A 1-rank gloo default group in this process (destroyed afterwards)."""
    import datetime

    import torch.distributed as dist

    from megatron_ads.runtime.launch import free_port

    assert not dist.is_initialized(), "an earlier test left a process group initialized in this process"
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=77))
    yield dist
    dist.destroy_process_group()


def _timeout(pg):
    import torch

    return pg._get_backend(torch.device("cpu")).options._timeout.total_seconds()  # read back (test only)


def test_set_group_timeouts_reaches_every_group_of_this_rank(one_rank_group):
    import datetime

    from megatron_ads.runtime.dist import set_group_timeouts, this_ranks_groups

    dist = one_rank_group
    sub = dist.new_group([0], timeout=datetime.timedelta(seconds=5))
    groups = this_ranks_groups()
    assert sub in groups and dist.group.WORLD in groups  # torch's private group list still where we read it
    assert (_timeout(dist.group.WORLD), _timeout(sub)) == (77, 5)
    assert set_group_timeouts(3.5) == len(groups)
    assert (_timeout(dist.group.WORLD), _timeout(sub)) == (3.5, 3.5)
    assert set_group_timeouts(9, [sub]) == 1 and (_timeout(dist.group.WORLD), _timeout(sub)) == (3.5, 9)
    with pytest.raises(ValueError, match="not a process group"):
        set_group_timeouts(9, [dist.GroupMember.NON_GROUP_MEMBER])
    with pytest.raises(ValueError, match="expected > 0"):
        set_group_timeouts(0)


def test_megatron_groups_take_a_timeout_in_seconds(one_rank_group):
    """The public route: megatron-core builds its groups with timedelta(minutes=...), fractions included."""
    from megatron.core import parallel_state as ps

    from megatron_ads.runtime.dist import megatron_timeout_minutes

    ps.initialize_model_parallel(distributed_timeout_minutes=megatron_timeout_minutes(7))
    try:
        assert _timeout(ps.get_tensor_model_parallel_group()) == 7
        assert _timeout(ps.get_expert_model_parallel_group()) == 7
    finally:
        ps.destroy_model_parallel()


def test_single_process_needs_no_port(tmp_path):
    """A single-process run (no launcher) rendezvous in-process: another process holding MASTER_PORT's default
    (two single-process trainings on one machine) does not stop it."""
    import socket
    import subprocess
    import sys

    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 29500))
        held.listen()
    except OSError:
        pass  # something already holds it: the check below holds all the same
    try:
        code = ("import torch.distributed as dist\n"
                "from megatron_ads.runtime.dist import init_distributed\n"
                "init_distributed(timeout_s=30)\n"
                "assert dist.get_world_size() == 1\n"
                "g = dist.new_group([0])\n"  # groups work on the in-process store too
                "dist.destroy_process_group()\n")
        env = {k: v for k, v in __import__("os").environ.items()
               if k not in ("RANK", "WORLD_SIZE", "MASTER_PORT", "MASTER_ADDR", "SLURM_PROCID", "SLURM_NTASKS")}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
    finally:
        held.close()
