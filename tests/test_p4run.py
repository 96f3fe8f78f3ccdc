"""A network p4run brought up, as herd reads it (herd.testbed.p4run), configures it
(``herd testbed configure``) and runs the manual session on it (BMv2, root, p4-utils).

The database fixture is a k=2 ``topology.json`` in the shape p4-utils 's p4run wrote for
``p4app_json(evaluation_topology(2))`` (trimmed of the fields herd does not read).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import REPO

from herd.cli import main as herd_main
from herd.errors import HerdInputError
from herd.params import Params
from herd.services.drivers.bmv2_thrift import Bmv2Thrift
from herd.testbed.configure import CPU_MIRROR_SESSION, evaluation_writes
from herd.testbed.p4run import controller_options, load
from herd.testbed.topology import (
    AGGREGATOR,
    HOST,
    INGRESS,
    LOAD_BALANCER,
    evaluation_topology,
    p4app_json,
)


def _switch(name: str, program: str, thrift: int, device: int, cpu: bool = False,
            build: str = "/tmp/p4run/build") -> dict[str, Any]:
    node: dict[str, Any] = {
        "p4_src": f"/work/p4src/{program}.p4", "pcap_dump": False, "log_enabled": False,
        "cls": None, "isP4Switch": True, "isSwitch": True, "device_id": device,
        "thrift_port": thrift, "json_path": f"{build}/{program}.json", "id": name}
    if cpu:
        node.update(cpu_port=True, cpu_port_num=3, cpu_intf=f"{name}-cpu-eth0",
                    cpu_ctl_intf=f"{name}-cpu-eth1")
    return node


def _link(a: str, b: str, pa: int, pb: int, source: str, target: str) -> dict[str, Any]:
    return {"cls": None, "weight": 1, "intfName1": f"{a}-eth{pa}", "intfName2": f"{b}-eth{pb}",
            "node1": a, "node2": b, "port1": pa, "port2": pb, "source": source,
            "target": target}


def topology_db(k: int = 2) -> dict[str, Any]:
    """p4run's topology.json for the k-switch evaluation network (p4-utils numbers the
    Thrift ports 9090 up in name order, the CPU port 3; ``source``/``target`` follow the
    graph's order, not the link's)."""
    nodes: list[dict[str, Any]] = [
        {"log_enabled": False, "cls": None, "isHost": True, "mac": f"00:00:0a:00:00:0{i}",
         "ip": f"10.0.0.{i}/16", "id": f"h{i}"} for i in (2, 1)]
    nodes.append(_switch("agg", "aggregator", 9090, 1))
    nodes.append(_switch("lb", "load_balancer", 9091, 2))
    for i in range(k):
        nodes.append(_switch(f"s{i + 1}", "herd", 9092 + i, 3 + i, cpu=True))
    links = [_link("agg", "h2", k + 1, 0, "h2", "agg"), _link("h1", "lb", 0, 1, "h1", "lb")]
    for i in range(k):
        s = f"s{i + 1}"
        links.append(_link(s, "agg", 2, i + 1, "agg", s))
        links.append(_link("lb", s, i + 2, 1, "lb", s))
    return {"directed": False, "multigraph": False, "graph": {}, "nodes": nodes,
            "links": links}


def write_db(tmp_path: Path, db: dict[str, Any], name: str = "topology.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(db))
    return path


# ------------------------------------------------------------------ reading the database


def test_load_kinds_ports_and_cpu(tmp_path: Path) -> None:
    net = load(write_db(tmp_path, topology_db(3)))
    t = net.topology
    assert {n: t.nodes[n].kind for n in ("h1", "h2", "lb", "agg", "s1", "s3")} == {
        "h1": HOST, "h2": HOST, "lb": LOAD_BALANCER, "agg": AGGREGATOR, "s1": INGRESS,
        "s3": INGRESS}
    assert [(n.name, n.index) for n in t.ingress_switches] == [("s1", 0), ("s2", 1), ("s3", 2)]
    # node1/port1 belong together whatever source/target say
    assert t.port("lb", "s3") == 4 and t.port("s3", "lb") == 1
    assert t.port("s2", "agg") == 2 and t.port("agg", "s2") == 2
    assert t.port("agg", "h2") == 4 and t.port("lb", "h1") == 1
    assert net.switches["s2"].thrift_port == 9093 and net.switches["lb"].thrift_port == 9091
    assert net.switches["s2"].cpu_interface == "s2-cpu-eth1"
    assert net.switches["lb"].cpu_port is None
    assert net.cpu_ports() == {"s1": 3, "s2": 3, "s3": 3}
    assert net.hosts["h1"].mac == "00:00:0a:00:00:01"
    net.check_evaluation()


def test_same_topology_as_the_p4app_it_came_from(tmp_path: Path) -> None:
    """What p4run records is the topology herd generated the p4app from."""
    t = load(write_db(tmp_path, topology_db(2))).topology
    ref = evaluation_topology(2)
    assert {n.name: (n.kind, n.index) for n in t.nodes.values()} == \
        {n.name: (n.kind, n.index) for n in ref.nodes.values()}
    for link in ref.links:
        assert t.port(link.a, link.b) == link.port_a
        assert t.port(link.b, link.a) == link.port_b


def test_newer_networkx_edges_key(tmp_path: Path) -> None:
    db = topology_db(2)
    db["edges"] = db.pop("links")
    assert load(write_db(tmp_path, db)).topology.port("lb", "s2") == 3


def test_controller_options(tmp_path: Path) -> None:
    path = write_db(tmp_path, topology_db(2))
    assert controller_options(path, "s2") == {
        "switch_address": "127.0.0.1:9093", "cpu_interface": "s2-cpu-eth1", "switch_index": 1}
    assert controller_options(str(path), "s1")["switch_index"] == 0


def test_controller_takes_the_switch_from_the_database(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``herd controller --topology``: the bmv2 driver at the switch's Thrift port (nothing
    listens there: the one-line error names it)."""
    db = topology_db(2)
    port = _closed_port()
    next(n for n in db["nodes"] if n["id"] == "s2")["thrift_port"] = port
    args = ["controller", "--topology", str(write_db(tmp_path, db)), "--switch", "s2",
            "--T", "5", "--switch-timeout", "0", "--log-level", "CRITICAL"]
    assert herd_main(args) == 2
    err = capsys.readouterr().err
    assert f"bmv2 switch at 127.0.0.1:{port}" in err and err.count("\n") == 1, err
    assert herd_main([*args[:4], "agg", *args[5:]]) == 2
    assert "switch agg runs aggregator.p4, not herd.p4" in capsys.readouterr().err
    assert herd_main(["controller", "--switch", "s1", "--T", "5"]) == 2
    assert "give --switch-address (or --topology" in capsys.readouterr().err


