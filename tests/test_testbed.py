"""The testbed harness on the model target in Mininet (root; CI is root).

The whole thing for real: Mininet hosts and veth links, the model switches as processes
forwarding frames with packet sockets, the coordinator and ten local controllers, tcpreplay.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from herd.testbed.network import interface_names
from herd.testbed.topology import Topology, evaluation_topology


def _mininet() -> bool:
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        return False
    return all(shutil.which(t) for t in ("tcpreplay", "tcprewrite", "mnexec"))


pytestmark = [
    pytest.mark.root,
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0, reason="the testbed needs root"),
    pytest.mark.skipif(not _mininet(), reason="Mininet / tcpreplay not installed "
                       "(bash scripts/setup.sh --testbed)"),
]


SYNTH_20K = REPO / "pcap" / "synth-20k.pcap"
P4APP_10 = REPO / "topologies" / "p4app_10_switches_herd.json"


def run_harness(layout: Path, T: str, *options: str, pcap: Path = SYNTH_20K,
                p4app: Path = P4APP_10, timeout: float = 600) -> subprocess.CompletedProcess:
    """``start_topology_and_eval.sh 0.2 0.1 T 0 layout pcap p4app options...``."""
    return subprocess.run(
        [sys.executable, "-m", "herd.testbed.harness", "0.2", "0.1", T, "0", str(layout),
         str(pcap), str(p4app), *options],
        capture_output=True, text=True, timeout=timeout, cwd=REPO)


def assert_nothing_left(topology: Topology) -> None:
    """No interfaces, no switch or controller processes left behind."""
    left = [n for n in interface_names(topology) if Path(f"/sys/class/net/{n}").exists()]
    assert left == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "herd.testbed.model_node" not in ps and "controller_service" not in ps


def test_harness_on_the_model_target(tmp_path: Path) -> None:
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n0.2\n")
    # T = 20: 176 heavy hitters, so one flow moves F1 by ~0.006, not ~0.03 as at the
    # 99th percentile (28 flows): the 0.05 comparison measures the testbed, not the dice.
    proc = run_harness(layout, "20", "--target", "model", "--pps", "5000", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(layout.read_text().splitlines()))
    assert [r["epsilon"] for r in rows] == ["0.1", "0.2"]
    for r in rows:
        assert r["sent_packets"] == "20000" and r["lost_packets"] == "0", r
        assert r["lost_messages"] == "0", r
        # herd simulate on the same pcap with the delays the testbed measured, hello by hello.
        assert abs(float(r["f1score"]) - float(r["simulated_f1"])) <= 0.05, r
        assert int(r["measured_delays"]) >= int(r["hellos"]), r
        assert float(r["hellos"]) > 0 and float(r["reports"]) > 0
    assert (layout.with_suffix(".json")).exists()
    # The timing file beside the CSV reproduces simulated_f1 from the command line.
    delays = tmp_path / "epsilon-delays-epsilon=0.1.csv"
    sim = subprocess.run(
        [sys.executable, "-m", "herd.cli", "simulate", "--trace",
         str(REPO / "pcap" / "synth-20k.pcap"), "--T", "20", "--epsilon", "0.1", "--s", "0.2",
         "--delay-ms", rows[0]["measured_delay_ms"], "--delays", str(delays), "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert abs(json.loads(sim.stdout)["f1"] - float(rows[0]["simulated_f1"])) < 1e-5
    assert_nothing_left(evaluation_topology(10))


def test_harness_rejects_bad_input(tmp_path: Path) -> None:
    layout = tmp_path / "bad.csv"
    layout.write_text("epsilon,f1score,precision,recall\n2.0\n")
    proc = run_harness(layout, "0", timeout=120)
    assert proc.returncode == 2 and "epsilon=2.0" in proc.stderr
    assert layout.read_text() == "epsilon,f1score,precision,recall\n2.0\n"


def test_harness_with_epochs_on_the_model_target(tmp_path: Path) -> None:
    """Epochs on the testbed: the pcap replayed with its own timing (20k packets over 0.2 s,
    sped up to a mean of 5,000 packets/s: 4 s), the switches' clocks split it into epochs of
    40 ms of pcap time (800 ms on theirs) from an origin set through their drivers; F1 per
    (flow, epoch) close to the simulator's under the measured timing and switch epochs."""
    from herd.delays import read_timing

    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    proc = run_harness(layout, "20", "--target", "model", "--pps", "5000", "--epoch-ms", "40")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = list(csv.DictReader(layout.read_text().splitlines()))
    assert r["sent_packets"] == "20000" and r["lost_packets"] == "0", r
    assert r["lost_messages"] == "0", r
    assert int(r["epochs"]) == 5 and float(r["epoch_ms"]) == 40, r
    (run,) = json.loads(layout.with_suffix(".json").read_text())["runs"]
    assert run["late_reports"] == 0 and run["epochs_closed"] >= 5
    assert abs(run["switch_epoch_us"] - 800_000) <= 10  # the pcap's mean rate: 99,999.5/s
    # Every switch entered epochs 1..4, and the timing file says where.
    timing = read_timing(tmp_path / "epsilon-delays-epsilon=0.1.csv")
    assert len(timing.epochs) == run["switch_epoch_starts"] >= 10 * 4
    # The origin lined up with tcpreplay's start: few packets in another epoch than the pcap's.
    assert run["epoch_mismatched_packets"] < 0.02 * 20000, run
    assert abs(float(r["f1score"]) - float(r["simulated_f1"])) <= 0.05, r
    assert_nothing_left(evaluation_topology(10))


