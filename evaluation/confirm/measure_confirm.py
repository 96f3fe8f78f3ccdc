"""Herd + confirm against tuned Herd within the same per-switch budgets (issue 10, item 5).

    .venv/bin/python evaluation/confirm/measure_confirm.py [--out evaluation/confirm]
        [--data /work/shared/data] [--work /tmp/herd-confirm-traces] [--workers N] [--only NAME]

On real-derived traces - the bundled CAIDA samples (read where they lie, never copied) and
synthetic traces built from the CAIDA 2016 flow-size facts (``herd.synth``, written into
--work) - and for each trace four budget pairs relative to the trace (S = D/4 and D slots of
12 bytes, C = 2H and 4H messages, D and H the busiest switch's distinct flows and hellos, per
epoch with epochs), it measures:

1. **tuned on the trace**: ``herd tune`` with confirm off and on (``tune(modes=(False,
   True))``: the same S x 12 bytes and C messages, pulls counted) - each mode's F1, messages,
   bytes, parameters, and the lead of Herd + confirm;
2. **tuned on the first half, evaluated on the second** (``tuning.split_trace``; T from each
   half's own flows): each mode's tuned parameters simulated on the second half over fresh
   seeds, with the budgets checked there;
3. **the choice of C**: Herd + confirm at the default s = 0.2 and table, for epsilon 0.05,
   0.1, 0.2 (R = round(1/epsilon)), F1 and pull messages for every C = 1..8 (one run at
   C = 1 per seed gives every C: ``tuning.summarise_confirm``), and the C each tuning chose.

Writes ``confirm_vs_herd.json`` (every number, the commands, versions and trace digests),
``confirm_vs_herd.md`` (the tables) and ``confirm_vs_herd.png`` / ``f1_vs_C.png`` into --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from herd import __version__  # noqa: E402
from herd.coordinator import pull_messages  # noqa: E402
from herd.evaluate import PreparedTrace, SimulationResult, simulate  # noqa: E402
from herd.groundtruth import epoch_ns_of, packet_epochs  # noqa: E402
from herd.params import Params  # noqa: E402
from herd.switch import SLOT_BYTES, slot_bytes  # noqa: E402
from herd.synth import write_synthetic_pcap  # noqa: E402
from herd.trace import Trace, load_trace  # noqa: E402
from herd.tuning import (  # noqa: E402
    Config,
    ModeResult,
    make_point,
    point_params,
    run_config,
    split_trace,
    tune,
)

C_VALUES = tuple(range(1, 9))
C_EPSILONS = (0.05, 0.1, 0.2)
SMALL_TRACE = 10_000  # packets: below, a handful of heavy hitters - more seeds
# The default C: the largest C within C_TOLERANCE of F1 of the best C on every trace whose
# heavy hitters resolve it (C_RESOLVING of them: one flow is 1/200 of F1 at 100).
C_TOLERANCE = 0.005
C_RESOLVING = 100


@dataclass(frozen=True)
class TraceSpec:
    name: str
    source: str  # "caida" (a file in --data) or "synth"
    file: str = ""
    packets: int = 0
    seed: int = 0
    epoch_ms: float = 0.0


TRACES = (
    TraceSpec("caida2016-500", "caida", file="caida2016-500.pcap"),
    TraceSpec("caida2018-sample", "caida", file="caida2018-sample.pcapng"),
    TraceSpec("synth-400k-s1", "synth", packets=400_000, seed=1),
    TraceSpec("synth-400k-s2", "synth", packets=400_000, seed=2),
    TraceSpec("synth-400k-s3", "synth", packets=400_000, seed=3),
    TraceSpec("synth-1M-s4", "synth", packets=1_000_000, seed=4),
    TraceSpec("synth-2M-s5-W1000", "synth", packets=2_000_000, seed=5, epoch_ms=1000.0),
)


def trace_path(spec: TraceSpec, data: Path, work: Path) -> Path:
    if spec.source == "caida":
        return data / spec.file  # read in place: the samples are never copied
    path = work / f"{spec.name}.pcap"
    if not path.exists():
        work.mkdir(parents=True, exist_ok=True)
        write_synthetic_pcap(path, spec.packets, seed=spec.seed)
    return path


def scale(prep: PreparedTrace, base: Params) -> tuple[int, int]:
    """(D, H): the most distinct flows and the most hellos of one switch in one epoch (the
    whole trace without epochs), at the base seed - what the budgets are relative to."""
    t = prep.trace
    sw = prep.ingress(base.k, base.p, base.seed).astype(np.int64)
    W = epoch_ns_of(base.epoch_ms)
    epoch = packet_epochs(t.ts_ns, t.first_ts, W) if W else np.zeros(t.packets, np.int64)
    cells = sw * (int(epoch.max()) + 1) + epoch
    flows = np.unique(cells * t.flows + t.flow)
    D = int(np.bincount(flows // t.flows).max())
    group = prep.flow_group.astype(np.int64)[t.flow]
    # A hello goes out at a group's first packet on a switch (no delay: once per group).
    key = sw * (1 << 16) + group
    _, first = np.unique(key, return_index=True)
    H = int(np.bincount(cells[first]).max())
    return D, H


def budgets(D: int, H: int) -> list[tuple[int, int]]:
    return [(max(1, D // 4), 2 * H), (max(1, D // 4), 4 * H), (D, 2 * H), (D, 4 * H)]


def mode_row(m: ModeResult) -> dict[str, Any]:
    if m.best is None:
        return {"fits": False, "note": m.note}
    b = m.best
    c = b.config
    return {
        "fits": True, "f1": b.f1, "f1_std": b.f1_std, "precision": b.precision,
        "recall": b.recall, "messages": b.max_messages, "pull_messages": b.pull_messages,
        "states": b.max_states, "states_bytes": b.max_states * slot_bytes(c.confirm),
        "table_slots": sum(c.stages), "table_bytes": c.table_bytes,
        "slot_bytes": slot_bytes(c.confirm), "s": c.s, "epsilon": c.epsilon, "R": b.R,
        "C": b.C, "stages": list(c.stages), "overflow_policy": c.overflow_policy,
        "seeds": m.seeds,
    }


def epoch_pulls(result: SimulationResult) -> int:
    """The most pull messages one switch got and answered in one epoch (every switch gets
    the same pull): the coordinator's rule over each pull's candidates."""
    d, p = result.detection, result.params
    if d.pulled is None:
        return 0
    least = min(p.confirm_reports, result.R)  # herd.coordinator.confirm_candidates
    return max((int(pull_messages(int(h[least:].sum()))) for h in d.pulled), default=0)


def held_out(second: PreparedTrace, params: Params, seeds: list[int], memory: int,
             messages: int) -> dict[str, Any]:
    """The tuned parameters on the second half, every seed, budgets checked there."""
    results = [simulate(second, params.with_(seed=s)) for s in seeds]
    runs = [r.metrics for r in results]
    f1 = [m["f1"] for m in runs]
    msgs = max(m["max_messages_per_switch_epoch"] for m in runs)
    states = max(m["max_states"] for m in runs)
    sb = slot_bytes(params.confirm)
    return {
        "f1": float(np.mean(f1)), "f1_std": float(np.std(f1)),
        "precision": float(np.mean([m["precision"] for m in runs])),
        "recall": float(np.mean([m["recall"] for m in runs])),
        "messages": int(msgs), "pull_messages": max(epoch_pulls(r) for r in results),
        "states": int(states), "states_bytes": int(states) * sb,
        "table_bytes": sum(params.stages) * sb,
        "within_messages": msgs <= messages,
        "within_memory": sum(params.stages) * sb <= memory * SLOT_BYTES
        and states * sb <= memory * SLOT_BYTES,
        "heavy_hitters": runs[0]["heavy_hitters"], "T": results[0].T, "seeds": seeds,
    }


def compare_at(prep: PreparedTrace, halves: tuple[PreparedTrace, PreparedTrace], base: Params,
               memory: int, messages: int, seeds: int, eval_seeds: list[int],
               workers: int | None) -> dict[str, Any]:
    """Both modes tuned on the trace, and tuned on the first half, evaluated on the second."""
    row: dict[str, Any] = {"memory": memory, "memory_bytes": memory * SLOT_BYTES,
                           "messages": messages}
    full = tune(prep, base, memory, messages, seeds=seeds, workers=workers)
    row["tuned"] = {m.space.name: mode_row(m) for m in full.modes}
    row["winner"] = "herd+confirm" if full.params.confirm else "herd"
    first, second = halves
    half = tune(first, base, memory, messages, seeds=seeds, workers=workers)
    row["tuned_first_half"] = {m.space.name: mode_row(m) for m in half.modes}
    row["second_half"] = {
        m.space.name: held_out(second, point_params(base, m.best), eval_seeds, memory,
                               messages) if m.best is not None else {"fits": False}
        for m in half.modes}
    for key in ("tuned", "second_half"):
        h, c = row[key]["herd"], row[key]["herd+confirm"]
        row[f"lead_{key}"] = c["f1"] - h["f1"] if "f1" in h and "f1" in c else None
    return row


def c_study(prep: PreparedTrace, base: Params, seeds: list[int]) -> list[dict[str, Any]]:
    """F1 and pull messages against C at the default s and table, per epsilon."""
    out = []
    for eps in C_EPSILONS:
        cfg = Config(base.s, eps, base.stages, confirm=True)
        runs = [run_config(prep, base, cfg, s) for s in seeds]
        for C in C_VALUES:
            p = make_point(cfg, runs, float("inf"), float("inf"), C=C)
            out.append({"epsilon": eps, "R": max(1, round(1 / eps)), "C": C, "f1": p.f1,
                        "f1_std": p.f1_std, "precision": p.precision, "recall": p.recall,
                        "pull_messages": p.pull_messages, "messages": p.max_messages})
        herd = make_point(Config(base.s, eps, base.stages), [run_config(
            prep, base, Config(base.s, eps, base.stages), s) for s in seeds], float("inf"),
            float("inf"), R=max(1, round(1 / eps)))
        out.append({"epsilon": eps, "R": max(1, round(1 / eps)), "C": None, "f1": herd.f1,
                    "f1_std": herd.f1_std, "precision": herd.precision,
                    "recall": herd.recall, "pull_messages": 0, "messages": herd.max_messages})
    return out


def measure_trace(spec: TraceSpec, data: Path, work: Path, workers: int | None
                  ) -> dict[str, Any]:
    path = trace_path(spec, data, work)
    t: Trace = load_trace(path)
    base = Params(epoch_ms=spec.epoch_ms)
    prep = PreparedTrace(t)
    small = t.packets < SMALL_TRACE
    seeds = 10 if small else 3
    eval_seeds = list(range(1, 21 if small else 7))
    D, H = scale(prep, base)
    half = t.packets // 2
    halves = (PreparedTrace(split_trace(t, 0, half)), PreparedTrace(split_trace(t, half,
                                                                               t.packets)))
    started = time.perf_counter()
    rows = []
    for memory, messages in budgets(D, H):
        rows.append(compare_at(prep, halves, base, memory, messages, seeds, eval_seeds,
                               workers))
        r = rows[-1]
        print(f"{spec.name} S={memory} C={messages}: lead {r['lead_tuned']} tuned, "
              f"{r['lead_second_half']} second half", file=sys.stderr)
    return {
        "name": spec.name, "path": str(path), "source": spec.source, "digest": t.digest,
        "packets": t.packets, "flows": t.flows, "epoch_ms": spec.epoch_ms,
        "T": prep.threshold(base), "heavy_hitters": int(simulate(prep, base).metrics[
            "heavy_hitters"]), "D": D, "H": H, "tune_seeds": seeds,
        "eval_seeds": eval_seeds, "budgets": rows,
        "c_study": c_study(prep, base, list(range(1, 21 if small else 6))),
        "seconds": time.perf_counter() - started,
    }


# ------------------------------------------------------------------------------------------
# the default C, from the study


def _shortfalls(traces: list[dict[str, Any]], eps: float) -> dict[int, list[float]]:
    """Per C, each trace's F1 short of its own best C, at ``eps``."""
    per_c: dict[int, list[float]] = {C: [] for C in C_VALUES}
    for t in traces:
        rows = [r for r in t["c_study"] if r["epsilon"] == eps and r["C"] is not None]
        best = max(r["f1"] for r in rows)
        for r in rows:
            per_c[r["C"]].append(best - r["f1"])
    return per_c


