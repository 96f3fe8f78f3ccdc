"""Herd's batch simulator: a trace through k Herd switches, their controllers and the
coordinator, in one compiled loop that calls the very same semantics as everything else
(``switch.process_packet``, ``controller.group_entry_nb``, ``coordinator.register_hello``,
``coordinator.count_reports``).

The trace is walked chunk by chunk (``Trace.chunks``): the loop's state (registers, tables,
the control plane's pending actions, the reports) carries over from one chunk to the next,
so memory does not grow with the trace and the result does not depend on the chunk size.

Epochs: each packet's epoch is computed on the fly (``groundtruth.next_epoch``) and handed to
its switch, which empties its tables lazily at a new epoch; reports carry their epoch and are
counted per (flow, epoch).

Control-loop delay: every control-plane action caused by a message the switches send at
time t (a group entry installed or modified, a table reset) takes effect before the first
later packet whose timestamp is at least t + delay, in time order and, at the same packet, in
the order the messages were sent. With delay 0 it takes effect before the next packet. Or,
with a testbed run's measured timing (``herd.delays``), each switch's entries follow the run's
writes, packet for packet.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from numba import njit

from herd.controller import LocalController, group_entry_nb
from herd.coordinator import (
    confirm_candidates,
    confirmed,
    count_reports,
    pull_messages,
    register_hello,
)
from herd.delays import NEVER, EffectTimes, EntryWrite, MeasuredTiming, effect_times, switch_epochs
from herd.errors import HerdInputError
from herd.groundtruth import epoch_ns_of, next_epoch, pair_keys
from herd.loadbalancer import lb_seed
from herd.metrics import memory_summary, message_summary
from herd.params import Params
from herd.prepared import (
    REC_FP,
    REC_GROUP,
    REC_INGRESS,
    PreparedTrace,
    ReportTally,
    SimulationResult,
    score,
)
from herd.prng import probability_threshold, xorshift32
from herd.switch import (
    EPOCH_LOG,
    EV_HELLO,
    EV_NONE,
    EV_OVERFLOW,
    EV_REPORT,
    N_GROUPS,
    N_REGS,
    REG_EPOCH,
    REG_HELLOS,
    REG_HOLD_START,
    REG_OCCUPIED,
    REG_OVERFLOWS,
    REG_PACKETS,
    REG_PEAK_OCCUPIED,
    REG_PRNG,
    REG_REPORTS,
    REG_SAMPLE_THRESHOLD,
    SLOT_COUNT,
    SLOT_EPOCH,
    SLOT_FIELDS,
    SLOT_FP,
    SLOT_PREV_FP,
    SLOT_PREV_TOTAL,
    SLOT_TOTAL,
    held_totals,
    install_group,
    reset_tables,
    slot_bytes,
    switch_packet,
)

RESET = -1  # queue entry: reset the switch's tables instead of installing a group


@njit(cache=True)
def _heap_push(heap: np.ndarray, n: int, item: int, key: np.ndarray) -> None:
    """Push item onto the binary min-heap heap[:n] ordered by (key[item], item); heap has
    room."""
    i = n
    heap[i] = item
    while i > 0:
        parent = (i - 1) >> 1
        a, b = heap[parent], heap[i]
        if key[a] < key[b] or (key[a] == key[b] and a < b):
            break
        heap[parent], heap[i] = b, a
        i = parent


@njit(cache=True)
def _heap_pop(heap: np.ndarray, n: int, key: np.ndarray) -> int:
    """Pop the least item of heap[:n] (n > 0); the heap is then heap[:n - 1]."""
    top = heap[0]
    n -= 1
    heap[0] = heap[n]
    i = 0
    while True:
        least = i
        for c in (2 * i + 1, 2 * i + 2):
            if c < n:
                a, b = heap[c], heap[least]
                if key[a] < key[b] or (key[a] == key[b] and a < b):
                    least = c
        if least == i:
            return top
        heap[least], heap[i] = heap[i], heap[least]
        i = least


@njit(cache=True)
def _put(q_key: np.ndarray, q_sw: np.ndarray, q_g: np.ndarray, q_l: np.ndarray, qn: int,
         heap: np.ndarray, hn: int, key: int, sw: int, g: int, lg: int) -> None:
    """Queue the action (sw, g, lg) as entry qn, due at ``key`` (a time or a packet, by the
    heap it goes on); the arrays have room."""
    q_key[qn] = key
    q_sw[qn] = sw
    q_g[qn] = g
    q_l[qn] = lg
    _heap_push(heap, hn, qn, q_key)


# The loop's scalar state between chunks (``Run.st``).
ST_EPOCH = 0  # the current trace epoch
ST_LB = 1  # the load balancer's PRNG state
ST_NREP = 2  # reports so far
ST_QN = 3  # entries in use in the action arrays
ST_HT = 4  # size of the time-keyed heap
ST_HP = 5  # size of the packet-keyed heap
ST_WRITES = 6  # table writes
ST_PUSHES = 7  # l_g pushes to switches other than the asker
ST_RESETS = 8  # table resets
ST_PULLED = 9  # confirm: the last epoch pulled
N_ST = 10

IMMEDIATE = np.iinfo(np.int64).min  # due key of an action with no delay: before the next packet
LAST = np.iinfo(np.int64).max


@njit(cache=True)
def _apply(e: int, q_sw: np.ndarray, q_g: np.ndarray, q_l: np.ndarray, regs: np.ndarray,
           group_state: np.ndarray, group_tau: np.ndarray, group_r: np.ndarray,
           table: np.ndarray, controller_l: np.ndarray,
           reset_pending: np.ndarray, epsilon: float, T: int, st: np.ndarray) -> None:
    """Carry out the pending action e: a table reset, or an l_g for a switch's controller."""
    sw = q_sw[e]
    if q_l[e] == RESET:
        reset_tables(regs[sw], table[:, sw])
        reset_pending[sw] = False
        st[ST_RESETS] += 1
        return
    g = q_g[e]
    lg = q_l[e]
    if lg > controller_l[sw, g]:  # the controller writes only a larger l_g
        controller_l[sw, g] = lg
        tau, r = group_entry_nb(epsilon, T, lg)
        install_group(group_state[sw], group_tau[sw], group_r[sw], g, tau, r)
        st[ST_WRITES] += 1


