"""Simulator throughput: Herd (k = 10, defaults) over a synthetic trace, parsing excluded.

    .venv/bin/python bench/bench_simulate.py [--packets 5000000] [--runs 5]

Prints the median packets/s of the compiled simulator, and, as the baseline the issue
names, the per-packet Python path (the model switch's ``Switch.process`` per packet, plus
the same control-plane handling) on a slice of the same trace.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from _trace import bench_trace  # noqa: E402 - bench/ is sys.path[0] when run

from herd.controller import LocalController
from herd.coordinator import Coordinator
from herd.evaluate import PreparedTrace, simulate
from herd.messages import MessageType
from herd.params import Params
from herd.switch import Switch
from herd.trace import load_trace


def per_packet_python(prep: PreparedTrace, params: Params, n: int) -> float:
    """Packets/s of the per-packet path: one Switch object per ingress, Python glue."""
    t = prep.trace
    T = prep.threshold(params)
    ingress = prep.ingress(params.k, params.p, params.seed)
    switches, controllers = [], []
    for sw in range(params.k):
        s = Switch(params.stages)
        c = LocalController(sw, params.epsilon, T, params.s, params.seed)
        s.configure(c.switch_config())
        switches.append(s)
        controllers.append(c)
    coord = Coordinator(params.k, params.reports_needed)
    src, dst, sp, dp, pr = (a.tolist() for a in (t.src, t.dst, t.sport, t.dport, t.proto))
    ing = ingress.tolist()
    start = time.perf_counter()
    for i in range(n):
        sw = ing[i]
        msg = switches[sw].process(src[i], dst[i], sp[i], dp[i], pr[i])
        if msg is not None and msg.type is MessageType.HELLO:
            answer = coord.on_hello(msg.group, sw)
            for m in answer.push_to:
                entry = controllers[m].on_l_g(msg.group, answer.l_g)
                if entry:
                    switches[m].install_group(entry.g, entry.tau, entry.r_threshold)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trace", help="use this capture instead of a synthetic one")
    ap.add_argument("--baseline-packets", type=int, default=200_000)
    args = ap.parse_args()

    path = bench_trace(args.packets, args.trace)
    prep = PreparedTrace(load_trace(path))
    params = Params()
    simulate(prep, params)  # compile, hash the flows, assign ingress: not what we time
    rates = []
    for i in range(args.runs):
        r = simulate(prep, params.with_(seed=1 + i))
        rates.append(prep.trace.packets / r.seconds)
        print(f"run {i + 1}: {r.seconds:.3f} s, {rates[-1] / 1e6:.2f} M packets/s, "
              f"F1 {r.f1:.3f}", file=sys.stderr)
    baseline = per_packet_python(prep, params, min(args.baseline_packets, prep.trace.packets))
    median = statistics.median(rates)
    print(json.dumps({
        "packets": prep.trace.packets,
        "runs": args.runs,
        "median_packets_per_second": round(median),
        "per_packet_python_packets_per_second": round(baseline),
        "speedup_vs_per_packet_python": round(median / baseline, 1),
        "speedup_vs_issue_baseline_0.2M": round(median / 200_000, 1),
    }))


if __name__ == "__main__":
    main()
