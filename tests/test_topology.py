"""The evaluation topology and its p4app form."""

from __future__ import annotations

import json

from conftest import REPO

from herd.testbed.topology import INGRESS, evaluation_topology, p4app_json


def test_evaluation_topology_ports() -> None:
    t = evaluation_topology(10)
    assert [n.name for n in t.ingress_switches] == [f"s{i}" for i in range(1, 11)]
    assert t.port("lb", "h1") == 1 and t.port("lb", "s3") == 4
    assert t.port("s3", "lb") == 1 and t.port("s3", "agg") == 2
    assert t.port("agg", "s3") == 3 and t.port("agg", "h2") == 11
    assert len(t.links) == 1 + 2 * 10 + 1


def test_committed_p4app_matches_the_builder() -> None:
    committed = json.loads((REPO / "topologies" / "p4app_10_switches_herd.json").read_text())
    assert committed == p4app_json(evaluation_topology(10))
    switches = committed["topology"]["switches"]
    assert switches["s1"] == {"p4_src": "p4src/herd.p4", "cpu_port": True}
    assert switches["lb"]["p4_src"] == "p4src/load_balancer.p4"
    for name, sw in switches.items():
        assert (REPO / sw["p4_src"]).exists(), name


def test_k_is_a_parameter() -> None:
    t = evaluation_topology(3)
    assert len([n for n in t.nodes.values() if n.kind == INGRESS]) == 3
    assert t.port("agg", "h2") == 4
