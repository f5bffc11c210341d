"""ovs-service's units and drop-ins pass `systemd-analyze verify`, and say what they promise.

verify loads each unit with its drop-in folder (from the folder it is given),
resolves the units it names, and checks that every command it runs is
executable, searching systemd's path for bare names such as
`ovs-service-hook`. It does not check commands prefixed with "-" (systemd
ignores their failure, a missing program included), which is how the units
run the hooks: `test_hook_commands_resolve` verifies a copy without the "-",
and needs ovs-service installed (`pip install -e .`, as CI does).

Behaviour under a real systemd is tested in test_systemd_harness.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "units"
DROPINS = UNITS / "dropins"
OUR_UNITS = sorted(UNITS.glob("*.service"))
DEBIAN_UNITS = Path("/lib/systemd/system")
OVS_CTL = Path("/usr/share/openvswitch/scripts/ovs-ctl")
# systemd's own search path for bare command names (Debian's build).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _need_tools() -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    if not OVS_CTL.exists():
        pytest.skip(f"{OVS_CTL} not installed (Debian's openvswitch-switch)")


def _verify(units: list[Path]) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not output, output or f"exit {proc.returncode}"


def _copy(dst: Path, units: list[Path], dropins: bool) -> list[Path]:
    copied = []
    for unit in units:
        shutil.copy(unit, dst / unit.name)
        copied.append(dst / unit.name)
    if dropins:
        for folder in DROPINS.glob("*.d"):
            shutil.copytree(folder, dst / folder.name)
    return copied


def test_our_units_verify(tmp_path: Path) -> None:
    _need_tools()
    _verify(_copy(tmp_path, OUR_UNITS, dropins=False))


def test_our_units_with_the_dropins_verify(tmp_path: Path) -> None:
    _need_tools()
    _verify(_copy(tmp_path, OUR_UNITS, dropins=True))


def test_debian_units_with_the_dropins_verify(tmp_path: Path) -> None:
    _need_tools()
    debian = [DEBIAN_UNITS / n for n in ("ovsdb-server.service", "ovs-vswitchd.service")]
    if not all(u.exists() for u in debian):
        pytest.skip("Debian's openvswitch-switch units not installed")
    _verify(_copy(tmp_path, [*debian, UNITS / "openvswitch.service"], dropins=True))


def test_hook_commands_resolve(tmp_path: Path) -> None:
    _need_tools()
    if shutil.which("ovs-service-hook", path=SYSTEMD_PATH) is None:
        pytest.skip("ovs-service-hook is not installed (pip install -e . installs it)")
    units = _copy(tmp_path, OUR_UNITS, dropins=True)
    for path in [*units, *tmp_path.glob("*.d/*.conf")]:
        text = re.sub(r"^(Exec\w+=)-", r"\1", path.read_text(), flags=re.MULTILINE)
        path.write_text(text)
    _verify(units)


# -- what the units promise, read from the files ----------------------------------


def _entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; continuation lines joined."""
    entries: list[tuple[str, str, str]] = []
    section, pending = "", ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), " ".join(value.split())))
    return entries


def _values(path: Path, key: str) -> list[str]:
    return [v for _s, k, v in _entries(path) if k == key]


@pytest.mark.parametrize(
    "path",
    [UNITS / "ovs-vswitchd.service", DROPINS / "ovs-vswitchd.service.d" / "ovs-service.conf"],
    ids=["unit", "dropin"],
)
def test_vswitchd_saves_before_it_stops(path: Path) -> None:
    stops = [v for v in _values(path, "ExecStop") if v]
    # Our own unit stops the daemon through the hook after the save (no ovs-ctl
    # shell in the outage; `ovs-appctl exit` only with DPDK or AF_XDP ports,
    # else systemd's SIGTERM); Debian's keeps ovs-ctl.
    if path.suffix == ".service":
        assert stops == ["-+ovs-service-hook save", "-+ovs-service-hook stop"]
        assert _values(path, "KillSignal") in ([], ["SIGTERM"])
    else:
        assert stops == ["-+ovs-service-hook save",
                         "/usr/share/openvswitch/scripts/ovs-ctl --no-ovsdb-server stop"]
    pre = [v for v in _values(path, "ExecStartPre") if v]
    post = [v for v in _values(path, "ExecStartPost") if v]
    assert pre[0] == "-+ovs-service-hook prestart"
    assert post[0] == "-+ovs-service-hook poststart"
    assert [v for v in _values(path, "ExecStopPost") if v] == ["-+ovs-service-hook stoppost"]
    assert _values(path, "NotifyAccess") == ["all"]


def test_dropin_resets_each_list_before_setting_it() -> None:
    path = DROPINS / "ovs-vswitchd.service.d" / "ovs-service.conf"
    for key in ("ExecStartPre", "ExecStartPost", "ExecStop", "ExecStopPost"):
        assert _values(path, key)[0] == "", f"{key}= must be reset first"


def test_nothing_ties_forwarding_to_a_database_restart() -> None:
    """A Requires= (or BindsTo=) on ovsdb-server would carry its restarts to ovs-vswitchd."""
    vswitchd = UNITS / "ovs-vswitchd.service"
    umbrella = UNITS / "openvswitch.service"
    for path in (vswitchd, umbrella):
        for key in ("Requires", "BindsTo", "Requisite"):
            assert not _values(path, key), f"{path.name}: {key}="
    assert "ovsdb-server.service" in _values(vswitchd, "Wants")[0].split()
    for path in (vswitchd, UNITS / "ovsdb-server.service"):
        assert _values(path, "PartOf") == ["openvswitch.service"]


# Options that install a device allow-list, on some supported systemd
# (ProtectClock= on 245 to 252): ovs-vswitchd would lose /dev/net/tun
# (netdev bridges, tap ports) and /dev/vfio (DPDK).
DEVICE_LIST_OPTIONS = ("ProtectClock", "PrivateDevices", "DevicePolicy", "DeviceAllow")


def test_no_option_narrows_the_daemons_devices() -> None:
    files = [*OUR_UNITS, *DROPINS.glob("*.d/*.conf")]
    assert OUR_UNITS and len(files) > len(OUR_UNITS)
    found = [
        f"{path.name}: {line.strip()}"
        for path in files
        for line in path.read_text().splitlines()
        if line.split("=", 1)[0].strip() in DEVICE_LIST_OPTIONS
    ]
    assert found == []


def test_fast_dropin_runs_the_daemons_as_our_units_do() -> None:
    """The package's default (Debian's units with the fast drop-ins) starts and
    stops the daemons with our units' very commands, hooks included; the
    drop-in comes after the hooks' one (systemd applies them by name)."""
    folder = DROPINS / "ovs-vswitchd.service.d"
    fast = folder / "ovs-service.fast.conf"
    assert sorted(p.name for p in folder.glob("*.conf"))[-1] == fast.name
    for key in ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecStop", "ExecStopPost"):
        values = _values(fast, key)
        assert values[0] == "", f"{key}= must be reset first"
        assert values[1:] == _values(UNITS / "ovs-vswitchd.service", key), key
    assert _values(fast, "PIDFile") == _values(UNITS / "ovs-vswitchd.service", "PIDFile")
    db_fast = DROPINS / "ovsdb-server.service.d" / "ovs-service.fast.conf"
    for key in ("ExecStart", "ExecStartPost", "ExecStop"):
        assert _values(db_fast, key) == ["", *_values(UNITS / "ovsdb-server.service", key)]
    assert _values(db_fast, "PIDFile") == _values(UNITS / "ovsdb-server.service", "PIDFile")
