"""The evaluation figures: ``herd figures --trace FILE --out DIR``.

Each figure is a PNG and the CSV behind it (same name), in DIR, plus ``figures.json`` with
the trace, its digest, the parameters, the budgets and the tool version:

- ``accuracy_vs_epsilon``: Herd's F1 / precision / recall against epsilon, R = round(1/eps)
  as published, and the F1 with the best R for each epsilon (chosen after the run);
- ``accuracy_vs_s``: the same against the sampling probability s;
- ``messages_vs_epsilon``: messages of the busiest switch against epsilon, Herd and the
  baselines (strawman and sampling do not depend on epsilon: flat lines);
- ``states_vs_s``: peak states of the busiest switch against s, Herd and the baselines;
- ``f1_vs_memory_budget``: F1 within a memory budget S per switch at a fixed
  communication budget C - Herd tuned (``herd.tuning.tune``, quick search) against the
  baselines at the same budgets (``herd.tuning.tune_baseline``);
- ``f1_vs_message_budget``: the same within a communication budget C at a fixed S;
- ``f1_vs_messages``: F1 against the messages of the busiest switch, for Herd, Herd + confirm
  and the baselines, each tuned within the same budgets as ``f1_vs_message_budget`` (Herd +
  confirm's 24-byte slots within the same bytes: S x 12 // 24 of them, its pull messages
  counted; ``tune(modes=(True,))``);
- ``per_epoch`` (with ``--epoch-ms``): Herd's F1 and messages in each epoch over the trace's
  time, at the base parameters, beside the heavy hitters each epoch holds.

The runs are independent jobs; with two workers they run in two forked processes. On Ray
(``--ray``) the jobs run side by side in this process and every simulation they need is a
Ray task (``herd.executor``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from herd import __version__
from herd.baselines import distinct_flows_per_switch, groups_per_switch
from herd.errors import HerdInputError
from herd.executor import Executor, LocalExecutor
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.switch import SLOT_BYTES, SLOT_BYTES_CONFIRM, slot_bytes
from herd.tuning import (
    DEFAULT_HEADROOM,
    Config,
    Evaluator,
    Point,
    budget_slots,
    default_workers,
    message_limit,
    split_trace,
    tune,
    tune_baseline,
)

DEFAULT_EPSILONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_S_VALUES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
BUDGET_POINTS = 5
# Seeds per point when not given: spread matters on short traces (a few hundred heavy
# hitters), hardly on long ones (thousands), where it would only triple the cost.
AUTO_SEEDS_PACKETS = 2_000_000

ALGORITHMS = ("herd", "strawman", "sampling", "reporting")
CONFIRM = "herd+confirm"  # Herd + confirm: a curve of its own, beside ALGORITHMS
HERDS = ("herd", CONFIRM)
STYLE = {
    "herd": {"color": "C0", "marker": "o", "label": "Herd"},
    CONFIRM: {"color": "C4", "marker": "P", "label": "Herd + confirm"},
    "strawman": {"color": "C3", "marker": "s", "label": "strawman"},
    "sampling": {"color": "C2", "marker": "^", "label": "prob. sampling"},
    "reporting": {"color": "C1", "marker": "D", "label": "prob. reporting"},
}


@dataclass(frozen=True)
class Plan:
    """Everything the figures are made of, fixed before any run (and recorded)."""

    base: Params
    seeds: int
    epsilons: tuple[float, ...]
    s_values: tuple[float, ...]
    memory_budgets: tuple[int, ...]
    message_budgets: tuple[int, ...]
    fixed_memory: int  # S of the communication-budget figure
    fixed_messages: int  # C of the memory-budget figure
    headroom: float
    T: int
    distinct_flows: int  # at the busiest switch: the strawman's states and messages
    hellos: int  # at the busiest switch

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_params": self.base.to_dict(), "seeds": self.seeds,
            "epsilons": list(self.epsilons), "s_values": list(self.s_values),
            "memory_budgets": list(self.memory_budgets),
            "message_budgets": list(self.message_budgets),
            "fixed_memory": self.fixed_memory, "fixed_messages": self.fixed_messages,
            "headroom": self.headroom, "T": self.T,
            "distinct_flows_busiest_switch": self.distinct_flows,
            "hellos_busiest_switch": self.hellos,
        }


def _geometric(lo: float, hi: float, n: int) -> tuple[int, ...]:
    if hi <= lo:
        return (max(1, round(lo)),)
    vals = np.exp(np.linspace(math.log(lo), math.log(hi), n))
    return tuple(dict.fromkeys(max(1, round(v)) for v in vals))


def make_plan(prep: PreparedTrace, base: Params, *, seeds: int | None = None,
              epsilons: Sequence[float] | None = None, s_values: Sequence[float] | None = None,
              memory_budgets: Sequence[int] | None = None,
              message_budgets: Sequence[int] | None = None, fixed_memory: int | None = None,
              fixed_messages: int | None = None,
              headroom: float = DEFAULT_HEADROOM) -> Plan:
    """The default budgets follow the trace: memory from D/64 to D and messages from just
    above the hellos H to D, where D is the busiest switch's distinct flows (what the
    strawman needs of both) and H its hellos (Herd's fixed cost); each budget figure holds
    the other budget at the geometric middle of its range."""
    if seeds is None:
        seeds = 3 if prep.trace.packets <= AUTO_SEEDS_PACKETS else 1
    if seeds < 1:
        raise HerdInputError(f"seeds={seeds}: must be >= 1")
    for name, values in (("epsilons", epsilons), ("s_values", s_values)):
        for v in values or ():
            if not 0.0 < v <= 1.0:
                raise HerdInputError(f"{name}: {v} is not in (0, 1]")
    for name, values in (("memory_budgets", memory_budgets),
                         ("message_budgets", message_budgets),
                         ("fixed_memory", [fixed_memory] if fixed_memory is not None else []),
                         ("fixed_messages",
                          [fixed_messages] if fixed_messages is not None else [])):
        for v in values or ():
            if v < 1:
                raise HerdInputError(f"{name}: {v} must be a budget >= 1")
    if not 0.0 <= headroom < 1.0:
        raise HerdInputError(f"headroom={headroom}: must be in [0, 1)")
    D = int(distinct_flows_per_switch(prep, base).max())
    H = int(groups_per_switch(prep, base).max())
    lo_c = min(D, math.ceil(1.25 * H / (1.0 - headroom)))
    mem = tuple(sorted(memory_budgets)) if memory_budgets else _geometric(D / 64, D, BUDGET_POINTS)
    msg = (tuple(sorted(message_budgets)) if message_budgets
           else _geometric(lo_c, max(D, lo_c), BUDGET_POINTS))
    return Plan(
        base=base, seeds=seeds,
        epsilons=tuple(epsilons or DEFAULT_EPSILONS), s_values=tuple(s_values or DEFAULT_S_VALUES),
        memory_budgets=mem, message_budgets=msg,
        fixed_memory=fixed_memory or max(1, round(math.sqrt(mem[0] * mem[-1]))),
        fixed_messages=fixed_messages or max(1, round(math.sqrt(msg[0] * msg[-1]))),
        headroom=headroom, T=prep.threshold(base), distinct_flows=D, hellos=H,
    )


# ------------------------------------------------------------------------------------------
# jobs: each returns rows {figure, x, algorithm, ...}


def _point_row(figure: str, x_name: str, x: float, algorithm: str, p: Point | None,
               **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"figure": figure, "x_name": x_name, "x": x, "algorithm": algorithm}
    if p is None:
        row.update(fits=False)
        row.update(extra)
        return row
    c = p.config
    herd = algorithm in HERDS
    row.update(
        fits=p.feasible, f1score=p.f1, precision=p.precision, recall=p.recall,
        f1score_std=p.f1_std, max_states=p.max_states, max_messages=p.max_messages,
        messages=p.total_messages,
        R=p.R if p.runs[0].r_free else None,  # strawman and sampling have no R
        C=p.C, pull_messages=p.pull_messages if c.confirm else None,
        s=c.s if herd else None,
        epsilon=c.epsilon if herd or algorithm == "reporting" else None,
        q=c.q if algorithm == "sampling" else None,
        stages="/".join(map(str, c.stages)) if herd else None,
        overflow_policy=c.overflow_policy if herd else None,
        table_bytes=c.table_bytes if herd else None,
    )
    row.update(extra)
    return row


def _unlimited(prep: PreparedTrace, base: Params, seeds: int, algorithm: str = "herd",
               cache: dict[Any, Any] | None = None) -> Evaluator:
    return Evaluator(prep, base.with_(algorithm=algorithm), [base.seed + i for i in range(seeds)],
                     state_limit=math.inf, message_limit=math.inf, cache=cache,
                     executor=_CTX.get("executor"))


def job_epsilon(prep: PreparedTrace, plan: Plan) -> list[dict[str, Any]]:
    """Herd and the baselines against epsilon (accuracy and messages figures)."""
    b = plan.base
    rows = []
    ev = _unlimited(prep, b, plan.seeds)
    for eps in plan.epsilons:
        cfg = Config(b.s, eps, b.stages, b.overflow_policy)
        R = b.R if b.R is not None else max(1, round(1 / eps))
        best = ev.point(cfg)
        rows.append(_point_row("epsilon", "epsilon", eps, "herd", ev.point(cfg, R=R),
                               f1score_best_R=best.f1, best_R=best.R))
    rep = _unlimited(prep, b, plan.seeds, "reporting")
    for eps in plan.epsilons:
        R = b.R if b.R is not None else max(1, round(1 / eps))
        rows.append(_point_row("epsilon", "epsilon", eps, "reporting",
                               rep.point(Config(1.0, eps, (1,), algorithm="reporting"), R=R)))
    for alg in ("strawman", "sampling"):
        p = _unlimited(prep, b, plan.seeds, alg).point(
            Config(1.0, b.epsilon, (1,), algorithm=alg, q=b.q))
        for eps in plan.epsilons:
            rows.append(_point_row("epsilon", "epsilon", eps, alg, p))
    return rows


def job_s(prep: PreparedTrace, plan: Plan) -> list[dict[str, Any]]:
    """Herd against s (accuracy and states figures); the baselines' states do not depend
    on s, so they are drawn from their epsilon-independent runs."""
    b = plan.base
    rows = []
    ev = _unlimited(prep, b, plan.seeds)
    R = b.reports_needed
    for s in plan.s_values:
        cfg = Config(s, b.epsilon, b.stages, b.overflow_policy)
        best = ev.point(cfg)
        rows.append(_point_row("s", "s", s, "herd", ev.point(cfg, R=R),
                               f1score_best_R=best.f1, best_R=best.R))
    for alg in ("strawman", "sampling", "reporting"):
        p = _unlimited(prep, b, plan.seeds, alg).point(
            Config(1.0, b.epsilon, (1,), algorithm=alg, q=b.q), R=R if alg == "reporting" else None)
        for s in plan.s_values:
            rows.append(_point_row("s", "s", s, alg, p))
    return rows


def _budget_rows(prep: PreparedTrace, plan: Plan, figure: str, memory: int, messages: int,
                 herd_cache: dict[Any, Any] | None,
                 baseline_caches: dict[str, dict[Any, Any]] | None,
                 algorithms: Sequence[str], near: tuple[float, float] | None, toward: int = 0,
                 ) -> tuple[list[dict[str, Any]], tuple[float, float] | None]:
    """Herd tuned and the baselines fitted within (memory, messages); also where Herd's
    tuning ended, (s, epsilon), to start the next budget's search from."""
    x = memory if figure == "memory" else messages
    extra = {"memory_budget": memory, "message_budget": messages}
    rows = []
    if "herd" in algorithms:
        row, near = _tuned_row(prep, plan, figure, memory, messages, False, herd_cache, near,
                               toward)
        rows.append(row)
    for alg in algorithms:
        if alg == "herd":
            continue
        cache = baseline_caches.setdefault(alg, {}) if baseline_caches is not None else None
        c_limit = message_limit(messages, plan.headroom)
        seeds = [plan.base.seed + i for i in range(plan.seeds)]
        ev = Evaluator(prep, plan.base.with_(algorithm=alg), seeds, state_limit=memory,
                       message_limit=c_limit, memory_cap=memory if alg != "sampling" else None,
                       message_cap=c_limit if alg == "strawman" else None, cache=cache,
                       executor=_CTX.get("executor"))
        p = tune_baseline(prep, plan.base, alg, memory, messages, seeds=plan.seeds,
                          headroom=plan.headroom, ev=ev)
        rows.append(_point_row(figure, figure, x, alg, p, **extra))
    return rows, near


def _tuned_row(prep: PreparedTrace, plan: Plan, figure: str, memory: int, messages: int,
               confirm: bool, cache: dict[Any, Any] | None, near: tuple[float, float] | None,
               toward: int) -> tuple[dict[str, Any], tuple[float, float] | None]:
    """Herd (or Herd + confirm) tuned within (memory, messages) by the quick search, and
    where the search ended, to start the next budget's from."""
    x = memory if figure == "memory" else messages
    alg = CONFIRM if confirm else "herd"
    extra = {"memory_budget": memory, "message_budget": messages,
             "slot_bytes": slot_bytes(confirm),
             "budget_slots": budget_slots(memory, confirm)}
    try:
        r = tune(prep, plan.base, memory, messages, seeds=plan.seeds, headroom=plan.headroom,
                 workers=1, quick=True, near=near, toward=toward, modes=(confirm,),
                 cache=cache, executor=_CTX.get("executor"))
    except HerdInputError as e:
        return _point_row(figure, figure, x, alg, None, note=str(e), **extra), near
    return _point_row(figure, figure, x, alg, r.best, **extra), (r.params.s, r.params.epsilon)


def job_confirm(prep: PreparedTrace, plan: Plan) -> list[dict[str, Any]]:
    """Herd + confirm at the communication-budget figure's budgets (one table size, the
    runs shared through one cache), from the largest budget down as Herd's own."""
    cache: dict[Any, Any] = {}
    rows: list[dict[str, Any]] = []
    near = None
    for c in sorted(plan.message_budgets, reverse=True):
        row, near = _tuned_row(prep, plan, "messages", plan.fixed_memory, c, True, cache, near,
                               toward=1)
        rows.append(row)
    return rows


def job_memory(prep: PreparedTrace, plan: Plan) -> list[dict[str, Any]]:
    """The memory-budget figure, budgets in rising order: each Herd search starts where the
    previous budget's ended, which is near where the next one ends. Sampling keeps no state,
    so its point (fitted to C once) is the same at every S."""
    rows: list[dict[str, Any]] = []
    near = None
    for m in plan.memory_budgets:
        # more memory only ever allows a larger s: look that way from the last answer
        part, near = _budget_rows(prep, plan, "memory", m, plan.fixed_messages, None, None,
                                  ("herd", "strawman", "reporting"), near, toward=-1)
        rows += part
    part, _ = _budget_rows(prep, plan, "memory", plan.memory_budgets[0], plan.fixed_messages,
                           None, None, ("sampling",), None)
    rows += [{**part[0], "x": m, "memory_budget": m} for m in plan.memory_budgets]
    return rows


def job_messages(prep: PreparedTrace, plan: Plan) -> list[dict[str, Any]]:
    """The communication-budget figure: one table size for every budget, so the runs are
    shared through the caches, and each search starts where the previous one ended."""
    herd_cache: dict[Any, Any] = {}
    base_caches: dict[str, dict[Any, Any]] = {}
    rows: list[dict[str, Any]] = []
    near = None
    # From the largest budget down: the best s shrinks with C, and below the smallest C
    # that suits it the search bisects s downwards, cheaply.
    for c in sorted(plan.message_budgets, reverse=True):
        # fewer messages only ever call for a smaller s: look that way from the last answer
        part, near = _budget_rows(prep, plan, "messages", plan.fixed_memory, c, herd_cache,
                                  base_caches, ALGORITHMS, near, toward=1)
        rows += part
    return rows


# ------------------------------------------------------------------------------------------
# running the jobs

# On Ray: the executor the jobs' simulations go to (the jobs run in threads here).
_CTX: dict[str, Any] = {}

JOBS = ("messages", "memory", "confirm", "epsilon", "s")  # longest first: workers end together


def _job_task(prep: PreparedTrace, job: tuple[str, Plan]) -> list[dict[str, Any]]:
    name, plan = job
    fn = {"epsilon": job_epsilon, "s": job_s, "memory": job_memory,
          "messages": job_messages, "confirm": job_confirm}[name]
    return fn(prep, plan)


def _warm_up(prep: PreparedTrace, plan: Plan) -> None:
    """Compile (or load) every kernel on a tiny slice, and fill the trace's shared caches
    (ingress per seed, (switch, flow) pairs), before forking: the workers inherit both."""
    from herd.baselines import switch_flow_pairs
    from herd.evaluate import simulate

    t = prep.trace
    small = PreparedTrace(split_trace(t, 0, min(t.packets, 2000)))
    for alg in ALGORITHMS:
        simulate(small, plan.base.with_(algorithm=alg, T=1))
    simulate(small, plan.base.with_(T=1, confirm=True, confirm_reports=1))
    for i in range(plan.seeds):
        p = plan.base.with_(seed=plan.base.seed + i)
        prep.ingress(p.k, p.p, p.seed)
        switch_flow_pairs(prep, p)


def compute(prep: PreparedTrace, plan: Plan, workers: int = 1,
            progress: Callable[[int, int], None] | None = None,
            executor: Executor | None = None) -> list[dict[str, Any]]:
    """Run every job (in ``workers`` forked processes) and return all rows. With an
    executor that takes tasks from several threads (Ray), the jobs run side by side here and
    send it every simulation."""
    _warm_up(prep, plan)
    jobs = [(name, plan) for name in JOBS]
    rows: list[dict[str, Any]] = []
    # warm: the children of a local pool inherit what _warm_up compiled and filled
    ex = LocalExecutor(prep, workers, warm=True) if executor is None else executor
    try:
        if ex.concurrent:
            from concurrent.futures import ThreadPoolExecutor, as_completed

            _CTX["executor"] = ex
            try:
                with ThreadPoolExecutor(len(jobs)) as threads:
                    futures = [threads.submit(_job_task, prep, job) for job in jobs]
                    try:
                        for i, f in enumerate(as_completed(futures)):
                            rows += f.result()
                            if progress:
                                progress(i + 1, len(jobs))
                    except BaseException:
                        ex.cancel()  # Ctrl-C or a failed job: the others stop too
                        raise
            finally:
                del _CTX["executor"]
        else:
            for part in ex.map(_job_task, jobs, progress):
                rows += part
    finally:
        if executor is None:
            ex.close()
    return rows


# ------------------------------------------------------------------------------------------
# CSV and plots


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        v = float(v)
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.6g}"
    return str(v)