def choose_default_c(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """At the default epsilon (0.1, R = 10): per C the mean F1 over the traces and the
    shortfall against each trace's own best C. The default is the largest C (the smallest
    pull) within C_TOLERANCE of the best C on every trace of at least C_RESOLVING heavy
    hitters - on a trace of five, one flow is 0.1 of F1 and the differences between Cs are
    noise. The shortfalls at the other epsilons and the Cs tuning chose are listed beside."""
    resolving = [t for t in traces if t["heavy_hitters"] >= C_RESOLVING]
    table = []
    for C in C_VALUES:
        f1s = [next(r["f1"] for r in t["c_study"] if r["epsilon"] == 0.1 and r["C"] == C)
               for t in traces]
        row: dict[str, Any] = {"C": C, "mean_f1": float(np.mean(f1s))}
        for name, group in (("all", traces), ("resolving", resolving)):
            for eps in C_EPSILONS:
                short = _shortfalls(group, eps)[C]
                row[f"worst_shortfall_{name}_{eps}"] = float(max(short)) if short else None
        row["mean_shortfall"] = float(np.mean(_shortfalls(traces, 0.1)[C]))
        table.append(row)
    ok = [r for r in table if (r["worst_shortfall_resolving_0.1"] or 0.0) <= C_TOLERANCE]
    chosen = max(ok, key=lambda r: r["C"])
    tuned = [{"trace": t["name"], "memory": b["memory"], "messages": b["messages"],
              "part": part, "C": b[part]["herd+confirm"].get("C"),
              "R": b[part]["herd+confirm"].get("R"),
              "epsilon": b[part]["herd+confirm"].get("epsilon")}
             for t in traces for b in t["budgets"] for part in ("tuned", "tuned_first_half")]
    return {"at_epsilon": 0.1, "tolerance": C_TOLERANCE, "resolving_heavy_hitters": C_RESOLVING,
            "resolving_traces": [t["name"] for t in resolving], "per_C": table,
            "chosen": chosen["C"], "tuned": tuned}


# ------------------------------------------------------------------------------------------
# outputs


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Herd + confirm against tuned Herd within the same per-switch budgets",
        "",
        f"Made by `{result['command']}` (herd {result['herd_version']}, commit "
        f"{result['commit']}). S: slots of {SLOT_BYTES} bytes per switch (Herd + confirm's "
        "24-byte slots: S x 12 // 24 of them); C: messages per switch (per epoch with "
        "epochs), hellos + reports + overflows + confirm's pull; both modes tuned by `herd "
        "tune` (messages kept within 95% of C). F1 of the tuned points is the mean over the "
        "tuning seeds and as many fresh ones; the second half's over the evaluation seeds.",
        "",
        "## Tuned on the trace",
        "",
        "msgs: the busiest switch's (per epoch with epochs; in brackets the pull's part); table "
        "bytes: the tuned table's; both within S x 12 bytes.",
        "",
        "| trace | T (heavy) | S (bytes) | C | Herd F1 | Herd + confirm F1 | lead | Herd msgs | "
        "+ confirm msgs (pull) | Herd table bytes | + confirm table bytes | Herd s, eps, R | "
        "+ confirm s, eps, R, C |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in result["traces"]:
        for b in t["budgets"]:
            h, c = b["tuned"]["herd"], b["tuned"]["herd+confirm"]
            lines.append(
                f"| {t['name']} | {t['T']} ({t['heavy_hitters']:,}) | {b['memory']:,} "
                f"({b['memory_bytes']:,}) | {b['messages']:,} | {_f(h.get('f1'))} | "
                f"{_f(c.get('f1'))} | {_f(b['lead_tuned'], 3)} | {_f(h.get('messages'))} | "
                f"{_f(c.get('messages'))} ({_f(c.get('pull_messages'))}) | "
                f"{_f(h.get('table_bytes'))} | {_f(c.get('table_bytes'))} | "
                f"{h.get('s')}, {h.get('epsilon')}, {h.get('R')} | "
                f"{c.get('s')}, {c.get('epsilon')}, {c.get('R')}, {c.get('C')} |")
    lines += [
        "",
        "## Tuned on the first half, evaluated on the second half",
        "",
        "Budgets checked on the second half: messages <= C (the tuning kept them within 95% "
        "of C on the first half) and the states' bytes <= S x 12.",
        "",
        "| trace | S | C | Herd F1 | Herd + confirm F1 | lead | Herd msgs | + confirm msgs "
        "(pull) | + confirm states bytes | over a budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in result["traces"]:
        for b in t["budgets"]:
            h, c = b["second_half"]["herd"], b["second_half"]["herd+confirm"]
            over = [f"{name} {what}" for name, m in (("Herd", h), ("+ confirm", c))
                    for what in ("messages", "memory") if not m.get(f"within_{what}", True)]
            ok = ", ".join(over) or "-"
            lines.append(
                f"| {t['name']} | {b['memory']:,} | {b['messages']:,} | {_f(h.get('f1'))} | "
                f"{_f(c.get('f1'))} | {_f(b['lead_second_half'], 3)} | "
                f"{_f(h.get('messages'))} | {_f(c.get('messages'))} "
                f"({_f(c.get('pull_messages'))}) | {_f(c.get('states_bytes'))} | {ok} |")
    s = result["summary"]
    lines += [
        "",
        "## Summary",
        "",
        f"- lead >= 0.05 when tuned on the trace: {s['tuned_ok']} of {s['cases']} "
        f"(min {_f(s['tuned_min'])}, median {_f(s['tuned_median'])}); on the real-derived "
        f"synthetic traces {s['synth_tuned_ok']} of {s['synth_cases']}",
        f"- lead >= 0.05 on the second half: {s['half_ok']} of {s['cases']} "
        f"(min {_f(s['half_min'])}, median {_f(s['half_median'])}); on the synthetic traces "
        f"{s['synth_half_ok']} of {s['synth_cases']}",
        "",
        "## The default C",
        "",
        "Herd + confirm at s = 0.2 and the default table; per C the mean F1 over the traces "
        "at epsilon = 0.1 (R = 10) and the worst shortfall against each trace's own best C, "
        f"over the traces of at least {C_RESOLVING} heavy hitters (all but the two CAIDA "
        "samples) and over all, at each epsilon (R = round(1/epsilon)):",
        "",
        "| C | mean F1 (0.1) | " + " | ".join(
            f"worst shortfall at {eps}: resolving (all)" for eps in C_EPSILONS) + " |",
        "|---:|---:|" + "---:|" * len(C_EPSILONS),
    ]
    dc = result["default_c"]
    for r in dc["per_C"]:
        cells = " | ".join(f"{r[f'worst_shortfall_resolving_{eps}']:.4f} "
                           f"({r[f'worst_shortfall_all_{eps}']:.4f})" for eps in C_EPSILONS)
        lines.append(f"| {r['C']} | {r['mean_f1']:.4f} | {cells} |")
    lines += ["", f"Chosen: **C = {dc['chosen']}**, the largest C within {C_TOLERANCE} F1 of "
              "the best C on every resolving trace at epsilon = 0.1.", "",
              "F1 (pull messages per switch) against C per trace and epsilon:", ""]
    header = "| trace | epsilon | Herd (R = 1/eps) | " + " | ".join(
        f"C = {C}" for C in C_VALUES) + " |"
    lines += [header, "|---|---:|---:|" + "---:|" * len(C_VALUES)]
    for t in result["traces"]:
        for eps in C_EPSILONS:
            rows = {r["C"]: r for r in t["c_study"] if r["epsilon"] == eps}
            cells = " | ".join(f"{rows[C]['f1']:.3f} ({rows[C]['pull_messages']})"
                               for C in C_VALUES)
            lines.append(f"| {t['name']} | {eps} | {rows[None]['f1']:.3f} | {cells} |")
    tuned = [x for x in dc["tuned"] if x["C"] is not None]
    lines += ["", "C chosen by tuning (C / R = the share of R's reports that makes a "
              "candidate):", "",
              "| C | cases | C / R median |", "|---:|---:|---:|"]
    for C in sorted({x["C"] for x in tuned}):
        sel = [x for x in tuned if x["C"] == C]
        lines.append(f"| {C} | {len(sel)} | "
                     f"{np.median([x['C'] / x['R'] for x in sel]):.2f} |")
    return "\n".join(lines) + "\n"


def summary(traces: list[dict[str, Any]]) -> dict[str, Any]:
    def leads(key: str, synth: bool | None = None) -> list[float]:
        return [b[f"lead_{key}"] for t in traces for b in t["budgets"]
                if b[f"lead_{key}"] is not None
                and (synth is None or (t["source"] == "synth") == synth)]

    tl, hl = leads("tuned"), leads("second_half")
    st, sh = leads("tuned", True), leads("second_half", True)
    return {
        "cases": len(tl), "tuned_ok": sum(x >= 0.05 for x in tl),
        "tuned_min": min(tl), "tuned_median": float(np.median(tl)),
        "half_ok": sum(x >= 0.05 for x in hl), "half_min": min(hl),
        "half_median": float(np.median(hl)),
        "synth_cases": len(st), "synth_tuned_ok": sum(x >= 0.05 for x in st),
        "synth_half_ok": sum(x >= 0.05 for x in sh),
    }


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [(t["name"], b) for t in result["traces"] for b in t["budgets"]]
    labels = [f"{n}\nS={b['memory']:,} C={b['messages']:,}" for n, b in cases]
    y = np.arange(len(cases))
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * len(cases) + 1.8), sharey=True, dpi=100)
    for ax, key, title in ((axes[0], "tuned", "tuned on the trace"),
                           (axes[1], "second_half", "tuned on the first half, "
                                                    "evaluated on the second")):
        h = [b[key]["herd"].get("f1", np.nan) for _, b in cases]
        c = [b[key]["herd+confirm"].get("f1", np.nan) for _, b in cases]
        ax.barh(y - 0.2, h, 0.4, color="C0", label="Herd, tuned")
        ax.barh(y + 0.2, c, 0.4, color="C4", label="Herd + confirm, tuned")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0, 1.05)
        ax.set_xlabel("F1")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=6.5)
    axes[0].invert_yaxis()
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Herd + confirm against tuned Herd within the same per-switch budgets "
                 "(S slots x 12 bytes, C messages)", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "confirm_vs_herd.png", metadata={"Software": None})
    plt.close(fig)

    fig, axes = plt.subplots(1, len(C_EPSILONS), figsize=(13, 4.2), sharey=True, dpi=100)
    for ax, eps in zip(axes, C_EPSILONS, strict=True):
        for i, t in enumerate(result["traces"]):
            rows = [r for r in t["c_study"] if r["epsilon"] == eps and r["C"] is not None]
            ax.plot([r["C"] for r in rows], [r["f1"] for r in rows], "o-", markersize=3,
                    color=f"C{i}", label=t["name"])
        ax.set_title(f"epsilon = {eps} (R = {round(1 / eps)}), s = 0.2", fontsize=10)
        ax.set_xlabel("C (reports that make a candidate)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("F1, Herd + confirm")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("The choice of C: F1 against C at the default table", fontsize=11)
    fig.tight_layout()
    fig.savefig(out / "f1_vs_C.png", metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "evaluation" / "confirm"))
    ap.add_argument("--data", default="/work/shared/data",
                    help="where the CAIDA samples lie (read in place)")
    ap.add_argument("--work", default="/tmp/herd-confirm-traces",
                    help="where the synthetic traces are written (never the repository)")
    ap.add_argument("--workers", type=int, help="tuning processes (default: up to 2)")
    ap.add_argument("--only", action="append", help="measure only these traces (by name)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [s for s in TRACES if not args.only or s.name in args.only]
    started = time.perf_counter()
    traces = [measure_trace(s, Path(args.data), Path(args.work), args.workers) for s in specs]
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    result = {
        "command": "python evaluation/confirm/measure_confirm.py" + "".join(
            f" --only {n}" for n in args.only or ()),
        "herd_version": __version__, "commit": commit, "traces": traces,
        "summary": summary(traces), "default_c": choose_default_c(traces),
        "seconds": time.perf_counter() - started,
    }
    (out / "confirm_vs_herd.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "confirm_vs_herd.md").write_text(markdown(result))
    plot(result, out)
    print(markdown(result))


if __name__ == "__main__":
    main()
