"""The model driver: the model switch process (``herd.services.model_switch``) over its
Unix-domain or TCP socket."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from herd.services.drivers.base import (
    GROUP_ACTION,
    GROUP_TABLE,
    CpuRecord,
    FiveTuple,
    SwitchDriver,
)
from herd.services.model_switch import (
    ACK,
    RECORD_HEAD,
    parse_address,
    recv_frame,
    send_frame,
)

# Flows per held_totals request: its JSON frame stays well below the switch's MAX_FRAME (an
# epoch's totals do not change until epoch + 2, so the parts need not be read in one step).
HELD_TOTALS_PER_REQUEST = 8192


class SwitchError(RuntimeError):
    """The switch refused an operation."""


class ModelDriver(SwitchDriver):
    replays_unacked = True

    def __init__(self, name: str, address: str, timeout: float = 10.0) -> None:
        self.name = name
        self.address = address
        self._timeout = timeout
        self._lock = threading.Lock()
        self._ctl: socket.socket | None = None
        self._stream: socket.socket | None = None
        self._stream_lock = threading.Lock()

    def _connect(self) -> socket.socket:
        family, addr = parse_address(self.address)
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(self._timeout)
        try:
            s.connect(addr)
        except OSError:
            s.close()
            raise
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s

    def request(self, **req: Any) -> dict[str, Any]:
        """One control request; ConnectionError if the switch is unreachable, SwitchError if
        it refuses."""
        data = json.dumps(req).encode()
        with self._lock:
            for attempt in (0, 1):  # one reconnect: the switch process may have restarted
                try:
                    if self._ctl is None:
                        self._ctl = self._connect()
                    send_frame(self._ctl, data)
                    reply = json.loads(recv_frame(self._ctl))
                    break
                except (OSError, ConnectionError, ValueError) as e:
                    if self._ctl is not None:
                        with contextlib.suppress(OSError):
                            self._ctl.close()
                    self._ctl = None
                    if attempt:
                        raise ConnectionError(f"switch {self.name} at {self.address}: {e}") \
                            from None
        if not reply.get("ok"):
            raise SwitchError(f"switch {self.name}: {reply.get('error')}")
        return reply

    def table_add(self, table: str, key: Sequence[int], action: str,
                  params: Sequence[int]) -> None:
        self.request(op="table_add", table=table, key=list(key), action=action,
                     params=list(params))

    def table_modify(self, table: str, key: Sequence[int], action: str,
                     params: Sequence[int]) -> None:
        self.request(op="table_modify", table=table, key=list(key), action=action,
                     params=list(params))

    def table_clear(self, table: str) -> None:
        self.request(op="table_clear", table=table)

    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None:
        self.request(op="table_set_default", table=table, action=action, params=list(params))

    def register_read(self, name: str, index: int) -> int:
        return int(self.request(op="register_read", name=name, index=index)["value"])

    def register_write(self, name: str, index: int, value: int) -> None:
        self.request(op="register_write", name=name, index=index, value=value)

    def register_reset(self, name: str) -> None:
        self.request(op="register_reset", name=name)

    def install_groups(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        if not entries:
            return
        ops = [{"op": "table_modify" if modify else "table_add", "table": GROUP_TABLE,
                "key": [g >> 8, g & 0xFF], "action": GROUP_ACTION, "params": [tau, r]}
               for g, tau, r, modify in entries]
        self.request(op="batch", ops=ops)  # one round trip for the lot

    def reset_tables(self) -> None:
        self.request(op="reset_tables")  # one step, atomic with respect to packets

    def held_totals(self, epoch: int, flows: Sequence[FiveTuple],
                    stages: Sequence[int]) -> list[int]:
        """Confirm's pull in one round trip (one per HELD_TOTALS_PER_REQUEST flows): the
        model switch decodes the flows' held totals under its data-plane lock (SwitchError if
        ``stages`` are not the switch's)."""
        out: list[int] = []
        for at in range(0, len(flows), HELD_TOTALS_PER_REQUEST):
            reply = self.request(op="held_totals", epoch=int(epoch),
                                 stages=[int(s) for s in stages],
                                 flows=[[int(x) for x in f]
                                        for f in flows[at: at + HELD_TOTALS_PER_REQUEST]])
            out += [int(x) for x in reply["totals"]]
        return out

    def entry_clock(self) -> int | None:
        return None  # the model switch records each write's packet itself

    def set_epoch_origin(self, origin_unix_us: int) -> None:
        # The model switch's clock is the wall clock: no conversion.
        self.request(op="set_epoch_origin", origin_us=int(origin_unix_us))

    def epoch_starts(self) -> list[tuple[int, int]]:
        """Every epoch start of the run (the model switch records them all, not only the
        log's last EPOCH_LOG)."""
        return [(int(e), int(p)) for e, p in self.request(op="epoch_starts")["starts"]]

    def stats(self, latencies: bool = False) -> dict[str, Any]:
        return self.request(op="stats", latencies=latencies)

    def messages(self) -> Iterator[CpuRecord]:
        try:
            s = self._connect()
            s.settimeout(None)
            send_frame(s, json.dumps({"op": "subscribe"}).encode())
        except OSError as e:
            raise ConnectionError(f"switch {self.name} at {self.address}: {e}") from None
        with self._stream_lock:
            self._stream = s
        head = RECORD_HEAD.size
        f = s.makefile("rb", buffering=1 << 16)  # buffered: one syscall for many records
        try:
            while True:
                h = f.read(head)
                if len(h) < head:
                    raise ConnectionError(f"switch {self.name}: CPU stream closed")
                n, seq, ts = RECORD_HEAD.unpack(h)
                if n < 16 or n > 1 << 16:
                    raise ConnectionError(f"switch {self.name}: bad CPU record length {n}")
                payload = f.read(n - 16)
                if len(payload) < n - 16:
                    raise ConnectionError(f"switch {self.name}: CPU stream closed")
                yield CpuRecord(seq, ts, payload)
        except OSError as e:
            raise ConnectionError(f"switch {self.name}: CPU stream: {e}") from None
        finally:
            with self._stream_lock:
                if self._stream is s:
                    self._stream = None
            with contextlib.suppress(OSError):
                f.close()
                s.close()

    def ack(self, seq: int) -> None:
        with self._stream_lock:
            if self._stream is None:
                return
            # A broken stream is noticed by messages(); the acks resume on the next one.
            with contextlib.suppress(OSError):
                self._stream.sendall(ACK.pack(seq))

    def close(self) -> None:
        with self._lock:
            if self._ctl is not None:
                with contextlib.suppress(OSError):
                    self._ctl.close()
                self._ctl = None
        with self._stream_lock:
            if self._stream is not None:
                with contextlib.suppress(OSError):
                    self._stream.shutdown(socket.SHUT_RDWR)
