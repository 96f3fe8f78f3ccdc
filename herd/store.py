"""The results store: every run of a herd command in one SQLite database (issue 12).

One row per run in ``runs`` (kind, status, UTC start and end, herd version, host, pid,
argv, parent run, trace path and SHA-256, parameters and metrics as JSON), its per-epoch
rows in ``epochs`` and its detected elephants in ``elephants``. Deleting a run deletes its
epochs, elephants and child runs (foreign keys, ON DELETE CASCADE).

Kinds: ``simulate``; ``sweep`` (parent) and ``sweep_row`` (child; its params carry the
swept parameter's name under ``"swept"``, e.g. ``{"swept": "epsilon", "epsilon": 0.1,
...}``, and its metrics the sweep row's columns: ``f1score``, ``precision``, ``recall``,
``messages``, ...); ``tune`` and ``tune_point``; ``replay``; ``testbed`` and
``testbed_row``; ``figures``. Metrics are best flat (name -> number or string): ``herd runs
list --where`` looks names up in metrics, then in params.

Reliability: WAL mode (readers never block the writer), a busy timeout, and BEGIN
IMMEDIATE retried while the database is locked, so several processes can write at once.
A run's results go in with its final status in one transaction: a run killed mid-way
stays 'running' with nothing of its results written, and the next open of the store marks
it 'aborted' ("process gone") once its process is gone. One connection per process: a
child made by fork opens its own (Recorder does so by itself).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from herd import __version__
from herd.errors import HerdInputError

DB_ENV = "HERD_DB"
DEFAULT_BUSY_TIMEOUT_S = 30.0
STATUSES = ("running", "done", "aborted", "failed")
SQLITE_MAGIC = b"SQLite format 3\x00"

# Forward migrations, in order: MIGRATIONS[i] takes a database from version i to i + 1.
# Migration 1 creates the schema; later ones only ever add (a release never edits one).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('running', 'done', 'aborted', 'failed')),
            started_utc TEXT NOT NULL,
            ended_utc TEXT,
            herd_version TEXT NOT NULL,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            argv TEXT,
            parent_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
            trace_path TEXT,
            trace_sha256 TEXT,
            params TEXT NOT NULL,
            metrics TEXT,
            reason TEXT)""",
        """CREATE TABLE epochs (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            epoch INTEGER NOT NULL,
            metrics TEXT NOT NULL,
            PRIMARY KEY (run_id, epoch))""",
        """CREATE TABLE elephants (
            run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            epoch INTEGER,
            src INTEGER NOT NULL,
            dst INTEGER NOT NULL,
            sport INTEGER NOT NULL,
            dport INTEGER NOT NULL,
            proto INTEGER NOT NULL,
            detected_ns INTEGER,
            reports INTEGER,
            true_positive INTEGER)""",
        "CREATE INDEX elephants_run ON elephants (run_id, reports)",
        "CREATE INDEX runs_parent ON runs (parent_id)",
    ),
    (
        # 2: what `herd runs list` filters on most (kind and time, trace, still running).
        "CREATE INDEX runs_kind_started ON runs (kind, started_utc)",
        "CREATE INDEX runs_trace ON runs (trace_sha256)",
        "CREATE INDEX runs_status ON runs (status)",
    ),
)
SCHEMA_VERSION: int = len(MIGRATIONS)

# Names that mean the same in different kinds of run: a simulation's metrics say f1, a
# sweep row's (the sweep CSV's columns) f1score; a sweep's parameter may be
# sampling_probability, the parameters' field is s.
NAME_ALIASES: dict[str, tuple[str, ...]] = {
    "f1": ("f1score",), "f1score": ("f1",), "s": ("sampling_probability",),
    "sampling_probability": ("s",),
}


class StoreError(HerdInputError):
    """A results database that cannot be used: one line naming the file and the problem."""


