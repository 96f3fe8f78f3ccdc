"""The central coordinator's logic: pure, I/O-free.

Per group g it keeps the set of switches that sent a hello and the locality l_g (start 1).
When the set reaches 2 * l_g, l_g becomes its size and is pushed to every switch of the
group; otherwise the asking switch gets the current l_g. It counts reports per flow; a flow
is an elephant once it has R reports, detected at the time of its R-th report.

``register_hello`` is compiled so the simulator's loop calls the very same rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from herd.switch import N_GROUPS

NOT_DETECTED = np.iinfo(np.int64).max


@njit(cache=True)
def register_hello(members: np.ndarray, member_count: np.ndarray, l_g: np.ndarray,
                   g: int, switch: int) -> tuple[int, bool]:
    """Record switch's hello for g; returns (l_g, changed). If changed, push to all members."""
    if not members[g, switch]:
        members[g, switch] = True
        member_count[g] += 1
    if member_count[g] >= 2 * l_g[g]:
        l_g[g] = member_count[g]
        return l_g[g], True
    return l_g[g], False


def count_reports(keys: np.ndarray, ts_ns: np.ndarray, R: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coordinator's counting over a run's reports, in arrival order: reports are counted
    per key (a flow, or a (flow, epoch) pair: a report counts in the epoch it carries) and a
    key is an elephant at its R-th report. Returns (keys ascending, report counts, time of
    the R-th report or NOT_DETECTED)."""
    keys = np.asarray(keys, dtype=np.int64)
    order = np.argsort(keys, kind="stable")  # stable: each key's reports stay in arrival order
    k_sorted = keys[order]
    starts = np.flatnonzero(np.r_[True, k_sorted[1:] != k_sorted[:-1]]) if len(keys) else \
        np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(k_sorted)]).astype(np.int64)
    detect = np.full(len(starts), NOT_DETECTED, np.int64)
    hit = counts >= R
    detect[hit] = np.asarray(ts_ns, np.int64)[order[starts[hit] + R - 1]]
    return k_sorted[starts], counts, detect


@dataclass(frozen=True)
class HelloAnswer:
    l_g: int
    push_to: tuple[int, ...]  # switches that must (re)install the group with l_g


class Coordinator:
    """Group locality and elephant classification for ``switches`` ingress switches."""

    def __init__(self, switches: int, R: int) -> None:
        if R < 1:
            raise ValueError(f"R must be >= 1, got {R}")
        self.R = R
        self.members = np.zeros((N_GROUPS, max(1, switches)), dtype=np.bool_)
        self.member_count = np.zeros(N_GROUPS, dtype=np.int32)
        self.l_g = np.ones(N_GROUPS, dtype=np.int32)
        self.report_count = np.zeros(0, dtype=np.int64)
        self.detect_ts = np.zeros(0, dtype=np.int64)
        self.hellos = 0
        self.reports = 0

    @property
    def switches(self) -> int:
        return self.members.shape[1]

    def _ensure_switch(self, switch: int) -> None:
        if switch < 0:
            raise ValueError(f"switch index must be >= 0, got {switch}")
        if switch >= self.switches:
            grown = np.zeros((N_GROUPS, switch + 1), dtype=np.bool_)
            grown[:, : self.switches] = self.members
            self.members = grown

    def on_hello(self, g: int, switch: int) -> HelloAnswer:
        self._ensure_switch(switch)
        self.hellos += 1
        l_g, changed = register_hello(self.members, self.member_count, self.l_g, g, switch)
        if changed:
            return HelloAnswer(int(l_g), tuple(int(s) for s in np.flatnonzero(self.members[g])))
        return HelloAnswer(int(l_g), (switch,))

    def groups_of(self, switch: int) -> dict[int, int]:
        """{g: l_g} for every group the switch has said hello for (re-registration)."""
        if switch >= self.switches:
            return {}
        return {int(g): int(self.l_g[g]) for g in np.flatnonzero(self.members[:, switch])}

    def ensure_flows(self, flows: int) -> None:
        """Make room for flow indices < flows."""
        n = len(self.report_count)
        if flows > n:
            size = max(flows, 2 * n)
            self.report_count = np.concatenate((self.report_count, np.zeros(size - n, np.int64)))
            self.detect_ts = np.concatenate(
                (self.detect_ts, np.full(size - n, NOT_DETECTED, np.int64)))

    def on_reports(self, flows: np.ndarray, ts_ns: np.ndarray) -> np.ndarray:
        """Count a batch of reports (flow indices, in arrival order, with their times);
        returns the flows that became elephants with this batch."""
        flows = np.asarray(flows, dtype=np.int64)
        if len(flows) == 0:
            return np.zeros(0, dtype=np.int64)
        self.ensure_flows(int(flows.max()) + 1)
        self.reports += len(flows)
        # Rank of each report among its flow's reports in this batch, to find the R-th.
        order = np.argsort(flows, kind="stable")
        f_sorted = flows[order]
        starts = np.flatnonzero(np.r_[True, f_sorted[1:] != f_sorted[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(f_sorted)]))
        rank = np.arange(len(f_sorted)) - run_start + 1  # 1-based within this batch
        before = self.report_count[f_sorted]
        crossing = before + rank == self.R
        newly = f_sorted[crossing]
        self.detect_ts[newly] = np.asarray(ts_ns, dtype=np.int64)[order][crossing]
        np.add.at(self.report_count, flows, 1)
        return newly

    def elephants(self) -> np.ndarray:
        """Indices of the flows with at least R reports."""
        return np.flatnonzero(self.report_count >= self.R)
