"""What each command records in the results store (``herd.store``): its result as metrics,
per-epoch rows and the detected elephants.

The conversions are vectorised: a run can detect 100k elephants, each a (flow, epoch) pair
of the simulator's (``herd.prepared.Detection``) or a coordinator's 5-tuple (``herd
replay``, the testbed harness); a 5-tuple is true positive iff its (flow, epoch) pair is
heavy in the trace's ground truth under the run's T and epoch length.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from herd.groundtruth import pair_keys
from herd.params import Params
from herd.prepared import PreparedTrace, SimulationResult
from herd.store import Elephant, Recorder, RunHandle

if TYPE_CHECKING:
    from herd.tuning import TuneResult

# Keys of a result dict (``herd simulate --json``, ``herd replay --json``, a harness row)
# that are not metrics: they are the run's parameters, trace and per-epoch rows, recorded
# in their own places.
NOT_METRICS = ("params", "per_epoch", "trace", "trace_digest", "herd_version")
FIVE_TUPLE = ("src", "dst", "sport", "dport", "proto")


def result_metrics(d: Mapping[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """A result dict's metrics: everything but ``NOT_METRICS`` and ``drop``; nested dicts
    (a replay's coordinator counters) flattened to ``outer.inner`` keys."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key in NOT_METRICS or key in drop:
            continue
        if isinstance(value, Mapping):
            for inner, v in result_metrics(value).items():
                out[f"{key}.{inner}"] = v
        else:
            out[key] = value
    return out


def _elephants(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
               proto: np.ndarray, epoch: np.ndarray | None, detected_ns: np.ndarray | None,
               reports: np.ndarray | None, true_positive: np.ndarray) -> Iterator[Elephant]:
    """Elephant rows from columns (one ``tolist`` per column: no numpy scalar per field)."""
    n = len(src)
    none: list[None] = [None] * n
    cols = [np.asarray(c, np.int64).tolist() for c in (src, dst, sport, dport, proto)]
    eps = none if epoch is None else np.asarray(epoch, np.int64).tolist()
    det = none if detected_ns is None else np.asarray(detected_ns, np.int64).tolist()
    rep = none if reports is None else np.asarray(reports, np.int64).tolist()
    tps = np.asarray(true_positive, np.bool_).tolist()
    for s, d, sp, dp, pr, e, t, r, tp in zip(*cols, eps, det, rep, tps, strict=True):
        yield Elephant(s, d, sp, dp, pr, e, t, r, tp)


def simulation_elephants(prep: PreparedTrace, result: SimulationResult) -> Iterator[Elephant]:
    """The (flow, epoch) pairs a simulation detected as 5-tuples, with detection time (trace
    ns), report count (None for a detector without reports) and true positive. The epoch
    only with epochs (``--epoch-ms``)."""
    det = result.detection
    keys = np.asarray(det.keys, np.int64)
    flow = keys & 0xFFFFFFFF
    heavy = prep.truth(result.params, result.T).heavy_keys()
    tp = np.isin(keys, heavy, assume_unique=True)
    t = prep.trace
    epoch = keys >> 32 if result.params.epoch_ms > 0 else None
    return _elephants(t.flow_src[flow], t.flow_dst[flow], t.flow_sport[flow],
                      t.flow_dport[flow], t.flow_proto[flow], epoch, det.detect_ts,
                      det.reports, tp)


def coordinator_elephants(prep: PreparedTrace, params: Params, T: int,
                          columns: Mapping[str, np.ndarray]) -> Iterator[Elephant]:
    """A coordinator's elephants (columns ``src`` .. ``proto``, ``epoch``, ``detected_ns``
    and ``reports`` if known), each true positive iff its 5-tuple is a flow of the trace and
    heavy in that epoch (scored as ``herd.services.results`` scores them)."""
    from herd.services.results import trace_flows

    n = len(columns.get("src", ()))
    if n == 0:  # none detected (or none handed over)
        return iter(())
    five = [np.asarray(columns[f], np.uint32) for f in FIVE_TUPLE]
    epoch = np.asarray(columns.get("epoch", np.zeros(n, np.int64)), np.int64)
    idx, known = trace_flows(prep, columns)  # a 5-tuple the trace lacks is never heavy
    heavy = prep.truth(params, T).heavy_keys()
    tp = known & np.isin(pair_keys(epoch, np.where(known, idx, 0)), heavy)
    detected = columns.get("detected_ns")
    reports = columns.get("reports")
    return _elephants(*five, epoch if params.epoch_ms > 0 else None,
                      None if detected is None else np.asarray(detected, np.int64),
                      None if reports is None else np.asarray(reports, np.int64), tp)


def record_sweep_row(rec: Recorder, parent_id: int | None, prep: PreparedTrace, param: str,
                     row: Mapping[str, Any], runs: Sequence[SimulationResult],
                     trace: Mapping[str, str]) -> None:
    """One sweep row (one value, over its seeds: ``runs``) as a ``sweep_row`` child of the
    sweep: the first seed's parameters with the swept value (and its name under ``swept``),
    the CSV's metric columns; with one seed its per-epoch rows (with epochs) and elephants
    (with several they are each seed's: per-epoch rows in the sweep's JSON)."""
    from herd.sweep import EXTRA_COLUMNS, METRIC_COLUMNS

    if parent_id is None:
        return
    one = runs[0]
    params = {**one.params.to_dict(), "swept": param, param: row[param],
              "seeds": [r.params.seed for r in runs]}
    single = len(runs) == 1
    per_epoch = one.per_epoch if single and one.params.epoch_ms else ()
    rid = rec.begin("sweep_row", params, parent_id=parent_id, **trace)
    rec.finish(rid, {c: row.get(c) for c in (*METRIC_COLUMNS, *EXTRA_COLUMNS)}, per_epoch,
               simulation_elephants(prep, one) if single else None)


# A tuned point's summary (herd.tuning.Point.summary): these keys are its parameters, the
# rest what was measured.
POINT_PARAMS = ("algorithm", "s", "epsilon", "stages", "overflow_policy", "confirm",
                "confirm_reports", "q", "R")


def record_tune(rec: Recorder, run: RunHandle, base: Params, result: TuneResult) -> None:
    """Every point the search explored as a ``tune_point`` child (its full parameters; F1,
    precision, recall, states and messages over its seeds; whether it fits and is the one
    chosen), then the tune run itself: the chosen point and its expected scores."""
    from herd.tuning import point_params

    best = result.best
    for p in result.explored:
        summary = p.summary()
        params = {**point_params(base, p).to_dict(),
                  **{k: summary[k] for k in POINT_PARAMS if k in summary}}
        metrics = {k: v for k, v in summary.items() if k not in POINT_PARAMS}
        metrics.update(seeds=len(p.runs), chosen=p.config == best.config)
        rid = rec.begin("tune_point", params, parent_id=run.id,
                        trace_path=os.path.abspath(result.trace),
                        trace_sha256=result.trace_digest)
        rec.finish(rid, metrics)
    d = result.to_dict()
    metrics = result_metrics(d, drop=("explored", "modes", "budgets", "start"))
    for m in d["modes"]:  # each mode's best beside the winner's
        metrics[f"{m['mode']}.f1"] = m.get("f1")
    metrics["explored_points"] = len(result.explored)
    run.finish(metrics)


def figures_metrics(files: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """What ``herd figures`` made: the files (absolute paths), how many of each kind, and the
    data rows of its CSVs (the points behind the figures)."""
    paths = [os.path.abspath(f) for f in files]
    csvs = [p for p in paths if p.endswith(".csv")]
    rows = 0
    for p in csvs:
        with open(p, "rb") as f:
            rows += max(0, sum(1 for line in f if line.strip()) - 1)  # less the header
    return {"files": paths, "files_written": len(paths),
            "pngs": sum(p.endswith(".png") for p in paths), "csvs": len(csvs), "rows": rows}


# A replay's (or testbed row's) outputs that are files and directories, not measurements.
REPLAY_NOT_METRICS = ("delays_file", "coordinator_results", "workdir")


def replay_metrics(d: Mapping[str, Any]) -> dict[str, Any]:
    """``herd replay --json``'s metrics (the coordinator's counters and restarts flattened,
    ``coordinator.reports``, ...)."""
    return result_metrics(d, drop=REPLAY_NOT_METRICS)


def record_testbed_row(rec: Recorder, parent_id: int | None, prep: PreparedTrace,
                       params: Params, setting: Mapping[str, Any], out: Mapping[str, Any],
                       elephants: Mapping[str, np.ndarray], trace: Mapping[str, str]) -> None:
    """One testbed harness row as a ``testbed_row`` child of the ``testbed`` run: its
    parameters and setting (target, injection, pps, the swept value), the row's metrics as
    ``herd replay``'s plus the harness's (packets sent, lost, hops), per-epoch rows with
    epochs, and the coordinator's elephants."""
    if parent_id is None:
        return
    rid = rec.begin("testbed_row", {**params.to_dict(), **setting}, parent_id=parent_id,
                    **trace)
    rec.finish(rid, replay_metrics(out), out.get("per_epoch", ()) if params.epoch_ms else (),
               coordinator_elephants(prep, params, int(out["T"]), elephants)
               if elephants else ())
