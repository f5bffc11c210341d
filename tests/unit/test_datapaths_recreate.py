"""Re-creating kernel datapaths makes only what is missing, so it can run again.

`ovs-dpctl` is replaced by a fake kernel that keeps its datapaths in a dict;
the real thing is exercised in the VM lanes.
"""

from __future__ import annotations

import pytest

from ovs_service import ovs
from ovs_service.errors import CommandFailed, PortNameUnsafe
from ovs_service.run import Completed
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
    """What `ovs-dpctl show`, `add-dp` and `add-if` see and do."""

    def __init__(self) -> None:
        self.dps: dict[str, dict[int, str]] = {}
        self.calls: list[tuple[str, ...]] = []

    def dpctl(self, *args: str) -> Completed:
        self.calls.append(args)
        if args[0] == "show":
            out = "".join(f"system@{name}:\n  lookups: hit:0 missed:0 lost:0\n"
                          + "".join(f"  port {no}: {port}\n" for no, port in sorted(ports.items()))
                          for name, ports in self.dps.items())
            return Completed(("ovs-dpctl", *args), 0, out, "")
        if args[0] == "add-dp":
            name = args[1].removeprefix("system@")
            if name in self.dps:
                raise CommandFailed(command="ovs-dpctl add-dp", returncode=1,
                                    stderr="File exists")
            self.dps[name] = {0: name}
        elif args[0] == "add-if":
            name, *options = args[2].split(",")
            number = int(dict(o.split("=") for o in options)["port_no"])
            self.dps[args[1].removeprefix("system@")][number] = name
        return Completed(("ovs-dpctl", *args), 0, "", "")


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel()
    monkeypatch.setattr(ovs, "dpctl", fake.dpctl)
    monkeypatch.setattr(datapaths, "_up_or_unknown", lambda name: True)
    return fake


def test_recreates_kernel_datapaths_at_their_numbers(kernel: FakeKernel) -> None:
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made.problems == []
    # Tunnel vports are ovs-vswitchd's to make; the netdev datapath is not the kernel's.
    assert kernel.dps == {"ovs-system": {0: "ovs-system", 1: "p0", 3: "br0", 6: "v2"}}
    assert made.ports == ["ovs-system:1(p0)", "ovs-system:3(br0)", "ovs-system:6(v2)"]


def test_a_second_run_makes_nothing(kernel: FakeKernel) -> None:
    datapaths.recreate_kernel_datapaths(SAVED)
    kernel.calls.clear()
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made == datapaths.Recreated()
    assert kernel.calls == [("show",)]


def test_an_interrupted_run_is_completed(kernel: FakeKernel) -> None:
    kernel.dps = {"ovs-system": {0: "ovs-system", 1: "p0"}}
    made = datapaths.recreate_kernel_datapaths(SAVED)
    assert made.ports == ["ovs-system:3(br0)", "ovs-system:6(v2)"]
    assert kernel.dps["ovs-system"] == {0: "ovs-system", 1: "p0", 3: "br0", 6: "v2"}
    assert ("add-dp", "system@ovs-system") not in kernel.calls


def test_no_kernel_datapath_saved_asks_the_kernel_nothing(kernel: FakeKernel) -> None:
    netdev_only = datapaths.DatapathsSnapshot(SAVED.datapaths[1:], [])
    assert datapaths.recreate_kernel_datapaths(netdev_only) == datapaths.Recreated()
    assert kernel.calls == []


# Legal Linux interface names that ovs-dpctl add-if would read as options.
INJECTING = ("p9,type=gre", "a=b")


@pytest.mark.parametrize("name", INJECTING)
def test_a_port_name_that_would_add_options_is_never_passed_to_add_if(
    kernel: FakeKernel, name: str
) -> None:
    dp = SAVED.datapaths[0]
    hostile = datapaths.DatapathsSnapshot(
        [datapaths.Datapath(dp.name, dp.type, [*dp.ports, datapaths.DatapathPort(9, name, "", {})]),
         *SAVED.datapaths[1:]], [])
    made = datapaths.recreate_kernel_datapaths(hostile)
    assert not [c for c in kernel.calls if c[0] == "add-if" and name in c[2]]
    assert made.ports == ["ovs-system:1(p0)", "ovs-system:3(br0)", "ovs-system:6(v2)"]
    (problem,) = made.problems
    assert repr(name) in problem and "\n" not in problem


@pytest.mark.parametrize("name", INJECTING)
def test_a_module_reload_refuses_such_a_port_before_touching_anything(
    kernel: FakeKernel, name: str
) -> None:
    kernel.dps = {"ovs-system": {0: "ovs-system", 1: "p0", 9: name}}
    with pytest.raises(PortNameUnsafe) as refused:
        datapaths.check_kernel_port_names()
    assert repr(name) in str(refused.value) and "\n" not in str(refused.value)
    assert kernel.calls == [("show",)]
    kernel.dps = {"ovs-system": {0: "ovs-system", 1: "p0"}}
    datapaths.check_kernel_port_names()
