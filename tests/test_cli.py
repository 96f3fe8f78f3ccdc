"""The command line: outputs, and bad input as one line on stderr with exit 2."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_capture

from herd.cli import main


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import numpy as np

    rng = np.random.default_rng(5)
    flows = [(f"{a}.1.{i % 250}.1", f"{b}.2.2.2", 1000 + i, 443, "tcp")
             for i, (a, b) in enumerate(rng.integers(1, 30, (300, 2)))]
    seq = [flows[i] for i in (rng.zipf(1.3, 6000) - 1) % len(flows)]
    pk = [(1.0 + i * 1e-4, *f) for i, f in enumerate(seq)]
    return write_capture(tmp_path_factory.mktemp("t") / "small.pcap", pk)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_json_has_the_promised_keys(small_trace: Path, capsys) -> None:
    code, out, _ = run(capsys, "simulate", "--trace", str(small_trace), "--json", "--k", "4")
    assert code == 0
    d = json.loads(out)
    for key in ("T", "R", "heavy_hitters", "detected", "f1", "precision", "recall", "hellos",
                "reports", "max_states", "max_messages_per_switch", "packets", "seconds",
                "trace_digest", "herd_version", "params"):
        assert key in d, key
    assert d["packets"] == 6000 and d["R"] == 10 and d["params"]["k"] == 4
    assert 0.0 <= d["f1"] <= 1.0


def test_simulate_confirm_shows_its_costs(small_trace: Path, capsys) -> None:
    code, out, _ = run(capsys, "simulate", "--trace", str(small_trace), "--confirm",
                       "--confirm-reports", "1", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["params"]["confirm"] is True and d["params"]["confirm_reports"] == 1
    assert d["slot_bytes"] == 24 and d["pull_messages"] > 0 and d["confirm_candidates"] > 0
    code, text, _ = run(capsys, "simulate", "--trace", str(small_trace), "--confirm",
                        "--confirm-reports", "1")
    assert f"confirm's pulls {d['pull_messages']}" in text
    assert "24 bytes a slot" in text and f"{d['confirm_candidates']} candidates pulled" in text
    code, _, err = run(capsys, "simulate", "--trace", str(small_trace), "--confirm",
                       "--confirm-reports", "0")
    assert code == 2 and err.count("\n") == 1 and "confirm_reports=0" in err


def test_sweep_writes_csv_record_and_plot(small_trace: Path, tmp_path: Path, capsys) -> None:
    out_csv, png = tmp_path / "s.csv", tmp_path / "s.png"
    code, out, _ = run(capsys, "sweep", "--trace", str(small_trace), "--param", "epsilon",
                       "--values", "0.1,0.3", "--seeds", "2", "--out", str(out_csv),
                       "--plot", str(png), "--k", "3")
    assert code == 0 and str(out_csv) in out and str(png) in out
    rows = list(csv.reader(out_csv.read_text().splitlines()))
    assert rows[0][:4] == ["epsilon", "f1score", "precision", "recall"]
    assert [r[0] for r in rows[1:]] == ["0.1", "0.3"]
    header = rows[0]
    assert {"messages", "max_states", "T", "R", "seeds", "trace_digest"} <= set(header)
    assert rows[1][header.index("seeds")] == "1;2"
    assert rows[1][header.index("R")] == "10" and rows[2][header.index("R")] == "3"
    record = json.loads(out_csv.with_suffix(".json").read_text())
    assert record["trace_digest"] == rows[1][header.index("trace_digest")]
    assert len(record["rows"][0]["runs"]) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_layout_file(small_trace: Path, tmp_path: Path, capsys) -> None:
    layout = tmp_path / "layout.csv"
    layout.write_text("sampling_probability,f1score,precision,recall\n0.1\n0.5\n")
    code, _, _ = run(capsys, "sweep", "--trace", str(small_trace), "--layout", str(layout),
                     "--out", str(layout))
    assert code == 0
    rows = list(csv.reader(layout.read_text().splitlines()))
    assert rows[0][:4] == ["sampling_probability", "f1score", "precision", "recall"]
    assert [r[0] for r in rows[1:]] == ["0.1", "0.5"] and rows[1][1] != ""


@pytest.mark.parametrize("argv, needle", [
    (["simulate", "--epsilon", "0"], "epsilon=0.0"),
    (["simulate", "--epsilon", "1.5"], "epsilon=1.5"),
    (["simulate", "--s", "0"], "s=0.0"),
    (["simulate", "--s", "2"], "s=2.0"),
    (["simulate", "--k", "0"], "k=0"),
    (["simulate", "--p", "-0.1"], "p=-0.1"),
    (["simulate", "--R", "0"], "R=0"),
    (["simulate", "--delay-ms", "-1"], "delay_ms=-1.0"),
    (["simulate", "--stages", "10,0"], "stages=10,0"),
    (["simulate", "--percentile", "101"], "percentile=101.0"),
])
def test_out_of_range_parameters(small_trace: Path, capsys, argv, needle) -> None:
    code, out, err = run(capsys, *argv, "--trace", str(small_trace))
    assert code == 2 and out == ""
    assert needle in err and err.count("\n") == 1 and err.startswith("herd: error:")


def test_bad_files_one_line_exit_2(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all" * 10)
    for path in (junk, tmp_path / "missing.pcap"):
        code, _, err = run(capsys, "simulate", "--trace", str(path))
        assert code == 2 and str(path.name) in err and err.count("\n") == 1


def test_empty_trace_is_an_error(tmp_path: Path, capsys) -> None:
    empty = write_capture(tmp_path / "empty.pcap", [])
    code, _, err = run(capsys, "simulate", "--trace", str(empty))
    assert code == 2 and "no IPv4 packets" in err


def test_failed_sweep_leaves_existing_csv_untouched(small_trace: Path, tmp_path: Path,
                                                    capsys) -> None:
    out_csv = tmp_path / "keep.csv"
    out_csv.write_text("epsilon,f1score,precision,recall\n0.1,0.5,0.5,0.5\n")
    before = out_csv.read_text()
    code, _, err = run(capsys, "sweep", "--trace", str(small_trace), "--param", "epsilon",
                       "--values", "0.1,7", "--out", str(out_csv))
    assert code == 2 and "epsilon=7.0" in err
    assert out_csv.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.csv"]
    code, _, err = run(capsys, "sweep", "--trace", str(small_trace), "--param", "colour",
                       "--values", "1", "--out", str(tmp_path / "new.csv"))
    assert code == 2 and "colour" in err and not (tmp_path / "new.csv").exists()


def test_bad_params_file(small_trace: Path, tmp_path: Path, capsys) -> None:
    pf = tmp_path / "p.json"
    pf.write_text('{"epsilon": 0.2, "colour": 1}')
    code, _, err = run(capsys, "simulate", "--trace", str(small_trace), "--params", str(pf))
    assert code == 2 and "colour" in err
    pf.write_text('{"params": {"epsilon": 0.25, "s": 0.5}}')
    code, out, _ = run(capsys, "simulate", "--trace", str(small_trace), "--params", str(pf),
                       "--s", "0.4", "--json")
    assert code == 0
    params = json.loads(out)["params"]
    assert params["epsilon"] == 0.25 and params["s"] == 0.4  # the flag overrides the file


def test_console_script_runs_without_traceback(tmp_path: Path) -> None:
    junk = tmp_path / "x.pcap"
    junk.write_bytes(b"\x00" * 3)
    proc = subprocess.run([sys.executable, "-m", "herd", "trace", "info", str(junk)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
