"""The switch, controller and coordinator semantics, checked against outcomes worked out by
hand from DESIGN.md."""

from __future__ import annotations

import math
import random
import struct
import zlib

import numpy as np
import pytest

from herd.controller import LocalController, group_entry_nb, hold_start
from herd.coordinator import Coordinator
from herd.hashing import crc32_addr, crc32_flow, flow_key_bytes, flow_slots
from herd.loadbalancer import assign_ingress, ingress_pair
from herd.messages import CpuMessage, MessageType, group_of
from herd.prng import draws, probability_threshold, switch_seed, xorshift32
from herd.switch import Switch, SwitchConfig

FLOW = (0x0A000001, 0x14000002, 1234, 80, 6)  # 10.0.0.1:1234 -> 20.0.0.2:80 TCP
G = group_of(FLOW[0], FLOW[1])


def py_xorshift32(x: int) -> int:
    """Reference written from the definition, to check the compiled one against."""
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


def test_xorshift32_matches_definition_and_known_first_value() -> None:
    assert int(xorshift32(1)) == 270369  # 1 ^ 1<<13 = 8193; 8193 ^ 8193<<5 = 270369
    x = 0xDEADBEEF
    for _ in range(1000):
        nxt = py_xorshift32(x)
        assert int(xorshift32(x)) == nxt
        x = nxt


def test_probability_thresholds_are_exact_at_0_and_1() -> None:
    assert probability_threshold(1.0) == 0xFFFFFFFF
    assert probability_threshold(0.0) == 0
    assert probability_threshold(0.5) == 2147483648
    # xorshift32 never draws 0, and never exceeds 2^32-1: p=0 never fires, p=1 always does.
    assert all(0 < d <= 0xFFFFFFFF for d in draws(12345, 10000))
    with pytest.raises(ValueError):
        probability_threshold(1.5)


def test_switch_seeds_are_distinct_and_nonzero() -> None:
    seeds = {switch_seed(s, sw) for s in range(20) for sw in range(20)}
    assert len(seeds) == 400 and 0 not in seeds


def test_crc32_of_fields_equals_zlib_of_big_endian_bytes() -> None:
    rnd = random.Random(7)
    for _ in range(500):
        salt, src, dst = rnd.randrange(256), rnd.getrandbits(32), rnd.getrandbits(32)
        sport, dport, proto = rnd.getrandbits(16), rnd.getrandbits(16), rnd.getrandbits(8)
        key = struct.pack("!BIIHHB", salt, src, dst, sport, dport, proto)
        assert len(key) == 14  # salt + the 13-byte 5-tuple
        assert int(crc32_flow(salt, src, dst, sport, dport, proto)) == zlib.crc32(key)
        assert int(crc32_addr(salt, src)) == zlib.crc32(struct.pack("!BI", salt, src))


def test_flow_slots_are_salted_crc_mod_stage_size() -> None:
    offsets = np.array([0, 7, 12], dtype=np.int64)
    sizes = np.array([7, 5, 3], dtype=np.int64)
    out = np.zeros(3, dtype=np.int64)
    fp = flow_slots(*FLOW, offsets, sizes, out)
    for i in range(3):
        key = struct.pack("!BIIHHB", 1 + i, *FLOW)
        assert out[i] == offsets[i] + zlib.crc32(key) % sizes[i]
    assert fp == 1 + zlib.crc32(struct.pack("!BIIHHB", 0, *FLOW)) % 0xFFFFFFFF


def test_group_is_the_two_slash8s() -> None:
    assert group_of(0xC0A80101, 0x08080808) == (192 << 8) | 8


def test_group_entry_formula() -> None:
    # tau_g = max(1, ceil(epsilon * T / l_g)), r_g = 1 / l_g as a 32-bit threshold.
    expected = {1: (10, 0xFFFFFFFF), 2: (5, 2147483648), 4: (3, 1073741824), 8: (2, 536870912),
                100: (1, round(0xFFFFFFFF / 100))}
    for l_g, (tau, r) in expected.items():
        assert tuple(int(x) for x in group_entry_nb(0.1, 91, l_g)) == (tau, r)
        assert tau == max(1, math.ceil(0.1 * 91 / l_g))
    assert hold_start(0.2) == 5 and hold_start(1.0) == 1 and hold_start(0.4) == 3


def _switch_with_controller(s: float, epsilon: float, T: int, stages=(4, 2, 1), seed=3):
    sw = Switch(stages)
    ctl = LocalController(0, epsilon, T, s, seed)
    sw.configure(ctl.switch_config())
    return sw, ctl


