"""A client of one BMv2 ``simple_switch``'s Thrift runtime: tables, registers, mirroring
sessions and the switch's clocks.

It speaks through the Thrift bindings BMv2 installs beside ``simple_switch_CLI``
(``bm_runtime``, ``sswitch_runtime``) and the ``thrift`` package they need (Debian/Ubuntu:
``python3-thrift``), so herd needs none of p4-utils' pinned dependencies. Names may be given
short (``herd_regs``, ``forwarding``) or in full (``HerdIngress.herd_regs``); match keys and
action parameters are integers, encoded with the widths the switch's own program JSON gives
(fetched from the switch, or read from ``json_path``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.errors import HerdInputError

CONTEXT = 0  # herd's switches have one pipeline context
DEFAULT_THRIFT_PORT = 9090


@dataclass(frozen=True)
class TableInfo:
    name: str  # full name
    key: tuple[tuple[str, int], ...]  # (match type, bit width) per field


@dataclass(frozen=True)
class ProgramInfo:
    """What a BMv2 program JSON says about its runtime objects, by short and full name."""

    tables: dict[str, TableInfo]
    actions: dict[str, tuple[str, tuple[int, ...]]]  # name -> (full name, parameter widths)
    registers: dict[str, tuple[str, int, int]]  # name -> (full name, bit width, size)

    @classmethod
    def from_json(cls, program: dict[str, Any]) -> ProgramInfo:
        widths = {}
        types = {t["name"]: t for t in program.get("header_types", [])}
        for h in program.get("headers", []):
            for fname, width, *_ in types[h["header_type"]]["fields"]:
                if isinstance(width, int):  # not a varbit ("*"), never a table key
                    widths[(h["name"], fname)] = width
        tables: dict[str, TableInfo] = {}
        for pipeline in program.get("pipelines", []):
            for t in pipeline["tables"]:
                key = tuple((k["match_type"], widths.get(tuple(k["target"]), 0))
                            for k in t["key"])
                _by_both(tables, t["name"], TableInfo(t["name"], key))
        actions: dict[str, tuple[str, tuple[int, ...]]] = {}
        for a in program.get("actions", []):
            _by_both(actions, a["name"],
                     (a["name"], tuple(int(r["bitwidth"]) for r in a["runtime_data"])))
        registers: dict[str, tuple[str, int, int]] = {}
        for r in program.get("register_arrays", []):
            _by_both(registers, r["name"], (r["name"], int(r["bitwidth"]), int(r["size"])))
        return cls(tables, actions, registers)


def _by_both(index: dict[str, Any], full: str, value: Any) -> None:
    index[full] = value
    index.setdefault(full.rsplit(".", 1)[-1], value)  # p4c prefixes the control's name


def encode(value: int, width: int, what: str) -> bytes:
    """A key or parameter as BMv2 takes it: big-endian in ceil(width / 8) bytes."""
    if not 0 <= value < 1 << width:
        raise HerdInputError(f"bmv2: {what} = {value} does not fit in {width} bits")
    return value.to_bytes((width + 7) // 8, "big")


def _modules() -> tuple[Any, ...]:
    try:
        from bm_runtime.standard import Standard, ttypes
        from sswitch_runtime import SimpleSwitch
        from sswitch_runtime import ttypes as sstypes
        from thrift.protocol import TBinaryProtocol, TMultiplexedProtocol
        from thrift.transport import TSocket, TTransport
    except ImportError as e:
        raise HerdInputError(
            f"bmv2: BMv2's Thrift runtime is not importable ({e.name} missing): install BMv2 "
            "(simple_switch with its Python bindings) and python3-thrift, or use the model "
            "target on a machine without BMv2") from None
    return (Standard, ttypes, SimpleSwitch, sstypes, TBinaryProtocol, TMultiplexedProtocol,
            TSocket, TTransport)


class _Guarded:
    """A generated Thrift client whose failures say which switch: a lost connection (the
    switch died, a call timed out) is a ConnectionError, a refused operation other than a
    table's (which the table methods handle) a one-line HerdInputError."""

    def __init__(self, client: Any, owner: Bmv2Thrift) -> None:
        self._client = client
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        from thrift.Thrift import TException
        from thrift.transport.TTransport import TTransportException

        call = getattr(self._client, name)
        owner = self._owner

        def guarded(*args: Any) -> Any:
            try:
                return call(*args)
            except TTransportException as e:
                raise ConnectionError(f"bmv2 switch at {owner.address}: {e}") from None
            except owner._tt.InvalidTableOperation:
                raise
            except TException as e:
                code = getattr(e, "code", None)
                raise HerdInputError(f"bmv2 {owner.address}: {name} refused: "
                                     f"{type(e).__name__} code {code}") from None

        return guarded


