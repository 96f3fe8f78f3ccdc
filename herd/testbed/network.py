"""The evaluation topology in Mininet, with either target's switches.

A switch is a process in the root namespace on its veth ports, started and stopped here:
the model target runs ``herd.testbed.model_node``; the BMv2 target runs ``simple_switch``
on the program compiled by p4c. Hosts h1 and h2 live in their own namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdInputError
from herd.testbed.topology import AGGREGATOR, HOST, INGRESS, LOAD_BALANCER, Topology

CPU_PORT = 64  # BMv2 target: an ingress switch's CPU port (the mirroring session's port)
THRIFT_BASE = 9090


def require_root_and_mininet() -> None:
    if os.geteuid() != 0:
        raise HerdInputError("the testbed needs root (network namespaces and veth links)")
    try:
        import mininet.net  # noqa: F401
    except ImportError:
        raise HerdInputError("Mininet is not importable: install Debian's mininet package "
                             "(bash scripts/setup.sh --testbed)") from None
    for tool in ("tcpreplay", "tcprewrite", "mnexec"):
        if shutil.which(tool) is None:
            raise HerdInputError(f"{tool} not found: bash scripts/setup.sh --testbed")


@dataclass
class SwitchSpec:
    """What the process of one switch needs: its role and, per target, its program."""

    target: str  # "model" or "bmv2"
    workdir: Path
    k: int
    stages: tuple[int, ...]
    p4_json: dict[str, Path]  # bmv2: compiled program per kind


def _switch_class() -> type:
    from mininet.node import Switch

    class ProcessSwitch(Switch):
        """A Mininet switch whose data plane is one process we start and stop."""

        def __init__(self, name: str, kind: str, index: int, spec: SwitchSpec,
                     thrift_port: int, **params: Any) -> None:
            super().__init__(name, dpid=f"{thrift_port:016x}", **params)
            self.kind = kind
            self.index = index
            self.spec = spec
            self.thrift_port = thrift_port
            self.proc: subprocess.Popen[bytes] | None = None
            self.control = f"unix:{spec.workdir / (name + '.sock')}"
            self.stats_file = spec.workdir / f"{name}.stats.json"
            self.cpu_host_intf = f"{name}-cpuh"
            self.extra_args: list[str] = []  # per run: the load balancer's seed, p and k

        def port_names(self) -> dict[int, str]:
            return {port: intf.name for port, intf in self.intfs.items() if intf.name != "lo"}

        def command(self) -> list[str]:
            spec = self.spec
            if spec.target == "bmv2":
                # HERD_SIMPLE_SWITCH: e.g. a build with logging compiled out, several times faster
                args = [os.environ.get("HERD_SIMPLE_SWITCH", "simple_switch"),
                        "--thrift-port", str(self.thrift_port),
                        "--device-id", str(self.thrift_port)]
                for port, ifname in sorted(self.port_names().items()):
                    args += ["-i", f"{port}@{ifname}"]
                if self.kind == INGRESS:
                    args += ["-i", f"{CPU_PORT}@{self.name}-cpus"]
                return args + [str(spec.p4_json[self.kind])]
            args = [sys.executable, "-m", "herd.testbed.model_node",
                    {INGRESS: "ingress", LOAD_BALANCER: "lb", AGGREGATOR: "agg"}[self.kind],
                    "--name", self.name, "--stats-file", str(self.stats_file),
                    "--ready-file", str(spec.workdir / f"{self.name}.ready"), *self.extra_args]
            args += [f"--port={p}={i}" for p, i in sorted(self.port_names().items())]
            if self.kind == INGRESS:
                args += ["--listen", self.control, "--stages", ",".join(map(str, spec.stages))]
            elif self.kind == AGGREGATOR:
                args += ["--host-port", str(spec.k + 1)]
            return args

        def start(self, controllers: list[Any]) -> None:
            if self.spec.target == "bmv2" and self.kind == INGRESS:
                _veth(f"{self.name}-cpus", self.cpu_host_intf)
            self.start_process()

        def start_process(self) -> None:
            log = open(self.spec.workdir / f"{self.name}.log", "ab")  # noqa: SIM115
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
            log.close()

        def stop_process(self) -> None:
            if self.proc and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

        def restart_process(self) -> None:
            """A fresh data plane on the same links: registers, tables, PRNG all new."""
            self.stop_process()
            self.start_process()

        def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803 - Mininet's name
            self.stop_process()
            if self.spec.target == "bmv2" and self.kind == INGRESS:
                subprocess.run(["ip", "link", "del", self.cpu_host_intf], capture_output=True)
            super().stop(deleteIntfs)

    return ProcessSwitch


def _veth(a: str, b: str) -> None:
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    for n in (a, b):
        subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{n}.disable_ipv6=1"],
                       capture_output=True)
        subprocess.run(["ip", "link", "set", n, "up"], check=True)


def build_network(topology: Topology, spec: SwitchSpec) -> Any:
    """Mininet with the topology's hosts and switches; not started."""
    from mininet.net import Mininet

    cls = _switch_class()
    net = Mininet(controller=None, build=False, autoSetMacs=True, autoStaticArp=True,
                  waitConnected=False)
    # Addresses in order (h1 .1, h2 .2); nothing routes by them, the switches forward by port.
    for n, node in enumerate(n for n in topology.nodes.values() if n.kind == HOST):
        net.addHost(node.name, ip=f"10.255.{n // 250}.{n % 250 + 1}/16")
    thrift = THRIFT_BASE
    for node in topology.nodes.values():
        if node.kind != HOST:
            net.addSwitch(node.name, cls=cls, kind=node.kind, index=node.index, spec=spec,
                          thrift_port=thrift)
            thrift += 1
    for link in topology.links:
        opts = {}
        if topology.nodes[link.a].kind != HOST:
            opts["port1"] = link.port_a
        if topology.nodes[link.b].kind != HOST:
            opts["port2"] = link.port_b
        net.addLink(link.a, link.b, **opts)
    return net


def interface_names(topology: Topology) -> list[str]:
    """Every interface the testbed creates in the root namespace (switch side)."""
    names = []
    for link in topology.links:
        for node, port in ((link.a, link.port_a), (link.b, link.port_b)):
            if topology.nodes[node].kind != HOST:
                names.append(f"{node}-eth{port}")
    names += [f"{n.name}-cpus" for n in topology.ingress_switches]
    return names


def remove_leftovers(topology: Topology) -> None:
    """Interfaces a killed run left behind (a veth goes with its peer)."""
    for name in interface_names(topology):
        if Path(f"/sys/class/net/{name}").exists():
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def quiet_ipv6(net: Any) -> None:
    """No IPv6 neighbour discovery on the veths: only the replayed frames flow."""
    for host in net.hosts:
        host.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
    for sw in net.switches:
        for intf in sw.intfList():
            if intf.name != "lo":
                subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{intf.name}.disable_ipv6=1"],
                               capture_output=True)


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)
