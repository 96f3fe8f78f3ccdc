"""Benchmark of streaming trace ingest: parse and chunk-walk rates, and peak memory at two
trace lengths (it should not grow with the packets).

    python bench/bench_trace.py [--packets 4000000,16000000] [--runs 3] [--flows F]
                                [--packets-per-flow 7] [--keep-dir DIR]

For each length N, writes a synthetic headers-only pcap (Ethernet / IPv4 / TCP, 54 captured
bytes a packet, N/7 flows or --flows, written in blocks so that 100M packets need little
memory: about 50 bytes a flow),
then measures, each run in a fresh subprocess, the median of --runs runs:
  - parse: load_trace on an empty cache directory (parse, number flows, write the entry);
  - walk: load_trace from the cache, then Trace.chunks(("ts_ns", "flow")) over the whole
    trace twice; the second (warm page cache) walk is timed;
and each process's peak RSS (VmHWM), whole and above its RSS after imports and warm-up.
The ratio of the peaks at the largest and smallest N is the figure that matters: memory
may grow with the flows (the flow table, printed as bytes per added flow), not with the
packets; --flows fixes the flow count to see the packets' share alone. The capture and the cache
sit in the OS page cache: these are CPU, not disk, figures. Prints a table and, last, one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECORD = 16 + 14 + 20 + 20  # pcap record header + Ethernet + IPv4 + TCP
TARGET_PEAK_RATIO = 1.3  # whole-process peak RSS, largest N over smallest N
TARGET_WALK_S_PER_20M = 0.3  # ts_ns + flow of 20M packets, warm page cache


def write_synthetic_pcap(path: Path, packets: int, flows: int, seed: int = 1) -> int:
    """A headers-only µs pcap of `packets` TCP packets drawn from `flows` flows; returns the
    number of distinct flows seen. Written in blocks: memory is the per-flow arrays (about
    50 bytes a flow) and one block."""
    rng = np.random.default_rng(seed)
    nflows = max(1, flows)
    f_src = rng.integers(1, 2**32, nflows, dtype=np.uint64).astype(np.uint32)
    f_dst = rng.integers(1, 2**32, nflows, dtype=np.uint64).astype(np.uint32)
    f_sport = rng.integers(1024, 65536, nflows).astype(np.uint16)
    f_dport = rng.choice(np.array([80, 443, 53, 22, 8080], np.uint16), nflows)
    # Zipf-ish sizes, so that there are elephants, over flows numbered at random.
    cdf = np.cumsum(1.0 / np.arange(1, nflows + 1) ** 0.6)
    cdf /= cdf[-1]
    perm = rng.permutation(nflows).astype(np.int32)

    template = np.zeros(RECORD, np.uint8)
    template[8:12] = np.frombuffer(np.uint32(RECORD - 16).tobytes(), np.uint8)  # incl_len
    template[12:16] = np.frombuffer(np.uint32(60).tobytes(), np.uint8)  # orig_len
    template[16 + 12 : 16 + 14] = (0x08, 0x00)  # ethertype IPv4
    ip = 16 + 14
    template[ip] = 0x45
    template[ip + 2 : ip + 4] = (0, 46)  # total length
    template[ip + 8] = 64  # ttl
    template[ip + 9] = 6  # TCP
    template[ip + 20 + 12] = 0x50  # data offset 5

    distinct = np.zeros(nflows, bool)
    base_sec = 1_500_000_000
    with open(path, "wb") as out:
        # pcap global header: µs, little-endian, snaplen 65535, Ethernet
        out.write(np.array([0xA1B2C3D4], "<u4").tobytes())
        out.write(np.array([2, 4], "<u2").tobytes())
        out.write(np.array([0, 0, 65535, 1], "<u4").tobytes())
        block = 1 << 20
        for lo in range(0, packets, block):
            k = min(block, packets - lo)
            fid = perm[np.minimum(np.searchsorted(cdf, rng.random(k)), nflows - 1)]
            distinct[fid] = True
            rec = np.tile(template, (k, 1))
            i = np.arange(lo, lo + k, dtype=np.int64)
            rec[:, 0:4] = ((base_sec + i // 1_000_000).astype("<u4")).view(np.uint8).reshape(k, 4)
            rec[:, 4:8] = ((i % 1_000_000).astype("<u4")).view(np.uint8).reshape(k, 4)
            rec[:, ip + 12 : ip + 16] = f_src[fid].astype(">u4").view(np.uint8).reshape(k, 4)
            rec[:, ip + 16 : ip + 20] = f_dst[fid].astype(">u4").view(np.uint8).reshape(k, 4)
            rec[:, ip + 20 : ip + 22] = f_sport[fid].astype(">u2").view(np.uint8).reshape(k, 2)
            rec[:, ip + 22 : ip + 24] = f_dport[fid].astype(">u2").view(np.uint8).reshape(k, 2)
            out.write(rec.tobytes())
    # Age the file like any capture being analysed: a file changed in the last seconds has
    # its cache index entry confirmed by a hash (see herd.tracecache.RACY_NS), which is not
    # what a reload of a real trace costs.
    old = time.time() - 3600
    os.utime(path, (old, old))
    return int(distinct.sum())


_CHILD = r"""
import gc, json, sys, time
sys.path.insert(0, sys.argv[4])
from herd.trace import load_trace

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

path, tiny, mode = sys.argv[1], sys.argv[2], sys.argv[3]
for _ in load_trace(tiny).chunks(("ts_ns", "flow")):  # load the compiled kernels
    pass
