"""Synthetic backbone traces, calibrated to the CAIDA 2016 facts in DESIGN.md.

The generator works per flow, then per packet:

1. **Flow sizes.** The quantile function of the flow size is piecewise log-linear in the
   normal score z (a lognormal whose sigma changes between anchor points). The tail
   anchors are the known percentiles of a 400k-packet CAIDA 2016 slice (99th / 99.9th /
   99.99th = 91 / 470 / 1504 packets, largest of 54,334 flows = 4,921); the body is a
   lognormal through the 99th-percentile anchor whose sigma (about 1.83) is solved so that
   the mean flow size is 400,000 / 54,334 = 7.36 packets; beyond the last anchor the last
   segment continues, so longer traces grow proportionally larger elephants (at 5 million
   packets the largest flow is some 20k-40k packets). Sizes are then rescaled (by sharing out
   the packets above one per flow in proportion to the drawn excess) so that they sum to
   exactly ``packets``.
2. **Groups.** Source and destination /8 are drawn independently from Zipf-like weights
   (rank + 2) ** -2.03 over the 221 unicast, non-private, non-loopback /8s, each side in
   its own seeded order. That exponent gives an expected ~3,434 distinct (src/8, dst/8)
   groups among 54,334 flows.
3. **Hosts and ports.** Each flow has a server side (a popular host in its /8, a
   well-known port) and a client side (an address spread over its /8, an ephemeral
   port); half the flows run client -> server, half server -> client. Some flows are
   peer-to-peer (ephemeral ports on both sides). Protocols: 88% TCP, 11% UDP, 1% ICMP
   (echo, ports 0 as DESIGN.md defines the flow key). 5-tuples are made unique.
4. **Time.** The trace lasts ``packets / rate_pps`` seconds (default 100,000 packets/s,
   so the default 400k-packet slice spans 4 s - slower than the real link, a few seconds
   as a testbed expects; tcpreplay can rescale it). A flow of n packets lasts
   (n - 1) * gap, gap lognormal with median 5 ms, capped at the trace length; it starts
   uniformly where it fits, and its packets are spread uniformly over its lifetime.
   Timestamps are whole microseconds after ``start_ns`` so a microsecond pcap holds them
   exactly; packets are sorted by time (ties by flow, deterministically).

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``, so the same
arguments give the same arrays and, through ``write_pcap``, the same bytes.
"""

from __future__ import annotations

import functools
import math
import operator
import os
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from herd.errors import HerdInputError
from herd.groundtruth import threshold
from herd.pcapwrite import write_pcap

# --- calibration facts (DESIGN.md, CAIDA 2016, 400k-packet slice) -------------------------
CAIDA_PACKETS = 400_000
CAIDA_FLOWS = 54_334
PACKETS_PER_FLOW = CAIDA_PACKETS / CAIDA_FLOWS  # 7.36: default flows = packets / this

DEFAULT_RATE_PPS = 100_000.0
# 2016-02-18 13:00:00 UTC: a date like the CAIDA 2016 captures; whole seconds, so the
# microsecond timestamps stay exact.
DEFAULT_START_NS = 1_455_800_400 * 1_000_000_000

# Largest flow of the slice sits near the quantile whose expected exceedance count is
# ln 2 (the median of the maximum of n draws is at 1 - ln2/n).
_MAX_QUANTILE = 1.0 - math.log(2.0) / CAIDA_FLOWS
# (cumulative probability, size). Sizes carry +0.5 because the drawn size is floored, so the
# percentile of the integer sizes lands on the anchor rather than one below it.
_TAIL_ANCHORS: tuple[tuple[float, float], ...] = (
    (0.99, 91.5),
    (0.999, 470.5),
    (0.9999, 1504.5),
    (_MAX_QUANTILE, 4921.5),
)

# --- /8 popularity ----------------------------------------------------------------------
# Unicast /8s that are neither "this network" (0), private (10) nor loopback (127);
# 224-255 are multicast and reserved.
_USABLE_SLASH8 = np.array([a for a in range(1, 224) if a not in (10, 127)], dtype=np.uint32)
_ZIPF_SHIFT = 2.0
_ZIPF_EXPONENT = 2.03

