"""The example alert rules shipped in contrib/prometheus: well formed, about
the metrics ovs-service writes, and (where Debian's promtool is installed)
accepted by `promtool check rules` and passing their own `promtool test rules`."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from typing import Any

import pytest

from ovs_service.metrics import families
from tests.harness import REPO

RULES = REPO / "contrib" / "prometheus" / "ovs-service.rules.yml"
RULE_TESTS = REPO / "contrib" / "prometheus" / "ovs-service.rules.test.yml"
ALERTS = {"OvsServiceRestoreFailed": "ovs_service_restore_failed",
          "OvsServiceFlowRestoreWaitStuck": "ovs_service_flow_restore_wait",
          "OvsServiceRestorePending": "ovs_service_restore_pending"}
yaml: Any = importlib.import_module("yaml")  # Debian's python3-yaml (no type stubs)
DURATION = re.compile(r"([0-9]+(ms|s|m|h|d|w|y))+\Z")


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert isinstance(doc, dict) and set(doc) == {"groups"}
    found = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"], group
        found += group["rules"]
    return found


def test_the_rules_alert_on_ovs_service_metrics_only() -> None:
    found = rules()
    assert {r["alert"] for r in found} == set(ALERTS)
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(str(rule.get("for", "0s"))), rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert {"summary", "description"} <= set(rule["annotations"])
        used = set(re.findall(r"\bovs_service_[a-z_]+", rule["expr"]))
        assert ALERTS[rule["alert"]] in used
        assert used <= families.NAMES, used - families.NAMES
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}")


def test_the_rules_test_file_covers_every_alert() -> None:
    doc = yaml.safe_load(RULE_TESTS.read_text())
    assert doc["rule_files"] == [RULES.name]
    tested = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]}
    firing = {t["alertname"] for case in doc["tests"] for t in case["alert_rule_test"]
              if t["exp_alerts"]}
    assert tested == firing == set(ALERTS)


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool (Debian's prometheus package) is not installed")
def test_promtool_accepts_the_rules_and_their_tests_pass() -> None:
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        proc = subprocess.run(["promtool", *args], cwd=RULES.parent, capture_output=True,
                              text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