def _csv(columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_fmt(r.get(c)) for c in columns])
    return out.getvalue()


def _sorted(rows: Sequence[dict[str, Any]], figure: str, alg: str) -> list[dict[str, Any]]:
    return sorted((r for r in rows if r["figure"] == figure and r["algorithm"] == alg),
                  key=lambda r: r["x"])


def _subtitle(prep: PreparedTrace, plan: Plan) -> str:
    b = plan.base
    t = "T given" if b.T is not None else f"{b.percentile:g}th percentile"
    return (f"{Path(prep.trace.paths[0]).name}: {prep.trace.packets:,} packets, "
            f"{prep.trace.flows:,} flows, T={plan.T} ({t}), k={b.k}, p={b.p:g}, "
            f"{plan.seeds} seed{'s' if plan.seeds > 1 else ''}")


def _figure(title: str, subtitle: str) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.8), dpi=110)
    fig.suptitle(title, fontsize=11, y=0.985)
    lines = [w for part in subtitle.split("\n") for w in textwrap.wrap(part, 118)]
    ax.set_title("\n".join(lines), fontsize=7.5)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    from herd.fileio import atomic_write

    fig.tight_layout()
    buf = io.BytesIO()
    # no timestamps in the file, so the same data renders to the same bytes
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _errorbar(ax: Any, rows: Sequence[dict[str, Any]], key: str, fmt: str, label: str,
              color: str | None = None, with_std: bool = True) -> None:
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return
    x = [r["x"] for r in rows]
    y = np.array([r[key] for r in rows], dtype=float)
    err = np.array([r.get(f"{key}_std") or 0.0 for r in rows], dtype=float)
    ax.errorbar(x, y, yerr=err if with_std and err.any() else None, fmt=fmt, label=label,
                capsize=3, color=color, markersize=5)


