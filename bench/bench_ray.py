"""Benchmark of Ray's overhead: the same ``herd tune`` locally (a process pool) and on a
local Ray instance of as many CPUs (``--ray``), on a synthetic trace (default 5,000,000
packets).

    .venv/bin/python bench/bench_ray.py [--packets 5000000] [--runs 3] [--workers 2]
                                        [--memory 20000] [--messages 30000] [--seeds 2]

Writes the trace once (``herd.synth``, seed 1) into the temp directory and parses it once
into a private trace cache. Then, --runs times and paired (local, then Ray, so that both
see the same load from other work on the machine), runs ``herd tune ... --json`` in a fresh
process, as a user would: interpreter start, imports, the trace loaded from the cache, the
search; with --ray also starting the Ray instance, shipping the trace to its object store
and its workers loading the compiled kernels. Reports the median wall time of each, their
ratio (target: Ray within 15% of local), the load average while measuring, and whether
both answered the same. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _trace import bench_trace  # noqa: E402 - bench/ is sys.path[0] when run

from herd.evaluate import PreparedTrace, simulate  # noqa: E402
from herd.params import Params  # noqa: E402
from herd.trace import load_trace  # noqa: E402

TARGET_RATIO = 1.15


def _answer(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != "seconds"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="processes, and Ray's CPUs")
    ap.add_argument("--memory", type=int, default=20000)
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--trace", help="use this capture instead of a synthetic one")
    args = ap.parse_args()

    os.environ["HERD_CACHE_DIR"] = tempfile.mkdtemp(prefix="herd-bench-cache-")
    path = bench_trace(args.packets, args.trace)
    prep = PreparedTrace(load_trace(path))  # parse once into the cache
    simulate(prep, Params())  # make sure numba's on-disk cache holds the kernels

    cmd = [sys.executable, "-m", "herd.cli", "tune", "--trace", str(path), "--memory",
           str(args.memory), "--messages", str(args.messages), "--seeds", str(args.seeds),
           "--workers", str(args.workers), "--json", "--no-db"]
    # A local Ray instance of its own: no address from the environment, its own token.
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    times: dict[str, list[float]] = {"local": [], "ray": []}
    loads: list[float] = []
    answers: list[dict[str, Any]] = []
    for i in range(args.runs):
        for mode in ("local", "ray"):
            extra = ["--ray"] if mode == "ray" else []
            start = time.perf_counter()
            out = subprocess.run(cmd + extra, check=True, capture_output=True, text=True,
                                 cwd=REPO, env=env)
            times[mode].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
            answers.append(_answer(json.loads(out.stdout)))
        print(f"run {i + 1}: local {times['local'][-1]:.1f} s, Ray {times['ray'][-1]:.1f} s "
              f"(ratio {times['ray'][-1] / times['local'][-1]:.3f}), load {loads[-1]:.1f}, "
              f"{answers[-1]['simulations']} simulations", file=sys.stderr)
    local, ray = statistics.median(times["local"]), statistics.median(times["ray"])
    ratio = ray / local
    print(f"median: local {local:.1f} s, Ray {ray:.1f} s, ratio {ratio:.3f} "
          f"(target <= {TARGET_RATIO}); load average {statistics.median(loads):.1f} "
          f"({os.cpu_count()} CPUs)", file=sys.stderr)
    print(json.dumps({
        "packets": prep.trace.packets,
        "runs": args.runs,
        "workers": args.workers,
        "memory": args.memory,
        "messages": args.messages,
        "seeds": args.seeds,
        "simulations": answers[0]["simulations"],
        "median_local_seconds": round(local, 2),
        "median_ray_seconds": round(ray, 2),
        "local_seconds": [round(t, 2) for t in times["local"]],
        "ray_seconds": [round(t, 2) for t in times["ray"]],
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "load_average_1min": [round(x, 2) for x in loads],
        "identical_answers": all(a == answers[0] for a in answers),
    }))


if __name__ == "__main__":
    main()
