"""Trace ingest: pcap / pcapng parsing against crafted bytes and scapy's own parse, the cache,
ingress merging and trace_info."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import mmap
import os
import random
import struct
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from scapy.all import (
    ARP,
    ICMP,
    IP,
    TCP,
    UDP,
    CookedLinux,
    Dot1AD,
    Dot1Q,
    Ether,
    IPv6,
    Loopback,
    PcapNgWriter,
    PcapWriter,
    Raw,
    rdpcap,
    wrpcap,
)
from scapy.layers.l2 import CookedLinuxV2
from scapy.layers.sctp import SCTP

import herd.capture as capture_mod
import herd.flowtable as flowtable_mod
import herd.trace as trace_mod
import herd.tracecache as cache_mod
from herd.errors import HerdInputError
from herd.groundtruth import threshold
from herd.trace import Trace, format_trace_info, load_ingress_traces, load_trace, trace_info

DATA = Path(__file__).parents[2] / "shared" / "data"
CAIDA_PCAP = DATA / "caida2016-500.pcap"
CAIDA_PCAPNG = DATA / "caida2018-sample.pcapng"

PORTED = (6, 17, 132, 136)
T0 = 1_500_000_000  # a timestamp in seconds, for crafted captures


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "herd-cache"
    monkeypatch.setenv("HERD_CACHE_DIR", str(d))
    return d


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference capture {path} is absent (expected in /work/shared/data)")
    return path


# --------------------------------------------------------------------------------------------
# helpers: write captures byte by byte, and parse them with scapy for reference
# --------------------------------------------------------------------------------------------


def pcap_bytes(
    records: list[tuple[int, int, bytes] | tuple[int, int, bytes, int]],
    *,
    linktype: int = 1,
    nano: bool = False,
    endian: str = "<",
    snaplen: int = 65535,
) -> bytes:
    """A pcap file: records are (seconds, fraction, captured bytes[, original length])."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for rec in records:
        sec, frac, data = rec[0], rec[1], rec[2]
        orig = rec[3] if len(rec) > 3 else len(data)  # type: ignore[misc]
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(btype: int, body: bytes, e: str = "<") -> bytes:
    body = pad4(body)
    n = len(body) + 12
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str = "<") -> bytes:
    return block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1), e)


def opt(code: int, value: bytes, e: str = "<") -> bytes:
    return struct.pack(e + "HH", code, len(value)) + pad4(value)


def idb(linktype: int, e: str = "<", tsresol: int | None = None, tsoffset: int | None = None):
    opts = opt(2, b"if-name", e)
    if tsresol is not None:
        opts += opt(9, bytes([tsresol]), e)
    if tsoffset is not None:
        opts += opt(14, struct.pack(e + "q", tsoffset), e)
    opts += struct.pack(e + "HH", 0, 0)
    return block(1, struct.pack(e + "HHI", linktype, 0, 65535) + opts, e)


def epb(iface: int, ts: int, data: bytes, e: str = "<", caplen: int | None = None) -> bytes:
    cap = len(data) if caplen is None else caplen
    head = struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, cap, len(data))
    return block(6, head + pad4(data) + opt(1, b"a comment", e) + b"\0\0\0\0", e)


def spb(data: bytes, e: str = "<") -> bytes:
    return block(3, struct.pack(e + "I", len(data)) + data, e)


def obsolete_pb(iface: int, ts: int, data: bytes, e: str = "<") -> bytes:
    head = struct.pack(e + "HHIIII", iface, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return block(2, head + data, e)


def tcp(src: str, dst: str, sport: int, dport: int) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport)


def ip_int(a: str) -> int:
    return struct.unpack("!I", bytes(int(x) for x in a.split(".")))[0]


def tup(src: str, dst: str, sport: int, dport: int, proto: int) -> tuple[int, ...]:
    return (ip_int(src), ip_int(dst), sport, dport, proto)


def tuples(t: Trace) -> list[tuple[int, ...]]:
    return list(
        zip(
            t.src.tolist(),
            t.dst.tolist(),
            t.sport.tolist(),
            t.dport.tolist(),
            t.proto.tolist(),
            strict=True,
        )
    )


def flow_table(t: Trace) -> list[tuple[int, ...]]:
    return list(
        zip(
            t.flow_src.tolist(),
            t.flow_dst.tolist(),
            t.flow_sport.tolist(),
            t.flow_dport.tolist(),
            t.flow_proto.tolist(),
            strict=True,
        )
    )


def scapy_reference(path: Path) -> tuple[list[int], list[tuple[int, ...]], int]:
    """(ns timestamps, 5-tuples) of the IPv4 packets as scapy dissects the file, and how
    many packets are not IPv4."""
    ts: list[int] = []
    five: list[tuple[int, ...]] = []
    other = 0
    for pkt in rdpcap(str(path)):
        ip = pkt.getlayer(IP)
        if ip is None:
            other += 1
            continue
        sport = dport = 0
        if ip.frag == 0 and ip.proto in PORTED:
            l4 = ip.payload
            if isinstance(l4, TCP | UDP | SCTP):
                sport, dport = l4.sport, l4.dport
            else:
                raw = bytes(l4)
                if len(raw) >= 4:
                    sport, dport = struct.unpack("!HH", raw[:4])
        ts.append(int(Decimal(pkt.time) * 1_000_000_000))
        five.append((ip_int(ip.src), ip_int(ip.dst), sport, dport, ip.proto))
    return ts, five, other


def check_against_scapy(t: Trace, path: Path) -> None:
    ts, five, other = scapy_reference(path)
    assert t.packets == len(five)
    assert tuples(t) == five
    assert t.ts_ns.tolist() == ts
    assert t.skipped_non_ipv4 == other
    assert t.skipped_malformed == 0
    # flows numbered by first appearance
    first = list(dict.fromkeys(five))
    assert flow_table(t) == first
    index = {k: i for i, k in enumerate(first)}
    assert t.flow.tolist() == [index[k] for k in five]
    check_dtypes(t)


def check_dtypes(t: Trace) -> None:
    expected = {
        "ts_ns": np.int64,
        "src": np.uint32,
        "dst": np.uint32,
        "sport": np.uint16,
        "dport": np.uint16,
        "proto": np.uint8,
        "ingress": np.int16,
        "flow": np.int32,
    }
    for name, dtype in expected.items():
        a = getattr(t, name)
        assert a.dtype == dtype, name
        assert a.shape == (t.packets,), name
    for name in ("src", "dst", "sport", "dport", "proto"):
        a = getattr(t, "flow_" + name)
        assert a.dtype == expected[name] and a.shape == (t.flows,), name


# --------------------------------------------------------------------------------------------
# real captures
# --------------------------------------------------------------------------------------------


def test_caida_pcap_matches_scapy() -> None:
    path = need(CAIDA_PCAP)
    t = load_trace(path)
    check_against_scapy(t, path)
    assert t.packets == 500 and t.skipped == 0
    assert t.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert t.paths == (str(path),)
    assert (t.ingress == -1).all()


def test_caida_pcapng_matches_scapy() -> None:
    path = need(CAIDA_PCAPNG)
    t = load_trace(path)
    check_against_scapy(t, path)
    assert t.packets == 1000 and t.skipped == 0
    assert t.digest == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("path", [CAIDA_PCAP, CAIDA_PCAPNG], ids=["pcap", "pcapng"])
