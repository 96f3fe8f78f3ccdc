"""The results store (herd.store): round trips, concurrent writers, killed runs, locked,
read-only and corrupt databases, migrations, and the Recorder commands use."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from herd import store as store_module
from herd.store import (
    DB_ENV,
    SCHEMA_VERSION,
    Elephant,
    Recorder,
    RunStore,
    StoreError,
    add_db_arguments,
    default_db_path,
)

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "runs.sqlite"


def one_line(text: str) -> bool:
    return text.count("\n") <= 1 and text.strip() != "" and "\n" not in text.strip()


# ---------------------------------------------------------------- paths and arguments


def test_default_db_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(DB_ENV, str(tmp_path / "x.sqlite"))
    assert default_db_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv(DB_ENV)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "herd" / "runs.sqlite"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # invalid per XDG: ignored
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "herd" / "runs.sqlite"


def test_db_arguments_and_recorder_from_args(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    p = argparse.ArgumentParser()
    add_db_arguments(p)
    assert Recorder.from_args(p.parse_args(["--db", str(tmp_path / "a.db")]), "t").path == \
        tmp_path / "a.db"
    monkeypatch.setenv(DB_ENV, str(tmp_path / "env.db"))
    assert Recorder.from_args(p.parse_args([]), "t").path == tmp_path / "env.db"
    off = Recorder.from_args(p.parse_args(["--no-db"]), "t")
    assert off.path is None and off.begin("simulate", {}) is None
    assert not (tmp_path / "env.db").exists() and off.exit_code(0) == 0
    with pytest.raises(SystemExit):
        p.parse_args(["--db", "x", "--no-db"])


# ---------------------------------------------------------------- round trips


def test_run_round_trips_exactly(db: Path) -> None:
    elephants = [
        Elephant(0xFFFFFFFF, 0, 65535, 0, 17, epoch=3, detected_ns=2**62, reports=12,
                 true_positive=True),
        Elephant(0x0A000001, 0xC0A80101, 1234, 80, 6, epoch=None, detected_ns=None,
                 reports=None, true_positive=None),
        Elephant(1, 2, 3, 4, 6, epoch=0, detected_ns=5, reports=40, true_positive=False),
    ]
    params = {"epsilon": 0.1, "stages": [4096, 2048], "algorithm": "herd", "confirm": False}
    metrics = {"f1": 0.875, "messages": 1234, "note": "x", "nan": float("nan")}
    per_epoch = [{"epoch": 0, "f1": 0.5}, {"epoch": 1, "f1": 1.0, "messages": 7}]
    with RunStore(db) as s:
        assert db.exists() and s.schema_version() == SCHEMA_VERSION
        rid = s.begin_run("simulate", params, trace_path="/t/a.pcap", trace_sha256="ab" * 32,
                          argv=["herd", "simulate"])
        assert s.get_run(rid).status == "running" and s.get_run(rid).metrics is None
        s.finish_run(rid, metrics, per_epoch, iter(elephants))
    with RunStore(db) as s:  # a fresh connection reads what the first wrote
        run = s.get_run(rid)
        assert (run.kind, run.status, run.params, run.argv) == \
            ("simulate", "done", params, ["herd", "simulate"])
        assert run.metrics == {**metrics, "nan": None}  # NaN is not JSON: stored as null
        assert (run.trace_path, run.trace_sha256, run.pid) == ("/t/a.pcap", "ab" * 32,
                                                                os.getpid())
        assert run.started_utc <= run.ended_utc and run.started_utc.endswith("Z")
        assert s.epochs(rid) == per_epoch
        got = s.elephants(rid)
        assert sorted(got, key=repr) == sorted(elephants, key=repr)
        assert [e.reports for e in got] == [40, 12, None]  # most reports first
        assert s.count_elephants(rid) == 3 and len(s.elephants(rid, limit=1)) == 1


def test_finish_twice_or_unknown_run_is_refused(db: Path) -> None:
    with RunStore(db) as s:
        rid = s.begin_run("simulate", {})
        s.finish_run(rid, {"f1": 1.0})
        with pytest.raises(StoreError, match=f"run {rid} is done, not running"):
            s.finish_run(rid, {"f1": 0.0})
        with pytest.raises(StoreError, match="run 999 does not exist"):
            s.finish_run(999, {})
        with pytest.raises(StoreError, match="parent run 999 does not exist"):
            s.begin_run("sweep_row", {}, parent_id=999)
        assert s.get_run(rid).metrics == {"f1": 1.0}


def test_a_failed_finish_writes_nothing(db: Path) -> None:
    """Results and status go in one transaction: a failure at the last elephant leaves no
    epochs, no elephants and the run still running."""
    with RunStore(db) as s:
        rid = s.begin_run("simulate", {})
        good = [Elephant(i, 2, 3, 4, 6) for i in range(100)]
        with pytest.raises(StoreError, match="elephant sport=70000 out of range"):
            s.finish_run(rid, {"f1": 1.0}, [{"f1": 1.0}], [*good, Elephant(1, 2, 70000, 4, 6)])
        with pytest.raises(StoreError, match="elephant .*missing 4 required"):
            s.finish_run(rid, {"f1": 1.0}, [{"f1": 1.0}], [{"src": 1}])
        # a failure inside the transaction, after the epochs and 100 elephants went in
        s._query("CREATE TRIGGER boom BEFORE INSERT ON elephants WHEN NEW.src = 666 "
                 "BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END")
        with pytest.raises(StoreError, match="refused by a test trigger"):
            s.finish_run(rid, {"f1": 1.0}, [{"epoch": 0}], [*good, Elephant(666, 2, 3, 4, 6)])
        assert s.get_run(rid).status == "running" and s.get_run(rid).metrics is None
        assert s.epochs(rid) == [] and s.elephants(rid) == []
        s._query("DROP TRIGGER boom")
        s.finish_run(rid, {"f1": 1.0}, [{"epoch": 0}], good)
        assert len(s.elephants(rid)) == 100


def test_delete_cascades_and_unknown_ids_remove_nothing(db: Path) -> None:
    with RunStore(db) as s:
        parent = s.begin_run("sweep", {"swept": "epsilon"})
        rows = [s.begin_run("sweep_row", {"epsilon": e}, parent_id=parent) for e in (0.1, 0.2)]
        for r in rows:
            s.finish_run(r, {"f1score": 0.5}, [{"f1": 0.5}], [Elephant(1, 2, 3, 4, 6)])
        grandchild = s.begin_run("x", {}, parent_id=rows[0])
        other = s.begin_run("simulate", {})
        s.finish_run(other, {}, [{"f1": 1}], [Elephant(9, 9, 9, 9, 6)])
        with pytest.raises(StoreError, match="no run 12345 .nothing removed"):
            s.delete_runs([parent, 12345])
        assert s.get_run(parent).children == 2
        assert s.delete_runs([parent]) == sorted([parent, *rows, grandchild])
        for r in (parent, *rows, grandchild):
            with pytest.raises(StoreError, match=f"no run {r}"):
                s.get_run(r)
        count = s._query("SELECT (SELECT count(*) FROM epochs), "
                         "(SELECT count(*) FROM elephants)")[0]
        assert count == (1, 1)  # only the other run's
        assert s.get_run(other).status == "done"


# ---------------------------------------------------------------- concurrency


WRITERS, RUNS_EACH = 6, 50


def _writer(path: str, writer: int, ready: Any) -> None:
    ready.wait()
    with RunStore(path) as s:
        for i in range(RUNS_EACH):
            rid = s.begin_run("simulate", {"writer": writer, "i": i})
            per_epoch = [{"epoch": e, "f1": (writer + i + e) / 1000} for e in range(3)]
            elephants = [Elephant(writer, i, e, 0, 6, epoch=e % 3, reports=e)
                         for e in range(5)]
            s.finish_run(rid, {"f1": (writer * 1000 + i) / 1e6}, per_epoch, elephants)


def test_concurrent_writers_lose_nothing(db: Path) -> None:
    RunStore(db).close()  # created once; each writer opens its own connection
    ready = FORK.Event()
    procs = [FORK.Process(target=_writer, args=(str(db), w, ready)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    ready.set()  # all at once
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with RunStore(db) as s:
        runs = s.list_runs()
        assert len(runs) == WRITERS * RUNS_EACH
        assert {r.status for r in runs} == {"done"}
        assert sorted((r.params["writer"], r.params["i"]) for r in runs) == \
            [(w, i) for w in range(WRITERS) for i in range(RUNS_EACH)]
        for r in runs:
            w, i = r.params["writer"], r.params["i"]
            assert r.metrics == {"f1": (w * 1000 + i) / 1e6}
            assert [e["f1"] for e in s.epochs(r.id)] == [(w + i + e) / 1000 for e in range(3)]
            assert sorted((e.src, e.dst, e.sport) for e in s.elephants(r.id)) == \
                [(w, i, e) for e in range(5)]


def _killed_mid_finish(path: str) -> None:
    s = RunStore(path)
    rid = s.begin_run("replay", {"n": 1})
    calls = [0]

    def kill_midway() -> int:
        # SQLite calls this every 100 VM steps: well inside the elephants' INSERTs.
        calls[0] += 1
        if calls[0] == 2000:
            os.kill(os.getpid(), signal.SIGKILL)
        return 0

    s._conn.set_progress_handler(kill_midway, 100)  # type: ignore[union-attr]
    s.finish_run(rid, {"f1": 1.0}, [{"epoch": e} for e in range(100)],
                 [Elephant(i, i, 1, 2, 6, reports=i) for i in range(50_000)])
    os._exit(3)  # not reached


def test_sigkill_mid_run_leaves_it_aborted_and_nothing_half_written(db: Path) -> None:
    RunStore(db).close()
    p = FORK.Process(target=_killed_mid_finish, args=(str(db),))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    assert (db.parent / (db.name + "-wal")).stat().st_size > 0  # it did get to write
    with RunStore(db) as s:
        (run,) = s.list_runs()
        assert (run.status, run.reason, run.pid) == ("aborted", "process gone", p.pid)
        assert run.metrics is None and run.ended_utc is not None
        assert s.epochs(run.id) == [] and s.elephants(run.id) == []


def test_only_this_hosts_dead_processes_are_reaped(db: Path) -> None:
    with RunStore(db) as s:
        mine = s.begin_run("simulate", {})
        elsewhere = s.begin_run("simulate", {})
        s._query("UPDATE runs SET host = 'another-host', pid = 1 WHERE id = ?", (elsewhere,))
        # pid 1 is alive, but it started long after this run claims to have: the kernel
        # gave the run's pid to another process, so the run's own process is gone.
        reused = s.begin_run("simulate", {})
        s._query("UPDATE runs SET pid = 1, started_utc = '2000-01-01T00:00:00.000000Z' "
                 "WHERE id = ?", (reused,))
    with RunStore(db) as s:
        assert s.get_run(mine).status == "running"  # this process is alive
        assert s.get_run(elsewhere).status == "running"  # cannot be seen from here
        assert (s.get_run(reused).status, s.get_run(reused).reason) == ("aborted",
                                                                        "process gone")


# ---------------------------------------------------------------- broken databases


def _assert_store_error(make: Callable[[], Any], path: Path, needle: str) -> str:
    with pytest.raises(StoreError) as info:
        make()
    message = str(info.value)
    assert str(path) in message and needle in message and one_line(message), message
    return message


def _recorder_reports_once(path: Path, capsys: pytest.CaptureFixture[str], needle: str,
                           **kw: Any) -> None:
    rec = Recorder(path, "herd simulate", **kw)
    with rec.run("simulate", {"epsilon": 0.1}) as run:
        assert run.id is None
        run.finish({"f1": 1.0}, [{"f1": 1.0}], [Elephant(1, 2, 3, 4, 6)])
    rid = rec.begin("simulate", {})
    rec.finish(rid, {})
    rec.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("herd simulate: error: "), err
    assert str(path) in err and needle in err
    assert err.rstrip().endswith("(the run goes on; its results are not recorded)")
    assert rec.exit_code(0) == 1 and rec.exit_code(2) == 2


def test_locked_database(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    RunStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        _assert_store_error(lambda: RunStore(db, busy_timeout_s=0.3), db, "locked")
        assert time.monotonic() - t0 < 10
        _recorder_reports_once(db, capsys, "locked", busy_timeout_s=0.3)
        # a store opened before the lock: its writes wait, then fail the same way
        holder.execute("ROLLBACK")
        s = RunStore(db, busy_timeout_s=0.3)
        holder.execute("BEGIN EXCLUSIVE")
        _assert_store_error(lambda: s.begin_run("simulate", {}), db, "locked")
        s.close()
    finally:
        holder.close()
    with RunStore(db) as s:  # nothing was written meanwhile
        assert s.list_runs(include_children=True) == []


def test_lock_released_in_time_is_waited_for(db: Path) -> None:
    RunStore(db).close()
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    import threading

    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    with RunStore(db, busy_timeout_s=10) as s:
        s.finish_run(s.begin_run("simulate", {}), {"f1": 1.0})
        assert s.list_runs()[0].status == "done"
    holder.close()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="herd-store-test-"))
    d.chmod(0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def _unprivileged(fn: Callable[[], str]) -> str:
    """fn() in a forked child as 'nobody' when we are root (root writes read-only files),
    returning what it returns or the text of what it raised."""
    q = FORK.SimpleQueue()

    def child() -> None:
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            q.put(fn())
        except BaseException as e:
            q.put(f"{type(e).__name__}: {e}")

    p = FORK.Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == 0
    return q.get()


def _open_and_write(path: Path) -> str:
    with RunStore(path) as s:
        s.finish_run(s.begin_run("simulate", {}), {})
    return "opened"


def _recorder_line(path: Path) -> str:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rec = Recorder(path, "herd sweep")
        with rec.run("sweep", {}) as run:
            run.finish({})
    return f"{rec.exit_code(0)}|{err.getvalue()}"


def test_read_only_file(shared_dir: Path) -> None:
    path = shared_dir / "runs.sqlite"
    _open_and_write(path)
    shared_dir.chmod(0o777)  # the directory is writable: only the file is not
    path.chmod(0o444)
    for ext in ("-wal", "-shm"):
        Path(f"{path}{ext}").unlink(missing_ok=True)
    message = _unprivileged(lambda: _open_and_write(path))
    assert message.startswith("StoreError: ") and str(path) in message
    assert "read-only" in message and one_line(message)
    code, line = _unprivileged(lambda: _recorder_line(path)).split("|", 1)
    assert code == "1" and line.count("\n") == 1 and "read-only" in line
    assert line.startswith("herd sweep: error: ")


def test_read_only_directory(shared_dir: Path) -> None:
    path = shared_dir / "runs.sqlite"
    _open_and_write(path)
    path.chmod(0o666)  # the file is writable, its directory (root's 0755) is not
    message = _unprivileged(lambda: _open_and_write(path))
    assert message.startswith("StoreError: ") and str(path) in message
    assert "read-only" in message and one_line(message)
    fresh = shared_dir / "sub" / "new.sqlite"  # cannot even be created
    message = _unprivileged(lambda: _open_and_write(fresh))
    assert message.startswith("StoreError: ") and str(fresh) in message and one_line(message)
    assert not fresh.parent.exists()


@pytest.mark.parametrize("content, needle", [
    (b"\x00garbage\xff" * 500, "not an SQLite database"),
    (b"SQLite format 3\x00" + os.urandom(4000), "not an SQLite database"),
    (b"just some text\n", "not an SQLite database"),
])
def test_corrupt_file(db: Path, content: bytes, needle: str,
                      capsys: pytest.CaptureFixture[str]) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(content)
    _assert_store_error(lambda: RunStore(db), db, needle)
    assert db.read_bytes() == content  # left as it was
    _recorder_reports_once(db, capsys, needle)


def test_another_sqlite_database_is_not_taken_over(db: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE photos (id INTEGER, name TEXT)")
    _assert_store_error(lambda: RunStore(db), db, "not a herd results database (tables: photos)")
    _recorder_reports_once(db, capsys, "not a herd results database")
    with sqlite3.connect(db) as other:
        tables = [r[0] for r in other.execute("SELECT name FROM sqlite_master")]
    assert tables == ["photos"]


def test_newer_schema_is_refused(db: Path) -> None:
    RunStore(db).close()
    with sqlite3.connect(db) as c:
        c.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    _assert_store_error(lambda: RunStore(db), db, "newer herd (schema 99")


def test_missing_database_when_not_creating(db: Path) -> None:
    _assert_store_error(lambda: RunStore(db, create=False), db, "no results database here")
    assert not db.exists()
    _assert_store_error(lambda: RunStore(db.parent.parent), db.parent.parent, "is a directory")


# ---------------------------------------------------------------- migrations


# Schema version 1 exactly as the first release created it (written out by hand, not taken
# from MIGRATIONS, so that an edit to migration 1 shows up here).
V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('running', 'done', 'aborted', 'failed')),
  started_utc TEXT NOT NULL, ended_utc TEXT, herd_version TEXT NOT NULL, host TEXT NOT NULL,
  pid INTEGER NOT NULL, argv TEXT, parent_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
  trace_path TEXT, trace_sha256 TEXT, params TEXT NOT NULL, metrics TEXT, reason TEXT);
CREATE TABLE epochs (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  epoch INTEGER NOT NULL, metrics TEXT NOT NULL, PRIMARY KEY (run_id, epoch));
CREATE TABLE elephants (run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
  epoch INTEGER, src INTEGER NOT NULL, dst INTEGER NOT NULL, sport INTEGER NOT NULL,
  dport INTEGER NOT NULL, proto INTEGER NOT NULL, detected_ns INTEGER, reports INTEGER,
  true_positive INTEGER);
CREATE INDEX elephants_run ON elephants (run_id, reports);
CREATE INDEX runs_parent ON runs (parent_id);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs VALUES (7, 'simulate', 'done', '2026-01-02T03:04:05.000000Z',
  '2026-01-02T03:04:06.000000Z', '0.0.9', 'h', 1, '["herd"]', NULL, '/t.pcap', 'cd',
  '{"epsilon": 0.05}', '{"f1": 0.91}', NULL);
INSERT INTO epochs VALUES (7, 0, '{"f1": 0.91}');
INSERT INTO elephants VALUES (7, 0, 1, 2, 3, 4, 6, 100, 9, 1);
"""


