"""The Debian package: it builds, lintian passes it, it ships what it should
and nothing of another package's, and neither its own maintainer scripts nor
an upgrade of openvswitch-switch lose the flows.

The package is built once per module with packaging/build-deb.sh into a
temporary folder, and checked with Debian's own tools: dpkg-deb, lintian,
dpkg-query, apt-get --simulate, systemd-tmpfiles, bash, man's sources. It is
never installed on the machine: the upgrade test runs the package's files
from the private /run of a systemd namespace.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.systemd_ns import SystemdNamespace, booted

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
DEBIAN_DIR = REPO / "packaging" / "debian"
BUILD_SCRIPT = REPO / "packaging" / "build-deb.sh"
PACKAGE = "ovs-service"
REQUIRED_DEPENDS = {
    "openvswitch-switch", "python3", "python3-pyroute2", "python3-pystemd",
    "python3-sdnotify", "python3-typer",
}  # fmt: skip
BUILD_TOOLS = ("dpkg-buildpackage", "dpkg-checkbuilddeps", "dpkg-deb", "dh", "lintian")
DIST_PACKAGES = "usr/lib/python3/dist-packages"
UNIT_DIR = "/lib/systemd/system"
# openvswitch-switch's own units: the package adds drop-ins, never these.
DEBIAN_OVS_UNITS = ("ovsdb-server.service", "ovs-vswitchd.service", "openvswitch-switch.service")
LOCALE = {"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}


def _run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **LOCALE, **(env or {})},
    )
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(map(str, argv))}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        )
    return proc


def _project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    assert isinstance(version, str)
    return version


@dataclass(frozen=True)
class Built:
    deb: Path
    root: Path  # the data part, unpacked (dpkg-deb -x)
    control: Path  # the control part (dpkg-deb -e)
    entries: dict[str, str]  # absolute path -> "-", "d" or "l", from dpkg-deb -c

    @property
    def files(self) -> list[str]:
        return sorted(p for p, kind in self.entries.items() if kind != "d")

    def field(self, name: str) -> str:
        return _run(["dpkg-deb", "-f", self.deb, name]).stdout.strip()


def _entries(deb: Path) -> dict[str, str]:
    entries = {}
    for line in _run(["dpkg-deb", "-c", deb]).stdout.splitlines():
        perms, _owner, _size, _date, _time, name = line.split(maxsplit=5)
        name = name.split(" -> ")[0]
        entries["/" + name.removeprefix("./").rstrip("/")] = perms[0]
    return entries


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"Debian build tools not installed: {', '.join(missing)}")
    deps = _run(["dpkg-checkbuilddeps", DEBIAN_DIR / "control"], check=False)
    assert deps.returncode == 0, (
        f"packaging/debian/control's Build-Depends are not installed:\n{deps.stderr}"
    )
    out = tmp_path_factory.mktemp("deb")
    proc = _run([BUILD_SCRIPT, out / "dist"], check=False, timeout=900)
    log = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"packaging/build-deb.sh failed:\n{log}"
    debs = sorted((out / "dist").glob("*.deb"))
    assert [d.name for d in debs] == [f"{PACKAGE}_{_project_version()}_all.deb"], log
    deb = debs[0]
    _run(["dpkg-deb", "-x", deb, out / "root"])
    _run(["dpkg-deb", "-e", deb, out / "control"])
    return Built(deb, out / "root", out / "control", _entries(deb))


# -- the package as a file -------------------------------------------------------


def test_version_is_the_projects(built: Built) -> None:
    version = _project_version()
    changelog = _run(["dpkg-parsechangelog", "-l", DEBIAN_DIR / "changelog", "-S", "Version"])
    init = (REPO / "ovs_service" / "__init__.py").read_text()
    assert changelog.stdout.strip() == version
    assert f'__version__ = "{version}"' in init
    assert built.field("Version") == version
    for page in ("ovs-service.8", "ovs-service-hook.8"):
        header = (REPO / "packaging" / "man" / page).read_text().splitlines()[0]
        assert f'"ovs\\-service {version}"' in header, f"{page}: {header}"


def test_control_fields(built: Built) -> None:
    assert built.field("Package") == PACKAGE
    assert built.field("Architecture") == "all"
    depends = {
        alternative.split()[0].split(":")[0]
        for clause in built.field("Depends").split(",")
        for alternative in clause.split("|")
    }
    assert depends >= REQUIRED_DEPENDS, built.field("Depends")
    assert built.field("Pre-Depends") == ""


def test_lintian_reports_no_errors_or_warnings(built: Built) -> None:
    proc = _run(["lintian", "--display-info", "--pedantic", "--no-tag-display-limit", built.deb],
                check=False, timeout=600)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"[A-Z]: ", line)]
    bad = [tag for tag in tags if tag.startswith(("E: ", "W: "))]
    assert not bad, "\n".join(tags)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_contents(built: Built) -> None:
    files = set(built.files)
    expected = {
        "/usr/bin/ovs-service",
        "/usr/bin/ovs-service-hook",
        "/usr/share/man/man8/ovs-service.8.gz",
        "/usr/share/man/man8/ovs-service-hook.8.gz",
        "/usr/share/bash-completion/completions/ovs-service",
        f"{UNIT_DIR}/openvswitch.service",
        "/usr/lib/tmpfiles.d/ovs-service.conf",
        "/usr/share/doc/ovs-service/copyright",
        "/usr/share/doc/ovs-service/examples/ovs-service.rules.yml",
        "/usr/share/doc/ovs-service/examples/ovs-service.rules.test.yml",
        "/usr/lib/ovs-service/dpkg-hook",
        "/etc/dpkg/dpkg.cfg.d/ovs-service",
    }
    dropins = sorted((REPO / "units" / "dropins").glob("*.d/*.conf"))
    assert dropins, "no drop-ins in units/dropins"
    expected |= {f"{UNIT_DIR}/{conf.parent.name}/{conf.name}" for conf in dropins}
    modules = [p for p in (REPO / "ovs_service").rglob("*.py") if "__pycache__" not in p.parts]
    expected |= {f"/{DIST_PACKAGES}/{p.relative_to(REPO).as_posix()}" for p in modules}
    assert not expected - files, f"missing: {sorted(expected - files)}"

    # The hooks' front is a sh script (it runs the Python hooks when needed).
    for command, shebang in (("/usr/bin/ovs-service", "#!/usr/bin/python3"),
                             ("/usr/bin/ovs-service-hook", "#!/bin/sh"),
                             ("/usr/lib/ovs-service/dpkg-hook", "#!/bin/sh")):
        assert os.access(built.root / command.lstrip("/"), os.X_OK), command
        first = (built.root / command.lstrip("/")).read_text().splitlines()[0]
        assert first == shebang, f"{command}: {first}"
    assert not [f for f in files if f.endswith(".pyc") or "/__pycache__/" in f]
    # No state, and one conffile: dpkg reads its hooks from /etc alone (the
    # upgrade's dpkg hook, ovs-service(8) UPGRADES); the rest of /etc and
    # /var are the admin's and the tmpfiles'.
    assert [f for f in files if f.startswith(("/etc/", "/var/", "/usr/local/"))] == [
        "/etc/dpkg/dpkg.cfg.d/ovs-service"]
    # openvswitch-switch's units stay openvswitch-switch's.
    for unit in DEBIAN_OVS_UNITS:
        for unit_dir in (UNIT_DIR, "/usr/lib/systemd/system", "/etc/systemd/system"):
            assert f"{unit_dir}/{unit}" not in files


def test_no_file_belongs_to_another_package(built: Built) -> None:
    def aliases(path: str) -> list[str]:
        # With merged /usr, /lib/x and /usr/lib/x are one file.
        if path.startswith("/lib/"):
            return [path, "/usr" + path]
        if path.startswith("/usr/lib/"):
            return [path, path.removeprefix("/usr")]
        return [path]

    queried = [alias for path in built.files for alias in aliases(path)]
    proc = _run(["dpkg-query", "-S", *queried], check=False)
    owners = {}
    for line in proc.stdout.splitlines():
        if line.startswith("diversion "):
            continue
        packages, path = line.split(": ", 1)
        others = {p.strip().split(":")[0] for p in packages.split(",")} - {PACKAGE}
        if others:
            owners[path] = sorted(others)
    assert not owners, f"files of other packages: {owners}"


def test_dropins_attach_to_openvswitch_switch_units(built: Built) -> None:
    listed = _run(["dpkg-query", "-L", "openvswitch-switch"], check=False)
    if listed.returncode != 0:
        pytest.skip("openvswitch-switch is not installed")
    theirs = set(listed.stdout.split())
    folders = [p for p, kind in built.entries.items()
               if kind == "d" and p.startswith(UNIT_DIR + "/") and p.endswith(".d")]
    assert folders
    for folder in folders:
        unit = folder.removesuffix(".d")
        assert unit in theirs or unit in built.entries, f"{folder}: no unit {unit}"
    assert {f"{UNIT_DIR}/{u}.d" for u in ("ovs-vswitchd.service", "ovsdb-server.service")} <= set(
        folders
    )


def test_apt_could_install_it(built: Built) -> None:
    # A simulation: nothing is installed. Without the lock, so that it never
    # waits for (or blocks) a package manager running on the machine.
    proc = _run(["apt-get", "--simulate", "-o", "Debug::NoLocking=1",
                 "--no-install-recommends", "install", built.deb], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"^Inst {PACKAGE} ", proc.stdout, re.M), proc.stdout


# -- maintainer scripts ---------------------------------------------------------


def _script_lines(built: Built) -> Iterator[tuple[str, str]]:
    for name in ("preinst", "postinst", "prerm", "postrm"):
        script = built.control / name
        if script.exists():
            for line in script.read_text().splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    yield name, line.strip()


def test_maintainer_scripts_never_stop_start_or_restart_a_unit(built: Built) -> None:
    """Installing, upgrading or removing ovs-service leaves Open vSwitch running.

    Stopping or restarting openvswitch.service would take the daemons along
    (PartOf=); so no deb-systemd-invoke, invoke-rc.d, or systemctl other than
    daemon-reload.
    """
    for name, line in _script_lines(built):
        assert not re.search(r"\b(deb-systemd-invoke|invoke-rc\.d)\b", line), f"{name}: {line}"
        assert not re.search(r"(^|[;&|(]\s*)service\s", line), f"{name}: {line}"
        if re.search(r"\bsystemctl\b", line):
            assert "daemon-reload" in line, f"{name}: {line}"


def test_postinst_loads_the_units_and_creates_the_store(built: Built) -> None:
    postinst = (built.control / "postinst").read_text()
    assert "systemctl --system daemon-reload" in postinst
    assert "deb-systemd-helper enable 'openvswitch.service'" in postinst
    assert "--create ovs-service.conf" in postinst
    assert not (built.control / "preinst").exists()
    postrm = (built.control / "postrm").read_text()
    assert re.search(r'if \[ "\$1" = purge \]; then\n\s+rm -rf /var/lib/ovs-service\n', postrm)


def test_state_directory_is_created_private(built: Built, tmp_path: Path) -> None:
    from ovs_service import store

    root = tmp_path / "root"
    root.mkdir()
    conf = built.root / "usr/lib/tmpfiles.d/ovs-service.conf"
    _run(["systemd-tmpfiles", f"--root={root}", "--create", conf])
    state = root / str(store.DEFAULT_STATE_DIR).lstrip("/")
    info = state.stat()
    assert state.is_dir() and not state.is_symlink()
    assert (oct(info.st_mode & 0o7777), info.st_uid, info.st_gid) == ("0o700", 0, 0)


# -- the commands, from the package ---------------------------------------------


def _python_env(built: Built) -> dict[str, str]:
    # With python3 -S: the package and Debian's modules, nothing from
    # /usr/local (where pip puts things).
    return {"PYTHONPATH": f"{built.root / DIST_PACKAGES}:/usr/lib/python3/dist-packages"}


def test_commands_run_from_the_package(built: Built) -> None:
    env = _python_env(built)
    probe = "import ovs_service; print(ovs_service.__file__)"
    # Not from the checkout: python3 -c looks in the working directory first.
    where = _run(["/usr/bin/python3", "-S", "-c", probe], env=env, cwd=built.root)
    assert where.stdout.strip().startswith(str(built.root / DIST_PACKAGES))
    version = _run(["/usr/bin/python3", "-S", built.root / "usr/bin/ovs-service", "--version"],
                   env=env)
    assert version.stdout.strip() == f"ovs-service {_project_version()}"
    usage = _run(["/bin/sh", built.root / "usr/bin/ovs-service-hook"], env=env, check=False)
    assert usage.returncode == 2 and "usage: ovs-service-hook" in usage.stderr
    # The Python hooks, with the interpreter the front finds next to it.
    # (No switch in this run directory: "nothing to save".)
    nothing = built.root / "no-switch"
    save = _run(["/bin/sh", built.root / "usr/bin/ovs-service-hook", "save"], check=False,
                env={**env, "OVS_SERVICE_STATE_DIR": str(nothing), "OVS_RUNDIR": str(nothing)})
    assert save.returncode == 0 and "nothing to save" in save.stderr, save.stderr


def test_bash_completion_completes_from_the_package(built: Built, tmp_path: Path) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash not installed")
    command = tmp_path / "ovs-service"
    command.write_text(
        "#!/bin/sh\n"
        f"PYTHONPATH={_python_env(built)['PYTHONPATH']} exec /usr/bin/python3 -S "
        f"{built.root / 'usr/bin/ovs-service'} \"$@\"\n"
    )
    command.chmod(0o755)
    completion = built.root / "usr/share/bash-completion/completions/ovs-service"

    def complete(*words: str) -> set[str]:
        script = (
            f"source {completion}\n"
            "complete -p ovs-service\n"
            f"COMP_WORDS=(ovs-service {' '.join(repr(w) for w in words)})\n"
            f"COMP_CWORD={len(words)}\n"
            f"_ovs_service_completion {command}\n"
            'printf "%s\\n" "${COMPREPLY[@]}"\n'
        )
        out = _run(["bash", "--norc", "--noprofile", "-c", script]).stdout.splitlines()
        assert "-F _ovs_service_completion" in out[0], out
        return {w for w in out[1:] if w}

    assert complete("snapshot", "") == {"diff", "list", "show"}
    assert complete("re") == {"recover", "restart", "restore"}
    assert {"--dry-run", "--wait", "--json"} <= complete("restart", "--")


def test_man_pages_cover_the_cli(built: Built) -> None:
    pytest.importorskip("typer")
    import typer

    from ovs_service import cli, errors

    def page(name: str) -> str:
        raw = gzip.decompress((built.root / f"usr/share/man/man8/{name}.8.gz").read_bytes())
        return raw.decode()

    source = page("ovs-service")
    text = re.sub(r"\\f[BIRP]", "", source.replace("\\-", "-"))
    missing = []

    # Duck-typed: the command-line library under typer varies with its version.
    def walk(command: Any, path: str) -> None:
        if path and path not in text:
            missing.append(f"command {path!r}")
        for param in command.params:
            if param.param_type_name == "option":
                missing.extend(f"{path or 'global'} option {opt}"
                               for opt in (*param.opts, *param.secondary_opts) if opt not in text)
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(cli.app), "")
    assert not missing, f"not in ovs-service(8): {missing}"
    exit_status = source.split(".SH EXIT STATUS", 1)[1].split("\n.SH ", 1)[0]
    for code in errors.EXIT_CODES:
        assert f"\n.B {code}\n" in exit_status, f"exit status {code} not in ovs-service(8)"
    hook_page = page("ovs-service-hook")
    for hook in ("save", "prestart", "poststart", "stoppost"):
        assert f"\n.B {hook}\n" in hook_page, f"hook {hook} not in ovs-service-hook(8)"


# -- an upgrade of openvswitch-switch --------------------------------------------

DPKG_INFO = Path("/var/lib/dpkg/info")


def _systemd_sections(script: Path) -> str:
    """The sections of a maintainer script that dh_installsystemd wrote and
    that start, stop or restart units."""
    sections = re.findall(
        r"# Automatically added by dh_installsystemd/\S+\n(.*?)# End automatically added section",
        script.read_text(),
        re.S,
    )
    return "".join(s for s in sections if "deb-systemd-invoke" in s)


def test_openvswitch_switch_restarts_its_daemons_through_systemd() -> None:
    """What the upgrade test below relies on, read from this machine's scripts.

    Debian's openvswitch-switch stops ovsdb-server and ovs-vswitchd in the new
    version's preinst (upgrade) and restarts openvswitch-switch.service in its
    postinst, all through systemd, so the drop-in's ExecStop= (save) and
    ExecStartPost= (restore) run. Its init script (ovs-ctl, which saves
    flows its own way) runs only without systemd.
    """
    if not (DPKG_INFO / "openvswitch-switch.postinst").exists():
        pytest.skip("openvswitch-switch is not installed")
    preinst = _systemd_sections(DPKG_INFO / "openvswitch-switch.preinst")
    postinst = _systemd_sections(DPKG_INFO / "openvswitch-switch.postinst")
    assert re.search(r"deb-systemd-invoke stop 'ovs-vswitchd.service'", preinst), preinst
    assert re.search(r"deb-systemd-invoke stop 'ovsdb-server.service'", preinst), preinst
    assert re.search(r"_dh_action=restart\n.*deb-systemd-invoke \$_dh_action "
                     r"'openvswitch-switch.service'", postinst, re.S), postinst
    init = (DPKG_INFO / "openvswitch-switch.postinst").read_text()
    assert "invoke-rc.d --skip-systemd-native openvswitch-switch" in init


@dataclass(frozen=True)
class InstalledSwitch:
    """A systemd namespace running openvswitch-switch's units with the package's
    drop-ins, umbrella and hook, and a bridge with flows and a group."""

    ns: SystemdNamespace
    before: list[str]  # flows and groups, from ovs-ofctl

    def state(self) -> list[str]:
        dump = ["ovs-ofctl", "-O", "OpenFlow13"]
        text = self.ns.run([*dump, "dump-flows", "--no-stats", "br0"]).stdout
        text += self.ns.run([*dump, "dump-groups", "br0"]).stdout
        # Without the "OFPST_... reply" headers (dump-flows prints none).
        lines = [ln.strip() for ln in text.splitlines() if " reply (" not in ln]
        return sorted(ln for ln in lines if ln)

    def active(self, unit: str) -> str:
        return self.ns.systemctl("is-active", unit, check=False).stdout.strip()


PACKAGE_INSIDE = "/run/ovs-service-package"


@pytest.fixture
def installed_switch(built: Built) -> Iterator[InstalledSwitch]:
    """As after `apt install ovs-service` on a running switch, without dpkg.

    The package's units go to /run/systemd/system and its code to /run, both
    private to the namespace; ovs-service-hook runs that code with Debian's
    modules only. The umbrella is enabled by the postinst but not started,
    as here.
    """
    if not (DPKG_INFO / "openvswitch-switch.postinst").exists():
        pytest.skip("openvswitch-switch is not installed")
    units = [built.root / UNIT_DIR.lstrip("/") / name for name in
             ("openvswitch.service", "ovs-vswitchd.service.d", "ovsdb-server.service.d")]
    with booted(own_code=False) as ns:
        for path in sorted(built.root.rglob("*")):
            rel = path.relative_to(built.root).as_posix()
            if path.is_file() and rel.startswith((DIST_PACKAGES, "usr/bin/")):
                ns.write_file(f"{PACKAGE_INSIDE}/{rel}", path.read_text(),
                              mode=path.stat().st_mode & 0o777)
        ns.shadow_command(
            "ovs-service-hook",
            "#!/bin/sh\n"
            f"PYTHONPATH={PACKAGE_INSIDE}/{DIST_PACKAGES}:/usr/lib/python3/dist-packages \\\n"
            f'    exec /bin/sh {PACKAGE_INSIDE}/usr/bin/ovs-service-hook "$@"\n',
        )
        ns.install_units(units)
        ns.systemctl("start", "openvswitch-switch.service")
        ns.settle()
        ns.run(["ovs-vsctl", "--timeout=20", "add-br", "br0", "--",
                "set", "bridge", "br0", "datapath_type=netdev",
                "protocols=OpenFlow10,OpenFlow13"])  # fmt: skip
        ns.run(["ovs-ofctl", "-O", "OpenFlow13", "add-group", "br0",
                "group_id=7,type=all,bucket=actions=output:LOCAL"])  # fmt: skip
        for flow in ("table=0,priority=100,ip,actions=resubmit(,3)",
                     "table=3,priority=77,ip,nw_dst=10.9.8.7,actions=group:7",
                     "table=3,priority=1,actions=drop"):  # fmt: skip
            ns.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "br0", flow])
        switch = InstalledSwitch(ns, [])
        yield InstalledSwitch(ns, switch.state())


@pytest.mark.systemd
@pytest.mark.ovs
def test_openvswitch_switch_upgrade_keeps_the_flows(installed_switch: InstalledSwitch) -> None:
    """Debian's own upgrade steps, with the package's drop-ins and hook.

    The systemd sections of openvswitch-switch's prerm and preinst (`upgrade`)
    and postinst (`configure OLD-VERSION`) run as dpkg runs them; the flows
    and groups must be what they were, checked with ovs-ofctl.
    """
    switch, ns = installed_switch, installed_switch.ns
    version = _run(["dpkg-query", "-W", "-f=${Version}", "openvswitch-switch"]).stdout
    # This machine's policy-rc.d forbids every action (a container's); hide
    # it, inside only, so that deb-systemd-invoke acts as on a host.
    if Path("/usr/sbin/policy-rc.d").exists():
        ns.run(["mount", "--bind", "/dev/null", "/usr/sbin/policy-rc.d"])
    old = ns.main_pid("ovs-vswitchd.service")

    def maintainer_script(name: str, *args: str) -> None:
        code = _systemd_sections(DPKG_INFO / f"openvswitch-switch.{name}")
        ns.run(["sh", "-ec", code, name, *args], timeout=300)
        ns.settle()

    maintainer_script("prerm", "upgrade", version)
    maintainer_script("preinst", "upgrade", version)
    assert switch.active("ovs-vswitchd") != "active"
    pending = ns.path("/var/lib/ovs-service/pending")
    assert pending.exists(), ns.journal("ovs-vswitchd.service")
    # (dpkg unpacks the new version here.)
    maintainer_script("postinst", "configure", version)

    journal = ns.journal("ovs-vswitchd.service")
    new = ns.main_pid("ovs-vswitchd.service")
    assert new and new != old, journal
    assert switch.state() == switch.before, journal
    other_config = ns.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"]).stdout
    assert 'flow-restore-wait="true"' not in other_config
    assert not pending.exists(), journal


@pytest.mark.systemd
@pytest.mark.ovs
def test_restart_openvswitch_before_it_ever_started(installed_switch: InstalledSwitch) -> None:
    """Right after the install the umbrella is inactive; restarting it still
    restarts both daemons (PartOf=) and keeps the flows."""
    switch, ns = installed_switch, installed_switch.ns
    assert switch.active("openvswitch.service") == "inactive"
    old = {u: ns.main_pid(u) for u in ("ovsdb-server.service", "ovs-vswitchd.service")}
    ns.systemctl("restart", "openvswitch.service")
    ns.settle()
    journal = ns.journal("ovs-vswitchd.service")
    for unit, pid in old.items():
        assert ns.main_pid(unit) not in (0, pid), journal
    assert switch.active("openvswitch.service") == "active"
    assert switch.state() == switch.before, journal


@pytest.mark.systemd
@pytest.mark.ovs
def test_reloads_through_systemd_keep_the_state(installed_switch: InstalledSwitch) -> None:
    """Every reload systemd offers, with the package installed, read with ovs-ofctl.

    A meter makes the difference: ovs-save (what Debian's ExecReload=,
    `ovs-ctl restart`, keeps) saves none. `systemctl reload ovs-vswitchd` is
    refused and touches nothing (reload-or-restart restarts it, keeping the
    state); a reload of ovsdb-server restarts the database alone and leaves
    ovs-vswitchd running; `systemctl reload openvswitch-switch` (Debian's
    ovs-systemd-reload: ovs-save, then stop and start through systemctl)
    restarts it with everything kept.
    """
    switch, ns = installed_switch, installed_switch.ns
    of13 = ["ovs-ofctl", "-O", "OpenFlow13"]
    ns.run([*of13, "add-meter", "br0", "meter=5,pktps,bands=type=drop,rate=100"])
    ns.run([*of13, "add-flow", "br0", "table=3,priority=60,udp,actions=meter:5,output:LOCAL"])

    def state() -> list[str]:
        meters = ns.run([*of13, "dump-meters", "br0"]).stdout.splitlines()
        return switch.state() + sorted(m.strip() for m in meters if " reply (" not in m)

    before = state()
    assert any("meter=5" in line for line in before), before
    vswitchd = ns.main_pid("ovs-vswitchd.service")

    refused = ns.systemctl("reload", "ovs-vswitchd.service", check=False)
    ns.settle()
    assert refused.returncode != 0 and "not applicable" in refused.stderr, refused.stderr
    assert ns.main_pid("ovs-vswitchd.service") == vswitchd
    assert state() == before

    ovsdb = ns.main_pid("ovsdb-server.service")
    ns.systemctl("reload", "ovsdb-server.service")
    ns.settle()
    assert ns.main_pid("ovsdb-server.service") not in (0, ovsdb), ns.journal("ovsdb-server.service")
    assert ns.main_pid("ovs-vswitchd.service") == vswitchd, ns.journal("ovs-vswitchd.service")
    assert state() == before

    # What the refusal points to: a restart, through the hooks.
    ns.systemctl("reload-or-restart", "ovs-vswitchd.service")
    ns.settle()
    restarted = ns.main_pid("ovs-vswitchd.service")
    assert restarted not in (0, vswitchd), ns.journal("ovs-vswitchd.service")
    assert state() == before
    vswitchd = restarted

    ns.systemctl("reload", "openvswitch-switch.service")
    ns.settle()
    journal = ns.journal("ovs-vswitchd.service")
    assert ns.main_pid("ovs-vswitchd.service") not in (0, vswitchd), journal
    assert state() == before, journal
    other_config = ns.run(["ovs-vsctl", "get", "Open_vSwitch", ".", "other_config"]).stdout
    assert 'flow-restore-wait="true"' not in other_config


# What ovs-ctl prints when it starts or stops ovs-vswitchd (in the unit's journal).
OVS_CTL_START = re.compile(r"ovs-ctl\[\d+\]: Starting ovs-vswitchd")
OVS_CTL_STOP = re.compile(r"ovs-ctl\[\d+\]: Exiting ovs-vswitchd")
FAST_DROPIN = "ovs-service.fast.conf"


# (ovs-ctl's line; systemd's says "Starting ovsdb-server.service".)
OVS_CTL_DB_START = re.compile(r"\]: Starting ovsdb-server\.$", re.MULTILINE)
MANAGERS = "db:Open_vSwitch,Open_vSwitch,manager_options"


def _database(ns: SystemdNamespace) -> list[str]:
    """What ovs-ctl's start records in the database, and the remotes served."""
    got = ns.run(["ovs-vsctl", "--timeout=10", "get", "Open_vSwitch", ".", "ovs_version",
                  "db_version", "external_ids:system-id"]).stdout.split()
    remotes = ns.run(["ovs-appctl", "-t", "ovsdb-server", "ovsdb-server/list-remotes"]).stdout
    return got + sorted(remotes.split())


