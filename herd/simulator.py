"""The batch simulator: a trace through k Herd switches, their controllers and the
coordinator, in one compiled loop that calls the very same semantics as everything else
(``switch.process_packet``, ``controller.group_entry_nb``, ``coordinator.register_hello``).

Control-loop delay: every control-plane action caused by a message the switches send at
time t (a group entry installed or modified, a table reset) takes effect at t + delay, in
time order and, at equal times, in the order the messages were sent. With delay 0 it takes
effect before the next packet. Or, with a testbed run's measured timing (``herd.delays``),
each switch's entries follow the run's writes, packet for packet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from herd import __version__
from herd.controller import LocalController, group_entry_nb
from herd.coordinator import NOT_DETECTED, Coordinator, register_hello
from herd.delays import NEVER, EffectTimes, EntryWrite, effect_times
from herd.errors import HerdInputError
from herd.groundtruth import crossing_times, heavy_hitters, threshold
from herd.hashing import flows_slots
from herd.loadbalancer import assign_ingress, lb_seed
from herd.metrics import accuracy, detection_delays_ms, memory_summary, message_summary
from herd.params import Params
from herd.prng import probability_threshold
from herd.switch import (
    EV_HELLO,
    EV_NONE,
    EV_OVERFLOW,
    EV_REPORT,
    N_GROUPS,
    N_REGS,
    REG_HELLOS,
    REG_HOLD_START,
    REG_OVERFLOWS,
    REG_PEAK_OCCUPIED,
    REG_PRNG,
    REG_REPORTS,
    REG_SAMPLE_THRESHOLD,
    install_group,
    process_packet,
    reset_tables,
    stage_layout,
)
from herd.trace import Trace

RESET = -1  # queue entry: reset the switch's tables instead of installing a group


class PreparedTrace:
    """A trace plus what every run over it shares (flow counts, T, hashes, ingress), computed
    once per distinct setting so that sweeps and tuning pay for it once."""

    def __init__(self, trace: Trace) -> None:
        if trace.packets == 0:
            raise HerdInputError(f"{trace.paths[0]}: trace holds no IPv4 packets to simulate")
        self.trace = trace
        self.counts = trace.flow_counts()
        self.flow_group = trace.group_of_flow().astype(np.int32)
        self._slots: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._ingress: dict[tuple[int, float, int], np.ndarray] = {}
        self._crossing: dict[int, np.ndarray] = {}

    def threshold(self, params: Params) -> int:
        return params.T if params.T is not None else threshold(self.counts, params.percentile)

    def slots(self, stages: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if stages not in self._slots:
            offsets, sizes = stage_layout(stages)
            t = self.trace
            self._slots[stages] = flows_slots(t.flow_src, t.flow_dst, t.flow_sport, t.flow_dport,
                                              t.flow_proto, offsets, sizes)
        return self._slots[stages]

    def ingress(self, k: int, p: float, seed: int) -> np.ndarray:
        """Per packet ingress switch: the trace's own (one file per switch) or the load
        balancer's."""
        t = self.trace
        if t.packets and int(t.ingress.min()) >= 0:
            if int(t.ingress.max()) >= k:
                raise HerdInputError(
                    f"parameter k={k}: the trace has {int(t.ingress.max()) + 1} ingress files")
            return t.ingress
        key = (k, p, seed)
        if key not in self._ingress:
            self._ingress[key] = assign_ingress(t.src, k, probability_threshold(p), lb_seed(seed))
        return self._ingress[key]

    def crossing(self, T: int) -> np.ndarray:
        if T not in self._crossing:
            t = self.trace
            self._crossing[T] = crossing_times(t.flow, t.ts_ns, t.flows, T)
        return self._crossing[T]


@njit(cache=True)
def _grow(a: np.ndarray, n: int) -> np.ndarray:
    b = np.empty(max(2 * len(a), n), dtype=a.dtype)
    b[: len(a)] = a
    return b


@njit(cache=True)
def _heap_push(heap: np.ndarray, n: int, item: int, key: np.ndarray) -> np.ndarray:
    """Push item onto the binary min-heap heap[:n] ordered by (key[item], item)."""
    if n == len(heap):
        heap = _grow(heap, n + 1)
    i = n
    heap[i] = item
    while i > 0:
        parent = (i - 1) >> 1
        a, b = heap[parent], heap[i]
        if key[a] < key[b] or (key[a] == key[b] and a < b):
            break
        heap[parent], heap[i] = b, a
        i = parent
    return heap


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
def _put(q_at: np.ndarray, q_sw: np.ndarray, q_g: np.ndarray, q_l: np.ndarray, qn: int,
         heap: np.ndarray, hn: int, at: int, sw: int, g: int, lg: int,
         ) -> tuple[int, int, np.ndarray]:
    """Queue the action (sw, g, lg) to take effect before packet ``at`` (the q_* have
    room)."""
    q_at[qn] = at
    q_sw[qn] = sw
    q_g[qn] = g
    q_l[qn] = lg
    heap = _heap_push(heap, hn, qn, q_at)
    return qn + 1, hn + 1, heap


