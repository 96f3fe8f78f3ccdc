"""TLS and token rules for the services: what may listen where, and with which secrets.

A service (the coordinator's gRPC port, its HTTP live view) serves beyond loopback only with
TLS (``--tls-cert``/``--tls-key``) or when told ``--insecure``: the token is a bearer secret
and must not cross a network in clear by accident. Clients (controllers, replay, the testbed
harness, benches) verify the server with ``--tls-ca``; the host name they connect to must be
in the certificate's subjectAltName (``--tls-server-name`` overrides the name checked, for a
certificate made for a name when the connection is by IP address). Tokens are at least
MIN_TOKEN_BYTES bytes.

Every file is checked up front (readable, PEM, the key matching the certificate) so that a
mistake is one line naming the file, not a TLS handshake failure later. The checks use the
standard library's ``ssl``: no extra dependency at run time.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from herd.errors import HerdInputError

log = logging.getLogger("herd.security")

MIN_TOKEN_BYTES = 16

_CERT_MARK = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKS = (b"-----BEGIN PRIVATE KEY-----", b"-----BEGIN RSA PRIVATE KEY-----",
              b"-----BEGIN EC PRIVATE KEY-----", b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


# ------------------------------------------------------------------------ arguments

def add_tls_arguments(p: argparse.ArgumentParser, *, server: bool) -> None:
    """``server``: --tls-cert, --tls-key, --insecure (what a listening service takes);
    else --tls-ca, --tls-server-name (what a client of the coordinator takes)."""
    if server:
        p.add_argument("--tls-cert", metavar="FILE",
                       help="serve with TLS: the server's certificate chain (PEM); its "
                       "subjectAltName must name the address clients connect to")
        p.add_argument("--tls-key", metavar="FILE",
                       help="serve with TLS: the certificate's private key (PEM, unencrypted)")
        p.add_argument("--insecure", action="store_true",
                       help="allow listening beyond loopback without TLS (the token then "
                       "travels in clear)")
    else:
        p.add_argument("--tls-ca", metavar="FILE",
                       help="connect with TLS, trusting the certificate authorities in FILE "
                       "(PEM)")
        p.add_argument("--tls-server-name", metavar="NAME",
                       help="with --tls-ca: the name the server's certificate must carry, "
                       "when it is not the host connected to (e.g. an IP address the "
                       "certificate does not list)")


# ------------------------------------------------------------------------ addresses

def address_host(address: str) -> str:
    """The host part of ``host:port`` / ``[v6]:port`` (brackets removed); a ``unix:`` address
    is returned whole."""
    if address.startswith(("unix:", "unix-abstract:")):
        return address
    host = address.rsplit(":", 1)[0] if ":" in address else address
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1, localhost (and unix sockets, which never leave the machine).
    The wildcard addresses 0.0.0.0 and :: are not loopback: they listen on every interface."""
    if host.startswith(("unix:", "unix-abstract:")):
        return True
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything


def check_bind(what: str, host: str, tls: bool, insecure: bool) -> None:
    """Refuse to listen beyond loopback without TLS unless ``insecure``; with it, warn.
    ``what`` is the option and its value as given (``"--listen 0.0.0.0:50051"``), ``host``
    its host part (``address_host``)."""
    if tls or is_loopback(host):
        return
    if not insecure:
        raise HerdInputError(f"{what}: refusing to serve beyond loopback without TLS: give "
                             "--tls-cert/--tls-key, or --insecure")
    log.warning("%s: --insecure: serving beyond loopback without TLS, the token travels "
                "in clear", what)


# ------------------------------------------------------------------------ files

def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise HerdInputError(f"{what} {path}: cannot read ({e.strerror})") from None


def _read_cert(path: str, what: str) -> bytes:
    data = _read(path, what)
    if _CERT_MARK not in data:
        raise HerdInputError(f"{what} {path}: not a PEM certificate (no "
                             f"{_CERT_MARK.decode()} line)")
    return data


def _read_key(path: str) -> bytes:
    data = _read(path, "--tls-key")
    if not any(m in data for m in _KEY_MARKS):
        raise HerdInputError(f"--tls-key {path}: not a PEM private key (no "
                             "-----BEGIN ... PRIVATE KEY----- line)")
    if b"ENCRYPTED" in data:
        raise HerdInputError(f"--tls-key {path}: the key is encrypted; give an unencrypted "
                             "key (openssl pkey -in KEY -out PLAIN)")
    return data


def _no_password() -> str:
    # A key that still asks for a password (a legacy-encrypted PEM) must not prompt.
    raise HerdInputError("--tls-key: the key is encrypted; give an unencrypted key")


