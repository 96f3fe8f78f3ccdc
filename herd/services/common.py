"""What the services share: the token, addresses, atomic JSON files, refusal counters."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from herd.errors import HerdInputError
from herd.fileio import atomic_write, atomic_write_json, json_default  # noqa: F401
from herd.services.security import check_token

TOKEN_ENV = "HERD_TOKEN"
TOKEN_METADATA_KEY = "x-herd-token"
DEFAULT_COORDINATOR = "127.0.0.1:50051"


def load_token(token_file: str | None, required: bool = True) -> str | None:
    """The shared token: from ``token_file`` if given, else $HERD_TOKEN. Surrounding
    whitespace (a trailing newline) is not part of it. Shorter than MIN_TOKEN_BYTES bytes
    is refused (a short bearer secret is guessable)."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise HerdInputError(
                f"{token_file}: cannot read the token file ({e.strerror})") from None
        if not token:
            raise HerdInputError(f"{token_file}: the token file is empty")
        return check_token(token, f"--token-file {token_file}")
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        return check_token(token, f"${TOKEN_ENV}")
    if required:
        raise HerdInputError(f"no token: give --token-file FILE or set {TOKEN_ENV}")
    return None


def write_token_file(path: str | os.PathLike[str]) -> str:
    """A fresh random token written to ``path`` readable by the owner only."""
    import secrets

    token = secrets.token_hex(24)
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


# One implementation of atomic writes for the whole package (herd.fileio).
atomic_write_text = atomic_write


def rss_bytes() -> int:
    """Resident set size of this process (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Rejections:
    """Counts rejected input by kind and logs the first one of each (peer, kind) only: a
    misbehaving client must not be able to fill the log, and the service keeps running."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._logged: set[tuple[str, str]] = set()

    def reject(self, kind: str, peer: str, detail: str) -> None:
        host = peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer
        with self._lock:
            self.counts[kind] += 1
            first = (host, kind) not in self._logged
            if first:
                self._logged.add((host, kind))
        if first:
            self._log.warning("rejected %s from %s: %s (logged once per peer and kind; "
                              "further ones are only counted)", kind, host, detail)


T = TypeVar("T")


def drain(q: queue.Queue[T | None], running: Callable[[], bool],
          poll_s: float = 0.5) -> Iterator[T]:
    """The items put on ``q`` until a None, while ``running()`` (looked at every ``poll_s``):
    what a server or client stream sends."""
    while running():
        try:
            item = q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if item is None:
            return
        yield item


def setup_logging(level: str = "INFO", name: str = "herd") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format=f"%(asctime)s {name} %(levelname)s %(message)s")
