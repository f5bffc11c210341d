"""The live demo: restart Open vSwitch under systemd and keep every flow.

A throwaway systemd boots as PID 1 of private PID, mount and network
namespaces and runs Debian's Open vSwitch (userspace datapath) through
ovs-service's units. Two hosts ping each other at 1 kHz through a bridge
whose flows, group and meter carry their traffic (no NORMAL), next to the
corpus bridge (a varied table from Open vSwitch's own tests) when it is
there. `ovs-service restart` runs; then the OpenFlow state is compared with
the one before, and the longest gap in the pings is the time traffic stopped.

For contrast, the same state in a second throwaway systemd with Debian's
own units and `systemctl restart openvswitch-switch`.

Nothing touches the machine's own switch or network; the namespaces are
powered off and checked for leftovers on every way out (Ctrl-C too).
Exit status: 0 when ovs-service kept the state and traffic came back, 1 when
not, 2 when the demo could not run, 128 + the signal when interrupted.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import canon  # noqa: E402
import corpus  # noqa: E402
from lane import UNITS, Hosts, NsSwitch, add_hosts, remove_hosts  # noqa: E402
from ovsbed import BedError  # noqa: E402
from systemd_ns import (  # noqa: E402
    INNER_PATH,
    CommandError,
    SystemdNamespace,
    SystemdNamespaceError,
)

TRAFFIC_BRIDGE = "brt"
CORPUS_BRIDGE = "br0"
PING_INTERVAL = 0.001  # 1 kHz
FAULT_ENV = "OVS_SERVICE_FAULT"

# -- the terminal ------------------------------------------------------------

_COLOR = sys.stdout.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ


def _paint(code: str, text: str) -> str:
    return f"\033[{code}m{text}\033[0m" if _COLOR else text


OK = _paint("32", "✓")
BAD = _paint("31", "✗")


def say(text: str = "") -> None:
    print(text, flush=True)


def heading(text: str) -> None:
    say()
    say(_paint("1", text))


@contextlib.contextmanager
def step(text: str) -> Iterator[None]:
    """`▸ text ...... 1.23 s` once the block is done."""
    print(f"  ▸ {text} ", end="", flush=True)
    began = time.monotonic()
    try:
        yield
    except BaseException:
        print(flush=True)
        raise
    print(f"{'.' * max(2, 64 - len(text))} {time.monotonic() - began:5.2f} s", flush=True)


def mark(ok: bool, text: str) -> None:
    say(f"  {OK if ok else BAD} {text}")


# -- one scenario --------------------------------------------------------------


class DemoError(RuntimeError):
    """The demo could not run (as opposed to: ovs-service lost state)."""


@dataclass
class Result:
    before: dict[str, list[str]]
    after: dict[str, list[str]]
    exit_code: int
    restarted: bool
    """Whether ovs-vswitchd runs as a new process after the restart."""
    gap: float
    flow_restore_wait: str
    talks: bool

    @property
    def total(self) -> int:
        return sum(len(lines) for lines in self.before.values())

    @property
    def kept(self) -> int:
        """Lines of the state before that are still there after (as a multiset)."""
        return sum(
            (collections.Counter(lines) & collections.Counter(self.after.get(bridge, []))).total()
            for bridge, lines in self.before.items()
        )


def build_state(ns: SystemdNamespace, switch: NsSwitch) -> Hosts:
    corpus.build_corpus(switch, CORPUS_BRIDGE)
    return add_hosts(ns, switch, TRAFFIC_BRIDGE)


def summarise(state: dict[str, list[str]]) -> None:
    kinds = ("flow", "group", "meter", "tlv", "ofport")
    say(f"      {'bridge':<8}" + "".join(f"{k + 's':>9}" for k in kinds) + f"{'lines':>9}")
    for bridge, lines in sorted(state.items()):
        counts = collections.Counter(line.split(":", 1)[0] for line in lines)
        say(f"      {bridge:<8}" + "".join(f"{counts[k]:>9}" for k in kinds) + f"{len(lines):>9}")


def stream(ns: SystemdNamespace, argv: Sequence[str], timeout: float = 120) -> int:
    """Run argv inside, its output shown as it comes, indented; killed after `timeout`.

    Its output goes to a pseudo-terminal: what it prints is what an operator
    at a terminal sees (tools show progress on a terminal only).
    """
    env = {"PATH": INNER_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb",
           "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    # ovs-service's fault injection, so that a test can make the restart fail.
    if FAULT_ENV in os.environ:
        env[FAULT_ENV] = os.environ[FAULT_ENV]
    say(f"    $ {' '.join(argv)}")
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(ns.nsenter_argv(argv), stdin=subprocess.DEVNULL, stdout=slave,
                                stderr=slave, env=env)
    finally:
        os.close(slave)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        with open(master, "rb", buffering=0) as terminal:
            pending = b""
            while True:
                try:
                    chunk = terminal.read(4096)
                except OSError:  # EIO: the command and its children closed the terminal
                    break
                if not chunk:
                    break
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    say(f"    │ {line.decode(errors='replace').rstrip()}")
            if pending.strip():
                say(f"    │ {pending.decode(errors='replace').rstrip()}")
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode == -signal.SIGKILL:
        raise DemoError(f"{' '.join(argv)} did not finish within {timeout:g} s")
    return proc.returncode


@contextlib.contextmanager
def throwaway_systemd() -> Iterator[SystemdNamespace]:
    """Like the tests' `booted()`: boot, yield, power off, and fail if anything is left.

    After an interrupt, the namespace's processes can take a moment to be
    reaped, keeping its cgroup busy: retry the clean-up for a few seconds.
    """
    ns = SystemdNamespace()
    try:
        with ns:
            yield ns
    finally:
        deadline = time.monotonic() + 10
        while ns.leftovers() and time.monotonic() < deadline:
            time.sleep(0.2)
            ns.stop()
        if left := ns.leftovers():
            raise SystemdNamespaceError(f"systemd namespace left behind: {left}")


def scenario(units: Sequence[Path], start_unit: str, restart: Sequence[str], *,
             show_state: bool) -> Result:
    with throwaway_systemd() as ns:
        switch = NsSwitch(ns)
        hosts: Hosts | None = None
        try:
            say(f"  ▸ throwaway systemd booted in {ns.boot_seconds:.2f} s "
                f"(PID {ns.pid} outside, private PID, mount and network namespaces)")
            with step(f"start Open vSwitch (systemctl start {start_unit})"):
                if units:
                    ns.install_units(units)
                ns.systemctl("start", start_unit)
            with step("build the state"):
                hosts = build_state(ns, switch)
                talks = hosts.ping()
                before = canon.all_states(switch)
            if show_state:
                summarise(before)
                say(f"      {TRAFFIC_BRIDGE}: host {hosts.addresses[0]} → group 7 → "
                    f"host {hosts.addresses[1]}; back: meter 3 → host {hosts.addresses[0]}")
            mark(talks, f"hosts talk through {TRAFFIC_BRIDGE}'s flows")
            if not talks:
                raise DemoError("the hosts do not reach each other before the restart")
            say(f"  ▸ pinging every {PING_INTERVAL * 1000:g} ms while it runs:")
            daemon = ns.main_pid("ovs-vswitchd.service")
            with hosts.prober(PING_INTERVAL) as gap:
                exit_code = stream(ns, restart)
            # Jobs that the restart propagated may still be queued.
            with contextlib.suppress(SystemdNamespaceError):
                ns.settle(timeout=10)
            restarted = ns.main_pid("ovs-vswitchd.service") not in (0, daemon)
            return Result(before=before, after=canon.all_states(switch), exit_code=exit_code,
                          restarted=restarted, gap=gap.seconds,
                          flow_restore_wait=switch.flow_restore_wait(),
                          talks=hosts.ping(timeout=10))
        finally:
            if hosts is not None:
                remove_hosts(hosts)
            switch.close()


def steering(state: dict[str, list[str]]) -> str:
    """What carries the traffic bridge's packets: its flows, group and meter, or NORMAL."""
    counts = collections.Counter(ln.split(":", 1)[0] for ln in state.get(TRAFFIC_BRIDGE, []))
    flows = [ln for ln in state.get(TRAFFIC_BRIDGE, []) if ln.startswith("flow:")]
    if flows == ["flow: priority=0 actions=NORMAL"]:
        return "NORMAL only"
    return f"{counts['flow']} flows, {counts['group']} group, {counts['meter']} meter"


