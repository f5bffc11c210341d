"""The hitless lanes' summary: its last line, from the files the lanes write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.lanes import hitless_summary


def _method(lost: int, tries: int = 3) -> dict[str, object]:
    return {"project": True, "runs": [], "tries": tries, "established_lost": lost,
            "established_lost_bridge": 0, "established_lost_tunnel": lost,
            "new_conn_longest_gap_ms": 812.0, "tcp_survived": True,
            "tunnel_vport_untouched": True, "datapath_untouched": True,
            "openflow_lines_kept": 11, "openflow_lines_total": 11, "state_whole": True}


def test_neither_file_says_not_run(tmp_path: Path) -> None:
    lines = hitless_summary.summary(tmp_path)
    assert lines[-1] == ("hitless: restarts: not run; force-reload-kmod gap ratio: not run; "
                         "Debian 13: not run")


def test_last_line_sums_up_both_files(tmp_path: Path) -> None:
    (tmp_path / "restart.json").write_text(json.dumps({"lane_seconds": 512.3, "methods": {
        "ovs-service restart": _method(0), "ovs-ctl restart (stock)": _method(37, 1)}}))
    (tmp_path / "force-reload-kmod.json").write_text(json.dumps({
        "ovs_service_gap_ms": 2100.0, "stock_gap_ms": 5250.0, "ratio": 0.4,
        "ovs_service_lines_kept": 20, "stock_lines_kept": 9, "lines_total": 20}))
    lines = hitless_summary.summary(tmp_path)
    assert lines[-1] == ("hitless: established packets lost: ovs-service restart 0 (0 on the "
                         "bridge + 0 across the tunnel), ovs-ctl restart (stock) 37 (0 on the "
                         "bridge + 37 across the tunnel); force-reload-kmod gap ratio to stock "
                         "0.40 (2100/5250 ms); Debian 13: not run")
    assert any("ovs-ctl restart (stock)" in line and "37" in line for line in lines[:-1])


def test_last_line_ends_with_the_debian_13_lane(tmp_path: Path) -> None:
    (tmp_path / "restart-trixie.json").write_text(json.dumps({
        "lane_seconds": 301.0, "ovs_version": "3.5.0", "methods": {
            "ovs-service restart": _method(0, 2),
            "systemctl restart openvswitch": {**_method(3, 2), "established_lost_bridge": 1,
                                              "established_lost_tunnel": 2}}}))
    lines = hitless_summary.summary(tmp_path)
    assert lines[-1].endswith(
        "; Debian 13 (Open vSwitch 3.5.0): established packets lost: ovs-service restart 0 "
        "(0 on the bridge + 0 across the tunnel), systemctl restart openvswitch 3 (1 on the "
        "bridge + 2 across the tunnel)")
    assert lines[-1].startswith("hitless: restarts: not run; ")
    assert any(line.startswith("Debian 13 (Open vSwitch 3.5.0) restart methods (301.0 s lane")
               for line in lines[:-1])


def test_a_missing_key_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "force-reload-kmod.json").write_text(json.dumps({"ratio": 0.4}))
    with pytest.raises(SystemExit, match=r"force-reload-kmod\.json: missing ovs_service_gap_ms"):
        hitless_summary.summary(tmp_path)


def test_make_tests_share_says_what_it_left_out(tmp_path: Path) -> None:
    """One pair, and no Debian units: said, so that it never reads as a full run."""
    (tmp_path / "restart.json").write_text(json.dumps({
        "lane_seconds": 600.0, "repeat": 1, "debian_units": False,
        "methods": {"ovs-service restart": _method(0, 1)}}))
    (tmp_path / "force-reload-kmod.json").write_text(json.dumps({
        "ovs_service_gap_ms": 2100.0, "stock_gap_ms": 5250.0, "ratio": 0.4,
        "ovs_service_lines_kept": 20, "stock_lines_kept": 9, "lines_total": 20, "pairs": 1}))
    lines = hitless_summary.summary(tmp_path)
    assert any("Debian's units left out" in line for line in lines[:-1]), lines
    assert "0.40 (2100/5250 ms, 1 pair)" in lines[-1]
    assert "force-reload-kmod vs stock (1 pair)" in "\n".join(lines[:-1])
