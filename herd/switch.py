"""The Herd ingress switch: the one copy of the data-plane semantics.

``process_packet`` is the per-packet pipeline of DESIGN.md ("Switch, per IPv4 packet"),
written once over plain arrays so that the batch simulator calls it from its compiled loop
and :class:`Switch` (the model target, behind the model driver) calls it per packet.
``p4src/herd.p4`` mirrors it register for register:

- ``regs``: a few ``bit<32>`` registers (PRNG state, sample threshold, hold start, counters);
- ``group_state / group_tau / group_r``: the group table (keyed by g = src/8, dst/8) and
  the one-bit "hello already sent" register, folded into one state byte per group;
- ``table``: the multi-stage hash table, ``table[SLOT_*]`` one array over the slots per word
  of a slot (P4: one register array each), all stages in one flat array; stage ``i``
  occupies ``[offset_i, offset_i + size_i)``. A slot's words: the flow's fingerprint, its
  counter, the epoch the slot was written in, and for confirm (below) the flow's held total
  and what the slot held in the previous epoch;
- ``epoch_log``: where each epoch began, ``epoch << 32 | packet`` (the switch's packet count
  before it) at ``epoch mod EPOCH_LOG``, so the control plane can read when the switch's
  epochs changed (the epoch in the entry tells a current entry from a stale one).

Epochs (DESIGN.md "Epochs"): the caller gives each packet the epoch of the switch's clock
(``clock_epoch``; the simulator gives the trace epoch). The switch never goes back an epoch.
At the first packet of a new epoch the occupancy restarts at 0, and every slot written in an
earlier epoch reads as empty from then on: the tables empty lazily, with no control-plane
round trip at the boundary, identically in the model and in P4. Group state persists.

Held totals (confirm, ``herd.coordinator`` decides with them): each slot also counts its
flow's *held total*, round(1/s) at sampling and +1 per packet, never restarted at a tau_g
crossing. At the end of epoch e the control plane pulls the held totals of its candidate
flows, while the switch is already counting epoch e + 1. So that the pull reads epoch e's
final totals, a slot of the previous epoch keeps them when a new flow takes it: claiming a
slot last written in epoch e - 1 moves its (fingerprint, held total) into the slot's
``prev`` words (zeros when it was written earlier). ``held_total`` decodes a flow's epoch-e
total from the slots as they stand any time before epoch e + 2: exact, in the model and in
P4 alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numba import njit

from herd.hashing import flow_slots
from herd.messages import CpuMessage, MessageType, group_of
from herd.prng import xorshift32

N_GROUPS = 1 << 16

# Register indices (p4src: the same order in the ``herd_regs`` register array).
REG_PRNG = 0
REG_SAMPLE_THRESHOLD = 1
REG_HOLD_START = 2
REG_OCCUPIED = 3
REG_PEAK_OCCUPIED = 4
REG_HELLOS = 5
REG_REPORTS = 6
REG_OVERFLOWS = 7
REG_PACKETS = 8  # IPv4 packets measured: the switch's clock for when entries took effect
REG_EPOCH = 9  # the switch's current epoch
REG_EPOCH_US = 10  # epoch length W in the switch's clock (microseconds); 0: one epoch
N_REGS = 11

# The words of a slot (p4src: one register array each, ``stage_*``).
SLOT_FP = 0  # the flow's fingerprint; 0: empty
SLOT_COUNT = 1  # packets since sampling or since the last tau_g crossing
SLOT_EPOCH = 2  # the epoch the slot was written in
SLOT_TOTAL = 3  # the held total: round(1/s) at sampling, +1 per packet
SLOT_PREV_FP = 4  # what the slot held in the epoch before SLOT_EPOCH (0: nothing)
SLOT_PREV_TOTAL = 5
SLOT_FIELDS = 6
# Bytes of one slot as a switch lays it out: the published Herd slot (fingerprint, counter,
# epoch tag) and, with confirm, the three words more.
SLOT_BYTES = 12
SLOT_BYTES_CONFIRM = 24



def slot_bytes(confirm: bool) -> int:
    """Bytes of one table slot: the published layout, or confirm's."""
    return SLOT_BYTES_CONFIRM if confirm else SLOT_BYTES


