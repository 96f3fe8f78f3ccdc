"""Direct injection: each ingress switch's share of the trace, replayed by its own host.

The split is the load balancer's own (``herd.loadbalancer.assign_ingress``, as
``PreparedTrace.ingress`` and the model load balancer use it): one PRNG draw per IPv4
frame in wire order, non-IPv4 frames to switch 0 without a draw (load_balancer.p4). So
switch i gets exactly the frames, in the same order, it would get behind the load balancer.

Each share is written as a classic pcap with its sender's and sink's MACs and every
timestamp replaced by the whole trace's schedule (the running maximum, as
``herd.services.replay.trace_schedule`` and the sender keep it): a share's timed sender
started with the whole trace's first timestamp (``--t0-ns``) sends each frame when the
whole trace would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herd.loadbalancer import assign_ingress, lb_seed
from herd.prng import probability_threshold
from herd.testbed.sender import read_pcap, read_pcap_header
from herd.trace import dissect_frames


@dataclass(frozen=True)
class Share:
    switch: int  # the ingress switch's index
    path: Path
    packets: int


def lb_assignment(frames: list[bytes], k: int, p: float, seed: int) -> np.ndarray:
    """The ingress switch of every frame, as the load balancer would choose it."""
    out = np.zeros(len(frames), np.int16)  # non-IPv4: switch 0, no draw
    if not frames:
        return out
    ok, src, *_ = dissect_frames(frames)
    if ok.any():
        out[ok] = assign_ingress(np.ascontiguousarray(src[ok]), k, probability_threshold(p),
                                 lb_seed(seed))
    return out


def share_rates(packets: list[int], pps: float) -> list[float]:
    """Each sender's rate so that all finish together and the total is ``pps``: in
    proportion to its share (pps / k each would let the small shares end early and leave the
    big ones running alone, the total falling below pps and the shares' interleaving
    drifting from the trace's)."""
    total = sum(packets)
    return [pps * n / total if total else 0.0 for n in packets]


def write_shares(pcap: Path, out_dir: Path, k: int, p: float, seed: int,
                 macs: list[tuple[str, str]]) -> list[Share]:
    """Split ``pcap`` (classic, Ethernet) into k share pcaps ``share-s{i+1}.pcap``; macs:
    (source, destination) per switch, written into every frame of its share."""
    header, endian, ns_per_unit = read_pcap_header(pcap)
    records = list(read_pcap(str(pcap)))
    frames = [r[1] for r in records]
    where = lb_assignment(frames, k, p, seed)
    rec = struct.Struct(endian + "IIII")
    latest = records[0][0] if records else 0
    bufs: list[list[bytes]] = [[] for _ in range(k)]
    for (ts, frame), i in zip(records, where.tolist(), strict=True):
        latest = max(latest, ts)  # never back in time: the schedule every sender keeps
        smac, dmac = macs[i]
        frame = _mac(dmac) + _mac(smac) + frame[12:]
        sec, rem = divmod(latest, 1_000_000_000)
        bufs[i].append(rec.pack(sec, rem // ns_per_unit, len(frame), len(frame)) + frame)
    out = []
    for i in range(k):
        path = out_dir / f"share-s{i + 1}.pcap"
        path.write_bytes(header + b"".join(bufs[i]))
        out.append(Share(i, path, len(bufs[i])))
    return out


def _mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))
