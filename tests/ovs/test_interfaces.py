"""The interfaces stage on tap devices in a private network namespace.

A module reload is simulated by deleting the taps and creating them again
(bare, with a new random MAC); the stage runs inside the namespace in a child
Python, and the result is checked with `ip -json`, never with the stage itself.
Taps are held open by a helper process, as ovs-vswitchd holds its internal
ports, so they have carrier (IPv6 DAD, kernel link-local addresses).
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ovs_service import codec
from ovs_service.errors import SnapshotInvalid
from ovs_service.netlink import eui64_link_local, is_generated_link_local
from ovs_service.stages import interfaces
from ovs_service.stages.interfaces import (
    AddressState,
    InterfacesSnapshot,
    InterfaceState,
    NextHopState,
    RouteState,
)

REPO = Path(__file__).resolve().parents[2]
WHERE = codec.Where(Path("/snapshots/s"), "interfaces/interfaces.json")

# Names are data: shell metacharacters, the longest legal name (15 bytes),
# non-ASCII. The kernel refuses "/", ":", whitespace, "." and "..".
ODD = "a$b;c"
LONG = "123456789012345"
UMLAUT = "brü0"

HOLDER = r"""
import fcntl, json, os, struct, sys
TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000
fds = []
for name in json.loads(sys.argv[1]):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    fds.append(fd)
print("ready", flush=True)
sys.stdin.read()
"""

STAGE = r"""
import json, sys
from pathlib import Path
from ovs_service import codec
from ovs_service.stages import interfaces
op, path = sys.argv[1], Path(sys.argv[2])
if op == "save":
    snapshot = interfaces.save_interfaces(json.loads(sys.argv[3]))
    path.write_text(json.dumps(snapshot.to_doc(), indent=1, sort_keys=True) + "\n")
else:
    where = codec.Where(path.parent, path.name)
    snapshot = interfaces.InterfacesSnapshot.from_doc(json.loads(path.read_text()), where=where)
    print(json.dumps(interfaces.restore_interfaces(snapshot).to_dict(), indent=1))
"""

# The stage with the wall clock stepped by argv[1] seconds, as `date -s` or a
# first NTP sync between a save and its restore would: only this process's
# time.time moves; the kernel's clocks, and the host's, are left alone.
CLOCK_STEPPED = r"""
import sys, time
_step = float(sys.argv.pop(1))
_wall = time.time
time.time = lambda: _wall() + _step
""" + STAGE


def sh(argv: Sequence[str], *, input: str | None = None) -> str:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{argv!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


class Namespace:
    """A network namespace of the test's own, with helpers that hold taps open."""

    def __init__(self) -> None:
        self.name = f"ovssvc-if-{os.getpid()}-{secrets.token_hex(3)}"
        self.holders: dict[tuple[str, ...], subprocess.Popen[str]] = {}
        sh(["ip", "netns", "add", self.name])

    def ip(self, *args: str) -> str:
        return sh(["ip", "-n", self.name, *args])

    def json(self, *args: str) -> Any:
        return json.loads(self.ip("-json", *args) or "[]")

    def add_taps(self, *names: str) -> None:
        for name in names:
            self.ip("tuntap", "add", "dev", name, "mode", "tap")
        holder = subprocess.Popen(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", HOLDER, json.dumps(names)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        self.holders[names] = holder
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"

    def release_taps(self, names: Sequence[str] | None = None) -> None:
        """Stop the helpers holding these taps (all of them by default)."""
        for key in [k for k in self.holders if names is None or set(k) & set(names)]:
            holder = self.holders.pop(key)
            assert holder.stdin is not None
            holder.stdin.close()
            try:
                holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                holder.kill()
                holder.wait()

    def stage(self, op: str, path: Path, *args: str, clock_step: float = 0.0) -> str:
        script = [CLOCK_STEPPED, str(clock_step)] if clock_step else [STAGE]
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, sys.executable, "-c", *script, op, str(path),
             *args],
            capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def save(self, path: Path, names: Sequence[str]) -> dict[str, Any]:
        self.stage("save", path, json.dumps(list(names)))
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc

    def restore(self, path: Path, *, clock_step: float = 0.0) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(self.stage("restore", path, clock_step=clock_step))
        return report

    def remove(self) -> None:
        self.release_taps()
        sh(["ip", "netns", "del", self.name])