# ``held_total`` of a flow whose slots were overwritten two epochs on.
HELD_UNKNOWN = -1

# Entries of the epoch log: the first packet of epoch e is at epoch_log[e % EPOCH_LOG].
EPOCH_LOG = 256

# Group states: no entry, hello sent (entry pending), entry installed.
GROUP_MISS = 0
GROUP_HELLO_SENT = 1
GROUP_INSTALLED = 2

# What a packet makes the switch send to its controller.
EV_NONE = 0
EV_HELLO = int(MessageType.HELLO)
EV_REPORT = int(MessageType.REPORT)
EV_OVERFLOW = int(MessageType.OVERFLOW)


@njit(cache=True, inline="always")
def _flip(regs: np.ndarray, sw: int, threshold: int) -> bool:
    """One coin flip: advance switch sw's PRNG register, fire iff the draw <= threshold."""
    x = xorshift32(regs[sw, REG_PRNG])
    regs[sw, REG_PRNG] = x
    return x <= threshold


@njit(cache=True)
def clock_epoch(now_us: int, origin_us: int, epoch_us: int) -> int:
    """The epoch of the switch's clock: floor((now - origin) / W); 0 before the origin or
    when epochs are off (W = 0)."""
    if epoch_us == 0 or now_us < origin_us:
        return 0
    return ((now_us - origin_us) // epoch_us) & 0xFFFFFFFF


def _without_refcounts() -> dict[str, bool]:
    """numba's _nrt=False: without reference counting a call passes the arrays as plain
    pointers; with it, each array argument costs atomic increments per packet, which made the
    simulator 5x slower. The option is not in numba's documented API: where a release lacks
    it, the function compiles with counting (slower, same results)."""
    try:
        from numba.core.cpu import CPUTargetOptions
    except ImportError:
        return {}
    return {"_nrt": False} if hasattr(CPUTargetOptions, "_nrt") else {}


# The switch function allocates nothing, so it needs no runtime.
@njit(cache=True, **_without_refcounts())
def switch_packet(
    regs: np.ndarray,
    group_state: np.ndarray,
    group_tau: np.ndarray,
    group_r: np.ndarray,
    fps: np.ndarray,
    counts: np.ndarray,
    epochs: np.ndarray,
    totals: np.ndarray,
    prev_fps: np.ndarray,
    prev_totals: np.ndarray,
    epoch_log: np.ndarray,
    sw: int,
    g: int,
    flow_slots: np.ndarray,
    f: int,
    stages: int,
    fp: int,
    epoch: int,
) -> tuple[int, int]:
    """Run one IPv4 packet of group ``g`` through switch ``sw`` in epoch ``epoch``: every
    array has one row per switch (a simulated network), the slot words one array each
    (``table[SLOT_*]``: separate arrays let the compiler keep them apart, 25% faster than
    one), and
    ``flow_slots[f, :stages]`` are the flow's slot in each stage, ``fp`` its fingerprint
    (``herd.hashing.flow_slots``).

    Returns (event, count): EV_NONE, EV_HELLO (count 0), EV_REPORT (the count that crossed
    tau_g; its epoch is ``regs[sw, REG_EPOCH]``) or EV_OVERFLOW (count 0). At most one event
    per packet.
    """
    # 0. Epoch: a new one empties the tables lazily (slots of older epochs read as empty).
    if epoch > regs[sw, REG_EPOCH]:
        regs[sw, REG_EPOCH] = epoch
        regs[sw, REG_OCCUPIED] = 0
        epoch_log[sw, epoch % EPOCH_LOG] = (np.uint64(epoch) << np.uint64(32)) | np.uint64(
            regs[sw, REG_PACKETS])
    e = regs[sw, REG_EPOCH]
    regs[sw, REG_PACKETS] += 1
    # 1. Group table. A miss sends one hello per group until the entry is installed,
    #    and the packet is not counted.
    state = group_state[sw, g]
    if state != GROUP_INSTALLED:
        if state == GROUP_MISS:
            group_state[sw, g] = GROUP_HELLO_SENT
            regs[sw, REG_HELLOS] += 1
            return EV_HELLO, 0
        return EV_NONE, 0

    # 3. Walk the stages: stop at this flow's slot, or at the first empty one.
    slot = -1
    empty = -1
    for i in range(stages):
        s = flow_slots[f, i]
        if epochs[sw, s] != e or fps[sw, s] == 0:
            empty = s
            break
        if fps[sw, s] == fp:
            slot = s
            break
    if slot >= 0:
        counts[sw, slot] += 1
        totals[sw, slot] += 1
    else:
        # An untracked flow is sampled with probability s; only a flow that would have
        # been sampled and finds no room is an overflow.
        if not _flip(regs, sw, regs[sw, REG_SAMPLE_THRESHOLD]):
            return EV_NONE, 0
        if empty < 0:
            regs[sw, REG_OVERFLOWS] += 1
            return EV_OVERFLOW, 0
        slot = empty
        if epochs[sw, slot] != e:  # from an older epoch: keep its words for a pull
            last = epochs[sw, slot] + 1 == e
            prev_fps[sw, slot] = fps[sw, slot] if last else 0
            prev_totals[sw, slot] = totals[sw, slot] if last else 0
        fps[sw, slot] = fp
        epochs[sw, slot] = e
        # Sample-and-hold correction: the packets missed before sampling, about 1/s.
        counts[sw, slot] = regs[sw, REG_HOLD_START]
        totals[sw, slot] = regs[sw, REG_HOLD_START]
        regs[sw, REG_OCCUPIED] += 1
        if regs[sw, REG_OCCUPIED] > regs[sw, REG_PEAK_OCCUPIED]:
            regs[sw, REG_PEAK_OCCUPIED] = regs[sw, REG_OCCUPIED]

    # 4. A mole that reaches tau_g becomes a mule: restart its count and report it with
    #    probability r_g.
    c = counts[sw, slot]
    if c >= group_tau[sw, g]:
        counts[sw, slot] = 0
        if _flip(regs, sw, group_r[sw, g]):
            regs[sw, REG_REPORTS] += 1
            return EV_REPORT, c
    return EV_NONE, 0


@njit(cache=True)
def process_packet(
    regs: np.ndarray,
    group_state: np.ndarray,
    group_tau: np.ndarray,
    group_r: np.ndarray,
    table: np.ndarray,
    epoch_log: np.ndarray,
    g: int,
    slots: np.ndarray,
    fp: int,
    epoch: int,
) -> tuple[int, int]:
    """``switch_packet`` for one switch, whose arrays have no switch axis (the model target's
    ``Switch``): ``slots`` are the flow's slot in each stage."""
    t = table.reshape(SLOT_FIELDS, 1, -1)
    return switch_packet(regs.reshape(1, -1), group_state.reshape(1, -1),
                         group_tau.reshape(1, -1), group_r.reshape(1, -1),
                         t[SLOT_FP], t[SLOT_COUNT], t[SLOT_EPOCH], t[SLOT_TOTAL],
                         t[SLOT_PREV_FP], t[SLOT_PREV_TOTAL], epoch_log.reshape(1, -1),
                         0, g, slots.reshape(1, -1), 0, len(slots), fp, epoch)


@njit(cache=True)
def install_group(group_state: np.ndarray, group_tau: np.ndarray, group_r: np.ndarray,
                  g: int, tau: int, r_threshold: int) -> None:
    """Add or modify the group-table entry of g (the controller's table write)."""
    group_tau[g] = tau
    group_r[g] = r_threshold
    group_state[g] = GROUP_INSTALLED


@njit(cache=True)
def reset_tables(regs: np.ndarray, table: np.ndarray) -> None:
    """Clear every stage of the hash table (the overflow policy "reset"): the current
    epoch's flows, counters and held totals; a slot's epoch tag and previous epoch stay."""
    table[SLOT_FP] = 0
    table[SLOT_COUNT] = 0
    table[SLOT_TOTAL] = 0
    regs[REG_OCCUPIED] = 0


@njit(cache=True)
def held_total(table: np.ndarray, slots: np.ndarray, fp: int, epoch: int) -> int:
    """The held total a flow had at the end of ``epoch`` on one switch (0: not tracked),
    from the flow's stage slots ``slots`` and the switch's ``table[SLOT_*, slot]`` as they
    stand at any time before the switch enters epoch + 2: HELD_UNKNOWN where a slot it needs
    was taken again since. Walks the stages as the switch did at the epoch's end: in that
    epoch a slot held (fp, total) if tagged with it, its ``prev`` words if tagged with the
    next epoch, nothing if tagged earlier."""
    for i in range(len(slots)):
        x = slots[i]
        tag = np.int64(table[SLOT_EPOCH, x])
        if tag == epoch:
            held, total = table[SLOT_FP, x], table[SLOT_TOTAL, x]
        elif tag == epoch + 1:
            held, total = table[SLOT_PREV_FP, x], table[SLOT_PREV_TOTAL, x]
        elif tag < epoch:
            return 0  # empty all epoch: the flow was not tracked
        else:
            return HELD_UNKNOWN
        if held == 0:
            return 0
        if held == fp:
            return np.int64(total)
    return 0


@njit(cache=True)
def held_totals(tables: np.ndarray, rec: np.ndarray, flows: np.ndarray, stages: int,
                fp_column: int, epoch: int, out: np.ndarray) -> None:
    """``held_total`` of many flows on many switches (``tables[SLOT_*, sw]``): ``out[sw, i]``
    for flow ``flows[i]``, whose stage slots are ``rec[f, :stages]`` and fingerprint
    ``rec[f, fp_column]``."""
    # Compiled code checks no bounds: a table of another shape would write anywhere.
    if tables.shape[0] != SLOT_FIELDS or out.shape[0] != tables.shape[1] \
            or out.shape[1] != len(flows):
        raise ValueError("held_totals: tables[SLOT_*, switch, slot] and out[switch, flow]")
    for sw in range(tables.shape[1]):
        for i in range(len(flows)):
            f = flows[i]
            out[sw, i] = held_total(tables[:, sw], rec[f, :stages], rec[f, fp_column], epoch)


def epoch_starts(epoch_log: Sequence[int] | np.ndarray, current: int) -> list[tuple[int, int]]:
    """Decode an epoch log (as read from the model or from BMv2's ``herd_epoch_log``): the
    (epoch, first packet) of every epoch after 0 the switch entered, among the last
    EPOCH_LOG epochs up to ``current``."""
    out = []
    for e in range(max(1, current - EPOCH_LOG + 1), current + 1):
        entry = int(epoch_log[e % EPOCH_LOG])
        if entry >> 32 == e:
            out.append((e, entry & 0xFFFFFFFF))
    return out


def stage_layout(stages: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, sizes) of the stages in the flat table."""
    sizes = np.asarray(stages, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    return offsets, sizes


@dataclass(frozen=True)
class SwitchConfig:
    """What a local controller writes into its switch's registers at start."""

    prng_seed: int
    sample_threshold: int
    hold_start: int
    epoch_us: int = 0  # W in the switch's clock; 0: one epoch


class Switch:
    """One Herd ingress switch as an I/O-free object (the model target's data plane)."""

    def __init__(self, stages: Sequence[int]) -> None:
        self.stages = tuple(int(s) for s in stages)
        self.stage_offsets, self.stage_sizes = stage_layout(self.stages)
        slots = int(self.stage_sizes.sum())
        self.regs = np.zeros(N_REGS, dtype=np.uint32)
        self.group_state = np.zeros(N_GROUPS, dtype=np.uint8)
        self.group_tau = np.zeros(N_GROUPS, dtype=np.uint32)
        self.group_r = np.zeros(N_GROUPS, dtype=np.uint32)
        self.table = np.zeros((SLOT_FIELDS, slots), dtype=np.uint32)
        self.epoch_log = np.zeros(EPOCH_LOG, dtype=np.uint64)
        self.epoch_origin_us = 0  # when epoch 0 began, in the switch's clock
        self._slots = np.zeros(len(self.stages), dtype=np.int64)

    # The table's words as arrays over the slots (views: writes go to the table), named as
    # the P4 program's register arrays.
    @property
    def fps(self) -> np.ndarray:
        return self.table[SLOT_FP]

    @property
    def counts(self) -> np.ndarray:
        return self.table[SLOT_COUNT]

    @property
    def epochs(self) -> np.ndarray:
        return self.table[SLOT_EPOCH]

    @property
    def totals(self) -> np.ndarray:
        return self.table[SLOT_TOTAL]

    @property
    def prev_fps(self) -> np.ndarray:
        return self.table[SLOT_PREV_FP]

    @property
    def prev_totals(self) -> np.ndarray:
        return self.table[SLOT_PREV_TOTAL]

    def configure(self, config: SwitchConfig) -> None:
        self.regs[REG_PRNG] = config.prng_seed
        self.regs[REG_SAMPLE_THRESHOLD] = config.sample_threshold
        self.regs[REG_HOLD_START] = config.hold_start
        self.regs[REG_EPOCH_US] = config.epoch_us

    def clock_epoch(self, now_us: int) -> int:
        """The epoch the switch's clock shows at ``now_us``."""
        return int(clock_epoch(now_us, self.epoch_origin_us, int(self.regs[REG_EPOCH_US])))

    def install_group(self, g: int, tau: int, r_threshold: int) -> None:
        install_group(self.group_state, self.group_tau, self.group_r, g, tau, r_threshold)

    def clear_groups(self) -> None:
        self.group_state[:] = GROUP_MISS
        self.group_tau[:] = 0
        self.group_r[:] = 0

    def reset_tables(self) -> None:
        reset_tables(self.regs, self.table)

    def process(self, src: int, dst: int, sport: int, dport: int, proto: int,
                epoch: int = 0) -> CpuMessage | None:
        """One IPv4 packet in the given epoch of the switch's clock; the CPU message it
        causes, if any."""
        fp = flow_slots(src, dst, sport, dport, proto, self.stage_offsets, self.stage_sizes,
                        self._slots)
        event, count = process_packet(self.regs, self.group_state, self.group_tau, self.group_r,
                                      self.table, self.epoch_log, group_of(src, dst),
                                      self._slots, fp, epoch)
        if event == EV_NONE:
            return None
        return CpuMessage(MessageType(event), src, dst, sport, dport, proto, int(count),
                          int(self.regs[REG_EPOCH]))

    def held_total(self, src: int, dst: int, sport: int, dport: int, proto: int,
                   epoch: int) -> int:
        """The flow's held total at the end of ``epoch`` (the pull of confirm; valid until
        the switch enters epoch + 2, else HELD_UNKNOWN)."""
        slots = np.zeros(len(self.stages), dtype=np.int64)
        fp = flow_slots(src, dst, sport, dport, proto, self.stage_offsets, self.stage_sizes,
                        slots)
        return int(held_total(self.table, slots, fp, epoch))

    def epoch_starts(self) -> list[tuple[int, int]]:
        """(epoch, first packet) of the epochs the log still holds, in epoch order."""
        return epoch_starts(self.epoch_log, int(self.regs[REG_EPOCH]))

    def registers(self) -> dict[str, int]:
        return {
            "prng": int(self.regs[REG_PRNG]),
            "sample_threshold": int(self.regs[REG_SAMPLE_THRESHOLD]),
            "hold_start": int(self.regs[REG_HOLD_START]),
            "occupied": int(self.regs[REG_OCCUPIED]),
            "peak_occupied": int(self.regs[REG_PEAK_OCCUPIED]),
            "hellos": int(self.regs[REG_HELLOS]),
            "reports": int(self.regs[REG_REPORTS]),
            "overflows": int(self.regs[REG_OVERFLOWS]),
            "packets": int(self.regs[REG_PACKETS]),
            "epoch": int(self.regs[REG_EPOCH]),
            "epoch_us": int(self.regs[REG_EPOCH_US]),
        }