def test_one_flow_one_switch_s1_lg1_reports_by_hand() -> None:
    """s = 1, epsilon = 0.5, T = 10, l_g = 1: tau = 5, r = 1, hold start = 1.

    packet 1: group miss -> HELLO, not counted; the entry (tau 5, r 1) is installed.
    packet 2: sampled for sure, counter = round(1/s) = 1.
    packets 3..6: counter 2..5; at 5 >= tau: REPORT(count 5), counter = 0.
    packets 7..11: counter 1..5 -> REPORT(5); likewise at 16 and 21.
    """
    sw, ctl = _switch_with_controller(1.0, 0.5, 10)
    coord = Coordinator(switches=1, R=2)
    seed = sw.registers()["prng"]
    out = []
    for i in range(1, 22):
        msg = sw.process(*FLOW)
        if msg is None:
            continue
        out.append((i, msg.type, msg.count))
        if msg.type is MessageType.HELLO:
            assert ctl.on_hello(msg.group)
            answer = coord.on_hello(msg.group, 0)
            assert answer.l_g == 1 and answer.push_to == (0,)
            entry = ctl.on_l_g(msg.group, answer.l_g)
            assert (entry.tau, entry.r_threshold) == (5, 0xFFFFFFFF)
            sw.install_group(entry.g, entry.tau, entry.r_threshold)
    assert out == [(1, MessageType.HELLO, 0), (6, MessageType.REPORT, 5),
                   (11, MessageType.REPORT, 5), (16, MessageType.REPORT, 5),
                   (21, MessageType.REPORT, 5)]
    regs = sw.registers()
    assert (regs["hellos"], regs["reports"], regs["overflows"]) == (1, 4, 0)
    assert regs["occupied"] == regs["peak_occupied"] == 1
    # One sampling flip and one report flip per report: 5 draws of the PRNG.
    assert regs["prng"] == draws(seed, 5)[-1]
    # The coordinator makes it an elephant at its R = 2nd report (packet 11).
    out = coord.on_reports(*_columns([FLOW] * 4), np.zeros(4, np.int64),
                           np.array([6, 11, 16, 21]))
    assert [(e, list(f)) for e, f in out.newly] == [(0, [0])]
    [elephant] = coord.elephants()
    assert (elephant["reports"], elephant["detected_ns"], elephant["epoch"]) == (4, 11, 0)


def test_sampling_and_reporting_follow_the_prng_draws() -> None:
    """s = 0.5 (hold start 2), l_g = 2 (tau = ceil(0.5*12/2) = 3, r = 1/2): replay the
    coin flips by hand from the switch's PRNG seed."""
    sw, ctl = _switch_with_controller(0.5, 0.5, 12, seed=11)
    sw.process(*FLOW)  # hello
    entry = ctl.on_l_g(G, 2)
    assert (entry.tau, entry.r_threshold) == (3, 2147483648)
    sw.install_group(G, entry.tau, entry.r_threshold)
    state = sw.registers()["prng"]
    half = 2147483648
    expected = []
    tracked, count = False, 0
    for i in range(200):
        if not tracked:
            state = py_xorshift32(state)
            if state > half:
                expected.append(None)
                continue
            tracked, count = True, 2
        else:
            count += 1
        if count >= 3:
            crossed, count = count, 0
            state = py_xorshift32(state)
            expected.append(crossed if state <= half else None)
        else:
            expected.append(None)
        del i
    got = []
    for _ in range(200):
        m = sw.process(*FLOW)
        got.append(m.count if m is not None else None)
    assert got == expected
    assert sum(x is not None for x in got) > 10


def test_hello_sent_once_per_group_until_installed() -> None:
    sw, ctl = _switch_with_controller(1.0, 0.5, 10)
    assert sw.process(*FLOW).type is MessageType.HELLO
    other_flow_same_group = (FLOW[0] + 5, FLOW[1] + 9, 1, 2, 17)
    assert sw.process(*other_flow_same_group) is None
    assert sw.process(*FLOW) is None
    assert sw.registers()["hellos"] == 1
    assert sw.registers()["packets"] == 3  # every IPv4 packet ticks the switch's clock
    assert ctl.on_hello(G) is True and ctl.on_hello(G) is False  # controller dedupes too


