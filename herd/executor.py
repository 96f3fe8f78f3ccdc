"""Where the simulations of a sweep, a tuning run or the figures run: the one place that fans
them out, to a local process pool or to a Ray cluster.

An executor is bound to one prepared trace and maps a task function ``fn(prep, item)`` over
items; results come back in submission order, so every caller builds the same rows however
the work was spread. ``fn`` must be a module-level function (it is pickled by reference).

- ``LocalExecutor``: in this process, or with ``workers`` > 1 in a forked pool - forked after
  a first run here, so that the children inherit the compiled kernels and the trace's
  per-flow caches.
- ``RayExecutor``: every item is a Ray task (retried if its worker dies; on Ctrl-C no more
  are submitted, and the run's end stops those running). The trace goes to the workers
  once per run: its columns into the object store (``ray.put``), or, for a trace too long
  for it, the path of its entry in the trace cache, which every node must then see (shared
  storage). A worker keeps the trace it was given
  for the run's later tasks, so nothing is parsed or fetched twice per worker.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.errors import HerdInputError

if TYPE_CHECKING:  # imported where used: the CLI's parser imports this module
    from herd.prepared import PreparedTrace
    from herd.trace import Trace

TaskFn = Callable[["PreparedTrace", Any], Any]
Progress = Callable[[int, int], None]

# How the trace reaches Ray workers: "store" (object store), "path" (the cache entry, read
# by path on every node) or "auto" (path when the columns exceed STORE_SHARE of the
# smallest node's object store).
TRACE_SHIPPING_ENV = "HERD_RAY_TRACE"
SHIPPING = ("auto", "store", "path")
STORE_SHARE = 0.25
# A task whose worker process dies (OOM killer, lost node) is run again this often.
MAX_RETRIES = 3
# Tasks in flight at a time: enough to keep every CPU busy between two replies.
WINDOW_PER_CPU = 4
WINDOW_MIN = 16
# Seconds to wait for a cluster's address to answer before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0
INSTALL_HINT = "pip install 'herd[ray]'"


class Cancelled(Exception):
    """The executor was cancelled while this map waited (see Executor.cancel)."""


class Executor:
    """Maps ``fn(prep, item)`` over items; results in submission order."""

    prep: PreparedTrace
    workers: int

    def map(self, fn: TaskFn, items: Sequence[Any],
            progress: Progress | None = None) -> list[Any]:
        raise NotImplementedError

    @property
    def concurrent(self) -> bool:
        """Whether callers may submit from several threads at once (Ray), rather than only
        from this one (a fork pool)."""
        return False

    def cancel(self) -> None:
        """Make every map, running or to come, stop with Cancelled (other threads' maps on
        Ctrl-C in one)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------
# local: this process, or a fork pool

_FORKED: dict[str, PreparedTrace] = {}  # the trace a forked pool's children inherit


def _local_task(task: tuple[TaskFn, Any]) -> Any:
    fn, item = task
    return fn(_FORKED["prep"], item)


def _child_signals() -> None:
    """A pool child ends on the SIGTERM of Pool.terminate, whatever handler the parent had
    installed when it forked (a handler that raises would leave the child stuck, and the
    parent waiting for it)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class LocalExecutor(Executor):
    """``warm``: the caller has compiled the kernels and filled the trace's caches already
    (else the first task runs here before the pool forks)."""

    def __init__(self, prep: PreparedTrace, workers: int = 1, *, warm: bool = False) -> None:
        self.prep = prep
        self.workers = max(1, workers)
        self._pool: Any = None
        self._warm = warm  # a task ran in this process: kernels compiled, caches filled

    def map(self, fn: TaskFn, items: Sequence[Any],
            progress: Progress | None = None) -> list[Any]:
        items = list(items)
        results: list[Any] = []

        def finished(r: Any) -> None:
            results.append(r)
            if progress:
                progress(len(results), len(items))

        forkable = "fork" in multiprocessing.get_all_start_methods()
        if self.workers > 1 and len(items) > 1 and forkable:
            rest = items
            if self._pool is None:
                if not self._warm:
                    finished(fn(self.prep, items[0]))
                    self._warm = True
                    rest = items[1:]
                _FORKED["prep"] = self.prep
                self._pool = multiprocessing.get_context("fork").Pool(
                    self.workers, initializer=_child_signals)
            for r in self._pool.imap(_local_task, [(fn, it) for it in rest], chunksize=1):
                finished(r)
        else:
            for it in items:
                finished(fn(self.prep, it))
                self._warm = True
        return results

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


# ------------------------------------------------------------------------------------------
# Ray


def import_ray() -> Any:
    """The ray module, or a one-line error saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError:
        raise HerdInputError(f"--ray: Ray is not installed; {INSTALL_HINT}") from None
    return ray


def resolve_address(address: str | None) -> str:
    """--ray's ADDRESS, else $RAY_ADDRESS, else "local" (a Ray instance on this machine)."""
    return address or os.environ.get("RAY_ADDRESS") or "local"


