"""Traffic probes for the hitless lane, run inside the guest (standard library only).

Each probe logs one line per event to a file, with the guest's wall clock, so
the host can read the logs after a restart and tell what got through when:

    tcp-server PORT LOG          accept one stream at a time; log "<time> <bytes>" per read
    tcp-client HOST PORT LOG     send a 64-byte record every 10 ms until SIGTERM; log
                                 "sent N" and "error TEXT" (a reset or a timeout) at the end
    udp-echo PORT                answer every datagram with itself
    udp-new HOST PORT LOG        every 10 ms, from a fresh socket (a new source port, so a
                                 new datapath flow, an upcall), send one datagram and log
                                 "<time> <port>" for each answer received

Run them in the namespaces with `ip netns exec NS python3 probe.py ...`.
"""

from __future__ import annotations

import selectors
import signal
import socket
import sys
import time
from typing import TextIO

INTERVAL = 0.01
RECORD = 64
STOP = False


def _stop(_signo: int, _frame: object) -> None:
    global STOP
    STOP = True


def _log(path: str) -> TextIO:
    return open(path, "w", buffering=1)


def tcp_server(port: int, path: str) -> None:
    log = _log(path)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(4)
    while not STOP:
        conn, peer = listener.accept()
        log.write(f"connect {peer[0]}:{peer[1]}\n")
        with conn:
            while chunk := conn.recv(65536):
                log.write(f"{time.time():.6f} {len(chunk)}\n")
        log.write("closed\n")


class Stopped(Exception):
    pass


def _raise_stopped(_signo: int, _frame: object) -> None:
    raise Stopped


def tcp_client(host: str, port: int, path: str) -> None:
    log = _log(path)
    conn = socket.create_connection((host, port), timeout=10)
    conn.settimeout(30)
    sent = 0
    error = ""
    record = b"x" * RECORD
    # A send blocked by a full window must not outlive the stop.
    signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        while True:
            conn.sendall(record)
            sent += RECORD
            time.sleep(INTERVAL)
    except Stopped:
        pass
    except OSError as e:
        error = f"{type(e).__name__}: {e}"
    log.write(f"sent {sent}\n")
    if error:
        log.write(f"error {error}\n")
    conn.close()


def udp_echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while not STOP:
        data, peer = sock.recvfrom(2048)
        sock.sendto(data, peer)


def udp_new(host: str, port: int, path: str) -> None:
    """One datagram per fresh socket every INTERVAL; answers are logged as they come.

    Sockets are kept open for a second, so a late answer still lands; the
    kernel picks each one a new ephemeral port."""
    log = _log(path)
    sel = selectors.DefaultSelector()
    open_socks: list[tuple[float, socket.socket]] = []
    next_send = time.monotonic()
    while not STOP:
        now = time.monotonic()
        if now >= next_send:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((host, port))
            try:
                sock.send(b"new")
                sel.register(sock, selectors.EVENT_READ)
                open_socks.append((now, sock))
            except OSError:
                sock.close()
            next_send += INTERVAL
            if next_send < now:  # the guest fell behind: do not burst
                next_send = now + INTERVAL
        for key, _ in sel.select(max(0.0, next_send - time.monotonic())):
            answered = key.fileobj
            assert isinstance(answered, socket.socket)
            try:
                answered.recv(2048)
                log.write(f"{time.time():.6f} {answered.getsockname()[1]}\n")
            except OSError:
                pass
        while open_socks and open_socks[0][0] < time.monotonic() - 1.0:
            _, old = open_socks.pop(0)
            sel.unregister(old)
            old.close()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    command, *args = argv
    if command == "tcp-server":
        tcp_server(int(args[0]), args[1])
    elif command == "tcp-client":
        tcp_client(args[0], int(args[1]), args[2])
    elif command == "udp-echo":
        udp_echo(int(args[0]))
    elif command == "udp-new":
        udp_new(args[0], int(args[1]), args[2])
    else:
        raise SystemExit(f"unknown probe {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
