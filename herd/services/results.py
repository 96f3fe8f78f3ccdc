"""A coordinator's elephants scored against the trace that was replayed.

The coordinator knows flows by 5-tuple and epoch; the trace's ground truth knows them by
flow index and epoch. :func:`elephant_detection` maps one onto the other, and
:func:`score_results` scores the coordinator's results file (``herd coordinator
--results``, written at shutdown) the way ``herd simulate`` scores itself: precision,
recall and F1 over the (flow, epoch) pairs, per epoch too. Elephants whose 5-tuple is not in
the trace (another trace's, or traffic the trace does not hold) count as false positives.
With confirm (the results' params say so) each elephant says whether R reports found it
before the pull (``early``); the detections keep that, for delays split the simulator's way.

    herd score --results results.json --trace PCAP [--T T] [--epoch-ms W]
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from herd.errors import HerdInputError
from herd.groundtruth import pair_keys
from herd.params import Params
from herd.prepared import Detection, PreparedTrace, score
from herd.services.flowtable import FlowTable

FIELDS = ("src", "dst", "sport", "dport", "proto", "epoch", "detected_ns")
_FOREIGN = np.int64(1) << 31  # flow indices for pairs not in the trace: never heavy


def trace_flows(prep: PreparedTrace, columns: Mapping[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The trace's flow index of each 5-tuple (columns ``src`` .. ``proto``), and whether
    the trace has it at all (a 5-tuple it lacks: another trace's, or foreign traffic)."""
    t = prep.trace
    table = FlowTable(max(1, t.flows))
    table.index(t.flow_src, t.flow_dst, t.flow_sport, t.flow_dport, t.flow_proto)
    idx = np.asarray(table.index(*(np.asarray(columns[f], np.uint32) for f in FIELDS[:5])),
                     np.int64)
    return idx, (idx >= 0) & (idx < t.flows)


def elephant_detection(prep: PreparedTrace, columns: dict[str, np.ndarray]) -> Detection:
    """The detected (flow, epoch) pairs of elephants given as columns (``FIELDS``, and
    ``early`` with confirm)."""
    early = columns.get("early")
    if len(columns["src"]) == 0:
        return Detection(np.zeros(0, np.int64), np.zeros(0, np.int64),
                         early=None if early is None else np.zeros(0, np.bool_))
    idx, known = trace_flows(prep, columns)
    # A 5-tuple the trace lacks still is a detection: a distinct index of its own.
    foreign = _FOREIGN + np.arange(len(idx), dtype=np.int64)
    flow = np.where(known, idx.astype(np.int64), foreign)
    keys = pair_keys(np.asarray(columns["epoch"], np.int64), flow)
    detect_ts = np.asarray(columns["detected_ns"], np.int64)
    keys, first = np.unique(keys, return_index=True)  # a pair once, at its first detection
    return Detection(keys, detect_ts[first],
                     early=None if early is None else np.asarray(early, np.bool_)[first])


def read_results(path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise HerdInputError(f"{path}: results file not found") from None
    except (OSError, ValueError) as e:
        raise HerdInputError(f"{path}: not a coordinator results file ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("elephants"), list):
        raise HerdInputError(f"{path}: not a coordinator results file (no 'elephants' list)")
    return data


def elephant_columns(elephants: Sequence[dict[str, Any]], source: str) -> dict[str, np.ndarray]:
    out = {}
    for f in FIELDS:
        try:
            # detected_ns may be null (not timed): only the delays, dropped here, use it
            out[f] = np.array([int(x[f]) if f != "detected_ns" else int(x.get(f) or 0)
                               for x in elephants], np.int64)
        except (KeyError, TypeError, ValueError):
            raise HerdInputError(f"{source}: an elephant lacks a valid {f!r}") from None
    return out


def score_results(prep: PreparedTrace, params: Params, results: dict[str, Any],
                  source: str = "results") -> dict[str, Any]:
    """The coordinator's elephants against the trace's ground truth under ``params`` (T,
    epoch length): the keys of ``herd simulate --json`` that do not need the switches."""
    columns = elephant_columns(results["elephants"], source)
    if (results.get("params") or {}).get("confirm"):
        columns["early"] = np.array([bool(x.get("early")) for x in results["elephants"]],
                                    np.bool_)
    detection = elephant_detection(prep, columns)
    T = prep.threshold(params)
    E = prep.truth(params, T).epochs
    metrics, per_epoch = score(prep, params, T, params.reports_needed, detection,
                               np.zeros(E, np.int64), np.zeros(E, np.int64))
    for row in per_epoch:  # not in a results file
        row.pop("messages", None)
        row.pop("max_states", None)
    for key in [k for k in metrics if "detection_delay" in k]:
        metrics.pop(key)  # wall clock against trace time: meaningless
    foreign = int(((detection.keys & 0xFFFFFFFF) >= _FOREIGN).sum())
    return {"T": T, **metrics, "not_in_trace": foreign,
            "trace": [str(p) for p in prep.trace.paths], "trace_digest": prep.trace.digest,
            "params": params.to_dict(), "per_epoch": per_epoch}