@pytest.fixture
def netns() -> Iterator[Namespace]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces, tap devices)")
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.remove()


# -- the independent view -------------------------------------------------------


def view(ns: Namespace) -> dict[str, Any]:
    """Links, addresses and routes as `ip -json` shows them, minus what
    legitimately differs after re-creation: ifindexes, lifetimes counting down."""
    links = {
        link.pop("ifname"): _without(link, "ifindex") for link in ns.json("-d", "link", "show")
    }
    addresses = {
        entry["ifname"]: [_lifetimes(a) for a in entry.get("addr_info", [])]
        for entry in ns.json("addr", "show")
    }
    routes = sorted(
        json.dumps(r, sort_keys=True)
        for family in ("-4", "-6")
        for r in ns.json("-d", family, "route", "show", "table", "all")
    )
    return {"links": links, "addresses": addresses, "routes": routes}


def assert_same(after: dict[str, Any], before: dict[str, Any]) -> None:
    """Equal views, or a message naming just what differs."""
    old, new = set(before["routes"]), set(after["routes"])
    diffs = [f"route only before: {r}" for r in sorted(old - new)]
    diffs += [f"route only after: {r}" for r in sorted(new - old)]
    for part in ("links", "addresses"):
        for name in sorted(before[part].keys() | after[part].keys()):
            if before[part].get(name) != after[part].get(name):
                diffs.append(f"{part} of {name!r}: before {before[part].get(name)}"
                             f" after {after[part].get(name)}")
    assert not diffs and after == before, "\n".join(diffs)


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _lifetimes(address: dict[str, Any]) -> dict[str, Any]:
    out = dict(address)
    for key in ("valid_life_time", "preferred_life_time"):
        if key in out:
            out[key] = "forever" if out[key] == 0xFFFFFFFF else "finite"
    return out