# --- protocols and ports ----------------------------------------------------------------
PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
_PROTO_VALUES = np.array([PROTO_TCP, PROTO_UDP, PROTO_ICMP], dtype=np.uint8)
_PROTO_WEIGHTS = np.array([0.88, 0.11, 0.01])

# fmt: off
# Server ports and their share of client/server flows: web dominates, as on a backbone.
_TCP_SERVER_PORTS = {
    443: 0.52, 80: 0.25, 22: 0.02, 25: 0.02, 8080: 0.02, 993: 0.015, 5228: 0.015,
    1935: 0.01, 3389: 0.01, 445: 0.01, 8443: 0.01, 110: 0.005, 143: 0.005, 21: 0.005,
    5222: 0.005, 3306: 0.005, 587: 0.005, 465: 0.005, 995: 0.005, 23: 0.005,
}
_UDP_SERVER_PORTS = {
    53: 0.45, 443: 0.25, 123: 0.08, 4500: 0.03, 500: 0.02, 1900: 0.02, 5060: 0.02,
    3478: 0.02, 19302: 0.02, 161: 0.02, 137: 0.02, 389: 0.01, 69: 0.01, 11211: 0.01,
    27015: 0.01, 1194: 0.01,
}
# fmt: on
_P2P_SHARE = {PROTO_TCP: 0.08, PROTO_UDP: 0.20}  # flows with ephemeral ports on both sides

# Flow pacing: gap between consecutive packets of a flow, lognormal.
_GAP_MEDIAN_NS = 5e6
_GAP_SIGMA = 1.0

_PCAP_MAX_NS = (1 << 32) * 1_000_000_000  # classic pcap stores seconds in 32 bits


# eq=False: a generated __eq__ would compare the arrays element-wise and fail.
@dataclass(frozen=True, eq=False)
class SynthPackets:
    """A synthetic trace, one row per packet, sorted by time (columnar, like the trace cache)."""

    ts_ns: np.ndarray  # int64, ns since the epoch: start_ns + whole microseconds
    src: np.ndarray  # uint32
    dst: np.ndarray  # uint32
    sport: np.ndarray  # uint16, 0 for ICMP
    dport: np.ndarray  # uint16, 0 for ICMP
    proto: np.ndarray  # uint8

    def __len__(self) -> int:
        return len(self.ts_ns)


@dataclass(frozen=True)
class TraceStats:
    """The calibration statistics of a trace (DESIGN.md "Known facts for calibration")."""

    packets: int
    flows: int
    groups: int
    p99: int  # herd.groundtruth.threshold(counts, 99)
    p999: int
    p9999: int
    max_flow: int
    flows_ge_p99: int  # flows with count >= p99, i.e. the heavy hitters at T = p99
    tcp_flows: int
    udp_flows: int
    icmp_flows: int
    duration_s: float


# ------------------------------------------------------------------------------------------
# argument checks


def _as_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise HerdInputError(f"{name}: {value!r} is not an integer")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise HerdInputError(f"{name}: {value!r} is not an integer") from None


def default_flows(packets: int) -> int:
    """Flows for a trace of ``packets`` packets when none is given: the CAIDA ratio, 7.36."""
    return max(1, min(packets, round(packets / PACKETS_PER_FLOW)))


# ------------------------------------------------------------------------------------------
# flow sizes


def _zscore(p: float) -> float:
    return NormalDist().inv_cdf(p)