ACCURACY_COLUMNS = ("f1score", "precision", "recall", "f1score_std", "f1score_best_R", "best_R",
                    "R", "max_messages_per_switch", "messages", "max_states_per_switch")


def _accuracy_figure(out: Path, prep: PreparedTrace, plan: Plan, rows: list[dict[str, Any]],
                     figure: str) -> list[Path]:
    b = plan.base
    data = _sorted(rows, figure, "herd")
    table = [{**r, figure: r["x"], "max_messages_per_switch": r["max_messages"],
              "max_states_per_switch": r["max_states"]} for r in data]
    name = "accuracy_vs_epsilon" if figure == "epsilon" else "accuracy_vs_s"
    csv_path = out / f"{name}.csv"
    from herd.fileio import atomic_write

    atomic_write(csv_path, _csv((figure, *ACCURACY_COLUMNS), table))
    stages = "/".join(map(str, b.stages))
    if figure == "epsilon":
        fixed = (f"s={b.s:g}, R={'round(1/eps)' if b.R is None else b.R}, stages {stages}, "
                 f"overflow {b.overflow_policy}")
        title = "Herd: accuracy against epsilon"
    else:
        fixed = (f"epsilon={b.epsilon:g}, R={b.reports_needed}, stages {stages}, "
                 f"overflow {b.overflow_policy}")
        title = "Herd: accuracy against the sampling probability s"
    fig, ax = _figure(title, f"{_subtitle(prep, plan)}\n{fixed}")
    _errorbar(ax, data, "f1score", "o-", "F1", "C0")
    _errorbar(ax, data, "precision", "s--", "precision", "C2", with_std=False)
    _errorbar(ax, data, "recall", "^--", "recall", "C3", with_std=False)
    _errorbar(ax, data, "f1score_best_R", "o:", "F1 with the best R (chosen after the run)",
              "C0", with_std=False)
    ax.set_xscale("log")
    ax.set_xlabel(figure if figure == "epsilon" else "sampling probability s")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower left")
    png = out / f"{name}.png"
    _save(fig, png)
    return [png, csv_path]


