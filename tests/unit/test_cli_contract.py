"""The command line's contract, with no root and no switch: the operations are patched.

Every command: `--help` works, `--json` prints exactly one JSON document, and
every exit status it can end with is one of errors.EXIT_CODES, which the
README and the man page list too.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from ovs_service import cli, errors, operations, reload, store, transaction
from ovs_service.stages.flows import BridgeRestore, FlowsReport
from ovs_service.stages.interfaces import InterfacesReport

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ("save", "restore", "restart", "force-reload-kmod", "recover", "status",
            "check-dead-ifs", "snapshot list", "snapshot show", "snapshot diff")


def _error_classes() -> Iterator[type[errors.OvsServiceError]]:
    pending = [errors.OvsServiceError]
    while pending:
        cls = pending.pop()
        yield cls
        pending += cls.__subclasses__()


def invoke(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
           *args: str) -> tuple[int, str, str]:
    """`ovs-service ARGS` through the real entry point: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["ovs-service", *args])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def one_document(out: str) -> Any:
    """The JSON document `out` holds; fails unless it is exactly one."""
    decoder = json.JSONDecoder()
    doc, end = decoder.raw_decode(out.lstrip())
    assert not out.lstrip()[end:].strip(), f"more than one document:\n{out}"
    return doc


# -- the exit-code table -----------------------------------------------------------


def test_every_error_class_exits_with_a_documented_code() -> None:
    for cls in _error_classes():
        assert cls.exit_code in errors.EXIT_CODES, cls


def test_every_exception_class_of_the_package_lives_in_errors() -> None:
    defined = {}
    for path in (REPO / "ovs_service").rglob("*.py"):
        for name in re.findall(r"^class (\w+)\((?:\w+Error|Exception|OvsServiceError)\b",
                               path.read_text(), flags=re.MULTILINE):
            defined[name] = path.name
    outside = {name: file for name, file in defined.items()
               if file != "errors.py" and not name.startswith("_")}
    assert not outside, outside


def test_the_man_page_lists_exactly_the_exit_codes() -> None:
    page = (REPO / "packaging" / "man" / "ovs-service.8").read_text()
    section = page.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    listed = {int(code) for code in re.findall(r"^\.B (\d+)$", section, flags=re.MULTILINE)}
    assert listed == set(errors.EXIT_CODES)


def test_the_readme_lists_exactly_the_exit_codes() -> None:
    readme = (REPO / "README.md").read_text()
    paragraph = readme.split("Exit codes:", 1)[1].split("\n\n", 1)[0]
    listed = {int(code) for code in re.findall(r"`(\d+)`", paragraph)}
    assert listed == set(errors.EXIT_CODES)


