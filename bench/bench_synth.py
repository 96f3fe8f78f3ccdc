"""Benchmark the synthetic trace generator and the pcap writer; print calibration statistics.

    .venv/bin/python bench/bench_synth.py [--packets 5000000] [--runs 3] [--out DIR]

Times synthesize() and write_pcap() separately at --packets (median of --runs runs, written to
a temporary directory unless --out is given), then prints the calibration statistics at 400k
packets (the size of the CAIDA slice in DESIGN.md, with its figures beside them) and at
--packets.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from herd.pcapwrite import write_pcap
from herd.synth import TraceStats, synthesize, trace_stats

# DESIGN.md, "Known facts for calibration" (CAIDA 2016, 400k-packet slice).
CAIDA = {
    "flows": 54_334,
    "groups": 3_434,
    "p99": 91,
    "p999": 470,
    "p9999": 1504,
    "max_flow": 4_921,
    "flows_ge_p99": 545,
}


def _row(label: str, st: TraceStats) -> str:
    return (
        f"{label:>12} {st.flows:>9,} {st.groups:>7,} {st.p99:>5} {st.p999:>6} {st.p9999:>7}"
        f" {st.max_flow:>8,} {st.flows_ge_p99:>8,} {100 * st.tcp_flows / st.flows:>5.1f}"
        f" {100 * st.udp_flows / st.flows:>5.1f} {100 * st.icmp_flows / st.flows:>5.1f}"
        f" {st.duration_s:>7.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="directory for the pcap (default: a temporary directory)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        path = os.path.join(tmp, "bench.pcap")
        t_syn: list[float] = []
        t_wr: list[float] = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            sp = synthesize(args.packets, seed=args.seed)
            t1 = time.perf_counter()
            write_pcap(path, sp.ts_ns, sp.src, sp.dst, sp.sport, sp.dport, sp.proto)
            t2 = time.perf_counter()
            t_syn.append(t1 - t0)
            t_wr.append(t2 - t1)
        size = os.path.getsize(path)
    syn, wr = statistics.median(t_syn), statistics.median(t_wr)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = args.packets
    print(f"{n:,} packets, median of {args.runs} runs ({os.cpu_count()} CPUs)")
    print(f"  synthesize : {syn:6.2f} s  {n / syn / 1e6:6.2f} M packets/s")
    print(f"  write_pcap : {wr:6.2f} s  {n / wr / 1e6:6.2f} M packets/s  ({size / 1e6:,.0f} MB)")
    print(f"  both       : {syn + wr:6.2f} s  {n / (syn + wr) / 1e6:6.2f} M packets/s")
    print(f"  peak RSS   : {peak_mb:,.0f} MB")
    print()
    head = (
        f"{'':>12} {'flows':>9} {'groups':>7} {'p99':>5} {'p99.9':>6} {'p99.99':>7}"
        f" {'max flow':>8} {'>= p99':>8} {'%tcp':>5} {'%udp':>5} {'%icmp':>5} {'secs':>7}"
    )
    print(head)
    c = CAIDA
    print(
        f"{'CAIDA 400k':>12} {c['flows']:>9,} {c['groups']:>7,} {c['p99']:>5} {c['p999']:>6}"
        f" {c['p9999']:>7} {c['max_flow']:>8,} {c['flows_ge_p99']:>8,}"
    )
    print(_row("synth 400k", trace_stats(synthesize(400_000, seed=args.seed))))
    print(_row(f"synth {n / 1e6:g}M", trace_stats(sp)))


if __name__ == "__main__":
    main()