def test_writes_from_the_database(tmp_path: Path) -> None:
    net = load(write_db(tmp_path, topology_db(2)))
    plan = evaluation_writes(net.topology, Params(k=2), net.cpu_ports())
    assert [(w.key, w.values) for w in plan["lb"] if w.kind == "entry"] == [((0,), (2,)),
                                                                           ((1,), (3,))]
    assert [str(w) for w in plan["s2"]] == ["table_set_default forwarding forward 2",
                                            f"mirroring_add {CPU_MIRROR_SESSION} 3"]
    assert [str(w) for w in plan["agg"]] == ["table_set_default forwarding forward 3"]


def _broken(db: dict[str, Any], change: str) -> dict[str, Any]:
    nodes = {n["id"]: n for n in db["nodes"]}
    if change == "no herd.p4":
        db["nodes"] = [n for n in db["nodes"] if not n["id"].startswith("s")]
    elif change == "no thrift port":
        del nodes["s1"]["thrift_port"]
    elif change == "other program":
        nodes["lb"]["p4_src"] = "/x/router.p4"
        nodes["lb"]["json_path"] = "/x/router.json"
    elif change == "cpu port unnumbered":
        del nodes["s2"]["cpu_port_num"]
    elif change == "ingress unnumbered":
        nodes["s1"]["id"] = "ingress"
    elif change == "port not a number":
        db["links"][0]["port1"] = "3"
    elif change == "not a graph":
        del db["nodes"]
    return db


