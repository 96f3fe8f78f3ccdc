"""The evaluation topology as plain objects: h1 -> lb -> k Herd ingress switches ->
aggregator -> h2. One description serves both targets: the model target builds it in Mininet
directly, and ``p4app_json`` writes it as a p4-utils p4app for the BMv2 target.

    python -m herd.testbed.topology --k 10 --out topologies/p4app_10_switches_herd.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST, LOAD_BALANCER, INGRESS, AGGREGATOR = "host", "load_balancer", "ingress", "aggregator"
SENDER, SINK = "sender", "sink"  # a host's role: replays (a share of) the trace, or counts it
PROGRAMS = {LOAD_BALANCER: "p4src/load_balancer.p4", INGRESS: "p4src/herd.p4",
            AGGREGATOR: "p4src/aggregator.p4"}


@dataclass(frozen=True)
class Node:
    name: str
    kind: str
    index: int = 0  # an ingress switch's index: its controller's --switch, the LB's choice
    role: str = ""  # a host's: SENDER or SINK

    @property
    def program(self) -> str | None:
        return PROGRAMS.get(self.kind)


@dataclass(frozen=True)
class Link:
    a: str
    b: str
    port_a: int  # switch port numbers (hosts have one interface, eth0)
    port_b: int


@dataclass
class Topology:
    nodes: dict[str, Node] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        self.nodes[node.name] = node
        return node

    def link(self, a: str, b: str, port_a: int = 0, port_b: int = 0) -> None:
        self.links.append(Link(a, b, port_a, port_b))

    def of_kind(self, kind: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == kind]

    @property
    def ingress_switches(self) -> list[Node]:
        return sorted(self.of_kind(INGRESS), key=lambda n: n.index)

    def hosts(self, role: str) -> list[Node]:
        """The hosts of one role, in switch order."""
        return sorted((n for n in self.of_kind(HOST) if n.role == role), key=lambda n: n.index)

    def peer(self, node: str, port: int) -> str:
        """The node on the other end of ``node``'s port (a host's port is 0)."""
        for link in self.links:
            if (link.a, link.port_a) == (node, port):
                return link.b
            if (link.b, link.port_b) == (node, port):
                return link.a
        raise KeyError(f"{node} has no port {port}")

    def linked(self, a: str, b: str) -> bool:
        return any({link.a, link.b} == {a, b} for link in self.links)

    def port(self, node: str, peer: str) -> int:
        for link in self.links:
            if (link.a, link.b) == (node, peer):
                return link.port_a
            if (link.b, link.a) == (node, peer):
                return link.port_b
        raise KeyError(f"no link {node} - {peer}")


def evaluation_topology(k: int = 10) -> Topology:
    """h1 - lb; lb port i+2 - s{i+1} port 1; s{i+1} port 2 - agg port i+1; agg port k+1 - h2."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = Topology()
    t.add(Node("h1", HOST, role=SENDER))
    t.add(Node("h2", HOST, role=SINK))
    t.add(Node("lb", LOAD_BALANCER))
    t.add(Node("agg", AGGREGATOR))
    t.link("h1", "lb", 0, 1)
    for i in range(k):
        s = t.add(Node(f"s{i + 1}", INGRESS, i)).name
        t.link("lb", s, i + 2, 1)
        t.link(s, "agg", 2, i + 1)
    t.link("agg", "h2", k + 1, 0)
    return t


def direct_topology(k: int = 10) -> Topology:
    """Direct injection (``--injection direct``): per ingress switch its own sender and
    sink, no load balancer, no aggregator: h1s{i} - s{i} port 1; s{i} port 2 - h2s{i}.

    Each sender replays the share of the trace the load balancer would give its switch, so
    a packet crosses one switch process instead of three (BMv2 forwards a few thousand
    frames a second per process on two cores). The sinks stand in for the aggregator: it
    only forwards, so it is not needed to measure anything, and one process carrying every
    packet would cap the rate again; a sink's kernel counter counts what its switch
    delivered. Port 2 is where the controllers point the switches' default forwarding."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    t = Topology()
    for i in range(k):
        sender = t.add(Node(f"h1s{i + 1}", HOST, i, SENDER)).name
        sink = t.add(Node(f"h2s{i + 1}", HOST, i, SINK)).name
        s = t.add(Node(f"s{i + 1}", INGRESS, i)).name
        t.link(sender, s, 0, 1)
        t.link(s, sink, 2, 0)
    return t


def injection_topology(injection: str, k: int) -> Topology:
    """The topology of an injection mode: ``lb`` (the evaluation topology) or ``direct``."""
    if injection == "lb":
        return evaluation_topology(k)
    if injection == "direct":
        return direct_topology(k)
    raise ValueError(f"unknown injection mode {injection!r} (lb or direct)")


def p4app_json(t: Topology, cpu_port: bool = True, p4src: str | Path = "p4src",
               build_dir: str | Path | None = "build",
               thrift_ports: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The topology as a p4-utils p4app (``sudo p4run --conf FILE``), switch ports pinned.

    Paths are as p4-utils takes them: relative to the directory p4run runs in (the repo's
    root for ``p4src``). p4run compiles the programs into ``build_dir`` (it creates that
    directory, one level only; default ``build``, git-ignored: not beside the sources,
    p4-utils' default, which None keeps). Each ingress switch gets a CPU port (p4-utils
    numbers it: the next free port, 3 here; its topology DB records it), which ``herd testbed
    configure`` mirrors CPU messages to. Thrift ports are p4-utils' (9090 up, in name order)
    unless given per switch.
    """
    links = []
    for link in t.links:
        opts: dict[str, Any] = {}
        if t.nodes[link.a].kind != HOST:
            opts["port1"] = link.port_a
        if t.nodes[link.b].kind != HOST:
            opts["port2"] = link.port_b
        links.append([link.a, link.b, opts])
    switches = {}
    for node in t.nodes.values():
        if node.kind == HOST:
            continue
        program = Path(p4src) / Path(PROGRAMS[node.kind]).name
        sw: dict[str, Any] = {"p4_src": str(program)}
        if node.kind == INGRESS:
            sw["cpu_port"] = cpu_port
        if thrift_ports and node.name in thrift_ports:
            sw["thrift_port"] = int(thrift_ports[node.name])
        switches[node.name] = sw
    out: dict[str, Any] = {
        "p4_src": str(Path(p4src) / Path(PROGRAMS[INGRESS]).name),
        # p4run itself ignores "cli" (it takes --no-cli); kept for the p4app format's readers.
        "cli": True,
        "pcap_dump": False,
        "enable_log": False,
    }
    if build_dir is not None:
        # p4-utils' default compiler with its default options, writing into build_dir.
        out["compiler_module"] = {"options": {
            "outdir": str(build_dir), "opts": "--target bmv2 --arch v1model --std p4-16",
            "p4rt": False}}
    out["topology"] = {
        "assignment_strategy": "l2",
        "default": {"auto_arp_tables": True},
        "links": links,
        "hosts": {n.name: {} for n in t.of_kind(HOST)},
        "switches": switches,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Write the evaluation topology as a p4app JSON.")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--p4src", default="p4src",
                    help="the programs' directory as p4run will see it (default p4src: p4run "
                    "runs in the repo's root)")
    ap.add_argument("--build-dir", default="build",
                    help="where p4run compiles the programs (default build, git-ignored; "
                    "'': next to their sources)")
    args = ap.parse_args()
    app = p4app_json(evaluation_topology(args.k), p4src=args.p4src,
                     build_dir=args.build_dir or None)
    Path(args.out).write_text(json.dumps(app, indent=2) + "\n")


if __name__ == "__main__":
    main()
