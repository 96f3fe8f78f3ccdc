"""The model switch process: the core's ``herd.switch.Switch`` behind a local socket.

It stands where BMv2 would: the local controller drives it through the model driver
(``herd.services.drivers.model``) with table writes and register operations, and reads the
switch's CPU messages from it. Packets come from a :class:`PacketSource` - a trace file or the
per-switch arrays ``herd replay`` writes; another source (frames from veth interfaces via raw
sockets, for Mininet) only has to yield :class:`PacketBatch` es.

One process may host several switches (``--name``, ``--listen``, ``--packets`` once per
switch): each has its own socket, state and CPU stream, as if alone, and one thread paces
the packets of all of them (``run_switches``), so that k switches cost one wake-up per pacing
step rather than k.

Wire protocol (a listening socket per switch, ``unix:/path`` or TCP ``host:port``):
  - every connection starts with a frame ``u32 length | JSON``; ``{"op": "subscribe"}`` makes
    it the CPU message stream, anything else is a control request answered with one JSON
    frame (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``), and the connection
    stays a control connection;
  - the CPU stream sends records ``u32 length | u64 seq | i64 ts_ns | payload``, payload
    being the 22-byte CPU header of ``herd.messages`` (``ts_ns`` is the time of the packet
    that caused it: its trace timestamp when replaying a trace); the reader answers with
    cumulative acks, ``u64 seq`` each, 8 bytes, no framing.
The switch keeps every CPU message until it is acknowledged and resends the unacknowledged
ones to a new subscriber, so a controller killed and restarted resumes exactly where its
predecessor stopped acknowledging: the switch-to-controller channel never drops (up to
``--cpu-buffer`` messages held; more are dropped and counted, as a CPU port queue would).

Control operations (``op``): table_add / table_modify (table, key, action, params), batch
(ops: a list of requests, one round trip),
table_clear (table), table_set_default (table, action, params), register_read (name, index),
register_write (name, index, value), register_reset (name), reset_tables, held_totals
(epoch, stages, flows: confirm's pull, every flow's ``herd.switch.held_total`` in one step
under the data-plane lock), stats, start (t0_ns, pps), set_epoch_origin (origin_us),
epoch_starts, inject_cpu (hex: a raw CPU payload, for tests of malformed messages), shutdown.
Names are those of ``herd.services.drivers.base`` (the P4 program's).

Epochs. The switch follows its own clock, the wall clock (CLOCK_REALTIME) in microseconds: a
packet's epoch is ``clock_epoch(arrival, origin, W)`` (``herd.switch``), W the register
``herd_regs[REG_EPOCH_US]`` and the origin ``herd_epoch_origin`` (``set_epoch_origin``; until
it is set, every packet is in epoch 0). A packet arrives when its source says (a frame: when
it was read from the port) or, from a paced schedule, when it is due: that is when it is on
the wire, however late the pipeline takes it; unpaced, when the pipeline takes it. Every
epoch start (epoch, the switch's packet count before it) is recorded in full, beside the
pipeline's 256-entry epoch log (``epoch_starts``, and ``stats`` with latencies): the timing
``herd simulate --delays`` replays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from herd.errors import HerdInputError
from herd.hashing import flows_slots
from herd.messages import CPU_HEADER
from herd.services.common import atomic_write_json, atomic_write_text, setup_logging
from herd.services.drivers.base import (
    FORWARD_TABLE,
    GROUP_ACTION,
    GROUP_TABLE,
    REG_EPOCH_LOG,
    REG_EPOCH_ORIGIN,
    REG_HELLO_SENT,
    REG_HERD,
    REG_STAGE_COUNT,
    REG_STAGE_EPOCH,
    REG_STAGE_FP,
    REG_STAGE_PREV_FP,
    REG_STAGE_PREV_TOTAL,
    REG_STAGE_TOTAL,
    decode_held_totals,
)
from herd.switch import (
    EV_HELLO,
    EV_NONE,
    GROUP_HELLO_SENT,
    GROUP_INSTALLED,
    GROUP_MISS,
    REG_EPOCH,
    REG_EPOCH_US,
    REG_HOLD_START,
    REG_PACKETS,
    Switch,
    clock_epoch,
    process_packet,
)

log = logging.getLogger("herd.model_switch")

FRAME = struct.Struct("!I")
RECORD_HEAD = struct.Struct("!IQq")  # length, seq, ts_ns
ACK = struct.Struct("!Q")
MAX_FRAME = 1 << 20
CHUNK = 4096  # packets per locked step at full speed: control writes land between steps
DEFAULT_CPU_BUFFER = 2_000_000
PACE_STEP = 0.001  # seconds: the pacing granularity
PACE_MAX = 0.005  # seconds: the longest sleep between looks at the schedule
# Register widths (the P4 program's): what a register write may hold. The origin is 63 bits
# here, not 48: this switch's clock is Unix microseconds (51 bits), not microseconds since the
# switch started (and the pipeline takes it as a signed 64-bit integer).
REGISTER_BITS = {REG_HERD: 32, REG_STAGE_FP: 32, REG_STAGE_COUNT: 32, REG_STAGE_EPOCH: 32,
                 REG_STAGE_TOTAL: 32, REG_STAGE_PREV_FP: 32, REG_STAGE_PREV_TOTAL: 32,
                 REG_HELLO_SENT: 32, REG_EPOCH_LOG: 64, REG_EPOCH_ORIGIN: 63}
# The origin until the control plane sets one: never, so every packet is in epoch 0 (with W
# written and the origin 0, the first packet would jump to epoch now / W).
ORIGIN_UNSET = (1 << 63) - 1


# ------------------------------------------------------------------------------- packets


@dataclass
class PacketBatch:
    """Packets in order, by flow: packet i is flow ``flow[i]`` of the batch's flow table.
    ``due`` (optional) is each packet's position in the global schedule: with a rate of N
    (units of ``due``) per second, packet i is due at t0 + due[i] / N - ``due`` is the global
    packet index with N packets/s, or trace nanoseconds with N = 1e9 x the speed-up. Without
    it packets are numbered in order across the batches. ``arrival_ns`` (optional): when
    each packet arrived (wall clock), for its epoch; without it, when it is due (paced) or
    when the pipeline takes it."""

    ts_ns: np.ndarray
    flow: np.ndarray
    flow_src: np.ndarray
    flow_dst: np.ndarray
    flow_sport: np.ndarray
    flow_dport: np.ndarray
    flow_proto: np.ndarray
    due: np.ndarray | None = None
    arrival_ns: np.ndarray | None = None


class PacketSource(ABC):
    """Where a model switch's packets come from."""

    #: packets in all, when known in advance
    total: int | None = None

    @abstractmethod
    def batches(self) -> Iterator[PacketBatch]:
        """Batches in order; the iteration ends when the source is exhausted."""


