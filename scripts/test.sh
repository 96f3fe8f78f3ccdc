#!/usr/bin/env bash
# Set up (including the Mininet testbed packages) and run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh --testbed
exec .venv/bin/python -m pytest -q -ra "$@"
