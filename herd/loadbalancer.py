"""Ingress assignment, as the ``load_balancer`` P4 program does it.

Each flow has a primary ingress switch, hash(srcIP) mod k, and a different secondary one;
each packet goes to the primary with probability p (a PRNG coin flip per packet), else to
the secondary. All flows of one source share their two switches, as in the Herd paper.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from herd.hashing import SALT_PRIMARY, SALT_SECONDARY, crc32_addr
from herd.prng import switch_seed, xorshift32

LOAD_BALANCER_ID = 0xFFFF  # the PRNG stream of the load balancer: switch_seed(seed, this)


@njit(cache=True)
def ingress_pair(src: int, k: int) -> tuple[int, int]:
    """(primary, secondary) ingress switch of a source address."""
    primary = np.int64(crc32_addr(SALT_PRIMARY, src)) % k
    if k == 1:
        return primary, primary
    secondary = primary + 1 + np.int64(crc32_addr(SALT_SECONDARY, src)) % (k - 1)
    if secondary >= k:
        secondary -= k
    return primary, secondary


@njit(cache=True)
def choose_ingress(src: int, k: int, p_threshold: int, prng_state: int) -> tuple[int, int]:
    """One packet's ingress switch: (switch index, the PRNG state after the draw)."""
    primary, secondary = ingress_pair(src, k)
    state = xorshift32(prng_state)
    return (primary if state <= p_threshold else secondary), state


@njit(cache=True)
def assign_ingress(src: np.ndarray, k: int, p_threshold: int, prng_state: int) -> np.ndarray:
    """The ingress switch of every packet, in trace order."""
    out = np.empty(len(src), dtype=np.int16)
    state = np.uint32(prng_state)
    for i in range(len(src)):
        out[i], state = choose_ingress(src[i], k, p_threshold, state)
    return out


def lb_seed(seed: int) -> int:
    return switch_seed(seed, LOAD_BALANCER_ID)
