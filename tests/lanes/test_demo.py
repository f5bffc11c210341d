"""The README's first command, as a new user runs it: from a clone anywhere.

The clone lies under /tmp, in a folder whose name holds a space, read-only;
the demo must run that clone's code inside its throwaway systemd and tell the
truth: exit 0 after a real restart, and, when the restart fails, exit
non-zero and say so on its first screen, with no ✓ and no gap figure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIRST_SCREEN = 30  # lines


@pytest.fixture(scope="module")
def clone() -> Iterator[Path]:
    """This checkout's files (committed or not) under /tmp, in 'a new user/clone'."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    if shutil.which("ovs-vswitchd") is None or not Path("/lib/systemd/systemd").exists():
        pytest.skip("Open vSwitch or systemd not installed")
    top = Path(tempfile.mkdtemp(prefix="ovs-service-demo-", dir="/tmp"))
    target = top / "a new user" / "clone"
    target.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    try:
        yield target
    finally:
        shutil.rmtree(top, ignore_errors=True)


def run_demo(clone: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`./demo.sh --no-contrast` with the clone read-only (a private mount namespace)."""
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && cd "$1" '
              '&& exec ./demo.sh --no-contrast')
    full_env = {**os.environ, "NO_COLOR": "1", **(env or {})}
    full_env.pop("PYTHONPATH", None)
    return subprocess.run(["unshare", "--mount", "--propagation", "private",
                           "sh", "-c", script, "demo", str(clone)],
                          capture_output=True, text=True, env=full_env, timeout=600, check=False)


@pytest.mark.systemd
@pytest.mark.slow
def test_the_demo_restarts_from_a_read_only_clone_under_tmp(clone: Path) -> None:
    proc = run_demo(clone)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "✓ canonical state before vs after: identical" in output, output
    assert "restarted in" in output, output  # ovs-service restart's own closing line


@pytest.mark.systemd
@pytest.mark.slow
def test_a_demo_whose_restart_fails_says_so_first_and_exits_1(clone: Path) -> None:
    # ovs-service kills itself before it stops anything (its fault injection).
    proc = run_demo(clone, {"OVS_SERVICE_FAULT": "stop-ovs-vswitchd"})
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 1, "\n".join(lines)
    assert any("THE RESTART FAILED" in line for line in lines[:FIRST_SCREEN]), "\n".join(lines)
    assert not any(line.strip().startswith("✓ canonical") for line in lines), "\n".join(lines)
    assert not any("traffic stopped" in line for line in lines), "\n".join(lines)
