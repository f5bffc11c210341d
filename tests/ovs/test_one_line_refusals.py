"""Refusals that name what is wrong: one line, the documented exit status,
and the path, socket or option at fault (not a bare errno text)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovs_service import store
from ovs_service.errors import UsageError
from tests.harness import REPO
from tests.harness.ovsbed import Cli, OvsBed, one_line_error


@pytest.mark.parametrize("value", ["nan", "-5", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("command", ["save", "restore"])
def test_a_wait_that_is_not_a_number_of_seconds_is_refused(tmp_path: Path, command: str,
                                                           value: str) -> None:
    """Refused by the option's own check (every command's `--wait` is the same
    option), before anything, the lock included, is touched: `--wait nan`
    waited for ever on a held lock. No switch is reachable from here."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(REPO),
           "OVS_SERVICE_STATE_DIR": str(tmp_path / "state"),
           "OVS_SERVICE_RUN_DIR": str(tmp_path / "run"),
           **{key: str(tmp_path / "no-switch") for key in
              ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR")}}
    proc = subprocess.run([sys.executable, "-m", "ovs_service", command, "--wait", value],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--wait" in lines[0], proc.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("wait", [float("nan"), float("inf"), -1.0])
def test_the_lock_refuses_a_wait_it_could_not_end(tmp_path: Path, wait: float) -> None:
    with pytest.raises(UsageError, match="wait"), store.lock(tmp_path, wait):
        pass


def test_save_to_where_nothing_can_be_made_names_the_path(ovs: OvsBed, cli: Cli) -> None:
    ovs.add_bridge("br0")
    result = cli("save", "--to", "/proc/ovs-service-test", check=False)
    one_line_error(result)
    assert result.returncode == 1, result.describe()
    assert "cannot write a snapshot in /proc:" in result.stderr, result.describe()
    assert "[Errno" not in result.stderr, result.describe()


@pytest.mark.parametrize("name", ["nonexist", "00000099-20260101T000000.000000000"])
def test_restore_from_a_missing_snapshot_says_so(ovs: OvsBed, cli: Cli, name: str) -> None:
    ovs.add_bridge("br0")
    cli.save()
    result = cli.restore("--from", name, check=False)
    one_line_error(result)
    assert result.returncode == 2, result.describe()
    assert f"no snapshot named {name!r} in {cli.state_dir}" in result.stderr, result.describe()
    assert "not a directory" not in result.stderr, result.describe()


def test_a_bridge_without_its_socket_is_named_by_its_socket(ovs: OvsBed, cli: Cli) -> None:
    """ovs-vswitchd cannot make the bridge (no such datapath type), so never
    opens its management socket: save and restore say which socket."""
    ovs.add_bridge("br0")
    ovs.add_bridge("brbad")
    snapshot = cli.save()
    ovs.vsctl("set", "bridge", "brbad", "datapath_type=bogus")
    socket = ovs.dir / "brbad.mgmt"
    deadline = time.monotonic() + 10
    while socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    for result in (cli("save", check=False),
                   cli.restore("--from", str(snapshot), "--bridge", "brbad", check=False)):
        one_line_error(result)
        assert str(socket) in result.stderr, result.describe()
        assert "No such file or directory" in result.stderr, result.describe()
