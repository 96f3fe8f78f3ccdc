"""Every command records its run in the results store (issue 12): simulate, sweep (+ rows),
tune (+ explored points), figures, replay, the testbed harness (+ rows); --no-db and
$HERD_DB; a database that cannot be written costs one line on stderr and exit 1, never the
run's own outputs; a sweep killed mid-way leaves its run marked aborted."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO

from herd.cli import main
from herd.store import Elephant, Run, RunStore
from herd.store_record import NOT_METRICS
from herd.synth import write_synthetic_pcap
from herd.trace import load_trace

PY = sys.executable
FORK = multiprocessing.get_context("fork")


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recording") / "synth-20k.pcap"
    write_synthetic_pcap(path, 20_000, seed=3)
    return path


def only(runs: list[Run], kind: str) -> Run:
    mine = [r for r in runs if r.kind == kind]
    assert len(mine) == 1, [(r.id, r.kind) for r in runs]
    return mine[0]


def same(a: Any, b: Any) -> bool:
    """JSON values equal, floats to the last bits JSON keeps."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-12)
    return bool(a == b)


def truth(trace_path: Path, epoch_ms: float, T: int) -> dict[tuple[int, ...], bool]:
    """Computed here from the packets, not by herd: (src, dst, sport, dport, proto, epoch)
    of every (flow, epoch) pair in the trace -> heavy (>= T packets in its epoch)."""
    t = load_trace(trace_path)
    src, dst = t.flow_src[t.flow], t.flow_dst[t.flow]
    sport, dport, proto = t.flow_sport[t.flow], t.flow_dport[t.flow], t.flow_proto[t.flow]
    epoch = (t.ts_ns - t.ts_ns[0]) // int(epoch_ms * 1e6)
    epoch = np.maximum.accumulate(epoch)  # epochs never go back
    rows = np.stack([src, dst, sport, dport, proto, epoch]).T.astype(np.int64)
    pairs, counts = np.unique(rows, axis=0, return_counts=True)
    return {tuple(int(x) for x in p): int(c) >= T for p, c in zip(pairs, counts, strict=True)}


