"""Run parameters: one typed, validated object shared by the simulator, sweeps, tuning,
the services and the testbed harness; saved next to every result."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from herd.errors import HerdInputError

DEFAULT_STAGES = (4096, 2048, 1024)
# Confirm's C: within 0.005 F1 of the best C on every trace that can tell
# (evaluation/confirm/), and a smaller pull than C = 1.
DEFAULT_CONFIRM_REPORTS = 2
ALGORITHMS = ("herd", "strawman", "sampling", "reporting")


def add_confirm_arguments(p: argparse.ArgumentParser) -> None:
    """``--confirm`` and ``--confirm-reports`` as the services and the testbed take them
    (``herd simulate`` and friends take them among the other parameters)."""
    p.add_argument("--confirm", action="store_true",
                   help="Herd + confirm: pull each epoch's candidates' held totals from the "
                   "switches; an elephant iff they sum to >= T (24-byte slots, pull messages)")
    p.add_argument("--confirm-reports", type=int, default=DEFAULT_CONFIRM_REPORTS, metavar="C",
                   help="with --confirm: reports that make a flow a candidate (default "
                   f"{DEFAULT_CONFIRM_REPORTS})")


@dataclass(frozen=True)
class Params:
    """Herd's parameters (defaults from DESIGN.md); every number is a parameter."""

    s: float = 0.2  # sampling probability
    epsilon: float = 0.1  # approximation factor: tau_g = ceil(epsilon * T / l_g)
    R: int | None = None  # reports that make an elephant; None: round(1 / epsilon)
    percentile: float = 99.0  # T = floor(percentile of flow sizes) unless T is given
    T: int | None = None
    k: int = 10  # ingress switches
    p: float = 0.95  # probability a packet goes to its flow's primary ingress switch
    stages: tuple[int, ...] = field(default=DEFAULT_STAGES)  # slots per hash-table stage
    delay_ms: float = 0.0  # control-loop delay: hello -> group entry in effect
    epoch_ms: float = 0.0  # epoch (measurement interval) length W; 0: one epoch, the trace
    seed: int = 1
    overflow_policy: str = "ignore"  # or "reset"
    algorithm: str = "herd"
    q: float = 0.01  # the sampling baseline's per-packet sampling probability
    # Confirm (herd.coordinator): pull the held totals of the flows with >= confirm_reports
    # reports at each epoch's end; an elephant iff they sum to >= T.
    confirm: bool = False
    confirm_reports: int = DEFAULT_CONFIRM_REPORTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(int(x) for x in self.stages))
        self.validate()

    @property
    def reports_needed(self) -> int:
        return self.R if self.R is not None else max(1, round(1 / self.epsilon))

    def validate(self) -> None:
        def bad(name: str, value: object, why: str) -> HerdInputError:
            return HerdInputError(f"parameter {name}={value}: {why}")

        if not 0.0 < self.s <= 1.0:
            raise bad("s", self.s, "sampling probability must be in (0, 1]")
        if self.s < 1e-6:
            raise bad("s", self.s, "below 1e-6 the hold start 1/s overflows 32 bits")
        if not 0.0 < self.epsilon <= 1.0:
            raise bad("epsilon", self.epsilon, "must be in (0, 1]")
        if self.R is not None and self.R < 1:
            raise bad("R", self.R, "must be >= 1")
        if not 0.0 <= self.percentile <= 100.0:
            raise bad("percentile", self.percentile, "must be in [0, 100]")
        if self.T is not None and self.T < 1:
            raise bad("T", self.T, "must be >= 1")
        if not 1 <= self.k <= 4096:
            raise bad("k", self.k, "must be in [1, 4096]")
        if not 0.0 <= self.p <= 1.0:
            raise bad("p", self.p, "must be in [0, 1]")
        if not self.stages or any(x < 1 for x in self.stages):
            raise bad("stages", ",".join(map(str, self.stages)), "need >= 1 stage, each >= 1 slot")
        if sum(self.stages) > 1 << 26:
            raise bad("stages", ",".join(map(str, self.stages)), "more than 2^26 slots in all")
        if self.delay_ms < 0:
            raise bad("delay_ms", self.delay_ms, "must be >= 0")
        if not isinstance(self.epoch_ms, int | float) or not math.isfinite(self.epoch_ms) \
                or self.epoch_ms < 0:
            raise bad("epoch_ms", self.epoch_ms, "the epoch length must be a number >= 0 "
                      "(0: one epoch)")
        if 0 < self.epoch_ms < 1e-3:
            raise bad("epoch_ms", self.epoch_ms, "below 1 microsecond")
        if not 0 <= self.seed < 1 << 32:
            raise bad("seed", self.seed, "must be in [0, 2^32)")
        if self.overflow_policy not in ("ignore", "reset"):
            raise bad("overflow_policy", self.overflow_policy, "must be ignore or reset")
        if self.algorithm not in ALGORITHMS:
            raise bad("algorithm", self.algorithm, f"must be one of {', '.join(ALGORITHMS)}")
        if not 0.0 < self.q <= 1.0:
            raise bad("q", self.q, "must be in (0, 1]")
        if not isinstance(self.confirm, bool):
            raise bad("confirm", self.confirm, "must be true or false")
        if self.confirm and self.algorithm != "herd":
            raise bad("confirm", self.confirm, f"confirm is Herd's; not for {self.algorithm}")
        if not isinstance(self.confirm_reports, int) or self.confirm_reports < 1:
            raise bad("confirm_reports", self.confirm_reports, "must be an integer >= 1")

    def with_(self, **changes: Any) -> Params:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "parameters") -> Params:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise HerdInputError(f"{source}: unknown parameter {unknown[0]!r}")
        try:
            return cls(**data)
        except TypeError as e:
            raise HerdInputError(f"{source}: {e}") from None


def load_params_file(path: str | os.PathLike) -> dict[str, Any]:
    """The parameters of a JSON parameter file (as ``herd tune --write-params`` writes it).
    Either a flat object or one with a "params" object."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise HerdInputError(f"{p}: parameter file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HerdInputError(f"{p}: not a JSON parameter file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("params"), dict):
        data = data["params"]
    if not isinstance(data, dict):
        raise HerdInputError(f"{p}: a parameter file must hold a JSON object")
    known = {f.name for f in fields(Params)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise HerdInputError(f"{p}: unknown parameter {unknown[0]!r}")
    return data
