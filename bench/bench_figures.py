"""Benchmark of ``herd figures`` on a synthetic trace (default 5,000,000 packets).

    .venv/bin/python bench/bench_figures.py [--packets 5000000] [--runs 3] [--workers N]

Writes the trace once (``herd.synth``, seed 1) into the temp directory and parses it once
into a private trace cache, then runs, --runs times, the complete figure set as a user
would: ``herd figures --trace T --out DIR`` in a fresh process (interpreter start, imports,
numba's cached kernels, trace loaded from the cache, every simulation and tuning run, the
PNGs and CSVs written). Reports the median wall time - target under 120 s on a 2-core
machine - and the CPU seconds of all its processes, which on a machine busy with other
work say more than the wall time. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _trace import bench_trace  # noqa: E402 - bench/ is sys.path[0] when run

from herd.evaluate import PreparedTrace, simulate  # noqa: E402
from herd.params import Params  # noqa: E402
from herd.trace import load_trace  # noqa: E402

TARGET_SECONDS = 120.0


def _children_cpu() -> float:
    """User + system CPU seconds of every finished child process (and theirs)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, help="default: the command's own (up to 2)")
    ap.add_argument("--trace", help="use this capture instead of a synthetic one")
    ap.add_argument("--keep", help="leave the last run's figures in this directory")
    args = ap.parse_args()

    os.environ["HERD_CACHE_DIR"] = tempfile.mkdtemp(prefix="herd-bench-cache-")
    path = bench_trace(args.packets, args.trace)
    prep = PreparedTrace(load_trace(path))  # parse once into the cache
    simulate(prep, Params())  # make sure numba's on-disk cache holds the kernels

    walls: list[float] = []
    cpus: list[float] = []
    digests = []
    for i in range(args.runs):
        out = Path(args.keep) if args.keep and i == args.runs - 1 else Path(
            tempfile.mkdtemp(prefix="herd-bench-figures-"))
        cmd = [sys.executable, "-m", "herd.cli", "figures", "--trace", str(path), "--out",
               str(out)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        before = _children_cpu()
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - before)
        csvs = sorted(out.glob("*.csv"))
        digests.append(tuple(p.read_bytes() for p in csvs))
        print(f"run {i + 1}: {walls[-1]:.1f} s wall, {cpus[-1]:.1f} s CPU (all processes), "
              f"load {os.getloadavg()[0]:.1f}; {len(list(out.glob('*.png')))} PNG + "
              f"{len(csvs)} CSV in {out}", file=sys.stderr)
    print(json.dumps({
        "packets": prep.trace.packets,
        "runs": args.runs,
        "workers": args.workers,
        "median_seconds": round(statistics.median(walls), 1),
        "min_seconds": round(min(walls), 1),
        "max_seconds": round(max(walls), 1),
        # CPU seconds of herd and its workers: on a machine shared with other work, the
        # wall time says little; CPU / workers bounds what an idle machine would take
        "median_cpu_seconds": round(statistics.median(cpus), 1),
        "target_seconds": TARGET_SECONDS,
        "identical_csvs": all(d == digests[0] for d in digests),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
