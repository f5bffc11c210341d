"""The Debian root harness: a cached trixie root, entered chrooted in private
namespaces, runs its own Open vSwitch 3.5 with netdev bridges, and writes
inside never reach the cache."""

from __future__ import annotations

import pytest

from tests.harness import debroot

pytestmark = [pytest.mark.upgrade, pytest.mark.root, pytest.mark.slow]


def test_trixie_root_runs_ovs_ctl_with_netdev_bridges() -> None:
    root = debroot.ensure_root(debroot.TRIXIE).path
    with debroot.RootNamespace(root) as rns:
        version = rns.run(["ovs-vswitchd", "--version"]).stdout
        assert "3.5." in version.splitlines()[0], version
        debroot.start_ovs(rns)
        rns.run(["ovs-vsctl", "add-br", "br0", "--", "set", "bridge", "br0",
                 "datapath_type=netdev"])
        rns.run(["ovs-ofctl", "add-flow", "br0", "priority=5,actions=drop"])
        flows = rns.run(["ovs-ofctl", "dump-flows", "--no-stats", "br0"]).stdout
        assert "priority=5 actions=drop" in flows
        assert "netdev@ovs-netdev" in rns.run(["ovs-appctl", "dpctl/show"]).stdout
        rns.run(["touch", "/etc/written-inside"])
    # The overlay went with the namespace: the cached root is untouched.
    assert not (root / "etc" / "written-inside").exists()
