"""The coordinator's live view: a JSON API and a page over HTTP (aiohttp), read-only.

``LiveView`` serves, in a thread of its own with its own event loop (the coordinator's gRPC
threads never wait on it), what ``CoordinatorState``'s read methods say:

  ``/api/status``     uptime, the newest epoch seen, hellos, reports, reports/s over the last
                      few seconds and its history (one sample a second, a bounded ring),
                      per-switch counters and last-seen times, groups and their l_g;
  ``/api/elephants``  detected elephants, newest first (``?epoch=N``, ``?since=T`` in Unix
                      seconds: detected at or after T, ``?limit=N``);
  ``/api/epochs``     the epoch summaries;
  ``/``               the page (``herd/services/live/``: plain HTML, JS and CSS).

Every ``/api`` request needs ``Authorization: Bearer <token>``, the coordinator's token
(compared in constant time); a missing or wrong one gets 401, counted and logged once per
peer (``Rejections``). Without a token (``--no-auth``) the API is open. The page learns which
from ``/live/config.json`` (no secret in it), so that it never makes a request bound to fail.

Detection times are the reports' clock: trace time in ``herd replay``, the switches' wall
clock in the testbed.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from herd.errors import HerdInputError
from herd.services.common import Rejections

if TYPE_CHECKING:
    from herd.services.coordinator_service import CoordinatorState

log = logging.getLogger("herd.coordinator.http")

STATIC_DIR = Path(__file__).with_name("live")
SAMPLE_S = 1.0  # reports are sampled this often for reports/s
HISTORY = 600  # samples kept: ten minutes of reports/s history
RATE_WINDOW = 5  # reports/s is measured over this many samples (seconds)

# The page loads only its own files: no inline script, no third-party origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def parse_http_address(spec: str, flag: str = "--http") -> tuple[str, int]:
    """``HOST:PORT``, ``:PORT`` or ``PORT`` (loopback), ``[v6]:PORT`` -> (host, port)."""
    host, sep, port_s = spec.rpartition(":")
    if not sep:
        host, port_s = "", spec
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise HerdInputError(f"{flag} {spec}: expected HOST:PORT with a port in 0..65535 "
                             "(0 picks a free one)")
    return host, port


def check_loopback_http(spec: str, tls: bool) -> None:
    """For the runs that start their own coordinator (replay, the testbed; no --insecure):
    ``--http`` beyond loopback only with the run's TLS, checked before anything starts."""
    from herd.services.security import is_loopback

    if not tls and not is_loopback(parse_http_address(spec)[0]):
        raise HerdInputError(f"--http {spec}: beyond loopback a replay or testbed run serves "
                             "its live view only with TLS (--tls-cert/--tls-key/--tls-ca)")


def dotted(ip: int) -> str:
    return socket.inet_ntoa(int(ip).to_bytes(4, "big"))


def elephant_record(x: dict[str, Any]) -> dict[str, Any]:
    """A coordinator elephant (integer addresses) as the API shows it."""
    ns = x.get("detected_ns")
    return {"epoch": x["epoch"], "src": dotted(x["src"]), "dst": dotted(x["dst"]),
            "sport": x["sport"], "dport": x["dport"], "proto": x["proto"],
            "reports": x["reports"], "detected_ns": ns,
            "detected": None if ns is None else ns / 1e9, "early": x.get("early")}


