"""Build what the test guest boots: Debian's kernel, its modules, and a small initramfs.

Idempotent: each artefact is made only when missing, under the repository's
`.cache/vm/` (never committed).  The kernel is the one `linux-image-amd64`
depends on, downloaded with `apt-get download` (run `apt-get update` first on
a fresh machine), unpacked with `dpkg -x` and indexed with `depmod -b`.
The initramfs holds a static busybox, the modules needed to mount the host's
root over virtio-9p under an overlay and to reach the virtio-serial port, and
`tests/harness/vm/init`; its file name carries a hash of its inputs, so editing the
init script or the module list makes a new one.

Run it directly to prepare the cache ahead of the tests:

    /usr/bin/python3 tests/harness/vm/build.py
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ovsvm.build")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
CACHE = Path(os.environ.get("OVSVM_CACHE", REPO / ".cache" / "vm"))
META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
# What the first stage needs before it can switch to the host's root.  Every
# one is a module in Debian's 6.1 config (CONFIG_VIRTIO_PCI=m, CONFIG_9P_FS=m,
# CONFIG_OVERLAY_FS=m, ...); their dependencies come from modules.dep.
INITRAMFS_MODULES = ("virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay")


class BuildError(Exception):
    """A step of the build failed; the message says which and why."""


@dataclass(frozen=True)
class Artifacts:
    kernel_version: str
    vmlinuz: Path
    modules: Path
    """The kernel's module tree, `.../lib/modules/VERSION`, with modules.dep."""
    initramfs: Path


def run(argv: Sequence[str], *, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    """Run `argv`, return its standard output; BuildError naming it if it fails."""
    log.debug("run: %s", shlex.join(argv))
    try:
        proc = subprocess.run(
            list(argv), cwd=cwd, input=input, capture_output=True, check=False, timeout=600
        )
    except FileNotFoundError:
        raise BuildError(f"{argv[0]}: not found; is it installed?") from None
    if proc.returncode != 0:
        raise BuildError(
            f"{shlex.join(argv)} failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc.stdout


@contextmanager
def step(name: str) -> Iterator[None]:
    start = time.monotonic()
    log.info("%s ...", name)
    yield
    log.info("%s: done in %.1f s", name, time.monotonic() - start)


@contextmanager
def cache_lock() -> Iterator[None]:
    """One builder at a time, for test processes started in parallel."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def kernel_package() -> str:
    """The versioned kernel package (`linux-image-6.1.0-NN-amd64`) of the meta package."""
    forced = os.environ.get("OVSVM_KERNEL_PACKAGE")
    if forced:
        return forced
    out = run(["apt-cache", "depends", META_PACKAGE]).decode()
    match = re.search(r"^\s*Depends:\s*(linux-image-\S+)", out, re.MULTILINE)
    if not match:
        raise BuildError(
            f"apt-cache knows no dependency of {META_PACKAGE}; run `apt-get update` first"
        )
    return match.group(1)


def ensure_kernel(package: str) -> tuple[str, Path]:
    """Unpacked kernel package with depmod run: (version, root). Downloads if missing."""
    version = package.removeprefix("linux-image-")
    root = CACHE / f"kernel-{version}"
    if (root / "lib/modules" / version / "modules.dep.bin").exists():
        return version, root
    with (
        step(f"download and unpack {package}"),
        tempfile.TemporaryDirectory(dir=CACHE, prefix=".kernel-") as scratch,
    ):
        tmp = Path(scratch)
        run(["apt-get", "download", "-o", "APT::Sandbox::User=root", package], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {package} left {len(debs)} packages")
        unpacked = tmp / "root"
        run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        # The package ships no modules.dep; build it (and the .bin indexes).
        run(["depmod", "-b", str(unpacked), version])
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
    # A new kernel ABI replaces the old one: keep one kernel (400 MB) cached.
    for old in CACHE.glob("kernel-*"):
        if old != root:
            shutil.rmtree(old)
    return version, root


def load_order(moddir: Path, names: Sequence[str]) -> list[Path]:
    """Module files for `names` and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key not in by_name:
            raise BuildError(f"module {name} is not in {moddir}/modules.dep (built in?)")
        visit(by_name[key])
    return [moddir / path for path in order]


def ensure_initramfs(version: str, moddir: Path) -> Path:
    modules = load_order(moddir, INITRAMFS_MODULES)
    init = (HERE / "init").read_bytes()
    busybox = BUSYBOX.read_bytes()
    digest = hashlib.sha256()
    for part in (version.encode(), init, busybox, *(m.read_bytes() for m in modules)):
        digest.update(hashlib.sha256(part).digest())
    target = CACHE / f"initramfs-{version}-{digest.hexdigest()[:12]}.cpio"
    if target.exists():
        return target
    with step(f"build {target.name}"), tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        stage = Path(scratch) / "stage"
        (stage / "bin").mkdir(parents=True)
        (stage / "modules").mkdir()
        (stage / "bin/busybox").write_bytes(busybox)
        (stage / "bin/busybox").chmod(0o755)
        (stage / "init").write_bytes(init)
        (stage / "init").chmod(0o755)
        for module in modules:
            shutil.copyfile(module, stage / "modules" / module.name)
        (stage / "modules/order").write_text("".join(f"{m.name}\n" for m in modules))
        names = sorted(str(path.relative_to(stage)) for path in stage.rglob("*"))
        # Uncompressed: the kernel unpacks it faster than it would inflate it
        # under emulation, and it is only a few megabytes.
        archive = run(
            ["cpio", "--create", "--format=newc", "--owner=0:0", "--quiet"],
            cwd=stage,
            input="\n".join(names).encode() + b"\n",
        )
        partial = Path(scratch) / target.name
        partial.write_bytes(archive)
        partial.rename(target)
    for old in CACHE.glob(f"initramfs-{version}-*.cpio"):
        if old != target:
            old.unlink()
    return target


def ensure_built() -> Artifacts:
    """Everything the guest needs, built if missing; cheap when it is all there."""
    with cache_lock():
        version, root = ensure_kernel(kernel_package())
        moddir = root / "lib/modules" / version
        initramfs = ensure_initramfs(version, moddir)
    return Artifacts(
        kernel_version=version,
        vmlinuz=root / "boot" / f"vmlinuz-{version}",
        modules=moddir,
        initramfs=initramfs,
    )


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        artifacts = ensure_built()
    except BuildError as error:
        log.error("vm build: %s", error)
        return 1
    print(f"kernel    {artifacts.kernel_version}")
    print(f"vmlinuz   {artifacts.vmlinuz}")
    print(f"modules   {artifacts.modules}")
    print(f"initramfs {artifacts.initramfs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
