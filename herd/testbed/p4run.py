"""A network ``p4run`` started, read from its topology database (``topology.json``).

p4-utils writes the database when the network is up (in the directory p4run runs in, and a
copy at /tmp/topology.json): a networkx node-link graph. What herd takes from it:

- nodes: hosts have ``isHost``; P4 switches have ``isP4Switch``, ``thrift_port``, ``p4_src``
  (the program's real path) and ``json_path`` (the compiled program). A switch's kind is
  which of herd's programs it runs (herd.p4: an ingress switch, index = its number - 1);
- a switch with ``cpu_port: true`` in the p4app is linked to p4-utils' ``sw-cpu`` bridge; the
  database drops that node and records instead ``cpu_port_num`` (the switch's port: the
  next free number, 3 in herd's topology), ``cpu_intf`` (the switch side, ``s1-cpu-eth0``)
  and ``cpu_ctl_intf`` (the other end of the veth pair, in the root namespace, not actually
  in the bridge: where a controller reads, ``s1-cpu-eth1``);
- links (``links``, or ``edges`` in newer networkx): ``node1``/``node2`` with ``port1``/
  ``port2`` (``source``/``target`` need not be in the same order).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.errors import HerdInputError
from herd.testbed.topology import (
    AGGREGATOR,
    HOST,
    INGRESS,
    LOAD_BALANCER,
    PROGRAMS,
    Node,
    Topology,
)

KIND_OF_PROGRAM = {Path(program).stem: kind for kind, program in PROGRAMS.items()}


@dataclass(frozen=True)
class SwitchInfo:
    name: str
    kind: str
    thrift_port: int
    json_path: str | None = None
    cpu_port: int | None = None  # the switch's port towards its CPU interface
    cpu_interface: str | None = None  # the host side of the CPU port (root namespace)


@dataclass(frozen=True)
class HostInfo:
    name: str
    mac: str | None = None
    ip: str | None = None


@dataclass
class P4runNetwork:
    path: Path
    topology: Topology
    switches: dict[str, SwitchInfo] = field(default_factory=dict)
    hosts: dict[str, HostInfo] = field(default_factory=dict)

    def switch(self, name: str) -> SwitchInfo:
        if name not in self.switches:
            known = ", ".join(sorted(self.switches)) or "none"
            raise HerdInputError(f"{self.path}: switch {name} not in the topology "
                                 f"(switches: {known})")
        return self.switches[name]

    def cpu_ports(self) -> dict[str, int]:
        """Each ingress switch's CPU port (every one must have one)."""
        out = {}
        for node in self.topology.ingress_switches:
            sw = self.switches[node.name]
            if sw.cpu_port is None:
                raise HerdInputError(f"{self.path}: ingress switch {sw.name} has no CPU port "
                                     '(give it "cpu_port": true in the p4app)')
            out[sw.name] = sw.cpu_port
        return out

    def check_evaluation(self) -> None:
        """The shape ``herd testbed configure`` writes for: one load balancer, one aggregator
        linked to a host, ingress switches s1..sk each linked to both."""
        t = self.topology
        for kind in (LOAD_BALANCER, AGGREGATOR):
            nodes = t.of_kind(kind)
            if len(nodes) != 1:
                raise HerdInputError(f"{self.path}: {len(nodes)} switches run "
                                     f"{Path(PROGRAMS[kind]).name}; the evaluation network "
                                     "has one")
        lb, agg = t.of_kind(LOAD_BALANCER)[0].name, t.of_kind(AGGREGATOR)[0].name
        indices = sorted(n.index for n in t.ingress_switches)
        if indices != list(range(len(indices))):
            names = ", ".join(n.name for n in t.ingress_switches)
            raise HerdInputError(f"{self.path}: the ingress switches ({names}) must be "
                                 "s1..sk: the load balancer picks switch index 0..k-1")
        for node in t.ingress_switches:
            for peer in (lb, agg):
                if not t.linked(node.name, peer):
                    raise HerdInputError(f"{self.path}: ingress switch {node.name} has no link "
                                         f"to {peer}")
        if not any(t.linked(agg, h.name) for h in t.of_kind(HOST)):
            raise HerdInputError(f"{self.path}: the aggregator {agg} has no link to a host")
        self.cpu_ports()



def _program_kind(attrs: dict[str, Any]) -> str | None:
    """Which of herd's programs the switch runs, by its source (or compiled JSON) name."""
    for key in ("p4_src", "json_path"):
        value = attrs.get(key)
        if isinstance(value, str) and value:
            return KIND_OF_PROGRAM.get(Path(value).stem)
    return None


