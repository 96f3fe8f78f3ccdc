"""Bring up a p4app with p4-utils, as ``p4run --no-cli`` would, and keep it up until told.

    python3 tests/p4run_network.py P4APP_JSON

Run in the directory where p4run would run (``topology.json``, ``log/`` land there). It
differs from ``p4run`` in three ways, all so that a test can share the machine:

- no Mininet cleanup first: p4run (``mininet.clean.cleanup``, ``brctl delbr`` of every
  bridge) would kill every other Mininet network and switch on the machine;
- the network stays up after start (``p4run --no-cli`` leaves it half alive when it exits);
  "ready" is printed once it is up, with each host's shell PID (run commands in a host's
  namespace with ``mnexec -a PID``);
- it stops its own network on SIGTERM, SIGINT or end of stdin, and if the start fails.

Needs a Python that imports p4-utils (p4run's own, /usr/bin/python3) and root.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from p4utils.p4run import AppRunner


class SharedMachineRunner(AppRunner):  # type: ignore[misc]
    def cleanup(self) -> None:
        pass  # p4-utils' cleanup is Mininet's `mn -c`: other people's networks would die

    def startNetwork(self) -> None:  # noqa: N802 - p4-utils' name
        try:
            super().startNetwork()
        except BaseException:
            self.stopNetwork()  # what started before the failure
            raise


def main() -> int:
    conf = Path(sys.argv[1]).resolve()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    cwd = Path.cwd()
    app = SharedMachineRunner(str(conf), cli_enabled=False, log_dir=str(cwd / "log"),
                              pcap_dir=str(cwd / "pcap"), verbosity="output")
    try:
        hosts = {h.name: h.pid for h in app.net.hosts}
        print("ready " + json.dumps({"hosts": hosts}), flush=True)
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        stop.wait()
    finally:
        app.stopNetwork()
    return 0


if __name__ == "__main__":
    sys.exit(main())