def _check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) address must accept a connection: ray.init would
    otherwise retry for a minute before failing with a page of log."""
    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise HerdInputError(f"--ray {address}: not an address (HOST:PORT, ray://HOST:PORT, "
                             "auto or local)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise HerdInputError(f"--ray {address}: no Ray cluster reachable there "
                             f"({e.strerror or e})") from None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def trace_payload(prep: PreparedTrace, shipping: str, store_bytes: int) -> dict[str, Any]:
    """What the workers get of the trace: its columns, or where its cache entry lies."""
    if shipping not in SHIPPING:
        raise HerdInputError(f"{TRACE_SHIPPING_ENV}={shipping}: one of {', '.join(SHIPPING)}")
    trace = prep.trace
    entry = _cache_entry(trace)
    if shipping == "path" and entry is None:
        from herd.tracecache import cache_dir

        raise HerdInputError(f"{TRACE_SHIPPING_ENV}=path: trace {trace.paths[0]} is not in the "
                             f"trace cache {cache_dir()}, so there is no path to read it by")
    head = {"paths": list(trace.paths), "digest": trace.digest}
    if shipping == "auto":
        shipping = "path" if entry is not None and _column_bytes(trace) > store_bytes else "store"
    if shipping == "path":
        assert entry is not None
        # absolute, symlinks kept: nodes mount the shared cache at the same path
        return {**head, "kind": "path", "entry": str(entry.absolute())}
    return {**head, "kind": "store", **_columns(trace)}


def _cache_entry(trace: Trace) -> Path | None:
    """The trace's entry in the cache, if it is a single capture stored there."""
    from herd.tracecache import cache_dir, entry_dir, open_entry

    if trace.has_ingress or len(trace.paths) != 1:
        return None
    root = cache_dir()
    entry = open_entry(root, trace.digest)
    if entry is None:
        return None
    entry.columns.close()
    return entry_dir(root, trace.digest)


def _column_bytes(trace: Trace) -> int:
    from herd.trace import COLUMNS

    return trace.packets * sum(d.itemsize for c, d in COLUMNS.items() if c != "ingress")


def _columns(trace: Trace) -> dict[str, Any]:
    """Every column in memory, copied chunk by chunk (a stored trace keeps nothing)."""
    import numpy as np

    from herd.trace import COLUMNS

    names = [c for c in COLUMNS if c != "ingress" or trace.has_ingress]
    cols = {c: np.empty(trace.packets, COLUMNS[c]) for c in names}
    for start, chunk in trace.chunks(names):
        for c in names:
            cols[c][start:start + len(chunk[c])] = chunk[c]
    flow_table = {k: getattr(trace, k) for k in
                  ("flow_src", "flow_dst", "flow_sport", "flow_dport", "flow_proto")}
    return {"columns": cols, "flow_table": flow_table,
            "skipped": (trace.skipped_non_ipv4, trace.skipped_malformed)}


def open_payload(payload: dict[str, Any]) -> Trace:
    """The trace a worker was sent (see trace_payload)."""
    import numpy as np

    from herd.trace import Trace
    from herd.tracecache import open_entry

    paths, digest = tuple(payload["paths"]), payload["digest"]
    if payload["kind"] == "path":
        path = Path(payload["entry"])
        entry = open_entry(path.parent, digest)
        if entry is None:
            raise HerdInputError(
                f"trace cache {path}: not readable on Ray node {_node_name()}; {_SHARED_CACHE}")
        return Trace._stored(paths, digest, entry)
    cols = dict(payload["columns"])
    if "ingress" not in cols:  # one capture: the load balancer assigns switches
        cols["ingress"] = np.full(len(cols["ts_ns"]), -1, np.int16)
    non_ipv4, malformed = payload["skipped"]
    return Trace(paths, digest, **cols, **payload["flow_table"], skipped_non_ipv4=non_ipv4,
                 skipped_malformed=malformed)


_SHARED_CACHE = ("workers read long traces from the cache by path, so the cache "
                 "(HERD_CACHE_DIR) must be on storage every node shares at the same path (or set "
                 f"{TRACE_SHIPPING_ENV}=store)")


def _sees_entry(entry: str) -> bool:
    return (Path(entry) / "meta.json").is_file()


def _node_name() -> str:
    import ray

    try:
        return (f"{ray.util.get_node_ip_address()} "
                f"(node {ray.get_runtime_context().get_node_id()[:12]})")
    except Exception:  # noqa: BLE001 - only a name for the message
        return socket.gethostname()


# A worker's trace of the current run, keyed by its object reference: fetched and prepared
# once, then reused by every task of the run that lands on this worker.
_WORKER_TRACE: dict[str, PreparedTrace] = {}


def _ray_task(fn: TaskFn, shipped: list[Any], item: Any) -> Any:
    import ray

    from herd.prepared import PreparedTrace

    ref = shipped[0]  # in a list, so that Ray hands over the reference, not the value
    key = ref.hex()
    prep = _WORKER_TRACE.get(key)
    if prep is None:
        prep = PreparedTrace(open_payload(ray.get(ref)))
        for old in _WORKER_TRACE.values():
            old.trace.close()
        _WORKER_TRACE.clear()
        _WORKER_TRACE[key] = prep
    return fn(prep, item)