def settle(ns: Namespace, timeout: float = 15.0) -> None:
    """Wait until IPv6 duplicate address detection is over on the links that are up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            a for entry in ns.json("addr", "show") if "UP" in entry["flags"]
            for a in entry.get("addr_info", []) if a.get("tentative")
        ]
        if not busy:
            return
        time.sleep(0.2)
    raise AssertionError(f"IPv6 addresses still tentative after {timeout}s")


def reload_taps(
    ns: Namespace, names: Sequence[str], *, recreate: Sequence[str] | None = None
) -> None:
    """What a module reload does to internal ports: gone, then back bare."""
    ns.release_taps(names)
    for name in names:
        ns.ip("link", "del", "dev", name)
    ns.add_taps(*(names if recreate is None else recreate))


# -- the scenario ---------------------------------------------------------------


def configure(ns: Namespace) -> None:
    ns.add_taps(ODD, LONG, UMLAUT)
    ns.add_taps("other0")
    ip = ns.ip
    ip("link", "set", "dev", ODD, "address", "02:00:00:0a:00:01", "mtu", "1400",
       "txqueuelen", "321")
    ip("addr", "add", "192.0.2.1/24", "brd", "+", "dev", ODD, "label", f"{ODD}:1")
    ip("addr", "add", "192.0.2.2/24", "dev", ODD)  # a secondary
    ip("addr", "add", "198.51.100.1/25", "broadcast", "198.51.100.127", "dev", ODD)
    ip("addr", "add", "2001:db8:a::1/64", "dev", ODD, "nodad", "noprefixroute")
    ip("addr", "add", "2001:db8:b::1/64", "dev", ODD)
    ip("addr", "add", "2001:db8:c::1/64", "dev", ODD, "valid_lft", "3000", "preferred_lft", "2000")
    ip("addr", "add", "2001:db8:d::1/64", "dev", ODD, "home", "mngtmpaddr")
    ip("addr", "add", "fe80::1234/64", "dev", ODD)  # a link-local address set by hand
    ip("link", "set", "dev", ODD, "up")

    ip("link", "set", "dev", LONG, "address", "02:00:00:0f:00:01", "mtu", "9000")
    ip("link", "set", "dev", LONG, "allmulticast", "on")
    ip("addr", "add", "10.15.0.1/24", "dev", LONG)
    ip("addr", "add", "10.99.1.1", "peer", "10.99.1.2/32", "dev", LONG)
    ip("addr", "add", "2001:db8:15::1/64", "dev", LONG, "nodad")
    ip("link", "set", "dev", LONG, "up")

    ip("link", "set", "dev", UMLAUT, "mtu", "1280", "txqueuelen", "42",
       "address", "02:00:00:20:00:01")
    ip("link", "set", "dev", UMLAUT, "arp", "off")
    ip("addr", "add", "172.20.0.1/16", "dev", UMLAUT)
    ip("addr", "add", "2001:db8:20::1/64", "dev", UMLAUT, "nodad")  # stays down

    ip("addr", "add", "10.44.0.1/24", "dev", "other0")  # not saved, not touched
    ip("link", "set", "dev", "other0", "up")

    ip("route", "add", "203.0.113.0/24", "via", "192.0.2.254", "dev", ODD, "metric", "10",
       "src", "192.0.2.1")
    ip("route", "add", "10.100.0.0/16", "via", "198.51.100.126", "dev", ODD, "metric", "7",
       "src", "198.51.100.1", "table", "100")
    ip("route", "add", "default", "via", "10.15.0.254", "dev", LONG, "metric", "50", "table", "100")
    ip("route", "add", "10.60.0.0/24", "dev", ODD, "scope", "link", "table", "100")
    ip("route", "add", "10.70.0.0/16", "dev", ODD, "src", "10.15.0.1")  # source on another link
    ip("route", "add", "10.200.0.0/16", "nexthop", "via", "192.0.2.253", "dev", ODD, "weight", "2",
       "nexthop", "via", "10.15.0.254", "dev", LONG, "weight", "1")
    ip("route", "add", "10.250.0.0/16", "via", "172.31.0.1", "dev", LONG, "onlink", "table", "200")
    ip("route", "add", "local", "10.80.0.0/24", "dev", ODD, "table", "local")
    ip("route", "add", "10.45.0.0/16", "via", "10.44.0.254", "dev", "other0")  # not saved
    ip("route", "add", "blackhole", "10.90.0.0/16")  # through no interface
    ip("-6", "route", "add", "2001:db8:200::/48", "via", "2001:db8:b::fe", "dev", ODD,
       "metric", "20", "mtu", "1400", "table", "200")
    ip("-6", "route", "add", "default", "via", "fe80::1", "dev", LONG, "metric", "1",
       "table", "200")
    ip("-6", "route", "add", "2001:db8:300::/48", "nexthop", "via", "fe80::1", "dev", ODD,
       "nexthop", "via", "fe80::2", "dev", LONG)
    ip("-6", "route", "add", "2001:db8:400::/48", "from", "2001:db8:401::/48", "dev", LONG)
    ip("-6", "route", "add", "2001:db8:500::/48", "dev", LONG, "pref", "high")


SAVED = (ODD, LONG, UMLAUT)


@pytest.mark.root
def test_restore_after_reload_matches_ip_view(netns: Namespace, tmp_path: Path) -> None:
    configure(netns)
    settle(netns)
    before = view(netns)
    snapshot_file = tmp_path / "interfaces.json"
    doc = netns.save(snapshot_file, [*SAVED, "gone0"])
    assert doc["missing"] == ["gone0"]
    assert [i["name"] for i in doc["interfaces"]] == list(SAVED)

    # The snapshot decodes and encodes back to the same document.
    where = codec.Where(tmp_path, snapshot_file.name)
    assert InterfacesSnapshot.from_doc(doc, where=where).to_doc() == doc

    # The kernel's own EUI-64 link-local address is left out, the hand-made one kept.
    odd = doc["interfaces"][0]
    kernel_ll = str(eui64_link_local("02:00:00:0a:00:01"))
    assert kernel_ll in {a["local"] for a in before["addresses"][ODD]}
    assert kernel_ll not in {a["address"] for a in odd["addresses"]}
    assert "fe80::1234" in {a["address"] for a in odd["addresses"]}

    reload_taps(netns, SAVED)
    bare = view(netns)
    assert bare["links"][ODD]["address"] != "02:00:00:0a:00:01"
    assert bare["addresses"][ODD] == []

    report = netns.restore(snapshot_file)
    assert report["ok"], report["problems"]
    statuses = {i["name"]: i["status"] for i in report["interfaces"]}
    assert statuses == dict.fromkeys(SAVED, "restored")
    assert report["routes_added"] == len(doc["routes"]) > 10
    settle(netns)
    assert_same(view(netns), before)

    # A second restore changes nothing and adds nothing.
    again = netns.restore(snapshot_file)
    assert again["ok"], again["problems"]
    assert again["routes_added"] == 0
    assert again["routes_present"] == len(doc["routes"])
    assert all(i["addresses_added"] == 0 for i in again["interfaces"])
    assert_same(view(netns), before)


@pytest.mark.root
def test_failures_are_reported_and_the_rest_restored(netns: Namespace, tmp_path: Path) -> None:
    netns.add_taps("keep0", "lost0")
    for name, net in (("keep0", "10.1.1"), ("lost0", "10.2.2")):
        netns.ip("addr", "add", f"{net}.1/24", "dev", name)
        netns.ip("link", "set", "dev", name, "up")
        netns.ip("route", "add", f"{net}0.0/24", "via", f"{net}.254", "dev", name, "table", "100")
    snapshot_file = tmp_path / "interfaces.json"
    doc = netns.save(snapshot_file, ["keep0", "lost0"])
    # An address the kernel refuses (IPv4 prefix length 33), before a good one.
    keep = next(i for i in doc["interfaces"] if i["name"] == "keep0")
    bogus = copy.deepcopy(keep["addresses"][0])
    bogus.update(address="10.1.1.9", prefixlen=33, label=None, broadcast=None)
    keep["addresses"].insert(0, bogus)
    snapshot_file.write_text(json.dumps(doc))

    reload_taps(netns, ["keep0", "lost0"], recreate=["keep0"])
    report = netns.restore(snapshot_file)

    assert not report["ok"]
    outcome = {i["name"]: i for i in report["interfaces"]}
    assert outcome["lost0"]["status"] == "missing"
    assert outcome["keep0"]["status"] == "partial"
    assert outcome["keep0"]["addresses_added"] == 1
    errors = {(p["subject"], p["errno_name"]) for p in report["problems"]}
    assert ("lost0", "ENODEV") in errors
    assert ("keep0", "EINVAL") in errors
    assert any(p["errno_name"] == "ENODEV" and "lost0" in p["subject"]
               for p in report["problems"] if p["action"] == "add route")
    assert report["routes_added"] == 1 and report["routes_failed"] == 1

    link = netns.json("addr", "show", "dev", "keep0")[0]
    assert "UP" in link["flags"]
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["10.1.1.1"]
    routes = netns.json("route", "show", "table", "100")
    assert [r["dst"] for r in routes] == ["10.1.10.0/24"]


def _lifetimes_of(ns: Namespace, name: str) -> dict[str, tuple[int, int]]:
    """Each address of `name` and its (valid, preferred) lifetimes, as `ip` shows them."""
    return {f"{a['local']}/{a['prefixlen']}": (a["valid_life_time"], a["preferred_life_time"])
            for entry in ns.json("addr", "show", "dev", name)
            for a in entry.get("addr_info", []) if a["scope"] == "global"}


@pytest.mark.root
@pytest.mark.parametrize("step", [2 * 3600.0, -2 * 3600.0], ids=["forward", "back"])
def test_a_clock_step_neither_drops_nor_lengthens_address_lifetimes(
    netns: Namespace, tmp_path: Path, step: float
) -> None:
    """Ten minutes after the save (by every clock), the wall clock stepped by
    two hours: the addresses come back with ten minutes less to live, neither
    dropped as expired (forward) nor with their whole lifetime (back)."""
    netns.add_taps("life0")
    for address in ("192.0.2.7/24", "2001:db8:7::1/64"):
        netns.ip("addr", "add", address, "dev", "life0", *(["nodad"] if ":" in address else []),
                 "valid_lft", "3600", "preferred_lft", "1800")
    snapshot_file = tmp_path / "interfaces.json"
    doc = netns.save(snapshot_file, ["life0"])
    doc["taken_at"] -= 600
    doc["boottime"] -= 600
    snapshot_file.write_text(json.dumps(doc))
    netns.ip("addr", "flush", "dev", "life0")  # what re-creating the interface leaves

    report = netns.restore(snapshot_file, clock_step=step)

    assert report["ok"], report["problems"]
    outcome = report["interfaces"][0]
    assert (outcome["addresses_added"], outcome["addresses_expired"]) == (2, []), outcome
    lifetimes = _lifetimes_of(netns, "life0")
    assert lifetimes.keys() == {"192.0.2.7/24", "2001:db8:7::1/64"}, lifetimes
    for address, (valid, preferred) in lifetimes.items():
        assert 2990 <= valid <= 3000 and 1190 <= preferred <= 1200, (address, valid, preferred)


@pytest.mark.root
def test_an_address_expired_since_the_save_is_reported(netns: Namespace, tmp_path: Path) -> None:
    """Saved in another boot two hours ago by the wall clock (the boot clock
    then says nothing): an address with an hour to live is not put back, and
    the report and the command's output say so; the others are restored."""
    netns.add_taps("life1")
    netns.ip("addr", "add", "192.0.2.8/24", "dev", "life1", "valid_lft", "3600",
             "preferred_lft", "1800")
    netns.ip("addr", "add", "192.0.2.9/24", "dev", "life1")
    snapshot_file = tmp_path / "interfaces.json"
    doc = netns.save(snapshot_file, ["life1"])
    doc["boot_id"] = "00000000-0000-4000-8000-000000000000"
    doc["taken_at"] -= 2 * 3600
    snapshot_file.write_text(json.dumps(doc))
    netns.ip("addr", "flush", "dev", "life1")

    report = netns.restore(snapshot_file)

    outcome = report["interfaces"][0]
    assert outcome["addresses_expired"] == ["192.0.2.8/24"], outcome
    assert outcome["addresses_added"] == 1 and report["ok"], report
    assert _lifetimes_of(netns, "life1").keys() == {"192.0.2.9/24"}
    shown = str(interfaces.InterfacesReport({"ok": True, "interfaces": report, "firewall": None}))
    assert "life1: address 192.0.2.8/24 expired since the save" in shown, shown


