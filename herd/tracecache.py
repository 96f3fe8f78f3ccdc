"""The on-disk store of parsed traces: one column file per packet field, written chunk by
chunk as a capture is parsed, read back by position.

A cache entry is the directory ``<cache>/trace-v<CACHE_VERSION>-<sha256 of the capture>/``:

- ``meta.json``: version, digest, byte order, packet and flow counts, skipped-packet counts
  and the dtype of every column;
- ``<column>.bin`` for the packet columns (ts_ns, src, dst, sport, dport, proto, flow) and
  the flow table (flow_src, flow_dst, flow_sport, flow_dport, flow_proto): the raw array,
  native byte order, no header, so packet i of a column sits at byte i * itemsize.

An entry is written in a ``.tmp-*`` directory beside it and renamed into place when
complete: readers never see a partial entry, and a killed parse leaves only a temporary
directory, which a later write removes once it is stale. A small stat-keyed index
(``index/<key>.json``) maps a file (real path, size, mtime, ctime, inode) to its digest,
so that a reload neither re-parses nor re-hashes it.

Traces that are not cached (``use_cache=False``, or no writable cache) go to anonymous
temporary files instead, which disappear with the trace or the process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from herd.capture import CAPTURE_COLUMNS
from herd.fileio import atomic_write
from herd.flowtable import FLOW_COLUMNS

log = logging.getLogger(__name__)

# Bump whenever the cached layout or the parse semantics change: entries of another version
# are never read, so an upgrade can never serve stale numbers.
CACHE_VERSION = 2
# An index entry written less than this after the file last changed is confirmed by hashing.
RACY_NS = 2_000_000_000
# A temporary entry untouched for this long belongs to a parse that was killed.
STALE_TMP_S = 3600.0

# The stored per-packet columns, with their dtypes.
PACKET_COLUMNS: dict[str, np.dtype[Any]] = {**CAPTURE_COLUMNS, "flow": np.dtype(np.int32)}


class StoreError(Exception):
    """Writing parsed columns failed (disk full, read-only file system). Not an OSError, so
    that it is never mistaken for a problem with the capture being read."""


def cache_dir() -> Path:
    """$HERD_CACHE_DIR, else $XDG_CACHE_HOME/herd, else ~/.cache/herd."""
    env = os.environ.get("HERD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "herd" if xdg else Path.home() / ".cache" / "herd"


def entry_dir(root: Path, digest: str) -> Path:
    return root / f"trace-v{CACHE_VERSION}-{digest}"


# --------------------------------------------------------------------------------------------
# The stat-keyed index
# --------------------------------------------------------------------------------------------

StatKey = tuple[str, dict[str, Any]]


def stat_key(path: str) -> StatKey:
    """The index key of a file: its real path and the stat fields that change when it does.

    The inode catches a file replaced by rename (rsync, editors) even when the mtime was
    preserved; the ctime catches an mtime set back by hand.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    ident = {
        "path": real,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }
    name = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
    return name, ident


def _file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def index_lookup(root: Path, path: str, key: StatKey) -> str | None:
    """The digest the index remembers for this file, if its stat still matches.

    File timestamps tick coarsely (a jiffy on Linux), so a file rewritten at the same size
    just after it was indexed can keep its stat. An entry written within RACY_NS of the
    file's last change is therefore confirmed by hashing the file (much cheaper than a
    parse), as git does for its racily clean index entries.
    """
    name, ident = key
    try:
        with open(root / "index" / f"{name}.json") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    if entry.get("version") != CACHE_VERSION or entry.get("file") != ident:
        return None
    digest = entry.get("digest")
    if not isinstance(digest, str) or len(digest) != 64:
        return None
    changed = max(ident["mtime_ns"], ident["ctime_ns"])
    if entry.get("indexed_ns", 0) - changed < RACY_NS:
        try:
            if _file_sha256(path) != digest:
                return None
        except OSError:
            return None
        index_store(root, key, digest)  # no longer racy once the file has aged
    return digest


