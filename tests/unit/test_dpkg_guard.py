"""The dpkg guard's leftovers: found where the hook writes them, and a
running dpkg told apart from none (by /proc's command names)."""

from __future__ import annotations

from pathlib import Path

from ovs_service import dpkg_guard


def _proc(tmp_path: Path, **comms: str) -> Path:
    proc = tmp_path / "proc"
    for pid, comm in comms.items():
        (proc / pid.lstrip("p")).mkdir(parents=True)
        (proc / pid.lstrip("p") / "comm").write_text(comm + "\n")
    (proc / "self").mkdir(exist_ok=True)
    return proc


def test_the_guards_are_found_on_every_guarded_unit(tmp_path: Path) -> None:
    assert dpkg_guard.guards(tmp_path) == []
    for unit in dpkg_guard.UNITS:
        (tmp_path / f"{unit}.d").mkdir()
        (tmp_path / f"{unit}.d" / dpkg_guard.NAME).write_text("[Unit]\nRefuseManualStop=yes\n")
    (tmp_path / "other.service.d").mkdir()
    (tmp_path / "other.service.d" / dpkg_guard.NAME).write_text("")
    assert sorted(p.parent.name for p in dpkg_guard.guards(tmp_path)) == [
        "ovs-record-hostname.service.d", "ovs-vswitchd.service.d", "ovsdb-server.service.d"]


def test_a_running_dpkg_is_seen_by_its_command_name(tmp_path: Path) -> None:
    assert not dpkg_guard.dpkg_running(_proc(tmp_path, p1="systemd", p77="dpkg-deb"))
    assert dpkg_guard.dpkg_running(_proc(tmp_path / "b", p1="systemd", p78="dpkg"))


def test_a_dpkg_of_another_mount_namespace_does_not_count(tmp_path: Path) -> None:
    proc = _proc(tmp_path, p1="systemd", p78="dpkg")
    for pid, ns in (("self", "mnt:[4026531841]"), ("78", "mnt:[4026532999]")):
        (proc / pid / "ns").mkdir()
        (proc / pid / "ns" / "mnt").symlink_to(ns)
    assert not dpkg_guard.dpkg_running(proc)
    (proc / "78" / "ns" / "mnt").unlink()
    (proc / "78" / "ns" / "mnt").symlink_to("mnt:[4026531841]")
    assert dpkg_guard.dpkg_running(proc)
