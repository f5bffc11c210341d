"""Whether a transaction restarts ovsdb-server: only when something it starts
from changed since it started, or when asked to.

ovs-vswitchd starts after the database, so a restart of the database is part
of every restart's outage (about 110 ms of it with 100,000 flows, the
profile of `python3 -m bench.gap`), and it buys nothing when the daemon would
come back the same: the same binary and libraries, the same schema and
database, the same unit and options.

ovs-service-hook's ovsdb-start (the units' ExecStart=) records what it
started the daemon from: a key (`ovsdb-server.key` in ovs-service's runtime
directory: the device, inode, size and mtime of the binary, the schema, the
unit's files and its environment files, a digest of the OVS_*, OVSDB_* and
LD_* variables it had, then the options) and the daemon's
command line (`ovsdb-server.argv`). The database is kept when all of these
hold:
- ovsdb-server.service is active, and its main process is ovsdb-server
  running the binary on disk, with no mapped file (a library) replaced or
  removed since it started;
- that process's command line is the one recorded with the key;
- the key is the one ovsdb-start would compute now: the same files, the same
  variables, and the options the unit would pass (its ExecStart= expanded with the manager's
  environment, Environment= and EnvironmentFile=, as systemd does);
- the database is there and needs no conversion to the schema.
Anything else restarts it, as the stock `ovs-ctl restart` always does: no
key (Debian's units without the package's drop-in), a unit that does not
start through the hook, a file that cannot be read, an environment it
cannot compute (PassEnvironment=, a wildcard EnvironmentFile=).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ovs_service import journal
from ovs_service.dpkg_guard import NAME as DPKG_GUARD  # a drop-in there only while dpkg runs
from ovs_service.errors import CommandFailed
from ovs_service.run import run
from ovs_service.systemd import ServiceStart

BINARY = Path("/usr/sbin/ovsdb-server")
DEFAULT_PKGDATADIR = "/usr/share/openvswitch"
DEFAULT_DBDIR = "/etc/openvswitch"
KEY_FILE = "ovsdb-server.key"
ARGV_FILE = "ovsdb-server.argv"
HOOK_VERB = "ovsdb-start"
# What the hook appends to the command line ovs-ctl gave the daemon.
REMOTE = b"--remote=db:Open_vSwitch,Open_vSwitch,manager_options\0"
DELETED = " (deleted)"
# Mappings that are not files of a package: shared memory, memfds.
NOT_FILES = ("/memfd:", "/dev/", "/SYSV", "/run/", "/tmp/")
# The variables of the environment in the key (the hook's env_key): those of
# ovs-ctl and Open vSwitch (OVS_*, OVSDB_*) and of the dynamic linker.
KEYED_VARIABLES = ("OVS", "LD_")


@dataclass(frozen=True)
class Decision:
    restart: bool
    why: str


FORCED = Decision(True, "restarted through ovs-ctl's start: asked to (--restart-database)")


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
                           "schema, unit and options are those it started with")


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
    env = environment(unit)
    recorded = _read(run_dir / KEY_FILE).decode(errors="replace").removesuffix("\n")
    files, variables, options = _parts(key_now(unit, env, binary))
    had_files, had_variables, had_options = _parts(recorded)
    if files != had_files:
        return "its binary, schema, unit files or environment files changed since it started"
    if options != had_options:
        return "its options changed since it started"
    if variables != had_variables:
        return ("its environment (OVS_*, OVSDB_* or LD_* variables, from the manager, "
                "Environment= or EnvironmentFile=) changed since it started")
    return _database_unready(env)


def _parts(key: str) -> tuple[str, str, str]:
    """A key's files, environment and options (the options may hold `|`)."""
    files, _, rest = key.partition("|")
    variables, _, options = rest.partition("|")
    return files, variables, options


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


def key_now(unit: ServiceStart, env: dict[str, str], binary: Path = BINARY) -> str:
    """The key ovs-service-hook's ovsdb-start would record if the unit started
    now (see the hook): `stat -L -c %d:%i:%s:%Y` of the binary, the schema,
    and the unit's files and environment files (sorted, those that exist),
    each followed by a comma (not dpkg-hook's guard drop-in), then `|`, the
    digest of the keyed variables (env_key), `|` and the options."""
    schema = Path(env.get("OVS_PKGDATADIR") or DEFAULT_PKGDATADIR) / "vswitch.ovsschema"
    files = [_stat(binary), _stat(schema)]
    for path in sorted({*unit.unit_files, *(p for p, _ in unit.environment_files)}
                       - {p for p in unit.unit_files if p.endswith(f"/{DPKG_GUARD}")}):
        try:
            files.append(os.stat(path))
        except OSError:
            continue  # the hook's stat leaves it out too
    key = "".join(f"{s.st_dev}:{s.st_ino}:{s.st_size}:{s.st_mtime_ns // 10**9}," for s in files)
    return f"{key}|{env_key(env)}|{' '.join(_options(unit, env))}"


