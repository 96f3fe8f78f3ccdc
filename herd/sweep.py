"""Parameter sweeps: simulate over a list of values (and seeds), write CSV and a plot.

The CSV starts with ``<parameter>,f1score,precision,recall`` (the layout earlier Herd
testbeds used), then messages, memory, T, R, seeds and the trace digest, and confirm's
columns (``--confirm``: its pull messages, candidates, confirmed and withdrawn flows, the
bytes a slot and a table take, C). A JSON file beside it (same name, ``.json``) records
every run's full result and the tool version.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from herd import __version__
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, SimulationResult, simulate
from herd.executor import Executor, LocalExecutor
from herd.fileio import atomic_write
from herd.params import Params

# Sweepable parameters: CSV/CLI name -> Params field.
SWEEP_PARAMS = {
    "epsilon": "epsilon",
    "sampling_probability": "s",
    "s": "s",
    "R": "R",
    "delay_ms": "delay_ms",
    "epoch_ms": "epoch_ms",
    "p": "p",
    "k": "k",
    "percentile": "percentile",
    "q": "q",
    "confirm": "confirm",
    "confirm_reports": "confirm_reports",
}
INT_PARAMS = {"R", "k", "confirm_reports"}
BOOL_PARAMS = {"confirm"}  # swept as 0 (off) and 1 (on)

METRIC_COLUMNS = ("f1score", "precision", "recall")
EXTRA_COLUMNS = (
    "f1score_std", "precision_std", "recall_std",
    "messages", "max_messages_per_switch", "hellos", "reports", "overflows",
    "max_states", "detected", "heavy_hitters", "T", "R", "epochs",
    "max_messages_per_switch_epoch",
    "pull_messages", "confirm_candidates", "confirmed", "withdrawn", "slot_bytes",
    "table_bytes_per_switch",
)
# Mean over the seeds where a run has them (the confirm counts only with --confirm).
MEAN_COLUMNS = ("messages", "max_messages_per_switch", "hellos", "reports", "overflows",
                "max_states", "detected", "heavy_hitters", "max_messages_per_switch_epoch",
                "pull_messages", "confirm_candidates", "confirmed", "withdrawn", "slot_bytes",
                "table_bytes_per_switch")
CONTEXT_COLUMNS = ("algorithm", "s", "epsilon", "k", "p", "stages", "delay_ms", "epoch_ms",
                   "confirm", "confirm_reports", "seeds", "trace", "trace_digest",
                   "herd_version")


def parse_values(param: str, text: str) -> list[float]:
    if param not in SWEEP_PARAMS:
        raise HerdInputError(f"--param {param}: not sweepable (one of {', '.join(SWEEP_PARAMS)})")
    values: list[float] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise HerdInputError(f"--values: {item!r} is not a number") from None
        if param in INT_PARAMS or param in BOOL_PARAMS:
            if v != int(v):
                raise HerdInputError(f"--values: {param} takes whole numbers, got {item}")
            v = int(v)
        if param in BOOL_PARAMS and v not in (0, 1):
            raise HerdInputError(f"--values: {param} takes 0 (off) or 1 (on), got {item}")
        values.append(v)
    if not values:
        raise HerdInputError("--values: no values given")
    return values


def read_layout(path: str | os.PathLike) -> tuple[str, list[float]]:
    """A sweep layout CSV: header ``<parameter>,f1score,precision,recall`` and one value per
    row (the format earlier Herd testbeds used). Returns (parameter, values)."""
    p = Path(path)
    try:
        rows = list(csv.reader(p.read_text().splitlines()))
    except FileNotFoundError:
        raise HerdInputError(f"{p}: layout file not found") from None
    except UnicodeDecodeError:
        raise HerdInputError(f"{p}: layout file is not text") from None
    if not rows or not rows[0]:
        raise HerdInputError(f"{p}: empty layout file, expected a header <parameter>,f1score,...")
    param = rows[0][0].strip()
    text = ",".join(r[0] for r in rows[1:] if r and r[0].strip())
    try:
        return param, parse_values(param, text)
    except HerdInputError as e:
        raise HerdInputError(f"{p}: {e}") from None


def params_for(base: Params, param: str, value: float, seed: int) -> Params:
    v: Any = bool(value) if param in BOOL_PARAMS else value
    return base.with_(**{SWEEP_PARAMS[param]: v, "seed": seed})


def simulate_task(prep: PreparedTrace, params: Params) -> SimulationResult:
    return simulate(prep, params)


def run_sweep(
    prep: PreparedTrace, base: Params, param: str, values: Sequence[float], seeds: int = 1,
    progress: Callable[[int, int], None] | None = None, executor: Executor | None = None,
    results: list[list[SimulationResult]] | None = None,
) -> list[dict[str, Any]]:
    """One row per value: mean (and std over seeds) of the metrics, plus the runs. Each
    (value, seed) simulation is a task of ``executor`` (default: one after another here).
    ``results``, if given, gets each row's simulations (the results store's elephants)."""
    if seeds < 1:
        raise HerdInputError(f"--seeds {seeds}: must be >= 1")
    if param == "confirm_reports" and not base.confirm:
        raise HerdInputError("--param confirm_reports: C only matters with --confirm")
    tasks = [params_for(base, param, value, base.seed + i) for value in values
             for i in range(seeds)]
    ex = LocalExecutor(prep) if executor is None else executor
    try:
        runs: list[SimulationResult] = ex.map(simulate_task, tasks, progress)
    finally:
        if executor is None:
            ex.close()
    # the executor keeps submission order: value by value, seed by seed
    per_value = [runs[j * seeds:(j + 1) * seeds] for j in range(len(values))]
    if results is not None:
        results.extend(per_value)
    return [summarise(param, value, r) for value, r in zip(values, per_value, strict=True)]


def summarise(param: str, value: float, runs: Sequence[SimulationResult]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        values = [r.metrics[key] for r in runs if key in r.metrics]
        return float(np.mean(values)) if values else None

    def std(key: str) -> float:
        return float(np.std([r.metrics[key] for r in runs]))

    first = runs[0]
    p = first.params
    row: dict[str, Any] = {
        param: value,
        "f1score": mean("f1"), "precision": mean("precision"), "recall": mean("recall"),
        "f1score_std": std("f1"), "precision_std": std("precision"), "recall_std": std("recall"),
    }
    for key in MEAN_COLUMNS:
        row[key] = mean(key)
    row.update({
        "T": first.T, "R": first.R, "algorithm": p.algorithm, "s": p.s, "epsilon": p.epsilon,
        "k": p.k, "p": p.p, "stages": "/".join(map(str, p.stages)), "delay_ms": p.delay_ms,
        "epoch_ms": p.epoch_ms, "epochs": first.metrics["epochs"], "confirm": p.confirm,
        "confirm_reports": p.confirm_reports if p.confirm else None,
        "seeds": ";".join(str(r.params.seed) for r in runs),
        "trace": first.trace_path, "trace_digest": first.trace_digest, "herd_version": __version__,
    })
    row["runs"] = [r.to_dict() for r in runs]
    return row


def csv_columns(param: str) -> list[str]:
    """The swept parameter first, then every other column once: the parameter is not
    repeated among the others, under its name or its Params field's (readers such as
    pandas would see ``epsilon`` and ``epsilon.1``)."""
    same = {param, SWEEP_PARAMS.get(param, param)}
    return [param, *(c for c in (*METRIC_COLUMNS, *EXTRA_COLUMNS, *CONTEXT_COLUMNS)
                     if c not in same)]


def csv_text(param: str, rows: Sequence[dict[str, Any]]) -> str:
    """The sweep CSV; a column a row lacks (e.g. a recorded run's) is left empty."""
    columns = csv_columns(param)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_fmt(row.get(c)) for c in columns])
    return out.getvalue()


