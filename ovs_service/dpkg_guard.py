"""The guard that keeps Open vSwitch forwarding while dpkg unpacks it.

The Debian package's dpkg hook (packaging/dpkg/dpkg-hook) writes a runtime
drop-in, RefuseManualStop=yes, on ovsdb-server.service, ovs-vswitchd.service
and ovs-record-hostname.service (`UNITS`; the hook and the package's postrm
name the same three) before a dpkg run that unpacks openvswitch-switch, and
removes it after the run. A dpkg that was killed leaves it behind, and the
units then refuse every direct stop and restart: `recover` removes it when
no dpkg runs.
"""

from __future__ import annotations

import os
from pathlib import Path

GUARD_DIR = Path("/run/systemd/system")
NAME = "zz-ovs-service-dpkg.conf"
UNITS = ("ovsdb-server.service", "ovs-vswitchd.service", "ovs-record-hostname.service")


def guards(directory: Path = GUARD_DIR) -> list[Path]:
    """The guard drop-ins in place now."""
    return [p for p in (directory / f"{u}.d" / NAME for u in UNITS) if p.exists()]


def dpkg_running(proc: Path = Path("/proc")) -> bool:
    """Whether a dpkg process of this system runs (its own run's hook removes
    the guard): one of another mount namespace, a container's, does not count."""
    try:
        ours = os.readlink(proc / "self" / "ns" / "mnt")
    except OSError:
        ours = None
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() != "dpkg":
                    continue
                if ours is not None and os.readlink(entry / "ns" / "mnt") != ours:
                    continue
                return True
            except OSError:
                continue  # gone meanwhile
    return False


def remove_stale(directory: Path = GUARD_DIR) -> list[Path]:
    """Remove the guards a dpkg run left behind (none runs now) and reload
    systemd; returns what was removed."""
    found = guards(directory)
    if not found or dpkg_running():
        return []
    for path in found:
        path.unlink(missing_ok=True)
    from ovs_service.systemd import Systemd

    with Systemd() as manager:
        manager.reload()
    return found

