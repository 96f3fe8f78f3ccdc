"""Synthetic traces: frames valid on the wire, deterministic, calibrated to the CAIDA facts."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, in4_chksum
from scapy.layers.l2 import Ether
from scapy.utils import PcapReader, checksum

from herd.errors import HerdInputError
from herd.groundtruth import threshold
from herd.pcapwrite import FRAME_LEN, IP_TOTAL_LEN, write_pcap
from herd.synth import (
    CAIDA_FLOWS,
    SynthPackets,
    default_flows,
    synthesize,
    trace_stats,
    write_synthetic_pcap,
)


def _flow_counts(sp: SynthPackets) -> np.ndarray:
    """Packets per distinct 5-tuple, computed independently of herd.synth."""
    rows = np.rec.fromarrays([sp.src, sp.dst, sp.sport, sp.dport, sp.proto])
    _, counts = np.unique(rows, return_counts=True)
    return counts


def _read(path: Path) -> list:
    with PcapReader(str(path)) as reader:
        return list(reader)


def _check_frames(path: Path, ts_ns, src, dst, sport, dport, proto) -> None:
    """Every frame parses, carries the given fields and has correct checksums."""
    frames = _read(path)
    assert len(frames) == len(ts_ns)
    for i, pkt in enumerate(frames):
        raw = bytes(pkt)
        assert len(raw) == FRAME_LEN
        assert pkt.haslayer(Ether) and pkt[Ether].type == 0x0800
        ip = pkt[IP]
        assert (ip.version, ip.ihl, ip.ttl) == (4, 5, 64)
        assert ip.len == IP_TOTAL_LEN == len(raw) - 14  # IP length = bytes written
        assert ip.src == _dotted(src[i]) and ip.dst == _dotted(dst[i])
        assert ip.proto == proto[i]
        # IPv4 checksum: scapy recomputes it when the field is deleted.
        fresh = ip.copy()
        del fresh.chksum
        assert IP(bytes(fresh)).chksum == ip.chksum
        l4 = bytearray(raw[34:])
        if proto[i] == 6:
            assert pkt.haslayer(TCP)
            tcp = pkt[TCP]
            assert (tcp.sport, tcp.dport) == (sport[i], dport[i])
            assert tcp.flags == "A" and tcp.dataofs == 5
            l4[16:18] = b"\0\0"
            assert in4_chksum(6, ip, bytes(l4)) == tcp.chksum
        elif proto[i] == 17:
            assert pkt.haslayer(UDP)
            udp = pkt[UDP]
            assert (udp.sport, udp.dport) == (sport[i], dport[i])
            assert udp.len == len(l4)
            l4[6:8] = b"\0\0"
            assert (in4_chksum(17, ip, bytes(l4)) or 0xFFFF) == udp.chksum
        elif proto[i] == 1:
            assert pkt.haslayer(ICMP)
            icmp = pkt[ICMP]
            assert (icmp.type, icmp.code) == (8, 0)
            l4[2:4] = b"\0\0"
            assert checksum(bytes(l4)) == icmp.chksum
        assert int(pkt.time * 1_000_000_000) == ts_ns[i]


def _dotted(a: int) -> str:
    a = int(a)
    return f"{a >> 24}.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}"


# --- the written frames ------------------------------------------------------------------


def test_synthetic_pcap_reads_back_in_scapy(tmp_path: Path) -> None:
    # 20k packets gives a few ICMP flows as well as TCP and UDP ones; read back a sample of each.
    sp = synthesize(20_000, seed=7)
    assert {1, 6, 17} <= set(np.unique(sp.proto).tolist())
    pick = np.concatenate(
        [np.arange(400), np.flatnonzero(sp.proto == 1)[:50], np.flatnonzero(sp.proto == 17)[:100]]
    )
    cols = [c[pick] for c in (sp.ts_ns, sp.src, sp.dst, sp.sport, sp.dport, sp.proto)]
    path = tmp_path / "s.pcap"
    write_pcap(path, *cols)
    _check_frames(path, *cols)


def test_write_pcap_edge_values_and_nanoseconds(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 200
    proto = rng.choice(np.array([6, 17, 1], dtype=np.uint8), size=n)
    proto[:3] = 6
    src = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.uint32)
    src[0], dst[0] = 0xFFFFFFFF, 0  # extremes of the checksum arithmetic
    sport = rng.integers(0, 1 << 16, size=n).astype(np.uint16)
    dport = rng.integers(0, 1 << 16, size=n).astype(np.uint16)
    sport[1], dport[1] = 65535, 65535
    sport[proto == 1] = 0
    dport[proto == 1] = 0
    # Unsorted, sub-microsecond timestamps: kept exactly by a nanosecond file.
    ts = rng.integers(1_000_000_000_000_000_000, 1_700_000_000_000_000_000, size=n)
    path = tmp_path / "ns.pcap"
    write_pcap(path, ts, src, dst, sport, dport, proto, nanosecond=True)
    assert path.read_bytes()[:4] == bytes.fromhex("4d3cb2a1")
    _check_frames(path, ts, src, dst, sport, dport, proto)

    # A microsecond file truncates to whole microseconds.
    path_us = tmp_path / "us.pcap"
    write_pcap(path_us, ts, src, dst, sport, dport, proto)
    assert path_us.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    _check_frames(path_us, ts // 1000 * 1000, src, dst, sport, dport, proto)


def test_other_protocols_get_a_bare_valid_ip_packet(tmp_path: Path) -> None:
    path = tmp_path / "gre.pcap"
    write_pcap(path, [5_000], [0x01020304], [0x05060708], [1], [2], [47])
    (pkt,) = _read(path)
    assert pkt[IP].proto == 47 and pkt[IP].len == IP_TOTAL_LEN
    fresh = pkt[IP].copy()
    del fresh.chksum
    assert IP(bytes(fresh)).chksum == pkt[IP].chksum


def test_ip_id_and_tcp_ack_advance_within_a_flow(tmp_path: Path) -> None:
    n = 5
    path = tmp_path / "f.pcap"
    write_pcap(
        path,
        np.arange(n) * 1000,
        np.full(n, 0x0A000001),
        np.full(n, 0x0B000001),
        np.full(n, 40000),
        np.full(n, 443),
        np.full(n, 6),
    )
    frames = _read(path)
    ids = [p[IP].id for p in frames]
    assert [(b - a) % 65536 for a, b in zip(ids, ids[1:], strict=False)] == [1] * (n - 1)
    assert len({p[TCP].seq for p in frames}) == 1
    acks = [p[TCP].ack for p in frames]
    assert [(b - a) % (1 << 32) for a, b in zip(acks, acks[1:], strict=False)] == [2896] * (n - 1)


def test_empty_pcap_is_just_a_header(tmp_path: Path) -> None:
    path = tmp_path / "e.pcap"
    write_pcap(path, [], [], [], [], [], [])
    assert len(path.read_bytes()) == 24
    assert _read(path) == []


def test_write_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "a.pcap"
    path.write_bytes(b"old")
    write_synthetic_pcap(path, 1000, seed=2)
    assert path.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    assert sorted(os.listdir(tmp_path)) == ["a.pcap"]  # no temporary file left behind
    with pytest.raises(OSError):
        write_synthetic_pcap(tmp_path / "missing" / "b.pcap", 100)
    assert sorted(os.listdir(tmp_path)) == ["a.pcap"]


# --- determinism -------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_different(tmp_path: Path) -> None:
    def digest(name: str, seed: int) -> str:
        path = tmp_path / name
        write_synthetic_pcap(path, 20_000, seed=seed)
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert digest("a.pcap", 1) == digest("b.pcap", 1)
    assert digest("c.pcap", 2) != digest("a.pcap", 1)


# --- shape of the trace ------------------------------------------------------------------


def test_trace_shape() -> None:
    sp = synthesize(50_000, seed=4, rate_pps=25_000.0, start_ns=10**18)
    n = len(sp)
    assert n == 50_000
    for col, dtype in (
        (sp.ts_ns, np.int64),
        (sp.src, np.uint32),
        (sp.dst, np.uint32),
        (sp.sport, np.uint16),
        (sp.dport, np.uint16),
        (sp.proto, np.uint8),
    ):
        assert col.dtype == dtype and len(col) == n
    assert np.all(np.diff(sp.ts_ns) >= 0)  # time-sorted
    assert np.all(sp.ts_ns % 1000 == 0)  # whole microseconds
    assert sp.ts_ns[0] >= 10**18 and sp.ts_ns[-1] <= 10**18 + 2 * 10**9  # 50k at 25k/s = 2 s
    assert sp.ts_ns[-1] - sp.ts_ns[0] > 1.9e9
    assert len(_flow_counts(sp)) == default_flows(50_000)  # flows exactly, 5-tuples unique
    icmp = sp.proto == 1
    assert np.all(sp.sport[icmp] == 0) and np.all(sp.dport[icmp] == 0)
    # Unicast, non-private, non-loopback /8s on both sides.
    for col in (sp.src, sp.dst):
        first = col >> 24
        assert first.min() >= 1 and first.max() <= 223
        assert not np.isin(first, [10, 127]).any()
    # Well-known server ports on one side of most TCP flows.
    tcp = sp.proto == 6
    low = np.minimum(sp.sport[tcp], sp.dport[tcp])
    assert np.mean(np.isin(low, [80, 443])) > 0.6


@pytest.mark.parametrize(
    ("packets", "flows"), [(1, None), (1, 1), (10, 10), (10, 1), (1000, 999), (7, None)]
)
def test_exact_packet_and_flow_counts_at_the_edges(packets: int, flows: int | None) -> None:
    sp = synthesize(packets, flows, seed=5)
    assert len(sp) == packets
    assert len(_flow_counts(sp)) == (default_flows(packets) if flows is None else flows)


def test_calibration_at_400k_packets() -> None:
    sp = synthesize(400_000)
    counts = _flow_counts(sp)
    assert abs(len(counts) - CAIDA_FLOWS) <= 0.10 * CAIDA_FLOWS
    groups = len(np.unique(((sp.src >> 24).astype(np.uint32) << 8) | (sp.dst >> 24)))
    assert abs(groups - 3434) <= 0.25 * 3434
    assert abs(threshold(counts, 99.0) - 91) <= 0.20 * 91
    assert abs(threshold(counts, 99.9) - 470) <= 0.30 * 470
    stats = trace_stats(sp)
    assert stats.flows == len(counts) and stats.groups == groups
    assert stats.p99 == threshold(counts, 99.0)
    assert stats.tcp_flows > 0.8 * stats.flows
    assert 0 < stats.icmp_flows < stats.udp_flows < stats.tcp_flows
    assert 0.3 < stats.duration_s / 4.0 <= 1.0  # 400k packets at the default 100k/s


# --- bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"packets": 0}, "packets"),
        ({"packets": -5}, "packets"),
        ({"packets": 2.5}, "packets"),
        ({"packets": True}, "packets"),
        ({"packets": 10, "flows": 0}, "flows"),
        ({"packets": 10, "flows": 11}, "flows"),
        ({"packets": 10, "seed": -1}, "seed"),
        ({"packets": 10, "rate_pps": 0.0}, "rate_pps"),
        ({"packets": 10, "rate_pps": -3.0}, "rate_pps"),
        ({"packets": 10, "rate_pps": float("nan")}, "rate_pps"),
        ({"packets": 10, "rate_pps": 1e-12}, "rate_pps"),
        ({"packets": 10, "rate_pps": "fast"}, "rate_pps"),
        ({"packets": 10, "start_ns": -1}, "start_ns"),
        ({"packets": 10, "start_ns": 2**62}, "start_ns"),
    ],
)
def test_synthesize_rejects_bad_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(HerdInputError) as err:
        synthesize(**kwargs)
    message = str(err.value)
    assert message.startswith(f"{field}:") and "\n" not in message


@pytest.mark.parametrize(
    ("cols", "kw", "field"),
    [
        (([1, 2], [1], [1], [1], [1], [6]), {}, "src"),
        (([1], [1], [1], [1], [1], [6, 6]), {}, "proto"),
        (([-1], [1], [1], [1], [1], [6]), {}, "ts_ns"),
        (([2**62 * 2 - 1], [1], [1], [1], [1], [6]), {}, "ts_ns"),
        (([1], [2**32], [1], [1], [1], [6]), {}, "src"),
        (([1], [1], [-1], [1], [1], [6]), {}, "dst"),
        (([1], [1], [1], [65536], [1], [6]), {}, "sport"),
        (([1], [1], [1], [1], [1], [256]), {}, "proto"),
        (([1], [1.5], [1], [1], [1], [6]), {}, "src"),
        (([[1]], [[1]], [[1]], [[1]], [[1]], [[6]]), {}, "ts_ns"),
        (([1], [1], [1], [1], [1], [6]), {"src_mac": b"\x01"}, "src_mac"),
        (([1], [1], [1], [1], [1], [6]), {"dst_mac": "aa:bb"}, "dst_mac"),
    ],
)
def test_write_pcap_rejects_bad_input(tmp_path: Path, cols: tuple, kw: dict, field: str) -> None:
    path = tmp_path / "bad.pcap"
    with pytest.raises(HerdInputError) as err:
        write_pcap(path, *cols, **kw)
    assert str(err.value).startswith(f"{field}:")
    assert not path.exists() and os.listdir(tmp_path) == []
