"""The central coordinator's logic: pure, I/O-free.

Per group g it keeps the set of switches that sent a hello and the locality l_g (start 1).
When the set reaches 2 * l_g, l_g becomes its size and is pushed to every switch of the
group; otherwise the asking switch gets the current l_g. Group state persists across epochs.
It counts reports per (flow, epoch), the epoch being the one the report carries; a pair is an
elephant once it has R reports, detected at the time of its R-th report. ``Coordinator``
keeps only the open epochs in memory (the rule is in its docstring).

``register_hello`` is compiled so the simulator's loop calls the very same rule.

Confirm (an option beside the published rule): at the end of epoch e the coordinator pulls,
from every switch, the held totals (``herd.switch.held_total``) of the epoch's *candidates*:
the flows with at least C reports in e (``confirm_reports``) and every flow already detected by
R reports. A candidate is an elephant iff its held totals summed over the switches reach T.
An early detection keeps its time if confirmed and is withdrawn if not; a confirmed flow that
had fewer than R reports is detected at the pull. ``confirm_candidates``, ``confirmed`` and
``pull_messages`` are the rule, used by the simulator and the services alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit

from herd.services.flowtable import FlowTable
from herd.switch import N_GROUPS

NOT_DETECTED = np.iinfo(np.int64).max

# Confirm's pull: flows a request or an answer carries per message (a 1,500-byte frame of
# 13-byte 5-tuples, with room for headers).
PULL_FLOWS_PER_MESSAGE = 100


def confirm_candidates(report_count: np.ndarray, C: int, R: int) -> np.ndarray:
    """The candidates of an epoch (indices into its flows): >= C reports, or detected by R."""
    return np.flatnonzero(report_count >= min(C, R))


def confirmed(totals: np.ndarray, T: int) -> np.ndarray:
    """Per candidate (column): whether its held totals over the switches (rows) reach T. A
    total the switch could no longer give (HELD_UNKNOWN, < 0) counts as 0."""
    return np.maximum(totals, 0).sum(axis=0) >= T


def pull_messages(candidates: int) -> int:
    """Messages of one switch's pull: the requests and the answers, PULL_FLOWS_PER_MESSAGE
    flows each (none without candidates)."""
    return 2 * -(-candidates // PULL_FLOWS_PER_MESSAGE)


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


class EpochTally:
    """The reports of one open epoch: its flows (5-tuple -> index, in order of first report,
    capped), and per flow the reports counted and the time of the R-th."""

    def __init__(self, epoch: int, max_flows: int) -> None:
        self.epoch = epoch
        self.flows = FlowTable(max_flows)
        self.report_count = np.zeros(0, dtype=np.int64)
        self.detect_ts = np.zeros(0, dtype=np.int64)
        self.reports = 0  # reports of the epoch received (tracked or not)
        self.untracked = 0  # of which for flows beyond the cap
        # Confirm: once pulled, the flows confirmed and when (NOT_DETECTED: not confirmed).
        self.pulled = False
        self.confirm_ts = np.zeros(0, dtype=np.int64)

    def _ensure(self, flows: int) -> None:
        n = len(self.report_count)
        if flows > n:
            size = max(flows, 2 * n, 1024)
            self.report_count = np.concatenate((self.report_count,
                                                np.zeros(size - n, np.int64)))
            self.detect_ts = np.concatenate(
                (self.detect_ts, np.full(size - n, NOT_DETECTED, np.int64)))

    def count(self, flows: np.ndarray, ts_ns: np.ndarray, R: int) -> np.ndarray:
        """Count reports (flow indices of this epoch, in arrival order, with their times);
        returns the flows that became elephants with them (R-th report)."""
        if len(flows) == 0:
            return np.zeros(0, dtype=np.int64)
        self._ensure(int(flows.max()) + 1)
        # Rank of each report among its flow's reports in this batch, to find the R-th.
        order = np.argsort(flows, kind="stable")
        f_sorted = flows[order]
        starts = np.flatnonzero(np.r_[True, f_sorted[1:] != f_sorted[:-1]])
        run_start = np.repeat(starts, np.diff(np.r_[starts, len(f_sorted)]))
        rank = np.arange(len(f_sorted)) - run_start + 1  # 1-based within this batch
        crossing = self.report_count[f_sorted] + rank == R
        newly = f_sorted[crossing]
        self.detect_ts[newly] = np.asarray(ts_ns, dtype=np.int64)[order][crossing]
        np.add.at(self.report_count, flows, 1)
        return newly

    def candidates(self, C: int, R: int) -> np.ndarray:
        """Confirm's candidates of this epoch (``confirm_candidates``), as flow indices."""
        return confirm_candidates(self.report_count[: self.flows.n], C, R)

    def confirm(self, candidates: np.ndarray, totals: np.ndarray, T: int, ts_ns: int
                ) -> np.ndarray:
        """Apply a pull: ``totals[switch, i]`` is candidate i's held total on each switch.
        From now on the elephants are the confirmed candidates; those detected early keep
        their time, the others are detected at ``ts_ns``. Returns the confirmed mask."""
        ok = confirmed(totals, T)
        self._ensure(self.flows.n)
        self.confirm_ts = np.full(len(self.report_count), NOT_DETECTED, np.int64)
        hit = candidates[ok]
        self.confirm_ts[hit] = np.minimum(self.detect_ts[hit], ts_ns)
        self.pulled = True
        return ok

    def elephants(self, R: int) -> list[dict[str, int | None]]:
        """The epoch's elephants as records: the flows with >= R reports or, once pulled,
        the confirmed candidates (``early``: detected by R reports before the pull)."""
        n = self.flows.n
        if self.pulled:
            idx = np.flatnonzero(self.confirm_ts[:n] != NOT_DETECTED)
            when = self.confirm_ts
        else:
            idx = np.flatnonzero(self.report_count[:n] >= R)
            when = self.detect_ts
        f = self.flows
        return [
            {"epoch": self.epoch, "src": int(f.src[i]), "dst": int(f.dst[i]),
             "sport": int(f.sport[i]), "dport": int(f.dport[i]), "proto": int(f.proto[i]),
             "reports": int(self.report_count[i]),
             "detected_ns": int(when[i]) if when[i] != NOT_DETECTED else None,
             "early": bool(self.report_count[i] >= R)}
            for i in idx
        ]

    def nbytes(self) -> int:
        return self.flows.nbytes() + self.report_count.nbytes + self.detect_ts.nbytes


