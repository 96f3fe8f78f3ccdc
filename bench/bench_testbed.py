"""Loss against replay rate on the testbed (root): data packets lost between h1 and h2, and
control messages lost between the switches and the coordinator.

    sudo .venv/bin/python bench/bench_testbed.py [--target model|bmv2] [--injection lb|direct]
        [--rates 2000,5000,10000,20000] [--runs 1] [--pcap pcap/synth-20k.pcap]
        [--plot out/testbed_loss.png]
    .venv/bin/python bench/bench_testbed.py --replot RESULT.json --plot out/testbed_loss.png
    .venv/bin/python bench/bench_testbed.py --compare A.json B.json --plot out/loss.png

Prints one line per rate and a JSON summary (per rate the median over --runs runs, and
every run's loss); the highest lossless rate is the figure the issue asks for (the origin
testbed: 300 packets/s). ``--injection direct``: each ingress switch's share from its own
host (the harness's ``--injection``), one switch process per packet instead of three.
``--compare`` draws the loss curves of several results on one plot (e.g. the two injection
modes of one target).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def one_run(target: str, pps: float, pcap: str, injection: str = "lb") -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        layout = Path(d) / "layout.csv"
        layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
        proc = subprocess.run(
            [sys.executable, "-m", "herd.testbed.harness", "0.2", "0.1", "0", "0", str(layout),
             pcap, str(REPO / "topologies" / "p4app_10_switches_herd.json"),
             "--target", target, "--pps", str(pps), "--injection", injection],
            capture_output=True, text=True, cwd=REPO)
        if proc.returncode == 1 and "none received" in proc.stderr:
            # Everything lost: the harness fails the run (no F1); the bench counts the loss.
            (run,) = json.loads(layout.with_suffix(".json").read_text())["runs"]
            nan = float("nan")
            return {"sent": run["sent_packets"], "lost_packets": run["sent_packets"],
                    "loss_fraction": 1.0, "lost_messages": nan, "f1": nan,
                    "simulated_f1": nan, "simulated_f1_mean_delay": nan,
                    "hello_latency_ms_p50": nan, "hello_latency_ms_p99": nan,
                    "lost_at": run.get("lost_at") or "", "load_average_1min": os.getloadavg()[0]}
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        row = next(csv.DictReader(layout.read_text().splitlines()))
    sent = float(row["sent_packets"])
    return {"sent": sent, "lost_packets": float(row["lost_packets"]),
            "loss_fraction": float(row["lost_packets"]) / sent,
            "lost_messages": float(row["lost_messages"]), "f1": float(row["f1score"]),
            "simulated_f1": float(row["simulated_f1"]),
            "simulated_f1_mean_delay": float(row["simulated_f1_mean_delay"]),
            "hello_latency_ms_p50": float(row["hello_latency_ms_p50"] or "nan"),
            "hello_latency_ms_p99": float(row["hello_latency_ms_p99"] or "nan"),
            # Where the loss began, and the machine's load: others' work skews a point.
            "lost_at": row.get("lost_at", ""), "load_average_1min": os.getloadavg()[0]}


def plot_compare(results: list[dict[str, Any]], path: str) -> None:
    """Data packets lost against rate, one curve per result (target, injection)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    rates: set[float] = set()
    for data in results:
        curve = data["curve"]
        mode = data.get("injection", "lb")
        label = (f"{data['target']}, " + ("h1 -> lb -> s_i -> agg -> h2" if mode == "lb" else
                                          "direct: h1s_i -> s_i -> h2s_i"))
        runs = f", median of {data['runs']} runs" if data.get("runs", 1) > 1 else ", 1 run"
        ax.plot([p["pps"] for p in curve], [100 * p["loss_fraction"] for p in curve], "o-",
                label=label + runs)
        rates.update(p["pps"] for p in curve)
    ax.set_xscale("log")
    ticks = sorted(rates)
    ax.set_xticks(ticks, [f"{r / 1000:g}k" for r in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("replay rate, all senders together (packets/s)")
    ax.set_ylabel("data packets lost (%)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"loss against rate, {Path(results[0].get('pcap', '')).name}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_curve(curve: list[dict[str, float]], target: str, pcap: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    rates = [p["pps"] for p in curve]
    fig, (ax, lat, acc) = plt.subplots(1, 3, figsize=(13, 3.6), dpi=120)
    ax.plot(rates, [100 * p["loss_fraction"] for p in curve], "o-",
            label="data packets lost (%)")
    ax.plot(rates, [p["lost_messages"] for p in curve], "s--",
            label="control messages lost")
    ax.set_ylim(bottom=0, top=max([1.0] + [100 * p["loss_fraction"] * 1.1 for p in curve]
                                  + [p["lost_messages"] * 1.1 for p in curve]))
    ax.set_title(f"loss: {target} target, {Path(pcap).name}", fontsize=9)
    lat.plot(rates, [p["hello_latency_ms_p50"] for p in curve], "o-", label="p50")
    lat.plot(rates, [p["hello_latency_ms_p99"] for p in curve], "s--", label="p99")
    lat.set_ylabel("hello -> entry installed (ms)")
    lat.set_title("control-loop latency", fontsize=9)
    acc.plot(rates, [p["f1"] for p in curve], "o-", label="testbed")
    acc.plot(rates, [p["simulated_f1"] for p in curve], "x:",
             label="herd simulate, measured timing")
    acc.plot(rates, [p["simulated_f1_mean_delay"] for p in curve], "s--",
             label="herd simulate, mean delay")
    acc.set_ylabel("F1")
    acc.set_title("F1, testbed and simulator", fontsize=9)
    for a in (ax, lat, acc):
        a.set_xscale("log")
        a.set_xticks(rates, [f"{r / 1000:g}k" for r in rates])
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_xlabel("tcpreplay rate (packets/s)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="model", choices=("model", "bmv2"))
    ap.add_argument("--injection", default="lb", choices=("lb", "direct"))
    ap.add_argument("--rates", default="2000,5000,10000,20000")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--pcap", default=str(REPO / "pcap" / "synth-20k.pcap"))
    ap.add_argument("--plot", help="PNG of loss against rate")
    ap.add_argument("--replot", help="only draw --plot from this script's earlier JSON output")
    ap.add_argument("--compare", nargs="+", metavar="RESULT.json",
                    help="only draw --plot: the loss curves of these earlier outputs together")
    args = ap.parse_args()
    if args.compare:
        plot_compare([json.loads(Path(f).read_text()) for f in args.compare], args.plot)
        return
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        plot_curve(data["curve"], data["target"], data.get("pcap", args.pcap), args.plot)
        return
    curve = []
    for pps in (float(x) for x in args.rates.split(",")):
        runs = [one_run(args.target, pps, args.pcap, args.injection) for _ in range(args.runs)]
        numeric = [k for k in runs[0] if k not in ("lost_at", "load_average_1min")]
        point = {"pps": pps, **{k: statistics.median(r[k] for r in runs) for k in numeric},
                 "lost_packets_per_run": [r["lost_packets"] for r in runs],
                 "lost_at_per_run": [r["lost_at"] for r in runs],
                 "load_average_1min_per_run": [r["load_average_1min"] for r in runs]}
        curve.append(point)
        print(f"{pps:8.0f} pps: lost packets {point['lost_packets']:.0f} "
              f"({point['loss_fraction']:.2%}), lost messages {point['lost_messages']:.0f}, "
              f"F1 {point['f1']:.3f} (simulated with the measured timing "
              f"{point['simulated_f1']:.3f}, at a constant delay "
              f"{point['simulated_f1_mean_delay']:.3f}), hello latency p50 "
              f"{point['hello_latency_ms_p50']:.1f} ms p99 {point['hello_latency_ms_p99']:.1f} ms",
              file=sys.stderr)
    lossless = [p["pps"] for p in curve if p["lost_packets"] == 0 and p["lost_messages"] == 0]
    print(json.dumps({"target": args.target, "injection": args.injection, "runs": args.runs,
                      "pcap": args.pcap, "curve": curve,
                      "highest_lossless_pps": max(lossless) if lossless else None,
                      "ratio_to_origin_300pps": max(lossless) / 300 if lossless else None}))
    if args.plot:
        plot_curve(curve, args.target, args.pcap, args.plot)


if __name__ == "__main__":
    main()