@functools.cache
def _size_model() -> tuple[np.ndarray, np.ndarray]:
    """Knots (z, ln size) of the piecewise log-linear quantile function Q.

    The tail knots come from the anchors; one body knot far to the left carries the body
    sigma b, solved by bisection so that the mean size E[max(1, floor(Q(Z)))] is 7.36:

        E = 1 + sum_{k=2..91} P(Q >= k) + sum_{k>=92} P(Q >= k)

    Sizes up to 91 lie on the body segment, so the first sum has a closed form in b; the
    second does not depend on b and is computed once, by quadrature over the tail.
    """
    tail_z = np.array([_zscore(p) for p, _ in _TAIL_ANCHORS])
    tail_y = np.log(np.array([s for _, s in _TAIL_ANCHORS]))
    z_left = -9.0

    def knots(body_sigma: float) -> tuple[np.ndarray, np.ndarray]:
        y_left = tail_y[0] + body_sigma * (z_left - tail_z[0])
        return np.concatenate(([z_left], tail_z)), np.concatenate(([y_left], tail_y))

    # E[max(0, floor(Q) - 91)] over the tail, z from the 99th-percentile knot upwards.
    z = np.linspace(tail_z[0], 12.0, 200_001)
    w = np.exp(-0.5 * z * z) * (z[1] - z[0]) / math.sqrt(2.0 * math.pi)
    q = np.floor(np.exp(np.minimum(_interp_extrapolate(z, tail_z, tail_y), 40.0)))
    tail_part = float((np.maximum(q - 91.0, 0.0) * w).sum())
    log_k = np.log(np.arange(2, 92, dtype=float))

    def mean(body_sigma: float) -> float:
        zk = tail_z[0] + (log_k - tail_y[0]) / body_sigma  # Q(zk) = k on the body segment
        body_part = sum(0.5 * math.erfc(x / math.sqrt(2.0)) for x in zk)  # P(Z >= zk)
        return 1.0 + body_part + tail_part

    lo, hi = 0.5, 4.0  # the mean falls as b grows (more mass pushed down to size 1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if mean(mid) > PACKETS_PER_FLOW:
            lo = mid
        else:
            hi = mid
    return knots(0.5 * (lo + hi))


def _interp_extrapolate(x: np.ndarray, kx: np.ndarray, ky: np.ndarray) -> np.ndarray:
    """np.interp, but continuing the first and last segments linearly beyond the knots."""
    y = np.interp(x, kx, ky)
    lo_slope = (ky[1] - ky[0]) / (kx[1] - kx[0])
    hi_slope = (ky[-1] - ky[-2]) / (kx[-1] - kx[-2])
    y = np.where(x < kx[0], ky[0] + lo_slope * (x - kx[0]), y)
    return np.where(x > kx[-1], ky[-1] + hi_slope * (x - kx[-1]), y)


def _flow_sizes(rng: np.random.Generator, flows: int, packets: int) -> np.ndarray:
    """Heavy-tailed flow sizes (int64, each >= 1) that sum to exactly ``packets``."""
    kz, ky = _size_model()
    z = rng.standard_normal(flows)
    # Cap before exp so an extreme draw cannot overflow; the cap is far above any packet total.
    raw = np.floor(np.exp(np.minimum(_interp_extrapolate(z, kz, ky), 40.0)))
    excess = np.maximum(raw, 1.0) - 1.0  # packets beyond the one every flow has
    extra = packets - flows
    if extra == 0:
        return np.ones(flows, dtype=np.int64)
    if excess.sum() == 0.0:
        excess = np.ones(flows)  # only when every draw was a single packet (tiny traces)
    # Share the extra packets in proportion to the drawn excess; the remainder goes to the
    # largest fractional parts, so the total is exact and the shape is kept.
    share = excess * (extra / excess.sum())
    whole = np.floor(share).astype(np.int64)
    left = extra - int(whole.sum())
    if left > 0:
        frac = share - whole
        top = np.argsort(-frac, kind="stable")[:left]
        whole[top] += 1
    return whole + 1


# ------------------------------------------------------------------------------------------
# addresses and ports


def _zipf_weights(n: int) -> np.ndarray:
    w = (np.arange(n) + 1.0 + _ZIPF_SHIFT) ** -_ZIPF_EXPONENT
    return w / w.sum()


def _draw_slash8(rng: np.random.Generator, flows: int) -> np.ndarray:
    """First octets, popularity skewed over the usable /8s in a seeded order."""
    order = rng.permutation(_USABLE_SLASH8)
    return order[rng.choice(len(order), size=flows, p=_zipf_weights(len(order)))]


