"""Tuning Herd under a memory budget S and a communication budget C per switch.

Given S counters and C messages per ingress switch, ``tune`` finds the sampling
probability s, the approximation factor epsilon, the report threshold R, the hash-table
stage sizes, the overflow policy and whether to confirm (Herd + confirm, and its C) that
maximise F1, subject to

- the table fitting the memory: S is counted in slots of the published layout
  (``herd.switch.SLOT_BYTES``, 12 bytes: fingerprint, counter, epoch tag), so a switch has
  S x 12 bytes. Herd's table holds at most S slots; with confirm a slot takes
  ``SLOT_BYTES_CONFIRM`` = 24 bytes (the held total and the previous epoch's fingerprint and
  total besides), so its table holds at most S x 12 // 24 (``max_slots`` may allow more, in
  12-byte slots too), and the measured peak states per switch fit the same bytes;
- the measured messages per switch (hellos + reports + overflows + confirm's pull requests
  and answers, busiest switch) being <= C * (1 - headroom) in every seed,

measured with the fast simulator over several seeds (mean and spread of F1 reported).

How it searches, and why (evaluation/README.md has the long form; evaluation/confirm/ what
confirm gains within the same budgets):

1. **R costs nothing.** The switches never see R - only the coordinator does - so one
   simulation yields the report count of every flow, and F1 for *every* R follows from it
   (a histogram over the report counts of heavy and other flows). R is chosen last, as the
   argmax of the F1 averaged over the seeds. This is what the naive rule R = round(1/epsilon)
   gets wrong: a switch drops the remainder below tau of every flow, so a flow of exactly T
   packets collects fewer than 1/epsilon reports and recall collapses (F1 of 0.3-0.6).
2. **The communication budget binds at the smallest epsilon that fits.** Smaller epsilon
   means a smaller mule threshold, more reports and finer counts; messages fall as epsilon
   grows. So for a given table and s, the search looks for the smallest epsilon on a
   lattice whose measured messages fit C (galloping, then bisection, from a hint, one seed),
   checks it on every seed, then also tries larger epsilons while F1 keeps improving.
   Epsilons giving the same mule thresholds for every locality 1..k are the same
   configuration and are simulated once.
3. **Start where the published idea starts**: the highest s whose expected states fit S
   (an analytic count over the (switch, flow) pairs: a flow seen n times at a switch is
   held with probability 1 - (1 - s)^n), the table at S slots in three halving stages, the
   smallest epsilon that fits C, R = round(1/epsilon). That point is reported as ``start``.
4. **Then search properly**: s moves along a log lattice - steps of ~2x, looking one step
   past a point that does not improve, then single steps - while F1 at its best fitting
   epsilon and R improves; a four-stage table and, when overflows matter, the "reset"
   policy are tried at the best s, and the neighbouring s once more.
5. **Re-measure on fresh seeds**: the best of many noisy measurements is partly the
   luckiest (the winner's curse), so the few best configurations are measured again on as
   many fresh seeds and the answer is the best over all of them, fitting on every seed.
6. **Confirm off and on** (``modes``): steps 2-5 run once for the published rule and once
   for Herd + confirm in its smaller table, and the better F1 wins (the published rule on a
   tie: it is the cheaper to deploy). C costs nothing either, as R does: a pull reads the
   tables and changes nothing on the switches, so a run with C = 1 (every reported flow
   pulled) says, per report count, which flows the pull confirmed; at any C the elephants
   are the confirmed flows with >= C reports, and only the pull's size changes (the
   coordinator's ``pull_messages`` of the flows with >= C reports). C is chosen like R, as
   the argmax of the mean F1 among the Cs whose messages fit on every seed (on a tie the
   larger C: the same elephants for a smaller pull). With one epoch
   those messages are exact; with several the busiest switch-epoch is bounded from above
   (the run's own, less the smallest saving of any epoch's pull), so a C found to fit does.
   R then only dates the early detections: the published rule's best R, at least C.

Every (configuration, seed) simulation is cached, so revisits are free.

The result can be written as a parameter file (``--write-params``) that ``herd simulate``,
``herd sweep``, the controllers and the testbed read (``herd.params.load_params_file``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from herd import __version__
from herd.coordinator import pull_messages
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, SimulationResult, simulate
from herd.executor import Executor, LocalExecutor
from herd.params import Params
from herd.switch import SLOT_BYTES, SLOT_BYTES_CONFIRM, slot_bytes
from herd.trace import Trace

MAX_TABLE_SLOTS = 1 << 26  # Params' own limit on the slots of a table
NICE = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12)  # a ~1.25x log lattice per decade
DEFAULT_SEEDS = 3
DEFAULT_HEADROOM = 0.05
POLICIES = ("ignore", "reset")
MODES = (False, True)  # confirm off (the published rule) and on
MODE_NAMES = {False: "herd", True: "herd+confirm"}


def lattice(lo: float, hi: float = 1.0) -> list[float]:
    """Descending 'nice' values in [lo, hi]: 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, ..."""
    out: list[float] = []
    scale = 1.0
    while scale >= lo / 10:
        for v in NICE:
            x = float(f"{v * scale:.6g}")
            if lo <= x <= hi:
                out.append(x)
        scale /= 10
    return out


S_LATTICE = lattice(1e-4)
Q_LATTICE = lattice(1e-6)


def halving_stages(total: int, stages: int) -> tuple[int, ...]:
    """``stages`` stage sizes, each half the previous, summing to ``total`` (e.g. 7168, 3 ->
    4096, 2048, 1024), as the default table is laid out."""
    stages = max(1, min(stages, total))
    weights = [2 ** (stages - 1 - i) for i in range(stages)]
    sizes = [max(1, total * w // sum(weights)) for w in weights]
    sizes[0] += total - sum(sizes)
    return tuple(sizes)


def epsilon_lattice(T: int, k: int, localities: Sequence[int] | None = None) -> list[float]:
    """Epsilons from 1 down to where every mule threshold is 1, one per distinct set of
    thresholds ceil(epsilon * T / l) over the localities l = 1..k (as the controllers
    compute them; or over ``localities``), ordered from fewest to most reports."""
    ls = np.asarray(localities if localities is not None else range(1, k + 1), dtype=np.float64)
    out: list[float] = []
    seen: set[bytes] = set()
    for eps in lattice(1e-7):
        taus = np.maximum(1, np.ceil(eps * T / ls)).astype(np.int64)
        key = taus.tobytes()
        if key in seen:
            continue
        seen.add(key)
        out.append(eps)
        if taus[0] == 1:
            break
    return out


# ------------------------------------------------------------------------------------------
# one run, reduced to what the search needs


def budget_slots(memory: int, confirm: bool) -> int:
    """A memory budget of ``memory`` published 12-byte slots, in slots of the layout (with
    confirm half as many, rounded down): the same bytes a switch."""
    return memory * SLOT_BYTES // slot_bytes(confirm)


@dataclass(frozen=True)
class Config:
    """What the search varies (R, and C with confirm, are chosen after the runs)."""

    s: float
    epsilon: float
    stages: tuple[int, ...]
    overflow_policy: str = "ignore"
    algorithm: str = "herd"
    q: float = 0.01
    confirm: bool = False  # Herd + confirm, simulated with C = 1 (module doc, step 6)

    @property
    def table_bytes(self) -> int:
        """What the configuration's table takes a switch (Herd's; 0 for the baselines)."""
        return sum(self.stages) * slot_bytes(self.confirm) if self.algorithm == "herd" else 0


@dataclass
class ConfirmSummary:
    """A Herd + confirm run at C = 1 reduced to what it would have given at every C (index
    C - 1, up to one past the largest report count, where nobody is pulled): true and false
    positives, the messages of the busiest switch (in its busiest epoch, bounded from above
    with several epochs), of all switches, and the pull messages one switch gets and answers
    in one epoch at most (as the budget counts them)."""

    tp: np.ndarray
    fp: np.ndarray
    max_messages: np.ndarray
    messages: np.ndarray
    pulls: np.ndarray

    def padded(self, width: int) -> ConfirmSummary:
        """The arrays at ``width`` Cs: beyond the largest report count nobody is detected
        and nobody is pulled, as at the last C."""
        extra = width - len(self.tp)
        if extra <= 0:
            return self

        def pad(a: np.ndarray, value: Any) -> np.ndarray:
            return np.concatenate([a, np.full(extra, value, a.dtype)])

        return ConfirmSummary(pad(self.tp, 0), pad(self.fp, 0), pad(self.max_messages,
                              self.max_messages[-1]), pad(self.messages, self.messages[-1]),
                              pad(self.pulls, self.pulls[-1]))


@dataclass
class RunSummary:
    """One simulation (configuration, seed): its budgets and, for every R, the true and
    false positives (index R - 1). A detector without R (strawman, sampling) has one entry.
    With confirm, ``confirm`` holds what every C gives (the messages above are at C = 1)."""

    max_states: int
    max_messages: int
    messages: int
    overflows: int
    heavy: int
    tp: np.ndarray
    fp: np.ndarray
    r_free: bool  # False: tp / fp hold the run's own single detection
    confirm: ConfirmSummary | None = None

    def probe_messages(self) -> int:
        """The messages a quick probe of the budget looks at: the run's own, or with confirm
        those at the C that is best for this run alone (the budget then picks among the Cs
        on every seed)."""
        if self.confirm is None:
            return self.max_messages
        f1, _, _ = f1_arrays(self.confirm.tp, self.confirm.fp, self.heavy)
        return int(self.confirm.max_messages[int(np.argmax(f1))])


def _report_histograms(heavy: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, ...]:
    """tp[R-1], fp[R-1] = heavy / other (flow, epoch) pairs with at least R reports, R = 1..max,
    from how many pairs had each report count."""
    top = max(len(heavy), len(other), 2) - 1
    h = np.zeros(top + 1, np.int64)
    o = np.zeros(top + 1, np.int64)
    h[: len(heavy)] = heavy
    o[: len(other)] = other
    # pairs with >= R reports = suffix sums, R = 1..top
    tp = np.cumsum(h[::-1])[::-1][1:]
    fp = np.cumsum(o[::-1])[::-1][1:]
    return tp.astype(np.int64), fp.astype(np.int64)


def summarise_run(result: SimulationResult) -> RunSummary:
    m = result.metrics
    d = result.detection
    if d.reports_heavy is not None and d.reports_other is not None:
        tp, fp = _report_histograms(d.reports_heavy, d.reports_other)
        r_free = True
    else:
        tp = np.array([m["true_positives"]], dtype=np.int64)
        fp = np.array([m["false_positives"]], dtype=np.int64)
        r_free = False
    return RunSummary(
        max_states=int(m["max_states"]),
        # With epochs the budget C is per switch and epoch; with one, over the trace.
        max_messages=int(m["max_messages_per_switch_epoch"]),
        messages=int(m["messages"]),
        overflows=int(m["overflows"]),
        heavy=int(m["heavy_hitters"]),
        tp=tp, fp=fp, r_free=r_free,
        confirm=summarise_confirm(result) if d.pulled is not None else None,
    )


def summarise_confirm(result: SimulationResult) -> ConfirmSummary:
    """What a Herd + confirm run at C = 1 gives at every C (module doc, step 6): the
    elephants at C are the confirmed pairs with >= C reports, and each switch's pull of an
    epoch shrinks from ``pull_messages`` of the pairs with >= 1 report to that of those with
    >= C. A pull is the same on every switch, so with one epoch the busiest switch is the
    busiest still; with several, its busiest epoch is bounded by the run's, less the
    smallest saving of any epoch."""
    d = result.detection
    m = result.metrics
    if result.params.confirm_reports != 1:
        raise ValueError("summarise_confirm: needs a run with confirm_reports = 1")
    assert d.confirmed_heavy is not None and d.confirmed_other is not None
    assert d.pulled is not None
    tp, fp = _report_histograms(d.confirmed_heavy, d.confirmed_other)
    width = max(len(tp), max((len(h) for h in d.pulled), default=1) - 1) + 1
    asked = np.zeros((max(len(d.pulled), 1), width), np.int64)  # pulls x C: pairs asked
    for e, h in enumerate(d.pulled):
        at_least = np.cumsum(h[::-1])[::-1][1:]  # pairs with >= C reports, C = 1..
        asked[e, : len(at_least)] = at_least
    per_pull = pull_messages(asked)  # the coordinator's rule, elementwise
    saved = per_pull[:, :1] - per_pull
    switches = len(m["messages_per_switch"])
    return ConfirmSummary(
        tp=np.concatenate([tp, np.zeros(width - len(tp), np.int64)]),
        fp=np.concatenate([fp, np.zeros(width - len(fp), np.int64)]),
        max_messages=int(m["max_messages_per_switch_epoch"]) - saved.min(axis=0),
        messages=int(m["messages"]) - switches * saved.sum(axis=0),
        pulls=per_pull.max(axis=0),
    )


def f1_arrays(tp: np.ndarray, fp: np.ndarray, heavy: int) -> tuple[np.ndarray, ...]:
    """(f1, precision, recall) with herd.metrics.accuracy's conventions, vectorised."""
    tp = tp.astype(np.float64)
    fp = fp.astype(np.float64)
    fn = heavy - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.where(fn == 0, 1.0, 0.0))
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 1.0)
        f1 = np.where(precision + recall > 0,
                      2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return f1, precision, recall


def run_config(prep: PreparedTrace, base: Params, config: Config, seed: int, *,
               memory_cap: int | None = None, message_cap: int | None = None) -> RunSummary:
    """Simulate one configuration with one seed and reduce it to a RunSummary."""
    # With confirm, C = 1: every reported flow is pulled, which tells every C (step 6).
    params = base.with_(s=config.s, epsilon=config.epsilon, stages=config.stages,
                        overflow_policy=config.overflow_policy, algorithm=config.algorithm,
                        q=config.q, seed=seed, R=None, confirm=config.confirm,
                        confirm_reports=1 if config.confirm else base.confirm_reports)
    if config.algorithm == "herd":
        result = simulate(prep, params)
    else:
        from herd.baselines import run_baseline

        result = run_baseline(prep, params, memory=memory_cap,
                              messages=message_cap if config.algorithm == "strawman"
                              else None).result
    return summarise_run(result)


# ------------------------------------------------------------------------------------------
# points: a configuration over all seeds


@dataclass
class Point:
    """A configuration evaluated over every seed, with R (and with confirm C) chosen (or
    fixed)."""

    config: Config
    runs: list[RunSummary]
    R: int
    f1: float
    f1_std: float
    f1_min: float
    f1_max: float
    precision: float
    recall: float
    max_states: int
    max_messages: int
    mean_states: float
    mean_messages: float
    feasible: bool
    total_messages: float = 0.0  # all switches, mean over the seeds
    C: int | None = None  # confirm's candidate threshold (None without confirm)
    pull_messages: int = 0  # confirm's pull, one switch in one epoch at most (worst seed)

    def summary(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {"algorithm": c.algorithm}
        if c.algorithm == "herd":
            d.update(s=c.s, epsilon=c.epsilon, stages=list(c.stages),
                     overflow_policy=c.overflow_policy, confirm=c.confirm,
                     confirm_reports=self.C, slot_bytes=slot_bytes(c.confirm),
                     table_bytes=c.table_bytes)
        elif c.algorithm == "reporting":
            d.update(epsilon=c.epsilon)
        elif c.algorithm == "sampling":
            d.update(q=c.q)
        d.update(R=self.R, f1=self.f1, f1_std=self.f1_std, f1_min=self.f1_min,
                 f1_max=self.f1_max, precision=self.precision, recall=self.recall,
                 states=self.max_states, messages=self.max_messages,
                 pull_messages=self.pull_messages,
                 states_mean=self.mean_states, messages_mean=self.mean_messages,
                 feasible=self.feasible)
        return d


def _pick(f1s: Sequence[np.ndarray], allowed: np.ndarray, last: bool = False) -> int:
    """The index of the best mean F1 over the seeds among ``allowed`` (all if none is):
    among (near-)ties the smallest spread, then the smallest index (``last``: the largest)."""
    f1m = np.mean(f1s, axis=0)
    pool = np.flatnonzero(allowed) if allowed.any() else np.arange(len(f1m))
    best = float(f1m[pool].max())
    cands = pool[f1m[pool] >= best - 1e-12]
    std = np.std(f1s, axis=0)
    cands = cands[std[cands] <= std[cands].min()]
    return int(cands[-1] if last else cands[0])


def _f1_per_seed(runs: Sequence[RunSummary], width: int, confirm: bool
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per seed, (F1, precision, recall) for every R (or with ``confirm`` every C), padded
    to ``width``: beyond the largest report count nobody is detected (tp = fp = 0)."""
    f1s, ps, rs = [], [], []
    for r in runs:
        tp = np.zeros(width, dtype=np.int64)
        fp = np.zeros(width, dtype=np.int64)
        src = r.confirm if confirm and r.confirm is not None else r
        tp[: len(src.tp)] = src.tp
        fp[: len(src.fp)] = src.fp
        f1, p, rc = f1_arrays(tp, fp, r.heavy)
        f1s.append(f1)
        ps.append(p)
        rs.append(rc)
    return f1s, ps, rs


def make_point(config: Config, runs: Sequence[RunSummary], state_limit: float,
               message_limit: float, R: int | None = None, C: int | None = None) -> Point:
    """Average over the seeds; choose R (argmax of the mean F1) unless it is given, and with
    confirm C (argmax of the mean F1 among the Cs that fit on every seed) unless given."""
    # pad to R: beyond the largest report count nobody is detected (tp = fp = 0)
    width = max(max(len(r.tp) for r in runs), R or 0)
    f1s, ps, rs = _f1_per_seed(runs, width, confirm=False)
    if not runs[0].r_free:
        idx = 0
        R_out = 0
    elif R is not None:
        idx = R - 1
        R_out = R
    else:
        idx = _pick(f1s, np.ones(width, np.bool_))
        R_out = idx + 1
    states = [r.max_states for r in runs]
    msgs = [r.max_messages for r in runs]
    totals = [r.messages for r in runs]
    pulls = [0 for _ in runs]
    C_out = None
    if runs[0].confirm is not None:
        # Confirm: the elephants are set by C alone (with R >= C), and so is the pull.
        width = max(max(len(r.confirm.tp) for r in runs if r.confirm is not None), C or 0)
        conf = [r.confirm.padded(width) for r in runs if r.confirm is not None]
        f1s, ps, rs = _f1_per_seed(runs, width, confirm=True)
        worst = np.max([c.max_messages for c in conf], axis=0)
        # On a tie the larger C: the same elephants for a smaller pull.
        idx = C - 1 if C is not None else _pick(f1s, worst <= message_limit, last=True)
        C_out = idx + 1
        R_out = max(R_out, C_out)  # R only dates the early detections (module doc, step 6)
        msgs = [int(c.max_messages[idx]) for c in conf]
        totals = [int(c.messages[idx]) for c in conf]
        pulls = [int(c.pulls[idx]) for c in conf]
    per_seed = np.array([f[idx] for f in f1s])
    return Point(
        config=config, runs=list(runs), R=R_out,
        f1=float(per_seed.mean()), f1_std=float(per_seed.std()),
        f1_min=float(per_seed.min()), f1_max=float(per_seed.max()),
        precision=float(np.mean([p[idx] for p in ps])),
        recall=float(np.mean([r[idx] for r in rs])),
        max_states=int(max(states)), max_messages=int(max(msgs)),
        mean_states=float(np.mean(states)), mean_messages=float(np.mean(msgs)),
        feasible=max(states) <= state_limit and max(msgs) <= message_limit,
        total_messages=float(np.mean(totals)), C=C_out, pull_messages=int(max(pulls)),
    )


# ------------------------------------------------------------------------------------------
# the evaluator: cached runs, optionally on two processes

def _run_task(prep: PreparedTrace,
              task: tuple[Params, Config, int, int | None, int | None]) -> RunSummary:
    """One simulation of an Evaluator, as an executor's task."""
    base, config, seed, memory_cap, message_cap = task
    return run_config(prep, base, config, seed, memory_cap=memory_cap, message_cap=message_cap)


class Evaluator:
    """Runs each (configuration, seed) simulation once, as tasks of ``executor`` (default:
    a local one of ``workers`` processes, several runs at a time when ``workers`` > 1).
    ``cache`` may be shared between evaluators of the same trace and base parameters: its
    keys carry the baselines' budget caps, never the limits, because whether a run fits is
    decided afresh by each evaluator."""

    def __init__(self, prep: PreparedTrace, base: Params, seeds: Sequence[int], *,
                 state_limit: float, message_limit: float, memory_cap: int | None = None,
                 message_cap: int | None = None, workers: int = 1,
                 cache: dict[Any, RunSummary] | None = None,
                 executor: Executor | None = None) -> None:
        self.prep = prep
        self.base = base
        self.seeds = list(seeds)
        self.state_limit = state_limit
        self.message_limit = message_limit
        self.memory_cap = memory_cap
        self.message_cap = message_cap
        self.cache: dict[Any, RunSummary] = {} if cache is None else cache
        self.runs = 0  # simulations this evaluator ran (cache hits excluded)
        self.workers = workers
        self._own_executor = executor is None
        self.executor = LocalExecutor(prep, workers) if executor is None else executor

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_executor:
            self.executor.close()

    def _key(self, config: Config, seed: int) -> tuple[Any, ...]:
        return (config, seed, self.memory_cap, self.message_cap)

    def ensure(self, tasks: Iterable[tuple[Config, int]]) -> None:
        todo = list(dict.fromkeys(t for t in tasks if self._key(*t) not in self.cache))
        if not todo:
            return
        # In submission order, however they ran: the cache (and so every later choice)
        # is the same locally and on a cluster.
        results = self.executor.map(_run_task, [(self.base, c, s, self.memory_cap,
                                                 self.message_cap) for c, s in todo])
        for t, r in zip(todo, results, strict=True):
            self.cache[self._key(*t)] = r
        self.runs += len(todo)

    def run(self, config: Config, seed: int) -> RunSummary:
        self.ensure([(config, seed)])
        return self.cache[self._key(config, seed)]

    def fits(self, r: RunSummary) -> bool:
        return r.max_states <= self.state_limit and r.probe_messages() <= self.message_limit

    def quick_fits(self, config: Config) -> bool:
        """Fits the budgets with the first seed (the cheap probe of a search)."""
        return self.fits(self.run(config, self.seeds[0]))

    def point(self, config: Config, R: int | None = None, C: int | None = None) -> Point:
        self.ensure((config, s) for s in self.seeds)
        return make_point(config, [self.cache[self._key(config, s)] for s in self.seeds],
                          self.state_limit, self.message_limit, R, C)

    def points(self, configs: Sequence[Config], R: int | None = None) -> list[Point]:
        self.ensure((c, s) for c in configs for s in self.seeds)
        return [self.point(c, R) for c in configs]

    def complete_configs(self) -> list[Config]:
        """The configurations run with every seed (under this evaluator's caps)."""
        mine = [k for k in self.cache if k[2] == self.memory_cap and k[3] == self.message_cap]
        have = {(k[0], k[1]) for k in mine}
        # In the order they were first run, not a set's: a set of configurations iterates in
        # an order of string hashes, which differs between processes, and ties (e.g. F1 = 1
        # on a short trace) would pick differently in each.
        configs = dict.fromkeys(k[0] for k in mine)
        return [c for c in configs if all((c, s) in have for s in self.seeds)]


# ------------------------------------------------------------------------------------------
# the search


def fit_along(ev: Evaluator, configs: Sequence[Config], hint: int,
              more: int = 1) -> tuple[Point | None, int]:
    """``configs`` are ordered by rising messages (e.g. falling epsilon). Find the last one
    that fits the budgets on every seed - galloping then bisecting from ``hint`` with one
    seed, then checking it on all - and return the best point among it and the ones before
    it, walking back while F1 improves (at most ``more`` steps without improvement).
    Returns (best point or None, index of the last fitting configuration or -1)."""
    n = len(configs)
    hint = min(max(hint, 0), n - 1)
    # Galloping with one seed: find lo fitting, hi not fitting (or the ends).
    if ev.quick_fits(configs[hint]):
        lo, step, hi = hint, 1, n
        while lo + step < n:
            if ev.quick_fits(configs[lo + step]):
                lo += step
                step *= 2
            else:
                hi = lo + step
                break
    else:
        hi, step, lo = hint, 1, -1
        while hi - step >= 0:
            if ev.quick_fits(configs[hi - step]):
                lo = hi - step
                break
            hi -= step
            step *= 2
        if lo < 0 and hi > 0 and ev.quick_fits(configs[0]):
            lo = 0
    if lo < 0:
        return None, -1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ev.quick_fits(configs[mid]):
            lo = mid
        else:
            hi = mid
    # Check on every seed (a seed may need a little more epsilon).
    j = lo
    while j >= 0:
        # j - 1 is needed next either way (a seed that does not fit, or the walk back):
        # run both together, which a pool of workers does in parallel
        ev.ensure((c, s) for c in configs[max(0, j - (1 if more else 0)): j + 1]
                  for s in ev.seeds)
        p = ev.point(configs[j])
        if p.feasible:
            break
        j -= 1
    if j < 0:
        return None, -1
    best = ev.point(configs[j])
    misses = 0
    i = j - 1
    while i >= 0 and misses < more:
        p = ev.point(configs[i])
        if p.feasible and p.f1 > best.f1 + 1e-12:
            best, misses = p, 0
        else:
            misses += 1
        i -= 1
    return best, j


@dataclass(frozen=True)
class Space:
    """What one mode of the search may use of a switch: the published rule or Herd + confirm,
    each with the table the memory budget pays for in its own slot layout."""

    confirm: bool
    budget_slots: int  # S x 12 bytes in this layout's slots
    slots: int  # the table the search lays out
    state_limit: float  # peak states allowed

    @property
    def slot_bytes(self) -> int:
        return slot_bytes(self.confirm)

    @property
    def name(self) -> str:
        return MODE_NAMES[self.confirm]


def make_space(prep: PreparedTrace, base: Params, memory: int, max_slots: int | None,
               headroom: float, confirm: bool) -> Space:
    """The table of one mode within S x 12 bytes (``max_slots``, in 12-byte slots too, may
    allow a bigger one whose states still fit the budget)."""
    from herd.baselines import distinct_flows_per_switch

    budget = budget_slots(memory, confirm)
    if budget < 1:
        raise HerdInputError(f"memory={memory}: a {slot_bytes(confirm)}-byte slot does not fit "
                             f"{memory * SLOT_BYTES} bytes")
    allowed = budget_slots(max_slots or memory, confirm)
    # A switch never holds more flows than it sees: slots beyond a few times that only cost
    # the simulation memory and time, so a budget of more is met with a table of 4x the
    # busiest switch's distinct flows.
    useful = 4 * int(distinct_flows_per_switch(prep, base).max())
    total = max(1, min(allowed, MAX_TABLE_SLOTS, max(useful, 1024)))
    # A table bigger than the budget may still hold at most that many flows at its peak, but
    # new traffic can fill it further: then the states get the same headroom as the messages.
    limit = budget if total <= budget else budget * (1.0 - headroom)
    return Space(confirm, budget, total, limit)


@dataclass
class ModeResult:
    """The best of one mode (None: nothing fits it), and on which seeds it was measured."""

    space: Space
    best: Point | None
    start: Point | None
    seeds: list[int]
    explored: list[Point] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        sp = self.space
        d: dict[str, Any] = {
            "mode": sp.name, "confirm": sp.confirm, "slot_bytes": sp.slot_bytes,
            "budget_slots": sp.budget_slots, "fits": self.best is not None}
        if self.best is None:
            return {**d, "note": self.note}
        b = self.best
        return {**d, **b.summary(), "states_bytes": b.max_states * sp.slot_bytes,
                "table_slots": sum(b.config.stages), "seeds": self.seeds}


@dataclass
class TuneResult:
    """The tuned parameters, what they are expected to give, and how they were found."""

    params: Params
    best: Point
    start: Point | None
    T: int
    memory: int
    messages: int
    headroom: float
    seeds: list[int]
    runs: int
    seconds: float
    trace: str
    trace_digest: str
    packets: int
    explored: list[Point] = field(default_factory=list)
    modes: list[ModeResult] = field(default_factory=list)  # each mode's best, the winner's too

    def expected(self) -> dict[str, Any]:
        b = self.best
        return {
            "f1": b.f1, "f1_std": b.f1_std, "f1_min": b.f1_min, "f1_max": b.f1_max,
            "precision": b.precision, "recall": b.recall,
            "states": b.max_states, "messages": b.max_messages,
            "pull_messages": b.pull_messages,
            "states_mean": b.mean_states, "messages_mean": b.mean_messages,
        }

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        explored = sorted(self.explored, key=lambda q: -q.f1)
        return {
            "s": p.s, "epsilon": p.epsilon, "R": p.R, "stages": list(p.stages),
            "overflow_policy": p.overflow_policy,
            "confirm": p.confirm, "confirm_reports": p.confirm_reports if p.confirm else None,
            "slot_bytes": slot_bytes(p.confirm), "table_bytes": self.best.config.table_bytes,
            **self.expected(),
            "T": self.T,
            "budgets": {"memory": self.memory, "messages": self.messages,
                        "headroom": self.headroom,
                        "message_limit": message_limit(self.messages, self.headroom),
                        "slot_bytes": SLOT_BYTES, "memory_bytes": self.memory * SLOT_BYTES},
            "winner": MODE_NAMES[p.confirm],
            "modes": [m.to_dict() for m in self.modes],
            "seeds": self.seeds,
            "start": self.start.summary() if self.start else None,
            "explored": [q.summary() for q in explored[:20]],
            "simulations": self.runs,
            "seconds": self.seconds,
            "params": p.to_dict(),
            "trace": self.trace, "trace_digest": self.trace_digest, "packets": self.packets,
            "herd_version": __version__,
        }


def message_limit(messages: int, headroom: float) -> int:
    return int(math.floor(messages * (1.0 - headroom) + 1e-9))


def check_budgets(memory: Any, messages: Any, seeds: Any = 1, headroom: Any = 0.0) -> None:
    """One-line errors naming the field and value."""
    for name, v in (("memory", memory), ("messages", messages)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise HerdInputError(f"{name}={v}: a budget must be a whole number >= 1 per switch")
    if isinstance(seeds, bool) or not isinstance(seeds, int | np.integer) or seeds < 1:
        raise HerdInputError(f"seeds={seeds}: must be a whole number >= 1")
    if not isinstance(headroom, int | float) or not 0.0 <= headroom < 1.0:
        raise HerdInputError(f"headroom={headroom}: must be in [0, 1)")


def predicted_states(prep: PreparedTrace, base: Params, s: float) -> int:
    """Expected held flows at the busiest switch when nothing overflows: a flow seen n times
    at a switch is sampled (held) with probability 1 - (1 - s)^n."""
    from herd.baselines import switch_flow_pairs

    pairs = switch_flow_pairs(prep, base)
    held = -np.expm1(pairs.packets * np.log1p(-min(s, 1.0 - 1e-12)))
    return int(np.ceil(np.bincount(pairs.switch, weights=held, minlength=base.k).max()))


def _hellos_needed(prep: PreparedTrace, base: Params, seeds: Sequence[int]) -> int:
    """The most hellos one switch sends in one epoch (in the trace without epochs): one per
    group it sees, at the group's first packet there. Group entries outlive epochs, so a
    group's hello falls in one epoch only - the budget C is per switch and epoch."""
    from herd.baselines import switch_flow_pairs

    _, pair_flow, pair_epoch = prep.pairs(base.epoch_ms)
    most = 0
    for seed in seeds:
        pairs = switch_flow_pairs(prep, base.with_(seed=seed))
        key = pairs.switch.astype(np.int64) << 16 | prep.flow_group[pair_flow[pairs.flow]]
        by_time = np.argsort(pairs.first, kind="stable")
        _, firsts = np.unique(key[by_time], return_index=True)  # each group's first pair
        hello = by_time[firsts]
        cell = pairs.switch[hello].astype(np.int64) * (int(pair_epoch.max()) + 1) + \
            pair_epoch[pairs.flow[hello]]
        most = max(most, int(np.bincount(cell).max()))
    return most


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _check_tune_inputs(memory: Any, messages: Any, seeds: Any, headroom: Any,
                       max_slots: int | None, policies: Sequence[str],
                       modes: Sequence[bool]) -> None:
    check_budgets(memory, messages, seeds, headroom)
    if max_slots is not None and not 1 <= max_slots <= MAX_TABLE_SLOTS:
        raise HerdInputError(f"max_slots={max_slots}: must be in [1, 2^26]")
    for pol in policies:
        if pol not in POLICIES:
            raise HerdInputError(f"overflow_policy={pol}: must be ignore or reset")
    if not modes or any(m not in MODES for m in modes):
        raise HerdInputError(f"modes={list(modes)}: give confirm off (False), on (True) or both")


def _check_hellos(prep: PreparedTrace, base: Params, seeds: Sequence[int], messages: int,
                  headroom: float) -> int:
    """The busiest switch's hellos (one per group it sees): a cost no setting avoids."""
    c_limit = message_limit(messages, headroom)
    hellos = _hellos_needed(prep, base, seeds)
    if hellos > c_limit:
        raise HerdInputError(
            f"messages={messages}: no setting fits - the busiest switch sends {hellos} hellos "
            f"(one per group it sees) before any report"
            + (f", above {c_limit} = messages x (1 - headroom {headroom:g})" if headroom else ""))
    return hellos


class _Search:
    """One mode's search over s, epsilon and the table (module doc, steps 2-4). Remembers,
    per (s index, layout, policy), the best point with epsilon fitted to the budget and the
    last fitting epsilon's index (the hint for its neighbours)."""

    def __init__(self, prep: PreparedTrace, base: Params, ev: Evaluator, space: Space, T: int,
                 messages: int, hellos: int, quick: bool, say: Callable[[str], None]) -> None:
        self.prep = prep
        self.messages = messages
        self.base = base
        self.ev = ev
        self.space = space
        self.T = T
        self.hellos = hellos
        self.quick = quick
        self.say = say
        self.eps_lat = epsilon_lattice(T, base.k)
        self.fitted: dict[tuple[int, tuple[int, ...], str], tuple[Point | None, int]] = {}

    def config(self, i: int, j: int, stages: tuple[int, ...], policy: str) -> Config:
        return Config(S_LATTICE[i], self.eps_lat[j], stages, policy, confirm=self.space.confirm)

    def at(self, i: int, stages: tuple[int, ...], policy: str, hint: int) -> Point | None:
        """The best point for s = S_LATTICE[i] with this table: epsilon fitted to C."""
        key = (i, stages, policy)
        if key not in self.fitted:
            cfgs = [self.config(i, j, stages, policy) for j in range(len(self.eps_lat))]
            self.fitted[key] = fit_along(self.ev, cfgs, hint, more=0 if self.quick else 1)
            p = self.fitted[key][0]
            c = f", C={p.C}" if p and p.C else ""
            self.say(f"{self.space.name} s={S_LATTICE[i]} stages={'/'.join(map(str, stages))} "
                     f"{policy}: " + (f"F1={p.f1:.3f} at epsilon={p.config.epsilon:g}, "
                                      f"R={p.R}{c}" if p else "nothing fits"))
        return self.fitted[key][0]

    def hint_near(self, i: int, stages: tuple[int, ...], policy: str) -> int:
        near = [(abs(i - j), fj) for (j, st, pol), (_, fj) in self.fitted.items()
                if st == stages and pol == policy and fj >= 0]
        if not near:
            near = [(abs(i - j), fj) for (j, _, _), (_, fj) in self.fitted.items() if fj >= 0]
        return min(near)[1] if near else 0

    def climb(self, i_best: int, current: Point, stages: tuple[int, ...], policy: str,
              stride: int, patience: int,
              directions: Sequence[int] = (1, -1)) -> tuple[int, Point]:
        """Move s along the lattice, ``stride`` positions at a time, while F1 improves -
        going on ``patience`` steps past a point that does not improve, because F1 against
        s is not smooth: each s gets its own smallest fitting epsilon, a lattice value.
        Direction 1 is towards smaller s (tried first: it frees messages and slots)."""
        for direction in directions:
            i = i_best + direction * stride
            misses = 0
            while 0 <= i < len(S_LATTICE) and misses <= patience:
                p = self.at(i, stages, policy, self.hint_near(i, stages, policy))
                if p is not None and p.f1 > current.f1 + 1e-12:
                    i_best, current, misses = i, p, 0
                else:
                    misses += 1
                i += direction * stride
        return i_best, current

    def first_point(self, stages: tuple[int, ...], near: tuple[float, float] | None
                    ) -> tuple[int, Point]:
        """Step 3: the highest s whose expected states fit the table (or the s of ``near``)
        with the smallest epsilon that fits C; if even epsilon = 1 does not fit there, the
        largest smaller s at which it does (fewer flows held: fewer reports and overflows)."""
        if near is not None:
            i0 = int(np.argmin([abs(math.log(s / near[0])) for s in S_LATTICE]))
            hint = int(np.argmin([abs(math.log(e / near[1])) for e in self.eps_lat]))
        else:
            room = min(self.space.budget_slots, self.space.slots)
            i0 = next((i for i, s in enumerate(S_LATTICE)
                       if predicted_states(self.prep, self.base, s) <= room),
                      len(S_LATTICE) - 1)
            self.say(f"{self.space.name} start: s={S_LATTICE[i0]} (expected states fit {room})")
            hint = _epsilon_hint(self.prep, self.base, S_LATTICE[i0], self.T,
                                 self.ev.message_limit - self.hellos, self.eps_lat)
        best = self.at(i0, stages, "ignore", hint)
        if best is not None:
            return i0, best
        lo, hi = i0, len(S_LATTICE) - 1  # lo does not fit
        if self.at(hi, stages, "ignore", 0) is None:
            raise HerdInputError(
                f"messages={self.messages}: no setting fits - even s={S_LATTICE[-1]:g} with "
                f"epsilon=1 sends more than {self.ev.message_limit} messages on the busiest "
                "switch")
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.at(mid, stages, "ignore", 0) is None:
                lo = mid
            else:
                hi = mid
        best = self.at(hi, stages, "ignore", 0)
        assert best is not None
        return hi, best

    def published(self, i0: int, stages: tuple[int, ...]) -> Point:
        """The published starting point: s = S_LATTICE[i0], the smallest fitting epsilon,
        R = round(1/epsilon) (reported beside the answer)."""
        j0 = self.fitted[(i0, stages, "ignore")][1]
        eps = self.eps_lat[j0]
        start = self.ev.point(self.config(i0, j0, stages, "ignore"), R=max(1, round(1 / eps)))
        self.say(f"published start: s={S_LATTICE[i0]} epsilon={eps:g} F1={start.f1:.3f}")
        return start

    def tables(self, i_best: int, best: Point, stages0: tuple[int, ...],
               policies: Sequence[str], max_stages: int) -> Point:
        """Steps 3-4: table layouts and the overflow policy at the best s, then the
        neighbouring s again with them. More stages give a flow more candidate slots (fewer
        collisions and overflows), so fewer than the published three stages have never been
        better in our runs; the policy only matters when overflows are a noticeable part of
        the messages."""
        layout, policy = stages0, "ignore"
        for d in range(4, max_stages + 1):
            stages = halving_stages(self.space.slots, d)
            if len(stages) == d and stages != layout and "ignore" in policies:
                p = self.at(i_best, stages, "ignore", self.hint_near(i_best, stages, "ignore"))
                if p is not None and p.f1 > best.f1 + 1e-12:
                    best, layout = p, stages
        overflow_share = max(r.overflows / max(r.messages, 1) for r in best.runs)
        if "reset" in policies and overflow_share > 0.01:
            p = self.at(i_best, layout, "reset", self.hint_near(i_best, layout, "reset"))
            if p is not None and p.f1 > best.f1 + 1e-12:
                best, policy = p, "reset"
        if (layout, policy) != (stages0, "ignore"):
            _, best = self.climb(i_best, best, layout, policy, 1, 0)
        return best

    def run(self, near: tuple[float, float] | None, toward: int, policies: Sequence[str],
            max_stages: int) -> tuple[Point, Point | None]:
        """Steps 2-4 of the module doc: (the best point, the published start or None)."""
        stages0 = halving_stages(self.space.slots, 3)
        i0, best = self.first_point(stages0, near)
        # The published start is the published rule's: confirm has none of its own.
        start = self.published(i0, stages0) if near is None and not self.space.confirm \
            else None
        # s, at the published layout: a coarse scan (factors of ~2), then the neighbours.
        # Quick: factors of ~1.6 only, and no look past a worse point when starting near.
        if self.quick:
            # Starting near a neighbouring budget's answer, ``toward`` (1: smaller s, -1:
            # larger) says where this budget's answer can lie, and only that way is looked.
            _, best = self.climb(i0, best, stages0, "ignore", 2, 0 if near else 1,
                                 (toward,) if near and toward else (1, -1))
            return best, start
        i_best, best = self.climb(i0, best, stages0, "ignore", 3, 1)
        i_best, best = self.climb(i_best, best, stages0, "ignore", 1, 0)
        return self.tables(i_best, best, stages0, policies, max_stages), start


def _search_mode(prep: PreparedTrace, base: Params, space: Space, seeds: list[int], T: int,
                 messages: int, headroom: float, hellos: int, *, workers: int, quick: bool,
                 near: tuple[float, float] | None, toward: int, policies: Sequence[str],
                 max_stages: int, recheck: int, cache: dict[Any, RunSummary] | None,
                 say: Callable[[str], None], executor: Executor) -> tuple[ModeResult, int]:
    """Steps 2-5 for one mode: its best point (re-measured on fresh seeds unless quick) and
    the simulations it ran."""
    ev = Evaluator(prep, base, seeds, state_limit=space.state_limit,
                   message_limit=message_limit(messages, headroom), workers=workers, cache=cache,
                   executor=executor)
    try:
        search = _Search(prep, base, ev, space, T, messages, hellos, quick, say)
        best, start = search.run(near, toward, policies, max_stages)
        used = list(seeds)
        if recheck > 0 and not quick:
            best, used = _recheck_on_fresh_seeds(ev, best, recheck, say)
        explored = [ev.point(cfg) for cfg in ev.complete_configs()]
        return ModeResult(space, best, start, used, explored), ev.runs
    finally:
        ev.close()


def tune(prep: PreparedTrace, base: Params, memory: int, messages: int, *,
         seeds: int = DEFAULT_SEEDS, headroom: float = DEFAULT_HEADROOM,
         max_slots: int | None = None, workers: int | None = None,
         policies: Sequence[str] = POLICIES, max_stages: int = 4, quick: bool = False,
         near: tuple[float, float] | None = None, toward: int = 0, recheck: int = 4,
         modes: Sequence[bool] = MODES, cache: dict[Any, RunSummary] | None = None,
         progress: Callable[[str], None] | None = None,
         executor: Executor | None = None) -> TuneResult:
    """The (s, epsilon, R, stages, overflow policy, confirm and its C) that maximise F1
    within the budgets on this trace (see the module doc). ``base`` supplies T or the
    percentile, k, p, the control-loop delay and the first seed. Raises HerdInputError when
    nothing fits.

    ``memory`` is in slots of the published 12-byte layout (``budget_slots``). ``modes``:
    the confirm settings to try (False: the published rule, True: Herd + confirm); the
    better wins. ``quick`` (for the figures' budget curves) keeps the published layout and
    policy and moves s in coarser steps. ``near`` = (s, epsilon), e.g. the result for a
    neighbouring budget, starts the search there instead of at the published starting
    point; ``toward`` = 1 (-1) then looks only at smaller (larger) s from there. ``cache``
    may be shared between calls on the same trace and base parameters (e.g. one memory
    budget, several communication budgets). ``recheck``: how many of the best
    configurations of each mode are measured again on as many fresh seeds before choosing
    (0: none; the quick search never does). ``executor`` runs the simulations (default: a
    local one of ``workers`` processes; e.g. a RayExecutor)."""
    _check_tune_inputs(memory, messages, seeds, headroom, max_slots, policies, modes)
    started = time.perf_counter()
    base = base.with_(algorithm="herd", confirm=False)
    seed_list = [base.seed + i for i in range(seeds)]
    T = prep.threshold(base)
    hellos = _check_hellos(prep, base, seed_list, messages, headroom)
    workers = default_workers() if workers is None else max(1, workers)
    runs = 0

    def say(text: str) -> None:
        if progress:
            progress(f"{text} [{runs} simulations, {time.perf_counter() - started:.0f} s]")

    found: list[ModeResult] = []
    errors: list[HerdInputError] = []
    # One executor for the whole run: one pool (or one trace shipped to the cluster).
    ex = LocalExecutor(prep, workers) if executor is None else executor
    try:
        for confirm in dict.fromkeys(modes):
            try:
                space = make_space(prep, base, memory, max_slots, headroom, confirm)
                mode, n = _search_mode(
                    prep, base, space, seed_list, T, messages, headroom, hellos,
                    workers=workers, quick=quick, near=near, toward=toward, policies=policies,
                    max_stages=max_stages, recheck=recheck, cache=cache, say=say, executor=ex)
                runs += n
                found.append(mode)
            except HerdInputError as e:
                errors.append(e)
                found.append(ModeResult(Space(confirm, budget_slots(memory, confirm), 0, 0),
                                        None, None, seed_list, note=str(e)))
    finally:
        if executor is None:
            ex.close()
    return _result(prep, base, found, errors, T=T, memory=memory, messages=messages,
                   headroom=headroom, runs=runs, seconds=time.perf_counter() - started)


def _winner(found: Sequence[ModeResult]) -> ModeResult | None:
    """The mode with the best F1; on a tie the published rule (the cheaper to deploy)."""
    fitting = [m for m in found if m.best is not None]
    return max(fitting, key=lambda m: (m.best.f1 if m.best else 0.0, not m.space.confirm),
               default=None)


def _result(prep: PreparedTrace, base: Params, found: list[ModeResult],
            errors: list[HerdInputError], *, T: int, memory: int, messages: int,
            headroom: float, runs: int, seconds: float) -> TuneResult:
    """The winner's parameters and what the modes found."""
    win = _winner(found)
    if win is None or win.best is None:
        raise errors[0]
    b = win.best
    params = point_params(base, b)
    start = next((m.start for m in found if m.start is not None), None)
    t = prep.trace
    return TuneResult(
        params=params, best=b, start=start, T=T, memory=memory, messages=messages,
        headroom=headroom, seeds=win.seeds, runs=runs, seconds=seconds, trace=t.paths[0],
        trace_digest=t.digest, packets=t.packets,
        explored=[p for m in found for p in m.explored], modes=found)


def point_params(base: Params, point: Point) -> Params:
    """A tuned point as parameters (e.g. each mode's best, ``TuneResult.modes``)."""
    c = point.config
    return base.with_(s=c.s, epsilon=c.epsilon, R=point.R, stages=c.stages,
                      overflow_policy=c.overflow_policy, confirm=c.confirm,
                      confirm_reports=point.C if c.confirm and point.C else base.confirm_reports)


def _recheck_on_fresh_seeds(ev: Evaluator, best: Point, count: int,
                            say: Callable[[str], None]) -> tuple[Point, list[int]]:
    """The winner's curse: the best of many measurements over a few seeds is partly the
    luckiest, and on other traffic it falls back. So the ``count`` best configurations
    that fit (within 0.05 of F1 of the best) are measured again on as many fresh seeds,
    and the choice - R (and C) included - is made on all seeds together, fitting on every
    one."""
    fits = [ev.point(c) for c in ev.complete_configs()]
    finalists = sorted((p for p in fits if p.feasible and p.f1 >= best.f1 - 0.05),
                       key=lambda p: -p.f1)[:count]
    if best.config not in {p.config for p in finalists}:
        finalists = [best, *finalists[: count - 1]]
    fresh = [max(ev.seeds) + 1 + i for i in range(len(ev.seeds))]
    seeds = [*ev.seeds, *fresh]
    wider = Evaluator(ev.prep, ev.base, seeds, state_limit=ev.state_limit,
                      message_limit=ev.message_limit, workers=ev.workers, cache=ev.cache,
                      executor=ev.executor)
    try:
        points = wider.points([p.config for p in finalists])
    finally:
        ev.runs += wider.runs
        wider.close()
    fitting = [p for p in points if p.feasible]
    if not fitting:  # no finalist fits every fresh seed: keep the search's own answer
        return best, list(ev.seeds)
    chosen = max(fitting, key=lambda p: p.f1)
    c = f" C={chosen.C}" if chosen.C else ""
    say(f"re-measured on {len(seeds)} seeds: s={chosen.config.s:g} "
        f"epsilon={chosen.config.epsilon:g} R={chosen.R}{c} F1={chosen.f1:.3f}")
    return chosen, seeds


def _epsilon_hint(prep: PreparedTrace, base: Params, s: float, T: int, report_budget: int,
                  eps_lat: Sequence[float]) -> int:
    """Where to start looking for the smallest fitting epsilon: a flow held for n packets
    yields about n / (epsilon * T) reports wherever it is counted, so the busiest switch
    sends about (packets it holds) / (epsilon * T) of them."""
    from herd.baselines import switch_flow_pairs

    pairs = switch_flow_pairs(prep, base)
    held = np.maximum(pairs.packets - 1.0 / s + 1.0, 0.0)
    busiest = float(np.bincount(pairs.switch, weights=held, minlength=base.k).max())
    if report_budget <= 0 or busiest <= 0:
        return 0
    eps = busiest / (T * report_budget)
    return int(np.searchsorted(-np.asarray(eps_lat), -eps, side="right")) - 1


# ------------------------------------------------------------------------------------------
# the baselines under the same budgets (for the figures)


def tune_baseline(prep: PreparedTrace, base: Params, algorithm: str, memory: int,
                  messages: int, *, seeds: int = DEFAULT_SEEDS,
                  headroom: float = DEFAULT_HEADROOM, workers: int = 1,
                  ev: Evaluator | None = None,
                  executor: Executor | None = None) -> Point | None:
    """A baseline's best point within the same budgets (None if none fits):
    strawman - its S-flow table and C largest counters (nothing to choose);
    sampling - the largest q whose measured messages fit C (it keeps no state);
    reporting - its S-flow table, the smallest fitting epsilon (and those after it while F1
    improves), R chosen like Herd's."""
    check_budgets(memory, messages, seeds, headroom)
    c_limit = message_limit(messages, headroom)
    seed_list = [base.seed + i for i in range(seeds)]
    T = prep.threshold(base)
    own = ev is None
    if ev is None:
        ev = Evaluator(prep, base.with_(algorithm=algorithm), seed_list, state_limit=memory,
                       message_limit=c_limit,
                       memory_cap=memory if algorithm != "sampling" else None,
                       message_cap=c_limit if algorithm == "strawman" else None,
                       workers=workers, executor=executor)
    try:
        if algorithm == "strawman":
            return ev.point(Config(1.0, base.epsilon, (1,), algorithm="strawman"))
        if algorithm == "sampling":
            cfgs = [Config(1.0, base.epsilon, (1,), algorithm="sampling", q=q)
                    for q in reversed(Q_LATTICE)]  # rising q: rising messages
            # a packet is a message with probability q: start at C / (busiest switch's packets)
            busiest = np.bincount(prep.ingress(base.k, base.p, base.seed), minlength=base.k).max()
            q_hint = c_limit / max(float(busiest), 1.0)
            hint = int(np.searchsorted([c.q for c in cfgs], q_hint, side="right")) - 1
            best, _ = fit_along(ev, cfgs, hint, more=0)
            return best
        if algorithm == "reporting":
            eps_lat = epsilon_lattice(T, base.k, localities=[base.k])  # tau = ceil(eps T/k)
            cfgs = [Config(1.0, e, (1,), algorithm="reporting") for e in eps_lat]
            best, _ = fit_along(ev, cfgs, len(cfgs) // 2)
            return best
        raise HerdInputError(f"algorithm={algorithm}: not a baseline")
    finally:
        if own:
            ev.close()


# ------------------------------------------------------------------------------------------
# trace parts (for checking that tuning generalises)


def split_trace(trace: Trace, start: int, stop: int) -> Trace:
    """Packets [start, stop) of a trace as a Trace of their own: flows renumbered by first
    appearance in the part, digest derived from the parent's digest and the range."""
    n = trace.packets
    if not 0 <= start < stop <= n:
        raise HerdInputError(f"split: range [{start}, {stop}) is not inside 0..{n}")
    old = trace.flow[start:stop]
    uniq, first, inverse = np.unique(old, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    renumber = np.empty(len(uniq), dtype=np.int64)
    renumber[order] = np.arange(len(uniq))
    kept = uniq[order]
    digest = hashlib.sha256(f"{trace.digest}[{start}:{stop}]".encode()).hexdigest()
    return Trace(
        paths=trace.paths, digest=digest,
        ts_ns=trace.ts_ns[start:stop], src=trace.src[start:stop], dst=trace.dst[start:stop],
        sport=trace.sport[start:stop], dport=trace.dport[start:stop],
        proto=trace.proto[start:stop], ingress=trace.ingress[start:stop],
        flow=renumber[inverse].astype(trace.flow.dtype),
        flow_src=trace.flow_src[kept], flow_dst=trace.flow_dst[kept],
        flow_sport=trace.flow_sport[kept], flow_dport=trace.flow_dport[kept],
        flow_proto=trace.flow_proto[kept],
        skipped_non_ipv4=0, skipped_malformed=0,
    )


# ------------------------------------------------------------------------------------------
# parameter files


def params_file_object(result: TuneResult) -> dict[str, Any]:
    """What ``--write-params`` writes: the parameters under "params" (as
    ``herd.params.load_params_file`` reads them) and, beside them, what they are expected to
    give, the budgets and the trace they were tuned on."""
    return {
        "params": result.params.to_dict(),
        "expected": {**result.expected(), "T": result.T},
        "budgets": {"memory": result.memory, "messages": result.messages,
                    "headroom": result.headroom, "slot_bytes": SLOT_BYTES,
                    "memory_bytes": result.memory * SLOT_BYTES},
        "modes": [m.to_dict() for m in result.modes],
        "seeds": result.seeds,
        "trace": result.trace,
        "trace_digest": result.trace_digest,
        "packets": result.packets,
        "tuned_by": "herd tune",
        "herd_version": __version__,
    }


def write_params_file(path: str | os.PathLike[str], result: TuneResult) -> None:
    from herd.fileio import atomic_write

    atomic_write(path, json.dumps(params_file_object(result), indent=1) + "\n")


# ------------------------------------------------------------------------------------------
# command line


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number") from None


def register_cli(sub: Any) -> None:
    from herd.cli import add_epoch_argument
    from herd.executor import add_ray_argument
    from herd.store import add_db_arguments

    p = sub.add_parser(
        "tune", help="find s, epsilon, R, stage sizes and whether to confirm (and its C) that "
        "maximise F1 within a memory and a communication budget per switch",
        description="Tune Herd on a trace: maximise F1 subject to the table fitting S slots "
        f"of {SLOT_BYTES} bytes per switch (Herd + confirm's {SLOT_BYTES_CONFIRM}-byte slots: "
        "half as many) and measured messages per switch (hellos + reports + overflows + "
        "confirm's pull) <= C, over several seeds; Herd with and without confirm are both "
        "tuned and the better wins.")
    p.add_argument("--trace", required=True)
    p.add_argument("--memory", type=_int, required=True, metavar="S",
                   help=f"counters per switch: hash-table slots of the published {SLOT_BYTES}-"
                   f"byte layout (S x {SLOT_BYTES} bytes; a confirm table holds S x "
                   f"{SLOT_BYTES} // {SLOT_BYTES_CONFIRM} slots)")
    p.add_argument("--messages", type=_int, required=True, metavar="C",
                   help="messages per switch over the trace (with --epoch-ms: per epoch)")
    t = p.add_mutually_exclusive_group()
    t.add_argument("--percentile", type=float, help="T = floor(this percentile of flow sizes) "
                   "(default 99)")
    t.add_argument("--T", type=int, help="the heavy-hitter threshold T in packets")
    p.add_argument("--k", type=int, help="ingress switches (default 10)")
    p.add_argument("--p", type=float, help="probability of the primary ingress (default 0.95)")
    p.add_argument("--delay-ms", dest="delay_ms", type=float,
                   help="control-loop delay to tune for (default 0)")
    add_epoch_argument(p)
    p.add_argument("--seed", type=int, help="first seed (default 1)")
    p.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                   help=f"seeds per configuration (default {DEFAULT_SEEDS}); the few best "
                   "are measured on as many fresh seeds before the choice")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help="keep measured messages within C x (1 - headroom), for traffic that "
                   f"differs from the trace (default {DEFAULT_HEADROOM})")
    p.add_argument("--max-slots", dest="max_slots", type=int,
                   help="allow a table of more slots than S (states still <= S); default S")
    p.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=None,
                   help="tune only Herd + confirm (--confirm) or only the published rule "
                   "(--no-confirm); default both, the better wins")
    p.add_argument("--workers", type=int, help="processes (default: up to 2 cores; with "
                   "--ray and no cluster, the local Ray instance's CPUs, default all)")
    add_ray_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write-params", dest="write_params", metavar="FILE",
                   help="write the tuned parameters as a parameter file")
    add_db_arguments(p)
    p.set_defaults(func=cmd_tune)


BASE_PARAMS = ("percentile", "T", "k", "p", "delay_ms", "epoch_ms", "seed")


def _base_params(args: argparse.Namespace) -> Params:
    values: dict[str, Any] = {}
    for name in BASE_PARAMS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return Params.from_dict(values, source="arguments")


def cmd_tune(args: argparse.Namespace) -> int:
    from herd.executor import make_executor
    from herd.store import Recorder
    from herd.store_record import record_tune
    from herd.trace import load_trace

    base = _base_params(args)
    check_budgets(args.memory, args.messages, args.seeds, args.headroom)
    interactive = sys.stderr.isatty()
    prep = PreparedTrace(load_trace(args.trace, progress=interactive))
    progress = _status_line("tune") if interactive else None
    modes = MODES if args.confirm is None else (bool(args.confirm),)
    workers = default_workers() if args.workers is None else max(1, args.workers)
    # Connect (--ray) first: an unreachable cluster fails before anything is recorded.
    # a local Ray instance takes every CPU unless --workers says otherwise
    executor = make_executor(prep, args.ray, workers if args.ray is None else args.workers)
    rec = Recorder.from_args(args, prog="herd tune")
    budgets = {"memory": args.memory, "messages": args.messages, "seeds": args.seeds,
               "headroom": args.headroom, "max_slots": args.max_slots,
               "modes": [MODE_NAMES[m] for m in modes]}
    # What tune is given (not the s, epsilon, ... it chooses): the base and the budgets.
    given = {k: v for k, v in base.to_dict().items() if k in BASE_PARAMS}
    with rec.run("tune", {**given, **budgets}, trace_path=os.path.abspath(args.trace),
                 trace_sha256=prep.trace.digest) as run:
        try:
            result = tune(prep, base, args.memory, args.messages, seeds=args.seeds,
                          headroom=args.headroom, max_slots=args.max_slots, workers=workers,
                          modes=modes, progress=progress, executor=executor)
        finally:
            executor.close()
        if progress:
            progress("")
        if args.write_params:
            write_params_file(args.write_params, result)
        d = result.to_dict()
        if args.json:
            json.dump(d, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print("\n".join(describe(result, base)))
            if args.write_params:
                print(f"parameters: {args.write_params}")
        # After the outputs: a store that fails loses none of them.
        record_tune(rec, run, base, result)
    return rec.exit_code(0)


def describe(result: TuneResult, base: Params) -> list[str]:
    """The text answer: budgets in slots and bytes, each mode's best, the winner."""
    p = result.params
    b = result.best
    per = f" per epoch of {base.epoch_ms:g} ms" if base.epoch_ms else ""
    lines = [
        f"trace {result.trace} ({result.packets} packets), T={result.T}, budgets "
        f"S={result.memory} slots x {SLOT_BYTES} bytes = {result.memory * SLOT_BYTES} bytes, "
        f"C={result.messages} messages per switch{per}",
        f"a slot takes {SLOT_BYTES} bytes (fingerprint, counter, epoch tag); with confirm "
        f"{SLOT_BYTES_CONFIRM} (+ held total, previous epoch's fingerprint and total): at most "
        f"{budget_slots(result.memory, True)} slots",
    ]
    for m in result.modes:
        lines.append(_mode_line(m))
    if len(result.modes) > 1:
        lines.append(f"winner: {MODE_NAMES[p.confirm]}")
    c = f" confirm C={p.confirm_reports}" if p.confirm else ""
    lines += [
        f"s={p.s:g} epsilon={p.epsilon:g} R={p.R}{c} stages={','.join(map(str, p.stages))} "
        f"overflow_policy={p.overflow_policy}",
        f"expected F1={b.f1:.4f} (std {b.f1_std:.4f}, min {b.f1_min:.4f} over "
        f"{len(result.seeds)} seeds) precision={b.precision:.4f} recall={b.recall:.4f}",
        f"peak states per switch {b.max_states} (table {sum(p.stages)} slots = "
        f"{b.config.table_bytes} bytes), messages per switch {b.max_messages} <= "
        f"{result.messages} (worst seed)",
    ]
    if result.start is not None:
        s = result.start
        lines.append(f"published starting point: s={s.config.s:g} "
                     f"epsilon={s.config.epsilon:g} R={s.R}: F1={s.f1:.4f}")
    lines.append(f"{result.runs} simulations in {result.seconds:.1f} s")
    return lines


def _mode_line(m: ModeResult) -> str:
    label = {False: "Herd          ", True: "Herd + confirm"}[m.space.confirm]
    if m.best is None:
        return f"  {label}: nothing fits ({m.note})"
    b = m.best
    c = f" C={b.C}" if b.C else ""
    pulls = f" (pulls {b.pull_messages})" if m.space.confirm else ""
    return (f"  {label}: F1={b.f1:.4f} R={b.R}{c}, messages {b.max_messages}{pulls}, table "
            f"{sum(b.config.stages)} slots x {m.space.slot_bytes} bytes = "
            f"{b.config.table_bytes} bytes, peak states {b.max_states} = "
            f"{b.max_states * m.space.slot_bytes} bytes")


def _status_line(label: str) -> Callable[[str], None]:
    """One rewritten stderr line for an interactive terminal."""

    def show(text: str) -> None:
        width = 100
        line = f"{label}: {text}"[:width] if text else ""
        sys.stderr.write("\r" + line.ljust(width) + ("\r" if not text else ""))
        sys.stderr.flush()

    return show
