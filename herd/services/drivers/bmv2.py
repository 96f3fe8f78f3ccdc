"""The BMv2 driver: ``simple_switch`` through its Thrift runtime API, CPU messages from the
CPU port.

Table and register access goes through p4-utils' ``SimpleSwitchThriftAPI`` (itself a
wrapper of BMv2's Thrift runtime); it is imported only when this driver is selected. CPU
messages arrive on the CPU interface (the veth BMv2's CPU port is attached to) as Ethernet
frames of ethertype ``herd.messages.ETHERTYPE_HERD_CPU`` carrying the 22-byte CPU header;
they are read with a raw packet socket (Linux, root or CAP_NET_RAW).

Epochs: the P4 switch takes a packet's epoch from its own clock, ``ingress_global_timestamp``
(microseconds since the switch started), and ``herd_epoch_origin`` (when epoch 0 began, in
that clock). ``set_epoch_origin`` converts a wall-clock origin with the SimpleSwitch Thrift
service's two clocks (``get_time_since_epoch_us``: the switch's wall clock;
``get_time_elapsed_us``: its timestamp clock).

BMv2 keeps no CPU message for a reader that is not there: messages sent while the controller
is down are lost at the CPU port (the model switch, by contrast, resends them). Sequence
numbers here are the driver's own, counted from 1 at each start.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from herd.errors import HerdInputError
from herd.messages import CPU_HEADER_LEN, ETHERTYPE_HERD_CPU
from herd.services.drivers.base import (
    REG_EPOCH_LOG,
    REG_EPOCH_ORIGIN,
    REG_HERD,
    CpuRecord,
    SwitchDriver,
)
from herd.switch import REG_EPOCH, epoch_starts

ETH_HEADER_LEN = 14
_ETH_P_ALL = 0x0003
_U64 = (1 << 64) - 1  # Thrift hands register values over as signed 64-bit integers
_ORIGIN_MAX = (1 << 48) - 1  # herd_epoch_origin is a bit<48>, like the timestamp


def switch_clock_start_us(sswitch: Any, samples: int = 5) -> int:
    """When ``simple_switch``'s timestamp clock (``ingress_global_timestamp``: microseconds
    since the switch started) read 0, in Unix microseconds. ``sswitch`` is a client of BMv2's
    SimpleSwitch Thrift service. Both its clocks are the same C++ clock, so the start is
    ``since_epoch - elapsed``; the two reads are separate calls, so the elapsed time is read
    on both sides of the wall-clock read and the narrowest of a few samples wins (the error
    is at most half its width, a few tens of microseconds locally)."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        before = int(sswitch.get_time_elapsed_us())
        wall = int(sswitch.get_time_since_epoch_us())
        after = int(sswitch.get_time_elapsed_us())
        width = after - before
        if best is None or width < best[0]:
            best = (width, wall - (before + after) // 2)
    assert best is not None
    return best[1]


def epoch_origin_in_switch_clock(origin_unix_us: int, clock_start_unix_us: int) -> int:
    """A wall-clock epoch origin (Unix microseconds) in the switch's timestamp clock, the value
    of ``herd_epoch_origin``. The register cannot hold an origin before the switch started."""
    origin = origin_unix_us - clock_start_unix_us
    if not 0 <= origin <= _ORIGIN_MAX:
        raise HerdInputError(
            f"bmv2 driver: epoch origin {origin_unix_us} us is {-origin} us before the switch "
            "started: its clock cannot express it (set the origin after the switch starts)"
            if origin < 0 else f"bmv2 driver: epoch origin {origin_unix_us} us out of range")
    return origin


def parse_cpu_frame(frame: bytes) -> bytes | None:
    """The CPU payload of an Ethernet frame from the CPU port, None if the frame is not a
    Herd CPU frame (other traffic on the interface). A Herd frame too short for the header is
    returned as it is, for the controller to reject and count as malformed."""
    if len(frame) < ETH_HEADER_LEN:
        return None
    if int.from_bytes(frame[12:14], "big") != ETHERTYPE_HERD_CPU:
        return None
    return frame[ETH_HEADER_LEN: ETH_HEADER_LEN + CPU_HEADER_LEN]


def _thrift_api(address: str, json_path: str | None) -> Any:
    """A runtime API object for the switch at ``host:port`` (Thrift)."""
    host, _, port = address.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit():
        raise HerdInputError(f"bmv2 driver: address {address!r} must be host:thrift_port")
    try:
        from p4utils.utils.sswitch_thrift_API import SimpleSwitchThriftAPI
    except ImportError:
        raise HerdInputError(
            "bmv2 driver: p4-utils is not installed (its SimpleSwitchThriftAPI drives BMv2). "
            "Install BMv2 from p4lang's sources and p4-utils, or use --driver model on a "
            "machine without BMv2") from None
    kw = {"json_path": json_path} if json_path else {}
    return SimpleSwitchThriftAPI(int(port), thrift_ip=host, **kw)


class Bmv2Driver(SwitchDriver):
    """One BMv2 ``simple_switch``: Thrift at ``address`` (host:port, default port 9090),
    CPU messages on ``cpu_interface``."""

    replays_unacked = False

    def __init__(self, name: str, address: str, cpu_interface: str | None = None,
                 json_path: str | None = None) -> None:
        self.name = name
        self.address = address
        self.cpu_interface = cpu_interface
        self._api = _thrift_api(address, json_path)
        self._lock = threading.Lock()  # the Thrift client is not thread-safe
        self._seq = 0
        self._sock: socket.socket | None = None

    def table_add(self, table: str, key: Sequence[int], action: str,
                  params: Sequence[int]) -> None:
        keys, vals = [str(k) for k in key], [str(p) for p in params]
        with self._lock:
            handle = self._api.table_add(table, action, keys, vals)
            if handle is None:
                # The entry exists (a restarted controller): modify it instead.
                self._api.table_modify_match(table, action, keys, vals)

    def table_modify(self, table: str, key: Sequence[int], action: str,
                     params: Sequence[int]) -> None:
        with self._lock:
            self._api.table_modify_match(table, action, [str(k) for k in key],
                                         [str(p) for p in params])

    def table_clear(self, table: str) -> None:
        with self._lock:
            self._api.table_clear(table)

    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None:
        with self._lock:
            self._api.table_set_default(table, action, [str(p) for p in params])

    def register_read(self, name: str, index: int) -> int:
        with self._lock:
            return int(self._api.register_read(name, index))

    def register_write(self, name: str, index: int, value: int) -> None:
        with self._lock:
            self._api.register_write(name, index, value)

    def register_reset(self, name: str) -> None:
        with self._lock:
            self._api.register_reset(name)

    def set_epoch_origin(self, origin_unix_us: int) -> None:
        """Epoch 0 begins at ``origin_unix_us`` (wall clock, Unix microseconds): written into
        ``herd_epoch_origin`` in the switch's own clock."""
        with self._lock:
            start = switch_clock_start_us(self._api.sswitch_client)
            self._api.register_write(REG_EPOCH_ORIGIN, 0,
                                     epoch_origin_in_switch_clock(origin_unix_us, start))

    def epoch_starts(self) -> list[tuple[int, int]]:
        """(epoch, first packet) of every epoch after 0 the switch entered that its log still
        holds (``herd.switch.epoch_starts``). The current epoch is read before the log: an
        epoch entered in between is after it and ignored, never half-read."""
        with self._lock:
            current = int(self._api.register_read(REG_HERD, REG_EPOCH))
            log = self._api.register_read(REG_EPOCH_LOG)
        return epoch_starts([int(v) & _U64 for v in log], current)

    def messages(self) -> Iterator[CpuRecord]:
        if not self.cpu_interface:
            raise HerdInputError("bmv2 driver: give the CPU interface (--cpu-interface)")
        try:
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(_ETH_P_ALL))
            s.bind((self.cpu_interface, 0))
        except PermissionError:
            raise HerdInputError("bmv2 driver: reading the CPU port needs root or "
                                 "CAP_NET_RAW") from None
        except OSError as e:
            raise ConnectionError(f"CPU interface {self.cpu_interface}: {e}") from None
        self._sock = s
        try:
            while True:
                frame = s.recv(65535)
                payload = parse_cpu_frame(frame)
                if payload is None:
                    continue
                self._seq += 1
                yield CpuRecord(self._seq, time.time_ns(), payload)
        except OSError as e:
            raise ConnectionError(f"CPU interface {self.cpu_interface}: {e}") from None
        finally:
            with contextlib.suppress(OSError):
                s.close()

    def ack(self, seq: int) -> None:
        pass  # BMv2 does not hold CPU messages

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
