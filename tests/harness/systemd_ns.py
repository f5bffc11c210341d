"""A real systemd, booted as PID 1 of a private PID + mount namespace, for tests.

    with SystemdNamespace() as ns:
        ns.install_units(["units/ovs-vswitchd.service"])
        ns.systemctl("start", "ovs-vswitchd")
        assert ns.main_pid("ovs-vswitchd") > 0

`systemd_boot.sh` (next to this file) gives the namespace private tmpfs on
/run, /tmp, /var/tmp, the Open vSwitch folders and /var/lib/ovs-service, a
minimal target (bus and journal only), masks for every unit the machine has
enabled, no generators, its own child cgroup, a private /sys/fs/cgroup
tmpfs, a read-only /proc/sys while it boots and a pseudo-terminal (read
here, see `console_log`) as /dev/console; then it execs systemd. Everything
else -- /usr, /etc, /sys, /dev -- is the machine's, so tests must never
write there from inside; `install_units` writes to /run only.

The network namespace is private by default: Open vSwitch's netdev datapath
creates tap devices (`ovs-netdev`, and one per bridge) that would clash with
any other switch on the machine. `network="host"` shares the machine's instead.
Either way, traffic tests create their own network namespaces (inside, with
`ns.run(["ip", "netns", "add", ...])`, or outside, moving a link in with
`ip link set DEV netns <ns.pid>`).

Files the namespace must read have to live outside /tmp and /var/tmp (hidden
by tmpfs inside): pass them in with `install_units`, `write_file` or
`shadow_command`, which write through /proc/PID/root.

`booted()` boots one for a `with` block and checks nothing is left behind;
`tests/lanes/conftest.py`'s `lane` fixture builds the switch on one. Tests
using them carry the `systemd` and `root` markers. Boot from the main thread:
the namespace dies with the thread that started it (so also when the test
process is killed).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.harness import REPO

BOOT_SCRIPT = Path(__file__).resolve().with_name("systemd_boot.sh")
# The checkout whose code runs inside (`own_code`), at the same path as here.
SOURCE = REPO
# Debian's interpreter: the namespace runs Debian's Python libraries.
INNER_PYTHON = "/usr/bin/python3"
SYSTEMD = Path("/lib/systemd/systemd")
INNER_UNIT_DIR = "/run/systemd/system"
# Searched before /usr/local/bin by systemd for bare command names and by the
# default PATH; the namespace gets its own tmpfs there for stand-in commands.
INNER_SHADOW_DIR = "/usr/local/sbin"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_STATES = ("running", "degraded")
# Each namespace's cgroup is CGROUP_PREFIX.<pid of the test process>.<random>.
CGROUP_PREFIX = "ovs-service-test"
# The namespace's own tmpfs mounts (see systemd_boot.sh): the only places
# files are written to from here.
PRIVATE_DIRS = (
    "/run", "/tmp", "/var/tmp", "/etc/openvswitch", "/var/lib/openvswitch",
    "/var/log/openvswitch", "/var/lib/ovs-service",
    "/var/lib/prometheus/node-exporter",  # only where the machine has it
)  # fmt: skip


class SystemdNamespaceError(RuntimeError):
    """The namespace did not boot, did not answer, or did not go away."""


class CommandError(SystemdNamespaceError):
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        super().__init__(
            f"{shlex.join(proc.args)} failed (exit {proc.returncode}) in the namespace:\n"
            f"{proc.stderr.strip() or proc.stdout.strip() or '(no output)'}"
        )


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _cgroup_bases() -> list[Path]:
    """Where the boot script creates its cgroup (same rule as the script)."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    named = [ln.split(":", 2)[2] for ln in lines if ln.split(":", 2)[1] == "name=systemd"]
    if named and Path("/sys/fs/cgroup/systemd").is_dir():
        base = named[0].rstrip("/")
        roots = [Path("/sys/fs/cgroup/systemd")]
        if Path("/sys/fs/cgroup/unified/cgroup.procs").exists():
            roots.append(Path("/sys/fs/cgroup/unified"))
    else:
        unified = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
        base = unified[0].rstrip("/") if unified else ""
        roots = [Path("/sys/fs/cgroup")]
    return [Path(f"{root}{base}") for root in roots]


