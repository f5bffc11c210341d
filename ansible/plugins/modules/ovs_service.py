#!/usr/bin/python
# Copyright: ovs-service contributors
# SPDX-License-Identifier: Apache-2.0
"""Ansible module: run one ovs-service command with --json and return its document."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ovs_service
short_description: Save, restore, restart or reload Open vSwitch with ovs-service
version_added: "0.1.0"
description:
  - Runs the C(ovs-service) command on the managed host with C(--json) and returns
    its document as structured data.
  - C(restart) and C(force_reload_kmod) are ovs-service's transactions (save, stop,
    start, restore, each step timed); C(save) and C(restore) work on the snapshot
    store; C(status) and C(counts) read only.
  - In check mode, C(restart) and C(force_reload_kmod) run with C(--dry-run) and
    return the plan; C(save) and C(restore) report what they would do and change
    nothing; C(status), C(verify) and C(counts) run as usual.
  - A failure carries the command's one-line reason (C(msg)) and its exit status
    (C(rc)); see the exit codes in C(ovs-service --help).
options:
  command:
    description: What to do.
    type: str
    required: true
    choices: [restart, force_reload_kmod, save, restore, status, verify, counts]
  snapshot:
    description:
      - C(restore) and C(verify) only. The snapshot (a name in the store, or a path).
        Default, the newest.
    type: str
  bridges:
    description: C(save), C(restore) and C(counts) only. Only these bridges.
    type: list
    elements: str
    default: []
  stages:
    description: C(save) and C(restore) only. Only these stages.
    type: list
    elements: str
    default: []
  wait:
    description: Seconds to wait for another transaction to finish (0, fail at once).
    type: float
    default: 0
  allow_foreign:
    description: C(restore) only. Accept a snapshot taken on another host.
    type: bool
    default: false
  executable:
    description: The ovs-service command. Default, found on the path and in the sbin folders.
    type: path
author:
  - ovs-service contributors
"""

EXAMPLES = r"""
- name: Restart Open vSwitch, keeping every flow
  ovs_service.fleet.ovs_service:
    command: restart
    wait: 30
  register: restarted

- name: Per-bridge counts of the running switch
  ovs_service.fleet.ovs_service:
    command: counts
  register: now
"""

RETURN = r"""
result:
  description: The command's whole --json document.
  returned: when the command printed one
  type: raw
snapshot:
  description: The snapshot saved or restored (its path).
  returned: restart, force_reload_kmod, save, restore, verify
  type: str
bridges:
  description:
    - restart, force_reload_kmod, restore, the bridges restored, each
      C({bridge, ok, counts, error, reason}); save, the names saved.
  returned: when the command reports bridges
  type: list
counts:
  description: Per bridge C({flows, groups, meters, tlv}) (verify, counts).
  returned: verify, counts
  type: dict
steps:
  description: The transaction's steps, each C({name, seconds, ok}).
  returned: restart, force_reload_kmod
  type: list
seconds:
  description: The transaction's time.
  returned: restart, force_reload_kmod
  type: float
port_mismatches:
  description: Port numbers that moved, each C({interface, what, saved, now}).
  returned: restore, force_reload_kmod
  type: list
rc:
  description: The command's exit status.
  returned: always
  type: int
"""

import json
import os
import shutil
import tempfile
from typing import Any

from ansible.module_utils.basic import AnsibleModule

# Module command -> ovs-service's words.
VERBS = {
    "restart": ["restart"],
    "force_reload_kmod": ["force-reload-kmod"],
    "save": ["save"],
    "restore": ["restore"],
    "status": ["status"],
    "verify": ["snapshot", "show"],
}
TRANSACTIONS = ("restart", "force_reload_kmod")
CHANGES = (*TRANSACTIONS, "save", "restore")
COUNTED = ("flows", "groups", "meters", "tlv")


def argv_for(params: dict[str, Any], exe: str, check_mode: bool,
             save_to: str | None = None) -> list[str]:
    """The command line of `params` (check mode: a transaction's --dry-run)."""
    command = params["command"]
    argv = [exe, *VERBS["save" if command == "counts" else command]]
    if command in TRANSACTIONS:
        argv += ["--dry-run"] if check_mode else []
    if command in ("save", "restore", "counts"):
        for bridge in params["bridges"]:
            argv += ["--bridge", bridge]
    if command in ("save", "restore"):
        for stage in params["stages"]:
            argv += ["--stage", stage]
    if command == "counts":
        argv += ["--stage", "flows", "--to", save_to or ""]
    if command == "restore":
        argv += ["--from", params["snapshot"]] if params["snapshot"] else []
        argv += ["--allow-foreign"] if params["allow_foreign"] else []
    if command == "verify" and params["snapshot"]:
        argv.append(params["snapshot"])
    if command in CHANGES:
        argv += ["--wait", str(params["wait"])]
    return [*argv, "--json"]


