"""Flow numbering: every packet's flow index, flows numbered globally by first appearance.

The table is the one per-flow cost of a trace (about 30 bytes a flow while numbering, the
13-byte flow table after), so it grows with the number of flows, never with the number of
packets: packets can be numbered a chunk at a time.
"""

from __future__ import annotations

import mmap
from typing import Any

import numpy as np
from numba import njit

from herd.hashing import mix64

# The largest table a numbering starts with (4 bytes a slot).
INITIAL_SLOTS_MAX = 1 << 22

# The flow table's columns, with their dtypes.
FLOW_COLUMNS: dict[str, np.dtype[Any]] = {
    "flow_src": np.dtype(np.uint32),
    "flow_dst": np.dtype(np.uint32),
    "flow_sport": np.dtype(np.uint16),
    "flow_dport": np.dtype(np.uint16),
    "flow_proto": np.dtype(np.uint8),
}


@njit(cache=True, nogil=True)
def _flow_keys(
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    i: int,
) -> tuple[np.uint64, np.uint64]:
    # The 13-byte 5-tuple packed into two words: (src, dst) and (sport, dport, proto).
    k1 = (np.uint64(src[i]) << np.uint64(32)) | np.uint64(dst[i])
    k2 = (
        (np.uint64(sport[i]) << np.uint64(24))
        | (np.uint64(dport[i]) << np.uint64(8))
        | np.uint64(proto[i])
    )
    return k1, k2


@njit(cache=True, nogil=True)
def _number_flows_kernel(
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    start: int,
    stop: int,
    flow: np.ndarray,
    table: np.ndarray,
    keys: np.ndarray,
    nf: int,
) -> tuple[int, int]:
    """Give packets start..stop their flow ids (new flows numbered from nf on).

    Open addressing with linear probing; the table holds flow ids only (4 bytes a slot) and
    the keys live once, in flow order, both words of a flow side by side so that a probe
    costs one cache miss into the keys. Stops early, returning (next packet, flows), when
    the table reaches load 1/2: the caller grows it and calls again.
    """
    mask = len(table) - 1
    limit = len(table) // 2
    for i in range(start, stop):
        if nf >= limit:
            return i, nf
        k1, k2 = _flow_keys(src, dst, sport, dport, proto, i)
        j = np.int64(mix64(k1, k2) & np.uint64(mask))
        while True:
            f = table[j]
            if f < 0:
                table[j] = nf
                keys[nf, 0] = k1
                keys[nf, 1] = k2
                flow[i] = nf
                nf += 1
                break
            if keys[f, 0] == k1 and keys[f, 1] == k2:
                flow[i] = f
                break
            j = (j + 1) & mask
    return stop, nf


@njit(cache=True, nogil=True)
def _rehash(table: np.ndarray, keys: np.ndarray, nf: int) -> None:
    mask = len(table) - 1
    for f in range(nf):
        j = np.int64(mix64(keys[f, 0], keys[f, 1]) & np.uint64(mask))
        while table[j] >= 0:
            j = (j + 1) & mask
        table[j] = f


@njit(cache=True, nogil=True)
def _unpack_keys(
    keys: np.ndarray, nf: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    fsrc = np.empty(nf, np.uint32)
    fdst = np.empty(nf, np.uint32)
    fsport = np.empty(nf, np.uint16)
    fdport = np.empty(nf, np.uint16)
    fproto = np.empty(nf, np.uint8)
    for f in range(nf):
        k1 = keys[f, 0]
        k2 = keys[f, 1]
        fsrc[f] = k1 >> np.uint64(32)
        fdst[f] = k1 & np.uint64(0xFFFFFFFF)
        fsport[f] = k2 >> np.uint64(24)
        fdport[f] = (k2 >> np.uint64(8)) & np.uint64(0xFFFF)
        fproto[f] = k2 & np.uint64(0xFF)
    return fsrc, fdst, fsport, fdport, fproto


@njit(cache=True, nogil=True)
def count_flows(counts: np.ndarray, flow: np.ndarray) -> None:
    """counts[f] += packets of flow f in ``flow`` (one chunk of a trace's flow column)."""
    for i in range(len(flow)):
        counts[flow[i]] += 1


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


class _KeyRows:
    """The flows' keys, one row of two words a flow, in a private anonymous mapping: rows
    not yet written cost no memory, and growing is an mremap (no copy, nothing touched),
    so the keys are never held twice. Where the mapping cannot grow in place, it is copied.
    """

    def __init__(self, rows: int) -> None:
        self._map = self._new_map(rows)
        self.rows = self._view()

    @staticmethod
    def _new_map(rows: int) -> mmap.mmap:
        m = mmap.mmap(-1, rows * 16, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):  # probed at random, like the table
            m.madvise(mmap.MADV_HUGEPAGE)
        return m

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._map, np.uint64).reshape(-1, 2)

    def grow(self, rows: int, used: int) -> None:
        del self.rows  # a mapping with views cannot be resized
        try:
            self._map.resize(rows * 16)
        except (OSError, SystemError):
            bigger = self._new_map(rows)
            bigger[: used * 16] = self._map[: used * 16]
            self._map.close()
            self._map = bigger
        self.rows = self._view()

    def close(self) -> None:
        del self.rows
        self._map.close()


class FlowNumbering:
    """Numbers flows by first appearance, incrementally as packets arrive.

    The table is a numpy allocation (not numba's) because numpy advises the kernel to back
    large arrays with transparent huge pages: the table is probed at random, and with 4 KiB
    pages every probe would also miss the TLB (measured: 1.5x slower). Memory: the table
    (8-16 bytes a flow) and the keys (16 bytes a flow).
    """

    def __init__(self, expected_packets: int) -> None:
        # Room for packets/8 flows before the first rehash (real traces have 5-10 packets a
        # flow), up to INITIAL_SLOTS_MAX: beyond it a few doublings cost little next to
        # numbering the packets, and a table sized by packets would grow with them.
        size = min(max(4096, _next_pow2(expected_packets // 4)), INITIAL_SLOTS_MAX)
        self.table = np.full(size, -1, np.int32)
        self.keys = _KeyRows(size // 2)
        self.nf = 0

    def add(self, cols: tuple[np.ndarray, ...], flow: np.ndarray, start: int, stop: int) -> None:
        """Write the flow ids of packets start..stop of the 5-tuple columns into ``flow``."""
        src, dst, sport, dport, proto = cols
        while start < stop:
            start, self.nf = _number_flows_kernel(
                src,
                dst,
                sport,
                dport,
                proto,
                start,
                stop,
                flow,
                self.table,
                self.keys.rows,
                self.nf,
            )
            if start < stop:
                self._grow()

    def _grow(self) -> None:
        # Rehashing reads only the keys: the old table goes before the new one comes.
        size = 2 * len(self.table)
        del self.table
        self.table = np.full(size, -1, np.int32)
        self.keys.grow(size // 2, self.nf)
        _rehash(self.table, self.keys.rows, self.nf)

    def finish(self) -> dict[str, np.ndarray]:
        """The flow table, in flow order. Frees the numbering: call once, after the last add."""
        del self.table
        table = dict(zip(FLOW_COLUMNS, _unpack_keys(self.keys.rows, self.nf), strict=True))
        self.keys.close()
        return table


def number_flows(
    src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, proto: np.ndarray
) -> dict[str, np.ndarray]:
    """The flow id of every packet ("flow") and the flow table, for whole columns."""
    numbering = FlowNumbering(len(src))
    flow = np.empty(len(src), np.int32)
    numbering.add((src, dst, sport, dport, proto), flow, 0, len(src))
    return {"flow": flow, **numbering.finish()}