def _v1(db: Path) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(db) as c:
        c.executescript(V1)


def _indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                        "AND name NOT LIKE 'sqlite_%'")}


def test_version_1_database_migrates_forward(db: Path) -> None:
    assert SCHEMA_VERSION >= 2
    _v1(db)
    with RunStore(db) as s:
        assert s.schema_version() == SCHEMA_VERSION
        run = s.get_run(7)
        assert (run.params, run.metrics, run.herd_version) == ({"epsilon": 0.05}, {"f1": 0.91},
                                                                "0.0.9")
        assert s.epochs(7) == [{"epoch": 0, "f1": 0.91}]
        assert s.elephants(7) == [Elephant(1, 2, 3, 4, 6, 0, 100, 9, True)]
        assert [r.id for r in s.list_runs(where=[("f1", ">", 0.9)])] == [7]
        new = s.begin_run("simulate", {})
        assert new > 7
    assert {"runs_kind_started", "runs_trace", "runs_status"} <= _indexes(db)


def test_a_failing_migration_changes_nothing(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _v1(db)
    before = _indexes(db)
    broken = (*store_module.MIGRATIONS, ("CREATE INDEX fine ON runs (kind)",
                                         "CREATE INDEX broken ON no_such_table (x)"))
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", len(broken))
    _assert_store_error(lambda: RunStore(db), db, "no_such_table")
    assert _indexes(db) == before  # migration 2's indexes rolled back too
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT value FROM meta").fetchone() == ("1",)


# ---------------------------------------------------------------- the Recorder


def test_recorder_run_records_and_aborts(db: Path) -> None:
    rec = Recorder(db, "herd sweep", argv=["herd", "sweep"])
    before = signal.getsignal(signal.SIGTERM)
    with rec.run("sweep", {"swept": "epsilon"}, trace_path="/t.pcap") as sweep:
        assert signal.getsignal(signal.SIGTERM) is not before  # SIGTERM aborts the run
        with rec.run("sweep_row", {"epsilon": 0.1}, parent_id=sweep.id) as row:
            row.finish({"f1score": 0.9}, [{"f1": 0.9}], [Elephant(1, 2, 3, 4, 6)])
        with pytest.raises(ValueError), rec.run("sweep_row", {"epsilon": 0.2},
                                                parent_id=sweep.id):
            raise ValueError("bad value 0.2")
        sweep.finish({"rows": 2})
    assert signal.getsignal(signal.SIGTERM) is before
    with Recorder(None).run("simulate", {}) as off:  # --no-db: SIGTERM left as it is
        assert off.id is None and signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(KeyboardInterrupt), rec.run("simulate", {}):
        raise KeyboardInterrupt
    with rec.run("figures", {}):
        pass  # never finished
    assert rec.exit_code(0) == 0
    rec.close()
    with RunStore(db) as s:
        figures, simulate, sweep_run = s.list_runs()
        assert (sweep_run.kind, sweep_run.status, sweep_run.children) == ("sweep", "done", 2)
        assert sweep_run.argv == ["herd", "sweep"] and sweep_run.trace_path == "/t.pcap"
        ok, bad = s.children(sweep_run.id)
        assert (ok.status, ok.metrics, ok.parent_id) == ("done", {"f1score": 0.9}, sweep_run.id)
        assert (bad.status, bad.reason) == ("failed", "ValueError: bad value 0.2")
        assert (simulate.status, simulate.reason) == ("aborted", "interrupted")
        assert (figures.status, figures.reason) == ("failed", "ended without recording results")


SIGTERM_CHILD = """
import sys, time
from herd.store import Recorder
rec = Recorder(sys.argv[1], "herd replay")
with rec.run("replay", {"x": 1}) as run:
    print(run.id, flush=True)
    time.sleep(60)
"""


def test_sigterm_aborts_the_open_run(db: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_CHILD, str(db)],
                         stdout=subprocess.PIPE, text=True)
    try:
        run_id = int(p.stdout.readline())  # type: ignore[union-attr]
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 128 + signal.SIGTERM
    finally:
        p.kill()
        p.wait()
    with RunStore(db) as s:
        run = s.get_run(run_id)
        assert (run.status, run.reason) == ("aborted", "terminated (SIGTERM)")


def _fork_user(rec: Recorder) -> None:
    rid = rec.begin("tune_point", {"in": "child"})
    rec.finish(rid, {"f1": 0.5})
    os._exit(rec.exit_code(0))


def test_recorder_reopens_after_fork(db: Path) -> None:
    rec = Recorder(db, "herd tune")
    parent = rec.begin("tune", {})
    p = FORK.Process(target=_fork_user, args=(rec,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    rec.finish(parent, {"f1": 0.6})
    with RunStore(db) as s:
        assert sorted((r.kind, r.status) for r in s.list_runs()) == [("tune", "done"),
                                                                     ("tune_point", "done")]
