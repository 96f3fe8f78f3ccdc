"""The local controller process: one per ingress switch, I/O around
``herd.controller.LocalController``.

On start it configures its switch through a driver (PRNG seed, sampling threshold, hold
start, epoch length W in the switch's clock, the forwarding entry), then connects to the
coordinator, retrying with backoff. It reads the switch's CPU messages: hellos are deduped
per group (``LocalController.on_hello``) and forwarded; the l_g that comes back, or is
pushed later, becomes the group entry (``LocalController.on_l_g``) written to the switch;
reports are buffered and streamed to the coordinator in batches, each with the epoch the
switch sent it in (the coordinator counts it there); overflows follow the policy
(``LocalController.on_overflow``). Hellos, l_g and group entries know no epochs: locality
persists across them.

No message is lost and none is counted twice:
  - reports keep the switch's sequence number end to end; the coordinator counts a report
    only if its number is above the highest it holds for the switch (exact dedupe);
  - the controller acknowledges a CPU message to the switch only once it is fully handled -
    a report acknowledged by the coordinator (i.e. journaled), a hello whose group entry is
    installed. The model switch keeps everything unacknowledged and resends it to a new
    reader: a controller killed with -9 and restarted resumes exactly there;
  - while the coordinator is unreachable, reports wait in the controller's buffer and hellos
    are retried; everything is resent on reconnection;
  - after a restart, the Subscribe stream opens with a snapshot of l_g for every group this
    switch said hello for: the controller reinstalls those entries, and does not reseed a
    switch that is already configured (its hold-start register is set).

Confirm's pull (``herd.coordinator``; the coordinator runs with ``--confirm``): after Register
the controller keeps a Pulls stream open. The coordinator sends an epoch's candidates in parts;
once a pull's parts are all in, the driver reads their held totals in one step
(``SwitchDriver.held_totals``, with the switch's stage sizes ``--stages``) and every part is
answered. A table reset (overflow policy "reset") after epoch e ended clears what the switch
held of e, so the answers for e are then HELD_UNKNOWN, never a wrong 0.
"""

from __future__ import annotations

import argparse
import logging
import queue
import re
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import grpc

from herd.controller import OVERFLOW_POLICIES, LocalController
from herd.errors import HerdInputError
from herd.messages import CPU_HEADER_LEN, CpuMessage, MessageType
from herd.params import DEFAULT_STAGES
from herd.services.common import (
    DEFAULT_COORDINATOR,
    TOKEN_METADATA_KEY,
    Rejections,
    atomic_write_json,
    drain,
    load_token,
    setup_logging,
)
from herd.services.drivers import DRIVERS, open_driver
from herd.services.drivers.base import (
    AGGREGATOR_PORT,
    FORWARD_ACTION,
    FORWARD_TABLE,
    GROUP_TABLE,
    REG_HELLO_SENT,
    REG_HERD,
    CpuRecord,
    SwitchDriver,
)
from herd.services.rpc import herd_pb2 as pb
from herd.services.security import add_tls_arguments, grpc_channel
from herd.switch import (
    HELD_UNKNOWN,
    REG_EPOCH,
    REG_EPOCH_US,
    REG_HOLD_START,
    REG_PRNG,
    REG_SAMPLE_THRESHOLD,
)

log = logging.getLogger("herd.controller")

SERVICE = "/herd.v1.Coordinator/"
MAX_BATCH = 4096  # reports per batch
WINDOW = 2  # report batches in flight per stream
HELLO_WINDOW = 1  # hello batches in flight per stream (2 or 4 measured no better)
LINGER = 0.005  # seconds a small batch waits for more reports
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0


class FatalError(Exception):
    """The coordinator refused us for good (wrong token, unknown switch)."""


