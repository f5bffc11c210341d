"""Edges of the Ansible collection: check mode of the role end to end, check
mode's changed, failures with nothing on stderr, the summary of a host lost
mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.harness.ansible_plugins import COLLECTION, MODULE, load


class Failed(Exception):
    pass


class FakeModule:
    """What Runner uses of AnsibleModule; run_command answers from `answers`."""

    def __init__(self, params: dict[str, Any], answers: list[tuple[int, str, str]],
                 check_mode: bool = False) -> None:
        self.params = {"command": "status", "snapshot": None, "bridges": [], "stages": [],
                       "wait": 0.0, "allow_foreign": False, "executable": "/x/ovs-service",
                       **params}
        self.answers = answers
        self.check_mode = check_mode
        self.calls: list[list[str]] = []

    def get_bin_path(self, *_: Any, **__: Any) -> str:
        return "/x/ovs-service"

    def run_command(self, argv: list[str], **_: Any) -> tuple[int, str, str]:
        self.calls.append(argv)
        return self.answers.pop(0)

    def fail_json(self, **result: Any) -> None:
        raise Failed(result)


def test_a_failure_keeps_what_the_command_printed_on_stdout() -> None:
    """A failing command whose output is not JSON (an interpreter that cannot
    start, a wrapper printing its own error, a crash) and that says nothing on
    stderr: the failure says only "exited 1 without a reason" and drops the
    output that explains it (the success path keeps `stdout`, the failure
    path does not)."""
    m = load(MODULE, "review2_module")
    fake = FakeModule({"command": "status"},
                      [(1, "ovs-service: cannot import pystemd\n", "")])
    with pytest.raises(Failed) as failed:
        m.Runner(fake).main()
    result = failed.value.args[0]
    assert result["rc"] == 1
    assert "cannot import pystemd" in (result.get("stdout", "") + result["msg"])


def test_check_mode_transaction_reports_what_it_would_change() -> None:
    """Ansible's convention: in check mode a task reports changed when a real
    run would change something. restart in check mode reports changed=False
    (save and restore, in the same mode, report True)."""
    m = load(MODULE, "review2_module")
    plan = json.dumps({"op": "restart", "plan": []})
    fake = FakeModule({"command": "restart"}, [(0, plan, "")], check_mode=True)
    result = m.Runner(fake).main()
    assert "--dry-run" in fake.calls[0]
    assert result["changed"] is True


class _Display:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def display(self, text: str, *_: Any, **__: Any) -> None:
        self.lines.append(text)


def test_summary_does_not_call_an_unreachable_host_untouched() -> None:
    """A host that became unreachable during the run (the SSH connection
    dropped while its switch restarted, or the host rebooted) never runs the
    role's `always:` (set_stats), so the summary prints it as "untouched",
    the word for a host the run never reached, although its switch may be
    half restarted. The stats say it was reached: stats.dark."""
    cb = load(COLLECTION / "plugins" / "callback" / "fleet_summary.py", "review2_callback")
    plugin = cb.CallbackModule.__new__(cb.CallbackModule)
    plugin.hosts = ["h1", "h2", "h3"]
    plugin._display = _Display()
    stats = SimpleNamespace(
        custom={"h1": {"ovs_fleet": {"outcome": "ok", "operation": "restart",
                                     "seconds": 1.0, "bridges": {}}}},
        processed={"h1": 1, "h2": 1}, dark={"h2": 1}, failures={}, ok={"h1": 5, "h2": 2},
        changed={}, skipped={}, rescued={}, ignored={})
    plugin.v2_playbook_on_stats(stats)
    line = next(x for x in plugin._display.lines if x.startswith("h2"))
    assert "untouched" not in line, line


def test_role_check_mode_end_to_end(tmp_path: Path) -> None:
    """`ansible-playbook --check` of the role on a healthy host (a stand-in
    ovs-service answering as a healthy switch does) fails at the pre-check's
    verify: 'dict object' has no attribute 'snapshot'."""
    import shutil

    if shutil.which("ansible-playbook") is None:
        pytest.skip("ansible-playbook is not installed")
    found = tmp_path / "coll" / "ansible_collections" / "ovs_service"
    found.mkdir(parents=True)
    (found / "fleet").symlink_to(COLLECTION)
    fake = tmp_path / "ovs-service"
    fake.write_text("""#!/bin/sh
case "$1" in
  status) echo '{"state_dir":"/x","newest":null,"snapshots":0,"pending":null,"failed":null,\
"flow_restore_wait":false,"units":[],"transaction":null}' ;;
  save) echo '{"path":"/x/00000001-a","bridges":["br0"],"flows":{},"failed":{}}' ;;
  snapshot) echo '{"path":"/x/00000001-a","bridges":[{"name":"br0","flows":1,"groups":0,\
"meters":0,"tlv":0}]}' ;;
  restart) echo '{"op":"restart","plan":[]}' ;;
esac
""")
    fake.chmod(0o755)
    inventory = tmp_path / "inventory"
    inventory.write_text(
        f"h1 ansible_connection=local ansible_python_interpreter={sys.executable}\n")
    proc = subprocess.run(
        ["ansible-playbook", "--check", "-i", str(inventory), "ovs_service.fleet.rolling_restart",
         "-e", f"ovs_fleet_executable={fake}"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
             "ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "coll"),
             "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")},
        capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
