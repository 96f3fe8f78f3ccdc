"""Where packets stopped: the testbed's path hop by hop, counted by the kernel.

Every link of the testbed is a veth pair, and the kernel counts the frames each end sent and
received for either target (``/proc/<pid>/net/dev``: the namespace of that process, so a
host's counters are read through its shell's pid and the switches' in the root namespace).
The path is walked layer by layer from the senders (h1 -> lb -> s1..sk -> agg -> h2, or with
direct injection h1s{i} -> s{i} -> h2s{i}); each node counts twice, what reached it from the
layer before (``in``: rx on those ports) and what it sent on to the next (``out``: tx), so a
drop inside a switch process (in > out) is told from one on a link (out > next in).

Counters are deltas between two snapshots around the replay: the path probes
(:mod:`herd.testbed.probe`) and anything before them are not in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from herd.testbed.topology import HOST, SENDER, Topology

Counters = dict[tuple[str, str], tuple[int, int]]  # (namespace node, ifname) -> (rx, tx)


@dataclass(frozen=True)
class Port:
    """One counter: frames ``field`` ("rx"/"tx") on ``node``'s interface ``ifname``; a host's
    interface is read in the host's namespace, a switch's in the root one."""

    node: str
    ifname: str
    field: str


@dataclass(frozen=True)
class Hop:
    """The frames a layer's nodes received from the layer before (``in``) or sent on (``out``),
    per node."""

    label: str  # "lb in", "s1..s10 out", "h2 in"
    direction: str  # "in" or "out"
    ports: dict[str, tuple[Port, ...]]  # node -> its counters


def _layers(topology: Topology) -> list[list[str]]:
    """Nodes by distance from the senders, each layer in switch order."""
    seen = {n.name for n in topology.hosts(SENDER)}
    layers = [[n.name for n in topology.hosts(SENDER)]]
    while True:
        nxt = []
        for link in topology.links:
            for a, b in ((link.a, link.b), (link.b, link.a)):
                if a in layers[-1] and b not in seen:
                    seen.add(b)
                    nxt.append(b)
        if not nxt:
            return layers
        nxt.sort(key=lambda n: (topology.nodes[n].index, n))
        layers.append(nxt)


def _ports_towards(topology: Topology, node: str, peers: Sequence[str]) -> list[int]:
    out = []
    for peer in peers:
        try:
            out.append(topology.port(node, peer))
        except KeyError:
            continue
    return out


def hop_plan(topology: Topology) -> list[Hop]:
    """The counted hops from the senders' ``out`` to the sinks' ``in``, in path order."""
    layers = _layers(topology)
    hops = []
    for j, layer in enumerate(layers):
        label = layer[0] if len(layer) == 1 else f"{layer[0]}..{layer[-1]}"
        for direction, peers in (("in", layers[j - 1] if j else []),
                                 ("out", layers[j + 1] if j + 1 < len(layers) else [])):
            if not peers:
                continue
            field = "rx" if direction == "in" else "tx"
            ports = {}
            for node in layer:
                nums = _ports_towards(topology, node, peers)
                ports[node] = tuple(Port(node, f"{node}-eth{p}", field) for p in nums)
            hops.append(Hop(f"{label} {direction}", direction, ports))
    return hops


def switch_interfaces(topology: Topology) -> list[str]:
    """The switches' interfaces on the path (root namespace)."""
    return sorted({p.ifname for hop in hop_plan(topology) for ports in hop.ports.values()
                   for p in ports if topology.nodes[p.node].kind != HOST})


