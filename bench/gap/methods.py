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
    units: str  # "ours" | "debian" | "bare": which daemons/units it needs
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
DEFAULT_METHODS = ("ovs-service", "systemctl-hooks", "debian-reload", "ovs-ctl")
UNIT_ORDER = {"ours": 0, "debian": 1, "bare": 2}
