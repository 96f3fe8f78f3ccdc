"""herd: a testbed for network-wide heavy-hitter detection with the Herd algorithm."""

import hashlib
import os
from pathlib import Path

__version__ = "0.1.0"


def _key_numba_cache_by_sources() -> None:
    """Numba's ``cache=True`` notices an edit to a compiled function's own file, not to the
    functions it calls from other files (``switch.process_packet`` compiled into the
    simulator's and the model switch's loops): after editing the semantics, stale machine
    code would run. So the cache lives in a directory named by a digest of every source of
    the package. NUMBA_CACHE_DIR, if set, wins."""
    if "NUMBA_CACHE_DIR" in os.environ:
        return
    digest = hashlib.sha256()
    try:
        for path in sorted(Path(__file__).parent.rglob("*.py")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except (OSError, RuntimeError):  # no home directory: numba's default place
        return
    os.environ["NUMBA_CACHE_DIR"] = str(base / "herd" / "numba" / digest.hexdigest()[:16])


_key_numba_cache_by_sources()


def _return_large_blocks_to_the_system() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which blocks
    that size come from the heap and stay resident once freed: a long run's per-flow scratch
    arrays would then linger beside what follows. A fixed threshold keeps every large array
    in its own mapping, returned to the system when freed."""
    import contextlib
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL(name).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD, 1 MiB


_return_large_blocks_to_the_system()