def _small_run(tmp_path: Path, k: int, packets: int) -> tuple[Path, Path]:
    """The first ``packets`` of synth-20k and a p4app of k ingress switches: a short run."""
    from test_topology import _pcap_slice

    from herd.testbed.topology import p4app_json

    pcap = _pcap_slice(REPO / "pcap" / "synth-20k.pcap", tmp_path / "slice.pcap", packets)
    p4app = tmp_path / f"p4app_{k}.json"
    p4app.write_text(json.dumps(p4app_json(evaluation_topology(k))))
    return pcap, p4app


def test_direct_injection_on_the_model_target(tmp_path: Path) -> None:
    """Each switch's share from its own host to its own sink: every packet arrives, each
    switch gets exactly the load balancer's share, and F1 is the simulator's."""
    from herd.prepared import PreparedTrace
    from herd.testbed.topology import direct_topology
    from herd.trace import load_trace

    pcap, p4app = _small_run(tmp_path, 3, 6000)
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    proc = run_harness(layout, "10", "--target", "model", "--pps", "3000", "--injection",
                       "direct", pcap=pcap, p4app=p4app)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = list(csv.DictReader(layout.read_text().splitlines()))
    assert r["injection"] == "direct" and r["lost_at"] == "", r
    assert r["sent_packets"] == "6000" and r["lost_packets"] == "0", r
    assert r["lost_messages"] == "0", r
    assert abs(float(r["f1score"]) - float(r["simulated_f1"])) <= 0.05, r
    (run,) = json.loads(layout.with_suffix(".json").read_text())["runs"]
    hops = {h["hop"]: h for h in run["hops"]}
    assert list(hops) == ["sent by tcpreplay", "h1s1..h1s3 out", "s1..s3 in", "s1..s3 out",
                          "h2s1..h2s3 in"]
    # Switch i got what the load balancer would have given it (p = 0.95, seed 1).
    ingress = PreparedTrace(load_trace(pcap)).ingress(3, 0.95, 1)
    assert hops["s1..s3 in"]["nodes"] == {f"s{i + 1}": int((ingress == i).sum())
                                          for i in range(3)}
    assert all(h["packets"] == 6000 for h in hops.values())
    assert set(run["probes"]) == {"s1", "s2", "s3"}
    left = [n for n in interface_names(direct_topology(3)) if Path(f"/sys/class/net/{n}").exists()]
    assert left == []


