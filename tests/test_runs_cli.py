"""``herd runs`` (list, show, export, compare, rm) over runs the commands recorded, and the
sweep CSV's one column per name."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from herd.cli import main
from herd.runs import parse_since, parse_where
from herd.store import Elephant, RunStore
from herd.sweep import SWEEP_PARAMS, csv_text, summarise


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from herd.synth import write_synthetic_pcap

    path = tmp_path_factory.mktemp("trace") / "runs.pcap"
    write_synthetic_pcap(path, 30_000, seed=4)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # a bad argument, as argparse reports it
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2 and out == "" and err.count("\n") == 1, (code, out, err)
    assert err.startswith("herd") and ": error: " in err and needle in err, err


@pytest.fixture(scope="module")
def recorded(trace: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A database holding what the commands recorded: two simulations (epsilon 0.1 and 0.2,
    the second with epochs) and a sweep over epsilon."""
    d = tmp_path_factory.mktemp("recorded")
    db = d / "runs.sqlite"
    sim = ["simulate", "--trace", str(trace), "--db", str(db), "--json"]
    assert main([*sim, "--epsilon", "0.1"]) == 0
    assert main([*sim, "--epsilon", "0.2", "--epoch-ms", "100"]) == 0
    sweep_csv = d / "sweep.csv"
    assert main(["sweep", "--trace", str(trace), "--param", "epsilon", "--values",
                 "0.05,0.1,0.3", "--out", str(sweep_csv), "--db", str(db)]) == 0
    return {"db": db, "sweep_csv": sweep_csv, "dir": d}


