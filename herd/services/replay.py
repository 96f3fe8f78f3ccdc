"""``herd replay``: the whole distributed system on one machine, without Mininet.

One coordinator process, k local controller processes and the k model switches (all in one
process, each behind its own socket: one packet loop paces them all), talking over real
sockets (gRPC on loopback, Unix-domain sockets switch <-> controller); the trace is fed
through the switches, each switch getting exactly the packets
``herd.simulator.PreparedTrace.ingress`` assigns it, in trace order.

Timing. With ``--pps N`` the packets follow one global schedule: trace packet i is due at
t0 + i / N on every switch's clock, so the switches interleave as the trace does. Without it
each switch runs as fast as it can (full speed).

Epochs (``--epoch-ms W``, W in trace time). The switches follow their own clocks, so the
replay follows the trace's own timing, sped up by m: trace packet i is due at
t0 + (ts_i - ts_0) / m, m = pps / the trace's mean rate (``--pps`` is then the mean rate;
without it m = 1, the trace's own pace). The switches get W / m (their clock's epoch, via the
controllers' ``--epoch-us``) and the origin t0, the moment trace packet 0 is due (set through
each switch's driver). A packet's switch epoch is then its trace epoch up to microsecond
rounding; where each switch's epochs began is measured and written to the timing file, and
``simulated_f1`` runs the simulator with each switch in the epochs it was really in. The
coordinator counts reports per (flow, epoch); the result is scored per trace epoch
(micro-averaged over the pairs, ``per_epoch`` beside it).

Delays. The model switches record, for every group entry written, the first packet that saw
it (``herd.delays``). ``--compare`` runs ``herd simulate`` under that control-plane timeline
(``simulated_f1``: any difference is then the system, not the timing), and also with one
constant delay, the mean wall-clock hello -> entry-installed latency converted to trace time
(delay_ms = mean latency_ms * replay_rate / trace_rate; ``simulated_f1_mean_delay``), which is
what ``herd simulate --delay-ms`` can express. At a rate well below the trace's own the delay
is close to 0.

Confirm (``--confirm``, ``herd.coordinator``). The coordinator runs with ``--confirm`` and the
controllers with the switches' stages: each epoch's candidates are pulled from the switches
through the controllers, at the latest when the run is flushed (W = 0: only then). The result
counts the pull's messages (in ``messages`` and ``pull_messages``, per switch as the
simulator does), the 24-byte slots (``slot_bytes``), the confirm counters, and splits the
detection delays into early and confirmed ones (a confirmed detection is timed at the newest
report time the coordinator had seen when the epoch was seen over); ``simulated_f1`` is the
simulator with confirm too, and ``simulated_pull_messages`` its pull messages.

Losses. lost_messages = hellos and reports the switches sent (their registers) minus those
the coordinator holds (distinct group memberships, and reports after the sequence-number
dedupe). It is 0 unless something was dropped; a double count would make it negative.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from herd import __version__
from herd.delays import EntryWrite, EpochStart, MeasuredTiming, delays_csv, l_g_of_threshold
from herd.errors import HerdInputError
from herd.fileio import atomic_write
from herd.groundtruth import epoch_ns_of, packet_epochs
from herd.metrics import memory_summary, message_summary
from herd.params import Params
from herd.prepared import PreparedTrace, score
from herd.services.common import TOKEN_ENV, load_token, write_token_file
from herd.services.controller_service import CoordinatorClient
from herd.services.drivers.base import SwitchDriver
from herd.services.drivers.model import ModelDriver
from herd.services.results import FIELDS, elephant_detection
from herd.services.rpc import herd_pb2 as pb
from herd.services.security import RunTls
from herd.switch import slot_bytes

STARTUP_TIMEOUT = 60.0
MAX_K = 64
START_LEAD_NS = 200_000_000  # packets start this long after the start command


def trace_schedule(ts_ns: np.ndarray) -> np.ndarray:
    """Each packet's time since the first, in trace ns, never going back (a capture need not
    be monotonic; epochs never go back either)."""
    if len(ts_ns) == 0:
        return np.zeros(0, np.int64)
    return np.maximum.accumulate(np.asarray(ts_ns, np.int64)) - int(ts_ns[0])


def mean_rate(ts_ns: np.ndarray) -> float | None:
    """The trace's mean packet rate (packets/s), None if it spans no time."""
    span = int(trace_schedule(ts_ns)[-1]) if len(ts_ns) > 1 else 0
    return (len(ts_ns) - 1) / (span / 1e9) if span > 0 else None