class CoordinatorClient:
    """Typed calls to the coordinator with the token attached (stubs built on the message
    classes of herd_pb2; the generated herd_pb2_grpc offers the same)."""

    def __init__(self, address: str, token: str | None, ca_file: str | None = None,
                 server_name: str | None = None) -> None:
        """TLS verified against ``ca_file`` when given (``server_name``: the name the
        certificate must carry, when not the host of ``address``), else in clear."""
        self.address = address
        self.channel = grpc_channel(address, ca_file, options=[
            ("grpc.max_receive_message_length", 64 << 20),
            # Reconnect quickly after a coordinator restart.
            ("grpc.initial_reconnect_backoff_ms", 50),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ], server_name=server_name)
        self.metadata = ((TOKEN_METADATA_KEY, token),) if token else ()
        ch = self.channel
        self.register = ch.unary_unary(SERVICE + "Register", pb.RegisterRequest.SerializeToString,
                                       pb.RegisterReply.FromString)
        self.hello = ch.unary_unary(SERVICE + "Hello", pb.HelloRequest.SerializeToString,
                                    pb.HelloReply.FromString)
        self.hellos = ch.stream_stream(SERVICE + "Hellos", pb.HelloBatch.SerializeToString,
                                       pb.HelloAnswers.FromString)
        self.subscribe = ch.unary_stream(SERVICE + "Subscribe",
                                         pb.SubscribeRequest.SerializeToString,
                                         pb.LgUpdate.FromString)
        self.reports = ch.stream_stream(SERVICE + "Reports", pb.ReportBatch.SerializeToString,
                                        pb.ReportAck.FromString)
        self.query = ch.unary_unary(SERVICE + "Query", pb.QueryRequest.SerializeToString,
                                    pb.QueryReply.FromString)
        self.flush = ch.unary_unary(SERVICE + "Flush", pb.FlushRequest.SerializeToString,
                                    pb.FlushReply.FromString)
        self.pulls = ch.stream_stream(SERVICE + "Pulls", pb.PullAnswer.SerializeToString,
                                      pb.PullRequest.FromString)

    def close(self) -> None:
        self.channel.close()


def switch_index_of(name: str) -> int:
    """s1 -> 0, s10 -> 9: the index the simulator gives the switch (its PRNG seed)."""
    m = re.search(r"(\d+)$", name)
    if not m or int(m.group(1)) < 1:
        raise HerdInputError(f"switch {name!r}: cannot derive its index; give --switch-index")
    return int(m.group(1)) - 1


