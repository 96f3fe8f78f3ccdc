"""Benchmark of the coordinator service: report batches from 10 controllers on loopback.

    python bench/bench_coordinator.py [--clients 10] [--reports 200000] [--batch 1000]
                                      [--runs 5] [--fsync]
                                      [--tls-cert C --tls-key K --tls-ca CA]

Each run starts a fresh coordinator process (journal in a temporary directory), then
``--clients`` client processes, each registering as one switch and streaming ``--reports``
reports in batches of ``--batch`` over the Reports stream (the controllers' path: gRPC,
token, journal commit before the ack). Batches are serialised before the clock starts, so
the clients cost little CPU and the figure is the coordinator's. A run's rate is all
reports / (last ack - common start); loss = reports sent - reports the coordinator counts
(it must be 0, and no report may be counted twice). With --tls-cert/--tls-key/--tls-ca the
coordinator serves TLS and the clients verify it (what TLS costs). Prints the median of the
runs, a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from herd.services.security import add_run_tls_arguments, run_tls_from_args  # noqa: E402

TARGET_REPORTS_PER_SECOND = 50_000


def client(args: argparse.Namespace) -> int:
    """One controller's worth of reports, as fast as acks come back."""
    import grpc

    from herd.services.controller_service import CoordinatorClient
    from herd.services.rpc import herd_pb2 as pb

    token = Path(args.token_file).read_text().strip()
    c = CoordinatorClient(args.address, token, args.tls_ca, args.tls_server_name)
    reply = c.register(pb.RegisterRequest(switch_name=f"s{args.client + 1}"), timeout=30,
                       metadata=c.metadata)
    rng = np.random.default_rng(args.client)
    pool = 50_000  # distinct flows per client: the flow table grows as in a real run
    src = rng.integers(1, 1 << 32, pool, dtype=np.uint64).astype(np.uint32)
    dst = rng.integers(1, 1 << 32, pool, dtype=np.uint64).astype(np.uint32)
    sport = rng.integers(1024, 65536, pool).astype(np.uint32)
    pick = rng.integers(0, pool, args.reports)
    payloads = []
    for a in range(0, args.reports, args.batch):
        b = min(args.reports, a + args.batch)
        f = pick[a:b]
        payloads.append(pb.ReportBatch(
            switch_id=reply.switch_id, seq=range(a + 1, b + 1), ts_ns=[0] * (b - a),
            src=src[f].tolist(), dst=dst[f].tolist(), sport=sport[f].tolist(),
            dport=[443] * (b - a), proto=[6] * (b - a), count=[10] * (b - a),
        ).SerializeToString())
    raw = c.channel.stream_stream("/herd.v1.Coordinator/Reports")  # bytes: no client encoding
    delay = args.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    last = 0
    try:
        for ack in raw(iter(payloads), metadata=c.metadata):
            last = pb.ReportAck.FromString(ack).acked_seq
    except grpc.RpcError as e:
        print(json.dumps({"error": str(e.code())}))
        return 1
    print(json.dumps({"acked": last, "end": time.time()}))
    return 0


def one_run(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    from herd.services.common import write_token_file
    from herd.services.replay import free_port

    port = free_port()
    address = f"127.0.0.1:{port}"
    token_file = tmp / "token"
    write_token_file(token_file)
    ready = tmp / "ready"
    coord_args = [sys.executable, "-m", "herd.services.coordinator_service", "--listen",
                  address, "--k", str(args.clients), "--R", "10", "--token-file",
                  str(token_file), "--journal", str(tmp / "j.sqlite"), "--results",
                  str(tmp / "results.json"), "--ready-file", str(ready), "--log-level",
                  "WARNING"]
    if args.fsync:
        coord_args.append("--fsync")
    tls = args.run_tls
    if tls is not None:
        coord_args += tls.server_args()
    coord = subprocess.Popen(coord_args)
    clients: list[subprocess.Popen[str]] = []
    try:
        while not ready.exists():
            if coord.poll() is not None:
                raise RuntimeError("coordinator failed to start")
            time.sleep(0.05)
        start_at = time.time() + 3.0 + 0.3 * args.clients  # room to build the batches
        for i in range(args.clients):
            clients.append(subprocess.Popen(
                [sys.executable, __file__, "--as-client", str(i), "--address", address,
                 "--token-file", str(token_file), "--reports", str(args.reports), "--batch",
                 str(args.batch), "--start-at", repr(start_at),
                 *(tls.client_args() if tls else [])],
                stdout=subprocess.PIPE, text=True))
        outs = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1])
                for p in clients]
        if any("error" in o for o in outs):
            raise RuntimeError(f"client error: {outs}")
        end = max(o["end"] for o in outs)
        from herd.services.controller_service import CoordinatorClient
        from herd.services.rpc import herd_pb2 as pb

        c = CoordinatorClient(address, token_file.read_text().strip(),
                              tls.ca if tls else None, tls.server_name if tls else None)
        counters = dict(c.query(pb.QueryRequest(), metadata=c.metadata, timeout=30).counters)
        c.close()
        sent = args.clients * args.reports
        return {
            "reports_per_second": sent / (end - start_at),
            "seconds": end - start_at,
            "sent": sent,
            "counted": counters["reports"],
            "lost": sent - counters["reports"],
            "duplicates": counters["duplicates"],
            "commits": counters["journal_commits"],
            "rss_mb": counters["rss_bytes"] / 2**20,
        }
    finally:
        for p in clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        coord.send_signal(signal.SIGTERM)
        try:
            coord.wait(20)
        except subprocess.TimeoutExpired:
            coord.kill()
            coord.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--reports", type=int, default=200_000, help="per client")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--fsync", action="store_true", help="coordinator with --fsync")
    add_run_tls_arguments(p)
    # client mode (internal)
    p.add_argument("--as-client", dest="client", type=int, help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    p.add_argument("--token-file", help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client is not None:
        return client(args)
    args.run_tls = run_tls_from_args(args)
    runs = []
    for r in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="herd-bench-coord-") as tmp:
            res = one_run(args, Path(tmp))
        runs.append(res)
        print(f"run {r + 1}: {res['reports_per_second']:>10,.0f} reports/s  "
              f"({res['sent']:,} in {res['seconds']:.2f} s, lost {res['lost']}, "
              f"duplicates {res['duplicates']}, {res['commits']} commits, "
              f"RSS {res['rss_mb']:.0f} MiB)", flush=True)
    med = statistics.median(r["reports_per_second"] for r in runs)
    lost = sum(r["lost"] for r in runs)
    print(f"median {med:,.0f} reports/s over {args.runs} runs; {args.clients} clients, batches "
          f"of {args.batch}; lost {lost} (target >= {TARGET_REPORTS_PER_SECOND:,} reports/s, "
          f"0 lost); {os.cpu_count()} CPUs")
    print(json.dumps({"median_reports_per_second": med, "lost": lost, "runs": runs,
                      "clients": args.clients, "batch": args.batch, "fsync": args.fsync,
                      "tls": args.run_tls is not None}))
    return 0 if med >= TARGET_REPORTS_PER_SECOND and lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
