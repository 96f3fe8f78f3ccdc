"""What every detector's run over a trace shares: the prepared trace (per-flow hashes, ground
truth per epoch, T) and the result, scored over (flow, epoch) pairs.

Herd's simulator (``herd.simulator``) and the baselines (``herd.baselines``) both build on this
module; ``herd.evaluate.simulate`` dispatches between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from herd import __version__
from herd.coordinator import NOT_DETECTED
from herd.errors import HerdInputError
from herd.groundtruth import (
    EpochCounts,
    count_pairs,
    crossing_times,
    epoch_ns_of,
    packet_epochs,
    pair_keys,
)
from herd.hashing import flow_slots
from herd.loadbalancer import assign_ingress, ingress_pair, lb_seed
from herd.metrics import accuracy, detection_delays_ms, per_epoch_rows
from herd.params import Params
from herd.prng import probability_threshold
from herd.switch import stage_layout
from herd.trace import Trace

# Columns of PreparedTrace.flow_records after the stage slots: fingerprint, then the group
# with the flow's ingress switches: group | primary << 16 | secondary << 24 when k <= 256
# (one word: four bytes a flow less), else group, then primary << 16 | secondary.
REC_FP = 0
REC_GROUP = 1
REC_INGRESS = 2
PACKED_K = 256


@njit(cache=True)
def _fill_flow_records(src: np.ndarray, dst: np.ndarray, sport: np.ndarray, dport: np.ndarray,
                       proto: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, k: int,
                       rec: np.ndarray) -> None:
    """``PreparedTrace.flow_records`` in one pass, with no per-flow temporaries."""
    n = len(sizes)
    row = np.empty(n, np.int64)
    for f in range(len(src)):
        rec[f, n + REC_FP] = flow_slots(src[f], dst[f], sport[f], dport[f], proto[f], offsets,
                                        sizes, row)
        for i in range(n):
            rec[f, i] = row[i]
        g = ((src[f] >> 24) << 8) | (dst[f] >> 24)  # messages.group_of
        primary, secondary = ingress_pair(src[f], k)
        if k <= PACKED_K:
            rec[f, n + REC_GROUP] = g | (primary << 16) | (secondary << 24)
        else:
            rec[f, n + REC_GROUP] = g
            rec[f, n + REC_INGRESS] = (primary << 16) | secondary


class PreparedTrace:
    """A trace plus what every run over it shares (flow hashes, ground truth, T, ingress),
    computed once per distinct setting so that sweeps and tuning pay for it once."""

    def __init__(self, trace: Trace) -> None:
        if trace.packets == 0:
            raise HerdInputError(f"{trace.paths[0]}: trace holds no IPv4 packets to simulate")
        self.trace = trace
        self._flow_group: np.ndarray | None = None
        self._records: dict[tuple[Any, ...], np.ndarray] = {}
        self._ingress: dict[tuple[int, float, int], np.ndarray] = {}
        self._crossing: dict[int, np.ndarray] = {}
        self._epochs: dict[tuple[int, int], EpochCounts] = {}
        self._pairs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def flow_group(self) -> np.ndarray:
        """The group of every flow (int32)."""
        if self._flow_group is None:
            self._flow_group = self.trace.group_of_flow().astype(np.int32)
        return self._flow_group

    @property
    def given_ingress(self) -> bool:
        """Whether the trace says each packet's ingress switch (one file per switch)."""
        return self.trace.has_ingress

    # ---------------------------------------------------------------- ground truth

    def epoch_counts(self, epoch_ms: float, T: int = 0) -> EpochCounts:
        """Packets, flows and the pair-size histogram per epoch (and with T > 0 the heavy
        pairs) for epochs of ``epoch_ms``."""
        key = (epoch_ns_of(epoch_ms), T)
        if key not in self._epochs:
            self._epochs[key] = count_pairs(self.trace, key[0], T)
        return self._epochs[key]

    def threshold(self, params: Params) -> int:
        """T: given, or floor(percentile of the (flow, epoch) sizes)."""
        if params.T is not None:
            return params.T
        return self.epoch_counts(params.epoch_ms).threshold(params.percentile)

    def truth(self, params: Params, T: int) -> EpochCounts:
        return self.epoch_counts(params.epoch_ms, T)

    # ---------------------------------------------------------------- per flow

    def flow_records(self, stages: tuple[int, ...], k: int) -> np.ndarray:
        """Per flow one row: its slot in each stage, then fingerprint, group and ingress
        switches (see REC_*). One row, so that a packet costs the simulator one cache line of
        flow state."""
        key = (stages, k)
        if key not in self._records:
            offsets, sizes = stage_layout(stages)
            t = self.trace
            rec = np.empty((t.flows, len(stages) + (2 if k <= PACKED_K else 3)), np.uint32)
            _fill_flow_records(t.flow_src, t.flow_dst, t.flow_sport, t.flow_dport,
                               t.flow_proto, offsets, sizes, k, rec)
            self._records[key] = rec
        return self._records[key]

    # ---------------------------------------------------------------- per packet (in memory)

    def ingress(self, k: int, p: float, seed: int) -> np.ndarray:
        """Per packet ingress switch: the trace's own (one file per switch) or the load
        balancer's. A whole-trace array: for the baselines and measured timing."""
        t = self.trace
        if self.given_ingress:
            if int(t.ingress.max()) >= k:
                raise HerdInputError(
                    f"parameter k={k}: the trace has {int(t.ingress.max()) + 1} ingress files")
            return t.ingress
        key = (k, p, seed)
        if key not in self._ingress:
            self._ingress[key] = assign_ingress(t.src, k, probability_threshold(p), lb_seed(seed))
        return self._ingress[key]

    def crossing(self, T: int) -> np.ndarray:
        """When each flow reached T packets over the whole trace (one epoch)."""
        if T not in self._crossing:
            t = self.trace
            self._crossing[T] = crossing_times(t.flow, t.ts_ns, t.flows, T)
        return self._crossing[T]

    def pairs(self, epoch_ms: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pair of every packet, flow of every pair, epoch of every pair): the trace's
        (flow, epoch) pairs numbered by first appearance. With one epoch a pair is a flow.
        A whole-trace array: for the baselines, which count pairs as Herd counts flows."""
        W = epoch_ns_of(epoch_ms)
        if W not in self._pairs:
            t = self.trace
            if W == 0:
                self._pairs[W] = (t.flow, np.arange(t.flows, dtype=np.int64),
                                  np.zeros(t.flows, np.int64))
            else:
                epoch = packet_epochs(t.ts_ns, t.first_ts, W)
                keys = pair_keys(epoch, t.flow)
                uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
                order = np.argsort(first, kind="stable")
                renumber = np.empty(len(order), np.int64)
                renumber[order] = np.arange(len(order))
                uniq = uniq[order]
                self._pairs[W] = (renumber[inverse], uniq & 0xFFFFFFFF, uniq >> 32)
        return self._pairs[W]


# ------------------------------------------------------------------------------------------
# results


@dataclass
class Detection:
    """The (flow, epoch) pairs a detector called elephants, scored against the truth."""

    keys: np.ndarray  # int64 pair keys (epoch << 32 | flow), ascending
    detect_ts: np.ndarray  # int64 per detected pair
    # For choosing R after a run (tuning), where the detector counts reports: how many
    # heavy pairs had n reports ([n], 0 included) and how many other pairs.
    reports_heavy: np.ndarray | None = None
    reports_other: np.ndarray | None = None
    # Herd + confirm: per detected pair, whether R reports found it before the pull (else
    # the pull did). None without confirm.
    early: np.ndarray | None = None
    # Herd + confirm, for choosing C after a run (herd.tuning), as reports_* serve R: per
    # report count n, how many heavy and other pairs the pulls confirmed, and per pull how
    # many of the epoch's pairs had n reports (whom a pull at any C asks). Right for every
    # C' >= min(C, R) of the run, so run with C = 1. None without confirm.
    confirmed_heavy: np.ndarray | None = None
    confirmed_other: np.ndarray | None = None
    pulled: list[np.ndarray] | None = None
    # Per detected pair, the reports counted for it (the results store's elephants); None
    # for a detector that sends no reports.
    reports: np.ndarray | None = None


class ReportTally:
    """Counted reports reduced to what a result keeps: the detected pairs and, per report
    count, how many heavy and other pairs had it. Fed (keys, report counts, detection times)
    of disjoint groups of pairs (``herd.coordinator.count_reports``), e.g. epoch by epoch,
    so that a long run keeps neither every report nor every reported pair."""

    def __init__(self, heavy_keys: np.ndarray, R: int) -> None:
        self.heavy = heavy_keys
        self.R = R
        self.detected: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.confirm = False
        self.hist_heavy = np.zeros(1, np.int64)
        self.hist_other = np.zeros(1, np.int64)
        # confirm only (Detection.confirmed_*, pulled)
        self.confirmed_heavy = np.zeros(1, np.int64)
        self.confirmed_other = np.zeros(1, np.int64)
        self.pulled: list[np.ndarray] = []

    def add(self, keys: np.ndarray, counts: np.ndarray, detect_ts: np.ndarray,
            detected: np.ndarray | None = None) -> None:
        """``detected``: the pairs called elephants, where not those with >= R reports
        (confirm)."""
        if detected is not None:
            self.confirm = True
        hit = counts >= self.R if detected is None else detected
        self.detected.append((keys[hit], detect_ts[hit], counts[hit] >= self.R, counts[hit]))
        is_heavy = np.isin(keys, self.heavy, assume_unique=True)
        self.hist_heavy = _add_hist(self.hist_heavy, counts[is_heavy])
        self.hist_other = _add_hist(self.hist_other, counts[~is_heavy])
        if detected is not None:  # a pull: what it confirmed and whom it could ask
            self.confirmed_heavy = _add_hist(self.confirmed_heavy, counts[detected & is_heavy])
            self.confirmed_other = _add_hist(self.confirmed_other, counts[detected & ~is_heavy])
            self.pulled.append(np.bincount(counts) if len(counts) else np.zeros(1, np.int64))

    def detection(self) -> Detection:
        def joined(i: int, dtype: type) -> np.ndarray:
            parts = [d[i] for d in self.detected]
            return np.concatenate(parts) if parts else np.zeros(0, dtype)

        keys, ts, early = joined(0, np.int64), joined(1, np.int64), joined(2, np.bool_)
        reports = joined(3, np.int64)
        order = np.argsort(keys, kind="stable")
        heavy = self.hist_heavy.copy()
        heavy[0] = len(self.heavy) - heavy[1:].sum()  # heavy pairs without a report
        if not self.confirm:
            return Detection(keys[order], ts[order], heavy, self.hist_other.copy(),
                             reports=reports[order])
        return Detection(keys[order], ts[order], heavy, self.hist_other.copy(), early[order],
                         self.confirmed_heavy.copy(), self.confirmed_other.copy(),
                         list(self.pulled), reports[order])


def _add_hist(hist: np.ndarray, values: np.ndarray) -> np.ndarray:
    add = np.bincount(values, minlength=len(hist)) if len(values) else np.zeros(1, np.int64)
    if len(add) > len(hist):
        add[: len(hist)] += hist
        return add
    hist[: len(add)] += add
    return hist


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
    flows: int
    detection: Detection = field(repr=False)
    per_epoch: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def f1(self) -> float:
        return float(self.metrics["f1"])

    @property
    def detected(self) -> np.ndarray:
        """Per flow: detected in some epoch."""
        out = np.zeros(self.flows, np.bool_)
        out[(self.detection.keys & 0xFFFFFFFF).astype(np.int64)] = True
        return out

    @property
    def detect_ts(self) -> np.ndarray:
        """Per flow: when it was first detected (NOT_DETECTED if never)."""
        out = np.full(self.flows, NOT_DETECTED, np.int64)
        flows = (self.detection.keys & 0xFFFFFFFF).astype(np.int64)
        np.minimum.at(out, flows, self.detection.detect_ts)
        return out

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
            "per_epoch": self.per_epoch,
        }


def score(prep: PreparedTrace, params: Params, T: int, R: int, detection: Detection,
          epoch_messages: np.ndarray, epoch_states: np.ndarray) -> tuple[dict[str, Any],
                                                                         list[dict[str, Any]]]:
    """Precision, recall and F1 micro-averaged over the (flow, epoch) pairs, the detection
    delays of the true positives, and the per-epoch rows."""
    truth = prep.truth(params, T)
    heavy = truth.heavy_keys()
    tp_mask = np.isin(detection.keys, heavy, assume_unique=True)
    n_heavy = len(heavy)
    n_det = len(detection.keys)
    n_tp = int(tp_mask.sum())
    metrics: dict[str, Any] = {
        "epochs": truth.epochs,
        "epoch_ms": params.epoch_ms,
        "heavy_hitters": n_heavy,
        "detected": n_det,
        **accuracy(n_tp, n_det - n_tp, n_heavy - n_tp),
    }
    assert truth.heavy_cross_ts is not None
    cross = truth.heavy_cross_ts[np.searchsorted(heavy, detection.keys[tp_mask])]
    metrics.update(detection_delays_ms(detection.detect_ts[tp_mask], cross))
    if detection.early is not None:  # confirm: early and confirmed detections apart
        early = detection.early[tp_mask]
        for name, sel in (("early", early), ("confirmed", ~early)):
            delays = detection_delays_ms(detection.detect_ts[tp_mask][sel], cross[sel])
            metrics.update({k.replace("detection_delay", f"{name}_detection_delay"): v
                            for k, v in delays.items()})
            metrics[f"{name}_true_positives"] = int(np.count_nonzero(sel))
    E = truth.epochs
    det_epoch = (detection.keys >> 32).astype(np.int64)
    rows = per_epoch_rows(
        start_ns=truth.epoch_start_ns(),
        packets=truth.epoch_packets,
        heavy=truth.heavy_per_epoch(),
        detected=np.bincount(det_epoch, minlength=E)[:E],
        true_positives=np.bincount(det_epoch[tp_mask], minlength=E)[:E],
        messages=epoch_messages[:E],
        max_states=epoch_states[:E],
    )
    return metrics, rows