gc.collect()
out = {"baseline": status("VmRSS")}
t0 = time.perf_counter()
t = load_trace(path)
out["load_s"] = time.perf_counter() - t0
out["packets"], out["flows"] = t.packets, t.flows
if mode == "walk":
    for _ in range(2):  # the first walk warms the page cache; the second is timed
        t0 = time.perf_counter()
        n = 0
        for _, c in t.chunks(("ts_ns", "flow")):
            n += len(c["flow"])
        out["walk_s"] = time.perf_counter() - t0
    assert n == t.packets
out["peak"] = status("VmHWM")
print(json.dumps(out))
"""


def run_child(path: Path, tiny: Path, mode: str, cache: Path) -> dict[str, float]:
    env = dict(os.environ, HERD_CACHE_DIR=str(cache))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(tiny), mode, str(REPO)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(path: Path, tiny: Path, work: Path, runs: int) -> dict[str, float]:
    parses, walks = [], []
    cache = work / "cache"
    for _ in range(runs):
        shutil.rmtree(cache, ignore_errors=True)
        parses.append(run_child(path, tiny, "parse", cache))
    for _ in range(runs):
        walks.append(run_child(path, tiny, "walk", cache))
    shutil.rmtree(cache, ignore_errors=True)
    n = parses[0]["packets"]

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    return {
        "packets": n,
        "flows": parses[0]["flows"],
        "parse_pps": n / med(parses, "load_s"),
        "parse_peak": med(parses, "peak"),
        "parse_above_baseline": statistics.median(r["peak"] - r["baseline"] for r in parses),
        "reload_s": med(walks, "load_s"),
        "walk_s": med(walks, "walk_s"),
        "walk_pps": n / med(walks, "walk_s"),
        "walk_peak": med(walks, "peak"),
        "walk_above_baseline": statistics.median(r["peak"] - r["baseline"] for r in walks),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--packets",
        default="4000000,16000000",
        help="comma-separated trace lengths (e.g. 4000000,16000000,100000000)",
    )
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--packets-per-flow",
        type=float,
        default=7.0,
        help="mean flow size of the synthetic trace (CAIDA slices: about 7)",
    )
    ap.add_argument(
        "--flows",
        type=int,
        help="a fixed number of flows at every length instead (isolates growth with packets)",
    )
    ap.add_argument("--keep-dir", type=Path, help="write the synthetic pcaps here and keep them")
    args = ap.parse_args(argv)
    sizes = sorted(int(float(x)) for x in args.packets.split(","))

    work = Path(tempfile.mkdtemp(prefix="herd-bench-trace-"))
    pcaps = args.keep_dir or work
    pcaps.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        tiny = work / "tiny.pcap"
        write_synthetic_pcap(tiny, 100, 14, seed=2)
        for n in sizes:
            flows = args.flows or int(n / args.packets_per_flow)
            path = pcaps / f"bench-trace-{n}-{flows}.pcap"
            if not path.exists():
                t0 = time.perf_counter()
                write_synthetic_pcap(path, n, flows)
                print(
                    f"wrote {path}: {n:,} packets, {path.stat().st_size / 2**20:.0f} MiB in "
                    f"{time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                )
            # Its ctime is that of the write: an index entry made sooner than RACY_NS after
            # it is confirmed by hashing the file, which a reload of a real trace never does.
            time.sleep(max(0.0, path.stat().st_ctime + 2.5 - time.time()))
            results.append(measure(path, tiny, work, args.runs))
            if not args.keep_dir:
                path.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    mib = 2**20
    print(
        f"{'packets':>12} {'flows':>10} {'parse':>11} {'parse peak':>11} {'walk':>11} "
        f"{'walk s':>7} {'walk peak':>10}"
    )
    for r in results:
        print(
            f"{r['packets']:>12,} {r['flows']:>10,} {r['parse_pps'] / 1e6:>7.2f} Mp/s "
            f"{r['parse_peak'] / mib:>7.0f} MiB {r['walk_pps'] / 1e6:>7.1f} Mp/s "
            f"{r['walk_s']:>7.3f} {r['walk_peak'] / mib:>6.0f} MiB"
        )
    lo, hi = results[0], results[-1]
    summary: dict[str, object] = {"runs": args.runs, "results": results}
    if len(results) > 1:
        for what in ("parse", "walk"):
            ratio = hi[f"{what}_peak"] / lo[f"{what}_peak"]
            summary[f"{what}_peak_ratio"] = ratio
            ok = "ok" if ratio <= TARGET_PEAK_RATIO else "ABOVE TARGET"
            grown = hi[f"{what}_peak"] - lo[f"{what}_peak"]
            per_flow = grown / max(1, hi["flows"] - lo["flows"])
            print(
                f"peak RSS of {what}, {hi['packets']:,} / {lo['packets']:,} packets: "
                f"{ratio:.2f} (target <= {TARGET_PEAK_RATIO}) {ok}; grew {grown / mib:.0f} MiB"
                + (f" = {per_flow:.1f} bytes per added flow" if hi["flows"] > lo["flows"] else "")
            )
    per_20m = hi["walk_s"] * 20e6 / hi["packets"]
    ok = "ok" if per_20m <= TARGET_WALK_S_PER_20M else "ABOVE TARGET"
    print(
        f"walk of ts_ns + flow, scaled to 20M packets: {per_20m:.3f} s "
        f"(target < {TARGET_WALK_S_PER_20M} s) {ok}"
    )
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
