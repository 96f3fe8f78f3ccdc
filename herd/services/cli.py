"""Subcommands of the services: ``herd replay``, ``herd coordinator``, ``herd controller``,
``herd model-switch`` (registered into the ``herd`` command line by herd.cli)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any


def cmd_replay(args: argparse.Namespace) -> int:
    from herd.cli import _load, _print_json, params_from_args
    from herd.services.replay import format_result, run_replay
    from herd.services.security import run_tls_from_args
    from herd.store import Recorder
    from herd.store_record import coordinator_elephants, replay_metrics

    params = params_from_args(args)
    tls = run_tls_from_args(args)  # its files checked before the trace is loaded
    if params.delay_ms:
        print("herd replay: note: --delay-ms is the simulator's; a replay has the delay its "
              "processes take, measured and reported as params.delay_ms", file=sys.stderr)
    prep = _load(args.trace)

    def terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # so that run_replay stops every process it started

    signal.signal(signal.SIGTERM, terminated)
    rec = Recorder.from_args(args, prog="herd replay")
    elephants: dict[str, Any] = {}
    with rec.run("replay", {**params.to_dict(), "pps": args.pps},
                 trace_path=os.path.abspath(args.trace), trace_sha256=prep.trace.digest) as run:
        result = run_replay(prep, params, args.pps, workdir=args.workdir, keep=args.keep,
                            compare=args.compare, timeout=args.timeout, results=args.results,
                            log_level=args.log_level, delays_out=args.delays_out,
                            token_file=args.token_file, http=args.http, tls=tls,
                            elephants=elephants)
        if args.json:
            _print_json(result)
        else:
            print(format_result(result))
        code = 0
        if result["lost_messages"] != 0 or not result["drained"]:
            print(f"herd replay: warning: {result['lost_messages']} messages lost, drained="
                  f"{result['drained']}", file=sys.stderr)
            code = 1
        # After the outputs: a store that fails loses none of them.
        run.finish(replay_metrics(result), result["per_epoch"] if params.epoch_ms else (),
                   coordinator_elephants(prep, params, result["T"], elephants))
    return rec.exit_code(code)


def register_cli(sub: Any) -> None:
    from herd.cli import add_param_arguments
    from herd.services.security import add_run_tls_arguments
    from herd.store import add_db_arguments

    rp = sub.add_parser("replay", help="run coordinator, controllers and model switches as "
                        "real processes over a trace")
    rp.add_argument("--trace", required=True)
    add_param_arguments(rp)
    rp.add_argument("--pps", type=float, default=0.0,
                    help="packets per second over all switches, following the trace order "
                    "(default 0: every switch at full speed); with --epoch-ms the mean rate: the "
                    "trace's own timing sped up to it (default: the trace's own pace)")
    rp.add_argument("--json", action="store_true", help="print one JSON object (the keys of "
                    "herd simulate --json plus lost_messages, hello latency, reports/s)")
    rp.add_argument("--compare", action="store_true",
                    help="also run herd simulate under the measured timing (simulated_f1)")
    rp.add_argument("--results", help="copy the coordinator's results JSON here")
    rp.add_argument("--delays-out", help="write every entry write and the packet it took "
                    "effect at here (CSV for herd simulate --delays)")
    rp.add_argument("--workdir", help="keep sockets, journal, logs here (default: a temporary "
                    "directory, removed)")
    rp.add_argument("--keep", action="store_true", help="keep the temporary directory")
    rp.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds to wait for the replay to drain")
    rp.add_argument("--log-level", default="WARNING", help="of the service processes")
    rp.add_argument("--token-file", help="the token the processes share (else $HERD_TOKEN, "
                    "else a fresh one in the run's directory)")
    rp.add_argument("--http", metavar="HOST:PORT", help="the coordinator's live view (web page "
                    "and JSON API) here, on loopback; port 0 picks one; the URL is printed")
    add_run_tls_arguments(rp)
    add_db_arguments(rp)
    rp.set_defaults(func=cmd_replay)

    for name, module, helptext in (
        ("coordinator", "herd.services.coordinator_service",
         "run the coordinator service (gRPC)"),
        ("controller", "herd.services.controller_service",
         "run a local controller for one switch"),
        ("model-switch", "herd.services.model_switch",
         "run a model switch process (the Python switch behind a socket)"),
    ):
        p = sub.add_parser(name, help=helptext)
        mod = __import__(module, fromlist=["add_arguments"])
        mod.add_arguments(p)
        p.set_defaults(func=lambda a, m=mod: int(m.serve(a)))
