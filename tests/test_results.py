"""Scoring a coordinator's results file against a trace (``herd score``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from herd.errors import HerdInputError
from herd.evaluate import simulate
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.services.results import read_results, score_results
from herd.trace import load_trace

PCAP = REPO / "pcap" / "synth-20k.pcap"


def results_of(prep: PreparedTrace, keys: np.ndarray) -> dict:
    """A results file as the coordinator writes it, for these (flow, epoch) pairs."""
    t = prep.trace
    flows, epochs = keys & 0xFFFFFFFF, keys >> 32
    return {"elephants": [
        {"epoch": int(e), "src": int(t.flow_src[f]), "dst": int(t.flow_dst[f]),
         "sport": int(t.flow_sport[f]), "dport": int(t.flow_dport[f]),
         "proto": int(t.flow_proto[f]), "reports": 10, "detected_ns": 5}
        for f, e in zip(flows, epochs, strict=True)]}


@pytest.mark.parametrize("epoch_ms", [0.0, 200.0])
def test_a_simulation_scored_from_its_elephants_scores_the_same(epoch_ms: float) -> None:
    prep = PreparedTrace(load_trace(PCAP))
    params = Params(s=0.2, epsilon=0.1, epoch_ms=epoch_ms)
    sim = simulate(prep, params)
    got = score_results(prep, params, results_of(prep, sim.detection.keys))
    for key in ("f1", "precision", "recall", "detected", "heavy_hitters", "epochs"):
        assert got[key] == sim.metrics[key], key
    assert got["T"] == sim.T and got["not_in_trace"] == 0
    assert [r["f1"] for r in got["per_epoch"]] == [r["f1"] for r in sim.per_epoch]


def test_a_confirm_simulation_scored_from_its_elephants_keeps_early_and_confirmed() -> None:
    """With confirm (the results' params say so), each elephant's ``early`` is kept: the true
    positives split into early and confirmed ones as the simulator splits them."""
    prep = PreparedTrace(load_trace(PCAP))
    params = Params(s=0.2, epsilon=0.1, confirm=True)
    sim = simulate(prep, params)
    assert sim.detection.early is not None
    res = results_of(prep, sim.detection.keys)
    for x, early in zip(res["elephants"], sim.detection.early.tolist(), strict=True):
        x["early"] = early
    plain = score_results(prep, params, res)
    assert "early_true_positives" not in plain  # the file does not say it is confirm's
    res["params"] = {"confirm": True}
    got = score_results(prep, params, res)
    assert got["f1"] == sim.f1
    for key in ("early_true_positives", "confirmed_true_positives"):
        assert got[key] == sim.metrics[key] > 0, key
    assert not [k for k in got if "detection_delay" in k]  # wall clock: not scored


def test_foreign_and_repeated_elephants() -> None:
    prep = PreparedTrace(load_trace(PCAP))
    params = Params()
    sim = simulate(prep, params)
    res = results_of(prep, sim.detection.keys)
    n = len(res["elephants"])
    res["elephants"].append(dict(res["elephants"][0]))  # the same pair twice: once
    res["elephants"].append({**res["elephants"][0], "src": 1, "dst": 2})  # not in the trace
    res["elephants"][1]["detected_ns"] = None  # not timed: still an elephant
    got = score_results(prep, params, res)
    assert got["detected"] == n + 1 and got["not_in_trace"] == 1
    assert got["precision"] < sim.metrics["precision"]
    assert got["recall"] == sim.metrics["recall"]


def test_bad_results_files(tmp_path: Path) -> None:
    with pytest.raises(HerdInputError, match="results file not found"):
        read_results(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(HerdInputError, match="bad.json: not a coordinator results file"):
        read_results(bad)
    bad.write_text(json.dumps({"counters": {}}))
    with pytest.raises(HerdInputError, match="no 'elephants' list"):
        read_results(bad)
    prep = PreparedTrace(load_trace(PCAP))
    with pytest.raises(HerdInputError, match="x.json: an elephant lacks a valid 'dport'"):
        score_results(prep, Params(), {"elephants": [{"src": 1, "dst": 2, "sport": 3}]},
                      "x.json")


def test_herd_score_command(tmp_path: Path) -> None:
    prep = PreparedTrace(load_trace(PCAP))
    sim = simulate(prep, Params())
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_of(prep, sim.detection.keys)))
    out = subprocess.run([sys.executable, "-m", "herd", "score", "--results", str(path),
                          "--trace", str(PCAP), "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["f1"] == sim.f1
    out = subprocess.run([sys.executable, "-m", "herd", "score", "--results",
                          str(tmp_path / "missing.json"), "--trace", str(PCAP)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "missing.json" in out.stderr
