"""The one small interface between a local controller and its switch.

Table writes, register reads and writes, and the stream of CPU messages: what BMv2's runtime
API offers, and what the model switch process serves. The names of the tables, actions and
registers are those of the P4 program; they are written here once, so that they can be
adjusted to it in one place.

Epochs: a switch takes each packet's epoch from its own clock, ``floor((now - origin) / W)``
(``herd.switch.clock_epoch``). W is ``herd_regs[REG_EPOCH_US]`` (the controller writes it at
configuration); the origin is set with ``set_epoch_origin`` in wall-clock microseconds, which
each driver converts to its switch's clock (the model switch's clock is wall-clock
microseconds; BMv2's is microseconds since the switch started). ``epoch_starts`` reads back
where the switch's epochs began, for the simulator (``herd.delays.EpochStart``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from herd.hashing import flows_slots
from herd.switch import (
    EPOCH_LOG,
    REG_EPOCH,
    REG_OCCUPIED,
    REG_PACKETS,
    SLOT_EPOCH,
    SLOT_FIELDS,
    SLOT_FP,
    SLOT_PREV_FP,
    SLOT_PREV_TOTAL,
    SLOT_TOTAL,
    epoch_starts,
    held_totals,
    stage_layout,
)

FiveTuple = tuple[int, int, int, int, int]  # src, dst, sport, dport, proto

# The P4 program's names (p4src/herd.p4).
GROUP_TABLE = "group_table"  # key (src8, dst8), exact
GROUP_ACTION = "set_group_params"  # (tau, r): r the 32-bit report threshold
FORWARD_TABLE = "forwarding"  # key (ingress_port), exact; the default forwards
FORWARD_ACTION = "forward"  # (egress_port)
REG_HERD = "herd_regs"  # bit<32>, indices herd.switch.REG_*
REG_STAGE_FP = "stage_fp"  # flat over the stages, like Switch.fps
REG_STAGE_COUNT = "stage_count"  # flat over the stages, like Switch.counts
REG_HELLO_SENT = "hello_sent"  # one bit per group g
REG_STAGE_EPOCH = "stage_epoch"  # flat over the stages, like Switch.epochs: each slot's epoch
REG_STAGE_TOTAL = "stage_total"  # the held totals (confirm), like Switch.totals
REG_STAGE_PREV_FP = "stage_prev_fp"  # the previous epoch's fingerprint, like Switch.prev_fps
REG_STAGE_PREV_TOTAL = "stage_prev_total"  # and held total, like Switch.prev_totals
REG_EPOCH_LOG = "herd_epoch_log"  # bit<64>, EPOCH_LOG entries: epoch << 32 | first packet
REG_EPOCH_ORIGIN = "herd_epoch_origin"  # bit<48>, 1 entry: epoch 0's start, switch's clock
AGGREGATOR_PORT = 2  # where an ingress switch forwards every packet (topology: port 2)


@dataclass(frozen=True, slots=True)
class CpuRecord:
    """One CPU message as the driver delivers it: the switch's sequence number (or the
    driver's, where the switch has none), when the switch saw the packet (0 if unknown), and
    the raw payload (``herd.messages.CpuMessage.unpack`` parses and validates it)."""

    seq: int
    ts_ns: int
    payload: bytes


class SwitchDriver(ABC):
    """Access to one switch. Methods may be called from several threads."""

    name: str
    #: True where the switch keeps CPU messages until acknowledged and resends them to a new
    #: reader (the model switch); False where messages not read are gone (BMv2's CPU port).
    replays_unacked: bool = False

    @abstractmethod
    def table_add(self, table: str, key: Sequence[int], action: str,
                  params: Sequence[int]) -> None: ...

    @abstractmethod
    def table_modify(self, table: str, key: Sequence[int], action: str,
                     params: Sequence[int]) -> None: ...

    @abstractmethod
    def table_clear(self, table: str) -> None: ...

    @abstractmethod
    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None: ...

    @abstractmethod
    def register_read(self, name: str, index: int) -> int: ...

    @abstractmethod
    def register_write(self, name: str, index: int, value: int) -> None: ...

    @abstractmethod
    def register_reset(self, name: str) -> None: ...

    @abstractmethod
    def messages(self) -> Iterator[CpuRecord]:
        """The CPU messages, in order, blocking; raises ConnectionError when the stream
        breaks (call again to reconnect)."""

    @abstractmethod
    def ack(self, seq: int) -> None:
        """Every message up to ``seq`` is handled: the switch may forget it."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    # ------------------------------------------------------------ Herd operations

    def install_group(self, g: int, tau: int, r_threshold: int, modify: bool) -> None:
        """Add (or modify) the group-table entry of g = (src8 << 8 | dst8)."""
        key = (g >> 8, g & 0xFF)
        if modify:
            self.table_modify(GROUP_TABLE, key, GROUP_ACTION, (tau, r_threshold))
        else:
            self.table_add(GROUP_TABLE, key, GROUP_ACTION, (tau, r_threshold))

    def install_groups(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """Several (g, tau, r_threshold, modify) entries; drivers that can send them in one
        round trip override this (a burst of new groups is answered in one go)."""
        for g, tau, r, modify in entries:
            self.install_group(g, tau, r, modify)

    def entry_clock(self) -> int | None:
        """The switch's measured-packet counter right after an entry write: when it took
        effect, for ``herd simulate --delays`` (herd.delays). None where the switch records
        that itself, exactly (the model switch)."""
        return self.register_read(REG_HERD, REG_PACKETS)

    def set_epoch_origin(self, origin_unix_us: int) -> None:
        """Epoch 0 of the switch begins at ``origin_unix_us`` (wall clock, microseconds since
        the Unix epoch); the driver writes it into ``herd_epoch_origin`` in the switch's own
        clock. No default: only the driver knows its switch's clock."""
        raise NotImplementedError(f"{type(self).__name__} cannot set the epoch origin")

    def epoch_starts(self) -> list[tuple[int, int]]:
        """(epoch, first packet) of every epoch after 0 the switch entered, in epoch order,
        decoded from the epoch log (the last EPOCH_LOG epochs; drivers that record every
        start override this). The current epoch is read first: an epoch entered meanwhile is
        after it and left out, never half-read."""
        current = self.register_read(REG_HERD, REG_EPOCH)
        log = [self.register_read(REG_EPOCH_LOG, i) for i in range(EPOCH_LOG)]
        return epoch_starts(log, current)

    def held_totals(self, epoch: int, flows: Sequence[FiveTuple],
                    stages: Sequence[int]) -> list[int]:
        """Confirm's pull: each flow's held total at the end of ``epoch``
        (``herd.switch.held_total``; HELD_UNKNOWN where the switch has overwritten it), the
        switch's stage sizes being ``stages``. Reads only the flows' slots, the epoch tags
        first and last: a slot a new flow took meanwhile had its epoch's words moved to
        ``prev`` before its tag changed, so its ``prev`` words are read again after (and its
        tag once more: a slot taken yet again reads as unknown). Drivers that can read a
        register array in one step override ``read_cells``."""
        index = np.unique(flows_stage_slots(flows, stages))
        table = np.zeros((SLOT_FIELDS, int(index.max(initial=0)) + 1), np.uint32)

        def read(name: str, field: int, which: np.ndarray) -> None:
            if len(which):
                table[field, which] = self.read_cells(name, which)

        read(REG_STAGE_EPOCH, SLOT_EPOCH, index)
        before = table[SLOT_EPOCH, index].copy()
        read(REG_STAGE_FP, SLOT_FP, index)
        read(REG_STAGE_TOTAL, SLOT_TOTAL, index)
        read(REG_STAGE_PREV_FP, SLOT_PREV_FP, index)
        read(REG_STAGE_PREV_TOTAL, SLOT_PREV_TOTAL, index)
        read(REG_STAGE_EPOCH, SLOT_EPOCH, index)
        moved = index[table[SLOT_EPOCH, index] != before]
        if len(moved):
            read(REG_STAGE_PREV_FP, SLOT_PREV_FP, moved)
            read(REG_STAGE_PREV_TOTAL, SLOT_PREV_TOTAL, moved)
            # A slot taken yet again (a still later epoch) may hold another epoch's prev
            # words now: its tag, read once more, makes it unknown.
            read(REG_STAGE_EPOCH, SLOT_EPOCH, moved)
        return decode_held_totals(table, flows, stages, epoch)

    def read_cells(self, name: str, which: np.ndarray) -> np.ndarray:
        """Cells ``which`` of a register array, one read a cell; drivers that read a whole
        array in one call override this where that is fewer calls."""
        return np.array([self.register_read(name, int(i)) for i in which], np.uint32)

    def reset_tables(self) -> None:
        """The overflow policy "reset": clear every stage of the hash table. Drivers that
        can do it in one step override this."""
        self.register_reset(REG_STAGE_FP)
        self.register_reset(REG_STAGE_COUNT)
        self.register_reset(REG_STAGE_TOTAL)
        self.register_write(REG_HERD, REG_OCCUPIED, 0)


def hash_flows(flows: Sequence[FiveTuple], stages: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each flow's slot in every stage (rows) and its fingerprint, as the switch hashes them
    (``herd.hashing.flows_slots``)."""
    cols = np.asarray(flows, np.int64).reshape(-1, 5).T
    offsets, sizes = stage_layout(stages)
    return flows_slots(cols[0].astype(np.uint32), cols[1].astype(np.uint32),
                       cols[2].astype(np.uint16), cols[3].astype(np.uint16),
                       cols[4].astype(np.uint8), offsets, sizes)


def flows_stage_slots(flows: Sequence[FiveTuple], stages: Sequence[int]) -> np.ndarray:
    """Each flow's slot in every stage (rows), as the switch hashes it."""
    return hash_flows(flows, stages)[0]


def decode_held_totals(table: np.ndarray, flows: Sequence[FiveTuple], stages: Sequence[int],
                       epoch: int) -> list[int]:
    """``herd.switch.held_total`` of each flow over ``table`` (the switch's slot words as read,
    ``table[SLOT_*, slot]``; only the flows' slots need be filled)."""
    slots, fps = hash_flows(flows, stages)
    n, k = slots.shape
    rec = np.empty((n, k + 1), np.int64)  # held_totals' per-flow rows: slots, fingerprint
    rec[:, :k] = slots
    rec[:, k] = fps
    out = np.zeros((1, n), np.int64)
    held_totals(table[:, None], rec, np.arange(n, dtype=np.int64), k, k, epoch, out)
    return [int(x) for x in out[0]]
