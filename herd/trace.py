"""Trace ingest: pcap / pcapng captures parsed once into columnar numpy arrays, and cached.

A trace is the sequence of measured (IPv4) packets of one capture file, or of several files
when each holds what one ingress switch saw. Every packet keeps its timestamp, its 5-tuple
and the index of its flow in a flow table numbered by first appearance.

Parsing walks the raw bytes in numba kernels, chunk by chunk (no per-packet Python), so that
traces of tens of millions of packets load in seconds. The result is cached on disk, keyed by
the sha256 of the file's bytes, with a small stat-keyed index so that a reload neither
re-parses nor re-hashes the file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numba import njit

from herd.errors import HerdInputError
from herd.fileio import atomic_write
from herd.groundtruth import flow_counts as _flow_counts
from herd.groundtruth import threshold as _threshold
from herd.hashing import mix64

__all__ = [
    "CACHE_VERSION",
    "Trace",
    "cache_dir",
    "dissect_frames",
    "format_trace_info",
    "load_ingress_traces",
    "load_trace",
    "trace_info",
]

log = logging.getLogger(__name__)

# Bump whenever the cached layout or the parse semantics change: entries of another version
# are never read, so an upgrade can never serve stale numbers.
CACHE_VERSION = 1

# Packets per chunk when a trace is walked in order (simulation, ground truth).
CHUNK_PACKETS = 1 << 20
# Read size. Small enough that the buffer is a few bytes per packet of a large trace,
# large enough that the per-call overhead of the kernels disappears.
CHUNK_BYTES = 16 << 20
# A record or block claiming more than this is corruption, not a packet (libpcap's own
# limit is 256 KiB; pcapng blocks may carry options, so leave generous room).
MAX_RECORD_BYTES = 64 << 20
# The smallest record that can yield a measured packet: a 16-byte pcap record header plus a
# 20-byte IPv4 header. Bounds the packet count of a file of known size from above.
MIN_STORED_RECORD = 36
# An index entry written less than this after the file last changed is confirmed by hashing.
RACY_NS = 2_000_000_000
# Show a progress bar only when the file takes noticeable time to parse.
PROGRESS_MIN_BYTES = 64 << 20

# Link types (LINKTYPE_* values of the pcap / pcapng specifications).
LINK_NULL = 0  # BSD loopback, address family in the writer's byte order
LINK_ETHERNET = 1
LINK_RAW_OLD_A = 12  # DLT_RAW on most BSDs
LINK_RAW_OLD_B = 14  # DLT_RAW on OpenBSD
LINK_RAW = 101
LINK_LOOP = 108  # OpenBSD loopback, address family in network byte order
LINK_SLL = 113
LINK_IPV4 = 228
LINK_IPV6 = 229
LINK_SLL2 = 276
SUPPORTED_LINKTYPES = frozenset(
    {
        LINK_NULL,
        LINK_ETHERNET,
        LINK_RAW_OLD_A,
        LINK_RAW_OLD_B,
        LINK_RAW,
        LINK_LOOP,
        LINK_SLL,
        LINK_IPV4,
        LINK_IPV6,
        LINK_SLL2,
    }
)

# Dissector outcomes (a skipped packet counts in skipped[outcome - 1]) and kernel statuses.
_STORED = 0
_NON_IPV4 = 1
_MALFORMED = 2

_NEED_MORE = 0  # the next record is not complete in the buffer; `need` says how long it is
_FULL = 1  # the output arrays are full
_CORRUPT = 2  # a record length that no capture can hold: the file is damaged
_HEADER = 3  # pcapng: a section header or interface block, parsed in Python

_PCAPNG_SHB = 0x0A0D0D0A
_PCAPNG_IDB = 1

# pcap magic (as read little-endian) -> (big-endian file, nanosecond timestamps, header bytes)
_PCAP_MAGICS: dict[int, tuple[bool, bool, int]] = {
    0xA1B2C3D4: (False, False, 16),
    0xD4C3B2A1: (True, False, 16),
    0xA1B23C4D: (False, True, 16),
    0x4D3CB2A1: (True, True, 16),
    # Kuznetzov's "modified" pcap: 8 more bytes per record header (ifindex, protocol, type).
    0xA1B2CD34: (False, False, 24),
    0x34CDB2A1: (True, False, 24),
}


# --------------------------------------------------------------------------------------------
# The Trace
# --------------------------------------------------------------------------------------------


# eq=False: the generated __eq__ would compare numpy arrays element-wise and fail; two traces
# are the same when their digests are.
@dataclass(frozen=True, eq=False)
class Trace:
    """The measured (IPv4) packets of a capture, column by column, in trace order."""

    paths: tuple[str, ...]
    digest: str
    ts_ns: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    ingress: np.ndarray
    flow: np.ndarray
    flow_src: np.ndarray
    flow_dst: np.ndarray
    flow_sport: np.ndarray
    flow_dport: np.ndarray
    flow_proto: np.ndarray
    skipped_non_ipv4: int
    skipped_malformed: int

    @property
    def packets(self) -> int:
        return len(self.ts_ns)

    @property
    def flows(self) -> int:
        return len(self.flow_src)

    @property
    def skipped(self) -> int:
        return self.skipped_non_ipv4 + self.skipped_malformed

    @property
    def first_ts(self) -> int:
        """The first packet's timestamp (not the earliest: captures need not be monotonic);
        epochs count from it."""
        return int(self.ts_ns[0]) if self.packets else 0

    def chunks(self, columns: Sequence[str], size: int = CHUNK_PACKETS
               ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """The packets in trace order, at most ``size`` at a time: (index of the chunk's first
        packet, {column: its values}), columns from ts_ns, src, dst, sport, dport, proto,
        flow, ingress."""
        for start in range(0, self.packets, max(1, size)):
            stop = min(start + size, self.packets)
            yield start, {c: getattr(self, c)[start:stop] for c in columns}

    def group_of_flow(self) -> np.ndarray:
        """The Herd group of every flow: (src /8) << 8 | (dst /8), as uint16."""
        return ((self.flow_src >> 24) << 8 | (self.flow_dst >> 24)).astype(np.uint16)

    def flow_counts(self) -> np.ndarray:
        """Packets per flow (int64), indexed like the flow table."""
        return _flow_counts(self.flow, self.flows)

    def __repr__(self) -> str:
        return (
            f"Trace(paths={self.paths!r}, digest={self.digest[:12]}..., packets={self.packets}, "
            f"flows={self.flows}, skipped={self.skipped})"
        )


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------
# Positions and lengths are int64 throughout: numba turns mixed signed/unsigned 64-bit
# arithmetic into float64, which would silently lose precision.


@njit(cache=True, nogil=True)
def _u16(b: np.ndarray, i: int, be: bool) -> int:
    if be:
        return (np.int64(b[i]) << 8) | np.int64(b[i + 1])
    return (np.int64(b[i + 1]) << 8) | np.int64(b[i])


@njit(cache=True, nogil=True)
def _u32(b: np.ndarray, i: int, be: bool) -> int:
    if be:
        return (
            (np.int64(b[i]) << 24)
            | (np.int64(b[i + 1]) << 16)
            | (np.int64(b[i + 2]) << 8)
            | np.int64(b[i + 3])
        )
    return (
        (np.int64(b[i + 3]) << 24)
        | (np.int64(b[i + 2]) << 16)
        | (np.int64(b[i + 1]) << 8)
        | np.int64(b[i])
    )


@njit(cache=True, nogil=True)
def _dissect(
    b: np.ndarray,
    off: int,
    caplen: int,
    link: int,
    n: int,
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
) -> int:
    """Decode one captured frame; on an IPv4 packet write its 5-tuple at index n.

    Returns _STORED, _NON_IPV4 or _MALFORMED. Only the IPv4 header must be complete: a
    snaplen that cuts the transport header leaves the ports 0.
    """
    end = off + caplen
    p = off
    et = -1  # ethertype, when the link layer has one
    if link == 1:  # Ethernet
        if caplen < 14:
            return _MALFORMED
        et = _u16(b, p + 12, True)
        p += 14
    elif link == 101 or link == 12 or link == 14:  # raw IP, v4 or v6
        if caplen < 1:
            return _MALFORMED
        v = b[p] >> 4
        if v == 6:
            return _NON_IPV4
        if v != 4:
            return _MALFORMED
    elif link == 228:  # raw IPv4 only
        pass
    elif link == 229:  # raw IPv6
        return _NON_IPV4
    elif link == 113:  # Linux cooked capture v1: protocol in the last two bytes
        if caplen < 16:
            return _MALFORMED
        et = _u16(b, p + 14, True)
        p += 16
    elif link == 276:  # Linux cooked capture v2: protocol first
        if caplen < 20:
            return _MALFORMED
        et = _u16(b, p, True)
        p += 20
    elif link == 0 or link == 108:  # loopback: 4-byte address family, AF_INET = 2 everywhere
        if caplen < 4:
            return _MALFORMED
        if link == 108:
            af = _u32(b, p, True)
        else:
            # Written in the capturing host's byte order, which need not be the file's.
            af = _u32(b, p, False)
            if af > 0xFFFF:
                af = _u32(b, p, True)
        if af != 2:
            return _NON_IPV4
        p += 4
    else:  # a link type we do not decode (pcapng may mix interfaces)
        return _NON_IPV4
    if et >= 0:
        # Any number of 802.1Q / 802.1ad (QinQ) / legacy 0x9100 tags.
        while et == 0x8100 or et == 0x88A8 or et == 0x9100:
            if p + 4 > end:
                return _MALFORMED
            et = _u16(b, p + 2, True)
            p += 4
        if et != 0x0800:
            return _NON_IPV4
    # IPv4 header
    if p + 20 > end:
        return _MALFORMED
    vihl = np.int64(b[p])
    if (vihl >> 4) != 4:
        return _MALFORMED
    ihl = (vihl & 15) * 4
    if ihl < 20 or p + ihl > end:
        return _MALFORMED
    total_len = _u16(b, p + 2, True)
    frag_off = _u16(b, p + 6, True) & 0x1FFF
    pr = np.int64(b[p + 9])
    l4 = p + ihl
    # The IP total length bounds the transport header (Ethernet pads short frames); a total
    # length below the header length (0 with TSO offload captures) is ignored.
    l4_end = end
    if total_len >= ihl and p + total_len < end:
        l4_end = p + total_len
    sp = 0
    dp = 0
    if frag_off == 0 and (pr == 6 or pr == 17 or pr == 132 or pr == 136) and l4 + 4 <= l4_end:
        sp = _u16(b, l4, True)
        dp = _u16(b, l4 + 2, True)
    src[n] = _u32(b, p + 12, True)
    dst[n] = _u32(b, p + 16, True)
    sport[n] = sp
    dport[n] = dp
    proto[n] = pr
    return _STORED


@njit(cache=True, nogil=True)
def _pcap_kernel(
    b: np.ndarray,
    pos: int,
    end: int,
    be: bool,
    rec_hdr: int,
    frac_ns: int,
    link: int,
    n: int,
    ts: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    skipped: np.ndarray,
) -> tuple[int, int, int, int]:
    """Parse the complete pcap records in b[pos:end]. Returns (pos, n, status, need)."""
    cap = len(ts)
    while True:
        if pos + rec_hdr > end:
            return pos, n, _NEED_MORE, rec_hdr
        incl = _u32(b, pos + 8, be)
        if incl > MAX_RECORD_BYTES:
            return pos, n, _CORRUPT, 0
        total = rec_hdr + incl
        if pos + total > end:
            return pos, n, _NEED_MORE, total
        if n >= cap:
            return pos, n, _FULL, 0
        r = _dissect(b, pos + rec_hdr, incl, link, n, src, dst, sport, dport, proto)
        if r == _STORED:
            ts[n] = _u32(b, pos, be) * 1000000000 + _u32(b, pos + 4, be) * frac_ns
            n += 1
        else:
            skipped[r - 1] += 1
        pos += total


@njit(cache=True, nogil=True)
def _pcapng_ts(t: int, mode: int, exp: int, off_ns: int) -> int:
    """A pcapng timestamp in interface units -> ns since the epoch."""
    if mode == 0:  # units of 10^-exp s
        if exp <= 9:
            p = 1
            for _ in range(9 - exp):
                p *= 10
            return t * p + off_ns
        p = 1
        for _ in range(exp - 9):
            p *= 10
        return t // p + off_ns
    # units of 2^-exp s: split into seconds and fraction so that nothing overflows
    sec = t >> exp
    frac = t & ((np.int64(1) << exp) - 1)
    e = exp
    if e > 32:
        frac >>= e - 32
        e = 32
    return sec * 1000000000 + ((frac * 1000000000) >> e) + off_ns


@njit(cache=True, nogil=True)
def _pcapng_kernel(
    b: np.ndarray,
    pos: int,
    end: int,
    be: bool,
    if_link: np.ndarray,
    if_mode: np.ndarray,
    if_exp: np.ndarray,
    if_off: np.ndarray,
    n_if: int,
    last_ts: int,
    n: int,
    ts: np.ndarray,
    src: np.ndarray,
    dst: np.ndarray,
    sport: np.ndarray,
    dport: np.ndarray,
    proto: np.ndarray,
    skipped: np.ndarray,
) -> tuple[int, int, int, int, int]:
    """Parse the complete pcapng blocks in b[pos:end] up to the next SHB or IDB.

    Returns (pos, n, status, need, last_ts); last_ts is the timestamp that a following
    simple packet block (which has none) inherits.
    """
    cap = len(ts)
    while True:
        if pos + 12 > end:
            return pos, n, _NEED_MORE, 12, last_ts
        btype = _u32(b, pos, be)
        if btype == _PCAPNG_SHB:
            return pos, n, _HEADER, 0, last_ts
        blen = _u32(b, pos + 4, be)
        if blen < 12 or (blen & 3) != 0 or blen > MAX_RECORD_BYTES:
            return pos, n, _CORRUPT, 0, last_ts
        if pos + blen > end:
            return pos, n, _NEED_MORE, blen, last_ts
        if _u32(b, pos + blen - 4, be) != blen:
            return pos, n, _CORRUPT, 0, last_ts
        if btype == _PCAPNG_IDB:
            return pos, n, _HEADER, 0, last_ts
        if btype == 6 or btype == 2 or btype == 3:
            if n >= cap:
                return pos, n, _FULL, 0, last_ts
            r = _MALFORMED
            t = last_ts
            if btype == 3:  # simple packet block: interface 0, no timestamp
                if n_if > 0 and blen >= 16:
                    caplen = min(_u32(b, pos + 8, be), blen - 16)
                    r = _dissect(b, pos + 12, caplen, if_link[0], n, src, dst, sport, dport, proto)
            elif blen >= 32:  # enhanced (6) or obsolete (2) packet block
                iface = _u32(b, pos + 8, be) if btype == 6 else _u16(b, pos + 8, be)
                caplen = _u32(b, pos + 20, be)
                if iface < n_if and caplen <= blen - 32:
                    raw = (_u32(b, pos + 12, be) << 32) | _u32(b, pos + 16, be)
                    t = _pcapng_ts(raw, if_mode[iface], if_exp[iface], if_off[iface])
                    last_ts = t
                    r = _dissect(
                        b, pos + 28, caplen, if_link[iface], n, src, dst, sport, dport, proto
                    )
            if r == _STORED:
                ts[n] = t
                n += 1
            else:
                skipped[r - 1] += 1
        pos += blen


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
def _merge_order(ts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """k-way merge of per-file packet runs by timestamp: the permutation into merged order.

    Each file keeps its own order (a capture's timestamps may step back a little); on equal
    timestamps the lower file index goes first, so the merge is stable. A binary heap of
    the files' next packets, ordered by (timestamp, file): O(n log k).
    """
    k = len(starts) - 1
    n = starts[k]
    order = np.empty(n, np.int64)
    head = starts[:k].copy()
    heap = np.empty(k, np.int64)  # file indices
    size = 0
    for f in range(k):
        if head[f] < starts[f + 1]:
            heap[size] = f
            size += 1
    # heapify: files were added in index order and a heap needs (ts, file) order
    for root in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, root, ts, head)
    for i in range(n):
        f = heap[0]
        order[i] = head[f]
        head[f] += 1
        if head[f] == starts[f + 1]:
            size -= 1
            heap[0] = heap[size]
        _sift_down(heap, size, 0, ts, head)
    return order


@njit(cache=True, nogil=True)
def _sift_down(heap: np.ndarray, size: int, i: int, ts: np.ndarray, head: np.ndarray) -> None:
    while True:
        best = i
        for c in (2 * i + 1, 2 * i + 2):
            if c < size:
                fc, fb = heap[c], heap[best]
                tc, tb = ts[head[fc]], ts[head[fb]]
                if tc < tb or (tc == tb and fc < fb):
                    best = c
        if best == i:
            return
        heap[i], heap[best] = heap[best], heap[i]
        i = best


# --------------------------------------------------------------------------------------------
# Reading a capture
# --------------------------------------------------------------------------------------------


class _Worker:
    """One background thread running tasks in submission order.

    The kernels and hashlib release the GIL, so hashing the bytes just read, numbering the
    flows of the packets just parsed and parsing the next records run on different cores.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future[None]] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))

    def wait(self) -> None:
        """Block until every submitted task is done; re-raise the first failure."""
        pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _HashingReader:
    """The raw file: hashes every byte read (in the background for readinto, whose buffer
    the caller must not overwrite before wait()) and advances the progress bar."""

    def __init__(self, f: BinaryIO, bar: Any, worker: _Worker) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.bar = bar
        self.worker = worker
        self.raw_bytes = 0  # bytes of the file read so far

    def readinto(self, buf: memoryview) -> int:
        k = self.f.readinto(buf) or 0
        self.raw_bytes += k
        if k:
            self.worker.submit(self.sha.update, buf[:k])
            self.bar.update(k)
        return k

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.raw_bytes += len(data)
        if data:
            self.worker.submit(self.sha.update, data)
            self.bar.update(len(data))
        return data

    def wait(self) -> None:
        self.worker.wait()

    def digest(self) -> str:
        # The digest covers the whole file, also bytes a decompressor left unread.
        while self.read(1 << 20):
            pass
        self.worker.wait()
        return self.sha.hexdigest()


