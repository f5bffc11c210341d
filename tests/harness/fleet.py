"""A fleet of hosts for the Ansible collection: real sshd, real ansible-core.

    with fleet_of(3) as fleet:
        run = fleet.play("restart")
        assert run.rc == 0, run.output

Each host is a lane as ovs-service's Debian package sets one up
(`packaged_lane`: systemd as PID 1 of its own PID, mount, UTS and network
namespaces, Debian's units with ovs-service's drop-ins, the corpus bridge
`br0` and two namespaces pinging through `brt`), plus OpenSSH's sshd as a
transient unit of that systemd, listening on the host's address on the
fleet's network. That network is a Linux bridge in a network namespace of
its own (the hub), with a veth into each host; the controller,
`ansible-playbook`, runs in the hub, so every task goes over SSH.

Keys, sshd's configuration, the inventory and Ansible's local files live in
one scratch folder on /dev/shm (the same path inside every namespace); the
collection is the checkout's `ansible/`, linked into it as
`ansible_collections/ovs_service/fleet`.

Each host also runs Debian's prometheus-node-exporter (its textfile
collector, reading the folder ovs-service writes its metrics to by default,
private to the host), scraped over the host's loopback (`Host.metrics`).

`overlay_packages` gives a host private, writable copies (overlayfs on
tmpfs) of the folders a package install writes (/usr, /etc, /var/lib/dpkg,
/var/cache, /var/log), with the mounts the namespace already has inside them
put back on top: `dpkg -i` there changes that host only, never the
machine's files or its package database.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness import REPO, promtext
from tests.harness.lane import DROPINS, SCRATCH, Lane, loaded_switch
from tests.harness.ovsbed import unique_name
from tests.harness.promtext import MetricFamily
from tests.harness.systemd_ns import INNER_SHADOW_DIR, SystemdNamespace, booted

COLLECTION = REPO / "ansible"
PLAYBOOK = "ovs_service.fleet.rolling_restart"
SSHD = "/usr/sbin/sshd"
# The fleet's network: the hub holds .254, host i (from 1) holds .i.
SUBNET = "10.88.0"
HUB_ADDRESS = f"{SUBNET}.254"
HOST_LINK = "fleet0"
SSHD_UNIT = "fleet-sshd.service"
# Debian's prometheus-node-exporter in each host, its textfile collector
# alone, reading the folder ovs-service writes by default; scraped over the
# host's own loopback.
NODE_EXPORTER = "/usr/bin/prometheus-node-exporter"
EXPORTER_UNIT = "fleet-node-exporter.service"
METRICS_DIR = "/var/lib/prometheus/node-exporter"
EXPORTER_ADDRESS = "127.0.0.1:9100"
SCRAPE = f"""
import sys, time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        with urllib.request.urlopen("http://{EXPORTER_ADDRESS}/metrics", timeout=5) as reply:
            sys.stdout.write(reply.read().decode())
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
"""
PLAY_TIMEOUT = 600.0
# The checkout's command inside each host (a login's PATH may find another).
EXECUTABLE = f"{INNER_SHADOW_DIR}/ovs-service"

SSHD_CONFIG = """\
ListenAddress {address}
HostKey {scratch}/host_key
PidFile /run/fleet-sshd.pid
AuthorizedKeysFile {scratch}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
Subsystem sftp internal-sftp
"""

# The folders a package install writes, each made a private overlay (see the
# module's docstring); the mounts inside them are moved aside and put back.
OVERLAY_SCRIPT = r"""
set -eu
top=/run/fleet-overlay
for dir in /usr /etc /var/lib/dpkg /var/cache /var/log; do
    name=$(echo "$dir" | tr / _)
    mkdir -p "$top/$name/upper" "$top/$name/work" "$top/$name/keep"
    subs=$(awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo)
    i=0
    for sub in $subs; do
        i=$((i + 1))
        if [ -d "$sub" ]; then mkdir -p "$top/$name/keep/$i"; else : >"$top/$name/keep/$i"; fi
        mount --bind "$sub" "$top/$name/keep/$i"
    done
    mount -t overlay overlay \
        -o "lowerdir=$dir,upperdir=$top/$name/upper,workdir=$top/$name/work" "$dir"
    i=0
    for sub in $subs; do
        i=$((i + 1)); mount --move "$top/$name/keep/$i" "$sub"
    done
