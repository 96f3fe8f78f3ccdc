"""Shared fixtures: every test gets its own trace cache; hand-made captures via scapy."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _private_trace_cache(tmp_path_factory: pytest.TempPathFactory,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERD_CACHE_DIR", str(tmp_path_factory.mktemp("herd-cache")))


def _results_db_env(mp: pytest.MonkeyPatch, data: Path) -> None:
    mp.setenv("XDG_DATA_HOME", str(data))
    mp.setenv("HERD_DB", str(data / "runs.sqlite"))


@pytest.fixture(autouse=True, scope="session")
def _session_results_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Before any module-scoped fixture runs a command (see _private_results_db).
    with pytest.MonkeyPatch.context() as mp:
        _results_db_env(mp, tmp_path_factory.mktemp("herd-data-session"))
        yield


@pytest.fixture(autouse=True)
def _private_results_db(tmp_path_factory: pytest.TempPathFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs are recorded by default: a test (and its subprocesses, which inherit the
    # environment) must never write the user's real results database.
    _results_db_env(monkeypatch, tmp_path_factory.mktemp("herd-data"))


Packet = tuple[float, str, str, int, int, str]  # (time s, src, dst, sport, dport, "tcp"/"udp")


def write_capture(path: Path, packets: Sequence[Packet]) -> Path:
    """A pcap of Ethernet/IPv4/TCP|UDP frames, crafted with scapy."""
    from scapy.all import IP, TCP, UDP, Ether, wrpcap

    frames = []
    for t, src, dst, sport, dport, proto in packets:
        l4 = TCP(sport=sport, dport=dport) if proto == "tcp" else UDP(sport=sport, dport=dport)
        frame = Ether() / IP(src=src, dst=dst) / l4
        frame.time = t
        frames.append(frame)
    wrpcap(str(path), frames)
    return path


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Any]:
    """The service processes a test starts (test_services.Procs), all stopped at its end."""
    from test_services import Procs

    ps = Procs(tmp_path)
    try:
        yield ps
    finally:
        ps.close()