def test_overflow_when_no_stage_has_room() -> None:
    sw, ctl = _switch_with_controller(1.0, 1.0, 1000, stages=(1,))
    sw.process(*FLOW)
    sw.install_group(G, 100, 0xFFFFFFFF)
    assert sw.process(*FLOW) is None  # takes the only slot
    other = (FLOW[0], FLOW[1], 999, 80, 6)
    m = sw.process(*other)
    assert m is not None and m.type is MessageType.OVERFLOW
    assert sw.registers()["overflows"] == 1
    # policy "reset": the controller resets once, then frees the slot for the next flow
    ctl.overflow_policy = "reset"
    assert ctl.on_overflow() is True and ctl.on_overflow() is False
    sw.reset_tables()
    ctl.on_reset_done()
    assert sw.registers()["occupied"] == 0
    assert sw.process(*other) is None and sw.registers()["occupied"] == 1


def test_sampling_probability_zero_like_never_tracks() -> None:
    sw = Switch((8,))
    sw.configure(SwitchConfig(prng_seed=5, sample_threshold=0, hold_start=1))
    sw.install_group(G, 1, 0xFFFFFFFF)
    assert all(sw.process(*FLOW) is None for _ in range(1000))
    assert sw.registers()["occupied"] == 0


def test_l_g_doubling_sequence() -> None:
    coord = Coordinator(switches=10, R=3)
    g = 0x0A14
    answers = [coord.on_hello(g, sw) for sw in range(10)]
    assert [(a.l_g, a.push_to) for a in answers] == [
        (1, (0,)),
        (2, (0, 1)),  # set reaches 2 = 2*1: l_g = 2, pushed to both
        (2, (2,)),
        (4, (0, 1, 2, 3)),  # 4 = 2*2
        (4, (4,)), (4, (5,)), (4, (6,)),
        (8, (0, 1, 2, 3, 4, 5, 6, 7)),  # 8 = 2*4
        (8, (8,)), (8, (9,)),
    ]
    assert coord.on_hello(g, 3).l_g == 8  # a repeated hello changes nothing
    assert coord.groups_of(3) == {g: 8}


def _columns(flows: list[tuple[int, ...]]) -> tuple[np.ndarray, ...]:
    return tuple(np.array(c, dtype=np.int64) for c in zip(*flows, strict=True))


def test_reports_batches_detect_at_the_rth_report_per_epoch() -> None:
    """R = 3 over two batches: A and B become elephants at their third report of epoch 0;
    a report of A in epoch 1 counts there, not in epoch 0."""
    A, B = FLOW, (FLOW[0] + 1, *FLOW[1:])
    coord = Coordinator(switches=2, R=3)
    first = coord.on_reports(*_columns([A, B, A, A]), np.array([0, 0, 0, 1]),
                             np.array([10, 11, 12, 13]))
    assert first.newly == []
    second = coord.on_reports(*_columns([B, A, B, B]), np.zeros(4, np.int64),
                              np.array([14, 15, 16, 17]))
    assert [(e, sorted(f.tolist())) for e, f in second.newly] == [(0, [0, 1])]
    got = {(x["src"], x["epoch"]): (x["reports"], x["detected_ns"])
           for x in coord.elephants()}
    assert got == {(A[0], 0): (3, 15), (B[0], 0): (4, 16)}
    assert coord.elephants(epoch=1) == []


def test_cpu_message_roundtrip_and_errors() -> None:
    m = CpuMessage(MessageType.REPORT, *FLOW, 77, epoch=0x01020304)
    raw = m.pack()
    assert len(raw) == 22
    assert raw == bytes([2]) + struct.pack("!IIHHBII", *FLOW, 77, 0x01020304)
    assert CpuMessage.unpack(raw) == m
    assert CpuMessage.unpack(CpuMessage(MessageType.HELLO, *FLOW, 0).pack()).epoch == 0
    with pytest.raises(ValueError, match="too short"):
        CpuMessage.unpack(raw[:10])
    with pytest.raises(ValueError, match="unknown type 9"):
        CpuMessage.unpack(bytes([9]) + raw[1:])


def test_load_balancer_pairs_and_probability() -> None:
    rnd = np.random.default_rng(3)
    src = rnd.integers(0, 2**32, 20000, dtype=np.uint64).astype(np.uint32)
    for k in (1, 2, 10):
        for a in src[:200]:
            p, s = ingress_pair(int(a), k)
            assert 0 <= p < k and 0 <= s < k and (p != s or k == 1)
    ing = assign_ingress(src, 10, probability_threshold(0.95), 99)
    primary = np.array([ingress_pair(int(a), 10)[0] for a in src])
    assert abs(np.mean(ing == primary) - 0.95) < 0.01
    assert np.array_equal(ing, assign_ingress(src, 10, probability_threshold(0.95), 99))
    assert np.all(assign_ingress(src, 10, probability_threshold(1.0), 99) == primary)


