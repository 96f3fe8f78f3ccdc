"""TLS beyond loopback and the token rules (herd.services.security): certificates made here
with ``cryptography``; coordinator and controller are real processes, always cleaned up."""

from __future__ import annotations

import asyncio
import csv
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from test_services import FLOW_A, Procs, batch, start_model_switch, wait_for

from herd.errors import HerdInputError
from herd.messages import CpuMessage, MessageType
from herd.services.common import load_token, write_token_file
from herd.services.controller_service import CoordinatorClient
from herd.services.drivers.model import ModelDriver
from herd.services.replay import free_port
from herd.services.rpc import herd_pb2 as pb
from herd.services.security import (
    MIN_TOKEN_BYTES,
    check_bind,
    check_token,
    grpc_channel,
    is_loopback,
    server_ssl_context,
)

PY = sys.executable


# ------------------------------------------------------------------------------ certificates


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_ca(d: Path, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    path = d / f"{cn}.pem"
    _write_cert(cert, path)
    return key, cert, path


def make_server_cert(d: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
                     sans: list[x509.GeneralName], stem: str = "server") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name("herd coordinator"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = d / f"{stem}.crt", d / f"{stem}.key"
    _write_cert(cert, cert_path)
    _write_key(key, key_path)
    return cert_path, key_path


class Pki:
    """A CA, a server certificate it signed (SAN 127.0.0.1 and localhost), an unrelated CA."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        ca_key, ca, self.ca = make_ca(d, "herd-test-ca")
        self.cert, self.key = make_server_cert(
            d, ca_key, ca, [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                            x509.DNSName("localhost")])
        # Signed by the right CA, for a name only: connecting by IP needs --tls-server-name.
        self.named_cert, self.named_key = make_server_cert(
            d, ca_key, ca, [x509.DNSName("coordinator.herd.test")], "named")
        _, _, self.other_ca = make_ca(d, "unrelated-ca")
        self.other_key = d / "other.key"
        _write_key(ec.generate_private_key(ec.SECP256R1()), self.other_key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def token_file(tmp: Path) -> Path:
    path = tmp / "token"
    write_token_file(path)
    return path


def coordinator_cmd(tmp: Path, listen: str, *extra: str) -> list[str]:
    return [PY, "-m", "herd.services.coordinator_service", "--listen", listen,
            "--switches", "s1,s2", "--R", "2", "--token-file", str(token_file(tmp)),
            "--journal", str(tmp / "j.sqlite"), "--results", str(tmp / "results.json"), *extra]


def start_coordinator(procs: Procs, tmp: Path, listen: str, *extra: str) -> str:
    """A coordinator process serving; its bound host:port."""
    ready = tmp / "coord.ready"
    cmd = coordinator_cmd(tmp, listen, *extra, "--ready-file", str(ready))
    p = procs.start(cmd[2], cmd[3:], "coordinator")
    wait_for(lambda: ready.exists() or p.poll() is not None, what="coordinator")
    assert p.poll() is None, procs.log("coordinator")
    return ready.read_text().strip()



def run_coordinator_error(tmp: Path, listen: str, *extra: str) -> str:
    """Run a coordinator expected to refuse to start: exit 2, one line; that line."""
    out = subprocess.run(coordinator_cmd(tmp, listen, *extra), capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("herd coordinator: error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ end to end


def test_coordinator_and_controller_over_tls(pki: Pki, procs: Procs, tmp_path: Path) -> None:
    """TLS end to end: a controller with --tls-ca registers, its switch's hello gets an
    entry and l_g, reports reach the coordinator; a client with the TLS CA reads them."""
    address = f"127.0.0.1:{free_port()}"
    start_coordinator(procs, tmp_path, address, "--tls-cert", str(pki.cert), "--tls-key",
                      str(pki.key))
    assert "(TLS)" in procs.log("coordinator")
    token = (tmp_path / "token").read_text().strip()
    sock = start_model_switch(procs, tmp_path)
    procs.start("herd.services.controller_service", [
        "--switch", "s1", "--T", "50", "--coordinator", address, "--token-file",
        str(tmp_path / "token"), "--tls-ca", str(pki.ca), "--switch-address", sock],
        "controller")
    client = CoordinatorClient(address, token, str(pki.ca))
    drv = ModelDriver("s1", sock)
    try:
        wait_for(lambda: drv.stats()["configured"] and drv.stats()["subscriber"],
                 what="controller configures the switch")
        hello = CpuMessage(MessageType.HELLO, 0x0A000001, 0x14000002, 1, 2, 6, 0).pack()
        drv.request(op="inject_cpu", hex=hello.hex())
        # The hello went to the coordinator over TLS and its answer came back: the entry.
        wait_for(lambda: drv.stats()["groups_installed"] == 1, what="entry installed")

        def counters() -> dict[str, int]:
            q = client.query(pb.QueryRequest(), timeout=10, metadata=client.metadata)
            return dict(q.counters)

        wait_for(lambda: counters().get("memberships") == 1, what="membership counted")
        # A report batch from the test's own TLS client (as switch s2) is acknowledged.
        ack = list(client.reports(iter([batch(1, [1, 2], [FLOW_A, FLOW_A])]),
                                  metadata=client.metadata, timeout=10))
        assert ack[0].accepted == 2
        assert counters()["reports"] == 2
        assert "unreachable" not in procs.log("controller")
    finally:
        drv.close()
        client.close()


def test_wrong_ca_or_plain_client_fails_server_keeps_serving(pki: Pki, procs: Procs,
                                                              tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    start_coordinator(procs, tmp_path, address, "--tls-cert", str(pki.cert), "--tls-key",
                      str(pki.key))
    token = (tmp_path / "token").read_text().strip()
    for bad, why in ((CoordinatorClient(address, token, str(pki.other_ca)),
                      "CERTIFICATE_VERIFY_FAILED"),
                     (CoordinatorClient(address, token), "")):  # in clear, to a TLS port
        try:
            with pytest.raises(grpc.RpcError) as e:
                bad.register(pb.RegisterRequest(switch_name="s1"), timeout=5,
                             metadata=bad.metadata)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert why in (e.value.details() or ""), e.value.details()
        finally:
            bad.close()
    # A controller trusting another CA says why it cannot connect, and keeps retrying.
    procs.start("herd.services.controller_service", [
        "--switch", "s1", "--T", "50", "--coordinator", address, "--token-file",
        str(tmp_path / "token"), "--tls-ca", str(pki.other_ca), "--switch-address",
        start_model_switch(procs, tmp_path)], "controller")
    wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in procs.log("controller"),
             what="the controller's log saying why")
    assert procs.procs[-1].poll() is None  # still retrying
    # The certificate names 127.0.0.1 and localhost, not this name: refused...
    wrong_name = CoordinatorClient(address, token, str(pki.ca), "elsewhere.herd.test")
    try:
        with pytest.raises(grpc.RpcError) as e:
            wrong_name.register(pb.RegisterRequest(switch_name="s1"), timeout=5,
                                metadata=wrong_name.metadata)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        wrong_name.close()
    # ... and the server still serves the right client.
    good = CoordinatorClient(f"localhost:{address.rsplit(':', 1)[1]}", token, str(pki.ca))
    try:
        good.register(pb.RegisterRequest(switch_name="s1"), timeout=10, metadata=good.metadata)
    finally:
        good.close()


def test_tls_server_name_override(pki: Pki, procs: Procs, tmp_path: Path) -> None:
    """A certificate for a name only, reached by IP: --tls-server-name makes it verify."""
    address = f"127.0.0.1:{free_port()}"
    start_coordinator(procs, tmp_path, address, "--tls-cert", str(pki.named_cert),
                      "--tls-key", str(pki.named_key))
    token = (tmp_path / "token").read_text().strip()
    plain = CoordinatorClient(address, token, str(pki.ca))
    named = CoordinatorClient(address, token, str(pki.ca), "coordinator.herd.test")
    try:
        with pytest.raises(grpc.RpcError) as e:
            plain.register(pb.RegisterRequest(switch_name="s1"), timeout=5,
                           metadata=plain.metadata)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        named.register(pb.RegisterRequest(switch_name="s1"), timeout=10,
                       metadata=named.metadata)
    finally:
        plain.close()
        named.close()


# ------------------------------------------------------------------------------ the bind rule


def test_non_loopback_bind_needs_tls_or_insecure(pki: Pki, procs: Procs,
                                                 tmp_path: Path) -> None:
    line = run_coordinator_error(tmp_path, "0.0.0.0:0")
    assert ("--listen 0.0.0.0:0: refusing to serve beyond loopback without TLS: give "
            "--tls-cert/--tls-key, or --insecure") in line
    assert "refusing" in run_coordinator_error(tmp_path, "[::]:0")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    bound = start_coordinator(procs, tmp_path / "a", "0.0.0.0:0", "--insecure")
    assert bound.startswith("0.0.0.0:")
    assert "--insecure" in procs.log("coordinator") and "in clear" in procs.log("coordinator")
    bound = start_coordinator(procs, tmp_path / "b", "0.0.0.0:0", "--tls-cert",
                              str(pki.cert), "--tls-key", str(pki.key))
    # Serving on every interface with TLS: reachable on loopback, verified against the CA.
    token = (tmp_path / "b" / "token").read_text().strip()
    c = CoordinatorClient(f"127.0.0.1:{bound.rsplit(':', 1)[1]}", token, str(pki.ca))
    try:
        c.register(pb.RegisterRequest(switch_name="s2"), timeout=10, metadata=c.metadata)
    finally:
        c.close()


def test_loopback_rule() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "unix:/tmp/x.sock"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "[::]", "10.0.0.1", "192.168.1.2", "h1", ""):
        assert not is_loopback(host), host
    check_bind("--http 127.0.0.1:8080", "127.0.0.1", False, False)
    check_bind("--http 0.0.0.0:8080", "0.0.0.0", True, False)
    check_bind("--http 0.0.0.0:8080", "0.0.0.0", False, True)
    with pytest.raises(HerdInputError, match=r"^--http 10\.0\.0\.1:80: refusing"):
        check_bind("--http 10.0.0.1:80", "10.0.0.1", False, False)
    with pytest.raises(HerdInputError, match=r"^--tls-server-name h: needs --tls-ca"):
        grpc_channel("127.0.0.1:1", None, server_name="h")


# ------------------------------------------------------------------------------ bad files


def test_bad_tls_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    not_pem = tmp_path / "notpem.crt"
    not_pem.write_text("hello\n")
    unreadable = tmp_path / "missing.crt"
    cert, key = str(pki.cert), str(pki.key)
    cases: list[tuple[list[str], str]] = [
        (["--tls-cert", cert], f"--tls-cert {cert}: needs --tls-key"),
        (["--tls-key", key], f"--tls-key {key}: needs --tls-cert"),
        (["--tls-cert", str(unreadable), "--tls-key", key],
         f"--tls-cert {unreadable}: cannot read"),
        (["--tls-cert", str(not_pem), "--tls-key", key],
         f"--tls-cert {not_pem}: not a PEM certificate"),
        (["--tls-cert", cert, "--tls-key", str(not_pem)],
         f"--tls-key {not_pem}: not a PEM private key"),
        (["--tls-cert", cert, "--tls-key", cert], f"--tls-key {cert}: not a PEM private key"),
        (["--tls-cert", cert, "--tls-key", str(pki.other_key)],
         f"--tls-key {pki.other_key}: does not match the certificate"),
    ]
    for i, (flags, expected) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        assert expected in run_coordinator_error(d, "127.0.0.1:0", *flags), flags
    # A controller's --tls-ca: checked before it waits for its switch.
    for ca, expected in ((unreadable, "cannot read"), (not_pem, "not a PEM certificate")):
        out = subprocess.run(
            [PY, "-m", "herd.services.controller_service", "--switch", "s1", "--T", "50",
             "--coordinator", "127.0.0.1:1", "--token-file", str(token_file(tmp_path)),
             "--tls-ca", str(ca), "--switch-address", f"unix:{tmp_path / 'none.sock'}"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 2, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and f"--tls-ca {ca}: {expected}" in lines[0], out.stderr


# ------------------------------------------------------------------------------ tokens


def test_short_tokens_refused_16_bytes_accepted(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    short = tmp_path / "short"
    short.write_text("x" * (MIN_TOKEN_BYTES - 1) + "\n")
    with pytest.raises(HerdInputError, match=rf"^--token-file {short}: the token is 15 bytes"):
        load_token(str(short))
    monkeypatch.setenv("HERD_TOKEN", "abcde")
    with pytest.raises(HerdInputError, match=r"^\$HERD_TOKEN: the token is 5 bytes"):
        load_token(None)
    exact = "y" * MIN_TOKEN_BYTES
    monkeypatch.setenv("HERD_TOKEN", exact)
    assert load_token(None) == exact
    ok = tmp_path / "ok"
    ok.write_text(exact + "\n")
    assert load_token(str(ok)) == exact
    # Bytes, not characters: 8 two-byte characters make 16 bytes.
    assert check_token("é" * 8, "x") == "é" * 8
    with pytest.raises(HerdInputError):
        check_token("é" * 7, "x")
    # The coordinator refuses to start with a short token, from the file or the environment.
    out = subprocess.run(
        [PY, "-m", "herd.services.coordinator_service", "--listen", "127.0.0.1:0",
         "--token-file", str(short), "--results", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"herd coordinator: error: --token-file {short}: the token is 15 bytes, at least 16 "
        "are needed (make one: python3 -c 'import secrets; print(secrets.token_hex(24))')"]
    env = {**os.environ, "HERD_TOKEN": "abcde"}
    out = subprocess.run(
        [PY, "-m", "herd.services.coordinator_service", "--listen", "127.0.0.1:0",
         "--results", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env)
    assert out.returncode == 2 and "$HERD_TOKEN: the token is 5 bytes" in out.stderr


# ------------------------------------------------------------------------------ HTTPS


def test_server_ssl_context_serves_https(pki: Pki, tmp_path: Path) -> None:
    """The context an HTTP service gets: a client trusting the CA reads a page over HTTPS;
    one trusting another CA fails the handshake; none without --tls-cert."""
    import aiohttp  # the live view's web framework
    from aiohttp import web

    class Args:
        tls_cert, tls_key = str(pki.cert), str(pki.key)

    class NoTls:
        tls_cert = tls_key = None

    assert server_ssl_context(NoTls()) is None
    ctx = server_ssl_context(Args())
    assert ctx is not None

    async def scenario() -> tuple[int, Any, str]:
        app = web.Application()

        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"scheme": request.scheme})

        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = runner.addresses[0][1]
        try:
            good = ssl.create_default_context(cafile=str(pki.ca))
            async with aiohttp.ClientSession() as s:
                async with s.get(f"https://localhost:{port}/", ssl=good) as r:
                    status, body = r.status, await r.json()
                bad = ssl.create_default_context(cafile=str(pki.other_ca))
                try:
                    async with s.get(f"https://127.0.0.1:{port}/", ssl=bad) as r:
                        failure = f"served {r.status}"
                except aiohttp.ClientConnectorCertificateError as e:
                    failure = str(e)
        finally:
            await runner.cleanup()
        return status, body, failure

    status, body, failure = asyncio.run(scenario())
    assert status == 200 and body == {"scheme": "https"}
    assert "CERTIFICATE_VERIFY_FAILED" in failure, failure


def test_written_token_passes_the_rule(tmp_path: Path) -> None:
    """write_token_file's token (what replay and the harness use) passes the rule."""
    path = tmp_path / "t"
    token = write_token_file(path)
    assert len(token.encode()) == 48 >= MIN_TOKEN_BYTES
    assert load_token(str(path)) == token
    assert path.stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------ replay


def test_replay_runs_fully_over_tls(pki: Pki, tmp_path: Path) -> None:
    """herd replay --tls-cert/--tls-key/--tls-ca: its coordinator serves TLS only, its
    controllers and its own client verify it, nothing is lost."""
    from herd.synth import write_synthetic_pcap

    trace = tmp_path / "t.pcap"
    write_synthetic_pcap(trace, 20_000, seed=5)
    work = tmp_path / "run"
    base = [PY, "-m", "herd.cli", "replay", "--trace", str(trace), "--k", "2",
            "--percentile", "95", "--pps", "5000", "--json", "--workdir", str(work),
            "--log-level", "INFO"]
    out = subprocess.run(
        [*base, "--tls-cert", str(pki.cert), "--tls-key", str(pki.key), "--tls-ca",
         str(pki.ca)], capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    d = json.loads(out.stdout)
    assert d["lost_messages"] == 0 and d["drained"]
    assert d["hellos"] > 0 and d["reports"] > 0 and d["detected"] > 0
    logs = work / "logs"
    assert "(TLS)" in (logs / "coordinator.log").read_text()
    assert "unreachable" not in (logs / "controller-s1.log").read_text()
    # Half of it given: one line, exit 2, before anything starts.
    for flags, expected in (
            (["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)], "needs --tls-ca"),
            (["--tls-ca", str(pki.ca)], f"--tls-ca {pki.ca}: needs --tls-cert/--tls-key")):
        bad = subprocess.run([*base, *flags], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and expected in bad.stderr, bad.stderr[-2000:]
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_coordinator_live_view_over_https(pki: Pki, procs: Procs, tmp_path: Path) -> None:
    """The coordinator's --http with --tls-cert/--tls-key serves HTTPS (the token still
    needed); --http beyond loopback in clear is refused like --listen."""
    import urllib.error
    import urllib.request

    http_ready = tmp_path / "http.ready"
    start_coordinator(procs, tmp_path, f"127.0.0.1:{free_port()}", "--tls-cert",
                      str(pki.cert), "--tls-key", str(pki.key), "--http", "127.0.0.1:0",
                      "--http-ready-file", str(http_ready))
    url = http_ready.read_text().strip()
    assert url.startswith("https://127.0.0.1:"), url
    token = (tmp_path / "token").read_text().strip()
    good = ssl.create_default_context(cafile=str(pki.ca))
    req = urllib.request.Request(url + "api/status", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=good, timeout=10) as r:
        assert r.status == 200 and "reports" in json.loads(r.read())
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(req, context=ssl.create_default_context(cafile=str(pki.other_ca)),
                               timeout=10)
    (tmp_path / "b").mkdir()
    line = run_coordinator_error(tmp_path / "b", "127.0.0.1:0", "--http", "0.0.0.0:0")
    assert "--http 0.0.0.0:0: refusing to serve beyond loopback without TLS" in line


# ------------------------------------------------------------------------------ testbed

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.root
@pytest.mark.mininet
def test_testbed_harness_over_tls(pki: Pki, tmp_path: Path) -> None:
    """The harness passes --tls-cert/--tls-key to its coordinator and --tls-ca to its
    controllers: the run completes only if both ends speak TLS (a plain end fails the
    handshake, and every message would be lost)."""
    layout = tmp_path / "epsilon.csv"
    layout.write_text("epsilon,f1score,precision,recall\n0.1\n")
    proc = subprocess.run(
        [PY, "-m", "herd.testbed.harness", "0.2", "0.1", "20", "0", str(layout),
         str(REPO / "pcap" / "synth-20k.pcap"), str(REPO / "topologies" /
                                                   "p4app_10_switches_herd.json"),
         "--target", "model", "--pps", "5000", "--tls-cert", str(pki.cert), "--tls-key",
         str(pki.key), "--tls-ca", str(pki.ca)],
        capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = layout.read_text().splitlines()
    assert len(rows) == 2
    row = next(csv.DictReader(rows))
    assert row["lost_messages"] == "0" and int(row["reports"]) > 0, row
    assert float(row["f1score"]) > 0.5, row
