"""The testbed harness: the evaluation topology in Mininet, the coordinator and one local
controller per ingress switch as real processes, the pcap replayed from h1 with tcpreplay,
swept over the values of a layout CSV whose rows it fills.

    sudo bash scripts/start_topology_and_eval.sh <s> <epsilon> <T> <R> <csv> <pcap> <p4app> \
        [--target model|bmv2] [--injection lb|direct] [--pps N] [--epoch-ms W] \
        [--confirm [--confirm-reports C]]

Per value: every switch process is restarted (fresh registers and tables; the load balancer
reseeded), the coordinator and controllers start, tcpreplay sends the pcap (MACs rewritten
for the topology) at the given rate, the harness waits until the network has drained and every
CPU message is handled, scores the coordinator's elephants against the pcap's ground truth,
and writes the row. Everything is torn down on exit, on error and on Ctrl-C.

Injection (``--injection``). ``lb`` (the default, for fidelity): the whole pcap from h1
through the P4 (or model) load balancer. ``direct``: each ingress switch has its own sender
host replaying its share of the pcap, split exactly as the load balancer would
(``herd.testbed.direct``), and its own sink host (``topology.direct_topology``), so a packet
crosses one switch process instead of three: BMv2 loses packets above 1,000-2,000 packets/s
through lb, s_i and agg on two cores. The shares are replayed concurrently, each at its
proportion of --pps (together --pps, all finishing together); with --epoch-ms each sender is
``herd.testbed.sender`` with the same start instant and the whole trace's time origin.

No silent failure. Before the replay a probe frame (a non-IPv4 ethertype the switches
forward and do not measure) must cross every ingress switch to its sink
(``herd.testbed.probe``), or the run fails naming the hop. Around the replay the kernel's
counters of every veth give the packets per hop (``herd.testbed.hops``: sent, each node's
in and out, the sink's in), in the JSON as ``hops`` and the CSV as ``lost_at`` (the first hop
that counted fewer than the one before); a run with loss prints them on one line, and a run
that delivered nothing fails (exit 1) naming the hop where the packets stopped instead of
writing an F1 of 0.

Beside the CSV, each value leaves ``<csv stem>-delays-<param>=<value>.csv``: every group entry
written and the packet of its switch it took effect at (``herd.delays``), and with epochs where
each switch's epochs began. ``simulated_f1`` is ``herd simulate --delays`` on that file: the
same pcap through the simulator under the run's control-plane timeline and switch epochs, so
a difference between the two is the testbed (lost or reordered frames, a semantic mismatch),
not the timing.

Confirm (``--confirm``, ``herd.coordinator``): the coordinator pulls each epoch's candidates'
held totals from the switches through their controllers (the model switch's op, BMv2's
register reads: the drivers' ``held_totals``), at the latest when the run is flushed; the rows
carry the pull's messages (in ``messages`` and ``pull_messages``), ``slot_bytes`` (24), the
confirm counters, and ``simulated_f1`` is the simulator with confirm.

Epochs (``--epoch-ms W``, trace time): the switches follow their own clocks, so the pcap is
replayed with its own timing, sped up by m = pps / the pcap's mean rate (``--pps`` is the mean
rate; 0: the pcap's own pace); the controllers give their switches W / m (``--epoch-us``), and
every ingress switch's epoch origin is set through its driver to the instant packet 0 leaves
h1 (ORIGIN_LEAD_S ahead). The sender is ``herd.testbed.sender``, not tcpreplay: Debian's
tcpreplay 4.4.3 ``--multiplier`` with its sleeping timer drifts (appneta/tcpreplay#724: a
4.0 s schedule took 5.7 s here, so the switches' epochs slid off the pcap's), its spinning
timer takes a core from the switches, and it cannot start at a given instant (60-160 ms of
start-up in a Mininet host). The sender waits for the origin and keeps to an absolute
schedule. Without epochs the replay is tcpreplay's, as before. The rows are scored per trace
epoch; ``epoch_mismatched_packets`` and ``epoch_offset_ms_*`` (in the JSON) say how well the
switches' epochs lined up with the pcap's, ``first_packet_after_origin_ms`` when the first
packet reached a switch.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from herd import __version__
from herd.errors import HerdInputError
from herd.fileio import atomic_write
from herd.loadbalancer import lb_seed
from herd.params import Params, add_confirm_arguments
from herd.prepared import PreparedTrace
from herd.prng import probability_threshold
from herd.services.drivers.base import SwitchDriver
from herd.services.drivers.bmv2_thrift import Bmv2Thrift
from herd.services.replay import ReplayRun, trace_schedule
from herd.services.security import RunTls, add_run_tls_arguments, run_tls_from_args
from herd.store import Recorder, add_db_arguments
from herd.store_record import record_testbed_row
from herd.sweep import SWEEP_PARAMS, params_for, read_layout
from herd.testbed import hops as hopmod
from herd.testbed.configure import apply_writes, evaluation_writes
from herd.testbed.direct import Share, share_rates, write_shares
from herd.testbed.network import (
    SwitchSpec,
    build_network,
    quiet_ipv6,
    remove_leftovers,
    require_root_and_mininet,
    wait_for,
)
from herd.testbed.probe import PathError, prove_paths
from herd.testbed.topology import (
    AGGREGATOR,
    INGRESS,
    LOAD_BALANCER,
    SENDER,
    SINK,
    injection_topology,
)
from herd.trace import load_trace

COLUMNS = ("f1score", "precision", "recall", "messages", "max_messages_per_switch", "hellos",
           "reports", "overflows", "max_states", "detected", "heavy_hitters", "T", "R",
           "sent_packets", "received_packets", "lost_packets", "lost_messages",
           "hello_latency_ms_p50", "hello_latency_ms_p99", "measured_delay_ms", "simulated_f1",
           "simulated_f1_mean_delay", "simulated_f1_no_delay", "measured_delays",
           "epochs", "epoch_ms", "target", "pps", "seed", "trace_digest", "herd_version",
           "injection", "lost_at", "confirm", "pull_messages", "slot_bytes",
           "confirm_candidates", "confirmed", "withdrawn", "unknown_held_totals",
           "pull_timeouts")
ORIGIN_LEAD_S = 0.5  # the epoch origin: this far ahead (the drivers' writes, the sender's start)
PROBE_TIMEOUT_S = 10.0  # per path: a switch up but slow to read its ports gets this long


class LossError(RuntimeError):
    """A run that delivered nothing: the message names the hop where the packets stopped;
    ``result`` is the run's record (with its ``hops``) for the JSON."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class TestbedRun(ReplayRun):
    """A replay whose switches are the testbed's (already running in Mininet), fed by
    tcpreplay instead of packet files."""

    __test__ = False  # not a pytest class
    fed_by_wire = True

    def _write_packets(self) -> None:
        pass  # the packets come over the wire

    def start_switch(self, i: int) -> None:
        pass  # Mininet runs the switches

    def results(self, drained: bool, compare: bool = False) -> dict[str, Any]:
        out = super().results(drained, compare)
        # Reports carry the switches' wall clock here, not trace time: no detection delay.
        for key in [k for k in out if "detection_delay" in k]:
            out[key] = None
        return out

    def wait_drained(self, received: Any, timeout: float,
                     activity: Callable[[], Any] | None = None,
                     queued: Callable[[], int] | None = None) -> bool:
        """Until nothing moves for a while: the sinks' counter, the switches' packets (and
        ``activity``: every hop's kernel counters), every CPU message acknowledged (the
        controllers acknowledge only what the coordinator holds), and no frame waiting unread
        in a switch's socket (``queued``): a switch process stalled for seconds (starved of
        CPU, or compiling its pipeline on its first packet) has moved nothing, and must not
        make the run look drained with its frames still queued."""
        deadline = time.monotonic() + timeout
        last: tuple[Any, ...] = ()
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            stats = self.switch_stats()
            acked = all(s["cpu_acked"] == s["cpu_emitted"] for s in stats)
            now = (received(), tuple(s["packets_done"] for s in stats),
                   tuple(s["cpu_emitted"] for s in stats), activity() if activity else None)
            waiting = queued() if queued else 0
            if now != last or waiting:
                last, still_since = now, time.monotonic()
            elif acked and time.monotonic() - still_since > 2.0:
                self.wall_end_ns = time.time_ns()
                return True
            time.sleep(0.1)
        self.wall_end_ns = time.time_ns()
        return False


