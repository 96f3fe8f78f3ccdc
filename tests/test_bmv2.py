"""The P4 programs on real BMv2 against the Python model, bit for bit.

Needs p4c (p4c-bm2-ss), BMv2 (simple_switch, simple_switch_CLI and its Python Thrift
runtime) and root (veth links); skips, saying so, where any is absent. Packets go one at a
time through simple_switch on veth links that this test creates and removes; after each
packet the test collects the forwarded frame and any CPU frame, and acts as the controller
(installing the group entry a hello asks for) exactly as the model's controller and
coordinator do. Then the CPU messages, the forwarded frames and every register must be
identical.

With epochs, BMv2 takes each packet's epoch from its own clock; after each packet the test
reads the epoch BMv2 entered (``herd_regs[REG_EPOCH]``) and gives the model the same one,
so the two must still agree bit for bit, and checks the epoch against the time that passed.

Confirm: every slot's held total and previous-epoch words are registers like the others, and
the BMv2 driver's pull of an epoch's held totals, read while the switch counts the next
epoch, must give what the model gives and what the flows sent.
"""

from __future__ import annotations

import dataclasses
import importlib.util
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

import numpy as np
import pytest
from conftest import REPO

from herd.controller import LocalController, hold_start
from herd.coordinator import Coordinator
from herd.errors import HerdInputError
from herd.messages import CPU_HEADER_LEN, ETHERTYPE_HERD_CPU, CpuMessage, MessageType
from herd.prng import probability_threshold
from herd.services.drivers.base import (
    REG_STAGE_COUNT,
    REG_STAGE_EPOCH,
    REG_STAGE_FP,
    REG_STAGE_PREV_FP,
    REG_STAGE_PREV_TOTAL,
    REG_STAGE_TOTAL,
    SwitchDriver,
    flows_stage_slots,
)
from herd.services.drivers.bmv2 import (
    REG_EPOCH_LOG,
    REG_EPOCH_ORIGIN,
    Bmv2Driver,
    epoch_origin_in_switch_clock,
)
from herd.services.drivers.bmv2_thrift import Bmv2Thrift
from herd.switch import (
    GROUP_MISS,
    REG_EPOCH,
    REG_EPOCH_US,
    REG_HELLOS,
    REG_HOLD_START,
    REG_OVERFLOWS,
    REG_PRNG,
    REG_REPORTS,
    REG_SAMPLE_THRESHOLD,
    SLOT_COUNT,
    SLOT_EPOCH,
    SLOT_FP,
    SLOT_PREV_FP,
    SLOT_PREV_TOTAL,
    SLOT_TOTAL,
    Switch,
    clock_epoch,
    epoch_starts,
)
from herd.testbed.rawsock import open_port, recv_frames

