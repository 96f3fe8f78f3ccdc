"""Ground truth: per-flow packet counts over the whole trace and the heavy-hitter threshold T."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from herd.errors import HerdInputError


def flow_counts(flow: np.ndarray, flows: int) -> np.ndarray:
    """Packets per flow, from the per-packet flow index."""
    return np.bincount(flow, minlength=flows).astype(np.int64)


def threshold(counts: np.ndarray, percentile: float = 99.0) -> int:
    """T = floor(numpy percentile of the flow sizes, linear method), as DESIGN.md fixes it."""
    if not 0.0 <= percentile <= 100.0:
        raise HerdInputError(f"percentile: {percentile} is not in [0, 100]")
    if len(counts) == 0:
        raise HerdInputError("trace has no IPv4 flows, so there is no threshold T")
    return int(math.floor(np.percentile(counts, percentile, method="linear")))


def heavy_hitters(counts: np.ndarray, T: int) -> np.ndarray:
    """Boolean mask over flows: a flow is a heavy hitter iff its count >= T."""
    return counts >= T


@njit(cache=True)
def crossing_times(flow: np.ndarray, ts_ns: np.ndarray, flows: int, T: int) -> np.ndarray:
    """When each flow became a heavy hitter: the time of its T-th packet (int64 max if never)."""
    seen = np.zeros(flows, dtype=np.int64)
    out = np.full(flows, np.iinfo(np.int64).max, dtype=np.int64)
    for i in range(len(flow)):
        f = flow[i]
        seen[f] += 1
        if seen[f] == T:
            out[f] = ts_ns[i]
    return out
