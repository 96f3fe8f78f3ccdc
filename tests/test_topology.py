"""The evaluation topology and its p4app form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------- direct injection, hops

def test_direct_topology_ports() -> None:
    from herd.testbed.topology import SENDER, SINK, direct_topology, injection_topology

    t = direct_topology(3)
    assert [n.name for n in t.ingress_switches] == ["s1", "s2", "s3"]
    assert [n.name for n in t.hosts(SENDER)] == ["h1s1", "h1s2", "h1s3"]
    assert [n.name for n in t.hosts(SINK)] == ["h2s1", "h2s2", "h2s3"]
    # Port 1 from the sender, port 2 to the sink: where the controllers forward by default.
    assert t.port("s2", "h1s2") == 1 and t.port("s2", "h2s2") == 2
    assert t.peer("s3", 1) == "h1s3" and t.peer("s3", 2) == "h2s3"
    assert len(t.links) == 2 * 3
    assert not [n for n in t.nodes.values() if n.kind not in ("host", INGRESS)]
    assert injection_topology("lb", 3).port("agg", "h2") == 4
    with pytest.raises(ValueError):
        injection_topology("sideways", 3)


def test_hop_plans_follow_the_path() -> None:
    from herd.testbed.hops import hop_plan
    from herd.testbed.topology import direct_topology

    plan = hop_plan(evaluation_topology(3))
    assert [h.label for h in plan] == ["h1 out", "lb in", "lb out", "s1..s3 in", "s1..s3 out",
                                       "agg in", "agg out", "h2 in"]
    lb_out = plan[2].ports["lb"]
    assert sorted(p.ifname for p in lb_out) == ["lb-eth2", "lb-eth3", "lb-eth4"]
    assert all(p.field == "tx" for p in lb_out)
    assert [p.ifname for p in plan[3].ports["s2"]] == ["s2-eth1"]  # from the lb only
    assert [p.ifname for p in plan[6].ports["agg"]] == ["agg-eth4"]  # to h2 only
    assert [(p.ifname, p.field) for p in plan[7].ports["h2"]] == [("h2-eth0", "rx")]
    direct = hop_plan(direct_topology(2))
    assert [h.label for h in direct] == ["h1s1..h1s2 out", "s1..s2 in", "s1..s2 out",
                                         "h2s1..h2s2 in"]
    assert [p.ifname for p in direct[2].ports["s2"]] == ["s2-eth2"]


def _hops(*counts: int) -> list[dict]:
    names = ["sent", "lb in", "lb out", "s1..s2 in", "s1..s2 out", "agg in"]
    return [{"hop": n, "packets": c, "nodes": {}} for n, c in zip(names, counts, strict=False)]


def test_first_loss_and_first_silent() -> None:
    from herd.testbed.hops import first_loss, first_silent

    assert first_loss(_hops(10, 10, 10, 10)) is None
    assert first_silent(_hops(10, 10, 10, 10)) is None
    assert first_loss(_hops(10, 10, 7, 7, 0)) == 2
    assert first_silent(_hops(10, 10, 7, 7, 0)) == 4
    assert first_silent(_hops(0, 0, 0)) is None  # nothing sent: nothing stopped
    assert first_loss(_hops(10, 12, 12)) is None  # more counted (stray frames) is no loss


def test_hop_counts_and_the_node_that_dropped() -> None:
    from herd.testbed.hops import describe, first_silent, hop_counts, hop_plan, with_sent

    t = evaluation_topology(2)
    before = {("h1", "h1-eth0"): (0, 5), ("", "lb-eth1"): (5, 0), ("h2", "h2-eth0"): (3, 0)}
    after = {("h1", "h1-eth0"): (0, 105), ("", "lb-eth1"): (105, 0), ("", "lb-eth2"): (0, 60),
             ("", "lb-eth3"): (0, 40), ("", "s1-eth1"): (60, 0), ("", "s2-eth1"): (40, 0),
             ("", "s1-eth2"): (0, 60), ("", "s2-eth2"): (0, 0), ("", "agg-eth1"): (60, 0),
             ("", "agg-eth2"): (0, 0), ("", "agg-eth3"): (0, 60), ("h2", "h2-eth0"): (63, 0)}
    hops = with_sent(100, hop_counts(t, hop_plan(t), before, after))
    assert [h["packets"] for h in hops] == [100, 100, 100, 100, 100, 60, 60, 60, 60]
    assert hops[5]["nodes"] == {"s1": 60, "s2": 0}
    assert "s1..s2 out (at s2): 60 frames after 100" in describe(hops, 5)
    assert first_silent(hops) is None
    dead = dict(after)
    dead[("", "agg-eth3")] = (0, 0)
    dead[("h2", "h2-eth0")] = (3, 0)
    hops = with_sent(100, hop_counts(t, hop_plan(t), before, dead))
    i = first_silent(hops)
    assert hops[i]["hop"] == "agg out" and describe(hops, i).startswith("agg out: 0 frames")


def test_parse_net_dev() -> None:
    from herd.testbed.hops import parse_net_dev

    text = ("Inter-|   Receive                            |  Transmit\n"
            " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
            "errs drop fifo colls carrier compressed\n"
            "    lo:     100       2    0    0    0     0          0         0      100       2 "
            "   0    0    0     0       0          0\n"
            "s1-eth1: 64000 1000 0 3 0 0 0 0 128 2 0 0 0 0 0 0\n")
    assert parse_net_dev(text) == {"lo": (2, 2), "s1-eth1": (1000, 2)}


def test_probe_paths() -> None:
    from herd.testbed.probe import PROBE_ETHERTYPE, path_hops, probe_frame, probe_paths
    from herd.testbed.topology import direct_topology

    paths = probe_paths(evaluation_topology(3))
    # Non-IPv4 goes to switch 0: s1's probe crosses the load balancer from h1; the others
    # are sent on the load balancer's link to their switch.
    assert [(p.switch, p.send_node, p.send_ifname, p.sink) for p in paths] == [
        ("s1", "h1", "h1-eth0", "h2"), ("s2", "", "lb-eth3", "h2"), ("s3", "", "lb-eth4", "h2")]
    assert paths[0].nodes == ("h1", "lb", "s1", "agg", "h2")
    labels = [h.label for h in path_hops(evaluation_topology(3), paths[2].nodes)]
    assert labels == ["lb out", "s3 in", "s3 out", "agg in", "agg out", "h2 in"]
    direct = probe_paths(direct_topology(2))
    assert [(p.send_node, p.sink, p.nodes) for p in direct] == [
        ("h1s1", "h2s1", ("h1s1", "s1", "h2s1")), ("h1s2", "h2s2", ("h1s2", "s2", "h2s2"))]
    frame = probe_frame(b"\1" * 6, b"\2" * 6, b"nonce")
    assert len(frame) == 60 and int.from_bytes(frame[12:14], "big") == PROBE_ETHERTYPE
    assert PROBE_ETHERTYPE not in (0x0800, 0x8100, 0x88A8, 0x88B5)  # not IPv4, VLAN, CPU


def _pcap_slice(src: Path, dest: Path, n: int) -> Path:
    from herd.testbed.sender import read_pcap_header

    header = read_pcap_header(src)[0]
    data = src.read_bytes()
    off = 24
    for _ in range(n):
        incl = int.from_bytes(data[off + 8:off + 12], "little")
        off += 16 + incl
    dest.write_bytes(header + data[24:off])
    return dest


def test_shares_are_the_load_balancers_split(tmp_path: Path) -> None:
    import numpy as np

    from herd.prepared import PreparedTrace
    from herd.testbed.direct import lb_assignment, share_rates, write_shares
    from herd.testbed.sender import read_pcap
    from herd.trace import load_trace

    pcap = _pcap_slice(REPO / "pcap" / "synth-20k.pcap", tmp_path / "slice.pcap", 3000)
    records = list(read_pcap(pcap))
    frames = [f for _, f in records]
    prep = PreparedTrace(load_trace(pcap))
    where = lb_assignment(frames, 4, 0.7, 3)
    assert np.array_equal(where, prep.ingress(4, 0.7, 3))
    assert not np.array_equal(where, lb_assignment(frames, 4, 0.7, 4))  # the seed matters
    # Non-IPv4 frames go to switch 0 and take no draw, as load_balancer.p4.
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    mixed = lb_assignment([arp, *frames[:50]], 4, 0.7, 3)
    assert mixed[0] == 0 and np.array_equal(mixed[1:], where[:50])

    macs = [(f"02:00:00:00:01:0{i}", f"02:00:00:00:02:0{i}") for i in range(4)]
    shares = write_shares(pcap, tmp_path, 4, 0.7, 3, macs)
    assert [s.packets for s in shares] == [int((where == i).sum()) for i in range(4)]
    sched = np.maximum.accumulate(np.array([ts for ts, _ in records]))
    for s in shares:
        got = list(read_pcap(s.path))
        idx = np.flatnonzero(where == s.switch)
        assert [f[12:] for _, f in got] == [frames[j][12:] for j in idx]  # same frames, order
        assert {f[:12] for _, f in got} == {bytes.fromhex(macs[s.switch][1].replace(":", ""))
                                            + bytes.fromhex(macs[s.switch][0].replace(":", ""))}
        # Every share on the whole trace's schedule (microsecond pcap: to the microsecond).
        assert [ts for ts, _ in got] == [int(sched[j]) // 1000 * 1000 for j in idx]
    rates = share_rates([s.packets for s in shares], 3000.0)
    assert abs(sum(rates) - 3000.0) < 1e-6
    assert rates[0] / rates[1] == shares[0].packets / shares[1].packets
    assert share_rates([0, 0], 100.0) == [0.0, 0.0]


def test_queued_bytes_counts_only_the_given_interfaces(tmp_path: Path) -> None:
    from herd.testbed.hops import queued_bytes

    lo = int(Path("/sys/class/net/lo/ifindex").read_text())
    table = tmp_path / "packet"
    table.write_text("sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n"
                     f"0000000000000001 3      3    0003   {lo}     1 4352   0      1\n"
                     f"0000000000000002 3      3    0003   {lo + 9999} 1 9999   0      2\n"
                     f"0000000000000003 3      3    0003   {lo}     1 0      0      3\n")
    assert queued_bytes(["lo"], str(table)) == 4352
    assert queued_bytes(["no-such-if0"], str(table)) == 0


def test_runtime_writes_of_the_direct_topology() -> None:
    """No load balancer, no aggregator: each ingress switch forwards to its sink host."""
    from herd.params import Params
    from herd.testbed.configure import CPU_MIRROR_SESSION, evaluation_writes
    from herd.testbed.topology import direct_topology

    plan = evaluation_writes(direct_topology(3), Params(k=3), {f"s{i}": 64 for i in (1, 2, 3)})
    assert sorted(plan) == ["s1", "s2", "s3"]
    assert [str(w) for w in plan["s2"]] == ["table_set_default forwarding forward 2",
                                            f"mirroring_add {CPU_MIRROR_SESSION} 64"]


def test_one_testbed_at_a_time(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from herd.testbed.harness import machine_lock

    path = tmp_path / "lock" / "herd-testbed.lock"
    probe = ("import fcntl, sys\nf = open(sys.argv[1])\ntry:\n"
             "    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept BlockingIOError:\n"
             "    sys.exit(3)\n")
    held = machine_lock(path)
    assert path.read_text() == str(os.getpid())
    assert subprocess.run([sys.executable, "-c", probe, str(path)]).returncode == 3
    held.close()
    assert subprocess.run([sys.executable, "-c", probe, str(path)]).returncode == 0
