"""The P4 programs on real BMv2 against the Python model, bit for bit.

Needs p4c (p4c-bm2-ss), BMv2 (simple_switch, simple_switch_CLI) and root (veth links);
skips, saying so, where any is absent. Packets go one at a time through simple_switch on
veth links that this test creates and removes; after each packet the test collects the
forwarded frame and any CPU frame, and acts as the controller (installing the group entry
a hello asks for) exactly as the model's controller and coordinator do. Then the CPU
messages, the forwarded frames and the registers must be identical.
"""

from __future__ import annotations

import os
import random
import re
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO

from herd.controller import LocalController
from herd.coordinator import Coordinator
from herd.messages import CPU_HEADER_LEN, ETHERTYPE_HERD_CPU, CpuMessage, MessageType
from herd.prng import probability_threshold
from herd.switch import Switch
from herd.testbed.rawsock import open_port, recv_frames

TOOLS = ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI")
missing = [t for t in TOOLS if shutil.which(t) is None]
pytestmark = [
    pytest.mark.bmv2,
    pytest.mark.skipif(bool(missing), reason=f"BMv2/p4c not installed ({', '.join(missing)} "
                       "not on PATH): the P4 programs can only be checked on a P4 machine"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create veth links"),
]

PROGRAMS = ("herd.p4", "load_balancer.p4", "aggregator.p4")


def compile_p4(program: str, out_dir: Path, defines: dict[str, int] | None = None) -> Path:
    out = out_dir / (Path(program).stem + ".json")
    cmd = ["p4c-bm2-ss", "--std", "p4-16", "-o", str(out)]
    cmd += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    proc = subprocess.run(cmd + [str(REPO / "p4src" / program)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("program", PROGRAMS)
def test_programs_compile_without_warnings(program: str, tmp_path: Path) -> None:
    cmd = ["p4c-bm2-ss", "--std", "p4-16", "-o", str(tmp_path / "out.json"),
           str(REPO / "p4src" / program)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "" and "warning" not in proc.stdout.lower(), proc.stderr


class Bmv2Switch:
    """simple_switch on veth pairs: port n is veth 'hb<n>' whose peer 'ha<n>' we talk on."""

    def __init__(self, json_path: Path, ports: list[int], tag: str, thrift_port: int) -> None:
        self.ports = ports
        self.thrift_port = thrift_port
        self.names = {p: (f"{tag}a{p}", f"{tag}b{p}") for p in ports}
        for a, b in self.names.values():
            subprocess.run(["ip", "link", "del", a], capture_output=True)
            subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
            for n in (a, b):
                subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{n}.disable_ipv6=1"],
                               capture_output=True)
                subprocess.run(["ip", "link", "set", n, "up", "mtu", "9000"], check=True)
        args = ["simple_switch", "--thrift-port", str(thrift_port), "--device-id",
                str(thrift_port)]
        for p, (_, b) in self.names.items():
            args += ["-i", f"{p}@{b}"]
        self.proc = subprocess.Popen(args + [str(json_path)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.socks = {p: open_port(a) for p, (a, _) in self.names.items()}
        deadline = time.time() + 20
        while True:
            try:
                self.cli("show_ports")
                break
            except AssertionError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def cli(self, commands: str) -> str:
        proc = subprocess.run(["simple_switch_CLI", "--thrift-port", str(self.thrift_port)],
                              input=commands + "\n", capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Error" not in proc.stdout, proc.stdout + proc.stderr
        return proc.stdout

    def register(self, name: str) -> list[int]:
        out = self.cli(f"register_read {name}")
        m = re.search(rf"{name}=\s*([0-9, ]*)", out)
        assert m, out
        return [int(x) for x in m.group(1).replace(" ", "").split(",") if x]

    def drain(self) -> None:
        for s in self.socks.values():
            while recv_frames(s):
                pass

    def send(self, port: int, frame: bytes) -> None:
        self.socks[port].send(frame)

    def receive(self, settle_s: float = 0.02, timeout_s: float = 2.0) -> dict[int, list[bytes]]:
        """Frames arriving on any port: wait for the first, then until none has come for
        settle_s (a clone and its original leave through different egress threads)."""
        got: dict[int, list[bytes]] = {p: [] for p in self.ports}
        deadline = time.time() + timeout_s
        seen = False
        while True:
            wait = settle_s if seen else deadline - time.time()
            if wait <= 0:
                return got
            ready, _, _ = select.select(list(self.socks.values()), [], [], wait)
            if not ready:
                if seen or time.time() >= deadline:
                    return got
                continue
            for p, s in self.socks.items():
                if s in ready:
                    frames = recv_frames(s)
                    got[p] += frames
                    seen = seen or bool(frames)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for s in self.socks.values():
            s.close()
        for a, _ in self.names.values():
            subprocess.run(["ip", "link", "del", a], capture_output=True)


@pytest.fixture
def herd_bmv2(tmp_path: Path) -> Iterator[Bmv2Switch]:
    # Small stages so that overflows happen within a few hundred packets.
    json_path = compile_p4("herd.p4", tmp_path,
                           {"STAGE0_SIZE": 8, "STAGE1_SIZE": 4, "STAGE2_SIZE": 2})
    sw = Bmv2Switch(json_path, [1, 2, 3], "hx", 9291)
    yield sw
    sw.close()


def frames(seed: int) -> list[bytes]:
    """A mix: TCP/UDP/ICMP flows over three groups, VLAN and QinQ tags, IP options,
    ARP and IPv6 that must pass untouched and unmeasured."""
    from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, IPv6

    rnd = random.Random(seed)
    flows = []
    for i in range(24):
        src = f"{rnd.choice([10, 44, 77])}.{rnd.randrange(256)}.0.{i + 1}"
        dst = f"{rnd.choice([20, 99])}.1.{rnd.randrange(256)}.2"
        kind = rnd.choice(["tcp", "tcp", "udp", "icmp"])
        l4 = {"tcp": TCP(sport=1000 + i, dport=80), "udp": UDP(sport=2000 + i, dport=53),
              "icmp": ICMP()}[kind]
        flows.append((src, dst, l4))
    weights = [1.0 / (i + 1) ** 1.1 for i in range(len(flows))]
    out = []
    for _ in range(700):
        r = rnd.random()
        if r < 0.02:
            out.append(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP()))
            continue
        if r < 0.04:
            out.append(bytes(Ether() / IPv6() / UDP()))
            continue
        src, dst, l4 = rnd.choices(flows, weights)[0]
        ip = IP(src=src, dst=dst, options=[] if rnd.random() < 0.9 else b"\x01\x01\x01\x00")
        if r < 0.10:
            frame = Ether() / Dot1Q(vlan=5) / ip / l4
        elif r < 0.12:
            frame = Ether() / Dot1AD(vlan=6) / Dot1Q(vlan=7) / ip / l4
        else:
            frame = Ether() / ip / l4
        out.append(bytes(frame))
    return out


def five_tuple(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """The flow key the model sees, as trace parsing would extract it."""
    from scapy.all import IP, Ether

    pkt = Ether(frame)
    if IP not in pkt:
        return None
    ip = pkt[IP]
    sport = dport = 0
    if ip.proto in (6, 17) and ip.frag == 0:
        sport, dport = int(ip.payload.sport), int(ip.payload.dport)
    to_int = lambda a: int.from_bytes(socket.inet_aton(a), "big")  # noqa: E731
    return (to_int(ip.src), to_int(ip.dst), sport, dport, int(ip.proto))


def test_herd_switch_matches_the_model(herd_bmv2: Bmv2Switch) -> None:
    sw = herd_bmv2
    s, epsilon, T, seed = 0.5, 0.3, 20, 9
    model = Switch((8, 4, 2))
    controller = LocalController(0, epsilon, T, s, seed)
    coordinator = Coordinator(switches=4, R=3)
    # Pretend other switches said hello for group 44/8 -> 99/8 so its l_g is 4 (r = 1/4).
    for other in (1, 2, 3):
        coordinator.on_hello((44 << 8) | 99, other)
    config = controller.switch_config()
    model.configure(config)
    sw.cli("\n".join([
        "mirroring_add 100 3",
        "table_add forwarding forward 1 => 2",
        f"register_write herd_regs 0 {config.prng_seed}",
        f"register_write herd_regs 1 {config.sample_threshold}",
        f"register_write herd_regs 2 {config.hold_start}",
    ]))
    sw.drain()

    bmv2_msgs, model_msgs = [], []
    for frame in frames(seed=4):
        sw.send(1, frame)
        got = sw.receive()
        assert got[2] == [frame], "BMv2 must forward every frame unchanged"
        cpu = [CpuMessage.unpack(f[14:14 + CPU_HEADER_LEN]) for f in got[3]]
        assert all(f[12:14] == ETHERTYPE_HERD_CPU.to_bytes(2, "big") for f in got[3])
        assert all(len(f) == 14 + CPU_HEADER_LEN for f in got[3])
        key = five_tuple(frame)
        m = model.process(*key) if key else None
        bmv2_msgs += cpu
        model_msgs += [m] if m else []
        assert cpu == ([m] if m else []), f"after {len(model_msgs)} messages"
        for msg in cpu:  # the controller's part, identical for both
            if msg.type is MessageType.HELLO and controller.on_hello(msg.group):
                answer = coordinator.on_hello(msg.group, 0)
                entry = controller.on_l_g(msg.group, answer.l_g)
                model.install_group(entry.g, entry.tau, entry.r_threshold)
                sw.cli(f"table_add group_table set_group_params {entry.g >> 8} "
                       f"{entry.g & 0xFF} => {entry.tau} {entry.r_threshold}")
    kinds = {m.type for m in bmv2_msgs}
    assert kinds == {MessageType.HELLO, MessageType.REPORT, MessageType.OVERFLOW}
    regs = sw.register("herd_regs")
    assert regs == [int(x) for x in model.regs]
    assert sw.register("stage_fp") == [int(x) for x in model.fps]
    assert sw.register("stage_count") == [int(x) for x in model.counts]


def test_load_balancer_matches_the_model(tmp_path: Path) -> None:
    import numpy as np

    from herd.loadbalancer import assign_ingress

    k = 4
    sw = Bmv2Switch(compile_p4("load_balancer.p4", tmp_path), [1, 2, 3, 4, 5], "lx", 9292)
    try:
        prng, p = 0x1234567, 0.7
        sw.cli("\n".join([f"register_write lb_regs 0 {prng}",
                          f"register_write lb_regs 1 {probability_threshold(p)}",
                          f"register_write lb_regs 2 {k}"]
                         + [f"table_add ingress_switch to_switch {i} => {i + 2}"
                            for i in range(k)]))
        sw.drain()
        ipv4 = [f for f in frames(seed=8) if five_tuple(f)][:200]
        expected = assign_ingress(np.array([five_tuple(f)[0] for f in ipv4], dtype=np.uint32),
                                  k, probability_threshold(p), prng)
        for frame, index in zip(ipv4, expected, strict=True):
            sw.send(1, frame)
            got = sw.receive()
            assert got[int(index) + 2] == [frame]
    finally:
        sw.close()