def _cgroup_dirs(name: str) -> list[Path]:
    return [base / name for base in _cgroup_bases()]


def _remove_cgroup_tree(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _sweep_stale_cgroups() -> None:
    """Remove the empty cgroups of namespaces whose test process was killed."""
    for base in _cgroup_bases():
        for entry in base.glob(f"{CGROUP_PREFIX}.*"):
            owner = entry.name.split(".")[1]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                _remove_cgroup_tree(entry)


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


class SystemdNamespace:
    """systemd as PID 1 of a new PID + mount (+ network, UTS) namespace.

    `pid` is that PID 1 as seen from outside. Every command goes in through
    `nsenter`; files go in through /proc/PID/root.
    """

    def __init__(
        self,
        *,
        network: Literal["private", "host"] = "private",
        own_code: bool = True,
        boot_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.network = network
        self.own_code = own_code
        self.boot_timeout = boot_timeout
        self.stop_timeout = stop_timeout
        self.cgroup_name = f"{CGROUP_PREFIX}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        self.pid = 0
        self.boot_seconds = 0.0
        self.system_state = ""
        self._unshare: subprocess.Popen[bytes] | None = None
        self._pidns: str | None = None
        self._console = bytearray()
        self._console_fd = -1
        self._console_thread: threading.Thread | None = None
        self._shadowing = False

    # -- life cycle -------------------------------------------------------

    def __enter__(self) -> SystemdNamespace:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SystemdNamespace:
        if os.geteuid() != 0:
            raise SystemdNamespaceError("booting systemd in a namespace needs root")
        _sweep_stale_cgroups()
        began = time.monotonic()
        argv = self.unshare_argv() + self.boot_argv()
        # The namespace's console is a pseudo-terminal read here: systemd
        # would otherwise write to the machine's /dev/console.
        master, slave = os.openpty()
        try:
            self._unshare = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(slave)
        self._console_fd = master
        self._console_thread = threading.Thread(target=self._read_console, daemon=True)
        self._console_thread.start()
        try:
            self.pid = self._find_init()
            self._pidns = _pid_namespace(self.pid)
            self._wait_ready(began)
            if self.own_code:
                self._use_own_code()
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - began
        return self

    def unshare_argv(self) -> list[str]:
        """The new namespaces; `boot_argv` runs as their PID 1."""
        return [
            # If the test process dies, unshare dies, and --kill-child takes
            # the namespace's PID 1, and with it every process inside, along.
            "setpriv", "--pdeathsig", "KILL", "--",
            "unshare", "--fork", "--pid", "--mount", "--mount-proc",
            "--propagation", "private", "--uts", "--kill-child=SIGKILL",
            *(["--net"] if self.network == "private" else []),
        ]  # fmt: skip

    def boot_argv(self) -> list[str]:
        """PID 1's command: the boot script, which execs the machine's systemd."""
        return [str(BOOT_SCRIPT), self.cgroup_name, *([str(SOURCE)] if self.own_code else [])]

    def _use_own_code(self) -> None:
        """Make `ovs-service` and its hooks inside run this checkout's code.

        Whatever else is installed on the machine (an editable install of
        another checkout, Debian's package): the commands come first on PATH
        and in systemd's search path, and every unit the manager starts from
        now on imports `ovs_service` from here.
        """
        source = str(SOURCE)
        self.shadow_command("ovs-service", (
            f"#!{INNER_PYTHON} -P\n"
            "import sys\n"
            f"sys.path.insert(0, {source!r})\n"
            "from ovs_service.cli import main\n"
            "sys.exit(main())\n"
        ))
        self.shadow_command("ovs-service-hook", (SOURCE / "bin" / "ovs-service-hook").read_text())
        self.systemctl("set-environment", f"PYTHONPATH={source}")

    def _read_console(self) -> None:
        while True:
            try:
                chunk = os.read(self._console_fd, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            self._console += chunk

    def _alive(self) -> bool:
        return self._unshare is not None and self._unshare.poll() is None

    def _deadline_error(self, what: str) -> SystemdNamespaceError:
        tail = self.console_log()[-4000:]
        return SystemdNamespaceError(f"{what}\n--- namespace console ---\n{tail}")

    def _find_init(self) -> int:
        assert self._unshare is not None
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            kids = _children(self._unshare.pid)
            if kids:
                return kids[0]
            if not self._alive():
                raise self._deadline_error(
                    f"unshare exited ({self._unshare.returncode}) before the boot script ran"
                )
            time.sleep(0.01)
        raise self._deadline_error("no PID 1 in the new namespace")

    def _wait_ready(self, began: float) -> None:
        deadline = began + self.boot_timeout
        state = ""
        while time.monotonic() < deadline:
            if not self._alive():
                raise self._deadline_error("systemd exited during boot")
            if self._is_systemd():
                proc = self.run(["systemctl", "is-system-running"], check=False, timeout=10)
                state = proc.stdout.strip()
                if state in READY_STATES:
                    self.system_state = state
                    # Booted: lift the read-only /proc/sys the boot script set.
                    self.run(["umount", "--lazy", "/proc/sys"])
                    return
            time.sleep(0.05)
        raise self._deadline_error(
            f"systemd not ready after {self.boot_timeout}s (state {state!r})"
        )

    def _is_systemd(self) -> bool:
        try:
            return os.path.realpath(f"/proc/{self.pid}/exe") == str(SYSTEMD.resolve())
        except OSError:
            return False

    def stop(self) -> None:
        """Power off (SIGRTMIN+4 to PID 1), kill if that hangs, and clean up."""
        proc = self._unshare
        if proc is not None and proc.poll() is None:
            if self.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGRTMIN + 4)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                # Killing PID 1 of a PID namespace kills everything in it.
                if self.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        if self._console_thread is not None:
            self._console_thread.join(timeout=5)
            self._console_thread = None
        if self._console_fd >= 0:
            os.close(self._console_fd)
            self._console_fd = -1
        self._wait_namespace_empty(timeout=10)
        for top in _cgroup_dirs(self.cgroup_name):
            _remove_cgroup_tree(top)

    def _wait_namespace_empty(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.leftovers(cgroups=False) and time.monotonic() < deadline:
            time.sleep(0.05)

    def leftovers(self, *, cgroups: bool = True) -> list[str]:
        """What is left of the namespace: processes inside it, its cgroup folders."""
        found: list[str] = []
        if self._unshare is not None and self._unshare.poll() is None:
            found.append(f"unshare (pid {self._unshare.pid}) still running")
        if self._pidns is not None:
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit() and _pid_namespace(int(entry.name)) == self._pidns:
                    found.append(f"process {entry.name} still in the namespace")
        if cgroups:
            found += [
                f"cgroup {d} still exists" for d in _cgroup_dirs(self.cgroup_name) if d.exists()
            ]
        return found

    # -- talking to it ----------------------------------------------------

    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` wrapped to run inside the namespace (root folder as cwd)."""
        if not self.pid:
            raise SystemdNamespaceError("namespace not started")
        return ["nsenter", "-t", str(self.pid), "-m", "-p", "-u", "-n", "--wdns=/", "--", *argv]

    def inner_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a command run inside: a login's, plus `env`; never
        the test process's own (its private folders do not exist in there)."""
        return {
            "PATH": INNER_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/root",
            "TERM": "dumb",
            "SYSTEMD_COLORS": "0",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_LOG_COLOR": "0",
            **({"PYTHONPATH": str(SOURCE)} if self.own_code else {}),
            **(env or {}),
        }

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
        """Start `argv` inside, in the background, with `inner_env`; `kwargs` go to Popen."""
        return subprocess.Popen(self.nsenter_argv([str(a) for a in argv]),
                                env=self.inner_env(), text=True, **kwargs)

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside; with `check`, a non-zero exit raises CommandError."""
        proc = subprocess.run(
            self.nsenter_argv([str(a) for a in argv]),
            input=input,
            capture_output=True,
            text=True,
            env=self.inner_env(env),
            timeout=timeout,
            check=False,
        )
        proc.args = list(argv)
        if check and proc.returncode != 0:
            raise CommandError(proc)
        return proc

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", "--no-ask-password", *args], check=check)

    def python(self, code: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run Debian's python3 inside (pystemd there talks to this systemd's bus)."""
        return self.run(["/usr/bin/python3", "-c", code], check=check)

    def settle(self, timeout: float = 120) -> None:
        """Wait until systemd has no job left.

        `systemctl stop X` waits for X's own job only: jobs it propagates
        (PartOf=, Requires=) may still run when it returns.
        """
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.systemctl("list-jobs", "--no-legend", "--plain").stdout.strip()
            if not jobs:
                return
            if time.monotonic() > deadline:
                raise SystemdNamespaceError(f"jobs still queued after {timeout}s:\n{jobs}")
            time.sleep(0.05)

    def show(self, unit: str, prop: str) -> str:
        return self.systemctl("show", "--value", "-p", prop, unit).stdout.strip()

    def main_pid(self, unit: str) -> int:
        """MainPID of `unit`, as seen inside the namespace (0 if none)."""
        return int(self.show(unit, "MainPID") or 0)

    def journal(self, unit: str | None = None, *, since_cursor: str | None = None) -> str:
        argv = ["journalctl", "--no-pager", "--quiet", "-o", "short-monotonic"]
        if unit:
            argv += ["-u", unit]
        if since_cursor:
            argv += ["--after-cursor", since_cursor]
        return self.run(argv, check=False).stdout

    def console_log(self) -> str:
        return self._console.decode(errors="replace")

    # -- files ------------------------------------------------------------

    def path(self, inner: str) -> Path:
        """The outside path of `inner` (an absolute path inside the namespace)."""
        return Path(f"/proc/{self.pid}/root") / inner.lstrip("/")

    def _check_private(self, inner: str) -> None:
        private = PRIVATE_DIRS + ((INNER_SHADOW_DIR,) if self._shadowing else ())
        if not any(inner.startswith(d + "/") for d in private):
            raise SystemdNamespaceError(f"{inner}: not on a private mount of the namespace")

    def write_file(self, inner: str, text: str, mode: int = 0o644) -> Path:
        """Write a file inside, on one of the namespace's private mounts only."""
        self._check_private(inner)
        target = self.path(inner)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A mask (a link to /dev/null) is replaced, never written through.
        if target.is_symlink():
            target.unlink()
        target.write_text(text)
        target.chmod(mode)
        return target

    def install_units(self, paths: Iterable[Path | str], *, reload: bool = True) -> list[str]:
        """Copy unit files and drop-in folders (`NAME.d/`) into /run/systemd/system.

        /run is a private tmpfs: the units go away with the namespace. They
        take precedence over the machine's /lib/systemd/system.
        """
        installed = []
        for src in map(Path, paths):
            if src.is_dir():
                for conf in sorted(src.glob("*.conf")):
                    self.write_file(f"{INNER_UNIT_DIR}/{src.name}/{conf.name}", conf.read_text())
            else:
                self.write_file(f"{INNER_UNIT_DIR}/{src.name}", src.read_text())
            installed.append(src.name)
        if reload:
            self.systemctl("daemon-reload")
        return installed

    def shadow_command(self, name: str, text: str) -> str:
        """Put an executable `name` inside only, found before the machine's own.

        Mounts a private tmpfs over /usr/local/sbin (empty on Debian; what is
        there is copied over first), which comes first both in systemd's
        search path for bare command names and in PATH.
        """
        if not self._shadowing:
            stash = "/run/ovs-service-test/sbin-stash"
            self.run(["mkdir", "-p", stash])
            self.run(["cp", "-a", f"{INNER_SHADOW_DIR}/.", stash])
            self.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", INNER_SHADOW_DIR])
            self.run(["cp", "-a", f"{stash}/.", INNER_SHADOW_DIR])
            self._shadowing = True
        self.write_file(f"{INNER_SHADOW_DIR}/{name}", text, mode=0o755)
        return f"{INNER_SHADOW_DIR}/{name}"


def _require_systemd_lane() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for tool in (SYSTEMD, Path("/usr/bin/unshare"), Path("/usr/bin/nsenter")):
        if not tool.exists():
            pytest.skip(f"{tool} not installed")


@contextlib.contextmanager
def booted(**kwargs: object) -> Iterator[SystemdNamespace]:
    """Boot, yield, and always power off and check nothing is left behind."""
    _require_systemd_lane()
    ns = SystemdNamespace(**kwargs)  # type: ignore[arg-type]
    try:
        with ns:
            yield ns
    finally:
        left = ns.leftovers()
        if left:
            raise SystemdNamespaceError(f"systemd namespace left behind: {left}")