@pytest.mark.root
def test_a_snapshot_from_the_future_of_another_boot_keeps_whole_lifetimes(
    netns: Namespace, tmp_path: Path
) -> None:
    """The wall clock stepped back since a save in another boot: no negative
    time since the save, so no lifetime longer than saved."""
    netns.add_taps("life2")
    netns.ip("addr", "add", "192.0.2.10/24", "dev", "life2", "valid_lft", "3600",
             "preferred_lft", "1800")
    snapshot_file = tmp_path / "interfaces.json"
    doc = netns.save(snapshot_file, ["life2"])
    doc["boot_id"] = "00000000-0000-4000-8000-000000000000"
    doc["taken_at"] += 2 * 3600
    snapshot_file.write_text(json.dumps(doc))
    netns.ip("addr", "flush", "dev", "life2")

    assert netns.restore(snapshot_file)["ok"]
    valid, preferred = _lifetimes_of(netns, "life2")["192.0.2.10/24"]
    assert 3590 <= valid <= 3600 and 1790 <= preferred <= 1800, (valid, preferred)


# -- no root needed -------------------------------------------------------------


def _sample() -> InterfacesSnapshot:
    return InterfacesSnapshot(
        interfaces=(
            InterfaceState(
                name="a$b;c ü", flags=0x1003, mac="02:00:00:00:00:01", mtu=1400, txqlen=321,
                alias="uplink",
                addresses=(
                    AddressState(4, "192.0.2.1", 24, 0, 0x80, 0x80, label="a$b;c:1",
                                 broadcast="192.0.2.255"),
                    AddressState(4, "10.0.0.1", 32, 253, 0x80, None, peer="10.0.0.2"),
                    AddressState(6, "2001:db8::1", 64, 0, 0x82, 0x282, valid_lft=300,
                                 preferred_lft=100),
                ),
            ),
        ),
        routes=(
            RouteState(4, 100, "10.9.0.0", 16, gateway="192.0.2.254", interface="a$b;c ü",
                       priority=5, prefsrc="192.0.2.1", metrics=(("mtu", 1300),)),
            RouteState(6, 254, None, 0, pref=1, src="2001:db8:1::", src_len=48,
                       nexthops=(NextHopState("x", "fe80::1", 2, 4), NextHopState("y"))),
        ),
        missing=("gone",),
        taken_at=1700000000.25,
    )


