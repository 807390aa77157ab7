"""Expert placement: contiguous routed-expert ranges per EP rank (shared experts replicated)."""

from __future__ import annotations


def expert_ranges(num_experts: int, ep: int) -> list[dict[str, int]]:
    """``[{ep_rank, first, last}]`` with ``num_experts / ep`` contiguous experts per EP rank."""
    if num_experts == 0:
        return []
    if ep < 1 or num_experts % ep:
        raise ValueError(f"ep: {num_experts} routed experts cannot be split evenly over ep={ep} "
                         f"(ep must divide n_routed_experts)")
    n = num_experts // ep
    return [{"ep_rank": r, "first": r * n, "last": (r + 1) * n - 1} for r in range(ep)]


def ep_rank_of_expert(expert: int, num_experts: int, ep: int) -> tuple[int, int]:
    """(EP rank, local index) holding global expert ``expert``."""
    n = num_experts // ep
    return expert // n, expert % n