class ArraySource(PacketSource):
    """The per-switch packet file ``herd replay`` writes (numpy .npz: ts_ns, flow, due and
    the flow table flow_src ... flow_proto)."""

    def __init__(self, path: str, batch: int = 1 << 16) -> None:
        try:
            with np.load(path) as z:
                self._data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise HerdInputError(f"{path}: not a packet array file ({e})") from None
        self.total = len(self._data["ts_ns"])
        self._batch = batch

    def batches(self) -> Iterator[PacketBatch]:
        d = self._data
        for a in range(0, self.total, self._batch):
            b = min(a + self._batch, self.total)
            yield PacketBatch(d["ts_ns"][a:b], d["flow"][a:b], d["flow_src"], d["flow_dst"],
                              d["flow_sport"], d["flow_dport"], d["flow_proto"],
                              d["due"][a:b] if "due" in d else None)


class TraceSource(PacketSource):
    """Every IPv4 packet of a capture file, in order (``herd.trace.load_trace``)."""

    def __init__(self, path: str, batch: int = 1 << 16) -> None:
        from herd.trace import load_trace

        self._t = load_trace(path)
        self.total = self._t.packets
        self._batch = batch

    def batches(self) -> Iterator[PacketBatch]:
        t = self._t
        for a in range(0, self.total, self._batch):
            b = min(a + self._batch, self.total)
            yield PacketBatch(t.ts_ns[a:b], t.flow[a:b].astype(np.int64), t.flow_src,
                              t.flow_dst, t.flow_sport, t.flow_dport, t.flow_proto)


@njit(cache=True, nogil=True)
def _run_packets(regs: np.ndarray, group_state: np.ndarray, group_tau: np.ndarray,
                 group_r: np.ndarray, table: np.ndarray, epoch_log: np.ndarray,
                 pkt_flow: np.ndarray, flow_group: np.ndarray, flow_slot: np.ndarray,
                 flow_fp: np.ndarray, start: int, end: int, arrival_us: np.ndarray,
                 origin_us: int, ev_pkt: np.ndarray, ev_type: np.ndarray, ev_count: np.ndarray,
                 ev_epoch: np.ndarray, ep_epoch: np.ndarray, ep_packet: np.ndarray
                 ) -> tuple[int, int]:
    """Packets [start, end) through the switch (``process_packet``, the one semantics), each
    in the epoch its arrival (``arrival_us[i - start]``) shows on the switch's clock. The
    events they cause go to ev_*, the epochs they start to ep_* (epoch, the switch's packet
    count before it); returns how many of each."""
    n = 0
    m = 0
    w = regs[REG_EPOCH_US]
    for i in range(start, end):
        e = clock_epoch(arrival_us[i - start], origin_us, w)
        if e > regs[REG_EPOCH]:
            ep_epoch[m] = e
            ep_packet[m] = regs[REG_PACKETS]
            m += 1
        f = pkt_flow[i]
        ev, c = process_packet(regs, group_state, group_tau, group_r, table, epoch_log,
                               flow_group[f], flow_slot[f], flow_fp[f], e)
        if ev != EV_NONE:
            ev_pkt[n] = i
            ev_type[n] = ev
            ev_count[n] = c
            ev_epoch[n] = regs[REG_EPOCH]
            n += 1
    return n, m