class Bmv2TestbedRun(TestbedRun):
    """The BMv2 target: controllers drive simple_switch through the bmv2 driver (Thrift) and
    read CPU messages from each switch's CPU port; counters come from the switches' registers.
    BMv2 does not time hellos, so the hello latency is not measured here."""

    def __init__(self, *args: Any, switches: list[Any], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.bmv2 = switches  # the ingress ProcessSwitch nodes, s1..sk
        self._emitted: list[int] = [0] * len(switches)
        self._epoch_drivers: list[SwitchDriver] = []
        self._thrift: dict[int, Bmv2Thrift] = {}

    def thrift(self, i: int) -> Bmv2Thrift:
        """The harness's own Thrift connection to ingress switch i (registers)."""
        if i not in self._thrift:
            self._thrift[i] = Bmv2Thrift(self.bmv2[i].thrift_port)
        return self._thrift[i]

    def epoch_drivers(self) -> list[SwitchDriver]:
        """The bmv2 driver of each switch (Thrift), opened on first use: only runs with
        epochs need them."""
        if not self._epoch_drivers:
            from herd.services.drivers import open_driver

            self._epoch_drivers = [
                open_driver("bmv2", self.names[i], f"127.0.0.1:{sw.thrift_port}",
                            json_path=str(sw.spec.p4_json[INGRESS]))
                for i, sw in enumerate(self.bmv2)]
        return self._epoch_drivers

    def close(self, keep: bool = False) -> None:
        for d in [*self._epoch_drivers, *self._thrift.values()]:
            with suppress(Exception):
                d.close()
        super().close(keep)

    def driver_args(self, i: int) -> list[str]:
        sw = self.bmv2[i]
        return ["--driver", "bmv2", "--switch-address", f"127.0.0.1:{sw.thrift_port}",
                "--cpu-interface", sw.cpu_host_intf, "--p4-json",
                str(sw.spec.p4_json[INGRESS])]

    def start(self) -> None:
        from herd.switch import REG_HOLD_START

        self.start_coordinator()
        for i in range(self.k):
            self.start_controller(i)
        deadline = time.monotonic() + 120
        while True:
            q = self.query(False)
            configured = all(self.thrift(i).register_read("herd_regs", REG_HOLD_START) != 0
                             for i in range(self.k))
            if configured and sum(s.subscribed for s in q.switches) == self.k:
                break
            for i, proc in enumerate(self.controllers):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"controller {self.names[i]} exited: "
                                       f"{self.log_tail('controller-' + self.names[i])}")
            if time.monotonic() > deadline:
                raise RuntimeError("controllers did not configure the BMv2 switches in time")
            time.sleep(0.2)
        self.wall_start_ns = time.time_ns()

    def switch_stats(self, latencies: bool = False) -> list[dict[str, Any]]:
        from herd.switch import REG_HELLOS, REG_OVERFLOWS, REG_PEAK_OCCUPIED, REG_REPORTS

        out = []
        for i in range(self.k):
            regs = self.thrift(i).register_read_all("herd_regs")
            emitted = regs[REG_HELLOS] + regs[REG_REPORTS] + regs[REG_OVERFLOWS]
            self._emitted[i] = emitted
            # BMv2 keeps no timing: the controller notes the switch's packet counter after
            # each entry write, and its own hello -> written latency.
            writes = self._controller_status(i).get("entry_writes", []) if latencies else []
            out.append({
                "registers": {"hellos": regs[REG_HELLOS], "reports": regs[REG_REPORTS],
                              "overflows": regs[REG_OVERFLOWS],
                              "peak_occupied": regs[REG_PEAK_OCCUPIED]},
                "packets_done": regs[REG_HELLOS] + regs[REG_REPORTS],
                "cpu_emitted": emitted, "cpu_acked": emitted, "cpu_dropped": 0,
                "table_writes": 0, "table_resets": 0, "entry_writes": writes,
                "hello_latency_ns": [w[4] for w in writes if w[4] >= 0],
                "wall_start_ns": self.wall_start_ns, "wall_end_ns": self.wall_end_ns,
            })
        return out

    def _controller_status(self, i: int) -> dict[str, Any]:
        try:
            return json.loads((self.dir / f"{self.names[i]}.controller.json").read_text())
        except (OSError, ValueError):
            return {}