@njit(cache=True)
def _herd_chunk(
    start: int, begin: int, ts: np.ndarray, flow: np.ndarray, given_ingress: np.ndarray,
    rec: np.ndarray, stages: int, p_threshold: int, ts_first: int, epoch_ns: int,
    regs: np.ndarray, group_state: np.ndarray, group_tau: np.ndarray, group_r: np.ndarray,
    table: np.ndarray, epoch_log: np.ndarray, members: np.ndarray, member_count: np.ndarray,
    l_g: np.ndarray, controller_l: np.ndarray, reset_pending: np.ndarray,
    epsilon: float, T: int, delay_ns: int,
    eff_start: np.ndarray, eff_lg: np.ndarray, eff_at: np.ndarray, reset_on_overflow: bool,
    sep_start: np.ndarray, sep_packet: np.ndarray, sep_epoch: np.ndarray,
    sep_next: np.ndarray, switch_epoch: np.ndarray,
    st: np.ndarray, q_key: np.ndarray, q_sw: np.ndarray, q_g: np.ndarray, q_l: np.ndarray,
    heap_t: np.ndarray, heap_p: np.ndarray, due: np.ndarray, reports: np.ndarray,
    epoch_messages: np.ndarray, epoch_states: np.ndarray, switch_epoch_messages: np.ndarray,
    max_rows: int, pull: bool,
) -> int:
    """Packets begin .. len(ts) of the chunk that starts at trace packet ``start``. Returns
    where it stopped: len(ts), or earlier when the reports or the action arrays need more
    room (the caller grows them and calls again from there; no array is reallocated inside
    the loop, which would cost reference counting on every packet). With a run's measured
    epoch starts (``sep_*``: per switch, the packet at which each of its epochs began), a
    switch's packets get the switch's own epochs instead of the trace's. With ``pull``
    (confirm) it also stops at the first packet of each new epoch, once, for the caller to
    pull the epoch that ended."""
    k = regs.shape[0]
    n_groups = group_state.shape[1]
    fps, counts, epochs = table[SLOT_FP], table[SLOT_COUNT], table[SLOT_EPOCH]
    totals, prev_fps, prev_totals = table[SLOT_TOTAL], table[SLOT_PREV_FP], table[SLOT_PREV_TOTAL]
    packed = rec.shape[1] == stages + 2  # group and ingress switches in one word
    measured = len(eff_start) > 1
    given = len(given_ingress) > 0
    own_clock = len(sep_packet) > 0
    cur = st[ST_EPOCH]
    # The next epoch begins at or after this time: one comparison a packet, not a division.
    next_start = ts_first + (cur + 1) * epoch_ns if epoch_ns > 0 and cur >= 0 else IMMEDIATE
    lb = st[ST_LB]
    nrep = st[ST_NREP]
    qn = st[ST_QN]
    ht = st[ST_HT]
    hp = st[ST_HP]
    room = min(len(q_key), len(heap_t), len(heap_p), len(due)) - k - max_rows - 2
    stop = len(ts)
    for i in range(begin, len(ts)):
        if nrep >= len(reports) or qn >= room:
            stop = i
            break
        t = ts[i]
        gi = start + i
        # The control plane's pending actions: those due before this packet, in send order.
        if ht > 0 or hp > 0:
            nd = 0
            while ht > 0 and q_key[heap_t[0]] <= t:
                due[nd] = _heap_pop(heap_t, ht, q_key)
                ht -= 1
                nd += 1
            while hp > 0 and q_key[heap_p[0]] <= gi:
                due[nd] = _heap_pop(heap_p, hp, q_key)
                hp -= 1
                nd += 1
            if nd > 1:
                due[:nd].sort()  # entry index = send order
            for j in range(nd):
                _apply(due[j], q_sw, q_g, q_l, regs, group_state, group_tau, group_r, table,
                       controller_l, reset_pending, epsilon, T, st)
            if ht == 0 and hp == 0:
                qn = 0  # nothing pending: reuse the entry arrays from the start

        if t >= next_start:
            if pull and epoch_ns > 0 and st[ST_PULLED] < cur:
                stop = i
                break
            cur = next_epoch(t, ts_first, epoch_ns, cur)
            next_start = ts_first + (cur + 1) * epoch_ns if epoch_ns > 0 else LAST
        f = flow[i]
        word = rec[f, stages + REC_GROUP]
        g = np.int64(word & 0xFFFF)
        if given:
            sw = np.int64(given_ingress[i])
        else:
            lb = xorshift32(lb)
            if packed:
                sw = np.int64((word >> 16) & 0xFF) if lb <= p_threshold else np.int64(word >> 24)
            else:
                pair = rec[f, stages + REC_INGRESS]
                sw = np.int64(pair >> 16) if lb <= p_threshold else np.int64(pair & 0xFFFF)
        e_sw = cur
        if own_clock:  # the epoch the switch's own clock showed at this, its j-th, packet
            j = regs[sw, REG_PACKETS]
            nxt = sep_next[sw]
            while nxt < sep_start[sw + 1] and sep_packet[nxt] <= j:
                switch_epoch[sw] = sep_epoch[nxt]
                nxt += 1
            sep_next[sw] = nxt
            e_sw = switch_epoch[sw]
        ev, c = switch_packet(regs, group_state, group_tau, group_r, fps, counts, epochs, totals,
                              prev_fps, prev_totals, epoch_log, sw, g, rec, f, stages,
                              rec[f, stages + REC_FP], e_sw)
        occ = regs[sw, REG_OCCUPIED]
        if occ > epoch_states[cur]:
            epoch_states[cur] = occ
        if ev == EV_NONE:
            continue
        epoch_messages[cur] += 1
        # Per switch: messages in its current epoch, and the most in any epoch.
        if switch_epoch_messages[sw, 0] != cur:
            switch_epoch_messages[sw, 0] = cur
            switch_epoch_messages[sw, 1] = 0
        switch_epoch_messages[sw, 1] += 1
        if switch_epoch_messages[sw, 1] > switch_epoch_messages[sw, 2]:
            switch_epoch_messages[sw, 2] = switch_epoch_messages[sw, 1]
        if ev == EV_OVERFLOW and not reset_on_overflow:
            continue
        if ev == EV_REPORT:
            reports[nrep, 0] = f
            reports[nrep, 1] = regs[sw, REG_EPOCH]
            reports[nrep, 2] = t
            nrep += 1
            continue
        # Hellos and overflows make control-plane actions; queue them, due at t + delay (or
        # at the very packet a run measured).
        due_key = IMMEDIATE if delay_ns == 0 else t + delay_ns
        if ev == EV_HELLO:
            lg, changed = register_hello(members, member_count, l_g, g, sw)
            for m in range(k):
                if m != sw and not (changed and members[g, m]):
                    continue
                if m != sw:
                    st[ST_PUSHES] += 1
                key = m * n_groups + g
                rows = eff_start[key + 1] - eff_start[key] if measured else 0
                if rows == 0:  # the simulator's own action, at the constant delay
                    _put(q_key, q_sw, q_g, q_l, qn, heap_t, ht, due_key, m, g, lg)
                    qn += 1
                    ht += 1
                elif m == sw:
                    # A run's timing: this switch's entry follows the run's writes, each from
                    # the packet it took effect at. Not the simulator's l_g: the run's switches
                    # did not move in lockstep, so its coordinator saw hellos in another order
                    # than the trace's, and a push could land before the trace packet of the
                    # hello that caused it.
                    for j in range(eff_start[key], eff_start[key + 1]):
                        if eff_lg[j] > 0 and eff_at[j] != NEVER:
                            _put(q_key, q_sw, q_g, q_l, qn, heap_p, hp,
                                 max(eff_at[j], gi + 1), m, g, eff_lg[j])
                            qn += 1
                            hp += 1
                # else: a member with the run's writes got them all at its own hello
        elif ev == EV_OVERFLOW and reset_on_overflow and not reset_pending[sw]:
            reset_pending[sw] = True
            _put(q_key, q_sw, q_g, q_l, qn, heap_t, ht, due_key, sw, 0, RESET)
            qn += 1
            ht += 1
    st[ST_EPOCH] = cur
    st[ST_LB] = lb
    st[ST_NREP] = nrep
    st[ST_QN] = qn
    st[ST_HT] = ht
    st[ST_HP] = hp
    return stop


