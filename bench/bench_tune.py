"""Benchmark of ``herd tune`` on a synthetic trace (default 1,000,000 packets).

    .venv/bin/python bench/bench_tune.py [--packets 1000000] [--runs 3] [--memory 5000]
                                         [--messages 8000] [--seeds 3] [--workers N]

Writes the trace once (``herd.synth``, seed 1) into the temp directory and parses it once
into a private trace cache, then measures, as the median of --runs runs:
  - library: ``tune`` on a fresh PreparedTrace (flow hashes, ingress and pairs recomputed;
    numba kernels already compiled), the search alone;
  - command line: ``herd tune ... --json`` in a fresh process - interpreter start, imports,
    numba's cached kernels loaded, the trace loaded from the cache, the search, the output -
    and the CPU seconds of that process and its workers (on a machine busy with other work
    the wall time says little).
Target: under 60 s on a 2-core machine. Prints a table and, last, one JSON line.
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

# Runnable from a checkout without installing the package.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _trace import bench_trace  # noqa: E402 - bench/ is sys.path[0] when run

from herd.evaluate import PreparedTrace, simulate  # noqa: E402
from herd.params import Params  # noqa: E402
from herd.trace import load_trace  # noqa: E402
from herd.tuning import tune  # noqa: E402

TARGET_SECONDS = 60.0


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory", type=int, default=5000)
    ap.add_argument("--messages", type=int, default=8000)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, help="default: the command's own (up to 2)")
    ap.add_argument("--trace", help="use this capture instead of a synthetic one")
    args = ap.parse_args()

    cache = tempfile.mkdtemp(prefix="herd-bench-cache-")
    os.environ["HERD_CACHE_DIR"] = cache
    path = bench_trace(args.packets, args.trace)
    warm = PreparedTrace(load_trace(path))  # parse once into the cache
    simulate(warm, Params())  # compile (or load) the kernels: not what we time

    library: list[float] = []
    cli: list[float] = []
    cli_cpu: list[float] = []
    answers = []
    for i in range(args.runs):
        prep = PreparedTrace(load_trace(path))
        start = time.perf_counter()
        result = tune(prep, Params(), args.memory, args.messages, seeds=args.seeds,
                      workers=args.workers)
        library.append(time.perf_counter() - start)
        answers.append(result.to_dict())
        cmd = [sys.executable, "-m", "herd.cli", "tune", "--trace", str(path), "--memory",
               str(args.memory), "--messages", str(args.messages), "--seeds", str(args.seeds),
               "--json"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        before = _cpu(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        cli.append(time.perf_counter() - start)
        cli_cpu.append(_cpu(resource.RUSAGE_CHILDREN) - before)
        d = json.loads(out.stdout)
        print(f"run {i + 1}: library {library[-1]:.1f} s ({result.runs} simulations), "
              f"command line {cli[-1]:.1f} s ({cli_cpu[-1]:.1f} s CPU), load "
              f"{os.getloadavg()[0]:.1f}; s={d['s']} epsilon={d['epsilon']} R={d['R']} "
              f"stages={d['stages']} F1={d['f1']:.3f}±{d['f1_std']:.3f} "
              f"states={d['states']}/{args.memory} messages={d['messages']}/{args.messages}",
              file=sys.stderr)
    same = all({k: v for k, v in a.items() if k not in ("seconds",)}
               == {k: v for k, v in answers[0].items() if k not in ("seconds",)}
               for a in answers)
    first = answers[0]
    print(json.dumps({
        "packets": warm.trace.packets,
        "runs": args.runs,
        "memory": args.memory,
        "messages": args.messages,
        "seeds": args.seeds,
        "simulations": first["simulations"],
        "median_library_seconds": round(statistics.median(library), 2),
        "median_cli_seconds": round(statistics.median(cli), 2),
        "min_cli_seconds": round(min(cli), 2),
        "max_cli_seconds": round(max(cli), 2),
        "median_cli_cpu_seconds": round(statistics.median(cli_cpu), 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "target_seconds": TARGET_SECONDS,
        "identical_answers": same,
        "f1": first["f1"],
        "start_f1": first["start"]["f1"] if first["start"] else None,
    }))


if __name__ == "__main__":
    main()
