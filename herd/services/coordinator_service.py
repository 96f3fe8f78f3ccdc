"""The coordinator as a gRPC service: I/O around ``herd.coordinator.Coordinator``.

The service registers switches, answers hellos with l_g, pushes l_g changes over a server
stream, takes report batches over a client stream and answers queries. Every decision is the
core class's (``Coordinator.on_hello``, ``Coordinator.on_reports``); this module only moves
bytes, journals, authenticates and counts.

Exactly once. Each report carries its switch's CPU message sequence number. Hellos and
report batches are applied one committer at a time, in arrival order: a report whose
sequence number is not above the highest one already held for its switch is a resend and is
not counted again.
A batch is acknowledged only after its transaction is committed to the SQLite journal (WAL);
a hello is answered only after the membership it adds is committed. Batches that arrive
together are committed together (group commit), which is what keeps >= 50k reports/s.
On start the journal is replayed through the same code, so a killed coordinator restarts with
every acknowledged report and every group's members and l_g, and with exactly the epochs
closed that were closed (closing is a function of the batch order, and flushes are journaled
in that order). With ``--fsync`` each commit is also flushed to disk (synchronous=FULL):
durable across power loss, not only process loss.

Epochs. Reports are counted per (flow, epoch), the epoch being the one the report carries
(``herd.coordinator.Coordinator``): epoch e closes once a report of epoch >= e + 2 has
arrived, on ``Flush`` and at shutdown. A closed epoch's elephants are final: they go into the
journal (tables ``epochs`` and ``elephants``) and into ``<--epoch-results>/epoch-<e>.json``
(written atomically, right after the commit that closed it), and leave memory. A report for a
closed epoch is a *late report*: acknowledged, counted (``late_reports``, and per epoch in
the journal), never applied - the epoch is not reopened. Group state persists across epochs.

Confirm (``--confirm``, ``herd.coordinator``: beyond published Herd). At the end of each
epoch the coordinator pulls, from every registered switch through its controller's Pulls
stream, the held totals of the epoch's candidates (flows with >= C reports, or detected by R)
and keeps as elephants those whose totals sum to >= T (T as the controllers register it, or
``--T``). The switches' epochs follow their clocks and a switch can decode epoch e's totals
only until it enters e + 2, so epoch e is pulled once a report of a later epoch has arrived
(e is over) plus a grace for e's last reports (``--confirm-grace-ms``, default W/4, W the
switches' epoch length as their controllers register it); with W = 0 (one epoch), at Flush.
Flush and shutdown pull every epoch not pulled yet first. An epoch never closes before its
pull: if the closing rule above closes it first, it waits, open in Query, until the pull is
answered. A switch that does not answer within ``--confirm-timeout-ms`` counts as unknown
(HELD_UNKNOWN, as 0) for all that pull's candidates (``pull_timeouts``). Each pull costs
``pull_messages(candidates)`` messages per switch asked (requests and answers of at most
PULL_FLOWS_PER_MESSAGE flows, as sent), counted per switch and in total with the confirm
counters (``confirm_candidates``, ``confirmed``, ``withdrawn``, ``unknown_held_totals``,
``reports_after_pull``). Each pull's outcome is journaled in order among the batches (the
candidates and the totals), so a restarted coordinator replays it exactly.

Memory (bounded; what a flood of unique flows costs):
  - per group: the member matrix, 65,536 groups x k switches, 1 byte each, plus l_g and the
    member count (8 bytes a group) - allocated at start: 1.1 MiB for k = 10, whatever the
    traffic; hellos add no memory beyond it (at most one membership per (group, switch), and
    the controllers dedupe before that);
  - per reported flow of an open epoch (at most two are open): 77 bytes (hash slots 48 at
    load 1/2, 5-tuple 13, report counter and detection time 16), up to twice that just after
    an array doubles - only for flows some switch reported, i.e. flows that crossed tau_g and
    won the r_g coin; at most ``--max-flows`` flows over the open epochs together (default
    2,000,000: at most ~220 MiB); reports of new flows beyond the cap are acknowledged and
    counted as ``untracked_reports`` but not classified; a closed epoch costs no memory (its
    elephants are on disk);
  - in flight: one batch per report stream (a stream is read as it is handled; a batch holds
    at most 65,536 reports), and at most ``--workers`` concurrent calls;
  - the journal grows on disk (about 30 bytes a report, 30 a membership), not in memory.
A flood of one-packet flows therefore costs hellos per group (fixed memory) and, for the few
flows whose hold start reaches tau_g and that are reported, one capped table entry each.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from herd import __version__
from herd.coordinator import (
    NOT_DETECTED,
    PULL_FLOWS_PER_MESSAGE,
    Coordinator,
    EpochTally,
    pull_messages,
)
from herd.errors import HerdInputError
from herd.params import add_confirm_arguments
from herd.services.common import (
    TOKEN_METADATA_KEY,
    Rejections,
    atomic_write_json,
    drain,
    load_token,
    rss_bytes,
    setup_logging,
)
from herd.services.rpc import herd_pb2 as pb
from herd.services.security import (
    add_tls_arguments,
    address_host,
    check_bind,
    grpc_server_credentials,
    server_ssl_context,
)
from herd.switch import HELD_UNKNOWN, N_GROUPS

log = logging.getLogger("herd.coordinator")

SERVICE = "herd.v1.Coordinator"
MAX_BATCH = 65536  # reports in one batch; more is a malformed batch
DEFAULT_MAX_FLOWS = 2_000_000
SCHEMA_VERSION = 3  # 2: report epochs, closed epochs and their elephants; 3: confirm's pulls
PULL_ROW = -2  # a journal row of table batches holding a pull's outcome (-1: a flush)
DEFAULT_PULL_TIMEOUT_MS = 2000.0


class _Malformed:
    """What the deserializer returns for bytes that are not the expected message: the
    handler rejects and counts it instead of grpc logging a stack trace."""

    __slots__ = ("error", "raw")

    def __init__(self, error: str, raw: bytes) -> None:
        self.error = error
        self.raw = raw


def _deserializer(cls: Any, keep_raw: bool = False) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        try:
            msg = cls.FromString(raw)
        except Exception as e:  # DecodeError and anything else the parser raises
            return _Malformed(f"{type(e).__name__}: {e}", raw)
        return (msg, raw) if keep_raw else msg

    return parse


@dataclass
class _SwitchState:
    name: str
    registered: bool = False
    subscribed: int = 0
    hellos: int = 0
    reports: int = 0
    duplicates: int = 0
    batches: int = 0
    acked_seq: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    late_logged: bool = False
    pulls: int = 0
    pull_messages: int = 0
    pull_timeouts: int = 0
    last_seen_ns: int = 0  # wall clock of its last hello or report batch (0: never)


@dataclass
class _Op:
    """One unit of work for the writer thread."""

    kind: str  # "hello" | "reports" | "subscribe" | "register"
    switch: int
    payload: Any = None
    raw: bytes = b""
    recv_ns: int = 0
    submitted_ns: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class Journal:
    """SQLite (WAL) record of what the coordinator acknowledged: new group memberships in
    order and accepted report batches (the wire bytes) in order, with flushes among them
    (rows of switch -1). Replaying it through the same code rebuilds the exact state. It also
    holds what the replay does not need to rebuild: every closed epoch's summary and
    elephants (so that they leave memory) and the late reports per epoch."""

    def __init__(self, path: str, fsync: bool) -> None:
        self.path = path
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as e:
            raise HerdInputError(f"{path}: cannot open the journal ({e})") from None
        self.db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        # Checkpoints (WAL -> database, with an fsync) run in a background thread on their
        # own connection: in the commit path they would stall answers for an fsync now and
        # then (tens of ms on a busy disk).
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint_loop, daemon=True,
                                              name="journal-checkpoint")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS hellos (id INTEGER PRIMARY KEY, switch INTEGER NOT NULL,
                grp INTEGER NOT NULL, seq INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY,
                switch INTEGER NOT NULL, recv_ns INTEGER NOT NULL, batch BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS epochs (epoch INTEGER PRIMARY KEY,
                closed_ns INTEGER NOT NULL, reports INTEGER NOT NULL,
                untracked INTEGER NOT NULL, late INTEGER NOT NULL, flows INTEGER NOT NULL,
                elephants INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS elephants (epoch INTEGER NOT NULL, src INTEGER NOT NULL,
                dst INTEGER NOT NULL, sport INTEGER NOT NULL, dport INTEGER NOT NULL,
                proto INTEGER NOT NULL, reports INTEGER NOT NULL, detected_ns INTEGER,
                early INTEGER);
            CREATE INDEX IF NOT EXISTS elephants_by_epoch ON elephants (epoch);
            """)
        # Schema 2 had no early column: added (NULL in its rows), nothing else changed.
        if "early" not in [r[1] for r in self.db.execute("PRAGMA table_info(elephants)")]:
            self.db.execute("ALTER TABLE elephants ADD COLUMN early INTEGER")

    def start_checkpoints(self) -> None:
        self._checkpointer.start()

    def _checkpoint_loop(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop.wait(1.0):
                # PASSIVE: copies what it can without blocking the writer.
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            log.warning("journal checkpoint failed", exc_info=True)
        finally:
            db.close()

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        (key, json.dumps(value)))

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def add_hello(self, switch: int, g: int, seq: int) -> None:
        self.db.execute("INSERT INTO hellos (switch, grp, seq) VALUES (?, ?, ?)",
                        (switch, g, seq))

    def add_batch(self, switch: int, recv_ns: int, raw: bytes) -> None:
        self.db.execute("INSERT INTO batches (switch, recv_ns, batch) VALUES (?, ?, ?)",
                        (switch, recv_ns, raw))

    def add_flush(self, recv_ns: int) -> None:
        """A flush, in order among the batches (replayed as one)."""
        self.db.execute("INSERT INTO batches (switch, recv_ns, batch) VALUES (-1, ?, x'')",
                        (recv_ns,))

    def add_closed_epoch(self, summary: dict[str, Any],
                         elephants: list[dict[str, Any]]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO epochs (epoch, closed_ns, reports, untracked, late, flows, "
            "elephants) VALUES (?, ?, ?, ?, COALESCE((SELECT late FROM epochs WHERE epoch = ?),"
            " 0), ?, ?)",
            (summary["epoch"], summary["closed_ns"], summary["reports"],
             summary["untracked_reports"], summary["epoch"], summary["flows"],
             summary["elephants"]))
        self.db.executemany(
            "INSERT INTO elephants (epoch, src, dst, sport, dport, proto, reports, detected_ns, "
            "early) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(x["epoch"], x["src"], x["dst"], x["sport"], x["dport"], x["proto"],
              x["reports"], x["detected_ns"], int(x["early"])) for x in elephants])

    def add_pull(self, recv_ns: int, record: np.ndarray) -> None:
        """A pull's outcome (``encode_pull``), in order among the batches."""
        self.db.execute("INSERT INTO batches (switch, recv_ns, batch) VALUES (?, ?, ?)",
                        (PULL_ROW, recv_ns, record.astype("<i8").tobytes()))

    def add_late(self, late_by_epoch: dict[int, int]) -> None:
        # An epoch closed before any report of it arrived has no row yet: closed_ns 0.
        self.db.executemany(
            "INSERT INTO epochs (epoch, closed_ns, reports, untracked, late, flows, elephants) "
            "VALUES (?, 0, 0, 0, ?, 0, 0) ON CONFLICT(epoch) DO UPDATE SET "
            "late = late + excluded.late", list(late_by_epoch.items()))

    def closed_epochs(self, epoch: int | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE epoch = ?", (epoch,)) if epoch is not None else ("", ())
        return [
            {"epoch": e, "open": False, "closed_ns": c, "reports": r, "untracked_reports": u,
             "late_reports": late, "flows": f, "elephants": n}
            for e, c, r, u, late, f, n in self.db.execute(
                "SELECT epoch, closed_ns, reports, untracked, late, flows, elephants FROM "
                f"epochs {where} ORDER BY epoch", args)]

    def closed_elephants(self, epoch: int | None = None) -> list[dict[str, Any]]:
        where, args = ("WHERE epoch = ?", (epoch,)) if epoch is not None else ("", ())
        return [
            {"epoch": e, "src": s, "dst": d, "sport": sp, "dport": dp, "proto": p,
             "reports": r, "detected_ns": t, "early": None if early is None else bool(early)}
            for e, s, d, sp, dp, p, r, t, early in self.db.execute(
                "SELECT epoch, src, dst, sport, dport, proto, reports, detected_ns, early FROM "
                f"elephants {where} ORDER BY epoch, rowid", args)]

    def hellos(self) -> Iterator[tuple[int, int, int]]:
        yield from self.db.execute("SELECT switch, grp, seq FROM hellos ORDER BY id")

    def batches(self) -> Iterator[tuple[int, int, bytes]]:
        yield from self.db.execute("SELECT switch, recv_ns, batch FROM batches ORDER BY id")

    def close(self) -> None:
        self._stop.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join(5)
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.db.close()


@dataclass
class PullOutcome:
    """What one pull of confirm found: the epoch's candidates (flow indices of its tally), each
    one's held total on every switch (HELD_UNKNOWN where a switch did not say), which switches
    were asked and which did not answer in time, T, and the time confirmed detections get."""

    epoch: int
    ts_ns: int
    T: int  # -1: no T known (no confirmation: the published rule stands)
    asked: np.ndarray  # bool, per switch
    timed_out: np.ndarray  # bool, per switch
    candidates: np.ndarray  # int64
    totals: np.ndarray  # int64 [switch, candidate]

    def encode(self) -> np.ndarray:
        """As one int64 array (the journal's row): header, then the columns."""
        k, n = self.totals.shape
        head = np.array([self.epoch, self.ts_ns, self.T, k, n], np.int64)
        return np.concatenate([head, self.asked.astype(np.int64),
                               self.timed_out.astype(np.int64),
                               self.candidates.astype(np.int64),
                               self.totals.astype(np.int64).ravel()])

    @classmethod
    def decode(cls, raw: bytes) -> PullOutcome:
        a = np.frombuffer(raw, "<i8").astype(np.int64)
        epoch, ts, T, k, n = (int(x) for x in a[:5])
        at = 5
        asked, at = a[at: at + k].astype(bool), at + k
        timed_out, at = a[at: at + k].astype(bool), at + k
        cand, at = a[at: at + n], at + n
        return cls(epoch, ts, T, asked, timed_out, cand, a[at: at + k * n].reshape(k, n))


def _warm_up() -> None:
    """Load the compiled kernels now, not on the first hello (a second, the first time)."""
    scratch = Coordinator(1, 1)
    scratch.on_hello(0, 0)
    z = np.zeros(1, np.uint32)
    scratch.on_reports(z, z, z, z, z, z, np.zeros(1, np.int64))


class CoordinatorState:
    """The core Coordinator plus what the service keeps around it (per-switch sequence
    numbers and counters, subscribers), the journal and the closed epochs' result files.
    Mutated only by the committer (``submit``); read under ``lock``."""

    def __init__(self, switch_names: list[str], R: int, journal: Journal,
                 max_flows: int = DEFAULT_MAX_FLOWS, epoch_dir: str | None = None,
                 epoch_ms: float = 0.0, confirm_reports: int | None = None,
                 T: int | None = None, confirm_grace_ms: float | None = None,
                 confirm_timeout_ms: float = DEFAULT_PULL_TIMEOUT_MS) -> None:
        if len(set(switch_names)) != len(switch_names) or not switch_names:
            raise HerdInputError(f"switch names must be distinct and non-empty: {switch_names}")
        if max_flows < 1:
            raise HerdInputError(f"--max-flows {max_flows}: must be >= 1")
        self.switch_names = list(switch_names)
        self.ids = {n: i for i, n in enumerate(self.switch_names)}
        self.R = R
        self.max_flows = max_flows
        self.epoch_ms = epoch_ms  # informational: W as the run's trace has it
        self.epoch_dir = epoch_dir
        self.coordinator = Coordinator(len(switch_names), R, max_flows)
        self.switches = [_SwitchState(n) for n in self.switch_names]
        # Confirm (None: off): C, T (given, or as the controllers register it), the grace
        # after an epoch is seen over (None: W/4) and how long a pull waits for answers.
        if confirm_reports is not None and confirm_reports < 1:
            raise HerdInputError(f"--confirm-reports {confirm_reports}: must be >= 1")
        if T is not None and T < 1:
            raise HerdInputError(f"--T {T}: must be >= 1")
        self.confirm_reports = confirm_reports
        self.T = T
        self.confirm_grace_ms = confirm_grace_ms
        self.confirm_timeout_ms = confirm_timeout_ms
        # Epochs the closing rule closed before their pull: open until it is applied.
        self.awaiting: dict[int, EpochTally] = {}
        # Epochs seen over and not pulled yet: when (monotonic ns; 0: at once, overdue) and
        # the newest report time then (the time confirmed detections get).
        self.pull_due: dict[int, tuple[int, int]] = {}
        self.max_ts = 0  # the newest report time seen (the switches' clock)
        self.pull_cv = threading.Condition()  # wakes the puller (kicks counts the wake-ups)
        self.kicks = 0
        self.counters: dict[str, int] = {
            "hello_rpcs": 0, "memberships": 0, "l_g_pushes": 0, "report_batches": 0,
            "reports": 0, "duplicates": 0, "untracked_reports": 0, "late_reports": 0,
            "epochs_closed": 0, "flushes": 0, "recovered_reports": 0,
            "recovered_memberships": 0, "journal_commits": 0, "ops": 0, "op_wait_ns": 0,
            "commit_busy_ns": 0, "pulls": 0, "pull_messages": 0, "confirm_candidates": 0,
            "confirmed": 0, "withdrawn": 0, "unknown_held_totals": 0, "pull_timeouts": 0,
            "reports_after_pull": 0, "recovered_pulls": 0,
        }
        self.journal = journal
        self.lock = threading.Lock()
        self.subscribers: dict[int, queue.Queue[pb.LgUpdate | None]] = {}
        self._queue: list[_Op] = []
        self._queue_cv = threading.Condition()  # guards _queue and _committing
        self._committing = False
        self._stopped = False  # set by stop(): ops after it fail (the journal is closing)
        # Closed epochs whose result file is written once their close is committed.
        self._epoch_files: list[dict[str, Any]] = []
        _warm_up()
        self._open_journal(journal, max_flows)

    # ---------------------------------------------------------------- journal and recovery

    def _open_journal(self, journal: Journal, max_flows: int) -> None:
        version = journal.get_meta("schema")
        if version is None:
            journal.begin()
            journal.set_meta("schema", SCHEMA_VERSION)
            journal.set_meta("switches", self.switch_names)
            journal.set_meta("R", self.R)
            journal.set_meta("max_flows", max_flows)
            journal.set_meta("confirm_reports", self.confirm_reports)
            journal.commit()
            return
        if version not in (2, SCHEMA_VERSION):
            raise HerdInputError(f"{journal.path}: journal schema {version}, expected "
                                 f"{SCHEMA_VERSION}; move it away to start afresh")
        if version == 2:  # what 3 adds (pull rows, the early column) a 2 lacks, no more
            journal.begin()
            journal.set_meta("schema", SCHEMA_VERSION)
            journal.set_meta("confirm_reports", None)
            journal.commit()
        for key, mine in (("switches", self.switch_names), ("R", self.R),
                          ("max_flows", max_flows), ("confirm_reports", self.confirm_reports)):
            theirs = journal.get_meta(key)
            if theirs != mine:
                raise HerdInputError(
                    f"{journal.path}: the journal was written with {key}={theirs}, this run has "
                    f"{key}={mine}; use the same setting or another --journal")
        t = time.perf_counter()
        for switch, g, seq in journal.hellos():
            self._apply_hello(switch, g, seq, journal_it=False)
            self.counters["recovered_memberships"] += 1
        for name in self.switch_names:  # T for the pulls (a pull's row holds its own)
            params = journal.get_meta(f"controller:{name}")
            if params:
                self.switches[self.ids[name]].params = params
                if self.T is None and params.get("T"):
                    self.T = int(params["T"])
        for switch, recv_ns, raw in journal.batches():
            if switch == PULL_ROW:
                self._apply_pull(PullOutcome.decode(raw), recv_ns, journal_it=False)
                self.counters["recovered_pulls"] += 1
                continue
            if switch < 0:
                self._flush(recv_ns, journal_it=False)
                continue
            batch = pb.ReportBatch.FromString(raw)
            accepted, _ = self._apply_reports(switch, batch, raw, recv_ns, journal_it=False)
            self.counters["recovered_reports"] += accepted
        # A close committed just before a kill may have missed its file: write what is missing.
        self._write_epoch_files()
        if self.counters["recovered_memberships"] or self.counters["recovered_reports"]:
            log.info("recovered from %s in %.2f s: %d group memberships, %d reports, "
                     "%d epochs closed, %d open", journal.path, time.perf_counter() - t,
                     self.counters["recovered_memberships"], self.counters["recovered_reports"],
                     self.counters["epochs_closed"], len(self.coordinator.open))

    # ---------------------------------------------------------------- the state changes

    def _apply_hello(self, switch: int, g: int, seq: int,
                     journal_it: bool = True) -> tuple[int, tuple[int, ...]]:
        new_member = not bool(self.coordinator.members[g, switch])
        answer = self.coordinator.on_hello(g, switch)
        sw = self.switches[switch]
        sw.hellos += 1
        if journal_it:  # a recovered hello has no time of its own
            sw.last_seen_ns = time.time_ns()
        self.counters["hello_rpcs"] += 1
        if new_member:
            self.counters["memberships"] += 1
            if journal_it:
                self.journal.add_hello(switch, g, seq)
        # l_g changed: push it to every member (the asker also gets it in its answer).
        push_to = answer.push_to if len(answer.push_to) > 1 else ()
        if push_to:
            self.counters["l_g_pushes"] += len(push_to) - 1
        return answer.l_g, push_to

    def _apply_reports(self, switch: int, batch: pb.ReportBatch, raw: bytes, recv_ns: int,
                       journal_it: bool = True) -> tuple[int, int]:
        """Count the batch's reports not held yet; returns (accepted, duplicates)."""
        sw = self.switches[switch]
        sw.last_seen_ns = max(sw.last_seen_ns, recv_ns)  # recovered batches: when received
        seq = np.asarray(batch.seq, dtype=np.uint64)
        new = seq > np.uint64(sw.acked_seq)
        accepted = int(np.count_nonzero(new))
        duplicates = len(seq) - accepted
        sw.batches += 1
        sw.duplicates += duplicates
        self.counters["report_batches"] += 1
        self.counters["duplicates"] += duplicates
        if accepted == 0:
            return 0, duplicates
        take = slice(None) if duplicates == 0 else new
        ts = np.asarray(batch.ts_ns, dtype=np.int64)[take]
        epoch = (np.asarray(batch.epoch, dtype=np.int64)[take] if len(batch.epoch)
                 else np.zeros(accepted, np.int64))
        ts = np.where(ts > 0, ts, recv_ns)
        if self.confirm_reports is not None:
            pulled = [e for e, t in self.coordinator.open.items() if t.pulled]
            if pulled:  # counted in a pulled epoch: they change nothing any more
                self.counters["reports_after_pull"] += int(np.isin(epoch, pulled).sum())
            self.max_ts = max(self.max_ts, int(ts.max()))
        outcome = self.coordinator.on_reports(
            np.asarray(batch.src, np.uint32)[take], np.asarray(batch.dst, np.uint32)[take],
            np.asarray(batch.sport, np.uint32)[take], np.asarray(batch.dport, np.uint32)[take],
            np.asarray(batch.proto, np.uint32)[take], epoch, ts)
        self.counters["untracked_reports"] += outcome.untracked
        if outcome.late:
            self.counters["late_reports"] += outcome.late
            if not sw.late_logged:  # once per switch: a flood must not fill the log
                sw.late_logged = True
                log.warning("switch %s: %d reports of closed epochs %s (late: counted, not "
                            "applied; further ones are only counted)", sw.name, outcome.late,
                            sorted(outcome.late_by_epoch))
            if journal_it:
                self.journal.add_late(outcome.late_by_epoch)
        sw.reports += accepted
        sw.acked_seq = int(seq[-1])
        self.counters["reports"] += accepted
        if journal_it:
            self.journal.add_batch(switch, recv_ns, raw)
        self._closed(outcome.closed, recv_ns, journal_it)
        if self.confirm_reports is not None:
            # A report of a later epoch says e is over at the switches: pull it after the grace.
            now = time.monotonic_ns()
            due = [e for e, t in self.coordinator.open.items()
                   if e < self.coordinator.newest and not t.pulled and e not in self.pull_due]
            for e in due:
                self.pull_due[e] = (now, self.max_ts)
            if due:
                self._kick_puller()
        return accepted, duplicates

    def _kick_puller(self) -> None:
        with self.pull_cv:
            self.kicks += 1
            self.pull_cv.notify_all()

    def _flush(self, recv_ns: int, journal_it: bool = True) -> list[int]:
        """Close every open epoch; returns them."""
        closed = self.coordinator.close_all()
        self.counters["flushes"] += 1
        if journal_it:
            self.journal.add_flush(recv_ns)
        self._closed(closed, recv_ns, journal_it)
        return [t.epoch for t in closed]

    def _closed(self, tallies: list[EpochTally], now_ns: int, journal_it: bool) -> None:
        """Closed epochs: final elephants to the journal (not when replaying it: they are
        there), their files queued for after the commit. With confirm, an epoch not pulled yet
        waits for its pull instead (in ``awaiting``, pulled at once)."""
        overdue = False
        for tally in tallies:
            if self.confirm_reports is not None and not tally.pulled:
                self.awaiting[tally.epoch] = tally
                self.pull_due[tally.epoch] = (0, self.pull_due.get(tally.epoch,
                                                                  (0, self.max_ts))[1])
                overdue = True
                continue
            elephants = tally.elephants(self.R)
            summary = {"epoch": tally.epoch, "open": False, "closed_ns": now_ns,
                       "reports": tally.reports, "untracked_reports": tally.untracked,
                       "late_reports": 0, "flows": tally.flows.n, "elephants": len(elephants)}
            if journal_it:
                self.journal.add_closed_epoch(summary, elephants)
            self.counters["epochs_closed"] += 1
            if self.epoch_dir is not None:
                self._epoch_files.append({**summary, "elephants": elephants,
                                          "replayed": not journal_it})
            log.info("epoch %d closed: %d reports, %d flows, %d elephants", tally.epoch,
                     tally.reports, tally.flows.n, len(elephants))
        if overdue:
            self._kick_puller()

    # ---------------------------------------------------------------- confirm's pulls

    def _tally(self, epoch: int) -> EpochTally | None:
        tally = self.coordinator.open.get(epoch)
        return tally if tally is not None else self.awaiting.get(epoch)

    def unpulled(self) -> list[int]:
        """The epochs in memory not pulled yet, in order."""
        with self.lock:
            tallies = [*self.coordinator.open.values(), *self.awaiting.values()]
            return sorted(t.epoch for t in tallies if not t.pulled)

    def due_pulls(self, now_ns: int) -> tuple[list[int], float]:
        """The epochs to pull now, and the seconds until the next one is due (at most 0.5).
        The grace: ``--confirm-grace-ms``, else a quarter of the longest epoch W a controller
        registered."""
        with self.lock:
            grace_ms = self.confirm_grace_ms
            if grace_ms is None:
                grace_ms = max((int(s.params.get("epoch_us") or 0) for s in self.switches),
                               default=0) / 4000
            grace = int(grace_ms * 1e6)
            due, wait = [], 0.5
            for e, (at, _) in sorted(self.pull_due.items()):
                left = 0 if at == 0 else at + grace - now_ns
                if left <= 0:
                    due.append(e)
                else:
                    wait = min(wait, left / 1e9)
            return due, wait

    def pull_plan(self, epoch: int) -> tuple[np.ndarray, list[np.ndarray], int, np.ndarray
                                             ] | None:
        """What to ask for epoch e: its candidates (flow indices), their 5-tuple columns,
        the time confirmed detections get, and which switches to ask (the registered ones);
        None if it needs no pull (pulled already, or unknown)."""
        with self.lock:
            tally = self._tally(epoch)
            _, ts = self.pull_due.get(epoch, (0, self.max_ts))
            if tally is None or tally.pulled:
                self.pull_due.pop(epoch, None)
                return None
            cand = tally.candidates(self.confirm_reports or 1, self.R)
            f = tally.flows
            cols = [f.src[cand], f.dst[cand], f.sport[cand], f.dport[cand], f.proto[cand]]
            asked = np.array([s.registered for s in self.switches], bool)
            return cand, cols, ts, asked

    def _apply_pull(self, pull: PullOutcome, now_ns: int, journal_it: bool = True) -> None:
        """A pull's outcome: the epoch's elephants become its confirmed candidates (with no
        T known, the published rule stands), the costs and findings are counted, and an epoch
        the closing rule closed meanwhile closes now."""
        e = pull.epoch
        tally = self._tally(e)
        if tally is None or tally.pulled:
            return  # the puller holds an epoch while pulling it: only a bug gets here
        self.pull_due.pop(e, None)
        n = len(pull.candidates)
        m = pull_messages(n)
        if pull.T >= 1:
            ok = tally.confirm(pull.candidates, pull.totals, pull.T, pull.ts_ns)
            early = tally.report_count[pull.candidates] >= self.R
            self.counters["confirmed"] += int(np.count_nonzero(ok))
            self.counters["withdrawn"] += int(np.count_nonzero(~ok & early))
        else:
            tally.pulled = True
            tally.confirm_ts = tally.detect_ts.copy()
            log.error("epoch %d: no T known (give --T, or controllers that register it): "
                      "its elephants are the published rule's", e)
        c = self.counters
        c["pulls"] += 1
        c["confirm_candidates"] += n
        c["unknown_held_totals"] += int(np.count_nonzero(pull.totals < 0))
        c["pull_timeouts"] += int(np.count_nonzero(pull.timed_out))
        for i in np.flatnonzero(pull.asked):
            sw = self.switches[i]
            sw.pulls += 1
            sw.pull_messages += m
            sw.pull_timeouts += int(pull.timed_out[i])
            c["pull_messages"] += m
        if journal_it:
            self.journal.add_pull(now_ns, pull.encode())
        log.info("epoch %d pulled: %d candidates, %d unknown totals, %d switches timed out",
                 e, n, int(np.count_nonzero(pull.totals < 0)),
                 int(np.count_nonzero(pull.timed_out)))
        if self.awaiting.pop(e, None) is not None:
            self._closed([tally], now_ns, journal_it)

    def _write_epoch_files(self) -> None:
        """Each closed epoch's results, ``<epoch_dir>/epoch-<e>.json`` (atomic). When the
        journal is replayed, only the missing ones (with the journal's close time)."""
        files, self._epoch_files = self._epoch_files, []
        if self.epoch_dir is None:
            return
        for f in files:
            path = os.path.join(self.epoch_dir, f"epoch-{f['epoch']}.json")
            if f.pop("replayed"):
                if os.path.exists(path):
                    continue
                rows = self.journal.closed_epochs(f["epoch"])
                if rows:
                    f["closed_ns"] = rows[0]["closed_ns"]
            f.pop("open")
            f.pop("late_reports")  # arrive after the file: in the journal and the counters
            try:
                os.makedirs(self.epoch_dir, exist_ok=True)
                atomic_write_json(path, {"herd_version": __version__, "R": self.R,
                                         "epoch_ms": self.epoch_ms, **f})
            except OSError as e:  # the journal has it: a full disk must not stop counting
                log.error("cannot write %s: %s", path, e)

    # ---------------------------------------------------------------- group commit

    def submit(self, op: _Op) -> _Op:
        """Apply, journal and commit ``op``; returns once it is committed.

        Leader-based group commit, no writer thread: a caller that finds no commit under way
        applies and commits every op queued so far in one transaction; callers that queued
        meanwhile wait until their op is done (or, if it missed that round, until they can
        lead the next). Uncontended, an op costs no thread hand-off; contended, many ops share
        one commit (and one fsync with --fsync), and a done op returns at once, not after
        the next round too (as it would queueing for a commit lock)."""
        op.submitted_ns = time.monotonic_ns()
        with self._queue_cv:
            self._queue.append(op)
            while self._committing and not op.done.is_set():
                self._queue_cv.wait()
            if op.done.is_set():
                return op
            if self._stopped:  # e.g. a stream's clean-up after the shutdown's last commit
                self._queue.remove(op)
                op.error = RuntimeError("the coordinator has stopped")
                op.done.set()
                return op
            self._committing = True
            ops, self._queue = self._queue, []
        try:
            self._process(ops)
        except BaseException as e:
            # The round failed as a whole (e.g. the journal): every op in it fails with it,
            # rather than its waiters finding neither a result nor an error.
            for o in ops:
                if not o.done.is_set():
                    o.error = e
                    o.done.set()
            raise
        finally:
            with self._queue_cv:
                self._committing = False
                self._queue_cv.notify_all()
        return op

    def stop(self) -> None:
        """No op after this one (the journal closes next): waits for a commit under way."""
        with self._queue_cv:
            self._stopped = True
            while self._committing:
                self._queue_cv.wait()

    def _process(self, ops: list[_Op]) -> None:
        pushes: list[tuple[int, pb.LgUpdate]] = []
        t_start = time.monotonic_ns()
        with self.lock:
            self.journal.begin()
            for o in ops:
                try:
                    self._run(o, pushes)
                except Exception as e:  # a bug must not take the service down
                    log.exception("coordinator op %s failed", o.kind)
                    o.error = e
            # A failing commit (disk full, I/O error) must not be acknowledged: die
            # loudly; the controllers keep what is unacknowledged and resend it.
            try:
                self.journal.commit()
            except sqlite3.Error:
                log.critical("journal commit failed; exiting without acknowledging",
                             exc_info=True)
                os._exit(3)
            self.counters["journal_commits"] += 1
            # After the commit: answers, acks and pushes may go out now.
            for target, update in pushes:
                q = self.subscribers.get(target)
                if q is not None:
                    q.put(update)
            now = time.monotonic_ns()
            self.counters["op_wait_ns"] += sum(now - o.submitted_ns for o in ops)
            self.counters["ops"] += len(ops)
            self.counters["commit_busy_ns"] += now - t_start
        # Still in the commit round: an ack that closed an epoch comes after its file.
        if self._epoch_files:
            self._write_epoch_files()
        for o in ops:
            o.done.set()

    def _hello(self, switch: int, g: int, seq: int,
               pushes: list[tuple[int, pb.LgUpdate]]) -> int:
        l_g, push_to = self._apply_hello(switch, g, seq)
        # The asker gets l_g in its answer (again on a resent hello, if the answer is lost):
        # a push to it too would cost a message on each side and change nothing.
        pushes.extend((target, pb.LgUpdate(group=g, l_g=l_g)) for target in push_to
                      if target != switch)
        return l_g

    def _run(self, op: _Op, pushes: list[tuple[int, pb.LgUpdate]]) -> None:
        if op.kind == "hello":  # group and seq were validated by the handler
            g, seq = op.payload
            op.result = self._hello(op.switch, g, seq, pushes)
        elif op.kind == "hellos":
            op.result = [self._hello(sw, g, seq, pushes) for sw, g, seq in op.payload]
        elif op.kind == "reports":
            op.result = self._apply_reports(op.switch, op.payload, op.raw, op.recv_ns)
        elif op.kind == "flush":
            op.result = self._flush(op.recv_ns)
        elif op.kind == "pull":
            self._apply_pull(op.payload, op.recv_ns)
        elif op.kind == "subscribe":
            q: queue.Queue[pb.LgUpdate | None] = op.payload
            old = self.subscribers.get(op.switch)
            if old is not None:
                old.put(None)  # a newer stream replaces it: end the old one
            self.subscribers[op.switch] = q
            # The snapshot goes into the queue before any later push: none is missed.
            for g, l_g in self.coordinator.groups_of(op.switch).items():
                q.put(pb.LgUpdate(group=g, l_g=l_g, snapshot=True))
            q.put(pb.LgUpdate(snapshot_end=True))
        elif op.kind == "unsubscribe":
            if self.subscribers.get(op.switch) is op.payload:
                del self.subscribers[op.switch]
        elif op.kind == "register":
            sw = self.switches[op.switch]
            T = int(op.payload.get("T") or 0) if op.payload else 0
            if self.confirm_reports is not None and T:
                if self.T is not None and T != self.T:
                    # One T decides every pull: a controller with another would mislead it.
                    op.result = (0, f"T={T} differs from the T={self.T} of this coordinator's "
                                 "confirm (give every controller the same --T)")
                    return
                self.T = T
            sw.registered = True
            if op.payload and op.payload != sw.params:
                sw.params = op.payload
                self.journal.set_meta(f"controller:{sw.name}", op.payload)
            op.result = (sw.acked_seq, None)
        else:
            raise ValueError(f"unknown op {op.kind}")

    # ---------------------------------------------------------------- reads

    def elephants(self, epoch: int | None = None) -> list[dict[str, Any]]:
        """The elephants of every epoch (or of one): the closed epochs' from the journal,
        then the open ones'."""
        with self.lock:
            waiting = [x for e in sorted(self.awaiting) if epoch is None or e == epoch
                       for x in self.awaiting[e].elephants(self.R)]
            return [*self.journal.closed_elephants(epoch), *waiting,
                    *self.coordinator.elephants(epoch)]

    def epochs(self, epoch: int | None = None) -> list[dict[str, Any]]:
        """A summary of every epoch known (or of one): closed ones, then open ones."""
        with self.lock:
            out = self.journal.closed_epochs(epoch)
            # Open: still counting, or (confirm) closed and waiting for the pull.
            for e, t in sorted([*self.coordinator.open.items(), *self.awaiting.items()]):
                if epoch is None or e == epoch:
                    n = t.flows.n
                    elephants = (t.confirm_ts[:n] != NOT_DETECTED if t.pulled
                                 else t.report_count[:n] >= self.R)
                    out.append({"epoch": e, "open": True, "closed_ns": 0,
                                "reports": t.reports, "untracked_reports": t.untracked,
                                "late_reports": 0, "flows": n, "pulled": t.pulled,
                                "elephants": int(np.count_nonzero(elephants))})
            return out

    def switch_counters(self) -> list[dict[str, Any]]:
        with self.lock:
            groups = self.coordinator.members.sum(axis=0)
            return [
                {"name": s.name, "switch_id": i, "registered": s.registered,
                 "subscribed": i in self.subscribers, "hellos": s.hellos,
                 "groups": int(groups[i]), "reports": s.reports, "duplicates": s.duplicates,
                 "batches": s.batches, "acked_seq": s.acked_seq, "params": s.params,
                 "pulls": s.pulls, "pull_messages": s.pull_messages,
                 "pull_timeouts": s.pull_timeouts, "last_seen_ns": s.last_seen_ns}
                for i, s in enumerate(self.switches)
            ]

    def groups(self) -> dict[int, int]:
        """{g: l_g} of every group some switch said hello for."""
        with self.lock:
            gs = np.flatnonzero(self.coordinator.member_count)
            return {int(g): int(self.coordinator.l_g[g]) for g in gs}

    def memory(self) -> dict[str, int]:
        with self.lock:
            c = self.coordinator
            return {
                "groups": int(np.count_nonzero(c.member_count)),
                "open_epochs": len(c.open) + len(self.awaiting),
                "epochs_seen": c.newest + 1,  # the highest epoch a report carried, + 1
                "flows": c.open_flows(),
                "max_flows": self.max_flows,
                "flow_table_bytes": c.nbytes() + sum(t.nbytes() for t in self.awaiting.values()),
                "group_state_bytes": c.members.nbytes + c.member_count.nbytes + c.l_g.nbytes,
                "rss_bytes": rss_bytes(),
            }


@dataclass
class _Pull:
    """One pull in flight: its request parts and each switch's answers so far."""

    pull_id: int
    parts: list[pb.PullRequest]
    asked: list[int]
    answers: dict[int, dict[int, list[int]]] = field(default_factory=dict)

    def answered(self, switch: int) -> bool:
        return len(self.answers.get(switch, {})) == len(self.parts)


class Puller:
    """Confirm's pulls: a thread pulls each epoch once it is due (``CoordinatorState.
    due_pulls``); Flush and shutdown pull the rest (``pull_all``). A pull goes to each asked
    switch's Pulls stream (queued for a switch whose stream is down, sent when it comes back),
    waits for every answer up to the timeout, and hands the outcome to the committer."""

    def __init__(self, service: CoordinatorService) -> None:
        self.service = service
        self.state = service.state
        self.cv = threading.Condition()  # guards everything below
        self.outboxes: dict[int, queue.Queue[pb.PullRequest | None]] = {}
        self.live: dict[int, _Pull] = {}
        self.pulling: set[int] = set()  # epochs being pulled
        self.next_id = 1
        self.thread = threading.Thread(target=self.loop, daemon=True, name="puller")
        self.thread.start()

    # ---------------------------------------------------------------- streams

    def attach(self, switch: int) -> queue.Queue[pb.PullRequest | None]:
        """A new stream of ``switch``: it replaces the old one and gets every pull the
        switch has not fully answered (the controller gathers a pull's parts per stream)."""
        q: queue.Queue[pb.PullRequest | None] = queue.Queue()
        with self.cv:
            old = self.outboxes.get(switch)
            if old is not None:
                old.put(None)
            self.outboxes[switch] = q
            for pull in self.live.values():
                if switch in pull.asked and not pull.answered(switch):
                    for part in pull.parts:
                        q.put(part)
        return q

    def detach(self, switch: int, q: queue.Queue[pb.PullRequest | None]) -> None:
        with self.cv:
            if self.outboxes.get(switch) is q:
                del self.outboxes[switch]

    def answer(self, switch: int, answer: pb.PullAnswer) -> str | None:
        """Take one answer of ``switch``'s stream; what is wrong with it, None if nothing.
        An answer to a pull no longer in flight (timed out) is dropped."""
        with self.cv:
            pull = self.live.get(answer.pull_id)
            if pull is None:
                return None
            if answer.switch_id != switch or switch not in pull.asked:
                return f"switch {answer.switch_id} on switch {switch}'s stream"
            if not 0 <= answer.part < len(pull.parts):
                return f"part {answer.part} of {len(pull.parts)}"
            if len(answer.totals) != len(pull.parts[answer.part].src):
                return (f"{len(answer.totals)} totals for "
                        f"{len(pull.parts[answer.part].src)} flows")
            pull.answers.setdefault(switch, {})[answer.part] = list(answer.totals)
            self.cv.notify_all()
        return None

    # ---------------------------------------------------------------- pulls

    def loop(self) -> None:
        while not self.service.stopping.is_set():
            with self.state.pull_cv:
                kicks = self.state.kicks
            due, wait = self.state.due_pulls(time.monotonic_ns())
            for e in due:
                try:
                    self.pull(e)
                except Exception:  # a bug must not stop the pulls of later epochs
                    log.exception("pull of epoch %d failed", e)
            if not due:
                with self.state.pull_cv:
                    if self.state.kicks == kicks:
                        self.state.pull_cv.wait(wait)

    def pull_all(self) -> None:
        """Pull every epoch in memory not pulled yet (Flush, shutdown)."""
        for e in self.state.unpulled():
            self.pull(e)

    def pull(self, epoch: int) -> None:
        """Pull ``epoch`` unless it is pulled; if it is being pulled, wait for that."""
        with self.cv:
            while epoch in self.pulling:
                self.cv.wait()
            self.pulling.add(epoch)
        try:
            self._pull(epoch)
        finally:
            with self.cv:
                self.pulling.discard(epoch)
                self.cv.notify_all()

    def _pull(self, epoch: int) -> None:
        plan = self.state.pull_plan(epoch)
        if plan is None:
            return
        cand, cols, ts, asked = plan
        k, n = len(asked), len(cand)
        totals = np.full((k, n), HELD_UNKNOWN, np.int64)
        timed_out = np.zeros(k, bool)
        if n == 0:
            totals[:] = 0  # nothing to ask
        else:
            bounds = list(range(0, n, PULL_FLOWS_PER_MESSAGE)) + [n]
            with self.cv:
                pull_id, self.next_id = self.next_id, self.next_id + 1
            parts = [pb.PullRequest(pull_id=pull_id, epoch=epoch, part=i,
                                    parts=len(bounds) - 1,
                                    src=cols[0][a:b].tolist(), dst=cols[1][a:b].tolist(),
                                    sport=cols[2][a:b].tolist(), dport=cols[3][a:b].tolist(),
                                    proto=cols[4][a:b].tolist())
                     for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
            targets = [int(i) for i in np.flatnonzero(asked)]
            pull = _Pull(pull_id, parts, targets)
            deadline = time.monotonic() + self.state.confirm_timeout_ms / 1000
            with self.cv:
                self.live[pull_id] = pull
                for i in targets:
                    q = self.outboxes.get(i)
                    if q is not None:
                        for part in parts:
                            q.put(part)
                # Stopping (the server is down): nobody can answer; do not wait.
                while (not all(pull.answered(i) for i in targets)
                       and not self.service.stopping.is_set()
                       and (left := deadline - time.monotonic()) > 0):
                    self.cv.wait(left)
                del self.live[pull_id]
            for i in targets:
                got = pull.answers.get(i, {})
                for j, part_totals in got.items():
                    totals[i, bounds[j]: bounds[j + 1]] = part_totals
                timed_out[i] = len(got) < len(parts)
            if timed_out.any():
                log.warning("epoch %d: pull not answered in %g ms by %s: their held totals "
                            "count as unknown", epoch, self.state.confirm_timeout_ms,
                            ", ".join(self.state.switch_names[i]
                                      for i in np.flatnonzero(timed_out)))
        with self.state.lock:
            T = self.state.T
        outcome = PullOutcome(epoch, ts, T if T is not None else -1, asked, timed_out, cand,
                              totals)
        op = self.state.submit(_Op("pull", 0, outcome, recv_ns=time.time_ns()))
        if op.error is not None:
            raise op.error


class CoordinatorService:
    """The gRPC handlers. Every handler authenticates, validates, then hands the work to the
    state's writer thread; rejections are counted and logged once per peer and kind."""

    def __init__(self, state: CoordinatorState, token: str | None) -> None:
        self.state = state
        self._token = token.encode() if token else None
        self.rejections = Rejections(log)
        self.stopping = threading.Event()
        self.puller = Puller(self) if state.confirm_reports is not None else None

    # ---------------------------------------------------------------- guards

    def _authenticate(self, context: grpc.ServicerContext) -> None:
        if self._token is None:
            return
        given = None
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else value
        if given is None:
            self.rejections.reject("token_missing", context.peer(), "no token in metadata")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing token")
        if not hmac.compare_digest(given, self._token):
            self.rejections.reject("token_wrong", context.peer(), "wrong token")
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong token")

    def _malformed(self, context: grpc.ServicerContext, what: str) -> None:
        self.rejections.reject("malformed", context.peer(), what)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request: {what}")

    def _check_switch(self, context: grpc.ServicerContext, switch_id: int) -> int:
        if not 0 <= switch_id < len(self.state.switch_names):
            self.rejections.reject("unknown_switch", context.peer(), f"switch id {switch_id}")
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown switch id {switch_id}")
        return switch_id

    def _request(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._authenticate(context)
        if isinstance(request, _Malformed):
            self._malformed(context, request.error)
        return request

    # ---------------------------------------------------------------- RPCs

    def Register(self, request: Any, context: grpc.ServicerContext) -> pb.RegisterReply:
        req: pb.RegisterRequest = self._request(request, context)
        sid = self.state.ids.get(req.switch_name)
        if sid is None:
            self.rejections.reject("unknown_switch", context.peer(),
                                   f"switch name {req.switch_name[:64]!r}")
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown switch {req.switch_name[:64]!r}")
        params = {}
        if req.HasField("params"):
            p = req.params
            params = {"epsilon": p.epsilon, "T": p.T, "s": p.s, "seed": p.seed,
                      "overflow_policy": p.overflow_policy, "epoch_us": p.epoch_us,
                      "stages": list(p.stages)}
        op = self.state.submit(_Op("register", sid, params))
        if op.error is not None:
            context.abort(grpc.StatusCode.INTERNAL, "register failed")
        if op.result[1] is not None:
            self.rejections.reject("bad_params", context.peer(), op.result[1])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, op.result[1])
        log.info("switch %s registered (id %d) from %s", req.switch_name, sid, context.peer())
        return pb.RegisterReply(switch_id=sid, acked_seq=op.result[0], R=self.state.R)

    def Hello(self, request: Any, context: grpc.ServicerContext) -> pb.HelloReply:
        req: pb.HelloRequest = self._request(request, context)
        self._check_switch(context, req.switch_id)
        if req.group >= N_GROUPS:
            self._malformed(context, f"group {req.group} >= {N_GROUPS}")
        op = self.state.submit(_Op("hello", req.switch_id, (req.group, req.seq)))
        if op.error is not None:
            context.abort(grpc.StatusCode.INTERNAL, "hello failed")
        return pb.HelloReply(l_g=op.result, group=req.group, seq=req.seq)

    def Subscribe(self, request: Any, context: grpc.ServicerContext) -> Iterator[pb.LgUpdate]:
        req: pb.SubscribeRequest = self._request(request, context)
        sid = self._check_switch(context, req.switch_id)
        q: queue.Queue[pb.LgUpdate | None] = queue.Queue()
        self.state.submit(_Op("subscribe", sid, q))
        try:
            yield from drain(q, lambda: context.is_active() and not self.stopping.is_set())
        finally:
            self.state.submit(_Op("unsubscribe", sid, q))

    def Hellos(self, request_iterator: Iterator[Any],
               context: grpc.ServicerContext) -> Iterator[pb.HelloAnswers]:
        self._authenticate(context)
        # Handled in this thread, batch by batch: no hand-off between threads per hello
        # (what a hello costs is mostly thread wake-ups and messages, not the rule).
        for batch in request_iterator:
            if isinstance(batch, _Malformed):
                self._malformed(context, batch.error)
            if not 0 < len(batch.hellos) <= MAX_BATCH:
                self._malformed(context, f"batch of {len(batch.hellos)} hellos")
            for req in batch.hellos:
                self._check_switch(context, req.switch_id)
                if req.group >= N_GROUPS:
                    self._malformed(context, f"group {req.group} >= {N_GROUPS}")
            op = self.state.submit(_Op("hellos", 0, [(h.switch_id, h.group, h.seq)
                                                     for h in batch.hellos]))
            if op.error is not None:
                context.abort(grpc.StatusCode.INTERNAL, "hello failed")
            yield pb.HelloAnswers(answers=[
                pb.HelloReply(l_g=l_g, group=h.group, seq=h.seq)
                for h, l_g in zip(batch.hellos, op.result, strict=True)])

    def Reports(self, request_iterator: Iterator[Any],
                context: grpc.ServicerContext) -> Iterator[pb.ReportAck]:
        self._authenticate(context)
        n_switches = len(self.state.switch_names)
        for item in request_iterator:
            if isinstance(item, _Malformed):
                self._malformed(context, item.error)
            batch, raw = item
            problem = _batch_problem(batch, n_switches)
            if problem is not None:
                kind, detail = problem
                if kind == "unknown_switch":
                    self._check_switch(context, batch.switch_id)
                self._malformed(context, detail)
            op = self.state.submit(_Op("reports", batch.switch_id, batch, raw,
                                       time.time_ns()))
            if op.error is not None:
                context.abort(grpc.StatusCode.INTERNAL, "report batch failed")
            accepted, duplicates = op.result
            yield pb.ReportAck(switch_id=op.switch,
                               acked_seq=self.state.switches[op.switch].acked_seq,
                               accepted=accepted, duplicates=duplicates)

    def Query(self, request: Any, context: grpc.ServicerContext) -> pb.QueryReply:
        req: pb.QueryRequest = self._request(request, context)
        reply = pb.QueryReply(params_json=json.dumps(self.params()))
        epoch = req.epoch if req.HasField("epoch") else None
        if req.elephants or epoch is not None:
            for e in self.state.elephants(epoch):
                reply.elephants.add(src=e["src"], dst=e["dst"], sport=e["sport"],
                                    dport=e["dport"], proto=e["proto"], reports=e["reports"],
                                    detected_ns=e["detected_ns"] or 0, epoch=e["epoch"],
                                    early=e["early"] is not False)  # None: a schema-2 row
            for x in self.state.epochs(epoch):
                reply.epochs.add(epoch=x["epoch"], open=x["open"], reports=x["reports"],
                                 untracked_reports=x["untracked_reports"],
                                 late_reports=x["late_reports"], flows=x["flows"],
                                 elephants=x["elephants"], closed_ns=x["closed_ns"])
        for s in self.state.switch_counters():
            reply.switches.add(name=s["name"], switch_id=s["switch_id"],
                               registered=s["registered"], subscribed=s["subscribed"],
                               hellos=s["hellos"], groups=s["groups"], reports=s["reports"],
                               duplicates=s["duplicates"], batches=s["batches"],
                               acked_seq=s["acked_seq"], pulls=s["pulls"],
                               pull_messages=s["pull_messages"],
                               pull_timeouts=s["pull_timeouts"])
        for k, v in self.counters().items():
            reply.counters[k] = int(v)
        return reply

    def Flush(self, request: Any, context: grpc.ServicerContext) -> pb.FlushReply:
        self._request(request, context)
        closed = self.flush()
        if closed is None:
            context.abort(grpc.StatusCode.INTERNAL, "flush failed")
        log.info("flush: closed epochs %s", closed)
        return pb.FlushReply(closed=closed)

    def flush(self) -> list[int] | None:
        """Close every open epoch; with confirm, each pulled first (an epoch a report
        opened meanwhile is pulled after, before this returns). None if it failed."""
        if self.puller is not None:
            self.puller.pull_all()
        op = self.state.submit(_Op("flush", 0, recv_ns=time.time_ns()))
        if self.puller is not None:
            self.puller.pull_all()
        return None if op.error is not None else op.result

    def Pulls(self, request_iterator: Iterator[Any],
              context: grpc.ServicerContext) -> Iterator[pb.PullRequest]:
        """A controller's pull stream: its first message names its switch; then requests go
        out as pulls need them and answers come back (read by a thread of their own)."""
        self._authenticate(context)
        first = next(request_iterator, None)
        if first is None:
            return
        if isinstance(first, _Malformed):
            self._malformed(context, first.error)
        sid = self._check_switch(context, first.switch_id)
        if self.puller is None:  # no confirm: hold the stream open, idle
            while context.is_active() and not self.stopping.wait(0.5):
                pass
            return
        outbox = self.puller.attach(sid)
        peer = context.peer()

        def read_answers() -> None:
            try:
                for answer in request_iterator:
                    problem = ("not a PullAnswer" if isinstance(answer, _Malformed)
                               else self.puller.answer(sid, answer))
                    if problem is not None:
                        self.rejections.reject("malformed", peer, f"pull answer: {problem}")
            except grpc.RpcError:
                pass  # the stream ended

        threading.Thread(target=read_answers, daemon=True, name=f"pull-answers-{sid}").start()
        try:
            yield from drain(outbox, lambda: context.is_active() and not self.stopping.is_set())
        finally:
            self.puller.detach(sid, outbox)

    # ---------------------------------------------------------------- results

    def counters(self) -> dict[str, int]:
        with self.state.lock:
            out = dict(self.state.counters)
            out["subscribers"] = len(self.state.subscribers)
        out.update({f"rejected_{k}": v for k, v in self.rejections.counts.items()})
        for k in ("token_missing", "token_wrong", "malformed", "unknown_switch"):
            out.setdefault(f"rejected_{k}", 0)
        out.update(self.state.memory())
        return out

    def params(self) -> dict[str, Any]:
        st = self.state
        return {"R": st.R, "switches": st.switch_names,
                "max_flows": st.max_flows, "journal": st.journal.path,
                "epoch_ms": st.epoch_ms, "epoch_results": st.epoch_dir,
                "confirm": st.confirm_reports is not None,
                "confirm_reports": st.confirm_reports, "T": st.T,
                "confirm_grace_ms": st.confirm_grace_ms,
                "confirm_timeout_ms": st.confirm_timeout_ms,
                "pull_flows_per_message": PULL_FLOWS_PER_MESSAGE}

    def results(self) -> dict[str, Any]:
        return {
            "herd_version": __version__,
            "written_ns": time.time_ns(),
            "params": self.params(),
            "counters": self.counters(),
            "switches": self.state.switch_counters(),
            "groups": {str(g): lg for g, lg in self.state.groups().items()},
            "epochs": self.state.epochs(),
            "elephants": self.state.elephants(),
        }

    def handler(self) -> grpc.GenericRpcHandler:
        s = self
        handlers = {
            "Register": grpc.unary_unary_rpc_method_handler(
                s.Register, _deserializer(pb.RegisterRequest), pb.RegisterReply.SerializeToString),
            "Hello": grpc.unary_unary_rpc_method_handler(
                s.Hello, _deserializer(pb.HelloRequest), pb.HelloReply.SerializeToString),
            "Hellos": grpc.stream_stream_rpc_method_handler(
                s.Hellos, _deserializer(pb.HelloBatch), pb.HelloAnswers.SerializeToString),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                s.Subscribe, _deserializer(pb.SubscribeRequest), pb.LgUpdate.SerializeToString),
            "Reports": grpc.stream_stream_rpc_method_handler(
                s.Reports, _deserializer(pb.ReportBatch, keep_raw=True),
                pb.ReportAck.SerializeToString),
            "Query": grpc.unary_unary_rpc_method_handler(
                s.Query, _deserializer(pb.QueryRequest), pb.QueryReply.SerializeToString),
            "Flush": grpc.unary_unary_rpc_method_handler(
                s.Flush, _deserializer(pb.FlushRequest), pb.FlushReply.SerializeToString),
            "Pulls": grpc.stream_stream_rpc_method_handler(
                s.Pulls, _deserializer(pb.PullAnswer), pb.PullRequest.SerializeToString),
        }
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _batch_problem(batch: pb.ReportBatch, switches: int) -> tuple[str, str] | None:
    """Why a batch is rejected, None if it is well formed."""
    if not 0 <= batch.switch_id < switches:
        return ("unknown_switch", f"switch id {batch.switch_id}")
    n = len(batch.seq)
    if n == 0 or n > MAX_BATCH:
        return ("malformed", f"batch of {n} reports (1..{MAX_BATCH})")
    for name in ("ts_ns", "src", "dst", "sport", "dport", "proto", "count", "epoch"):
        m = len(getattr(batch, name))
        if m != n and not (name == "epoch" and m == 0):  # no epochs: all in epoch 0
            return ("malformed", f"column {name} has {m} values, seq {n}")
    seq = np.asarray(batch.seq, dtype=np.uint64)
    if seq[0] == 0 or (n > 1 and not np.all(seq[1:] > seq[:-1])):
        return ("malformed", "sequence numbers not positive and strictly increasing")
    if max(batch.sport) > 0xFFFF or max(batch.dport) > 0xFFFF or max(batch.proto) > 0xFF:
        return ("malformed", "port or protocol out of range")
    return None


# -------------------------------------------------------------------- process


def switch_names(args: argparse.Namespace) -> list[str]:
    if args.switches:
        names = [n.strip() for n in args.switches.split(",") if n.strip()]
    else:
        names = [f"s{i + 1}" for i in range(args.k)]
    if not names:
        raise HerdInputError("no switches: give --k or --switches")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default="127.0.0.1:50051",
                   help="address to bind, host:port (default loopback 127.0.0.1:50051; port 0 "
                   "picks a free one, see --ready-file)")
    p.add_argument("--k", type=int, default=10, help="switches s1..sk (default 10)")
    p.add_argument("--switches", help="comma-separated switch names instead of s1..sk")
    r = p.add_mutually_exclusive_group()
    r.add_argument("--R", type=int, help="reports that make an elephant")
    r.add_argument("--epsilon", type=float, help="R = round(1/epsilon) (default epsilon 0.1)")
    p.add_argument("--token-file", help=f"the shared token (else ${'HERD_TOKEN'})")
    p.add_argument("--no-auth", action="store_true",
                   help="accept every client (tests on a private machine only)")
    add_tls_arguments(p, server=True)
    p.add_argument("--journal", help="SQLite journal (default: coordinator-journal.sqlite in "
                   "the directory of --results, else the current directory)")
    p.add_argument("--fsync", action="store_true", help="flush every commit to disk")
    p.add_argument("--results", default="coordinator-results.json",
                   help="JSON written atomically on SIGINT/SIGTERM")
    p.add_argument("--max-flows", type=int, default=DEFAULT_MAX_FLOWS,
                   help="flows tracked at most over the open epochs (memory bound; default "
                   "2,000,000)")
    p.add_argument("--epoch-results", metavar="DIR",
                   help="each closed epoch's elephants go to DIR/epoch-<e>.json (default: "
                   "<results without .json>-epochs beside --results)")
    p.add_argument("--epoch-ms", type=float, default=0.0, metavar="W",
                   help="the epoch length of the run in trace ms: recorded in the results "
                   "only (the switches' clocks make the epochs; 0: one epoch)")
    add_confirm_arguments(p)
    p.add_argument("--T", type=int, help="with --confirm: the heavy-hitter threshold (default: "
                   "as the controllers register it; one that registers another is refused)")
    p.add_argument("--confirm-grace-ms", type=float, metavar="MS",
                   help="with --confirm: wait this long after an epoch is seen over before "
                   "pulling it, for its last reports (default W/4, W the switches' epoch)")
    p.add_argument("--confirm-timeout-ms", type=float, default=DEFAULT_PULL_TIMEOUT_MS,
                   metavar="MS", help="with --confirm: a switch not answering a pull within "
                   "this counts as unknown for its candidates (default %(default)g)")
    p.add_argument("--workers", type=int, default=0,
                   help="gRPC worker threads (default 12 per switch + 16)")
    p.add_argument("--ready-file", help="write the bound host:port here once serving")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="also serve the live view (web page and JSON API, herd.services.web) "
                   "here; PORT alone binds loopback, port 0 picks a free one (default: off; "
                   "the same token, and --tls-cert/--tls-key, as gRPC)")
    p.add_argument("--http-ready-file", help="with --http: write the live view's URL here once "
                   "serving")
    p.add_argument("--log-level", default="INFO")


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "coordinator")
    started = time.monotonic()  # the live view's uptime
    # Every answer crosses threads (gRPC poller, handler, journal writer): hand the GIL
    # over sooner than the default 5 ms so that a busy thread does not delay them.
    sys.setswitchinterval(0.0005)
    names = switch_names(args)
    R = args.R if args.R is not None else max(1, round(1 / (args.epsilon or 0.1)))
    if R < 1:
        raise HerdInputError(f"R must be >= 1, got {R}")
    token = None if args.no_auth else load_token(args.token_file)
    if args.no_auth:
        log.warning("--no-auth: every client is accepted")
    # TLS files and the loopback rule are checked before anything is opened or bound.
    credentials = grpc_server_credentials(args)
    check_bind(f"--listen {args.listen}", address_host(args.listen), credentials is not None,
               args.insecure)
    http_ssl = None
    if args.http:
        from herd.services.web import parse_http_address

        http_host, http_port = parse_http_address(args.http)
        http_ssl = server_ssl_context(args)
        check_bind(f"--http {args.http}", http_host, http_ssl is not None, args.insecure)
    journal_path = args.journal or os.path.join(
        os.path.dirname(os.path.abspath(args.results)), "coordinator-journal.sqlite")
    if args.max_flows < 1:
        raise HerdInputError(f"--max-flows {args.max_flows}: must be >= 1")
    if not args.epoch_ms >= 0:  # also refuses NaN
        raise HerdInputError(f"--epoch-ms {args.epoch_ms}: must be >= 0")
    epoch_dir = args.epoch_results or (os.path.splitext(os.path.abspath(args.results))[0]
                                       + "-epochs")
    if args.confirm_grace_ms is not None and not args.confirm_grace_ms >= 0:
        raise HerdInputError(f"--confirm-grace-ms {args.confirm_grace_ms}: must be >= 0")
    if not args.confirm_timeout_ms > 0:
        raise HerdInputError(f"--confirm-timeout-ms {args.confirm_timeout_ms}: must be > 0")
    journal = Journal(journal_path, args.fsync)
    state = CoordinatorState(names, R, journal, args.max_flows, epoch_dir, args.epoch_ms,
                             args.confirm_reports if args.confirm else None, args.T,
                             args.confirm_grace_ms, args.confirm_timeout_ms)
    journal.start_checkpoints()
    service = CoordinatorService(state, token)
    # Per controller: two streams and up to 8 hellos in flight, each holding a thread.
    workers = args.workers or 12 * len(names) + 16
    # Streams hold a worker each; cap the concurrent RPCs so a flood of connections is
    # refused (RESOURCE_EXHAUSTED) instead of queueing without bound.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         maximum_concurrent_rpcs=workers,
                         options=[("grpc.max_receive_message_length", 16 << 20)])
    server.add_generic_rpc_handlers((service.handler(),))
    live = None
    if args.http:
        from herd.services.web import LiveView

        # Up before gRPC's ready file: whoever waits for that finds the URL written too.
        live = LiveView(state, token, http_host, http_port, http_ssl, service.rejections,
                        started)
        url = live.start()
        log.info("live view on %s%s", url, "" if token is None else
                 " (Authorization: Bearer <the coordinator's token>)")
        if args.http_ready_file:
            from herd.services.common import atomic_write_text

            atomic_write_text(args.http_ready_file, url + "\n")
    host = args.listen.rsplit(":", 1)[0]
    if credentials is not None:
        port = server.add_secure_port(args.listen, credentials)
    else:
        port = server.add_insecure_port(args.listen)
    if port == 0:
        raise HerdInputError(f"--listen {args.listen}: cannot bind")
    server.start()
    bound = f"{host}:{port}"
    log.info("coordinator serving on %s%s for %d switches, R=%d, journal %s%s", bound,
             " (TLS)" if credentials is not None else "", len(names), R, journal_path,
             f", confirm C={args.confirm_reports}" if args.confirm else "")
    if args.ready_file:
        from herd.services.common import atomic_write_text

        atomic_write_text(args.ready_file, bound + "\n")

    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    log.info("stopping: writing %s", args.results)
    if service.puller is not None:  # while the controllers can still answer
        service.puller.pull_all()
    service.stopping.set()
    server.stop(grace=1.0).wait(5)
    # Shutdown closes the open epochs: their elephants are final and written out (with
    # confirm, any epoch opened since the pulls above is pulled now: unanswered, unknown).
    state.submit(_Op("flush", 0, recv_ns=time.time_ns()))
    if service.puller is not None:
        service.puller.pull_all()
    atomic_write_json(args.results, service.results())
    if live is not None:  # after the results: the view showed the final elephants
        live.stop()
    state.stop()
    journal.close()
    log.info("results written to %s", args.results)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="herd coordinator", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except HerdInputError as e:
        print(f"herd coordinator: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