@pytest.mark.parametrize("injection", ["lb", "direct"])
def test_harness_with_confirm_on_the_model_target(tmp_path: Path, injection: str) -> None:
    """``--confirm``: the coordinator pulls the candidates' held totals from the model
    switches through the controllers at the end of the run; F1 is the simulator's with
    confirm under the measured timing, and the row counts the pull's messages (as the
    simulator does, and in ``messages``) and 24-byte slots."""
    pcap, p4app = _small_run(tmp_path, 3, 6000)
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    proc = run_harness(layout, "10", "--target", "model", "--pps", "3000", "--injection",
                       injection, "--confirm", "--confirm-reports", "2", pcap=pcap,
                       p4app=p4app)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = list(csv.DictReader(layout.read_text().splitlines()))
    assert r["confirm"] == "True" and r["slot_bytes"] == "24", r
    assert r["sent_packets"] == "6000" and r["lost_packets"] == "0", r
    assert r["lost_messages"] == "0" and r["pull_timeouts"] == "0", r
    assert r["unknown_held_totals"] == "0", r
    assert abs(float(r["f1score"]) - float(r["simulated_f1"])) <= 0.05, r
    (run,) = json.loads(layout.with_suffix(".json").read_text())["runs"]
    assert run["pulls"] == 1 and run["params"]["confirm"] and run["params"]["confirm_reports"] == 2
    assert run["pull_messages"] == run["simulated_pull_messages"] > 0
    assert run["confirm_candidates"] == run["simulated_confirm_candidates"]
    assert run["messages"] == (run["hellos"] + run["reports"] + run["overflows"]
                               + run["pull_messages"])
    from herd.testbed.topology import injection_topology

    assert_nothing_left(injection_topology(injection, 3))


@pytest.mark.parametrize("injection", ["lb", "direct"])
def test_a_dead_hop_fails_the_run_naming_it(tmp_path: Path, injection: str) -> None:
    """A hop dead before the replay: the path probe fails naming it; with the probes
    skipped, the replay's per-hop counts name it too. lb: the aggregator's process is gone,
    every packet is lost and the run fails instead of scoring an F1 of 0. direct: s2's link
    to its sink is down, s2's share is lost, s1's arrives: a partial loss, reported at s2."""
    from herd.params import Params
    from herd.prepared import PreparedTrace
    from herd.testbed.harness import LossError, Testbed
    from herd.testbed.probe import PathError
    from herd.trace import load_trace

    pcap, _ = _small_run(tmp_path, 2, 1000)
    prep = PreparedTrace(load_trace(pcap))
    params = Params(s=0.2, epsilon=0.1, T=10, k=2)
    work = tmp_path / "work"
    work.mkdir()
    with Testbed(2, "model", params.stages, work, injection) as tb:
        wire = tb.rewrite_macs(pcap, work / "replay.pcap")
        restart = tb.restart_switches

        def restart_and_break(p: Params) -> None:
            restart(p)
            if injection == "lb":
                tb.net.get("agg").stop_process()
            else:
                subprocess.run(["ip", "link", "set", "s2-eth2", "down"], check=True)

        tb.restart_switches = restart_and_break  # type: ignore[method-assign]
        with pytest.raises(PathError) as probe:
            tb.evaluate(prep, params, wire, 2000)
        where, through = ("agg out", "s1") if injection == "lb" else ("s2 out", "s2")
        assert f"path probe through {through}" in str(probe.value), probe.value
        assert f"stopped at {where}" in str(probe.value), probe.value

        tb.prove_paths = lambda: {}  # type: ignore[method-assign]
        if injection == "direct":
            out = tb.evaluate(prep, params, wire, 2000)
            hops = {h["hop"]: h for h in out["hops"]}
            share = hops["s1..s2 in"]["nodes"]["s2"]
            assert share > 0 and out["lost_packets"] == share, out["hops"]
            assert out["lost_at"] == "s1..s2 out"
            assert hops["s1..s2 out"]["nodes"] == {"s1": hops["s1..s2 in"]["nodes"]["s1"],
                                                   "s2": 0}
            return
        with pytest.raises(LossError) as lost:
            tb.evaluate(prep, params, wire, 2000)
    assert "stopped at agg out" in str(lost.value), lost.value
    result = lost.value.result
    hops = {h["hop"]: h["packets"] for h in result["hops"]}
    assert result["lost_at"] == "agg out" and result["sent_packets"] == 1000
    assert hops["agg in"] == 1000 and hops["agg out"] == 0 and hops["h2 in"] == 0


@pytest.mark.parametrize("param", ["R", "epoch_ms", "confirm", "sampling_probability"])
def test_harness_csv_names_each_column_once(param: str) -> None:
    import io

    import pandas as pd

    from herd.testbed.harness import csv_rows

    text = csv_rows(param, [1.0, 2.0], {1.0: {"f1score": 0.5, "R": 10, "epoch_ms": 5.0,
                                              "confirm": True}})
    header = next(csv.reader(io.StringIO(text)))
    assert header[0] == param and len(header) == len(set(header))
    assert param not in header[1:]
    frame = pd.read_csv(io.StringIO(text))
    assert not [c for c in frame.columns if c.endswith(".1")]
    assert frame["f1score"].tolist()[0] == 0.5
