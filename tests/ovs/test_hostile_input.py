"""Hostile input beyond damaged snapshots: odd names, bad options, no database,
a full disk, secrets. Each gets one clear line and a non-zero exit, and the
switch is left as it was (checked with ovs-ofctl through `canon`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import canon
from tests.harness.ovsbed import Cli, OvsBed, one_line_error

ODD_NAMES = ["b$(id);x", "brü0", "b'\"`a", "a" * 15]


def test_odd_bridge_names_round_trip(ovs: OvsBed, cli: Cli) -> None:
    """Names are data: shell metacharacters, quotes, non-ASCII, 15 characters."""
    for i, name in enumerate(ODD_NAMES):
        ovs.add_bridge(name, protocols=("OpenFlow13",), ports={f"p{i}$;x": 3})
        ovs.ofctl("-O", "OpenFlow13", "add-flow", name, "priority=7,in_port=3,actions=drop")
        ovs.ofctl("-O", "OpenFlow13", "add-group", name, "group_id=4,type=all,bucket=output:3")
    before = canon.all_states(ovs)
    snapshot = cli.save()
    for name in ODD_NAMES:
        ovs.ofctl("-O", "OpenFlow13", "del-flows", name)
        ovs.ofctl("-O", "OpenFlow13", "del-groups", name)
    assert canon.all_states(ovs) != before
    cli.restore("--from", str(snapshot), "--bridge", ODD_NAMES[0], "--bridge", ODD_NAMES[1])
    cli.restore("--from", str(snapshot))
    assert canon.all_states(ovs) == before
    shown = cli("snapshot", "show", str(snapshot), "--json").json()
    assert sorted(b["name"] for b in shown["bridges"]) == sorted(ODD_NAMES)


@pytest.mark.parametrize("argv", [
    ["save", "--bogus"],
    ["restore", "--stage", "nonsense"],
    ["save", "--bridge", "no-such-bridge"],
    ["frobnicate"],
    ["restart", "--wait", "soon"],
])
def test_bad_usage_is_one_line(ovs: OvsBed, cli: Cli, argv: list[str]) -> None:
    ovs.add_bridge("br0")
    before = canon.all_states(ovs)
    result = cli(*argv, check=False)
    one_line_error(result)
    assert result.returncode == 2 or "no-such-bridge" in result.stderr, result.describe()
    assert canon.all_states(ovs) == before


def test_ovsdb_unreachable(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0")
    snapshot = cli.save()
    ovs.stop_daemon("ovsdb-server")
    for argv in (["save"], ["restore", "--from", str(snapshot)], ["status", "--json"]):
        result = cli(*argv, check=False, timeout=60)
        if argv[0] == "status":
            assert result.returncode == 0 and result.json()["flow_restore_wait"] is None
            continue
        one_line_error(result)
        assert result.returncode == 3 and "ovsdb-server" in result.stderr, result.describe()


def test_full_disk_keeps_the_previous_snapshot(ovs: OvsBed, cli: Cli, tmp_path: Path) -> None:
    """A save that runs out of space fails in one line, leaves no half snapshot,
    and the previous snapshot stays whole and usable."""
    ovs.add_bridge("br0", protocols=("OpenFlow13",))
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        tiny = Cli(ovs, small / "state")
        first = tiny.save()
        flows = tmp_path / "flows"
        flows.write_text("".join(f"priority=5,ip,nw_dst=10.0.{i >> 8}.{i & 255},actions=drop\n"
                                 for i in range(20_000)))
        ovs.ofctl("-O", "OpenFlow13", "add-flows", "br0", str(flows))
        result = tiny("save", check=False)
        one_line_error(result)
        assert "space" in result.stderr.lower(), result.describe()
        assert [p.name for p in (small / "state").iterdir() if p.name.startswith(".incoming")] \
            == []
        listing = tiny("snapshot", "list", "--json").json()
        assert [s["path"] for s in listing] == [str(first)]
        tiny("snapshot", "show", str(first))
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_secrets_stay_out_of_output(ovs: OvsBed, cli: Cli) -> None:
    """IPsec keys are never saved (no restore needs them), printed or logged."""
    ovs.add_bridge("br0")
    ovs.vsctl("add-port", "br0", "ipsec0", "--", "set", "interface", "ipsec0", "type=gre",
              "options:remote_ip=192.0.2.9", "options:psk=swordfish-123")
    snapshot = cli.save()
    outputs = [cli("snapshot", "show", str(snapshot), "--json").stdout,
               cli("snapshot", "list", "--json").stdout,
               cli("--debug", "save", "--json").stdout + cli("--debug", "save").stderr,
               (snapshot / "manifest.json").read_text(),
               (snapshot / "datapaths" / "datapaths.json").read_text()]
    assert all("swordfish" not in text for text in outputs)
    assert all(b"swordfish" not in p.read_bytes() for p in snapshot.rglob("*") if p.is_file())
    assert snapshot.stat().st_mode & 0o777 == 0o700
    for path in snapshot.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