def default_db_path() -> Path:
    """$HERD_DB, else $XDG_DATA_HOME/herd/runs.sqlite (XDG's default: ~/.local/share)."""
    env = os.environ.get(DB_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec: a relative $XDG_DATA_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "herd" / "runs.sqlite"


def add_db_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--db FILE and --no-db: where this run is recorded, or not at all."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--db", metavar="FILE", help=f"the results database (default ${DB_ENV}, "
                   "else $XDG_DATA_HOME/herd/runs.sqlite)")
    g.add_argument("--no-db", dest="no_db", action="store_true",
                   help="do not record this run in the results database")


@dataclass
class Elephant:
    """One detected elephant: its 5-tuple (IPv4 addresses as uint32), the epoch where there
    are epochs, when it was detected, its reports and whether it is a true heavy hitter."""

    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    epoch: int | None = None
    detected_ns: int | None = None
    reports: int | None = None
    true_positive: bool | None = None


@dataclass
class Run:
    """A row of ``runs``, its JSON columns decoded."""

    id: int
    kind: str
    status: str
    started_utc: str
    ended_utc: str | None
    herd_version: str
    host: str
    pid: int
    argv: list[str] | None
    parent_id: int | None
    trace_path: str | None
    trace_sha256: str | None
    params: dict[str, Any]
    metrics: dict[str, Any] | None
    reason: str | None
    children: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        return d


def utc_now() -> str:
    """ISO-8601 UTC with a fixed width, so that text order is time order."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _clean(v: Any) -> Any:
    """JSON-ready: numpy scalars and arrays as Python, NaN and infinities as null (SQLite's
    JSON functions reject them), tuples as lists."""
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, bool | int | str) or v is None:
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    tolist = getattr(v, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return _clean(tolist())
    return str(v)


def _json(v: Any) -> str:
    return json.dumps(_clean(v), allow_nan=False, separators=(",", ":"))


def _pid_alive(pid: int, started_utc: str) -> bool:
    """Whether the process that started a run at ``started_utc`` still runs on this host.
    A pid the kernel has since given to a process that started later is not it."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process, alive
        pass
    try:
        # Linux: the process's start (clock ticks after boot) against the run's start.
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        proc_start = boot + ticks / os.sysconf("SC_CLK_TCK")
        run_start = datetime.strptime(started_utc, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC).timestamp()
        # btime is whole seconds: allow for its rounding.
        return proc_start <= run_start + 2.0
    except (OSError, ValueError, IndexError, StopIteration):
        return True  # cannot tell: leave the run alone


def _describe(e: BaseException) -> str:
    """SQLite's and the OS's errors in words a user can act on."""
    text = str(e)
    low = text.lower()
    if "locked" in low or "busy" in low:
        return "the database is locked by another process"
    if "readonly" in low or "read-only" in low:
        return "the database is read-only"
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return f"not an SQLite database, or a corrupt one ({text})"
    if "unable to open" in low:
        return "cannot open the database (does its directory exist and is it writable?)"
    if "disk i/o" in low or "full" in low:
        return f"cannot write the database ({text})"
    return text


