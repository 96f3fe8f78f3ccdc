"""Benchmark of Ray's overhead: the same ``herd tune`` locally (a process pool) and on a
local Ray instance of as many CPUs (``--ray``), on a synthetic trace (default 5,000,000
packets).

    .venv/bin/python bench/bench_ray.py [--packets 5000000] [--runs 3] [--workers 2]
                                        [--memory 20000] [--messages 30000] [--seeds 2]

Writes the trace once (``herd.synth``, seed 1) into the temp directory and parses it once
into a private trace cache. Then, --runs times and paired (local, then Ray, so that both
see the same load from other work on the machine), runs ``herd tune ... --json`` in a fresh
process, as a user would: interpreter start, imports, the trace loaded from the cache, the
search; with --ray also starting the Ray instance (some 2.5 s), shipping the trace to its
object store, its workers loading the compiled kernels, and stopping it (some 1 s). Then
the same pair through the library in a fresh process, timing ``tune`` alone - locally with
its own pool, on Ray already started - which leaves out those fixed costs: what Ray costs a
simulation. Reports the median wall times, their ratios (target: Ray within 15% of local),
the load average while measuring, and whether every run answered the same. Prints a table
and, last, one JSON line.
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

# tune() alone, in a fresh process: locally, or on a Ray instance started (and its workers
# warmed up) beforehand. Prints the seconds and the answer.
LIBRARY = """
import json, sys, time
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.trace import load_trace
from herd.tuning import tune

path, memory, messages, seeds, workers, mode = sys.argv[1:]
prep = PreparedTrace(load_trace(path))
executor = None
if mode == "ray":
    import logging

    import ray

    from herd.executor import RayExecutor
    from herd.sweep import simulate_task

    ray.init(address="local", num_cpus=int(workers), include_dashboard=False,
             log_to_driver=False, logging_level=logging.WARNING)
    with RayExecutor(prep, None) as warm:  # workers started, kernels loaded
        warm.map(simulate_task, [Params(seed=i) for i in range(int(workers))])
    prep = PreparedTrace(prep.trace)  # fresh caches, here and (a new trace) in the workers
    executor = RayExecutor(prep, None)
start = time.perf_counter()
result = tune(prep, Params(), int(memory), int(messages), seeds=int(seeds),
              workers=int(workers), executor=executor)
seconds = time.perf_counter() - start
d = result.to_dict()
d.pop("seconds")
print(json.dumps({"seconds": seconds, "answer": d}))
"""


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
    lib = [sys.executable, "-c", LIBRARY, str(path), str(args.memory), str(args.messages),
           str(args.seeds), str(args.workers)]
    modes = {"local": cmd, "ray": [*cmd, "--ray"], "library local": [*lib, "local"],
             "library ray": [*lib, "ray"]}
    times: dict[str, list[float]] = {m: [] for m in modes}
    loads: list[float] = []
    answers: list[dict[str, Any]] = []
    for i in range(args.runs):
        for mode, argv in modes.items():  # paired: each run sees the same load
            start = time.perf_counter()
            out = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True,
                                            cwd=REPO, env=env).stdout)
            if mode.startswith("library"):
                times[mode].append(out["seconds"])
                answers.append(out["answer"])
            else:
                times[mode].append(time.perf_counter() - start)
                answers.append(_answer(out))
            loads.append(os.getloadavg()[0])
        t = {m: v[-1] for m, v in times.items()}
        print(f"run {i + 1}: command line local {t['local']:.1f} s, Ray {t['ray']:.1f} s "
              f"(ratio {t['ray'] / t['local']:.3f}); tune alone local "
              f"{t['library local']:.1f} s, Ray {t['library ray']:.1f} s (ratio "
              f"{t['library ray'] / t['library local']:.3f}); load {loads[-1]:.1f}, "
              f"{answers[-1]['simulations']} simulations", file=sys.stderr)
    med = {m: statistics.median(v) for m, v in times.items()}
    ratio = med["ray"] / med["local"]
    lib_ratio = med["library ray"] / med["library local"]
    print(f"median: command line local {med['local']:.1f} s, Ray {med['ray']:.1f} s, ratio "
          f"{ratio:.3f}; tune alone local {med['library local']:.1f} s, Ray "
          f"{med['library ray']:.1f} s, ratio {lib_ratio:.3f} (target <= {TARGET_RATIO}); "
          f"load average {statistics.median(loads):.1f} ({os.cpu_count()} CPUs)",
          file=sys.stderr)
    print(json.dumps({
        "packets": prep.trace.packets,
        "runs": args.runs,
        "workers": args.workers,
        "memory": args.memory,
        "messages": args.messages,
        "seeds": args.seeds,
        "simulations": answers[0]["simulations"],
        "median_seconds": {m: round(v, 2) for m, v in med.items()},
        "seconds": {m: [round(t, 2) for t in v] for m, v in times.items()},
        "ratio_command_line": round(ratio, 3),
        "ratio_tune_alone": round(lib_ratio, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": ratio <= TARGET_RATIO,
        "load_average_1min": [round(x, 2) for x in loads],
        "identical_answers": all(a == answers[0] for a in answers),
    }))

if __name__ == "__main__":
    main()
