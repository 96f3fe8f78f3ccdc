"""The local controller's logic, one per ingress switch: pure, I/O-free.

It dedupes hellos per group before they go to the coordinator, turns the locality l_g the
coordinator answers into the group entry (tau_g, r_g) it installs, and applies the overflow
policy. The services (``herd.services``) wrap it with sockets; the simulator calls
``group_entry_nb`` from its compiled loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from numba import njit

from herd.prng import probability_threshold, probability_threshold_nb, switch_seed
from herd.switch import SwitchConfig

OVERFLOW_POLICIES = ("ignore", "reset")


@njit(cache=True)
def group_entry_nb(epsilon: float, T: int, l_g: int) -> tuple[int, int]:
    """(tau_g, r_g threshold): tau_g = max(1, ceil(epsilon * T / l_g)), r_g = 1 / l_g."""
    tau = max(1, int(math.ceil(epsilon * T / l_g)))
    return tau, probability_threshold_nb(1.0 / l_g)


def hold_start(s: float) -> int:
    """The counter a newly sampled flow starts at: round(1/s), halves rounded up."""
    return int(math.floor(1.0 / s + 0.5))


@dataclass(frozen=True)
class GroupEntry:
    g: int
    l_g: int
    tau: int
    r_threshold: int


@dataclass
class LocalController:
    """The decisions of one switch's local controller."""

    switch: int
    epsilon: float
    T: int
    s: float
    seed: int
    overflow_policy: str = "ignore"
    epoch_us: int = 0  # the epoch length W in the switch's clock; 0: one epoch
    hellos_forwarded: set[int] = field(default_factory=set)
    l_g: dict[int, int] = field(default_factory=dict)
    reset_pending: bool = False

    def switch_config(self) -> SwitchConfig:
        """The registers written at start: PRNG seed, sampling threshold, hold start, epoch
        length."""
        return SwitchConfig(switch_seed(self.seed, self.switch), probability_threshold(self.s),
                            hold_start(self.s), self.epoch_us)

    def on_hello(self, g: int) -> bool:
        """A hello for group g arrived; True if it must go to the coordinator."""
        if g in self.hellos_forwarded or g in self.l_g:
            return False
        self.hellos_forwarded.add(g)
        return True

    def on_l_g(self, g: int, l_g: int) -> GroupEntry | None:
        """The coordinator told us l_g; the entry to install or modify, None if unchanged."""
        if l_g < 1:
            raise ValueError(f"l_g must be >= 1, got {l_g} for group {g}")
        if self.l_g.get(g) == l_g:
            return None
        self.l_g[g] = l_g
        tau, r = group_entry_nb(self.epsilon, self.T, l_g)
        return GroupEntry(g, l_g, int(tau), int(r))

    def entries(self) -> list[GroupEntry]:
        """Every entry the switch should hold (to reinstall after a switch restart)."""
        out = []
        for g, l_g in sorted(self.l_g.items()):
            tau, r = group_entry_nb(self.epsilon, self.T, l_g)
            out.append(GroupEntry(g, l_g, int(tau), int(r)))
        return out

    def on_overflow(self) -> bool:
        """An overflow arrived; True if the tables must be reset now."""
        if self.overflow_policy != "reset" or self.reset_pending:
            return False
        self.reset_pending = True
        return True

    def on_reset_done(self) -> None:
        self.reset_pending = False