COST_COLUMNS = ("algorithm", "max_messages_per_switch", "messages", "max_states_per_switch",
                "f1score", "precision", "recall", "R")


def _cost_figure(out: Path, prep: PreparedTrace, plan: Plan, rows: list[dict[str, Any]],
                 figure: str) -> list[Path]:
    from herd.fileio import atomic_write

    b = plan.base
    key = "max_messages" if figure == "epsilon" else "max_states"
    name = "messages_vs_epsilon" if figure == "epsilon" else "states_vs_s"
    table = []
    for alg in ALGORITHMS:
        for r in _sorted(rows, figure, alg):
            table.append({**r, figure: r["x"], "max_messages_per_switch": r["max_messages"],
                          "max_states_per_switch": r["max_states"]})
    csv_path = out / f"{name}.csv"
    atomic_write(csv_path, _csv((figure, *COST_COLUMNS), table))
    stages = "/".join(map(str, b.stages))
    if figure == "epsilon":
        title = "Messages of the busiest switch against epsilon"
        fixed = (f"Herd s={b.s:g}, stages {stages}; reporting tau=ceil(eps*T/k), prob. 1/k; "
                 f"sampling q={b.q:g}; strawman: one message per flow")
    else:
        title = "Peak states of the busiest switch against s"
        fixed = (f"Herd epsilon={b.epsilon:g}, table {sum(b.stages)} slots ({stages}); "
                 f"strawman and reporting count every flow; sampling keeps none")
    fig, ax = _figure(title, f"{_subtitle(prep, plan)}\n{fixed}")
    for alg in ALGORITHMS:
        data = _sorted(rows, figure, alg)
        st = STYLE[alg]
        if not data:
            continue
        x = [r["x"] for r in data]
        y = [r[key] for r in data]
        # strawman and reporting coincide in states: dashed and bigger under solid, smaller
        ax.plot(x, y, marker=st["marker"], color=st["color"], label=st["label"],
                linestyle="--" if alg in ("strawman", "sampling") else "-",
                markersize=8 if alg == "strawman" else 5, zorder=1 if alg == "strawman" else 2)
    if figure == "s":
        ax.axhline(sum(b.stages), color="grey", linestyle=":", linewidth=1,
                   label=f"Herd table size ({sum(b.stages)} slots)")
    ax.set_xscale("log")
    if figure == "epsilon":
        ax.set_yscale("log")
        ax.set_ylabel("messages (busiest switch)")
        ax.set_xlabel("epsilon")
    else:
        ax.set_ylabel("peak states (busiest switch)")
        ax.set_xlabel("sampling probability s")
    ax.legend(fontsize=8)
    png = out / f"{name}.png"
    _save(fig, png)
    return [png, csv_path]