@pytest.mark.parametrize(("change", "says"), [
    ("no herd.p4", "no switch runs herd.p4"),
    ("no thrift port", "switch s1 has no thrift_port"),
    ("other program", "switch lb runs /x/router.p4, not one of herd's programs"),
    ("cpu port unnumbered", "switch s2 has cpu_port but no cpu_port_num"),
    ("ingress unnumbered", "ingress switch ingress: its name must end in its number"),
    ("port not a number", "port1 is '3', not an integer"),
    ("not a graph", "not a p4-utils topology database"),
])
def test_bad_database(tmp_path: Path, change: str, says: str) -> None:
    path = write_db(tmp_path, _broken(topology_db(2), change))
    with pytest.raises(HerdInputError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: ") and says in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_or_not_json(tmp_path: Path) -> None:
    with pytest.raises(HerdInputError, match=r"topology\.json: no such file"):
        load(tmp_path / "topology.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{nodes")
    with pytest.raises(HerdInputError, match=r"bad\.json: not JSON"):
        load(bad)


def test_controller_options_refuses(tmp_path: Path) -> None:
    path = write_db(tmp_path, topology_db(2))
    with pytest.raises(HerdInputError, match=r"switch s99 not in the topology \(switches: agg, "
                       r"lb, s1, s2\)"):
        controller_options(path, "s99")
    with pytest.raises(HerdInputError, match="switch lb runs load_balancer.p4, not herd.p4"):
        controller_options(path, "lb")
    db = topology_db(2)
    s2 = next(n for n in db["nodes"] if n["id"] == "s2")
    for key in ("cpu_port", "cpu_port_num", "cpu_intf", "cpu_ctl_intf"):
        del s2[key]
    with pytest.raises(HerdInputError, match=r"switch s2 has no CPU port"):
        controller_options(write_db(tmp_path, db, "nocpu.json"), "s2")


def test_check_evaluation(tmp_path: Path) -> None:
    db = topology_db(3)
    db["nodes"] = [n for n in db["nodes"] if n["id"] != "s2"]  # s1, s3: index 1 missing
    with pytest.raises(HerdInputError, match=r"\(s1, s3\) must be s1\.\.sk"):
        load(write_db(tmp_path, db)).check_evaluation()
    db = topology_db(2)
    db["nodes"] = [n for n in db["nodes"] if n["id"] != "agg"]
    with pytest.raises(HerdInputError, match="0 switches run aggregator.p4"):
        load(write_db(tmp_path, db, "noagg.json")).check_evaluation()


def test_configure_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert herd_main(["testbed", "configure", "--topology", str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert "none.json: no such file" in err and err.count("\n") == 1
    # a database whose switches are not running: one line naming the switch, exit 2
    db = topology_db(2)
    for n in db["nodes"]:
        if "thrift_port" in n:
            n["thrift_port"] = _closed_port()
    assert herd_main(["testbed", "configure", "--topology", str(write_db(tmp_path, db))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("herd: error: lb: bmv2 switch at 127.0.0.1:") and \
        err.count("\n") == 1, err


def test_configure_checks_the_origin_before_writing(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    db = topology_db(2)
    for n in db["nodes"]:
        if "thrift_port" in n:
            n["thrift_port"] = _closed_port()  # had it written anything, it would fail here
    args = ["testbed", "configure", "--topology", str(write_db(tmp_path, db)),
            "--epoch-origin-in", "-1"]
    assert herd_main(args) == 2
    err = capsys.readouterr().err
    assert "--epoch-origin-in -1.0: must be in [0, 3600] seconds" in err and \
        err.count("\n") == 1, err


def _closed_port() -> int:
    from herd.services.replay import free_port

    return free_port()  # bound and released: nothing listens there


# ------------------------------------------------------------------ the p4app


def test_p4app_json() -> None:
    app = p4app_json(evaluation_topology(2))
    sw = app["topology"]["switches"]
    assert sw["s1"] == {"p4_src": "p4src/herd.p4", "cpu_port": True}
    assert sw["lb"] == {"p4_src": "p4src/load_balancer.p4"}
    assert sw["agg"] == {"p4_src": "p4src/aggregator.p4"}
    assert ["lb", "s2", {"port1": 3, "port2": 1}] in app["topology"]["links"]
    assert ["h1", "lb", {"port2": 1}] in app["topology"]["links"]
    assert app["compiler_module"]["options"]["outdir"] == "build"
    assert "compiler_module" not in p4app_json(evaluation_topology(2), build_dir=None)
    app = p4app_json(evaluation_topology(2), p4src="/r/p4src", build_dir="/b",
                     thrift_ports={"s1": 9500})
    assert app["topology"]["switches"]["s1"] == {"p4_src": "/r/p4src/herd.p4", "cpu_port": True,
                                                 "thrift_port": 9500}
    assert app["compiler_module"]["options"]["outdir"] == "/b"


# ------------------------------------------------------------------ the manual session

RUNNER = Path(__file__).with_name("p4run_network.py")
TOOLS = ("simple_switch", "p4c", "tcpreplay", "tcprewrite", "mnexec")
PCAP = REPO / "pcap" / "synth-20k.pcap"
PPS = 1000  # BMv2 keeps up even on a loaded machine


def _p4utils_python() -> str | None:
    """A Python that imports p4-utils: this one, else p4run's own."""
    for python in dict.fromkeys((sys.executable, "/usr/bin/python3")):
        if shutil.which(python) and subprocess.run(
                [python, "-c", "import p4utils.p4run"], capture_output=True).returncode == 0:
            return python
    return None


def _missing() -> list[str]:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [m for m in ("bm_runtime", "sswitch_runtime", "thrift")
                if importlib.util.find_spec(m) is None]
    return missing


def _rx_packets(pid: int, intf: str) -> int:
    """Frames a host's interface received: /proc/PID/net/dev is the host's namespace."""
    for line in Path(f"/proc/{pid}/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == intf:
            return int(counters.split()[1])
    raise AssertionError(f"no {intf} in the namespace of {pid}")


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ready "):
                return dict(json.loads(line[len("ready "):]))
        if proc.poll() is not None:
            raise AssertionError(f"p4-utils exited with {proc.returncode}: "
                                 f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"network not up after {timeout:.0f} s: {log.read_text()[-3000:]}")


@pytest.mark.bmv2
@pytest.mark.slow
def test_manual_session(tmp_path: Path) -> None:
    """p4app -> p4-utils network -> herd testbed configure -> coordinator and a controller
    per ingress switch -> tcpreplay from h1 -> the coordinator's elephants scored."""
    if os.geteuid() != 0:
        pytest.skip("needs root: p4-utils builds the network in Mininet")
    if missing := _missing():
        pytest.skip(f"BMv2/p4c/tcpreplay not installed ({', '.join(missing)} not found)")
    python = _p4utils_python()
    if python is None:
        pytest.skip("p4-utils is not importable (import p4utils.p4run) here nor by "
                    "/usr/bin/python3")
    from herd.prepared import PreparedTrace
    from herd.services.replay import free_port
    from herd.testbed.harness import Bmv2TestbedRun, _linktype
    from herd.trace import load_trace

    k = 2
    params = Params(k=k, seed=3, p=0.95)
    topo = evaluation_topology(k)
    # Free Thrift ports rather than p4-utils' 9090 up: another network may hold those.
    thrift = {n.name: free_port() for n in topo.nodes.values() if n.kind != HOST}
    app = p4app_json(topo, p4src=REPO / "p4src", build_dir=tmp_path / "build",
                     thrift_ports=thrift)
    nolog = Path("/opt/bmv2-nolog/bin/simple_switch")
    if nolog.exists():  # logging compiled out: several times the packet rate
        for sw in app["topology"]["switches"].values():
            sw["sw_bin"] = str(nolog)
    (tmp_path / "p4app.json").write_text(json.dumps(app, indent=1))
    log = tmp_path / "p4run.log"
    with open(log, "wb") as out:
        network = subprocess.Popen([python, str(RUNNER), "p4app.json"], cwd=tmp_path,
                                   stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
    run: Bmv2TestbedRun | None = None
    try:
        hosts = _wait_ready(network, log, 300)["hosts"]
        db = tmp_path / "topology.json"  # where p4run writes it: the directory it runs in
        net = load(db)
        assert {n: net.switches[n].thrift_port for n in thrift} == thrift
        assert net.cpu_ports() == {"s1": 3, "s2": 3}

        proc = subprocess.run([sys.executable, "-m", "herd", "testbed", "configure",
                               "--topology", str(db), "--seed", str(params.seed),
                               "--p", str(params.p), "--epoch-origin-in", "1"],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["lb", "s1", "s2", "agg", "epoch"], \
            proc.stdout
        assert "mirroring_add 100 3" in lines[1]
        # One origin for both switches, each in its own clock (they started apart).
        origins = []
        for n in ("s1", "s2"):
            client = Bmv2Thrift(net.switches[n].thrift_port)
            origins.append(client.register_read("herd_epoch_origin", 0)
                           + client.clock_start_us())
            client.close()
        said = int(lines[4].split("(")[1].split()[0])  # "... (<unix us> us since ...)"
        assert all(abs(o - said) < 5_000 for o in origins), (said, origins)

        options = {n: controller_options(db, n) for n in ("s1", "s2")}

        class P4runRun(Bmv2TestbedRun):
            def driver_args(self, i: int) -> list[str]:
                assert options[self.names[i]]["switch_index"] == i
                return ["--topology", str(db)]  # as README's manual run does

        prep = PreparedTrace(load_trace(PCAP))
        ingress = [SimpleNamespace(thrift_port=net.switches[n].thrift_port)
                   for n in ("s1", "s2")]
        run = P4runRun(prep, params, PPS, workdir=str(tmp_path / "run"), switches=ingress)
        run.start()  # coordinator, then controllers; until both switches are configured

        wire = tmp_path / "replay.pcap"
        rewrite = ["tcprewrite", f"--enet-smac={net.hosts['h1'].mac}",
                   f"--enet-dmac={net.hosts['h2'].mac}", "--fixlen=pad",
                   f"--infile={PCAP}", f"--outfile={wire}"]
        if _linktype(PCAP) != 1:
            rewrite.insert(1, "--dlt=enet")
        subprocess.run(rewrite, check=True, capture_output=True)
        before = _rx_packets(hosts["h2"], "h2-eth0")
        sent = subprocess.run(["mnexec", "-a", str(hosts["h1"]), "tcpreplay", "-q", "-i",
                               "h1-eth0", f"--pps={PPS}", "--timer=nano", str(wire)],
                              capture_output=True, text=True)
        assert sent.returncode == 0, sent.stderr
        drained = run.wait_drained(lambda: _rx_packets(hosts["h2"], "h2-eth0") - before,
                                   timeout=120)
        received = _rx_packets(hosts["h2"], "h2-eth0") - before
        result = run.results(drained, compare=True)
    finally:
        if run is not None:
            run.close(keep=True)  # SIGTERM: the coordinator writes its results JSON
        if network.poll() is None:
            network.stdin.close()  # type: ignore[union-attr]  # the runner stops its network
            try:
                network.wait(60)
            except subprocess.TimeoutExpired:
                network.terminate()
                network.wait(30)
    from herd.evaluate import simulate

    simulated = simulate(prep, params).f1
    summary = {key: result[key] for key in ("f1", "precision", "recall", "simulated_f1",
                                            "lost_messages", "drained")}
    summary.update(simulate_f1=simulated, received=received, packets=prep.trace.packets)
    print(summary)
    assert drained, summary
    # h2 got the trace (BMv2 may drop a few frames when the machine is busy)
    assert received >= 0.95 * prep.trace.packets, summary
    assert result["lost_messages"] == 0, summary
    assert result["f1"] > 0.5 and simulated > 0.5, summary
    assert abs(result["f1"] - simulated) < 0.15, summary
    coordinator = json.loads((tmp_path / "run" / "coordinator-results.json").read_text())
    assert len(coordinator["elephants"]) > 0
    assert coordinator["params"]["switches"] == ["s1", "s2"]
    # the network is gone, and only ours was touched
    assert network.returncode == 0, log.read_text()[-2000:]
    assert subprocess.run(["ip", "link", "show", "s1-cpu-eth1"],
                          capture_output=True).returncode != 0
