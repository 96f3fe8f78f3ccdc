#!/usr/bin/env bash
# On a P4 machine (p4c, BMv2 simple_switch with its Python Thrift bindings), as root: set herd
# up, then run the BMv2 tests and a short harness run on the BMv2 target. The Vagrantfile's
# provisioning ends with it; run it by hand after installing a P4 toolchain elsewhere.
#   sudo bash scripts/check_bmv2.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail() { echo "check_bmv2: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || fail "run as root (BMv2 ports are veth links)"
for tool in p4c-bm2-ss simple_switch simple_switch_CLI; do
    command -v "$tool" >/dev/null || fail "$tool not found: install p4c and BMv2 first"
done
bash scripts/setup.sh --testbed
# herd drives BMv2 through the Thrift bindings BMv2 installs (no p4-utils in .venv).
.venv/bin/python -c "import bm_runtime, sswitch_runtime, thrift" 2>/dev/null ||
    fail "BMv2's Python Thrift bindings (bm_runtime, sswitch_runtime) or python3-thrift are" \
         "not importable from .venv"

log=$(mktemp)
out=$(mktemp -d)
trap 'rm -f "$log"; rm -rf "$out"' EXIT
# Every BMv2 test must run: a skip is a failure here, except the p4run session test on a
# machine without p4-utils (it says so).
.venv/bin/python -m pytest -q -rs -m bmv2 -p no:cacheprovider | tee "$log"
if grep '^SKIPPED' "$log" | grep -v 'p4-utils' >/dev/null; then
    fail "BMv2 tests were skipped (above): the toolchain is incomplete"
fi

# Direct injection (one simple_switch per packet): lossless at 1,000 packets/s even with
# BMv2's logging compiled in (its default build); with confirm, so that the pull's register
# reads run too.
printf 'epsilon,f1score,precision,recall\n0.1\n' > "$out/layout.csv"
.venv/bin/python -m herd.testbed.harness 0.2 0.1 0 0 "$out/layout.csv" pcap/synth-20k.pcap \
    topologies/p4app_10_switches_herd.json --target bmv2 --injection direct --pps 1000 \
    --confirm
.venv/bin/python - "$out/layout.csv" <<'PY'
import csv, sys
row = next(csv.DictReader(open(sys.argv[1])))
print(f"F1 {row['f1score']} (simulated {row['simulated_f1']}), lost packets "
      f"{row['lost_packets']}, lost messages {row['lost_messages']}, pull messages "
      f"{row['pull_messages']}, held totals unknown {row['unknown_held_totals']}")
if row["lost_packets"] != "0" or row["lost_messages"] != "0":
    sys.exit("check_bmv2: the BMv2 harness run lost packets or messages")
if row["confirm"] != "True" or row["unknown_held_totals"] != "0":
    sys.exit("check_bmv2: the BMv2 harness run's pulls did not all read their held totals")
PY
echo "check_bmv2: BMv2 tests and the BMv2 harness run passed"