@dataclass
class ReportOutcome:
    """What a batch of reports did."""

    late: int = 0  # reports of epochs already closed: counted here, not applied
    late_by_epoch: dict[int, int] = field(default_factory=dict)
    untracked: int = 0  # reports of new flows beyond the cap: not classified
    newly: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (epoch, flow indices)
    closed: list[EpochTally] = field(default_factory=list)  # epochs this batch closed


class Coordinator:
    """Group locality and elephant classification for ``switches`` ingress switches.

    Reports are counted per (flow, epoch): a report counts in the epoch it carries (the
    switch's epoch when it sent it), even when it arrives after the next epoch's reports.
    Only open epochs are in memory. **Epoch e closes once a report of epoch >= e + 2 has
    arrived**, or on ``close_all`` (shutdown, explicit flush). A batch is taken epoch by
    epoch, in ascending order (a switch's reports come in epoch order, so this is arrival
    order): before the reports of epoch e count, every epoch below e - 1 closes. So at most
    two epochs are open, and a report may be up to one whole epoch late and still count. A
    report for a closed epoch is *late*: counted in ``late_reports`` and not applied - a
    closed epoch's elephants are final (they have been written out), it is never reopened.
    ``max_flows`` bounds the flows of all open epochs together; reports of new flows beyond
    it are ``untracked``.
    """

    def __init__(self, switches: int, R: int, max_flows: int = 2_000_000) -> None:
        if R < 1:
            raise ValueError(f"R must be >= 1, got {R}")
        if max_flows < 1:
            raise ValueError(f"max_flows must be >= 1, got {max_flows}")
        self.R = R
        self.max_flows = max_flows
        self.members = np.zeros((N_GROUPS, max(1, switches)), dtype=np.bool_)
        self.member_count = np.zeros(N_GROUPS, dtype=np.int32)
        self.l_g = np.ones(N_GROUPS, dtype=np.int32)
        self.open: dict[int, EpochTally] = {}
        self.newest = -1  # the highest epoch a report carried
        self.closed_below = 0  # every epoch below is closed
        self.hellos = 0
        self.reports = 0
        self.late_reports = 0
        self.untracked_reports = 0

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

    # ---------------------------------------------------------------- reports, per epoch

    def open_flows(self) -> int:
        return sum(t.flows.n for t in self.open.values())

    def on_reports(self, src: np.ndarray, dst: np.ndarray, sport: np.ndarray,
                   dport: np.ndarray, proto: np.ndarray, epoch: np.ndarray,
                   ts_ns: np.ndarray) -> ReportOutcome:
        """Count a batch of reports (5-tuple columns, the epoch each carries, their times),
        in arrival order."""
        epoch = np.asarray(epoch, dtype=np.int64)
        out = ReportOutcome()
        n = len(epoch)
        if n == 0:
            return out
        self.reports += n
        late = epoch < self.closed_below
        if late.any():
            out.late = int(np.count_nonzero(late))
            es, cs = np.unique(epoch[late], return_counts=True)
            out.late_by_epoch = {int(e): int(c) for e, c in zip(es, cs, strict=True)}
            self.late_reports += out.late
        ts = np.asarray(ts_ns, dtype=np.int64)
        cols = [np.asarray(c) for c in (src, dst, sport, dport, proto)]
        for e in np.unique(epoch[~late]).tolist():
            out.closed += self._close_below(e - 1)  # first: their flows leave the cap
            sel = epoch == e
            tally = self.open.get(e)
            if tally is None:
                tally = self.open[e] = EpochTally(e, self.max_flows)
            # The cap is over every open epoch: this one may take what the others leave.
            tally.flows.max_flows = max(tally.flows.n,
                                        self.max_flows - self.open_flows() + tally.flows.n)
            idx = tally.flows.index(*(c[sel] for c in cols))
            tracked = idx >= 0
            k = int(np.count_nonzero(sel))
            untracked = k - int(np.count_nonzero(tracked))
            tally.reports += k
            tally.untracked += untracked
            out.untracked += untracked
            newly = tally.count(idx[tracked], ts[sel][tracked], self.R)
            if len(newly):
                out.newly.append((e, newly))
        self.untracked_reports += out.untracked
        self.newest = max(self.newest, int(epoch.max()))
        return out

    def close_all(self) -> list[EpochTally]:
        """Close every open epoch (shutdown, explicit flush): later reports of these epochs
        are late."""
        return self._close_below(self.newest + 1)

    def _close_below(self, bound: int) -> list[EpochTally]:
        if bound <= self.closed_below:
            return []
        self.closed_below = bound
        closed = [self.open.pop(e) for e in sorted(self.open) if e < bound]
        return closed

    def is_open(self, epoch: int) -> bool:
        return epoch in self.open

    def elephants(self, epoch: int | None = None) -> list[dict[str, int | None]]:
        """The elephants of the open epochs (or of one), as records."""
        return [x for e in sorted(self.open) if epoch is None or e == epoch
                for x in self.open[e].elephants(self.R)]

    def nbytes(self) -> int:
        """Memory of the open epochs' flow state."""
        return sum(t.nbytes() for t in self.open.values())
