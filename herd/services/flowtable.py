"""The coordinator's 5-tuple -> flow index table: compact and capped.

``herd.coordinator.Coordinator`` counts reports per flow *index* of an epoch; each open epoch
has one of these tables for the mapping from a reported 5-tuple to that index. A Python dict
would cost ~130 bytes per flow (key object, value object, sparse slots); this open-addressing
table costs 24 bytes per slot of the hash (two uint64 key words and an int32 index, load <=
1/2) plus 13 bytes per flow for the 5-tuple columns: about 61-85 bytes per flow in all, half
of it the epoch's report counter and detection time (16 bytes). It is capped at
``max_flows`` flows (the coordinator sets it so that the open epochs share one cap): a report
for a new flow beyond the cap is counted as ``untracked`` and not classified, so that a
flood of unique flows cannot grow the coordinator without bound (see coordinator_service).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from herd.hashing import mix64

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # the lo word of a real key is < 2^40
_MIN_CAPACITY = 1 << 12


@njit(cache=True)
def _find_or_insert(tab_hi: np.ndarray, tab_lo: np.ndarray, tab_val: np.ndarray,
                    hi: np.ndarray, lo: np.ndarray, n: int, max_flows: int,
                    out: np.ndarray) -> int:
    """Index of each key (inserting new keys as n, n+1, ...; -1 once n reaches max_flows).
    Returns the new n."""
    mask = np.uint64(len(tab_hi) - 1)
    for i in range(len(hi)):
        h = mix64(hi[i], lo[i]) & mask
        while True:
            if tab_lo[h] == _EMPTY:
                if n >= max_flows:
                    out[i] = -1
                else:
                    tab_hi[h] = hi[i]
                    tab_lo[h] = lo[i]
                    tab_val[h] = n
                    out[i] = n
                    n += 1
                break
            if tab_hi[h] == hi[i] and tab_lo[h] == lo[i]:
                out[i] = tab_val[h]
                break
            h = (h + np.uint64(1)) & mask
    return n


@njit(cache=True)
def _rehash(tab_hi: np.ndarray, tab_lo: np.ndarray, tab_val: np.ndarray,
            new_hi: np.ndarray, new_lo: np.ndarray, new_val: np.ndarray) -> None:
    mask = np.uint64(len(new_hi) - 1)
    for j in range(len(tab_hi)):
        if tab_lo[j] == _EMPTY:
            continue
        h = mix64(tab_hi[j], tab_lo[j]) & mask
        while new_lo[h] != _EMPTY:
            h = (h + np.uint64(1)) & mask
        new_hi[h] = tab_hi[j]
        new_lo[h] = tab_lo[j]
        new_val[h] = tab_val[j]


def flow_keys(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
              proto: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two key words of 5-tuples: (src << 32 | dst, sport << 24 | dport << 8 | proto)."""
    hi = (np.asarray(src, np.uint64) << np.uint64(32)) | np.asarray(dst, np.uint64)
    lo = ((np.asarray(sport, np.uint64) << np.uint64(24))
          | (np.asarray(dport, np.uint64) << np.uint64(8)) | np.asarray(proto, np.uint64))
    return hi, lo


class FlowTable:
    """5-tuple -> dense flow index (0, 1, 2, ... in order of first report), capped."""

    BYTES_PER_FLOW = 24 * 2 + 13  # hash slots at load <= 1/2, plus the 5-tuple columns

    def __init__(self, max_flows: int) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be >= 1, got {max_flows}")
        self.max_flows = int(max_flows)
        self.n = 0
        self._alloc_table(_MIN_CAPACITY)
        self.src = np.zeros(0, np.uint32)
        self.dst = np.zeros(0, np.uint32)
        self.sport = np.zeros(0, np.uint16)
        self.dport = np.zeros(0, np.uint16)
        self.proto = np.zeros(0, np.uint8)

    def _alloc_table(self, capacity: int) -> None:
        self._hi = np.zeros(capacity, np.uint64)
        self._lo = np.full(capacity, _EMPTY, np.uint64)
        self._val = np.zeros(capacity, np.int32)

    def _reserve(self, more: int) -> None:
        need = min(self.n + more, self.max_flows)
        cap = len(self._hi)
        if 2 * need <= cap:
            return
        while 2 * need > cap:
            cap *= 2
        hi, lo, val = self._hi, self._lo, self._val
        self._alloc_table(cap)
        _rehash(hi, lo, val, self._hi, self._lo, self._val)

    def _grow_columns(self, n: int) -> None:
        if n <= len(self.src):
            return
        size = max(n, 2 * len(self.src), 1024)
        for name in ("src", "dst", "sport", "dport", "proto"):
            old = getattr(self, name)
            new = np.zeros(size, old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def index(self, src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
              proto: np.ndarray) -> np.ndarray:
        """Flow index of each 5-tuple, new flows added; -1 where the table is full."""
        hi, lo = flow_keys(src, dst, sport, dport, proto)
        self._reserve(len(hi))
        out = np.empty(len(hi), np.int64)
        before = self.n
        self.n = int(_find_or_insert(self._hi, self._lo, self._val, hi, lo, self.n,
                                     self.max_flows, out))
        if self.n > before:
            self._grow_columns(self.n)
            new = out >= before
            idx = out[new]
            self.src[idx] = np.asarray(src)[new]
            self.dst[idx] = np.asarray(dst)[new]
            self.sport[idx] = np.asarray(sport)[new]
            self.dport[idx] = np.asarray(dport)[new]
            self.proto[idx] = np.asarray(proto)[new]
        return out

    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in (self._hi, self._lo, self._val, self.src, self.dst,
                                          self.sport, self.dport, self.proto)))