class RayExecutor(Executor):
    """Every item a Ray task on the cluster at ``address`` (None: $RAY_ADDRESS, else a local
    instance of ``cpus`` CPUs)."""

    def __init__(self, prep: PreparedTrace, address: str | None = None, *,
                 cpus: int | None = None, shipping: str | None = None,
                 max_retries: int = MAX_RETRIES) -> None:
        ray = import_ray()
        shipping = shipping or os.environ.get(TRACE_SHIPPING_ENV) or "auto"
        if shipping not in SHIPPING:  # before connecting: a typo costs no cluster start
            raise HerdInputError(f"{TRACE_SHIPPING_ENV}={shipping}: one of {', '.join(SHIPPING)}")
        self.prep = prep
        self.address = resolve_address(address)
        self._ray = ray
        self._started = False
        self._cancelled = threading.Event()
        if not ray.is_initialized():
            _check_reachable(self.address)
            import logging

            # Ray's own usage report stays off unless the user switched it on.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kw: dict[str, Any] = {"num_cpus": cpus} if self.address == "local" else {}
            try:
                ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, **kw)
            except Exception as e:  # noqa: BLE001 - any failure to connect is the same error
                raise HerdInputError(f"--ray {self.address}: cannot connect to a Ray cluster "
                                     f"({_one_line(e)})") from None
            self._started = True
        try:
            self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self._window = max(WINDOW_MIN, WINDOW_PER_CPU * self.workers)
            store = min((n["Resources"].get("object_store_memory", 0)
                         for n in ray.nodes() if n.get("Alive")), default=0)
            payload = trace_payload(prep, shipping, int(store * STORE_SHARE))
            self.shipping = payload["kind"]
            if self.shipping == "path":
                self._check_nodes_see(payload["entry"])
            self._trace_ref = ray.put(payload)  # once per run, whatever the number of tasks
            del payload
            self._task = ray.remote(num_cpus=1, max_retries=max_retries,
                                    retry_exceptions=False)(_ray_task)
        except BaseException:
            self.close()
            raise

    def _check_nodes_see(self, entry: str) -> None:
        """Before any simulation: every node that runs tasks can read the cache entry (a
        node that joins later says so itself, in its first task)."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = ray.remote(num_cpus=0, max_retries=MAX_RETRIES)(_sees_entry)
        nodes = [n for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU")]
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(entry) for n in nodes]
        blind = [f"{n['NodeManagerAddress']} (node {n['NodeID'][:12]})"
                 for n, sees in zip(nodes, ray.get(refs), strict=True) if not sees]
        if blind:
            raise HerdInputError(
                f"trace cache {entry}: not readable on Ray node(s) {', '.join(blind)}; "
                f"{_SHARED_CACHE}")

    @property
    def concurrent(self) -> bool:
        return True

    def map(self, fn: TaskFn, items: Sequence[Any],
            progress: Progress | None = None) -> list[Any]:
        ray = self._ray
        items = list(items)
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}  # in flight: reference -> index of its item
        todo = iter(range(len(items)))
        done = 0
        # A window of tasks in flight, not all at once: Ctrl-C then leaves little to stop,
        # and it needs no ray.cancel (which races completing tasks and can abort the
        # driver); the run's end stops the tasks still running.
        while True:
            if self._cancelled.is_set():
                raise Cancelled
            while len(pending) < self._window:
                i = next(todo, None)
                if i is None:
                    break
                pending[self._task.remote(fn, [self._trace_ref], items[i])] = i
            if not pending:
                return results
            # a timeout, to notice a cancel from another thread
            ready, rest = ray.wait(list(pending), num_returns=1, timeout=0.2)
            if ready and rest:
                ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
            for r in ready:
                results[pending.pop(r)] = self._get(r)
                done += 1
                if progress:
                    progress(done, len(items))

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, HerdInputError):  # a worker's one-line error, as it is
                raise HerdInputError(str(cause)) from None
            raise

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self._cancelled.set()
        if self._started:
            self._ray.shutdown()
            self._started = False


# ------------------------------------------------------------------------------------------
# command line


def add_ray_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run every simulation as a task on the Ray cluster at ADDRESS "
                   "(HOST:PORT, ray://HOST:PORT or auto); without ADDRESS $RAY_ADDRESS, else "
                   f"a Ray instance on this machine ({INSTALL_HINT})")


def make_executor(prep: PreparedTrace, ray: str | None, workers: int | None = None
                  ) -> Executor:
    """--ray's value (None: not given, "": given without an address) -> an executor;
    ``workers``: the local pool's processes (default 1), or a local Ray instance's CPUs
    (default: all of this machine's)."""
    if workers is not None and workers < 1:
        raise HerdInputError(f"--workers {workers}: must be >= 1")
    if ray is None:
        return LocalExecutor(prep, workers or 1)
    return RayExecutor(prep, ray or None, cpus=workers)