class _Run:
    """The simulator's state for one run, carried from chunk to chunk."""

    def count_closed_epochs(self, final: bool = False) -> None:
        """Count the reports of the epochs that are over (all of them when ``final``), so
        that the run keeps one row per reported (flow, epoch) rather than every report.
        Only with the trace's epochs: a report's epoch is then its packet's, so the epochs
        before the current one can receive no more."""
        n = int(self.st[ST_NREP])
        if n == 0:
            return
        reports = self.reports[:n]
        done = n if final else int(np.searchsorted(reports[:, 1], self.st[ST_EPOCH]))
        if done == 0:
            return
        self.tally.add(*count_reports(pair_keys(reports[:done, 1], reports[:done, 0]),
                                      reports[:done, 2], self.tally.R))
        self.reports[: n - done] = reports[done:]
        self.st[ST_NREP] = n - done

    def pull(self, e: int, at_ns: int, rec: np.ndarray, params: Params, T: int) -> None:
        """Confirm at the end of epoch e (``herd.coordinator``): count the epoch's reports,
        pull its candidates' held totals from every switch at ``at_ns`` (the tables as they
        stand: the end of the epoch), and keep the confirmed candidates, detected early or
        at ``at_ns`` plus the control-loop delay. Reports of epochs already pulled are
        late: counted, not applied."""
        n = int(self.st[ST_NREP])
        reports = self.reports[:n]
        epoch = reports[:, 1]
        self.late_reports += int(np.count_nonzero(epoch < e))
        sel = epoch == e
        R = self.tally.R
        keys, counts, detect = count_reports(pair_keys(epoch[sel], reports[sel, 0]),
                                             reports[sel, 2], R)
        cand = confirm_candidates(counts, params.confirm_reports, R)
        stages = len(params.stages)
        totals = np.zeros((self.regs.shape[0], len(cand)), np.int64)
        held_totals(self.table, rec, (keys[cand] & 0xFFFFFFFF).astype(np.int64), stages,
                    stages + REC_FP, e, totals)
        ok = confirmed(totals, T)
        hit = cand[ok]
        detected = np.zeros(len(keys), np.bool_)
        detected[hit] = True
        detect[hit] = np.minimum(detect[hit], at_ns + int(round(params.delay_ms * 1e6)))
        self.tally.add(keys, counts, detect, detected)
        rest = reports[epoch > e]
        self.reports[: len(rest)] = rest
        self.st[ST_NREP] = len(rest)
        # Costs: one pull per switch, its messages counted in epoch e like its reports.
        m = pull_messages(len(cand))
        self.pull_messages += m
        self.candidates += len(cand)
        self.confirmed += int(np.count_nonzero(ok))
        self.withdrawn += int(np.count_nonzero(~ok & (counts[cand] >= R)))
        self.unknown_totals += int(np.count_nonzero(totals < 0))
        if m and e < len(self.epoch_messages):
            self.epoch_messages[e] += m * len(totals)
            sem = self.switch_epoch_messages
            fresh = sem[:, 0] != e
            sem[fresh, 0] = e
            sem[fresh, 1] = 0
            sem[:, 1] += m
            np.maximum(sem[:, 2], sem[:, 1], out=sem[:, 2])
        self.st[ST_PULLED] = e

    def ensure_room(self, per_packet: int) -> None:
        """Room for one more report and one packet's actions: double what is short."""
        nrep, qn = int(self.st[ST_NREP]), int(self.st[ST_QN])
        if nrep >= len(self.reports):
            self.reports = _grown(self.reports, 2 * len(self.reports))
        names = ("q_key", "q_sw", "q_g", "q_l", "heap_t", "heap_p", "due")
        while qn + per_packet >= min(len(getattr(self, name)) for name in names):
            size = 2 * len(self.q_key)
            for name in names:
                setattr(self, name, _grown(getattr(self, name), size))

    def __init__(self, prep: PreparedTrace, params: Params, T: int, epochs: int) -> None:
        k = params.k
        slots = sum(params.stages)
        self.regs = np.zeros((k, N_REGS), dtype=np.uint32)
        for sw in range(k):
            config = LocalController(sw, params.epsilon, T, params.s, params.seed).switch_config()
            self.regs[sw, REG_PRNG] = config.prng_seed
            self.regs[sw, REG_SAMPLE_THRESHOLD] = config.sample_threshold
            self.regs[sw, REG_HOLD_START] = config.hold_start
        self.group_state = np.zeros((k, N_GROUPS), dtype=np.uint8)
        self.group_tau = np.zeros((k, N_GROUPS), dtype=np.uint32)
        self.group_r = np.zeros((k, N_GROUPS), dtype=np.uint32)
        self.table = np.zeros((SLOT_FIELDS, k, slots), dtype=np.uint32)  # table[SLOT_*, sw]
        self.epoch_log = np.zeros((k, EPOCH_LOG), dtype=np.uint64)
        self.members = np.zeros((N_GROUPS, k), dtype=np.bool_)
        self.member_count = np.zeros(N_GROUPS, dtype=np.int32)
        self.l_g = np.ones(N_GROUPS, dtype=np.int32)
        self.controller_l = np.zeros((k, N_GROUPS), dtype=np.int32)  # l_g each controller holds
        self.reset_pending = np.zeros(k, dtype=np.bool_)
        self.sep_next = np.zeros(k, dtype=np.int64)  # next measured epoch start per switch
        self.switch_epoch = np.zeros(k, dtype=np.int64)
        self.st = np.zeros(N_ST, dtype=np.int64)
        self.st[ST_EPOCH] = -1
        self.st[ST_PULLED] = -1
        self.st[ST_LB] = lb_seed(params.seed)
        self.q_key = np.empty(1024, dtype=np.int64)
        self.q_sw = np.empty(1024, dtype=np.int64)
        self.q_g = np.empty(1024, dtype=np.int64)
        self.q_l = np.empty(1024, dtype=np.int64)
        self.heap_t = np.empty(1024, dtype=np.int64)
        self.heap_p = np.empty(1024, dtype=np.int64)
        self.due = np.empty(1024, dtype=np.int64)  # as long as the action arrays
        self.reports = np.empty((1024, 3), dtype=np.int64)  # flow, epoch, time
        self.tally = ReportTally(prep.truth(params, T).heavy_keys(), params.reports_needed)
        self.epoch_messages = np.zeros(max(epochs, 1), dtype=np.int64)
        self.epoch_states = np.zeros(max(epochs, 1), dtype=np.int64)
        # per switch: [epoch, messages in it, most messages in one epoch]
        self.switch_epoch_messages = np.zeros((k, 3), dtype=np.int64)
        # Confirm's pulls: messages per switch, and what they found.
        self.pull_messages = 0
        self.candidates = 0
        self.confirmed = 0
        self.withdrawn = 0
        self.unknown_totals = 0
        self.late_reports = 0


