"""The model target's switches for Mininet: processes forwarding real frames between veth
ports with packet sockets, each running the one copy of its semantics.

- ``lb``: the load balancer (``herd.loadbalancer.choose_ingress``), port 1 from h1, the chosen
  ingress switch i on port ``i + 2``;
- ``agg``: the aggregator, everything to the host port;
- ``ingress``: a Herd switch: the services' model switch (``herd.services.model_switch``:
  ``Switch`` + control socket + CPU stream for its local controller), fed by a
  :class:`VethSource` that forwards each frame as the controller's forwarding table says and
  hands the IPv4 ones to the switch pipeline, stamped with their arrival (wall clock): the
  switch's clock, that gives each packet its epoch.

    python -m herd.testbed.model_node ingress --name s1 --port 1=s1-eth1 --port 2=s1-eth2 \
        --listen unix:/tmp/herd/s1.sock
"""

from __future__ import annotations

import argparse
import json
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from herd.loadbalancer import choose_ingress
from herd.services.drivers.base import FORWARD_ACTION
from herd.services.model_switch import PacketBatch, PacketSource
from herd.testbed.rawsock import open_port, recv_frames
from herd.trace import dissect_frames

POLL_S = 0.2
GATHER_S = 0.002  # the longest a frame waits for the switch pipeline
GATHER_FRAMES = 256


class Ports:
    """Packet sockets on a switch's interfaces, by port number."""

    def __init__(self, ports: dict[int, str]) -> None:
        self.socks = {port: open_port(ifname) for port, ifname in ports.items()}
        self.by_fd = {s.fileno(): port for port, s in self.socks.items()}
        self.poller = select.epoll()
        for fd in self.by_fd:
            self.poller.register(fd, select.EPOLLIN)
        self.rx = dict.fromkeys(self.socks, 0)
        self.tx = dict.fromkeys(self.socks, 0)
        self.tx_errors = 0

    def receive(self, timeout: float) -> list[tuple[int, list[bytes]]]:
        out = []
        for fd, _ in self.poller.poll(timeout):
            port = self.by_fd[fd]
            frames = recv_frames(self.socks[port])
            self.rx[port] += len(frames)
            out.append((port, frames))
        return out

    def send(self, port: int, frame: bytes) -> None:
        s = self.socks.get(port)
        if s is None:
            return
        while True:
            try:
                s.send(frame)
                self.tx[port] += 1
                return
            except BlockingIOError:  # the veth queue is full: wait for room, never drop
                select.select([], [s], [], 0.01)
            except OSError:
                self.tx_errors += 1
                return

    def counters(self) -> dict[str, Any]:
        return {"rx": self.rx, "tx": self.tx, "tx_errors": self.tx_errors}


class VethSource(PacketSource):
    """Frames from the switch's ports: forwarded at once (``egress``), and the IPv4 ones
    given to the switch pipeline as batches, stamped with the time they arrived."""

    def __init__(self, ports: Ports, egress: Callable[[int], int | None],
                 stopping: threading.Event) -> None:
        self.ports = ports
        self.egress = egress
        self.stopping = stopping

    def batches(self) -> Iterator[PacketBatch]:
        while not self.stopping.is_set():
            frames = self._forward(POLL_S)
            if not frames:
                continue
            # Each frame stamped when read from its port: the arrival that gives its epoch.
            stamps = [time.time_ns()] * len(frames)
            # Gather for a moment: one pipeline call per frame would cost more CPU than the
            # frames themselves once ten switches share two cores. Forwarding is not held up.
            deadline = time.monotonic() + GATHER_S
            while len(frames) < GATHER_FRAMES and (left := deadline - time.monotonic()) > 0:
                more = self._forward(left)
                frames += more
                stamps += [time.time_ns()] * len(more)
            ok, src, dst, sport, dport, proto = dissect_frames(frames)
            n = int(ok.sum())
            if n == 0:
                continue
            arrival = np.asarray(stamps, np.int64)[ok]
            yield PacketBatch(arrival, np.arange(n, dtype=np.int64), src[ok], dst[ok],
                              sport[ok], dport[ok], proto[ok], arrival_ns=arrival)

    def _forward(self, timeout: float) -> list[bytes]:
        """Frames arriving within timeout, each sent on at once; returns them in order."""
        frames: list[bytes] = []
        for port, got in self.ports.receive(timeout):
            out = self.egress(port)
            if out is not None:
                for frame in got:
                    self.ports.send(out, frame)
            frames += got
        return frames


