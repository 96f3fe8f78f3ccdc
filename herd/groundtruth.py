"""Ground truth: packet counts per (flow, epoch) pair and the heavy-hitter threshold T.

Epochs (DESIGN.md "Epochs"): with an epoch length W, a packet's epoch is
floor((ts - ts_first) / W), ts_first the trace's first timestamp; a timestamp earlier than
its predecessor's stays in the current epoch (epochs never go back). W = 0 is one epoch
spanning the whole trace, where a pair is simply a flow. A heavy hitter is a (flow, epoch)
pair of at least T packets; T = floor(linear percentile of the sizes of all pairs) unless
given, one T for all epochs.

Both passes walk the trace chunk by chunk (``Trace.chunks``), counting each epoch's flows in
one flows-sized scratch array that is cleared, entry by entry, when the epoch ends: memory
grows with the flows, never with the packets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from herd.errors import HerdInputError

if TYPE_CHECKING:
    from herd.trace import Trace

NO_EPOCH = -1  # the epoch before a trace's first packet


def threshold(counts: np.ndarray, percentile: float = 99.0) -> int:
    """T = floor(numpy percentile of the flow sizes, linear method), as DESIGN.md fixes it."""
    if not 0.0 <= percentile <= 100.0:
        raise HerdInputError(f"percentile: {percentile} is not in [0, 100]")
    if len(counts) == 0:
        raise HerdInputError("trace has no IPv4 flows, so there is no threshold T")
    return int(math.floor(np.percentile(counts, percentile, method="linear")))


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


# ------------------------------------------------------------------------------------------
# epochs


@njit(cache=True, inline="always")
def next_epoch(ts: int, ts_first: int, epoch_ns: int, current: int) -> int:
    """The epoch of a packet at ``ts`` after a packet in epoch ``current``: never earlier."""
    if epoch_ns <= 0 or ts < ts_first:
        return max(current, 0)
    e = (ts - ts_first) // epoch_ns
    return e if e > current else max(current, 0)


@njit(cache=True)
def packet_epochs(ts: np.ndarray, ts_first: int, epoch_ns: int) -> np.ndarray:
    """The epoch of every packet of a whole trace (the simulator finds them on the fly)."""
    out = np.empty(len(ts), np.int64)
    cur = NO_EPOCH
    for i in range(len(ts)):
        cur = next_epoch(ts[i], ts_first, epoch_ns, cur)
        out[i] = cur
    return out


def epoch_ns_of(epoch_ms: float) -> int:
    """W in nanoseconds (0: one epoch)."""
    return int(round(epoch_ms * 1e6))


# The counting pass's scalar state between calls.
CS_EPOCH = 0  # the current epoch
CS_TOUCHED = 1  # flows of the current epoch so far
CS_HEAVY = 2  # heavy pairs found
CS_MAX = 3  # largest pair so far in the current epoch
N_CS = 4


@njit(cache=True)
def _count_pairs_chunk(ts: np.ndarray, flow: np.ndarray, begin: int, ts_first: int,
                       epoch_ns: int, state: np.ndarray, scratch: np.ndarray,
                       touched: np.ndarray, size_hist: np.ndarray, epoch_packets: np.ndarray,
                       epoch_pairs: np.ndarray, T: int, heavy: np.ndarray) -> int:
    """Packets begin.. of one chunk of the counting pass. Pairs that end (their epoch ends)
    go into ``size_hist``; with T > 0 a pair is also appended to ``heavy`` (rows: epoch,
    flow, time of its T-th packet) when its T-th packet arrives. Returns where it stopped:
    len(ts), or earlier when an output array needs room (the caller grows it and calls
    again; reallocating inside the loop would cost reference counting on every packet)."""
    cur = state[CS_EPOCH]
    nt = state[CS_TOUCHED]
    nh = state[CS_HEAVY]
    top = state[CS_MAX]
    next_start = ts_first + (cur + 1) * epoch_ns if epoch_ns > 0 and cur >= 0 else \
        np.iinfo(np.int64).min
    stop = len(ts)
    for i in range(begin, len(ts)):
        t = ts[i]
        if t >= next_start:
            e = next_epoch(t, ts_first, epoch_ns, cur)
            if e != cur:
                if e >= len(epoch_packets) or top >= len(size_hist):
                    stop = i
                    break
                if cur >= 0:
                    _flush_epoch(scratch, touched, nt, size_hist)
                    epoch_pairs[cur] = nt
                nt = 0
                top = 0
                cur = e
            next_start = ts_first + (cur + 1) * epoch_ns if epoch_ns > 0 else \
                np.iinfo(np.int64).max
        if nh >= len(heavy):
            stop = i
            break
        f = flow[i]
        c = scratch[f] + 1
        scratch[f] = c
        if c == 1:
            touched[nt] = f
            nt += 1
        if c > top:
            top = c
        epoch_packets[cur] += 1
        if c == T:
            heavy[nh, 0] = cur
            heavy[nh, 1] = f
            heavy[nh, 2] = t
            nh += 1
    state[CS_EPOCH] = cur
    state[CS_TOUCHED] = nt
    state[CS_HEAVY] = nh
    state[CS_MAX] = top
    return stop


@njit(cache=True)
def _flush_epoch(scratch: np.ndarray, touched: np.ndarray, nt: int,
                 size_hist: np.ndarray) -> None:
    """Histogram the sizes of the epoch's pairs (size_hist has room) and clear their scratch
    counts."""
    for j in range(nt):
        f = touched[j]
        size_hist[scratch[f]] += 1
        scratch[f] = 0


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    b = np.zeros((size, *a.shape[1:]), dtype=a.dtype)
    b[: len(a)] = a
    return b


@dataclass(frozen=True)
class EpochCounts:
    """What one counting pass over a trace finds, for one epoch length."""

    epoch_ns: int
    ts_first: int
    epoch_packets: np.ndarray  # int64 per epoch 0..epochs-1 (empty epochs: 0)
    epoch_pairs: np.ndarray  # int64: distinct flows per epoch
    size_hist: np.ndarray  # int64: size_hist[n] = (flow, epoch) pairs of n packets
    # With a T: the heavy pairs, sorted by (epoch, flow), and the time of each one's T-th
    # packet.
    T: int = 0
    heavy_epoch: np.ndarray | None = None
    heavy_flow: np.ndarray | None = None
    heavy_cross_ts: np.ndarray | None = None

    @property
    def epochs(self) -> int:
        return len(self.epoch_packets)

    @property
    def pairs(self) -> int:
        return int(self.epoch_pairs.sum())

    def epoch_start_ns(self) -> np.ndarray:
        """When each epoch began (ts_first + e * W)."""
        return self.ts_first + np.arange(self.epochs, dtype=np.int64) * max(self.epoch_ns, 0)

    def threshold(self, percentile: float = 99.0) -> int:
        """T = floor(linear percentile of the pair sizes)."""
        return threshold_from_histogram(self.size_hist, percentile)

    def heavy_keys(self) -> np.ndarray:
        """(epoch << 32 | flow) of each heavy pair, ascending."""
        assert self.heavy_epoch is not None and self.heavy_flow is not None
        return pair_keys(self.heavy_epoch, self.heavy_flow)

    def heavy_per_epoch(self) -> np.ndarray:
        assert self.heavy_epoch is not None
        return np.bincount(self.heavy_epoch, minlength=self.epochs).astype(np.int64)


def pair_keys(epoch: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """One int64 key per (flow, epoch) pair, ordered by epoch, then flow."""
    return (np.asarray(epoch, np.int64) << 32) | np.asarray(flow, np.int64)


def count_pairs(trace: Trace, epoch_ns: int, T: int = 0) -> EpochCounts:
    """Walk the trace once: packets and distinct flows per epoch, the histogram of
    (flow, epoch) sizes and, when T > 0, the heavy pairs."""
    if epoch_ns < 0:
        raise HerdInputError(f"epoch length: {epoch_ns / 1e6:g} ms is negative")
    scratch = np.zeros(max(trace.flows, 1), np.int32)
    touched = np.empty(max(trace.flows, 1), np.int32)
    size_hist = np.zeros(1024, np.int64)
    epoch_packets = np.zeros(16, np.int64)
    epoch_pairs = np.zeros(16, np.int64)
    heavy = np.empty((1024, 3), np.int64)
    state = np.array([NO_EPOCH, 0, 0, 0], np.int64)
    ts_first = trace.first_ts
    for _, c in trace.chunks(("ts_ns", "flow")):
        ts, flow = c["ts_ns"], c["flow"]
        at = 0
        while at < len(ts):
            at = _count_pairs_chunk(ts, flow, at, ts_first, epoch_ns, state, scratch, touched,
                                    size_hist, epoch_packets, epoch_pairs, T, heavy)
            if at < len(ts):  # stopped for room: grow what is short
                e = next_epoch(ts[at], ts_first, epoch_ns, int(state[CS_EPOCH]))
                if e >= len(epoch_packets):
                    epoch_packets = _grown(epoch_packets, max(e + 1, 2 * len(epoch_packets)))
                    epoch_pairs = _grown(epoch_pairs, len(epoch_packets))
                if state[CS_MAX] >= len(size_hist):
                    size_hist = _grown(size_hist, max(int(state[CS_MAX]) + 1,
                                                      2 * len(size_hist)))
                if state[CS_HEAVY] >= len(heavy):
                    heavy = _grown(heavy, 2 * len(heavy))
    epochs = int(state[CS_EPOCH]) + 1
    if epochs > 0:
        if state[CS_MAX] >= len(size_hist):
            size_hist = _grown(size_hist, int(state[CS_MAX]) + 1)
        _flush_epoch(scratch, touched, int(state[CS_TOUCHED]), size_hist)
        epoch_pairs[epochs - 1] = state[CS_TOUCHED]
    heavy = heavy[: int(state[CS_HEAVY])]
    order = np.lexsort((heavy[:, 1], heavy[:, 0]))
    heavy = heavy[order]
    return EpochCounts(
        epoch_ns=epoch_ns, ts_first=ts_first,
        epoch_packets=epoch_packets[:epochs].copy(), epoch_pairs=epoch_pairs[:epochs].copy(),
        size_hist=size_hist, T=T,
        heavy_epoch=heavy[:, 0].copy() if T > 0 else None,
        heavy_flow=heavy[:, 1].copy() if T > 0 else None,
        heavy_cross_ts=heavy[:, 2].copy() if T > 0 else None,
    )


def threshold_from_histogram(size_hist: np.ndarray, percentile: float = 99.0) -> int:
    """``threshold`` over the values a histogram holds (size_hist[v] of value v), exactly as
    numpy's linear percentile computes it on the sorted values, without materialising them."""
    if not 0.0 <= percentile <= 100.0:
        raise HerdInputError(f"percentile: {percentile} is not in [0, 100]")
    n = int(size_hist.sum())
    if n == 0:
        raise HerdInputError("trace has no IPv4 flows, so there is no threshold T")
    cum = np.cumsum(size_hist)

    def value_at(rank: int) -> int:  # the rank-th smallest value, 0-based
        return int(np.searchsorted(cum, rank, side="right"))

    # numpy's "linear" method: virtual index (n - 1) * q, neighbours floor and floor + 1,
    # clamped to the ends, and its two-sided lerp.
    vi = np.float64(n - 1) * (np.float64(percentile) / np.float64(100))
    if vi >= n - 1:
        return value_at(n - 1)
    prev = math.floor(vi)
    a = np.float64(value_at(prev))
    b = np.float64(value_at(prev + 1))
    gamma = vi - np.float64(prev)
    diff = b - a
    value = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return int(math.floor(value))


