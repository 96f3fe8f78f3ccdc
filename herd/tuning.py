"""Tuning Herd under a memory budget S and a communication budget C per switch.

Given S counters and C messages per ingress switch, ``tune`` finds the sampling
probability s, the approximation factor epsilon, the report threshold R, the hash-table
stage sizes and the overflow policy that maximise F1, subject to

- the table fitting the memory: the stages hold at most S slots in all (``max_slots``
  may allow more), so the measured peak states per switch are <= S;
- the measured messages per switch (hellos + reports + overflows, busiest switch) being
  <= C * (1 - headroom) in every seed,

measured with the fast simulator over several seeds (mean and spread of F1 reported).

How it searches, and why (evaluation/README.md has the long form):

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
   confirms it on every seed, then also tries larger epsilons while F1 keeps improving.
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
5. **Confirm on fresh seeds**: the best of many noisy measurements is partly the luckiest
   (the winner's curse), so the few best configurations are measured again on as many
   fresh seeds and the answer is the best over all of them, fitting on every seed.

Every (configuration, seed) simulation is cached, so revisits are free.

The result can be written as a parameter file (``--write-params``) that ``herd simulate``,
``herd sweep``, the controllers and the testbed read (``herd.params.load_params_file``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from herd import __version__
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, SimulationResult, simulate
from herd.params import Params
from herd.trace import Trace

MAX_TABLE_SLOTS = 1 << 26  # Params' own limit on the slots of a table
NICE = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.12)  # a ~1.25x log lattice per decade
DEFAULT_SEEDS = 3
DEFAULT_HEADROOM = 0.05
POLICIES = ("ignore", "reset")


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


@dataclass(frozen=True)
class Config:
    """What the search varies (R is chosen after the runs)."""

    s: float
    epsilon: float
    stages: tuple[int, ...]
    overflow_policy: str = "ignore"
    algorithm: str = "herd"
    q: float = 0.01


@dataclass
class RunSummary:
    """One simulation (configuration, seed): its budgets and, for every R, the true and
    false positives (index R - 1). A detector without R (strawman, sampling) has one entry."""

    max_states: int
    max_messages: int
    messages: int
    overflows: int
    heavy: int
    tp: np.ndarray
    fp: np.ndarray
    r_free: bool  # False: tp / fp hold the run's own single detection


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
    params = base.with_(s=config.s, epsilon=config.epsilon, stages=config.stages,
                        overflow_policy=config.overflow_policy, algorithm=config.algorithm,
                        q=config.q, seed=seed, R=None)
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
    """A configuration evaluated over every seed, with R chosen (or fixed)."""

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

    def summary(self) -> dict[str, Any]:
        c = self.config
        d: dict[str, Any] = {"algorithm": c.algorithm}
        if c.algorithm == "herd":
            d.update(s=c.s, epsilon=c.epsilon, stages=list(c.stages),
                     overflow_policy=c.overflow_policy)
        elif c.algorithm == "reporting":
            d.update(epsilon=c.epsilon)
        elif c.algorithm == "sampling":
            d.update(q=c.q)
        d.update(R=self.R, f1=self.f1, f1_std=self.f1_std, f1_min=self.f1_min,
                 f1_max=self.f1_max, precision=self.precision, recall=self.recall,
                 states=self.max_states, messages=self.max_messages,
                 states_mean=self.mean_states, messages_mean=self.mean_messages,
                 feasible=self.feasible)
        return d


def make_point(config: Config, runs: Sequence[RunSummary], state_limit: float,
               message_limit: float, R: int | None = None) -> Point:
    """Average over the seeds; choose R (argmax of the mean F1) unless it is given."""
    heavy = runs[0].heavy
    # pad to R: beyond the largest report count nobody is detected (tp = fp = 0)
    width = max(max(len(r.tp) for r in runs), R or 0)
    f1s, ps, rs = [], [], []
    for r in runs:
        tp = np.zeros(width, dtype=np.int64)
        fp = np.zeros(width, dtype=np.int64)
        tp[: len(r.tp)] = r.tp
        fp[: len(r.fp)] = r.fp
        f1, p, rc = f1_arrays(tp, fp, heavy)
        f1s.append(f1)
        ps.append(p)
        rs.append(rc)
    f1m = np.mean(f1s, axis=0)
    if not runs[0].r_free:
        idx = 0
        R_out = 0
    elif R is not None:
        idx = R - 1
        R_out = R
    else:
        # argmax of the mean F1; among (near-)ties the smallest spread, then the smaller R
        best = float(f1m.max())
        cands = np.flatnonzero(f1m >= best - 1e-12)
        std = np.std(f1s, axis=0)
        idx = int(cands[np.argmin(std[cands])])
        R_out = idx + 1
    per_seed = np.array([f[idx] for f in f1s])
    states = [r.max_states for r in runs]
    msgs = [r.max_messages for r in runs]
    return Point(
        config=config, runs=list(runs), R=R_out,
        f1=float(per_seed.mean()), f1_std=float(per_seed.std()),
        f1_min=float(per_seed.min()), f1_max=float(per_seed.max()),
        precision=float(np.mean([p[idx] for p in ps])),
        recall=float(np.mean([r[idx] for r in rs])),
        max_states=int(max(states)), max_messages=int(max(msgs)),
        mean_states=float(np.mean(states)), mean_messages=float(np.mean(msgs)),
        feasible=max(states) <= state_limit and max(msgs) <= message_limit,
    )


# ------------------------------------------------------------------------------------------
# the evaluator: cached runs, optionally on two processes

_WORKER: dict[str, Any] = {}


def _worker_run(task: tuple[Config, int]) -> RunSummary:
    return _WORKER["evaluator"]._run_now(*task)


class Evaluator:
    """Runs each (configuration, seed) simulation once; several at a time in a process pool
    when ``workers`` > 1. ``cache`` may be shared between evaluators of the same trace and
    base parameters: its keys carry the baselines' budget caps, never the limits, because
    whether a run fits is decided afresh by each evaluator."""

    def __init__(self, prep: PreparedTrace, base: Params, seeds: Sequence[int], *,
                 state_limit: float, message_limit: float, memory_cap: int | None = None,
                 message_cap: int | None = None, workers: int = 1,
                 cache: dict[Any, RunSummary] | None = None) -> None:
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
        self._pool: Any = None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def _ensure_pool(self) -> Any:
        forkable = "fork" in multiprocessing.get_all_start_methods()
        if self._pool is None and self.workers > 1 and forkable:
            # fork: the children inherit the trace, its cached hashes and numba's compiled
            # kernels (warmed up by the parent's first run), so a task costs only its run.
            _WORKER["evaluator"] = self
            self._pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self._pool

    def _key(self, config: Config, seed: int) -> tuple[Any, ...]:
        return (config, seed, self.memory_cap, self.message_cap)

    def _run_now(self, config: Config, seed: int) -> RunSummary:
        return run_config(self.prep, self.base, config, seed, memory_cap=self.memory_cap,
                          message_cap=self.message_cap)

    def ensure(self, tasks: Iterable[tuple[Config, int]]) -> None:
        todo = list(dict.fromkeys(t for t in tasks if self._key(*t) not in self.cache))
        if not todo:
            return
        # The pool only after a first run in this process, so the children inherit compiled
        # kernels instead of compiling them each.
        pool = self._ensure_pool() if len(todo) > 1 and self.runs > 0 else None
        if pool is not None:
            results = pool.map(_worker_run, todo, chunksize=1)
        else:
            results = [self._run_now(*t) for t in todo]
        for t, r in zip(todo, results, strict=True):
            self.cache[self._key(*t)] = r
        self.runs += len(todo)

    def run(self, config: Config, seed: int) -> RunSummary:
        self.ensure([(config, seed)])
        return self.cache[self._key(config, seed)]

    def fits(self, r: RunSummary) -> bool:
        return r.max_states <= self.state_limit and r.max_messages <= self.message_limit

    def quick_fits(self, config: Config) -> bool:
        """Fits the budgets with the first seed (the cheap probe of a search)."""
        return self.fits(self.run(config, self.seeds[0]))

    def point(self, config: Config, R: int | None = None) -> Point:
        self.ensure((config, s) for s in self.seeds)
        return make_point(config, [self.cache[self._key(config, s)] for s in self.seeds],
                          self.state_limit, self.message_limit, R)

    def points(self, configs: Sequence[Config], R: int | None = None) -> list[Point]:
        self.ensure((c, s) for c in configs for s in self.seeds)
        return [self.point(c, R) for c in configs]

    def complete_configs(self) -> list[Config]:
        """The configurations run with every seed (under this evaluator's caps)."""
        have = {(k[0], k[1]) for k in self.cache
                if k[2] == self.memory_cap and k[3] == self.message_cap}
        configs = dict.fromkeys(c for (c, _) in have)
        return [c for c in configs if all((c, s) in have for s in self.seeds)]


# ------------------------------------------------------------------------------------------
# the search


def fit_along(ev: Evaluator, configs: Sequence[Config], hint: int,
              more: int = 1) -> tuple[Point | None, int]:
    """``configs`` are ordered by rising messages (e.g. falling epsilon). Find the last one
    that fits the budgets on every seed - galloping then bisecting from ``hint`` with one
    seed, then confirming on all - and return the best point among it and the ones before
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
    # Confirm on every seed (a seed may need a little more epsilon).
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

    def expected(self) -> dict[str, Any]:
        b = self.best
        return {
            "f1": b.f1, "f1_std": b.f1_std, "f1_min": b.f1_min, "f1_max": b.f1_max,
            "precision": b.precision, "recall": b.recall,
            "states": b.max_states, "messages": b.max_messages,
            "states_mean": b.mean_states, "messages_mean": b.mean_messages,
        }

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        explored = sorted(self.explored, key=lambda q: -q.f1)
        return {
            "s": p.s, "epsilon": p.epsilon, "R": p.R, "stages": list(p.stages),
            "overflow_policy": p.overflow_policy,
            **self.expected(),
            "T": self.T,
            "budgets": {"memory": self.memory, "messages": self.messages,
                        "headroom": self.headroom,
                        "message_limit": message_limit(self.messages, self.headroom)},
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
    from herd.baselines import groups_per_switch

    return max(int(groups_per_switch(prep, base.with_(seed=s)).max()) for s in seeds)


def default_workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def tune(prep: PreparedTrace, base: Params, memory: int, messages: int, *,
         seeds: int = DEFAULT_SEEDS, headroom: float = DEFAULT_HEADROOM,
         max_slots: int | None = None, workers: int | None = None,
         policies: Sequence[str] = POLICIES, max_stages: int = 4, quick: bool = False,
         near: tuple[float, float] | None = None, toward: int = 0, confirm: int = 4,
         cache: dict[Any, RunSummary] | None = None,
         progress: Callable[[str], None] | None = None) -> TuneResult:
    """The (s, epsilon, R, stages, overflow policy) that maximise F1 within the budgets on
    this trace (see the module doc). ``base`` supplies T or the percentile, k, p, the
    control-loop delay and the first seed. Raises HerdInputError when nothing fits.

    ``quick`` (for the figures' budget curves) keeps the published layout and policy and
    moves s in coarser steps. ``near`` = (s, epsilon), e.g. the result for a neighbouring
    budget, starts the search there instead of at the published starting point; ``toward``
    = 1 (-1) then looks only at smaller (larger) s from there.
    ``cache`` may be shared between calls on the same trace and base parameters (e.g. one
    memory budget, several communication budgets). ``confirm``: how many of the best
    configurations are measured again on as many fresh seeds before choosing (0: none;
    the quick search never does)."""
    check_budgets(memory, messages, seeds, headroom)
    if max_slots is not None and not 1 <= max_slots <= MAX_TABLE_SLOTS:
        raise HerdInputError(f"max_slots={max_slots}: must be in [1, 2^26]")
    for pol in policies:
        if pol not in POLICIES:
            raise HerdInputError(f"overflow_policy={pol}: must be ignore or reset")
    started = time.perf_counter()
    base = base.with_(algorithm="herd")
    seed_list = [base.seed + i for i in range(seeds)]
    T = prep.threshold(base)
    c_limit = message_limit(messages, headroom)
    # A switch never holds more flows than it sees: slots beyond a few times that only cost
    # the simulation memory and time (10 switches x 8 bytes a slot), so a budget of more
    # is met with a table of 4x the busiest switch's distinct flows.
    from herd.baselines import distinct_flows_per_switch

    useful = 4 * int(distinct_flows_per_switch(prep, base).max())
    total = min(max_slots or memory, MAX_TABLE_SLOTS, max(useful, 1024))
    # A table bigger than S may still hold at most S flows at its peak, but new traffic can
    # fill it further: then the states get the same headroom as the messages.
    s_limit = memory if total <= memory else memory * (1.0 - headroom)

    hellos = _hellos_needed(prep, base, seed_list)
    if hellos > c_limit:
        raise HerdInputError(
            f"messages={messages}: no setting fits - the busiest switch sends {hellos} hellos "
            f"(one per group it sees) before any report"
            + (f", above {c_limit} = messages x (1 - headroom {headroom:g})" if headroom else ""))

    eps_lat = epsilon_lattice(T, base.k)
    workers = default_workers() if workers is None else max(1, workers)
    ev = Evaluator(prep, base, seed_list, state_limit=s_limit, message_limit=c_limit,
                   workers=workers, cache=cache)
    # the last fitting epsilon index found per (s index, stages, policy): hints and memo
    fitted: dict[tuple[int, tuple[int, ...], str], tuple[Point | None, int]] = {}

    def say(text: str) -> None:
        if progress:
            progress(f"{text} [{ev.runs} simulations, {time.perf_counter() - started:.0f} s]")

    def at(i: int, stages: tuple[int, ...], policy: str, hint: int) -> Point | None:
        """The best point for s = S_LATTICE[i] with this table: epsilon fitted to C."""
        key = (i, stages, policy)
        if key not in fitted:
            cfgs = [Config(S_LATTICE[i], e, stages, policy) for e in eps_lat]
            fitted[key] = fit_along(ev, cfgs, hint, more=0 if quick else 1)
            p = fitted[key][0]
            say(f"s={S_LATTICE[i]} stages={'/'.join(map(str, stages))} {policy}: "
                + (f"F1={p.f1:.3f} at epsilon={p.config.epsilon:g}, R={p.R}" if p
                   else "nothing fits"))
        return fitted[key][0]

    def hint_near(i: int, stages: tuple[int, ...], policy: str) -> int:
        near = [(abs(i - j), fj) for (j, st, pol), (_, fj) in fitted.items()
                if st == stages and pol == policy and fj >= 0]
        if not near:
            near = [(abs(i - j), fj) for (j, _, _), (_, fj) in fitted.items() if fj >= 0]
        return min(near)[1] if near else 0

    def climb(i_best: int, current: Point, stages: tuple[int, ...], policy: str,
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
                p = at(i, stages, policy, hint_near(i, stages, policy))
                if p is not None and p.f1 > current.f1 + 1e-12:
                    i_best, current, misses = i, p, 0
                else:
                    misses += 1
                i += direction * stride
        return i_best, current

    try:
        # 1. The published idea: the highest s whose expected states fit S, the smallest
        #    epsilon that fits C, R = round(1 / epsilon).
        stages0 = halving_stages(total, 3)
        if near is not None:
            i0 = int(np.argmin([abs(math.log(s / near[0])) for s in S_LATTICE]))
            hint = int(np.argmin([abs(math.log(e / near[1])) for e in eps_lat]))
        else:
            i0 = next((i for i, s in enumerate(S_LATTICE)
                       if predicted_states(prep, base, s) <= min(memory, total)),
                      len(S_LATTICE) - 1)
            say(f"start: s={S_LATTICE[i0]} (expected states fit {min(memory, total)})")
            hint = _epsilon_hint(prep, base, S_LATTICE[i0], T, c_limit - hellos, eps_lat)
        best = at(i0, stages0, "ignore", hint)
        if best is None:
            # Even epsilon = 1 does not fit: held flows (and overflows) cost too much. Fewer
            # are held at smaller s: bisect for the largest s at which epsilon = 1 fits.
            lo, hi = i0, len(S_LATTICE) - 1  # lo does not fit
            if at(hi, stages0, "ignore", 0) is None:
                raise HerdInputError(
                    f"messages={messages}: no setting fits - even s={S_LATTICE[-1]:g} with "
                    f"epsilon=1 sends more than {c_limit} messages on the busiest switch")
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if at(mid, stages0, "ignore", 0) is None:
                    lo = mid
                else:
                    hi = mid
            i0 = hi
            best = at(i0, stages0, "ignore", 0)
            assert best is not None
        start: Point | None = None
        if near is None:
            j0 = fitted[(i0, stages0, "ignore")][1]
            start = ev.point(Config(S_LATTICE[i0], eps_lat[j0], stages0, "ignore"),
                             R=max(1, round(1 / eps_lat[j0])))
            say(f"published start: s={S_LATTICE[i0]} epsilon={eps_lat[j0]:g} "
                f"F1={start.f1:.3f}")

        # 2. s, at the published layout: a coarse scan (factors of ~2), then the neighbours.
        #    Quick: factors of ~1.6 only, and no look past a worse point when starting near.
        if quick:
            # Starting near a neighbouring budget's answer, ``toward`` (1: smaller s, -1:
            # larger) says where this budget's answer can lie, and only that way is looked.
            i_best, best = climb(i0, best, stages0, "ignore", 2, 0 if near else 1,
                                 (toward,) if near and toward else (1, -1))
        else:
            i_best, best = climb(i0, best, stages0, "ignore", 3, 1)
            i_best, best = climb(i_best, best, stages0, "ignore", 1, 0)
        if not quick:
            # 3. Table layouts and the overflow policy at that s. More stages give a flow
            #    more candidate slots (fewer collisions and overflows), so fewer than the
            #    published three stages have never been better in our runs; the policy only
            #    matters when overflows are a noticeable part of the messages.
            layout, policy = stages0, "ignore"
            for d in range(4, max_stages + 1):
                stages = halving_stages(total, d)
                if len(stages) == d and stages != layout and "ignore" in policies:
                    p = at(i_best, stages, "ignore", hint_near(i_best, stages, "ignore"))
                    if p is not None and p.f1 > best.f1 + 1e-12:
                        best, layout = p, stages
            overflow_share = max(r.overflows / max(r.messages, 1) for r in best.runs)
            if "reset" in policies and overflow_share > 0.01:
                p = at(i_best, layout, "reset", hint_near(i_best, layout, "reset"))
                if p is not None and p.f1 > best.f1 + 1e-12:
                    best, policy = p, "reset"
            # 4. The neighbouring s again, with the layout and policy chosen.
            if (layout, policy) != (stages0, "ignore"):
                i_best, best = climb(i_best, best, layout, policy, 1, 0)
        if confirm > 0 and not quick:
            best, seed_list = _confirm(ev, best, confirm, say)
    finally:
        ev.close()

    c = best.config
    params = base.with_(s=c.s, epsilon=c.epsilon, R=best.R, stages=c.stages,
                        overflow_policy=c.overflow_policy, seed=base.seed)
    t = prep.trace
    explored = [ev.point(cfg) for cfg in ev.complete_configs()]
    return TuneResult(
        params=params, best=best, start=start, T=T, memory=memory, messages=messages,
        headroom=headroom, seeds=seed_list, runs=ev.runs,
        seconds=time.perf_counter() - started, trace=t.paths[0], trace_digest=t.digest,
        packets=t.packets, explored=explored)


def _confirm(ev: Evaluator, best: Point, count: int,
             say: Callable[[str], None]) -> tuple[Point, list[int]]:
    """The winner's curse: the best of many measurements over a few seeds is partly the
    luckiest, and on other traffic it falls back. So the ``count`` best configurations
    that fit (within 0.05 of F1 of the best) are measured again on as many fresh seeds,
    and the choice - R included - is made on all seeds together, fitting on every one."""
    fits = [ev.point(c) for c in ev.complete_configs()]
    finalists = sorted((p for p in fits if p.feasible and p.f1 >= best.f1 - 0.05),
                       key=lambda p: -p.f1)[:count]
    if best.config not in {p.config for p in finalists}:
        finalists = [best, *finalists[: count - 1]]
    fresh = [max(ev.seeds) + 1 + i for i in range(len(ev.seeds))]
    seeds = [*ev.seeds, *fresh]
    wider = Evaluator(ev.prep, ev.base, seeds, state_limit=ev.state_limit,
                      message_limit=ev.message_limit, workers=ev.workers, cache=ev.cache)
    try:
        points = wider.points([p.config for p in finalists])
    finally:
        ev.runs += wider.runs
        wider.close()
    fitting = [p for p in points if p.feasible]
    if not fitting:  # no finalist fits every fresh seed: keep the search's own answer
        return best, list(ev.seeds)
    chosen = max(fitting, key=lambda p: p.f1)
    say(f"confirmed on {len(seeds)} seeds: s={chosen.config.s:g} "
        f"epsilon={chosen.config.epsilon:g} R={chosen.R} F1={chosen.f1:.3f}")
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
                  ev: Evaluator | None = None) -> Point | None:
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
                       workers=workers)
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
                    "headroom": result.headroom},
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

    p = sub.add_parser(
        "tune", help="find s, epsilon, R and stage sizes that maximise F1 within a memory "
        "and a communication budget per switch",
        description="Tune Herd on a trace: maximise F1 subject to measured peak states per "
        "switch <= S (the hash table holds at most S slots) and measured messages per switch "
        "(hellos + reports + overflows) <= C, over several seeds.")
    p.add_argument("--trace", required=True)
    p.add_argument("--memory", type=_int, required=True, metavar="S",
                   help="counters (hash-table slots) per switch")
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
    p.add_argument("--workers", type=int, help="processes (default: up to 2 cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--write-params", dest="write_params", metavar="FILE",
                   help="write the tuned parameters as a parameter file")
    p.set_defaults(func=cmd_tune)


def _base_params(args: argparse.Namespace) -> Params:
    values: dict[str, Any] = {}
    for name in ("percentile", "T", "k", "p", "delay_ms", "epoch_ms", "seed"):
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return Params.from_dict(values, source="arguments")


def cmd_tune(args: argparse.Namespace) -> int:
    from herd.trace import load_trace

    base = _base_params(args)
    check_budgets(args.memory, args.messages, args.seeds, args.headroom)
    interactive = sys.stderr.isatty()
    prep = PreparedTrace(load_trace(args.trace, progress=interactive))
    progress = _status_line("tune") if interactive else None
    result = tune(prep, base, args.memory, args.messages, seeds=args.seeds,
                  headroom=args.headroom, max_slots=args.max_slots, workers=args.workers,
                  progress=progress)
    if progress:
        progress("")
    if args.write_params:
        write_params_file(args.write_params, result)
    d = result.to_dict()
    if args.json:
        json.dump(d, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        p = result.params
        b = result.best
        per = f" per epoch of {base.epoch_ms:g} ms" if base.epoch_ms else ""
        print(f"trace {result.trace} ({result.packets} packets), T={result.T}, "
              f"budgets S={result.memory} states, C={result.messages} messages per switch{per}")
        print(f"s={p.s:g} epsilon={p.epsilon:g} R={p.R} stages={','.join(map(str, p.stages))} "
              f"overflow_policy={p.overflow_policy}")
        print(f"expected F1={b.f1:.4f} (std {b.f1_std:.4f}, min {b.f1_min:.4f} over "
              f"{len(result.seeds)} seeds) precision={b.precision:.4f} recall={b.recall:.4f}")
        print(f"peak states per switch {b.max_states} <= {result.memory}, messages per switch "
              f"{b.max_messages} <= {result.messages} (worst seed)")
        if result.start is not None:
            s = result.start
            print(f"published starting point: s={s.config.s:g} epsilon={s.config.epsilon:g} "
                  f"R={s.R}: F1={s.f1:.4f}")
        print(f"{result.runs} simulations in {result.seconds:.1f} s")
        if args.write_params:
            print(f"parameters: {args.write_params}")
    return 0


def _status_line(label: str) -> Callable[[str], None]:
    """One rewritten stderr line for an interactive terminal."""

    def show(text: str) -> None:
        width = 100
        line = f"{label}: {text}"[:width] if text else ""
        sys.stderr.write("\r" + line.ljust(width) + ("\r" if not text else ""))
        sys.stderr.flush()

    return show
