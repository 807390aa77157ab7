"""Seeding of python, numpy, torch and megatron's model-parallel RNG tracker."""

import random

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (and megatron's model-parallel RNG tracker if initialized)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    from megatron.core import parallel_state  # heavy: megatron-core only where it is used

    if parallel_state.model_parallel_is_initialized():
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed  # heavy, as above

        model_parallel_cuda_manual_seed(seed)
