"""What force-reload-kmod checks before it stops anything: that the module
can be unloaded and loaded again. Afterwards the datapaths are deleted, so a
refusal from rmmod would leave the switch down.

Read from /sys/module and /proc, here from trees built like them (the
kernels these tests run on may have no openvswitch module, or no modules at
all); the VM lane (test_kmod_lane.py) reads Debian's kernel with
openvswitch.ko loaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ovs_service import kmod


class Kernel:
    """A /sys and /proc with one module in them."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.module = self.sys / "module" / kmod.MODULE
        (self.proc / "sys/kernel").mkdir(parents=True)
        self.modules_disabled("0")

    def load(self, refcnt: int, holders: tuple[str, ...] = (), initstate: str = "live") -> None:
        (self.module / "holders").mkdir(parents=True, exist_ok=True)
        (self.module / "initstate").write_text(f"{initstate}\n")
        (self.module / "refcnt").write_text(f"{refcnt}\n")
        for holder in holders:
            (self.module / "holders" / holder).symlink_to(f"../../{holder}")

    def modules_disabled(self, value: str) -> None:
        (self.proc / "sys/kernel/modules_disabled").write_text(f"{value}\n")

    def blockers(self, own_ports: int) -> list[str]:
        return kmod.unload_blockers(lambda: own_ports, self.proc, self.sys)


@pytest.fixture
def kernel(tmp_path: Path) -> Kernel:
    return Kernel(tmp_path)


def test_a_module_held_only_by_its_datapaths_and_vport_modules_can_go(kernel: Kernel) -> None:
    # br0 (local port) + 2 internal/system ports, and vport_gre holding the module.
    kernel.load(refcnt=4, holders=("vport_gre",))
    assert kernel.blockers(own_ports=3) == []


def test_not_loaded_or_built_in(kernel: Kernel) -> None:
    assert kernel.blockers(0) == ["openvswitch is not loaded"]
    kernel.module.mkdir(parents=True)  # built in: no initstate, no refcnt
    assert kernel.blockers(0) == ["openvswitch is built into the kernel, not a module"]
    kernel.load(refcnt=0, initstate="going")
    assert kernel.blockers(0) == ["openvswitch is going, not live"]


def test_modules_disabled(kernel: Kernel) -> None:
    kernel.load(refcnt=1)
    kernel.modules_disabled("1")
    (blocker,) = kernel.blockers(own_ports=1)
    assert blocker.startswith("kernel.modules_disabled is 1")


def test_other_users(kernel: Kernel) -> None:
    kernel.load(refcnt=3, holders=("vport_vxlan", "some_module"))
    assert kernel.blockers(own_ports=1) == ["openvswitch is used by the modules some_module"]


def test_references_beyond_the_datapaths(kernel: Kernel) -> None:
    kernel.load(refcnt=5, holders=("vport_gre",))
    (blocker,) = kernel.blockers(own_ports=3)
    assert "5 references, 3 from datapath ports and 1 from vport modules" in blocker


def test_a_kernel_that_cannot_unload(kernel: Kernel) -> None:
    kernel.load(refcnt=1)
    (kernel.module / "refcnt").unlink()
    assert kernel.blockers(own_ports=1) == ["this kernel cannot unload modules"]


def test_the_machines_own_sys_and_proc() -> None:
    """The real trees, read the same way: a built-in module (every kernel has
    some: sysfs lists those with parameters), and openvswitch as it is here."""
    builtin = next((p.name for p in Path("/sys/module").iterdir()
                    if not (p / "initstate").exists()), None)
    if builtin is None:
        pytest.skip("no built-in module in /sys/module")
    assert kmod.unload_blockers(lambda: 0, name=builtin) == [
        f"{builtin} is built into the kernel, not a module"]
    here = Path("/sys/module/openvswitch")
    found = kmod.unload_blockers(lambda: 0)
    if not here.exists():
        assert found == ["openvswitch is not loaded"]
    elif not (here / "initstate").exists():
        assert found == ["openvswitch is built into the kernel, not a module"]


class _Kernel:
    """The kernel's datapaths as the netlink client lists them: name → port → (number, type)."""

    def __init__(self, datapaths: dict[str, dict[str, tuple[int, int]]]) -> None:
        self.datapaths = datapaths

    def __call__(self) -> _Kernel:
        return self

    def __enter__(self) -> _Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def names(self) -> list[str]:
        return list(self.datapaths)

    def vports(self, name: str) -> dict[str, tuple[int, int]]:
        return self.datapaths[name]


def test_own_ports_count_the_modules_own_vport_types_over_every_datapath(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Local and system ports (internal 2, netdev 1) and rtnetlink's tunnel
    device (netdev 1) hold openvswitch; a compat vxlan vport (4) and a compat
    geneve one (5) hold their vport modules instead; a datapath with no port
    but its own local port counts 1."""
    from ovs_service import dpnetlink
    from ovs_service.stages import datapaths

    kernel = _Kernel({
        "ovs-system": {"ovs-system": (0, 2), "br0": (1, 2), "v1": (2, 1),
                       "vxlan_sys_4789": (3, 1), "vxlan_sys_4790": (4, 4)},
        "dp2": {"dp2": (0, 2), "genev_sys_6081": (1, 5)},
        "dp3": {"dp3": (0, 2)},
    })
    monkeypatch.setattr(dpnetlink, "Datapaths", kernel)
    assert datapaths.own_kernel_ports() == 4 + 1 + 1
