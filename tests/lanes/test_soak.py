"""Soak: 100 consecutive restarts with traffic flowing.

The transactions run in one long-lived Python process inside the systemd
namespace, so that a leak of file descriptors or memory per restart shows.
Afterwards: the canonical state is exactly what it was (no drift), the
hosts still talk, no restart stopped traffic for longer than MAX_GAP, the
store holds no more than its retention limit and no stray files, and the
process's descriptors did not grow.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.harness import REPO, canon
from tests.harness.lane import assert_switch_whole, running_lane

pytestmark = [pytest.mark.systemd, pytest.mark.root, pytest.mark.slow]

RESTARTS = int(os.environ.get("OVS_SERVICE_SOAK", "100"))
# The longest any restart may keep traffic from flowing. A correctness bound
# (traffic came back, every time), not a speed target (bench/gap_bench.py
# measures that): a restart's outage is well under a second on a quiet machine,
# but on a shared one, beside the VM lanes, a restart was seen to take 8.6 s.
# Flows that stayed lost would keep the hosts apart until the end of the run.
MAX_GAP = 30.0  # seconds

SOAK = """
import json, os, resource, sys
sys.path.insert(0, {repo!r})
from ovs_service import transaction
fds, rss = [], []
for i in range({n}):
    outcome = transaction.restart()
    assert outcome.ok and all(b.ok for b in outcome.bridges), outcome
    fds.append(len(os.listdir("/proc/self/fd")))
    rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
print(json.dumps({{"fds": fds, "rss_kib": rss}}))
"""


def test_hundred_restarts() -> None:
    with running_lane() as (ns, switch, hosts):
        before = canon.all_states(switch)
        with hosts.prober(interval=0.01) as gap:
            code = SOAK.format(repo=str(REPO), n=RESTARTS)
            proc = ns.run(["/usr/bin/python3", "-c", code], timeout=1200)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert_switch_whole((ns, switch, hosts), before, f"{RESTARTS} restarts")
        fds = result["fds"]
        assert max(fds) - min(fds) <= 2, f"descriptors grew: {fds[:3]}...{fds[-3:]}"
        rss = result["rss_kib"]
        assert rss[-1] - rss[min(9, len(rss) - 1)] < 20 * 1024, f"memory grew: {rss}"
        names = ns.run(["ls", "-A", "/var/lib/ovs-service"]).stdout.split()
        snapshots = [n for n in names if n[:1].isdigit()]
        assert 1 <= len(snapshots) <= 5, names
        assert set(names) - set(snapshots) <= {"lock"}, f"stray files: {names}"
        print(f"{RESTARTS} restarts; longest traffic gap {gap.seconds * 1000:.0f} ms; "
              f"descriptors {min(fds)}..{max(fds)}; peak RSS {rss[-1] // 1024} MiB")
        assert gap.seconds <= MAX_GAP, f"traffic stopped for {gap.seconds:.2f} s in a restart"
