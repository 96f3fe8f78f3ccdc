"""What the evaluation network's P4 switches need written before traffic, in one place: the
harness's BMv2 target and ``herd testbed configure`` (a network p4run started) both apply it.

- load balancer: its PRNG seed, the probability p of a flow's primary switch and k into
  ``lb_regs``; table ``ingress_switch`` maps switch index i to its port towards s{i+1};
- aggregator: every frame to its port towards h2 (the default of ``forwarding``);
- each ingress switch: frames from the load balancer on to the aggregator, or with direct
  injection from its sender host on to its sink host (its controller writes the same default
  at configuration), and clone session
  ``CPU_MIRROR_SESSION`` to its CPU port.

The plan is plain data (:func:`evaluation_writes`), applied by :func:`apply_writes` through
herd's Thrift client; the model target takes the same values as arguments instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from herd.loadbalancer import lb_seed
from herd.params import Params
from herd.prng import probability_threshold
from herd.services.drivers.bmv2_thrift import Bmv2Thrift
from herd.testbed.topology import AGGREGATOR, HOST, INGRESS, LOAD_BALANCER, SINK, Topology

CPU_MIRROR_SESSION = 100  # p4src/include/headers.p4


@dataclass(frozen=True)
class Write:
    """One runtime write: ``register`` (name, index, value), ``entry`` (table, action, key,
    params), ``default`` (table, action, params) or ``mirror`` (session, port)."""

    kind: str
    name: str = ""
    action: str = ""
    key: tuple[int, ...] = ()
    values: tuple[int, ...] = ()

    def __str__(self) -> str:  # as simple_switch_CLI would take it, for logs and errors
        v = " ".join(map(str, self.values))
        if self.kind == "register":
            return f"register_write {self.name} {self.key[0]} {v}"
        if self.kind == "entry":
            return f"table_add {self.name} {self.action} {' '.join(map(str, self.key))} => {v}"
        if self.kind == "default":
            return f"table_set_default {self.name} {self.action} {v}"
        return f"mirroring_add {self.key[0]} {v}"


def evaluation_writes(topology: Topology, params: Params,
                      cpu_ports: Mapping[str, int]) -> dict[str, list[Write]]:
    """Per switch name, its writes. ``cpu_ports``: each ingress switch's CPU port."""
    ingress = topology.ingress_switches
    out: dict[str, list[Write]] = {}
    for node in topology.nodes.values():
        if node.kind == LOAD_BALANCER:
            lb = node.name
            out[lb] = [
                Write("register", "lb_regs", key=(0,), values=(lb_seed(params.seed),)),
                Write("register", "lb_regs", key=(1,),
                      values=(probability_threshold(params.p),)),
                Write("register", "lb_regs", key=(2,), values=(len(ingress),)),
                *(Write("entry", "ingress_switch", "to_switch", key=(sw.index,),
                        values=(topology.port(lb, sw.name),)) for sw in ingress)]
        elif node.kind == AGGREGATOR:
            host = next(h.name for h in topology.of_kind(HOST)
                        if topology.linked(node.name, h.name))
            out[node.name] = [Write("default", "forwarding", "forward",
                                    values=(topology.port(node.name, host),))]
        elif node.kind == INGRESS:
            if node.name not in cpu_ports:
                raise KeyError(f"no CPU port given for ingress switch {node.name}")
            out[node.name] = [
                Write("default", "forwarding", "forward",
                      values=(topology.port(node.name, _downstream(topology, node.name)),)),
                Write("mirror", key=(CPU_MIRROR_SESSION,), values=(cpu_ports[node.name],))]
    return out


def _downstream(topology: Topology, switch: str) -> str:
    """Where an ingress switch sends on what it measured: the aggregator, or with direct
    injection (no aggregator) its sink host."""
    for agg in topology.of_kind(AGGREGATOR):
        if topology.linked(switch, agg.name):
            return agg.name
    sinks = [h.name for h in topology.hosts(SINK) if topology.linked(switch, h.name)]
    if len(sinks) != 1:
        raise KeyError(f"ingress switch {switch} has neither an aggregator nor one sink host")
    return sinks[0]



def apply_writes(client: Bmv2Thrift, writes: list[Write]) -> None:
    for w in writes:
        if w.kind == "register":
            client.register_write(w.name, w.key[0], w.values[0])
        elif w.kind == "entry":
            client.table_add_or_modify(w.name, w.action, w.key, w.values)
        elif w.kind == "default":
            client.table_set_default(w.name, w.action, w.values)
        elif w.kind == "mirror":
            client.mirroring_add(w.key[0], w.values[0])
        else:
            raise ValueError(f"unknown write kind {w.kind!r}")
