"""The restart methods compared, and the unit set each needs."""

from __future__ import annotations

from dataclasses import dataclass

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# Where GNU time writes the transaction's peak resident memory (inside).
RSS_FILE = "/run/ovs-service-bench.rss"


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    # Which daemons/units it needs: "ours" (units/), "package" (Debian's units
    # with the package's drop-ins and umbrella, what `apt install` sets up),
    # "floor" (our units without the hooks, tables emptied), "package-floor"
    # (the package default without the hooks, tables emptied), "debian", "bare".
    units: str
    argv: tuple[str, ...]
    keeps_flows: bool = True


METHODS = {
    m.key: m for m in (
        # GNU time records the transaction's peak resident memory.
        Method("ovs-service", "ovs-service restart", "ours",
               ("/usr/bin/time", "-f", "%M", "-o", RSS_FILE,
                "ovs-service", "restart", "--json")),
        Method("systemctl-hooks", "systemctl restart openvswitch (hooks)", "ours",
               ("systemctl", "restart", "openvswitch.service")),
        Method("package-ovs-service", "ovs-service restart (package default)", "package",
               ("ovs-service", "restart", "--json")),
        Method("package-systemctl", "systemctl restart openvswitch (package default)",
               "package", ("systemctl", "restart", "openvswitch.service")),
        # The floor: what any method pays. The daemon alone restarted by its
        # unit (no hooks, no save, no restore), every bridge with the table a
        # fresh bridge has (priority=0 actions=NORMAL): stop, start, bridges and
        # ports back.
        Method("floor", "floor: bare ovs-vswitchd restart, empty tables", "floor",
               ("systemctl", "restart", "ovs-vswitchd.service"), keeps_flows=False),
        # The same under the package default's ovs-vswitchd unit (Debian's, with
        # the fast drop-in) without its hook lines: no sandbox, as that unit has none.
        Method("package-floor", "floor, package default: bare ovs-vswitchd restart, empty tables",
               "package-floor", ("systemctl", "restart", "ovs-vswitchd.service"),
               keeps_flows=False),
        Method("debian-reload", "systemctl reload openvswitch-switch (Debian)", "debian",
               ("systemctl", "reload", "openvswitch-switch.service")),
        Method("ovs-ctl", "ovs-ctl restart (stock)", "bare",
               (OVS_CTL, "restart", "--system-id=random")),
        Method("debian-restart", "systemctl restart openvswitch-switch (Debian, loses flows)",
               "debian", ("systemctl", "restart", "openvswitch-switch.service"),
               keeps_flows=False),
    )
}
BASELINE = "ovs-ctl"
DEFAULT_METHODS = ("ovs-service", "systemctl-hooks", "package-ovs-service",
                   "package-systemctl", "floor", "package-floor", "debian-reload", "ovs-ctl")
UNIT_ORDER = {"ours": 0, "floor": 1, "package": 2, "package-floor": 3, "debian": 4, "bare": 5}
FLOORS = ("floor", "package-floor")
