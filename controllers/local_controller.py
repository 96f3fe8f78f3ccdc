#!/usr/bin/env python3
"""A Herd local controller for one ingress switch. See ``herd controller --help``; the logic
is herd.controller, the service herd.services.controller_service."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from herd.services.controller_service import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
