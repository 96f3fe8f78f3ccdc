#!/usr/bin/env bash
# Set up herd on a fresh Debian 12 machine, idempotently: apt packages only where missing,
# a virtual environment in .venv/ (seeing Debian's Mininet), herd installed into it.
#   bash scripts/setup.sh            # what simulate / sweep / tune / figures / replay need
#   bash scripts/setup.sh --testbed  # also Mininet, bridge-utils, tcpreplay, iproute2, chromium
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

packages=(python3 python3-venv python3-dev gcc)
extras=dev
if [[ "${1:-}" == "--testbed" ]]; then
    extras=dev,ray  # the tests also run sweeps on a two-node Ray cluster (tests/test_ray.py)
    packages+=(mininet bridge-utils tcpreplay iproute2 ethtool procps psmisc)
    packages+=(chromium chromium-driver)  # the live view's browser test (tests/test_browser.py)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages ${missing[*]}; run as root (or sudo)" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's python3: Mininet is packaged for it; --system-site-packages lets the venv see it.
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv" >&2
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.herd-installed-$extras  # per set of extras: --testbed after a plain set-up adds ray
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: installing herd and its dependencies into .venv" >&2
    # Quiet unless it fails: then the whole log is shown.
    if ! { .venv/bin/python -m pip install -q --upgrade pip &&
           .venv/bin/python -m pip install -q -e ".[$extras]"; } > .venv/pip.log 2>&1; then
        cat .venv/pip.log >&2
        echo "setup: pip install failed (log above, also in .venv/pip.log)" >&2
        exit 1
    fi
    touch "$stamp"
fi
