"""The baselines Herd is compared with, on the same trace, ingress assignment and metrics.

- **strawman**: every switch counts every flow it sees and, at the end of the measurement
  window, sends each of its counters to the coordinator, which adds them up: exact counts,
  so exact detection, at the price of one state and one message per (switch, flow).
- **sampling** (probabilistic sampling): each packet is sent to the coordinator with
  probability q (``params.q``); the coordinator scales its per-flow counts by 1/q and calls
  a flow an elephant once the scaled count reaches T. No state on the switches.
- **reporting** (probabilistic reporting): every switch counts every flow it sees; each
  time a local count reaches tau it restarts from 0 and the switch reports the flow with
  probability 1/k; R reports make an elephant.

  tau: the Herd paper's rule without locality information. Herd gives group g the mule
  threshold ceil(epsilon * T / l_g) and report probability 1 / l_g, so that a flow of n
  packets spread over its l_g switches yields n / (epsilon * T) reports in expectation,
  and R = 1 / epsilon of them mean n ~ T. A switch that knows nothing of locality must
  assume the worst case, a flow spread over all k switches: l_g = k, i.e.
  tau = max(1, ceil(epsilon * T / k)) and probability 1 / k - computed by the very same
  ``herd.controller.group_entry_nb`` the Herd controllers use. The expectation argument
  holds for any spread, so R = params.R (default round(1 / epsilon)) applies unchanged;
  the price is k times more mule crossings per flow than Herd with l_g = 1.

Every coin flip is a xorshift32 threshold flip (``herd.prng``) on the flipping switch's own
generator, seeded with ``switch_seed(params.seed, switch)``, and packets take the ingress
switch ``PreparedTrace.ingress`` gives them, exactly as in Herd's simulation. The per-packet
loops are numba kernels.

Epochs: a baseline counts (flow, epoch) pairs as it would count flows in a trace of one
epoch - its counters start afresh at each epoch, as Herd's tables do - and its memory is the
largest number of counters a switch holds within one epoch.

Budgets. ``run_baseline`` also runs each baseline as it would be deployed under a memory
budget of S states and a communication budget of C messages per switch (used by
``herd figures`` to compare at equal budgets): a switch holds counters for at most S
flows - the first S distinct flows it sees; later ones are never counted (there is no
eviction in a switch pipeline) - and the strawman sends only its C largest counters.
The sampling baseline keeps no state; its q is what a communication budget chooses
(``herd.tuning.tune_baseline``).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

from herd.controller import group_entry_nb
from herd.coordinator import NOT_DETECTED, count_reports
from herd.errors import HerdInputError
from herd.groundtruth import pair_keys
from herd.metrics import memory_summary, message_summary
from herd.params import Params
from herd.prepared import Detection, PreparedTrace, SimulationResult, score
from herd.prng import probability_threshold, switch_seed, xorshift32

BASELINES = ("strawman", "sampling", "reporting")

# A dense (flow, switch) -> pair map costs 4 bytes per flow and switch; above this many
# entries the pairs are found by sorting instead (slower, but memory stays O(packets)).
DENSE_PAIR_LIMIT = 1 << 25


# ------------------------------------------------------------------------------------------
# (switch, flow) pairs: what a per-switch exact counter table holds


@dataclass(frozen=True)
class Pairs:
    """The distinct (ingress switch, flow) pairs of a trace under one ingress assignment,
    numbered by first appearance. With epochs, "flow" is a (flow, epoch) pair of
    ``PreparedTrace.pairs``."""

    of_packet: np.ndarray  # int32: the pair of every packet
    flow: np.ndarray  # int32 per pair
    switch: np.ndarray  # int32 per pair
    first: np.ndarray  # int32: index of the pair's first packet
    packets: np.ndarray  # int64: packets of the flow at that switch
    rank: np.ndarray  # int32: how many pairs of the same switch (and epoch) came before

    def __len__(self) -> int:
        return len(self.flow)


@njit(cache=True)
def _pairs_dense(flow: np.ndarray, ingress: np.ndarray, flows: int,
                 k: int) -> tuple[np.ndarray, ...]:
    n = len(flow)
    index = np.full(flows * k, -1, dtype=np.int32)
    of_packet = np.empty(n, dtype=np.int32)
    p_flow = np.empty(n, dtype=np.int32)
    p_switch = np.empty(n, dtype=np.int32)
    p_first = np.empty(n, dtype=np.int32)
    p_packets = np.zeros(n, dtype=np.int64)
    p_rank = np.empty(n, dtype=np.int32)
    per_switch = np.zeros(k, dtype=np.int32)
    m = 0
    for i in range(n):
        f = flow[i]
        sw = ingress[i]
        key = np.int64(f) * k + sw
        pr = index[key]
        if pr < 0:
            pr = m
            index[key] = m
            p_flow[m] = f
            p_switch[m] = sw
            p_first[m] = i
            p_rank[m] = per_switch[sw]
            per_switch[sw] += 1
            m += 1
        of_packet[i] = pr
        p_packets[pr] += 1
    return (of_packet, p_flow[:m].copy(), p_switch[:m].copy(), p_first[:m].copy(),
            p_packets[:m].copy(), p_rank[:m].copy())


def _pairs_sorted(flow: np.ndarray, ingress: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
    """The same as ``_pairs_dense`` by sorting, for traces too large for a dense map."""
    key = flow.astype(np.int64) * k + ingress
    _, first, inverse, packets = np.unique(key, return_index=True, return_inverse=True,
                                           return_counts=True)
    order = np.argsort(first, kind="stable")  # renumber by first appearance
    renumber = np.empty(len(order), dtype=np.int64)
    renumber[order] = np.arange(len(order))
    first = first[order]
    p_switch = ingress[first].astype(np.int32)
    # rank within the switch: position among the same switch's pairs, in appearance order
    by_switch = np.argsort(p_switch, kind="stable")
    starts = np.searchsorted(p_switch[by_switch], np.arange(k))
    rank = np.empty(len(first), dtype=np.int32)
    rank[by_switch] = np.arange(len(first)) - starts[p_switch[by_switch]]
    return (renumber[inverse].astype(np.int32), flow[first].astype(np.int32), p_switch,
            first.astype(np.int32), packets[order].astype(np.int64), rank)


# Pairs per (trace, ingress array); the ingress arrays are PreparedTrace's own cached ones,
# so their identity names the assignment, and the weak key frees everything with the trace.
_PAIRS: weakref.WeakKeyDictionary[PreparedTrace, dict[int, tuple[np.ndarray, Pairs]]] = (
    weakref.WeakKeyDictionary())


def switch_flow_pairs(prep: PreparedTrace, params: Params) -> Pairs:
    """The (switch, flow) pairs of the trace under the ingress assignment of ``params``."""
    ingress = prep.ingress(params.k, params.p, params.seed)
    cache = _PAIRS.setdefault(prep, {})
    hit = cache.get(id(ingress))
    if hit is not None and hit[0] is ingress:
        return hit[1]
    key = (id(ingress), params.epoch_ms)
    hit = cache.get(key)
    if hit is not None and hit[0] is ingress:
        return hit[1]
    of_packet, pair_flow, pair_epoch = prep.pairs(params.epoch_ms)
    n = len(pair_flow)
    if n * params.k <= DENSE_PAIR_LIMIT:
        arrays = _pairs_dense(of_packet, ingress, n, params.k)
    else:
        arrays = _pairs_sorted(of_packet, ingress, params.k)
    pairs = Pairs(*arrays)
    if pair_epoch.any():  # rank within (switch, epoch): a switch's counters start afresh
        sw_epoch = pair_epoch[pairs.flow] * params.k + pairs.switch
        order = np.argsort(sw_epoch, kind="stable")
        starts = np.searchsorted(sw_epoch[order], sw_epoch[order])
        rank = np.empty(len(pairs), np.int32)
        rank[order] = np.arange(len(pairs)) - starts
        pairs = Pairs(pairs.of_packet, pairs.flow, pairs.switch, pairs.first, pairs.packets,
                      rank)
    cache[key] = (ingress, pairs)
    return pairs


def _states_per_switch(prep: PreparedTrace, params: Params, pairs: Pairs,
                       held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per switch, per epoch) the largest number of counters held within one epoch."""
    _, _, pair_epoch = prep.pairs(params.epoch_ms)
    epochs = int(pair_epoch.max()) + 1 if len(pair_epoch) else 1
    e = pair_epoch[pairs.flow[held]]
    grid = np.bincount(e * params.k + pairs.switch[held],
                       minlength=epochs * params.k).reshape(epochs, params.k)
    return grid.max(axis=0), grid.max(axis=1)


