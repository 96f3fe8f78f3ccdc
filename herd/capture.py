"""Reading captures: pcap / pcapng (optionally gzip-compressed) bytes to packet columns.

Numba kernels walk the raw bytes of one read buffer at a time (no per-packet Python) and
fill fixed-size output chunks; each full chunk goes to a consumer on a background thread
while the kernels fill the next one. Memory is therefore a few read buffers and chunks,
whatever the length of the capture. The file's sha256 is computed on the way, also in the
background.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import sys
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numba import njit

from herd.errors import HerdInputError

# Read size. Small enough that the buffer is a few bytes per packet of a large trace,
# large enough that the per-call overhead of the kernels disappears.
CHUNK_BYTES = 16 << 20
# Packets per output chunk handed to the consumer (two chunks are in flight).
PARSE_CHUNK_PACKETS = 1 << 18
# A record or block claiming more than this is corruption, not a packet (libpcap's own
# limit is 256 KiB; pcapng blocks may carry options, so leave generous room).
MAX_RECORD_BYTES = 64 << 20
# Show a progress bar only when the file takes noticeable time to parse.
PROGRESS_MIN_BYTES = 64 << 20

# The columns a capture yields, with their dtypes.
CAPTURE_COLUMNS: dict[str, np.dtype[Any]] = {
    "ts_ns": np.dtype(np.int64),
    "src": np.dtype(np.uint32),
    "dst": np.dtype(np.uint32),
    "sport": np.dtype(np.uint16),
    "dport": np.dtype(np.uint16),
    "proto": np.dtype(np.uint8),
}

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


# --------------------------------------------------------------------------------------------
# Reading a capture
# --------------------------------------------------------------------------------------------


class _Worker:
    """One background thread running tasks in submission order.

    The kernels and hashlib release the GIL, so hashing the bytes just read, consuming the
    packets just parsed and parsing the next records run on different cores.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: list[Future[None]] = []

    def submit(self, fn: Callable[..., None], *args: Any) -> Future[None]:
        fut = self._pool.submit(fn, *args)
        self._pending.append(fut)
        return fut

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


# consume(columns, estimated packets of the whole capture): columns are views of reused
# arrays, valid until consume returns.
Consumer = Callable[[dict[str, np.ndarray], int], None]


class _Chunks:
    """Two sets of output arrays: the kernels fill one while the worker hands the other to
    the consumer, so parsing never waits unless the consumer is the slower."""

    def __init__(
        self, rows: int, worker: _Worker, consume: Consumer, estimate: Callable[[int], int]
    ) -> None:
        rows = max(1, rows)
        self.sets = [[np.empty(rows, d) for d in CAPTURE_COLUMNS.values()] for _ in range(2)]
        self.busy: list[Future[None] | None] = [None, None]
        self.cur = 0
        self.n = 0  # rows filled in the current set
        self.packets = 0  # rows handed to the consumer
        self.skipped = np.zeros(2, np.int64)  # [non-IPv4, malformed]
        self.worker = worker
        self.consume = consume
        self.estimate = estimate

    def arrays(self) -> list[np.ndarray]:
        """The arrays the parse kernels fill."""
        return self.sets[self.cur]

    def flush(self) -> None:
        """Hand the filled rows to the consumer and switch to the other set, once the
        consumer is done with it."""
        if not self.n:
            return
        cols = {k: a[: self.n] for k, a in zip(CAPTURE_COLUMNS, self.sets[self.cur], strict=True)}
        self.packets += self.n
        self.busy[self.cur] = self.worker.submit(self.consume, cols, self.estimate(self.packets))
        self.cur ^= 1
        self.n = 0
        done = self.busy[self.cur]
        if done is not None:
            done.result()


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


def _parse_pcap(name: str, buf: _Buffer, cols: _Chunks) -> None:
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
        cols.n = n
        if status == _FULL:
            cols.flush()
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


def _parse_pcapng(name: str, buf: _Buffer, cols: _Chunks) -> None:
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
        cols.n = n
        if status == _FULL:
            cols.flush()
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


@dataclass(frozen=True)
class Capture:
    """What reading a capture yields besides its packets."""

    digest: str  # sha256 of the file's bytes (compressed, when it is gzip)
    skipped_non_ipv4: int
    skipped_malformed: int


def read_capture(path: str, consume: Consumer, progress: bool = False) -> Capture:
    """Parse one capture file, handing its IPv4 packets to ``consume`` in order, at most
    PARSE_CHUNK_PACKETS at a time, on a background thread (see Consumer). Exceptions of
    ``consume`` propagate as they are; problems with the file raise HerdInputError."""
    name = path
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed in the finally below
    except FileNotFoundError:
        raise HerdInputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise HerdInputError(f"{name}: is a directory, not a capture file") from None
    except OSError as e:
        raise HerdInputError(f"{name}: cannot open ({e.strerror})") from None
    hasher, consumer = _Worker(), _Worker()
    bar: Any = _NoBar()
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            # The digest and the cache key need a file of known size.
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
        # The packet rate so far, extrapolated to the whole file: sizes the flow table.
        cols = _Chunks(
            PARSE_CHUNK_PACKETS,
            consumer,
            consume,
            lambda n: n * size // max(reader.raw_bytes, 1) + 1,
        )
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
        cols.flush()
        digest = reader.digest()
        consumer.wait()
    finally:
        bar.close()
        hasher.close()
        consumer.close()
        f.close()
    return Capture(digest, int(cols.skipped[0]), int(cols.skipped[1]))


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