def test_the_help_lists_the_exit_codes() -> None:
    result = CliRunner().invoke(cli.app, ["--help"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    for code in errors.EXIT_CODES:
        assert re.search(rf"\b{code} ", result.output), (code, result.output)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(cli.app, [*command.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


# -- documents and exit codes, with the operations patched ----------------------------


def _bridge(name: str, ok: bool = True) -> BridgeRestore:
    return BridgeRestore(bridge=name, ok=ok, counts={"flows": 3, "groups": 1, "meters": 0},
                         error="" if ok else f"{name}: refused", reason="" if ok else "refused")


def _restore_outcome(bridges_ok: bool, interfaces_ok: bool) -> operations.RestoreOutcome:
    problems = [] if interfaces_ok else [{"subject": "br0", "action": "set mtu",
                                          "errno_name": "EINVAL", "message": "Invalid argument"}]
    return operations.RestoreOutcome(
        snapshot=Path("/nonexistent/snap"),
        reports=(
            FlowsReport((_bridge("br0"), _bridge("br1", ok=bridges_ok))),
            InterfacesReport({"ok": interfaces_ok, "firewall": None,
                              "interfaces": {"ok": interfaces_ok, "problems": problems}}),
        ),
    )


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Patch the operations behind the commands; `patched(restore=outcome)` and so on."""
    monkeypatch.setattr(store, "resolve", lambda root, name: Path("/nonexistent/snap"))
    snapshot = SimpleNamespace(path=Path("/nonexistent/snap"),
                               manifest=SimpleNamespace(bridges=["br0"], extra={"flows": {}}))
    monkeypatch.setattr(operations, "take_snapshot", lambda *a, **k: snapshot)

    def set_up(**results: Any) -> None:
        for name, result in results.items():
            def fake(*_a: Any, _result: Any = result, **_k: Any) -> Any:
                if isinstance(_result, BaseException):
                    raise _result
                return _result
            target = {"restore": (operations, "restore_snapshot"),
                      "save": (operations, "take_snapshot"),
                      "restart": (transaction, "restart"),
                      "kmod": (reload, "force_reload_kmod"),
                      "recover": (transaction, "recover")}[name]
            monkeypatch.setattr(*target, fake)
    return set_up


def test_restore_with_only_the_interfaces_failing_reports_once_and_exits_4(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        patched: Callable[..., None]) -> None:
    patched(restore=_restore_outcome(bridges_ok=True, interfaces_ok=False))
    code, out, err = invoke(monkeypatch, capsys, "restore", "--json")
    doc = one_document(out)
    assert doc["ok"] is False
    assert code == 4, err
    assert err.count("\n") == 1 and "interfaces" in err and "set mtu" in err, err

    code, out, err = invoke(monkeypatch, capsys, "restore")
    assert code == 4
    assert out.count("interfaces: PROBLEMS") == 1, out


def test_restore_with_a_bridge_failing_reports_once_and_exits_4(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        patched: Callable[..., None]) -> None:
    patched(restore=_restore_outcome(bridges_ok=False, interfaces_ok=True))
    code, out, err = invoke(monkeypatch, capsys, "restore", "--json")
    assert one_document(out)["ok"] is False
    assert code == 4 and "br1" in err


def test_restore_that_succeeds_prints_one_document(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        patched: Callable[..., None]) -> None:
    patched(restore=_restore_outcome(bridges_ok=True, interfaces_ok=True))
    code, out, err = invoke(monkeypatch, capsys, "restore", "--json")
    assert code == 0, err
    assert one_document(out)["ok"] is True


def test_save_prints_one_document(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str],
                                  patched: Callable[..., None]) -> None:
    code, out, err = invoke(monkeypatch, capsys, "save", "--json")
    assert code == 0, err
    assert one_document(out)["path"] == "/nonexistent/snap"


@pytest.mark.parametrize("command", ["restart", "force-reload-kmod"])
def test_dry_runs_print_one_document(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = invoke(monkeypatch, capsys, command, "--dry-run", "--json")
    assert code == 0, err
    doc = one_document(out)
    assert doc["dry_run"] is True and doc["steps"]


@pytest.mark.parametrize("error", [cls for cls in _error_classes()
                                   if cls is not errors.OvsServiceError],
                         ids=lambda cls: cls.__name__)
def test_each_error_ends_in_one_line_and_its_code(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        patched: Callable[..., None], error: type[errors.OvsServiceError]) -> None:
    fields = re.findall(r"{(\w+)", error.template)
    patched(restart=error(**{f: f"<{f}>" for f in fields}))
    code, out, err = invoke(monkeypatch, capsys, "restart", "--json")
    assert code == error.exit_code and code in errors.EXIT_CODES
    assert out == ""
    assert err.startswith("ovs-service: error: ") and err.count("\n") == 1, err


def test_a_bad_option_is_exit_2_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = invoke(monkeypatch, capsys, "restore", "--no-such-option")
    assert code == 2
    assert err.startswith("ovs-service: error: ") and err.count("\n") == 1, err


def test_force_reload_kmod_that_failed_exits_1_with_one_document(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        patched: Callable[..., None]) -> None:
    patched(kmod=reload.KmodOutcome(op="force-reload-kmod", snapshot="/nonexistent/snap",
                                         ok=False, notes=["a bridge failed"]))
    code, out, _err = invoke(monkeypatch, capsys, "force-reload-kmod", "--json")
    assert code == 1 and code in errors.EXIT_CODES
    assert one_document(out)["ok"] is False
