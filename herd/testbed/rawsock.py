"""Frames in and out of a Linux interface through a packet socket, tags intact.

Linux removes the outer VLAN tag of a received frame before packet sockets see it (even with
offloads off) and reports it only in PACKET_AUXDATA; libpcap, and therefore BMv2, puts it
back. ``recv_frames`` does the same, so the model target and BMv2 see identical frames. The
socket also ignores its own outgoing frames (PACKET_IGNORE_OUTGOING), which a forwarding
switch would otherwise read back.
"""

from __future__ import annotations

import contextlib
import socket
import struct

SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
ANCILLARY_SPACE = socket.CMSG_SPACE(AUXDATA.size)
MAX_FRAME = 65535


def open_port(ifname: str, rcvbuf: int = 8 << 20) -> socket.socket:
    """A non-blocking packet socket bound to ``ifname`` (needs root or CAP_NET_RAW)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    # Kernels before 4.20 lack it: recv_frames filters by packet type as well.
    with contextlib.suppress(OSError):
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    # A large buffer rides out bursts from tcpreplay while the process is busy.
    for opt in (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
            break
        except OSError:
            continue
    s.bind((ifname, 0))
    s.setblocking(False)
    return s


def with_vlan_tag(frame: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    """Put back the VLAN tag the kernel stripped into the auxiliary data, if any."""
    for level, kind, data in ancdata:
        if level != SOL_PACKET or kind != PACKET_AUXDATA or len(data) < AUXDATA.size:
            continue
        status, _, _, _, _, tci, tpid = AUXDATA.unpack_from(data)
        if status & TP_STATUS_VLAN_VALID and len(frame) >= 12:
            if not status & TP_STATUS_VLAN_TPID_VALID or tpid == 0:
                tpid = 0x8100
            return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


def recv_frames(s: socket.socket, limit: int = 256) -> list[bytes]:
    """Every frame waiting on the socket (up to ``limit``), oldest first."""
    out = []
    for _ in range(limit):
        try:
            frame, ancdata, _, addr = s.recvmsg(MAX_FRAME, ANCILLARY_SPACE)
        except BlockingIOError:
            break
        if addr[2] == PACKET_OUTGOING:
            continue
        out.append(with_vlan_tag(frame, ancdata))
    return out