class Bmv2Thrift:
    """One connection to ``simple_switch`` at host:port. Not thread-safe: one caller at a
    time (the driver holds a lock)."""

    def __init__(self, port: int = DEFAULT_THRIFT_PORT, host: str = "127.0.0.1",
                 json_path: str | Path | None = None, timeout_s: float = 10.0) -> None:
        (Standard, self._tt, SimpleSwitch, self._sst, TBinaryProtocol, TMultiplexedProtocol,
         TSocket, TTransport) = _modules()
        self.address = f"{host}:{port}"
        sock = TSocket.TSocket(host, port)
        sock.setTimeout(timeout_s * 1000)
        self._transport = TTransport.TBufferedTransport(sock)
        protocol = TBinaryProtocol.TBinaryProtocol(self._transport)
        self.standard = _Guarded(Standard.Client(
            TMultiplexedProtocol.TMultiplexedProtocol(protocol, "standard")), self)
        self.sswitch = _Guarded(SimpleSwitch.Client(
            TMultiplexedProtocol.TMultiplexedProtocol(protocol, "simple_switch")), self)
        try:
            self._transport.open()
        except Exception as e:  # thrift raises its own TTransportException
            raise ConnectionError(f"bmv2 switch at {self.address}: {e}") from None
        try:
            self.program = ProgramInfo.from_json(self._program(json_path))
        except BaseException:
            self._transport.close()
            raise

    def _program(self, json_path: str | Path | None) -> dict[str, Any]:
        source = str(json_path) if json_path is not None else f"bmv2 {self.address}'s program"
        try:
            text = (Path(json_path).read_text() if json_path is not None
                    else self.standard.bm_get_config())
            program = json.loads(text)
        except (OSError, ValueError) as e:
            raise HerdInputError(f"{source}: not a BMv2 program JSON ({e})") from None
        if not isinstance(program, dict):
            raise HerdInputError(f"{source}: not a BMv2 program JSON")
        return program

    @classmethod
    def at(cls, address: str, json_path: str | Path | None = None) -> Bmv2Thrift:
        """``host:port`` or ``port``."""
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise HerdInputError(f"bmv2: address {address!r} must be host:thrift_port")
        return cls(int(port), host or "127.0.0.1", json_path)

    def close(self) -> None:
        self._transport.close()

    # ------------------------------------------------------------ lookups

    def _table(self, name: str) -> TableInfo:
        try:
            return self.program.tables[name]
        except KeyError:
            raise HerdInputError(f"bmv2 {self.address}: no table {name!r} in the program "
                                 "it runs") from None

    def _action(self, name: str, params: Sequence[int]) -> tuple[str, list[bytes]]:
        try:
            full, widths = self.program.actions[name]
        except KeyError:
            raise HerdInputError(f"bmv2 {self.address}: no action {name!r} in the program "
                                 "it runs") from None
        if len(params) != len(widths):
            raise HerdInputError(f"bmv2 {self.address}: action {name} takes {len(widths)} "
                                 f"parameters, got {len(params)}")
        return full, [encode(int(v), w, f"{name} parameter {i}")
                      for i, (v, w) in enumerate(zip(params, widths, strict=True))]

    def _match_key(self, table: TableInfo, key: Sequence[int]) -> list[Any]:
        if len(key) != len(table.key):
            raise HerdInputError(f"bmv2 {self.address}: table {table.name} has "
                                 f"{len(table.key)} key fields, got {len(key)}")
        out = []
        for i, (value, (kind, width)) in enumerate(zip(key, table.key, strict=True)):
            if kind != "exact":
                raise HerdInputError(f"bmv2: table {table.name} key {i} is {kind}; herd "
                                     "writes exact keys only")
            out.append(self._tt.BmMatchParam(
                type=self._tt.BmMatchParamType.EXACT,
                exact=self._tt.BmMatchParamExact(encode(int(value), width,
                                                        f"{table.name} key {i}"))))
        return out

    def register_name(self, name: str) -> tuple[str, int, int]:
        try:
            return self.program.registers[name]
        except KeyError:
            raise HerdInputError(f"bmv2 {self.address}: no register {name!r} in the program "
                                 "it runs") from None

    # ------------------------------------------------------------ tables

    def table_add(self, table: str, action: str, key: Sequence[int],
                  params: Sequence[int]) -> int | None:
        """The entry's handle; None if an entry with this key exists already."""
        info = self._table(table)
        full, data = self._action(action, params)
        try:
            return int(self.standard.bm_mt_add_entry(
                CONTEXT, info.name, self._match_key(info, key), full, data,
                self._tt.BmAddEntryOptions()))
        except self._tt.InvalidTableOperation as e:
            if e.code == self._tt.TableOperationErrorCode.DUPLICATE_ENTRY:
                return None
            raise self._table_error(e, info.name) from None

    def table_modify(self, table: str, action: str, key: Sequence[int],
                     params: Sequence[int]) -> None:
        """The entry with this key gets a new action and parameters."""
        info = self._table(table)
        full, data = self._action(action, params)
        try:
            entry = self.standard.bm_mt_get_entry_from_key(
                CONTEXT, info.name, self._match_key(info, key), self._tt.BmAddEntryOptions())
            self.standard.bm_mt_modify_entry(CONTEXT, info.name, entry.entry_handle, full, data)
        except self._tt.InvalidTableOperation as e:
            raise self._table_error(e, info.name) from None

    def table_add_or_modify(self, table: str, action: str, key: Sequence[int],
                            params: Sequence[int]) -> None:
        if self.table_add(table, action, key, params) is None:
            self.table_modify(table, action, key, params)

    def table_set_default(self, table: str, action: str, params: Sequence[int]) -> None:
        info = self._table(table)
        full, data = self._action(action, params)
        try:
            self.standard.bm_mt_set_default_action(CONTEXT, info.name, full, data)
        except self._tt.InvalidTableOperation as e:
            raise self._table_error(e, info.name) from None

    def table_clear(self, table: str) -> None:
        self.standard.bm_mt_clear_entries(CONTEXT, self._table(table).name, False)

    def _table_error(self, e: Any, table: str) -> HerdInputError:
        code = self._tt.TableOperationErrorCode._VALUES_TO_NAMES.get(e.code, e.code)
        return HerdInputError(f"bmv2 {self.address}: table {table}: {code}")

    # ------------------------------------------------------------ registers

    def register_read(self, name: str, index: int) -> int:
        full, width, _ = self.register_name(name)
        # Thrift carries i64: wider unsigned values arrive negative.
        return int(self.standard.bm_register_read(CONTEXT, full, index)) & ((1 << width) - 1)

    def register_read_all(self, name: str) -> list[int]:
        full, width, _ = self.register_name(name)
        mask = (1 << width) - 1
        return [int(v) & mask for v in self.standard.bm_register_read_all(CONTEXT, full)]

    def register_write(self, name: str, index: int, value: int) -> None:
        full, width, _ = self.register_name(name)
        if not 0 <= value < 1 << width:
            raise HerdInputError(f"bmv2: {name}[{index}] = {value} does not fit in {width} "
                                 "bits")
        # Thrift's i64 is signed: a 64-bit value with the top bit set goes over as negative.
        self.standard.bm_register_write(CONTEXT, full, index,
                                        value - (1 << 64) if value >= 1 << 63 else value)

    def register_reset(self, name: str) -> None:
        self.standard.bm_register_reset(CONTEXT, self.register_name(name)[0])

    # ------------------------------------------------------------ simple_switch

    def mirroring_add(self, session: int, port: int) -> None:
        """Clones to ``session`` leave through ``port``."""
        self.sswitch.mirroring_session_add(session, self._sst.MirroringSessionConfig(port=port))

    def clock_start_us(self, samples: int = 5) -> int:
        """When ``simple_switch``'s timestamp clock (``ingress_global_timestamp``: microseconds
        since the switch started) read 0, in Unix microseconds. Both its clocks are the same
        C++ clock, so the start is ``since_epoch - elapsed``; the two reads are separate calls,
        so the elapsed time is read on both sides of the wall-clock read and the narrowest of a
        few samples wins (the error is at most half its width, tens of microseconds)."""
        best: tuple[int, int] | None = None
        for _ in range(samples):
            before = int(self.sswitch.get_time_elapsed_us())
            wall = int(self.sswitch.get_time_since_epoch_us())
            after = int(self.sswitch.get_time_elapsed_us())
            if best is None or after - before < best[0]:
                best = (after - before, wall - (before + after) // 2)
        assert best is not None
        return best[1]