def test_simulate_records_metrics_epochs_and_elephants(trace_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    db = tmp_path / "runs.sqlite"
    assert main(["simulate", "--trace", str(trace_file), "--epoch-ms", "50", "--k", "4",
                 "--percentile", "95", "--json", "--db", str(db)]) == 0
    d = json.loads(capsys.readouterr().out)
    with RunStore(db) as s:
        run = only(s.list_runs(), "simulate")
        assert run.status == "done" and run.ended_utc >= run.started_utc
        assert run.trace_sha256 == d["trace_digest"] and run.trace_path == str(trace_file)
        assert run.params == d["params"] and run.herd_version == d["herd_version"]
        # the metrics are --json's, every one of them
        expected = {k: v for k, v in d.items() if k not in NOT_METRICS}
        assert run.metrics is not None and run.metrics.keys() == expected.keys()
        assert all(same(run.metrics[k], v) for k, v in expected.items()), run.metrics
        epochs = s.epochs(run.id)
        assert len(epochs) == d["epochs"] >= 4
        assert [r["f1"] for r in epochs] == [r["f1"] for r in d["per_epoch"]]
        assert epochs == d["per_epoch"]
        elephants = s.elephants(run.id)
    assert len(elephants) == d["detected"] > 20
    heavy = truth(trace_file, 50, d["T"])
    for e in elephants:
        key = (e.src, e.dst, e.sport, e.dport, e.proto, e.epoch)
        assert key in heavy, f"{e}: not a (flow, epoch) pair of the trace"
        assert e.true_positive == heavy[key], e
        assert e.reports is not None and e.reports >= d["R"]
        assert e.detected_ns is not None
    assert sum(e.true_positive for e in elephants) == d["true_positives"] > 0
    assert d["false_positives"] == sum(not e.true_positive for e in elephants)


def test_simulate_without_epochs_and_a_baseline_record_elephants(
        trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    for extra in ([], ["--algorithm", "sampling", "--q", "0.05"]):
        assert main(["simulate", "--trace", str(trace_file), "--json", "--db", str(db),
                     *extra]) == 0
        d = json.loads(capsys.readouterr().out)
        with RunStore(db) as s:
            run = s.list_runs(kind="simulate")[0]
            assert run.params["algorithm"] == d["params"]["algorithm"]
            assert s.epochs(run.id) == []  # one epoch: no per-epoch rows
            elephants = s.elephants(run.id)
        assert len(elephants) == d["detected"] > 0
        assert all(e.epoch is None for e in elephants)
        assert sum(bool(e.true_positive) for e in elephants) == d["true_positives"]
        if not extra:  # Herd counts reports; the sampling baseline sends none
            assert all(e.reports is not None and e.reports >= d["R"] for e in elephants)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_records_parent_and_one_row_per_value(trace_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    out = tmp_path / "sweep.csv"
    assert main(["sweep", "--trace", str(trace_file), "--param", "epsilon", "--values",
                 "0.05,0.1,0.2", "--epoch-ms", "100", "--out", str(out), "--db", str(db)]) == 0
    capsys.readouterr()
    rows = read_csv(out)
    with RunStore(db) as s:
        parent = only(s.list_runs(), "sweep")
        assert parent.status == "done" and parent.params["swept"] == "epsilon"
        assert parent.params["values"] == [0.05, 0.1, 0.2] and parent.children == 3
        assert parent.metrics is not None and parent.metrics["rows"] == 3
        children = s.children(parent.id)
        assert [c.kind for c in children] == ["sweep_row"] * 3
        for c, row in zip(children, rows, strict=True):
            assert c.status == "done" and c.parent_id == parent.id
            assert c.params["swept"] == "epsilon"
            assert c.params["epsilon"] == float(row["epsilon"])
            assert c.trace_sha256 == parent.trace_sha256 == row["trace_digest"]
            assert c.metrics is not None
            shared = [k for k in c.metrics if k in row]
            assert {"f1score", "precision", "recall", "messages", "max_states"} <= set(shared)
            for k in shared:  # the CSV's numbers, to the digits it prints
                v = c.metrics[k]
                assert (row[k] == "") if v is None else math.isclose(
                    float(row[k]), v, rel_tol=1e-5), (k, row[k], v)
            epochs = s.epochs(c.id)  # one seed, epochs: the run's per-epoch rows
            assert len(epochs) == c.metrics["epochs"] >= 2
            assert sum(r["detected"] for r in epochs) == c.metrics["detected"]
            elephants = s.elephants(c.id)  # and its elephants
            assert len(elephants) == c.metrics["detected"] > 0
            assert sum(bool(e.true_positive) for e in elephants) == sum(
                r["true_positives"] for r in epochs)
            assert all(e.reports is not None and e.reports >= c.metrics["R"]
                       for e in elephants)


def test_tune_records_the_chosen_point_and_what_it_explored(
        trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    assert main(["tune", "--trace", str(trace_file), "--memory", "300", "--messages", "800",
                 "--seeds", "1", "--no-confirm", "--workers", "1", "--json",
                 "--db", str(db)]) == 0
    d = json.loads(capsys.readouterr().out)
    with RunStore(db) as s:
        run = only(s.list_runs(), "tune")
        assert run.status == "done"
        assert run.params["memory"] == 300 and run.params["messages"] == 800
        assert run.metrics is not None
        for k in ("s", "epsilon", "R", "stages", "f1", "precision", "recall", "states",
                  "messages", "T", "simulations"):
            assert run.metrics[k] == d[k], k
        points = s.children(run.id)
    assert len(points) == run.metrics["explored_points"] >= 3
    assert {p.kind for p in points} == {"tune_point"}
    for p in points:
        assert p.params["algorithm"] == "herd" and 0 < p.params["s"] <= 1
        assert p.params["k"] == 10 and sum(p.params["stages"]) <= 300
        assert p.metrics is not None and 0.0 <= p.metrics["f1"] <= 1.0
        assert isinstance(p.metrics["feasible"], bool) and p.metrics["seeds"] == 1
    # the chosen configuration is among them (measured on the first seeds), and it fits
    chosen = [p for p in points if p.metrics and p.metrics["chosen"]]
    assert len(chosen) == 1 and chosen[0].metrics is not None
    assert (chosen[0].params["s"], chosen[0].params["epsilon"]) == (d["s"], d["epsilon"])
    assert chosen[0].params["stages"] == d["stages"] and chosen[0].metrics["feasible"]


def test_figures_record_the_plan_and_what_they_made(trace_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    out = tmp_path / "figs"
    assert main(["figures", "--trace", str(trace_file), "--out", str(out), "--workers", "1",
                 "--epsilons", "0.05,0.2", "--s-values", "0.05,0.3", "--memory-budgets",
                 "60,400", "--message-budgets", "400,800", "--seeds", "1",
                 "--db", str(db)]) == 0
    printed = capsys.readouterr().out.split()
    with RunStore(db) as s:
        run = only(s.list_runs(), "figures")
    assert run.status == "done" and run.params["epsilons"] == [0.05, 0.2]
    assert run.params["memory_budgets"] == [60, 400] and run.params["seeds"] == 1
    m = run.metrics
    assert m is not None and m["files"] == [os.path.abspath(p) for p in printed]
    assert m["files_written"] == len(printed) and m["pngs"] == 7 and m["csvs"] == 7
    csv_rows = sum(len(read_csv(Path(p))) for p in printed if p.endswith(".csv"))
    assert m["rows"] == csv_rows > 20


def test_replay_records_its_run_and_the_coordinators_elephants(trace_file: Path,
                                                               tmp_path: Path) -> None:
    db = tmp_path / "runs.sqlite"
    proc = subprocess.run(
        [PY, "-m", "herd.cli", "replay", "--trace", str(trace_file), "--k", "4",
         "--percentile", "95", "--pps", "8000", "--epoch-ms", "50", "--json",
         "--db", str(db)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(proc.stdout)
    with RunStore(db) as s:
        run = only(s.list_runs(), "replay")
        assert run.status == "done" and run.trace_sha256 == d["trace_digest"]
        assert run.params["pps"] == 8000 and run.params["epoch_ms"] == 50
        m = run.metrics
        assert m is not None
        for k in ("f1", "precision", "recall", "detected", "lost_messages", "hellos",
                  "reports", "seconds"):
            assert same(m[k], d[k]), k
        assert m["coordinator.reports"] == d["coordinator"]["reports"]
        assert s.epochs(run.id) == d["per_epoch"] and len(d["per_epoch"]) >= 4
        elephants = s.elephants(run.id)
    assert len(elephants) == d["detected"] > 10
    heavy = truth(trace_file, 50, d["T"])
    for e in elephants:
        key = (e.src, e.dst, e.sport, e.dport, e.proto, e.epoch)
        assert e.true_positive == heavy.get(key, False), e
        assert e.reports is not None and e.reports >= d["R"] and e.detected_ns
    assert sum(bool(e.true_positive) for e in elephants) == d["true_positives"]


def test_a_coordinators_elephant_the_trace_lacks_is_a_false_positive(trace_file: Path
                                                                       ) -> None:
    from herd.params import Params
    from herd.prepared import PreparedTrace
    from herd.store_record import coordinator_elephants

    prep = PreparedTrace(load_trace(trace_file))
    t = prep.trace
    params = Params(percentile=95)
    T = prep.threshold(params)
    sizes = np.bincount(t.flow, minlength=t.flows)
    big, small = int(np.argmax(sizes)), int(np.argmin(sizes))
    assert sizes[big] >= T > sizes[small]
    cols = {f: np.array([getattr(t, f"flow_{f}")[i] for i in (big, small)] + [x], np.int64)
            for f, x in (("src", 1), ("dst", 2), ("sport", 3), ("dport", 4), ("proto", 6))}
    cols.update(epoch=np.zeros(3, np.int64), detected_ns=np.array([7, 8, 9]),
                reports=np.array([10, 11, 12]))
    got = list(coordinator_elephants(prep, params, T, cols))
    assert [e.true_positive for e in got] == [True, False, False]
    assert [e.reports for e in got] == [10, 11, 12] and got[2].src == 1
    assert all(e.epoch is None for e in got)  # one epoch: none recorded
    assert list(coordinator_elephants(prep, params, T, {})) == []


def test_no_db_records_nothing_and_herd_db_is_honoured(
        trace_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    env_db = tmp_path / "env" / "runs.sqlite"
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("HERD_DB", str(env_db))
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    assert main(["simulate", "--trace", str(trace_file), "--no-db"]) == 0
    out = tmp_path / "s.csv"
    assert main(["sweep", "--trace", str(trace_file), "--param", "s", "--values", "0.2",
                 "--out", str(out), "--no-db"]) == 0
    assert out.exists() and not env_db.exists() and not env_db.parent.exists()
    assert not xdg.exists()
    assert main(["simulate", "--trace", str(trace_file)]) == 0  # $HERD_DB
    with RunStore(env_db) as s:
        assert [r.kind for r in s.list_runs()] == ["simulate"]
    monkeypatch.delenv("HERD_DB")  # then $XDG_DATA_HOME/herd/runs.sqlite
    assert main(["simulate", "--trace", str(trace_file)]) == 0
    with RunStore(xdg / "herd" / "runs.sqlite") as s:
        assert [r.kind for r in s.list_runs()] == ["simulate"]
    capsys.readouterr()


def test_a_corrupt_db_is_one_line_exit_1_and_the_outputs_are_written(
        trace_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "runs.sqlite"
    db.write_bytes(b"\x00not a database\xff" * 100)
    out = tmp_path / "sweep.csv"
    code = main(["sweep", "--trace", str(trace_file), "--param", "epsilon", "--values",
                 "0.1,0.2", "--out", str(out), "--db", str(db)])
    o, err = capsys.readouterr()
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("herd sweep: error: ") and str(db) in err
    assert len(read_csv(out)) == 2 and out.with_suffix(".json").exists()
    assert o.startswith(f"CSV: {out}")
    code = main(["simulate", "--trace", str(trace_file), "--json", "--db", str(db)])
    o, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "not an SQLite database" in err
    assert json.loads(o)["packets"] == 20_000
    assert db.read_bytes() == b"\x00not a database\xff" * 100  # left as it was


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path is root's 0700)."""
    d = Path(tempfile.mkdtemp(prefix="herd-recording-test-"))
    d.chmod(0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _unprivileged_main(argv: list[str]) -> tuple[int, str, str]:
    """``herd argv`` in a forked child as 'nobody' when we are root (root writes read-only
    files): (exit status, stdout, stderr)."""
    q = FORK.SimpleQueue()

    def child() -> None:
        out, err = io.StringIO(), io.StringIO()
        try:
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(argv)
        except BaseException as e:
            code, err = -1, io.StringIO(f"{type(e).__name__}: {e}")
        q.put((code, out.getvalue(), err.getvalue()))

    p = FORK.Process(target=child)
    p.start()
    p.join(300)
    assert p.exitcode == 0
    return q.get()


def test_a_read_only_db_is_one_line_exit_1_and_the_outputs_are_written(
        trace_file: Path, shared_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = shared_dir / "runs.sqlite"
    RunStore(db).close()
    db.chmod(0o444)
    for ext in ("-wal", "-shm"):
        Path(f"{db}{ext}").unlink(missing_ok=True)
    trace = shared_dir / trace_file.name
    shutil.copyfile(trace_file, trace)
    monkeypatch.setenv("HERD_CACHE_DIR", str(shared_dir / "cache"))
    out = shared_dir / "sweep.csv"
    code, o, err = _unprivileged_main(["sweep", "--trace", str(trace), "--param", "epsilon",
                                       "--values", "0.1", "--out", str(out), "--db", str(db)])
    assert code == 1, err
    assert err.count("\n") == 1 and "read-only" in err and str(db) in err, err
    assert len(read_csv(out)) == 1 and o.startswith(f"CSV: {out}")


def test_a_sweep_killed_mid_way_is_marked_aborted(tmp_path: Path) -> None:
    trace = tmp_path / "synth-100k.pcap"
    write_synthetic_pcap(trace, 100_000, seed=4)
    db = tmp_path / "runs.sqlite"
    out = tmp_path / "sweep.csv"
    # 3,000 simulations: far more than the second before the kill (~10 ms each)
    values = ",".join(f"{0.01 * i:g}" for i in range(1, 61))
    proc = subprocess.Popen(
        [PY, "-m", "herd.cli", "sweep", "--trace", str(trace), "--param", "epsilon",
         "--values", values, "--seeds", "50", "--out", str(out), "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        running: list[Run] = []
        while not running and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if db.exists():
                with RunStore(db) as s:
                    running = [r for r in s.list_runs(kind="sweep") if r.status == "running"]
        assert running, "the sweep never began recording"
        time.sleep(0.5)  # into the simulations
        assert proc.poll() is None, "the sweep ended before it could be killed"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    with RunStore(db) as s:
        run = s.get_run(running[0].id)
        assert run.status == "aborted" and run.ended_utc is not None, (run, err)
        assert "SIGTERM" in (run.reason or ""), run.reason
        assert s.children(run.id) == [] and run.metrics is None  # nothing half-written
    assert not out.exists()


def _mininet() -> bool:
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        return False
    return all(shutil.which(t) for t in ("tcpreplay", "tcprewrite", "mnexec"))


@pytest.mark.root
@pytest.mark.mininet
@pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root")
@pytest.mark.skipif(not _mininet(), reason="Mininet / tcpreplay not installed "
                    "(bash scripts/setup.sh --testbed)")
def test_testbed_harness_records_each_row_under_its_run(tmp_path: Path) -> None:
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    db = tmp_path / "runs.sqlite"
    pcap = REPO / "pcap" / "synth-20k.pcap"
    proc = subprocess.run(
        [PY, "-m", "herd.testbed.harness", "0.2", "0.1", "20", "0", str(layout), str(pcap),
         str(REPO / "topologies" / "p4app_10_switches_herd.json"), "--target", "model",
         "--pps", "5000", "--db", str(db)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = read_csv(layout)[0]
    with RunStore(db) as s:
        run = only(s.list_runs(), "testbed")
        assert run.status == "done" and run.params["target"] == "model"
        assert run.params["swept"] == "epsilon" and run.params["values"] == [0.1]
        (child,) = s.children(run.id)
        assert child.kind == "testbed_row" and child.status == "done"
        assert child.params["epsilon"] == 0.1 and child.params["T"] == 20
        m = child.metrics
        assert m is not None
        assert math.isclose(m["f1"], float(row["f1score"]), rel_tol=1e-5)
        assert m["sent_packets"] == int(row["sent_packets"]) == 20_000
        elephants: list[Elephant] = s.elephants(child.id)
    assert len(elephants) == m["detected"] > 0
    assert sum(bool(e.true_positive) for e in elephants) == m["true_positives"]