def distinct_flows_per_switch(prep: PreparedTrace, params: Params) -> np.ndarray:
    """How many distinct flows each ingress switch sees within one epoch, at most (the
    strawman's states)."""
    pairs = switch_flow_pairs(prep, params)
    return _states_per_switch(prep, params, pairs, np.ones(len(pairs), np.bool_))[0]


def groups_per_switch(prep: PreparedTrace, params: Params) -> np.ndarray:
    """How many distinct groups each ingress switch sees: the hellos Herd's switches send
    when the control loop is fast enough that no group is asked for twice."""
    pairs = switch_flow_pairs(prep, params)
    _, pair_flow, _ = prep.pairs(params.epoch_ms)
    key = pairs.switch.astype(np.int64) << 16 | prep.flow_group[pair_flow[pairs.flow]]
    distinct = np.unique(key)
    return np.bincount((distinct >> 16).astype(np.int64), minlength=params.k)


# ------------------------------------------------------------------------------------------
# kernels


@njit(cache=True)
def _sampling_kernel(ts: np.ndarray, ingress: np.ndarray, flow: np.ndarray, flows: int,
                     seeds: np.ndarray, q_threshold: int, q: float, T: int,
                     flow_epoch: np.ndarray, sent_grid: np.ndarray,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # ``flow``: the (flow, epoch) pair of each packet; sent_grid[epoch * k + switch] counts
    """Per packet one flip on its switch's generator; a sampled packet goes to the
    coordinator, which detects the flow when (sampled packets) / q reaches T."""
    k = len(seeds)
    state = seeds.copy()
    sent = np.zeros(k, dtype=np.int64)
    sampled = np.zeros(flows, dtype=np.int64)
    detect_ts = np.full(flows, NOT_DETECTED, dtype=np.int64)
    for i in range(len(ts)):
        sw = ingress[i]
        x = xorshift32(state[sw])
        state[sw] = x
        if x <= q_threshold:
            sent[sw] += 1
            f = flow[i]
            sent_grid[flow_epoch[f] * k + sw] += 1
            sampled[f] += 1
            if detect_ts[f] == NOT_DETECTED and sampled[f] / q >= T:
                detect_ts[f] = ts[i]
    return sampled, sent, detect_ts


@njit(cache=True)
def _grow(a: np.ndarray) -> np.ndarray:
    b = np.empty(2 * len(a), dtype=a.dtype)
    b[: len(a)] = a
    return b


@njit(cache=True)
def _reporting_kernel(ts: np.ndarray, ingress: np.ndarray, of_packet: np.ndarray,
                      pair_flow: np.ndarray, tracked: np.ndarray, seeds: np.ndarray,
                      tau: int, r_threshold: int) -> tuple[np.ndarray, ...]:
    """Exact per-(switch, flow) counters; a counter reaching tau restarts from 0 and its
    switch reports the flow when its flip fires."""
    k = len(seeds)
    state = seeds.copy()
    count = np.zeros(len(pair_flow), dtype=np.int64)
    sent = np.zeros(k, dtype=np.int64)
    rep_flow = np.empty(1024, dtype=np.int64)
    rep_ts = np.empty(1024, dtype=np.int64)
    rep_sw = np.empty(1024, dtype=np.int64)
    nrep = 0
    for i in range(len(ts)):
        pr = of_packet[i]
        if not tracked[pr]:
            continue
        c = count[pr] + 1
        if c < tau:
            count[pr] = c
            continue
        count[pr] = 0
        sw = ingress[i]
        x = xorshift32(state[sw])
        state[sw] = x
        if x <= r_threshold:
            sent[sw] += 1
            if nrep == len(rep_flow):
                rep_flow = _grow(rep_flow)
                rep_ts = _grow(rep_ts)
                rep_sw = _grow(rep_sw)
            rep_flow[nrep] = pair_flow[pr]
            rep_ts[nrep] = ts[i]
            rep_sw[nrep] = sw
            nrep += 1
    return rep_flow[:nrep], rep_ts[:nrep], rep_sw[:nrep], sent


# ------------------------------------------------------------------------------------------
# runs


@dataclass
class BaselineRun:
    """A baseline's result plus the coordinator's report count per (flow, epoch) pair
    (probabilistic reporting only; with one epoch, per flow)."""

    result: SimulationResult
    report_count: np.ndarray | None = None


def _seeds(params: Params) -> np.ndarray:
    return np.array([switch_seed(params.seed, sw) for sw in range(params.k)], dtype=np.uint32)


def _check_budget(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise HerdInputError(f"{name}={value}: a budget must be >= 1")


def _tracked(pairs: Pairs, memory: int | None) -> np.ndarray:
    """Which pairs hold a counter: all, or the first ``memory`` flows of each switch."""
    if memory is None:
        return np.ones(len(pairs), dtype=np.bool_)
    return pairs.rank < memory


def _finish(prep: PreparedTrace, params: Params, T: int, R: int, detected: np.ndarray,
            detect_ts: np.ndarray, reports: np.ndarray, states: tuple[np.ndarray, np.ndarray],
            slots: int, seconds: float, extra: dict[str, Any],
            epoch_messages: tuple[np.ndarray, int], report_count: np.ndarray | None = None
            ) -> SimulationResult:
    """The result with exactly Herd's metric keys (and a few of the baseline's own).
    ``detected`` / ``detect_ts`` / ``report_count`` are per (flow, epoch) pair."""
    t = prep.trace
    k = params.k
    _, pair_flow, pair_epoch = prep.pairs(params.epoch_ms)
    keys = pair_keys(pair_epoch, pair_flow)
    order = np.argsort(keys[detected], kind="stable")
    detection = Detection(keys[detected][order], detect_ts[detected][order])
    if report_count is not None:
        heavy = np.isin(keys, prep.truth(params, T).heavy_keys())
        detection.reports_heavy = np.bincount(report_count[heavy], minlength=1)
        detection.reports_other = np.bincount(report_count[~heavy], minlength=1)
        detection.reports = report_count[detected][order]
    per_switch, per_epoch = states
    metrics, rows = score(prep, params, T, R, detection, epoch_messages[0], per_epoch)
    zeros = np.zeros(k, dtype=np.int64)
    metrics.update({
        **message_summary(zeros, reports.astype(np.int64), zeros),
        **memory_summary(per_switch.astype(np.int64), slots),
        "max_messages_per_switch_epoch": epoch_messages[1],
        "table_writes": 0,
        "l_g_pushes": 0,
        "table_resets": 0,
        "groups": int(len(np.unique(prep.flow_group))),
        "flows": t.flows,
        "skipped_packets": t.skipped,
        **extra,
    })
    return SimulationResult(params, T, R, metrics, seconds, t.packets, t.digest, t.paths[0],
                            t.flows, detection, rows)


def _epoch_ends(prep: PreparedTrace, params: Params) -> np.ndarray:
    """The timestamp of each epoch's last packet: when a strawman's counters arrive."""
    of_packet, _, pair_epoch = prep.pairs(params.epoch_ms)
    epoch = pair_epoch[of_packet]
    last = np.flatnonzero(np.r_[epoch[1:] != epoch[:-1], True])
    ends = np.zeros(int(epoch[-1]) + 1, np.int64)
    ends[epoch[last]] = prep.trace.ts_ns[last]
    return ends


def _per_epoch(prep: PreparedTrace, params: Params, pair_of_message: np.ndarray,
               switch_of_message: np.ndarray) -> tuple[np.ndarray, int]:
    """Messages per epoch, and the most one switch sent in one epoch, from the pair each
    message was about and the switch that sent it."""
    _, _, pair_epoch = prep.pairs(params.epoch_ms)
    epochs = int(pair_epoch.max()) + 1
    e = pair_epoch[pair_of_message]
    grid = np.bincount(e * params.k + switch_of_message, minlength=epochs * params.k)
    return grid.reshape(epochs, params.k).sum(axis=1), int(grid.max()) if len(grid) else 0


def _strawman(prep: PreparedTrace, params: Params, T: int, memory: int | None,
              messages: int | None) -> BaselineRun:
    start = time.perf_counter()
    k = params.k
    pairs = switch_flow_pairs(prep, params)
    tracked = _tracked(pairs, memory)
    reported = tracked
    if messages is not None:
        # A switch that may send only C messages sends its C largest counters (ties: the
        # flow it saw first), the best a strawman can do with them.
        idx = np.flatnonzero(tracked)
        order = idx[np.lexsort((pairs.first[idx], -pairs.packets[idx], pairs.switch[idx]))]
        sw = pairs.switch[order]
        starts = np.searchsorted(sw, np.arange(k))
        within = np.arange(len(order)) - starts[sw]
        reported = np.zeros(len(pairs), dtype=np.bool_)
        reported[order[within < messages]] = True
    _, pair_flow, pair_epoch = prep.pairs(params.epoch_ms)
    estimate = np.bincount(pairs.flow[reported], weights=pairs.packets[reported],
                           minlength=len(pair_flow)).astype(np.int64)
    detected = estimate >= T
    # Every counter arrives at the end of its epoch: detection time = its last packet.
    detect_ts = _epoch_ends(prep, params)[pair_epoch]
    states = _states_per_switch(prep, params, pairs, tracked)
    reports = np.bincount(pairs.switch[reported], minlength=k)
    seconds = time.perf_counter() - start
    slots = int(memory) if memory is not None else int(states[0].max())
    result = _finish(prep, params, T, 0, detected, detect_ts, reports, states, slots, seconds,
                     {"untracked_flows": int(len(pairs) - tracked.sum())},
                     _per_epoch(prep, params, pairs.flow[reported], pairs.switch[reported]))
    return BaselineRun(result)


def _sampling(prep: PreparedTrace, params: Params, T: int) -> BaselineRun:
    start = time.perf_counter()
    t = prep.trace
    ingress = prep.ingress(params.k, params.p, params.seed)
    of_packet, pair_flow, pair_epoch = prep.pairs(params.epoch_ms)
    epochs = int(pair_epoch.max()) + 1
    grid = np.zeros(epochs * params.k, np.int64)
    sampled, sent, detect_ts = _sampling_kernel(
        t.ts_ns, ingress, of_packet, len(pair_flow), _seeds(params),
        probability_threshold(params.q), float(params.q), int(T), pair_epoch, grid)
    detected = sampled / params.q >= T  # the kernel's own test, so detect_ts agrees
    seconds = time.perf_counter() - start
    no_states = (np.zeros(params.k, dtype=np.int64), np.zeros(epochs, np.int64))
    epoch_messages = (grid.reshape(epochs, params.k).sum(axis=1), int(grid.max()))
    result = _finish(prep, params, T, 0, detected, detect_ts, sent, no_states, 0, seconds,
                     {"q": params.q}, epoch_messages)
    return BaselineRun(result)


def reporting_entry(params: Params, T: int) -> tuple[int, int]:
    """(tau, report-probability threshold) of the reporting baseline: Herd's group entry
    for l_g = k (see the module doc)."""
    tau, r = group_entry_nb(float(params.epsilon), int(T), int(params.k))
    return int(tau), int(r)


def _reporting(prep: PreparedTrace, params: Params, T: int, memory: int | None) -> BaselineRun:
    start = time.perf_counter()
    t = prep.trace
    k = params.k
    R = params.reports_needed
    pairs = switch_flow_pairs(prep, params)
    tracked = _tracked(pairs, memory)
    tau, r_threshold = reporting_entry(params, T)
    rep_flow, rep_ts, rep_switch, sent = _reporting_kernel(
        t.ts_ns, prep.ingress(k, params.p, params.seed), pairs.of_packet, pairs.flow, tracked,
        _seeds(params), tau, r_threshold)
    n_pairs = len(prep.pairs(params.epoch_ms)[1])
    keys, counts, first_detect = count_reports(rep_flow, rep_ts, R)
    report_count = np.zeros(n_pairs, np.int64)
    report_count[keys] = counts
    detect_ts = np.full(n_pairs, NOT_DETECTED, np.int64)
    detect_ts[keys] = first_detect
    detected = report_count >= R
    states = _states_per_switch(prep, params, pairs, tracked)
    seconds = time.perf_counter() - start
    slots = int(memory) if memory is not None else int(states[0].max())
    result = _finish(prep, params, T, R, detected, detect_ts, sent, states, slots, seconds,
                     {"tau": tau, "untracked_flows": int(len(pairs) - tracked.sum())},
                     _per_epoch(prep, params, rep_flow, rep_switch), report_count)
    return BaselineRun(result, report_count)


def run_baseline(prep: PreparedTrace, params: Params, *, memory: int | None = None,
                 messages: int | None = None) -> BaselineRun:
    """Run the baseline ``params.algorithm``; ``memory`` / ``messages`` are per-switch
    budgets (see the module doc), None for unlimited."""
    _check_budget("memory", memory)
    _check_budget("messages", messages)
    T = prep.threshold(params)
    if params.algorithm == "strawman":
        return _strawman(prep, params, T, memory, messages)
    if params.algorithm == "sampling":
        return _sampling(prep, params, T)
    if params.algorithm == "reporting":
        return _reporting(prep, params, T, memory)
    raise HerdInputError(
        f"parameter algorithm={params.algorithm}: not a baseline (one of {', '.join(BASELINES)})")


def simulate_baseline(prep: PreparedTrace, params: Params, *, memory: int | None = None,
                      messages: int | None = None) -> SimulationResult:
    """What ``herd.evaluate.simulate`` returns for a non-Herd algorithm."""
    return run_baseline(prep, params, memory=memory, messages=messages).result


def reporting_tau_text(params: Params, T: int) -> str:
    """How tau was chosen, for plot titles and logs."""
    tau, _ = reporting_entry(params, T)
    return f"tau=ceil(eps*T/k)={tau} (eps={params.epsilon:g}, T={T}, k={params.k})"


__all__ = [
    "BASELINES",
    "BaselineRun",
    "Pairs",
    "distinct_flows_per_switch",
    "groups_per_switch",
    "reporting_entry",
    "run_baseline",
    "simulate_baseline",
    "switch_flow_pairs",
]