LOCK_FILE = Path("/run/lock/herd-testbed.lock")


def machine_lock(path: Path = LOCK_FILE) -> Any:
    """One testbed at a time on a machine: interface names and Thrift ports are fixed, so a
    second network would tear down or steal the first one's. Waits for a running testbed
    (saying so) and holds the lock until the returned file is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")  # noqa: SIM115 - held for the testbed's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        print(f"herd testbed: another testbed run holds {path} (pid {holder}); waiting",
              file=sys.stderr)
        fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


class Testbed:
    """The network, up for a whole sweep; switch processes restarted per run."""

    def __init__(self, k: int, target: str, stages: tuple[int, ...], workdir: Path,
                 injection: str = "lb") -> None:
        self.k = k
        self.target = target
        self.workdir = workdir
        self.injection = injection
        self.topology = injection_topology(injection, k)
        self.hop_plan = hopmod.hop_plan(self.topology)
        p4_json = compile_programs(workdir) if target == "bmv2" else {}
        self.spec = SwitchSpec(target, workdir, k, stages, p4_json)
        self.net: Any = None
        self.elephants: dict[str, Any] = {}  # the last evaluate()'s, as columns

    def __enter__(self) -> Testbed:
        self._lock = machine_lock()
        remove_leftovers(self.topology)
        self.net = build_network(self.topology, self.spec)
        try:
            self.net.build()
            self.net.start()
            quiet_ipv6(self.net)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.net is not None:
            with suppress(Exception):
                self.net.stop()
            self.net = None
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def restart_switches(self, params: Params) -> None:
        for sw in self.net.switches:
            if sw.kind == LOAD_BALANCER:
                sw.extra_args = ["--k", str(self.k), "--p-threshold",
                                 str(probability_threshold(params.p)),
                                 "--prng-seed", str(lb_seed(params.seed))]
            ready = self.workdir / f"{sw.name}.ready"
            with suppress(FileNotFoundError):
                ready.unlink()
            sw.restart_process()
        for sw in self.net.switches:
            wait_for(lambda sw=sw: self._ready(sw) or sw.proc.poll() is not None, 60,
                     f"switch {sw.name}")
            if sw.proc.poll() is not None:
                raise RuntimeError(f"switch {sw.name} exited: "
                                   f"{(self.workdir / (sw.name + '.log')).read_text()[-2000:]}")
        if self.target == "bmv2":
            self.configure_bmv2(params)

    def _ready(self, sw: Any) -> bool:
        if self.target == "model":
            return (self.workdir / f"{sw.name}.ready").exists()
        with suppress(OSError), socket.create_connection(("127.0.0.1", sw.thrift_port), 0.5):
            return True
        return False

    def configure_bmv2(self, params: Params) -> None:
        """What the model nodes take as arguments, written into the P4 switches
        (``herd.testbed.configure``): the load balancer's registers and port map, the
        aggregator's port, the ingress switches' forwarding and CPU mirror sessions."""
        from herd.testbed.network import CPU_PORT

        cpu_ports = {sw.name: CPU_PORT for sw in self.topology.ingress_switches}
        plan = evaluation_writes(self.topology, params, cpu_ports)
        for sw in self.net.switches:
            client = Bmv2Thrift(sw.thrift_port)
            try:
                apply_writes(client, plan[sw.name])
            finally:
                client.close()

    @property
    def senders(self) -> list[Any]:
        return [self.net.get(n.name) for n in self.topology.hosts(SENDER)]

    @property
    def sinks(self) -> list[Any]:
        return [self.net.get(n.name) for n in self.topology.hosts(SINK)]

    def counters(self) -> hopmod.Counters:
        """Every interface's kernel counters, the hosts' read in their namespaces."""
        return hopmod.read_counters({h.name: h.pid for h in self.net.hosts})

    def received(self) -> int:
        """Frames the sink hosts received (kernel counters)."""
        c = self.counters()
        return sum(c[(h.name, f"{h.name}-eth0")][0] for h in self.sinks)

    def replay(self, shares: list[Share], pps: float) -> list[int]:
        """tcpreplay shares[i] from sender i, all at once, together at pps (each in
        proportion to its share, so they finish together); the packets each says it sent."""
        # --timer=nano sleeps between packets; the default timer spins, taking a whole core
        # from the switches it feeds.
        rates = share_rates([sh.packets for sh in shares], pps) if pps > 0 else []
        procs: list[subprocess.Popen[bytes] | None] = []
        for i, (host, share) in enumerate(zip(self.senders, shares, strict=True)):
            if share.packets == 0 or (pps > 0 and rates[i] <= 0):
                procs.append(None)  # an empty share
                continue
            rate = [f"--pps={rates[i]:.6g}", "--timer=nano"] if pps > 0 else ["--topspeed"]
            # An argument list, not shell=True: Mininet's shell path reads $SHELL, which a
            # CI runner or systemd unit need not set.
            procs.append(host.popen(["tcpreplay", "-q", "-i", f"{host.name}-eth0", *rate,
                                     str(share.path)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        return [g[0] for g in _all_sent(procs, "tcpreplay", r"Actual: (\d+) packets")]

    def replay_timed(self, shares: list[Share], multiplier: float, start_ns: int,
                     t0_ns: int) -> dict[str, float]:
        """shares[i] from sender i with the trace's own timing sped up by multiplier, capture
        time t0_ns leaving at start_ns on every sender (``herd.testbed.sender``): packets
        sent and the senders' worst lateness."""
        procs = [host.popen([sys.executable, "-m", "herd.testbed.sender", "--interface",
                             f"{host.name}-eth0", "--multiplier", f"{multiplier:.12g}",
                             "--start-at-ns", str(start_ns), "--t0-ns", str(t0_ns),
                             str(share.path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 if share.packets else None
                 for host, share in zip(self.senders, shares, strict=True)]
        pattern = r"Actual: (\d+) packets .* first frame ([\d.]+) ms late, worst ([\d.]+) ms"
        got = [g for g, p in zip(_all_sent(procs, "sender", pattern), procs, strict=True)
               if p is not None]
        return {"sent": sum(int(g[0]) for g in got),
                "sender_first_late_ms": max(g[1] for g in got),  # the latest sender's start
                "sender_worst_late_ms": max(g[2] for g in got)}

    def wire_shares(self, wire: Path, params: Params) -> list[Share]:
        """What each sender replays: the whole pcap from h1, or each switch's share."""
        if self.injection == "lb":
            return [Share(0, wire, _pcap_records(wire))]
        macs = [(a.MAC(), b.MAC()) for a, b in zip(self.senders, self.sinks, strict=True)]
        return write_shares(wire, self.workdir, self.k, params.p, params.seed, macs)

    def prove_paths(self) -> dict[str, Any]:
        """A probe through every ingress switch to its sink, or PathError naming the hop."""
        hosts = self.net.hosts
        return prove_paths(self.topology, {h.name: h.pid for h in hosts},
                           {h.name: h.MAC() for h in hosts}, self.counters, PROBE_TIMEOUT_S)

    def rewrite_macs(self, pcap: Path, out: Path) -> Path:
        """The pcap with the (first) sender's and sink's MACs (and an Ethernet header if it
        had none); direct injection puts each share's own MACs in afterwards."""
        h1, h2 = self.senders[0], self.sinks[0]
        cmd = ["tcprewrite", f"--enet-smac={h1.MAC()}", f"--enet-dmac={h2.MAC()}",
               "--fixlen=pad", f"--infile={pcap}", f"--outfile={out}"]
        if _linktype(pcap) != 1:
            cmd.insert(1, "--dlt=enet")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise HerdInputError(f"{pcap}: tcprewrite failed: {proc.stderr.strip()[:300]}")
        return out

    def evaluate(self, prep: PreparedTrace, params: Params, pcap: Path, pps: float,
                 delays_out: Path | None = None, http: str | None = None,
                 tls: RunTls | None = None) -> dict[str, Any]:
        self.restart_switches(params)
        if self.target == "bmv2":
            ingress = sorted((sw for sw in self.net.switches if sw.kind == INGRESS),
                             key=lambda sw: sw.index)
            run: TestbedRun = Bmv2TestbedRun(prep, params, pps, workdir=str(self.workdir),
                                             switches=ingress, http=http, tls=tls)
        else:
            run = TestbedRun(prep, params, pps, workdir=str(self.workdir), http=http, tls=tls)
        shares = self.wire_shares(pcap, params)
        try:
            run.start()
            if run.http_url:
                print(f"    live view on {run.http_url} (token: {run.token_source})",
                      file=sys.stderr, flush=True)
            # The path end to end before any packet: a dead hop fails here, named.
            probes = self.prove_paths()
            counters_before = self.counters()
            before = self.received()
            sender: dict[str, float] = {}
            per_sender: list[int] = []
            if run.epochs:
                # Epoch 0 of every ingress switch begins when packet 0 leaves its sender.
                origin_ns = time.time_ns() + int(ORIGIN_LEAD_S * 1e9)
                run.set_epoch_origin(origin_ns // 1000)
                sender = self.replay_timed(shares, run.multiplier, origin_ns // 1000 * 1000,
                                           _first_timestamp(pcap))
                sent = int(sender.pop("sent"))
                duration = int(trace_schedule(prep.trace.ts_ns)[-1]) / 1e9 / run.multiplier
            else:
                per_sender = self.replay(shares, pps)
                sent = sum(per_sender)
                duration = prep.trace.packets / max(pps, 1000)
            switch_ifs = hopmod.switch_interfaces(self.topology)
            drained = run.wait_drained(
                lambda: self.received() - before, timeout=60 + duration,
                activity=lambda: [h["packets"] for h in hopmod.hop_counts(
                    self.topology, self.hop_plan, counters_before, self.counters())],
                queued=lambda: hopmod.queued_bytes(switch_ifs))
            received = self.received() - before
            hops = hopmod.with_sent(sent, hopmod.hop_counts(
                self.topology, self.hop_plan, counters_before, self.counters()),
                "tcpreplay" if not run.epochs else "herd.testbed.sender",
                dict(zip((h.name for h in self.senders), per_sender, strict=False)))
            lost_at = hopmod.first_loss(hops)
            if sent > 0 and received == 0:
                i = hopmod.first_silent(hops)
                where = hopmod.describe(hops, i) if i is not None else "no hop lost count"
                raise LossError(
                    f"{sent} packets sent, none received: they stopped at {where}\n    hops: "
                    f"{hopmod.summary(hops)}",
                    {"sent_packets": sent, "received_packets": 0, "lost_packets": sent,
                     "hops": hops, "lost_at": hops[i]["hop"] if i is not None else None,
                     "probes": probes, "target": self.target, "injection": self.injection,
                     "pps": pps})
            out = run.results(drained, compare=True)
            self.elephants = run.elephants  # for the results store (one run's)
        finally:
            run.close(keep=True)
        from herd.evaluate import simulate

        out["simulated_f1_no_delay"] = simulate(prep, params.with_(delay_ms=0.0)).f1  # the ideal
        if delays_out is not None and (run.entry_writes or run.epoch_starts):
            out["delays_file"] = run.write_delays(delays_out)
        out.update(sent_packets=sent, received_packets=received,
                   lost_packets=max(0, sent - received), target=self.target, pps=pps,
                   injection=self.injection, hops=hops, probes=probes,
                   lost_at=hops[lost_at]["hop"] if lost_at is not None else None, **sender)
        return out


def _first_timestamp(pcap: Path) -> int:
    """The capture time of the pcap's first frame (ns): what leaves at the origin."""
    from herd.testbed.sender import read_pcap

    return next(iter(read_pcap(pcap)), (0, b""))[0]


def _pcap_records(pcap: Path) -> int:
    from herd.testbed.sender import read_pcap

    return sum(1 for _ in read_pcap(pcap))


class SenderError(RuntimeError):
    """A sender (tcpreplay or herd.testbed.sender) failed: the run is void."""


def _all_sent(procs: list[subprocess.Popen[bytes] | None], what: str,
              pattern: str) -> list[tuple[int, float, float]]:
    """Wait for every sender (None: an empty share, 0 sent). If one fails, the others are
    stopped too: Mininet detaches them from their host, so nothing else would."""
    try:
        return [_sent(p, what, pattern) if p is not None else (0, 0.0, 0.0) for p in procs]
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


def _sent(proc: subprocess.Popen[bytes], what: str, pattern: str) -> tuple[int, float, float]:
    """Wait for a sender; what it says it sent (and, timed, its first and worst lateness)."""
    out = proc.communicate()[0].decode(errors="replace")
    m = re.search(pattern, out)
    if proc.returncode != 0 or not m:
        raise SenderError(f"{what} failed: {out.strip()[-500:]}")
    g = m.groups()
    return int(g[0]), float(g[1]) if len(g) > 1 else 0.0, float(g[2]) if len(g) > 2 else 0.0


def compile_programs(workdir: Path) -> dict[str, Path]:
    """p4c-bm2-ss on the three programs (the BMv2 target)."""
    if shutil.which("p4c-bm2-ss") is None or shutil.which("simple_switch") is None:
        raise HerdInputError("--target bmv2 needs p4c-bm2-ss and simple_switch on PATH "
                             "(a P4 machine: see the Vagrantfile); --target model runs anywhere")
    repo = Path(__file__).resolve().parents[2]
    out = {}
    for kind, program in ((INGRESS, "herd.p4"), (LOAD_BALANCER, "load_balancer.p4"),
                          (AGGREGATOR, "aggregator.p4")):
        dest = workdir / f"{Path(program).stem}.json"
        proc = subprocess.run(["p4c-bm2-ss", "--std", "p4-16", "-o", str(dest),
                               str(repo / "p4src" / program)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise HerdInputError(f"p4src/{program}: p4c failed: {proc.stderr.strip()[:500]}")
        out[kind] = dest
    return out


def _linktype(pcap: Path) -> int:
    with open(pcap, "rb") as f:
        head = f.read(24)
    if len(head) < 24:
        return -1
    magic = head[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        return int.from_bytes(head[20:24], "little")
    if magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        return int.from_bytes(head[20:24], "big")
    return -1  # pcapng: tcprewrite handles it; assume not Ethernet-only


def p4app_ingress_count(path: Path) -> int:
    """k: the switches of a p4app JSON that run herd.p4."""
    try:
        app = json.loads(path.read_text())
        switches = app["topology"]["switches"]
    except FileNotFoundError:
        raise HerdInputError(f"{path}: p4app file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise HerdInputError(f"{path}: not a p4app topology ({e})") from None
    k = sum(1 for sw in switches.values() if str(sw.get("p4_src", "")).endswith("herd.p4"))
    if k < 1:
        raise HerdInputError(f"{path}: no switch runs herd.p4")
    return k


def csv_rows(param: str, values: list[float], rows: dict[float, dict[str, Any]]) -> str:
    """The layout CSV filled in: the swept parameter first and not again among the columns
    (under its name or its Params field's), so that readers see each name once."""
    same = {param, SWEEP_PARAMS.get(param, param)}
    columns = [c for c in COLUMNS if c not in same]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([param, *columns])
    for v in values:
        r = rows.get(v)
        w.writerow([v, *(_cell(r.get(c)) if r else "" for c in columns)])
    return out.getvalue()


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def run_harness(args: argparse.Namespace) -> int:
    csv_path, pcap = Path(args.csv), Path(args.pcap)
    param, values = read_layout(csv_path)
    k = p4app_ingress_count(Path(args.p4app))
    base = Params(s=args.s, epsilon=args.epsilon, T=args.T or None, R=args.R or None, k=k,
                  p=args.p, seed=args.seed, stages=tuple(args.stages), epoch_ms=args.epoch_ms,
                  confirm=args.confirm, confirm_reports=args.confirm_reports)
    for v in values:  # every point valid before anything starts
        params_for(base, param, v, base.seed)
    if args.pps < 0:
        raise HerdInputError(f"--pps {args.pps}: must be >= 0 (0: as fast as possible)")
    tls = run_tls_from_args(args)  # passed through to the coordinator and the controllers
    if args.http:  # before Mininet comes up
        from herd.services.web import check_loopback_http

        check_loopback_http(args.http, tls is not None)
    prep = PreparedTrace(load_trace(pcap))
    require_root_and_mininet()
    rec = Recorder.from_args(args, prog="herd testbed")
    trace = {"trace_path": os.path.abspath(pcap), "trace_sha256": prep.trace.digest}
    setting = {"target": args.target, "injection": args.injection, "pps": args.pps}
    parent = rec.begin("testbed", {**base.to_dict(), **setting, "swept": param,
                                   "values": list(values), "p4app": args.p4app}, **trace)
    workdir = Path(tempfile.mkdtemp(prefix="herd-testbed-"))
    rows: dict[float, dict[str, Any]] = {}
    records = []

    def interrupted(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    failed = ""
    try:
        with Testbed(k, args.target, base.stages, workdir, args.injection) as tb:
            wire = tb.rewrite_macs(pcap, workdir / "replay.pcap")
            for i, v in enumerate(values):
                params = params_for(base, param, v, base.seed)
                how = "from h1 through the load balancer" if args.injection == "lb" else \
                    f"from {k} hosts, one per ingress switch"
                print(f"[{i + 1}/{len(values)}] {param}={v}: replaying {prep.trace.packets} "
                      f"packets at {args.pps:g} pps {how} on the {args.target} target",
                      file=sys.stderr)
                try:
                    out = tb.evaluate(
                        prep, params, wire, args.pps,
                        csv_path.with_name(f"{csv_path.stem}-delays-{param}={v}.csv"),
                        http=args.http, tls=tls)
                except (LossError, PathError, SenderError) as e:
                    # No F1 of 0 for a run that measured nothing: fail, saying where.
                    records.append({param: v, "error": str(e),
                                    **(e.result if isinstance(e, LossError) else {})})
                    failed = f"{param}={v}: {e}"
                    row_id = rec.begin("testbed_row", {**params.to_dict(), **setting,
                                                       "swept": param, param: v},
                                       parent_id=parent, **trace)
                    rec.abort(row_id, str(e).splitlines()[0], status="failed")
                    break
                rows[v] = {**out, "f1score": out["f1"], "seed": params.seed,
                           "confirm": params.confirm}
                records.append({param: v, **out})
                atomic_write(csv_path, csv_rows(param, values, rows))
                print(f"    F1 {out['f1']:.3f} (simulated under the measured timing "
                      f"{out['simulated_f1']:.3f}), "
                      f"lost packets {rows[v]['lost_packets']}, lost messages "
                      f"{out['lost_messages']}", file=sys.stderr)
                if params.confirm:
                    print(f"    confirm: {out['confirm_candidates']} candidates, "
                          f"{out['confirmed']} confirmed, {out['withdrawn']} withdrawn, "
                          f"{out['unknown_held_totals']} held totals unknown; "
                          f"{out['pull_messages']} pull messages (simulated "
                          f"{out['simulated_pull_messages']})", file=sys.stderr)
                if out["lost_packets"] > 0:
                    at = out["hops"]
                    j = hopmod.first_loss(at)
                    print(f"    packets lost first at {hopmod.describe(at, j) if j else '?'}; "
                          f"hops: {hopmod.summary(at)}", file=sys.stderr)
                if params.epoch_ms > 0:
                    print(f"    {out['epochs']} epochs of {params.epoch_ms:g} ms (switches "
                          f"{out['switch_epoch_us']} us at {out['multiplier']:.4g}x); packets "
                          f"in another epoch than the pcap's {out['epoch_mismatched_packets']}"
                          f", boundary offset p50 {out['epoch_offset_ms_p50']} ms (trace "
                          f"time), first packet at a switch {out['first_packet_after_origin_ms']}"
                          f" ms after the origin (sender {out['sender_first_late_ms']} ms late), "
                          f"late reports {out['late_reports']}", file=sys.stderr)
                # After the row's CSV: a store that fails loses none of it.
                record_testbed_row(rec, parent, prep, params, {**setting, "swept": param,
                                                               param: v}, out, tb.elephants,
                                   trace)
    except BaseException as e:
        interrupted_run = isinstance(e, KeyboardInterrupt | SystemExit)
        rec.abort(parent, "interrupted" if interrupted_run else f"{type(e).__name__}: {e}",
                  status="aborted" if interrupted_run else "failed")
        raise
    finally:
        if records:
            atomic_write(csv_path.with_suffix(".json"), json.dumps({
                "herd_version": __version__, "command": sys.argv, "target": args.target,
                "injection": args.injection, "pps": args.pps, "base_params": base.to_dict(),
                "trace": str(pcap),
                "trace_digest": prep.trace.digest, "runs": records}, indent=1, default=str))
        if args.keep:
            print(f"testbed files kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        print(f"herd testbed: run failed, {failed}", file=sys.stderr)
        rec.abort(parent, failed.splitlines()[0], status="failed")
        return 1
    print(f"CSV: {csv_path}")
    rec.finish(parent, {"rows": len(rows), "csv": os.path.abspath(csv_path)})
    return rec.exit_code(0)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("s", type=float, help="sampling probability")
    ap.add_argument("epsilon", type=float)
    ap.add_argument("T", type=int, help="heavy-hitter threshold (0: the pcap's 99th percentile)")
    ap.add_argument("R", type=int, help="reports for an elephant (0: round(1/epsilon))")
    ap.add_argument("csv", help="layout CSV: <parameter>,f1score,precision,recall + values")
    ap.add_argument("pcap")
    add_db_arguments(ap)
    ap.add_argument("p4app", help="p4app JSON of the topology (k = its herd.p4 switches)")
    ap.add_argument("--target", choices=("model", "bmv2"), default="model")
    ap.add_argument("--injection", choices=("lb", "direct"), default="lb",
                    help="lb (default): the pcap from h1 through the load balancer; direct: "
                    "each ingress switch's share (the load balancer's split) from its own "
                    "host, straight to its own sink: one switch process per packet, not three")
    ap.add_argument("--pps", type=float, default=2000.0, help="tcpreplay rate (0: top speed); "
                    "with --epoch-ms the mean rate (0: the pcap's own pace)")
    ap.add_argument("--epoch-ms", type=float, default=0.0, metavar="W",
                    help="measure per epoch of W ms of the pcap's time (default 0: one epoch)")
    ap.add_argument("--p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--stages", type=lambda t: [int(x) for x in t.split(",")],
                    default=[4096, 2048, 1024])
    add_confirm_arguments(ap)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    add_run_tls_arguments(ap)
    ap.add_argument("--http", metavar="HOST:PORT", help="serve the coordinator's live view "
                    "(web page and JSON API) here, on loopback, during each run; port 0 picks "
                    "one (printed); the token is $HERD_TOKEN, else one made per run")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="start_topology_and_eval.sh", description=__doc__.split(
        "\n\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        return run_harness(args)
    except HerdInputError as e:
        print(f"herd testbed: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("herd testbed: interrupted; everything torn down", file=sys.stderr)
        return 130


if __name__ == "__main__":
    with suppress(BrokenPipeError):
        sys.exit(main())
