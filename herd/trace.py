"""Traces: the measured (IPv4) packets of a capture, walked chunk by chunk.

A trace is the sequence of measured packets of one capture file, or of several files when
each holds what one ingress switch saw. Every packet keeps its timestamp, its 5-tuple and
the index of its flow in a flow table numbered by first appearance.

Loading parses the capture chunk by chunk (herd.capture), numbers flows as they come
(herd.flowtable) and appends each chunk's columns to a cache entry on disk
(herd.tracecache), keyed by the sha256 of the file's bytes: memory grows with the flows,
never with the packets, and a second load only reads the flow table.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numba import njit

from herd.capture import dissect_frames, read_capture
from herd.errors import HerdInputError
from herd.flowtable import FlowNumbering, count_flows, number_flows
from herd.groundtruth import threshold as _threshold
from herd.tracecache import (
    CACHE_VERSION,
    PACKET_COLUMNS,
    ColumnFiles,
    Entry,
    EntryWriter,
    StoreError,
    cache_dir,
    index_lookup,
    index_store,
    open_entry,
    stat_key,
)

__all__ = [
    "CACHE_VERSION",
    "CHUNK_PACKETS",
    "COLUMNS",
    "Trace",
    "cache_dir",
    "dissect_frames",
    "format_trace_info",
    "load_ingress_traces",
    "load_trace",
    "trace_info",
]

# Packets per chunk when a trace is walked in order (simulation, ground truth): large
# enough that per-chunk overhead vanishes, small enough that the buffers (a few bytes a
# packet a column) stay a few MiB.
CHUNK_PACKETS = 1 << 20

# Every per-packet column of a Trace, with its dtype. ingress is the ingress switch of the
# packet: its file's index for load_ingress_traces, -1 for a single file.
COLUMNS: dict[str, np.dtype[Any]] = {**PACKET_COLUMNS, "ingress": np.dtype(np.int16)}


# --------------------------------------------------------------------------------------------
# The Trace
# --------------------------------------------------------------------------------------------


def _column(name: str) -> property:
    def get(self: Trace) -> np.ndarray:
        return self._whole(name)

    return property(get, doc=f"The whole {name} column, loaded on first access and kept.")


class Trace:
    """The measured (IPv4) packets of a capture, in trace order, and its flow table.

    A trace from load_trace is backed by column files (its cache entry, or anonymous
    temporary files): it holds its counts and flow table (flow_src ... flow_proto, about
    13 bytes a flow) in memory, and its packets on disk. A trace built from arrays
    (``Trace(paths, digest, ts_ns, ...)``, as tests and trace slicing do) holds everything
    in memory. Both offer the same interface:

    - ``chunks(columns)`` walks the packets in order, a chunk at a time: the way to read a
      trace of any length;
    - the per-packet attributes ``ts_ns, src, dst, sport, dport, proto, flow, ingress``
      load the whole column on first access and keep it: a convenience that costs 1-8
      bytes a packet each, for code that needs random access.

    close() (or a with block) releases the files; a closed trace keeps what it loaded.
    """

    ts_ns = _column("ts_ns")
    src = _column("src")
    dst = _column("dst")
    sport = _column("sport")
    dport = _column("dport")
    proto = _column("proto")
    ingress = _column("ingress")
    flow = _column("flow")

    def __init__(
        self,
        paths: Sequence[str],
        digest: str,
        ts_ns: np.ndarray,
        src: np.ndarray,
        dst: np.ndarray,
        sport: np.ndarray,
        dport: np.ndarray,
        proto: np.ndarray,
        ingress: np.ndarray,
        flow: np.ndarray,
        flow_src: np.ndarray,
        flow_dst: np.ndarray,
        flow_sport: np.ndarray,
        flow_dport: np.ndarray,
        flow_proto: np.ndarray,
        skipped_non_ipv4: int = 0,
        skipped_malformed: int = 0,
    ) -> None:
        """A trace held in memory, from its columns (all of one length) and flow table."""
        columns = dict(
            ts_ns=ts_ns,
            src=src,
            dst=dst,
            sport=sport,
            dport=dport,
            proto=proto,
            ingress=ingress,
            flow=flow,
        )
        lengths = {len(a) for a in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"Trace: packet columns of different lengths {sorted(lengths)}")
        self.paths = tuple(paths)
        self.digest = digest
        self.flow_src = flow_src
        self.flow_dst = flow_dst
        self.flow_sport = flow_sport
        self.flow_dport = flow_dport
        self.flow_proto = flow_proto
        self.skipped_non_ipv4 = int(skipped_non_ipv4)
        self.skipped_malformed = int(skipped_malformed)
        self._packets = lengths.pop()
        self._loaded: dict[str, np.ndarray] = columns
        self._files: ColumnFiles | None = None  # the packet columns of a stored trace

    @classmethod
    def _stored(cls, paths: tuple[str, ...], digest: str, entry: Entry) -> Trace:
        """A trace backed by a stored entry; single-file, so ingress is -1 throughout."""
        t = cls.__new__(cls)
        t.paths = paths
        t.digest = digest
        for k, a in entry.flow_table.items():
            setattr(t, k, a)
        t.skipped_non_ipv4 = entry.skipped_non_ipv4
        t.skipped_malformed = entry.skipped_malformed
        t._packets = entry.packets
        t._loaded = {}
        t._files = entry.columns
        return t

    @property
    def packets(self) -> int:
        return self._packets

    @property
    def flows(self) -> int:
        return len(self.flow_src)

    @property
    def skipped(self) -> int:
        return self.skipped_non_ipv4 + self.skipped_malformed

    @property
    def first_ts(self) -> int:
        """The first packet's timestamp (not the earliest: captures need not be monotonic);
        epochs count from it. 0 for an empty trace."""
        return int(self._read("ts_ns", 0, 1)[0]) if self._packets else 0

    @property
    def has_ingress(self) -> bool:
        """Whether packets carry their ingress switch (load_ingress_traces), rather than -1
        (a single file: the load balancer assigns switches). Reads no column."""
        return self._files is None and bool(self._packets) and int(self.ingress[0]) >= 0

    def chunks(
        self, columns: Sequence[str], size: int = CHUNK_PACKETS
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """The packets in trace order, at most ``size`` at a time: (index of the chunk's
        first packet, {column: its values}), columns from COLUMNS.

        Treat the arrays as read-only and valid until the next iteration only: a stored
        trace reads every chunk into the same buffers (copy what you keep), an in-memory
        one yields views of its columns. Memory is those buffers (``size`` packets a
        column), however long the trace.
        """
        names = tuple(columns)
        for c in names:
            if c not in COLUMNS:
                raise ValueError(f"Trace.chunks: no column {c!r} (columns: {', '.join(COLUMNS)})")
        size = max(1, int(size))
        buffers: dict[str, np.ndarray] = {}
        for start in range(0, self._packets, size):
            stop = min(start + size, self._packets)
            out = {}
            for c in names:
                whole = self._loaded.get(c)
                if whole is not None:
                    out[c] = whole[start:stop]
                    continue
                if c not in buffers:
                    buffers[c] = np.empty(min(size, self._packets), COLUMNS[c])
                    if c == "ingress":
                        buffers[c].fill(-1)
                buf = buffers[c][: stop - start]
                if c != "ingress":
                    self._stored_columns().read(c, start, buf)
                out[c] = buf
            yield start, out

    def group_of_flow(self) -> np.ndarray:
        """The Herd group of every flow: (src /8) << 8 | (dst /8), as uint16."""
        return ((self.flow_src >> 24) << 8 | (self.flow_dst >> 24)).astype(np.uint16)

    def flow_counts(self) -> np.ndarray:
        """Packets per flow (int64), indexed like the flow table; counted chunk by chunk."""
        counts = np.zeros(self.flows, np.int64)
        for _, c in self.chunks(("flow",)):
            count_flows(counts, c["flow"])
        return counts

    def close(self) -> None:
        """Release the column files (temporary ones are deleted). Columns already loaded
        stay usable; reading others raises ValueError."""
        if self._files is not None:
            self._files.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _whole(self, name: str) -> np.ndarray:
        a = self._loaded.get(name)
        if a is None:
            a = self._loaded[name] = self._read(name, 0, self._packets)
        return a

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Packets start..stop of a column, without keeping them (a view if loaded)."""
        whole = self._loaded.get(name)
        if whole is not None:
            return whole[start:stop]
        if name == "ingress":
            return np.full(stop - start, -1, COLUMNS[name])
        return self._stored_columns().read(name, start, np.empty(stop - start, COLUMNS[name]))

    def _stored_columns(self) -> ColumnFiles:
        assert self._files is not None  # an in-memory trace holds all its columns
        return self._files

    def __repr__(self) -> str:
        return (
            f"Trace(paths={self.paths!r}, digest={self.digest[:12]}..., packets={self.packets}, "
            f"flows={self.flows}, skipped={self.skipped})"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _parse_file(path: str, root: Path | None, progress: bool) -> tuple[str, Entry]:
    """Parse one capture into a cache entry under root (None: temporary files), numbering
    flows and appending each chunk of packets as it comes. Returns (sha256 of the file's
    bytes, the entry). A write error raises StoreError and leaves nothing behind."""
    writer = EntryWriter(root)
    numbering: FlowNumbering | None = None
    flow = np.empty(0, np.int32)  # reused: the writer copies each chunk out

    def consume(cols: dict[str, np.ndarray], estimate: int) -> None:
        nonlocal numbering, flow
        k = len(cols["ts_ns"])
        if numbering is None:
            numbering = FlowNumbering(estimate)
        if len(flow) < k:
            flow = np.empty(k, np.int32)
        five = (cols["src"], cols["dst"], cols["sport"], cols["dport"], cols["proto"])
        numbering.add(five, flow, 0, k)
        writer.append({**cols, "flow": flow[:k]})

    try:
        cap = read_capture(path, consume, progress)
        table = (numbering or FlowNumbering(0)).finish()
        skipped = (cap.skipped_non_ipv4, cap.skipped_malformed)
        return cap.digest, writer.finish(cap.digest, table, skipped)
    except BaseException:
        writer.abort()
        raise


def load_trace(
    path: str | os.PathLike[str], *, use_cache: bool = True, progress: bool = False
) -> Trace:
    """Load one capture (pcap or pcapng, optionally gzip-compressed) as a stored Trace.

    With use_cache, a file seen before (same real path, size, mtime, inode) is loaded from
    the cache without being read; a new or changed file is parsed into the cache. Without
    it, or when the cache cannot be written, the columns go to temporary files that are
    deleted with the trace. Raises HerdInputError for a missing, unreadable or non-capture
    file.
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise HerdInputError(f"{p}: no such file")
    root = cache_dir()
    key = None
    if use_cache and os.path.isfile(p):
        # Stat before parsing: if the file changes while it is read, this key no longer
        # matches it afterwards, so the entry can never describe the new bytes.
        key = stat_key(p)
        digest = index_lookup(root, p, key)
        if digest is not None:
            entry = open_entry(root, digest)
            if entry is not None:
                return Trace._stored((p,), digest, entry)
    try:
        try:
            digest, entry = _parse_file(p, root if key is not None else None, progress)
        except StoreError:
            if key is None:
                raise
            # The cache filled up or went away mid-parse: parse again into temporary files.
            digest, entry = _parse_file(p, None, progress)
    except StoreError as e:
        raise HerdInputError(f"{p}: cannot store the parsed packets ({e})") from None
    if key is not None and entry.cached:
        index_store(root, key, digest)
    return Trace._stored((p,), digest, entry)


def load_ingress_traces(
    paths: Sequence[str | os.PathLike[str]], *, use_cache: bool = True, progress: bool = False
) -> Trace:
    """One capture per ingress switch, merged into one in-memory Trace: ingress = the
    file's index.

    Packets are merged by timestamp; each file keeps its own order and equal timestamps go
    to the lower file index first. Flows are numbered by first appearance in the merged
    order. digest = sha256 of the files' digests concatenated (hex, in the given order).
    """
    if not paths:
        raise HerdInputError("ingress traces: no files given")
    if len(paths) > np.iinfo(np.int16).max:
        raise HerdInputError(f"ingress traces: {len(paths)} files, at most 32767 supported")
    parts = [load_trace(p, use_cache=use_cache, progress=progress) for p in paths]
    sizes = [t.packets for t in parts]
    starts = np.zeros(len(parts) + 1, np.int64)
    starts[1:] = np.cumsum(sizes)
    ts_all = np.concatenate([t._read("ts_ns", 0, t.packets) for t in parts])
    order = _merge_order(ts_all, starts)
    cols: dict[str, Any] = {"ts_ns": ts_all[order]}
    del ts_all
    cols["ingress"] = np.repeat(np.arange(len(parts), dtype=np.int16), sizes)[order]
    for key in ("src", "dst", "sport", "dport", "proto"):
        cols[key] = np.concatenate([t._read(key, 0, t.packets) for t in parts])[order]
    del order
    cols.update(number_flows(cols["src"], cols["dst"], cols["sport"], cols["dport"], cols["proto"]))
    digest = hashlib.sha256("".join(t.digest for t in parts).encode("ascii")).hexdigest()
    trace = Trace(
        paths=tuple(os.fspath(p) for p in paths),
        digest=digest,
        **cols,
        skipped_non_ipv4=sum(t.skipped_non_ipv4 for t in parts),
        skipped_malformed=sum(t.skipped_malformed for t in parts),
    )
    for t in parts:
        t.close()
    return trace


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
# Summary
# --------------------------------------------------------------------------------------------


def trace_info(trace: Trace) -> dict[str, Any]:
    """Summary statistics of a trace (JSON-serialisable), gathered chunk by chunk.

    first_ts / last_ts are the first and last packets' timestamps, min_ts / max_ts the
    earliest and latest (they differ when the capture is not monotonic); ns since the epoch,
    None for an empty trace; duration_s = max - min. protocols counts packets,
    protocol_flows counts flows. The thresholds are T = herd.groundtruth.threshold(counts,
    P); None when the trace has no flows.
    """
    n = trace.packets
    tcp = udp = 0
    first = last = lo = hi = None
    for start, c in trace.chunks(("ts_ns", "proto")):
        ts, proto = c["ts_ns"], c["proto"]
        tcp += int(np.count_nonzero(proto == 6))
        udp += int(np.count_nonzero(proto == 17))
        if start == 0:
            first = lo = hi = int(ts[0])
        last = int(ts[-1])
        lo, hi = min(lo, int(ts.min())), max(hi, int(ts.max()))  # type: ignore[type-var]
    counts = trace.flow_counts()
    ftcp = int(np.count_nonzero(trace.flow_proto == 6))
    fudp = int(np.count_nonzero(trace.flow_proto == 17))
    info: dict[str, Any] = {
        "path": trace.paths[0] if len(trace.paths) == 1 else ", ".join(trace.paths),
        "digest": trace.digest,
        "packets": n,
        "skipped": trace.skipped,
        "skipped_non_ipv4": trace.skipped_non_ipv4,
        "skipped_malformed": trace.skipped_malformed,
        "flows": trace.flows,
        "groups": int(len(np.unique(trace.group_of_flow()))),
        "duration_s": (hi - lo) / 1e9 if n else 0.0,  # type: ignore[operator]
        "first_ts": first,
        "last_ts": last,
        "min_ts": lo,
        "max_ts": hi,
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
    ]
    if (info["min_ts"], info["max_ts"]) != (info["first_ts"], info["last_ts"]):
        # Not in time order: say where the capture really starts and ends.
        lines += [("earliest", _fmt_ts(info["min_ts"])), ("latest", _fmt_ts(info["max_ts"]))]
    lines += [
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
