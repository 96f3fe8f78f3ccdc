"""``herd runs``: list, show, export, compare and remove the runs in the results database.

    herd runs list [--kind K] [--trace DIGEST|PATH] [--where "f1>=0.85"]... [--since 2d]
                   [--limit N] [--all] [--json]
    herd runs show ID [--elephants N] [--epochs N] [--json]
    herd runs export ID... --csv FILE [--param NAME]
    herd runs compare ID ID [--json]
    herd runs rm ID...

Every subcommand takes ``--db FILE`` (default ``$HERD_DB``, else the user's data directory).
A bad condition, time or id is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from herd.errors import HerdInputError
from herd.store import NAME_ALIASES, Elephant, Run, RunStore, default_db_path

OPERATORS = (">=", "<=", "!=", "==", "=", ">", "<")
_WHERE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(>=|<=|!=|==|=|>|<)\s*(.*?)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# Parameters shown in a listing, when a run has them (the rest: herd runs show).
KEY_PARAMS = ("algorithm", "epsilon", "s", "R", "k", "p", "epoch_ms", "confirm")
PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp"}


# ---------------------------------------------------------------- parsing


def parse_where(text: str) -> tuple[str, str, Any]:
    """``name OP value`` (OP one of >=, <=, !=, =, >, <): numbers compare as numbers,
    true/false as 1/0, anything else as text (quotes optional)."""
    m = _WHERE.match(text)
    if not m or not m.group(3):
        raise HerdInputError(f"--where {text!r}: expected NAME OP VALUE with OP one of "
                             f"{', '.join(o for o in OPERATORS if o != '==')} "
                             "(e.g. \"f1>=0.85\")")
    name, op, raw = m.groups()
    if raw[:1] in ("<", ">", "=", "!"):
        raise HerdInputError(f"--where {text!r}: {op + raw[:1]!r} is not an operator")
    op = "=" if op == "==" else op
    value: Any
    if raw.lower() in ("true", "false"):
        value = int(raw.lower() == "true")
    else:
        try:
            value = int(raw)
        except ValueError:
            try:
                value = float(raw)
                if not math.isfinite(value):
                    raise ValueError
            except ValueError:
                value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"" \
                    else raw
    return name, op, value


def parse_since(text: str, now: datetime | None = None) -> str:
    """An ISO-8601 date or time (UTC unless it says otherwise) or a duration back from now
    (``90s``, ``30m``, ``3h``, ``2d``, ``1w``), as the store's UTC timestamps."""
    now = now or datetime.now(UTC)
    m = _DURATION.match(text)
    if m:
        when = now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise HerdInputError(f"--since {text!r}: not an ISO date or time "
                                 "(2026-11-30, 2026-11-30T10:00) or a duration back from "
                                 "now (30m, 3h, 2d, 1w)") from None
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _run_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id (a whole number)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id (ids start at 1)")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be >= 0")
    return value


# ---------------------------------------------------------------- formatting


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list | dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _lookup(d: Mapping[str, Any] | None, name: str) -> Any:
    if not d:
        return None
    for n in (name, *NAME_ALIASES.get(name, ())):
        if d.get(n) is not None:
            return d[n]
    return None


def _metric(run: Run, name: str) -> Any:
    return _lookup(run.metrics, name)


def _started(run: Run) -> str:
    return run.started_utc[:19].replace("T", " ")


def _trace(run: Run) -> str:
    name = Path(run.trace_path).name if run.trace_path else ""
    digest = run.trace_sha256[:8] if run.trace_sha256 else ""
    text = " ".join(x for x in (name[:24], digest) if x)
    return text or "-"


def _key_params(run: Run) -> str:
    p = run.params
    out = []
    swept = p.get("swept")
    if swept:
        out.append(f"{swept}={_value(p.get(swept))}" if run.kind.endswith("_row")
                   else f"swept={swept}")
    for name in KEY_PARAMS:
        if name == swept or name not in p or p[name] is None:
            continue
        v = p[name]
        if name == "algorithm" and v == "herd":
            continue
        if name == "epoch_ms" and not v:
            continue
        if name == "confirm":
            if v:
                out.append(f"confirm C={p.get('confirm_reports')}")
            continue
        out.append(f"{name}={_value(v)}")
    return " ".join(out) or "-"


def _ratio(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
             for r in (header, *rows)]
    return "\n".join(lines)


