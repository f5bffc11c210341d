"""The one way ovs-service runs another program: argv only, never a shell."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from ovs_service.errors import CommandFailed, CommandNotFound

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    ok_codes: Collection[int] = (0,),
    stdout: IO[bytes] | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run `argv`; return its output, or raise CommandFailed naming the command.

    `env` is added to the inherited environment, in which LC_ALL=C keeps
    every tool's messages in one, stable language. With `stdout` given, the
    program writes straight into that file (for large dumps), and
    `Completed.stdout` is empty.
    """
    argv = tuple(str(a) for a in argv)
    log.debug("run: %s", shlex.join(argv))
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        proc = subprocess.run(
            argv,
            input=input.encode() if input is not None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise CommandNotFound(command=argv[0]) from None
    except subprocess.TimeoutExpired:
        raise CommandFailed(
            command=shlex.join(argv), returncode="timeout", stderr=f"no answer in {timeout}s"
        ) from None
    out = proc.stdout.decode(errors="replace") if stdout is None and proc.stdout else ""
    err = proc.stderr.decode(errors="replace") if proc.stderr else ""
    if proc.returncode not in ok_codes:
        raise CommandFailed(
            command=shlex.join(argv),
            returncode=proc.returncode,
            stderr=" ".join(err.split()) or "(no message)",
        )
    return Completed(argv, proc.returncode, out, err)