TOOLS = ("p4c-bm2-ss", "simple_switch", "simple_switch_CLI")
THRIFT_MODULES = ("thrift", "bm_runtime", "sswitch_runtime")  # installed with BMv2
missing = [t for t in TOOLS if shutil.which(t) is None]
missing += [m for m in THRIFT_MODULES if importlib.util.find_spec(m) is None]
pytestmark = [
    pytest.mark.bmv2,
    pytest.mark.skipif(bool(missing), reason=f"BMv2/p4c not installed ({', '.join(missing)} "
                       "not found): the P4 programs can only be checked on a P4 machine"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create veth links"),
]

PROGRAMS = ("herd.p4", "load_balancer.p4", "aggregator.p4")

# herd.p4's register array of each slot word of the model's table.
SLOT_REGISTERS = {SLOT_FP: REG_STAGE_FP, SLOT_COUNT: REG_STAGE_COUNT,
                  SLOT_EPOCH: REG_STAGE_EPOCH, SLOT_TOTAL: REG_STAGE_TOTAL,
                  SLOT_PREV_FP: REG_STAGE_PREV_FP, SLOT_PREV_TOTAL: REG_STAGE_PREV_TOTAL}


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
        try:
            self._connect_thrift()
        except BaseException:
            self.proc.kill()  # a switch left running would hold the port for the next test
            raise

    def _connect_thrift(self) -> None:
        """herd's Thrift client (registers, fast enough to read after every packet; the
        switch's clocks), once the switch answers."""
        deadline = time.time() + 20
        while True:
            try:
                self.thrift = Bmv2Thrift(self.thrift_port)
                return
            except ConnectionError:
                if time.time() > deadline or self.proc.poll() is not None:
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

    def register_at(self, name: str, index: int) -> int:
        """One register cell through Thrift (a CLI call per packet would be too slow)."""
        return self.thrift.register_read(name, index)

    def registers_now(self, name: str) -> list[int]:
        """A whole (small) register array through Thrift."""
        return self.thrift.register_read_all(name)

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
        self.thrift.close()
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
    return (ip_int(ip.src), ip_int(ip.dst), sport, dport, int(ip.proto))


def ip_int(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big")


ALL_KINDS = {MessageType.HELLO, MessageType.REPORT, MessageType.OVERFLOW}


class HerdPair:
    """BMv2's Herd switch and the model side by side, with the test as their one control
    plane: the same local controller and coordinator answer the hellos of both."""

    def __init__(self, sw: Bmv2Switch, epoch_us: int = 0, s: float = 0.5) -> None:
        epsilon, T, seed = 0.3, 20, 9
        self.sw = sw
        self.model = Switch((8, 4, 2))
        self.controller = LocalController(0, epsilon, T, s, seed)
        self.coordinator = Coordinator(switches=4, R=3)
        # Pretend other switches said hello for group 44/8 -> 99/8 so its l_g is 4 (r = 1/4).
        for other in (1, 2, 3):
            self.coordinator.on_hello((44 << 8) | 99, other)
        config = dataclasses.replace(self.controller.switch_config(), epoch_us=epoch_us)
        self.model.configure(config)
        sw.cli("\n".join([
            "mirroring_add 100 3",
            "table_add forwarding forward 1 => 2",
            f"register_write herd_regs {REG_PRNG} {config.prng_seed}",
            f"register_write herd_regs {REG_SAMPLE_THRESHOLD} {config.sample_threshold}",
            f"register_write herd_regs {REG_HOLD_START} {config.hold_start}",
            f"register_write herd_regs {REG_EPOCH_US} {config.epoch_us}",
        ]))
        sw.drain()
        self.bmv2_msgs: list[CpuMessage] = []
        self.model_msgs: list[CpuMessage] = []
        # Claims of a slot of an older epoch, by what they did to its previous-epoch words:
        # kept a flow's (the slot was written in the epoch before), or zeroed a flow's.
        self.prev_kept = 0
        self.prev_zeroed = 0
        Switch(self.model.stages).process(0, 0, 0, 0, 0)  # compiled now, not at the first packet

    def set_epoch_origin(self, origin_us: int) -> None:
        """Epoch 0 begins at ``origin_us`` of the switch's clock, on both (through Thrift: the
        CLI takes half a second to start)."""
        sw = self.sw
        sw.thrift.register_write(REG_EPOCH_ORIGIN, 0, origin_us)
        self.model.epoch_origin_us = origin_us

    def step(self, frame: bytes) -> int | None:
        """One frame through both switches; the epoch BMv2 measured it in (None: not IPv4,
        not measured). The CPU messages must be the same, epochs included."""
        sw = self.sw
        sw.send(1, frame)
        got = sw.receive()
        assert got[2] == [frame], "BMv2 must forward every frame unchanged"
        cpu_frames = got[3]
        # A clone may leave after its original by more than receive() waits: BMv2's counters
        # say how many CPU messages it has sent in all.
        regs = sw.registers_now("herd_regs")
        sent = regs[REG_HELLOS] + regs[REG_REPORTS] + regs[REG_OVERFLOWS]
        deadline = time.time() + 2.0
        while len(self.bmv2_msgs) + len(cpu_frames) < sent and time.time() < deadline:
            late = sw.receive(timeout_s=0.1)
            assert not any(late[p] for p in sw.ports if p != 3), "a frame arrived twice"
            cpu_frames += late[3]
        cpu = [CpuMessage.unpack(f[14:14 + CPU_HEADER_LEN]) for f in cpu_frames]
        assert all(f[12:14] == ETHERTYPE_HERD_CPU.to_bytes(2, "big") for f in cpu_frames)
        assert all(len(f) == 14 + CPU_HEADER_LEN for f in cpu_frames)
        key = five_tuple(frame)
        epoch = m = None
        if key:
            # BMv2 took the epoch from its clock: the model is given the same one.
            epoch = regs[REG_EPOCH]
            before = self.model.table.copy()
            m = self.model.process(*key, epoch=epoch)
            self._note_claims(before)
        self.bmv2_msgs += cpu
        self.model_msgs += [m] if m else []
        assert cpu == ([m] if m else []), f"after {len(self.model_msgs)} messages"
        for msg in cpu:  # the controller's part, identical for both
            if msg.type is MessageType.HELLO and self.controller.on_hello(msg.group):
                answer = self.coordinator.on_hello(msg.group, 0)
                entry = self.controller.on_l_g(msg.group, answer.l_g)
                self.model.install_group(entry.g, entry.tau, entry.r_threshold)
                sw.cli(f"table_add group_table set_group_params {entry.g >> 8} "
                       f"{entry.g & 0xFF} => {entry.tau} {entry.r_threshold}")
        return epoch

    def _note_claims(self, before: np.ndarray) -> None:
        after = self.model.table
        claimed = before[SLOT_EPOCH] != after[SLOT_EPOCH]
        self.prev_kept += int((claimed & (after[SLOT_PREV_FP] != 0)).sum())
        self.prev_zeroed += int((claimed & (before[SLOT_PREV_FP] != 0)
                                 & (after[SLOT_PREV_FP] == 0)).sum())

    def load_slots(self, table: np.ndarray) -> None:
        """Every slot word, in BMv2 and in the model (as a control plane could write them)."""
        self.model.table[:] = table
        for field, name in SLOT_REGISTERS.items():
            for i, word in enumerate(table[field]):
                self.sw.thrift.register_write(name, i, int(word))

    def assert_registers_match(self) -> None:
        """Every register of herd.p4 against its counterpart in the model."""
        sw, model = self.sw, self.model
        assert sw.register("herd_regs") == [int(x) for x in model.regs]
        for field, name in SLOT_REGISTERS.items():  # fp, count, epoch tag, confirm's words
            assert sw.register(name) == [int(x) for x in model.table[field]], name
        assert sw.register(REG_EPOCH_LOG) == [int(x) for x in model.epoch_log]
        assert sw.register(REG_EPOCH_ORIGIN) == [model.epoch_origin_us]
        # the model folds hello_sent into its group state
        assert sw.register("hello_sent") == [int(x != GROUP_MISS) for x in model.group_state]


def test_herd_switch_matches_the_model(herd_bmv2: Bmv2Switch) -> None:
    pair = HerdPair(herd_bmv2)  # W = 0: one epoch
    for frame in frames(seed=4):
        assert pair.step(frame) in (0, None)
    assert {m.type for m in pair.bmv2_msgs} == ALL_KINDS
    pair.assert_registers_match()


CLOCK_TOLERANCE_US = 2_000  # the error of the wall clock -> switch clock conversion, generously


@pytest.mark.parametrize(("epoch_us", "n_frames", "pauses", "kinds"), [
    # W = 1 s, about 40 packets an epoch; after frame 250 the next packet comes two epochs
    # later (one epoch without packets), after frame 500 three epochs later (two skipped).
    (1_000_000, 700, {250: 2, 500: 3}, ALL_KINDS),
    # W = 1 ms: every packet after the origin starts an epoch (the tables are always empty:
    # no flow gets to tau_g or finds its stages full), and the epoch log wraps around.
    (1_000, 300, {}, {MessageType.HELLO}),
], ids=["W=1s", "W=1ms"])
def test_herd_switch_epochs_match_the_model(herd_bmv2: Bmv2Switch, epoch_us: int,
                                            n_frames: int, pauses: dict[int, int],
                                            kinds: set[MessageType]) -> None:
    sw = herd_bmv2
    pair = HerdPair(sw, epoch_us=epoch_us)
    traffic = frames(seed=4)[:n_frames]
    start = sw.thrift.clock_start_us()  # Unix us at which BMv2's timestamps read 0

    def now() -> int:  # the switch's clock
        return time.time_ns() // 1000 - start

    # Epoch 0 begins 0.3 s from now: the first packets come before the origin (epoch 0 too).
    origin = epoch_origin_in_switch_clock(time.time_ns() // 1000 + 300_000, start)
    pair.set_epoch_origin(origin)

    epochs: list[int] = []  # BMv2's epoch of each measured packet
    expected_starts: list[tuple[int, int]] = []  # (epoch, measured packets before it)
    before_origin = 0
    pause = 0  # the epochs the next measured packet must be after the last one
    for i, frame in enumerate(traffic):
        t0 = now()
        epoch = pair.step(frame)
        t1 = now()
        if epoch is not None:
            # The switch stamped the packet between t0 and t1: its epoch is the clock's then.
            lo = clock_epoch(t0 - CLOCK_TOLERANCE_US, origin, epoch_us)
            hi = clock_epoch(t1 + CLOCK_TOLERANCE_US, origin, epoch_us)
            assert lo <= epoch <= hi, f"frame {i}: epoch {epoch}, clock says {lo}..{hi}"
            last = epochs[-1] if epochs else 0
            assert epoch >= last, "the switch went back an epoch"
            assert not pause or epoch == last + pause, f"frame {i}: after a pause"
            if epoch > last:
                expected_starts.append((epoch, len(epochs)))
            epochs.append(epoch)
            before_origin += t1 < origin
            pause = 0
        if i in pauses:  # sleep into the epoch pauses[i] after the last packet's
            pause = pauses[i]
            wake = origin + (epochs[-1] + pause) * epoch_us + epoch_us // 20
            time.sleep(max(0.0, (wake - now()) / 1e6))
    elapsed_us = now() - origin

    # BMv2's epochs follow its clock: monotone (checked above), from before the origin to
    # elapsed / W (the last packet waited for its frames a few tens of ms), past pauses
    # that skip epochs.
    assert before_origin > 0 and epochs[0] == 0
    assert epochs[-1] * epoch_us <= elapsed_us < (epochs[-1] + 1) * epoch_us + 100_000
    entered = sorted(set(epochs))
    assert len(entered) >= 4
    assert set(range(entered[-1])) - set(entered), "some epoch must pass without packets"
    # Every message was compared already (epochs included); reports come from several epochs.
    assert kinds <= {m.type for m in pair.bmv2_msgs}
    if MessageType.REPORT in kinds:
        assert len({m.epoch for m in pair.bmv2_msgs if m.type is MessageType.REPORT}) >= 3
        # Flows took slots of the epoch before (whose words were kept) and, after the pauses,
        # of older ones (whose previous words were zeroed).
        assert pair.prev_kept > 0 and pair.prev_zeroed > 0
    pair.assert_registers_match()
    # The epoch log tells where each epoch began (its last EPOCH_LOG entries).
    starts = epoch_starts(sw.register(REG_EPOCH_LOG), epochs[-1])
    assert starts == pair.model.epoch_starts()
    assert starts == [s for s in expected_starts if s[0] > epochs[-1] - 256]


def test_bmv2_driver_epochs(herd_bmv2: Bmv2Switch) -> None:
    sw = herd_bmv2
    driver = Bmv2Driver("s1", f"127.0.0.1:{sw.thrift_port}")
    try:
        # The origin, given in wall-clock time, lands in the switch's clock.
        origin_unix = time.time_ns() // 1000 + 100_000
        driver.set_epoch_origin(origin_unix)
        expected = origin_unix - sw.thrift.clock_start_us()
        assert abs(sw.register_at(REG_EPOCH_ORIGIN, 0) - expected) < CLOCK_TOLERANCE_US
        # The log, read and decoded: the switch in epoch 300, entered at packet 60, epoch 299
        # at packet 50; where epoch 298 would be, epoch 42's entry (298 was never entered).
        entries = {42: 42 << 32 | 5, 43: 299 << 32 | 50, 44: 300 << 32 | 60}
        sw.cli("\n".join([f"register_write {REG_EPOCH_LOG} {i} {v}" for i, v in entries.items()]
                         + [f"register_write herd_regs {REG_EPOCH} 300"]))
        assert driver.epoch_starts() == [(299, 50), (300, 60)]
        # A refused operation is one line naming the switch; the connection stays usable.
        with pytest.raises(HerdInputError, match=r"127.0.0.1:\d+: bm_register_read refused"):
            sw.thrift.register_read("herd_regs", 10_000)
        assert sw.thrift.register_read("herd_regs", REG_EPOCH) == 300
    finally:
        driver.close()


@pytest.mark.parametrize("epoch", [0, 5])
def test_herd_switch_slot_words_match_the_model_from_any_state(herd_bmv2: Bmv2Switch,
                                                               epoch: int) -> None:
    """Slots as an earlier epoch or a control plane may leave them: tagged with the switch's
    epoch (a foreign flow's, or empty), the epoch before (a flow taking the slot keeps its
    words), older and later ones, and 2^32 - 1, whose tag + 1 is 0 in 32 bits but is never the
    epoch before 0 (the words are zeroed). BMv2 must write every word as the model does."""
    sw = herd_bmv2
    pair = HerdPair(sw)  # W = 0: the switch stays in the epoch written
    rnd = random.Random(epoch)
    tags = [t for t in (epoch, epoch - 1, epoch - 2, epoch + 1, 0xFFFFFFFF) if t >= 0]
    table = np.zeros_like(pair.model.table)
    for row in table.T:  # slot by slot
        tag = rnd.choice(tags)
        fp = 0 if tag == epoch and rnd.random() < 0.5 else rnd.randrange(1, 1 << 32)
        row[:] = (fp, rnd.randrange(50), tag, rnd.randrange(1, 1000), rnd.randrange(1, 1 << 32),
                  rnd.randrange(1, 1000))
    pair.load_slots(table)
    pair.model.regs[REG_EPOCH] = epoch
    sw.thrift.register_write("herd_regs", REG_EPOCH, epoch)
    for frame in frames(seed=5)[:150]:
        assert pair.step(frame) in (epoch, None)
    pair.assert_registers_match()
    claimed = pair.model.table[SLOT_EPOCH] != table[SLOT_EPOCH]
    wrapped = claimed & (table[SLOT_EPOCH] == 0xFFFFFFFF)
    assert wrapped.any() and pair.prev_zeroed > 0
    assert not pair.model.table[[SLOT_PREV_FP, SLOT_PREV_TOTAL]][:, wrapped].any()
    if epoch > 0:
        assert pair.prev_kept > 0


def test_bmv2_driver_pulls_held_totals(herd_bmv2: Bmv2Switch) -> None:
    """Confirm's pull on BMv2: flows send in epoch e; in e + 1 flows come back to their slots
    and a new flow takes another's, one of them while the driver reads. The held totals of
    epoch e pulled in e + 1 (a whole register array per call, and cell by cell) are the
    model's and what the flows sent: with s = 1 every flow is sampled at its first counted
    packet, its held total the hold start and +1 for each later packet (across tau_g)."""
    from scapy.all import IP, TCP, Ether

    sw = herd_bmv2
    W = 2_000_000  # us: a phase of a dozen packets fits in an epoch with room to spare
    pair = HerdPair(sw, epoch_us=W, s=1.0)
    stages = pair.model.stages
    src, dst = "10.0.0.1", "20.0.0.2"  # group 10/8 -> 20/8: l_g 1, tau_g 6, r_g 1

    def key(sport: int) -> tuple[int, int, int, int, int]:
        return (ip_int(src), ip_int(dst), sport, 80, 6)

    # The flows, by their stage-0 slot: B's is A's (B is held in stage 1 behind A), N's is
    # C's (N takes it in e + 1), D's neither; E never sends.
    ports = list(range(1000, 3000))
    stage0 = dict(zip(ports, flows_stage_slots([key(p) for p in ports], stages)[:, 0],
                      strict=True))
    a = ports[0]
    b = next(p for p in ports if p != a and stage0[p] == stage0[a])
    c = next(p for p in ports if stage0[p] != stage0[a])
    n = next(p for p in ports if p != c and stage0[p] == stage0[c])
    d = next(p for p in ports if stage0[p] not in (stage0[a], stage0[c]))
    e_ = next(p for p in ports if p not in (a, b, c, n, d))
    names = {a: "A", b: "B", c: "C", n: "N", d: "D", e_: "E"}
    flows = [key(p) for p in names]

    start = sw.thrift.clock_start_us()  # Unix us at which BMv2's timestamps read 0

    def now() -> int:  # the switch's clock; the epoch origin is its start (0)
        return time.time_ns() // 1000 - start

    def frame(sport: int) -> bytes:
        return bytes(Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=80))

    def send(sport: int, packets: int, epoch: int) -> None:
        for _ in range(packets):
            got = pair.step(frame(sport))
            assert got == epoch, (f"{names.get(sport, sport)}'s packet for epoch {epoch} came "
                                  f"in {got}: the machine is too slow for W = {W} us")

    def sleep_into(epoch: int) -> None:
        time.sleep(max(0.0, (epoch * W + W // 20 - now()) / 1e6))

    # The group's hello (the packet is not counted); its entry is installed.
    pair.step(frame(9))
    e = now() // W + 1
    sleep_into(e)
    sent = {a: 9, b: 3, c: 4}  # in epoch e
    send(a, 1, e)
    send(b, 3, e)
    send(a, 8, e)
    send(c, 4, e)
    hold = hold_start(1.0)
    expected = [hold + sent[p] - 1 if p in sent else 0 for p in names]
    assert expected == [9, 3, 4, 0, 0, 0]

    sleep_into(e + 1)
    send(a, 3, e + 1)  # A takes its slot again: its epoch-e words become the previous ones
    send(d, 2, e + 1)
    driver = Bmv2Driver("s1", f"127.0.0.1:{sw.thrift_port}")
    try:
        # N takes C's slot while the driver reads: after the previous-epoch words, before the
        # tags again. C's epoch-e words had not been moved when they were read; the tag
        # changed, so they are read again.
        c_slot = int(stage0[c])
        assert sw.register_at(REG_STAGE_PREV_FP, c_slot) == 0
        calls: list[str] = []
        read_all = driver._api.register_read_all

        def reading(name: str) -> list[int]:
            calls.append(name)
            words = read_all(name)
            if len(calls) == 5:
                send(n, 1, e + 1)
            return words

        driver._api.register_read_all = reading
        got = driver.held_totals(e, flows, stages)
        del driver._api.register_read_all
        assert calls == [REG_STAGE_EPOCH, REG_STAGE_FP, REG_STAGE_TOTAL, REG_STAGE_PREV_FP,
                         REG_STAGE_PREV_TOTAL, REG_STAGE_EPOCH]
        assert sw.register_at(REG_STAGE_PREV_FP, c_slot) != 0
        assert got == expected, dict(zip(names.values(), got, strict=True))
        assert [pair.model.held_total(*f, e) for f in flows] == expected

        send(n, 1, e + 1)
        send(c, 2, e + 1)  # C is held in stage 1 now, behind N
        now_totals = [3, 0, 2, 2, 2, 0]  # epoch e + 1's so far: A, B, C, N, D, E
        for pull in (driver.held_totals, lambda *args: SwitchDriver.held_totals(driver, *args)):
            assert pull(e, flows, stages) == expected
            assert pull(e + 1, flows, stages) == now_totals
        assert [pair.model.held_total(*f, e) for f in flows] == expected
        assert [pair.model.held_total(*f, e + 1) for f in flows] == now_totals
        with pytest.raises(HerdInputError, match="make 16 slots, the switch's program has 14"):
            driver.held_totals(e, flows, (8, 4, 4))
    finally:
        driver.close()
    # A crossed tau_g in epoch e (its counter restarted, its held total did not); no flow
    # was left without a slot; and every register is the model's.
    assert [(m.type, m.count, m.epoch) for m in pair.bmv2_msgs if m.sport == a] == [
        (MessageType.REPORT, 6, e)]
    assert MessageType.OVERFLOW not in {m.type for m in pair.bmv2_msgs}
    pair.assert_registers_match()


def test_load_balancer_matches_the_model(tmp_path: Path) -> None:
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