def runs_table(runs: Sequence[Run]) -> str:
    rows = []
    for r in runs:
        kind = f"{r.kind} ({r.children})" if r.children else r.kind
        status = r.status if r.status in ("done", "running") or not r.reason \
            else f"{r.status}: {r.reason[:40]}"
        rows.append([str(r.id), kind, status, _started(r), _trace(r), _key_params(r),
                     _ratio(_metric(r, "f1")), _ratio(_metric(r, "precision")),
                     _ratio(_metric(r, "recall")), _value(_metric(r, "messages"))])
    return _table(["id", "kind", "status", "started (UTC)", "trace", "parameters", "f1",
                   "precision", "recall", "messages"], rows)


def _ip(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


def elephants_table(elephants: Sequence[Elephant]) -> str:
    rows = [[_ip(e.src), _ip(e.dst), str(e.sport), str(e.dport),
             PROTOCOLS.get(e.proto, str(e.proto)), _value(e.epoch), _value(e.reports),
             _detected(e.detected_ns), _value(e.true_positive)] for e in elephants]
    return _table(["src", "dst", "sport", "dport", "proto", "epoch", "reports",
                   "detected", "true"], rows)


def _detected(ns: int | None) -> str:
    """A capture's timestamps are wall-clock ns (UTC time of day); a synthetic trace's may
    start at 0 (ms)."""
    if ns is None:
        return "-"
    if ns >= 10**17:  # after 1973: a wall-clock time
        return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%H:%M:%S.%f")[:-3] + " UTC"
    return f"{ns / 1e6:.3f} ms"


def _scalars(d: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(k, _value(v)) for k, v in (d or {}).items()]


def _block(title: str, pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return f"{title}: -"
    width = max(len(k) for k, _ in pairs)
    return "\n".join([f"{title}:", *(f"  {k.ljust(width)}  {v}" for k, v in pairs)])


# Per-epoch columns shown first when a row has them; the others follow in their order.
EPOCH_COLUMNS = ("epoch", "f1", "precision", "recall", "heavy_hitters", "detected",
                 "messages", "max_states")


def epochs_table(epochs: Sequence[Mapping[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for e in epochs for k in e))
    cols = [k for k in EPOCH_COLUMNS if k in keys] + [k for k in keys
                                                      if k not in EPOCH_COLUMNS][:6]
    return _table(cols, [[_value(e.get(k)) for k in cols] for e in epochs])


# ---------------------------------------------------------------- commands


def _open(args: argparse.Namespace) -> RunStore:
    db = args.db or getattr(args, "runs_db", None)
    return RunStore(Path(db) if db else default_db_path(), create=False)


def cmd_list(args: argparse.Namespace) -> int:
    where = [parse_where(w) for w in args.where or ()]
    since = parse_since(args.since) if args.since else None
    with _open(args) as store:
        runs = store.list_runs(kind=args.kind, trace=args.trace, where=where, since=since,
                               limit=args.limit,
                               # a kind named (sweep_row, tune_point) is asked for wherever
                               include_children=args.all or bool(args.kind))
    if args.json:
        _print_json([r.to_dict() for r in runs])
    elif runs:
        print(runs_table(runs))
    else:
        print(f"no runs in {store.path} match", file=sys.stderr)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        run = store.get_run(args.id)
        epochs = store.epochs(run.id)
        elephants = store.elephants(run.id, limit=args.elephants)
        total = store.count_elephants(run.id)
        children = store.children(run.id)
    if args.json:
        _print_json({**run.to_dict(), "epochs": epochs, "elephants_total": total,
                     "elephants": [e.__dict__ for e in elephants],
                     "child_runs": [c.to_dict() for c in children]})
        return 0
    ended = run.ended_utc[:19].replace("T", " ") if run.ended_utc else "-"
    print(f"run {run.id}: {run.kind}, {run.status}"
          + (f" ({run.reason})" if run.reason else ""))
    print(f"started {_started(run)} UTC, ended {ended}; herd {run.herd_version} on "
          f"{run.host}, pid {run.pid}")
    if run.argv:
        print("command: " + " ".join(run.argv))
    if run.trace_path or run.trace_sha256:
        print(f"trace: {run.trace_path or '-'} (sha256 {run.trace_sha256 or '-'})")
    if run.parent_id is not None:
        print(f"part of run {run.parent_id}")
    print(_block("parameters", _scalars(run.params)))
    print(_block("metrics", _scalars(run.metrics)))
    if epochs:
        shown = epochs[:args.epochs]
        more = f", the first {len(shown)}; --json for all" if len(shown) < len(epochs) else ""
        print(f"per epoch ({len(epochs)} epochs{more}):")
        print(_indent(epochs_table(shown)))
    if total:
        print(f"elephants ({total}; {len(elephants)} with the most reports):")
        if elephants:
            print(_indent(elephants_table(elephants)))
    if children:
        print(f"runs of this {run.kind} ({len(children)}):")
        print(_indent(runs_table(children)))
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def export_rows(runs: Sequence[Run], param: str) -> list[dict[str, Any]]:
    """Recorded runs as the rows ``herd.sweep.csv_text`` writes: a sweep row's columns are
    its metrics; a single run's are its metrics under the sweep CSV's names (f1 as f1score,
    one seed: spread 0), its parameters and its trace."""
    from herd.sweep import CONTEXT_COLUMNS, EXTRA_COLUMNS, METRIC_COLUMNS, SWEEP_PARAMS

    rows = []
    for r in runs:
        metrics, params = r.metrics or {}, r.params
        value = _lookup(params, param)
        if value is None and param in SWEEP_PARAMS:
            value = params.get(SWEEP_PARAMS[param])
        if value is None:
            raise HerdInputError(f"run {r.id}: has no parameter {param!r}")
        row: dict[str, Any] = {param: int(value) if isinstance(value, bool) else value}
        for c in (*METRIC_COLUMNS, *EXTRA_COLUMNS):
            v = _lookup(metrics, c)
            if v is None and c.endswith("_std") and _lookup(metrics, c[:-4]) is not None \
                    and r.kind != "sweep_row":
                v = 0.0  # one run: no spread
            row[c] = v if v is not None else params.get(c)
        for c in CONTEXT_COLUMNS:
            row[c] = params.get(c)
        if isinstance(params.get("stages"), list):
            row["stages"] = "/".join(map(str, params["stages"]))
        seeds = params.get("seeds") if r.kind == "sweep_row" else None
        row["seeds"] = ";".join(map(str, seeds)) if isinstance(seeds, list) else params.get(
            "seed")
        if not params.get("confirm"):
            row["confirm_reports"] = None  # as the sweep writes it: C only with confirm
        row.update(trace=r.trace_path, trace_digest=r.trace_sha256,
                   herd_version=r.herd_version)
        rows.append(row)
    return rows


# Parameters that differ among runs without being what was varied.
NOT_SWEPT = {"seed", "seeds", "swept", "values", "delays_file"}


def choose_param(runs: Sequence[Run], given: str | None, parents: Sequence[Run]) -> str:
    if given:
        return given
    swept = {p.params.get("swept") for p in parents} | {r.params.get("swept") for r in runs}
    swept.discard(None)
    if len(swept) == 1:
        return str(swept.pop())
    names = sorted({k for r in runs for k in r.params} - NOT_SWEPT)
    differ = [k for k in names if len({json.dumps(r.params.get(k), sort_keys=True)
                                       for r in runs}) > 1]
    if len(differ) == 1:
        return differ[0]
    if not differ:
        raise HerdInputError("export: no parameter differs among runs "
                             f"{', '.join(str(r.id) for r in runs)}; name it with --param")
    raise HerdInputError(f"export: several parameters differ ({', '.join(differ)}); name "
                         "the one for the first column with --param")


def cmd_export(args: argparse.Namespace) -> int:
    from herd.fileio import atomic_write
    from herd.sweep import csv_text

    with _open(args) as store:
        runs: list[Run] = []
        parents: list[Run] = []
        for i in dict.fromkeys(args.ids):
            run = store.get_run(i)
            children = store.children(run.id) if run.children else []
            if children:
                parents.append(run)
                runs.extend(c for c in children if c.status == "done")
            elif run.status == "done":
                runs.append(run)
            else:
                raise HerdInputError(f"export: run {run.id} is {run.status}, it has no "
                                     "results")
    if not runs:
        raise HerdInputError(f"export: runs {', '.join(map(str, args.ids))} have no "
                             "finished rows")
    param = choose_param(runs, args.param, parents)
    atomic_write(args.csv, csv_text(param, export_rows(runs, param)))
    print(f"CSV: {args.csv} ({len(runs)} rows, {param} first)")
    return 0


def _flat(d: Mapping[str, Any] | None) -> dict[str, str]:
    return {k: _value(v) for k, v in (d or {}).items()}


def _run_facts(r: Run) -> dict[str, str]:
    return {"kind": r.kind, "status": r.status, "started": _started(r),
            "trace": r.trace_path or "-", "trace_sha256": r.trace_sha256 or "-",
            "herd_version": r.herd_version}


def compare(a: Run, b: Run) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for section, da, db in (("run", _run_facts(a), _run_facts(b)),
                            ("params", a.params, b.params),
                            ("metrics", a.metrics or {}, b.metrics or {})):
        names = list(dict.fromkeys([*da, *db]))
        out[section] = {n: {"a": da.get(n), "b": db.get(n),
                            "differs": json.dumps(da.get(n), sort_keys=True)
                            != json.dumps(db.get(n), sort_keys=True)} for n in names}
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    with _open(args) as store:
        a, b = store.get_run(args.a), store.get_run(args.b)
    result = compare(a, b)
    if args.json:
        _print_json({"a": a.id, "b": b.id, **result})
        return 0
    rows = []
    for section, names in result.items():
        rows.append(["", f"[{section}]", "", ""])
        for name, c in names.items():
            rows.append(["*" if c["differs"] else "", name, _value(c["a"]), _value(c["b"])])
    print(_table(["", "", f"run {a.id}", f"run {b.id}"], rows))
    differ = sum(c["differs"] for names in result.values() for c in names.values())
    print(f"{differ} differ (*)")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _open(args) as store:
        gone = store.delete_runs(args.ids)
    extra = len(gone) - len(set(args.ids))
    print(f"removed run{'s' if len(gone) > 1 else ''} {', '.join(map(str, gone))}"
          + (f" ({extra} of them part of the runs named)" if extra else ""))
    return 0


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=1)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- parser


def _db_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="FILE", help="the results database (default $HERD_DB, "
                   "else $XDG_DATA_HOME/herd/runs.sqlite)")


def register_cli(sub: Any) -> None:
    runs = sub.add_parser("runs", help="the recorded runs: list, show, export, compare, rm",
                          description="The runs recorded in the results database (every "
                          "simulate, sweep, tune, replay, testbed and figures run).")
    # Before or after the subcommand; a separate dest, since a subcommand's own default
    # would overwrite the value given before it.
    runs.add_argument("--db", dest="runs_db", metavar="FILE", help="the results database "
                      "(default $HERD_DB, else $XDG_DATA_HOME/herd/runs.sqlite)")
    rsub = runs.add_subparsers(dest="runs_command", required=True, parser_class=type(runs),
                               metavar="{list,show,export,compare,rm}")

    ls = rsub.add_parser("list", help="the runs, newest first (top-level runs unless --all)")
    ls.add_argument("--kind", help="simulate, sweep, sweep_row, tune, tune_point, replay, "
                    "testbed, testbed_row, figures (runs of this kind inside others too)")
    ls.add_argument("--trace", help="a prefix of the trace's SHA-256 or a part of its path")
    ls.add_argument("--where", action="append", metavar="COND",
                    help="NAME OP VALUE on metrics, else parameters (OP: >= <= != = > <), "
                    "e.g. \"f1>=0.85\"; repeat for AND")
    ls.add_argument("--since", help="started since: ISO date/time (UTC) or 30m, 3h, 2d, 1w")
    ls.add_argument("--limit", type=_count, help="at most this many (newest)")
    ls.add_argument("--all", action="store_true",
                    help="also the runs inside others (sweep rows, tune points, testbed rows)")
    ls.add_argument("--json", action="store_true")
    _db_argument(ls)
    ls.set_defaults(func=cmd_list)

    show = rsub.add_parser("show", help="one run: parameters, metrics, epochs, elephants")
    show.add_argument("id", type=_run_id)
    show.add_argument("--elephants", type=_count, default=10, metavar="N",
                      help="the N elephants with the most reports (default 10)")
    show.add_argument("--epochs", type=_count, default=20, metavar="N",
                      help="per-epoch rows shown as text (default 20; --json has all)")
    show.add_argument("--json", action="store_true")
    _db_argument(show)
    show.set_defaults(func=cmd_show)

    ex = rsub.add_parser("export", help="runs as a sweep CSV (<parameter>,f1score,precision,"
                         "recall,...): a sweep's rows, or several runs")
    ex.add_argument("ids", type=_run_id, nargs="+", metavar="ID")
    ex.add_argument("--csv", required=True, metavar="FILE")
    ex.add_argument("--param", help="the first column (default: the sweep's parameter, or "
                    "the one parameter that differs among the runs)")
    _db_argument(ex)
    ex.set_defaults(func=cmd_export)

    cmp = rsub.add_parser("compare", help="two runs side by side, differences marked *")
    cmp.add_argument("a", type=_run_id, metavar="ID")
    cmp.add_argument("b", type=_run_id, metavar="ID")
    cmp.add_argument("--json", action="store_true")
    _db_argument(cmp)
    cmp.set_defaults(func=cmd_compare)

    rm = rsub.add_parser("rm", help="remove runs with the runs inside them")
    rm.add_argument("ids", type=_run_id, nargs="+", metavar="ID")
    _db_argument(rm)
    rm.set_defaults(func=cmd_rm)