class _Buffer:
    """One reusable read buffer; b[start:end] holds the bytes not yet consumed."""

    def __init__(self, stream: Any, reader: _HashingReader, size: int = CHUNK_BYTES) -> None:
        self.stream = stream
        self.reader = reader
        self.b = np.empty(size, np.uint8)
        self.start = 0
        self.end = 0
        self.eof = False
        self.consumed = 0  # bytes of the (decompressed) stream before b[start]

    def fill(self, need: int = 0) -> None:
        """Move the unconsumed tail to the front and read until the buffer is full or EOF;
        grow the buffer first when one record is larger than it."""
        self.reader.wait()  # the bytes about to be overwritten must be hashed first
        rest = self.end - self.start
        if self.start:
            self.b[:rest] = self.b[self.start : self.end]
            self.consumed += self.start
            self.start = 0
            self.end = rest
        if need > len(self.b):
            grown = np.empty(need, np.uint8)
            grown[:rest] = self.b[:rest]
            self.b = grown
        view = memoryview(self.b)
        while self.end < len(self.b) and not self.eof:
            k = self.stream.readinto(view[self.end :])
            if not k:
                self.eof = True
            else:
                self.end += k

    def ensure(self, k: int) -> bool:
        """Make at least k unconsumed bytes available; False when the stream ends first."""
        if self.end - self.start < k and not self.eof:
            self.fill(max(k, 0))
        return self.end - self.start >= k

    def offset(self) -> int:
        return self.consumed + self.start