class ControllerService:
    def __init__(self, name: str, index: int, lc: LocalController, driver: SwitchDriver,
                 coordinator: CoordinatorClient, fresh: bool = False,
                 status_file: str | None = None,
                 stages: tuple[int, ...] = DEFAULT_STAGES) -> None:
        self.name = name
        self.index = index
        self.lc = lc
        self.stages = tuple(stages)
        # Confirm: the highest switch epoch in which the tables were reset (-1: never). Held
        # with _reset_lock around a reset and around a pull's read, so that no reset falls
        # between the check and the read.
        self.reset_epoch = -1
        self._reset_lock = threading.Lock()
        self.driver = driver
        self.coord = coordinator
        self.fresh = fresh
        self.status_file = status_file
        self.stop = threading.Event()
        self.fatal: str | None = None
        self.lock = threading.RLock()  # LocalController state, pending hellos, the switch ack
        self.rejections = Rejections(log)
        self.switch_id: int | None = None
        self.registered = threading.Event()
        self.synced = threading.Event()  # the Subscribe snapshot has been applied
        # CPU messages: highest seq seen, highest acknowledged to the switch
        self.last_seen = 0
        self.acked_to_switch = 0
        self.pending_hellos: dict[int, list[int]] = defaultdict(list)  # g -> seqs
        self._hello_q: list[tuple[int, int, CpuMessage]] = []
        self._hello_cv = threading.Condition()
        self._hello_t0: dict[int, int] = {}  # g -> when its hello arrived (diagnostics)
        self._hello_sent: dict[int, tuple[int, int, CpuMessage]] = {}  # seq -> in flight
        self._hello_gen = 0
        self._hello_batches = 0  # in flight on the current stream
        self._pushes: dict[int, int] = {}  # g -> newest l_g pushed, not yet written
        # (group, hello packet, r_g, switch packet counter after the write, latency ns) per
        # entry write, for switches that do not record it (Driver.entry_clock)
        self.entry_writes: list[tuple[int, int, int, int, int]] = []
        self._push_cv = threading.Condition()
        # Reports not yet acknowledged by the coordinator, in seq order; _rsent of them were
        # sent on the current stream.
        self._rbuf: list[tuple[int, int, int, int, int, int, int, int, int]] = []
        self._rsent = 0
        self._in_flight = 0
        self._rcv = threading.Condition()
        self._stream_gen = 0
        self.counters: dict[str, int] = defaultdict(int)

    # ---------------------------------------------------------------- switch setup

    def configure_switch(self) -> bool:
        """Seed and configure a fresh switch; leave a configured one alone (a restarted
        controller must not disturb the switch's PRNG or tables). True if configured now."""
        hold = self.driver.register_read(REG_HERD, REG_HOLD_START)
        cfg = self.lc.switch_config()
        if hold != 0 and not self.fresh:
            thr = self.driver.register_read(REG_HERD, REG_SAMPLE_THRESHOLD)
            w = self.driver.register_read(REG_HERD, REG_EPOCH_US)
            if (hold, thr, w) != (cfg.hold_start, cfg.sample_threshold, cfg.epoch_us):
                log.warning("%s is configured with hold start %d / sample threshold %d / epoch "
                            "%d us, this controller would write %d / %d / %d; keeping the "
                            "switch's (use --fresh to reconfigure)", self.name, hold, thr, w,
                            cfg.hold_start, cfg.sample_threshold, cfg.epoch_us)
            log.info("%s already configured: resuming without reseeding", self.name)
            return False
        d = self.driver
        d.table_clear(GROUP_TABLE)
        d.register_reset(REG_HELLO_SENT)
        d.table_set_default(FORWARD_TABLE, FORWARD_ACTION, (AGGREGATOR_PORT,))
        d.register_write(REG_HERD, REG_PRNG, cfg.prng_seed)
        d.register_write(REG_HERD, REG_SAMPLE_THRESHOLD, cfg.sample_threshold)
        d.register_write(REG_HERD, REG_EPOCH_US, cfg.epoch_us)
        # Last: a non-zero hold start marks the switch configured (the model switch starts
        # its packets on it).
        d.register_write(REG_HERD, REG_HOLD_START, cfg.hold_start)
        log.info("%s configured: seed %#x, s=%s, hold start %d, epoch %d us", self.name,
                 cfg.prng_seed, self.lc.s, cfg.hold_start, cfg.epoch_us)
        return True

    # ---------------------------------------------------------------- CPU messages

    def cpu_loop(self) -> None:
        backoff = BACKOFF_MIN
        while not self.stop.is_set():
            try:
                for rec in self.driver.messages():
                    backoff = BACKOFF_MIN
                    self.on_record(rec)
                    if self.stop.is_set():
                        break
            except ConnectionError as e:
                if self.stop.is_set():
                    return
                self.counters["switch_reconnects"] += 1
                log.warning("%s: CPU stream: %s; reconnecting in %.2f s", self.name, e, backoff)
            except HerdInputError as e:
                self.fatal = str(e)
                self.stop.set()
                return
            self.stop.wait(backoff)
            backoff = min(2 * backoff, BACKOFF_MAX)

    def on_record(self, rec: CpuRecord) -> None:
        # One critical section from "seen" to "in a buffer": the switch acknowledgement
        # (watermark) must never pass a message that is not yet held somewhere.
        with self.lock:
            self._on_record(rec)

    def _on_record(self, rec: CpuRecord) -> None:
        if rec.seq <= self.last_seen:
            self.counters["cpu_resent_skipped"] += 1  # resent by the switch: in hand
            return
        self.last_seen = rec.seq
        self.counters["cpu_messages"] += 1
        try:
            if len(rec.payload) != CPU_HEADER_LEN:
                raise ValueError(f"CPU message of {len(rec.payload)} bytes, expected "
                                 f"{CPU_HEADER_LEN}")
            msg = CpuMessage.unpack(rec.payload)
        except ValueError as e:
            self.rejections.reject("malformed_cpu", self.name, f"seq {rec.seq}: {e}")
            self.counters["malformed_cpu"] += 1
            return
        if msg.type == MessageType.HELLO:
            self.counters["hellos"] += 1
            self.on_hello(rec.seq, msg)
        elif msg.type == MessageType.REPORT:
            self.counters["reports"] += 1
            with self._rcv:
                self._rbuf.append((rec.seq, rec.ts_ns, msg.src, msg.dst, msg.sport, msg.dport,
                                   msg.proto, msg.count, msg.epoch))
                # Wake the sender only for what it waits for (something to send, a full
                # batch): a wake-up per report costs more than the report.
                if len(self._rbuf) - self._rsent in (1, MAX_BATCH):
                    self._rcv.notify_all()
        else:
            self.counters["overflows"] += 1
            if self.lc.on_overflow():
                with self._reset_lock:
                    # Noted before the reset: a pull reading meanwhile must not trust e.
                    self.reset_epoch = max(self.reset_epoch, msg.epoch)
                    self.driver.reset_tables()
                    # The switch may have entered a later epoch since the overflow.
                    self.reset_epoch = max(self.reset_epoch,
                                           self.driver.register_read(REG_HERD, REG_EPOCH))
                self.counters["table_resets"] += 1
                self.lc.on_reset_done()

    def on_hello(self, seq: int, msg: CpuMessage) -> None:
        g = msg.group
        with self.lock:
            known = self.lc.l_g.get(g)
            if known is not None:
                # The entry exists (the hello crossed its installation, or the switch lost
                # it): write it again, idempotently.
                entry = next(e for e in self.lc.entries() if e.g == g)
                self.driver.install_group(g, entry.tau, entry.r_threshold, modify=True)
                self.counters["table_writes"] += 1
                return
            self.pending_hellos[g].append(seq)
            forward = self.lc.on_hello(g)
        if forward:
            self.counters["hellos_forwarded"] += 1
            with self._hello_cv:
                self._hello_t0[g] = time.monotonic_ns()
                self._hello_q.append((g, seq, msg))
                if len(self._hello_q) == 1:  # the sender waits only for a first one
                    self._hello_cv.notify_all()

    def apply_l_gs(self, updates: list[tuple[int, int]]) -> None:
        """Install or modify the entries of several (g, l_g) (from hello answers, pushes or a
        snapshot): those that change are written in one driver call."""
        with self.lock:
            writes = []
            for g, l_g in updates:
                known = self.lc.l_g.get(g)
                if known is not None and l_g < known:
                    # l_g only grows at the coordinator: an older answer overtaken by a push
                    self.counters["stale_l_g"] += 1
                    continue
                entry = self.lc.on_l_g(g, l_g)
                if entry is not None:
                    writes.append((g, entry.tau, entry.r_threshold, known is not None))
            if writes:
                self.driver.install_groups(writes)
                self.counters["table_writes"] += len(writes)
                self._record_writes(writes)
            # Only now, with the entries in the switch, are those hellos handled.
            for g, _ in updates:
                self.pending_hellos.pop(g, None)

    def _record_writes(self, writes: list[tuple[int, int, int, bool]]) -> None:
        """Where the switch does not record when entries took effect (BMv2), note it here:
        its packet counter just after the write (herd.delays; the status file carries them)."""
        packet = self.driver.entry_clock()
        if packet is None:
            return
        now = time.monotonic_ns()
        for g, _, r, modify in writes:
            t0 = None if modify else self._hello_t0.get(g)  # latency of the first write only
            self.entry_writes.append((g, -1, r, packet, -1 if t0 is None else now - t0))

    def watermark(self) -> int:
        """Highest seq such that every CPU message up to it is handled."""
        with self.lock:  # lock order everywhere: self.lock, then self._rcv
            w = self.last_seen
            for seqs in self.pending_hellos.values():
                if seqs:
                    w = min(w, seqs[0] - 1)
            with self._rcv:
                if self._rbuf:
                    w = min(w, self._rbuf[0][0] - 1)
        return w

    def ack_loop(self) -> None:
        while not self.stop.wait(0.02):
            self.ack_switch()

    def ack_switch(self) -> None:
        w = self.watermark()
        if w > self.acked_to_switch:
            self.driver.ack(w)
            self.acked_to_switch = w

    # ---------------------------------------------------------------- coordinator

    def _call_register(self) -> None:
        lc = self.lc
        req = pb.RegisterRequest(switch_name=self.name, params=pb.ControllerParams(
            epsilon=lc.epsilon, T=lc.T, s=lc.s, seed=lc.seed, overflow_policy=lc.overflow_policy,
            epoch_us=lc.epoch_us, stages=self.stages))
        try:
            reply = self.coord.register(req, timeout=5, metadata=self.coord.metadata)
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND,
                        grpc.StatusCode.INVALID_ARGUMENT):
                raise FatalError(f"coordinator refused {self.name}: {code.name} "
                                 f"({e.details()})") from None
            raise
        if self.switch_id is None:
            log.info("%s registered as switch %d; coordinator holds reports up to seq %d",
                     self.name, reply.switch_id, reply.acked_seq)
        self.switch_id = reply.switch_id
        self.registered.set()

    def _connected(self, what: str) -> Iterator[float]:
        """Yield once per (re)connection attempt, after a successful Register, backing off
        between failures. Ends when stopping."""
        backoff = BACKOFF_MIN
        while not self.stop.is_set():
            try:
                self._call_register()
            except FatalError as e:
                self.fatal = str(e)
                log.error("%s", e)
                self.stop.set()
                return
            except grpc.RpcError as e:
                # The details say why (refused, a TLS handshake failure and its reason).
                log.info("%s: coordinator %s unreachable (%s: %s); retrying in %.2f s", what,
                         self.coord.address, e.code().name, e.details(), backoff)
                self.stop.wait(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX)
                continue
            yield backoff
            # The stream ended: connect again (Register first: the coordinator may be a
            # restarted one).
            backoff = BACKOFF_MIN
            self.counters[f"{what}_reconnects"] += 1
            self.stop.wait(BACKOFF_MIN)

    def subscribe_loop(self) -> None:
        for _ in self._connected("subscribe"):
            call = self.coord.subscribe(pb.SubscribeRequest(switch_id=self.switch_id),
                                        metadata=self.coord.metadata)
            self._subscribe_call = call
            snapshot: list[tuple[int, int]] = []
            try:
                for u in call:
                    if u.snapshot_end:  # the snapshot is written in one driver call
                        self.apply_l_gs(snapshot)
                        snapshot = []
                        self.synced.set()
                        continue
                    self.counters["l_g_updates"] += 1
                    if u.snapshot:
                        snapshot.append((u.group, u.l_g))
                    else:
                        with self._push_cv:  # written by push_loop, together with the rest
                            self._pushes[u.group] = max(u.l_g, self._pushes.get(u.group, 0))
                            self._push_cv.notify()
                    if self.stop.is_set():
                        break
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    log.info("%s: l_g stream ended (%s)", self.name, e.code().name)

    def push_loop(self) -> None:
        """Pushed l_g written to the switch: every push waiting goes in one driver call (a
        burst of new members would otherwise cost a switch round trip per push)."""
        while not self.stop.is_set():
            with self._push_cv:
                while not self._pushes and not self.stop.is_set():
                    self._push_cv.wait(0.2)
                pushes, self._pushes = self._pushes, {}
            if not pushes:
                continue
            try:
                self.apply_l_gs(list(pushes.items()))
            except ConnectionError as e:  # the switch is away: keep them for the next try
                log.warning("%s: writing pushed l_g: %s", self.name, e)
                with self._push_cv:
                    for g, l_g in pushes.items():
                        self._pushes[g] = max(l_g, self._pushes.get(g, 0))
                self.stop.wait(BACKOFF_MIN)

    def hello_loop(self) -> None:
        """Hellos go out on one stream and come back answered in order; a hello sent but not
        answered when the stream breaks is sent again on the next one (the coordinator's
        membership is idempotent)."""
        for _ in self._connected("hellos"):
            with self._hello_cv:
                self._hello_gen += 1
                gen = self._hello_gen
                self._hello_q[:0] = list(self._hello_sent.values())
                self._hello_sent.clear()
                self._hello_batches = 0
            try:
                for answers in self.coord.hellos(self._hello_requests(gen),
                                                 metadata=self.coord.metadata):
                    self.apply_l_gs([(r.group, r.l_g) for r in answers.answers])
                    now = time.monotonic_ns()
                    with self._hello_cv:
                        self._hello_batches -= 1
                        self._hello_cv.notify_all()  # the next batch may go
                        for reply in answers.answers:
                            self._hello_sent.pop(reply.seq, None)
                            t0 = self._hello_t0.pop(reply.group, None)
                            if t0 is not None:
                                self.counters["hello_wait_ns"] += now - t0
                                self.counters["hellos_answered"] += 1
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    log.info("%s: hello stream ended (%s)", self.name, e.code().name)
            finally:
                with self._hello_cv:
                    self._hello_gen += 1  # ends the request generator
                    self._hello_cv.notify_all()

    def _hello_requests(self, gen: int) -> Iterator[pb.HelloBatch]:
        while True:
            with self._hello_cv:
                # HELLO_WINDOW batches in flight: hellos that come meanwhile wait for an answer
                # and go together. The coordinator handles a stream's batches one after the
                # other, each with a commit, so many small batches in flight queue up behind
                # each other (hundreds of ms in a burst of new groups) where a few big ones
                # do not.
                while self._hello_gen == gen and not self.stop.is_set() and (
                        not self._hello_q or self._hello_batches >= HELLO_WINDOW):
                    self._hello_cv.wait(0.2)
                if self._hello_gen != gen or self.stop.is_set():
                    return
                # Everything waiting goes in one message: a burst of new groups costs a few
                # messages, not one round trip each.
                items = self._hello_q[:MAX_BATCH]
                del self._hello_q[:MAX_BATCH]
                for item in items:
                    self._hello_sent[item[1]] = item
                self._hello_batches += 1
            yield pb.HelloBatch(hellos=[
                pb.HelloRequest(switch_id=self.switch_id, group=g, seq=seq, src=msg.src,
                                dst=msg.dst, sport=msg.sport, dport=msg.dport, proto=msg.proto)
                for g, seq, msg in items])

    def pull_loop(self) -> None:
        """Confirm's pulls: the stream's first message names the switch; each pull's parts
        are gathered, read in one driver call, and every part answered. A pull whose parts
        are not all in when the stream breaks is sent again by the coordinator."""
        for _ in self._connected("pulls"):
            answers: queue.Queue[pb.PullAnswer | None] = queue.Queue()
            answers.put(pb.PullAnswer(switch_id=self.switch_id))
            parts: dict[int, dict[int, pb.PullRequest]] = {}
            call = self.coord.pulls(drain(answers, lambda: not self.stop.is_set(), 0.2),
                                    metadata=self.coord.metadata)
            try:
                for req in call:
                    if not 0 <= req.part < req.parts:
                        self.rejections.reject("malformed_pull", self.coord.address,
                                               f"part {req.part} of {req.parts}")
                        continue
                    got = parts.setdefault(req.pull_id, {})
                    got[req.part] = req
                    if len(got) == req.parts:
                        del parts[req.pull_id]
                        for answer in self.answer_pull([got[i] for i in range(req.parts)]):
                            answers.put(answer)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # a coordinator without confirm
                    log.warning("%s: the coordinator has no pulls (older version): confirm's "
                                "pulls are off", self.name)
                    return
                if not self.stop.is_set():
                    log.info("%s: pull stream ended (%s)", self.name, e.code().name)
            finally:
                answers.put(None)  # ends the answer generator

    def answer_pull(self, reqs: list[pb.PullRequest]) -> list[pb.PullAnswer]:
        """The answers to one pull (its parts, in order): the held totals of its flows at
        the end of its epoch, HELD_UNKNOWN for all if the tables were reset since the epoch
        ended or the switch could not be read."""
        epoch = reqs[0].epoch
        flows = [f for r in reqs
                 for f in zip(r.src, r.dst, r.sport, r.dport, r.proto, strict=True)]
        totals = [HELD_UNKNOWN] * len(flows)
        with self._reset_lock:
            if self.reset_epoch > epoch:
                self.counters["pulls_after_reset"] += 1
            else:
                try:
                    totals = self.driver.held_totals(epoch, flows, self.stages)
                except Exception as e:  # the switch away or refusing: unknown, not a crash
                    self.counters["pull_errors"] += 1
                    self.rejections.reject("pull_failed", self.name, f"epoch {epoch}: {e}")
        self.counters["pulls_answered"] += 1
        self.counters["pull_flows"] += len(flows)
        out, at = [], 0
        for r in reqs:
            n = len(r.src)
            out.append(pb.PullAnswer(switch_id=self.switch_id, pull_id=r.pull_id, part=r.part,
                                     totals=totals[at: at + n]))
            at += n
        return out

    def report_loop(self) -> None:
        for _ in self._connected("reports"):
            with self._rcv:
                self._stream_gen += 1
                gen = self._stream_gen
                self._rsent = 0  # resend everything unacknowledged on the new stream
                self._in_flight = 0
            try:
                for ack in self.coord.reports(self._batches(gen), metadata=self.coord.metadata):
                    with self._rcv:
                        k = 0
                        while k < len(self._rbuf) and self._rbuf[k][0] <= ack.acked_seq:
                            k += 1
                        if k:
                            del self._rbuf[:k]
                            self._rsent = max(0, self._rsent - k)
                        self._in_flight -= 1
                        self.counters["reports_acked"] += k
                        self.counters["report_duplicates"] += ack.duplicates
                        self._rcv.notify_all()
            except grpc.RpcError as e:
                if not self.stop.is_set():
                    log.info("%s: report stream ended (%s); %d reports buffered", self.name,
                             e.code().name, len(self._rbuf))
            finally:
                with self._rcv:
                    self._stream_gen += 1  # ends the request generator
                    self._rcv.notify_all()

    def _batches(self, gen: int) -> Iterator[pb.ReportBatch]:
        while True:
            with self._rcv:
                while (self._stream_gen == gen and not self.stop.is_set()
                       and (self._rsent >= len(self._rbuf) or self._in_flight >= WINDOW)):
                    self._rcv.wait(0.2)
                if self._stream_gen != gen or self.stop.is_set():
                    return
                # Linger a moment so that a trickle of reports goes out in a few batches
                # rather than one message each: messages, not reports, cost CPU.
                deadline = time.monotonic() + LINGER
                while (len(self._rbuf) - self._rsent < MAX_BATCH and self._stream_gen == gen
                       and (left := deadline - time.monotonic()) > 0):
                    self._rcv.wait(left)
                if self._stream_gen != gen:
                    return
                items = self._rbuf[self._rsent: self._rsent + MAX_BATCH]
                self._rsent += len(items)
                self._in_flight += 1
            cols = list(zip(*items, strict=True))
            self.counters["report_batches"] += 1
            yield pb.ReportBatch(switch_id=self.switch_id, seq=cols[0], ts_ns=cols[1],
                                 src=cols[2], dst=cols[3], sport=cols[4], dport=cols[5],
                                 proto=cols[6], count=cols[7], epoch=cols[8])

    # ---------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        with self._rcv:
            buffered = len(self._rbuf)
        with self.lock:
            pending = sum(len(v) for v in self.pending_hellos.values())
            groups = len(self.lc.l_g)
        return {
            "switch": self.name, "switch_id": self.switch_id, "index": self.index,
            "registered": self.registered.is_set(), "synced": self.synced.is_set(),
            "last_seen": self.last_seen, "acked_to_switch": self.acked_to_switch,
            "reports_buffered": buffered, "pending_hellos": pending, "groups": groups,
            "counters": dict(self.counters), "fatal": self.fatal,
            "entry_writes": list(self.entry_writes),
            "written_ns": time.time_ns(),
        }

    def write_status(self) -> None:
        if self.status_file:
            atomic_write_json(self.status_file, self.status())

    def status_loop(self) -> None:
        while not self.stop.wait(0.5):
            self.write_status()

    # ---------------------------------------------------------------- run

    def run(self) -> int:
        # Load the compiled kernel now rather than on the first l_g (about a second).
        LocalController(0, self.lc.epsilon, self.lc.T, self.lc.s, 1).on_l_g(0, 1)
        self.configure_switch()
        threads = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in
                   (self.subscribe_loop, self.push_loop, self.report_loop, self.hello_loop,
                    self.pull_loop, self.cpu_loop, self.ack_loop, self.status_loop)]
        for t in threads:
            t.start()
        self.stop.wait()
        # Give in-flight acknowledgements a moment; whatever is unacknowledged stays with
        # the switch and is resent to the next controller.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and self.fatal is None:
            with self._rcv:
                if not self._rbuf:
                    break
            time.sleep(0.05)
        self.ack_switch()
        self.write_status()
        self.driver.close()
        self.coord.close()
        if self.fatal:
            print(f"herd controller: error: {self.fatal}", file=sys.stderr)
            return 2
        return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--switch", required=True, help="this controller's switch, e.g. s3")
    p.add_argument("--switch-index", type=int,
                   help="the switch's index for its PRNG seed (default: its number - 1)")
    p.add_argument("--epsilon", type=float, default=0.1, help="approximation factor")
    p.add_argument("--T", type=int, required=True, help="the global heavy-hitter threshold")
    p.add_argument("--s", "--sampling-probability", dest="s", type=float, default=0.2,
                   help="sampling probability")
    p.add_argument("--seed", type=int, default=1, help="run seed (the switch PRNG is seeded "
                   "from it and the switch index)")
    p.add_argument("--overflow-policy", choices=OVERFLOW_POLICIES, default="ignore")
    p.add_argument("--epoch-us", type=int, default=0, metavar="W",
                   help="epoch length in the switch's clock, microseconds (written to its "
                   "epoch register at configuration; default 0: one epoch)")
    p.add_argument("--stages", default=",".join(map(str, DEFAULT_STAGES)),
                   help="the switch's hash-table stage sizes (confirm's pull hashes flows to "
                   "their slots with them; default %(default)s)")
    p.add_argument("--coordinator", default=DEFAULT_COORDINATOR, help="host:port")
    p.add_argument("--token-file", help="the shared token (else $HERD_TOKEN)")
    add_tls_arguments(p, server=False)
    p.add_argument("--driver", choices=DRIVERS, default="model")
    p.add_argument("--topology", metavar="FILE",
                   help="p4run's topology database (topology.json): the bmv2 driver, the "
                   "switch's Thrift address, CPU interface and index come from it")
    p.add_argument("--switch-address",
                   help="model: unix:/path or host:port of the model switch; bmv2: "
                   "host:thrift_port")
    p.add_argument("--cpu-interface", help="bmv2: the interface of the CPU port")
    p.add_argument("--p4-json", help="bmv2: the compiled program's JSON")
    p.add_argument("--fresh", action="store_true",
                   help="reconfigure (reseed, clear) the switch even if it is configured")
    p.add_argument("--status-file", help="counters written here (JSON) twice a second")
    p.add_argument("--switch-timeout", type=float, default=30.0,
                   help="seconds to wait for the switch at start")
    p.add_argument("--log-level", default="INFO")


