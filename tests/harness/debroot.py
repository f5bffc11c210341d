"""Debian roots of other releases, built with mmdebstrap, cached, and entered.

    root = ensure_root(TRIXIE)                 # built or reused: a folder
    with RootNamespace(root) as rns:           # chrooted, private PID/mount/net
        rns.run(["ovs-vsctl", "--version"])
        start_ovs(rns)                         # `ovs-ctl start`, netdev bridges
    with RootSystemd(root) as ns:              # the root's own systemd as PID 1
        ns.systemctl("start", "openvswitch-switch")

Roots live under the checkout's `.cache/roots/NAME/`, built by `mmdebstrap`
from Debian's registry. A root is **stale**, and rebuilt, when its marker
(`.debroot.json`, written last, so a build cut short has none) is missing,
when the marker's key (suite, packages, customize commands, this module's
`FORMAT`) differs from the spec's, or when it is older than `MAX_AGE_DAYS`
(the registry moves on: security updates). A rebuild goes to `NAME.new` and
is renamed into place; one build at a time (a lock file).

A cached root is never written to: `RootNamespace` and `RootSystemd` enter it
through `debroot_enter.sh`, which mounts a tmpfs overlay over it in a private
mount namespace (with /proc, /sys, /dev) and chroots there; every write goes
to the overlay and vanishes with the namespace. Commands go in with
`nsenter -r` (the namespace's root); files with `path()`
(/proc/PID/root). The network namespace is private: the roots carry in
their apt cache whatever the lanes install. Needs root and mmdebstrap.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.harness import REPO
from tests.harness.systemd_ns import SystemdNamespace, SystemdNamespaceError

ROOTS_DIR = REPO / ".cache" / "roots"
ENTER_SCRIPT = Path(__file__).resolve().with_name("debroot_enter.sh")
BOOT_SCRIPT = Path(__file__).resolve().with_name("systemd_boot.sh")
MARKER = ".debroot.json"
# Bump when the way roots are built changes (forces a rebuild of every root).
FORMAT = 1
MAX_AGE_DAYS = 7
MIRROR = "http://deb.debian.org/debian"
INNER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# Where the checkout is copied inside a root, to build the package there.
INNER_SOURCE = "/usr/src/ovs-service"
INNER_DIST = "/usr/src/dist"
INNER_BOOT = "/usr/local/lib/ovs-service-test/systemd_boot.sh"

# What every root holds: Open vSwitch, its own systemd, ovs-service's
# dependencies, traffic tools, and what builds and checks the package.
BASE_PACKAGES = (
    "openvswitch-switch", "systemd", "systemd-sysv", "dbus", "procps",
    "python3", "python3-typer", "python3-pystemd", "python3-pyroute2", "python3-sdnotify",
    "iproute2", "iputils-ping",
    "build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject",
    "python3-all", "python3-setuptools", "python3-wheel", "lintian", "pkgconf",
)  # fmt: skip


class DebRootError(RuntimeError):
    """A root could not be built, entered or used."""


@dataclass(frozen=True)
class RootSpec:
    """A root to build: `customize` runs chrooted in it after the packages
    (with the machine's network), e.g. to add another release to its apt
    sources and fill its apt cache; `keep_apt` keeps lists and archives."""

    name: str
    suite: str
    packages: tuple[str, ...] = BASE_PACKAGES
    customize: tuple[str, ...] = ()
    keep_apt: bool = False

    def key(self) -> str:
        text = json.dumps([FORMAT, self.suite, MIRROR, sorted(self.packages),
                           list(self.customize), self.keep_apt])
        return hashlib.sha256(text.encode()).hexdigest()


# systemd.pc, which the package build reads, moved to systemd-dev in Debian 13.
TRIXIE = RootSpec("trixie", "trixie", packages=(*BASE_PACKAGES, "systemd-dev"))

# Debian 12 with trixie's openvswitch-switch (and all it pulls in) already
# in its apt cache, and bookworm's, for the way back: the upgrade lane runs
# `apt-get install openvswitch-switch/trixie` with no network.
_TRIXIE_SOURCES = (
    f"Types: deb\\nURIs: {MIRROR}\\nSuites: trixie\\nComponents: main\\n"
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\\n"
)
BOOKWORM_UPGRADE = RootSpec(
    "bookworm-upgrade", "bookworm",
    packages=(*BASE_PACKAGES, "debian-archive-keyring"),
    customize=(
        f"printf '{_TRIXIE_SOURCES}' > /etc/apt/sources.list.d/trixie.sources",
        "apt-get update -q",
        # Recommends too, as the lane's apt-get (an operator's) installs them:
        # the build's own apt configuration may leave them out.
        "DEBIAN_FRONTEND=noninteractive apt-get install -q -y --download-only "
        "-o APT::Install-Recommends=true openvswitch-switch/trixie",
    ),
    keep_apt=True,
)  # fmt: skip


# -- building ---------------------------------------------------------------


@dataclass(frozen=True)
class RootState:
    path: Path
    fresh: bool  # built by this call
    seconds: float  # what building it took (0 when reused)


def stale_reason(spec: RootSpec, path: Path, now: float | None = None) -> str | None:
    """Why the root at `path` must be rebuilt, or None if it is usable."""
    marker = path / MARKER
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "no build marker"
    if info.get("key") != spec.key():
        return "its package list or build recipe changed"
    age = (now or time.time()) - float(info.get("built", 0))
    if age > MAX_AGE_DAYS * 86400:
        return f"older than {MAX_AGE_DAYS} days"
    return None


def _mmdebstrap_argv(spec: RootSpec, target: Path) -> list[str]:
    # No fsync per file: a build cut short has no marker and is rebuilt anyway.
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", "--format=directory",
            "--dpkgopt=force-unsafe-io", f"--include={','.join(spec.packages)}"]
    for command in spec.customize:
        # The root's own apt configuration, as the lanes will see it, not the
        # build's (mmdebstrap's APT_CONFIG leaves out Recommends).
        argv.append(f'--customize-hook=chroot "$1" env -u APT_CONFIG sh -ec {_sh_quote(command)}')
    if spec.keep_apt:
        argv += ["--skip=cleanup/apt/lists", "--skip=cleanup/apt/cache"]
    return [*argv, spec.suite, str(target), MIRROR]


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    ROOTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(ROOTS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_root(spec: RootSpec) -> RootState:
    """The root of `spec`, built first if missing or stale (see the module)."""
    if shutil.which("mmdebstrap") is None:
        raise DebRootError("mmdebstrap is not installed (make install-packages)")
    path = ROOTS_DIR / spec.name
    if stale_reason(spec, path) is None:  # usable: no need to wait for another build
        return RootState(path, False, 0.0)
    with _build_lock():
        if stale_reason(spec, path) is None:
            return RootState(path, False, 0.0)
        began = time.monotonic()
        new = ROOTS_DIR / f"{spec.name}.new"
        shutil.rmtree(new, ignore_errors=True)
        proc = subprocess.run(_mmdebstrap_argv(spec, new), capture_output=True, text=True,
                              check=False, timeout=1200)
        if proc.returncode != 0:
            shutil.rmtree(new, ignore_errors=True)
            raise DebRootError(f"mmdebstrap {spec.suite} failed:\n{proc.stderr[-4000:]}")
        (new / MARKER).write_text(json.dumps({"key": spec.key(), "built": time.time(),
                                              "suite": spec.suite}))
        old = ROOTS_DIR / f"{spec.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        new.rename(path)
        shutil.rmtree(old, ignore_errors=True)
        return RootState(path, True, time.monotonic() - began)


def mountpoint(root: Path) -> Path:
    """An empty folder on the machine, where each namespace mounts its own tmpfs."""
    mnt = root.parent / f"{root.name}.mnt"
    mnt.mkdir(exist_ok=True)
    return mnt


def _nsenter(pid: int, argv: Sequence[str]) -> list[str]:
    return ["nsenter", "-t", str(pid), "-m", "-p", "-u", "-n", "-r", "-w", "--", *argv]


# -- a chroot in private namespaces ------------------------------------------


class RootNamespace:
    """The root, chrooted as PID 1 (a shell that waits) of private PID, mount,
    network and UTS namespaces, over a throwaway overlay."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RootNamespace:
        argv = ["setpriv", "--pdeathsig", "KILL", "--",
                "unshare", "--fork", "--pid", "--mount", "--propagation", "private",
                "--net", "--uts", "--kill-child=SIGKILL",
                str(ENTER_SCRIPT), str(self.root), str(mountpoint(self.root)),
                "/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kids = _children(self._proc.pid)
            if kids and _comm(kids[0]) == "sh" and self._chrooted(kids[0]):
                self.pid = kids[0]
                return self
            if self._proc.poll() is not None:
                raise DebRootError(f"entering {self.root} failed (exit {self._proc.returncode})")
            time.sleep(0.02)
        self.__exit__()
        raise DebRootError(f"entering {self.root}: no PID 1 after 30 s")

    def _chrooted(self, pid: int) -> bool:
        try:
            return os.readlink(f"/proc/{pid}/root") != "/"
        except OSError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # kills every process inside
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        return _nsenter(self.pid, argv)

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            timeout: float = 300,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full_env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        proc = subprocess.run(_nsenter(self.pid, argv), input=input, capture_output=True,
                              text=True, env=full_env, timeout=timeout, check=False)
        proc.args = list(argv)
        if check and proc.returncode != 0:
            raise DebRootError(f"{' '.join(argv)}: exit {proc.returncode}\n"
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def path(self, inner: str) -> Path:
        return Path(f"/proc/{self.pid}/root") / inner.lstrip("/")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def start_ovs(rns: RootNamespace) -> None:
    """The root's own `ovs-ctl start` (ovsdb-server and ovs-vswitchd; use
    netdev bridges: the machine has no openvswitch module)."""
    rns.run([OVS_CTL, "--system-id=random", "--no-monitor", "start"])


# -- the root's own systemd ---------------------------------------------------


class RootSystemd(SystemdNamespace):
    """The root's systemd as PID 1 of private namespaces (see systemd_ns.py,
    whose boot script runs here inside the root), over a throwaway overlay.
    The root's own packages run: nothing of the checkout is put inside
    unless a test copies it in (`copy_source`)."""

    def __init__(self, root: Path, **kwargs: object) -> None:
        super().__init__(own_code=False, **kwargs)  # type: ignore[arg-type]
        self.root = root

    def boot_argv(self) -> list[str]:
        # debroot_enter.sh copies the boot script into the overlay (INNER_BOOT).
        return [str(ENTER_SCRIPT), str(self.root), str(mountpoint(self.root)),
                "/bin/sh", INNER_BOOT, self.cgroup_name]

    def nsenter_argv(self, argv: Sequence[str]) -> list[str]:
        if not self.pid:
            raise SystemdNamespaceError("namespace not started")
        return _nsenter(self.pid, argv)

    def _is_systemd(self) -> bool:
        return _comm(self.pid) == "systemd"

    def _check_private(self, inner: str) -> None:
        """The whole root is a throwaway overlay: any path may be written."""



# -- the package, built inside a root -----------------------------------------

Runner = SystemdNamespace | RootNamespace

SOURCE_EXCLUDES = ("./.git", "./.cache", "./dist", "./build", "./bench/out", "*.egg-info",
                   "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache")


def copy_source(ns: Runner) -> None:
    """The checkout (as packaging/build-deb.sh sees it) to INNER_SOURCE inside."""
    ns.run(["mkdir", "-p", INNER_SOURCE])
    excludes = [f"--exclude={e}" for e in SOURCE_EXCLUDES]
    pack = subprocess.Popen(["tar", "-C", str(REPO), "-cf", "-", *excludes, "."],
                            stdout=subprocess.PIPE)
    try:
        unpack = subprocess.run(ns.nsenter_argv(["tar", "-xf", "-", "-C", INNER_SOURCE]),
                                stdin=pack.stdout, capture_output=True, check=False,
                                timeout=120)
    finally:
        assert pack.stdout is not None
        pack.stdout.close()
        pack.wait(timeout=60)
    if pack.returncode != 0 or unpack.returncode != 0:
        raise DebRootError(f"copying the checkout in failed: {unpack.stderr.decode()[-800:]}")


def build_deb(ns: Runner) -> str:
    """Build ovs-service's package inside the root, with the root's own
    debhelper and dh-python (packaging/build-deb.sh); its path inside."""
    copy_source(ns)
    proc = ns.run(["sh", f"{INNER_SOURCE}/packaging/build-deb.sh", INNER_DIST], timeout=600)
    debs = [line for line in proc.stdout.splitlines() if line.endswith(".deb")]
    if len(debs) != 1:
        raise DebRootError(f"the package build made {debs!r}:\n{proc.stdout[-2000:]}")
    return debs[0]
