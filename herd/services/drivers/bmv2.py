"""The BMv2 driver: ``simple_switch`` through its Thrift runtime API, CPU messages from the
CPU port.

Table and register access goes through p4-utils' ``SimpleSwitchThriftAPI`` (itself a
wrapper of BMv2's Thrift runtime); it is imported only when this driver is selected. CPU
messages arrive on the CPU interface (the veth BMv2's CPU port is attached to) as Ethernet
frames of ethertype
``herd.messages.ETHERTYPE_HERD_CPU`` carrying the 18-byte CPU header; they are read with a
raw packet socket (Linux, root or CAP_NET_RAW).

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
from herd.services.drivers.base import CpuRecord, SwitchDriver

ETH_HEADER_LEN = 14
_ETH_P_ALL = 0x0003


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