def show_steering(after: dict[str, list[str]]) -> None:
    lines = after.get(TRAFFIC_BRIDGE, [])
    flows = [ln.removeprefix("flow: ") for ln in lines if ln.startswith("flow:")]
    say(f"      {TRAFFIC_BRIDGE}'s flows now: {'; '.join(flows) or '(none)'}")
    gone = [what for what, kind in (("group 7", "group:"), ("meter 3", "meter:"))
            if not any(ln.startswith(kind) for ln in lines)]
    if gone:
        say(f"      {' and '.join(gone)}: gone")


def summary_cells(result: Result) -> dict[str, str]:
    return {
        "state kept": f"{result.kept} of {result.total} lines",
        "flow-restore-wait": "absent" if not result.flow_restore_wait else "set",
        f"{TRAFFIC_BRIDGE} steered by": steering(result.after),
        "hosts talk after": "yes" if result.talks else "no",
        "longest traffic gap": gap_text(result.gap),
    }


def gap_text(seconds: float) -> str:
    return "no reply at all" if seconds == float("inf") else f"{seconds * 1000:.0f} ms"


def restart_failed(result: Result) -> bool:
    """Say so first and loudly when the restart did not run: no ✓ and no gap figure."""
    if result.exit_code == 0 and result.restarted:
        return False
    say()
    say(f"  {BAD} " + _paint("1;31", "THE RESTART FAILED: nothing below measures a restart"))
    if result.exit_code != 0:
        say(f"      ovs-service restart exited with {describe_exit(result.exit_code)} "
            "(its output is above)")
    if not result.restarted:
        say("      ovs-vswitchd was not restarted: the same process runs as before")
    return True


