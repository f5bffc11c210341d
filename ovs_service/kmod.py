"""The openvswitch kernel module and its companions: is it loaded, reload it.

Modules are unloaded one by one, never with their dependencies: `modprobe -r`
also unloads every dependency left unused, and unloading a module that
provides a kind of network device deletes every device of that kind, in
every namespace, with no reference count to stop it. `modprobe -r vport_gre`
takes ip_gre along, and with it every GRE tunnel of the host, Open vSwitch's
or not.
"""

from __future__ import annotations

from pathlib import Path

from ovs_service.errors import ModuleError, OvsServiceError
from ovs_service.run import run

PROC_MODULES = Path("/proc/modules")
MODULE = "openvswitch"
# Modules that hold the openvswitch module or its tunnels in place.
VPORT_PREFIX = "vport_"
# ip_gre and gre are left alone: only the out-of-tree module (gone since Open
# vSwitch 3.0) conflicted with them, and unloading ip_gre deletes every GRE
# device of the host.


def module_support() -> bool:
    """Whether this kernel loads modules at all (/proc/modules exists only if so)."""
    return PROC_MODULES.exists()


def loaded() -> dict[str, list[str]]:
    """Loaded modules → the modules that use them."""
    modules = {}
    for line in PROC_MODULES.read_text().splitlines():
        fields = line.split()
        users = fields[3].strip(",").split(",") if len(fields) > 3 and fields[3] != "-" else []
        modules[fields[0]] = [u for u in users if u]
    return modules


def vport_modules() -> list[str]:
    return sorted(m for m in loaded() if m.startswith(VPORT_PREFIX))


def ensure_loaded() -> bool:
    """Load openvswitch unless it is loaded (or the kernel has no modules); whether it was."""
    if not module_support() or MODULE in loaded():
        return False
    try:
        run(["modprobe", MODULE])
    except OvsServiceError as e:
        raise ModuleError(module=MODULE, reason=f"could not load: {e}") from None
    return True


def reload_openvswitch() -> list[str]:
    """Unload openvswitch with its vport modules (not their dependencies), then load it again."""
    vports = vport_modules()
    try:
        # vport modules first: each of them holds openvswitch.
        run(["rmmod", *vports, MODULE])
    except OvsServiceError as e:
        raise ModuleError(module=MODULE, reason=f"could not unload: {e}") from None
    if MODULE in loaded():
        raise ModuleError(module=MODULE, reason="still loaded after rmmod")
    try:
        run(["modprobe", MODULE])
    except OvsServiceError as e:
        raise ModuleError(module=MODULE, reason=f"could not load: {e}") from None
    return [*vports, MODULE]
