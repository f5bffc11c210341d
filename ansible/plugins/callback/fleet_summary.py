# Copyright: ovs-service contributors
# SPDX-License-Identifier: Apache-2.0
"""Callback: one line per host at the end of a rolling_restart run."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: fleet_summary
type: aggregate
short_description: A summary per host of a rolling_restart run
description:
  - At the end of the run, prints one line per host of the inventory the
    plays targeted, from what the rolling_restart role recorded with
    C(set_stats) (outcome, operation, time, bridges and their saved counts);
    a host the run never reached is shown as untouched, one lost mid-run
    as unreachable.
  - Enable it with C(callbacks_enabled = ovs_service.fleet.fleet_summary) in
    ansible.cfg (or ANSIBLE_CALLBACKS_ENABLED).
requirements:
  - enabled in ansible.cfg or ANSIBLE_CALLBACKS_ENABLED
"""

from typing import Any

from ansible.plugins.callback import CallbackBase


def bridge_text(bridges: Any) -> str:
    if not isinstance(bridges, dict) or not bridges:
        return "-"
    return ", ".join(
        f"{name} {c.get('flows', 0)}f/{c.get('groups', 0)}g/{c.get('meters', 0)}m"
        for name, c in sorted(bridges.items()) if isinstance(c, dict))


def unrecorded(stats: Any, host: str) -> str:
    """What is known of a host the role recorded nothing for: only one the run
    never reached is untouched (one lost mid-run may be half restarted)."""
    def seen(kind: str) -> bool:
        return bool((getattr(stats, kind, None) or {}).get(host))

    if seen("dark"):
        return "UNREACHABLE during the run: state unknown"
    if seen("failures") or seen("processed"):
        return "reached, but no record: state unknown"
    return "untouched"


def seconds_text(value: Any) -> str:
    try:
        return f"{float(value):.2f}s"
    except (TypeError, ValueError):
        return "-"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "ovs_service.fleet.fleet_summary"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[str] = []

    def v2_playbook_on_play_start(self, play: Any) -> None:
        manager = play.get_variable_manager()
        inventory = getattr(manager, "_inventory", None)
        if inventory is None:
            return
        # With `serial`, the inventory is restricted to the batch of the moment.
        for host in inventory.get_hosts(play.hosts, ignore_restrictions=True):
            if host.name not in self.hosts:
                self.hosts.append(host.name)

    def v2_playbook_on_stats(self, stats: Any) -> None:
        if not self.hosts:
            return
        width = max(len(h) for h in self.hosts)
        self._display.display("OVS FLEET SUMMARY " + "*" * 40)
        for host in self.hosts:
            record = (stats.custom.get(host) or {}).get("ovs_fleet")
            if not isinstance(record, dict):
                self._display.display(f"{host:<{width}}  {unrecorded(stats, host)}")
                continue
            self._display.display(
                f"{host:<{width}}  {record.get('operation', '?')}  "
                f"{seconds_text(record.get('seconds'))}  {record.get('outcome', '?')}  "
                f"bridges: {bridge_text(record.get('bridges'))}")
