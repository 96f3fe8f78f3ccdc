#!/usr/bin/env python3
"""A Herd model switch process (herd.switch.Switch behind a socket). See
``herd model-switch --help``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout

from herd.services.model_switch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
