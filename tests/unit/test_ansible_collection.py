"""The Ansible collection (ansible/): ansible-lint and ruff accept it, and its
module turns each command into ovs-service's command line and reads its answers."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.harness import REPO
from tests.harness.ansible_plugins import COLLECTION, MODULE, load

EXE = "/usr/bin/ovs-service"


def _module() -> ModuleType:
    return load(MODULE, "ovs_service_ansible_module")


def _params(**given: Any) -> dict[str, Any]:
    return {"command": "status", "snapshot": None, "bridges": [], "stages": [], "wait": 0.0,
            "allow_foreign": False, "executable": None, **given}


def test_ansible_lint_accepts_the_collection(tmp_path: Path) -> None:
    if shutil.which("ansible-lint") is None:
        pytest.skip("ansible-lint is not installed (make install-deps installs it)")
    found = tmp_path / "ansible_collections" / "ovs_service"
    found.mkdir(parents=True)
    (found / "fleet").symlink_to(COLLECTION)
    proc = subprocess.run(["ansible-lint", "--nocolor", "--offline"], cwd=COLLECTION,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                               "ANSIBLE_COLLECTIONS_PATH": str(tmp_path),
                               "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp")},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Passed with production profile" in proc.stdout + proc.stderr


def test_ruff_accepts_the_plugins() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip(f"ruff is not installed for {sys.executable}")
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "ansible"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_command_lines() -> None:
    m = _module()
    assert m.argv_for(_params(command="restart", wait=30.0), EXE, False) == [
        EXE, "restart", "--wait", "30.0", "--json"]
    assert m.argv_for(_params(command="force_reload_kmod"), EXE, True) == [
        EXE, "force-reload-kmod", "--dry-run", "--wait", "0.0", "--json"]
    assert m.argv_for(_params(command="restore", snapshot="00000007-x", bridges=["br0"],
                              allow_foreign=True), EXE, False) == [
        EXE, "restore", "--bridge", "br0", "--from", "00000007-x", "--allow-foreign",
        "--wait", "0.0", "--json"]
    assert m.argv_for(_params(command="save", stages=["flows"]), EXE, False) == [
        EXE, "save", "--stage", "flows", "--wait", "0.0", "--json"]
    assert m.argv_for(_params(command="verify", snapshot="/s/1"), EXE, False) == [
        EXE, "snapshot", "show", "/s/1", "--json"]
    assert m.argv_for(_params(command="counts"), EXE, False, save_to="/d/now") == [
        EXE, "save", "--stage", "flows", "--to", "/d/now", "--json"]
    assert m.argv_for(_params(command="status"), EXE, True) == [EXE, "status", "--json"]


def test_answers_and_failures() -> None:
    m = _module()
    show = {"path": "/s/1", "bridges": [
        {"name": "br0", "openflow": "OpenFlow15", "flows": 3, "groups": 1, "meters": 2,
         "tlv": 1}]}
    lifted = m.lift("verify", show)
    assert lifted["snapshot"] == "/s/1"
    assert lifted["counts"] == {"br0": {"flows": 3, "groups": 1, "meters": 2, "tlv": 1}}
    restart = {"op": "restart", "ok": True, "snapshot": "/s/2", "seconds": 0.4,
               "steps": [{"name": "save", "seconds": 0.1, "ok": True}], "bridges": []}
    lifted = m.lift("restart", restart)
    assert (lifted["snapshot"], lifted["seconds"], lifted["steps"]) == (
        "/s/2", 0.4, restart["steps"])
    assert m.one_line("waiting...\nrestore of bridge 'br0' failed: x\n", 4) == (
        "restore of bridge 'br0' failed: x")
    assert m.one_line("", 3) == "ovs-service exited 3 without a reason"
    assert m.parse("not json") is None
