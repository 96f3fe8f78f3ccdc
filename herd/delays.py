"""Measured control-plane timing: when each group entry a testbed (or replay) run wrote took
effect at its switch, so that ``herd simulate --delays`` runs the trace under the run's
control-plane timeline instead of one constant delay.

Times are kept in the switch's own packets (0-based, IPv4 packets only): ``packet`` is the
first packet that saw the entry. Packets, not milliseconds, because that is what decides the
switch's behaviour whatever the replay rate and the pacing jitter. One row per entry write:

    switch,group,hello_packet,l_g,packet,latency_ms

``hello_packet`` is the packet that said hello for the group there; ``l_g`` the locality the
entry was written for (from its r_g); ``latency_ms`` the wall-clock hello -> entry latency of a
group's first write (empty for later ones). A hello whose entry never came has ``l_g`` 0 and
``packet`` -1.

With epochs, a switch follows its own clock, so the file also says where each switch's
epochs began: rows with an ``epoch`` (and ``switch``, ``packet``: the first packet of that
epoch at the switch; the other columns empty). The simulator then gives each switch's
packets the epochs the switch itself was in.

In the simulator every (switch, group) the file covers follows the run's writes, each from
the packet it took effect at: the run's control-plane timeline, replayed against the
simulator's data plane and coordinator counting. Not the simulator's own l_g with measured
delays: the run's switches do not move in lockstep with the trace, so its coordinator sees
hellos in another order than the trace's, and a push can take effect before the trace packet
of the hello that caused it, which no delay can express. What the file does not cover falls
back to the simulator's control plane at the constant ``delay_ms``. With the same packets at
every switch, a run and its replay agree bit for bit: registers, reports, F1.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

import numpy as np

from herd.errors import HerdInputError
from herd.prng import MASK32, probability_threshold
from herd.switch import N_GROUPS

COLUMNS = ("switch", "group", "hello_packet", "l_g", "packet", "latency_ms", "epoch")
NEVER = np.iinfo(np.int64).max // 4  # past any trace: the entry never took effect


@dataclass(frozen=True)
class EntryWrite:
    switch: int
    group: int
    hello_packet: int  # -1: unknown
    l_g: int  # 0: the hello's entry never came
    packet: int  # first packet of the switch to see the entry; -1: never
    latency_ms: float | None = None


@dataclass(frozen=True)
class EpochStart:
    switch: int
    epoch: int
    packet: int  # the switch's first packet in the epoch (0-based, its IPv4 packets)


@dataclass
class MeasuredTiming:
    """Everything a run measured of its control plane and clocks."""

    entries: list[EntryWrite]
    epochs: list[EpochStart]


def l_g_of_threshold(r_threshold: int) -> int:
    """The l_g whose r_g = 1 / l_g has this 32-bit threshold (0 if none does)."""
    if r_threshold <= 0:
        return 0
    l_g = max(1, round(MASK32 / r_threshold))
    return l_g if probability_threshold(1.0 / l_g) == r_threshold else 0


def delays_csv(rows: list[EntryWrite], epochs: list[EpochStart] | None = None) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([r.switch, r.group, r.hello_packet, r.l_g, r.packet,
                    "" if r.latency_ms is None else f"{r.latency_ms:.6g}", ""])
    for e in epochs or []:
        w.writerow([e.switch, "", "", "", e.packet, "", e.epoch])
    return out.getvalue()


def read_delays(path: str | os.PathLike) -> list[EntryWrite]:
    """The entry writes of a timing file."""
    return read_timing(path).entries


def read_timing(path: str | os.PathLike) -> MeasuredTiming:
    """Entry writes and epoch starts of a timing file."""
    epochs: list[EpochStart] = []
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COLUMNS[:5] if c not in (reader.fieldnames or [])]
            if missing:
                raise HerdInputError(f"{path}: not a delays file (no column {missing[0]!r})")
            rows = []
            for line, r in enumerate(reader, start=2):
                if r.get("epoch"):
                    epochs.append(_epoch_row(path, line, r))
                    continue
                try:
                    w = EntryWrite(int(r["switch"]), int(r["group"]), int(r["hello_packet"]),
                                   int(r["l_g"]), int(r["packet"]),
                                   float(r["latency_ms"]) if r.get("latency_ms") else None)
                except (TypeError, ValueError):
                    raise HerdInputError(f"{path}: line {line}: not a delays row: "
                                         f"{','.join(str(v) for v in r.values())}") from None
                if w.switch < 0 or not 0 <= w.group < N_GROUPS or w.hello_packet < -1 \
                        or w.l_g < 0 or w.packet < -1:
                    raise HerdInputError(f"{path}: line {line}: value out of range")
                rows.append(w)
    except FileNotFoundError:
        raise HerdInputError(f"{path}: delays file not found") from None
    except UnicodeDecodeError:
        raise HerdInputError(f"{path}: not a delays file (not text)") from None
    return MeasuredTiming(rows, epochs)


def _epoch_row(path: str | os.PathLike, line: int, r: dict[str, str]) -> EpochStart:
    try:
        e = EpochStart(int(r["switch"]), int(r["epoch"]), int(r["packet"]))
    except (TypeError, ValueError):
        raise HerdInputError(f"{path}: line {line}: not an epoch row: "
                             f"{','.join(str(v) for v in r.values())}") from None
    if e.switch < 0 or e.epoch < 0 or e.packet < 0:
        raise HerdInputError(f"{path}: line {line}: value out of range")
    return e


def switch_epochs(epochs: list[EpochStart], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epoch starts for the compiled loop: rows ``start[sw]:start[sw + 1]`` of ``packet`` /
    ``epoch``, by packet, of switch sw (epoch 0 begins at packet 0 implicitly)."""
    for e in epochs:
        if e.switch >= k:
            raise HerdInputError(f"delays: switch {e.switch} but k={k}")
    rows = sorted((e.switch, e.packet, e.epoch) for e in epochs)
    sw = np.array([r[0] for r in rows], np.int64)
    start = np.searchsorted(sw, np.arange(k + 1)).astype(np.int64)
    return (start, np.array([r[1] for r in rows], np.int64),
            np.array([r[2] for r in rows], np.int64))