def _fmt(v: Any) -> str:
    if v is None:  # a column this run has not (confirm's without --confirm)
        return ""
    if isinstance(v, float):
        if math.isfinite(v) and v == int(v) and abs(v) < 1e15:
            return str(int(v)) if not isinstance(v, bool) else str(v)
        return f"{v:.6g}"
    return str(v)


def write_results(csv_path: str | os.PathLike, param: str, rows: Sequence[dict[str, Any]],
                  meta: dict[str, Any]) -> Path:
    """The CSV and, beside it, ``<name>.json`` with parameters, digest, version and runs."""
    csv_path = Path(csv_path)
    json_path = csv_path.with_suffix(".json")
    atomic_write(json_path, json.dumps({**meta, "param": param, "rows": rows}, indent=1) + "\n")
    atomic_write(csv_path, csv_text(param, rows))
    return json_path


def plot_sweep(png_path: str | os.PathLike, param: str, rows: Sequence[dict[str, Any]],
               title: str) -> None:
    """F1 / precision / recall against the parameter, messages on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r[param] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for key, label, style in (("f1score", "F1", "o-"), ("precision", "precision", "s--"),
                              ("recall", "recall", "^--")):
        y = np.array([r[key] for r in rows])
        err = np.array([r.get(f"{key}_std", 0.0) for r in rows])
        ax.errorbar(x, y, yerr=err if err.any() else None, fmt=style, label=label, capsize=3)
    ax.set_xlabel(param)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(x, [r["messages"] for r in rows], "k:", marker="x", label="messages (all switches)")
    ax2.set_ylabel("messages")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="lower left", fontsize=8)
    ax.set_title("\n".join(textwrap.wrap(title, 80)), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(png_path, buf.getvalue())


def sweep_title(trace_path: str, param: str, rows: Sequence[dict[str, Any]]) -> str:
    r = rows[0]
    fixed = {"epsilon": r["epsilon"], "s": r["s"], "k": r["k"], "p": r["p"],
             "stages": r["stages"], "delay_ms": r["delay_ms"]}
    if r.get("epoch_ms"):
        fixed["epoch_ms"] = r["epoch_ms"]
    if r.get("confirm") and param != "confirm":
        fixed["confirm C"] = r["confirm_reports"]
    fixed.pop(SWEEP_PARAMS.get(param, param), None)
    fixed_text = ", ".join(f"{k}={v}" for k, v in fixed.items())
    R_text = "R=round(1/epsilon)" if param == "epsilon" else f"R={r['R']}"
    return f"{Path(trace_path).name}: T={r['T']}, {R_text}, {fixed_text}"


def stderr_progress(label: str) -> Callable[[int, int], None] | None:
    """A tqdm progress callback on an interactive terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=label, unit="run", file=sys.stderr))
        bar[0].update(done - bar[0].n)
        if done == total:
            bar[0].close()

    return update
