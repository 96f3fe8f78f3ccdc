"""Deterministic randomness shared bit for bit by the P4 programs and the Python model.

Each switch keeps one xorshift32 state (shifts 13, 17, 5) in a ``bit<32>`` register and
advances it once per coin flip. A probability becomes a 32-bit threshold and a flip fires
iff ``draw <= threshold``: xorshift32 never yields 0, so threshold 0 never fires and
0xFFFFFFFF always fires, exactly as DESIGN.md requires of probabilities 0 and 1.
"""

from __future__ import annotations

import numpy as np
from numba import njit

MASK32 = 0xFFFFFFFF


@njit(cache=True, inline="always")
def xorshift32(state: int) -> int:
    """The next state (and draw) of the generator; never 0 when state is not 0."""
    x = np.uint32(state)
    x ^= np.uint32(x << np.uint32(13))
    x ^= np.uint32(x >> np.uint32(17))
    x ^= np.uint32(x << np.uint32(5))
    return x


def probability_threshold(probability: float) -> int:
    """The 32-bit threshold a switch compares its draw with (see module doc)."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability {probability} is not in [0, 1]")
    return int(round(probability * MASK32))


@njit(cache=True)
def probability_threshold_nb(probability: float) -> int:
    """The same as :func:`probability_threshold`, callable from compiled loops."""
    return np.uint32(np.int64(np.round(probability * 4294967295.0)))


def switch_seed(seed: int, switch: int) -> int:
    """The PRNG state a controller writes into switch ``switch`` for run ``seed``.

    A splitmix32-style mix so that neighbouring seeds and switches start far apart;
    never 0, because xorshift32 would stay at 0 forever.
    """
    z = (seed * 0x9E3779B9 + (switch + 1) * 0x85EBCA6B) & MASK32
    z = ((z ^ (z >> 16)) * 0x7FEB352D) & MASK32
    z = ((z ^ (z >> 15)) * 0x846CA68B) & MASK32
    z ^= z >> 16
    return z or 1


def draws(state: int, n: int) -> list[int]:
    """The next ``n`` draws from ``state`` (for tests and for checking a switch's register)."""
    out = []
    for _ in range(n):
        state = int(xorshift32(state))
        out.append(state)
    return out
