"""The ``herd`` command line. Each subcommand parses its arguments and calls the library;
bad input becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from herd import __version__
from herd.errors import HerdInputError
from herd.fileio import json_default
from herd.params import ALGORITHMS, DEFAULT_CONFIRM_REPORTS, Params, load_params_file

if TYPE_CHECKING:
    from herd.delays import MeasuredTiming
    from herd.prepared import SimulationResult


def _stages(text: str) -> tuple[int, ...]:
    try:
        stages = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not comma-separated integers") from None
    if not stages:
        raise argparse.ArgumentTypeError("no stage sizes given")
    return stages


def epoch_length(text: str) -> float:
    """--epoch-ms: a number of milliseconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the epoch length must be >= 0 "
                                         "(0: one epoch)")
    return value


def add_epoch_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--epoch-ms", dest="epoch_ms", type=epoch_length, metavar="W",
                   help="measure per epoch of W ms: switch tables empty at each epoch, heavy "
                   "hitters and elephants are (flow, epoch) pairs (default 0: one epoch, "
                   "the whole trace)")


class OneLineErrors(argparse.ArgumentParser):
    """Bad arguments are one line on stderr and exit status 2, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_param_arguments(p: argparse.ArgumentParser) -> None:
    """The Herd parameters every evaluating command takes (defaults: DESIGN.md)."""
    g = p.add_argument_group("Herd parameters (defaults as DESIGN.md)")
    g.add_argument("--params", metavar="FILE", help="JSON parameter file (e.g. from herd tune); "
                   "flags given explicitly override it")
    g.add_argument("--s", "--sampling-probability", dest="s", type=float,
                   help="sampling probability s (default 0.2)")
    g.add_argument("--epsilon", type=float, help="approximation factor (default 0.1)")
    g.add_argument("--R", type=int, help="reports that make an elephant (default round(1/epsilon))")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--percentile", type=float, help="T = floor(this percentile of flow sizes) "
                   "(default 99)")
    t.add_argument("--T", type=int, help="the heavy-hitter threshold T in packets, given")
    g.add_argument("--k", type=int, help="ingress switches (default 10)")
    g.add_argument("--p", type=float, help="probability a packet takes its flow's primary "
                   "ingress switch (default 0.95)")
    g.add_argument("--stages", type=_stages, help="hash-table stage sizes, e.g. 4096,2048,1024")
    g.add_argument("--delay-ms", dest="delay_ms", type=float,
                   help="control-loop delay hello -> entry installed, ms (default 0)")
    add_epoch_argument(g)
    g.add_argument("--seed", type=int, help="seed of every random choice (default 1)")
    g.add_argument("--overflow-policy", dest="overflow_policy", choices=("ignore", "reset"))
    g.add_argument("--algorithm", choices=ALGORITHMS, help="herd (default) or a baseline")
    g.add_argument("--q", type=float, help="per-packet sampling probability of the sampling "
                   "baseline (default 0.01)")
    g.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=None,
                   help="Herd + confirm: at each epoch's end pull the held totals of the "
                   "flows with >= C reports; an elephant iff they sum to >= T (costs: pull "
                   "messages, 24-byte slots instead of 12)")
    g.add_argument("--confirm-reports", dest="confirm_reports", type=int, metavar="C",
                   help="reports that make a flow a confirm candidate (default "
                   f"{DEFAULT_CONFIRM_REPORTS})")


PARAM_FIELDS = ("s", "epsilon", "R", "percentile", "T", "k", "p", "stages", "delay_ms",
                "epoch_ms", "seed", "overflow_policy", "algorithm", "q", "confirm",
                "confirm_reports")


def params_from_args(args: argparse.Namespace) -> Params:
    values: dict[str, Any] = {}
    if getattr(args, "params", None):
        values.update(load_params_file(args.params))
    for name in PARAM_FIELDS:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    if getattr(args, "T", None) is not None:
        values.pop("percentile", None)
    elif getattr(args, "percentile", None) is not None:
        values.pop("T", None)
    return Params.from_dict(values, source=args.params or "arguments")


# Runs of more packets than this show a progress bar on an interactive terminal.
PROGRESS_PACKETS = 20_000_000


def _packet_progress(label: str, packets: int) -> Any:
    """A tqdm progress callback (done, total) for a long run on a terminal, else None."""
    if packets < PROGRESS_PACKETS or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar = tqdm(total=packets, desc=label, unit="pkt", unit_scale=True, file=sys.stderr,
               leave=False)

    def update(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1, default=json_default)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- trace


def cmd_trace_info(args: argparse.Namespace) -> int:
    from herd.trace import format_trace_info, load_trace, trace_info

    trace = load_trace(args.file, progress=sys.stderr.isatty())
    info = trace_info(trace)
    if args.epoch_ms:
        from herd.groundtruth import epoch_info, format_epoch_info

        info["epochs"] = epoch_info(trace, args.epoch_ms)
    if args.json:
        _print_json(info)
    else:
        print(format_trace_info(info))
        if args.epoch_ms:
            print(format_epoch_info(info["epochs"]))
    return 0


def cmd_trace_synth(args: argparse.Namespace) -> int:
    from herd.synth import write_synthetic_pcap

    kw = {} if args.rate is None else {"rate_pps": args.rate}
    pk = write_synthetic_pcap(args.out, args.packets, args.flows, args.seed, **kw)
    print(f"wrote {len(pk.ts_ns)} packets to {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- simulate / sweep


def _load(path: str) -> Any:
    from herd.prepared import PreparedTrace
    from herd.trace import load_trace

    return PreparedTrace(load_trace(path, progress=sys.stderr.isatty()))


def cmd_simulate(args: argparse.Namespace) -> int:
    from herd.evaluate import simulate
    from herd.store import Recorder
    from herd.store_record import result_metrics, simulation_elephants

    params = params_from_args(args)
    delays = None
    if args.delays:
        from herd.delays import read_timing

        delays = read_timing(args.delays)
    prep = _load(args.trace)
    rec = Recorder.from_args(args, prog="herd simulate")
    run_params = {**params.to_dict(),
                  **({"delays_file": os.path.abspath(args.delays)} if args.delays else {})}
    with rec.run("simulate", run_params, trace_path=os.path.abspath(args.trace),
                 trace_sha256=prep.trace.digest) as run:
        result = simulate(prep, params, delays, _packet_progress("simulate", prep.trace.packets))
        d = result.to_dict()
        if delays is not None:
            d["delays_file"] = args.delays
        _show_simulation(args, params, d, result, delays)
        # After the outputs: a store that fails loses none of them.
        run.finish(result_metrics(d, drop=("delays_file",)),
                   result.per_epoch if params.epoch_ms else (),
                   simulation_elephants(prep, result))
    return rec.exit_code(0)


def _show_simulation(args: argparse.Namespace, params: Params, d: dict[str, Any],
                     result: SimulationResult, delays: MeasuredTiming | None) -> None:
    """herd simulate's outputs: the per-epoch CSV, then JSON or text on stdout."""
    if args.per_epoch_csv:
        from herd.metrics import write_per_epoch_csv

        write_per_epoch_csv(args.per_epoch_csv, result.per_epoch)
    if args.json:
        _print_json(d)
    else:
        print(f"trace {d['trace']} ({d['packets']} packets, digest {d['trace_digest'][:12]})")
        print(f"T={d['T']} R={d['R']} heavy hitters={d['heavy_hitters']} "
              f"detected={d['detected']}")
        if params.epoch_ms:
            f1s = [r["f1"] for r in d["per_epoch"] if r["heavy_hitters"] or r["detected"]]
            spread = f" (per epoch: min {min(f1s):.4f}, max {max(f1s):.4f})" if f1s else ""
            print(f"epochs={d['epochs']} of {params.epoch_ms:g} ms; heavy hitters and "
                  f"detections are (flow, epoch) pairs, F1 micro-averaged{spread}")
        print(f"F1={d['f1']:.4f} precision={d['precision']:.4f} recall={d['recall']:.4f}")
        pulls = f", confirm's pulls {d['pull_messages']}" if params.confirm else ""
        print(f"messages={d['messages']} (hellos {d['hellos']}, reports {d['reports']}, "
              f"overflows {d['overflows']}{pulls}), max per switch "
              f"{d['max_messages_per_switch']}")
        print(f"max states per switch={d['max_states']} of {d['slots_per_switch']} slots "
              f"({d['slot_bytes']} bytes a slot: {d['table_bytes_per_switch']} bytes a switch)")
        if params.confirm:
            print(f"confirm (C={params.confirm_reports}): {d['confirm_candidates']} candidates "
                  f"pulled, {d['confirmed']} confirmed, {d['withdrawn']} early detections "
                  f"withdrawn, {d['unknown_held_totals']} held totals unknown; detection delay "
                  f"p50 early {_ms(d.get('early_detection_delay_ms_p50'))}, confirmed "
                  f"{_ms(d.get('confirmed_detection_delay_ms_p50'))}")
        if delays is not None:
            print(f"measured timing: {d['measured_delays']} entry writes used "
                  f"({d['measured_delays_mismatched']} rows did not match this trace), "
                  f"{d['measured_epoch_starts']} switch epoch starts")
        print(f"simulated in {d['seconds']:.3f} s")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def cmd_sweep(args: argparse.Namespace) -> int:
    from herd.executor import make_executor
    from herd.store import Recorder
    from herd.store_record import record_sweep_row
    from herd.sweep import (
        parse_values,
        plot_sweep,
        read_layout,
        run_sweep,
        stderr_progress,
        sweep_title,
        write_results,
    )

    if args.layout:
        param, values = read_layout(args.layout)
    else:
        if not args.param or args.values is None:
            raise HerdInputError("sweep: give --param and --values, or --layout FILE")
        param, values = args.param, parse_values(args.param, args.values)
    base = params_from_args(args)
    # Check every point before running any, so a bad value fails fast and writes nothing.
    from herd.sweep import params_for

    for v in values:
        params_for(base, param, v, base.seed)
    prep = _load(args.trace)
    # Connect (--ray) first: an unreachable cluster fails before anything is recorded.
    executor = make_executor(prep, args.ray, args.workers)
    rec = Recorder.from_args(args, prog="herd sweep")
    results: list[list[SimulationResult]] = []  # each row's simulations, for the store
    trace = {"trace_path": os.path.abspath(args.trace), "trace_sha256": prep.trace.digest}
    with rec.run("sweep", {**base.to_dict(), "swept": param, "values": list(values),
                           "seeds": args.seeds}, **trace) as run:
        try:
            rows = run_sweep(prep, base, param, values, args.seeds,
                             stderr_progress(f"sweep {param}"), executor, results)
        finally:
            executor.close()
        meta = {"herd_version": __version__, "command": sys.argv, "base_params": base.to_dict(),
                "trace": args.trace, "trace_digest": prep.trace.digest}
        json_path = write_results(args.out, param, rows, meta)
        print(f"CSV: {args.out}")
        print(f"run record: {json_path}")
        if args.plot:
            plot_sweep(args.plot, param, rows, sweep_title(args.trace, param, rows))
            print(f"plot: {args.plot}")
        # After the outputs: a store that fails loses none of them.
        for row, runs in zip(rows, results, strict=True):
            record_sweep_row(rec, run.id, prep, param, row, runs, trace)
        run.finish({"rows": len(rows), "csv": os.path.abspath(args.out),
                    "run_record": os.path.abspath(json_path),
                    "plot": os.path.abspath(args.plot) if args.plot else None})
    return rec.exit_code(0)