def serve(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, f"controller-{args.switch}")
    sys.setswitchinterval(0.0005)  # messages cross threads: hand the GIL over sooner
    if args.topology:
        from herd.testbed.p4run import controller_options

        # A p4run network: what the database says, unless given explicitly.
        for key, value in controller_options(args.topology, args.switch).items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        args.driver = "bmv2"
    if args.switch_address is None:
        raise HerdInputError("give --switch-address (or --topology of a p4run network)")
    index = args.switch_index if args.switch_index is not None else switch_index_of(args.switch)
    token = load_token(args.token_file, required=False)
    if token is None:
        log.warning("no token given (--token-file / HERD_TOKEN): the coordinator will refuse "
                    "us unless it runs with --no-auth")
    if not 0 <= args.epoch_us < 1 << 32:
        raise HerdInputError(f"--epoch-us {args.epoch_us}: must be in [0, 2^32) "
                             "(a 32-bit register; 0: one epoch)")
    try:
        stages = tuple(int(x) for x in args.stages.split(","))
    except ValueError:
        stages = ()
    if not stages or min(stages) < 1:
        raise HerdInputError(f"--stages {args.stages}: comma-separated slot counts, each >= 1")
    lc = LocalController(index, args.epsilon, args.T, args.s, args.seed, args.overflow_policy,
                         args.epoch_us)
    options: dict[str, Any] = {}
    if args.driver == "bmv2":
        options = {"cpu_interface": args.cpu_interface, "json_path": args.p4_json}
    # Before waiting for the switch: a bad --tls-ca is an error now, not after the wait.
    client = CoordinatorClient(args.coordinator, token, args.tls_ca, args.tls_server_name)
    deadline = time.monotonic() + args.switch_timeout
    driver = _open_driver_when_up(args, options, deadline)
    service = ControllerService(args.switch, index, lc, driver, client, args.fresh,
                                args.status_file, stages)

    def on_signal(signum: int, frame: Any) -> None:
        service.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The switch may still be starting: retry for a while.
    while True:
        try:
            return service.run()
        except ConnectionError as e:
            if time.monotonic() > deadline or service.stop.is_set():
                raise HerdInputError(f"switch {args.switch}: {e}") from None
            time.sleep(0.1)


def _open_driver_when_up(args: argparse.Namespace, options: dict[str, Any],
                         deadline: float) -> SwitchDriver:
    """The switch's driver; a switch still starting (connection refused) is retried until
    the deadline."""
    # thrift logs a refused connection itself; the error raised says it in one line
    logging.getLogger("thrift.transport.TSocket").setLevel(logging.CRITICAL)
    while True:
        try:
            return open_driver(args.driver, args.switch, args.switch_address, **options)
        except ConnectionError as e:
            if time.monotonic() > deadline:
                raise HerdInputError(f"switch {args.switch}: {e}") from None
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="herd controller", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return serve(args)
    except HerdInputError as e:
        print(f"herd controller: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
