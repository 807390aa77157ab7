"""Seeding of python, numpy, torch and megatron's model-parallel RNG tracker."""

import torch


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (and megatron's model-parallel RNG tracker if initialized)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)
