"""A qemu guest with Debian's kernel, for tests that need the real openvswitch module.

The guest boots the kernel that `linux-image-amd64` names, under software
emulation (KVM guests hang on these machines).  Its root file system is the
host's, shared read-only over virtio-9p under a tmpfs overlay, so it runs the
same Python, Open vSwitch and checkout as the host; its /run, /tmp and Open
vSwitch folders start empty.  Commands go to an agent in the guest
(`tests/harness/vm/agent.py`) over a virtio-serial port and come back as `Result`s.

    with Guest() as guest:                      # or the `guest` fixture
        guest.run(["modprobe", "openvswitch"])
        out = guest.sh("ovs-dpctl show").stdout

`Guest(mode="systemd")` boots systemd as PID 1 instead (minimal target:
journald, D-Bus, the agent) and waits until it reports the system running.

`Guest(root=PATH)` boots another Debian root of the host (a folder, e.g. the
Debian 13 root of `tests.harness.debroot`) under the overlay instead of the
host's root: its own systemd, Python and Open vSwitch run, with the
checkout's code and the downloaded kernel's modules from the host.

qemu is a child process, stopped by its pid when the guest is left, and
killed by the kernel if the test process dies first.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import pytest

from . import build

log = logging.getLogger("ovsvm.guest")

Mode = Literal["plain", "systemd"]
QEMU = "qemu-system-x86_64"
GUEST_PYTHON = "/usr/bin/python3"
PR_SET_PDEATHSIG = 1


class GuestError(Exception):
    """The guest could not be booted or reached."""


class GuestBootFailed(GuestError):
    pass


class GuestTimeout(GuestError):
    pass


class GuestCommandFailed(GuestError):
    def __init__(self, result: Result) -> None:
        self.result = result
        status = "timed out" if result.timed_out else f"exit {result.returncode}"
        super().__init__(
            f"in the guest: {shlex.join(result.argv)} failed ({status})\n"
            f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
        )


@dataclass(frozen=True)
class Result:
    """What a command run in the guest did."""

    argv: tuple[str, ...]
    returncode: int | None
    """None when the guest-side timeout killed it."""
    stdout: str
    stderr: str
    seconds: float
    """Wall time in the guest, from start to exit."""
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def check(self) -> Result:
        if not self.ok:
            raise GuestCommandFailed(self)
        return self


class Guest:
    """One booted guest; a context manager.  Not thread-safe: one command at a time."""

    def __init__(
        self,
        mode: Mode = "plain",
        *,
        memory_mb: int = 1024,
        cpus: int = 2,
        cpu_model: str = "max",
        boot_timeout: float = 300.0,
        command_timeout: float = 120.0,
        kernel_args: Sequence[str] = (),
        own_code: bool = True,
        root: Path | None = None,
    ) -> None:
        self.mode = mode
        self.memory_mb = memory_mb
        self.cpus = cpus
        self.cpu_model = cpu_model
        self.boot_timeout = boot_timeout
        self.command_timeout = command_timeout
        self.kernel_args = tuple(kernel_args)
        # The checkout's ovs-service first on PATH and on the units' PYTHONPATH.
        self.own_code = own_code
        # Another root of the host below the overlay (ovsvm.lower=), or the host's own.
        self.root = root
        self.boot_seconds: float | None = None
        """From starting qemu to the agent answering (systemd: to the system running)."""
        self.system_state: str | None = None
        """systemd mode: what `systemctl is-system-running --wait` said."""
        self.kernel_version: str | None = None
        self._workdir: Path | None = None
        self._qemu: subprocess.Popen[bytes] | None = None
        self._qemu_log: IO[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._next_id = 0

    # -- life cycle -------------------------------------------------------------

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """qemu's process id while it runs."""
        return self._qemu.pid if self._qemu else None

    @property
    def console_path(self) -> Path:
        assert self._workdir is not None, "guest not started"
        return self._workdir / "console.log"

    def console(self, lines: int = 60) -> str:
        """The last `lines` of the guest's serial console (kernel, init, systemd)."""
        try:
            text = self.console_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> None:
        artifacts = build.ensure_built()
        self.kernel_version = artifacts.kernel_version
        repo = str(build.REPO)
        if any(c.isspace() for c in repo + str(artifacts.modules)):
            raise GuestError(f"the checkout's path must not contain blanks: {repo!r}")
        lower: list[str] = []
        if self.root is not None:
            root = self.root.resolve()
            if any(c.isspace() for c in str(root)):
                raise GuestError(f"the root's path must not contain blanks: {str(root)!r}")
            if not (root / GUEST_PYTHON.lstrip("/")).exists():
                raise GuestError(f"{root}: no {GUEST_PYTHON} (not a Debian root?)")
            lower = [f"ovsvm.lower={root}"]
        # A short path: unix socket names are limited to 108 bytes.
        self._workdir = Path(tempfile.mkdtemp(prefix="ovsvm-"))
        agent_socket = self._workdir / "agent.sock"
        append = [
            "console=ttyS0",
            "panic=-1",
            "loglevel=4",
            "mitigations=off",
            f"ovsvm.mode={self.mode}",
            f"ovsvm.repo={repo}",
            f"ovsvm.modules={artifacts.modules}",
            f"ovsvm.python={GUEST_PYTHON}",
            f"ovsvm.owncode={int(self.own_code)}",
            *lower,
            *self.kernel_args,
        ]
        argv = [
            QEMU,
            "-accel", "tcg",
            "-cpu", self.cpu_model,
            "-smp", str(self.cpus),
            "-m", str(self.memory_mb),
            "-nodefaults",
            "-no-user-config",
            "-display", "none",
            "-no-reboot",
            "-kernel", str(artifacts.vmlinuz),
            "-initrd", str(artifacts.initramfs),
            "-append", " ".join(append),
            "-chardev", f"file,id=console,path={self.console_path}",
            "-serial", "chardev:console",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={agent_socket},server=on,wait=off",
            "-device", "virtserialport,chardev=agent,name=ovsvm.agent",
        ]  # fmt: skip
        log.info("boot guest (%s%s): %s", self.mode, f", root {self.root}" if self.root else "",
                 shlex.join(argv))
        start = time.monotonic()
        self._qemu_log = open(self._workdir / "qemu.log", "wb")  # noqa: SIM115 (closed in stop)
        try:
            self._qemu = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._qemu_log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        except FileNotFoundError:
            self.stop()
            raise GuestError(f"{QEMU}: not found; install qemu-system-x86") from None
        try:
            self._connect(agent_socket, start + self.boot_timeout)
            self._request({"op": "hello"}, timeout=start + self.boot_timeout - time.monotonic())
            if self.mode == "systemd":
                state = self.run(
                    ["systemctl", "is-system-running", "--wait"],
                    timeout=max(10.0, start + self.boot_timeout - time.monotonic()),
                    check=False,
                )
                self.system_state = state.stdout.strip()
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - start
        log.info("guest up in %.1f s", self.boot_seconds)

    def stop(self) -> None:
        """Stop qemu (by its pid) and remove the guest's files.  Safe to call twice."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
        if self._qemu is not None:
            qemu, self._qemu = self._qemu, None
            if qemu.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(qemu.pid, signal.SIGTERM)
                try:
                    qemu.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(qemu.pid, signal.SIGKILL)
                    qemu.wait(timeout=10)
        if self._qemu_log is not None:
            self._qemu_log.close()
            self._qemu_log = None
        if self._workdir is not None and not os.environ.get("OVSVM_KEEP"):
            shutil.rmtree(self._workdir, ignore_errors=True)

    # -- commands ---------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
    ) -> Result:
        """Run `argv` in the guest; with `check`, raise GuestCommandFailed unless it exits 0.

        `env` is added to the guest's base environment (PATH, HOME, LANG).
        `timeout` (default: `command_timeout`) is enforced in the guest, which
        kills the command's process group, and again here with a margin.
        """
        argv = tuple(str(a) for a in argv)
        limit = self.command_timeout if timeout is None else timeout
        log.debug("guest run: %s", shlex.join(argv))
        answer = self._request(
            {
                "op": "run",
                "argv": list(argv),
                "timeout": limit,
                "input": input,
                "env": dict(env or {}),
                "cwd": cwd,
            },
            timeout=limit + 30.0,
        )
        result = Result(
            argv=argv,
            returncode=answer["returncode"],
            stdout=answer["stdout"],
            stderr=answer["stderr"],
            seconds=answer["seconds"],
            timed_out=answer["timed_out"],
        )
        return result.check() if check else result

    def sh(self, script: str, **options: Any) -> Result:
        """Run a shell script (`sh -ec`) in the guest; options as for `run`."""
        return self.run(["sh", "-ec", script], **options)

    def python(self, code: str, **options: Any) -> Result:
        """Run Python code with the project importable (the checkout on PYTHONPATH)."""
        env = {"PYTHONPATH": str(build.REPO), **options.pop("env", {})}
        return self.run([GUEST_PYTHON, "-c", code], env=env, **options)

    def spawn(self, argv: Sequence[str], output: str) -> int:
        """Start `argv` in the background in the guest, output to the file `output`; its pid.

        For what must run while other commands do (a ping across a reload):
        read `output` later, stop it with `run(["kill", str(pid)])`.
        """
        script = 'output=$1; shift; "$@" </dev/null >"$output" 2>&1 & echo $!'
        started = self.run(["sh", "-c", script, "spawn", output, *argv])
        return int(started.stdout)

    def journal(self, lines: int = 200, *units: str) -> str:
        """systemd mode: the end of this boot's journal, of `units` or of everything."""
        argv = ["journalctl", "-b", "--no-pager", "-o", "short-monotonic", "-n", str(lines)]
        for unit in units:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def write_file(self, path: str, data: bytes | str, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._request(
            {"op": "write", "path": path, "data": base64.b64encode(raw).decode(), "mode": mode},
            timeout=self.command_timeout,
        )

    def read_file(self, path: str) -> bytes:
        answer = self._request({"op": "read", "path": path}, timeout=self.command_timeout)
        return base64.b64decode(answer["data"])

    # -- the channel ------------------------------------------------------------

    def _connect(self, path: Path, deadline: float) -> None:
        while True:
            self._check_alive()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise GuestBootFailed(
                        f"qemu opened no agent socket\n{self.console()}"
                    ) from None
                time.sleep(0.05)
                continue
            self._sock = sock
            return

    def _check_alive(self) -> None:
        if self._qemu is None:
            raise GuestError("guest not started (or stopped)")
        if self._qemu.poll() is not None:
            qemu_log = ""
            if self._workdir:
                with contextlib.suppress(OSError):
                    qemu_log = (self._workdir / "qemu.log").read_text(errors="replace")
            raise GuestBootFailed(
                f"qemu exited with {self._qemu.returncode}\n{qemu_log}\n"
                f"--- console\n{self.console()}"
            )
        if "ovsvm-init: FAILED" in self.console(200):
            raise GuestBootFailed(f"the guest's init failed\n{self.console()}")

    def _lost_channel(self) -> None:
        """The agent's socket closed: say why, from qemu's exit and the console."""
        if self._qemu is not None:
            # qemu closes the socket a moment before it exits.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._qemu.wait(timeout=5)
        self._check_alive()
        raise GuestError(f"the guest closed the agent channel\n{self.console()}")

    def _request(self, request: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        if self._sock is None:
            raise GuestError("guest not started (or stopped)")
        self._next_id += 1
        request = {"id": self._next_id, **request}
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError:
            self._lost_channel()
        deadline = time.monotonic() + timeout
        while True:
            line = self._read_line(deadline, request)
            answer: dict[str, Any] = json.loads(line)
            if answer.get("id") != request["id"]:
                continue  # the late answer to a request we gave up on
            if "error" in answer:
                raise GuestError(f"agent: {request['op']}: {answer['error']}")
            return answer

    def _read_line(self, deadline: float, request: dict[str, Any]) -> bytes:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestTimeout(
                    f"no answer from the guest to {_describe(request)}\n"
                    f"--- console\n{self.console()}"
                )
            # Wake up now and then to notice a dead qemu or a failed init.
            self._sock.settimeout(min(remaining, 1.0))
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                self._check_alive()
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._lost_channel()
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line


def _describe(request: dict[str, Any]) -> str:
    if request.get("op") == "run":
        return shlex.join(request["argv"])
    return str(request.get("op"))


def _die_with_parent() -> None:
    """In the qemu child: get SIGKILL when the test process dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


Scope = Literal["session", "package", "module", "class", "function"]


def guest_fixture(mode: Mode = "plain", *, scope: Scope = "module", **options: Any) -> Any:
    """A pytest fixture that boots a guest once per `scope` and stops it after.

    Assign it to the fixture's name in a test module (booting takes seconds
    to tens of seconds, so share it):

        guest = guest_fixture("plain")
        systemd_guest = guest_fixture("systemd", memory_mb=1536)
    """

    @pytest.fixture(scope=scope)
    def fixture() -> Iterator[Guest]:
        with Guest(mode, **options) as booted:
            yield booted

    return fixture


guest = guest_fixture("plain")
"""A plain guest: the agent is PID 1; the openvswitch module is not loaded yet."""

systemd_guest = guest_fixture("systemd")
"""systemd as PID 1 with a minimal target (journald, D-Bus, the agent), running."""