def describe_exit(code: int) -> str:
    return f"signal {-code}" if code < 0 else str(code)


def run(with_contrast: bool) -> int:
    heading("1. ovs-service restart, under systemd, with ovs-service's units")
    ours = scenario(UNITS, "openvswitch.service", ["ovs-service", "restart"], show_state=True)
    if restart_failed(ours):
        return 1
    identical = ours.after == ours.before
    mark(ours.exit_code == 0, f"ovs-service restart exited with {ours.exit_code}")
    mark(identical, f"canonical state before vs after: "
         f"{'identical' if identical else 'DIFFERENT'}, {ours.kept} of {ours.total} lines")
    if not identical:
        for bridge in sorted(set(ours.before) | set(ours.after)):
            if ours.before.get(bridge) != ours.after.get(bridge):
                say(f"      {bridge}:")
                for line in canon.diff(ours.before.get(bridge, []), ours.after.get(bridge, []),
                                       limit=20).splitlines():
                    say(f"        {line}")
    mark(ours.flow_restore_wait == "", "flow-restore-wait: "
         + ("absent" if ours.flow_restore_wait == "" else f"still {ours.flow_restore_wait}"))
    mark(ours.talks, (f"hosts talk again, steered by {steering(ours.after)}" if ours.talks
                      else "hosts do NOT talk after the restart"))
    say(f"  ⏱ traffic stopped for at most {gap_text(ours.gap)} (longest gap between replies)")
    passed = ours.exit_code == 0 and identical and ours.flow_restore_wait == "" and ours.talks

    stock: Result | None = None
    if with_contrast:
        heading("2. For contrast: Debian's own units, systemctl restart openvswitch-switch")
        try:
            stock = scenario([], "openvswitch-switch.service",
                             ["systemctl", "restart", "openvswitch-switch"], show_state=False)
        except (DemoError, CommandError, BedError) as error:
            say(f"  ! the contrast could not run: {str(error).splitlines()[0]}")
        else:
            mark(stock.kept == stock.total,
                 f"canonical state before vs after: kept {stock.kept} of {stock.total} lines")
            show_steering(stock.after)
            say("      hosts " + ("still talk, but through NORMAL, not the steering flows"
                                if stock.talks else "no longer talk"))
            say(f"  ⏱ traffic stopped for at most {gap_text(stock.gap)}")

    heading("Summary")
    columns = [summary_cells(ours)] + ([summary_cells(stock)] if stock else [])
    say(f"  {'':<22}" + ("ovs-service restart".ljust(28) + "systemctl restart openvswitch-switch"
                        if stock else "ovs-service restart"))
    for label in columns[0]:
        say(f"  {label:<22}" + "".join(f"{cells[label]:<28}" for cells in columns).rstrip())
    if stock and stock.talks and steering(stock.after) == "NORMAL only":
        say(f"  (with Debian's units, traffic resumes through NORMAL: {TRAFFIC_BRIDGE}'s own "
            "flows are gone)")
    say()
    mark(passed, "ovs-service kept every flow, group and meter across the restart" if passed
         else "ovs-service did NOT keep the state: see above")
    return 0 if passed else 1


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so that every namespace is powered off."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-contrast", action="store_true",
                        help="skip the run with Debian's own units")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("demo: needs root (namespaces, a throwaway systemd and Open vSwitch)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    began = time.monotonic()
    say(_paint("1", "ovs-service live demo: restart Open vSwitch and keep its OpenFlow state"))
    try:
        code = run(with_contrast=not args.no_contrast)
    except KeyboardInterrupt as interrupt:
        say()
        say("interrupted: namespaces powered off")
        return 128 + (interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT)
    except Exception as error:
        say()
        say(f"{BAD} demo failed: {error}")
        return 2
    say(f"  (demo took {time.monotonic() - began:.1f} s; namespaces powered off, "
        "nothing left behind)")
    return code


if __name__ == "__main__":
    sys.exit(main())
