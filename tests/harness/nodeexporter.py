"""Debian's prometheus-node-exporter, run for a test: its textfile collector
alone, on 127.0.0.1 at a free port, reading one folder; scraped over HTTP
and stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from tests.harness.ovsbed import kill_pid

BINARY = "prometheus-node-exporter"
TIMEOUT = 30.0


def available() -> bool:
    return shutil.which(BINARY) is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NodeExporter:
    def __init__(self, textfile_dir: Path) -> None:
        self.textfile_dir = textfile_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def __enter__(self) -> NodeExporter:
        for _ in range(5):  # the port may be taken between the probe and the bind
            port = _free_port()
            self.url = f"http://127.0.0.1:{port}/metrics"
            self.proc = subprocess.Popen(
                [BINARY, f"--web.listen-address=127.0.0.1:{port}",
                 "--collector.disable-defaults", "--collector.textfile",
                 f"--collector.textfile.directory={self.textfile_dir}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            self._stop()
        raise RuntimeError(f"{BINARY} did not answer on 127.0.0.1")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return False
            try:
                self.scrape()
                return True
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        return False

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as reply:
            text: str = reply.read().decode()
            return text

    def _stop(self) -> None:
        if self.proc is not None:
            kill_pid(self.proc.pid)
            self.proc.wait(timeout=10)
            self.proc = None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()
