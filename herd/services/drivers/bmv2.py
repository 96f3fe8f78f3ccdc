"""The BMv2 driver: ``simple_switch`` through its Thrift runtime API, CPU messages from the
CPU port.

Table and register access goes through BMv2's own Thrift runtime bindings
(``herd.services.drivers.bmv2_thrift``), imported only when this driver is selected. CPU
messages arrive on the CPU interface (the veth BMv2's CPU port is attached to) as Ethernet
frames of ethertype ``herd.messages.ETHERTYPE_HERD_CPU`` carrying the 22-byte CPU header;
they are read with a raw packet socket (Linux, root or CAP_NET_RAW).

Epochs: the P4 switch takes a packet's epoch from its own clock, ``ingress_global_timestamp``
(microseconds since the switch started), and ``herd_epoch_origin`` (when epoch 0 began, in
that clock). ``set_epoch_origin`` converts a wall-clock origin with the SimpleSwitch Thrift
service's two clocks (``get_time_since_epoch_us``: the switch's wall clock;
``get_time_elapsed_us``: its timestamp clock).

Confirm's pull (``held_totals``) reads the slot words a whole register array per call where
that takes fewer calls than reading the flows' cells one by one.

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

import numpy as np

from herd.errors import HerdInputError
from herd.messages import CPU_HEADER_LEN, ETHERTYPE_HERD_CPU
from herd.services.drivers.base import (
    REG_EPOCH_LOG,
    REG_EPOCH_ORIGIN,
    REG_HERD,
    REG_STAGE_EPOCH,
    CpuRecord,
    FiveTuple,
    SwitchDriver,
)
from herd.services.drivers.bmv2_thrift import Bmv2Thrift
from herd.switch import (
    REG_EPOCH,
    epoch_starts,
)

ETH_HEADER_LEN = 14
_ETH_P_ALL = 0x0003
_ORIGIN_MAX = (1 << 48) - 1  # herd_epoch_origin is a bit<48>, like the timestamp


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


class Bmv2Driver(SwitchDriver):
    """One BMv2 ``simple_switch``: Thrift at ``address`` (host:port, default port 9090),
    CPU messages on ``cpu_interface``."""

    replays_unacked = False

    def __init__(self, name: str, address: str, cpu_interface: str | None = None,
                 json_path: str | None = None) -> None:
        self.name = name
        self.address = address
        self.cpu_interface = cpu_interface
        self._api = Bmv2Thrift.at(address, json_path)
        self._lock = threading.Lock()  # the Thrift client is not thread-safe
        self._seq = 0
        self._sock: socket.socket | None = None

    def table_add(self, table: str, key: Sequence[int], action: str,
                  params: Sequence[int]) -> None:
        with self._lock:
            # The entry may exist (a restarted controller): then it is modified.
            self._api.table_add_or_modify(table, action, key, params)

    def table_modify(self, table: str, key: Sequence[int], action: str,
                     params: Sequence[int]) -> None:
        with self._lock:
            self._api.table_modify(table, action, key, params)

    def table_clear(self, table: str) -> None:
        with self._lock:
            self._api.table_clear(table)

    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None:
        with self._lock:
            self._api.table_set_default(table, action, params)

    def register_read(self, name: str, index: int) -> int:
        with self._lock:
            return self._api.register_read(name, index)

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
            start = self._api.clock_start_us()
            self._api.register_write(REG_EPOCH_ORIGIN, 0,
                                     epoch_origin_in_switch_clock(origin_unix_us, start))

    def epoch_starts(self) -> list[tuple[int, int]]:
        """(epoch, first packet) of every epoch after 0 the switch entered that its log still
        holds (``herd.switch.epoch_starts``). The current epoch is read before the log: an
        epoch entered in between is after it and ignored, never half-read."""
        with self._lock:
            current = self._api.register_read(REG_HERD, REG_EPOCH)
            log = self._api.register_read_all(REG_EPOCH_LOG)
        return epoch_starts(log, current)

    def held_totals(self, epoch: int, flows: Sequence[FiveTuple],
                    stages: Sequence[int]) -> list[int]:
        """Confirm's pull (``SwitchDriver.held_totals``), after checking that the stages
        make the program's slots."""
        with self._lock:
            size = self._api.register_name(REG_STAGE_EPOCH)[2]
        if size != sum(int(s) for s in stages):
            raise HerdInputError(f"bmv2 driver {self.name}: stages {tuple(stages)} make "
                                 f"{sum(int(s) for s in stages)} slots, the switch's program "
                                 f"has {size}")
        return super().held_totals(epoch, flows, stages)

    def read_cells(self, name: str, which: np.ndarray) -> np.ndarray:
        """Cells of a register array: the whole array in one call (only ``which`` taken from
        it, so that a slot's words read earlier stay as read), one cell a call where that is
        no more calls."""
        if len(which) > 1:
            with self._lock:
                return np.asarray(self._api.register_read_all(name), np.uint32)[which]
        return super().read_cells(name, which)

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
        with self._lock:
            self._api.close()