def _int(value: Any, path: Path, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise HerdInputError(f"{path}: {what} is {value!r}, not an integer")
    return value


def load(path: str | Path) -> P4runNetwork:
    """The network of a p4run topology database; HerdInputError (one line naming the file)
    if it is not one, or no switch runs herd.p4."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise HerdInputError(f"{path}: no such file (p4run writes topology.json in the "
                             "directory it runs in, once the network is up)") from None
    except OSError as e:
        raise HerdInputError(f"{path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise HerdInputError(f"{path}: not JSON ({e})") from None
    links = data.get("links", data.get("edges")) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) \
            or not isinstance(links, list):
        raise HerdInputError(f"{path}: not a p4-utils topology database (a node-link graph "
                             "with nodes and links)")
    net = P4runNetwork(path, Topology())
    for attrs in data["nodes"]:
        name = attrs.get("id") if isinstance(attrs, dict) else None
        if not isinstance(name, str):
            raise HerdInputError(f"{path}: a node without a name (id): {attrs!r}"[:200])
        if attrs.get("isHost"):
            net.topology.add(Node(name, HOST))
            mac, ip = attrs.get("mac"), attrs.get("ip")
            net.hosts[name] = HostInfo(name, mac if isinstance(mac, str) else None,
                                       ip if isinstance(ip, str) else None)
        elif attrs.get("isP4Switch"):
            kind = _program_kind(attrs)
            if kind is None:
                program = attrs.get("p4_src") or attrs.get("json_path")
                raise HerdInputError(f"{path}: switch {name} runs {program}, not one of herd's "
                                     "programs (herd.p4, load_balancer.p4, aggregator.p4)")
            if "thrift_port" not in attrs:
                raise HerdInputError(f"{path}: switch {name} has no thrift_port")
            index = 0
            if kind == INGRESS:
                m = re.fullmatch(r"[A-Za-z_-]*?(\d+)", name)
                if not m or int(m.group(1)) < 1:
                    raise HerdInputError(f"{path}: ingress switch {name}: its name must end in "
                                         "its number (s1, s2, ...), its index is number - 1")
                index = int(m.group(1)) - 1
            cpu_port = cpu_intf = None
            if attrs.get("cpu_port"):
                if "cpu_port_num" not in attrs or not isinstance(attrs.get("cpu_ctl_intf"),
                                                                 str):
                    raise HerdInputError(f"{path}: switch {name} has cpu_port but no "
                                         "cpu_port_num / cpu_ctl_intf")
                cpu_port = _int(attrs["cpu_port_num"], path, f"switch {name} cpu_port_num")
                cpu_intf = attrs["cpu_ctl_intf"]
            json_path = attrs.get("json_path")
            net.switches[name] = SwitchInfo(
                name, kind, _int(attrs["thrift_port"], path, f"switch {name} thrift_port"),
                json_path if isinstance(json_path, str) else None, cpu_port, cpu_intf)
            net.topology.add(Node(name, kind, index))
        # anything else (a plain Mininet switch, a router) is not part of herd's network
    for link in links:
        if not isinstance(link, dict):
            raise HerdInputError(f"{path}: a link that is not an object: {link!r}"[:200])
        a, b = link.get("node1", link.get("source")), link.get("node2", link.get("target"))
        if a not in net.topology.nodes or b not in net.topology.nodes:
            continue  # e.g. a link to a node herd does not model
        net.topology.link(a, b, _int(link.get("port1"), path, f"link {a}-{b} port1"),
                          _int(link.get("port2"), path, f"link {a}-{b} port2"))
    if not net.topology.of_kind(INGRESS):
        raise HerdInputError(f"{path}: no switch runs herd.p4 (switches: "
                             f"{', '.join(sorted(net.switches)) or 'none'})")
    return net


def controller_options(topology_path: str | Path, switch_name: str) -> dict[str, Any]:
    """What ``herd controller --topology FILE --switch NAME`` needs of the network: the
    switch's Thrift address, the interface its CPU messages arrive on, its index."""
    net = load(topology_path)
    sw = net.switch(switch_name)
    if sw.kind != INGRESS:
        raise HerdInputError(f"{net.path}: switch {switch_name} runs "
                             f"{Path(PROGRAMS[sw.kind]).name}, not herd.p4: no controller")
    if sw.cpu_interface is None:
        raise HerdInputError(f"{net.path}: switch {switch_name} has no CPU port (give it "
                             '"cpu_port": true in the p4app)')
    return {"switch_address": f"127.0.0.1:{sw.thrift_port}", "cpu_interface": sw.cpu_interface,
            "switch_index": net.topology.nodes[switch_name].index}
