"""Failures are classified by what happened (exit status, stderr, errno), never by
the words of the command line: a command that holds `--timeout` or a datapath
named `exists-0` must not change the verdict.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovs_service import ovs
from ovs_service.errors import CommandFailed, OvsUnreachable
from ovs_service.run import run
from ovs_service.stages import datapaths
from tests.harness.ovsbed import OvsBed


@pytest.fixture
def switch_env(ovs: OvsBed, monkeypatch: pytest.MonkeyPatch) -> OvsBed:
    """This process talks to the private switch, as the CLI would."""
    for key, value in ovs.env.items():
        monkeypatch.setenv(key, value)
    return ovs


def test_a_refused_vsctl_command_is_not_unreachable(switch_env: OvsBed) -> None:
    with pytest.raises(CommandFailed) as refused:
        ovs.vsctl("get", "Bridge", "br9", "name")
    assert 'no row "br9"' in refused.value.fields["stderr"]


def test_a_missing_ovsdb_server_is_unreachable(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVS_RUNDIR", str(tmp_path))
    with pytest.raises(OvsUnreachable, match="database connection failed"):
        ovs.vsctl("list-br")


@pytest.fixture
def silent_socket(tmp_path: Path) -> Iterator[Path]:
    """A unix socket that accepts and never answers, like a hung ovsdb-server."""
    path = tmp_path / "db.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(8)
        yield path


def test_an_ovsdb_server_that_never_answers_is_unreachable(
        silent_socket: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVS_RUNDIR", str(silent_socket.parent))
    monkeypatch.setattr(ovs, "VSCTL_TIMEOUT", "--timeout=1")
    with pytest.raises(OvsUnreachable):
        ovs.vsctl("list-br")


def test_every_tool_runs_with_lc_all_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its messages, which errors are classified by, stay in one language."""
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    assert run(["sh", "-c", "echo $LC_ALL"]).stdout == "C\n"


def test_a_datapath_that_cannot_be_made_is_a_problem_whatever_its_name() -> None:
    """A datapath the kernel cannot make (a name longer than an interface's may
    be) is reported as not made, never assumed made: without the module, as
    another user or as root alike (asking for the family may load the module)."""
    port = datapaths.DatapathPort(1, "p0", "internal", {})
    name = "not-an-ifname-" + "x" * 16
    saved = datapaths.DatapathsSnapshot([datapaths.Datapath(name, "system", [port])], [])
    made = datapaths.recreate_kernel_datapaths(saved)
    assert made.ports == []
    (problem,) = made.problems
    assert "kernel datapath" in problem and "\n" not in problem, made
