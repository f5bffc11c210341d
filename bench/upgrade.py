"""The forwarding gap of the Open vSwitch 3.1 -> 3.5 upgrade (Debian 12 root).

    python3 -m bench.upgrade [--repeat N]

In one run, in the same Debian 12 root (tests/harness/debroot.py, built or
reused), under its own systemd, with the corpus bridge and two hosts pinging
each other every millisecond through explicit flows: a plain `systemctl
restart openvswitch` with ovs-service, `apt-get install
openvswitch-switch/trixie` with ovs-service, and the same upgrade with
Debian's units alone. Prints each gap, its ratio to the plain restart's
(target: the upgrade <= 1.2x), and the canonical lines each kept.
"""

from __future__ import annotations

import argparse
import statistics

from tests.harness import debroot, upgrade


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each (default 1)")
    args = parser.parse_args()
    trixie = debroot.ensure_root(debroot.TRIXIE).path
    bookworm = debroot.ensure_root(debroot.BOOKWORM_UPGRADE).path
    ours = [upgrade.with_ovs_service(bookworm, trixie, try_rollback=False)
            for _ in range(args.repeat)]
    debian = [upgrade.with_debian_units(bookworm, trixie) for _ in range(args.repeat)]
    restart = statistics.median(r.restart_gap for r in ours)
    rows = [
        ("plain `systemctl restart openvswitch` (ovs-service, 3.1)", restart,
         ours[0].total, ours[0].total),
        ("upgrade 3.1 -> 3.5 with ovs-service", statistics.median(r.gap for r in ours),
         min(r.kept for r in ours), ours[0].total),
        ("upgrade 3.1 -> 3.5 with Debian's units", statistics.median(r.gap for r in debian),
         min(r.kept for r in debian), debian[0].total),
    ]
    print(f"{'how':58} {'gap ms':>8} {'x restart':>10} {'lines kept':>12}")
    for name, gap, kept, total in rows:
        print(f"{name:58} {gap * 1000:8.0f} {gap / restart:10.2f} {kept:>6} of {total}")
    for title, runs in (("with ovs-service", ours), ("with Debian's units", debian)):
        for run in runs:
            print(f"upgrade {title}: apt-get install {run.apt_seconds:.1f} s, ovs-vswitchd "
                  f"from Stopping to Started (journal) {run.vswitchd_down * 1000:.0f} ms, "
                  f"gap {run.gap * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