BUDGET_COLUMNS = ("algorithm", "fits", "f1score", "precision", "recall", "f1score_std",
                  "max_states_per_switch", "max_messages_per_switch", "memory_budget",
                  "message_budget", "s", "epsilon", "R", "stages", "overflow_policy", "q", "note")


def _budget_figure(out: Path, prep: PreparedTrace, plan: Plan, rows: list[dict[str, Any]],
                   figure: str) -> list[Path]:
    from herd.fileio import atomic_write

    name = "f1_vs_memory_budget" if figure == "memory" else "f1_vs_message_budget"
    table = []
    for alg in ALGORITHMS:
        for r in _sorted(rows, figure, alg):
            table.append({**r, "max_messages_per_switch": r.get("max_messages"),
                          "max_states_per_switch": r.get("max_states")})
    csv_path = out / f"{name}.csv"
    x_column = "memory_budget" if figure == "memory" else "message_budget"
    columns = [c for c in BUDGET_COLUMNS if c != x_column]
    atomic_write(csv_path, _csv((x_column, *columns), table))
    h = f", messages kept within {1 - plan.headroom:.0%} of C" if plan.headroom else ""
    if figure == "memory":
        title = "F1 within a memory budget S per switch"
        fixed = f"C = {plan.fixed_messages:,} messages per switch{h}"
        xlabel = "memory budget S (counters per switch)"
    else:
        title = "F1 within a communication budget C per switch"
        fixed = f"S = {plan.fixed_memory:,} counters per switch{h}"
        xlabel = "communication budget C (messages per switch)"
    fixed += ("; Herd tuned (s, eps, R), sampling q and reporting eps, R fitted to C; "
              "strawman: first S flows, C largest counters")
    fig, ax = _figure(title, f"{_subtitle(prep, plan)}\n{fixed}")
    for alg in ALGORITHMS:
        data = [r for r in _sorted(rows, figure, alg) if r.get("fits")]
        st = STYLE[alg]
        _errorbar(ax, data, "f1score", st["marker"] + "-", st["label"], st["color"])
    if figure == "messages":
        ax.axvline(plan.hellos, color="grey", linestyle=":", linewidth=1,
                   label=f"Herd's hellos ({plan.hellos})")
    else:
        ax.axvline(plan.distinct_flows, color="grey", linestyle=":", linewidth=1,
                   label=f"distinct flows ({plan.distinct_flows})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    png = out / f"{name}.png"
    _save(fig, png)
    return [png, csv_path]


MESSAGES_COLUMNS = ("algorithm", "max_messages_per_switch", "message_budget", "fits", "f1score",
                    "precision", "recall", "f1score_std", "messages", "pull_messages",
                    "max_states_per_switch", "memory_budget", "budget_slots", "slot_bytes",
                    "table_bytes", "s", "epsilon", "R", "C", "stages", "overflow_policy", "q",
                    "note")


def messages_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``f1_vs_messages``: every algorithm at the communication budgets, Herd +
    confirm beside Herd, in budget order."""
    out = []
    for alg in (*HERDS, *ALGORITHMS[1:]):
        for r in _sorted(rows, "messages", alg):
            out.append({**r, "max_messages_per_switch": r.get("max_messages"),
                        "max_states_per_switch": r.get("max_states")})
    return out


def _messages_figure(out: Path, prep: PreparedTrace, plan: Plan,
                     rows: list[dict[str, Any]]) -> list[Path]:
    """F1 against the busiest switch's messages: what each algorithm buys with them."""
    from herd.fileio import atomic_write

    table = messages_rows(rows)
    csv_path = out / "f1_vs_messages.csv"
    atomic_write(csv_path, _csv(MESSAGES_COLUMNS, table))
    h = f"; messages kept within {1 - plan.headroom:.0%} of each budget" if plan.headroom else ""
    fixed = (f"S = {plan.fixed_memory:,} slots of {SLOT_BYTES} bytes per switch "
             f"({plan.fixed_memory * SLOT_BYTES:,} bytes; Herd + confirm: "
             f"{budget_slots(plan.fixed_memory, True):,} slots of {SLOT_BYTES_CONFIRM} bytes)"
             f"; budgets C = {', '.join(f'{c:,}' for c in plan.message_budgets)}{h}; "
             "Herd tuned (s, eps, R), + confirm also C, pulls counted")
    fig, ax = _figure("F1 against the messages of the busiest switch",
                      f"{_subtitle(prep, plan)}\n{fixed}")
    for alg in (*HERDS, *ALGORITHMS[1:]):
        data = sorted((r for r in table if r["algorithm"] == alg and r.get("fits")),
                      key=lambda r: r["max_messages"])
        if not data:
            continue
        st = STYLE[alg]
        ax.plot([r["max_messages"] for r in data], [r["f1score"] for r in data],
                st["marker"] + "-", color=st["color"], label=st["label"], markersize=5)
    ax.axvline(plan.hellos, color="grey", linestyle=":", linewidth=1,
               label=f"Herd's hellos ({plan.hellos})")
    ax.set_xscale("log")
    ax.set_xlabel("messages of the busiest switch (worst seed)")
    ax.set_ylabel("F1")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="lower right")
    png = out / "f1_vs_messages.png"
    _save(fig, png)
    return [png, csv_path]