@njit(cache=True)
def _simulate_herd(
    ts: np.ndarray, pkt_ingress: np.ndarray, pkt_flow: np.ndarray,
    flow_group: np.ndarray, flow_slot: np.ndarray, flow_fp: np.ndarray,
    regs: np.ndarray, group_state: np.ndarray, group_tau: np.ndarray, group_r: np.ndarray,
    fps: np.ndarray, counts: np.ndarray,
    members: np.ndarray, member_count: np.ndarray, l_g: np.ndarray,
    epsilon: float, T: int, delay_ns: int,
    eff_start: np.ndarray, eff_lg: np.ndarray, eff_at: np.ndarray,
    reset_on_overflow: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = regs.shape[0]
    n_groups = group_state.shape[1]
    measured = len(eff_start) > 1
    rep_flow = np.empty(1024, dtype=np.int64)
    rep_ts = np.empty(1024, dtype=np.int64)
    nrep = 0
    # The control plane's pending actions (packet, switch, group, l_g), taken before that
    # packet, in packet order and, at the same packet, in the order the messages were sent:
    # a heap of indices into q_*.
    q_at = np.empty(1024, dtype=np.int64)
    q_sw = np.empty(1024, dtype=np.int32)
    q_g = np.empty(1024, dtype=np.int32)
    q_l = np.empty(1024, dtype=np.int32)
    qn = 0
    heap = np.empty(1024, dtype=np.int64)
    hn = 0
    controller_l = np.zeros((k, group_state.shape[1]), dtype=np.int32)  # l_g each controller holds
    reset_pending = np.zeros(k, dtype=np.bool_)
    # counters: [table writes, l_g pushes to switches other than the asker, resets]
    stats = np.zeros(3, dtype=np.int64)

    for i in range(len(ts)):
        t = ts[i]
        while hn > 0 and q_at[heap[0]] <= i:
            e = _heap_pop(heap, hn, q_at)
            hn -= 1
            sw = q_sw[e]
            if q_l[e] == RESET:
                reset_tables(regs[sw], fps[sw], counts[sw])
                reset_pending[sw] = False
                stats[2] += 1
            else:
                g = q_g[e]
                lg = q_l[e]
                if lg > controller_l[sw, g]:  # the controller writes only a larger l_g
                    controller_l[sw, g] = lg
                    tau, r = group_entry_nb(epsilon, T, lg)
                    install_group(group_state[sw], group_tau[sw], group_r[sw], g, tau, r)
                    stats[0] += 1
        if hn == 0:
            qn = 0  # nothing pending: reuse the entry arrays from the start

        sw = pkt_ingress[i]
        f = pkt_flow[i]
        g = flow_group[f]
        ev, c = process_packet(regs[sw], group_state[sw], group_tau[sw], group_r[sw],
                               fps[sw], counts[sw], g, flow_slot[f], flow_fp[f])
        if ev == EV_NONE:
            continue
        if ev == EV_REPORT:
            if nrep == len(rep_flow):
                rep_flow = _grow(rep_flow, nrep + 1)
                rep_ts = _grow(rep_ts, nrep + 1)
            rep_flow[nrep] = f
            rep_ts[nrep] = t
            nrep += 1
            continue
        # Hellos and overflows make control-plane actions; queue them.
        # Actions are keyed by the packet they take effect before: the first at or after
        # t + delay (never this one), or the very packet a run measured.
        due = max(i + 1, np.searchsorted(ts, t + delay_ns))
        key = sw * n_groups + g
        rows = eff_start[key + 1] - eff_start[key] if measured else 0
        if qn + k + rows + 1 >= len(q_at):  # room for this packet's actions
            q_at = _grow(q_at, qn + k + rows + 2)
            q_sw = _grow(q_sw, qn + k + rows + 2)
            q_g = _grow(q_g, qn + k + rows + 2)
            q_l = _grow(q_l, qn + k + rows + 2)
        if ev == EV_HELLO:
            lg, changed = register_hello(members, member_count, l_g, g, sw)
            for m in range(k):
                if m != sw and not (changed and members[g, m]):
                    continue
                if m != sw:
                    stats[1] += 1
                key = m * n_groups + g
                rows = eff_start[key + 1] - eff_start[key] if measured else 0
                if rows == 0:  # the simulator's own action, at the constant delay
                    qn, hn, heap = _put(q_at, q_sw, q_g, q_l, qn, heap, hn, due, m, g, lg)
                elif m == sw:
                    # A run's timing: this switch's entry follows the run's writes, each from
                    # the packet it took effect at. Not the simulator's l_g: the run's switches
                    # did not move in lockstep, so its coordinator saw hellos in another order
                    # than the trace's, and a push could land before the trace packet of the
                    # hello that caused it.
                    for j in range(eff_start[key], eff_start[key + 1]):
                        if eff_lg[j] > 0 and eff_at[j] != NEVER:
                            qn, hn, heap = _put(q_at, q_sw, q_g, q_l, qn, heap, hn,
                                                max(eff_at[j], i + 1), m, g, eff_lg[j])
                # else: a member with the run's writes got them all at its own hello
        elif ev == EV_OVERFLOW and reset_on_overflow and not reset_pending[sw]:
            reset_pending[sw] = True
            qn, hn, heap = _put(q_at, q_sw, q_g, q_l, qn, heap, hn, due, sw, 0, RESET)
    return rep_flow[:nrep], rep_ts[:nrep], stats


@dataclass
class SimulationResult:
    """Everything a run measured; ``to_dict`` is what ``--json`` prints."""

    params: Params
    T: int
    R: int
    metrics: dict[str, Any]
    seconds: float
    packets: int
    trace_digest: str
    trace_path: str
    detected: np.ndarray = field(repr=False)
    detect_ts: np.ndarray = field(repr=False)
    # The coordinator's reports per flow (None where a detector has none): one run then
    # tells the F1 of every R, which herd.tuning uses to choose R.
    report_count: np.ndarray | None = field(default=None, repr=False)

    @property
    def f1(self) -> float:
        return float(self.metrics["f1"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "T": self.T,
            "R": self.R,
            **self.metrics,
            "packets": self.packets,
            "seconds": self.seconds,
            "packets_per_second": self.packets / self.seconds if self.seconds > 0 else None,
            "params": self.params.to_dict(),
            "trace": self.trace_path,
            "trace_digest": self.trace_digest,
            "herd_version": __version__,
        }


def simulate(trace: Trace | PreparedTrace, params: Params,
             delays: list[EntryWrite] | None = None) -> SimulationResult:
    """Run Herd over the trace with these parameters. ``delays``: the entry writes of a testbed
    run and the packets they took effect at (``herd.delays``); ``params.delay_ms`` applies to
    what it does not cover and to table resets."""
    prep = trace if isinstance(trace, PreparedTrace) else PreparedTrace(trace)
    if params.algorithm != "herd":
        from herd.baselines import simulate_baseline

        return simulate_baseline(prep, params)
    t = prep.trace
    T = prep.threshold(params)
    R = params.reports_needed
    k = params.k
    slot_of_flow, fp_of_flow = prep.slots(params.stages)
    ingress = prep.ingress(k, params.p, params.seed)
    slots = sum(params.stages)

    regs = np.zeros((k, N_REGS), dtype=np.uint32)
    for sw in range(k):
        config = LocalController(sw, params.epsilon, T, params.s, params.seed).switch_config()
        regs[sw, REG_PRNG] = config.prng_seed
        regs[sw, REG_SAMPLE_THRESHOLD] = config.sample_threshold
        regs[sw, REG_HOLD_START] = config.hold_start
    group_state = np.zeros((k, N_GROUPS), dtype=np.uint8)
    group_tau = np.zeros((k, N_GROUPS), dtype=np.uint32)
    group_r = np.zeros((k, N_GROUPS), dtype=np.uint32)
    fps = np.zeros((k, slots), dtype=np.uint32)
    counts = np.zeros((k, slots), dtype=np.uint32)
    coordinator = Coordinator(k, R)
    effect = EffectTimes.empty()
    if delays is not None:
        effect = effect_times(delays, ingress, prep.flow_group, t.flow, k)

    start = time.perf_counter()
    rep_flow, rep_ts, stats = _simulate_herd(
        t.ts_ns, ingress, t.flow, prep.flow_group, slot_of_flow, fp_of_flow,
        regs, group_state, group_tau, group_r, fps, counts,
        coordinator.members, coordinator.member_count, coordinator.l_g,
        float(params.epsilon), int(T), int(round(params.delay_ms * 1e6)),
        effect.start, effect.l_g, effect.at,
        params.overflow_policy == "reset",
    )
    coordinator.hellos = int(regs[:, REG_HELLOS].sum())
    coordinator.ensure_flows(t.flows)
    coordinator.on_reports(rep_flow, rep_ts)
    seconds = time.perf_counter() - start

    detected = coordinator.report_count[: t.flows] >= R
    heavy = heavy_hitters(prep.counts, T)
    metrics: dict[str, Any] = {
        "heavy_hitters": int(heavy.sum()),
        "detected": int(detected.sum()),
        **accuracy(detected, heavy),
        **message_summary(regs[:, REG_HELLOS], regs[:, REG_REPORTS], regs[:, REG_OVERFLOWS]),
        **memory_summary(regs[:, REG_PEAK_OCCUPIED], slots),
        "table_writes": int(stats[0]),
        "l_g_pushes": int(stats[1]),
        "table_resets": int(stats[2]),
        "groups": int(np.count_nonzero(coordinator.member_count)),
        "flows": t.flows,
        "skipped_packets": t.skipped,
    }
    if delays is not None:
        metrics["measured_delays"] = len(delays) - effect.mismatched
        metrics["measured_delays_mismatched"] = effect.mismatched
    detect_ts = coordinator.detect_ts[: t.flows]
    metrics.update(detection_delays_ms(detect_ts, prep.crossing(T), detected & heavy))
    return SimulationResult(params, T, R, metrics, seconds, t.packets, t.digest, t.paths[0],
                            detected, np.where(detected, detect_ts, NOT_DETECTED),
                            coordinator.report_count[: t.flows].copy())