done
# A container's policy-rc.d (exit 101) would keep the maintainer scripts from
# restarting anything: gone from this host's /usr only.
rm -f /usr/sbin/policy-rc.d
# man-db's trigger rebuilds its whole index after each install (this host's /var/cache).
echo 'man-db man-db/auto-update boolean false' | debconf-set-selections
"""


@contextlib.contextmanager
def packaged_lane() -> Iterator[Lane]:
    """A host set up as ovs-service's Debian package sets it up: Debian's
    units with ovs-service's drop-ins, and its openvswitch.service; the
    switch started as Debian starts it (openvswitch-switch.service), with
    the corpus bridge `br0` and two namespaces pinging through `brt`.

    Not ovs-service's own ovsdb-server and ovs-vswitchd units: the package's
    maintainer scripts stop ovsdb-server before ovs-vswitchd, and only
    Debian's units (ovs-vswitchd Requires= ovsdb-server) stop ovs-vswitchd,
    and so save its state, first."""
    with booted() as ns:
        ns.install_units([*DROPINS, REPO / "units" / "openvswitch.service"])
        ns.systemctl("start", "openvswitch-switch.service", "openvswitch.service")
        with loaded_switch(ns) as lane:
            yield lane


@dataclass
class Host:
    name: str
    address: str
    lane: Lane

    @property
    def ns(self) -> SystemdNamespace:
        return self.lane[0]

    def vswitchd(self) -> tuple[int, str]:
        """ovs-vswitchd's PID inside, and its start time (clock ticks since boot)."""
        pid = self.ns.main_pid("ovs-vswitchd")
        stat = self.ns.run(["cat", f"/proc/{pid}/stat"]).stdout
        return pid, stat.rsplit(")", 1)[1].split()[19]

    def probe(self) -> str:
        hosts = self.lane[2]
        return f"ip netns exec {hosts.names[0]} ping -c 1 -W 1 {hosts.addresses[1]}"

    def metrics(self) -> dict[str, MetricFamily]:
        """What the host's node exporter serves, parsed."""
        return promtext.parse(self.ns.run(["/usr/bin/python3", "-c", SCRAPE]).stdout)

    def status(self) -> dict[str, object]:
        doc = json.loads(self.ns.run(["ovs-service", "status", "--json"]).stdout)
        assert isinstance(doc, dict)
        return doc


@dataclass(frozen=True)
class PlayRun:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def summary(self) -> dict[str, str]:
        """The fleet_summary callback's lines: host -> the rest of its line."""
        lines = self.stdout.split("OVS FLEET SUMMARY", 1)[-1].splitlines()[1:]
        rows = {}
        for line in lines:
            if not line.strip():
                break
            host, _, rest = line.partition(" ")
            rows[host] = rest.strip()
        return rows


@dataclass
class Fleet:
    scratch: Path
    hub: str
    hosts: list[Host] = field(default_factory=list)

    def inventory(self, host_vars: Mapping[str, Mapping[str, object]]) -> Path:
        """An inventory (YAML) of every host, with `host_vars` per host name."""
        doc = {"all": {"children": {"hypervisors": {"hosts": {
            h.name: {"ansible_host": h.address, "ovs_fleet_probe": h.probe(),
                     "ovs_fleet_executable": EXECUTABLE,
                     **host_vars.get(h.name, {})}
            for h in self.hosts}}}}}
        path = self.scratch / f"{unique_name('inventory')}.json"
        path.write_text(json.dumps(doc, indent=1))
        return path

    def environment(self) -> dict[str, str]:
        home = self.scratch / "home"
        return {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "ANSIBLE_COLLECTIONS_PATH": str(self.scratch / "collections"),
            "ANSIBLE_CALLBACKS_ENABLED": "ovs_service.fleet.fleet_summary",
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
            # On the hosts: their private /tmp (the root's home is the machine's).
            "ANSIBLE_REMOTE_TEMP": "/tmp/.ansible-tmp",
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.scratch / "client_key"),
            "ANSIBLE_REMOTE_USER": "root",
            "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
            "ANSIBLE_PIPELINING": "True",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            # One connection per host for the whole run (a new one per task
            # costs a handshake each); `close` ends their master processes.
            "ANSIBLE_SSH_ARGS": f"-o ControlMaster=auto -o ControlPersist=300s "
                                f"-o ControlPath={self.scratch}/cp-%h "
                                "-o UserKnownHostsFile=/dev/null "
                                "-o StrictHostKeyChecking=no -o LogLevel=ERROR",
        }

    def play(self, operation: str = "restart",
             host_vars: Mapping[str, Mapping[str, object]] | None = None,
             extra: Mapping[str, object] | None = None) -> PlayRun:
        """ansible-playbook rolling_restart over SSH from the hub; its output and status."""
        inventory = self.inventory(host_vars or {})
        extra_vars = {"ovs_fleet_operation": operation, **(extra or {})}
        argv = ["ip", "netns", "exec", self.hub, "ansible-playbook", "-i", str(inventory),
                "-e", json.dumps(extra_vars), PLAYBOOK]
        start = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=PLAY_TIMEOUT,
                              env=self.environment(), check=False)
        return PlayRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)

    def close(self) -> None:
        """End the SSH master connections the runs left (ControlPersist)."""
        for host in self.hosts:
            if (self.scratch / f"cp-{host.address}").exists():
                subprocess.run(["ip", "netns", "exec", self.hub, "ssh", "-o",
                                f"ControlPath={self.scratch}/cp-%h", "-O", "exit",
                                f"root@{host.address}"], capture_output=True, timeout=30,
                               check=False)

    def overlay_packages(self, host: Host) -> None:
        host.ns.run(["sh", "-c", OVERLAY_SCRIPT])