# ------------------------------------------------------------------------------------------
# per-epoch statistics (herd trace info --epoch-ms)


@njit(cache=True)
def _linear_floor(sorted_vals: np.ndarray, percentile: float) -> int:
    """floor(numpy's linear percentile) of ascending values, as threshold_from_histogram."""
    n = len(sorted_vals)
    vi = np.float64(n - 1) * (np.float64(percentile) / np.float64(100))
    if vi >= n - 1:
        return sorted_vals[n - 1]
    prev = np.int64(np.floor(vi))
    a = np.float64(sorted_vals[prev])
    b = np.float64(sorted_vals[prev + 1])
    gamma = vi - np.float64(prev)
    diff = b - a
    value = b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma
    return np.int64(np.floor(value))


@njit(cache=True)
def _epoch_stats_chunk(ts: np.ndarray, flow: np.ndarray, ts_first: int, epoch_ns: int,
                       state: np.ndarray, scratch: np.ndarray, touched: np.ndarray,
                       percentile: float, out: np.ndarray) -> None:
    """Per epoch [packets, flows, T of its own flow sizes, largest flow] (``out`` has a row
    for every epoch); state = [epoch, flows touched]."""
    cur = state[0]
    nt = state[1]
    for i in range(len(ts)):
        e = next_epoch(ts[i], ts_first, epoch_ns, cur)
        if e != cur:
            if cur >= 0:
                _epoch_stats_flush(scratch, touched, nt, cur, percentile, out)
            nt = 0
            cur = e
        f = flow[i]
        if scratch[f] == 0:
            touched[nt] = f
            nt += 1
        scratch[f] += 1
        out[cur, 0] += 1
    state[0] = cur
    state[1] = nt


