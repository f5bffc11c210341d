"""A private Open vSwitch for tests: its own folder, network namespace and daemons.

`OvsBed` runs ovsdb-server and ovs-vswitchd (userspace `netdev` datapath) in a
fresh network namespace, with every file they use (database, sockets,
pidfiles, logs) in one temporary folder. `bed.env` redirects `ovs-vsctl`,
`ovs-ofctl` and `ovs-appctl` (and ovs-service) to that instance, so a test
never touches the machine's own switch. Daemons are stopped by pid.

Deliberately independent of the package under test: tests check ovs-service
with these helpers, so they must not share its code.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.harness import REPO

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
DAEMONS = ("ovsdb-server", "ovs-vswitchd")
TIMEOUT = 30.0


class Switch(Protocol):
    """What `canon` and `corpus` need of a switch: its tools, run against it.

    `OvsBed` (a private switch here) and `lane.NsSwitch` (the switch of a
    systemd namespace) are both one; `dir` is a folder both sides can read.
    """

    dir: Path

    def vsctl(self, *args: str, check: bool = True) -> str: ...

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str: ...

    def bridges(self) -> list[str]: ...

    def add_bridge(self, name: str, protocols: Sequence[str] | None = None,
                   ports: Mapping[str, int] | None = None,
                   datapath_type: str = "netdev") -> None: ...


class BedError(RuntimeError):
    """A command of the test bed failed; the message carries argv and stderr."""


def sh(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    check: bool = True,
    timeout: float = 300.0,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never a shell string) and return its text output."""
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        raise BedError(
            f"{shlex.join(argv)} failed (exit {proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll `predicate()` (short sleeps, growing) until true or `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while not predicate():
        if time.monotonic() > deadline:
            raise BedError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (nobody reaps detached daemons here) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat[stat.rindex(")") + 2] not in "ZX"


def kill_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM `pid`, wait for it to go, SIGKILL if it will not."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_for(f"pid {pid} to exit", lambda: not pid_alive(pid), timeout)
    except BedError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(f"pid {pid} to exit after SIGKILL", lambda: not pid_alive(pid), timeout)


_counter = itertools.count()


def unique_name(prefix: str) -> str:
    """A name no other test (or parallel run) uses; short enough for devices."""
    return f"{prefix}{os.getpid() % 10000:04d}{next(_counter):02d}{secrets.token_hex(2)}"


@dataclass
class Host:
    """A network namespace plugged into a bridge through a veth pair."""

    netns: str
    ifname: str
    address: str  # with prefix length, e.g. 10.77.0.1/24
    port: str  # the veth end that is the bridge's port
    ofport: int

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]

    def run(
        self, *argv: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return sh(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def ping(self, address: str, count: int = 1, wait: float = 1.0) -> bool:
        """One ping burst to `address`; True if any reply came back."""
        proc = self.run(
            "ping", "-n", "-q", "-c", str(count), "-W", str(wait), address, check=False
        )
        return proc.returncode == 0


@dataclass
class OvsBed:
    """A private ovsdb-server + ovs-vswitchd; use as a context manager or call start/stop."""

    base: Path | None = None
    dir: Path = field(init=False)
    netns: str = field(init=False)
    env: dict[str, str] = field(init=False)
    hosts: list[Host] = field(default_factory=list, init=False)
    _started: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.netns = unique_name("ovsbed")
        # Unix socket paths are limited to 107 bytes: keep the folder short.
        self.dir = Path(tempfile.mkdtemp(prefix="ovsbed-", dir=self.base))
        d = str(self.dir)
        self.env = {
            "OVS_RUNDIR": d,
            "OVS_DBDIR": d,
            "OVS_LOGDIR": d,
            "OVS_SYSCONFDIR": d,
        }

    # -- life cycle -----------------------------------------------------------

    def __enter__(self) -> OvsBed:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        try:
            sh(["ip", "netns", "add", self.netns])
            self._started = True
            sh(["ip", "-n", self.netns, "link", "set", "lo", "up"])
            sh(["ovsdb-tool", "create", str(self.dir / "conf.db"), str(SCHEMA)])
            self._start_daemon(
                "ovsdb-server",
                str(self.dir / "conf.db"),
                f"--remote=punix:{self.dir / 'db.sock'}",
            )
            wait_for("ovsdb-server's socket", (self.dir / "db.sock").exists)
            self.vsctl("--no-wait", "init")
            self._start_vswitchd()
        except BaseException:
            self.stop()
            raise

    def _start_daemon(self, name: str, *args: str) -> int:
        pidfile = self.dir / f"{name}.pid"
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        # Not a pipe: a detached daemon could keep it open and hang the reader.
        with open(self.dir / f"{name}.out", "ab") as out:
            proc = subprocess.run(
                [
                    "ip", "netns", "exec", self.netns,
                    name, *args,
                    f"--pidfile={pidfile}",
                    f"--log-file={self.dir / (name + '.log')}",
                    "--detach",
                    "-vconsole:off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **self.env},
                timeout=TIMEOUT,
                check=False,
            )
        if proc.returncode != 0:
            raise BedError(f"{name} did not start (exit {proc.returncode}): {self.log_tail(name)}")
        wait_for(f"{name}'s pidfile", pidfile.exists)
        pid = self.pid(name)
        assert pid is not None
        wait_for(f"{name}'s control socket", (self.dir / f"{name}.{pid}.ctl").exists)
        return pid

    def _start_vswitchd(self) -> None:
        self._start_daemon("ovs-vswitchd", f"unix:{self.dir / 'db.sock'}")
        # Writing to the database without --no-wait returns once ovs-vswitchd has
        # applied the whole configuration: bridges and ports exist again.
        self.vsctl("set", "Open_vSwitch", ".", f"external_ids:bed-sync={time.monotonic_ns()}")
        for bridge in self.bridges():
            wait_for(f"{bridge}'s OpenFlow socket", (self.dir / f"{bridge}.mgmt").exists)

    def pid(self, daemon: str) -> int | None:
        try:
            return int((self.dir / f"{daemon}.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def stop_daemon(self, daemon: str) -> None:
        pid = self.pid(daemon)
        if pid is not None:
            kill_pid(pid)

    def restart_vswitchd(self) -> None:
        """Stop ovs-vswitchd by pid and start it again on the same database."""
        self.stop_daemon("ovs-vswitchd")
        self._start_vswitchd()

    def stop(self) -> None:
        """Stop both daemons by pid, remove the namespaces and the folder; safe to repeat."""
        for daemon in reversed(DAEMONS):
            with contextlib.suppress(BedError):
                self.stop_daemon(daemon)
        for host in self.hosts:
            sh(["ip", "netns", "del", host.netns], check=False)
        self.hosts.clear()
        if self._started:
            sh(["ip", "netns", "del", self.netns], check=False)
            self._started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, daemon: str, lines: int = 20) -> str:
        texts = []
        for suffix in (".log", ".out"):
            with contextlib.suppress(FileNotFoundError):
                texts += (self.dir / (daemon + suffix)).read_text().splitlines()[-lines:]
        return "\n".join(texts)

    # -- the usual tools, pointed at this instance ---------------------------

    def vsctl(self, *args: str, check: bool = True) -> str:
        return sh(
            ["ovs-vsctl", f"--timeout={int(TIMEOUT)}", *args], env=self.env, check=check
        ).stdout

    def ofctl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return sh(["ovs-ofctl", *args], env=self.env, check=check, input=input).stdout

    def appctl(self, *args: str, target: str = "ovs-vswitchd", check: bool = True) -> str:
        return sh(
            ["ovs-appctl", f"--timeout={int(TIMEOUT)}", "-t", target, *args],
            env=self.env,
            check=check,
        ).stdout

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def add_bridge(
        self,
        name: str,
        protocols: Sequence[str] | None = None,
        ports: Mapping[str, int] | None = None,
        datapath_type: str = "netdev",
    ) -> None:
        """Create `name` with internal ports {port: ofport}, in one transaction."""
        cmd = ["add-br", name, "--", "set", "Bridge", name, f"datapath_type={datapath_type}"]
        if protocols:
            cmd.append("protocols=" + ",".join(protocols))
        for port, ofport in (ports or {}).items():
            cmd += [
                "--", "add-port", name, port,
                "--", "set", "Interface", port, "type=internal", f"ofport_request={ofport}",
            ]
        self.vsctl(*cmd)
        wait_for(f"{name}'s OpenFlow socket", (self.dir / f"{name}.mgmt").exists)

    def del_bridge(self, name: str) -> None:
        self.vsctl("--if-exists", "del-br", name)

    # -- traffic ---------------------------------------------------------------

    def add_host(self, bridge: str, address: str, ofport: int) -> Host:
        """A new namespace whose eth0 (with `address`) is plugged into `bridge` as `ofport`."""
        netns = unique_name("ovshost")
        port = unique_name("vb")  # at most 15 bytes: a device name
        sh(["ip", "netns", "add", netns])
        host = Host(netns=netns, ifname="eth0", address=address, port=port, ofport=ofport)
        self.hosts.append(host)
        sh(["ip", "-n", self.netns, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", netns])
        sh(["ip", "-n", self.netns, "link", "set", port, "up"])
        sh(["ip", "-n", netns, "link", "set", "lo", "up"])
        sh(["ip", "-n", netns, "addr", "add", address, "dev", "eth0"])
        sh(["ip", "-n", netns, "link", "set", "eth0", "up"])
        self.vsctl(
            "add-port", bridge, port, "--", "set", "Interface", port, f"ofport_request={ofport}"
        )
        return host

    def add_host_pair(
        self, bridge: str, ofports: tuple[int, int] = (101, 102), subnet: str = "10.77.0"
    ) -> tuple[Host, Host]:
        """Two hosts, SUBNET.1/24 and SUBNET.2/24, on `bridge`."""
        return (
            self.add_host(bridge, f"{subnet}.1/24", ofports[0]),
            self.add_host(bridge, f"{subnet}.2/24", ofports[1]),
        )

    def wait_ping(self, src: Host, dst: Host, timeout: float = 10.0) -> None:
        """Ping until a reply comes (ARP and learning take a moment), or fail."""
        deadline = time.monotonic() + timeout
        while not src.ping(dst.ip, wait=0.5):
            if time.monotonic() > deadline:
                raise BedError(f"{src.ip} cannot ping {dst.ip} through the bridge")


# -- the command line of ovs-service, pointed at a bed -------------------------


@dataclass(frozen=True)
class CliResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit {self.returncode}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass(frozen=True)
class Cli:
    """Runs `python -m ovs_service` against one bed, with its own snapshot store."""

    bed: OvsBed
    state_dir: Path

    def env(self) -> dict[str, str]:
        """The environment `python -m ovs_service` runs in against this bed."""
        return {
            **os.environ,
            **self.bed.env,
            "OVS_SERVICE_STATE_DIR": str(self.state_dir),
            "OVS_SERVICE_METRICS_DIR": str(self.metrics_dir),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
            ),
        }

    @property
    def metrics_dir(self) -> Path:
        """Where the CLI writes its Prometheus metrics: the bed's, never the machine's."""
        path = self.bed.dir / "metrics"
        path.mkdir(exist_ok=True)
        return path

    def __call__(self, *args: str, check: bool = True, timeout: float = 600,
                 cwd: Path | None = None) -> CliResult:
        argv = (sys.executable, "-m", "ovs_service", *args)
        env = self.env()
        # A test must never reach a switch other than its own.
        assert env["OVS_RUNDIR"] == str(self.bed.dir)
        proc = subprocess.run(
            argv, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )
        result = CliResult(argv, proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert result.returncode == 0, result.describe()
        return result

    def save(self, *args: str) -> Path:
        """`save --json ARGS`; the snapshot directory it reports."""
        result = self("save", "--json", *args)
        path = Path(result.json()["path"])
        assert (path / "manifest.json").is_file(), result.describe()
        return path

    def restore(self, *args: str, check: bool = True) -> CliResult:
        return self("restore", *args, check=check)


def manifest(snapshot: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((snapshot / "manifest.json").read_text())
    return data


def one_line_error(result: CliResult) -> None:
    """The CLI contract for failures: non-zero exit, exactly one line on stderr."""
    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.describe()


@contextlib.contextmanager
def ovs_bed(base: Path | None = None) -> Iterator[OvsBed]:
    with OvsBed(base) as bed:
        yield bed