def index_store(root: Path, key: StatKey, digest: str) -> None:
    name, ident = key
    try:
        (root / "index").mkdir(parents=True, exist_ok=True)
        entry = {
            "version": CACHE_VERSION,
            "file": ident,
            "digest": digest,
            "indexed_ns": time.time_ns(),
        }
        atomic_write(root / "index" / f"{name}.json", json.dumps(entry))
    except OSError as e:
        log.debug("trace cache: cannot write the index in %s: %s", root, e)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class ColumnFiles:
    """The packet columns of one trace, read by position through files opened once.

    Reads are pread calls into the caller's arrays: nothing is mapped, so walking a trace
    keeps only the caller's buffers resident, and concurrent walks (or forked workers) never
    share a file position. Holding the files open pins the bytes they had when opened,
    even if the entry is replaced or deleted meanwhile.
    """

    def __init__(self, files: Mapping[str, IO[bytes]], packets: int) -> None:
        self.packets = packets
        self._files = dict(files)
        self._fds = {k: f.fileno() for k, f in self._files.items()}
        self._finalizer = weakref.finalize(self, _close_all, list(self._files.values()))

    def read(self, name: str, start: int, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` with packets start .. start + len(out) of a column; returns out."""
        if not self._finalizer.alive:
            raise ValueError("the trace's column files are closed")
        view = memoryview(out.reshape(-1).view(np.uint8))
        pos = start * out.itemsize
        done = 0
        while done < len(view):
            k = os.preadv(self._fds[name], [view[done:]], pos + done)
            if k <= 0:
                raise OSError(f"trace column {name}: file ends at byte {pos + done}")
            done += k
        return out

    def close(self) -> None:
        self._finalizer()


def _close_all(files: list[IO[bytes]]) -> None:
    for f in files:
        f.close()


@dataclass
class Entry:
    """A stored trace: counts, the flow table (in memory) and the packet columns (on disk)."""

    packets: int
    skipped_non_ipv4: int
    skipped_malformed: int
    flow_table: dict[str, np.ndarray]
    columns: ColumnFiles
    cached: bool  # in the cache, rather than in temporary files


def _meta(digest: str, packets: int, flows: int, skipped: tuple[int, int]) -> dict[str, Any]:
    return {
        "version": CACHE_VERSION,
        "digest": digest,
        "byteorder": sys.byteorder,
        "packets": packets,
        "flows": flows,
        "skipped_non_ipv4": skipped[0],
        "skipped_malformed": skipped[1],
        "columns": {k: d.str for k, d in {**PACKET_COLUMNS, **FLOW_COLUMNS}.items()},
    }


def open_entry(
    root: Path, digest: str, flow_table: Mapping[str, np.ndarray] | None = None
) -> Entry | None:
    """The cache entry of a digest, or None when absent, of another version or damaged
    (checked by its metadata and exact file sizes, without reading the packets). A writer
    passes the flow table it wrote, so that it is not held twice."""
    d = entry_dir(root, digest)
    files: dict[str, IO[bytes]] = {}
    try:
        with open(d / "meta.json") as f:
            meta = json.load(f)
        packets, flows = int(meta["packets"]), int(meta["flows"])
        skipped = (int(meta["skipped_non_ipv4"]), int(meta["skipped_malformed"]))
        if meta != _meta(digest, packets, flows, skipped):
            return None
        table = {}
        for k, dtype in FLOW_COLUMNS.items():
            if os.stat(d / f"{k}.bin").st_size != flows * dtype.itemsize:
                return None
            table[k] = np.fromfile(d / f"{k}.bin", dtype) if flow_table is None else flow_table[k]
        for k, dtype in PACKET_COLUMNS.items():
            files[k] = open(d / f"{k}.bin", "rb", buffering=0)  # noqa: SIM115 - kept open
            if os.fstat(files[k].fileno()).st_size != packets * dtype.itemsize:
                _close_all(list(files.values()))
                return None
    except (OSError, ValueError, KeyError, TypeError):
        _close_all(list(files.values()))
        return None
    return Entry(packets, *skipped, table, ColumnFiles(files, packets), cached=True)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class EntryWriter:
    """Packet columns appended chunk by chunk, then the flow table: a cache entry under
    ``root``, or anonymous temporary files when root is None or not writable.

    Write errors raise StoreError. Call finish() or abort() exactly once.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.tmp: Path | None = None  # the entry being written, in the cache
        self.files: dict[str, IO[bytes]] = {}
        self.packets = 0
        if root is not None:
            try:
                root.mkdir(parents=True, exist_ok=True)
                _remove_stale_tmp(root)
                self.tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
                for k in PACKET_COLUMNS:
                    self.files[k] = open(self.tmp / f"{k}.bin", "wb")  # noqa: SIM115
                return
            except OSError as e:
                log.debug("trace cache: cannot write in %s (%s): temporary files instead", root, e)
                self.abort()
        try:
            for k in PACKET_COLUMNS:
                # Unlinked at once: freed when the trace closes or the process ends.
                self.files[k] = tempfile.TemporaryFile(prefix=f"herd-{k}-")  # noqa: SIM115
        except OSError as e:
            self.abort()
            where = tempfile.gettempdir()
            raise StoreError(f"cannot create temporary files in {where}: {e}") from e

    def append(self, cols: Mapping[str, np.ndarray]) -> None:
        """Append one chunk of every packet column (equal lengths)."""
        try:
            for k, f in self.files.items():
                f.write(np.ascontiguousarray(cols[k], PACKET_COLUMNS[k]).data)
        except OSError as e:
            raise StoreError(str(e)) from e
        self.packets += len(cols["ts_ns"])

    def finish(
        self, digest: str, flow_table: Mapping[str, np.ndarray], skipped: tuple[int, int]
    ) -> Entry:
        """Complete the entry and open it: temporary files as they are, a cache entry once
        its flow table and metadata are written and it is renamed into place."""
        files, self.files = self.files, {}  # from here on, the entry's
        try:
            for f in files.values():
                f.flush()
            if self.tmp is None:
                columns = ColumnFiles(files, self.packets)
                return Entry(self.packets, *skipped, dict(flow_table), columns, cached=False)
            _close_all(list(files.values()))
            for k, dtype in FLOW_COLUMNS.items():
                np.ascontiguousarray(flow_table[k], dtype).tofile(self.tmp / f"{k}.bin")
            meta = _meta(digest, self.packets, len(flow_table["flow_src"]), skipped)
            # Last, so that an entry with metadata has all its columns.
            (self.tmp / "meta.json").write_text(json.dumps(meta))
            assert self.root is not None
            entry = self._install(self.root, digest, flow_table)
        except OSError as e:
            _close_all(list(files.values()))
            self.abort()
            raise StoreError(str(e)) from e
        if entry is None:
            raise StoreError(f"cache entry {entry_dir(self.root, digest)} vanished")
        return entry

    def _install(
        self, root: Path, digest: str, flow_table: Mapping[str, np.ndarray]
    ) -> Entry | None:
        assert self.tmp is not None
        final = entry_dir(root, digest)
        try:
            os.replace(self.tmp, final)
        except OSError:
            # An entry is already there: written by a concurrent process (or for a copy of
            # the file under another name), or damaged. Keep it if it is good.
            entry = open_entry(root, digest)
            if entry is not None:
                self.abort()
                return entry
            shutil.rmtree(final, ignore_errors=True)
            os.replace(self.tmp, final)
        self.tmp = None
        return open_entry(root, digest, flow_table)

    def abort(self) -> None:
        """Discard what was written."""
        _close_all(list(self.files.values()))
        self.files = {}
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _remove_stale_tmp(root: Path) -> None:
    """Remove the temporary entries of killed parses (nothing has written them for an hour:
    a live parse appends to its files every few milliseconds)."""
    cutoff = time.time() - STALE_TMP_S
    for d in root.glob(".tmp-*"):
        try:
            times = [d.stat().st_mtime] + [p.stat().st_mtime for p in d.iterdir()]
        except OSError:
            continue
        if max(times) < cutoff:
            shutil.rmtree(d, ignore_errors=True)