def server_tls_files(args: Any) -> tuple[str, str] | None:
    """(cert, key) from ``--tls-cert``/``--tls-key``, both checked (readable, PEM, the key
    matching the certificate); None when neither is given; one without the other is an
    error."""
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    if not cert and not key:
        return None
    if not cert:
        raise HerdInputError(f"--tls-key {key}: needs --tls-cert as well")
    if not key:
        raise HerdInputError(f"--tls-cert {cert}: needs --tls-key as well")
    _read_cert(cert, "--tls-cert")
    _read_key(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as e:
        if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
            raise HerdInputError(f"--tls-key {key}: does not match the certificate "
                                 f"--tls-cert {cert}") from None
        raise HerdInputError(f"--tls-cert {cert} / --tls-key {key}: cannot be loaded "
                             f"({e.reason or e})") from None
    return cert, key


def read_ca(ca_file: str) -> bytes:
    """The CA bundle of ``--tls-ca``, checked to hold at least one loadable certificate."""
    data = _read_cert(ca_file, "--tls-ca")
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except ssl.SSLError as e:
        raise HerdInputError(f"--tls-ca {ca_file}: cannot be loaded ({e.reason or e})") from None
    return data


# ------------------------------------------------------------------------ servers

def server_ssl_context(args: Any) -> ssl.SSLContext | None:
    """For an HTTP server (aiohttp's ``ssl_context``): TLS with --tls-cert/--tls-key; None
    without them."""
    files = server_tls_files(args)
    if files is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(*files, password=_no_password)
    return ctx


def grpc_server_credentials(args: Any) -> grpc.ServerCredentials | None:
    """For ``server.add_secure_port``: TLS with --tls-cert/--tls-key (clients are not asked
    for certificates: they authenticate with the token); None without them."""
    files = server_tls_files(args)
    if files is None:
        return None
    cert, key = files
    return grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])


# ------------------------------------------------------------------------ clients

def grpc_channel(address: str, ca_file: str | None,
                 options: Sequence[tuple[str, Any]] = (),
                 server_name: str | None = None) -> grpc.Channel:
    """A channel to ``address``: TLS verified against ``ca_file`` when given (the host, or
    ``server_name``, must be in the server certificate's subjectAltName), else in clear."""
    opts = list(options)
    if not ca_file:
        if server_name:
            raise HerdInputError(f"--tls-server-name {server_name}: needs --tls-ca")
        return grpc.insecure_channel(address, options=opts)
    creds = grpc.ssl_channel_credentials(root_certificates=read_ca(ca_file))
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return grpc.secure_channel(address, creds, options=opts)


def client_tls_args(args: Any) -> list[str]:
    """--tls-ca/--tls-server-name as given, for a client process started by this one."""
    out: list[str] = []
    if getattr(args, "tls_ca", None):
        out += ["--tls-ca", str(args.tls_ca)]
    if getattr(args, "tls_server_name", None):
        out += ["--tls-server-name", str(args.tls_server_name)]
    return out


def server_tls_args(args: Any) -> list[str]:
    """--tls-cert/--tls-key/--insecure as given, for a server process started by this one."""
    out: list[str] = []
    if getattr(args, "tls_cert", None):
        out += ["--tls-cert", str(args.tls_cert)]
    if getattr(args, "tls_key", None):
        out += ["--tls-key", str(args.tls_key)]
    if getattr(args, "insecure", False):
        out.append("--insecure")
    return out


# ------------------------------------------------------------------------ runs

@dataclass(frozen=True)
class RunTls:
    """TLS for a run that starts both ends (``herd replay``, the testbed harness): the
    coordinator it starts serves with ``cert``/``key``, its controllers and its own client
    trust ``ca`` (and check ``server_name`` instead of the address's host when given)."""

    cert: str
    key: str
    ca: str
    server_name: str | None = None

    def server_args(self) -> list[str]:
        return ["--tls-cert", self.cert, "--tls-key", self.key]

    def client_args(self) -> list[str]:
        out = ["--tls-ca", self.ca]
        return out + ["--tls-server-name", self.server_name] if self.server_name else out


def add_run_tls_arguments(p: argparse.ArgumentParser) -> None:
    """--tls-cert/--tls-key/--tls-ca/--tls-server-name for a run that starts the
    coordinator and its controllers (passed through to them)."""
    p.add_argument("--tls-cert", metavar="FILE",
                   help="run the coordinator with TLS: its certificate (PEM; a subjectAltName "
                   "for 127.0.0.1, or see --tls-server-name); needs --tls-key and --tls-ca")
    p.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="the CA the controllers (and this run) verify the coordinator with")
    p.add_argument("--tls-server-name", metavar="NAME",
                   help="the name the certificate must carry, when it does not list 127.0.0.1")


def run_tls_from_args(args: Any) -> RunTls | None:
    """The run's TLS from its arguments, every file checked; None without any."""
    files = server_tls_files(args)
    ca = getattr(args, "tls_ca", None)
    name = getattr(args, "tls_server_name", None)
    if files is None:
        if ca or name:
            raise HerdInputError(f"{'--tls-ca ' + ca if ca else '--tls-server-name ' + name}: "
                                 "needs --tls-cert/--tls-key (the coordinator this run starts)")
        return None
    if not ca:
        raise HerdInputError(f"--tls-cert {files[0]}: needs --tls-ca as well (the CA the "
                             "controllers verify the coordinator with; for a self-signed "
                             "certificate, the certificate itself)")
    read_ca(ca)
    return RunTls(files[0], files[1], ca, name)


# ------------------------------------------------------------------------ tokens

def check_token(token: str, source: str) -> str:
    """``token`` if it has at least MIN_TOKEN_BYTES bytes (UTF-8); else an error naming
    ``source`` (``--token-file FILE`` or ``$HERD_TOKEN``)."""
    n = len(token.encode("utf-8"))
    if n < MIN_TOKEN_BYTES:
        raise HerdInputError(
            f"{source}: the token is {n} bytes, at least {MIN_TOKEN_BYTES} are needed (make "
            "one: python3 -c 'import secrets; print(secrets.token_hex(24))')")
    return token
