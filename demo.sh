#!/bin/bash
# The live demo, in one command on a fresh Debian 12 machine:  sudo ./demo.sh
#
# Installs what is missing (`make install-packages`: Debian's Open vSwitch,
# systemd and Python libraries), then boots a throwaway systemd in
# private namespaces, runs Open vSwitch under it, and restarts it with
# `ovs-service restart` while two hosts ping through it (see demo/demo.py).
# The machine's own switch and network are never touched, and ovs-service is
# not installed: the throwaway systemd runs this checkout's code, wherever it
# lies and whatever else the machine has installed.
# Options go to demo/demo.py (--no-contrast skips the run with Debian's units).
set -euo pipefail

cd "$(dirname "$0")"
PYTHON=${PYTHON:-/usr/bin/python3}

if [ "$(id -u)" -ne 0 ]; then
    echo "demo.sh: needs root (namespaces, a throwaway systemd and Open vSwitch): sudo $0" >&2
    exit 1
fi

# Installs take minutes: only when something the demo runs is missing.
ready() {
    local tool
    for tool in ovsdb-server ovs-vswitchd ovs-vsctl ovs-ofctl \
            dbus-daemon ip ping nsenter unshare setpriv pkill; do
        command -v "$tool" >/dev/null || { echo "demo.sh: $tool is missing" >&2; return 1; }
    done
    [ -x /lib/systemd/systemd ] || { echo "demo.sh: systemd is missing" >&2; return 1; }
    "$PYTHON" -c 'import pystemd, typer, pyroute2, sdnotify, pytest' 2>/dev/null \
        || { echo "demo.sh: Python libraries are missing" >&2; return 1; }
}

if ! ready; then
    echo "demo.sh: installing what is needed (make install-packages)..." >&2
    if ! command -v make >/dev/null; then
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make
    fi
    make PYTHON="$PYTHON" install-packages
    ready
fi

exec "$PYTHON" demo/demo.py "$@"
