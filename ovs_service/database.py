"""Whether a transaction restarts ovsdb-server: only when something it starts
from changed since it started, or when asked to.

ovs-vswitchd starts after the database, so a restart of the database is part
of every restart's outage (about 110 ms of it with 100,000 flows, the
profile of `python3 -m bench.gap`), and it buys nothing when the daemon would
come back the same: the same binary and libraries, the same schema and
database, the same unit and environment.

ovs-service-hook's ovsdb-start (the units' ExecStart=) records what it
started the daemon from: a key (`ovsdb-server.key` in ovs-service's runtime
directory) and the daemon's command line (`ovsdb-server.argv`). The key is
one line of `|`-separated parts:
- `db=DB;schema=SCHEMA`: the database and schema ovs-ctl uses, from the
  unit's environment as ovs-lib derives them;
- the device, inode, size and mtime of the binary and of the schema (an
  upgrade renames new files over them);
- `sha256sum`'s line (digest and path) of the unit's file, its drop-ins
  and its environment files (sorted by path, those that exist; a renamed
  drop-in may apply in another order): everything Environment=,
  EnvironmentFile= and ExecStart= can take their values from, but
- `manager:` and the sha256 of `systemctl show-environment`, the manager's
  own environment (set-environment, DefaultEnvironment=), which every unit
  inherits;
- `needs-daemon-reload` last, if the unit's files had changed on disk
  without being loaded: no key computed later matches that start.
The options are not re-derived: the same files and the same manager
environment give the same ones, without a second parser of systemd's
environment files to disagree with systemd's.

The database is kept when all of these hold:
- ovsdb-server.service is active, and its main process is ovsdb-server
  running the binary on disk, with no mapped file (a library) and no open
  database file replaced or removed since it started;
- that process's command line is the one recorded with the key;
- the unit's files are loaded as they are on disk, and the key is the one
  ovsdb-start would record now;
- the database is there and needs no conversion to the schema.
Anything else restarts it, as the stock `ovs-ctl restart` always does: no
key (Debian's units without the package's drop-in), a unit that does not
start through the hook, a file that cannot be read, an environment it
cannot account for (PassEnvironment=, a wildcard EnvironmentFile=).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ovs_service import journal
from ovs_service.dpkg_guard import NAME as DPKG_GUARD  # a drop-in there only while dpkg runs
from ovs_service.errors import CommandFailed
from ovs_service.run import run
from ovs_service.systemd import ServiceStart

BINARY = Path("/usr/sbin/ovsdb-server")
KEY_FILE = "ovsdb-server.key"
ARGV_FILE = "ovsdb-server.argv"
HOOK_VERB = "ovsdb-start"
# What the hook appends to the command line ovs-ctl gave the daemon.
REMOTE = b"--remote=db:Open_vSwitch,Open_vSwitch,manager_options\0"
DELETED = " (deleted)"
# Mappings that are not files of a package: shared memory, memfds.
NOT_FILES = ("/memfd:", "/dev/", "/SYSV", "/run/", "/tmp/")
NEEDS_RELOAD = "needs-daemon-reload"
SHOW_ENVIRONMENT = ("systemctl", "show-environment")


@dataclass(frozen=True)
class Decision:
    restart: bool
    why: str


FORCED = Decision(True, "restarted through ovs-ctl's start: asked to (--restart-database)")


@dataclass(frozen=True)
class Key:
    """The parts of a key (see the module's docstring), in order."""

    paths: str
    daemon: str
    files: str
    manager: str
    needs_reload: bool = False

    def text(self) -> str:
        parts = [self.paths, self.daemon, self.files, self.manager]
        return "|".join(parts + [NEEDS_RELOAD] * self.needs_reload)

    @classmethod
    def parse(cls, text: str) -> Key:
        parts = text.split("|")
        needs_reload = parts[-1] == NEEDS_RELOAD
        if needs_reload:
            parts.pop()
        if len(parts) != 4 or not parts[0].startswith("db="):
            raise _CannotTell("the recorded key is not one this version writes")
        paths, daemon, files, manager = parts
        return cls(paths, daemon, files, manager, needs_reload)

    def database(self) -> tuple[Path, Path]:
        """The database file and the schema the start used."""
        db, sep, schema = self.paths.removeprefix("db=").partition(";schema=")
        if not sep:
            raise _CannotTell("the recorded key names no schema")
        return Path(db), Path(schema)


class _CannotTell(Exception):
    """What the decision could not read or compute, in a few words."""


def decide(unit: ServiceStart, proc: Path = Path("/proc"), run_dir: Path | None = None,
           binary: Path = BINARY) -> Decision:
    """Whether to restart ovsdb-server along with ovs-vswitchd, and why."""
    try:
        changed = _changed(unit, proc / str(unit.main_pid), run_dir or journal.run_dir(), binary)
    except _CannotTell as e:
        changed = f"cannot tell whether it changed ({e})"
    if changed:
        return Decision(True, f"restarted: {changed}")
    return Decision(False, f"kept running (pid {unit.main_pid}): its binary, libraries, "
                           "database, schema, unit and environment are those it started with")


def _changed(unit: ServiceStart, process: Path, run_dir: Path, binary: Path) -> str | None:
    """Why the running database is not the one a start would give now; None if it is."""
    if not unit.active or unit.main_pid <= 0:
        return "ovsdb-server.service is not running"
    comm = _read(process / "comm").decode(errors="replace").rstrip("\n")
    if comm != "ovsdb-server":
        return f"its main process (pid {unit.main_pid}) is not ovsdb-server"
    running, on_disk = _stat(process / "exe"), _stat(binary)
    if (running.st_dev, running.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        return f"{binary} was replaced since it started"
    replaced = replaced_mappings(_read(process / "maps").decode(errors="replace"))
    if replaced:
        return f"{replaced[0]} was replaced since it started" + (
            f" (and {len(replaced) - 1} more)" if len(replaced) > 1 else "")
    if _read(run_dir / ARGV_FILE) not in (cmdline := _read(process / "cmdline"),
                                           cmdline + REMOTE):
        return "it was not started by ovs-service-hook ovsdb-start with its recorded command line"
    if unit.needs_reload:
        return "its unit's files changed and are not loaded (systemctl daemon-reload)"
    if why := _unaccounted_environment(unit):
        return why
    recorded = Key.parse(_read(run_dir / KEY_FILE).decode(errors="replace").removesuffix("\n"))
    db, schema = recorded.database()
    now = key_now(unit, db, schema, binary)
    if now.daemon != recorded.daemon:
        return "its binary or schema changed since it started"
    if now.files != recorded.files or recorded.needs_reload:
        return "its unit's files or environment files changed since it started"
    if now.manager != recorded.manager:
        return "the manager's environment (systemctl set-environment) changed since it started"
    if _database_replaced(process, db):
        return f"{db} was replaced since it started"
    return _database_unready(db, schema)


def forget_start(run_dir: Path | None = None) -> None:
    """Drop what ovsdb-start recorded: its next start is ovs-ctl's, in full."""
    (run_dir or journal.run_dir()).joinpath(KEY_FILE).unlink(missing_ok=True)


def replaced_mappings(maps: str) -> list[str]:
    """The files mapped into a process (its libraries) that were replaced or
    removed since it mapped them, from its /proc/PID/maps: a package upgrade
    renames the new file over the old, which the process keeps as
    "(deleted)"."""
    paths = set()
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(DELETED):
            path = fields[5].removesuffix(DELETED)
            if path.startswith("/") and not path.startswith(NOT_FILES):
                paths.add(path)
    return sorted(paths)


def key_now(unit: ServiceStart, db: Path, schema: Path, binary: Path = BINARY) -> Key:
    """The key ovs-service-hook's ovsdb-start would record if the unit
    started now with this database and schema (see the hook)."""
    stats = [_stat(binary), _stat(schema)]
    daemon = "".join(f"{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns // 10**9},"
                     for s in stats)
    return Key(paths=f"db={db};schema={schema}", daemon=daemon,
               files="".join(f"{digest}," for digest in _file_digests(unit)),
               manager=f"manager:{_sha256(_manager_environment())}")


def _file_digests(unit: ServiceStart) -> list[str]:
    """`sha256sum`'s line (digest and path) for each of the unit's files and
    environment files that exists, sorted by path; not dpkg-hook's guard
    drop-in. The paths count: systemd applies drop-ins in the order of their
    names, so a renamed one may change what applies."""
    paths = {*unit.unit_files, *(path for path, _ in unit.environment_files)}
    digests = []
    for path in sorted(p for p in paths if not p.endswith(f"/{DPKG_GUARD}")):
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            continue  # sha256sum in the hook says nothing on stdout for it either
        except OSError as e:
            raise _CannotTell(f"{path}: {e.strerror}") from None
        # sha256sum marks the line of a name with a backslash or a newline,
        # and escapes them in the name.
        if "\\" in path or "\n" in path:
            name = path.replace("\\", "\\\\").replace("\n", "\\n")
            digests.append(f"\\{_sha256(data)}  {name}")
        else:
            digests.append(f"{_sha256(data)}  {path}")
    return digests


def _manager_environment() -> bytes:
    """What the hook hashes: systemctl's listing, under LC_ALL=C (run's and
    the hook's), one NAME=value a line, escaped where not plain ASCII."""
    try:
        return run(list(SHOW_ENVIRONMENT), timeout=10).stdout.encode()
    except CommandFailed as e:
        raise _CannotTell(f"systemctl show-environment failed: {e.fields['stderr']}") from None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unaccounted_environment(unit: ServiceStart) -> str | None:
    """What gives the unit's commands variables that no key sees."""
    if unit.pass_environment:
        return "its unit has PassEnvironment=, which takes variables from the manager's process"
    for path, _ in unit.environment_files:
        if any(c in path for c in "*?["):
            return f"its EnvironmentFile={path} is a wildcard"
    if not any(HOOK_VERB in argv[1:] for argv in unit.exec_start):
        return "its ExecStart= does not run ovs-service-hook ovsdb-start"
    return None


def _database_replaced(process: Path, db: Path) -> bool:
    """Whether the daemon holds its database file open as removed: replaced
    from outside (a backup put back), which the running daemon would
    overwrite at its next compaction."""
    gone = os.path.realpath(db) + DELETED
    try:
        fds = list((process / "fd").iterdir())
    except OSError as e:
        raise _CannotTell(f"{process / 'fd'}: {e.strerror}") from None
    for fd in fds:
        try:
            if os.readlink(fd) == gone:
                return True
        except OSError:
            continue  # closed meanwhile
    return False


def _database_unready(db: Path, schema: Path) -> str | None:
    """Why ovs-ctl's start would have work to do on the database (the hook's
    own test before it starts the daemon alone); None if it has none."""
    if not db.is_file():
        return f"{db} is missing"
    try:
        needs = run(["ovsdb-tool", "needs-conversion", str(db), str(schema)]).stdout.strip()
    except CommandFailed as e:
        raise _CannotTell(f"ovsdb-tool needs-conversion failed: {e.fields['stderr']}") from None
    return None if needs == "no" else f"{db} needs converting to {schema}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _CannotTell(f"{path}: {e.strerror}") from None


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except OSError as e:
        raise _CannotTell(f"{path}: {e.strerror}") from None
