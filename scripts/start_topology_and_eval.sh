#!/usr/bin/env bash
# The testbed harness, with the argument order earlier Herd testbeds used:
#   sudo bash scripts/start_topology_and_eval.sh <s> <epsilon> <T> <R> <csv> <pcap> <p4app> \
#       [--target model|bmv2] [--pps N] [--epoch-ms W] [--keep]
# T = 0: the pcap's 99th percentile; R = 0: round(1/epsilon). The CSV is a layout
# (<parameter>,f1score,precision,recall + one value per row) whose rows get filled.
# --epoch-ms W: measure per epoch of W ms of pcap time; the pcap is then replayed with its own
# timing sped up to a mean of --pps packets/s (tcpreplay --multiplier).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh" --testbed
exec "$here/.venv/bin/python" -m herd.testbed.harness "$@"