def _spread_host(index: np.ndarray, slash8: np.ndarray) -> np.ndarray:
    """Map a host index inside a /8 to 24 host bits, bijectively, spreading neighbours apart.

    Multiplication by an odd constant is a bijection mod 2**24; the per-/8 offset makes host
    #0 of one /8 differ from host #0 of another. Last octets 0 and 255 look like network and
    broadcast addresses, so they are nudged to 1 and 254.
    """
    h = (
        index.astype(np.uint64) * np.uint64(0x9E3779)
        + slash8.astype(np.uint64) * np.uint64(0x5BD1E9)
    ) & np.uint64(0xFFFFFF)
    h = h.astype(np.uint32)
    low = h & np.uint32(0xFF)
    h = np.where(low == 0, h | np.uint32(1), h)
    return np.where(low == 0xFF, h ^ np.uint32(1), h)


def _server_hosts(rng: np.random.Generator, slash8: np.ndarray) -> np.ndarray:
    # A few servers per /8 carry most of its flows (Zipf over host ranks).
    # P(rank >= k) = k ** -0.3 (Zipf-like, exponent 1.3), by inversion: cheaper than
    # rng.zipf's rejection sampling. 1 - u lies in (0, 1], so the power is finite.
    u = 1.0 - rng.random(len(slash8))
    rank = np.minimum(np.floor(u ** (-1.0 / 0.3)), float(1 << 20)).astype(np.uint64)
    return (slash8 << np.uint32(24)) | _spread_host(rank, slash8)


def _client_hosts(rng: np.random.Generator, slash8: np.ndarray) -> np.ndarray:
    # Clients are many and spread out: any host of the /8.
    index = rng.integers(0, 1 << 24, size=len(slash8), dtype=np.uint64)
    return (slash8 << np.uint32(24)) | _spread_host(index, slash8)


def _ephemeral_ports(rng: np.random.Generator, n: int) -> np.ndarray:
    # Linux's default range, the IANA/Windows range, and a few older BSD-style low ones.
    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    lo = np.array([32768, 49152, 1024])[kind]
    hi = np.array([60999, 65535, 32767])[kind]
    return rng.integers(lo, hi + 1).astype(np.uint16)


def _server_ports(rng: np.random.Generator, table: dict[int, float], n: int) -> np.ndarray:
    ports = np.array(list(table), dtype=np.uint16)
    w = np.array(list(table.values()))
    return ports[rng.choice(len(ports), size=n, p=w / w.sum())]


@dataclass
class _Flows:
    src: np.ndarray
    dst: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    proto: np.ndarray
    client_is_src: np.ndarray  # which side to redraw when a 5-tuple repeats


def _flow_keys(rng: np.random.Generator, flows: int) -> _Flows:
    proto = _PROTO_VALUES[rng.choice(3, size=flows, p=_PROTO_WEIGHTS)]
    src8 = _draw_slash8(rng, flows)
    dst8 = _draw_slash8(rng, flows)
    # client -> server or server -> client; ICMP echo requests go from the client (pinger).
    client_is_src = (rng.random(flows) < 0.5) | (proto == PROTO_ICMP)
    src = np.where(client_is_src, _client_hosts(rng, src8), _server_hosts(rng, src8))
    dst = np.where(client_is_src, _server_hosts(rng, dst8), _client_hosts(rng, dst8))

    sport = np.zeros(flows, dtype=np.uint16)
    dport = np.zeros(flows, dtype=np.uint16)
    for p, table in ((PROTO_TCP, _TCP_SERVER_PORTS), (PROTO_UDP, _UDP_SERVER_PORTS)):
        idx = np.flatnonzero(proto == p)
        n = len(idx)
        server = _server_ports(rng, table, n)
        p2p = rng.random(n) < _P2P_SHARE[p]
        server = np.where(p2p, _ephemeral_ports(rng, n), server)
        client = _ephemeral_ports(rng, n)
        cs = client_is_src[idx]
        sport[idx] = np.where(cs, client, server)
        dport[idx] = np.where(cs, server, client)
    return _Flows(src.astype(np.uint32), dst.astype(np.uint32), sport, dport, proto, client_is_src)