def one_line(stderr: str, rc: int) -> str:
    """ovs-service's reason: its last line on stderr (the one it prints for an error)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else f"ovs-service exited {rc} without a reason"


def parse(stdout: str) -> Any:
    try:
        return json.loads(stdout) if stdout.strip() else None
    except ValueError:
        return None


def counts_of(doc: Any) -> dict[str, dict[str, int]]:
    """`snapshot show --json`'s bridges as {bridge: {flows, groups, meters, tlv}}."""
    rows = doc.get("bridges", []) if isinstance(doc, dict) else []
    return {row["name"]: {k: int(row.get(k, 0)) for k in COUNTED} for row in rows}


def lift(command: str, doc: Any) -> dict[str, Any]:
    """The keys of the document a playbook uses most, at the top of the result."""
    out: dict[str, Any] = {"result": doc}
    if not isinstance(doc, dict):
        return out
    for key in ("snapshot", "steps", "seconds", "port_mismatches", "ok"):
        if key in doc:
            out[key] = doc[key]
    if command in ("save", "verify") and "path" in doc:
        out["snapshot"] = doc["path"]
    if "bridges" in doc:
        out["bridges"] = doc["bridges"]
    if command == "verify":
        out["counts"] = counts_of(doc)
    return out


class Runner:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        exe = module.params["executable"]
        self.exe = exe or module.get_bin_path("ovs-service", required=True)

    def run(self, argv: list[str]) -> tuple[int, str, str]:
        rc, out, err = self.module.run_command(argv, environ_update={"LC_ALL": "C.UTF-8"})
        return int(rc), str(out), str(err)

    def fail(self, argv: list[str], rc: int, out: str, err: str) -> None:
        doc = parse(out)
        # Without a reason on stderr (a wrapper, an interpreter that cannot
        # import), what the command printed on stdout is the next best.
        self.module.fail_json(msg=one_line(err or ("" if doc is not None else out), rc),
                              rc=rc, cmd=argv, stderr=err, stdout=out,
                              **lift(self.module.params["command"], doc))

    def counts(self) -> dict[str, Any]:
        """The running switch's counts: a flows-only snapshot outside the store, read back."""
        folder = tempfile.mkdtemp(prefix="ovs-service-counts-")
        try:
            to = os.path.join(folder, "now")
            argv = argv_for(self.module.params, self.exe, False, save_to=to)
            rc, out, err = self.run(argv)
            if rc != 0:
                self.fail(argv, rc, out, err)
            show = [self.exe, "snapshot", "show", to, "--json"]
            rc, out, err = self.run(show)
            if rc != 0:
                self.fail(show, rc, out, err)
            return {"changed": False, "rc": 0, "counts": counts_of(parse(out))}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def main(self) -> dict[str, Any]:
        params, check = self.module.params, self.module.check_mode
        command = params["command"]
        if command == "counts":
            return self.counts()
        if check and command in ("save", "restore"):
            return {"changed": True, "rc": 0, "msg": f"would {command} (check mode)"}
        argv = argv_for(params, self.exe, check)
        rc, out, err = self.run(argv)
        if rc != 0:
            self.fail(argv, rc, out, err)
        doc = parse(out)
        if doc is None:
            self.module.fail_json(msg="ovs-service printed no JSON document", rc=rc, cmd=argv,
                                  stdout=out, stderr=err)
        changed = command in CHANGES  # in check mode: what a real run would change
        return {"changed": changed, "rc": rc, "cmd": argv, **lift(command, doc)}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "command": {"type": "str", "required": True,
                        "choices": [*VERBS, "counts"]},
            "snapshot": {"type": "str"},
            "bridges": {"type": "list", "elements": "str", "default": []},
            "stages": {"type": "list", "elements": "str", "default": []},
            "wait": {"type": "float", "default": 0.0},
            "allow_foreign": {"type": "bool", "default": False},
            "executable": {"type": "path"},
        },
        supports_check_mode=True,
    )
    module.exit_json(**Runner(module).main())


if __name__ == "__main__":
    main()
