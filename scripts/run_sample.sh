#!/usr/bin/env bash
# The main job end to end on the bundled sample trace: set up on first use, then sweep
# epsilon with Herd (3 seeds per value) and write the CSV, its run record and a plot; the
# sweep is recorded in the results database too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
trace=${TRACE:-pcap/synth-100k.pcap}
out=${OUT:-out/sample}
mkdir -p "$out"
.venv/bin/herd trace info "$trace"
echo
.venv/bin/herd sweep --trace "$trace" --param epsilon \
    --values 0.01,0.02,0.03,0.05,0.075,0.1,0.15,0.2,0.3 --seeds 3 \
    --out "$out/epsilon_sweep.csv" --plot "$out/epsilon_sweep.png"
echo
.venv/bin/herd runs list --kind sweep --limit 3