def epoch_alignment(ingress: np.ndarray, ts_ns: np.ndarray, first_ts: int, epoch_ns: int,
                    starts: list[EpochStart], k: int) -> dict[str, Any]:
    """How well the switches' epochs (``starts``, measured) lined up with the trace's:
    packets a switch counted in another epoch than the trace's, and per (switch, epoch > 0)
    the trace time between the switch's first packet of the epoch and the trace's first
    packet of it at that switch (ms; positive: the switch changed epoch later)."""
    trace_epoch = packet_epochs(np.asarray(ts_ns, np.int64), first_ts, epoch_ns)
    by_switch: dict[int, list[tuple[int, int]]] = {}
    for x in starts:
        by_switch.setdefault(x.switch, []).append((x.packet, x.epoch))
    mismatched = 0
    offsets = []
    for sw in range(k):
        pos = np.flatnonzero(ingress == sw)
        if len(pos) == 0:
            continue
        te = trace_epoch[pos]
        se = np.zeros(len(pos), np.int64)
        for packet, e in sorted(by_switch.get(sw, [])):
            se[min(packet, len(pos)):] = e
            j = int(np.searchsorted(te, e))  # the trace's first packet of epoch e here
            if packet < len(pos) and j < len(pos):
                offsets.append(int(ts_ns[pos[packet]]) - int(ts_ns[pos[j]]))
        mismatched += int(np.count_nonzero(se != te))
    off = np.asarray(offsets, np.float64) / 1e6
    return {"epoch_mismatched_packets": mismatched,
            "epoch_offset_ms_p50": float(np.median(off)) if len(off) else None,
            "epoch_offset_ms_max": float(np.abs(off).max()) if len(off) else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReplayRun:
    """One replay: start the processes, run the trace, collect the results, clean up.
    Methods to kill and restart processes mid-run are there for the fault tests."""

    #: The switches read their packets from files and pace them themselves (the testbed's
    #: come over the wire, paced by their sender).
    fed_by_wire = False

    def __init__(self, prep: PreparedTrace, params: Params, pps: float = 0.0,
                 workdir: str | None = None, log_level: str = "WARNING",
                 python: str = sys.executable, *, token_file: str | None = None,
                 http: str | None = None, tls: RunTls | None = None) -> None:
        if params.algorithm != "herd":
            raise HerdInputError("replay runs Herd only (--algorithm herd)")
        if pps < 0:
            raise HerdInputError(f"--pps {pps}: must be >= 0")
        if params.k > MAX_K:
            raise HerdInputError(f"parameter k={params.k}: a replay runs 2k + 1 processes on "
                                 f"this machine; at most k={MAX_K}")
        self.prep = prep
        self.params = params
        self.pps = float(pps)
        self.trace_pps = mean_rate(prep.trace.ts_ns)
        # Epochs: the trace's own timing, sped up by multiplier; the switches' epoch W / m.
        self.multiplier = 1.0
        self.epoch_us = 0
        if params.epoch_ms > 0:
            if self.pps > 0:
                if self.trace_pps is None:
                    raise HerdInputError(f"{prep.trace.paths[0]}: the trace spans no time, so "
                                         "--pps cannot scale its timing for epochs")
                self.multiplier = self.pps / self.trace_pps
            self.epoch_us = round(params.epoch_ms * 1000 / self.multiplier)
            if not 1 <= self.epoch_us < 1 << 32:
                raise HerdInputError(
                    f"parameter epoch_ms={params.epoch_ms:g}: at {self.multiplier:.4g}x the "
                    f"trace's pace a switch epoch is {params.epoch_ms * 1000 / self.multiplier:g}"
                    " us; it must be in [1 us, 2^32 us)")
        given_token = load_token(token_file, required=False)  # checked before any file
        if http:
            from herd.services.web import check_loopback_http

            check_loopback_http(http, tls is not None)
        self.k = params.k
        self.names = [f"s{i + 1}" for i in range(self.k)]
        self.T = prep.threshold(params)
        self.R = params.reports_needed
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="herd-replay-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self.log_level = log_level
        self.python = python
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # TLS (None: in clear, on loopback): the coordinator serves with its certificate,
        # the controllers and this run's own client verify it.
        self.tls = tls
        # A replay is a fresh run: never recover a previous run's journal.
        for f in ("journal.sqlite", "journal.sqlite-wal", "journal.sqlite-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f).unlink()
        # The token: --token-file, else $HERD_TOKEN (the children inherit it), else one made
        # for this run (in its directory, owner-only).
        self.token = given_token
        if self.token is not None:
            self.token_file: Path | None = Path(token_file) if token_file else None
            self.token_source = token_file or f"${TOKEN_ENV}"
        else:
            self.token_file = self.dir / "token"
            self.token = write_token_file(self.token_file)
            self.token_source = str(self.token_file)
        # The coordinator's live view (--http HOST:PORT; None: off) and its URL once up.
        self.http = http
        self.http_url: str | None = None
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.switches: list[subprocess.Popen[bytes] | None] = [None] * self.k
        self.controllers: list[subprocess.Popen[bytes] | None] = [None] * self.k
        self.drivers: list[ModelDriver] = []
        self.origin_us = 0  # the switches' epoch origin (wall clock), once set
        self.restarts = {"controllers": 0, "coordinator": 0}
        # The coordinator's elephants as columns (FIELDS and reports), kept by results()
        # for the results store (herd.store_record.coordinator_elephants).
        self.elephants: dict[str, np.ndarray] = {}
        self.wall_start_ns = 0
        self.wall_end_ns = 0
        self.entry_writes: list[EntryWrite] = []  # measured by results()
        self.epoch_starts: list[EpochStart] = []  # measured by results()
        self._write_packets()

    # ---------------------------------------------------------------- files

    @property
    def epochs(self) -> bool:
        return self.epoch_us > 0

    @property
    def schedule_rate(self) -> float:
        """The switches' pace: units of their packets' ``due`` per second (0: full speed)."""
        if self.fed_by_wire:
            return 0.0
        return self.multiplier * 1e9 if self.epochs else self.pps

    def _write_packets(self) -> None:
        t = self.prep.trace
        ingress = self.prep.ingress(self.k, self.params.p, self.params.seed)
        # Due: the trace packet index at pps, or with epochs the trace time at m x its pace.
        due = trace_schedule(t.ts_ns) if self.epochs else np.arange(t.packets, dtype=np.int64)
        for i in range(self.k):
            idx = np.flatnonzero(ingress == i)
            flows = t.flow[idx]
            uf, local = np.unique(flows, return_inverse=True)
            np.savez(self.dir / f"{self.names[i]}.npz", ts_ns=t.ts_ns[idx],
                     flow=local.astype(np.int64), due=due[idx],
                     flow_src=t.flow_src[uf], flow_dst=t.flow_dst[uf],
                     flow_sport=t.flow_sport[uf], flow_dport=t.flow_dport[uf],
                     flow_proto=t.flow_proto[uf])

    def _spawn(self, module: str, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.dir / "logs" / f"{log_name}.log", "ab")  # noqa: SIM115 - child owns it
        try:
            return subprocess.Popen([self.python, "-m", module, *args], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    # ---------------------------------------------------------------- processes

    def start_coordinator(self) -> None:
        ready = self.dir / "coordinator.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        self.coordinator = self._spawn("herd.services.coordinator_service", [
            "--listen", self.address, "--switches", ",".join(self.names), "--R", str(self.R),
            *self.token_args(), "--journal", str(self.dir / "journal.sqlite"),
            "--results", str(self.dir / "coordinator-results.json"),
            "--epoch-ms", repr(float(self.params.epoch_ms)), *self.confirm_args(),
            *self.http_args(), *(self.tls.server_args() if self.tls else []),
            "--ready-file", str(ready), "--log-level", self.log_level],
            "coordinator")
        self._wait_file(ready, self.coordinator, "coordinator")
        if self.http:  # written before the gRPC ready file
            self.http_url = (self.dir / "http.ready").read_text().strip()

    def token_args(self) -> list[str]:
        """How a child process gets the token (none: it inherits $HERD_TOKEN)."""
        return ["--token-file", str(self.token_file)] if self.token_file else []

    def http_args(self) -> list[str]:
        """The coordinator's live view options (none without --http)."""
        if not self.http:
            return []
        ready = self.dir / "http.ready"
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        return ["--http", self.http, "--http-ready-file", str(ready)]

    def confirm_args(self) -> list[str]:
        """The coordinator's confirm options (none without confirm)."""
        p = self.params
        if not p.confirm:
            return []
        return ["--confirm", "--confirm-reports", str(p.confirm_reports), "--T", str(self.T)]

    def start_switch(self, i: int) -> None:
        """Start switch i. One process hosts every switch (its packet loop paces them all:
        k processes would each wake every millisecond for a few packets, and on a small
        machine that CPU is what the control loop waits for): the first call starts it for
        all k, later calls find switch i in it."""
        host = self.switches[i]
        if host is not None and host.poll() is None:
            return
        for name in self.names:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f"{name}.ready").unlink()
        per_switch = [arg for name in self.names for arg in (
            "--name", name, "--listen", f"unix:{self.dir / (name + '.sock')}",
            "--packets", str(self.dir / f"{name}.npz"),
            "--ready-file", str(self.dir / f"{name}.ready"),
            "--stats-file", str(self.dir / f"{name}.stats.json"))]
        host = self._spawn("herd.services.model_switch", [
            *per_switch, "--stages", ",".join(map(str, self.params.stages)),
            "--start", "command", "--log-level", self.log_level], "switches")
        self.switches = [host] * self.k

    def start_controller(self, i: int) -> None:
        p = self.params
        self.controllers[i] = self._spawn("herd.services.controller_service", [
            "--switch", self.names[i], "--switch-index", str(i), "--epsilon", repr(p.epsilon),
            "--T", str(self.T), "--s", repr(p.s), "--seed", str(p.seed),
            "--overflow-policy", p.overflow_policy, "--epoch-us", str(self.epoch_us),
            "--stages", ",".join(map(str, p.stages)), "--coordinator", self.address,
            *self.token_args(), *(self.tls.client_args() if self.tls else []),
            *self.driver_args(i),
            "--status-file", str(self.dir / f"{self.names[i]}.controller.json"),
            "--log-level", self.log_level], f"controller-{self.names[i]}")

    def driver_args(self, i: int) -> list[str]:
        """How controller i reaches its switch (the model switch's control socket)."""
        return ["--driver", "model", "--switch-address",
                f"unix:{self.dir / (self.names[i] + '.sock')}"]

    def _wait_file(self, path: Path, proc: subprocess.Popen[bytes] | None, what: str,
                   timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not path.exists():
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode} at start; see "
                                   f"{self.dir / 'logs'}: {self.log_tail(what)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
            time.sleep(0.02)

    def log_tail(self, what: str, lines: int = 20) -> str:
        p = self.dir / "logs" / f"{what}.log"
        if what.startswith("switch-") and not p.exists():
            p = self.dir / "logs" / "switches.log"  # the process hosting every switch
        if not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-lines:])

    def kill_controller(self, i: int) -> None:
        proc = self.controllers[i]
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.controllers[i] = None

    def restart_controller(self, i: int) -> None:
        self.kill_controller(i)
        self.start_controller(i)
        self.restarts["controllers"] += 1

    def kill_coordinator(self) -> None:
        if self.coordinator is not None:
            self.coordinator.send_signal(signal.SIGKILL)
            self.coordinator.wait()
            self.coordinator = None

    def restart_coordinator(self) -> None:
        self.kill_coordinator()
        self.start_coordinator()
        self.restarts["coordinator"] += 1

    def start(self) -> None:
        """Everything up, switches configured by their controllers, clocks aligned; then the
        packets start."""
        self.start_coordinator()
        for i in range(self.k):
            self.start_switch(i)
        for i in range(self.k):
            self._wait_file(self.dir / f"{self.names[i]}.ready", self.switches[i],
                            f"switch-{self.names[i]}")
            self.drivers.append(ModelDriver(self.names[i],
                                            f"unix:{self.dir / (self.names[i] + '.sock')}"))
        for i in range(self.k):
            self.start_controller(i)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            stats = [d.stats() for d in self.drivers]
            q = self.query(False)
            subscribed = sum(s.subscribed for s in q.switches)
            if all(s["configured"] and s["subscriber"] for s in stats) and subscribed == self.k:
                break
            for i, proc in enumerate(self.controllers):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"controller {self.names[i]} exited with "
                                       f"{proc.returncode}: "
                                       f"{self.log_tail('controller-' + self.names[i])}")
            if time.monotonic() > deadline:
                raise RuntimeError("controllers did not configure their switches in time")
            time.sleep(0.05)
        t0 = time.time_ns() + START_LEAD_NS
        if self.epochs and not self.fed_by_wire:
            self.set_epoch_origin(t0 // 1000)  # epoch 0 begins when trace packet 0 is due
        for d in self.drivers:
            d.request(op="start", t0_ns=t0, pps=self.schedule_rate)
        self.wall_start_ns = t0

    def epoch_drivers(self) -> list[SwitchDriver]:
        """A driver per switch, s1..sk, for the epoch origin and starts."""
        return list(self.drivers)

    def set_epoch_origin(self, origin_us: int) -> None:
        """Epoch 0 of every switch begins at ``origin_us`` (wall clock)."""
        for d in self.epoch_drivers():
            d.set_epoch_origin(origin_us)
        self.origin_us = origin_us

    def client(self) -> CoordinatorClient:
        """A client of this run's coordinator (TLS as the controllers have it)."""
        if self.tls is None:
            return CoordinatorClient(self.address, self.token)
        return CoordinatorClient(self.address, self.token, self.tls.ca, self.tls.server_name)

    def flush(self) -> list[int]:
        """Close every open epoch at the coordinator (its elephants are final)."""
        client = self.client()
        try:
            return list(client.flush(pb.FlushRequest(), timeout=30,
                                     metadata=client.metadata).closed)
        finally:
            client.close()

    # ---------------------------------------------------------------- progress

    def query(self, elephants: bool) -> pb.QueryReply:
        client = self.client()
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    return client.query(pb.QueryRequest(elephants=elephants), timeout=10,
                                        metadata=client.metadata)
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        finally:
            client.close()

    def switch_stats(self, latencies: bool = False) -> list[dict[str, Any]]:
        return [d.stats(latencies) for d in self.drivers]

    def progress(self) -> float:
        done = sum(s["packets_done"] for s in self.switch_stats())
        return done / max(1, self.prep.trace.packets)

    def wait_progress(self, fraction: float, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.progress() < fraction:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replay did not reach {fraction:.0%} in {timeout:.0f} s")
            time.sleep(0.02)

    def wait_done(self, timeout: float = 600.0) -> bool:
        """Until every packet went through and every CPU message is handled (acknowledged by
        the controllers, which acknowledge only what the coordinator holds)."""
        deadline = time.monotonic() + timeout
        end_seen = 0
        while time.monotonic() < deadline:
            stats = self.switch_stats()
            if all(s["done"] for s in stats):
                if not end_seen:
                    end_seen = max(s["wall_end_ns"] for s in stats)
                if all(s["cpu_acked"] == s["cpu_emitted"] for s in stats):
                    self.wall_end_ns = max(end_seen, time.time_ns())
                    return True
            time.sleep(0.05)
        self.wall_end_ns = time.time_ns()
        return False

    # ---------------------------------------------------------------- results

    def results(self, drained: bool, compare: bool = False) -> dict[str, Any]:
        prep, t = self.prep, self.prep.trace
        stats = self.switch_stats(latencies=True)
        if self.params.epoch_ms > 0:
            self.epoch_starts = [EpochStart(i, e, p)
                                 for i, d in enumerate(self.epoch_drivers())
                                 for e, p in d.epoch_starts()]
        self.flush()  # the run is over: every epoch's elephants are final
        q = self.query(True)
        counters = dict(q.counters)
        confirm = self.params.confirm
        # The coordinator's elephants (5-tuples) as the trace's (flow, epoch) pairs.
        columns = {f: np.array([getattr(x, f) for x in q.elephants], np.int64) for f in FIELDS}
        if confirm:
            columns["early"] = np.array([x.early for x in q.elephants], np.bool_)
        self.elephants = {**columns,
                          "reports": np.array([x.reports for x in q.elephants], np.int64)}
        detection = elephant_detection(prep, columns)
        # Confirm's pulls, per switch s1..sk as the coordinator counted them.
        by_name = {s.name: s for s in q.switches}
        pulls = np.array([by_name[n].pull_messages if n in by_name else 0 for n in self.names],
                         np.int64)
        regs = [s["registers"] for s in stats]
        hellos = np.array([r["hellos"] for r in regs], np.int64)
        reports = np.array([r["reports"] for r in regs], np.int64)
        overflows = np.array([r["overflows"] for r in regs], np.int64)
        peak = np.array([r["peak_occupied"] for r in regs], np.int64)
        lat = np.array([x for s in stats for x in s.get("hello_latency_ns", [])], np.float64) / 1e6
        self.entry_writes = [
            EntryWrite(i, int(g), int(hp), l_g_of_threshold(int(r)), int(packet),
                       ns / 1e6 if ns >= 0 else None)
            for i, s in enumerate(stats) for g, hp, r, packet, ns in s.get("entry_writes", [])]
        lat_p50 = float(np.percentile(lat, 50)) if len(lat) else None
        lat_p99 = float(np.percentile(lat, 99)) if len(lat) else None
        run_s = max(1e-9, (self.wall_end_ns - self.wall_start_ns) / 1e9)
        # The packets' own wall time: first switch start to last switch end.
        starts = [s["wall_start_ns"] for s in stats if s["wall_start_ns"]]
        packet_start = min(starts) if starts else self.wall_start_ns
        packet_end = max(s["wall_end_ns"] for s in stats) or self.wall_end_ns
        packet_s = max(1e-6, (packet_end - packet_start) / 1e9)
        trace_pps = self.trace_pps
        replay_pps = self.pps if self.pps > 0 else (
            trace_pps if self.epochs and trace_pps else t.packets / packet_s)
        # The mean, not the median: the packets a switch does not count while an entry is
        # pending add up with the mean latency, tail included.
        lat_mean = float(lat.mean()) if len(lat) else None
        delay_ms = (lat_mean * replay_pps / trace_pps) if (lat_mean is not None and trace_pps) \
            else 0.0
        coord_hellos = int(counters.get("memberships", 0))
        coord_reports = int(counters.get("reports", 0))
        lost_hellos = int(hellos.sum()) - coord_hellos
        lost_reports = int(reports.sum()) - coord_reports
        params = self.params.with_(delay_ms=round(delay_ms, 6))
        E = prep.truth(self.params, self.T).epochs
        scored, per_epoch = score(prep, self.params, self.T, self.R, detection,
                                  np.zeros(E, np.int64), np.zeros(E, np.int64))
        for row in per_epoch:  # not measured per trace epoch here
            row["messages"] = row["max_states"] = None
        metrics: dict[str, Any] = {
            **scored,
            **message_summary(hellos, reports, overflows, pulls),
            **memory_summary(peak, sum(self.params.stages),
                             slot_bytes(confirm)),
            "table_writes": int(sum(s["table_writes"] for s in stats)),
            "l_g_pushes": int(counters.get("l_g_pushes", 0)),
            "table_resets": int(sum(s["table_resets"] for s in stats)),
            "groups": int(counters.get("groups", 0)),
            "flows": t.flows,
            "skipped_packets": t.skipped,
        }
        out: dict[str, Any] = {
            "T": self.T,
            "R": self.R,
            **metrics,
            "packets": t.packets,
            "seconds": run_s,
            "packets_per_second": t.packets / packet_s,
            "params": params.to_dict(),
            "trace": t.paths[0],
            "trace_digest": t.digest,
            "herd_version": __version__,
            "lost_messages": lost_hellos + lost_reports,
            "lost_hellos": lost_hellos,
            "lost_reports": lost_reports,
            "drained": drained,
            "hello_latency_ms_p50": lat_p50,
            "hello_latency_ms_p99": lat_p99,
            "hello_latency_ms_mean": lat_mean,
            "reports_per_second": coord_reports / run_s,
            "replay_pps": replay_pps,
            "trace_pps": trace_pps,
            "measured_delay_ms": delay_ms,
            "late_reports": int(counters.get("late_reports", 0)),
            "untracked_reports": int(counters.get("untracked_reports", 0)),
            "cpu_dropped": int(sum(s["cpu_dropped"] for s in stats)),
            "coordinator": {k: int(v) for k, v in counters.items()},
            "restarts": dict(self.restarts),
            "per_epoch": per_epoch,
        }
        if confirm:
            out.update({key: int(counters.get(key, 0)) for key in (
                "pulls", "confirm_candidates", "confirmed", "withdrawn", "unknown_held_totals",
                "pull_timeouts", "reports_after_pull")})
        if self.params.epoch_ms > 0:
            origin = self.origin_us * 1000
            firsts = [s["first_arrival_us"] * 1000 for s in stats if s.get("first_arrival_us")]
            out.update({
                "multiplier": self.multiplier, "switch_epoch_us": self.epoch_us,
                "switch_epoch_starts": len(self.epoch_starts),
                "epochs_closed": int(counters.get("epochs_closed", 0)),
                # Wall time from the origin to the first packet at a switch: ~0 if aligned.
                "first_packet_after_origin_ms": (min(firsts) - origin) / 1e6
                if firsts and origin else None,
                **epoch_alignment(prep.ingress(self.k, self.params.p, self.params.seed),
                                  t.ts_ns, t.first_ts, epoch_ns_of(self.params.epoch_ms),
                                  self.epoch_starts, self.k)})
        if compare:
            from herd.evaluate import simulate

            constant = simulate(prep, params)
            out["simulated_f1_mean_delay"] = constant.f1
            timing = MeasuredTiming(self.entry_writes, self.epoch_starts)
            sim = simulate(prep, params, timing) if self.entry_writes or self.epoch_starts \
                else constant
            out["simulated_f1"] = sim.f1
            out["f1_difference"] = out["f1"] - sim.f1
            if confirm:
                for key in ("pull_messages", "confirm_candidates", "confirmed", "withdrawn",
                            "unknown_held_totals"):
                    out[f"simulated_{key}"] = sim.metrics.get(key)
            out["measured_delays"] = sim.metrics.get("measured_delays", 0)
            out["measured_delays_mismatched"] = sim.metrics.get("measured_delays_mismatched", 0)
        return out

    def write_delays(self, path: str | Path) -> str:
        """The entry writes and switch epoch starts ``results`` measured, as a file for
        ``herd simulate --delays``."""
        atomic_write(path, delays_csv(self.entry_writes, self.epoch_starts))
        return str(path)

    # ---------------------------------------------------------------- cleanup

    def close(self, keep: bool = False) -> None:
        """Stop every process (SIGTERM: the coordinator writes its results JSON), then
        anything still alive is killed. Always safe to call."""
        for d in self.drivers:
            with contextlib.suppress(Exception):
                d.request(op="shutdown")
            d.close()
        # One process may stand for several switches: each once.
        procs = list({id(p): p for p in (*self.controllers, self.coordinator, *self.switches)
                      if p is not None}.values())
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self._own_dir and not keep:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> ReplayRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_replay(prep: PreparedTrace, params: Params, pps: float = 0.0, *,
               workdir: str | None = None, keep: bool = False, compare: bool = False,
               timeout: float = 3600.0, results: str | None = None,
               log_level: str = "WARNING", delays_out: str | None = None,
               token_file: str | None = None, http: str | None = None,
               tls: RunTls | None = None,
               elephants: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """One replay's result (``herd replay --json``); ``elephants``, if given, is filled with
    the coordinator's elephants as columns (``ReplayRun.elephants``, for the results store)."""
    run = ReplayRun(prep, params, pps, workdir, log_level, token_file=token_file, http=http,
                    tls=tls)
    try:
        run.start()
        if run.http_url:  # while the run goes on: where to watch it
            print(f"herd replay: live view on {run.http_url} (token: {run.token_source})",
                  file=sys.stderr, flush=True)
        drained = run.wait_done(timeout)
        out = run.results(drained, compare)
        if elephants is not None:
            elephants.update(run.elephants)
    except BaseException:
        run.close(keep=True)
        print(f"herd replay: logs kept in {run.dir / 'logs'}", file=sys.stderr)
        raise
    coordinator_json = run.dir / "coordinator-results.json"
    run.close(keep=True)
    if delays_out:
        out["delays_file"] = run.write_delays(delays_out)
    if results:
        shutil.copyfile(coordinator_json, results)
        out["coordinator_results"] = results
    if keep or workdir is not None:
        out["workdir"] = str(run.dir)
    elif run._own_dir:
        shutil.rmtree(run.dir, ignore_errors=True)
    return out


def format_result(d: dict[str, Any]) -> str:
    def ms(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f} ms"

    return "\n".join([
        f"trace {d['trace']} ({d['packets']} packets, digest {d['trace_digest'][:12]})",
        f"T={d['T']} R={d['R']} heavy hitters={d['heavy_hitters']} detected={d['detected']}",
        f"F1={d['f1']:.4f} precision={d['precision']:.4f} recall={d['recall']:.4f}"
        + (f" (simulator under the measured timing: {d['simulated_f1']:.4f}; at the mean "
           f"{d['measured_delay_ms']:.4f} ms: {d['simulated_f1_mean_delay']:.4f})"
           if "simulated_f1" in d else ""),
        f"messages={d['messages']} (hellos {d['hellos']}, reports {d['reports']}, overflows "
        f"{d['overflows']}, pull {d['pull_messages']}); lost {d['lost_messages']}; "
        f"{d['slot_bytes']} bytes a slot",
        *([f"confirm: {d['pulls']} pulls, {d['confirm_candidates']} candidates, "
           f"{d['confirmed']} confirmed, {d['withdrawn']} withdrawn, "
           f"{d['unknown_held_totals']} held totals unknown, {d['pull_timeouts']} switches "
           "timed out"] if "pulls" in d else []),
        f"hello -> install latency p50 {ms(d['hello_latency_ms_p50'])}, p99 "
        f"{ms(d['hello_latency_ms_p99'])} (trace-time delay {d['measured_delay_ms']:.4f} ms)",
        f"replayed in {d['seconds']:.2f} s: {d['packets_per_second']:.0f} packets/s, "
        f"{d['reports_per_second']:.0f} reports/s",
        *([f"epochs={d['epochs']} of {d['params']['epoch_ms']:g} ms (switches: "
           f"{d['switch_epoch_us']} us at {d['multiplier']:.4g}x the trace's pace); packets in "
           f"another epoch than the trace's: {d['epoch_mismatched_packets']}; late reports "
           f"{d['late_reports']}"] if "switch_epoch_us" in d else []),
    ])


__all__ = ["ReplayRun", "format_result", "run_replay"]