def _next_pow2(x: int) -> int:
    return 1 << max(0, x - 1).bit_length()


class _FlowNumbering:
    """Numbers flows by first appearance, incrementally as packets arrive.

    The table and keys are numpy allocations (not numba's) because numpy advises the kernel
    to back large arrays with transparent huge pages: the table is probed at random, and
    with 4 KiB pages every probe would also miss the TLB (measured: 1.5x slower).
    """

    def __init__(self, expected_packets: int) -> None:
        # Room for packets/8 flows before the first rehash: real traces have 5-10 packets
        # a flow. Untouched key rows cost no memory.
        size = max(4096, _next_pow2(expected_packets // 4))
        self.table = np.full(size, -1, np.int32)
        self.keys = np.empty((size // 2, 2), np.uint64)
        self.nf = 0

    def add(self, cols: tuple[np.ndarray, ...], flow: np.ndarray, start: int, stop: int) -> None:
        src, dst, sport, dport, proto = cols
        while start < stop:
            start, self.nf = _number_flows_kernel(
                src, dst, sport, dport, proto, start, stop, flow, self.table, self.keys, self.nf
            )
            if start < stop:
                self._grow()

    def _grow(self) -> None:
        size = 2 * len(self.table)
        self.table = np.full(size, -1, np.int32)
        keys = np.empty((size // 2, 2), np.uint64)
        keys[: self.nf] = self.keys[: self.nf]
        self.keys = keys
        _rehash(self.table, self.keys, self.nf)

    def flow_table(self) -> dict[str, np.ndarray]:
        names = ("flow_src", "flow_dst", "flow_sport", "flow_dport", "flow_proto")
        return dict(zip(names, _unpack_keys(self.keys, self.nf), strict=True))


def _number_flows(
    src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray, proto: np.ndarray
) -> dict[str, np.ndarray]:
    """The flow id of every packet ("flow") and the flow table, for whole columns."""
    numbering = _FlowNumbering(len(src))
    flow = np.empty(len(src), np.int32)
    numbering.add((src, dst, sport, dport, proto), flow, 0, len(src))
    return {"flow": flow, **numbering.flow_table()}


class _Columns:
    """The per-packet output arrays, over-allocated up front and shrunk in place at the end.

    np.empty pages that are never written are never resident, and shrinking with
    ndarray.resize is a realloc (mremap for large blocks): no copy, so peak memory stays at
    what the packets need. Flows of the packets parsed so far are numbered in the
    background while the kernel parses the next ones.
    """

    def __init__(self, capacity: int, worker: _Worker, estimate: Callable[[int], int]) -> None:
        capacity = max(capacity, 1024)
        while True:
            try:
                self._allocate(capacity)
                break
            except MemoryError:
                # The bound exceeds what the system will map (a huge file on a small
                # machine, strict overcommit): start smaller and grow as needed.
                if capacity <= 1 << 20:
                    raise
                capacity //= 4
        self.n = 0
        self.numbered = 0
        self.skipped = np.zeros(2, np.int64)  # [non-IPv4, malformed]
        self.worker = worker
        self.estimate = estimate
        self.numbering: _FlowNumbering | None = None

    def _allocate(self, capacity: int) -> None:
        self.ts = np.empty(capacity, np.int64)
        self.src = np.empty(capacity, np.uint32)
        self.dst = np.empty(capacity, np.uint32)
        self.sport = np.empty(capacity, np.uint16)
        self.dport = np.empty(capacity, np.uint16)
        self.proto = np.empty(capacity, np.uint8)
        self.flow = np.empty(capacity, np.int32)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The columns the parse kernels fill."""
        return self.ts, self.src, self.dst, self.sport, self.dport, self.proto

    def advance(self, n: int) -> None:
        """The kernel has filled rows up to n: number their flows in the background."""
        self.n = n
        if self.numbering is None and n:
            # Size the flow table from the packet rate of the first chunk, not from the
            # capacity bound, which for full-size packets overestimates 40-fold.
            self.numbering = _FlowNumbering(min(len(self.ts), self.estimate(n)))
        if self.numbering is not None and n > self.numbered:
            five = (self.src, self.dst, self.sport, self.dport, self.proto)
            self.worker.submit(self.numbering.add, five, self.flow, self.numbered, n)
            self.numbered = n

    def resize(self, capacity: int) -> None:
        self.worker.wait()  # resizing may move the arrays the background task reads
        for a in (*self.arrays(), self.flow):
            a.resize(capacity, refcheck=False)

    def finish(self) -> dict[str, Any]:
        self.resize(self.n)
        names = ("ts_ns", "src", "dst", "sport", "dport", "proto")
        out: dict[str, Any] = dict(zip(names, self.arrays(), strict=True))
        out["flow"] = self.flow
        out.update((self.numbering or _FlowNumbering(0)).flow_table())
        out["skipped_non_ipv4"] = int(self.skipped[0])
        out["skipped_malformed"] = int(self.skipped[1])
        return out


class _GunzipStream:
    """A gzip file decoded as a stream (members one after another).

    Unlike gzip.GzipFile, a stream cut short ends the data instead of discarding the last
    read with an EOFError: a killed `tcpdump | gzip` leaves exactly such files, and what was
    decoded is as good as a truncated capture's records. Corrupt data raises zlib.error.
    """

    def __init__(self, raw: _HashingReader) -> None:
        self.raw = raw
        self.d = zlib.decompressobj(wbits=31)
        self.out = b""
        self.pos = 0
        self.eof = False

    def readinto(self, view: memoryview) -> int:
        while self.pos == len(self.out):
            if self.eof:
                return 0
            self._decode()
        k = min(len(view), len(self.out) - self.pos)
        view[:k] = memoryview(self.out)[self.pos : self.pos + k]
        self.pos += k
        return k

    def _decode(self) -> None:
        if self.d.eof:  # a member ended: another may follow
            data = self.d.unused_data or self.raw.read(1 << 20)
            if not data or data[0] == 0:  # the end, or the zero padding some writers add
                self.eof = True
                return
            self.d = zlib.decompressobj(wbits=31)
        elif self.d.unconsumed_tail:
            data = self.d.unconsumed_tail
        else:
            data = self.raw.read(1 << 20)
            if not data:  # cut short inside a member
                self.eof = True
                return
        self.out = self.d.decompress(data, 4 << 20)
        self.pos = 0


def _open_stream(f: BinaryIO, reader: _HashingReader) -> tuple[Any, bool]:
    """The byte stream of the capture (decompressed when the file is gzip), and whether it
    is compressed."""
    head = f.read(2)
    f.seek(0)
    if head == b"\x1f\x8b":
        return _GunzipStream(reader), True
    return reader, False


def _parse_pcap(name: str, buf: _Buffer, cols: _Columns) -> None:
    if not buf.ensure(24):
        raise HerdInputError(f"{name}: pcap header cut short ({buf.end - buf.start} of 24 bytes)")
    hdr = buf.b[buf.start : buf.start + 24].tobytes()
    be, nano, rec_hdr = _PCAP_MAGICS[struct.unpack("<I", hdr[:4])[0]]
    endian = ">" if be else "<"
    major, _minor, _zone, _sigfigs, _snaplen, network = struct.unpack(endian + "HHiIII", hdr[4:])
    if major != 2:
        raise HerdInputError(f"{name}: unsupported pcap version {major}")
    # The upper bits of the link-type field carry FCS information, not the link type.
    link = network & 0xFFFF
    if link not in SUPPORTED_LINKTYPES:
        raise HerdInputError(f"{name}: unsupported link type {link}")
    buf.start += 24
    frac_ns = 1 if nano else 1000
    while True:
        pos, n, status, need = _pcap_kernel(
            buf.b,
            buf.start,
            buf.end,
            be,
            rec_hdr,
            frac_ns,
            link,
            cols.n,
            *cols.arrays(),
            cols.skipped,
        )
        buf.start = pos
        cols.advance(n)
        if status == _FULL:
            cols.resize(2 * len(cols.ts))
        elif status == _CORRUPT:
            raise HerdInputError(
                f"{name}: corrupt pcap record at byte {buf.offset()} (record length beyond "
                f"{MAX_RECORD_BYTES} bytes)"
            )
        elif buf.eof:
            if buf.start < buf.end:  # the capture stops mid-record, e.g. a killed tcpdump
                cols.skipped[1] += 1
            return
        else:
            buf.fill(need)


class _Interfaces:
    """The interfaces of the current pcapng section, as arrays the kernel reads."""

    def __init__(self) -> None:
        self.link = np.zeros(16, np.int64)
        self.mode = np.zeros(16, np.int64)
        self.exp = np.zeros(16, np.int64)
        self.off = np.zeros(16, np.int64)
        self.n = 0

    def add(self, link: int, mode: int, exp: int, off_ns: int) -> None:
        if self.n == len(self.link):
            for attr in ("link", "mode", "exp", "off"):
                a = getattr(self, attr)
                setattr(self, attr, np.concatenate([a, np.zeros_like(a)]))
        i = self.n
        self.link[i], self.mode[i], self.exp[i], self.off[i] = link, mode, exp, off_ns
        self.n += 1


def _parse_idb(name: str, body: bytes, endian: str, at: int) -> tuple[int, int, int, int]:
    """Link type and timestamp resolution / offset of an interface description block."""
    if len(body) < 8:
        raise HerdInputError(f"{name}: interface description block at byte {at} is too short")
    link = struct.unpack(endian + "H", body[:2])[0]
    mode, exp, off_ns = 0, 6, 0  # default resolution: microseconds
    i = 8
    while i + 4 <= len(body):
        code, length = struct.unpack(endian + "HH", body[i : i + 4])
        value = body[i + 4 : i + 4 + length]
        if code == 0:
            break
        if code == 9 and length >= 1:  # if_tsresol
            r = value[0]
            mode, exp = (1, r & 0x7F) if r & 0x80 else (0, r)
            if (mode == 0 and exp > 18) or (mode == 1 and exp > 62):
                raise HerdInputError(
                    f"{name}: unsupported if_tsresol 0x{r:02x} in the interface block at byte {at}"
                )
        elif code == 14 and length >= 8:  # if_tsoffset, seconds
            off_ns = struct.unpack(endian + "q", value[:8])[0] * 1_000_000_000
        i += 4 + ((length + 3) & ~3)
    return link, mode, exp, off_ns


def _parse_pcapng(name: str, buf: _Buffer, cols: _Columns) -> None:
    ifaces = _Interfaces()
    be = False
    last_ts = 0
    first = True
    while True:
        pos, n, status, need, last_ts = _pcapng_kernel(
            buf.b,
            buf.start,
            buf.end,
            be,
            ifaces.link,
            ifaces.mode,
            ifaces.exp,
            ifaces.off,
            ifaces.n,
            last_ts,
            cols.n,
            *cols.arrays(),
            cols.skipped,
        )
        buf.start = pos
        cols.advance(n)
        if status == _FULL:
            cols.resize(2 * len(cols.ts))
        elif status == _CORRUPT:
            raise HerdInputError(
                f"{name}: corrupt pcapng block at byte {buf.offset()} (bad block length)"
            )
        elif status == _HEADER:
            at = buf.offset()
            s = buf.start
            btype = struct.unpack("<I", buf.b[s : s + 4].tobytes())[0]
            if btype == _PCAPNG_SHB:
                # A new section, possibly of the other byte order: interfaces start afresh.
                if not buf.ensure(12):
                    raise HerdInputError(f"{name}: pcapng section header cut short at byte {at}")
                s = buf.start
                magic = buf.b[s + 8 : s + 12].tobytes()
                if magic == b"\x4d\x3c\x2b\x1a":
                    be = False
                elif magic == b"\x1a\x2b\x3c\x4d":
                    be = True
                else:
                    raise HerdInputError(
                        f"{name}: bad pcapng byte-order magic 0x{magic.hex()} at byte {at}"
                    )
                endian = ">" if be else "<"
                blen = struct.unpack(endian + "I", buf.b[s + 4 : s + 8].tobytes())[0]
                if blen < 28 or blen % 4 or blen > MAX_RECORD_BYTES:
                    raise HerdInputError(
                        f"{name}: corrupt pcapng section header at byte {at} (length {blen})"
                    )
                if not buf.ensure(blen):
                    if first:
                        raise HerdInputError(f"{name}: pcapng section header cut short")
                    cols.skipped[1] += 1
                    return
                s = buf.start
                major = struct.unpack(endian + "H", buf.b[s + 12 : s + 14].tobytes())[0]
                if major != 1:
                    raise HerdInputError(f"{name}: unsupported pcapng version {major}")
                ifaces = _Interfaces()
                buf.start += blen
                first = False
            else:  # interface description block, complete in the buffer (kernel checked)
                endian = ">" if be else "<"
                blen = struct.unpack(endian + "I", buf.b[s + 4 : s + 8].tobytes())[0]
                body = buf.b[s + 8 : s + blen - 4].tobytes()
                ifaces.add(*_parse_idb(name, body, endian, at))
                buf.start += blen
        elif buf.eof:
            if first:
                raise HerdInputError(f"{name}: pcapng section header cut short")
            if buf.start < buf.end:  # the capture stops mid-block
                cols.skipped[1] += 1
            return
        else:
            buf.fill(need)


def _parse_file(path: str, progress: bool = False) -> tuple[str, dict[str, Any]]:
    """Parse one capture file and number its flows. Returns (sha256 of the file's bytes,
    columns as load_trace caches them)."""
    name = path
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in the finally below
    except FileNotFoundError:
        raise HerdInputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise HerdInputError(f"{name}: is a directory, not a capture file") from None
    except OSError as e:
        raise HerdInputError(f"{name}: cannot open ({e.strerror})") from None
    hasher, numberer = _Worker(), _Worker()
    bar = _progress_bar(name, 0, False)
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            # The digest, the cache key and the capacity bound all need a file of known size.
            raise HerdInputError(f"{name}: not a regular file; save the capture to a file first")
        size = st.st_size
        bar = _progress_bar(name, size, progress)
        reader = _HashingReader(f, bar, hasher)  # type: ignore[arg-type]
        stream, compressed = _open_stream(f, reader)  # type: ignore[arg-type]
        buf = _Buffer(stream, reader, CHUNK_BYTES if compressed else min(CHUNK_BYTES, size + 1))
        try:
            have = buf.ensure(4)
        except (OSError, zlib.error) as e:  # gzip magic, but no gzip stream
            raise HerdInputError(f"{name}: cannot decompress ({e})") from None
        if not have:
            if buf.end == buf.start:
                raise HerdInputError(f"{name}: empty file, not a pcap or pcapng capture")
            raise HerdInputError(f"{name}: file too short for a pcap or pcapng header")
        magic = struct.unpack("<I", buf.b[:4].tobytes())[0]
        # The packet count is bounded by the file size (every stored packet needs a
        # record header and an IPv4 header); compressed files start smaller and grow.
        capacity = size // MIN_STORED_RECORD + 16 if not compressed else size // 4 + 1024
        cols = _Columns(capacity, numberer, lambda n: n * size // max(reader.raw_bytes, 1) + 1)
        try:
            if magic in _PCAP_MAGICS:
                _parse_pcap(name, buf, cols)
            elif magic == _PCAPNG_SHB:
                _parse_pcapng(name, buf, cols)
            else:
                what = "gzip-compressed file holding no" if compressed else "not a"
                raise HerdInputError(f"{name}: {what} pcap or pcapng file (magic 0x{magic:08x})")
        except (OSError, zlib.error) as e:
            what = "corrupt gzip stream" if compressed else "read error"
            raise HerdInputError(f"{name}: {what} ({e})") from None
        digest = reader.digest()
        data = cols.finish()
    finally:
        bar.close()
        hasher.close()
        numberer.close()
        f.close()
    return digest, data


def _progress_bar(name: str, size: int, progress: bool) -> Any:
    if progress and size >= PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        return tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            desc=f"parsing {os.path.basename(name)}",
            leave=False,
        )
    return _NoBar()


class _NoBar:
    def update(self, k: int) -> None:
        pass

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------

_PACKET_COLUMNS: dict[str, type] = {
    "ts_ns": np.int64,
    "src": np.uint32,
    "dst": np.uint32,
    "sport": np.uint16,
    "dport": np.uint16,
    "proto": np.uint8,
    "flow": np.int32,
}
_FLOW_COLUMNS: dict[str, type] = {
    "flow_src": np.uint32,
    "flow_dst": np.uint32,
    "flow_sport": np.uint16,
    "flow_dport": np.uint16,
    "flow_proto": np.uint8,
}


def cache_dir() -> Path:
    """$HERD_CACHE_DIR, else $XDG_CACHE_HOME/herd, else ~/.cache/herd."""
    env = os.environ.get("HERD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "herd" if xdg else Path.home() / ".cache" / "herd"


def _stat_key(path: str) -> tuple[str, dict[str, Any]]:
    """The index key of a file: its real path and the stat fields that change when it does.

    The inode catches a file replaced by rename (rsync, editors) even when the mtime was
    preserved; the ctime catches an mtime set back by hand.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = {
        "path": real,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return name, ident


def _entry_dir(root: Path, digest: str) -> Path:
    return root / f"trace-v{CACHE_VERSION}-{digest}"


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _index_lookup(root: Path, path: str, key: tuple[str, dict[str, Any]]) -> str | None:
    """The digest the index remembers for this file, if its stat still matches.

    File timestamps tick coarsely (a jiffy on Linux), so a file rewritten at the same size
    just after it was indexed can keep its stat. An entry written within RACY_NS of the
    file's last change is therefore confirmed by hashing the file (much cheaper than a
    parse), as git does for its racily clean index entries.
    """
    name, ident = key
    try:
        with open(root / "index" / f"{name}.json") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if entry.get("version") != CACHE_VERSION or entry.get("file") != ident:
        return None
    digest = entry.get("digest")
    if not isinstance(digest, str) or len(digest) != 64:
        return None
    changed = max(ident["mtime_ns"], ident["ctime_ns"])
    if entry.get("indexed_ns", 0) - changed < RACY_NS:
        try:
            if _file_sha256(path) != digest:
                return None
        except OSError:
            return None
        _index_store(root, key, digest)  # no longer racy once the file has aged
    return digest


def _index_store(root: Path, key: tuple[str, dict[str, Any]], digest: str) -> None:
    name, ident = key
    try:
        (root / "index").mkdir(parents=True, exist_ok=True)
        entry = {
            "version": CACHE_VERSION,
            "file": ident,
            "digest": digest,
            "indexed_ns": time.time_ns(),
        }
        atomic_write(root / "index" / f"{name}.json", json.dumps(entry))
    except OSError as e:
        log.debug("trace cache: cannot write the index in %s: %s", root, e)


def _cache_load(root: Path, digest: str) -> dict[str, Any] | None:
    """The cached columns of a digest, or None when absent, of another version or damaged."""
    d = _entry_dir(root, digest)
    try:
        with open(d / "meta.json") as f:
            meta = json.load(f)
        if meta.get("version") != CACHE_VERSION or meta.get("digest") != digest:
            return None
        out: dict[str, Any] = {}
        for cols, count in ((_PACKET_COLUMNS, meta["packets"]), (_FLOW_COLUMNS, meta["flows"])):
            for key, dtype in cols.items():
                a = np.load(d / f"{key}.npy", allow_pickle=False)
                if a.dtype != dtype or a.shape != (count,):
                    return None
                out[key] = a
        out["skipped_non_ipv4"] = int(meta["skipped_non_ipv4"])
        out["skipped_malformed"] = int(meta["skipped_malformed"])
        return out
    except (OSError, ValueError, KeyError, TypeError, EOFError):
        return None


def _cache_entry_ok(root: Path, digest: str, data: dict[str, Any]) -> bool:
    """Whether a complete entry for these parsed columns is on disk (checked by its metadata
    and file sizes, without reading the arrays)."""
    d = _entry_dir(root, digest)
    try:
        with open(d / "meta.json") as f:
            meta = json.load(f)
        if meta.get("version") != CACHE_VERSION or meta.get("digest") != digest:
            return False
        if meta.get("packets") != len(data["ts_ns"]) or meta.get("flows") != len(data["flow_src"]):
            return False
        for key in (*_PACKET_COLUMNS, *_FLOW_COLUMNS):
            if os.stat(d / f"{key}.npy").st_size < data[key].nbytes:
                return False
        return True
    except (OSError, ValueError):
        return False


def _cache_store(root: Path, digest: str, data: dict[str, Any]) -> None:
    """Write an entry into a temporary directory and rename it into place, so that readers
    never see half an entry. Any failure (read-only or full disk) leaves the cache as it
    was: caching is an optimisation, never a reason to fail a load."""
    final = _entry_dir(root, digest)
    tmp: str | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=root, prefix=f".tmp-{digest[:16]}-")
        for key in (*_PACKET_COLUMNS, *_FLOW_COLUMNS):
            np.save(Path(tmp) / f"{key}.npy", data[key], allow_pickle=False)
        meta = {
            "version": CACHE_VERSION,
            "digest": digest,
            "packets": len(data["ts_ns"]),
            "flows": len(data["flow_src"]),
            "skipped_non_ipv4": data["skipped_non_ipv4"],
            "skipped_malformed": data["skipped_malformed"],
        }
        with open(Path(tmp) / "meta.json", "w") as f:
            json.dump(meta, f)
        try:
            os.replace(tmp, final)
        except OSError:
            # An entry is already there: damaged (we re-parsed because it did not load) or
            # written by a concurrent process. Replace it.
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        tmp = None
    except OSError as e:
        log.debug("trace cache: cannot write %s: %s", final, e)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _make_trace(
    paths: tuple[str, ...], digest: str, data: dict[str, Any], ingress: np.ndarray | None = None
) -> Trace:
    if ingress is None:  # a single file: no ingress switch assigned
        ingress = np.full(len(data["ts_ns"]), -1, np.int16)
    return Trace(
        paths=paths,
        digest=digest,
        ingress=ingress,
        **{k: data[k] for k in (*_PACKET_COLUMNS, *_FLOW_COLUMNS)},
        skipped_non_ipv4=int(data["skipped_non_ipv4"]),
        skipped_malformed=int(data["skipped_malformed"]),
    )


def load_trace(
    path: str | os.PathLike[str], *, use_cache: bool = True, progress: bool = False
) -> Trace:
    """Load one capture (pcap or pcapng, optionally gzip-compressed) as a Trace.

    With use_cache, a file seen before (same real path, size, mtime, inode) is loaded from
    the cache without being read; a new or changed file is parsed and its columns cached.
    Raises HerdInputError for a missing, unreadable or non-capture file.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise HerdInputError(f"{p}: no such file")
    root = cache_dir()
    key = None
    if use_cache and os.path.isfile(p):
        # Stat before parsing: if the file changes while it is read, this key no longer
        # matches it afterwards, so the entry can never describe the new bytes.
        key = _stat_key(p)
        digest = _index_lookup(root, p, key)
        if digest is not None:
            data = _cache_load(root, digest)
            if data is not None:
                return _make_trace((p,), digest, data)
    digest, data = _parse_file(p, progress)
    if key is not None:
        if not _cache_entry_ok(root, digest, data):  # the same bytes may be cached already
            _cache_store(root, digest, data)
        _index_store(root, key, digest)
    return _make_trace((p,), digest, data)


def load_ingress_traces(
    paths: Sequence[str | os.PathLike[str]], *, use_cache: bool = True, progress: bool = False
) -> Trace:
    """One capture per ingress switch, merged into one Trace: ingress = the file's index.

    Packets are merged by timestamp; each file keeps its own order and equal timestamps go
    to the lower file index first. Flows are numbered by first appearance in the merged
    order. digest = sha256 of the files' digests concatenated (hex, in the given order).
    """
    if not paths:
        raise HerdInputError("ingress traces: no files given")
    if len(paths) > np.iinfo(np.int16).max:
        raise HerdInputError(f"ingress traces: {len(paths)} files, at most 32767 supported")
    parts = [load_trace(p, use_cache=use_cache, progress=progress) for p in paths]
    starts = np.zeros(len(parts) + 1, np.int64)
    starts[1:] = np.cumsum([t.packets for t in parts])
    ts_all = np.concatenate([t.ts_ns for t in parts])
    order = _merge_order(ts_all, starts)
    ingress = np.repeat(np.arange(len(parts), dtype=np.int16), [t.packets for t in parts])[order]
    cols: dict[str, Any] = {"ts_ns": ts_all[order]}
    del ts_all
    for key in ("src", "dst", "sport", "dport", "proto"):
        cols[key] = np.concatenate([getattr(t, key) for t in parts])[order]
    cols.update(
        _number_flows(cols["src"], cols["dst"], cols["sport"], cols["dport"], cols["proto"])
    )
    cols.update(
        skipped_non_ipv4=sum(t.skipped_non_ipv4 for t in parts),
        skipped_malformed=sum(t.skipped_malformed for t in parts),
    )
    digest = hashlib.sha256("".join(t.digest for t in parts).encode("ascii")).hexdigest()
    return _make_trace(tuple(os.fspath(p) for p in paths), digest, cols, ingress)


def trace_info(trace: Trace) -> dict[str, Any]:
    """Summary statistics of a trace (JSON-serialisable).

    first_ts / last_ts are the earliest and latest timestamps (ns since the epoch, None for
    an empty trace); protocols counts packets, protocol_flows counts flows. The thresholds
    are T = herd.groundtruth.threshold(counts, P); None when the trace has no flows.
    """
    counts = trace.flow_counts()
    n = trace.packets
    proto = trace.proto
    tcp = int(np.count_nonzero(proto == 6))
    udp = int(np.count_nonzero(proto == 17))
    ftcp = int(np.count_nonzero(trace.flow_proto == 6))
    fudp = int(np.count_nonzero(trace.flow_proto == 17))
    first = int(trace.ts_ns.min()) if n else None
    last = int(trace.ts_ns.max()) if n else None
    info: dict[str, Any] = {
        "path": trace.paths[0] if len(trace.paths) == 1 else ", ".join(trace.paths),
        "digest": trace.digest,
        "packets": n,
        "skipped": trace.skipped,
        "skipped_non_ipv4": trace.skipped_non_ipv4,
        "skipped_malformed": trace.skipped_malformed,
        "flows": trace.flows,
        "groups": int(len(np.unique(trace.group_of_flow()))),
        "duration_s": (last - first) / 1e9 if n else 0.0,  # type: ignore[operator]
        "first_ts": first,
        "last_ts": last,
        "max_flow_size": int(counts.max()) if trace.flows else 0,
        "protocols": {"tcp": tcp, "udp": udp, "other": n - tcp - udp},
        "protocol_flows": {"tcp": ftcp, "udp": fudp, "other": trace.flows - ftcp - fudp},
    }
    for key, pct in (("threshold_99", 99.0), ("threshold_99_9", 99.9), ("threshold_99_99", 99.99)):
        info[key] = _threshold(counts, pct) if trace.flows else None
    t99 = info["threshold_99"]
    info["heavy_hitters_99"] = int(np.count_nonzero(counts >= t99)) if t99 is not None else 0
    return info


def _fmt_ts(ns: int | None) -> str:
    if ns is None:
        return "-"
    sec, frac = divmod(ns, 1_000_000_000)
    stamp = _dt.datetime.fromtimestamp(sec, tz=_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}.{frac:09d} UTC"


def format_trace_info(info: dict[str, Any]) -> str:
    """The text of `herd trace info`: one fact a line, aligned."""

    def pct(k: int, of: int) -> str:
        return f"{k:,} ({100.0 * k / of:.1f}%)" if of else f"{k:,}"

    n = info["packets"]
    protos = info["protocols"]
    lines = [
        ("trace", str(info["path"])),
        ("sha256", info["digest"]),
        ("packets", f"{n:,} IPv4 measured"),
        (
            "skipped",
            f"{info['skipped']:,} ({info['skipped_non_ipv4']:,} non-IPv4, "
            f"{info['skipped_malformed']:,} malformed)",
        ),
        ("flows", f"{info['flows']:,} (5-tuples)"),
        ("groups", f"{info['groups']:,} (src /8, dst /8)"),
        ("first packet", _fmt_ts(info["first_ts"])),
        ("last packet", _fmt_ts(info["last_ts"])),
        ("duration", f"{info['duration_s']:.6f} s"),
        (
            "protocols",
            f"tcp {pct(protos['tcp'], n)}, udp {pct(protos['udp'], n)}, "
            f"other {pct(protos['other'], n)} packets",
        ),
        ("largest flow", f"{info['max_flow_size']:,} packets"),
    ]
    if info["threshold_99"] is None:
        lines.append(("threshold T", "- (no IPv4 flows)"))
    else:
        lines += [
            ("T (99th pct)", f"{info['threshold_99']:,} packets"),
            ("T (99.9th pct)", f"{info['threshold_99_9']:,} packets"),
            ("T (99.99th pct)", f"{info['threshold_99_99']:,} packets"),
            ("heavy hitters", f"{info['heavy_hitters_99']:,} flows >= T (99th pct)"),
        ]
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in lines)


def dissect_frames(frames: Sequence[bytes]) -> tuple[np.ndarray, ...]:
    """The 5-tuples of live Ethernet frames, by the same rules as captures (the model target's
    switches read frames from interfaces): (is_ipv4 mask, src, dst, sport, dport, proto)."""
    n = len(frames)
    src = np.zeros(n, np.uint32)
    dst = np.zeros(n, np.uint32)
    sport = np.zeros(n, np.uint16)
    dport = np.zeros(n, np.uint16)
    proto = np.zeros(n, np.uint8)
    ok = np.zeros(n, np.bool_)
    for i, frame in enumerate(frames):
        buf = np.frombuffer(frame, dtype=np.uint8)
        ok[i] = _dissect(buf, 0, len(buf), 1, i, src, dst, sport, dport, proto) == _STORED
    return ok, src, dst, sport, dport, proto