def test_snapshot_doc_round_trip() -> None:
    snapshot = _sample()
    doc = json.loads(json.dumps(snapshot.to_doc()))
    assert InterfacesSnapshot.from_doc(doc, where=WHERE) == snapshot
    assert InterfacesSnapshot.from_doc(doc, where=WHERE).to_doc() == doc


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.update(schema=99), "schema"),
        (lambda d: d["interfaces"][0].update(mtu="1400"), "interfaces[0].mtu"),
        (lambda d: d["interfaces"][0]["addresses"][0].update(family=5),
         "interfaces[0].addresses[0].family"),
        (lambda d: d["routes"][0].update(metrics=[["mtu"]]), "routes[0].metrics[0]"),
        (lambda d: d.pop("routes"), "routes"),
    ],
)
def test_snapshot_rejects_malformed(mutate: Any, field: str) -> None:
    doc = json.loads(json.dumps(_sample().to_doc()))
    mutate(doc)
    with pytest.raises(SnapshotInvalid, match=rf"interfaces\.json: {re.escape(field)}: "):
        InterfacesSnapshot.from_doc(doc, where=WHERE)


def test_generated_link_local() -> None:
    mac = "02:11:22:33:44:55"
    assert str(eui64_link_local(mac)) == "fe80::11:22ff:fe33:4455"
    assert is_generated_link_local("fe80::11:22ff:fe33:4455", 64, 0x80, mac)
    assert not is_generated_link_local("fe80::1234", 64, 0x80, mac)
    assert not is_generated_link_local("fe80::11:22ff:fe33:4455", 128, 0x80, mac)
    assert is_generated_link_local("fe80::abcd:1234:5678:9abc", 64, 0x880, mac)  # stable privacy
    assert not is_generated_link_local("2001:db8::11:22ff:fe33:4455", 64, 0x80, mac)
