"""The benchmarks' trace: a given capture, or a seeded synthetic one kept in the temp dir."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from herd.synth import write_synthetic_pcap


def bench_trace(packets: int, given: str | None = None) -> Path:
    if given:
        return Path(given)
    path = Path(tempfile.gettempdir()) / f"herd-bench-{packets}.pcap"
    if not path.exists():
        print(f"writing {path} ...", file=sys.stderr)
        write_synthetic_pcap(path, packets, seed=1)
    return path