def env_key(env: dict[str, str]) -> str:
    """The hook's env_key: `env:` and the sha256 of the keyed variables'
    NAME=value entries, sorted by their bytes, each ended by a NUL."""
    entries = sorted(f"{name}={value}".encode("utf-8", "surrogateescape")
                     for name, value in env.items() if name.startswith(KEYED_VARIABLES))
    return "env:" + hashlib.sha256(b"".join(e + b"\0" for e in entries)).hexdigest()


def _database_unready(env: dict[str, str]) -> str | None:
    """Why ovs-ctl's start would have work to do on the database (the hook's
    own test before it starts the daemon alone); None if it has none."""
    db = Path(env.get("OVS_DBDIR") or DEFAULT_DBDIR) / "conf.db"
    schema = Path(env.get("OVS_PKGDATADIR") or DEFAULT_PKGDATADIR) / "vswitch.ovsschema"
    if not db.is_file():
        return f"{db} is missing"
    try:
        needs = run(["ovsdb-tool", "needs-conversion", str(db), str(schema)]).stdout.strip()
    except CommandFailed as e:
        raise _CannotTell(f"ovsdb-tool needs-conversion failed: {e.fields['stderr']}") from None
    return None if needs == "no" else f"{db} needs converting to {schema}"


def _options(unit: ServiceStart, env: dict[str, str]) -> list[str]:
    """The arguments the hook's ovsdb-start would get: those after the word
    `ovsdb-start` in the ExecStart= command that names it, expanded."""
    for argv in unit.exec_start:
        if HOOK_VERB in argv[1:]:
            return expand(argv[argv.index(HOOK_VERB, 1) + 1:], env)
    raise _CannotTell("its ExecStart= does not run ovs-service-hook ovsdb-start")


_WHOLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def expand(words: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """systemd's expansion of ExecStart= words: `$NAME` alone is split into
    words as a shell would (quotes removed; none if unset or empty),
    `${NAME}` anywhere is replaced as it is, `$$` is a dollar sign."""
    out: list[str] = []
    for word in words:
        whole = _WHOLE.fullmatch(word)
        if whole:
            value = env.get(whole.group(1), "")
            try:
                out.extend(shlex.split(value))
            except ValueError:
                raise _CannotTell(f"${whole.group(1)} has an unbalanced quote") from None
            continue
        out.append(_BRACED.sub(lambda m: env.get(m.group(1), "") if m.group(1) else "$", word))
    return out


def environment(unit: ServiceStart) -> dict[str, str]:
    """The unit's environment as its commands get it: the manager's, then
    Environment=, then each EnvironmentFile= over it."""
    if unit.pass_environment:
        raise _CannotTell("PassEnvironment= takes variables from the manager's own process")
    env = dict(item.partition("=")[::2] for item in unit.manager_environment if "=" in item)
    env.update(item.partition("=")[::2] for item in unit.environment if "=" in item)
    for path, optional in unit.environment_files:
        if any(c in path for c in "*?["):
            raise _CannotTell(f"EnvironmentFile={path} is a wildcard")
        try:
            text = Path(path).read_bytes().decode("utf-8", errors="surrogateescape")
        except FileNotFoundError:
            if optional:
                continue
            raise _CannotTell(f"EnvironmentFile={path} is missing") from None
        except OSError as e:
            raise _CannotTell(f"EnvironmentFile={path}: {e.strerror}") from None
        env.update(parse_env_file(text, path))
    return env


def parse_env_file(text: str, path: str = "") -> dict[str, str]:
    """The assignments of an EnvironmentFile=: NAME=value lines, `#` and `;`
    comments, values unquoted or quoted as in a shell, a backslash at the end
    of a line continuing it; lines that are not an assignment are skipped,
    as systemd skips them."""
    env: dict[str, str] = {}
    for line in re.sub(r"\\\r?\n", "", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name):
            continue
        try:
            env[name] = " ".join(shlex.split(value))
        except ValueError:
            raise _CannotTell(f"{path or 'an environment file'}: an unbalanced quote "
                             f"in {name}") from None
    return env


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
