"""Replay a pcap from a host with its own timing sped up by m, starting at a given instant:
the testbed's sender when the switches measure epochs on their own clocks.

    python -m herd.testbed.sender --interface h1-eth0 --multiplier 0.05 \\
        --start-at-ns 1767225600000000000 replay.pcap

Frame i leaves at start + (t_i - t_0) / m, t_i the capture's timestamps (never going back),
scheduled against that absolute time: a late wake-up is caught up at once, never carried
over. That is what ``tcpreplay --multiplier`` does not do before tcpreplay 4.5.3 (appneta/
tcpreplay#724): with its sleeping timer (``--timer=nano``) every oversleep adds up, and
Debian's 4.4.3 replays a 4 s schedule in 5.7 s (its spinning timer, gtod, is exact but takes a
core from the switches). And tcpreplay cannot start at a given instant: its start-up in a
Mininet host takes 60-160 ms, while the switches' epoch 0 begins at the origin. Here the
sender waits for the origin itself, and sleeps between frames (a few per cent of a core at
thousands of frames a second).

Prints ``Actual: N packets (B bytes) sent in S seconds`` like tcpreplay, and the lateness of
the first frame and the worst one. Classic pcap (micro or nano) only: what tcprewrite writes.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator

MAGIC = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
         b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
SLEEP_MIN_S = 0.0002  # shorter waits are sent at once: a sleep costs about this much


class SenderError(Exception):
    pass


def read_pcap_header(path: str | os.PathLike[str]) -> tuple[bytes, str, int]:
    """A classic pcap's global header, its byte order and nanoseconds per timestamp unit."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:4] not in MAGIC:
        raise SenderError(f"{path}: not a classic pcap (pcapng is not supported here)")
    return head, *MAGIC[head[:4]]


def read_pcap(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """(timestamp ns, frame) of every record of a classic pcap."""
    _, endian, ns_per_unit = read_pcap_header(path)
    with open(path, "rb") as f:
        f.read(24)
        rec = struct.Struct(endian + "IIII")
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _ = rec.unpack(h)
            data = f.read(incl)
            if len(data) < incl:
                return  # a truncated last record, as tcpreplay
            yield sec * 1_000_000_000 + frac * ns_per_unit, data


def send(interface: str, path: str, multiplier: float, start_ns: int,
         t0_ns: int | None = None) -> dict[str, float]:
    """t0_ns: the capture time that leaves at start_ns (default: the first frame's); a share
    of a trace gives the whole trace's, so every share keeps the whole schedule."""
    frames = list(read_pcap(path))
    if not frames:
        raise SenderError(f"{path}: no packets")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((interface, 0))
    t0 = frames[0][0] if t0_ns is None else t0_ns
    latest = frames[0][0]
    sent = nbytes = 0
    worst = 0
    first_late = 0
    while (left := start_ns - time.time_ns()) > 0:
        time.sleep(min(left / 1e9, 0.05))
    for ts, frame in frames:
        latest = max(latest, ts)
        due = start_ns + int(max(0, latest - t0) / multiplier)
        wait = due - time.time_ns()
        if wait > SLEEP_MIN_S * 1e9:
            time.sleep(wait / 1e9)
        while True:
            try:
                sock.send(frame)
                break
            except BlockingIOError:
                time.sleep(0.0001)  # the interface queue is full: wait, never drop
        late = time.time_ns() - due
        if sent == 0:
            first_late = late
        worst = max(worst, late)
        sent += 1
        nbytes += len(frame)
    seconds = (time.time_ns() - start_ns) / 1e9
    sock.close()
    return {"packets": sent, "bytes": nbytes, "seconds": seconds,
            "first_late_ms": first_late / 1e6, "worst_late_ms": worst / 1e6}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interface", required=True)
    ap.add_argument("--multiplier", type=float, required=True,
                    help="speed-up of the capture's own timing (0.5: half speed)")
    ap.add_argument("--start-at-ns", type=int, default=0,
                    help="wall-clock instant (Unix ns) frame 0 leaves (default: now)")
    ap.add_argument("--t0-ns", type=int, default=None,
                    help="the capture timestamp (ns) that leaves at --start-at-ns (default: the "
                    "first frame's; a share of a trace: the whole trace's first)")
    ap.add_argument("pcap")
    args = ap.parse_args(argv)
    if not args.multiplier > 0:
        print(f"sender: error: --multiplier {args.multiplier}: must be > 0", file=sys.stderr)
        return 2
    try:
        r = send(args.interface, args.pcap, args.multiplier, args.start_at_ns or time.time_ns(),
                 args.t0_ns)
    except (SenderError, OSError) as e:
        print(f"sender: error: {e}", file=sys.stderr)
        return 2
    print(f"Actual: {r['packets']} packets ({r['bytes']} bytes) sent in {r['seconds']:.2f} "
          f"seconds; first frame {r['first_late_ms']:.3f} ms late, worst "
          f"{r['worst_late_ms']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