def _restart_keeps_the_flows(switch: InstalledSwitch) -> str:
    """`systemctl restart openvswitch`; the daemons' journal lines it wrote."""
    ns = switch.ns
    old = [ns.main_pid(u) for u in ("ovs-vswitchd.service", "ovsdb-server.service")]
    database = _database(ns)
    assert MANAGERS in database and '""' not in database, database
    cursor = ns.run(["journalctl", "-n", "0", "--show-cursor", "--quiet"],
                    check=False).stdout.strip().removeprefix("-- cursor: ")
    ns.systemctl("restart", "openvswitch.service")
    ns.settle()
    journal = ns.journal(None, since_cursor=cursor or None)
    new = [ns.main_pid(u) for u in ("ovs-vswitchd.service", "ovsdb-server.service")]
    assert all(n not in (0, o) for n, o in zip(new, old, strict=True)), journal
    assert switch.state() == switch.before, journal
    assert _database(ns) == database, journal
    return journal


@pytest.mark.systemd
@pytest.mark.ovs
def test_fast_start_is_the_default_and_the_way_back_is_debians(
        installed_switch: InstalledSwitch) -> None:
    """With the package installed, Debian's ovs-vswitchd.service starts and
    stops the daemon directly, not through ovs-ctl, and ovsdb-server.service
    runs ovs-ctl's start only on the first start of a boot; masking the fast drop-ins
    as ovs-service(8) says gives Debian's ovs-ctl start and stop back, and the
    flows are still kept. Read from systemd and from the unit's journal."""
    switch, ns = installed_switch, installed_switch.ns
    exec_start = ns.show("ovs-vswitchd.service", "ExecStart")
    assert "path=/usr/sbin/ovs-vswitchd" in exec_start, exec_start
    exec_stop = ns.show("ovsdb-server.service", "ExecStop")
    assert "path=/usr/bin/ovs-appctl" in exec_stop and "ovs-ctl" not in exec_stop, exec_stop
    journal = _restart_keeps_the_flows(switch)
    assert not OVS_CTL_START.search(journal) and not OVS_CTL_STOP.search(journal), journal
    # The first start of the boot (the fixture's) ran ovs-ctl for the
    # database; this one ran the daemon alone, and the database is the same.
    assert not OVS_CTL_DB_START.search(journal), journal
    assert "ovs-service-hook ovsdb-start: starting ovsdb-server as ovs-ctl" in journal, journal

    # The way back, in /etc/systemd/system: made private to the namespace
    # (a copy bound over it) so that the machine's own stays as it is.
    etc = "/etc/systemd/system"
    ns.run(["sh", "-ec", f"mkdir -p /run/etc-systemd && cp -a {etc}/. /run/etc-systemd/ && "
            f"mount --bind /run/etc-systemd {etc}"])
    for unit in ("ovs-vswitchd", "ovsdb-server"):
        ns.run(["mkdir", "-p", f"{etc}/{unit}.service.d"])
        ns.run(["ln", "-sf", "/dev/null", f"{etc}/{unit}.service.d/{FAST_DROPIN}"])
    ns.systemctl("daemon-reload")
    exec_start = ns.show("ovs-vswitchd.service", "ExecStart")
    assert "path=/usr/share/openvswitch/scripts/ovs-ctl" in exec_start, exec_start
    assert "ovs-service-hook" in ns.show("ovs-vswitchd.service", "ExecStop")
    journal = _restart_keeps_the_flows(switch)
    assert OVS_CTL_START.search(journal) and OVS_CTL_STOP.search(journal), journal
    assert OVS_CTL_DB_START.search(journal), journal
