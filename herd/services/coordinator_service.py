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
from herd.coordinator import Coordinator, EpochTally
from herd.errors import HerdInputError
from herd.services.common import (
    TOKEN_METADATA_KEY,
    Rejections,
    atomic_write_json,
    load_token,
    rss_bytes,
    setup_logging,
)
from herd.services.rpc import herd_pb2 as pb
from herd.switch import N_GROUPS

log = logging.getLogger("herd.coordinator")

SERVICE = "herd.v1.Coordinator"
MAX_BATCH = 65536  # reports in one batch; more is a malformed batch
DEFAULT_MAX_FLOWS = 2_000_000
SCHEMA_VERSION = 2  # 2: report epochs, closed epochs and their elephants


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
                proto INTEGER NOT NULL, reports INTEGER NOT NULL, detected_ns INTEGER);
            CREATE INDEX IF NOT EXISTS elephants_by_epoch ON elephants (epoch);
            """)

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
            "INSERT INTO elephants (epoch, src, dst, sport, dport, proto, reports, detected_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(x["epoch"], x["src"], x["dst"], x["sport"], x["dport"], x["proto"],
              x["reports"], x["detected_ns"]) for x in elephants])

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
             "reports": r, "detected_ns": t}
            for e, s, d, sp, dp, p, r, t in self.db.execute(
                "SELECT epoch, src, dst, sport, dport, proto, reports, detected_ns FROM "
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
                 epoch_ms: float = 0.0) -> None:
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
        self.counters: dict[str, int] = {
            "hello_rpcs": 0, "memberships": 0, "l_g_pushes": 0, "report_batches": 0,
            "reports": 0, "duplicates": 0, "untracked_reports": 0, "late_reports": 0,
            "epochs_closed": 0, "flushes": 0, "recovered_reports": 0,
            "recovered_memberships": 0, "journal_commits": 0, "ops": 0, "op_wait_ns": 0,
            "commit_busy_ns": 0,
        }
        self.journal = journal
        self.lock = threading.Lock()
        self.subscribers: dict[int, queue.Queue[pb.LgUpdate | None]] = {}
        self._queue: list[_Op] = []
        self._queue_cv = threading.Condition()  # guards _queue and _committing
        self._committing = False
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
            journal.commit()
            return
        if version != SCHEMA_VERSION:
            raise HerdInputError(f"{journal.path}: journal schema {version}, expected "
                                 f"{SCHEMA_VERSION}; move it away to start afresh")
        for key, mine in (("switches", self.switch_names), ("R", self.R),
                          ("max_flows", max_flows)):
            theirs = journal.get_meta(key)
            if theirs != mine:
                raise HerdInputError(
                    f"{journal.path}: the journal was written with {key}={theirs}, this run has "
                    f"{key}={mine}; use the same setting or another --journal")
        t = time.perf_counter()
        for switch, g, seq in journal.hellos():
            self._apply_hello(switch, g, seq, journal_it=False)
            self.counters["recovered_memberships"] += 1
        for switch, recv_ns, raw in journal.batches():
            if switch < 0:
                self._flush(recv_ns, journal_it=False)
                continue
            batch = pb.ReportBatch.FromString(raw)
            accepted, _ = self._apply_reports(switch, batch, raw, recv_ns, journal_it=False)
            self.counters["recovered_reports"] += accepted
        # A close committed just before a kill may have missed its file: write what is missing.
        self._write_epoch_files()
        for name in self.switch_names:
            params = journal.get_meta(f"controller:{name}")
            if params:
                self.switches[self.ids[name]].params = params
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
        outcome = self.coordinator.on_reports(
            np.asarray(batch.src, np.uint32)[take], np.asarray(batch.dst, np.uint32)[take],
            np.asarray(batch.sport, np.uint32)[take], np.asarray(batch.dport, np.uint32)[take],
            np.asarray(batch.proto, np.uint32)[take], epoch, np.where(ts > 0, ts, recv_ns))
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
        return accepted, duplicates

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
        there), their files queued for after the commit."""
        for tally in tallies:
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
            sw.registered = True
            if op.payload and op.payload != sw.params:
                sw.params = op.payload
                self.journal.set_meta(f"controller:{sw.name}", op.payload)
            op.result = (sw.acked_seq,)
        else:
            raise ValueError(f"unknown op {op.kind}")

    # ---------------------------------------------------------------- reads

    def elephants(self, epoch: int | None = None) -> list[dict[str, Any]]:
        """The elephants of every epoch (or of one): the closed epochs' from the journal,
        then the open ones'."""
        with self.lock:
            return [*self.journal.closed_elephants(epoch), *self.coordinator.elephants(epoch)]

    def epochs(self, epoch: int | None = None) -> list[dict[str, Any]]:
        """A summary of every epoch known (or of one): closed ones, then open ones."""
        with self.lock:
            out = self.journal.closed_epochs(epoch)
            for e, t in sorted(self.coordinator.open.items()):
                if epoch is None or e == epoch:
                    out.append({"epoch": e, "open": True, "closed_ns": 0,
                                "reports": t.reports, "untracked_reports": t.untracked,
                                "late_reports": 0, "flows": t.flows.n,
                                "elephants": int(np.count_nonzero(
                                    t.report_count[: t.flows.n] >= self.R))})
            return out

    def switch_counters(self) -> list[dict[str, Any]]:
        with self.lock:
            groups = self.coordinator.members.sum(axis=0)
            return [
                {"name": s.name, "switch_id": i, "registered": s.registered,
                 "subscribed": i in self.subscribers, "hellos": s.hellos,
                 "groups": int(groups[i]), "reports": s.reports, "duplicates": s.duplicates,
                 "batches": s.batches, "acked_seq": s.acked_seq, "params": s.params}
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
                "open_epochs": len(c.open),
                "epochs_seen": c.newest + 1,  # the highest epoch a report carried, + 1
                "flows": c.open_flows(),
                "max_flows": self.max_flows,
                "flow_table_bytes": c.nbytes(),
                "group_state_bytes": c.members.nbytes + c.member_count.nbytes + c.l_g.nbytes,
                "rss_bytes": rss_bytes(),
            }