def _grown(a: np.ndarray, size: int) -> np.ndarray:
    b = np.empty((size, *a.shape[1:]), dtype=a.dtype)
    b[: len(a)] = a
    return b


def simulate_herd(prep: PreparedTrace, params: Params,
                  delays: MeasuredTiming | list[EntryWrite] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Run Herd over the trace with these parameters. ``delays``: a testbed run's measured
    timing (``herd.delays``): its entry writes and the packets they took effect at, and with
    epochs where each switch's epochs began; ``params.delay_ms`` applies to what it does not
    cover and to table resets. ``progress(done, total)`` is called after every chunk of
    packets."""
    timing = delays if isinstance(delays, MeasuredTiming) else \
        MeasuredTiming(list(delays or []), [])
    delays = timing.entries if delays is not None else None
    t = prep.trace
    T = prep.threshold(params)
    R = params.reports_needed
    k = params.k
    epoch_ns = epoch_ns_of(params.epoch_ms)
    truth = prep.truth(params, T)
    rec = prep.flow_records(params.stages, k)
    given = prep.trace.ingress if prep.given_ingress else None
    if given is not None and int(given.max()) >= k:
        raise HerdInputError(
            f"parameter k={k}: the trace has {int(given.max()) + 1} ingress files")
    effect = EffectTimes.empty()
    if delays is not None:
        effect = effect_times(delays, prep.ingress(k, params.p, params.seed), prep.flow_group,
                              t.flow, k)
    run = _Run(prep, params, T, truth.epochs)
    sep_start, sep_packet, sep_epoch = switch_epochs(timing.epochs, k)
    run.sep_next[:] = sep_start[:k]  # each switch's first epoch start
    own_clock = len(sep_packet) > 0
    no_ingress = np.zeros(0, np.int16)
    p_threshold = probability_threshold(params.p)
    delay_ns = int(round(params.delay_ms * 1e6))
    columns = ("ts_ns", "flow", "ingress") if given is not None else ("ts_ns", "flow")

    max_rows = int(np.diff(effect.start).max()) if len(effect.start) > 1 else 0
    per_packet = k + max_rows + 2  # the most actions one packet can queue, and a margin
    started = time.perf_counter()
    last_ts = t.first_ts
    for start, c in t.chunks(columns):
        ts, flow = c["ts_ns"], c["flow"]
        ingress = c["ingress"] if given is not None else no_ingress
        at = 0
        while at < len(ts):
            run.ensure_room(per_packet)
            at = _herd_chunk(
                start, at, ts, flow, ingress, rec, len(params.stages), p_threshold, t.first_ts,
                epoch_ns,
                run.regs, run.group_state, run.group_tau, run.group_r, run.table, run.epoch_log,
                run.members, run.member_count, run.l_g,
                run.controller_l, run.reset_pending, float(params.epsilon), int(T), delay_ns,
                effect.start, effect.l_g, effect.at, params.overflow_policy == "reset",
                sep_start, sep_packet, sep_epoch, run.sep_next, run.switch_epoch,
                run.st, run.q_key, run.q_sw, run.q_g, run.q_l, run.heap_t, run.heap_p, run.due,
                run.reports, run.epoch_messages, run.epoch_states, run.switch_epoch_messages,
                max_rows, params.confirm)
            e = int(run.st[ST_EPOCH])
            end_ns = t.first_ts + (e + 1) * epoch_ns  # when epoch e ended
            if params.confirm and at < len(ts) and epoch_ns and run.st[ST_PULLED] < e \
                    and ts[at] >= end_ns:  # stopped at the first packet after epoch e
                run.pull(e, end_ns, rec, params, T)
        if len(ts):
            last_ts = int(ts[-1])
        if not own_clock and not params.confirm:
            run.count_closed_epochs()
        if progress is not None:
            progress(start + len(ts), t.packets)
    if params.confirm:  # the last epoch ends with the trace (or with W)
        e = int(run.st[ST_EPOCH])
        run.pull(e, t.first_ts + (e + 1) * epoch_ns if epoch_ns else last_ts, rec, params, T)
    run.count_closed_epochs(final=True)
    detection = run.tally.detection()
    seconds = time.perf_counter() - started
    metrics, rows = score(prep, params, T, R, detection, run.epoch_messages, run.epoch_states)
    regs = run.regs
    metrics.update({
        **message_summary(regs[:, REG_HELLOS], regs[:, REG_REPORTS], regs[:, REG_OVERFLOWS],
                          run.pull_messages),
        **memory_summary(regs[:, REG_PEAK_OCCUPIED], sum(params.stages),
                         slot_bytes(params.confirm)),
        "max_messages_per_switch_epoch": int(run.switch_epoch_messages[:, 2].max()),
        "table_writes": int(run.st[ST_WRITES]),
        "l_g_pushes": int(run.st[ST_PUSHES]),
        "table_resets": int(run.st[ST_RESETS]),
        "groups": int(np.count_nonzero(run.member_count)),
        "flows": t.flows,
        "skipped_packets": t.skipped,
    })
    if params.confirm:
        metrics.update({"confirm_candidates": run.candidates, "confirmed": run.confirmed,
                        "withdrawn": run.withdrawn, "unknown_held_totals": run.unknown_totals,
                        "late_reports": run.late_reports})
    if delays is not None:
        metrics["measured_delays"] = len(delays) - effect.mismatched
        metrics["measured_delays_mismatched"] = effect.mismatched
        metrics["measured_epoch_starts"] = len(timing.epochs)
    return SimulationResult(params, T, R, metrics, seconds, t.packets, t.digest, t.paths[0],
                            t.flows, detection, rows)


__all__ = ["PreparedTrace", "SimulationResult", "simulate_herd"]
