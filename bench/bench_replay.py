"""Benchmark of ``herd replay``: hello -> install latency and replay throughput.

    python bench/bench_replay.py [--packets 60000] [--k 10] [--pps 2000,5000,0] [--runs 3]
                                 [--epoch-ms 150 --epoch-pps 5000]

Writes a synthetic trace, then for each rate (0 = full speed) runs the whole distributed
system ``--runs`` times (coordinator, k controllers, k model switches, real sockets) and
reports the median over runs of: hello -> entry-installed latency p50 / p99 (measured at the
switches, emission to installation), packets/s, reports/s, lost messages, and F1 against the
simulator with the run's measured control-plane timing (and at one constant delay, the
mean). The epochs case (``--epoch-ms W``, 0 to leave it out) replays the trace with its own
timing sped up to a mean of ``--epoch-pps``, the switches on their own clocks, and scores per
(flow, epoch); its F1 is compared with the simulator under the measured timing and switch
epochs, and late reports and packets in another epoch than the trace's are counted. Prints a
table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

TARGET_P99_MS = 20.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--packets", type=int, default=60_000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--pps", default="2000,5000,0", help="comma-separated rates, 0 = full speed")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epoch-ms", type=float, default=150.0,
                   help="the epochs case: W in trace ms (0: no epochs case)")
    p.add_argument("--epoch-pps", type=float, default=5000.0,
                   help="the epochs case: mean replay rate")
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="herd-bench-replay-") as tmp:
        os.environ.setdefault("HERD_CACHE_DIR", str(Path(tmp) / "cache"))
        from herd.params import Params
        from herd.prepared import PreparedTrace
        from herd.services.replay import run_replay
        from herd.synth import write_synthetic_pcap
        from herd.trace import load_trace

        path = Path(tmp) / "bench.pcap"
        write_synthetic_pcap(path, args.packets, seed=args.seed)
        prep = PreparedTrace(load_trace(path))
        params = Params(k=args.k, seed=args.seed)
        rows = []
        cases = [(float(x), 0.0) for x in args.pps.split(",")]
        if args.epoch_ms > 0:
            cases.append((args.epoch_pps, args.epoch_ms))
        for pps, epoch_ms in cases:
            runs = [run_replay(prep, params.with_(epoch_ms=epoch_ms), pps, compare=True)
                    for _ in range(args.runs)]

            def med(key: str, runs: list[dict] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            row = {
                "pps": pps,
                "epoch_ms": epoch_ms,
                "epochs": runs[0]["epochs"],
                "late_reports": max(r["late_reports"] for r in runs),
                "epoch_mismatched_packets": max(r.get("epoch_mismatched_packets", 0)
                                                for r in runs),
                "hello_latency_ms_p50": med("hello_latency_ms_p50"),
                "hello_latency_ms_p99": med("hello_latency_ms_p99"),
                "packets_per_second": med("packets_per_second"),
                "reports_per_second": med("reports_per_second"),
                "lost_messages": max(r["lost_messages"] for r in runs),
                "f1": med("f1"),
                "simulated_f1": med("simulated_f1"),
                "simulated_f1_mean_delay": med("simulated_f1_mean_delay"),
                "measured_delay_ms": med("measured_delay_ms"),
            }
            rows.append(row)
            rate = "full speed" if pps == 0 else f"{pps:,.0f} pps"
            if epoch_ms:
                rate += f", {row['epochs']} epochs of {epoch_ms:g} ms"
            print(f"{rate:>11}: hello->install p50 {row['hello_latency_ms_p50']:7.2f} ms, p99 "
                  f"{row['hello_latency_ms_p99']:7.2f} ms; {row['packets_per_second']:>9,.0f} "
                  f"packets/s, {row['reports_per_second']:>7,.0f} reports/s; lost "
                  f"{row['lost_messages']}; F1 {row['f1']:.3f} (simulator with the measured "
                  f"timing {row['simulated_f1']:.3f}, at a constant "
                  f"{row['measured_delay_ms']:.3f} ms {row['simulated_f1_mean_delay']:.3f})"
                  + (f"; late reports {row['late_reports']}, packets in another epoch than "
                     f"the trace's {row['epoch_mismatched_packets']}" if epoch_ms else ""),
                  flush=True)
    print(f"k={args.k}, {args.packets} packets, median of {args.runs} runs, {os.cpu_count()} "
          f"CPUs; target p99 < {TARGET_P99_MS} ms on loopback at a sustainable rate")
    print(json.dumps({"k": args.k, "packets": args.packets, "runs": args.runs, "rows": rows}))
    return 0 if all(r["lost_messages"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
