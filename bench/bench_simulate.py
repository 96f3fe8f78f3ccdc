"""Simulator speed and memory: Herd (k = 10, defaults) with 1 s epochs over a long trace.

    .venv/bin/python bench/bench_simulate.py [--packets 20000000] [--epoch-ms 1000] [--runs 5]
        [--rss 4000000,16000000[,100000000]]

Prints, as the median of --runs:
  - the simulation kernel's packets/s, parsing excluded (the trace is cached first; ground
    truth and per-flow hashes are computed once, as a sweep shares them);
  - a plain per-packet Python implementation of the same rules (``herd.reference``) on the
    first --reference-packets packets of the same trace, in the same run, and the ratio;
  - ``herd simulate --epoch-ms W`` end to end on the warm cache, as a whole process (Python
    start, imports, loading the cached trace, ground truth, simulation, output);
  - with --rss, the peak RSS (VmHWM) of that command on traces of each given length, and
    the ratio of the second to the first.
The timed trace is ``herd trace synth`` (seed 1); the --rss traces come from
``bench_trace.write_synthetic_pcap`` (written in blocks, so 100M packets need little memory:
1M packets/s, N/7 flows). Both are written once into the temp directory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_trace as blocks  # noqa: E402 - bench/ is sys.path[0] when run
from _trace import bench_trace  # noqa: E402

from herd.evaluate import PreparedTrace, simulate
from herd.params import Params
from herd.reference import simulate_reference
from herd.trace import load_trace

HERD = str(Path(sys.executable).with_name("herd"))


def kernel_rates(prep: PreparedTrace, params: Params, runs: int) -> list[float]:
    simulate(prep, params)  # compile, count, hash the flows: not what we time
    rates = []
    for i in range(runs):
        r = simulate(prep, params.with_(seed=1 + i))
        rates.append(prep.trace.packets / r.seconds)
        print(f"kernel run {i + 1}: {r.seconds:.3f} s, {rates[-1] / 1e6:.2f} M packets/s, "
              f"F1 {r.f1:.3f}", file=sys.stderr)
    return rates


def reference_rate(prep: PreparedTrace, params: Params, packets: int) -> float:
    T = prep.threshold(params)
    t = prep.trace
    for column in (t.ts_ns, t.flow, t.ingress):  # load the columns: not what we time
        assert len(column) == t.packets
    start = time.perf_counter()
    simulate_reference(prep.trace, params, T, packets)
    return min(packets, prep.trace.packets) / (time.perf_counter() - start)


def peak_rss_mib(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MiB) of a whole command, from GNU time."""
    proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", *cmd], capture_output=True,
                          text=True, check=True)
    seconds, kib = proc.stderr.strip().splitlines()[-1].split()
    return float(seconds), int(kib) / 1024


def end_to_end(path: Path, epoch_ms: float, runs: int) -> list[float]:
    cmd = [HERD, "simulate", "--trace", str(path), "--epoch-ms", f"{epoch_ms:g}"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm: cache and numba
    times = []
    for i in range(runs):
        seconds, rss = peak_rss_mib(cmd)
        times.append(seconds)
        print(f"end to end run {i + 1}: {seconds:.2f} s, peak RSS {rss:.0f} MiB",
              file=sys.stderr)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=20_000_000)
    ap.add_argument("--epoch-ms", type=float, default=1000.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trace", help="use this capture instead of a synthetic one")
    ap.add_argument("--reference-packets", type=int, default=1_000_000)
    ap.add_argument("--rss", help="comma-separated trace lengths for the peak-RSS check")
    ap.add_argument("--confirm", action="store_true",
                    help="also time the kernel with confirm on (its pulls at each epoch's end)")
    args = ap.parse_args()

    path = bench_trace(args.packets, args.trace)
    subprocess.run([HERD, "trace", "info", str(path)], capture_output=True, check=True)
    prep = PreparedTrace(load_trace(path))
    params = Params(epoch_ms=args.epoch_ms)
    rates = kernel_rates(prep, params, args.runs)
    median = statistics.median(rates)
    confirm_median = statistics.median(kernel_rates(prep, params.with_(confirm=True), args.runs)) \
        if args.confirm else None
    ref = reference_rate(prep, params, args.reference_packets)
    print(f"plain Python reference: {ref / 1e6:.3f} M packets/s", file=sys.stderr)
    e2e = end_to_end(path, args.epoch_ms, args.runs)
    out = {
        "packets": prep.trace.packets,
        "flows": prep.trace.flows,
        "epoch_ms": args.epoch_ms,
        "runs": args.runs,
        "kernel_packets_per_second_median": round(median),
        "reference_python_packets_per_second": round(ref),
        "reference_packets": min(args.reference_packets, prep.trace.packets),
        "speedup_vs_reference_python": round(median / ref, 1),
        **({"kernel_confirm_packets_per_second_median": round(confirm_median),
            "confirm_vs_off": round(confirm_median / median, 3)} if confirm_median else {}),
        "end_to_end_seconds_median": round(statistics.median(e2e), 2),
    }
    if args.rss:
        sizes = [int(x) for x in args.rss.split(",")]
        rss = {}
        for n in sizes:
            trace = Path(tempfile.gettempdir()) / f"herd-bench-blocks-{n}.pcap"
            if not trace.exists():
                print(f"writing {trace} ...", file=sys.stderr)
                blocks.write_synthetic_pcap(trace, n, n // 7)
            cmd = [HERD, "simulate", "--trace", str(trace), "--epoch-ms", f"{args.epoch_ms:g}"]
            subprocess.run([HERD, "trace", "info", str(trace)], capture_output=True, check=True)
            subprocess.run(cmd, capture_output=True, check=True)  # warm
            peaks = [peak_rss_mib(cmd)[1] for _ in range(max(1, min(args.runs, 3)))]
            rss[n] = statistics.median(peaks)
            print(f"{n:,} packets: peak RSS {rss[n]:.0f} MiB", file=sys.stderr)
        out["peak_rss_mib"] = {str(n): round(v) for n, v in rss.items()}
        if len(sizes) >= 2:
            out["peak_rss_ratio"] = round(rss[sizes[1]] / rss[sizes[0]], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