def _epoch_figure(out: Path, prep: PreparedTrace, plan: Plan,
                  executor: Executor | None = None) -> list[Path]:
    """F1 and messages per epoch over time, Herd at the base parameters (one seed)."""
    from herd.fileio import atomic_write
    from herd.metrics import per_epoch_csv
    from herd.sweep import simulate_task

    ex = LocalExecutor(prep) if executor is None else executor
    result = ex.map(simulate_task, [plan.base])[0]
    rows = result.per_epoch
    csv_path = out / "per_epoch.csv"
    atomic_write(csv_path, per_epoch_csv(rows))
    b = plan.base
    title = f"Herd per epoch of {b.epoch_ms:g} ms: F1 {result.f1:.3f} over all (flow, epoch) pairs"
    fixed = (f"s={b.s:g}, epsilon={b.epsilon:g}, R={result.R}, stages "
             f"{'/'.join(map(str, b.stages))}, seed {b.seed}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7.2, 6.0), dpi=110,
                                      height_ratios=(3, 2))
    fig.suptitle(title, fontsize=11, y=0.985)
    lines = [w for part in f"{_subtitle(prep, plan)}\n{fixed}".split("\n")
             for w in textwrap.wrap(part, 118)]
    top.set_title("\n".join(lines), fontsize=7.5)
    t0 = rows[0]["start_ns"] if rows else 0
    x = np.array([(r["start_ns"] - t0) / 1e9 for r in rows])
    scored = [bool(r["heavy_hitters"] or r["detected"]) for r in rows]
    for key, style in (("f1", "o-"), ("precision", "s--"), ("recall", "^--")):
        y = np.array([r[key] if ok else np.nan for r, ok in zip(rows, scored, strict=True)])
        top.plot(x, y, style, markersize=3, linewidth=1 if key != "f1" else 1.6, label=key)
    top.set_ylabel("accuracy per epoch")
    top.set_ylim(0, 1.05)
    top.grid(alpha=0.3)
    top.legend(loc="lower left", fontsize=8)
    bottom.plot(x, [r["messages"] for r in rows], "k.-", markersize=3,
                label="messages (all switches)")
    bottom.plot(x, [r["heavy_hitters"] for r in rows], color="tab:red", linestyle="--",
                label="heavy hitters")
    bottom.plot(x, [r["max_states"] for r in rows], color="tab:green", linestyle=":",
                label="states (busiest switch)")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_xlabel("epoch start (s after the first packet)")
    bottom.set_ylabel("per epoch")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="center right", fontsize=7)
    png = out / "per_epoch.png"
    _save(fig, png)
    return [png, csv_path]


