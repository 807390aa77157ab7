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