@dataclass
class EffectTimes:
    """The run's entry writes on this trace's packets, per (switch, group), for the compiled
    loop: rows ``start[sw * N_GROUPS + g] : start[... + 1]`` of ``l_g`` / ``at``, in write
    order."""

    start: np.ndarray  # int64, k * N_GROUPS + 1
    l_g: np.ndarray  # int32
    at: np.ndarray  # int64: the trace packet it took effect before; NEVER: not in the trace
    mismatched: int  # rows whose hello packet is not of that group in this trace

    @staticmethod
    def empty() -> EffectTimes:
        return EffectTimes(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64),
                           0)


def effect_times(rows: list[EntryWrite], ingress: np.ndarray, flow_group: np.ndarray,
                       pkt_flow: np.ndarray, k: int) -> EffectTimes:
    """The rows mapped onto this trace: each switch's packet numbers become trace packet
    indices by the simulator's own ingress assignment (indices, not times: packets may share
    a timestamp)."""
    by_switch = [np.flatnonzero(ingress == sw) for sw in range(k)]
    keep = []
    mismatched = 0
    for i, r in enumerate(rows):
        if r.switch >= k:
            raise HerdInputError(f"delays: switch {r.switch} but k={k}")
        pos = by_switch[r.switch]
        if r.hello_packet >= 0 and (r.hello_packet >= len(pos)
                                    or flow_group[pkt_flow[pos[r.hello_packet]]] != r.group):
            mismatched += 1
            continue
        at = NEVER if r.packet < 0 or r.packet >= len(pos) else int(pos[r.packet])
        keep.append((r.switch * N_GROUPS + r.group, i, r.l_g, at))
    keep.sort()  # by (switch, group), then file order = write order
    key = np.array([x[0] for x in keep], np.int64)
    start = np.searchsorted(key, np.arange(k * N_GROUPS + 1, dtype=np.int64)).astype(np.int64)
    return EffectTimes(start, np.array([x[2] for x in keep], np.int32),
                       np.array([x[3] for x in keep], np.int64), mismatched)
