"""Source canaries for the megatron-core 0.16.1 distributed-optimizer defects that train/ckpt.py patches
(without Apex/TransformerEngine, i.e. torch's Adam — our CPU path and the GPU image alike). When an
upgrade fixes one, its canary fails: drop the patch then."""

import inspect

import pytest

dopt = pytest.importorskip("megatron.core.optimizer.distrib_optimizer")


def test_state_dict_asserts_on_a_shard_without_state():
    src = inspect.getsource(dopt.DistributedOptimizer.state_dict)
    assert 'steps = list(set([s["step"].item() for s in inner_state_dict["state"].values()]))' in src
    assert "assert len(steps) == 1" in src


def test_fully_reshardable_load_copies_adam_step_from_tensors_without_it():
    setter = inspect.getsource(dopt.DistributedOptimizer._set_main_param_and_optimizer_states)
    assert 'dst_tensors = {"param": main_param, **optim_state}' in setter
    loader = inspect.getsource(dopt.DistributedOptimizer.load_parameter_state_from_fully_reshardable)
    assert 'if k == "step":' in loader and "continue" in loader


def test_load_state_dict_shares_one_step_tensor():
    src = inspect.getsource(dopt.DistributedOptimizer.load_state_dict)
    assert 'step = torch.tensor(steps[0], dtype=torch.float)' in src
    assert 's["step"] = step' in src


def test_patches_apply_only_without_apex_or_te():
    from megatron_ads.train.ckpt import _patch_distributed

    assert dopt.HAVE_APEX_OR_TE is False  # this machine: torch Adam (the case the patches are for)

    class NotDistributed:
        pass

    obj = NotDistributed()
    orig = dopt.HAVE_APEX_OR_TE
    try:
        dopt.HAVE_APEX_OR_TE = True
        _patch_distributed(obj)
        assert not hasattr(obj, "_megatron_ads_patched")
    finally:
        dopt.HAVE_APEX_OR_TE = orig