def _duplicate_mask(f: _Flows) -> np.ndarray:
    """True for every flow whose 5-tuple already occurred at a lower index."""
    k1 = (f.src.astype(np.uint64) << np.uint64(32)) | f.dst.astype(np.uint64)
    k2 = (
        (f.sport.astype(np.uint64) << np.uint64(24))
        | (f.dport.astype(np.uint64) << np.uint64(8))
        | f.proto.astype(np.uint64)
    )
    order = np.lexsort((np.arange(len(k1)), k2, k1))  # ties by index: the first one is kept
    same = (k1[order][1:] == k1[order][:-1]) & (k2[order][1:] == k2[order][:-1])
    dup = np.zeros(len(k1), dtype=bool)
    dup[order[1:][same]] = True
    return dup


def _make_unique(rng: np.random.Generator, f: _Flows) -> None:
    """Redraw the client side (host, and port for TCP/UDP) of repeated 5-tuples."""
    for _ in range(100):
        idx = np.flatnonzero(_duplicate_mask(f))
        if len(idx) == 0:
            return
        cs = f.client_is_src[idx]
        slash8 = np.where(cs, f.src[idx], f.dst[idx]) >> np.uint32(24)
        host = _client_hosts(rng, slash8).astype(np.uint32)
        f.src[idx] = np.where(cs, host, f.src[idx])
        f.dst[idx] = np.where(cs, f.dst[idx], host)
        ported = f.proto[idx] != PROTO_ICMP
        port = _ephemeral_ports(rng, len(idx))
        f.sport[idx] = np.where(ported & cs, port, f.sport[idx])
        f.dport[idx] = np.where(ported & ~cs, port, f.dport[idx])
    raise RuntimeError("could not make the synthetic 5-tuples unique")  # pragma: no cover


def _stable_order(t: np.ndarray) -> np.ndarray:
    """np.argsort(t, kind="stable") for non-negative int64 ``t``, faster when it fits.

    Sorting the values (time in the high bits, row in the low bits) is several times faster
    than an argsort and gives the same order, ties broken by row.
    """
    n = len(t)
    bits = max(1, (n - 1).bit_length())
    if n == 0 or int(t.max()) >= 1 << (63 - bits):
        return np.argsort(t, kind="stable")
    packed = np.sort((t << bits) | np.arange(n, dtype=np.int64))
    return packed & ((1 << bits) - 1)


# ------------------------------------------------------------------------------------------
# public API