def make_figures(prep: PreparedTrace, out: str | Path, plan: Plan, *, workers: int = 1,
                 progress: Callable[[int, int], None] | None = None,
                 executor: Executor | None = None) -> list[Path]:
    """Compute and write every figure (PNG + CSV) and ``figures.json`` into ``out``;
    ``executor``: e.g. a RayExecutor for the simulations (default: ``workers`` processes)."""
    from herd.fileio import atomic_write

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = compute(prep, plan, workers, progress, executor)
    written: list[Path] = []
    written += _accuracy_figure(out, prep, plan, rows, "epsilon")
    written += _accuracy_figure(out, prep, plan, rows, "s")
    written += _cost_figure(out, prep, plan, rows, "epsilon")
    written += _cost_figure(out, prep, plan, rows, "s")
    written += _budget_figure(out, prep, plan, rows, "memory")
    written += _budget_figure(out, prep, plan, rows, "messages")
    written += _messages_figure(out, prep, plan, rows)
    if plan.base.epoch_ms:
        written += _epoch_figure(out, prep, plan, executor)
    meta = {
        "trace": prep.trace.paths[0], "trace_digest": prep.trace.digest,
        "packets": prep.trace.packets, "flows": prep.trace.flows, **plan.to_dict(),
        "files": [p.name for p in written], "herd_version": __version__,
    }  # no timings: the same trace and plan must give the same files, byte for byte
    meta_path = out / "figures.json"
    atomic_write(meta_path, json.dumps(meta, indent=1) + "\n")
    return [*written, meta_path]