def listed(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> list[dict]:
    code, out, err = run(capsys, "runs", "list", "--db", str(db), "--json", *argv)
    assert code == 0, err
    return json.loads(out)


# ---------------------------------------------------------------- the sweep CSV


def test_sweep_csv_names_each_column_once_for_every_parameter(trace: Path) -> None:
    from herd.evaluate import simulate
    from herd.params import Params
    from herd.prepared import PreparedTrace
    from herd.trace import load_trace

    result = simulate(PreparedTrace(load_trace(trace)), Params().with_(k=3))
    for param in SWEEP_PARAMS:
        text = csv_text(param, [summarise(param, 1, [result])])
        frame = pd.read_csv(io.StringIO(text))
        columns = list(frame.columns)
        assert columns[:4] == [param, "f1score", "precision", "recall"], param
        assert len(set(columns)) == len(columns), param
        assert not [c for c in columns if c.endswith(".1")], (param, columns)
        header = next(csv.reader(io.StringIO(text)))
        assert header == columns  # pandas renamed nothing
        # the parameter once, under one of its names
        assert not {SWEEP_PARAMS[param], param} & set(columns[1:]), param


def test_sweep_of_R_reads_back_in_pandas(trace: Path, tmp_path: Path) -> None:
    """R was both the swept column and one of the metrics' columns (R.1 in pandas)."""
    out = tmp_path / "r.csv"
    assert main(["sweep", "--trace", str(trace), "--param", "R", "--values", "3,9",
                 "--out", str(out), "--k", "3"]) == 0
    frame = pd.read_csv(out)
    assert list(frame["R"]) == [3, 9] and "R.1" not in frame.columns
    assert frame.columns.is_unique and frame.columns[0] == "R"


# ---------------------------------------------------------------- list


def test_list_filters(recorded: dict, capsys: pytest.CaptureFixture[str]) -> None:
    db = recorded["db"]
    top = listed(capsys, db)
    assert [r["kind"] for r in top] == ["sweep", "simulate", "simulate"]  # newest first
    assert top[0]["children"] == 3 and {r["status"] for r in top} == {"done"}
    everything = listed(capsys, db, "--all")
    assert sorted(r["kind"] for r in everything) == ["simulate"] * 2 + ["sweep"] + \
        ["sweep_row"] * 3
    assert [r["kind"] for r in listed(capsys, db, "--kind", "sweep_row")] == ["sweep_row"] * 3

    # --where on metrics (f1 is a sweep row's f1score too) and parameters
    f1 = {r["id"]: r["metrics"].get("f1", r["metrics"].get("f1score")) for r in everything
          if r["kind"] != "sweep"}
    cut = sorted(f1.values())[len(f1) // 2]
    got = listed(capsys, db, "--all", "--where", f"f1>={cut}")
    assert sorted(r["id"] for r in got) == sorted(i for i, v in f1.items() if v >= cut)
    got = listed(capsys, db, "--all", "--where", f"f1>={cut}", "--where", "epsilon<0.15")
    assert sorted(r["id"] for r in got) == sorted(
        r["id"] for r in everything if r["id"] in f1 and f1[r["id"]] >= cut
        and r["params"]["epsilon"] < 0.15)
    assert [r["params"]["epoch_ms"] for r in listed(capsys, db, "--where", "epochs>1")] == \
        [100]
    assert [r["kind"] for r in listed(capsys, db, "--where", "swept=epsilon")] == ["sweep"]
    assert listed(capsys, db, "--where", "no_such_name>0") == []

    digest = top[0]["trace_sha256"]
    assert len(listed(capsys, db, "--trace", digest[:10])) == 3
    assert len(listed(capsys, db, "--trace", "runs.pcap")) == 3
    assert listed(capsys, db, "--trace", "0" * 64 if digest[0] != "0" else "1" * 64) == []
    assert len(listed(capsys, db, "--since", "1h")) == 3
    assert listed(capsys, db, "--since", "2999-01-01") == []
    assert [r["id"] for r in listed(capsys, db, "--limit", "1")] == [top[0]["id"]]

    code, out, _ = run(capsys, "runs", "list", "--db", str(db))
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "kind", "status", "started"] and len(lines) == 4
    assert "swept=epsilon" in lines[1] and "sweep (3)" in lines[1]
    assert f"{top[1]['metrics']['f1']:.4f}" in lines[2]


@pytest.mark.parametrize("argv, needle", [
    (["--where", "f1 >> 0.8"], "'>>' is not an operator"),
    (["--where", "f1"], "expected NAME OP VALUE"),
    (["--where", "f1>="], "expected NAME OP VALUE"),
    (["--where", "1abc=2"], "expected NAME OP VALUE"),
    (["--since", "yesterday"], "--since 'yesterday'"),
    (["--since", "2d3"], "--since '2d3'"),
    (["--limit", "-1"], "must be >= 0"),
])
def test_list_bad_input_is_one_line(recorded: dict, capsys: pytest.CaptureFixture[str],
                                    argv: list[str], needle: str) -> None:
    one_line_error(*run(capsys, "runs", "list", "--db", str(recorded["db"]), *argv), needle)


def test_parse_where_and_since() -> None:
    assert parse_where("f1>=0.85") == ("f1", ">=", 0.85)
    assert parse_where(" epsilon < 0.1 ") == ("epsilon", "<", 0.1)
    assert parse_where("k==10") == ("k", "=", 10)
    assert parse_where("algorithm!='sampling'") == ("algorithm", "!=", "sampling")
    assert parse_where("confirm=true") == ("confirm", "=", 1)
    assert parse_where("coordinator.reports>5") == ("coordinator.reports", ">", 5)
    from datetime import UTC, datetime

    now = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_since("2d", now) == "2026-03-08T12:00:00.000000Z"
    assert parse_since("90m", now) == "2026-03-10T10:30:00.000000Z"
    assert parse_since("2026-03-01", now) == "2026-03-01T00:00:00.000000Z"
    assert parse_since("2026-03-01T10:00+02:00", now) == "2026-03-01T08:00:00.000000Z"


def test_db_before_the_subcommand(recorded: dict, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HERD_DB", str(tmp_path / "elsewhere.sqlite"))
    code, out, err = run(capsys, "runs", "--db", str(recorded["db"]), "list", "--json")
    assert code == 0 and len(json.loads(out)) == 3, err


def test_missing_database_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.sqlite"
    one_line_error(*run(capsys, "runs", "list", "--db", str(missing)), str(missing))
    assert not missing.exists()


# ---------------------------------------------------------------- show


def test_show_text_and_json(recorded: dict, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(recorded["db"])
    sweep, with_epochs, plain = listed(capsys, recorded["db"])
    code, out, _ = run(capsys, "runs", "show", str(with_epochs["id"]), "--db", db,
                       "--elephants", "2", "--epochs", "2")
    assert code == 0
    assert f"run {with_epochs['id']}: simulate, done" in out
    assert "epoch_ms" in out and with_epochs["trace_sha256"] in out
    assert "per epoch (" in out and "the first 2" in out and "elephants (" in out
    code, out, _ = run(capsys, "runs", "show", str(with_epochs["id"]), "--db", db, "--json",
                       "--elephants", "3")
    d = json.loads(out)
    assert d["metrics"]["f1"] == with_epochs["metrics"]["f1"]
    assert len(d["epochs"]) == d["metrics"]["epochs"] > 1
    assert [e["epoch"] for e in d["epochs"]] == list(range(len(d["epochs"])))
    assert len(d["elephants"]) == 3 and d["elephants_total"] == d["metrics"]["detected"]
    reports = [e["reports"] for e in d["elephants"]]
    assert reports == sorted(reports, reverse=True)
    # elephants are the detections, true positives counted as the metrics count them
    with RunStore(recorded["db"]) as s:
        all_e = s.elephants(with_epochs["id"])
    assert sum(bool(e.true_positive) for e in all_e) == d["metrics"]["true_positives"]
    code, out, _ = run(capsys, "runs", "show", str(sweep["id"]), "--db", db)
    assert code == 0 and "runs of this sweep (3):" in out and "epsilon=0.05" in out
    code, out, _ = run(capsys, "runs", "show", str(sweep["id"]), "--db", db, "--json")
    assert [c["params"]["epsilon"] for c in json.loads(out)["child_runs"]] == [0.05, 0.1, 0.3]
    one_line_error(*run(capsys, "runs", "show", "9999", "--db", db), "no run 9999")
    one_line_error(*run(capsys, "runs", "show", "x", "--db", db), "'x' is not a run id")


# ---------------------------------------------------------------- export


def test_export_a_sweep_is_its_csv(recorded: dict, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(recorded["db"])
    sweep = listed(capsys, recorded["db"], "--kind", "sweep")[0]
    out = recorded["dir"] / "exported.csv"
    code, text, _ = run(capsys, "runs", "export", str(sweep["id"]), "--csv", str(out),
                        "--db", db)
    assert code == 0 and "3 rows, epsilon first" in text
    written = pd.read_csv(recorded["sweep_csv"])
    exported = pd.read_csv(out)
    assert list(exported.columns) == list(written.columns)
    # the same but for the trace's path, recorded absolute
    assert exported["trace"].tolist() == [str(Path(t).resolve()) for t in written["trace"]]
    pd.testing.assert_frame_equal(exported.drop(columns="trace"),
                                  written.drop(columns="trace"))


def test_export_simulations_and_choosing_the_parameter(
        recorded: dict, trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = recorded["dir"] / "export.sqlite"
    for eps in ("0.1", "0.3"):
        assert main(["simulate", "--trace", str(trace), "--db", str(db), "--epsilon", eps,
                     "--k", "4", "--json"]) == 0
    capsys.readouterr()
    ids = [str(r["id"]) for r in reversed(listed(capsys, db))]
    out = recorded["dir"] / "sims.csv"
    assert run(capsys, "runs", "export", *ids, "--csv", str(out), "--db", str(db))[0] == 0
    frame = pd.read_csv(out)
    assert frame.columns[0] == "epsilon" and frame["epsilon"].tolist() == [0.1, 0.3]
    assert frame.columns.is_unique and frame["k"].tolist() == [4, 4]
    with RunStore(db) as s:
        f1s = [s.get_run(int(i)).metrics["f1"] for i in ids]
    assert frame["f1score"].tolist() == pytest.approx(f1s, abs=1e-6)
    assert frame["f1score_std"].tolist() == [0, 0] and frame["R"].tolist() == [10, 3]
    # a third run differing in k as well: which parameter? say so, or name it
    assert main(["simulate", "--trace", str(trace), "--db", str(db), "--epsilon", "0.2",
                 "--k", "5", "--json"]) == 0
    capsys.readouterr()
    ids = [str(r["id"]) for r in reversed(listed(capsys, db))]
    one_line_error(*run(capsys, "runs", "export", *ids, "--csv", str(out), "--db", str(db)),
                   "several parameters differ (epsilon, k)")
    assert run(capsys, "runs", "export", *ids, "--csv", str(out), "--db", str(db),
               "--param", "k")[0] == 0
    assert pd.read_csv(out)["k"].tolist() == [4, 4, 5]
    one_line_error(*run(capsys, "runs", "export", ids[0], "--csv", str(out), "--db", str(db)),
                   "no parameter differs")
    one_line_error(*run(capsys, "runs", "export", ids[0], "424242", "--csv", str(out),
                        "--db", str(db)), "no run 424242")


# ---------------------------------------------------------------- compare and rm


def test_compare_marks_what_differs(recorded: dict, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(recorded["db"])
    _, b, a = listed(capsys, recorded["db"])  # epsilon 0.1 (a), 0.2 with epochs (b)
    code, out, _ = run(capsys, "runs", "compare", str(a["id"]), str(b["id"]), "--db", db)
    assert code == 0
    lines = {}
    for line in out.splitlines()[1:-1]:
        parts = line.split()
        if parts and not parts[0].startswith("["):
            lines[parts[1] if parts[0] == "*" else parts[0]] = line
    assert lines["epsilon"].startswith("*") and lines["epoch_ms"].startswith("*")
    assert not lines["k"].startswith("*") and not lines["seed"].startswith("*")
    assert not lines["trace_sha256"].startswith("*")
    code, out, _ = run(capsys, "runs", "compare", str(a["id"]), str(b["id"]), "--db", db,
                       "--json")
    d = json.loads(out)
    assert d["params"]["epsilon"] == {"a": 0.1, "b": 0.2, "differs": True}
    assert d["params"]["k"]["differs"] is False
    assert d["metrics"]["R"] == {"a": 10, "b": 5, "differs": True}
    one_line_error(*run(capsys, "runs", "compare", str(a["id"]), "777", "--db", db),
                   "no run 777")


def test_rm_removes_children_and_refuses_unknown_ids(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "rm.sqlite"
    with RunStore(db) as s:
        sweep = s.begin_run("sweep", {"swept": "epsilon"})
        rows = [s.begin_run("sweep_row", {"epsilon": e}, parent_id=sweep) for e in (0.1, 0.2)]
        for r in rows:
            s.finish_run(r, {"f1score": 0.5}, [{"f1": 0.5}], [Elephant(1, 2, 3, 4, 6)])
        s.finish_run(sweep, {"rows": 2})
        keep = s.begin_run("simulate", {})
        s.finish_run(keep, {"f1": 0.9})
    one_line_error(*run(capsys, "runs", "rm", str(sweep), "99", "--db", str(db)),
                   "no run 99 (nothing removed)")
    assert len(listed(capsys, db, "--all")) == 4
    code, out, _ = run(capsys, "runs", "rm", str(sweep), "--db", str(db))
    assert code == 0 and out.startswith(f"removed runs {sweep}, {rows[0]}, {rows[1]}")
    assert [r["id"] for r in listed(capsys, db, "--all")] == [keep]
    with RunStore(db) as s:
        assert s._query("SELECT count(*) FROM epochs")[0][0] == 0
        assert s._query("SELECT count(*) FROM elephants")[0][0] == 0
