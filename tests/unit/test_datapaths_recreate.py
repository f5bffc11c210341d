"""Re-creating kernel datapaths makes only what is missing, so it can run again.

The netlink socket (`dpnetlink.Datapaths`) is replaced by a fake kernel that
keeps its datapaths in a dict; the real one is exercised in the VM lanes
(force-reload-kmod puts ports back at their numbers, checked with ovs-dpctl).
"""

from __future__ import annotations

import errno
from types import TracebackType

import pytest

from ovs_service import dpnetlink
from ovs_service.errors import DatapathNetlinkError
from ovs_service.stages import datapaths

SAVED = datapaths.DatapathsSnapshot(
    datapaths=[
        datapaths.Datapath("ovs-system", "system", [
            datapaths.DatapathPort(0, "ovs-system", "internal", {}),
            datapaths.DatapathPort(1, "p0", "internal", {}),
            datapaths.DatapathPort(3, "br0", "internal", {}),
            datapaths.DatapathPort(6, "v2", "", {}),
            datapaths.DatapathPort(7, "gre_sys", "gre", {"packet_type": "legacy_l2"}),
        ]),
        datapaths.Datapath("ovs-netdev", "netdev", [
            datapaths.DatapathPort(0, "ovs-netdev", "tap", {}),
        ]),
    ],
    interfaces=[],
)


class FakeKernel:
    """What the module's generic netlink families see and do."""

    def __init__(self) -> None:
        self.dps: dict[str, dict[int, tuple[str, str]]] = {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self) -> FakeKernel:  # stands in for the class
        return self

    def __enter__(self) -> FakeKernel:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        pass

    def names(self) -> list[str]:
        self.calls.append(("names",))
        return list(self.dps)

    def ports(self, datapath: str) -> dict[str, int]:
        self.calls.append(("ports", datapath))
        return {name: no for no, (name, _) in self.dps[datapath].items()}

    def create(self, name: str) -> None:
        self.calls.append(("create", name))
        if name in self.dps:
            raise DatapathNetlinkError(request=f"create datapath {name}", reason="File exists",
                                       errno=errno.EEXIST)
        self.dps[name] = {0: (name, "internal")}

    def add_port(self, datapath: str, number: int, name: str, kind: str) -> None:
        self.calls.append(("add_port", datapath, str(number), name, kind))
        if number in self.dps[datapath]:  # the kernel's answer for a number in use
            raise DatapathNetlinkError(request=f"add port {number}",
                                       reason="Device or resource busy", errno=errno.EBUSY)
        self.dps[datapath][number] = (name, kind)


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(dpnetlink, "Datapaths", fake)
    return fake


def numbers(kernel: FakeKernel, dp: str = "ovs-system") -> dict[int, str]:
    return {no: name for no, (name, _) in kernel.dps[dp].items()}


def test_recreates_kernel_datapaths_at_their_numbers(kernel: FakeKernel) -> None:
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made.problems == []
    # Tunnel vports are ovs-vswitchd's to make; the netdev datapath is not the kernel's.
    assert numbers(kernel) == {0: "ovs-system", 1: "p0", 3: "br0", 6: "v2"}
    assert kernel.dps["ovs-system"][6] == ("v2", "")
    assert kernel.dps["ovs-system"][1] == ("p0", "internal")
    assert made.ports == ["ovs-system:1(p0)", "ovs-system:3(br0)", "ovs-system:6(v2)"]


def test_a_second_run_makes_nothing(kernel: FakeKernel) -> None:
    datapaths.recreate_kernel_datapaths(SAVED)
    kernel.calls.clear()
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made == datapaths.Recreated()
    assert kernel.calls == [("names",), ("ports", "ovs-system")]


def test_an_interrupted_run_is_completed(kernel: FakeKernel) -> None:
    kernel.dps = {"ovs-system": {0: ("ovs-system", "internal"), 1: ("p0", "internal")}}
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made.ports == ["ovs-system:3(br0)", "ovs-system:6(v2)"]
    assert numbers(kernel) == {0: "ovs-system", 1: "p0", 3: "br0", 6: "v2"}
    assert ("create", "ovs-system") not in kernel.calls


def test_no_kernel_datapath_saved_asks_the_kernel_nothing(kernel: FakeKernel) -> None:
    netdev_only = datapaths.DatapathsSnapshot(SAVED.datapaths[1:], [])
    assert datapaths.recreate_kernel_datapaths(netdev_only) == datapaths.Recreated()
    assert kernel.calls == []


def test_a_port_that_cannot_be_made_is_a_problem_and_the_others_are_made(
        kernel: FakeKernel) -> None:
    kernel.dps = {"ovs-system": {0: ("ovs-system", "internal"), 3: ("other", "internal")}}
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made.ports == ["ovs-system:1(p0)", "ovs-system:6(v2)"]
    (problem,) = made.problems
    assert "port 3 (br0)" in problem and "busy" in problem and "\n" not in problem


# Legal Linux interface names that `ovs-dpctl add-if` would have read as
# options (it has no escaping): netlink takes them as they are.
@pytest.mark.parametrize("name", ["p9,type=gre", "a=b"])
def test_a_port_name_with_separators_is_recreated_as_it_is(kernel: FakeKernel, name: str) -> None:
    dp = SAVED.datapaths[0]
    odd = datapaths.DatapathsSnapshot(
        [datapaths.Datapath(dp.name, dp.type, [*dp.ports, datapaths.DatapathPort(9, name, "", {})]),
         *SAVED.datapaths[1:]], [])
    made = datapaths.recreate_kernel_datapaths(odd)
    assert made.problems == []
    assert kernel.dps["ovs-system"][9] == (name, "")