def crc32_by_definition(data: bytes) -> int:
    """CRC-32 as BMv2's ``crc32`` calculation defines it: polynomial 0x04C11DB7 processed
    bit-reflected, initial value 0xFFFFFFFF, final xor 0xFFFFFFFF; bit by bit."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xEDB88320 if crc & 1 else crc >> 1  # 0xEDB88320 = reflected poly
    return crc ^ 0xFFFFFFFF


def test_hash_vectors_from_bmv2_crc32_definition() -> None:
    assert crc32_by_definition(b"123456789") == 0xCBF43926  # the standard check value
    # {salt, srcAddr, dstAddr, srcPort, dstPort, protocol}, packed big-endian: 14 bytes.
    vectors = [
        ((1, 0x0A000001, 0x14000002, 1234, 80, 6), "010a0000011400000204d2005006", 0x0FC8086C),
        ((0, 0xC0A80001, 0x08080808, 53, 53, 17), "00c0a80001080808080035003511", 0xE591FBD3),
    ]
    for fields, packed, crc in vectors:
        assert flow_key_bytes(*fields).hex() == packed
        assert crc32_by_definition(bytes.fromhex(packed)) == crc
        assert int(crc32_flow(*fields)) == crc
    # the load balancer's {salt, srcAddr}
    assert crc32_by_definition(bytes.fromhex("400a000001")) == 0x866B7FA6
    assert int(crc32_addr(0x40, 0x0A000001)) == 0x866B7FA6


# ------------------------------------------------------------------ held totals (confirm)


def _epoch_snapshot(sw: Switch, epoch: int) -> dict[int, int]:
    """Fingerprint -> held total of the slots written in ``epoch``, read off the table."""
    live = (sw.epochs == epoch) & (sw.fps != 0)
    return dict(zip(sw.fps[live].tolist(), sw.totals[live].tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_held_totals_of_an_epoch_survive_the_next_one(seed: int) -> None:
    """Pulled at any time during epoch e + 1, a flow's held total of epoch e is its total at
    the end of e, though new flows take its slot; and during e + 2 a slot taken again reads
    as unknown, never as a wrong number."""
    rng = random.Random(seed)
    sw = Switch((6, 3, 2))
    sw.configure(SwitchConfig(switch_seed(seed, 0), probability_threshold(0.5), 2))
    flows = [(0x0A000000 + i, 0x14000000 + i, 1000 + i, 80, 6) for i in range(40)]
    for g in {group_of(f[0], f[1]) for f in flows}:
        sw.install_group(g, 1 << 30, 0)  # never reports: only the tables matter here
    slots = np.zeros(3, np.int64)
    offsets, sizes = sw.stage_offsets, sw.stage_sizes
    fps = [flow_slots(*f, offsets, sizes, slots) for f in flows]
    ended: dict[int, int] = {}  # the last epoch's totals at its end
    at_end: list[dict[int, int]] = []
    for e in range(4):
        for _half in range(2):
            for _ in range(75):
                sw.process(*rng.choice(flows[: 12 + 7 * e]), epoch=e)
            if e:  # in epoch e, halfway and at its end: pull epoch e - 1
                got = [sw.held_total(*f, e - 1) for f in flows]
                assert got == [ended.get(fp, 0) for fp in fps]
                assert max(got) > 0
        ended = _epoch_snapshot(sw, e)
        at_end.append(ended)
    moved = sum(1 for i in range(len(sw.epochs)) if sw.epochs[i] == 3 and sw.prev_fps[i])
    assert moved > 0  # slots were taken from the previous epoch's flows
    # Two epochs on, a slot taken again is unknown; a total given is still epoch 1's.
    late = [sw.held_total(*f, 1) for f in flows]
    assert -1 in late
    assert all(t == at_end[1].get(fp, 0) for t, fp in zip(late, fps, strict=True) if t != -1)


def test_held_total_counts_hold_start_and_every_later_packet() -> None:
    sw = Switch((8, 4, 2))
    sw.configure(SwitchConfig(1, probability_threshold(1.0), 5))
    a = (0x0A000001, 0x14000001, 1, 2, 6)
    sw.install_group(group_of(a[0], a[1]), 3, probability_threshold(1.0))
    messages = [sw.process(*a) for _ in range(7)]
    # The counter restarts at each tau crossing (5, then 3 more, twice); the held total
    # does not.
    assert [m.count for m in messages if m] == [5, 3, 3]
    assert sw.held_total(*a, 0) == 5 + 6
    assert sw.held_total(*a, 1) == 0  # no packet of epoch 1 yet
    sw.reset_tables()
    assert sw.held_total(*a, 0) == 0
