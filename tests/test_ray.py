"""Sweeps, tuning and figures on Ray (``--ray``, herd.executor): a real two-node cluster
started on this machine (each node its own CPU), results equal to the local run, the trace
shipped once and never parsed by a worker, progress as tasks finish, a dying worker's task
retried, Ctrl-C cancelling the tasks, figures on a local instance; a cache path a worker
cannot read, an unreachable cluster, a bad HERD_RAY_TRACE and Ray not installed as one-line
errors (exit 2)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from herd.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TRACE = REPO / "pcap" / "synth-20k.pcap"
RAY = Path(sys.executable).parent / "ray"
HERD = Path(sys.executable).parent / "herd"
SWEEP = ["--param", "epsilon", "--values", "0.05,0.1,0.2", "--seeds", "2"]
TUNE = ["--memory", "300", "--messages", "400", "--seeds", "2", "--json"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    address: str
    env: dict[str, str]  # what a driver needs: the cluster's token
    worker_cache: Path  # the nodes' HERD_CACHE_DIR: must stay empty (no worker parses)
    groups: list[int]


def _start_node(args: list[str], env: dict[str, str], groups: list[int]) -> None:
    # A session of its own: every daemon `ray start` leaves behind is in its process group,
    # so the finalizer stops exactly this cluster (never `ray stop`, which stops them all).
    p = subprocess.Popen([str(RAY), "start", *args], env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    groups.append(p.pid)
    out, _ = p.communicate(timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"ray start {' '.join(args)} failed:\n{out[-3000:]}")


def _start_cluster(common: list[str], env: dict[str, str], groups: list[int]) -> str:
    """A head and a second node, each of one CPU; the head's address."""
    port = free_port()
    _start_node(["--head", "--port", str(port), "--include-dashboard=false",
                 "--dashboard-port", str(free_port()),
                 "--ray-client-server-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()), *common], env, groups)
    address = f"127.0.0.1:{port}"
    _start_node([f"--address={address}", "--dashboard-agent-listen-port", str(free_port()),
                 *common], env, groups)
    return address


def _gone(pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _stop(groups: list[int]) -> None:
    """Stop the nodes this module started, and nothing else: their process groups."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        groups[:] = [g for g in groups if not _gone(g, grace)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # Ray is a test requirement (scripts/setup.sh --testbed installs herd[ray]): no skipping.
    assert RAY.exists(), f"{RAY}: missing; install herd[ray] (scripts/setup.sh --testbed)"
    tmp = tmp_path_factory.mktemp("ray")
    worker_cache = tmp / "worker-cache"
    worker_cache.mkdir()
    # Short: Ray's unix sockets live under the temp dir (a 107-byte path limit).
    temp_dir = Path(f"/tmp/herd-ray-{secrets.token_hex(4)}")
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0",
           "HERD_CACHE_DIR": str(worker_cache)}
    common = ["--num-cpus", "1", "--object-store-memory", str(200 * 1024 * 1024),
              "--disable-usage-stats", "--temp-dir", str(temp_dir)]
    groups: list[int] = []
    try:
        try:
            address = _start_cluster(common, env, groups)
        except RuntimeError as e:
            # Once more on fresh ports: Ray picks some of its ports itself, and on a machine
            # shared with other work one may have been taken meanwhile.
            print(f"{e}\n(trying once more)", file=sys.stderr)
            _stop(groups)
            address = _start_cluster(common, env, groups)
        yield Cluster(address, auth, worker_cache, groups)
    finally:
        _stop(groups)
        shutil.rmtree(temp_dir, ignore_errors=True)


def herd(args: list[str], env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HERD), *args], env={**os.environ, **(env or {})}, text=True,
                          capture_output=True, timeout=timeout)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def without_timing(d: Any) -> Any:
    """A result with its wall-clock fields taken out (they differ run to run anyway)."""
    if isinstance(d, dict):
        return {k: without_timing(v) for k, v in d.items()
                if k not in ("seconds", "packets_per_second")}
    if isinstance(d, list):
        return [without_timing(v) for v in d]
    return d


def test_sweep_on_a_two_node_cluster_equals_the_local_run(cluster: Cluster,
                                                           tmp_path: Path) -> None:
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert main(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(local)]) == 0
    r = herd(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(on_ray),
              "--ray", cluster.address], cluster.env)
    assert r.returncode == 0, r.stderr
    assert on_ray.read_text() == local.read_text()
    assert len(rows(on_ray)) == 3
    runs = [without_timing(row["runs"]) for row in json.loads(
        on_ray.with_suffix(".json").read_text())["rows"]]
    assert runs == [without_timing(row["runs"]) for row in json.loads(
        local.with_suffix(".json").read_text())["rows"]]
    # The trace went to the workers through the object store: no node parsed it.
    assert list(cluster.worker_cache.iterdir()) == []


def test_tune_on_a_two_node_cluster_equals_the_local_run(cluster: Cluster,
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    assert main(["tune", "--trace", str(TRACE), *TUNE, "--workers", "2"]) == 0
    local = json.loads(capsys.readouterr().out)
    # RAY_ADDRESS stands for --ray's ADDRESS
    r = herd(["tune", "--trace", str(TRACE), *TUNE, "--ray"],
             {**cluster.env, "RAY_ADDRESS": cluster.address})
    assert r.returncode == 0, r.stderr
    on_ray = json.loads(r.stdout)
    assert on_ray["simulations"] == local["simulations"] > 10
    assert without_timing(on_ray) == without_timing(local)


# Drivers run as scripts of their own: Ray reads its settings (the cluster's token) when it
# is imported, and a script's task functions travel by value (workers cannot import tests/).
SPREAD_AND_RETRY = """
import json, os, sys, time
from pathlib import Path
import ray
from herd.executor import RayExecutor
from herd.prepared import PreparedTrace
from herd.trace import load_trace

def node_of_task(prep, meeting):
    # Both tasks wait here for each other: with one CPU a node, only two nodes can hold
    # them at once (a timeout, if the cluster ran them one after the other, fails below).
    me = Path(meeting) / ray.get_runtime_context().get_task_id()
    me.touch()
    deadline = time.monotonic() + 60
    while len(list(Path(meeting).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.get_runtime_context().get_node_id()

def die_once(prep, marker):
    if not os.path.exists(marker):  # the first attempt dies, as in an out-of-memory kill
        Path(marker).write_text("died once")
        os._exit(1)
    return prep.trace.packets

address, trace, marker, meeting = sys.argv[1:]
prep = PreparedTrace(load_trace(trace))
done = []
ex = RayExecutor(prep, address)
try:
    out = {"workers": ex.workers, "shipping": ex.shipping,
           "nodes": ex.map(node_of_task, [meeting] * 2, lambda d, n: done.append([d, n])),
           "done": done, "retried": ex.map(die_once, [marker]),
           "packets": prep.trace.packets}
finally:
    ex.close()
print(json.dumps(out))
"""

BY_PATH = """
import json, os, sys
from pathlib import Path
from herd.errors import HerdInputError
from herd.executor import RayExecutor
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.sweep import params_for, simulate_task
from herd.trace import load_trace

address, trace, elsewhere = sys.argv[1:]
prep = PreparedTrace(load_trace(trace))
params = params_for(Params(), "epsilon", 0.1, 1)
out = {"local": simulate_task(prep, params).metrics}
ex = RayExecutor(prep, address, shipping="path")
try:
    out["shipping"] = ex.shipping
    out["ray"] = ex.map(simulate_task, [params])[0].metrics
finally:
    ex.close()
# The cache moved away, as on a node that does not share the driver's storage.
cache = Path(os.environ["HERD_CACHE_DIR"])
ex = RayExecutor(prep, address, shipping="path")
try:
    cache.rename(elsewhere)
    ex.map(simulate_task, [params.with_(seed=2)])
except HerdInputError as e:
    out["error"] = str(e)
finally:
    ex.close()
    Path(elsewhere).rename(cache)
# A path only the driver sees (here: none does): found out before any simulation, for
# every node.
ex = RayExecutor(prep, address)
try:
    ex._check_nodes_see(elsewhere + "/trace-v2-" + prep.trace.digest)
except HerdInputError as e:
    out["up_front"] = str(e)
finally:
    ex.close()
print(json.dumps(out))
"""

INTERRUPTED = """
import json, os, signal, sys, threading, time
from herd.executor import RayExecutor
from herd.prepared import PreparedTrace
from herd.trace import load_trace

def sleep_task(prep, seconds):
    time.sleep(seconds)
    return seconds

address, trace = sys.argv[1:]
prep = PreparedTrace(load_trace(trace))
ex = RayExecutor(prep, address)
try:
    ex.map(sleep_task, [0.1, 0.1])  # workers up on both nodes
    threading.Timer(3.0, os.kill, (os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        # both CPUs of the cluster for a minute, and as many tasks queued behind them
        ex.map(sleep_task, [60.0] * 4)
        interrupted = None
    except KeyboardInterrupt:
        interrupted = time.monotonic() - start
finally:
    ex.close()  # as herd does on Ctrl-C: the run ends
# The cluster is free at once: nothing of the interrupted run runs or waits.
ex = RayExecutor(prep, address)
try:
    start = time.monotonic()
    again = ex.map(sleep_task, [0.5, 0.5])
    out = {"interrupted_after": interrupted, "again": again,
           "again_seconds": time.monotonic() - start}
finally:
    ex.close()
print(json.dumps(out))
"""


def driver(script: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-c", script, *args], env={**os.environ, **env},
                       text=True, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def test_tasks_spread_over_both_nodes_and_a_dying_worker_is_retried(
        cluster: Cluster, tmp_path: Path) -> None:
    marker, meeting = tmp_path / "died", tmp_path / "meeting"
    meeting.mkdir()
    out = driver(SPREAD_AND_RETRY, [cluster.address, str(TRACE), str(marker), str(meeting)],
                 cluster.env)
    assert out["workers"] == 2 and out["shipping"] == "store"
    assert len(set(out["nodes"])) == 2  # both nodes ran a task, at the same time
    assert out["done"] == [[1, 2], [2, 2]]  # progress as tasks finished
    assert out["retried"] == [out["packets"]]  # the task ran again after its worker died
    assert marker.exists()  # and its first attempt did die


def test_ctrl_c_cancels_the_tasks(cluster: Cluster) -> None:
    out = driver(INTERRUPTED, [cluster.address, str(TRACE)], cluster.env)
    assert out["interrupted_after"] is not None and out["interrupted_after"] < 10
    assert out["again"] == [0.5, 0.5]
    assert out["again_seconds"] < 30  # not queued behind the minute-long tasks


def test_workers_read_the_cache_by_path_and_say_when_they_cannot(
        cluster: Cluster, tmp_path: Path) -> None:
    out = driver(BY_PATH, [cluster.address, str(TRACE), str(tmp_path / "elsewhere")],
                 cluster.env)
    assert out["shipping"] == "path"
    assert out["ray"] == out["local"]
    cache = os.environ["HERD_CACHE_DIR"]
    message = out["error"]  # from the worker that tried
    assert "\n" not in message
    assert cache in message and "Ray node" in message and "shares" in message, message
    message = out["up_front"]  # from the check before the run: both nodes named
    assert "\n" not in message
    assert str(tmp_path / "elsewhere") in message and message.count("(node ") == 2, message


def test_figures_on_a_local_ray_instance_equal_the_local_run(tmp_path: Path) -> None:
    tiny = ["--epsilons", "0.2", "--s-values", "0.3", "--memory-budgets", "400",
            "--message-budgets", "800", "--seeds", "1"]
    one, two = tmp_path / "local", tmp_path / "ray"
    assert main(["figures", "--trace", str(TRACE), "--out", str(one), "--workers", "1",
                 *tiny]) == 0
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_ADDRESS": ""}  # no address anywhere: a local instance starts
    r = herd(["figures", "--trace", str(TRACE), "--out", str(two), "--workers", "2", "--ray",
              *tiny], env)
    assert r.returncode == 0, r.stderr
    csvs = sorted(p.name for p in one.glob("*.csv"))
    assert len(csvs) >= 7
    for name in [*csvs, "figures.json"]:
        assert (two / name).read_text() == (one / name).read_text(), name


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "s.csv"
    r = herd(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(out), "--ray", address],
             timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and address in lines[0] and "reachable" in lines[0], r.stderr
    assert not out.exists()


def test_without_ray_installed_ray_is_a_one_line_error(tmp_path: Path) -> None:
    # ray made unimportable, as where herd[ray] is not installed
    code = ("import sys\n"
            "class NoRay:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ray' or name.startswith('ray.'):\n"
            "            raise ModuleNotFoundError(f\"No module named '{name}'\", name=name)\n"
            "sys.meta_path.insert(0, NoRay())\n"
            "from herd.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = subprocess.run([sys.executable, "-c", code, "tune", "--trace", str(TRACE), *TUNE,
                        "--ray"], text=True, capture_output=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == ("herd: error: --ray: Ray is not installed; "
                                "pip install 'herd[ray]'")


def test_a_bad_trace_shipping_setting_is_a_one_line_error(tmp_path: Path) -> None:
    r = herd(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(tmp_path / "s.csv"),
              "--ray"], {"HERD_RAY_TRACE": "nfs"}, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "herd: error: HERD_RAY_TRACE=nfs: one of auto, store, path"


def test_a_trace_too_long_for_the_object_store_goes_by_its_cache_path() -> None:
    from herd.executor import open_payload, trace_payload
    from herd.prepared import PreparedTrace
    from herd.trace import load_trace

    prep = PreparedTrace(load_trace(TRACE))
    columns = prep.trace.packets * 25  # bytes: ts 8, src 4, dst 4, ports 2 + 2, proto 1, flow 4
    long = trace_payload(prep, "auto", store_bytes=columns - 1)
    assert long["kind"] == "path"
    assert Path(long["entry"]).parent == Path(os.environ["HERD_CACHE_DIR"]).absolute()
    short = trace_payload(prep, "auto", store_bytes=columns)
    assert short["kind"] == "store"
    # Either way a worker gets the same packets, without parsing the capture.
    for payload in (long, short):
        t = open_payload(payload)
        assert (t.digest, t.packets, t.flows) == (prep.trace.digest, prep.trace.packets,
                                                  prep.trace.flows)
        for c in ("ts_ns", "src", "dport", "flow", "ingress"):
            assert (getattr(t, c) == getattr(prep.trace, c)).all(), c


def test_a_local_sweep_on_two_processes_equals_the_sequential_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert main(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(one)]) == 0
    assert main(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(two),
                 "--workers", "2"]) == 0
    assert two.read_text() == one.read_text()
    assert main(["sweep", "--trace", str(TRACE), *SWEEP, "--out", str(two),
                 "--workers", "0"]) == 2


def test_ctrl_c_stops_a_sweep_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "s.csv"
    p = subprocess.Popen(
        [str(HERD), "sweep", "--trace", str(TRACE), "--param", "s", "--values",
         "0.1,0.2,0.3,0.4", "--seeds", "5000", "--out", str(out), "--ray", cluster.address],
        env={**os.environ, **cluster.env}, text=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(8)  # connected, simulations under way (20,000 of them: minutes)
    p.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - start < 15, err[-3000:]
    assert p.returncode == 130, err[-3000:]
    # herd's own line; Ray may log its side of the interruption beside it
    assert [line for line in err.splitlines() if line.startswith("herd")] == [
        "herd: interrupted"], err[-3000:]
    assert not out.exists()