# ------------------------------------------------------------------------------- switch


class ModelSwitch:
    """A Switch, its CPU message buffer and its control operations (thread-safe)."""

    def __init__(self, name: str, stages: tuple[int, ...],
                 cpu_buffer: int = DEFAULT_CPU_BUFFER) -> None:
        self.name = name
        self.switch = Switch(stages)
        self.lock = threading.Lock()  # the data plane: packets vs control writes
        self.cond = threading.Condition()  # the CPU buffer
        self._buf: list[bytes] = []  # packed records, seq _base, _base + 1, ...
        self._base = 1
        self.last_seq = 0
        self.acked = 0
        self.cursor = 1  # next seq to send to the subscriber
        self.cpu_limit = cpu_buffer
        self.cpu_dropped = 0
        self.subscriber: socket.socket | None = None
        self.forwarding: dict[str, Any] = {}
        self.table_writes = 0
        self.table_resets = 0
        self.malformed_requests = 0
        self.hello_emit_ns: dict[int, int] = {}  # per pending hello: when it went out
        self.hello_packet: dict[int, int] = {}  # per group: the packet of its last hello
        # Every group entry write: (group, r_g threshold, first packet to see it, hello ->
        # entry latency ns or -1): the timing ``herd simulate --delays`` replays (herd.delays).
        self.entry_writes: list[tuple[int, int, int, int]] = []
        # Every epoch start: (epoch, the switch's packets before it), in order.
        self.epoch_starts: list[tuple[int, int]] = []
        self.first_arrival_us = 0  # when the first packet arrived (wall clock)
        self._origin = np.full(1, ORIGIN_UNSET, np.uint64)  # herd_epoch_origin, as in Switch
        self.switch.epoch_origin_us = ORIGIN_UNSET
        self.packets_done = 0
        self.packets_total: int | None = None
        self.started = threading.Event()
        self.done = threading.Event()
        self.t0_ns = 0
        self.pps = 0.0
        self.wall_start_ns = 0
        self.wall_end_ns = 0
        self.stopping = threading.Event()
        self._warm_up(stages)

    @staticmethod
    def _warm_up(stages: tuple[int, ...]) -> None:
        """Load the compiled kernels before the first packet (a second, the first time)."""
        sw = Switch(stages)
        sw.install_group(0, 1, 0)
        sw.reset_tables()
        z = np.zeros(1, np.uint32)
        slot, fp = flows_slots(z, z, z.astype(np.uint16), z.astype(np.uint16),
                               z.astype(np.uint8), sw.stage_offsets, sw.stage_sizes)
        e = np.zeros(1, np.int64)
        _run_packets(sw.regs, sw.group_state, sw.group_tau, sw.group_r, sw.table,
                     sw.epoch_log, e, e, slot, fp, 0, 1, e.copy(), 0, e.copy(),
                     e.copy(), e.copy(), e.copy(), e.copy(), e.copy())
        decode_held_totals(sw.table, [(0, 0, 0, 0, 0)], stages, 0)

    # ---------------------------------------------------------------- CPU messages

    def emit(self, payload: bytes, ts_ns: int) -> None:
        self.emit_many([(payload, ts_ns)])

    def emit_many(self, messages: list[tuple[bytes, int]]) -> None:
        """CPU messages (payload, ts_ns) in order: one wake-up of the subscriber for all."""
        with self.cond:
            for payload, ts_ns in messages:
                if self.last_seq - self.acked >= self.cpu_limit:
                    self.cpu_dropped += 1
                    continue
                self.last_seq += 1
                self._buf.append(RECORD_HEAD.pack(16 + len(payload), self.last_seq, ts_ns)
                                 + payload)
            self.cond.notify_all()

    def ack(self, seq: int) -> None:
        with self.cond:
            if seq <= self.acked or seq > self.last_seq:
                return
            self.acked = seq
            drop = seq - self._base + 1
            # Trim in chunks: deleting from the head of a list is a memmove.
            if drop >= 4096 or drop * 2 >= len(self._buf):
                del self._buf[:drop]
                self._base = seq + 1
            # No notify: the subscriber waits for new messages, not for acknowledgements.

    def _pending_records(self, limit: int = 8192) -> list[bytes]:
        """Records from the cursor on (caller holds cond)."""
        a = self.cursor - self._base
        return self._buf[a: a + limit]

    def serve_subscriber(self, sock: socket.socket) -> None:
        """Stream CPU messages to ``sock`` until it closes or another subscriber takes over."""
        with self.cond:
            old = self.subscriber
            self.subscriber = sock
            # Resend everything not acknowledged: the new controller may be a restarted one.
            self.cursor = self.acked + 1
            self.cond.notify_all()
        if old is not None:
            with contextlib.suppress(OSError):
                old.shutdown(socket.SHUT_RDWR)
        log.info("%s: CPU subscriber connected; resending from seq %d", self.name, self.cursor)
        reader = threading.Thread(target=self._read_acks, args=(sock,), daemon=True)
        reader.start()
        try:
            while not self.stopping.is_set():
                with self.cond:
                    while (self.subscriber is sock and self.cursor > self.last_seq
                           and not self.stopping.is_set()):
                        self.cond.wait(0.5)
                    if self.subscriber is not sock:
                        return
                    recs = self._pending_records()
                    self.cursor += len(recs)
                if recs:
                    sock.sendall(b"".join(recs))
        except OSError:
            pass
        finally:
            with self.cond:
                if self.subscriber is sock:
                    self.subscriber = None
            with contextlib.suppress(OSError):
                sock.close()
            log.info("%s: CPU subscriber gone (acked %d of %d)", self.name, self.acked,
                     self.last_seq)

    def _read_acks(self, sock: socket.socket) -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                buf += data
                n = len(buf) // 8 * 8
                if n:
                    seqs = struct.unpack(f"!{n // 8}Q", buf[:n])
                    buf = buf[n:]
                    self.ack(max(seqs))
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    # ---------------------------------------------------------------- control

    def control(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise ValueError(f"unknown op {op!r}")
        return handler(req) or {}

    @staticmethod
    def _ints(req: dict[str, Any], key: str) -> list[int]:
        v = req.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, int) for x in v):
            raise ValueError(f"{key} must be a list of integers")
        return v

    def _group_entry(self, req: dict[str, Any]) -> None:
        table = req.get("table")
        if table == FORWARD_TABLE:
            self.forwarding[json.dumps(req.get("key"))] = [req.get("action"), req.get("params")]
            return
        if table != GROUP_TABLE:
            raise ValueError(f"no table {table!r}")
        if req.get("action") != GROUP_ACTION:
            raise ValueError(f"table {GROUP_TABLE} has no action {req.get('action')!r}")
        key = self._ints(req, "key")
        params = self._ints(req, "params")
        if len(key) != 2 or not all(0 <= x < 256 for x in key):
            raise ValueError("group_table key is (src8, dst8), each 0..255")
        if len(params) != 2 or params[0] < 1 or not all(0 <= x < 1 << 32 for x in params):
            raise ValueError("set_group_params takes (tau >= 1, r), 32-bit")
        g = key[0] << 8 | key[1]
        with self.lock:
            self.switch.install_group(g, params[0], params[1])
            self.table_writes += 1
            emitted = self.hello_emit_ns.pop(g, None)
            # packets_done moves under the lock: the next packet is the first to see it.
            self.entry_writes.append((g, params[1], self.packets_done, -1 if emitted is None
                                      else time.monotonic_ns() - emitted))

    def op_batch(self, req: dict[str, Any]) -> dict[str, Any]:
        """Several operations in one request, in order; stops at the first refused one."""
        ops = req.get("ops")
        if not isinstance(ops, list) or len(ops) > 65536:
            raise ValueError("batch takes ops: a list of at most 65536 requests")
        for i, sub in enumerate(ops):
            if not isinstance(sub, dict) or sub.get("op") in ("batch", "subscribe", "stats"):
                raise ValueError(f"batch op {i}: not a plain request")
            try:
                self.control(sub)
            except (ValueError, TypeError) as e:
                raise ValueError(f"batch op {i}: {e}") from None
        return {"done": len(ops)}

    def op_table_add(self, req: dict[str, Any]) -> None:
        self._group_entry(req)

    def op_table_modify(self, req: dict[str, Any]) -> None:
        self._group_entry(req)

    def op_table_set_default(self, req: dict[str, Any]) -> None:
        if req.get("table") != FORWARD_TABLE:
            raise ValueError(f"no default action for table {req.get('table')!r}")
        self.forwarding["default"] = [req.get("action"), req.get("params")]

    def op_table_clear(self, req: dict[str, Any]) -> None:
        table = req.get("table")
        if table == FORWARD_TABLE:
            self.forwarding.clear()
        elif table == GROUP_TABLE:
            with self.lock:
                self.switch.clear_groups()
        else:
            raise ValueError(f"no table {table!r}")

    def _register(self, name: Any) -> np.ndarray:
        sw = self.switch
        arrays = {REG_HERD: sw.regs, REG_STAGE_FP: sw.fps, REG_STAGE_COUNT: sw.counts,
                  REG_STAGE_EPOCH: sw.epochs, REG_STAGE_TOTAL: sw.totals,
                  REG_STAGE_PREV_FP: sw.prev_fps, REG_STAGE_PREV_TOTAL: sw.prev_totals,
                  REG_HELLO_SENT: sw.group_state,
                  REG_EPOCH_LOG: sw.epoch_log, REG_EPOCH_ORIGIN: self._origin}
        if name not in arrays:
            raise ValueError(f"no register {name!r}")
        return arrays[name]

    def _index(self, req: dict[str, Any], size: int) -> int:
        i = req.get("index")
        if not isinstance(i, int) or not 0 <= i < size:
            raise ValueError(f"register index {i!r} out of range 0..{size - 1}")
        return i

    def op_register_read(self, req: dict[str, Any]) -> dict[str, Any]:
        arr = self._register(req.get("name"))
        i = self._index(req, len(arr))
        with self.lock:
            v = int(arr[i])
        if req.get("name") == REG_HELLO_SENT:
            v = int(v == GROUP_HELLO_SENT)
        return {"value": v}

    def op_register_write(self, req: dict[str, Any]) -> None:
        name = req.get("name")
        arr = self._register(name)
        i = self._index(req, len(arr))
        v = req.get("value")
        bits = REGISTER_BITS[name]
        if not isinstance(v, int) or not 0 <= v < 1 << bits:
            raise ValueError(f"register value {v!r} is not {bits}-bit")
        with self.lock:
            if name == REG_HELLO_SENT:
                # One bit per group beside the table: only a group without an entry has one.
                if arr[i] != GROUP_INSTALLED:
                    arr[i] = GROUP_HELLO_SENT if v else GROUP_MISS
            else:
                arr[i] = v
            self.switch.epoch_origin_us = int(self._origin[0])

    def op_register_reset(self, req: dict[str, Any]) -> None:
        name = req.get("name")
        arr = self._register(name)
        with self.lock:
            if name == REG_HELLO_SENT:
                arr[arr == GROUP_HELLO_SENT] = GROUP_MISS
            else:
                arr[:] = ORIGIN_UNSET if name == REG_EPOCH_ORIGIN else 0
            self.switch.epoch_origin_us = int(self._origin[0])

    def op_reset_tables(self, req: dict[str, Any]) -> None:
        with self.lock:
            self.switch.reset_tables()
            self.table_resets += 1

    def op_held_totals(self, req: dict[str, Any]) -> dict[str, Any]:
        """Confirm's pull: each flow's held total at the end of ``epoch``
        (``herd.switch.held_total``; -1 where overwritten), all read in one step under the
        data-plane lock, so no packet lands between two flows. ``stages`` must be this
        switch's: the caller hashes nothing, but a controller with other stages would be
        asking about another layout."""
        epoch = req.get("epoch")
        if not isinstance(epoch, int) or not 0 <= epoch < 1 << 32:
            raise ValueError(f"epoch {epoch!r}: an integer in [0, 2^32)")
        stages = self._ints(req, "stages")
        if tuple(stages) != self.switch.stages:
            raise ValueError(f"stages {tuple(stages)}: this switch has {self.switch.stages}")
        flows = req.get("flows")
        if not isinstance(flows, list) or len(flows) > 1 << 20:
            raise ValueError("flows must be a list of at most 2^20 5-tuples")
        limits = (1 << 32, 1 << 32, 1 << 16, 1 << 16, 1 << 8)
        for f in flows:
            if (not isinstance(f, list) or len(f) != 5
                    or not all(isinstance(x, int) and 0 <= x < m
                               for x, m in zip(f, limits, strict=True))):
                raise ValueError(f"flow {f!r}: (src, dst, sport, dport, proto) in range")
        with self.lock:
            return {"totals": decode_held_totals(self.switch.table, flows, stages, epoch)}

    def op_inject_cpu(self, req: dict[str, Any]) -> None:
        try:
            payload = bytes.fromhex(req.get("hex", ""))
        except (TypeError, ValueError):
            raise ValueError("hex must be a hex string") from None
        if len(payload) > 1024:
            raise ValueError("injected payload longer than 1024 bytes")
        self.emit(payload, 0)

    def op_start(self, req: dict[str, Any]) -> None:
        t0 = req.get("t0_ns", 0)
        pps = req.get("pps", 0)
        if not isinstance(t0, int) or not isinstance(pps, int | float) or pps < 0:
            raise ValueError("start takes t0_ns (int) and pps (>= 0)")
        self.t0_ns = t0 or time.time_ns()
        self.pps = float(pps)
        self.started.set()

    def op_set_epoch_origin(self, req: dict[str, Any]) -> None:
        """Epoch 0 begins at ``origin_us`` (wall clock, microseconds since the Unix epoch:
        this switch's clock)."""
        v = req.get("origin_us")
        if not isinstance(v, int) or not 0 <= v < 1 << REGISTER_BITS[REG_EPOCH_ORIGIN]:
            raise ValueError(f"origin_us {v!r}: Unix microseconds, 0 <= origin < 2^63")
        with self.lock:
            self._origin[0] = v
            self.switch.epoch_origin_us = v

    def op_epoch_starts(self, req: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return {"starts": [list(x) for x in self.epoch_starts]}

    def op_shutdown(self, req: dict[str, Any]) -> None:
        self.stopping.set()

    def op_stats(self, req: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            regs = self.switch.registers()
            installed = int(np.count_nonzero(self.switch.group_state == GROUP_INSTALLED))
            pending = len(self.hello_emit_ns)
            origin = self.switch.epoch_origin_us
            origin = None if origin == ORIGIN_UNSET else origin
            first_us = self.first_arrival_us
            # Only with latencies: the harness polls stats many times a second.
            if req.get("latencies"):
                starts = [list(x) for x in self.epoch_starts]
                writes = [(g, self.hello_packet.get(g, -1), r, packet, ns)
                          for g, r, packet, ns in self.entry_writes]
                writes += [(g, self.hello_packet.get(g, -1), 0, -1, -1)
                           for g in self.hello_emit_ns]
        with self.cond:
            cpu = {"cpu_emitted": self.last_seq, "cpu_acked": self.acked,
                   "cpu_dropped": self.cpu_dropped, "subscriber": self.subscriber is not None}
        out = {
            "name": self.name, "configured": regs["hold_start"] != 0,
            "started": self.started.is_set(), "done": self.done.is_set(),
            "packets_done": self.packets_done, "packets_total": self.packets_total,
            "registers": regs, "groups_installed": installed, "pending_hellos": pending,
            "table_writes": self.table_writes, "table_resets": self.table_resets,
            "malformed_requests": self.malformed_requests,
            "wall_start_ns": self.wall_start_ns, "wall_end_ns": self.wall_end_ns,
            "epoch_origin_us": origin, "first_arrival_us": first_us, **cpu,
        }
        if req.get("latencies"):
            out["hello_latency_ns"] = [w[4] for w in writes if w[4] >= 0]
            out["entry_writes"] = writes
            out["epoch_starts"] = starts
        return out

    # ---------------------------------------------------------------- packets

    def run(self, source: PacketSource) -> None:
        """Feed the source through the switch once started; pace by the schedule."""
        run_switches([(self, source)])

    def _packets(self, feed: _Feed, i: int, end: int) -> None:
        """Packets [i, end) of the feed's batch through the switch; their CPU messages out."""
        sw = self.switch
        batch, flow, flow_group = feed.batch, feed.flow, feed.flow_group
        ev_pkt, ev_type, ev_cnt, ev_epoch, ep_epoch, ep_packet = feed.buffers
        if feed.arrival_us is not None:
            arrival_us = feed.arrival_us[i:end]
        else:
            arrival_us = np.full(end - i, time.time_ns() // 1000, np.int64)
        with self.lock:
            k, m = _run_packets(sw.regs, sw.group_state, sw.group_tau, sw.group_r,
                                sw.table, sw.epoch_log, flow,
                                flow_group, feed.slot, feed.fp, i, end, arrival_us,
                                sw.epoch_origin_us, ev_pkt, ev_type, ev_cnt, ev_epoch,
                                ep_epoch, ep_packet)
            if not self.first_arrival_us:
                self.first_arrival_us = int(arrival_us[0])
            for j in range(m):
                self.epoch_starts.append((int(ep_epoch[j]), int(ep_packet[j])))
            now = time.monotonic_ns()
            first = feed.numbered - feed.n  # the switch's number of this batch's packet 0
            for j in range(k):
                if ev_type[j] == EV_HELLO:
                    g = int(flow_group[flow[ev_pkt[j]]])
                    self.hello_emit_ns.setdefault(g, now)
                    self.hello_packet[g] = first + int(ev_pkt[j])
            self.packets_done += end - i
        if k:
            self.emit_many([
                (CPU_HEADER.pack(int(ev_type[j]), int(batch.flow_src[f]),
                                 int(batch.flow_dst[f]), int(batch.flow_sport[f]),
                                 int(batch.flow_dport[f]), int(batch.flow_proto[f]),
                                 int(ev_cnt[j]), int(ev_epoch[j])), int(batch.ts_ns[p]))
                for j in range(k) for p in (int(ev_pkt[j]),) for f in (flow[p],)])

    _slot_cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def _slots(self, batch: PacketBatch) -> tuple[np.ndarray, np.ndarray]:
        # Batches of one source share the flow table: hash it once.
        key = id(batch.flow_src)
        if self._slot_cache is None or self._slot_cache[0] != key:
            sw = self.switch
            slot, fp = flows_slots(batch.flow_src, batch.flow_dst, batch.flow_sport,
                                   batch.flow_dport, batch.flow_proto, sw.stage_offsets,
                                   sw.stage_sizes)
            self._slot_cache = (key, slot, fp)
        return self._slot_cache[1], self._slot_cache[2]


class _Feed:
    """One switch's packets on their way through it: the batch at hand and the position in
    it. ``step`` takes what is due; ``run_switches`` steps several feeds in one thread."""

    def __init__(self, model: ModelSwitch, source: PacketSource) -> None:
        self.model = model
        model.packets_total = source.total
        self._batches = source.batches()
        self.begun = False
        self.numbered = 0  # packets of the batches so far, this one included
        self.i = self.n = 0
        self.batch: PacketBatch | None = None
        self.arrival_us: np.ndarray | None = None

    def _next_batch(self) -> bool:
        m = self.model
        batch = next(self._batches, None)
        if batch is None:
            return False
        n = len(batch.ts_ns)
        self.batch, self.i, self.n = batch, 0, n
        self.flow_group = (((batch.flow_src >> 24) << 8) | (batch.flow_dst >> 24)
                           ).astype(np.int64)
        self.slot, self.fp = m._slots(batch)
        self.due = batch.due if batch.due is not None else np.arange(self.numbered,
                                                                    self.numbered + n)
        self.numbered += n
        size = min(n, CHUNK)
        self.buffers = tuple(np.empty(size, np.int64) for _ in range(6))
        self.flow = np.asarray(batch.flow, np.int64)
        if batch.arrival_ns is not None:
            self.arrival_us = batch.arrival_ns // 1000
        elif m.pps > 0:  # on the wire when due, however late the pipeline is
            self.arrival_us = (m.t0_ns + (self.due * (1e9 / m.pps)).astype(np.int64)) // 1000
        else:  # when the pipeline takes it
            self.arrival_us = None
        return True

    def step(self) -> float | None:
        """Up to CHUNK packets due now through the switch. Returns 0 if more may be due at
        once, else the seconds until the next one is due; None once the source is exhausted
        (or the switch is stopping)."""
        m = self.model
        if m.stopping.is_set():
            return None
        if not self.begun:
            # Every switch starts at the same instant t0 (paced or not).
            if not m.started.is_set():
                return PACE_MAX
            wait = (m.t0_ns - time.time_ns()) / 1e9
            if wait > 0:
                return wait
            self.begun = True
            m.wall_start_ns = time.time_ns()
        if self.i >= self.n and not self._next_batch():
            return None
        i = self.i
        end = min(i + CHUNK, self.n)
        if m.pps > 0:
            # due <= x is due <= floor(x) (due is integral); a float key would make numpy
            # convert the whole batch to float on every look (~20 us for 64k packets).
            now_due = math.floor((time.time_ns() - m.t0_ns) * m.pps / 1e9)
            end = min(end, int(self.due.searchsorted(now_due, side="right")))
            if end <= i:
                return max((m.t0_ns + self.due[i] / m.pps * 1e9 - time.time_ns()) / 1e9, 1e-9)
        m._packets(self, i, end)
        self.i = end
        if m.pps > 0 and end < self.n and end - i < CHUNK:
            # Caught up with the schedule: wait for the next packet. Looking again at once
            # would find a packet or two due (or, with several switches, one somewhere) and
            # spin through the schedule a packet at a time.
            return max((m.t0_ns + self.due[end] / m.pps * 1e9 - time.time_ns()) / 1e9, 1e-9)
        return 0.0

    def finish(self) -> None:
        m = self.model
        if not self.begun:
            return
        m.wall_end_ns = time.time_ns()
        m.done.set()
        log.info("%s: %d packets done, %d CPU messages", m.name, m.packets_done, m.last_seq)


def run_switches(feeds: list[tuple[ModelSwitch, PacketSource]]) -> None:
    """Feed each source through its switch, paced by the schedule, all in this one thread:
    one wake-up per pacing step serves every switch (a thread or process per switch would
    each wake as often, for a few packets)."""
    active = [_Feed(m, s) for m, s in feeds]
    while active:
        waits = []
        for feed in list(active):
            wait = feed.step()
            if wait is None:
                feed.finish()
                active.remove(feed)
            else:
                waits.append(wait)
        if waits and min(waits) > 0:
            # Sleep in steps of at least PACE_STEP: waking per packet would cost more CPU
            # than the packets; a packet is late by less than a step.
            time.sleep(min(max(min(waits), PACE_STEP), PACE_MAX))


# ------------------------------------------------------------------------------- server


def parse_address(address: str) -> tuple[int, Any]:
    """``unix:/path`` -> (AF_UNIX, path); ``host:port`` -> (AF_INET, (host, port))."""
    if address.startswith("unix:"):
        return socket.AF_UNIX, address[5:]
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise HerdInputError(f"address {address!r}: use unix:/path or host:port")
    return socket.AF_INET, (host or "127.0.0.1", int(port))


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise ConnectionError("connection closed")
        buf += data
    return bytes(buf)


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = FRAME.unpack(recv_exact(sock, 4))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes exceeds {MAX_FRAME}")
    return recv_exact(sock, n)


def send_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(FRAME.pack(len(data)) + data)


class ModelSwitchServer:
    """Accepts driver connections for one ModelSwitch."""

    def __init__(self, model: ModelSwitch, address: str) -> None:
        self.model = model
        family, addr = parse_address(address)
        if family == socket.AF_UNIX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr)
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        if family == socket.AF_UNIX:
            os.chmod(addr, 0o600)  # only this user's controllers may drive the switch
        self.sock.listen(16)
        self.family = family
        if family == socket.AF_UNIX:
            self.address = f"unix:{addr}"
        else:
            h, p = self.sock.getsockname()[:2]
            self.address = f"{h}:{p}"

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)
        while not self.model.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            conn.settimeout(None)
            if self.family == socket.AF_INET:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        m = self.model
        try:
            while not m.stopping.is_set():
                try:
                    raw = recv_frame(conn)
                except (ConnectionError, OSError):
                    return
                try:
                    req = json.loads(raw)
                    if not isinstance(req, dict):
                        raise ValueError("a request is a JSON object")
                except (ValueError, UnicodeDecodeError) as e:
                    m.malformed_requests += 1
                    send_frame(conn, json.dumps({"ok": False, "error": f"malformed: {e}"})
                               .encode())
                    continue
                if req.get("op") == "subscribe":
                    m.serve_subscriber(conn)
                    return
                try:
                    reply = {"ok": True, **m.control(req)}
                except (ValueError, TypeError) as e:
                    reply = {"ok": False, "error": str(e)}
                send_frame(conn, json.dumps(reply).encode())
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):
                os.unlink(self.address[5:])


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Several switches in one process: --name, --listen, --packets (and --ready-file,
    # --stats-file when given) once per switch, in the same order.
    p.add_argument("--name", required=True, action="append",
                   help="switch name, e.g. s1 (repeat to host several switches)")
    p.add_argument("--listen", required=True, action="append",
                   help="unix:/path or host:port (one per --name)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--packets", action="append",
                     help="per-switch packet arrays (.npz, as herd replay writes; one per "
                     "--name)")
    src.add_argument("--trace", help="a capture: every IPv4 packet goes through every switch")
    p.add_argument("--stages", default="4096,2048,1024", help="hash-table stage sizes")
    p.add_argument("--start", choices=("command", "configured", "now"), default="configured",
                   help="when packets begin: on a start command, once a controller has "
                   "configured the switch (default), or at once")
    p.add_argument("--pps", type=float, default=0.0,
                   help="packets/s when not started by command (0: full speed)")
    p.add_argument("--cpu-buffer", type=int, default=DEFAULT_CPU_BUFFER,
                   help="CPU messages held unacknowledged at most")
    p.add_argument("--ready-file", action="append",
                   help="written with the address once listening (one per --name)")
    p.add_argument("--stats-file", action="append",
                   help="switch counters written here on exit (one per --name)")
    p.add_argument("--log-level", default="INFO")


def _per_switch(args: argparse.Namespace, key: str) -> list[Any]:
    """The values of a per-switch option, one per --name (None each if not given)."""
    values = getattr(args, key)
    if values is None:
        return [None] * len(args.name)
    if len(values) != len(args.name):
        raise HerdInputError(f"--{key.replace('_', '-')} given {len(values)} times for "
                             f"{len(args.name)} switches: give it once per --name")
    return list(values)


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, f"switch-{','.join(args.name)}")
    sys.setswitchinterval(0.0005)  # control writes must not wait 5 ms for the packet thread
    try:
        stages = tuple(int(x) for x in args.stages.split(","))
    except ValueError:
        raise HerdInputError(f"--stages {args.stages!r}: not comma-separated integers") from None
    listens, readies, stats_files = (_per_switch(args, k) for k in
                                     ("listen", "ready_file", "stats_file"))
    sources: list[PacketSource] = ([ArraySource(x) for x in _per_switch(args, "packets")]
                                   if args.packets else [TraceSource(args.trace)
                                                         for _ in args.name])
    models = [ModelSwitch(name, stages, args.cpu_buffer) for name in args.name]
    servers = [ModelSwitchServer(m, listen) for m, listen in zip(models, listens, strict=True)]
    stopping = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stopping.set()
        for m in models:
            m.stopping.set()
            m.started.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True, name="accept").start()
    for model in models:
        if args.start == "now":
            model.op_start({"pps": args.pps})
        elif args.start == "configured":
            def starter(model: ModelSwitch = model) -> None:
                while not model.stopping.is_set():
                    if model.switch.regs[REG_HOLD_START] != 0:
                        model.op_start({"pps": args.pps})
                        return
                    time.sleep(0.05)

            threading.Thread(target=starter, daemon=True).start()
    for server, ready in zip(servers, readies, strict=True):
        if ready:
            atomic_write_text(ready, server.address + "\n")
        log.info("%s listening on %s", server.model.name, server.address)
    runner = threading.Thread(target=run_switches, args=(list(zip(models, sources,
                                                                  strict=True)),),
                              daemon=True, name="packets")
    runner.start()
    # A shutdown request stops the switch it was sent to; the process ends with the last.
    while not all(m.stopping.is_set() for m in models):
        stopping.wait(0.5)
    for model, server, stats_file in zip(models, servers, stats_files, strict=True):
        with model.cond:
            model.cond.notify_all()
        server.close()
        if stats_file:
            atomic_write_json(stats_file, model.op_stats({"latencies": True}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="herd model-switch", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except HerdInputError as e:
        print(f"herd model-switch: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
