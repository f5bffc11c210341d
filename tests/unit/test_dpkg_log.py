"""The upgrade lane's reading of dpkg's log: when each package's files were
in place, not counting the "status unpacked" a configure logs as it begins."""

from __future__ import annotations

from tests.harness.upgrade import configured, unpacked

LOG = """\
2026-12-02 07:27:30 startup archives unpack
2026-12-02 07:27:31 unpack openvswitch-switch:amd64 3.1.0-2 3.5.0-1
2026-12-02 07:27:31 status half-installed openvswitch-switch:amd64 3.1.0-2
2026-12-02 07:27:33 status unpacked openvswitch-switch:amd64 3.5.0-1
2026-12-02 07:27:34 unpack openvswitch-common:amd64 3.1.0-2 3.5.0-1
2026-12-02 07:27:35 status unpacked openvswitch-common:amd64 3.5.0-1
2026-12-02 07:27:40 startup packages configure
2026-12-02 07:27:41 configure openvswitch-switch:amd64 3.5.0-1 <none>
2026-12-02 07:27:41 status unpacked openvswitch-switch:amd64 3.5.0-1
2026-12-02 07:27:41 status half-configured openvswitch-switch:amd64 3.5.0-1
2026-12-02 07:27:42 status installed openvswitch-switch:amd64 3.5.0-1
"""


def test_only_unpacks_count_not_the_configure_that_follows() -> None:
    assert unpacked(LOG) == ["2026-12-02 07:27:33", "2026-12-02 07:27:35"]


def test_the_configure_of_the_switch_is_found() -> None:
    assert configured(LOG, "openvswitch-switch") == ["2026-12-02 07:27:41"]
    assert configured(LOG, "openvswitch-common") == []
