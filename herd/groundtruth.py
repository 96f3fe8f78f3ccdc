"""Ground truth: per-flow packet counts over the whole trace and the heavy-hitter threshold T."""

from __future__ import annotations

import math

import numpy as np

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
