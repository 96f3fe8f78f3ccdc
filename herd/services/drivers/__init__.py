"""Switch drivers: how a local controller reaches its switch (``base.SwitchDriver``)."""

from __future__ import annotations

from herd.errors import HerdInputError
from herd.services.drivers.base import SwitchDriver

DRIVERS = ("model", "bmv2")


def open_driver(kind: str, name: str, address: str, **options: object) -> SwitchDriver:
    """The driver ``kind`` for switch ``name`` at ``address``. The bmv2 driver is imported
    only when selected, so that machines without BMv2 never need its modules."""
    if kind == "model":
        from herd.services.drivers.model import ModelDriver

        return ModelDriver(name, address)
    if kind == "bmv2":
        from herd.services.drivers.bmv2 import Bmv2Driver

        return Bmv2Driver(name, address, **options)  # type: ignore[arg-type]
    raise HerdInputError(f"driver {kind!r}: choose one of {', '.join(DRIVERS)}")