def forwarding_egress(forwarding: dict[str, Any]) -> Callable[[int], int | None]:
    """The egress port by the model switch's forwarding table (key: ingress port; default)."""

    def egress(port: int) -> int | None:
        entry = forwarding.get(json.dumps([port])) or forwarding.get("default")
        if not entry or entry[0] != FORWARD_ACTION or not entry[1]:
            return None
        return int(entry[1][0])

    return egress


def parse_ports(items: list[str]) -> dict[int, str]:
    ports = {}
    for item in items:
        number, _, ifname = item.partition("=")
        if not number.isdigit() or not ifname:
            raise SystemExit(f"--port {item!r}: expected NUMBER=INTERFACE")
        ports[int(number)] = ifname
    return ports


def run_forwarder(ports: Ports, stopping: threading.Event,
                  choose: Callable[[int, bytes], int | None]) -> None:
    """The load balancer's and the aggregator's loop: each frame to the port ``choose`` says."""
    while not stopping.is_set():
        for port, frames in ports.receive(POLL_S):
            for frame in frames:
                out = choose(port, frame)
                if out is not None:
                    ports.send(out, frame)


def load_balancer(k: int, p_threshold: int, prng_seed: int) -> Callable[[int, bytes], int | None]:
    state = [np.uint32(prng_seed)]

    def choose(port: int, frame: bytes) -> int | None:
        if port != 1:
            return None  # nothing flows back towards h1
        ok, src, *_ = dissect_frames([frame])
        if not ok[0]:
            return 2  # non-IPv4: to switch 0, unmeasured (as load_balancer.p4)
        index, state[0] = choose_ingress(int(src[0]), k, p_threshold, state[0])
        return int(index) + 2

    return choose


def warm_up() -> None:
    """Load the compiled frame dissector and the load balancer's draw now: loaded on the
    first frame, they would hold the first packets up for about a second (seen as the first
    packet reaching the switches 1.1 s after tcpreplay started), which shifts the switches'
    epochs against their origin and bunches the start of the replay."""
    ip = bytes([0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 20, 0, 0, 2])
    dissect_frames([bytes(12) + b"\x08\x00" + ip + bytes(20)])
    state = np.uint32(1)  # the types of load_balancer's calls: its first, then the next ones
    for _ in range(2):
        _, state = choose_ingress(0x0A000001, 2, 0, state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", choices=("lb", "agg", "ingress"))
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", action="append", default=[], help="NUMBER=INTERFACE")
    ap.add_argument("--k", type=int, default=10, help="lb: ingress switches")
    ap.add_argument("--p-threshold", type=int, default=0, help="lb: p as a 32-bit threshold")
    ap.add_argument("--prng-seed", type=int, default=1, help="lb: the PRNG register")
    ap.add_argument("--host-port", type=int, default=0, help="agg: the host's port")
    ap.add_argument("--listen", help="ingress: the control socket, unix:/path")
    ap.add_argument("--stages", default="4096,2048,1024")
    ap.add_argument("--stats-file", help="counters written here (JSON) on exit")
    ap.add_argument("--ready-file", help="written once the ports are open")
    args = ap.parse_args(argv)

    sys.setswitchinterval(0.0005)  # control writes must not wait 5 ms for the packet thread
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    ports = Ports(parse_ports(args.port))
    warm_up()
    stats: dict[str, Any] = {}
    if args.role == "ingress":
        from herd.services.model_switch import ModelSwitch, ModelSwitchServer

        model = ModelSwitch(args.name, tuple(int(x) for x in args.stages.split(",")))
        server = ModelSwitchServer(model, args.listen)
        threading.Thread(target=server.serve_forever, daemon=True, name="control").start()
        model.op_start({"pps": 0})
        source = VethSource(ports, forwarding_egress(model.forwarding), stopping)
        runner = threading.Thread(target=model.run, args=(source,), daemon=True, name="packets")
        runner.start()
        _ready(args.ready_file)
        while not stopping.is_set():
            stopping.wait(0.5)
        model.stopping.set()
        runner.join(2)
        server.close()
        stats = model.op_stats({})
    else:
        if args.role == "lb":
            choose = load_balancer(args.k, args.p_threshold, args.prng_seed)
        else:
            host = args.host_port

            def choose(port: int, frame: bytes) -> int | None:
                return host if port != host else None

        _ready(args.ready_file)
        run_forwarder(ports, stopping, choose)
    if args.stats_file:
        from herd.fileio import atomic_write

        atomic_write(args.stats_file, json.dumps({**stats, "ports": ports.counters()}) + "\n")
    return 0


def _ready(path: str | None) -> None:
    if path:
        from herd.fileio import atomic_write

        atomic_write(path, "ready\n")


if __name__ == "__main__":
    sys.exit(main())
