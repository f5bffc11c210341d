"""The command agent of the test guest: runs what the host asks, answers with the result.

It speaks JSON lines over a virtio-serial port named `ovsvm.agent` (a plain
character device: no tty line discipline, no echo, no markers to parse).
Each request is one object with an `id` and an `op`; each answer repeats the
`id`.  Operations:

    hello                      -> {"uptime": seconds, "pid": n}
    run argv [timeout input env cwd]
                               -> {"returncode": n|null, "stdout", "stderr",
                                   "timed_out": bool, "seconds"}
    write path data(base64) [mode]  -> {}
    read path                  -> {"data": base64}
    poweroff                   -> {} then the guest powers off

A command runs in its own session; on timeout its whole process group is
killed.  Background processes a command leaves behind must not keep its
stdout or stderr open (redirect them), or the command counts as running.

With --pid1 (the guest's init in plain mode) the process forks: the child
serves requests, the parent reaps every orphan (daemons that detach end up
as its children) and powers the guest off when the child ends.

Standard library only: it runs on the host's Python inside the guest.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORT_NAME = "ovsvm.agent"
GUEST_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PYTHONDONTWRITEBYTECODE": "1",
}
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC


def find_port(name: str = PORT_NAME, timeout: float = 60.0) -> str:
    """The /dev node of the virtio-serial port called `name`."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in Path("/sys/class/virtio-ports").glob("*"):
            try:
                if (entry / "name").read_text().strip() == name:
                    return f"/dev/{entry.name}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise SystemExit(f"agent: no virtio-serial port named {name}")
        time.sleep(0.1)


class Channel:
    """Lines in, lines out, over the port's file descriptor."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.buffer = b""

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                # No host on the other end (yet, or any more): the port reads
                # as end of file until one connects.
                time.sleep(0.1)
                continue
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def write_line(self, data: bytes) -> None:
        view = memoryview(data + b"\n")
        while view:
            written = os.write(self.fd, view)
            view = view[written:]


def run_command(request: dict[str, Any]) -> dict[str, Any]:
    env = dict(GUEST_ENV)
    env.update(request.get("env") or {})
    timeout = request.get("timeout")
    data = request.get("input")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            request["argv"],
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=request.get("cwd") or "/",
            start_new_session=True,
        )
    except OSError as error:
        return {
            "returncode": 127,
            "stdout": "",
            "stderr": f"agent: cannot run {request['argv'][0]}: {error}\n",
            "timed_out": False,
            "seconds": 0.0,
        }
    timed_out = False
    try:
        out, err = proc.communicate(data.encode() if data is not None else None, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Something outside the group still holds the pipes open.
            out, err = b"", b"agent: output lost after the timeout\n"
    return {
        "returncode": None if timed_out else proc.returncode,
        "stdout": out.decode(errors="replace"),
        "stderr": err.decode(errors="replace"),
        "timed_out": timed_out,
        "seconds": time.monotonic() - start,
    }


def handle(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "hello":
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return {"uptime": uptime, "pid": os.getpid()}
    if op == "run":
        return run_command(request)
    if op == "write":
        path = Path(request["path"])
        path.write_bytes(base64.b64decode(request["data"]))
        path.chmod(request.get("mode", 0o644))
        return {}
    if op == "read":
        return {"data": base64.b64encode(Path(request["path"]).read_bytes()).decode()}
    if op == "poweroff":
        return {}
    raise ValueError(f"unknown op {op!r}")


def serve(port: str) -> None:
    channel = Channel(port)
    print(f"agent: serving on {port}", file=sys.stderr, flush=True)
    while True:
        line = channel.read_line()
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as error:
            channel.write_line(json.dumps({"id": None, "error": f"bad request: {error}"}).encode())
            continue
        try:
            answer = handle(request)
        except Exception as error:
            answer = {"error": f"{type(error).__name__}: {error}"}
        answer["id"] = request.get("id")
        channel.write_line(json.dumps(answer).encode())
        if request.get("op") == "poweroff":
            return


def power_off() -> None:
    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(LINUX_REBOOT_CMD_POWER_OFF)


def pid1(port: str) -> None:
    """Serve in a child; reap everything; power off when the child ends."""
    os.environ.clear()
    os.environ.update(GUEST_ENV)
    child = os.fork()
    if child == 0:
        try:
            serve(port)
        finally:
            os._exit(0)
    while True:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == child:
            break
    power_off()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pid1", action="store_true", help="act as the guest's init")
    parser.add_argument("--port", help="device of the virtio-serial port (default: by name)")
    options = parser.parse_args()
    port = options.port or find_port()
    if options.pid1:
        pid1(port)
    else:
        serve(port)


if __name__ == "__main__":
    main()
