"""The coordinator's live view over HTTP (herd.services.web): its JSON API against a real
coordinator process fed over gRPC, the token rule, bad queries, TLS, and how ``herd replay``
finds its token and serves the view."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_services import FLOW_A, FLOW_B, Coord, Procs, batch, wait_for
from test_tls import Pki

from herd.errors import HerdInputError
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.services.common import write_token_file
from herd.services.replay import ReplayRun
from herd.services.rpc import herd_pb2 as pb
from herd.services.web import dotted, parse_http_address
from herd.synth import write_synthetic_pcap
from herd.trace import load_trace

PY = sys.executable
FLOW_C = (0x0C000001, 0x14000002, 7, 7, 17)


def get(url: str, token: str | None = None, header: str | None = None,
        context: ssl.SSLContext | None = None) -> tuple[int, Any]:
    """(status, decoded JSON or text) of a GET; 4xx answers are returned, not raised."""
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if header is not None:
        req.add_header("Authorization", header)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            status, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, body, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(body) if "json" in ctype else body.decode()


class LiveCoord(Coord):
    """A coordinator with its live view on a free loopback port."""

    def __init__(self, procs: Procs, tmp: Path, extra: list[str] | None = None,
                 R: int = 2) -> None:
        self.http_ready = tmp / "http.ready"
        super().__init__(procs, tmp, R=R, extra=[
            "--http", "127.0.0.1:0", "--http-ready-file", str(self.http_ready),
            *(extra or [])])
        self.url = self.http_ready.read_text().strip()

    def api(self, path: str, token: str | None = "") -> tuple[int, Any]:
        return get(self.url + path.lstrip("/"), self.token if token == "" else token)


def send(co: Coord, switch: int, seqs: list[int], flows: list[tuple[int, int, int, int, int]],
         epoch: int, ts: int) -> None:
    b = batch(switch, seqs, flows, ts=ts)
    b.epoch.extend([epoch] * len(seqs))
    list(co.client.reports(iter([b]), metadata=co.client.metadata))


def test_api_needs_the_token_refusals_401_counted_logged_once(procs: Procs,
                                                               tmp_path: Path) -> None:
    co = LiveCoord(procs, tmp_path)
    for _ in range(3):
        status, body = co.api("/api/status", token=None)
        assert status == 401 and "Authorization" in body["error"]
        assert co.api("/api/elephants", token="x" * 48)[0] == 401
    assert get(co.url + "api/epochs", header=f"Basic {co.token}")[0] == 401
    status, body = co.api("/api/status")
    assert status == 200 and body["rejected"] == {"http_token_missing": 4,
                                                  "http_token_wrong": 3}
    # Counted among the coordinator's own counters (Query) as well.
    counters = co.counters()
    assert counters["rejected_http_token_wrong"] == 3
    assert counters["rejected_http_token_missing"] == 4
    log = procs.log("coordinator")
    assert log.count("rejected http_token_wrong from 127.0.0.1") == 1
    assert log.count("rejected http_token_missing from 127.0.0.1") == 1
    assert f"live view on {co.url}" in log
    # The page and its files need no token (they hold no data); config says one is needed.
    status, page = get(co.url)
    assert status == 200 and '<script src="/live/app.js"' in page
    assert get(co.url + "live/app.js")[0] == 200
    assert get(co.url + "live/config.json") == (200, {"auth": True})
    assert get(co.url + "live/../web.py")[0] == 404


def test_status_matches_query_and_reports_per_second(procs: Procs, tmp_path: Path) -> None:
    co = LiveCoord(procs, tmp_path)
    c = co.client
    t0 = time.time_ns()
    list(c.hellos(iter([pb.HelloBatch(hellos=[
        pb.HelloRequest(switch_id=0, group=3, seq=1),
        pb.HelloRequest(switch_id=1, group=3, seq=1),
        pb.HelloRequest(switch_id=1, group=9, seq=2)])]), metadata=c.metadata))
    send(co, 0, [2, 3, 4], [FLOW_A, FLOW_A, FLOW_B], epoch=0, ts=100)
    send(co, 1, [3, 4], [FLOW_B, FLOW_C], epoch=1, ts=200)
    # reports/s: the sampler sees the reports within a couple of its one-second samples.
    status = wait_for(lambda: (s := co.api("/api/status")[1])["reports_per_s"] > 0 and s,
                      timeout=10, what="reports/s above 0")
    q = co.query()
    assert status["reports"] == q.counters["reports"] == 5
    assert status["hellos"] == q.counters["hello_rpcs"] == 3
    assert status["memberships"] == q.counters["memberships"] == 3
    assert status["epoch"] == 1  # the newest a report carried
    assert status["R"] == 2 and status["open_epochs"] == 2
    assert [(s["name"], s["reports"], s["hellos"], s["groups"]) for s in status["switches"]] \
        == [(s.name, s.reports, s.hellos, s.groups) for s in q.switches] \
        == [("s1", 3, 1, 1), ("s2", 2, 2, 2), ("s3", 0, 0, 0)]
    seen = [s["last_seen_ns"] for s in status["switches"]]
    assert seen[0] >= t0 and seen[1] >= t0 and seen[2] == 0
    assert status["groups"] == {"3": 2, "9": 1}  # l_g: two members of group 3
    assert status["uptime_s"] > 0
    history = status["reports_per_s_history"]
    assert history and max(rate for _, rate in history) > 0
    assert all(b[0] > a[0] for a, b in zip(history, history[1:], strict=False))
    # Nothing more arrives: reports/s falls back to 0 once the window has passed.
    wait_for(lambda: co.api("/api/status")[1]["reports_per_s"] == 0, timeout=15,
             what="reports/s back to 0")


def test_elephants_by_epoch_and_since_match_the_results_file(procs: Procs,
                                                               tmp_path: Path) -> None:
    co = LiveCoord(procs, tmp_path, R=2)
    c = co.client
    second = 1_700_000_000 * 10**9  # detection times: the reports' clock (ns)
    send(co, 0, [1, 2, 3], [FLOW_A, FLOW_A, FLOW_B], epoch=0, ts=second + 100)
    send(co, 1, [1, 2], [FLOW_B, FLOW_C], epoch=0, ts=second + 2 * 10**9)  # B: 2nd report
    send(co, 2, [1, 2], [FLOW_C, FLOW_A], epoch=1, ts=second + 4 * 10**9)
    send(co, 2, [3], [FLOW_A], epoch=1, ts=second + 5 * 10**9)

    def tuples(rows: list[dict[str, Any]]) -> list[tuple[str, str, int, int]]:
        return [(x["src"], x["dst"], x["epoch"], x["reports"]) for x in rows]

    status, all_ = co.api("/api/elephants")
    assert status == 200 and all_["count"] == 3
    a, b = (dotted(FLOW_A[0]), dotted(FLOW_A[1])), (dotted(FLOW_B[0]), dotted(FLOW_B[1]))
    # Newest first, with dotted addresses and the detection time in ns and in seconds.
    assert tuples(all_["elephants"]) == [(*a, 1, 2), (*b, 0, 2), (*a, 0, 2)]
    assert [x["detected_ns"] for x in all_["elephants"]] == \
        [second + 5 * 10**9, second + 2 * 10**9, second + 100]
    assert all_["elephants"][0]["detected"] == pytest.approx(1_700_000_005)
    assert all_["elephants"][0]["sport"] == FLOW_A[2] and all_["elephants"][0]["proto"] == 6
    assert tuples(co.api("/api/elephants?epoch=0")[1]["elephants"]) == \
        [(*b, 0, 2), (*a, 0, 2)]
    assert co.api("/api/elephants?epoch=7")[1] == {"count": 0, "elephants": []}
    since = co.api(f"/api/elephants?since={1_700_000_002}")[1]
    assert tuples(since["elephants"]) == [(*a, 1, 2), (*b, 0, 2)]  # at or after it
    assert co.api("/api/elephants?since=1700000002.5&epoch=0")[1]["count"] == 0
    limited = co.api("/api/elephants?limit=1")[1]
    assert limited["count"] == 3 and tuples(limited["elephants"]) == [(*a, 1, 2)]
    # Epochs as Query has them.
    epochs = co.api("/api/epochs")[1]["epochs"]
    q = co.query(True)
    assert [(x["epoch"], x["open"], x["reports"], x["elephants"]) for x in epochs] == \
        [(x.epoch, x.open, x.reports, x.elephants) for x in q.epochs] == \
        [(0, True, 5, 2), (1, True, 3, 1)]
    # Flushed (final), the view is the results file the coordinator writes at the end.
    c.flush(pb.FlushRequest(), metadata=c.metadata)
    final = co.api("/api/elephants")[1]["elephants"]
    assert [x["open"] for x in co.api("/api/epochs")[1]["epochs"]] == [False, False]
    co.proc.send_signal(signal.SIGTERM)
    assert co.proc.wait(20) == 0
    res = json.loads((tmp_path / "results.json").read_text())

    def key(x: dict[str, Any]) -> tuple[Any, ...]:
        return (x["epoch"], x["src"], x["dst"], x["sport"], x["dport"], x["proto"],
                x["reports"], x["detected_ns"])

    assert sorted(map(key, final)) == sorted(
        key({**x, "src": dotted(x["src"]), "dst": dotted(x["dst"])})
        for x in res["elephants"])
    assert len(final) == 3
    assert "rejected" not in procs.log("coordinator")


@pytest.mark.parametrize("query, problem", [
    ("epoch=x", "epoch='x': not an integer"),
    ("epoch=-1", "epoch='-1': must be >= 0"),
    ("since=yesterday", "since='yesterday': not a number"),
    ("since=nan", "since='nan': not a finite number"),
    ("limit=0", "limit='0': must be >= 1"),
])
def test_bad_query_values_are_400_with_one_line(procs: Procs, tmp_path: Path, query: str,
                                                problem: str) -> None:
    co = LiveCoord(procs, tmp_path)
    status, body = co.api(f"/api/elephants?{query}")
    assert status == 400 and body == {"error": body["error"]}
    assert body["error"].startswith(problem) and "\n" not in body["error"]


def test_no_auth_opens_the_api(procs: Procs, tmp_path: Path) -> None:
    co = LiveCoord(procs, tmp_path, extra=["--no-auth"])
    assert get(co.url + "live/config.json") == (200, {"auth": False})
    status, body = co.api("/api/status", token=None)
    assert status == 200 and body["reports"] == 0 and body["epoch"] is None


def test_http_over_tls_with_the_coordinator_certificate(procs: Procs, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    co = LiveCoord(procs, tmp_path, extra=["--tls-cert", str(pki.cert), "--tls-key",
                                           str(pki.key)])
    assert co.url.startswith("https://127.0.0.1:")
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    status, body = get(co.url + "api/status", co.token, context=ctx)
    assert status == 200 and body["switches"][0]["name"] == "s1"
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(co.url + "api/status", co.token,
            context=ssl.create_default_context(cafile=str(pki.other_ca)))


def _coordinator_error(tmp_path: Path, *args: str) -> tuple[int, str]:
    token = tmp_path / "token"
    if not token.exists():
        write_token_file(token)
    p = subprocess.run([PY, "-m", "herd.services.coordinator_service", "--listen",
                        "127.0.0.1:0", "--k", "2", "--token-file", str(token), "--results",
                        str(tmp_path / "r.json"), *args], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stderr.strip()


def test_http_address_errors_are_one_line(tmp_path: Path) -> None:
    code, err = _coordinator_error(tmp_path, "--http", "0.0.0.0:0")
    assert code == 2 and err == ("herd coordinator: error: --http 0.0.0.0:0: refusing to serve "
                                 "beyond loopback without TLS: give --tls-cert/--tls-key, or "
                                 "--insecure")
    code, err = _coordinator_error(tmp_path, "--http", "127.0.0.1:http")
    assert code == 2 and err.startswith("herd coordinator: error: --http 127.0.0.1:http: "
                                        "expected HOST:PORT") and "\n" not in err
    import socket

    with socket.socket() as s:  # a port in use
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = _coordinator_error(tmp_path, "--http", f"127.0.0.1:{port}")
    assert code == 2 and err.startswith(f"herd coordinator: error: --http 127.0.0.1:{port}: "
                                        "cannot bind") and "\n" not in err
    assert parse_http_address("8080") == ("127.0.0.1", 8080)
    assert parse_http_address(":0") == ("127.0.0.1", 0)
    assert parse_http_address("[::1]:81") == ("::1", 81)


@pytest.fixture(scope="module")
def small_prep(tmp_path_factory: pytest.TempPathFactory) -> PreparedTrace:
    path = tmp_path_factory.mktemp("trace") / "t.pcap"
    write_synthetic_pcap(path, 3000, seed=2)
    return PreparedTrace(load_trace(path))


def test_replay_takes_token_file_then_env_before_making_one(
        small_prep: PreparedTrace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HERD_TOKEN", raising=False)
    given = tmp_path / "given"
    token = write_token_file(given)
    monkeypatch.setenv("HERD_TOKEN", "e" * 32)
    with ReplayRun(small_prep, Params(k=2), token_file=str(given)) as run:
        assert run.token == token and run.token_args() == ["--token-file", str(given)]
    with ReplayRun(small_prep, Params(k=2)) as run:  # $HERD_TOKEN: inherited, not written
        assert run.token == "e" * 32 and run.token_args() == []
        assert run.token_source == "$HERD_TOKEN" and not (run.dir / "token").exists()
    monkeypatch.delenv("HERD_TOKEN")
    with ReplayRun(small_prep, Params(k=2)) as run:  # neither: its own, in its directory
        assert run.token_args() == ["--token-file", str(run.dir / "token")]
        assert (run.dir / "token").read_text().strip() == run.token and len(run.token) >= 16
    monkeypatch.setenv("HERD_TOKEN", "short")
    with pytest.raises(HerdInputError, match=r"^\$HERD_TOKEN: the token is 5 bytes"):
        ReplayRun(small_prep, Params(k=2))
    with pytest.raises(HerdInputError, match=r"^--http 10\.1\.2\.3:80: beyond loopback a "
                       "replay or testbed run serves its live view only with TLS"):
        ReplayRun(small_prep, Params(k=2), token_file=str(given), http="10.1.2.3:80")


def test_replay_serves_the_live_view_while_it_runs(small_prep: PreparedTrace,
                                                    tmp_path: Path) -> None:
    given = tmp_path / "given"
    token = write_token_file(given)
    run = ReplayRun(small_prep, Params(k=2, percentile=95), pps=1500, token_file=str(given),
                    http="127.0.0.1:0")
    try:
        run.start()
        assert run.http_url is not None and run.http_url.startswith("http://127.0.0.1:")
        # The controllers registered before the packets start; reports arrive while it runs.
        status = get(run.http_url + "api/status", token)[1]
        assert [s["registered"] for s in status["switches"]] == [True, True]
        wait_for(lambda: get(run.http_url + "api/status", token)[1]["reports"] > 0,
                 timeout=30, what="reports in the live view")
        assert run.wait_done(60)
        q = run.query(True)
        status = get(run.http_url + "api/status", token)[1]
        assert status["reports"] == q.counters["reports"]
        elephants = get(run.http_url + "api/elephants", token)[1]
        assert elephants["count"] == len(q.elephants) > 0
    finally:
        run.close()


def test_testbed_harness_refuses_a_live_view_beyond_loopback(tmp_path: Path) -> None:
    """Checked before Mininet comes up (so no root needed to see it)."""
    root = Path(__file__).resolve().parents[1]
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    p = subprocess.run(
        [PY, "-m", "herd.testbed.harness", "0.2", "0.1", "0", "0", str(layout),
         str(root / "pcap" / "synth-20k.pcap"),
         str(root / "topologies" / "p4app_10_switches_herd.json"), "--http", "0.0.0.0:8080"],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == ("herd testbed: error: --http 0.0.0.0:8080: beyond loopback a "
                                "replay or testbed run serves its live view only with TLS "
                                "(--tls-cert/--tls-key/--tls-ca)")


def test_live_view_in_process_starts_stops_and_keeps_a_bounded_history(tmp_path: Path) -> None:
    from herd.services.coordinator_service import CoordinatorState, Journal
    from herd.services.web import HISTORY, RATE_WINDOW, LiveView

    journal = Journal(str(tmp_path / "j.sqlite"), fsync=False)
    state = CoordinatorState(["s1", "s2"], 3, journal)
    view = LiveView(state, "t" * 32, "127.0.0.1", 0, None)
    try:
        url = view.start()
        assert url == f"http://127.0.0.1:{view.bound[1]}/"
        status, body = get(url + "api/status", "t" * 32)
        assert status == 200 and [s["name"] for s in body["switches"]] == ["s1", "s2"]
        assert body["epoch"] is None and body["reports"] == 0
    finally:
        view.stop()
    with pytest.raises(urllib.error.URLError):  # stopped: nothing listens there any more
        get(url + "api/status", "t" * 32)
    # The reports/s ring: bounded; the rate over the last RATE_WINDOW seconds.
    view.samples.clear()
    for i in range(HISTORY + 50):
        view.samples.append((1000.0 + i, 10 * i + (i * i if i > HISTORY else 0), 0))
    rate, history = view.rates()
    assert len(view.samples) == HISTORY and len(history) == HISTORY - 1
    last = HISTORY + 49
    assert rate == pytest.approx(((10 * last + last * last) - (10 * (last - RATE_WINDOW)
                                  + (last - RATE_WINDOW) ** 2)) / RATE_WINDOW)
    assert history[0] == [1051.0, 10.0]
    state.stop()
    journal.close()


def test_replay_serves_its_live_view_beyond_loopback_only_with_tls(
        small_prep: PreparedTrace, tmp_path: Path) -> None:
    from herd.services.security import RunTls

    pki = Pki(tmp_path / "pki")
    given = tmp_path / "given"
    token = write_token_file(given)
    run = ReplayRun(small_prep, Params(k=2, percentile=95), pps=3000, token_file=str(given),
                    http="0.0.0.0:0", tls=RunTls(str(pki.cert), str(pki.key), str(pki.ca)))
    try:
        run.start()
        assert run.http_url is not None and run.http_url.startswith("https://0.0.0.0:")
        port = run.http_url.rsplit(":", 1)[1].strip("/")
        ctx = ssl.create_default_context(cafile=str(pki.ca))
        status, body = get(f"https://127.0.0.1:{port}/api/status", token, context=ctx)
        assert status == 200 and [s["registered"] for s in body["switches"]] == [True, True]
        assert get(f"https://127.0.0.1:{port}/api/status", "w" * 32, context=ctx)[0] == 401
        assert run.wait_done(60)
    finally:
        run.close()
