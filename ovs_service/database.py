"""Whether a transaction restarts ovsdb-server: only when something it starts
from changed since it started, or when asked to.

ovs-vswitchd starts after the database, so a restart of the database is part
of every restart's outage (about 110 ms of it with 100,000 flows, the
profile of `python3 -m bench.gap`), and it buys nothing when the daemon would
come back the same: the same binary, the same schema, the same options.

ovs-service-hook's ovsdb-start (the units' ExecStart=) records what it
started the daemon from: a key (`ovsdb-server.key` in ovs-service's runtime
directory: the binary's and the schema's device, inode, size and mtime, then
the options) and the daemon's command line (`ovsdb-server.argv`). The
database is kept when all of these hold:
- ovsdb-server.service is active, and its main process is ovsdb-server
  running the binary on disk (not one replaced since it started);
- that process's command line is the one recorded with the key;
- the key is the one ovsdb-start would compute now: the same files, and
  the options the unit would pass (its ExecStart= expanded with its
  Environment= and EnvironmentFile=, as systemd does).
Anything else restarts it, as the stock `ovs-ctl restart` always does: no
key (Debian's units without the package's drop-in), a unit that does not
start through the hook, a file that cannot be read or parsed.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ovs_service import journal
from ovs_service.systemd import ServiceStart

BINARY = Path("/usr/sbin/ovsdb-server")
DEFAULT_PKGDATADIR = "/usr/share/openvswitch"
KEY_FILE = "ovsdb-server.key"
ARGV_FILE = "ovsdb-server.argv"
HOOK_VERB = "ovsdb-start"
# What the hook appends to the command line ovs-ctl gave the daemon.
REMOTE = b"--remote=db:Open_vSwitch,Open_vSwitch,manager_options\0"


@dataclass(frozen=True)
class Decision:
    restart: bool
    why: str


FORCED = Decision(True, "restarted: asked to (--restart-database)")


def decide(unit: ServiceStart, proc: Path = Path("/proc"), run_dir: Path | None = None,
           binary: Path = BINARY) -> Decision:
    """Whether to restart ovsdb-server along with ovs-vswitchd, and why."""
    changed = _changed(unit, proc, run_dir or journal.run_dir(), binary)
    if changed:
        return Decision(True, f"restarted: {changed}")
    return Decision(False, f"kept running (pid {unit.main_pid}): its binary, schema and "
                           "options are those it started with")


def _changed(unit: ServiceStart, proc: Path, run_dir: Path, binary: Path) -> str | None:
    """Why the running database is not the one a start would give now; None if it is."""
    if not unit.active or unit.main_pid <= 0:
        return "ovsdb-server.service is not running"
    process = proc / str(unit.main_pid)
    try:
        comm = (process / "comm").read_text().rstrip("\n")
        running, on_disk = os.stat(process / "exe"), os.stat(binary)
        cmdline = (process / "cmdline").read_bytes()
        recorded_argv = (run_dir / ARGV_FILE).read_bytes()
        recorded_key = (run_dir / KEY_FILE).read_text().removesuffix("\n")
    except OSError as e:
        return f"cannot tell whether it changed ({e.filename}: {e.strerror})"
    if comm != "ovsdb-server":
        return f"its main process (pid {unit.main_pid}) is not ovsdb-server"
    if (running.st_dev, running.st_ino) != (on_disk.st_dev, on_disk.st_ino):
        return f"{binary} was replaced since it started"
    if recorded_argv not in (cmdline, cmdline + REMOTE):
        return "it was not started by ovs-service-hook ovsdb-start with its recorded command line"
    key = key_now(unit, binary)
    if key is None:
        return "its unit does not start it through ovs-service-hook ovsdb-start"
    if key != recorded_key:
        return "its binary, schema or options changed since it started"
    return None


def key_now(unit: ServiceStart, binary: Path = BINARY) -> str | None:
    """The key ovs-service-hook's ovsdb-start would record if the unit started
    now (see the hook): `stat -L -c %d:%i:%s:%Y` of the binary and the
    schema, each followed by a comma, then `|` and the options. None if the
    unit does not start through the hook or a file cannot be read."""
    env = environment(unit)
    if env is None:
        return None
    options = _options(unit, env)
    if options is None:
        return None
    schema = Path(env.get("OVS_PKGDATADIR") or DEFAULT_PKGDATADIR) / "vswitch.ovsschema"
    try:
        stats = [os.stat(path) for path in (binary, schema)]
    except OSError:
        return None
    files = "".join(f"{s.st_dev}:{s.st_ino}:{s.st_size}:{int(s.st_mtime)}," for s in stats)
    return f"{files}|{' '.join(options)}"


def _options(unit: ServiceStart, env: dict[str, str]) -> list[str] | None:
    """The arguments the hook's ovsdb-start would get: those after the word
    `ovsdb-start` in the ExecStart= command that names it, expanded."""
    for argv in unit.exec_start:
        if HOOK_VERB in argv[1:]:
            return expand(argv[argv.index(HOOK_VERB, 1) + 1:], env)
    return None


_WHOLE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\$")


def expand(words: tuple[str, ...], env: dict[str, str]) -> list[str]:
    """systemd's expansion of ExecStart= words: `$NAME` alone is split at
    whitespace into words (none if unset or empty), `${NAME}` anywhere is
    replaced as it is, `$$` is a dollar sign."""
    out: list[str] = []
    for word in words:
        whole = _WHOLE.fullmatch(word)
        if whole:
            out.extend(env.get(whole.group(1), "").split())
            continue
        out.append(_BRACED.sub(lambda m: env.get(m.group(1), "") if m.group(1) else "$", word))
    return out


def environment(unit: ServiceStart) -> dict[str, str] | None:
    """The unit's environment as its commands get it: Environment=, then
    each EnvironmentFile= over it. None if a file it needs cannot be read or
    parsed."""
    env = dict(item.split("=", 1) for item in unit.environment if "=" in item)
    for path, optional in unit.environment_files:
        try:
            text = Path(path).read_text()
        except OSError:
            if optional:
                continue
            return None
        parsed = parse_env_file(text)
        if parsed is None:
            return None
        env.update(parsed)
    return env


def parse_env_file(text: str) -> dict[str, str] | None:
    """The assignments of an EnvironmentFile=: NAME=value lines, `#` and `;`
    comments, values unquoted or quoted as in a shell, a backslash at the
    end of a line continuing it. None if a line cannot be parsed."""
    env: dict[str, str] = {}
    for line in re.sub(r"\\\n", "", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            return None
        try:
            env[name] = " ".join(shlex.split(value))
        except ValueError:
            return None
    return env
