"""Benchmark of trace ingest: parse rate, cached reload rate and peak memory per packet.

    python bench/bench_trace.py [--packets 5000000] [--runs 5] [--keep FILE]

Writes a synthetic headers-only pcap (Ethernet / IPv4 / TCP, 54 captured bytes a packet,
about N/7 flows) with vectorised numpy, then measures, as the median of --runs runs:
  - parse (cold cache): load_trace on an empty cache directory (parse, number flows, write
    the cache), and parse only (use_cache=False);
  - reload (warm cache): load_trace when the cache holds the trace;
  - peak memory per packet of a parse and of a reload, each in a fresh subprocess: peak RSS
    (VmHWM) minus the RSS after imports and kernel warm-up, divided by the packet count.
The capture file sits in the OS page cache in every run: these are CPU, not disk, figures.
Prints a human-readable table and, last, one JSON line.
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

# Runnable from a checkout without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RECORD = 16 + 14 + 20 + 20  # pcap record header + Ethernet + IPv4 + TCP
TARGET_PARSE_PPS = 1_000_000
TARGET_RELOAD_PPS = 20_000_000
TARGET_BYTES_PER_PACKET = 64


def write_synthetic_pcap(
    path: Path, packets: int, seed: int = 1, packets_per_flow: float = 7.0
) -> int:
    """A headers-only µs pcap of `packets` TCP packets over about packets/packets_per_flow
    flows; returns the number of distinct flows. Written in blocks so memory stays small."""
    rng = np.random.default_rng(seed)
    nflows = max(1, int(packets / packets_per_flow))
    f_src = rng.integers(1, 2**32, nflows, dtype=np.uint64).astype(np.uint32)
    f_dst = rng.integers(1, 2**32, nflows, dtype=np.uint64).astype(np.uint32)
    f_sport = rng.integers(1024, 65536, nflows).astype(np.uint16)
    f_dport = rng.choice(np.array([80, 443, 53, 22, 8080], np.uint16), nflows)
    # Zipf-ish sizes, so that there are elephants, over flows numbered at random.
    weights = 1.0 / np.arange(1, nflows + 1) ** 0.6
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    perm = rng.permutation(nflows)

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
    # its cache index entry confirmed by a hash (see herd.trace.RACY_NS), which is not what
    # a reload of a real trace costs.
    old = time.time() - 3600
    os.utime(path, (old, old))
    return int(distinct.sum())


def write_tiny_pcap(path: Path) -> None:
    write_synthetic_pcap(path, 100, seed=2)


_MEMORY_CHILD = r"""
import gc, json, os, sys
sys.path.insert(0, sys.argv[4])
from herd.trace import load_trace

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

path, tiny, mode = sys.argv[1], sys.argv[2], sys.argv[3]
load_trace(tiny, use_cache=False)        # load the compiled kernels
if mode == "reload":
    load_trace(tiny)
gc.collect()
base = status("VmRSS")
t = load_trace(path, use_cache=(mode == "reload"))
print(json.dumps({"packets": t.packets, "baseline": base, "peak": status("VmHWM")}))
"""


def measure_memory(path: Path, tiny: Path, mode: str, env: dict[str, str]) -> dict[str, float]:
    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(path), str(tiny), mode, repo],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    r["bytes_per_packet"] = (r["peak"] - r["baseline"]) / r["packets"]
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=5_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--packets-per-flow",
        type=float,
        default=7.0,
        help="mean flow size of the synthetic trace (CAIDA slices: about 7)",
    )
    ap.add_argument("--keep", type=Path, help="write the synthetic pcap here and keep it")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    cache = work / "cache"
    os.environ["HERD_CACHE_DIR"] = str(cache)
    env = dict(os.environ)
    from herd.trace import load_trace

    try:
        path = args.keep or work / "synthetic.pcap"
        tiny = work / "tiny.pcap"
        t0 = time.perf_counter()
        nflows = write_synthetic_pcap(path, args.packets, packets_per_flow=args.packets_per_flow)
        write_tiny_pcap(tiny)
        size = path.stat().st_size
        print(
            f"wrote {path}: {args.packets:,} packets, {nflows:,} flows, {size / 2**20:.1f} MiB "
            f"in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        load_trace(tiny, use_cache=False)  # compile / load the kernels outside the timings

        def timed(fn) -> float:
            t = time.perf_counter()
            trace = fn()
            dt = time.perf_counter() - t
            assert trace.packets == args.packets and trace.flows == nflows, trace
            return dt

        parse_only, parse_cold, reload = [], [], []
        for _ in range(args.runs):
            parse_only.append(timed(lambda: load_trace(path, use_cache=False)))
            shutil.rmtree(cache, ignore_errors=True)
            parse_cold.append(timed(lambda: load_trace(path)))
            reload.append(timed(lambda: load_trace(path)))
        mem_parse = measure_memory(path, tiny, "parse", env)
        mem_reload = measure_memory(path, tiny, "reload", env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.packets
    res = {
        "packets": n,
        "flows": nflows,
        "file_bytes": size,
        "runs": args.runs,
        "parse_pps": n / statistics.median(parse_cold),
        "parse_only_pps": n / statistics.median(parse_only),
        "reload_pps": n / statistics.median(reload),
        "parse_peak_bytes_per_packet": mem_parse["bytes_per_packet"],
        "reload_peak_bytes_per_packet": mem_reload["bytes_per_packet"],
    }
    rows = [
        ("parse, cold cache (incl. cache write)", res["parse_pps"], TARGET_PARSE_PPS),
        ("parse only (no cache)", res["parse_only_pps"], TARGET_PARSE_PPS),
        ("reload, warm cache", res["reload_pps"], TARGET_RELOAD_PPS),
    ]
    for label, pps, target in rows:
        ok = "ok" if pps >= target else "BELOW TARGET"
        print(f"{label:<40} {pps / 1e6:8.2f} M packets/s   (target {target / 1e6:g} M) {ok}")
    for label, key in (
        ("parse", "parse_peak_bytes_per_packet"),
        ("reload", "reload_peak_bytes_per_packet"),
    ):
        bpp = res[key]
        ok = "ok" if bpp <= TARGET_BYTES_PER_PACKET else "ABOVE TARGET"
        print(
            f"peak memory, {label:<26} {bpp:8.1f} bytes/packet  "
            f"(target <= {TARGET_BYTES_PER_PACKET}) {ok}"
        )
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
