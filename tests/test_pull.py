"""Confirm's pull through the driver interface (``SwitchDriver.held_totals``): register
reads of a live switch, with packets arriving between the reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pytest

from herd.messages import group_of
from herd.prng import probability_threshold
from herd.services.drivers.base import (
    REG_STAGE_EPOCH,
    REG_STAGE_FP,
    REG_STAGE_PREV_FP,
    REG_STAGE_PREV_TOTAL,
    REG_STAGE_TOTAL,
    CpuRecord,
    FiveTuple,
    SwitchDriver,
    flows_stage_slots,
)
from herd.switch import HELD_UNKNOWN, Switch, SwitchConfig

STAGES = (4, 2, 1)


class LiveSwitch(SwitchDriver):
    """A model ``Switch`` behind the register interface; ``between(n)`` runs before the
    n-th register read (packets arriving while the control plane reads)."""

    name = "live"

    def __init__(self, between: Callable[[int], None] = lambda n: None) -> None:
        self.switch = Switch(STAGES)
        self.switch.configure(SwitchConfig(7, probability_threshold(1.0), 1))
        self.between = between
        self.reads = 0

    def register_read(self, name: str, index: int) -> int:
        self.between(self.reads)
        self.reads += 1
        sw = self.switch
        words = {REG_STAGE_EPOCH: sw.epochs, REG_STAGE_FP: sw.fps, REG_STAGE_TOTAL: sw.totals,
                 REG_STAGE_PREV_FP: sw.prev_fps, REG_STAGE_PREV_TOTAL: sw.prev_totals}
        return int(words[name][index])

    def send(self, flow: FiveTuple, packets: int, epoch: int) -> None:
        self.switch.install_group(group_of(flow[0], flow[1]), 1 << 30, 0)
        for _ in range(packets):
            self.switch.process(*flow, epoch=epoch)

    # The rest of the interface is not used by a pull.
    def table_add(self, table: str, key: Sequence[int], action: str,
                  params: Sequence[int]) -> None:
        raise NotImplementedError

    table_modify = table_add

    def table_clear(self, table: str) -> None:
        raise NotImplementedError

    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None:
        raise NotImplementedError

    def register_write(self, name: str, index: int, value: int) -> None:
        raise NotImplementedError

    def register_reset(self, name: str) -> None:
        raise NotImplementedError

    def messages(self) -> Iterator[CpuRecord]:
        raise NotImplementedError

    def ack(self, seq: int) -> None:
        raise NotImplementedError


def _flows(n: int) -> list[FiveTuple]:
    return [(0x0A000001 + i, 0x14000001, 1000 + i, 80, 6) for i in range(n)]


def _sharing_stage0(flows: list[FiveTuple]) -> tuple[FiveTuple, FiveTuple]:
    """Two flows whose stage-0 slot is the same."""
    slot0 = flows_stage_slots(flows, STAGES)[:, 0]
    for i in range(len(flows)):
        for j in range(i + 1, len(flows)):
            if slot0[i] == slot0[j]:
                return flows[i], flows[j]
    raise AssertionError("no two flows share a slot")


def test_a_pull_gives_the_held_totals_at_the_epochs_end() -> None:
    sw = LiveSwitch()
    a, b, c = _flows(3)
    sw.send(a, 9, 0)
    sw.send(b, 4, 0)
    sw.send(a, 2, 1)  # the next epoch: a again, c new
    sw.send(c, 5, 1)
    # hold start 1 at the sampled packet, +1 for every later one: the packets sent
    assert sw.held_totals(0, [a, b, c], STAGES) == [9, 4, 0]
    assert sw.held_totals(1, [a, b, c], STAGES) == [2, 0, 5]
    assert [sw.switch.held_total(*f, 0) for f in (a, b, c)] == [9, 4, 0]


@pytest.mark.parametrize("at", range(0, 16))
def test_a_flow_taking_the_slot_during_the_pull_changes_nothing(at: int) -> None:
    """Whichever read the claim comes before, the pull of epoch 0 reads a's epoch-0 total."""
    a, x = _sharing_stage0(_flows(40))

    def claim(n: int) -> None:
        if n == at:
            sw.send(x, 3, 1)  # x takes a's stage-0 slot in epoch 1

    sw = LiveSwitch(claim)
    sw.send(a, 6, 0)
    assert sw.held_totals(0, [a, x], STAGES) == [6, 0]
    assert sw.switch.fps[flows_stage_slots([a], STAGES)[0, 0]] != 0


def test_a_slot_taken_again_two_epochs_on_reads_as_unknown() -> None:
    a, x = _sharing_stage0(_flows(40))
    sw = LiveSwitch()
    sw.send(a, 6, 0)
    sw.send(x, 3, 1)
    sw.send(a, 2, 2)  # a takes the slot back in epoch 2: epoch 0's words are gone
    assert sw.held_totals(0, [a], STAGES) == [HELD_UNKNOWN]
    assert sw.held_totals(1, [x, a], STAGES) == [3, 0]


def test_a_slot_taken_twice_during_the_pull_reads_as_unknown() -> None:
    """Taken in epoch 1 after the first tag read and again in epoch 2 before its prev words
    are read again: those words are epoch 1's now (x's), so the slot must read as unknown,
    not as "a was not there"."""
    a, x = _sharing_stage0(_flows(40))
    slots = len(np.unique(flows_stage_slots([a], STAGES)))
    reread = 6 * slots  # tags, fp, total, prev fp, prev total, tags: then the prev re-read

    def race(n: int) -> None:
        if n == 1:
            sw.send(x, 3, 1)
        if n == reread:
            sw.send(a, 2, 2)

    sw = LiveSwitch(race)
    sw.send(a, 6, 0)
    assert sw.held_totals(0, [a], STAGES) == [HELD_UNKNOWN]
    assert sw.reads == reread + 3  # prev fp, prev total and the tag of the one slot moved