class CoordinatorService:
    """The gRPC handlers. Every handler authenticates, validates, then hands the work to the
    state's writer thread; rejections are counted and logged once per peer and kind."""

    def __init__(self, state: CoordinatorState, token: str | None) -> None:
        self.state = state
        self._token = token.encode() if token else None
        self.rejections = Rejections(log)
        self.stopping = threading.Event()

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
                      "overflow_policy": p.overflow_policy, "epoch_us": p.epoch_us}
        op = self.state.submit(_Op("register", sid, params))
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
            while context.is_active() and not self.stopping.is_set():
                try:
                    update = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if update is None:
                    return
                yield update
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
                                    detected_ns=e["detected_ns"] or 0, epoch=e["epoch"])
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
                               acked_seq=s["acked_seq"])
        for k, v in self.counters().items():
            reply.counters[k] = int(v)
        return reply

    def Flush(self, request: Any, context: grpc.ServicerContext) -> pb.FlushReply:
        self._request(request, context)
        op = self.state.submit(_Op("flush", 0, recv_ns=time.time_ns()))
        if op.error is not None:
            context.abort(grpc.StatusCode.INTERNAL, "flush failed")
        log.info("flush: closed epochs %s", op.result)
        return pb.FlushReply(closed=op.result)

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
        return {"R": self.state.R, "switches": self.state.switch_names,
                "max_flows": self.state.max_flows, "journal": self.state.journal.path,
                "epoch_ms": self.state.epoch_ms, "epoch_results": self.state.epoch_dir}

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
    p.add_argument("--workers", type=int, default=0,
                   help="gRPC worker threads (default 12 per switch + 16)")
    p.add_argument("--ready-file", help="write the bound host:port here once serving")
    p.add_argument("--log-level", default="INFO")


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, "coordinator")
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
    journal_path = args.journal or os.path.join(
        os.path.dirname(os.path.abspath(args.results)), "coordinator-journal.sqlite")
    if args.max_flows < 1:
        raise HerdInputError(f"--max-flows {args.max_flows}: must be >= 1")
    if not args.epoch_ms >= 0:  # also refuses NaN
        raise HerdInputError(f"--epoch-ms {args.epoch_ms}: must be >= 0")
    epoch_dir = args.epoch_results or (os.path.splitext(os.path.abspath(args.results))[0]
                                       + "-epochs")
    journal = Journal(journal_path, args.fsync)
    state = CoordinatorState(names, R, journal, args.max_flows, epoch_dir, args.epoch_ms)
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
    host = args.listen.rsplit(":", 1)[0]
    port = server.add_insecure_port(args.listen)
    if port == 0:
        raise HerdInputError(f"--listen {args.listen}: cannot bind")
    if host not in ("127.0.0.1", "localhost", "[::1]", "::1"):
        log.warning("listening on %s: the token travels unencrypted beyond loopback", host)
    server.start()
    bound = f"{host}:{port}"
    log.info("coordinator serving on %s for %d switches, R=%d, journal %s", bound, len(names),
             R, journal_path)
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
    service.stopping.set()
    server.stop(grace=1.0).wait(5)
    # Shutdown closes the open epochs: their elephants are final and written out.
    state.submit(_Op("flush", 0, recv_ns=time.time_ns()))
    atomic_write_json(args.results, service.results())
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
