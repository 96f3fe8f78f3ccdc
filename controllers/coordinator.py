#!/usr/bin/env python3
"""The Herd coordinator service (gRPC). See ``herd coordinator --help``; the logic is
herd.coordinator, the service herd.services.coordinator_service."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from herd.services.coordinator_service import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