# ------------------------------------------------------------------------------------------
# command line


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not comma-separated numbers") from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not comma-separated integers") from None


def register_cli(sub: Any) -> None:
    from herd.cli import add_param_arguments
    from herd.executor import add_ray_argument
    from herd.store import add_db_arguments

    p = sub.add_parser(
        "figures", help="regenerate the evaluation figures (PNG + CSV) for a trace",
        description="Accuracy against epsilon and s, messages and states against Herd and the "
        "baselines, and F1 within memory and communication budgets (tuned Herd against the "
        "baselines at equal budgets).")
    p.add_argument("--trace", required=True)
    p.add_argument("--out", required=True, help="directory to write the figures into")
    p.add_argument("--seeds", type=int, help="seeds per point (default 3, or 1 on traces of "
                   f"more than {AUTO_SEEDS_PACKETS:,} packets)")
    p.add_argument("--epsilons", type=_floats, help="epsilon values of the epsilon figures")
    p.add_argument("--s-values", dest="s_values", type=_floats,
                   help="s values of the s figures")
    p.add_argument("--memory-budgets", dest="memory_budgets", type=_ints,
                   help="S values of the memory-budget figure (default: D/64 .. D)")
    p.add_argument("--message-budgets", dest="message_budgets", type=_ints,
                   help="C values of the communication-budget figure (default: hellos .. D)")
    p.add_argument("--fixed-memory", dest="fixed_memory", type=int,
                   help="S of the communication-budget figure")
    p.add_argument("--fixed-messages", dest="fixed_messages", type=int,
                   help="C of the memory-budget figure")
    p.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help=f"as herd tune (default {DEFAULT_HEADROOM})")
    p.add_argument("--workers", type=int, help="processes (default: up to 2 cores; with "
                   "--ray and no cluster, the local Ray instance's CPUs, default all)")
    add_ray_argument(p)
    add_param_arguments(p)
    add_db_arguments(p)
    p.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    from herd.cli import params_from_args
    from herd.store import Recorder
    from herd.store_record import figures_metrics
    from herd.trace import load_trace

    base = params_from_args(args)
    if base.algorithm != "herd":
        raise HerdInputError(f"--algorithm {base.algorithm}: the figures run every algorithm; "
                             "leave --algorithm out")
    if base.confirm or args.confirm_reports is not None:
        raise HerdInputError("--confirm: the figures run Herd with and without confirm (C "
                             "tuned per budget); leave --confirm and --confirm-reports out")
    interactive = sys.stderr.isatty()
    prep = PreparedTrace(load_trace(args.trace, progress=interactive))
    plan = make_plan(prep, base, seeds=args.seeds, epsilons=args.epsilons,
                     s_values=args.s_values, memory_budgets=args.memory_budgets,
                     message_budgets=args.message_budgets, fixed_memory=args.fixed_memory,
                     fixed_messages=args.fixed_messages, headroom=args.headroom)
    progress = None
    if interactive:
        from herd.sweep import stderr_progress

        progress = stderr_progress("figures")
    workers = default_workers() if args.workers is None else max(1, args.workers)
    from herd.executor import make_executor

    # Connect (--ray) first: an unreachable cluster fails before anything is recorded.
    # a local Ray instance takes every CPU unless --workers says otherwise
    executor = make_executor(prep, args.ray, args.workers) if args.ray is not None else None
    rec = Recorder.from_args(args, prog="herd figures")
    with rec.run("figures", {**plan.to_dict(), "out": os.path.abspath(args.out)},
                 trace_path=os.path.abspath(args.trace), trace_sha256=prep.trace.digest) as run:
        try:
            files = make_figures(prep, args.out, plan, workers=workers, progress=progress,
                                 executor=executor)
        finally:
            if executor is not None:
                executor.close()
        for f in files:
            print(f)
        # After the outputs: a store that fails loses none of them.
        run.finish(figures_metrics(files))
    return rec.exit_code(0)
