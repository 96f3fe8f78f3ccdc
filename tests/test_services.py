"""The control plane as real services: coordinator (gRPC), local controllers, model switches,
``herd replay``. Real processes on loopback, always cleaned up; small synthetic traces."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from herd.messages import CPU_HEADER_LEN, CpuMessage, MessageType
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.services.common import TOKEN_METADATA_KEY, write_token_file
from herd.services.controller_service import CoordinatorClient
from herd.services.drivers.model import ModelDriver, SwitchError
from herd.services.flowtable import FlowTable
from herd.services.replay import ReplayRun, free_port
from herd.services.rpc import herd_pb2 as pb
from herd.synth import write_synthetic_pcap
from herd.trace import load_trace

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trace")
    os.environ.setdefault("HERD_CACHE_DIR", str(d / "cache"))
    path = d / "t.pcap"
    # 60k packets: ~400 heavy hitters at the 95th percentile, so that one flow more or
    # less moves F1 by ~0.003 and the replay-vs-simulator check is not a coin toss.
    write_synthetic_pcap(path, 60_000, seed=3)
    return path


@pytest.fixture(scope="module")
def prep(trace_file: Path) -> PreparedTrace:
    return PreparedTrace(load_trace(trace_file))


class Procs:
    """Processes a test starts; all are killed at the end, whatever happened."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, module: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"{log}.log", "ab") as out:
            p = subprocess.Popen([PY, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def wait_for(cond: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def start_model_switch(procs: Procs, tmp: Path) -> str:
    """A model switch s1 with no packets of its own (the test injects CPU messages)."""
    pk = tmp / "none.npz"
    np.savez(pk, ts_ns=np.zeros(0, np.int64), flow=np.zeros(0, np.int64),
             flow_src=np.zeros(0, np.uint32), flow_dst=np.zeros(0, np.uint32),
             flow_sport=np.zeros(0, np.uint16), flow_dport=np.zeros(0, np.uint16),
             flow_proto=np.zeros(0, np.uint8))
    sock = f"unix:{tmp / 's1.sock'}"
    ready = tmp / "s1.ready"
    procs.start("herd.services.model_switch", ["--name", "s1", "--listen", sock, "--packets",
                str(pk), "--start", "command", "--ready-file", str(ready)], "switch")
    wait_for(ready.exists, what="switch")
    return sock


class Coord:
    """A coordinator process for the tests, with a client."""

    def __init__(self, procs: Procs, tmp: Path, switches: str = "s1,s2,s3", R: int = 3,
                 extra: list[str] | None = None) -> None:
        self.procs, self.tmp = procs, tmp
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token_file = tmp / "token"
        if not self.token_file.exists():
            write_token_file(self.token_file)
        self.token = self.token_file.read_text().strip()
        self.args = ["--listen", self.address, "--switches", switches, "--R", str(R),
                     "--token-file", str(self.token_file), "--journal", str(tmp / "j.sqlite"),
                     "--results", str(tmp / "results.json"), *(extra or [])]
        self.start()

    def start(self) -> None:
        ready = self.tmp / "coord.ready"
        if ready.exists():
            ready.unlink()
        self.proc = self.procs.start("herd.services.coordinator_service",
                                     [*self.args, "--ready-file", str(ready)], "coordinator")
        wait_for(lambda: ready.exists() or self.proc.poll() is not None, what="coordinator")
        assert self.proc.poll() is None, self.procs.log("coordinator")
        self.client = CoordinatorClient(self.address, self.token)

    def kill9(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def query(self, elephants: bool = False) -> pb.QueryReply:
        return self.client.query(pb.QueryRequest(elephants=elephants), timeout=10,
                                 metadata=self.client.metadata)

    def counters(self) -> dict[str, int]:
        return dict(self.query().counters)


def batch(switch: int, seqs: list[int], flows: list[tuple[int, int, int, int, int]],
          ts: int = 1) -> pb.ReportBatch:
    cols = list(zip(*flows, strict=True))
    return pb.ReportBatch(switch_id=switch, seq=seqs, ts_ns=[ts] * len(seqs), src=cols[0],
                          dst=cols[1], sport=cols[2], dport=cols[3], proto=cols[4],
                          count=[9] * len(seqs))


FLOW_A = (0x0A000001, 0x14000002, 1234, 80, 6)
FLOW_B = (0x0B000001, 0x14000002, 999, 443, 6)


# ------------------------------------------------------------------------------ replay


def test_replay_matches_simulator_and_loses_nothing(trace_file: Path, tmp_path: Path) -> None:
    """``herd replay`` end to end (the CLI): lost_messages = 0 and F1 within 0.03 of
    ``herd simulate`` with the delays the replay measured, hello by hello; the delays file it
    writes gives ``herd simulate --delays`` that same F1."""
    delays = tmp_path / "delays.csv"
    out = subprocess.run(
        [PY, "-m", "herd.cli", "replay", "--trace", str(trace_file), "--k", "4",
         "--percentile", "95", "--pps", "4000", "--compare", "--json",
         "--results", str(tmp_path / "coord.json"), "--delays-out", str(delays)],
        capture_output=True, text=True, timeout=240, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["lost_messages"] == 0 and d["lost_reports"] == 0 and d["lost_hellos"] == 0
    assert d["drained"] and d["cpu_dropped"] == 0
    assert d["reports"] > 50 and d["hellos"] > 100
    assert abs(d["f1"] - d["simulated_f1"]) <= 0.03, (d["f1"], d["simulated_f1"])
    # Every hello's delay was measured, and each names a hello packet of its group here.
    assert d["measured_delays"] >= d["hellos"] and d["measured_delays_mismatched"] == 0
    sim = subprocess.run(
        [PY, "-m", "herd.cli", "simulate", "--trace", str(trace_file), "--k", "4",
         "--percentile", "95", "--delay-ms", str(d["measured_delay_ms"]), "--delays",
         str(delays), "--json"], capture_output=True, text=True, timeout=120)
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert json.loads(sim.stdout)["f1"] == d["simulated_f1"]
    assert d["hello_latency_ms_p50"] is not None and d["hello_latency_ms_p99"] is not None
    for key in ("T", "R", "precision", "recall", "messages", "max_states", "table_writes",
                "l_g_pushes", "groups", "params", "trace_digest", "reports_per_second"):
        assert key in d
    coord = json.loads((tmp_path / "coord.json").read_text())
    assert coord["counters"]["reports"] == d["reports"]
    assert len(coord["elephants"]) == d["detected"]


def test_controller_kill9_and_restart_loses_and_double_counts_nothing(
        prep: PreparedTrace) -> None:
    run = ReplayRun(prep, Params(k=3, percentile=95), pps=6000)
    try:
        run.start()
        assert len({id(p) for p in run.switches}) == 1  # one process hosts the switches
        run.wait_progress(0.3)
        run.kill_controller(1)  # -9, mid-run: its switch keeps sending
        time.sleep(0.7)
        run.start_controller(1)
        run.restarts["controllers"] += 1
        drained = run.wait_done(120)
        d = run.results(drained)
    finally:
        run.close()
    assert drained
    # The switches' registers say what was sent; the coordinator holds exactly that.
    assert d["lost_reports"] == 0 and d["lost_hellos"] == 0 and d["lost_messages"] == 0
    assert d["reports"] > 0
    assert d["restarts"]["controllers"] == 1


def test_coordinator_kill9_and_restart_loses_nothing(prep: PreparedTrace) -> None:
    run = ReplayRun(prep, Params(k=3, percentile=95), pps=6000)
    try:
        run.start()
        run.wait_progress(0.3)
        before = run.query(False)
        run.kill_coordinator()
        time.sleep(0.7)  # the controllers buffer reports and retry meanwhile
        run.start_coordinator()
        run.restarts["coordinator"] += 1
        after = run.query(False)
        drained = run.wait_done(120)
        d = run.results(drained)
    finally:
        run.close()
    assert drained
    c = d["coordinator"]
    # What was acknowledged before the kill came back from the journal.
    assert after.counters["recovered_reports"] >= before.counters["reports"]
    assert after.counters["recovered_memberships"] >= before.counters["memberships"]
    assert c["recovered_memberships"] > 0
    assert d["lost_reports"] == 0 and d["lost_hellos"] == 0 and d["lost_messages"] == 0


# ------------------------------------------------------------------------------ coordinator


def test_coordinator_restart_keeps_acknowledged_reports_and_groups(
        procs: Procs, tmp_path: Path) -> None:
    co = Coord(procs, tmp_path, R=2)
    c = co.client
    for name in ("s1", "s2", "s3"):
        c.register(pb.RegisterRequest(switch_name=name), metadata=c.metadata)
    g = (10 << 8) | 20
    # s1 then s2 say hello for g: the second makes l_g 2 (2 members >= 2 * 1).
    answers = list(c.hellos(iter([pb.HelloBatch(hellos=[
        pb.HelloRequest(switch_id=0, group=g, seq=1),
        pb.HelloRequest(switch_id=1, group=g, seq=1)])]), metadata=c.metadata))
    assert [r.l_g for r in answers[0].answers] == [1, 2]
    acks = list(c.reports(iter([batch(0, [2, 3], [FLOW_A, FLOW_B]),
                                batch(1, [5], [FLOW_A])]), metadata=c.metadata))
    assert [a.acked_seq for a in acks] == [3, 5]
    co.kill9()
    co.start()
    c = co.client
    q = co.query(True)
    assert q.counters["reports"] == 3 and q.counters["recovered_reports"] == 3
    assert q.counters["memberships"] == 2
    elephants = {(e.src, e.dst, e.sport, e.dport, e.proto) for e in q.elephants}
    assert elephants == {FLOW_A}  # FLOW_A has R = 2 reports
    # The l_g of the group survived: a third member sees 2, a subscriber gets g -> 2.
    assert c.hello(pb.HelloRequest(switch_id=2, group=g, seq=1),
                   metadata=c.metadata).l_g == 2
    sub = c.subscribe(pb.SubscribeRequest(switch_id=0), metadata=c.metadata)
    snap = []
    for u in sub:
        if u.snapshot_end:
            break
        snap.append((u.group, u.l_g))
    sub.cancel()
    assert snap == [(g, 2)]
    # A resent batch (the controller did not see the ack) is not counted twice.
    ack = list(c.reports(iter([batch(0, [2, 3], [FLOW_A, FLOW_B])]), metadata=c.metadata))[0]
    assert ack.duplicates == 2 and ack.accepted == 0
    assert co.counters()["reports"] == 3


def test_wrong_or_missing_token_refused_counted_logged_once(procs: Procs,
                                                             tmp_path: Path) -> None:
    co = Coord(procs, tmp_path)
    # As long as a real token (>= 16 bytes): refused for being wrong, not for its length.
    wrong = CoordinatorClient(co.address, "not-the-token-" + "0" * 34)
    missing = CoordinatorClient(co.address, None)
    try:
        for _ in range(3):
            for client in (wrong, missing):
                with pytest.raises(grpc.RpcError) as e:
                    client.register(pb.RegisterRequest(switch_name="s1"), timeout=5,
                                    metadata=client.metadata)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as e:
            list(wrong.reports(iter([batch(0, [1], [FLOW_A])]), metadata=wrong.metadata))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        wrong.close()
        missing.close()
    c = co.counters()
    assert c["rejected_token_wrong"] == 4 and c["rejected_token_missing"] == 3
    assert c["reports"] == 0
    log = procs.log("coordinator")
    assert log.count("rejected token_wrong") == 1 and log.count("rejected token_missing") == 1


def test_malformed_requests_and_unknown_switches_rejected_service_alive(
        procs: Procs, tmp_path: Path) -> None:
    co = Coord(procs, tmp_path)
    c = co.client
    md = ((TOKEN_METADATA_KEY, co.token),)
    raw_register = c.channel.unary_unary("/herd.v1.Coordinator/Register")  # bytes in, out
    for junk in (b"\x0a\xff", b"\xff\xff\xff\xff", b"\x12\x05abc"):
        with pytest.raises(grpc.RpcError) as e:
            raw_register(junk, timeout=5, metadata=md)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw_reports = c.channel.stream_stream("/herd.v1.Coordinator/Reports")
    with pytest.raises(grpc.RpcError) as e:
        list(raw_reports(iter([b"\x12\x03\x01\x02"]), timeout=5, metadata=md))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = batch(0, [1, 2], [FLOW_A, FLOW_B])
    del bad.src[1]  # columns of different lengths
    with pytest.raises(grpc.RpcError) as e:
        list(c.reports(iter([bad]), timeout=5, metadata=c.metadata))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(c.reports(iter([batch(0, [3, 2], [FLOW_A, FLOW_B])]), timeout=5,
                       metadata=c.metadata))  # sequence numbers going backwards
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        c.register(pb.RegisterRequest(switch_name="s99"), timeout=5, metadata=c.metadata)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        c.hello(pb.HelloRequest(switch_id=7, group=1, seq=1), timeout=5, metadata=c.metadata)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        list(c.reports(iter([batch(42, [1], [FLOW_A])]), timeout=5, metadata=c.metadata))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # Still serving, and nothing of the above was counted as data.
    assert c.register(pb.RegisterRequest(switch_name="s2"), timeout=5,
                      metadata=c.metadata).switch_id == 1
    assert c.hello(pb.HelloRequest(switch_id=1, group=5, seq=1), timeout=5,
                   metadata=c.metadata).l_g == 1
    n = co.counters()
    assert n["rejected_malformed"] == 6 and n["rejected_unknown_switch"] == 3
    assert n["reports"] == 0 and n["memberships"] == 1
    assert procs.log("coordinator").count("rejected malformed") == 1
    assert co.proc.poll() is None


def test_sigterm_writes_results_json_atomically(procs: Procs, tmp_path: Path) -> None:
    co = Coord(procs, tmp_path, R=1)
    c = co.client
    c.register(pb.RegisterRequest(switch_name="s1"), metadata=c.metadata)
    list(c.reports(iter([batch(0, [1], [FLOW_A], ts=12345)]), metadata=c.metadata))
    co.proc.send_signal(signal.SIGTERM)
    assert co.proc.wait(20) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["params"]["R"] == 1 and res["params"]["switches"] == ["s1", "s2", "s3"]
    elephant = {"epoch": 0, "src": FLOW_A[0], "dst": FLOW_A[1], "sport": FLOW_A[2],
                "dport": FLOW_A[3], "proto": FLOW_A[4], "reports": 1, "detected_ns": 12345,
                "early": True}  # by R reports (there is no pull without confirm)
    assert res["elephants"] == [elephant]
    assert res["switches"][0]["reports"] == 1 and res["counters"]["reports"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".results.json")]
    # Shutdown closed the one epoch: its results file beside the results.
    epoch0 = json.loads((tmp_path / "results-epochs" / "epoch-0.json").read_text())
    assert epoch0["elephants"] == [elephant] and epoch0["reports"] == 1


def test_unique_flow_flood_keeps_coordinator_memory_bounded(procs: Procs,
                                                            tmp_path: Path) -> None:
    """A DDoS of 1M one-packet flows, as the coordinator sees it at worst: a hello per
    (group, switch) and, if every flow's hold start crossed tau, one report per flow. The
    flow table stops at --max-flows; RSS stays bounded."""
    co = Coord(procs, tmp_path, switches="s1,s2", R=2, extra=["--max-flows", "100000"])
    c = co.client
    c.register(pb.RegisterRequest(switch_name="s1"), metadata=c.metadata)
    hellos = (pb.HelloBatch(hellos=[pb.HelloRequest(switch_id=sw, group=g, seq=g + 1)
                                    for g in range(a, a + 1024)])
              for sw in (0, 1) for a in range(0, 1 << 16, 1024))
    answered = sum(len(a.answers) for a in c.hellos(hellos, metadata=c.metadata))
    assert answered == 2 * 65536  # every group from two switches: the whole member matrix
    rss0 = co.counters()["rss_bytes"]
    n, size = 1_000_000, 20_000
    rng = np.random.default_rng(1)
    src = rng.integers(1, 1 << 32, n, dtype=np.uint64).astype(np.uint32)

    def batches() -> Iterator[pb.ReportBatch]:
        for a in range(0, n, size):
            b = min(n, a + size)
            k = b - a
            yield pb.ReportBatch(switch_id=0, seq=range(a + 1, b + 1), ts_ns=[1] * k,
                                 src=src[a:b].tolist(), dst=[0x0A000001] * k,
                                 sport=(np.arange(a, b) & 0xFFFF).tolist(), dport=[80] * k,
                                 proto=[17] * k, count=[5] * k)

    acks = list(c.reports(batches(), metadata=c.metadata))
    assert acks[-1].acked_seq == n
    q = co.counters()
    assert q["reports"] == n and q["flows"] == 100_000
    assert q["untracked_reports"] == n - 100_000
    assert q["memberships"] == 2 * 65536
    # 100k flows cost ~8-16 MB in the table; RSS must not grow with the 1M flood.
    assert q["flow_table_bytes"] < 20 << 20
    assert q["rss_bytes"] - rss0 < 120 << 20, (rss0, q["rss_bytes"])


# ------------------------------------------------------------------------------ switch + controller


def test_malformed_cpu_messages_rejected_controller_keeps_working(procs: Procs,
                                                                  tmp_path: Path) -> None:
    co = Coord(procs, tmp_path)
    sock = start_model_switch(procs, tmp_path)
    status = tmp_path / "ctl.json"
    procs.start("herd.services.controller_service", [
        "--switch", "s1", "--T", "50", "--coordinator", co.address, "--token-file",
        str(co.token_file), "--switch-address", sock, "--status-file", str(status)],
        "controller")
    drv = ModelDriver("s1", sock)
    try:
        wait_for(lambda: drv.stats()["configured"] and drv.stats()["subscriber"],
                 what="controller configures the switch")
        hello = CpuMessage(MessageType.HELLO, 0x0A000001, 0x14000002, 1, 2, 6, 0).pack()
        for payload in (b"\x01\x02", bytes([9]) + bytes(CPU_HEADER_LEN - 1), hello + b"\x00",
                        hello):
            drv.request(op="inject_cpu", hex=payload.hex())
        # The good hello after three bad ones: the entry of 10/8 -> 20/8 gets installed.
        wait_for(lambda: drv.register_read("hello_sent", (10 << 8) | 20) == 0
                 and drv.stats()["groups_installed"] == 1, what="entry installed")
        wait_for(lambda: drv.stats()["cpu_acked"] == 4, what="all acknowledged")

        def counters() -> dict[str, Any]:
            return json.loads(status.read_text())["counters"] if status.exists() else {}

        wait_for(lambda: counters().get("malformed_cpu") == 3, what="malformed counted")
        assert procs.log("controller").count("rejected malformed_cpu") == 1
        # The switch rejects bad control requests and keeps serving.
        with pytest.raises(SwitchError):
            drv.request(op="register_read", name="nope", index=0)
        with pytest.raises(SwitchError):
            drv.table_add("group_table", (1, 2, 3), "set_group_params", (1, 1))
        assert drv.register_read("herd_regs", 2) == 5  # hold start round(1 / 0.2)
    finally:
        drv.close()


# ------------------------------------------------------------------------------ units


def test_flow_table_matches_a_dict_and_honours_its_cap() -> None:
    rng = np.random.default_rng(5)
    keys = [tuple(int(x) for x in row) for row in
            np.column_stack([rng.integers(0, 4, 30000), rng.integers(0, 3, 30000),
                             rng.integers(0, 50, 30000), rng.integers(0, 2, 30000),
                             rng.integers(0, 3, 30000)])]
    cols = [np.array(c) for c in zip(*keys, strict=True)]
    table = FlowTable(max_flows=1000)
    got = np.concatenate([table.index(*(c[a:a + 700] for c in cols))
                          for a in range(0, 30000, 700)])
    ref: dict[tuple[int, ...], int] = {}
    for k, v in zip(keys, got, strict=True):
        if k not in ref and len(ref) < 1000:
            ref[k] = len(ref)
        assert v == ref.get(k, -1)
    assert table.n == 1000
    assert (int(table.src[3]), int(table.dport[3])) == next(
        (k[0], k[3]) for k, v in ref.items() if v == 3)


def test_bmv2_driver_clear_error_without_bmv2_and_cpu_frames() -> None:
    from herd.errors import HerdInputError
    from herd.messages import ETHERTYPE_HERD_CPU
    from herd.services.drivers import open_driver
    from herd.services.drivers.bmv2 import parse_cpu_frame

    with pytest.MonkeyPatch.context() as mp:  # as on a machine without BMv2
        for module in ("bm_runtime", "bm_runtime.standard"):  # even if imported before
            mp.setitem(sys.modules, module, None)
        with pytest.raises(HerdInputError, match="Thrift runtime is not importable"):
            open_driver("bmv2", "s1", "127.0.0.1:9090")
    msg = CpuMessage(MessageType.REPORT, 1, 2, 3, 4, 6, 99).pack()
    eth = bytes(12) + ETHERTYPE_HERD_CPU.to_bytes(2, "big")
    assert parse_cpu_frame(eth + msg + bytes(10)) == msg  # Ethernet padding dropped
    assert parse_cpu_frame(bytes(12) + b"\x08\x00" + msg) is None  # IPv4, not ours
    assert parse_cpu_frame(eth + msg[:5]) == msg[:5]  # short: the controller rejects it


def test_runnable_scripts_and_subcommands_have_help() -> None:
    for script in ("coordinator.py", "local_controller.py", "model_switch.py"):
        out = subprocess.run([PY, str(ROOT / "controllers" / script), "--help"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "usage" in out.stdout
    out = subprocess.run([PY, "-m", "herd.cli", "replay", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--pps" in out.stdout


# ------------------------------------------------------------------------------ epochs


def _cols(flows: list[tuple[int, int, int, int, int]]) -> list[np.ndarray]:
    return [np.array(c, np.uint32) for c in zip(*flows, strict=True)]


def test_coordinator_counts_per_flow_and_epoch_closes_old_epochs_and_counts_late() -> None:
    from herd.coordinator import Coordinator

    c = Coordinator(2, R=2, max_flows=4)

    def send(flows: list[tuple[int, int, int, int, int]], epochs: list[int],
             ts: int = 1) -> Any:
        return c.on_reports(*_cols(flows), np.array(epochs), np.full(len(epochs), ts))

    flow_c, flow_d, flow_e = ((0x0C000001 + i, 0x14000002, 7, 7, 17) for i in range(3))
    out = send([FLOW_A, FLOW_A, FLOW_B], [0, 0, 0], ts=10)
    assert [(e, len(f)) for e, f in out.newly] == [(0, 1)] and not out.closed
    # B has two reports, but in two epochs: no elephant in either.
    out = send([FLOW_B, FLOW_A], [1, 1], ts=20)
    assert not out.newly and sorted(c.open) == [0, 1] and c.open_flows() == 4
    # A report of epoch 2 closes epoch 0 (e + 2 arrived), not epoch 1 - before it counts,
    # so that C finds room under the cap.
    out = send([flow_c], [2], ts=30)
    assert [t.epoch for t in out.closed] == [0] and sorted(c.open) == [1, 2]
    assert out.untracked == 0
    closed = out.closed[0].elephants(2)
    assert [(x["epoch"], x["src"], x["reports"], x["detected_ns"]) for x in closed] == \
        [(0, FLOW_A[0], 2, 10)]
    # Late for epoch 0 (closed): counted, not applied; epoch 1 still open counts A's second.
    out = send([FLOW_B, FLOW_A], [0, 1], ts=40)
    assert out.late == 1 and out.late_by_epoch == {0: 1} and c.late_reports == 1
    assert [(e, len(f)) for e, f in out.newly] == [(1, 1)]
    assert [(x["epoch"], x["src"], x["detected_ns"]) for x in c.elephants()] == \
        [(1, FLOW_A[0], 40)]
    # The flow cap is over the open epochs together: A, B in epoch 1, C, D in epoch 2.
    out = send([flow_d, flow_e], [2, 2])
    assert out.untracked == 1 and c.open_flows() == 4
    out = send([flow_e], [3])  # closes epoch 1 first: room again
    assert [t.epoch for t in out.closed] == [1] and out.untracked == 0
    # Shutdown / flush closes the rest; later reports of them are late.
    assert [t.epoch for t in c.close_all()] == [2, 3] and not c.open
    assert send([flow_e], [3]).late == 1
    assert c.reports == 12 and c.late_reports == 2 and c.untracked_reports == 1


def test_coordinator_per_epoch_counting_matches_count_reports() -> None:
    """Without late reports, the service's incremental counting (batches, open epochs) is the
    simulator's ``count_reports`` over (flow, epoch) keys: same elephants, same times."""
    from herd.coordinator import Coordinator, count_reports
    from herd.groundtruth import pair_keys

    rng = np.random.default_rng(7)
    n = 20_000
    flow = rng.integers(0, 300, n)
    epoch = np.sort(rng.integers(0, 6, n))  # arrival order: epochs never go back
    ts = np.arange(n, dtype=np.int64) * 1000
    src = (flow + (10 << 24)).astype(np.uint32)
    z = np.zeros(n, np.uint32)
    c = Coordinator(1, R=4)
    got = []
    for a in range(0, n, 777):
        b = min(n, a + 777)
        out = c.on_reports(src[a:b], z[a:b] + 7, z[a:b], z[a:b], z[a:b] + 6, epoch[a:b],
                           ts[a:b])
        assert out.late == 0
        got += [x for t in out.closed for x in t.elephants(4)]
    got += [x for t in c.close_all() for x in t.elephants(4)]
    keys, counts, detect = count_reports(pair_keys(epoch, flow), ts, 4)
    want = sorted((int(k >> 32), int(k & 0xFFFFFFFF), int(d))
                  for k, d in zip(keys[counts >= 4], detect[counts >= 4], strict=True))
    assert sorted((x["epoch"], x["src"] - (10 << 24), x["detected_ns"]) for x in got) == want
    assert len(want) > 100


def test_coordinator_service_epochs_results_journal_query_and_restart(
        procs: Procs, tmp_path: Path) -> None:
    """Over gRPC: reports counted in their epoch; a closed epoch's elephants in its file and
    the journal, queryable by epoch; a late report counted, not applied, and not reopening
    the epoch after a kill -9 and restart; Flush and shutdown close the rest."""
    co = Coord(procs, tmp_path, R=2, extra=["--epoch-ms", "250"])
    c = co.client
    flow_c = (0x0C000001, 0x14000002, 7, 7, 17)

    def send(switch: int, seqs: list[int], flows: list[tuple[int, int, int, int, int]],
             epochs: list[int], ts: int) -> None:
        b = batch(switch, seqs, flows, ts=ts)
        b.epoch.extend(epochs)
        list(c.reports(iter([b]), metadata=c.metadata))

    send(0, [1, 2, 3], [FLOW_A, FLOW_A, FLOW_B], [0, 0, 0], ts=100)
    send(1, [1, 2], [FLOW_B, FLOW_A], [1, 1], ts=200)
    files = tmp_path / "results-epochs"
    assert not (files / "epoch-0.json").exists()
    send(1, [3], [flow_c], [2], ts=300)  # closes epoch 0
    epoch0 = json.loads((files / "epoch-0.json").read_text())
    assert epoch0["epoch"] == 0 and epoch0["epoch_ms"] == 250 and epoch0["reports"] == 3
    assert [(x["src"], x["reports"], x["detected_ns"]) for x in epoch0["elephants"]] == \
        [(FLOW_A[0], 2, 100)]
    send(0, [4], [FLOW_B], [0], ts=400)  # late: B would be an elephant of epoch 0

    def check() -> None:
        q = c.query(pb.QueryRequest(epoch=0), metadata=c.metadata)
        assert [(e.src, e.epoch, e.reports) for e in q.elephants] == [(FLOW_A[0], 0, 2)]
        assert [(x.epoch, x.open, x.late_reports) for x in q.epochs] == [(0, False, 1)]
        q = co.query(True)
        assert [(x.epoch, x.open) for x in q.epochs] == [(0, False), (1, True), (2, True)]
        assert {(e.src, e.epoch) for e in q.elephants} == {(FLOW_A[0], 0)}
        assert q.counters["late_reports"] == 1 and q.counters["reports"] == 7
        assert q.counters["open_epochs"] == 2 and q.counters["flows"] == 3

    check()
    co.kill9()
    co.start()
    c = co.client
    check()  # the journal replays to the same epochs: epoch 0 stays closed
    assert co.counters()["recovered_reports"] == 7
    send(0, [5], [FLOW_B], [1], ts=500)  # B's second report in epoch 1
    closed = c.flush(pb.FlushRequest(), metadata=c.metadata).closed
    assert list(closed) == [1, 2]
    epoch1 = json.loads((files / "epoch-1.json").read_text())
    assert {(x["src"], x["detected_ns"]) for x in epoch1["elephants"]} == {(FLOW_B[0], 500)}
    assert json.loads((files / "epoch-2.json").read_text())["elephants"] == []
    co.proc.send_signal(signal.SIGTERM)
    assert co.proc.wait(20) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["params"]["epoch_ms"] == 250
    assert [(x["epoch"], x["open"]) for x in res["epochs"]] == [(0, False), (1, False),
                                                                (2, False)]
    assert sorted((x["epoch"], x["src"]) for x in res["elephants"]) == \
        [(0, FLOW_A[0]), (1, FLOW_B[0])]


def test_model_switch_follows_its_clock_across_epochs(tmp_path: Path) -> None:
    """A model switch driven through the model driver: W and the origin set, paced packets
    cross five epochs; the tables empty lazily (old slots keep their fingerprints, read as
    empty), every epoch start is recorded, CPU messages carry their epoch, and the registers
    and tables equal ``herd.switch.Switch`` fed the same packets in the same epochs."""

    from herd.messages import CpuMessage
    from herd.prng import probability_threshold
    from herd.services.model_switch import ArraySource, ModelSwitch, ModelSwitchServer
    from herd.switch import (
        REG_EPOCH_US,
        REG_HOLD_START,
        REG_PRNG,
        REG_SAMPLE_THRESHOLD,
        Switch,
        SwitchConfig,
    )

    n, pps, per_epoch = 2000, 4000, 400  # W = 100 ms = 400 packets
    rng = np.random.default_rng(3)
    flow = rng.integers(0, 60, n)
    flow[4 * per_epoch:] = rng.integers(0, 8, per_epoch)  # the last epoch leaves slots stale
    src = (np.arange(60) + (10 << 24)).astype(np.uint32)
    dst = np.full(60, 20 << 24, np.uint32)
    sport = (np.arange(60) + 1000).astype(np.uint16)
    dport = np.full(60, 80, np.uint16)
    proto = np.full(60, 6, np.uint8)
    packets = tmp_path / "p.npz"
    np.savez(packets, ts_ns=np.arange(n, dtype=np.int64), flow=flow, flow_src=src,
             flow_dst=dst, flow_sport=sport, flow_dport=dport, flow_proto=proto)
    stages = (32, 16, 8)  # small: some flows find no room
    model = ModelSwitch("s1", stages)
    server = ModelSwitchServer(model, f"unix:{tmp_path / 's1.sock'}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    runner = threading.Thread(target=model.run, args=(ArraySource(str(packets)),), daemon=True)
    runner.start()
    drv = ModelDriver("s1", f"unix:{tmp_path / 's1.sock'}")
    g = (10 << 8) | 20
    half = probability_threshold(0.5)
    config = SwitchConfig(prng_seed=12345, sample_threshold=half, hold_start=2,
                          epoch_us=100_000)
    try:
        drv.register_write("herd_regs", REG_PRNG, config.prng_seed)
        drv.register_write("herd_regs", REG_SAMPLE_THRESHOLD, config.sample_threshold)
        drv.register_write("herd_regs", REG_EPOCH_US, config.epoch_us)
        drv.register_write("herd_regs", REG_HOLD_START, config.hold_start)
        drv.install_group(g, 6, half, modify=False)  # tau 6, r 1/2
        t0_us = time.time_ns() // 1000 + 150_000
        drv.set_epoch_origin(t0_us)
        assert drv.register_read("herd_epoch_origin", 0) == t0_us
        drv.request(op="start", t0_ns=t0_us * 1000, pps=pps)
        runner.join(20)
        assert model.done.is_set()
        starts = drv.epoch_starts()
        assert starts == [(e, e * per_epoch) for e in range(1, 5)]
        # The pipeline's own log says the same (what a BMv2 driver decodes).
        from herd.services.drivers.base import SwitchDriver
        assert SwitchDriver.epoch_starts(drv) == starts
        stats = drv.stats()
        msgs = []
        for rec in drv.messages():
            msgs.append(CpuMessage.unpack(rec.payload))
            if rec.seq == stats["cpu_emitted"]:
                break
        regs = [drv.register_read("herd_regs", i) for i in range(11)]
        fps = [drv.register_read("stage_fp", i) for i in range(sum(stages))]
        tags = [drv.register_read("stage_epoch", i) for i in range(sum(stages))]
        # Confirm's pull: every flow's held total at the end of epochs 2..4, one round trip
        # each (epoch 2 partly overwritten by now: unknown there).
        tuples = [(int(src[f]), int(dst[f]), int(sport[f]), int(dport[f]), int(proto[f]))
                  for f in range(60)]
        held = {e: drv.held_totals(e, tuples, stages) for e in (2, 3, 4)}
        with pytest.raises(SwitchError, match=r"stages \(32, 16\): this switch has"):
            drv.held_totals(3, tuples, (32, 16))
    finally:
        drv.close()
        model.stopping.set()
        server.close()
    ref = Switch(stages)
    ref.configure(config)
    ref.install_group(g, 6, half)
    want = [m for i, f in enumerate(flow)
            if (m := ref.process(int(src[f]), int(dst[f]), int(sport[f]), int(dport[f]),
                                 int(proto[f]), epoch=i // per_epoch)) is not None]
    assert msgs == want and len({m.epoch for m in msgs}) == 5
    assert regs == [int(x) for x in ref.regs] and regs[9] == 4
    assert fps == [int(x) for x in ref.fps] and tags == [int(x) for x in ref.epochs]
    # Lazily emptied: slots of older epochs still hold fingerprints; only this epoch's count.
    stale = [i for i, t in enumerate(tags) if t != 4 and fps[i] != 0]
    assert stale and regs[3] == sum(1 for i, t in enumerate(tags) if t == 4 and fps[i])
    assert held == {e: [ref.held_total(*f, epoch=e) for f in tuples] for e in (2, 3, 4)}
    assert all(x >= 0 for x in held[3]) and sum(held[3]) > 0 and -1 in held[2]


@pytest.fixture(scope="module")
def short_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("short") / "t30k.pcap"
    write_synthetic_pcap(path, 30_000, seed=3)  # 0.3 s of trace time
    return path


def test_replay_with_epochs_equals_the_simulator_under_its_timing(short_trace: Path,
                                                                   tmp_path: Path) -> None:
    """``herd replay --epoch-ms``: the switches follow their own clocks, paced by the trace's
    timing; nothing is lost or late, and F1 is the simulator's under the measured timing
    (entry writes and each switch's epoch starts), exactly - also from the timing file."""
    from herd.delays import read_timing
    from herd.evaluate import simulate
    from herd.services.replay import run_replay

    prep = PreparedTrace(load_trace(short_trace))
    params = Params(k=4, percentile=95, epoch_ms=75)
    delays = tmp_path / "timing.csv"
    coord = tmp_path / "coord.json"
    d = run_replay(prep, params, 6000, compare=True, delays_out=str(delays),
                   results=str(coord))
    assert d["lost_messages"] == 0 and d["drained"] and d["cpu_dropped"] == 0
    assert d["late_reports"] == 0 and d["untracked_reports"] == 0
    assert d["epochs"] == 4 and d["epochs_closed"] == 4 and len(d["per_epoch"]) == 4
    assert d["switch_epoch_us"] == round(75_000 / d["multiplier"])
    assert d["switch_epoch_starts"] == 4 * 3  # every switch entered epochs 1, 2, 3
    # The switches' epochs are the trace's up to microsecond rounding.
    assert d["epoch_mismatched_packets"] * 1000 < prep.trace.packets, d
    assert d["reports"] > 50 and d["detected"] > 20
    timing = read_timing(delays)
    assert len(timing.epochs) == d["switch_epoch_starts"]
    assert simulate(prep, params, timing).f1 == d["simulated_f1"]
    res = json.loads(coord.read_text())
    assert [x["epoch"] for x in res["epochs"]] == [0, 1, 2, 3]
    assert len(res["elephants"]) == d["detected"]
    assert d["f1"] == d["simulated_f1"], (
        f"replay F1 {d['f1']} != simulator under the measured timing {d['simulated_f1']}")


def test_replay_refuses_an_epoch_shorter_than_a_microsecond(short_trace: Path) -> None:
    from herd.errors import HerdInputError

    prep = PreparedTrace(load_trace(short_trace))
    with pytest.raises(HerdInputError, match="epoch_ms=0.001: at 10x"):
        ReplayRun(prep, Params(k=2, epoch_ms=0.001), pps=1_000_000)


# ------------------------------------------------------------------------------ switch host


def _packet_file(path: Path, flow: np.ndarray, due: np.ndarray, tables: dict[str, np.ndarray]
                 ) -> None:
    np.savez(path, ts_ns=due * 1000 + 7, flow=flow, due=due, **tables)


def test_one_thread_paces_several_switches_each_as_if_alone(tmp_path: Path) -> None:
    """``run_switches``: two switches fed by one thread on one global schedule end exactly
    as ``herd.switch.Switch`` fed each one's packets alone: same CPU messages (in order, with
    their packets' times), same registers; each is done with all its packets."""

    from herd.services.model_switch import RECORD_HEAD, ArraySource, ModelSwitch, run_switches
    from herd.switch import REG_HOLD_START, REG_PRNG, REG_SAMPLE_THRESHOLD, Switch, SwitchConfig

    n, flows, stages = 3000, 80, (32, 16, 8)
    rng = np.random.default_rng(11)
    tables = {"flow_src": ((rng.integers(10, 14, flows) << 24) + np.arange(flows)
                           ).astype(np.uint32),
              "flow_dst": np.full(flows, 20 << 24, np.uint32),
              "flow_sport": (np.arange(flows) + 1000).astype(np.uint16),
              "flow_dport": np.full(flows, 80, np.uint16),
              "flow_proto": np.full(flows, 6, np.uint8)}
    flow = rng.zipf(1.3, n) % flows
    ingress = rng.integers(0, 2, n)
    models, sources, configs = [], [], []
    for i in range(2):
        idx = np.flatnonzero(ingress == i)
        _packet_file(tmp_path / f"s{i}.npz", flow[idx], idx, tables)
        sources.append(ArraySource(str(tmp_path / f"s{i}.npz")))
        model = ModelSwitch(f"s{i + 1}", stages)
        config = SwitchConfig(prng_seed=1000 + i, sample_threshold=1 << 31, hold_start=2)
        for reg, v in ((REG_PRNG, config.prng_seed),
                       (REG_SAMPLE_THRESHOLD, config.sample_threshold),
                       (REG_HOLD_START, config.hold_start)):
            model.control({"op": "register_write", "name": "herd_regs", "index": reg,
                           "value": v})
        # Groups 10/8 and 11/8 -> 20/8 installed; 12/8 and 13/8 send hellos (no entry comes).
        for src8 in (10, 11):
            model.control({"op": "table_add", "table": "group_table", "key": [src8, 20],
                           "action": "set_group_params", "params": [3, 1 << 30]})
        models.append(model)
        configs.append(config)
    runner = threading.Thread(target=run_switches, args=(list(zip(models, sources,
                                                                  strict=True)),))
    runner.start()
    t0 = time.time_ns() + 50_000_000
    for model in models:
        model.control({"op": "start", "t0_ns": t0, "pps": 30_000})
    runner.join(30)
    assert not runner.is_alive()
    for i, model in enumerate(models):
        idx = np.flatnonzero(ingress == i)
        assert model.done.is_set() and model.packets_done == len(idx)
        assert model.wall_start_ns >= t0
        got = []
        for rec in model._buf:
            _, _, ts = RECORD_HEAD.unpack(rec[:RECORD_HEAD.size])
            got.append((CpuMessage.unpack(rec[RECORD_HEAD.size:]), ts))
        ref = Switch(stages)
        ref.configure(configs[i])
        for src8 in (10, 11):
            ref.install_group(src8 << 8 | 20, 3, 1 << 30)
        want = []
        for j in idx:
            f = flow[j]
            m = ref.process(int(tables["flow_src"][f]), int(tables["flow_dst"][f]),
                            int(tables["flow_sport"][f]), int(tables["flow_dport"][f]),
                            int(tables["flow_proto"][f]))
            if m is not None:
                want.append((m, int(j) * 1000 + 7))
        assert got == want
        kinds = {m.type for m, _ in got}
        assert MessageType.HELLO in kinds and MessageType.REPORT in kinds
        assert model.switch.registers() == ref.registers()
        assert set(model.hello_emit_ns) == {g for g in (12 << 8 | 20, 13 << 8 | 20)
                                            if ref.group_state[g] == 1}


def test_emit_many_numbers_in_order_and_drops_beyond_the_buffer() -> None:
    from herd.services.model_switch import RECORD_HEAD, ModelSwitch

    model = ModelSwitch("s1", (8,), cpu_buffer=2)
    model.emit_many([(b"a", 1), (b"b", 2), (b"c", 3)])
    heads = [RECORD_HEAD.unpack(r[:RECORD_HEAD.size]) for r in model._buf]
    assert [(seq, ts) for _, seq, ts in heads] == [(1, 1), (2, 2)]
    assert model.last_seq == 2 and model.cpu_dropped == 1
    model.ack(2)
    model.emit(b"d", 4)  # room again once acknowledged
    assert model.last_seq == 3 and model.cpu_dropped == 1


def test_one_process_hosts_several_switches_each_on_its_socket(procs: Procs,
                                                               tmp_path: Path) -> None:
    """``herd model-switch`` with --name/--listen/--packets repeated: every switch answers on
    its own socket with its own state; a shutdown per switch ends the process, which writes
    each one's stats file. Per-switch options given a wrong number of times are refused."""
    tables = {"flow_src": np.array([10 << 24], np.uint32),
              "flow_dst": np.array([20 << 24], np.uint32),
              "flow_sport": np.array([1], np.uint16), "flow_dport": np.array([2], np.uint16),
              "flow_proto": np.array([6], np.uint8)}
    args: list[str] = []
    for i in (1, 2):
        _packet_file(tmp_path / f"s{i}.npz", np.zeros(i, np.int64), np.arange(i), tables)
        args += ["--name", f"s{i}", "--listen", f"unix:{tmp_path / f's{i}.sock'}",
                 "--packets", str(tmp_path / f"s{i}.npz"), "--ready-file",
                 str(tmp_path / f"s{i}.ready"), "--stats-file", str(tmp_path / f"s{i}.json")]
    proc = procs.start("herd.services.model_switch", [*args, "--start", "command"], "host")
    wait_for(lambda: all((tmp_path / f"s{i}.ready").exists() for i in (1, 2)), what="ready")
    drivers = [ModelDriver(f"s{i}", f"unix:{tmp_path / f's{i}.sock'}") for i in (1, 2)]
    try:
        drivers[0].register_write("herd_regs", 2, 7)
        assert [d.register_read("herd_regs", 2) for d in drivers] == [7, 0]
        assert [d.stats()["name"] for d in drivers] == ["s1", "s2"]
        for d in drivers:
            d.request(op="start", t0_ns=0, pps=0)
        wait_for(lambda: all(d.stats()["done"] for d in drivers), what="packets done")
        assert [d.stats()["packets_done"] for d in drivers] == [1, 2]
        drivers[0].request(op="shutdown")
        time.sleep(0.7)
        assert proc.poll() is None  # s2 still runs
        assert drivers[1].stats()["name"] == "s2"
        drivers[1].request(op="shutdown")
        assert proc.wait(10) == 0
    finally:
        for d in drivers:
            d.close()
    stats = [json.loads((tmp_path / f"s{i}.json").read_text()) for i in (1, 2)]
    assert [(s["name"], s["packets_done"]) for s in stats] == [("s1", 1), ("s2", 2)]
    bad = subprocess.run([PY, "-m", "herd.services.model_switch", "--name", "s1", "--name",
                          "s2", "--listen", f"unix:{tmp_path / 'a.sock'}", "--listen",
                          f"unix:{tmp_path / 'b.sock'}", "--packets", str(tmp_path / "s1.npz")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--packets given 1 times for 2 switches" in bad.stderr


def test_coordinator_pushes_a_changed_l_g_to_the_other_members_only(tmp_path: Path) -> None:
    """A hello that changes l_g: the asker learns it from its answer, every other member gets
    a push, the asker's stream carries nothing more; l_g_pushes still counts the others."""

    from herd.services.coordinator_service import CoordinatorState, Journal, _Op

    names = ["s1", "s2", "s3", "s4"]
    state = CoordinatorState(names, 2, Journal(str(tmp_path / "j.sqlite"), False))
    qs: list[queue.Queue[Any]] = [queue.Queue() for _ in names]
    for sid, q in enumerate(qs):
        state.submit(_Op("subscribe", sid, q))
        assert q.get_nowait().snapshot_end
    g = 10 << 8 | 20
    answers = [state.submit(_Op("hellos", 0, [(sid, g, 1)])).result for sid in range(4)]
    assert answers == [[1], [2], [2], [4]]  # l_g changes at the 2nd and the 4th member

    def drain(q: queue.Queue[Any]) -> list[tuple[int, int]]:
        out = []
        while not q.empty():
            u = q.get_nowait()
            out.append((u.group, u.l_g))
        return out

    assert [drain(q) for q in qs] == [[(g, 2), (g, 4)], [(g, 4)], [(g, 4)], []]
    assert state.counters["l_g_pushes"] == 4
    state.journal.close()


def test_a_paced_feed_takes_what_is_due_then_says_how_long_to_wait(tmp_path: Path) -> None:
    """``_Feed.step`` on a paced schedule: the packets due now go through in one step, which
    then returns the time to the next one rather than 0 (looking again at once would spin
    through the schedule a packet at a time)."""
    from herd.services.model_switch import ArraySource, ModelSwitch, _Feed

    tables = {"flow_src": np.array([10 << 24], np.uint32),
              "flow_dst": np.array([20 << 24], np.uint32),
              "flow_sport": np.array([1], np.uint16), "flow_dport": np.array([2], np.uint16),
              "flow_proto": np.array([6], np.uint8)}
    due = np.array([0, 1, 2, 1000, 1001], np.int64)  # at 1 packet/s: 3 due, then 1000 s
    _packet_file(tmp_path / "p.npz", np.zeros(5, np.int64), due, tables)
    model = ModelSwitch("s1", (8,))
    feed = _Feed(model, ArraySource(str(tmp_path / "p.npz")))
    assert feed.step() > 0 and feed.i == 0  # not started
    model.control({"op": "start", "t0_ns": time.time_ns() - 2_500_000_000, "pps": 1})
    wait = feed.step()
    assert model.packets_done == 3 and wait is not None and 990 < wait < 1000
    assert feed.step() > 990 and model.packets_done == 3  # nothing more is due


def test_group_commit_returns_a_committed_op_without_waiting_for_the_next_round(
        tmp_path: Path) -> None:
    """``CoordinatorState.submit``: ops queued during a commit go together in the next round,
    led by one of their callers; a caller whose op that round committed returns even while a
    third round (led by a later caller) is still under way; every op is committed once."""

    from herd.services.coordinator_service import CoordinatorState, Journal, _Op

    state = CoordinatorState(["s1", "s2"], 2, Journal(str(tmp_path / "j.sqlite"), False))
    rounds: list[list[int]] = []
    third = threading.Event()
    process = state._process

    def queued(n: int) -> bool:
        with state._queue_cv:
            return len(state._queue) == n

    def gated(ops: list[_Op]) -> None:
        rounds.append(sorted(o.payload[0][1] for o in ops))
        if len(rounds) == 1:
            wait_for(lambda: queued(2), what="two ops queued behind round 1")
        elif len(rounds) == 2:
            wait_for(lambda: queued(1), what="one op queued behind round 2")
        else:
            third.wait(10)
        process(ops)

    state._process = gated  # type: ignore[method-assign]
    ops = {g: _Op("hellos", 0, [(g % 2, g, 1)]) for g in (1, 2, 3, 4)}
    threads = {g: threading.Thread(target=state.submit, args=(ops[g],)) for g in ops}
    threads[1].start()
    wait_for(lambda: len(rounds) == 1, what="round 1")
    threads[2].start()
    threads[3].start()
    wait_for(lambda: len(rounds) == 2, what="round 2")
    threads[4].start()
    wait_for(lambda: len(rounds) == 3, what="round 3")
    # Round 3 is held: both callers of round 2 are back all the same.
    threads[2].join(5)
    threads[3].join(5)
    assert not threads[2].is_alive() and not threads[3].is_alive()
    assert ops[2].done.is_set() and ops[3].done.is_set() and not ops[4].done.is_set()
    third.set()
    for t in threads.values():
        t.join(10)
    assert rounds == [[1], [2, 3], [4]]
    assert [ops[g].result for g in (1, 2, 3, 4)] == [[1], [1], [1], [1]]
    assert state.counters["memberships"] == 4 and state.counters["journal_commits"] >= 3
    state.journal.close()


# ------------------------------------------------------------------------------ confirm


@pytest.mark.parametrize("epoch_ms, pps", [(0.0, 20000.0), (75.0, 6000.0)])
def test_replay_with_confirm_matches_the_simulator(short_trace: Path, tmp_path: Path,
                                                   epoch_ms: float, pps: float) -> None:
    """``herd replay --confirm``, one epoch (pulled at the flush) and four (pulled as each is
    seen over): the coordinator's elephants are the simulator's confirmed set under the
    measured timing, the pulls' candidates and messages are the simulator's, no held total
    is unknown, and the costs are in the result (pull messages in ``messages``, 24-byte
    slots, delays split early / confirmed)."""
    from herd.coordinator import pull_messages
    from herd.delays import read_timing
    from herd.evaluate import simulate
    from herd.services.replay import run_replay
    from herd.services.results import elephant_detection

    prep = PreparedTrace(load_trace(short_trace))
    params = Params(k=4, percentile=95, epoch_ms=epoch_ms, confirm=True)
    delays = tmp_path / "timing.csv"
    coord = tmp_path / "coord.json"
    d = run_replay(prep, params, pps, compare=True, delays_out=str(delays), results=str(coord))
    assert d["lost_messages"] == 0 and d["drained"] and d["cpu_dropped"] == 0
    epochs = max(1, d["epochs"])
    assert d["pulls"] == epochs and d["pull_timeouts"] == 0
    assert d["unknown_held_totals"] == 0 and d["reports_after_pull"] == 0
    # The pull's cost, per switch as the simulator counts it, and in the message total.
    assert d["pull_messages"] == d["simulated_pull_messages"] > 0
    assert d["confirm_candidates"] == d["simulated_confirm_candidates"] > 20
    assert d["pull_messages"] >= 4 * pull_messages(d["confirm_candidates"] // epochs)
    assert d["messages"] == d["hellos"] + d["reports"] + d["overflows"] + d["pull_messages"]
    assert d["slot_bytes"] == 24 and d["table_bytes_per_switch"] == 24 * sum(params.stages)
    assert abs(d["f1"] - d["simulated_f1"]) <= 0.03, (d["f1"], d["simulated_f1"])
    # The confirmed (flow, epoch) pairs themselves, and which of them R reports found.
    res = json.loads(coord.read_text())
    assert res["params"]["confirm"] and res["params"]["T"] == d["T"]
    cols = {f: np.array([x[f] or 0 for x in res["elephants"]], np.int64)
            for f in ("src", "dst", "sport", "dport", "proto", "epoch", "detected_ns")}
    cols["early"] = np.array([x["early"] for x in res["elephants"]], np.bool_)
    got = elephant_detection(prep, cols)
    sim = simulate(prep, params, read_timing(delays)).detection
    assert sim.early is not None and got.early is not None
    mine = dict(zip(got.keys.tolist(), got.early.tolist(), strict=True))
    theirs = dict(zip(sim.keys.tolist(), sim.early.tolist(), strict=True))
    assert len(set(mine) ^ set(theirs)) <= max(2, len(theirs) // 50), (mine, theirs)
    assert sum(mine[k] != theirs[k] for k in set(mine) & set(theirs)) <= 2
    assert d["confirmed"] == len(mine) and 0 < sum(mine.values()) < len(mine)
    assert d["early_true_positives"] + d["confirmed_true_positives"] == d["true_positives"]
    assert d["confirmed_detection_delay_ms_p50"] is not None


class FakePulls:
    """A controller's Pulls stream played by the test: the requests it gets are collected,
    answers go out when the test says."""

    def __init__(self, client: CoordinatorClient, switch_id: int) -> None:

        self.switch_id = switch_id
        self._answers: queue.Queue[pb.PullAnswer | None] = queue.Queue()
        self._answers.put(pb.PullAnswer(switch_id=switch_id))
        self.requests: queue.Queue[pb.PullRequest] = queue.Queue()
        self.call = client.pulls(self._out(), metadata=client.metadata)
        threading.Thread(target=self._read, daemon=True).start()

    def _out(self) -> Iterator[pb.PullAnswer]:
        while (a := self._answers.get()) is not None:
            yield a

    def _read(self) -> None:
        try:
            for r in self.call:
                self.requests.put(r)
        except grpc.RpcError:
            pass

    def take(self, n: int) -> list[pb.PullRequest]:
        return [self.requests.get(timeout=30) for _ in range(n)]

    def answer(self, req: pb.PullRequest, totals: dict[tuple[int, ...], int]) -> None:
        flows = zip(req.src, req.dst, req.sport, req.dport, req.proto, strict=True)
        self._answers.put(pb.PullAnswer(switch_id=self.switch_id, pull_id=req.pull_id,
                                        part=req.part, totals=[totals.get(f, 0) for f in flows]))

    def close(self) -> None:
        self._answers.put(None)
        self.call.cancel()


def _register(co: Coord, name: str, T: int) -> int:
    reply = co.client.register(pb.RegisterRequest(
        switch_name=name, params=pb.ControllerParams(T=T, epsilon=0.1, s=0.2)), timeout=10,
        metadata=co.client.metadata)
    return int(reply.switch_id)


def _send(co: Coord, switch: int, seqs: list[int], flows: list[tuple[int, ...]], epoch: int,
          ts: int) -> None:
    b = batch(switch, seqs, flows, ts=ts)  # type: ignore[arg-type]
    b.epoch.extend([epoch] * len(seqs))
    list(co.client.reports(iter([b]), metadata=co.client.metadata))


def test_confirm_pulls_through_the_controllers_and_no_epoch_closes_before_its_pull(
        procs: Procs, tmp_path: Path) -> None:
    """The coordinator's side of confirm over gRPC, the controllers played by the test: epoch
    0 is pulled once a report of epoch 1 arrives (grace 0), from both switches, in parts of
    at most 100 flows; a report of epoch 2 closes epoch 0 by the closing rule, yet it stays
    open until both switches answered; the elephants are then the candidates whose totals
    reach T (early or by the pull), the costs and findings are counted, and after a kill -9
    the journal replays the pulls to the same state."""
    from herd.coordinator import pull_messages

    co = Coord(procs, tmp_path, switches="s1,s2", R=3, extra=[
        "--confirm", "--confirm-reports", "2", "--confirm-grace-ms", "0",
        "--confirm-timeout-ms", "60000", "--epoch-ms", "100"])
    s1, s2 = _register(co, "s1", 50), _register(co, "s2", 50)
    with pytest.raises(grpc.RpcError) as refused:  # one T for every pull
        _register(co, "s2", 51)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "T=51 differs" in refused.value.details()
    p1, p2 = FakePulls(co.client, s1), FakePulls(co.client, s2)
    flow_a, flow_b, flow_c = FLOW_A, FLOW_B, (0x0C000001, 0x14000002, 5, 5, 17)
    xs = [(0x0D000000 + i, 0x14000002, 1000 + i, 80, 6) for i in range(150)]
    _send(co, s1, list(range(1, 7)), [flow_a] * 3 + [flow_b] * 2 + [flow_c], 0, ts=100)
    _send(co, s2, list(range(1, 301)), [x for x in xs for _ in (0, 1)], 0, ts=200)
    assert p1.requests.empty()  # nothing says epoch 0 is over
    _send(co, s2, [301], [flow_c], 1, ts=1000)  # it is: pulled at once (grace 0)
    parts1, parts2 = p1.take(2), p2.take(2)
    candidates = {flow_a, flow_b, *xs}
    for parts in (parts1, parts2):
        assert [(r.epoch, r.part, r.parts, len(r.src)) for r in parts] == \
            [(0, 0, 2, 100), (0, 1, 2, 52)]
        assert {f for r in parts for f in zip(r.src, r.dst, r.sport, r.dport, r.proto,
                                               strict=True)} == candidates
    _send(co, s1, [7], [flow_c], 2, ts=2000)  # closes epoch 0 by the rule: it waits
    files = tmp_path / "results-epochs"

    def epoch0_open() -> bool:
        q = co.client.query(pb.QueryRequest(epoch=0), metadata=co.client.metadata)
        return [(x.epoch, x.open) for x in q.epochs] == [(0, True)]

    assert epoch0_open() and not (files / "epoch-0.json").exists()
    for r in parts1:
        p1.answer(r, {flow_a: 30, flow_b: 30})
    assert epoch0_open() and co.counters()["pulls"] == 0  # s2 has not answered
    for r in parts2:
        p2.answer(r, {flow_a: 25, flow_b: 10, xs[0]: 60, xs[1]: -1})
    epoch0 = wait_for(lambda: (files / "epoch-0.json").exists()
                      and json.loads((files / "epoch-0.json").read_text()), what="epoch 0")
    assert sorted((x["src"], x["early"], x["detected_ns"]) for x in epoch0["elephants"]) == \
        [(flow_a[0], True, 100), (xs[0][0], False, 1000)]  # B: 30 + 10 < 50
    wait_for(lambda: co.counters()["pulls"] == 2, what="epoch 1's pull (no candidates)")
    want = {"pulls": 2, "pull_messages": 2 * pull_messages(152), "confirm_candidates": 152,
            "confirmed": 2, "withdrawn": 0, "unknown_held_totals": 1, "pull_timeouts": 0}

    def check() -> None:
        c = co.counters()
        assert {k: c[k] for k in want} == want
        q = co.query(True)
        assert [(s.pulls, s.pull_messages, s.pull_timeouts) for s in q.switches] == \
            [(2, pull_messages(152), 0)] * 2
        assert [(x.epoch, x.open) for x in q.epochs] == [(0, False), (1, True), (2, True)]
        assert {(e.src, e.epoch, e.early) for e in q.elephants} == \
            {(flow_a[0], 0, True), (xs[0][0], 0, False)}

    check()
    p1.close()
    p2.close()
    co.kill9()
    co.start()
    check()  # the journal replays the pulls: same elephants, same counters
    assert co.counters()["recovered_pulls"] == 2
    closed = co.client.flush(pb.FlushRequest(), timeout=30, metadata=co.client.metadata).closed
    assert list(closed) == [1, 2]  # epoch 2 has no candidate: nothing to ask


def test_confirm_a_switch_that_never_answers_counts_as_unknown_not_a_hang(
        procs: Procs, tmp_path: Path) -> None:
    """W = 0: the pull happens at Flush. s2's controller has its stream open and never
    answers: after the timeout its held totals count as unknown (0) and are counted, Flush
    returns, and its answer arriving late changes nothing."""
    co = Coord(procs, tmp_path, switches="s1,s2", R=3, extra=[
        "--confirm", "--T", "50", "--confirm-timeout-ms", "300"])
    s1, s2 = _register(co, "s1", 50), _register(co, "s2", 50)
    p1, p2 = FakePulls(co.client, s1), FakePulls(co.client, s2)

    def answer_all() -> None:  # s1's controller answers at once: 30 and 40
        with contextlib.suppress(queue.Empty):  # no more pulls: the test is over
            for r in iter(lambda: p1.requests.get(timeout=60), None):
                p1.answer(r, {FLOW_A: 30, FLOW_B: 40})

    threading.Thread(target=answer_all, daemon=True).start()
    _send(co, s1, [1, 2, 3, 4, 5, 6], [FLOW_A] * 3 + [FLOW_B] * 3, 0, ts=100)
    closed = co.client.flush(pb.FlushRequest(), timeout=30, metadata=co.client.metadata).closed
    assert list(closed) == [0]
    (late,) = p2.take(1)
    c = co.counters()
    assert (c["pull_timeouts"], c["unknown_held_totals"], c["confirmed"], c["withdrawn"],
            c["pull_messages"]) == (1, 2, 0, 2, 4)
    assert [s.pull_timeouts for s in co.query().switches] == [0, 1]
    res = co.query(True)
    assert list(res.elephants) == [] and [(x.epoch, x.open) for x in res.epochs] == [(0, False)]
    p2.answer(late, {FLOW_A: 30, FLOW_B: 40})  # too late: dropped
    assert co.counters()["confirmed"] == 0 and co.counters()["rejected_malformed"] == 0
    p1.close()
    p2.close()


def test_controller_answers_a_pull_unknown_after_a_reset_or_a_failed_read() -> None:
    """``ControllerService.answer_pull``: the parts' flows read in one driver call with the
    switch's stages, the totals split back into the parts; after a table reset in a later
    switch epoch (or a driver that fails) every total is HELD_UNKNOWN, never a wrong 0."""
    from herd.controller import LocalController
    from herd.services.controller_service import ControllerService

    calls: list[tuple[int, list[tuple[int, ...]], tuple[int, ...]]] = []

    class Driver:
        fail = False

        def held_totals(self, epoch: int, flows: list[tuple[int, ...]],
                        stages: tuple[int, ...]) -> list[int]:
            if self.fail:
                raise ConnectionError("switch away")
            calls.append((epoch, list(flows), stages))
            return [7 + i for i in range(len(flows))]

    driver = Driver()
    ctl = ControllerService("s1", 0, LocalController(0, 0.1, 50, 0.2, 1), driver,  # type: ignore[arg-type]
                            CoordinatorClient("127.0.0.1:1", None), stages=(64, 32))
    ctl.switch_id = 0
    flows = [(0x0A000000 + i, 0x14000000, i, 80, 6) for i in range(3)]
    reqs = [pb.PullRequest(pull_id=9, epoch=4, part=i, parts=2,
                           src=[f[0] for f in fs], dst=[f[1] for f in fs],
                           sport=[f[2] for f in fs], dport=[f[3] for f in fs],
                           proto=[f[4] for f in fs])
            for i, fs in enumerate((flows[:2], flows[2:]))]
    answers = ctl.answer_pull(reqs)
    assert [(a.pull_id, a.part, list(a.totals)) for a in answers] == [(9, 0, [7, 8]),
                                                                       (9, 1, [9])]
    assert calls == [(4, flows, (64, 32))]
    ctl.reset_epoch = 4  # a reset in epoch 4 itself: the totals are what the switch holds
    assert [list(a.totals) for a in ctl.answer_pull(reqs)] == [[7, 8], [9]]
    ctl.reset_epoch = 5  # after epoch 4 ended: what the switch held of it is gone
    assert [list(a.totals) for a in ctl.answer_pull(reqs)] == [[-1, -1], [-1]]
    ctl.reset_epoch = -1
    driver.fail = True
    assert [list(a.totals) for a in ctl.answer_pull(reqs)] == [[-1, -1], [-1]]
    assert ctl.counters["pulls_after_reset"] == 1 and ctl.counters["pull_errors"] == 1
    ctl.coord.close()
