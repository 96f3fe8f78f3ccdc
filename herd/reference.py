"""A plain, per-packet Python implementation of Herd's rules (DESIGN.md), written apart from
the compiled kernels: the tests' oracle for the simulator, and the benchmarks' baseline.

Everything is restated from the definitions, with plain ints, dicts and lists: hashes are
``zlib.crc32`` of the big-endian field bytes, the PRNG is xorshift32 on a Python int, the
coordinator is a dict of sets. It covers the ideal control loop (delay 0), both overflow
policies and confirm (each epoch's held totals read from the tables at its end, by
definition, not through the switch's previous-epoch words); it is slow on purpose (no numpy,
no numba).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

from herd.params import Params
from herd.trace import Trace

_MASK = 0xFFFFFFFF


def _xorshift(x: int) -> int:
    x ^= (x << 13) & _MASK
    x ^= x >> 17
    x ^= (x << 5) & _MASK
    return x


def _threshold(probability: float) -> int:
    return int(round(probability * _MASK))


def _seed(seed: int, switch: int) -> int:
    z = (seed * 0x9E3779B9 + (switch + 1) * 0x85EBCA6B) & _MASK
    z = ((z ^ (z >> 16)) * 0x7FEB352D) & _MASK
    z = ((z ^ (z >> 15)) * 0x846CA68B) & _MASK
    z ^= z >> 16
    return z or 1


def _crc(salt: int, five: tuple[int, int, int, int, int]) -> int:
    return zlib.crc32(struct.pack("!BIIHHB", salt, *five)) & _MASK


def _crc_addr(salt: int, addr: int) -> int:
    return zlib.crc32(struct.pack("!BI", salt, addr)) & _MASK


@dataclass
class _Switch:
    prng: int
    slots: list[int]  # per slot: fingerprint (0: empty)
    counts: list[int]
    epochs: list[int]
    totals: list[int]
    entries: dict[int, tuple[int, int]] = field(default_factory=dict)  # g -> (tau, r)
    hello_sent: set[int] = field(default_factory=set)
    epoch: int = 0
    occupied: int = 0
    peak: int = 0
    hellos: int = 0
    reports: int = 0
    overflows: int = 0

    def flip(self, threshold: int) -> bool:
        self.prng = _xorshift(self.prng)
        return self.prng <= threshold


@dataclass
class ReferenceResult:
    reports: list[tuple[int, int, int]]  # (flow, epoch, ts) in send order
    hellos: list[int]
    overflows: list[int]
    peak_states: list[int]
    elephants: dict[tuple[int, int], int]  # (flow, epoch) -> time of its R-th report
    # With confirm: (flow, epoch) -> time detected (R-th report, else the pull), and the
    # candidates pulled.
    confirmed: dict[tuple[int, int], int] = field(default_factory=dict)
    candidates: int = 0


def simulate_reference(trace: Trace, params: Params, T: int, packets: int | None = None
                       ) -> ReferenceResult:
    """Herd over the first ``packets`` packets of the trace, packet by packet."""
    if params.delay_ms:
        raise ValueError("the reference covers the ideal control loop only (delay 0)")
    k, stages = params.k, params.stages
    offsets = [sum(stages[:i]) for i in range(len(stages))]
    sample = _threshold(params.s)
    hold = int(math.floor(1.0 / params.s + 0.5))
    slots = sum(stages)
    switches = [_Switch(_seed(params.seed, sw), [0] * slots, [0] * slots, [0] * slots,
                        [0] * slots) for sw in range(k)]
    lb = _seed(params.seed, 0xFFFF)
    p_threshold = _threshold(params.p)
    members: dict[int, set[int]] = {}
    locality: dict[int, int] = {}
    controller_l: list[dict[int, int]] = [{} for _ in range(k)]
    R = params.reports_needed
    W = int(round(params.epoch_ms * 1e6))
    pending: list[tuple[int, int, int]] = []  # (switch, group, l_g or -1 = reset)
    reports: list[tuple[int, int, int]] = []
    five = list(zip(trace.flow_src.tolist(), trace.flow_dst.tolist(),
                    trace.flow_sport.tolist(), trace.flow_dport.tolist(),
                    trace.flow_proto.tolist(), strict=True))
    n = trace.packets if packets is None else min(packets, trace.packets)
    ts_all = trace.ts_ns[:n].tolist()
    flow_all = trace.flow[:n].tolist()
    given = trace.ingress[:n].tolist() if n and int(trace.ingress[0]) >= 0 else None
    first = ts_all[0] if n else 0
    epoch = 0
    counted: dict[tuple[int, int], int] = {}  # reports per (flow, epoch)
    confirmed: dict[tuple[int, int], int] = {}
    pulled = [0]

    def fingerprint(f: int) -> int:
        return 1 + _crc(0x00, five[f]) % _MASK

    def held(s: _Switch, f: int, e: int) -> int:
        """The flow's held total in the switch's table at the end of epoch e."""
        for st, size in enumerate(stages):
            x = offsets[st] + _crc(0x01 + st, five[f]) % size
            if s.epochs[x] != e or s.slots[x] == 0:
                return 0
            if s.slots[x] == fingerprint(f):
                return s.totals[x]
        return 0

    def pull(e: int, at: int) -> None:
        """Confirm at the end of epoch e, the tables as they stand."""
        seen: dict[int, int] = {}
        first_rth: dict[int, int] = {}
        for f, re, ts in reports:
            if re == e:
                seen[f] = seen.get(f, 0) + 1
                if seen[f] == R:
                    first_rth[f] = ts
        for f, c in seen.items():
            if c >= min(params.confirm_reports, R):
                pulled[0] += 1
                if sum(held(s, f, e) for s in switches) >= T:
                    confirmed[(f, e)] = first_rth.get(f, at)

    for i in range(n):
        for sw, g, lg in pending:  # the ideal control loop: before the next packet
            if lg < 0:
                s = switches[sw]
                s.slots = [0] * len(s.slots)
                s.counts = [0] * len(s.counts)
                s.totals = [0] * len(s.totals)
                s.occupied = 0
            elif lg > controller_l[sw].get(g, 0):
                controller_l[sw][g] = lg
                tau = max(1, math.ceil(params.epsilon * T / lg))
                switches[sw].entries[g] = (tau, _threshold(1.0 / lg))
        pending.clear()
        ts, f = ts_all[i], flow_all[i]
        if W and ts >= first and (ts - first) // W > epoch:
            if params.confirm:
                pull(epoch, first + (epoch + 1) * W)
            epoch = (ts - first) // W
        src, dst = five[f][0], five[f][1]
        if given is not None:
            sw = given[i]
        else:
            primary = _crc_addr(0x40, src) % k
            secondary = primary
            if k > 1:
                secondary = (primary + 1 + _crc_addr(0x41, src) % (k - 1)) % k
            lb = _xorshift(lb)
            sw = primary if lb <= p_threshold else secondary
        s = switches[sw]
        if epoch > s.epoch:
            s.epoch = epoch
            s.occupied = 0
        g = (src >> 24) << 8 | (dst >> 24)
        if g not in s.entries:
            if g not in s.hello_sent:
                s.hello_sent.add(g)
                s.hellos += 1
                group = members.setdefault(g, set())
                group.add(sw)
                lg = locality.get(g, 1)
                if len(group) >= 2 * lg:
                    locality[g] = lg = len(group)
                    pending.extend((m, g, lg) for m in sorted(group))
                else:
                    pending.append((sw, g, lg))
            continue
        tau, r = s.entries[g]
        fp = fingerprint(f)
        slot = empty = -1
        for st, size in enumerate(stages):
            x = offsets[st] + _crc(0x01 + st, five[f]) % size
            if s.epochs[x] != s.epoch or s.slots[x] == 0:
                empty = x
                break
            if s.slots[x] == fp:
                slot = x
                break
        if slot >= 0:
            s.counts[slot] += 1
            s.totals[slot] += 1
        else:
            if not s.flip(sample):
                continue
            if empty < 0:
                s.overflows += 1
                if params.overflow_policy == "reset" and (sw, 0, -1) not in pending:
                    pending.append((sw, 0, -1))
                continue
            slot = empty
            s.slots[slot], s.counts[slot], s.epochs[slot] = fp, hold, s.epoch
            s.totals[slot] = hold
            s.occupied += 1
            s.peak = max(s.peak, s.occupied)
        if s.counts[slot] >= tau:
            s.counts[slot] = 0
            if s.flip(r):
                s.reports += 1
                reports.append((f, s.epoch, ts))
    if params.confirm and n:
        pull(epoch, first + (epoch + 1) * W if W else ts_all[-1])
    elephants: dict[tuple[int, int], int] = {}
    for f, e, ts in reports:
        counted[(f, e)] = counted.get((f, e), 0) + 1
        if counted[(f, e)] == R:
            elephants[(f, e)] = ts
    return ReferenceResult(reports, [s.hellos for s in switches],
                           [s.overflows for s in switches], [s.peak for s in switches],
                           elephants, confirmed, pulled[0])