def queued_bytes(ifnames: Sequence[str], packet_table: str = "/proc/net/packet") -> int:
    """Bytes waiting unread in the packet sockets bound to these interfaces (the model
    target's switch processes; BMv2's libpcap rings do not show here)."""
    index = set()
    for name in ifnames:
        try:
            with open(f"/sys/class/net/{name}/ifindex") as f:
                index.add(int(f.read()))
        except (OSError, ValueError):
            continue
    total = 0
    with open(packet_table) as f:
        for line in f.read().splitlines()[1:]:
            cols = line.split()  # sk RefCnt Type Proto Iface R Rmem User Inode
            if len(cols) >= 7 and cols[4].isdigit() and int(cols[4]) in index:
                total += int(cols[6])
    return total


def parse_net_dev(text: str) -> dict[str, tuple[int, int]]:
    """``/proc/net/dev``: interface -> (rx packets, tx packets)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        f = rest.split()
        if len(f) >= 10:
            out[name.strip()] = (int(f[1]), int(f[9]))
    return out


def read_counters(pids: Mapping[str, int]) -> Counters:
    """Every interface's counters: the root namespace's (node ""), and each host's by the pid
    of a process in its namespace."""
    out: Counters = {}
    for node, pid in {"": 0, **pids}.items():
        path = "/proc/net/dev" if not pid else f"/proc/{pid}/net/dev"
        with open(path) as f:
            for ifname, v in parse_net_dev(f.read()).items():
                out[(node, ifname)] = v
    return out


def _value(c: Counters, topology: Topology, port: Port) -> int:
    ns = port.node if topology.nodes[port.node].kind == HOST else ""
    rx, tx = c.get((ns, port.ifname), (0, 0))
    return rx if port.field == "rx" else tx


def hop_counts(topology: Topology, plan: Sequence[Hop], before: Counters,
               after: Counters) -> list[dict[str, Any]]:
    """Per hop: its label, the frames counted (after - before) and the count per node."""
    out = []
    for hop in plan:
        per_node = {node: sum(_value(after, topology, p) - _value(before, topology, p)
                              for p in ports) for node, ports in hop.ports.items()}
        out.append({"hop": hop.label, "packets": sum(per_node.values()), "nodes": per_node})
    return out


def first_loss(hops: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the first hop that counted fewer frames than the hop before it."""
    for i in range(1, len(hops)):
        if hops[i]["packets"] < hops[i - 1]["packets"]:
            return i
    return None


def first_silent(hops: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the first hop that counted nothing after one that counted something:
    where the packets stopped when none arrived."""
    for i in range(1, len(hops)):
        if hops[i]["packets"] == 0 and hops[i - 1]["packets"] > 0:
            return i
    return None


def short_nodes(hops: Sequence[Mapping[str, Any]], i: int) -> list[str]:
    """The nodes of hop i that fell short: for an ``out`` hop those sending fewer than they
    received (the switch process dropped them); for an ``in`` hop those receiving nothing."""
    hop = hops[i]
    if hop["hop"].endswith(" out") and i > 0 and hops[i - 1]["hop"].endswith(" in"):
        prev = hops[i - 1]["nodes"]
        return [n for n, v in hop["nodes"].items() if v < prev.get(n, 0)]
    return [n for n, v in hop["nodes"].items() if v == 0]


def describe(hops: Sequence[Mapping[str, Any]], i: int) -> str:
    """Hop i where packets stopped, in words: its count against the hop before."""
    hop, prev = hops[i], hops[i - 1]
    who = short_nodes(hops, i)
    at = f" (at {', '.join(who)})" if who and len(hop["nodes"]) > 1 else ""
    return (f"{hop['hop']}{at}: {hop['packets']} frames after {prev['packets']} at "
            f"{prev['hop']}")


def summary(hops: Sequence[Mapping[str, Any]]) -> str:
    """One line: every hop's count."""
    return " -> ".join(f"{h['hop']} {h['packets']}" for h in hops)


def with_sent(sent: int, hops: list[dict[str, Any]], by: str = "tcpreplay",
              per_sender: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """The hops with what the senders said they sent in front."""
    return [{"hop": f"sent by {by}", "packets": sent, "nodes": dict(per_sender or {})}, *hops]