def synthesize(
    packets: int,
    flows: int | None = None,
    seed: int = 1,
    *,
    rate_pps: float | None = None,
    start_ns: int = DEFAULT_START_NS,
) -> SynthPackets:
    """A synthetic, time-sorted trace of exactly ``packets`` packets in exactly ``flows``
    distinct flows (default ``packets / 7.36``), ``packets / rate_pps`` seconds long
    (default rate 100,000 packets/s), starting at ``start_ns``. Deterministic in ``seed``."""
    packets = _as_int("packets", packets)
    if packets < 1:
        raise HerdInputError(f"packets: {packets} must be at least 1")
    if flows is None:
        flows = default_flows(packets)
    else:
        flows = _as_int("flows", flows)
        if flows < 1:
            raise HerdInputError(f"flows: {flows} must be at least 1")
        if flows > packets:
            raise HerdInputError(f"flows: {flows} exceeds packets ({packets})")
    seed = _as_int("seed", seed)
    if seed < 0:
        raise HerdInputError(f"seed: {seed} must be non-negative")
    rate = DEFAULT_RATE_PPS if rate_pps is None else rate_pps
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise HerdInputError(f"rate_pps: {rate_pps!r} is not a number") from None
    if not math.isfinite(rate) or rate <= 0.0:
        raise HerdInputError(f"rate_pps: {rate_pps} must be a positive number")
    start_ns = _as_int("start_ns", start_ns)
    duration_ns = math.ceil(packets / rate * 1e9)
    if not 0 <= start_ns < _PCAP_MAX_NS:
        raise HerdInputError(f"start_ns: {start_ns} is outside what pcap can store (1970-2106)")
    if start_ns + duration_ns >= _PCAP_MAX_NS:
        raise HerdInputError(
            f"rate_pps: {rate} makes {packets} packets last past 2106, beyond what pcap can store"
        )

    rng = np.random.default_rng(seed)
    sizes = _flow_sizes(rng, flows, packets)
    keys = _flow_keys(rng, flows)
    _make_unique(rng, keys)

    # Flow lifetimes: (n - 1) gaps, capped at the trace, placed uniformly where they fit.
    gap = _GAP_MEDIAN_NS * np.exp(_GAP_SIGMA * rng.standard_normal(flows))
    life = np.minimum((sizes - 1) * gap, float(duration_ns))
    begin = rng.random(flows) * (duration_ns - life)
    flow_of_packet = np.repeat(np.arange(flows, dtype=np.int64), sizes)
    offset = begin[flow_of_packet] + rng.random(packets) * life[flow_of_packet]
    # Whole microseconds, so a microsecond pcap holds the timestamps exactly.
    t_us = np.minimum(np.floor(offset / 1000.0).astype(np.int64), duration_ns // 1000)
    del offset
    order = _stable_order(t_us)
    fop = flow_of_packet[order]
    return SynthPackets(
        ts_ns=np.int64(start_ns) + t_us[order] * np.int64(1000),
        src=keys.src[fop],
        dst=keys.dst[fop],
        sport=keys.sport[fop],
        dport=keys.dport[fop],
        proto=keys.proto[fop],
    )


def write_synthetic_pcap(
    path: str | os.PathLike[str],
    packets: int,
    flows: int | None = None,
    seed: int = 1,
    *,
    rate_pps: float | None = None,
    start_ns: int = DEFAULT_START_NS,
    nanosecond: bool = False,
) -> SynthPackets:
    """``synthesize`` and write the result as a pcap at ``path`` (atomically); returns it."""
    sp = synthesize(packets, flows, seed, rate_pps=rate_pps, start_ns=start_ns)
    write_pcap(path, sp.ts_ns, sp.src, sp.dst, sp.sport, sp.dport, sp.proto, nanosecond=nanosecond)
    return sp


def flow_ids(sp: SynthPackets) -> tuple[np.ndarray, int]:
    """Per-packet flow index (flows numbered in 5-tuple order) and the number of flows."""
    k1 = (sp.src.astype(np.uint64) << np.uint64(32)) | sp.dst.astype(np.uint64)
    k2 = (
        (sp.sport.astype(np.uint64) << np.uint64(24))
        | (sp.dport.astype(np.uint64) << np.uint64(8))
        | sp.proto.astype(np.uint64)
    )
    order = np.lexsort((k2, k1))
    new = np.empty(len(k1), dtype=bool)
    new[:1] = True
    new[1:] = (k1[order][1:] != k1[order][:-1]) | (k2[order][1:] != k2[order][:-1])
    ids = np.empty(len(k1), dtype=np.int64)
    ids[order] = np.cumsum(new) - 1
    return ids, int(new.sum())


def trace_stats(sp: SynthPackets) -> TraceStats:
    """Flows, /8 groups, flow-size percentiles (as ground truth computes T) and protocol mix."""
    if len(sp) == 0:
        raise HerdInputError("trace has no packets")
    ids, nflows = flow_ids(sp)
    counts = np.bincount(ids, minlength=nflows)
    first = np.zeros(nflows, dtype=np.int64)
    first[ids[::-1]] = np.arange(len(ids))[::-1]  # some packet of each flow
    fproto = sp.proto[first]
    groups = np.unique(
        ((sp.src >> np.uint32(24)).astype(np.uint32) << np.uint32(8))
        | (sp.dst >> np.uint32(24)).astype(np.uint32)
    )
    p99 = threshold(counts, 99.0)
    return TraceStats(
        packets=len(sp),
        flows=nflows,
        groups=len(groups),
        p99=p99,
        p999=threshold(counts, 99.9),
        p9999=threshold(counts, 99.99),
        max_flow=int(counts.max()),
        flows_ge_p99=int((counts >= p99).sum()),
        tcp_flows=int((fproto == PROTO_TCP).sum()),
        udp_flows=int((fproto == PROTO_UDP).sum()),
        icmp_flows=int((fproto == PROTO_ICMP).sum()),
        duration_s=float(sp.ts_ns[-1] - sp.ts_ns[0]) / 1e9,
    )