def test_tiny_chunks_and_growth_give_the_same_trace(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records straddling every chunk boundary, a buffer smaller than one record, output
    arrays that must grow: the same trace as one big read."""
    need(path)
    whole = load_trace(path, use_cache=False)
    monkeypatch.setattr(capture_mod, "CHUNK_BYTES", 97)
    monkeypatch.setattr(capture_mod, "PARSE_CHUNK_PACKETS", 3)  # chunks end inside flows
    small = load_trace(path, use_cache=False)
    for name in ("ts_ns", "src", "dst", "sport", "dport", "proto", "flow", "flow_src"):
        assert np.array_equal(getattr(whole, name), getattr(small, name)), name
    assert small.digest == whole.digest


def test_gzip_capture_is_read_and_hashed_as_stored(tmp_path: Path) -> None:
    path = need(CAIDA_PCAP)
    gz = write(tmp_path / "c.pcap.gz", gzip.compress(path.read_bytes()))
    t, plain = load_trace(gz), load_trace(path)
    assert tuples(t) == tuples(plain) and t.ts_ns.tolist() == plain.ts_ns.tolist()
    assert t.digest == hashlib.sha256(gz.read_bytes()).hexdigest()
    # several gzip members one after another (concatenated .gz files) are one stream
    raw = path.read_bytes()
    multi = write(tmp_path / "m.pcap.gz", gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    assert tuples(load_trace(multi)) == tuples(plain)


def test_gzip_capture_cut_short_keeps_what_was_decoded(tmp_path: Path) -> None:
    path = need(CAIDA_PCAP)
    packed = gzip.compress(path.read_bytes())
    gz = write(tmp_path / "cut.pcap.gz", packed[: len(packed) * 6 // 10])
    t, plain = load_trace(gz), load_trace(path)
    assert 0 < t.packets < plain.packets
    assert t.skipped_malformed <= 1 and t.skipped_non_ipv4 == 0
    assert tuples(t) == tuples(plain)[: t.packets]
    assert t.digest == hashlib.sha256(gz.read_bytes()).hexdigest()


def test_corrupt_gzip_is_an_error(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(need(CAIDA_PCAP).read_bytes()))
    packed[len(packed) // 2 : len(packed) // 2 + 64] = b"\xff" * 64
    gz = write(tmp_path / "bad.pcap.gz", bytes(packed))
    with pytest.raises(HerdInputError, match=r"bad\.pcap\.gz: "):
        load_trace(gz)
    not_gzip = write(tmp_path / "fake.pcap.gz", b"\x1f\x8b" + b"\x00" * 40)
    with pytest.raises(HerdInputError, match=r"fake\.pcap\.gz: cannot decompress"):
        load_trace(not_gzip)


# --------------------------------------------------------------------------------------------
# pcap variants
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nano", [False, True], ids=["usec", "nsec"])
@pytest.mark.parametrize("endian", ["<", ">"], ids=["little", "big"])
def test_pcap_resolutions_and_byte_orders(tmp_path: Path, nano: bool, endian: str) -> None:
    path = tmp_path / "t.pcap"
    pkts = [
        Ether() / tcp("10.0.0.1", "192.168.1.2", 1234, 80),
        Ether() / IP(src="172.16.5.4", dst="8.8.8.8") / UDP(sport=5353, dport=53),
        Ether() / tcp("10.0.0.1", "192.168.1.2", 1234, 80),
    ]
    # (seconds, fraction) given explicitly: scapy would round a Decimal time through float
    stamps = [(T0, 1), (T0, 123456), (1_600_000_000, 999999)]
    if nano:
        stamps = [(T0, 1), (T0, 123456789), (1_600_000_000, 999999999)]
    with PcapWriter(str(path), nano=nano, endianness=endian, linktype=1) as w:
        w.write_header(pkts[0])
        for p, (sec, frac) in zip(pkts, stamps, strict=True):
            w.write_packet(p, sec=sec, usec=frac)
    assert path.read_bytes()[:4] == struct.pack(endian + "I", 0xA1B23C4D if nano else 0xA1B2C3D4)
    t = load_trace(path)
    check_against_scapy(t, path)
    assert t.ts_ns.tolist() == [sec * 10**9 + frac * (1 if nano else 1000) for sec, frac in stamps]
    assert t.flows == 2 and t.flow.tolist() == [0, 1, 0]
    assert tuples(t)[1] == tup("172.16.5.4", "8.8.8.8", 5353, 53, 17)


def test_protocols_ports_and_fragments(tmp_path: Path) -> None:
    """Ports for TCP, UDP, SCTP and UDP-Lite only; none for ICMP, GRE or later fragments."""
    a, b = "1.1.1.1", "2.2.2.2"
    pkts = [
        IP(src=a, dst=b) / TCP(sport=1, dport=2),
        IP(src=a, dst=b) / UDP(sport=3, dport=4),
        IP(src=a, dst=b) / SCTP(sport=5, dport=6),
        IP(src=a, dst=b, proto=136) / Raw(struct.pack("!HH", 7, 8) + b"\0" * 4),  # UDP-Lite
        IP(src=a, dst=b) / ICMP(type=8, id=0x1234, seq=0x5678),
        IP(src=a, dst=b, proto=47) / Raw(b"\x12\x34\x56\x78" * 2),  # GRE: bytes, no ports
        IP(src=a, dst=b, flags="MF", frag=0) / UDP(sport=9, dport=10) / Raw(b"x" * 16),
        IP(src=a, dst=b, frag=3, proto=17) / Raw(b"\x00\x09\x00\x0a" * 4),  # later fragment
    ]
    path = tmp_path / "p.pcap"
    wrpcap(str(path), [Ether() / p for p in pkts])
    t = load_trace(path)
    check_against_scapy(t, path)
    assert [(s, d) for _, _, s, d, _ in tuples(t)] == [
        (1, 2),
        (3, 4),
        (5, 6),
        (7, 8),
        (0, 0),
        (0, 0),
        (9, 10),
        (0, 0),
    ]
    assert t.proto.tolist() == [6, 17, 132, 136, 1, 47, 17, 17]
    # the later fragment is a flow of its own (ports 0), counted like any packet
    assert t.flows == 8 and t.skipped == 0


def test_vlan_qinq_and_non_ipv4_skipped(tmp_path: Path) -> None:
    a, b = "10.1.2.3", "10.4.5.6"
    eth = Ether(src="00:00:00:00:00:01", dst="00:00:00:00:00:02")
    pkts = [
        eth / Dot1Q(vlan=10) / tcp(a, b, 1000, 443),
        eth / Dot1AD(vlan=20) / Dot1Q(vlan=30) / IP(src=a, dst=b) / UDP(sport=1, dport=2),
        eth / Dot1Q(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / ICMP_packet(a, b),
        eth / IPv6() / TCP(sport=1, dport=2),
        eth / ARP(),
        eth / Dot1Q(vlan=5) / IPv6() / UDP(),
        eth / tcp(b, a, 443, 1000),
    ]
    path = tmp_path / "v.pcap"
    wrpcap(str(path), pkts)
    t = load_trace(path)
    check_against_scapy(t, path)
    assert tuples(t) == [
        tup(a, b, 1000, 443, 6),
        tup(a, b, 1, 2, 17),
        tup(a, b, 0, 0, 1),
        tup(b, a, 443, 1000, 6),
    ]
    assert t.skipped_non_ipv4 == 3 and t.skipped_malformed == 0


def ICMP_packet(a: str, b: str) -> IP:  # noqa: N802 - reads like the scapy layers around it
    return IP(src=a, dst=b) / ICMP()


def test_legacy_9100_vlan_tag(tmp_path: Path) -> None:
    inner = bytes(tcp("3.3.3.3", "4.4.4.4", 10, 20))
    frame = b"\x02" * 12 + b"\x91\x00\x00\x07" + b"\x81\x00\x00\x08" + b"\x08\x00" + inner
    t = load_trace(write(tmp_path / "q.pcap", pcap_bytes([(T0, 0, frame)])))
    assert tuples(t) == [tup("3.3.3.3", "4.4.4.4", 10, 20, 6)]


@pytest.mark.parametrize("linktype", [101, 228, 12, 14])
def test_raw_ip_link_types(tmp_path: Path, linktype: int) -> None:
    v4 = bytes(IP(src="5.5.5.5", dst="6.6.6.6") / UDP(sport=53, dport=5353))
    v6 = bytes(IPv6() / UDP())
    recs = [(T0, 1, v4), (T0, 2, v6), (T0, 3, v4)]
    t = load_trace(write(tmp_path / "r.pcap", pcap_bytes(recs, linktype=linktype)))
    assert tuples(t) == [tup("5.5.5.5", "6.6.6.6", 53, 5353, 17)] * 2
    assert t.ts_ns.tolist() == [T0 * 10**9 + 1000, T0 * 10**9 + 3000]
    if linktype == 228:  # LINKTYPE_IPV4 holds IPv4 only: anything else is a bad header
        assert (t.skipped_non_ipv4, t.skipped_malformed) == (0, 1)
    else:
        assert (t.skipped_non_ipv4, t.skipped_malformed) == (1, 0)


def test_linux_cooked_captures(tmp_path: Path) -> None:
    for linktype, layer in ((113, CookedLinux(proto=0x0800)), (276, CookedLinuxV2(proto=0x0800))):
        frame = bytes(layer / tcp("7.7.7.7", "8.8.8.8", 22, 2222))
        arp = bytes(CookedLinux(proto=0x0806) / ARP()) if linktype == 113 else None
        recs = [(T0, 0, frame)] + ([(T0, 1, arp)] if arp else [])
        t = load_trace(write(tmp_path / f"sll{linktype}.pcap", pcap_bytes(recs, linktype=linktype)))
        assert tuples(t) == [tup("7.7.7.7", "8.8.8.8", 22, 2222, 6)], linktype
        assert t.skipped_non_ipv4 == (1 if arp else 0)


def test_bsd_loopback(tmp_path: Path) -> None:
    v4 = bytes(tcp("127.0.0.1", "127.0.0.2", 1, 2))
    recs = [
        (T0, 0, struct.pack("<I", 2) + v4),  # AF_INET, little-endian writer
        (T0, 0, struct.pack(">I", 2) + v4),  # AF_INET, big-endian writer
        (T0, 0, struct.pack("<I", 30) + bytes(IPv6())),  # AF_INET6 on macOS
    ]
    t = load_trace(write(tmp_path / "lo.pcap", pcap_bytes(recs, linktype=0)))
    assert t.packets == 2 and t.skipped_non_ipv4 == 1
    # and the same file read with scapy agrees on the IPv4 packets
    assert Loopback in rdpcap(str(tmp_path / "lo.pcap"))[0]


# --------------------------------------------------------------------------------------------
# truncation and malformed input
# --------------------------------------------------------------------------------------------


def test_snaplen_truncated_records(tmp_path: Path) -> None:
    full = bytes(
        Ether() / IP(src="9.9.9.9", dst="1.2.3.4") / TCP(sport=4000, dport=80) / (b"x" * 100)
    )
    with_options = bytes(
        Ether() / IP(src="9.9.9.9", dst="1.2.3.4", options=b"\x01" * 4) / TCP(sport=1, dport=2)
    )
    recs = [
        (T0, 0, full[:54], len(full)),  # headers only: the normal case
        (T0, 1, full[:40], len(full)),  # 6 bytes of TCP: ports kept
        (T0, 2, full[:37], len(full)),  # 3 bytes of TCP: no ports, still measured
        (T0, 3, full[:34], len(full)),  # IPv4 header and nothing more
        (T0, 4, full[:33], len(full)),  # IPv4 header cut: malformed
        (T0, 5, with_options[:36], len(with_options)),  # IP options cut (IHL 6): malformed
        (T0, 6, full[:10], len(full)),  # not even an Ethernet header: malformed
    ]
    t = load_trace(write(tmp_path / "s.pcap", pcap_bytes(recs, snaplen=54)))
    src, dst = "9.9.9.9", "1.2.3.4"
    assert tuples(t) == [
        tup(src, dst, 4000, 80, 6),
        tup(src, dst, 4000, 80, 6),
        tup(src, dst, 0, 0, 6),
        tup(src, dst, 0, 0, 6),
    ]
    assert (t.skipped_non_ipv4, t.skipped_malformed) == (0, 3)
    assert t.flows == 2


def test_bad_ipv4_headers_are_malformed(tmp_path: Path) -> None:
    good = bytearray(bytes(Ether() / tcp("1.0.0.1", "2.0.0.2", 1, 2)))
    bad_version = bytearray(good)
    bad_version[14] = 0x55
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x44
    recs = [(T0, 0, bytes(b)) for b in (good, bad_version, bad_ihl, good)]
    t = load_trace(write(tmp_path / "b.pcap", pcap_bytes(recs)))
    assert t.packets == 2 and t.skipped_malformed == 2 and t.skipped_non_ipv4 == 0


@pytest.mark.parametrize("cut", [1, 5, 16, 30], ids=["1B", "in-header", "header-only", "data"])
def test_record_cut_short_at_end_of_file(tmp_path: Path, cut: int) -> None:
    frame = bytes(Ether() / tcp("1.1.1.1", "2.2.2.2", 1, 2))
    data = pcap_bytes([(T0, 0, frame)] * 3)
    record = 16 + len(frame)
    t = load_trace(write(tmp_path / "cut.pcap", data[: len(data) - record + cut]))
    assert t.packets == 2 and t.skipped_malformed == 1 and t.skipped_non_ipv4 == 0


def test_pcapng_block_cut_short_at_end_of_file(tmp_path: Path) -> None:
    frame = bytes(Ether() / tcp("1.1.1.1", "2.2.2.2", 1, 2))
    data = shb() + idb(1) + epb(0, 1, frame) + epb(0, 2, frame)
    t = load_trace(write(tmp_path / "cut.pcapng", data[:-7]))
    assert t.packets == 1 and t.skipped_malformed == 1


def test_corrupt_record_length_is_an_error(tmp_path: Path) -> None:
    frame = bytes(Ether() / tcp("1.1.1.1", "2.2.2.2", 1, 2))
    data = bytearray(pcap_bytes([(T0, 0, frame)] * 3))
    struct.pack_into("<I", data, 24 + 16 + len(frame) + 8, 0xFFFFFF00)  # 2nd record's caplen
    path = write(tmp_path / "bad.pcap", bytes(data))
    with pytest.raises(HerdInputError, match=r"bad\.pcap: corrupt pcap record at byte 94"):
        load_trace(path)


def test_garbage_file(tmp_path: Path) -> None:
    path = write(tmp_path / "trace.pcap", b"\x12\x34\x56\x78" + b"not a capture at all" * 10)
    with pytest.raises(HerdInputError) as e:
        load_trace(path)
    assert str(e.value) == f"{path}: not a pcap or pcapng file (magic 0x78563412)"


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "empty.pcap", b"")
    with pytest.raises(HerdInputError, match=r"empty\.pcap: empty file"):
        load_trace(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pcap_bytes([])[:10], "pcap header cut short"),
        (shb()[:10], "pcapng section header cut short"),
        (shb()[:20], "pcapng section header cut short"),
        (b"\xd4\xc3", "file too short"),
    ],
    ids=["pcap", "pcapng-10", "pcapng-20", "2-bytes"],
)
def test_header_cut_short(tmp_path: Path, data: bytes, message: str) -> None:
    path = write(tmp_path / "short.cap", data)
    with pytest.raises(HerdInputError, match=rf"short\.cap: {message}"):
        load_trace(path)


def test_unsupported_link_type(tmp_path: Path) -> None:
    path = write(tmp_path / "usb.pcap", pcap_bytes([], linktype=189))
    with pytest.raises(HerdInputError, match=r"usb\.pcap: unsupported link type 189"):
        load_trace(path)


def test_zero_packet_captures_give_an_empty_trace(tmp_path: Path) -> None:
    for name, data in (("z.pcap", pcap_bytes([])), ("z.pcapng", shb() + idb(1))):
        t = load_trace(write(tmp_path / name, data))
        assert (t.packets, t.flows, t.skipped) == (0, 0, 0)
        check_dtypes(t)
        info = trace_info(t)
        assert info["packets"] == 0 and info["threshold_99"] is None
        assert info["heavy_hitters_99"] == 0
        assert "no IPv4 flows" in format_trace_info(info)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pcap"
    with pytest.raises(HerdInputError, match=rf"^{missing}: no such file$"):
        load_trace(missing)
    with pytest.raises(HerdInputError, match="is a directory"):
        load_trace(tmp_path)


# --------------------------------------------------------------------------------------------
# pcapng
# --------------------------------------------------------------------------------------------


def test_pcapng_two_interfaces_written_by_scapy(tmp_path: Path) -> None:
    """Ethernet and raw-IP interfaces in one file (scapy writes one IDB per interface)."""
    pkts = []
    for i in range(6):
        if i % 2:
            p = IP(src="20.0.0.1", dst="30.0.0.1") / UDP(sport=100 + i, dport=53)
            p.sniffed_on = "raw0"
        else:
            p = Ether() / tcp("40.0.0.1", "50.0.0.1", 1000, 80)
            p.sniffed_on = "eth0"
        p.time = Decimal(T0) + Decimal(i) / 1000
        pkts.append(p)
    pkts.append(Ether() / ARP())
    pkts[-1].sniffed_on = "eth0"
    pkts[-1].time = Decimal(T0 + 1)
    path = tmp_path / "two.pcapng"
    w = PcapNgWriter(str(path))
    for p in pkts:
        w.write(p)
    w.close()
    t = load_trace(path)
    check_against_scapy(t, path)
    assert t.packets == 6 and t.skipped_non_ipv4 == 1 and t.flows == 4


def test_pcapng_resolutions_offsets_block_types_and_sections(tmp_path: Path) -> None:
    eth = bytes(Ether() / tcp("1.0.0.1", "2.0.0.2", 11, 22))
    raw = bytes(IP(src="3.0.0.3", dst="4.0.0.4") / UDP(sport=33, dport=44))
    v6 = bytes(IPv6() / UDP())
    sec1 = (
        shb()
        + idb(1)  # if 0: Ethernet, default microseconds
        + idb(101, tsresol=9, tsoffset=100)  # if 1: raw IP, nanoseconds, +100 s
        + idb(228, tsresol=0x80 | 10)  # if 2: raw IPv4, 2^-10 s
        + epb(0, T0 * 10**6 + 123456, eth)
        + block(4, b"\x00\x00\x00\x00")  # name resolution block: skipped
        + epb(1, T0 * 10**9 + 987654321, raw)
        + block(0x00000BAD, b"custom block")  # custom block: skipped
        + epb(2, (T0 << 10) | 512, raw)
        + spb(eth)  # simple packet block: interface 0, previous timestamp
        + obsolete_pb(0, T0 * 10**6 + 7, eth)
        + block(5, struct.pack("<III", 0, 0, 0))  # interface statistics: skipped
        + epb(7, 0, eth)  # no interface 7: malformed
        + epb(0, T0 * 10**6, eth, caplen=1000)  # caplen beyond the block: malformed
        + epb(1, 0, v6)
    )
    sec2 = (  # a second section, big-endian, with interfaces of its own
        shb(">")
        + idb(101, ">", tsresol=3)  # milliseconds
        + epb(0, 1_600_000_000_123, raw, ">")
        + epb(0, 1_600_000_000_124, v6, ">")
    )
    t = load_trace(write(tmp_path / "many.pcapng", sec1 + sec2))
    e_t, r_t = tup("1.0.0.1", "2.0.0.2", 11, 22, 6), tup("3.0.0.3", "4.0.0.4", 33, 44, 17)
    assert tuples(t) == [e_t, r_t, r_t, e_t, e_t, r_t]
    half = T0 * 10**9 + 500_000_000
    assert t.ts_ns.tolist() == [
        T0 * 10**9 + 123_456_000,
        (T0 + 100) * 10**9 + 987_654_321,
        half,
        half,
        T0 * 10**9 + 7_000,
        1_600_000_000_123_000_000,
    ]
    assert (t.skipped_non_ipv4, t.skipped_malformed) == (2, 2)
    assert t.flows == 2 and t.flow.tolist() == [0, 1, 1, 0, 0, 1]


def test_pcapng_bad_byte_order_magic(tmp_path: Path) -> None:
    data = bytearray(shb() + idb(1))
    data[8:12] = b"\xde\xad\xbe\xef"
    path = write(tmp_path / "m.pcapng", bytes(data))
    with pytest.raises(HerdInputError, match=r"m\.pcapng: bad pcapng byte-order magic"):
        load_trace(path)


# --------------------------------------------------------------------------------------------
# a larger mixed capture against scapy
# --------------------------------------------------------------------------------------------


def test_random_mixed_capture_matches_scapy(tmp_path: Path) -> None:
    rng = random.Random(7)
    hosts = [
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.0.{rng.randrange(256)}" for _ in range(12)
    ]
    pkts = []
    for i in range(2500):
        a, b = rng.choice(hosts), rng.choice(hosts)
        sp, dp = rng.choice([80, 443, 53, 1234]), rng.choice([5000, 5001, 80])
        kind = rng.randrange(9)
        if kind == 0:
            p = Ether() / IP(src=a, dst=b) / UDP(sport=sp, dport=dp)
        elif kind == 1:
            p = Ether() / IP(src=a, dst=b) / ICMP()
        elif kind == 2:
            p = Ether() / Dot1Q(vlan=rng.randrange(1, 4000)) / tcp(a, b, sp, dp)
        elif kind == 3:
            p = (
                Ether()
                / Dot1AD(vlan=3)
                / Dot1Q(vlan=4)
                / IP(src=a, dst=b)
                / UDP(sport=sp, dport=dp)
            )
        elif kind == 4:
            p = Ether() / IPv6() / TCP(sport=sp, dport=dp)
        elif kind == 5:
            p = Ether() / ARP()
        elif kind == 6:
            p = Ether() / IP(src=a, dst=b, frag=rng.randrange(1, 100), proto=6) / Raw(b"\0" * 20)
        else:
            p = Ether() / tcp(a, b, sp, dp) / Raw(b"y" * rng.randrange(0, 50))
        p.time = Decimal(T0) + Decimal(i) / 10**6
        pkts.append(p)
    path = tmp_path / "mixed.pcap"
    wrpcap(str(path), pkts)
    t = load_trace(path)
    check_against_scapy(t, path)
    assert t.skipped_non_ipv4 > 0 and t.flows > 100


class _FixedSizeMap(mmap.mmap):
    """A mapping that cannot grow in place (as where there is no mremap)."""

    def resize(self, newsize: int) -> None:
        raise OSError("no mremap here")


@pytest.mark.parametrize("keys_grow", ["in place", "by copy"])
def test_flow_numbering_through_table_growth(
    monkeypatch: pytest.MonkeyPatch, keys_grow: str
) -> None:
    """More flows than the smallest table holds, so it is rehashed several times; numbered
    whole, or a chunk at a time."""
    if keys_grow == "by copy":
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        monkeypatch.setattr(
            flowtable_mod._KeyRows,
            "_new_map",
            staticmethod(lambda rows: _FixedSizeMap(-1, rows * 16, flags=flags)),
        )
    rng = np.random.default_rng(3)
    n, nflows = 60_000, 20_000
    keys = rng.integers(0, 2**32, size=(nflows, 5), dtype=np.uint64)
    pick = rng.integers(0, nflows, n)
    src = keys[pick, 0].astype(np.uint32)
    dst = (keys[pick, 1] % 4).astype(np.uint32)  # many flows share (src, dst) words
    sport = (keys[pick, 2] % 3).astype(np.uint16)
    dport = keys[pick, 3].astype(np.uint16)
    proto = (keys[pick, 4] % 2 * 11 + 6).astype(np.uint8)
    out = flowtable_mod.number_flows(src, dst, sport, dport, proto)
    five = list(
        zip(src.tolist(), dst.tolist(), sport.tolist(), dport.tolist(), proto.tolist(), strict=True)
    )
    first = list(dict.fromkeys(five))
    index = {k: i for i, k in enumerate(first)}
    assert out["flow"].tolist() == [index[k] for k in five]
    table = list(
        zip(
            *(
                out[k].tolist()
                for k in ("flow_src", "flow_dst", "flow_sport", "flow_dport", "flow_proto")
            ),
            strict=True,
        )
    )
    assert table == first
    numbering = flowtable_mod.FlowNumbering(0)
    flow = np.empty(n, np.int32)
    bounds = [0, *sorted(rng.choice(np.arange(1, n), 30, replace=False).tolist()), n]
    for lo, hi in itertools.pairwise(bounds):
        cols = (src[lo:hi], dst[lo:hi], sport[lo:hi], dport[lo:hi], proto[lo:hi])
        numbering.add(cols, flow[lo:hi], 0, hi - lo)
    assert flow.tolist() == out["flow"].tolist()
    assert all(np.array_equal(v, out[k]) for k, v in numbering.finish().items())


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def small_capture(path: Path, sport: int = 1) -> Path:
    frames = [
        bytes(Ether() / tcp("1.1.1.1", "2.2.2.2", sport, 80)),
        bytes(Ether() / tcp("3.3.3.3", "2.2.2.2", 7, 80)),
    ]
    return write(path, pcap_bytes([(T0, i, f) for i, f in enumerate(frames * 3)]))


def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed although the cache holds the trace")

    monkeypatch.setattr(trace_mod, "_parse_file", boom)


def same(a: Trace, b: Trace) -> bool:
    return (
        a.digest == b.digest
        and all(
            np.array_equal(getattr(a, k), getattr(b, k))
            for k in (
                "ts_ns",
                "src",
                "dst",
                "sport",
                "dport",
                "proto",
                "ingress",
                "flow",
                "flow_src",
                "flow_dst",
                "flow_sport",
                "flow_dport",
                "flow_proto",
            )
        )
        and (a.skipped_non_ipv4, a.skipped_malformed) == (b.skipped_non_ipv4, b.skipped_malformed)
    )


def test_cache_hit_does_not_parse(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = need(CAIDA_PCAPNG)
    first = load_trace(path)
    entry = cache_dir / f"trace-v{cache_mod.CACHE_VERSION}-{first.digest}"
    assert (entry / "meta.json").is_file() and (entry / "ts_ns.bin").is_file()
    assert len(list((cache_dir / "index").glob("*.json"))) == 1
    assert not list(cache_dir.glob(".tmp-*"))  # nothing half-written left behind
    # The shared capture is old: its index entry is trusted on stat alone, no hashing.
    monkeypatch.setattr(cache_mod, "_file_sha256", lambda p: pytest.fail("re-hashed"))
    forbid_parsing(monkeypatch)
    again = load_trace(path)
    assert same(first, again)
    check_against_scapy(again, path)


def test_cache_hit_on_a_fresh_file_confirms_by_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = small_capture(tmp_path / "fresh.pcap")
    first = load_trace(path)
    forbid_parsing(monkeypatch)
    assert same(first, load_trace(path))


def test_stale_cache_after_the_file_changes(tmp_path: Path) -> None:
    path = small_capture(tmp_path / "c.pcap", sport=1)
    old = load_trace(path)
    small_capture(path, sport=2)  # same size, rewritten in place, likely the same mtime tick
    new = load_trace(path)
    assert new.digest != old.digest
    assert new.sport[0] == 2 and old.sport[0] == 1
    # and an mtime set back to the old value does not fool it either
    st = path.stat()
    small_capture(path, sport=3)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_trace(path).sport[0] == 3


def test_copy_of_a_cached_file_reuses_the_entry(tmp_path: Path, cache_dir: Path) -> None:
    path = small_capture(tmp_path / "a.pcap")
    a = load_trace(path)
    b = load_trace(write(tmp_path / "b.pcap", path.read_bytes()))
    assert same(a, b) and b.paths == (str(tmp_path / "b.pcap"),)
    assert len(list(cache_dir.glob("trace-*"))) == 1


def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path, cache_dir: Path) -> None:
    path = small_capture(tmp_path / "c.pcap")
    good = load_trace(path)
    for name in trace_mod.COLUMNS:  # load: the file is about to be overwritten in place
        getattr(good, name)
    entry = cache_dir / f"trace-v{cache_mod.CACHE_VERSION}-{good.digest}"
    (entry / "src.bin").write_bytes(b"garbage")
    rebuilt = load_trace(path)
    assert same(good, rebuilt)
    assert np.fromfile(entry / "src.bin", np.uint32).tolist() == good.src.tolist()  # repaired


def test_cache_of_another_version_is_ignored(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = small_capture(tmp_path / "c.pcap")
    load_trace(path)
    monkeypatch.setattr(cache_mod, "CACHE_VERSION", cache_mod.CACHE_VERSION + 1)
    calls = []
    real = trace_mod._parse_file
    monkeypatch.setattr(trace_mod, "_parse_file", lambda *a: calls.append(1) or real(*a))
    load_trace(path)
    assert calls == [1]
    meta = json.loads(
        next(cache_dir.glob(f"trace-v{cache_mod.CACHE_VERSION}-*/meta.json")).read_text()
    )
    assert meta["version"] == cache_mod.CACHE_VERSION


def test_unwritable_cache_does_not_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = write(tmp_path / "a-file", b"")
    monkeypatch.setenv("HERD_CACHE_DIR", str(blocker / "cache"))  # cannot be created
    path = small_capture(tmp_path / "c.pcap")
    assert load_trace(path).packets == 6
    assert load_trace(path).packets == 6


def test_use_cache_false_writes_nothing(tmp_path: Path, cache_dir: Path) -> None:
    load_trace(small_capture(tmp_path / "c.pcap"), use_cache=False)
    assert not cache_dir.exists()


def test_progress_bar_on_large_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = need(CAIDA_PCAP)
    monkeypatch.setattr(capture_mod, "PROGRESS_MIN_BYTES", 1)
    load_trace(path, use_cache=False, progress=True)
    assert "parsing caida2016-500.pcap" in capsys.readouterr().err
    monkeypatch.setattr(capture_mod, "PROGRESS_MIN_BYTES", 10**12)
    load_trace(path, use_cache=False, progress=True)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------
# ingress traces
# --------------------------------------------------------------------------------------------


def test_load_ingress_traces_merges_by_timestamp(tmp_path: Path) -> None:
    fa = bytes(Ether() / tcp("10.0.0.1", "20.0.0.1", 1, 2))
    fb = bytes(Ether() / tcp("30.0.0.1", "20.0.0.1", 3, 4))
    arp = bytes(Ether() / ARP())
    # file 0 steps back in time once (captures do); the merge keeps each file's own order
    a = write(
        tmp_path / "s0.pcap", pcap_bytes([(10, 0, fa), (20, 0, fa), (15, 0, fb), (40, 0, fa)])
    )
    b = write(
        tmp_path / "s1.pcap", pcap_bytes([(10, 0, fb), (30, 0, fb), (30, 1, arp), (50, 0, fa)])
    )
    t = load_ingress_traces([a, b])
    assert t.ts_ns.tolist() == [s * 10**9 for s in (10, 10, 20, 15, 30, 40, 50)]
    assert t.ingress.tolist() == [0, 1, 0, 0, 1, 0, 1]  # equal timestamps: lower file first
    A, B = tup("10.0.0.1", "20.0.0.1", 1, 2, 6), tup("30.0.0.1", "20.0.0.1", 3, 4, 6)  # noqa: N806
    assert tuples(t) == [A, B, A, B, B, A, A]
    assert t.flow.tolist() == [0, 1, 0, 1, 1, 0, 0] and flow_table(t) == [A, B]
    assert t.skipped_non_ipv4 == 1
    assert t.paths == (str(a), str(b))
    assert t.has_ingress and not load_trace(a).has_ingress
    da, db = (hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b))
    assert t.digest == hashlib.sha256((da + db).encode()).hexdigest()
    check_dtypes(t)
    # the order of the files decides the ingress indices
    r = load_ingress_traces([b, a])
    assert r.ingress.tolist() == [0, 1, 1, 1, 0, 1, 0] and r.digest != t.digest


def test_load_ingress_traces_errors(tmp_path: Path) -> None:
    with pytest.raises(HerdInputError):
        load_ingress_traces([])
    with pytest.raises(HerdInputError, match="no such file"):
        load_ingress_traces([small_capture(tmp_path / "a.pcap"), tmp_path / "missing.pcap"])


# --------------------------------------------------------------------------------------------
# trace_info
# --------------------------------------------------------------------------------------------


def test_trace_info_values(tmp_path: Path) -> None:
    """100 flows of 1..100 packets: T(99th) = floor(99.01) = 99, two flows reach it."""
    recs = []
    i = 0
    for size in range(1, 101):
        src = f"{size}.0.0.1"
        for _ in range(size):
            body = IP(src=src, dst="200.0.0.1") / (
                UDP(sport=size, dport=53) if size % 10 == 0 else TCP(sport=size, dport=80)
            )
            recs.append((T0 + i // 1000, i % 1000, bytes(Ether() / body)))
            i += 1
    recs.append((T0, 0, bytes(Ether() / ARP())))
    path = write(tmp_path / "sizes.pcap", pcap_bytes(recs))
    t = load_trace(path)
    info = trace_info(t)
    assert set(info) >= {
        "path",
        "digest",
        "packets",
        "skipped",
        "skipped_non_ipv4",
        "skipped_malformed",
        "flows",
        "groups",
        "duration_s",
        "first_ts",
        "last_ts",
        "max_flow_size",
        "protocols",
        "threshold_99",
        "threshold_99_9",
        "threshold_99_99",
        "heavy_hitters_99",
    }
    counts = np.arange(1, 101)
    assert info["path"] == str(path) and info["digest"] == t.digest
    assert info["packets"] == 5050 and info["flows"] == 100 and info["groups"] == 100
    assert (info["skipped"], info["skipped_non_ipv4"], info["skipped_malformed"]) == (1, 1, 0)
    assert info["max_flow_size"] == 100
    assert info["threshold_99"] == 99 == threshold(counts, 99)
    assert info["threshold_99_9"] == threshold(counts, 99.9) == 99
    assert info["threshold_99_99"] == threshold(counts, 99.99) == 99
    assert info["heavy_hitters_99"] == 2
    udp = sum(range(10, 101, 10))
    assert info["protocols"] == {"tcp": 5050 - udp, "udp": udp, "other": 0}
    assert info["first_ts"] == T0 * 10**9
    assert info["last_ts"] == (T0 + 5) * 10**9 + 49_000
    assert info["duration_s"] == pytest.approx(5.000049)
    json.dumps(info)  # serialisable as is
    text = format_trace_info(info)
    assert "5,050" in text and t.digest in text and "99" in text and "heavy hitters" in text


def test_trace_info_on_the_caida_slice() -> None:
    t = load_trace(need(CAIDA_PCAP))
    info = trace_info(t)
    counts = t.flow_counts()
    assert counts.sum() == t.packets == info["packets"]
    assert info["threshold_99"] == threshold(counts, 99.0)
    assert info["heavy_hitters_99"] == int((counts >= info["threshold_99"]).sum())
    groups = {
        (s >> 24, d >> 24) for s, d in zip(t.flow_src.tolist(), t.flow_dst.tolist(), strict=True)
    }
    assert info["groups"] == len(groups)
    assert info["duration_s"] == (t.ts_ns.max() - t.ts_ns.min()) / 1e9


def test_group_of_flow_and_flow_counts(tmp_path: Path) -> None:
    recs = [
        (T0, 0, bytes(Ether() / tcp("10.1.1.1", "172.2.2.2", 1, 2))),
        (T0, 1, bytes(Ether() / tcp("10.9.9.9", "172.0.0.1", 3, 4))),
        (T0, 2, bytes(Ether() / tcp("10.1.1.1", "172.2.2.2", 1, 2))),
        (T0, 3, bytes(Ether() / tcp("255.1.1.1", "1.2.2.2", 1, 2))),
    ]
    t = load_trace(write(tmp_path / "g.pcap", pcap_bytes(recs)))
    g = t.group_of_flow()
    assert g.dtype == np.uint16
    assert g.tolist() == [(10 << 8) | 172, (10 << 8) | 172, (255 << 8) | 1]
    assert t.flow_counts().tolist() == [2, 1, 1] and t.flow_counts().dtype == np.int64
    assert (t.packets, t.flows, t.skipped) == (4, 3, 0)


# --------------------------------------------------------------------------------------------
# streaming: parse, store and walk a chunk at a time
# --------------------------------------------------------------------------------------------


def crafted_capture(path: Path, packets: int = 3000, flows: int = 400, seed: int = 5) -> Path:
    """A pcap of interleaved TCP / UDP flows of Zipf-ish sizes with an ARP frame now and
    then (skipped), records of varying lengths, timestamps stepping back once in a while."""
    rng = random.Random(seed)
    keys = [
        (
            rng.getrandbits(32),
            rng.getrandbits(32),
            rng.randrange(65536),
            rng.randrange(65536),
            rng.choice((6, 17)),
        )
        for _ in range(flows)
    ]
    weights = [1 / (i + 1) for i in range(flows)]
    arp = bytes(Ether() / ARP())
    recs = []
    for i in range(packets):
        if rng.random() < 0.02:
            recs.append((T0, i, arp))
            continue
        src, dst, sp, dp, pr = rng.choices(keys, weights)[0]
        l4 = (
            struct.pack("!HHIIBBHHH", sp, dp, 0, 0, 0x50, 0, 0, 0, 0)
            if pr == 6
            else (struct.pack("!HHHH", sp, dp, 8, 0))
        )
        pad = b"\0" * rng.randrange(0, 40)
        ip = struct.pack("!BBHHHBBHII", 0x45, 0, 20 + len(l4) + len(pad), 0, 0, 64, pr, 0, src, dst)
        frame = b"\x02" * 12 + b"\x08\x00" + ip + l4 + pad
        sec = T0 + i // 1000 - (1 if i % 97 == 0 else 0)  # not monotonic
        recs.append((sec, i % 1000, frame))
    return write(path, pcap_bytes(recs))


def packet_columns(t: Trace) -> dict[str, list[int]]:
    return {k: getattr(t, k).tolist() for k in (*trace_mod.COLUMNS, *flowtable_mod.FLOW_COLUMNS)}


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "temporary"])
@pytest.mark.parametrize(("read_bytes", "chunk"), [(97, 1), (61, 7), (4096, 250)])
def test_streaming_parse_gives_the_one_shot_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_cache: bool, read_bytes: int, chunk: int
) -> None:
    """Read buffers that end inside records and output chunks that end inside flows give
    exactly the columns and flow table of a parse in one piece."""
    path = crafted_capture(tmp_path / "c.pcap")
    one_shot = load_trace(path, use_cache=False)
    assert one_shot.packets > 2 * 250 and one_shot.skipped_non_ipv4 > 0
    whole = packet_columns(one_shot)
    five = [np.asarray(whole[k]) for k in ("src", "dst", "sport", "dport", "proto")]
    numbered = flowtable_mod.number_flows(*five)
    assert whole["flow"] == numbered["flow"].tolist()
    assert whole["flow_src"] == numbered["flow_src"].tolist()
    monkeypatch.setattr(capture_mod, "CHUNK_BYTES", read_bytes)
    monkeypatch.setattr(capture_mod, "PARSE_CHUNK_PACKETS", chunk)
    t = load_trace(path, use_cache=use_cache)
    assert t.digest == one_shot.digest
    assert (t.skipped_non_ipv4, t.skipped_malformed) == (
        one_shot.skipped_non_ipv4,
        one_shot.skipped_malformed,
    )
    assert packet_columns(t) == whole
    check_dtypes(t)


def in_memory_copy(t: Trace) -> Trace:
    return Trace(
        paths=t.paths,
        digest=t.digest,
        **{k: getattr(t, k).copy() for k in trace_mod.COLUMNS},
        **{k: getattr(t, k) for k in flowtable_mod.FLOW_COLUMNS},
        skipped_non_ipv4=t.skipped_non_ipv4,
        skipped_malformed=t.skipped_malformed,
    )


@pytest.mark.parametrize("kind", ["cached", "temporary", "in-memory", "ingress"])
def test_chunks_concatenate_to_the_columns(tmp_path: Path, kind: str) -> None:
    path = crafted_capture(tmp_path / "c.pcap", packets=1500)
    if kind == "ingress":
        other = crafted_capture(tmp_path / "d.pcap", packets=700, seed=6)
        t = load_ingress_traces([path, other])
    else:
        t = load_trace(path, use_cache=kind != "temporary")
        if kind == "in-memory":
            t = in_memory_copy(t)
    reference = load_trace(path) if kind != "ingress" else t
    expected = {k: getattr(reference, k).copy() for k in trace_mod.COLUMNS}
    if kind in ("cached", "temporary"):
        assert not t._loaded  # a stored trace holds no packets until asked
    n = t.packets
    for size in (1, 7, 1000, n, n + 1, 10 * n):
        for columns in (("ts_ns", "flow"), tuple(trace_mod.COLUMNS), ("ingress",)):
            got: dict[str, list[np.ndarray]] = {c: [] for c in columns}
            starts = []
            for start, chunk in t.chunks(columns, size):
                assert set(chunk) == set(columns)
                lengths = {len(a) for a in chunk.values()}
                assert len(lengths) == 1 and 0 < lengths.pop() <= size
                starts.append(start)
                for c, a in chunk.items():
                    assert a.dtype == trace_mod.COLUMNS[c], c
                    got[c].append(a.copy())  # the buffers are reused
            assert starts == list(range(0, n, size))
            for c in columns:
                assert np.array_equal(np.concatenate(got[c]), expected[c]), (size, c)
    assert t.has_ingress == (kind == "ingress")
    if kind in ("cached", "temporary"):
        assert not t._loaded  # walking (and has_ingress) loads nothing whole
    assert t.first_ts == int(expected["ts_ns"][0])
    counts = np.bincount(expected["flow"], minlength=t.flows)
    assert t.flow_counts().tolist() == counts.tolist()
    with pytest.raises(ValueError, match="no column 'nope'"):
        next(t.chunks(("ts_ns", "nope")))


def test_chunks_of_an_empty_trace(tmp_path: Path) -> None:
    t = load_trace(write(tmp_path / "z.pcap", pcap_bytes([])))
    assert list(t.chunks(tuple(trace_mod.COLUMNS))) == []
    assert t.first_ts == 0 and t.flow_counts().tolist() == []


def test_first_ts_is_the_first_packet_not_the_earliest(tmp_path: Path) -> None:
    frame = bytes(Ether() / tcp("1.1.1.1", "2.2.2.2", 1, 2))
    path = write(
        tmp_path / "back.pcap",
        pcap_bytes([(T0 + 5, 0, frame), (T0, 0, frame), (T0 + 9, 0, frame), (T0 + 7, 0, frame)]),
    )
    t = load_trace(path)
    assert t.first_ts == (T0 + 5) * 10**9
    info = trace_info(t)
    assert (info["first_ts"], info["last_ts"]) == ((T0 + 5) * 10**9, (T0 + 7) * 10**9)
    assert (info["min_ts"], info["max_ts"]) == (T0 * 10**9, (T0 + 9) * 10**9)
    assert info["duration_s"] == 9.0
    text = format_trace_info(info)
    assert "earliest" in text and "latest" in text


def test_trace_info_walks_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """trace_info reads a stored trace chunk by chunk and loads no whole column; chunk
    boundaries change nothing."""
    t = load_trace(crafted_capture(tmp_path / "c.pcap"))
    whole = trace_info(in_memory_copy(load_trace(tmp_path / "c.pcap")))
    monkeypatch.setattr(Trace.chunks, "__defaults__", (7,))  # size=7
    assert trace_info(t) == whole
    assert not t._loaded


def test_whole_columns_load_once_and_survive_close(tmp_path: Path) -> None:
    t = load_trace(crafted_capture(tmp_path / "c.pcap"), use_cache=False)
    ts = t.ts_ns
    assert t.ts_ns is ts and set(t._loaded) == {"ts_ns"}
    assert (t.ingress == -1).all() and t.ingress.dtype == np.int16
    with t:
        pass
    assert t.ts_ns is ts  # loaded columns stay
    with pytest.raises(ValueError, match="closed"):
        t.flow  # noqa: B018 - the access is the test
    with pytest.raises(ValueError, match="closed"):
        next(t.chunks(("src",)))


def test_trace_from_arrays_checks_lengths() -> None:
    z = np.zeros(3, np.int64)
    with pytest.raises(ValueError, match="different lengths"):
        Trace((), "0" * 64, z, z, z, z, z, z, z, z[:2], z, z, z, z, z)


def test_interrupted_parse_leaves_no_entry(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parse stopped after some chunks were written (Ctrl-C, an error) leaves neither an
    entry nor its temporary directory, and the next load parses afresh."""
    path = crafted_capture(tmp_path / "c.pcap")
    monkeypatch.setattr(capture_mod, "PARSE_CHUNK_PACKETS", 100)
    real = cache_mod.EntryWriter.append
    calls = []

    def append(self: cache_mod.EntryWriter, cols: dict[str, np.ndarray]) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        real(self, cols)

    monkeypatch.setattr(cache_mod.EntryWriter, "append", append)
    with pytest.raises(KeyboardInterrupt):
        load_trace(path)
    assert cache_dir.is_dir() and not list(cache_dir.glob("trace-*"))
    assert not list(cache_dir.glob(".tmp-*")) and not (cache_dir / "index").exists()
    monkeypatch.setattr(cache_mod.EntryWriter, "append", real)
    t = load_trace(path)
    assert packet_columns(t) == packet_columns(load_trace(path, use_cache=False))


def test_killed_parse_is_never_read(tmp_path: Path, cache_dir: Path) -> None:
    """A process killed (SIGKILL) mid-parse leaves a temporary directory only; loads ignore
    it, and remove it once it is stale."""
    import signal
    import subprocess
    import sys
    import time

    path = crafted_capture(tmp_path / "c.pcap", packets=4000)
    child = r"""
import sys, time
import herd.capture, herd.tracecache
from herd.trace import load_trace
herd.capture.PARSE_CHUNK_PACKETS = 50
real = herd.tracecache.EntryWriter.append
def slow(self, cols):
    real(self, cols)
    self.files["ts_ns"].flush()
    time.sleep(0.05)
herd.tracecache.EntryWriter.append = slow
load_trace(sys.argv[1])
"""
    env = dict(os.environ, HERD_CACHE_DIR=str(cache_dir))
    proc = subprocess.Popen([sys.executable, "-c", child, str(path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in cache_dir.glob(".tmp-*/ts_ns.bin")):
            assert proc.poll() is None and time.monotonic() < deadline, "child never wrote"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (tmp,) = cache_dir.glob(".tmp-*")
    assert not list(cache_dir.glob("trace-*"))
    t = load_trace(path)
    assert packet_columns(t) == packet_columns(load_trace(path, use_cache=False))
    assert tmp.exists()  # recent: it might be a live parse of another process
    old = time.time() - 2 * cache_mod.STALE_TMP_S
    for p in (tmp, *tmp.iterdir()):
        os.utime(p, (old, old))
    load_trace(small_capture(tmp_path / "other.pcap"))  # any new entry sweeps stale ones
    assert not tmp.exists()


@pytest.mark.parametrize("damage", ["truncated column", "no metadata", "old layout"])
def test_damaged_or_foreign_entry_is_reparsed(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path = crafted_capture(tmp_path / "c.pcap")
    good = in_memory_copy(load_trace(path))
    entry = cache_dir / f"trace-v{cache_mod.CACHE_VERSION}-{good.digest}"
    if damage == "truncated column":
        with open(entry / "flow.bin", "r+b") as f:
            f.truncate(100)
    elif damage == "no metadata":
        (entry / "meta.json").unlink()
    else:  # metadata of another version under this version's name
        meta = json.loads((entry / "meta.json").read_text())
        meta["version"] = 1
        (entry / "meta.json").write_text(json.dumps(meta))
    calls = []
    real = trace_mod._parse_file
    monkeypatch.setattr(trace_mod, "_parse_file", lambda *a: calls.append(1) or real(*a))
    again = load_trace(path)
    assert calls == [1] and same(good, again)
    assert load_trace(path).packets == good.packets and calls == [1]  # repaired


def test_old_version_entries_are_ignored(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version-1 cache (one .npy a column, its own index entries) is never read."""
    path = small_capture(tmp_path / "c.pcap")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    old = cache_dir / f"trace-v1-{digest}"
    old.mkdir(parents=True)
    np.save(old / "ts_ns.npy", np.zeros(6, np.int64))
    (old / "meta.json").write_text(json.dumps({"version": 1, "digest": digest, "packets": 6}))
    name, ident = cache_mod.stat_key(str(path))
    (cache_dir / "index").mkdir()
    (cache_dir / "index" / f"{name}.json").write_text(
        json.dumps({"version": 1, "file": ident, "digest": digest, "indexed_ns": 0})
    )
    calls = []
    real = trace_mod._parse_file
    monkeypatch.setattr(trace_mod, "_parse_file", lambda *a: calls.append(1) or real(*a))
    t = load_trace(path)
    assert calls == [1] and t.ts_ns[0] == T0 * 10**9
    assert (cache_dir / f"trace-v{cache_mod.CACHE_VERSION}-{digest}" / "meta.json").is_file()


def test_cache_write_failure_falls_back_to_temporary_files(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache that fills up mid-parse: the trace is parsed again into temporary files, and
    nothing is cached."""
    path = crafted_capture(tmp_path / "c.pcap")
    monkeypatch.setattr(capture_mod, "PARSE_CHUNK_PACKETS", 100)
    real = cache_mod.EntryWriter.append

    def append(self: cache_mod.EntryWriter, cols: dict[str, np.ndarray]) -> None:
        if self.tmp is not None and self.packets >= 300:
            raise cache_mod.StoreError("No space left on device")
        real(self, cols)

    monkeypatch.setattr(cache_mod.EntryWriter, "append", append)
    t = load_trace(path)
    monkeypatch.setattr(cache_mod.EntryWriter, "append", real)
    assert packet_columns(t) == packet_columns(load_trace(path, use_cache=False))
    assert not list(cache_dir.glob("trace-*")) and not list(cache_dir.glob(".tmp-*"))


def test_temporary_files_are_unlinked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncached traces live in unlinked files: nothing to clean up, even after a kill."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp))
    t = load_trace(crafted_capture(tmp_path / "c.pcap"), use_cache=False)
    assert list(tmp.iterdir()) == []
    assert t.packets > 0 and len(t.src) == t.packets
