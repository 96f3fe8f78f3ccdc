"""A manual testbed session, like a p4run session: the evaluation topology up in Mininet on
either target, controllers and coordinator optional, then the Mininet CLI (``h1 tcpreplay
...``, ``h2 tcpdump ...``). Everything is torn down when the CLI exits.

    sudo .venv/bin/python -m herd.testbed.session [--k 10] [--target model|bmv2] \
        [--controllers --trace PCAP --s 0.2 --epsilon 0.1 [--T T] [--confirm [--confirm-reports C]]]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from herd.errors import HerdInputError
from herd.params import Params, add_confirm_arguments
from herd.prepared import PreparedTrace
from herd.testbed.harness import Bmv2TestbedRun, Testbed, TestbedRun
from herd.testbed.network import require_root_and_mininet
from herd.testbed.topology import INGRESS
from herd.trace import load_trace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", choices=("model", "bmv2"), default="model")
    ap.add_argument("--controllers", action="store_true",
                    help="start the coordinator and one local controller per ingress switch")
    ap.add_argument("--trace", help="with --controllers: the pcap whose ground truth sets T")
    ap.add_argument("--s", type=float, default=0.2)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--T", type=int, help="the heavy-hitter threshold (default: the trace's "
                    "99th percentile)")
    ap.add_argument("--seed", type=int, default=1)
    add_confirm_arguments(ap)  # with --controllers: the coordinator's
    ap.add_argument("--http", metavar="HOST:PORT", help="with --controllers: the coordinator's "
                    "live view (web page and JSON API) here, on loopback; port 0 picks one")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="herd-session-"))
    try:
        require_root_and_mininet()
        params = Params(s=args.s, epsilon=args.epsilon, T=args.T, k=args.k, seed=args.seed,
                        confirm=args.confirm, confirm_reports=args.confirm_reports)
        prep = None
        if args.controllers:
            if not args.trace:
                raise HerdInputError("--controllers needs --trace (its ground truth gives T "
                                     "and scores the elephants)")
            prep = PreparedTrace(load_trace(args.trace))
        from mininet.cli import CLI

        with Testbed(args.k, args.target, params.stages, workdir) as tb:
            tb.restart_switches(params)
            run = None
            if prep is not None:
                if args.target == "bmv2":
                    ingress = sorted((sw for sw in tb.net.switches if sw.kind == INGRESS),
                                     key=lambda sw: sw.index)
                    run = Bmv2TestbedRun(prep, params, 0.0, workdir=str(workdir),
                                         switches=ingress, http=args.http)
                else:
                    run = TestbedRun(prep, params, 0.0, workdir=str(workdir), http=args.http)
                run.start()
                print(f"coordinator on {run.address}; token in {run.token_source}; logs in "
                      f"{workdir / 'logs'}", file=sys.stderr)
                if run.http_url:
                    print(f"live view on {run.http_url}", file=sys.stderr)
            print("h1 sends into the load balancer, h2 receives: e.g. "
                  f"h1 tcpreplay -i h1-eth0 --pps=1000 {args.trace or 'FILE.pcap'}",
                  file=sys.stderr)
            try:
                CLI(tb.net)
            finally:
                if run is not None:
                    run.close(keep=True)
    except HerdInputError as e:
        print(f"herd session: error: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
