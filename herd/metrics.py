"""Accuracy of a detection against the ground truth, and summaries of messages and memory."""

from __future__ import annotations

from typing import Any

import numpy as np


def accuracy(detected: np.ndarray, heavy: np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of a detected-flow mask against the heavy-hitter mask.

    With no detections precision is 0 (1 if there was nothing to find); with no heavy
    hitters recall is 1.
    """
    tp = int(np.count_nonzero(detected & heavy))
    fp = int(np.count_nonzero(detected & ~heavy))
    fn = int(np.count_nonzero(~detected & heavy))
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


def detection_delays_ms(detect_ts: np.ndarray, crossing_ts: np.ndarray,
                        true_positive: np.ndarray) -> dict[str, float | None]:
    """Median and 95th percentile of (detection time - time the flow reached T packets) over
    the true positives; negative when Herd detected a flow before it reached T."""
    both = true_positive & (crossing_ts != np.iinfo(np.int64).max)
    if not np.any(both):
        return {"detection_delay_ms_p50": None, "detection_delay_ms_p95": None}
    d = (detect_ts[both] - crossing_ts[both]) / 1e6
    return {
        "detection_delay_ms_p50": float(np.percentile(d, 50)),
        "detection_delay_ms_p95": float(np.percentile(d, 95)),
    }


def message_summary(hellos: np.ndarray, reports: np.ndarray,
                    overflows: np.ndarray) -> dict[str, Any]:
    """Switch-to-controller messages, total and per switch."""
    per_switch = (hellos + reports + overflows).astype(np.int64)
    return {
        "hellos": int(hellos.sum()),
        "reports": int(reports.sum()),
        "overflows": int(overflows.sum()),
        "messages": int(per_switch.sum()),
        "max_messages_per_switch": int(per_switch.max()) if len(per_switch) else 0,
        "messages_per_switch": [int(x) for x in per_switch],
    }


def memory_summary(peak_states: np.ndarray, slots: int) -> dict[str, Any]:
    """Peak occupied hash-table slots per switch."""
    return {
        "max_states": int(peak_states.max()) if len(peak_states) else 0,
        "states_per_switch": [int(x) for x in peak_states],
        "slots_per_switch": int(slots),
    }