class LiveView:
    """The HTTP live view of one coordinator: ``start()`` binds and serves in a thread,
    ``url`` is where, ``stop()`` ends it. ``rejections`` may be the gRPC side's, so that
    refused HTTP requests show among the coordinator's counters."""

    def __init__(self, state: CoordinatorState, token: str | None, host: str = "127.0.0.1",
                 port: int = 0, ssl_context: ssl.SSLContext | None = None,
                 rejections: Rejections | None = None,
                 started: float | None = None) -> None:
        self.state = state
        self._token = None if token is None else token.encode()
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.rejections = rejections or Rejections(log)
        self.started = time.monotonic() if started is None else started
        # (unix s, reports, hellos) once a second: reports/s and its history.
        self.samples: collections.deque[tuple[float, int, int]] = collections.deque(
            maxlen=HISTORY)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.bound: tuple[str, int] | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        if self.bound is None:
            raise RuntimeError("the live view is not serving")
        host, port = self.bound
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{port}/"

    def start(self) -> str:
        """Bind and serve; returns the URL. A bind failure is a HerdInputError."""
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            if isinstance(self._error, OSError):
                raise HerdInputError(f"--http {self.host}:{self.port}: cannot bind "
                                     f"({self._error.strerror or self._error})") from None
            raise self._error
        return self.url

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        sampler = loop.create_task(self._sample_loop())
        try:
            loop.run_forever()
        finally:
            sampler.cancel()
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()

    async def _setup(self) -> None:
        app = web.Application(middlewares=[self._headers])
        app.router.add_get("/", self._page)
        app.router.add_get("/live/config.json", self._config)
        app.router.add_static("/live/", STATIC_DIR, follow_symlinks=False)
        app.router.add_get("/api/status", self._guard(self._status))
        app.router.add_get("/api/elephants", self._guard(self._elephants))
        app.router.add_get("/api/epochs", self._guard(self._epochs))
        # No access log: a page polling every second would flood it.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        addr = self._runner.addresses[0]
        self.bound = (str(addr[0]), int(addr[1]))
        self._take_sample()

    # ---------------------------------------------------------------- reports/s

    def _take_sample(self) -> None:
        with self.state.lock:
            c = self.state.counters
            self.samples.append((time.time(), c["reports"], c["hello_rpcs"]))

    async def _sample_loop(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_S)
            self._take_sample()

    def rates(self) -> tuple[float, list[list[float]]]:
        """Reports/s over the last RATE_WINDOW samples, and [unix s, reports/s] per sample
        interval (the history)."""
        s = list(self.samples)
        history = [[t1, (r1 - r0) / max(1e-9, t1 - t0)]
                   for (t0, r0, _), (t1, r1, _) in zip(s, s[1:], strict=False)]
        if len(s) < 2:
            return 0.0, history
        (t0, r0, _), (t1, r1, _) = s[max(0, len(s) - 1 - RATE_WINDOW)], s[-1]
        return (r1 - r0) / max(1e-9, t1 - t0), history

    # ---------------------------------------------------------------- middleware and auth

    @web.middleware
    async def _headers(self, request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                       ) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    def _guard(self, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
               ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self._token is not None:
                problem = self._refusal(request.headers.get("Authorization", ""))
                if problem is not None:
                    kind, detail = problem
                    remote = request.remote or "?"
                    # Rejections keys on the host of "host:port" (IPv6 in brackets).
                    peer = f"[{remote}]:0" if ":" in remote else remote
                    self.rejections.reject(kind, peer,
                                           f"HTTP {request.method} {request.path}: {detail}")
                    return web.json_response({"error": detail}, status=401,
                                             headers={"WWW-Authenticate": "Bearer"})
            return await handler(request)

        return guarded

    def _refusal(self, header: str) -> tuple[str, str] | None:
        scheme, _, given = header.partition(" ")
        if not header:
            return "http_token_missing", "no Authorization header (Bearer <token>)"
        if scheme.lower() != "bearer" or not given.strip():
            return "http_token_missing", "Authorization is not 'Bearer <token>'"
        assert self._token is not None
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return "http_token_wrong", "wrong token"
        return None

    # ---------------------------------------------------------------- handlers

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def _config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"auth": self._token is not None})

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        # The reads take the state's lock and may read the journal: not on the event loop.
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._read(self.status))

    def status(self) -> dict[str, Any]:
        st = self.state
        with st.lock:
            counters = dict(st.counters)
        memory = st.memory()
        rate, history = self.rates()
        switches = st.switch_counters()
        return {
            "uptime_s": time.monotonic() - self.started,
            "now": time.time(),
            "epoch": memory["epochs_seen"] - 1 if memory["epochs_seen"] > 0 else None,
            "R": st.R,
            "hellos": counters["hello_rpcs"],
            "memberships": counters["memberships"],
            "reports": counters["reports"],
            "reports_per_s": rate,
            "reports_per_s_history": history,
            "open_epochs": memory["open_epochs"],
            "epochs_closed": counters["epochs_closed"],
            "switches": [{k: s[k] for k in (
                "name", "switch_id", "registered", "subscribed", "hellos", "groups", "reports",
                "duplicates", "batches", "last_seen_ns")} for s in switches],
            "groups": {str(g): lg for g, lg in st.groups().items()},
            "counters": counters,
            "rejected": dict(self.rejections.counts),
        }

    async def _elephants(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        try:
            epoch = _query_int(q, "epoch", 0)
            limit = _query_int(q, "limit", 1)
            since = _query_float(q, "since")
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        rows = await self._read(self.state.elephants, epoch)
        if since is not None:
            floor_ns = since * 1e9
            rows = [x for x in rows if x["detected_ns"] is not None
                    and x["detected_ns"] >= floor_ns]
        # Newest first: by detection time (undetermined last), then epoch.
        rows.sort(key=lambda x: (x["detected_ns"] is not None, x["detected_ns"] or 0,
                                 x["epoch"]), reverse=True)
        total = len(rows)
        if limit is not None:
            rows = rows[:limit]
        return web.json_response({"count": total,
                                  "elephants": [elephant_record(x) for x in rows]})

    async def _epochs(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"epochs": await self._read(self.state.epochs)})


def _query_int(q: Any, name: str, low: int) -> int | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        v = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not an integer") from None
    if v < low:
        raise ValueError(f"{name}={raw!r}: must be >= {low}")
    return v


def _query_float(q: Any, name: str) -> float | None:
    raw = q.get(name)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number (Unix seconds)") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{name}={raw!r}: not a finite number")
    return v


__all__ = ["LiveView", "check_loopback_http", "elephant_record", "parse_http_address"]