@njit(cache=True)
def _epoch_stats_flush(scratch: np.ndarray, touched: np.ndarray, nt: int, e: int,
                       percentile: float, out: np.ndarray) -> None:
    sizes = np.empty(nt, np.int64)
    for j in range(nt):
        sizes[j] = scratch[touched[j]]
        scratch[touched[j]] = 0
    sizes.sort()
    out[e, 1] = nt
    out[e, 2] = _linear_floor(sizes, percentile)
    out[e, 3] = sizes[nt - 1]


def epoch_info(trace: Trace, epoch_ms: float, percentile: float = 99.0) -> dict[str, object]:
    """The epochs of a trace for W = epoch_ms: their count, the one T over all (flow, epoch)
    pairs and its heavy pairs, and per epoch its packets, flows, the T of its own flow sizes
    and its largest flow."""
    epoch_ns = epoch_ns_of(epoch_ms)
    counts = count_pairs(trace, epoch_ns)
    T = counts.threshold(percentile)
    scratch = np.zeros(max(trace.flows, 1), np.int32)
    touched = np.empty(max(trace.flows, 1), np.int32)
    state = np.array([NO_EPOCH, 0], np.int64)
    out = np.zeros((max(counts.epochs, 1), 4), np.int64)
    for _, c in trace.chunks(("ts_ns", "flow")):
        _epoch_stats_chunk(c["ts_ns"], c["flow"], trace.first_ts, epoch_ns, state, scratch,
                           touched, float(percentile), out)
    if state[0] >= 0:
        _epoch_stats_flush(scratch, touched, int(state[1]), int(state[0]), float(percentile),
                           out)
    heavy = count_pairs(trace, epoch_ns, T)
    per_heavy = heavy.heavy_per_epoch()
    starts = counts.epoch_start_ns()
    rows = [{"epoch": e, "start_ns": int(starts[e]), "packets": int(out[e, 0]),
             "flows": int(out[e, 1]), "threshold": int(out[e, 2]) if out[e, 1] else None,
             "max_flow_size": int(out[e, 3]), "heavy_hitters": int(per_heavy[e])}
            for e in range(counts.epochs)]
    return {"epoch_ms": epoch_ms, "epochs": counts.epochs, "pairs": counts.pairs,
            "percentile": percentile, "threshold": T, "heavy_hitters": int(len(per_heavy) and
                                                                        per_heavy.sum()),
            "empty_epochs": int(np.count_nonzero(counts.epoch_packets == 0)),
            "per_epoch": rows}


def format_epoch_info(info: dict) -> str:
    """The epoch section of ``herd trace info --epoch-ms``: a summary, then a line an epoch
    (the first and last 10 of a long list)."""
    lines = [
        f"epochs           {info['epochs']:,} of {info['epoch_ms']:g} ms "
        f"({info['empty_epochs']:,} empty), {info['pairs']:,} (flow, epoch) pairs",
        f"T ({info['percentile']:g}th pct)    {info['threshold']:,} packets over all pairs; "
        f"{info['heavy_hitters']:,} heavy (flow, epoch) pairs",
        "",
        f"{'epoch':>7} {'packets':>11} {'flows':>9} {'own T':>7} {'largest':>8} {'heavy':>6}",
    ]
    rows = info["per_epoch"]
    shown = rows if len(rows) <= 20 else rows[:10] + [None] + rows[-10:]
    for r in shown:
        if r is None:
            lines.append(f"{'...':>7}")
            continue
        own = "-" if r["threshold"] is None else f"{r['threshold']:,}"
        lines.append(f"{r['epoch']:>7} {r['packets']:>11,} {r['flows']:>9,} {own:>7} "
                     f"{r['max_flow_size']:>8,} {r['heavy_hitters']:>6,}")
    return "\n".join(lines)