def _host_run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)}: {proc.stderr.strip()}")


def _keys(scratch: Path) -> None:
    for name in ("client_key", "host_key"):
        _host_run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet",
                   "-f", str(scratch / name)])
    shutil.copy(scratch / "client_key.pub", scratch / "authorized_keys")
    collections = scratch / "collections" / "ansible_collections" / "ovs_service"
    collections.mkdir(parents=True)
    (collections / "fleet").symlink_to(COLLECTION)
    (scratch / "home" / "tmp").mkdir(parents=True)


def _join(fleet: Fleet, lane: Lane, index: int) -> Host:
    """Wire one lane into the hub and start its sshd."""
    ns = lane[0]
    name, address = f"host{index}", f"{SUBNET}.{index}"
    outer = f"fl{index}-{fleet.hub[-6:]}"
    _host_run(["ip", "-n", fleet.hub, "link", "add", outer, "type", "veth", "peer", "name",
               HOST_LINK, "netns", str(ns.pid)])
    _host_run(["ip", "-n", fleet.hub, "link", "set", outer, "master", "fbr0", "up"])
    ns.run(["ip", "link", "set", "lo", "up"])
    ns.run(["ip", "addr", "add", f"{address}/24", "dev", HOST_LINK])
    ns.run(["ip", "link", "set", HOST_LINK, "up"])
    config = fleet.scratch / f"sshd_config.{name}"
    config.write_text(SSHD_CONFIG.format(address=address, scratch=fleet.scratch))
    ns.run(["mkdir", "-p", "-m", "0755", "/run/sshd"])
    ns.run(["systemd-run", f"--unit={SSHD_UNIT}", "--property=Type=simple",
            SSHD, "-D", "-e", "-f", str(config)])
    ns.run(["mkdir", "-p", METRICS_DIR])
    ns.run(["systemd-run", f"--unit={EXPORTER_UNIT}", "--property=Type=simple", NODE_EXPORTER,
            f"--web.listen-address={EXPORTER_ADDRESS}", "--collector.disable-defaults",
            "--collector.textfile", f"--collector.textfile.directory={METRICS_DIR}"])
    return Host(name, address, lane)


def _wait_for_ssh(fleet: Fleet, timeout: float = 30) -> None:
    for host in fleet.hosts:
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(
                ["ip", "netns", "exec", fleet.hub, "ssh", "-i", str(fleet.scratch / "client_key"),
                 "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                 "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                 "-o", "ConnectTimeout=2", f"root@{host.address}", "true"],
                capture_output=True, text=True, timeout=30, check=False)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                log = host.ns.journal(SSHD_UNIT)
                raise RuntimeError(f"no SSH to {host.name}: {probe.stderr.strip()}\n{log}")
            time.sleep(0.2)


@contextlib.contextmanager
def fleet_of(count: int) -> Iterator[Fleet]:
    """`count` hosts on a fresh network, each with sshd; all removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{unique_name('fleet')}-", dir=SCRATCH))
    os.chmod(scratch, 0o700)
    hub = unique_name("fleet")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        _keys(scratch)
        _host_run(["ip", "netns", "add", hub])
        stack.callback(subprocess.run, ["ip", "netns", "del", hub], check=False)
        _host_run(["ip", "-n", hub, "link", "add", "fbr0", "type", "bridge"])
        _host_run(["ip", "-n", hub, "addr", "add", f"{HUB_ADDRESS}/24", "dev", "fbr0"])
        _host_run(["ip", "-n", hub, "link", "set", "fbr0", "up"])
        _host_run(["ip", "-n", hub, "link", "set", "lo", "up"])
        fleet = Fleet(scratch, hub)
        for index in range(1, count + 1):
            lane = stack.enter_context(packaged_lane())
            fleet.hosts.append(_join(fleet, lane, index))
        _wait_for_ssh(fleet)
        stack.callback(fleet.close)
        yield fleet
