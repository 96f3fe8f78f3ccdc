"""Before a replay, prove the path end to end: a probe frame through every ingress switch
must reach its sink host, or the run fails naming the hop where the probe stopped.

A probe is an Ethernet frame of ethertype ``PROBE_ETHERTYPE`` (IEEE local experimental 2;
0x88B5 is the CPU header's): every Herd switch forwards a non-IPv4 frame and does not
measure it (p4src/herd.p4: ``forwarding.apply()`` and return; the model switch hands only
IPv4 to its pipeline), so probes leave no trace in registers or ground truth. The load
balancer sends every non-IPv4 frame to switch 0 (load_balancer.p4, as the model one), so
it cannot steer a probe to s2..sk: s1's probe goes the whole way from h1, the others are
sent on the load balancer's own link to their switch (``lb-eth{port}``, root namespace),
which is the same wire the load balancer's frames take. With direct injection each
switch's probe leaves its own sender host.

A probe is resent every ``RESEND_S`` until it arrives or ``timeout`` passes (a switch
process that is up but still slow to read its ports); the receiving socket sits in the
sink host's namespace, so the probe counts only if it crossed the sink's link.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from herd.testbed.hops import Counters, Hop, Port, first_silent, hop_counts, with_sent
from herd.testbed.topology import AGGREGATOR, LOAD_BALANCER, SENDER, SINK, Topology

PROBE_ETHERTYPE = 0x88B6
PROBE_MAGIC = b"HERDPROBE"
RESEND_S = 0.5
CLONE_NEWNET = 0x40000000


class PathError(RuntimeError):
    """A probe did not get through: the message names the switch and the hop."""


@dataclass(frozen=True)
class ProbePath:
    switch: str  # the ingress switch the probe must cross
    send_node: str  # whose namespace sends ("" : the root namespace)
    send_ifname: str
    sink: str  # the host that must receive it
    nodes: tuple[str, ...]  # the path, first node (sender host or lb) to the sink


def probe_paths(topology: Topology) -> list[ProbePath]:
    """One probe per ingress switch, from where its traffic enters to its sink host."""
    out = []
    for sw in topology.ingress_switches:
        up = topology.peer(sw.name, 1)
        down = [topology.peer(sw.name, 2)]
        if topology.nodes[down[0]].kind == AGGREGATOR:
            agg = down[0]
            down.append(next(h.name for h in topology.hosts(SINK)
                             if any({ln.a, ln.b} == {agg, h.name} for ln in topology.links)))
        kind = topology.nodes[up].kind
        if kind == LOAD_BALANCER and sw.index == 0:  # non-IPv4 from h1 goes to switch 0
            h1 = topology.peer(up, 1)
            nodes = (h1, up, sw.name, *down)
            out.append(ProbePath(sw.name, h1, f"{h1}-eth0", down[-1], nodes))
        elif kind == LOAD_BALANCER:
            port = topology.port(up, sw.name)
            out.append(ProbePath(sw.name, "", f"{up}-eth{port}", down[-1],
                                 (up, sw.name, *down)))
        elif topology.nodes[up].role == SENDER:
            out.append(ProbePath(sw.name, up, f"{up}-eth0", down[-1], (up, sw.name, *down)))
        else:
            raise ValueError(f"{sw.name}: no sender or load balancer on port 1")
    return out


def path_hops(topology: Topology, nodes: tuple[str, ...]) -> list[Hop]:
    """The counted hops along one path: each node's port towards the next (out, tx) and
    the next one's port back (in, rx)."""
    hops = []
    for a, b in zip(nodes, nodes[1:], strict=False):
        pa, pb = topology.port(a, b), topology.port(b, a)
        hops.append(Hop(f"{a} out", "out", {a: (Port(a, f"{a}-eth{pa}", "tx"),)}))
        hops.append(Hop(f"{b} in", "in", {b: (Port(b, f"{b}-eth{pb}", "rx"),)}))
    return hops


def probe_frame(src_mac: bytes, dst_mac: bytes, nonce: bytes) -> bytes:
    frame = dst_mac + src_mac + struct.pack("!H", PROBE_ETHERTYPE) + PROBE_MAGIC + nonce
    return frame.ljust(60, b"\0")  # the Ethernet minimum


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def netns_socket(pid: int, ifname: str, proto: int) -> socket.socket:
    """A packet socket bound to ``ifname`` in the network namespace of process ``pid`` (0:
    this one). Only the calling thread switches namespace, and back: the socket keeps it."""
    if not pid:
        return _bound(ifname, proto)
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    except OSError:
        os.close(own)
        raise
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into the namespace of pid {pid}")
        try:
            return _bound(ifname, proto)
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


def _probe_socket(switch: str, pid: int, node: str, ifname: str) -> socket.socket:
    """A probe socket, or PathError: a dead host or a missing interface is a broken path."""
    try:
        return netns_socket(pid, ifname, PROBE_ETHERTYPE)
    except OSError as e:
        raise PathError(f"path probe through {switch}: cannot open {ifname} of {node}: "
                        f"{e.strerror or e}") from None


def _bound(ifname: str, proto: int) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    try:
        s.bind((ifname, proto))
    except OSError:
        s.close()
        raise
    return s


def _wait_probe(sock: socket.socket, nonce: bytes, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            return False
        frame = sock.recv(2048)
        if frame[14:14 + len(PROBE_MAGIC) + len(nonce)] == PROBE_MAGIC + nonce:
            return True
    return False


def prove_paths(topology: Topology, pids: Mapping[str, int], macs: Mapping[str, str],
                read: Callable[[], Counters], timeout: float = 10.0) -> dict[str, Any]:
    """Every path carries a probe to its sink within ``timeout`` (resent every RESEND_S);
    else PathError naming the switch and the first hop the probe did not reach. Returns
    per switch the probes sent until one arrived and the seconds it took."""
    out = {}
    for path in probe_paths(topology):
        sink_if = f"{path.sink}-eth0"
        rx = _probe_socket(path.switch, pids.get(path.sink, 0), path.sink, sink_if)
        try:
            tx = _probe_socket(path.switch, pids.get(path.send_node, 0), path.send_node,
                               path.send_ifname)
        except PathError:
            rx.close()
            raise
        before = read()
        nonce = os.urandom(8) + path.switch.encode()
        src = mac_bytes(macs[path.send_node]) if path.send_node in macs else bytes(6)
        frame = probe_frame(src, mac_bytes(macs.get(path.sink, "ff:ff:ff:ff:ff:ff")), nonce)
        start = time.monotonic()
        tries = 0
        try:
            while True:
                tx.send(frame)
                tries += 1
                if _wait_probe(rx, nonce, RESEND_S):
                    break
                if time.monotonic() - start > timeout:
                    hops = with_sent(tries, hop_counts(
                        topology, path_hops(topology, path.nodes), before, read()), "the probe")
                    i = first_silent(hops)
                    where = (f"it stopped at {hops[i]['hop']} ({hops[i - 1]['hop']} "
                             f"{hops[i - 1]['packets']}, {hops[i]['hop']} 0)"
                             if i is not None else "every hop counted it: the sink's socket "
                             "did not see it")
                    raise PathError(
                        f"path probe through {path.switch}: {tries} probes over "
                        f"{timeout:.0f} s, none reached {path.sink}; {where}")
        finally:
            rx.close()
            tx.close()
        out[path.switch] = {"probes": tries, "seconds": round(time.monotonic() - start, 4)}
    return out