def cmd_score(args: argparse.Namespace) -> int:
    from herd.services.results import read_results, score_results

    params = params_from_args(args)
    results = read_results(args.results)
    prep = _load(args.trace)
    d = score_results(prep, params, results, args.results)
    if args.per_epoch_csv:
        from herd.metrics import write_per_epoch_csv

        write_per_epoch_csv(args.per_epoch_csv, d["per_epoch"])
    if args.json:
        _print_json(d)
    else:
        print(f"{args.results}: {len(results['elephants'])} elephants; trace {args.trace} "
              f"(digest {d['trace_digest'][:12]}), T={d['T']}, {d['epochs']} epoch(s)")
        print(f"heavy hitters={d['heavy_hitters']} detected={d['detected']} (not in the "
              f"trace: {d['not_in_trace']})")
        print(f"F1={d['f1']:.4f} precision={d['precision']:.4f} recall={d['recall']:.4f}")
    return 0


# ---------------------------------------------------------------- parser


CORE_COMMANDS = ("trace", "simulate", "sweep", "score")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the subcommand about to run, only what it needs (the other
    commands' modules are not imported: a faster start)."""
    from herd.executor import add_ray_argument
    from herd.store import add_db_arguments

    parser = OneLineErrors(
        prog="herd", description="Network-wide heavy-hitter detection with Herd: simulate, "
        "sweep, tune, emulate.")
    parser.add_argument("--version", action="version", version=f"herd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrors)

    trace = sub.add_parser("trace", help="inspect or synthesise packet traces")
    tsub = trace.add_subparsers(dest="trace_command", required=True, parser_class=OneLineErrors)
    info = tsub.add_parser("info", help="packets, flows, groups and flow-size percentiles")
    info.add_argument("file")
    info.add_argument("--json", action="store_true")
    add_epoch_argument(info)
    info.set_defaults(func=cmd_trace_info)
    synth = tsub.add_parser("synth", help="write a realistic synthetic capture")
    synth.add_argument("--packets", type=int, required=True)
    synth.add_argument("--flows", type=int)
    synth.add_argument("--seed", type=int, default=1)
    synth.add_argument("--rate", type=float, help="mean packets per second of the timestamps")
    synth.add_argument("--out", required=True)
    synth.set_defaults(func=cmd_trace_synth)

    sim = sub.add_parser("simulate", help="run Herd (or a baseline) over a trace")
    sim.add_argument("--trace", required=True)
    add_param_arguments(sim)
    sim.add_argument("--delays", help="the control-plane timing a testbed or replay run measured "
                     "(its *-delays-*.csv): each switch's entries follow the run's writes; "
                     "--delay-ms then covers only the groups it lacks")
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    sim.add_argument("--per-epoch-csv", dest="per_epoch_csv", metavar="FILE",
                     help="write one row per epoch (F1, messages, states, ...) to this CSV")
    add_db_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    sw = sub.add_parser("sweep", help="simulate over a list of parameter values: CSV and plot")
    sw.add_argument("--trace", required=True)
    sw.add_argument("--param", help="epsilon, sampling_probability, R, delay_ms, p, k, "
                    "confirm, confirm_reports, ...")
    sw.add_argument("--values", help="comma-separated values")
    sw.add_argument("--layout", help="a layout CSV (<param>,f1score,precision,recall + values)")
    sw.add_argument("--seeds", type=int, default=1, help="seeds per value (mean and spread)")
    sw.add_argument("--out", required=True, help="CSV to write")
    sw.add_argument("--plot", help="PNG to write")
    sw.add_argument("--workers", type=int, help="processes (default 1; with --ray and no "
                    "cluster, the local Ray instance's CPUs, default all)")
    add_ray_argument(sw)
    add_param_arguments(sw)
    add_db_arguments(sw)
    sw.set_defaults(func=cmd_sweep)

    sc = sub.add_parser("score", help="score a coordinator's results file against the trace "
                        "that was replayed (F1, precision, recall, per epoch)")
    sc.add_argument("--results", required=True,
                    help="the coordinator's results JSON (herd coordinator --results)")
    sc.add_argument("--trace", required=True, help="the pcap that was replayed")
    add_param_arguments(sc)
    sc.add_argument("--json", action="store_true", help="print one JSON object")
    sc.add_argument("--per-epoch-csv", dest="per_epoch_csv", metavar="FILE",
                    help="write one row per epoch to this CSV")
    sc.set_defaults(func=cmd_score)

    if command not in CORE_COMMANDS:
        for register in _extra_commands():
            register(sub)
    return parser


def _extra_commands() -> list[Any]:
    """Subcommands defined next to their features (tuning, figures, services, testbed, runs)."""
    import importlib

    out = []
    for name in ("herd.tuning", "herd.figures", "herd.services.cli", "herd.testbed.cli",
                 "herd.runs"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and (e.name == name or name.startswith(e.name + ".")):
                continue
            raise
        out.append(module.register_cli)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HerdInputError as e:
        print(f"herd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("herd: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
