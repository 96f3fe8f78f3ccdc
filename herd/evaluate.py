"""One entry point for every detector: ``simulate`` runs Herd (``herd.simulator``) or a
baseline (``herd.baselines``) over a prepared trace, by ``params.algorithm``."""

from __future__ import annotations

from collections.abc import Callable

from herd.baselines import simulate_baseline
from herd.delays import EntryWrite, MeasuredTiming
from herd.params import Params
from herd.prepared import PreparedTrace, SimulationResult
from herd.simulator import simulate_herd
from herd.trace import Trace


def simulate(trace: Trace | PreparedTrace, params: Params,
             delays: MeasuredTiming | list[EntryWrite] | None = None,
             progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Run ``params.algorithm`` over the trace with these parameters; ``delays`` (Herd only):
    a testbed run's measured control-plane timing and switch epochs; ``progress(done,
    total)`` (Herd only) after every chunk of packets."""
    prep = trace if isinstance(trace, PreparedTrace) else PreparedTrace(trace)
    if params.algorithm != "herd":
        return simulate_baseline(prep, params)
    return simulate_herd(prep, params, delays, progress)


__all__ = ["PreparedTrace", "SimulationResult", "simulate"]
