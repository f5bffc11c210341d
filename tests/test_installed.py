"""ovs-service as installed for the interpreter running the tests (pip, a venv, pipx):
its own console scripts, with nothing of the checkout on the path, against a
private Open vSwitch. Checked with ovs-ofctl's dumps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import canon
import pytest
from corpus import build_corpus
from ovsbed import OvsBed


def _script(name: str) -> Path:
    for folder in (Path(sys.executable).parent, Path(sysconfig.get_path("scripts"))):
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"{name} is not installed for {sys.executable} (pip install .)")


def _installed(ovs: OvsBed, state: Path, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run an installed command from / with no PYTHONPATH: only the install is importable."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(ovs.env, OVS_SERVICE_STATE_DIR=str(state))
    return subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_the_installed_commands_save_and_restore(ovs: OvsBed, tmp_path: Path) -> None:
    ovs_service, hook = _script("ovs-service"), _script("ovs-service-hook")
    state = tmp_path / "state"
    state.mkdir()
    build_corpus(ovs, "br0")
    before = canon.all_states(ovs)

    helped = _installed(ovs, state, [str(ovs_service), "--help"])
    assert helped.returncode == 0 and "restore" in helped.stdout, helped.stderr
    saved = _installed(ovs, state, [str(ovs_service), "save"])
    assert saved.returncode == 0, saved.stderr
    ovs.ofctl("-O", "OpenFlow15", "del-flows", "br0")
    ovs.ofctl("-O", "OpenFlow15", "del-groups", "br0")
    assert canon.all_states(ovs) != before
    restored = _installed(ovs, state, [str(ovs_service), "restore"])
    assert restored.returncode == 0, restored.stderr
    assert canon.all_states(ovs) == before

    # The unit hooks' front runs the same install's Python (the save hook).
    shutil.rmtree(state)
    state.mkdir()
    hooked = _installed(ovs, state, ["/bin/sh", str(hook), "save"])
    assert hooked.returncode == 0, hooked.stderr
    assert [p for p in state.iterdir() if (p / "manifest.json").is_file()], hooked.stderr