class RunStore:
    """One connection to a results database. Opening creates the file (and its directory),
    turns WAL on, migrates the schema forward and marks runs whose process is gone as
    aborted; any problem is a StoreError naming the file."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float =
                 DEFAULT_BUSY_TIMEOUT_S, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._check_file(create)
        try:
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys = ON")
            mode = self._retry(lambda: self._conn.execute(  # type: ignore[union-attr]
                "PRAGMA journal_mode = WAL").fetchone())
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreError(f"{self.path}: cannot turn on WAL mode (journal mode "
                                 f"{mode[0] if mode else None!r}; a network file system?)")
            # A run recorded survives a power cut too (NORMAL: only a crash of the program);
            # an fsync per commit is nothing beside a run's own length.
            self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
            self._reap()
        except BaseException as e:
            self._close_quietly()
            if isinstance(e, StoreError):
                raise
            if isinstance(e, sqlite3.Error | OSError):
                raise StoreError(f"{self.path}: {_describe(e)}") from None
            raise

    # ------------------------------------------------------------ opening

    def _check_file(self, create: bool) -> None:
        p = self.path
        if p.is_dir():
            raise StoreError(f"{p}: is a directory, not a results database")
        if p.exists():
            try:
                with open(p, "rb") as f:
                    head = f.read(len(SQLITE_MAGIC))
            except OSError as e:
                raise StoreError(f"{p}: cannot read ({e.strerror})") from None
            if head and head != SQLITE_MAGIC:
                raise StoreError(f"{p}: not an SQLite database (a corrupt file, or another "
                                 "kind of file)")
            if not os.access(p, os.W_OK):
                raise StoreError(f"{p}: the database is read-only")
        elif not create:
            raise StoreError(f"{p}: no results database here (commands record their runs "
                             f"there; --db or ${DB_ENV} names another)")
        else:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{p}: cannot create its directory ({e.strerror})") from None
        # WAL keeps its -wal and -shm files beside the database.
        if not os.access(p.parent, os.W_OK | os.X_OK):
            raise StoreError(f"{p}: its directory {p.parent} is read-only (SQLite's WAL "
                             "files go there)")

    def _retry(self, op: Any) -> Any:
        """``op()`` again while SQLite says busy or locked without waiting (it does so when
        waiting could deadlock, or while another connection recovers the WAL), up to the
        busy timeout."""
        deadline = time.monotonic() + self.busy_timeout_s
        pause = 0.005
        while True:
            try:
                return op()
            except sqlite3.OperationalError as e:
                low = str(e).lower()
                if ("locked" not in low and "busy" not in low) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE, retried while locked): all or nothing."""
        with self._lock:
            conn = self._connection()
            try:
                self._retry(lambda: conn.execute("BEGIN IMMEDIATE"))
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {_describe(e)}") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"{self.path}: {_describe(e)}") from None
                raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: the store is closed")
        return self._conn

    def _migrate(self) -> None:
        with self._write() as conn:
            version = self._version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: written by a newer herd (schema {version}; "
                                 f"this herd {__version__} knows up to {SCHEMA_VERSION})")
            for i in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[i]:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                             "('schema_version', ?)", (str(SCHEMA_VERSION),))
                if version == 0:
                    conn.execute("INSERT INTO meta (key, value) VALUES ('created_utc', ?)",
                                 (utc_now(),))

    def _version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if not tables:
            return 0  # a new (empty) database
        if "meta" not in tables or "runs" not in tables:
            raise StoreError(f"{self.path}: an SQLite database, but not a herd results "
                             f"database (tables: {', '.join(sorted(tables))})")
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        try:
            return int(row[0])
        except (TypeError, ValueError):
            raise StoreError(f"{self.path}: meta.schema_version is "
                             f"{row[0] if row else 'missing'!r}, not a number") from None

    def _reap(self) -> int:
        """Mark this host's 'running' runs whose process is gone as aborted. Other hosts'
        runs are left alone: their processes cannot be seen from here."""
        host = socket.gethostname()
        with self._lock:
            rows = self._connection().execute(
                "SELECT id, pid, started_utc FROM runs WHERE status = 'running' AND host = ?",
                (host,)).fetchall()
        gone = [r[0] for r in rows if not _pid_alive(r[1], r[2])]
        if gone:
            with self._write() as conn:
                conn.executemany(
                    "UPDATE runs SET status = 'aborted', reason = 'process gone', "
                    "ended_utc = ? WHERE id = ? AND status = 'running'",
                    [(utc_now(), i) for i in gone])
        return len(gone)

    # ------------------------------------------------------------ writing

    def begin_run(self, kind: str, params: Mapping[str, Any], *, trace_path: str | None = None,
                  trace_sha256: str | None = None, parent_id: int | None = None,
                  argv: Sequence[str] | None = None) -> int:
        """A new run with status 'running'; returns its id."""
        if not kind:
            raise StoreError(f"{self.path}: a run needs a kind")
        row = (kind, utc_now(), __version__, socket.gethostname(), os.getpid(),
               None if argv is None else _json(list(argv)), parent_id,
               None if trace_path is None else os.fspath(trace_path), trace_sha256,
               self._encode("params", params))
        with self._write() as conn:
            if parent_id is not None and conn.execute(
                    "SELECT 1 FROM runs WHERE id = ?", (parent_id,)).fetchone() is None:
                raise StoreError(f"{self.path}: parent run {parent_id} does not exist")
            cur = conn.execute(
                "INSERT INTO runs (kind, status, started_utc, herd_version, host, pid, argv, "
                "parent_id, trace_path, trace_sha256, params) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            return int(cur.lastrowid)  # type: ignore[arg-type]

    def finish_run(self, run_id: int, metrics: Mapping[str, Any],
                   per_epoch: Sequence[Mapping[str, Any]] = (),
                   elephants: Iterable[Elephant | Mapping[str, Any]] | None = None,
                   status: str = "done") -> None:
        """The run's metrics, per-epoch rows, elephants and final status, in ONE transaction:
        a reader sees all of it or none. Epoch rows are numbered by their ``epoch`` key, else
        by their position."""
        if status not in STATUSES or status == "running":
            raise StoreError(f"{self.path}: run {run_id}: status {status!r} is not one of "
                             "done, aborted, failed")
        metrics_json = self._encode("metrics", metrics)
        epoch_rows = []
        for i, row in enumerate(per_epoch):
            epoch = row.get("epoch", i)
            epoch_rows.append((run_id, int(epoch if epoch is not None else i),
                               self._encode("per-epoch row", row)))
        elephant_rows = [self._elephant_row(run_id, e) for e in (elephants or ())]
        with self._write() as conn:
            self._running(conn, run_id)
            conn.executemany("INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) "
                             "VALUES (?, ?, ?)", epoch_rows)
            conn.executemany(
                "INSERT INTO elephants (run_id, epoch, src, dst, sport, dport, proto, "
                "detected_ns, reports, true_positive) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                elephant_rows)
            conn.execute("UPDATE runs SET status = ?, metrics = ?, ended_utc = ? WHERE id = ?",
                         (status, metrics_json, utc_now(), run_id))

    def abort_run(self, run_id: int, reason: str, *, status: str = "aborted") -> None:
        """Mark a running run (and its running children) aborted, or failed, with a reason.
        A run already finished is left as it is."""
        if status not in ("aborted", "failed"):
            raise StoreError(f"{self.path}: run {run_id}: abort with status {status!r}")
        with self._write() as conn:
            now = utc_now()
            conn.execute("UPDATE runs SET status = ?, reason = ?, ended_utc = ? "
                         "WHERE id = ? AND status = 'running'", (status, reason, now, run_id))
            conn.execute("UPDATE runs SET status = 'aborted', reason = ?, ended_utc = ? "
                         "WHERE parent_id = ? AND status = 'running'",
                         (f"parent run {run_id}: {reason}", now, run_id))

    def delete_runs(self, ids: Iterable[int]) -> list[int]:
        """Delete runs with their children, epochs and elephants; every id must exist, or
        nothing is deleted. Returns the ids deleted, children included."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        with self._write() as conn:
            missing = [i for i in wanted if conn.execute(
                "SELECT 1 FROM runs WHERE id = ?", (i,)).fetchone() is None]
            if missing:
                raise StoreError(f"{self.path}: no run {', '.join(map(str, missing))} "
                                 "(nothing removed)")
            gone = self._descendants(conn, wanted)
            conn.executemany("DELETE FROM runs WHERE id = ?", [(i,) for i in wanted])
            return gone

    def _descendants(self, conn: sqlite3.Connection, ids: Sequence[int]) -> list[int]:
        out = list(ids)
        frontier = list(ids)
        while frontier:
            marks = ",".join("?" * len(frontier))
            frontier = [r[0] for r in conn.execute(
                f"SELECT id FROM runs WHERE parent_id IN ({marks})", frontier)]
            out.extend(i for i in frontier if i not in out)
        return sorted(out)

    def _running(self, conn: sqlite3.Connection, run_id: int) -> None:
        row = conn.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: run {run_id} does not exist (removed?)")
        if row[0] != "running":
            raise StoreError(f"{self.path}: run {run_id} is {row[0]}, not running")

    def _encode(self, what: str, value: Mapping[str, Any]) -> str:
        if not isinstance(value, Mapping):
            raise StoreError(f"{self.path}: {what}: expected a mapping, got "
                             f"{type(value).__name__}")
        return _json(value)

    # Field ranges of an elephant: a 5-tuple's, and SQLite's 64-bit integers.
    ELEPHANT_RANGES = {"src": 2**32, "dst": 2**32, "sport": 2**16, "dport": 2**16,
                       "proto": 2**8, "epoch": 2**63, "detected_ns": 2**63, "reports": 2**63}

    def _elephant_row(self, run_id: int, e: Elephant | Mapping[str, Any]) -> tuple[Any, ...]:
        if isinstance(e, Mapping):
            try:
                e = Elephant(**e)
            except TypeError as x:
                raise StoreError(f"{self.path}: run {run_id}: elephant {dict(e)}: {x}") from None
        values: list[Any] = [run_id]
        for name in ("epoch", "src", "dst", "sport", "dport", "proto", "detected_ns",
                     "reports"):
            v = getattr(e, name)
            if v is None and name in ("epoch", "detected_ns", "reports"):
                values.append(None)
                continue
            try:
                v = int(v)
            except (TypeError, ValueError):
                v = None
            if v is None or not 0 <= v < self.ELEPHANT_RANGES[name]:
                raise StoreError(f"{self.path}: run {run_id}: elephant {name}="
                                 f"{getattr(e, name)!r} out of range")
            values.append(v)
        values.append(None if e.true_positive is None else int(bool(e.true_positive)))
        return tuple(values)

    # ------------------------------------------------------------ reading

    RUN_COLUMNS = ("id, kind, status, started_utc, ended_utc, herd_version, host, pid, argv, "
                   "parent_id, trace_path, trace_sha256, params, metrics, reason, "
                   "(SELECT count(*) FROM runs c WHERE c.parent_id = runs.id)")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, args).fetchall()
            except sqlite3.Error as e:
                raise StoreError(f"{self.path}: {_describe(e)}") from None

    @staticmethod
    def _run(row: Sequence[Any]) -> Run:
        return Run(id=row[0], kind=row[1], status=row[2], started_utc=row[3], ended_utc=row[4],
                   herd_version=row[5], host=row[6], pid=row[7],
                   argv=None if row[8] is None else json.loads(row[8]), parent_id=row[9],
                   trace_path=row[10], trace_sha256=row[11], params=json.loads(row[12]),
                   metrics=None if row[13] is None else json.loads(row[13]), reason=row[14],
                   children=row[15])

    def list_runs(self, *, kind: str | None = None, trace: str | None = None,
                  where: Sequence[tuple[str, str, Any]] = (), since: str | None = None,
                  limit: int | None = None, include_children: bool = False,
                  parent_id: int | None = None) -> list[Run]:
        """Runs, newest first. ``trace``: a prefix of the trace's SHA-256 or a part of its
        path; ``where``: (name, op, value) conditions on metrics, else params (see
        herd.runs.parse_where); ``since``: an ISO-8601 UTC time as utc_now writes."""
        sql = [f"SELECT {self.RUN_COLUMNS} FROM runs WHERE 1"]
        args: list[Any] = []
        if parent_id is not None:
            sql.append("AND parent_id = ?")
            args.append(parent_id)
        elif not include_children:
            sql.append("AND parent_id IS NULL")
        if kind:
            sql.append("AND kind = ?")
            args.append(kind)
        if trace:
            sql.append("AND (substr(trace_sha256, 1, ?) = lower(?) OR instr(trace_path, ?) > 0)")
            args += [len(trace), trace, trace]
        for name, op, value in where:
            if op not in ("=", "!=", "<", "<=", ">", ">="):
                raise StoreError(f"{self.path}: bad operator {op!r}")
            # The name in metrics, then params; under its alias too (a sweep row's f1score
            # is a simulation's f1).
            paths = ['$."' + n.replace('"', "") + '"' for n in (name, *NAME_ALIASES.get(name, ()))]
            lookups = [f"json_extract({column}, ?)" for column in ("metrics", "params")
                       for _ in paths]
            sql.append(f"AND coalesce({', '.join(lookups)}) {op} ?")
            args += [*paths, *paths, value]
        if since:
            sql.append("AND started_utc >= ?")
            args.append(since)
        sql.append("ORDER BY id DESC" if parent_id is None else "ORDER BY id")
        if limit is not None:
            sql.append("LIMIT ?")
            args.append(int(limit))
        return [self._run(r) for r in self._query(" ".join(sql), args)]

    def get_run(self, run_id: int) -> Run:
        rows = self._query(f"SELECT {self.RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise StoreError(f"{self.path}: no run {run_id}")
        return self._run(rows[0])

    def children(self, run_id: int) -> list[Run]:
        return self.list_runs(parent_id=run_id)

    def epochs(self, run_id: int) -> list[dict[str, Any]]:
        """The run's per-epoch rows, in epoch order (each with its ``epoch``)."""
        return [{"epoch": e, **json.loads(m)} for e, m in self._query(
            "SELECT epoch, metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))]

    def elephants(self, run_id: int, limit: int | None = None) -> list[Elephant]:
        """The run's elephants, most reports first (then by epoch and 5-tuple)."""
        sql = ("SELECT src, dst, sport, dport, proto, epoch, detected_ns, reports, "
               "true_positive FROM elephants WHERE run_id = ? ORDER BY reports DESC, epoch, "
               "src, dst, sport, dport, proto")  # NULL reports sort last in DESC
        args: list[Any] = [run_id]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [Elephant(*r[:8], true_positive=None if r[8] is None else bool(r[8]))
                for r in self._query(sql, args)]

    def count_elephants(self, run_id: int) -> int:
        return int(self._query("SELECT count(*) FROM elephants WHERE run_id = ?",
                               (run_id,))[0][0])

    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key = 'schema_version'")[0][0])

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def _close_quietly(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- what commands use


class _Terminated(SystemExit):
    """SIGTERM while a run is open: unwinds like sys.exit so that the run is aborted."""


def _reason(e: BaseException) -> tuple[str, str]:
    """(status, reason) of a run that ended by this exception."""
    if isinstance(e, _Terminated):
        return "aborted", "terminated (SIGTERM)"
    if isinstance(e, KeyboardInterrupt):
        return "aborted", "interrupted"
    if isinstance(e, SystemExit):
        return "aborted", f"exited with status {e.code}"
    text = str(e).splitlines()[0] if str(e) else ""
    if isinstance(e, HerdInputError):
        return "failed", f"error: {text}"
    return "failed", f"{type(e).__name__}: {text}" if text else type(e).__name__


class RunHandle:
    """An open run inside Recorder.run: ``id`` (None when not recording; pass it as a
    child's parent_id) and ``finish``."""

    def __init__(self, recorder: Recorder, run_id: int | None) -> None:
        self.recorder = recorder
        self.id = run_id
        self.finished = False

    def finish(self, metrics: Mapping[str, Any], per_epoch: Sequence[Mapping[str, Any]] = (),
               elephants: Iterable[Elephant | Mapping[str, Any]] | None = None) -> None:
        self.finished = True
        self.recorder.finish(self.id, metrics, per_epoch, elephants)


class Recorder:
    """What a command uses. Never raises for store problems: the run's own outputs matter
    more. On the first StoreError it prints ONE line ``<prog>: error: <message> (the run
    goes on; its results are not recorded)`` to stderr and stops recording; exit_code(code)
    then returns 1 when code is 0. The database is opened at the first begin."""

    def __init__(self, path: str | os.PathLike[str] | None, prog: str = "herd", *,
                 busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
                 argv: Sequence[str] | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.prog = prog
        self.busy_timeout_s = busy_timeout_s
        self.argv = list(sys.argv if argv is None else argv)
        self.failed = False
        self._store: RunStore | None = None
        self._pid = os.getpid()
        self._open_runs = 0
        self._sigterm_installed = False
        self._previous_sigterm: Any = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, prog: str) -> Recorder:
        """--no-db: record nothing; else --db, else $HERD_DB, else the user's data dir."""
        if getattr(args, "no_db", False):
            return cls(None, prog)
        db = getattr(args, "db", None)
        return cls(Path(db) if db else default_db_path(), prog)

    @property
    def enabled(self) -> bool:
        return self.path is not None and not self.failed

    def _get_store(self) -> RunStore | None:
        if not self.enabled:
            return None
        if self._store is not None and self._pid != os.getpid():
            # A forked child must not use its parent's connection (SQLite forbids it).
            self._store = None
        if self._store is None:
            self._pid = os.getpid()
            self._store = RunStore(self.path,  # type: ignore[arg-type]
                                   busy_timeout_s=self.busy_timeout_s)
        return self._store

    def _fail(self, e: BaseException) -> None:
        if not self.failed:
            message = str(e) if isinstance(e, StoreError) else f"{self.path}: {_describe(e)}"
            print(f"{self.prog}: error: {message} (the run goes on; its results are not "
                  "recorded)", file=sys.stderr, flush=True)
        self.failed = True
        if self._store is not None:
            self._store.close()
            self._store = None

    def begin(self, kind: str, params: Mapping[str, Any], *, trace_path: str | None = None,
              trace_sha256: str | None = None, parent_id: int | None = None) -> int | None:
        try:
            store = self._get_store()
            if store is None:
                return None
            return store.begin_run(kind, params, trace_path=trace_path,
                                   trace_sha256=trace_sha256, parent_id=parent_id,
                                   argv=self.argv)
        except (StoreError, sqlite3.Error, OSError) as e:
            self._fail(e)
            return None

    def finish(self, run_id: int | None, metrics: Mapping[str, Any],
               per_epoch: Sequence[Mapping[str, Any]] = (),
               elephants: Iterable[Elephant | Mapping[str, Any]] | None = None) -> None:
        if run_id is None:
            return
        try:
            store = self._get_store()
            if store is not None:
                store.finish_run(run_id, metrics, per_epoch, elephants)
        except (StoreError, sqlite3.Error, OSError) as e:
            self._fail(e)

    def abort(self, run_id: int | None, reason: str, *, status: str = "aborted") -> None:
        if run_id is None:
            return
        try:
            store = self._get_store()
            if store is not None:
                store.abort_run(run_id, reason, status=status)
        except (StoreError, sqlite3.Error, OSError) as e:
            self._fail(e)

    @contextlib.contextmanager
    def run(self, kind: str, params: Mapping[str, Any], **kw: Any) -> Iterator[RunHandle]:
        """begin; the body calls ``handle.finish(...)``; an exception, KeyboardInterrupt or
        SystemExit (SIGTERM becomes one while the run is open) aborts the run and goes on."""
        handle = RunHandle(self, self.begin(kind, params, **kw))
        # Only a run being recorded changes SIGTERM (--no-db, or a failed store: nothing).
        recording = handle.id is not None
        if recording:
            self._enter_sigterm()
        try:
            yield handle
        except BaseException as e:
            if not handle.finished:
                status, reason = _reason(e)
                self.abort(handle.id, reason, status=status)
            raise
        else:
            if not handle.finished:
                self.abort(handle.id, "ended without recording results", status="failed")
        finally:
            if recording:
                self._leave_sigterm()

    def _enter_sigterm(self) -> None:
        self._open_runs += 1
        if self._open_runs > 1 or threading.current_thread() is not threading.main_thread():
            return

        def terminate(signum: int, frame: Any) -> None:
            raise _Terminated(128 + signal.SIGTERM)

        try:
            self._previous_sigterm = signal.signal(signal.SIGTERM, terminate)
            self._sigterm_installed = True
        except ValueError:  # not the main interpreter
            pass

    def _leave_sigterm(self) -> None:
        self._open_runs -= 1
        if self._open_runs == 0 and self._sigterm_installed:
            # None: a handler not set from Python; the default is the nearest we can restore.
            previous = self._previous_sigterm
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
            self._sigterm_installed = False
            self._previous_sigterm = None

    def exit_code(self, code: int) -> int:
        """The command's exit status: 1 instead of 0 when recording failed."""
        return 1 if self.failed and code == 0 else code

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
