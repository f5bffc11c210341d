"""The openvswitch kernel module and its companions: is it loaded, reload it.

Modules are unloaded one by one, never with their dependencies: `modprobe -r`
also unloads every dependency left unused, and unloading a module that
provides a kind of network device deletes every device of that kind, in
every namespace, with no reference count to stop it. `modprobe -r vport_gre`
takes ip_gre along, and with it every GRE tunnel of the host, Open vSwitch's
or not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ovs_service.errors import ModuleError, OvsServiceError
from ovs_service.run import run

PROC = Path("/proc")
SYS = Path("/sys")
PROC_MODULES = PROC / "modules"
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


# A netlink dump in progress (ovs-vswitchd's revalidators dump flows all the
# time) holds a reference to the module while it lasts: the count that stays,
# the lowest of a few readings, is the one that would refuse rmmod.
REFCOUNT_READINGS = 10
REFCOUNT_INTERVAL = 0.05


def unload_blockers(own_ports: Callable[[], int], proc: Path = PROC, sys: Path = SYS,
                    name: str = MODULE) -> list[str]:
    """Why openvswitch could not be unloaded and loaded again (none: it can).

    Checked before anything stops, because afterwards the datapaths are
    deleted. `own_ports()` counts the kernel datapath ports whose type
    the module provides itself (internal and system ports; tunnel ports
    belong to the vport modules): each holds a reference that deleting the
    datapaths gives back, as the vport modules' do when they go first.
    """
    module = sys / "module" / name
    if not module.is_dir():
        return [f"{name} is not loaded"]
    try:
        initstate = (module / "initstate").read_text().strip()
    except FileNotFoundError:
        return [f"{name} is built into the kernel, not a module"]
    if initstate != "live":
        return [f"{name} is {initstate}, not live"]
    blockers = []
    disabled = _read(proc / "sys/kernel/modules_disabled")
    if disabled != "0":
        blockers.append(f"kernel.modules_disabled is {disabled}: {name} could be unloaded "
                        "but never loaded again")
    holders = sorted(p.name for p in (module / "holders").iterdir()
                     ) if (module / "holders").is_dir() else []
    others = [h for h in holders if not h.startswith(VPORT_PREFIX)]
    if others:
        blockers.append(f"{name} is used by the modules {', '.join(others)}")
    if not (module / "refcnt").exists():
        # Only kernels built with CONFIG_MODULE_UNLOAD count references.
        return [*blockers, "this kernel cannot unload modules"]
    ports = own_ports()
    expected = len(holders) + ports
    refcount = _lasting_refcount(module, expected)
    if refcount > expected:
        blockers.append(f"{name} is in use beyond its datapaths: {refcount} references, "
                        f"{ports} from datapath ports and {len(holders)} from vport modules")
    return blockers


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as e:
        return f"unreadable ({e.strerror})"


def _lasting_refcount(module: Path, enough: int) -> int:
    """The module's reference count, the lowest of a few readings (until one is `enough`)."""
    readings = []
    for i in range(REFCOUNT_READINGS):
        if i:
            time.sleep(REFCOUNT_INTERVAL)
        try:
            readings.append(int((module / "refcnt").read_text()))
        except (OSError, ValueError):
            continue
        if readings[-1] <= enough:
            break
    return min(readings, default=0)
