#!/usr/bin/env bash
# The testbed harness, with the argument order earlier Herd testbeds used:
#   sudo bash scripts/start_topology_and_eval.sh <s> <epsilon> <T> <R> <csv> <pcap> <p4app> \
#       [--target model|bmv2] [--pps N] [--keep]
# T = 0: the pcap's 99th percentile; R = 0: round(1/epsilon). The CSV is a layout
# (<parameter>,f1score,precision,recall + one value per row) whose rows get filled.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh" --testbed
exec "$here/.venv/bin/python" -m herd.testbed.harness "$@"
