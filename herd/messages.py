"""The switch-to-controller (CPU) message: one binary header, the same in P4 and Python.

Mirrored by ``header cpu_t`` in ``p4src/include/herd_headers.p4``; the field order and widths
here are the wire format, big-endian, 22 bytes:

    msg_type(8) srcAddr(32) dstAddr(32) srcPort(16) dstPort(16) protocol(8) count(32) epoch(32)

``epoch`` is the switch's epoch when it sent the message, so that a report that arrives late
is counted in the epoch it belongs to.

The sending switch is not in the header: it is known from the connection or CPU port the
message arrives on.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

CPU_HEADER = struct.Struct("!BIIHHBII")
CPU_HEADER_LEN = CPU_HEADER.size  # 22
ETHERTYPE_HERD_CPU = 0x88B5  # IEEE "local experimental" ethertype: frames to the CPU port


class MessageType(IntEnum):
    HELLO = 1
    REPORT = 2
    OVERFLOW = 3


@dataclass(frozen=True, slots=True)
class CpuMessage:
    type: MessageType
    src: int
    dst: int
    sport: int
    dport: int
    proto: int
    count: int
    epoch: int = 0

    @property
    def flow(self) -> tuple[int, int, int, int, int]:
        return (self.src, self.dst, self.sport, self.dport, self.proto)

    @property
    def group(self) -> int:
        return group_of(self.src, self.dst)

    def pack(self) -> bytes:
        return CPU_HEADER.pack(int(self.type), self.src, self.dst, self.sport, self.dport,
                               self.proto, self.count, self.epoch)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> CpuMessage:
        """Parse one message; ValueError (naming the problem) on a malformed one."""
        if len(data) < CPU_HEADER_LEN:
            raise ValueError(f"CPU message too short: {len(data)} bytes, need {CPU_HEADER_LEN}")
        t, src, dst, sport, dport, proto, count, epoch = CPU_HEADER.unpack_from(data)
        try:
            mtype = MessageType(t)
        except ValueError:
            raise ValueError(f"CPU message has unknown type {t}") from None
        return cls(mtype, src, dst, sport, dport, proto, count, epoch)


def group_of(src: int, dst: int) -> int:
    """Herd's group g = (src/8, dst/8) as one 16-bit index: (src >> 24) << 8 | dst >> 24."""
    return ((src >> 24) << 8) | (dst >> 24)


def group_name(g: int) -> str:
    return f"{g >> 8}.0.0.0/8->{g & 0xFF}.0.0.0/8"
