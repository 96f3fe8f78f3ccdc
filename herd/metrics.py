"""Accuracy of a detection against the ground truth, and summaries of messages and memory."""

from __future__ import annotations

import csv
import io
import os
from typing import Any

import numpy as np

from herd.errors import HerdInputError
from herd.fileio import atomic_write
from herd.switch import SLOT_BYTES


def accuracy(tp: int, fp: int, fn: int) -> dict[str, Any]:
    """Precision, recall and F1 from true positives, false positives and false negatives.

    With no detections precision is 0 (1 if there was nothing to find); with no heavy
    hitters recall is 1.
    """
    tp, fp, fn = int(tp), int(fp), int(fn)
    precision = tp / (tp + fp) if tp + fp else (1.0 if fn == 0 else 0.0)
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "true_positives": tp,
        "false_positives": fp,
        "false_negatives": fn,
    }


def detection_delays_ms(detect_ts: np.ndarray, crossing_ts: np.ndarray
                        ) -> dict[str, float | None]:
    """Median and 95th percentile of (detection time - time the pair reached T packets) over
    the true positives given; negative when Herd detected a flow before it reached T."""
    both = crossing_ts != np.iinfo(np.int64).max
    if not np.any(both):
        return {"detection_delay_ms_p50": None, "detection_delay_ms_p95": None}
    d = (detect_ts[both] - crossing_ts[both]) / 1e6
    return {
        "detection_delay_ms_p50": float(np.percentile(d, 50)),
        "detection_delay_ms_p95": float(np.percentile(d, 95)),
    }


def message_summary(hellos: np.ndarray, reports: np.ndarray, overflows: np.ndarray,
                    pulls: np.ndarray | int = 0) -> dict[str, Any]:
    """Switch-to-controller messages, total and per switch; ``pulls``: confirm's pull
    messages (requests and answers) per switch."""
    pulls = np.broadcast_to(np.asarray(pulls, np.int64), np.shape(hellos))
    per_switch = (hellos + reports + overflows + pulls).astype(np.int64)
    return {
        "hellos": int(hellos.sum()),
        "reports": int(reports.sum()),
        "overflows": int(overflows.sum()),
        "pull_messages": int(pulls.sum()),
        "messages": int(per_switch.sum()),
        "max_messages_per_switch": int(per_switch.max()) if len(per_switch) else 0,
        "messages_per_switch": [int(x) for x in per_switch],
    }


def memory_summary(peak_states: np.ndarray, slots: int, slot_bytes: int = SLOT_BYTES
                   ) -> dict[str, Any]:
    """Peak occupied hash-table slots per switch, and what a switch's table takes in bytes
    (``slot_bytes`` a slot: herd.switch.SLOT_BYTES, SLOT_BYTES_CONFIRM with confirm)."""
    return {
        "max_states": int(peak_states.max()) if len(peak_states) else 0,
        "states_per_switch": [int(x) for x in peak_states],
        "slots_per_switch": int(slots),
        "slot_bytes": int(slot_bytes),
        "table_bytes_per_switch": int(slots) * int(slot_bytes),
    }


PER_EPOCH_COLUMNS = ("epoch", "start_ns", "packets", "heavy_hitters", "detected",
                     "true_positives", "false_positives", "false_negatives", "f1", "precision",
                     "recall", "messages", "max_states")


def per_epoch_rows(*, start_ns: np.ndarray, packets: np.ndarray, heavy: np.ndarray,
                   detected: np.ndarray, true_positives: np.ndarray, messages: np.ndarray,
                   max_states: np.ndarray) -> list[dict[str, Any]]:
    """One row per epoch (PER_EPOCH_COLUMNS), accuracy with ``accuracy``'s conventions."""
    rows = []
    for e in range(len(packets)):
        tp = int(true_positives[e])
        fp = int(detected[e]) - tp
        fn = int(heavy[e]) - tp
        a = accuracy(tp, fp, fn)
        rows.append({
            "epoch": e, "start_ns": int(start_ns[e]), "packets": int(packets[e]),
            "heavy_hitters": int(heavy[e]), "detected": int(detected[e]),
            "true_positives": tp, "false_positives": fp, "false_negatives": fn,
            "f1": a["f1"], "precision": a["precision"], "recall": a["recall"],
            "messages": int(messages[e]), "max_states": int(max_states[e]),
        })
    return rows


def per_epoch_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=PER_EPOCH_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def write_per_epoch_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """The per-epoch rows as CSV, written whole or not at all."""
    try:
        atomic_write(path, per_epoch_csv(rows))
    except OSError as e:
        raise HerdInputError(f"{path}: cannot write the per-epoch CSV ({e.strerror})") from None
