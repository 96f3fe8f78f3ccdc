"""Write packets given as columns (ts, 5-tuple) to a classic pcap, fully vectorised.

Every record is a complete 54-byte Ethernet/IPv4 frame: IPv4 total length 40, then
- TCP: the 20-byte header with ACK set and no payload (a pure ACK);
- UDP: the 8-byte header and 12 zero bytes of payload (UDP length 20);
- ICMP: an 8-byte echo request header and 12 zero bytes of echo data;
- any other protocol: 20 zero bytes of payload after the IPv4 header.
The IPv4 total length always equals the bytes written and every checksum (IPv4, TCP, UDP,
ICMP) is correct, so tcpreplay can put the frames on a wire and a switch sees valid packets.
One frame size for all protocols is deliberate: the records then form a fixed-size numpy
array that goes to the file as it is, where variable sizes would need a compaction pass
costing more than everything else together (about 1.5 s per 5 million packets). 54 bytes is
below Ethernet's 60-byte minimum; a NIC pads on transmit and veth links carry the frames
as they are.

Fields that the 5-tuple does not fix are derived from a hash of it, so the same columns
always give the same bytes: per flow (same 5-tuple) a constant TCP sequence number, an
acknowledgement number advancing by two full segments per packet (the ACK side of a bulk
transfer), and an IPv4 ID and ICMP sequence number counting up from a per-flow start.

The file is written to a temporary name beside ``path`` and renamed over it, so readers
never see a partial capture.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile

import numpy as np

from herd.errors import HerdInputError

LINKTYPE_ETHERNET = 1
PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
SNAPLEN = 65535
DEFAULT_SRC_MAC = bytes.fromhex("020000000001")  # locally administered, unicast
DEFAULT_DST_MAC = bytes.fromhex("020000000002")

PROTO_ICMP, PROTO_TCP, PROTO_UDP = 1, 6, 17
FRAME_LEN = 54  # Ethernet 14 + IPv4 20 + 20 bytes of L4 header and/or payload
IP_TOTAL_LEN = FRAME_LEN - 14
L4_LEN = IP_TOTAL_LEN - 20  # TCP header, or UDP/ICMP header + 12 bytes of payload
_RECORD_LEN = 16 + FRAME_LEN
_MAX_NS = (1 << 32) * 1_000_000_000  # pcap stores seconds in 32 bits
_ACK_STEP = 2 * 1448  # delayed ACK: one ACK per two full-size segments
_TCP_OFF_FLAGS = (5 << 12) | 0x10  # data offset 5 words, ACK
_TCP_WINDOW = 501
_IP_DF = 0x4000  # don't fragment, as modern stacks send
_TTL = 64

# One record as it goes to the file: the pcap record header little-endian, the frame
# big-endian. The 20 bytes after the IPv4 header are generic words filled per protocol.
# fmt: off
_RECORD = np.dtype(
    {
        "names": [
            "ts_sec", "ts_frac", "incl_len", "orig_len",
            "eth_dst", "eth_src", "ethertype",
            "ver_ihl", "tos", "ip_len", "ip_id", "ip_frag", "ttl", "ip_proto", "ip_csum",
            "ip_src", "ip_dst",
            "w0", "w2", "w4", "w8", "w12", "w14", "w16", "w18",
        ],
        "formats": [
            "<u4", "<u4", "<u4", "<u4",
            ("u1", 6), ("u1", 6), ">u2",
            "u1", "u1", ">u2", ">u2", ">u2", "u1", "u1", ">u2", ">u4", ">u4",
            ">u2", ">u2", ">u4", ">u4", ">u2", ">u2", ">u2", ">u2",
        ],
        "offsets": [
            0, 4, 8, 12,
            16, 22, 28,
            30, 31, 32, 34, 36, 38, 39, 40, 42, 46,
            50, 52, 54, 58, 62, 64, 66, 68,
        ],
        "itemsize": _RECORD_LEN,
    }
)
# fmt: on


def _column(name: str, values: object, bits: int, dtype: type[np.integer]) -> np.ndarray:
    """A 1-D integer column checked to fit in ``bits`` unsigned bits, as ``dtype``."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise HerdInputError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(dtype)
    if arr.dtype.kind not in "iu":
        raise HerdInputError(f"{name}: expected integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= (1 << bits):
        bad = lo if lo < 0 else hi
        raise HerdInputError(f"{name}: value {bad} does not fit in {bits} unsigned bits")
    return arr.astype(dtype, copy=False)


def _mac(name: str, mac: object) -> np.ndarray:
    if not isinstance(mac, bytes | bytearray) or len(mac) != 6:
        raise HerdInputError(f"{name}: {mac!r} is not 6 bytes")
    return np.frombuffer(bytes(mac), dtype=np.uint8)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a cheap, well-spread hash of uint64 values."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _flow_ordinal(key: np.ndarray) -> np.ndarray:
    """For each row, how many earlier rows carry the same key (0 for the first).

    Sorting the values (hash in the high bits, row number in the low bits) instead of an
    argsort is several times faster, and unique values make the order deterministic. Keys
    that agree in their high bits share a counter; that only shifts a few IDs.
    """
    n = len(key)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    bits = np.uint64(max(1, (n - 1).bit_length()))
    packed = np.sort(((key >> bits) << bits) | np.arange(n, dtype=np.uint64))
    row = (packed & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
    flow = packed >> bits
    pos = np.arange(n, dtype=np.int64)
    start = np.ones(n, dtype=bool)
    start[1:] = flow[1:] != flow[:-1]
    run_start = np.maximum.accumulate(np.where(start, pos, 0))
    ordinal = np.empty(n, dtype=np.uint64)
    ordinal[row] = (pos - run_start).astype(np.uint64)
    return ordinal


def _csum(total: np.ndarray) -> np.ndarray:
    """Ones'-complement checksum from a sum of 16-bit words (uint32, < 2**24)."""
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def _halves(x: np.ndarray) -> np.ndarray:
    """Sum of the two 16-bit halves of uint32 values."""
    return (x >> 16) + (x & 0xFFFF)


def _template(smac: np.ndarray, dmac: np.ndarray) -> np.ndarray:
    """One record with the fields that are the same in every frame; the rest zero."""
    t = np.zeros(1, dtype=_RECORD)
    t["incl_len"] = FRAME_LEN
    t["orig_len"] = FRAME_LEN
    t["eth_dst"] = dmac
    t["eth_src"] = smac
    t["ethertype"] = 0x0800
    t["ver_ihl"] = 0x45
    t["ip_len"] = IP_TOTAL_LEN
    t["ip_frag"] = _IP_DF
    t["ttl"] = _TTL
    return t


def write_pcap(
    path: str | os.PathLike[str],
    ts_ns: object,
    src: object,
    dst: object,
    sport: object,
    dport: object,
    proto: object,
    *,
    nanosecond: bool = False,
    src_mac: bytes = DEFAULT_SRC_MAC,
    dst_mac: bytes = DEFAULT_DST_MAC,
) -> None:
    """Write one 54-byte Ethernet/IPv4 frame per row to a little-endian pcap at ``path``.

    ``ts_ns`` are nanoseconds since the epoch; a microsecond file (the default) truncates
    them to microseconds, a ``nanosecond`` file keeps them. Rows are written in the order
    given (sorted timestamps are not required). Ports are written for TCP and UDP only.
    """
    ts = _column("ts_ns", ts_ns, 63, np.int64)
    src_a = _column("src", src, 32, np.uint32)
    dst_a = _column("dst", dst, 32, np.uint32)
    sport_a = _column("sport", sport, 16, np.uint16)
    dport_a = _column("dport", dport, 16, np.uint16)
    proto_a = _column("proto", proto, 8, np.uint8)
    n = len(ts)
    for name, col in (
        ("src", src_a),
        ("dst", dst_a),
        ("sport", sport_a),
        ("dport", dport_a),
        ("proto", proto_a),
    ):
        if len(col) != n:
            raise HerdInputError(f"{name}: length {len(col)} differs from ts_ns length {n}")
    if n and int(ts.max()) >= _MAX_NS:
        raise HerdInputError(f"ts_ns: {int(ts.max())} is past what pcap can store (year 2106)")
    smac, dmac = _mac("src_mac", src_mac), _mac("dst_mac", dst_mac)

    is_tcp = proto_a == PROTO_TCP
    is_udp = proto_a == PROTO_UDP
    is_icmp = proto_a == PROTO_ICMP
    ported = is_tcp | is_udp
    sport_a = np.where(ported, sport_a, np.uint16(0))
    dport_a = np.where(ported, dport_a, np.uint16(0))

    # Per-flow values the columns do not give come from a hash of the 5-tuple (ports 0
    # where the protocol has none, as in the flow key).
    key = _mix64(
        ((src_a.astype(np.uint64) << np.uint64(32)) | dst_a.astype(np.uint64))
        ^ _mix64(
            (sport_a.astype(np.uint64) << np.uint64(24))
            | (dport_a.astype(np.uint64) << np.uint64(8))
            | proto_a.astype(np.uint64)
        )
    )
    ordinal = _flow_ordinal(key)
    ip_id = ((key >> np.uint64(48)) + ordinal).astype(np.uint16)  # wraps mod 2**16
    tcp_seq = key.astype(np.uint32)  # low 32 bits
    tcp_ack = ((key >> np.uint64(32)) + ordinal * np.uint64(_ACK_STEP)).astype(np.uint32)
    icmp_id = (key >> np.uint64(16)).astype(np.uint16)
    icmp_seq = (ordinal + np.uint64(1)).astype(np.uint16)
    del key, ordinal

    # Checksums from the field values (sums of 16-bit words, in uint32).
    src32, dst32 = src_a.astype(np.uint32), dst_a.astype(np.uint32)
    p32 = proto_a.astype(np.uint32)
    addr = _halves(src32) + _halves(dst32)
    ip_csum = _csum(
        addr + (0x4500 + IP_TOTAL_LEN + _IP_DF + (_TTL << 8)) + ip_id.astype(np.uint32) + p32
    )
    pseudo = addr + p32 + L4_LEN
    ports = sport_a.astype(np.uint32) + dport_a.astype(np.uint32)
    tcp_csum = _csum(
        pseudo + ports + _halves(tcp_seq) + _halves(tcp_ack) + (_TCP_OFF_FLAGS + _TCP_WINDOW)
    )
    udp_csum = _csum(pseudo + ports + L4_LEN)
    udp_csum[udp_csum == 0] = 0xFFFF  # a computed 0 is sent as 0xFFFF; 0 means "none"
    icmp_csum = _csum((8 << 8) + icmp_id.astype(np.uint32) + icmp_seq.astype(np.uint32))

    # Start every record from a template holding the constant fields: one broadcast copy
    # is much cheaper than a strided assignment per field.
    rec = np.empty(n, dtype=_RECORD)
    rec.view(np.uint8).reshape(n, _RECORD_LEN)[:] = _template(smac, dmac).view(np.uint8)
    rec["ts_sec"] = ts // 1_000_000_000
    frac = ts % 1_000_000_000
    rec["ts_frac"] = frac if nanosecond else frac // 1000
    rec["ip_id"] = ip_id
    rec["ip_proto"] = proto_a
    rec["ip_csum"] = ip_csum
    rec["ip_src"] = src_a
    rec["ip_dst"] = dst_a

    # The 20 bytes after the IPv4 header, word by word:
    #   offset  TCP            UDP               ICMP                  other
    #   0       sport          sport             type 8, code 0        0
    #   2       dport          dport             checksum              0
    #   4       seq            length, checksum  id, seq               0
    #   8       ack            payload (0)       payload (0)           0
    #   12      offset, flags  0                 0                     0
    #   14      window         0                 0                     0
    #   16      checksum       0                 0                     0
    #   18      urgent (0)     0                 0                     0
    zero16 = np.uint16(0)
    rec["w0"] = np.where(is_icmp, np.uint16(8 << 8), sport_a)
    rec["w2"] = np.where(is_icmp, icmp_csum, dport_a)
    udp_w4 = (np.uint32(L4_LEN) << np.uint32(16)) | udp_csum.astype(np.uint32)
    icmp_w4 = (icmp_id.astype(np.uint32) << np.uint32(16)) | icmp_seq.astype(np.uint32)
    rec["w4"] = np.where(
        is_tcp, tcp_seq, np.where(is_udp, udp_w4, np.where(is_icmp, icmp_w4, np.uint32(0)))
    )
    rec["w8"] = np.where(is_tcp, tcp_ack, np.uint32(0))
    rec["w12"] = np.where(is_tcp, np.uint16(_TCP_OFF_FLAGS), zero16)
    rec["w14"] = np.where(is_tcp, np.uint16(_TCP_WINDOW), zero16)
    rec["w16"] = np.where(is_tcp, tcp_csum, zero16)

    header = struct.pack(
        "<IHHiIII",
        PCAP_MAGIC_NS if nanosecond else PCAP_MAGIC_US,
        2,
        4,
        0,
        0,
        SNAPLEN,
        LINKTYPE_ETHERNET,
    )
    _atomic_write(path, header, rec)


def _atomic_write(path: str | os.PathLike[str], header: bytes, body: np.ndarray) -> None:
    target = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(target))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(target)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(memoryview(body.view(np.uint8)))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a capture is meant to be shared
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
